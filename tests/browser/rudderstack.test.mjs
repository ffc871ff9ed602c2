// rudderstack.test.mjs - RudderStack's browser SDK (the real
// @rudderstack/analytics-js v3 from npm, its bundled UMD build, loaded by a
// script tag) pointed at sillage as its data plane. The SDK's source
// configuration comes from the page (its getSourceConfig load option)
// instead of RudderStack's control plane. The page is served by the test's
// own static server on localhost, the collector is on 127.0.0.1: another
// origin, so CORS is real. Everything it sends must be stored once and
// stitched.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, dirname } from 'node:path';
import { createRequire } from 'node:module';
import { startServer, WRITE_KEY } from '../integration/helpers.mjs';
import { launchChromium, adminApi, until } from './helpers.mjs';

const require = createRequire(import.meta.url);
// its main entry is dist/npm/modern/cjs/index.cjs; the bundled UMD build is beside it
const SDK = join(dirname(require.resolve('@rudderstack/analytics-js')), '..', 'bundled', 'umd', 'index.js');
let srv, browser, site, siteUrl, html = '';

before(async () => {
  srv = await startServer();
  site = createServer((req, res) => {
    if (req.url === '/rudder.js') {
      res.writeHead(200, { 'Content-Type': 'application/javascript' });
      return res.end(readFileSync(SDK));
    }
    if (req.url === '/site.html') {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      return res.end(html);
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  siteUrl = `http://localhost:${site.address().port}`;
  browser = await launchChromium();
});
after(async () => { await browser?.close(); site?.close(); await srv.stop(); srv.cleanup(); });

const api = (path) => adminApi(srv, path);

test('RudderStack analytics-js v3 with sillage as its data plane: page, track, identify, group, alias', async () => {
  const sourceConfig = {
    source: { id: 'src-1', name: 'site', writeKey: WRITE_KEY, workspaceId: 'ws-1', enabled: true,
      config: { statsCollection: { errors: { enabled: false }, metrics: { enabled: false } } }, destinations: [] },
  };
  html = `<!doctype html><title>rudder</title><script src="/rudder.js"></script><script>
    window.ra = new window.rudderanalytics.RudderAnalytics();
    ra.load(${JSON.stringify(WRITE_KEY)}, ${JSON.stringify(srv.url)}, {
      getSourceConfig: function () { return ${JSON.stringify(sourceConfig)}; },
      plugins: ['XhrQueue'], logLevel: 'ERROR', queueOptions: { batch: { enabled: false } } });
    ra.page('Home');
    ra.track('Product Viewed', { product_id: 'rs-1', price: 9.5 });
  </script><body>site</body>`;
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.RS_DEBUG) { page.on('console', (m) => console.error('console:', m.text())); page.on('request', (r) => console.error('req:', r.method(), r.url())); page.on('requestfailed', (r) => console.error('failed:', r.url(), r.failure()?.errorText)); }
  const posted = [];
  page.on('request', (r) => { if (r.url().startsWith(srv.url)) posted.push(new URL(r.url()).pathname); });
  await page.goto(siteUrl + '/site.html');
  await page.waitForFunction(() => window.ra && typeof window.ra.getAnonymousId === 'function' && window.ra.getAnonymousId());
  const aid = await page.evaluate(() => window.ra.getAnonymousId());
  const waitEvents = (path, n) => until(async () => {
    const r = await api(path);
    return r.status === 200 && r.json.events.length >= n ? r.json.events : null;
  }, 15000, 150);
  assert.ok(await waitEvents(`/v1/profiles/anonymous_id/${aid}/events?limit=50`, 2), 'page and track stored under the anonymousId');
  await page.evaluate(() => {
    window.ra.identify('rs-user-1', { email: 'RS.User@Example.com', plan: 'team' });
    window.ra.group('rs-company', { name: 'RS SAS' });
    window.ra.alias('rs-user-1', 'rs-crm-9');
  });
  const events = await waitEvents('/v1/profiles/user_id/rs-user-1/events?limit=50', 5);
  assert.ok(events, 'the identified profile holds the trail');
  const kinds = events.map((e) => e.type);
  for (const want of ['page', 'track', 'identify', 'group', 'alias']) assert.ok(kinds.includes(want), `${want} in ${kinds}`);
  const ids = events.map((e) => e.messageId);
  assert.equal(new Set(ids).size, ids.length, 'stored once each');
  const viewed = events.find((e) => e.type === 'track');
  assert.equal(viewed.anonymousId, aid);
  assert.equal(viewed.properties.product_id, 'rs-1');
  assert.equal(viewed.context.library.name, 'RudderLabs JavaScript SDK');
  const prof = await api('/v1/profiles/email/rs.user@example.com');
  assert.equal(prof.status, 200);
  assert.equal(prof.json.traits.plan, 'team');
  for (const p of ['/v1/page', '/v1/track', '/v1/identify', '/v1/group', '/v1/alias'])
    assert.ok(posted.includes(p), `${p} used (${[...new Set(posted)]})`);
  assert.deepEqual(errors, []);
  await page.close();
});
