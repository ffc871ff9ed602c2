// analytics-js.test.mjs - a site that runs Segment's analytics.js 2.0 (the
// real @segment/analytics-next from npm, its dist/umd/standalone.js: what
// the Segment snippet loads) switches to sillage by changing only the
// apiHost and protocol of its "Segment.io" integration. Debian's chromium
// drives the page. The test's own static server on localhost is both the
// site and its CDN (the snippet's analytics._cdn, as sites behind a CDN
// proxy set it): the script, its chunks and the settings document. The
// collector is on 127.0.0.1 -- another origin, so CORS and its preflights
// are real. What the library sends is checked where it lands: stored once,
// stitched into the identified profile.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, basename } from 'node:path';
import { createRequire } from 'node:module';
import { startServer, WRITE_KEY } from '../integration/helpers.mjs';
import { launchChromium, adminApi, until as untilEvery } from './helpers.mjs';

const require = createRequire(import.meta.url);
const UMD = join(require.resolve('@segment/analytics-next/package.json'), '..', 'dist', 'umd');
const until = (fn, ms = 15000) => untilEvery(fn, ms, 150);
let srv, browser, site, siteUrl;
const pages = new Map(); // name -> HTML
let settings = null;     // the settings document the "CDN" serves

// The site and its CDN: pages, the snippet's script, analytics.js's chunks
// and the source's settings.
function serveSite(req, res) {
  const path = new URL(req.url, 'http://x').pathname;
  let m;
  if ((m = /^\/site\/([\w-]+)\.html$/.exec(path)) && pages.has(m[1])) {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    return res.end(pages.get(m[1]));
  }
  if (path === `/v1/projects/${WRITE_KEY}/settings`) {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    return res.end(JSON.stringify(settings));
  }
  const file = path === `/analytics.js/v1/${WRITE_KEY}/analytics.min.js` ? 'standalone.js'
    : path.startsWith('/analytics-next/bundles/') ? basename(path) : null;
  if (file && existsSync(join(UMD, file))) {
    res.writeHead(200, { 'Content-Type': 'application/javascript' });
    return res.end(readFileSync(join(UMD, file)));
  }
  res.writeHead(404);
  res.end('not here');
}

before(async () => {
  srv = await startServer();
  site = createServer(serveSite);
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  siteUrl = `http://localhost:${site.address().port}`;
  browser = await launchChromium();
});
after(async () => { await browser?.close(); site?.close(); await srv.stop(); srv.cleanup(); });

const api = (path) => adminApi(srv, path);

// A page of the site (http://localhost:<site port>) with the Segment
// snippet; the collector is at 127.0.0.1:<its port>. segmentio: the "Segment.io" settings the site changed (apiHost, protocol,
// and for one test the batching strategy).
async function sitePage(name, segmentio, script) {
  const context = await browser.newContext();
  const requests = [];
  context.on('request', (r) => { if (r.url().startsWith(srv.url)) requests.push({ method: r.method(), url: r.url() }); });
  settings = {
    integrations: { 'Segment.io': { apiKey: WRITE_KEY, ...segmentio } },
    plan: { track: { __default: { enabled: true } }, identify: { __default: { enabled: true } } },
    edgeFunction: {}, analyticsNextEnabled: true, middlewareSettings: {}, enabledMiddleware: {},
    metrics: { sampleRate: 0 }, legacyVideoPluginsEnabled: false, remotePlugins: [],
  };
  pages.set(name, `<!doctype html><title>${name}</title>
<script>
  // the Segment snippet (its stub and loader), as sites paste it, with the
  // CDN the site uses (a proxy of Segment's: here the test's server)
  !function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)if(analytics.invoked)return;
  analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick","trackLink","trackForm","pageview","identify","reset","group","track","ready","alias","debug","page","screen","once","off","on","addSourceMiddleware","addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware","register"];
  analytics.factory=function(e){return function(){var t=Array.prototype.slice.call(arguments);t.unshift(e);analytics.push(t);return analytics}};
  for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];analytics[key]=analytics.factory(key)}
  analytics.load=function(key,n){var t=document.createElement("script");t.type="text/javascript";t.async=!0;
  t.src=analytics._cdn+"/analytics.js/v1/"+key+"/analytics.min.js";var r=document.getElementsByTagName("script")[0];
  r.parentNode.insertBefore(t,r);analytics._loadOptions=n};analytics._writeKey=${JSON.stringify(WRITE_KEY)};analytics.SNIPPET_VERSION="5.2.0";
  analytics._cdn=${JSON.stringify(siteUrl)};
  analytics.load(${JSON.stringify(WRITE_KEY)});analytics.page();}();
  ${script}
</script><body>${name}</body>`);
  const pageUrl = `${siteUrl}/site/${name}.html`;
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.AJS_DEBUG) { page.on('console', (m) => console.error('console:', m.text())); context.on('requestfailed', (r) => console.error('failed:', r.url(), r.failure()?.errorText)); context.on('request', (r) => console.error('req:', r.method(), r.url())); }
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.analytics && typeof window.analytics.user === 'function', null, { timeout: 15000 });
  return { context, page, requests, errors };
}

const segmentio = () => ({ apiHost: `127.0.0.1:${new URL(srv.url).port}/v1`, protocol: 'http' });

test('analytics.js 2.0, one request per message: page, track, identify, group, alias are stored once and stitched', async () => {
  const { context, page, requests, errors } = await sitePage('standard', segmentio(), `
    analytics.track('Product Viewed', {product_id: 'ajs-1', price: 12.5});
    analytics.track('Product Added', {product_id: 'ajs-1', quantity: 2});`);
  const aid = await page.evaluate(() => window.analytics.user().anonymousId());
  assert.match(aid, /^[0-9a-f-]{36}$/);
  // the anonymous trail reached the collector
  const anon = await until(async () => {
    const r = await api(`/v1/profiles/anonymous_id/${aid}/events?limit=100`);
    return r.status === 200 && r.json.events.length >= 3 ? r.json.events : null;
  });
  assert.ok(anon, 'page and two tracks stored under the anonymousId');
  // then the visitor logs in, joins a company, and the site aliases an old id
  await page.evaluate(async () => {
    await window.analytics.identify('ajs-user-1', { email: 'Ajs.User@Example.com', plan: 'pro' });
    await window.analytics.group('ajs-company', { name: 'Ajs SARL' });
    await window.analytics.track('Order Completed', { order_id: 'o-ajs', revenue: 25 });
    await window.analytics.alias('ajs-user-1', 'crm-771');
  });
  const events = await until(async () => {
    const r = await api('/v1/profiles/user_id/ajs-user-1/events?limit=100');
    return r.status === 200 && r.json.events.length >= 7 ? r.json.events : null;
  });
  assert.ok(events, 'the identified profile holds the whole trail');
  const kinds = events.map((e) => e.type + ':' + (e.event || e.name || ''));
  for (const want of ['page:', 'track:Product Viewed', 'track:Product Added', 'identify:', 'group:', 'track:Order Completed', 'alias:'])
    assert.ok(kinds.some((k) => k.startsWith(want)), `${want} on the profile (${kinds})`);
  // stored once: one entry per messageId
  const ids = events.map((e) => e.messageId);
  assert.equal(new Set(ids).size, ids.length, 'no message stored twice');
  const viewed = events.find((e) => e.event === 'Product Viewed');
  assert.equal(viewed.anonymousId, aid);
  assert.equal(viewed.properties.product_id, 'ajs-1');
  assert.equal(viewed.context.library.name, 'analytics.js');
  assert.equal(viewed.context.sillage.source, 'test', 'the write key analytics.js sent picked the source');
  assert.equal(viewed.writeKey, undefined, 'the write key is not stored');
  const group = events.find((e) => e.type === 'group');
  assert.equal(group.groupId, 'ajs-company');
  const profile = await api('/v1/profiles/email/ajs.user@example.com');
  assert.equal(profile.status, 200);
  assert.equal(profile.json.traits.plan, 'pro');
  assert.ok(profile.json.identities.some((i) => i.kind === 'anonymous_id' && i.id === aid), JSON.stringify(profile.json.identities));
  // it went to the short routes, with CORS preflights answered
  const paths = new Set(requests.filter((r) => r.method === 'POST').map((r) => new URL(r.url).pathname));
  for (const p of ['/v1/p', '/v1/t', '/v1/i', '/v1/g', '/v1/a']) assert.ok(paths.has(p), `${p} used (${[...paths]})`);
  assert.deepEqual(errors, []);
  await context.close();
});

test('analytics.js 2.0 with its batching strategy: /v1/b carries the messages, each stored once', async () => {
  const { context, page, requests, errors } = await sitePage('batching',
    { ...segmentio(), deliveryStrategy: { strategy: 'batching', config: { size: 5, timeout: 300 } } }, `
    for (let i = 0; i < 7; i++) analytics.track('Batched ' + i, {i: i});`);
  const aid = await page.evaluate(() => window.analytics.user().anonymousId());
  const events = await until(async () => {
    const r = await api(`/v1/profiles/anonymous_id/${aid}/events?limit=100`);
    return r.status === 200 && r.json.events.length >= 8 ? r.json.events : null;
  });
  assert.ok(events, 'a page and seven tracks');
  const names = events.filter((e) => e.type === 'track').map((e) => e.event).sort();
  assert.deepEqual(names, ['Batched 0', 'Batched 1', 'Batched 2', 'Batched 3', 'Batched 4', 'Batched 5', 'Batched 6']);
  assert.equal(new Set(events.map((e) => e.messageId)).size, events.length);
  assert.ok(requests.some((r) => r.method === 'POST' && new URL(r.url).pathname === '/v1/b'), 'sent as batches');
  assert.deepEqual(errors, []);
  await context.close();
});
