// tag.test.mjs - sillage.js, the demo shop and /debug in a real browser:
// Debian's chromium driven by playwright-core, against the real server on
// loopback. Pages other than the demo are served to the browser by
// playwright (page.route) on the server's own origin, so the tag runs
// exactly as on a customer's site: first-party cookie, localStorage, fetch
// and sendBeacon to the collector.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, ADMIN, WRITE_KEY } from '../integration/helpers.mjs';
import { launchChromium, adminApi, until } from './helpers.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ARTIFACTS = process.env.SL_TEST_ARTIFACTS || join(process.cwd(), 'test-artifacts');
let srv, browser;

before(async () => {
  srv = await startServer({ config: { demo: true, debug: true } });
  browser = await launchChromium();
});
after(async () => { await browser?.close(); await srv.stop(); srv.cleanup(); });

const api = (path, opts) => adminApi(srv, path, opts);
// The stitched timeline of a profile (up to 1000 events), or null.
async function timeline(kind, id) {
  const r = await api(`/v1/profiles/${kind}/${encodeURIComponent(id)}/events?limit=1000`);
  return r.status === 200 ? r.json.events : null;
}
// A page on the collector's origin with the tag loaded and init() called.
async function tagPage(context, name, init, script = '') {
  const url = `${srv.url}/t/${name}.html`;
  await context.route(url, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><title>${name}</title>
<script>!function(w,d,s){var a=w.sillage=w.sillage||[];if(a.v)return;["init","page","track","identify","alias","reset","flush","optOut","optIn","consent"].forEach(function(m){a[m]=function(){a.push([m].concat([].slice.call(arguments)))}});var e=d.createElement("script");e.async=1;e.src=s;d.head.appendChild(e)}(window,document,"/sillage.js");
sillage.init(${JSON.stringify({ writeKey: WRITE_KEY, host: srv.url, ...init })});${script}</script><body>${name}</body>` }));
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.sillage && window.sillage.v);
  return page;
}

test('the demo shop: an anonymous visit, a cart, a login — the whole trail is on the profile', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(srv.url + '/demo/');
  await page.click('#p-tee-ink');
  await page.click('#add');
  await page.click('#cart-link');
  await page.waitForSelector('#checkout');
  const aid = await page.evaluate(() => sillage.anonymousId());
  assert.match(aid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  await page.click('#login-link');
  await page.fill('#email', 'Ann@Example.com');
  await Promise.all([page.waitForURL('**/demo/cart.html'), page.click('button[type=submit]')]);
  const events = await until(async () => {
    const ev = await timeline('email', 'ann@example.com');
    return ev && ev.some((e) => e.type === 'identify') && ev.some((e) => e.name === 'Cart' && e.userId) ? ev : null;
  });
  assert.ok(events, 'the identified profile has the events');
  const anonymous = events.filter((e) => !e.userId);
  const names = anonymous.map((e) => e.event || e.name);
  for (const want of ['Products', 'Product', 'Product Viewed', 'Product Added', 'Cart', 'Cart Viewed'])
    assert.ok(names.includes(want), `anonymous "${want}" is on the identified profile (${names})`);
  assert.ok(anonymous.every((e) => e.anonymousId === aid));
  const added = anonymous.find((e) => e.event === 'Product Added');
  assert.equal(added.properties.product_id, 'tee-ink');
  assert.equal(added.context.library.name, 'sillage.js');
  assert.ok(added.context.page.path.startsWith('/demo/product.html'));
  const profile = (await api('/v1/profiles/user_id/user-ann%40example.com')).json;
  assert.ok(profile.identities.some((i) => i.kind === 'anonymous_id' && i.id === aid));
  await context.close();
});

test('first-party cookie and localStorage hold the anonymousId', async () => {
  const context = await browser.newContext();
  const page = await tagPage(context, 'cookie', {});
  const aid = await page.evaluate(() => sillage.anonymousId());
  const c = (await context.cookies()).find((x) => x.name === 'sillage_aid');
  assert.equal(decodeURIComponent(c.value), aid);
  assert.equal(c.sameSite, 'Lax');
  assert.ok(Math.abs(c.expires * 1000 - Date.now() - 395 * 86400e3) < 60e3, '395 days');
  const copy = JSON.parse(await page.evaluate(() => localStorage.getItem('sillage_aid')));
  assert.equal(copy.id, aid, 'the localStorage copy, with its creation time');
  assert.ok(Math.abs(copy.t - Date.now()) < 60e3);
  // a second page keeps it; identify with another user rotates it
  const page2 = await tagPage(context, 'cookie2', {});
  assert.equal(await page2.evaluate(() => sillage.anonymousId()), aid);
  const rotated = await page2.evaluate(() => {
    sillage.identify('first-user'); const a = sillage.anonymousId();
    sillage.identify('second-user'); return [a, sillage.anonymousId()];
  });
  assert.equal(rotated[0], aid);
  assert.notEqual(rotated[1], aid);
  await context.close();
});

test('closing the page mid-batch: the beacon delivers what was queued', async () => {
  const context = await browser.newContext();
  const page = await tagPage(context, 'beacon', { flushAt: 100, flushIntervalMs: 600000 });
  const aid = await page.evaluate(() => {
    for (let i = 0; i < 3; i++) sillage.track('Queued ' + i, { i });
    return sillage.anonymousId();
  });
  assert.equal(JSON.parse(await page.evaluate(() => localStorage.getItem('sillage_outbox'))).length, 3);
  await page.close({ runBeforeUnload: true });
  const ev = await until(async () => { const e = await timeline('anonymous_id', aid); return e && e.length >= 3 ? e : null; });
  assert.deepEqual(ev.map((e) => e.event).sort(), ['Queued 0', 'Queued 1', 'Queued 2']);
  await context.close();
});

test('offline: events wait in the outbox and arrive once, none twice', async () => {
  const context = await browser.newContext();
  const page = await tagPage(context, 'offline', { flushAt: 1, flushIntervalMs: 200 });
  await context.setOffline(true);
  const aid = await page.evaluate(() => {
    for (let i = 0; i < 5; i++) sillage.track('Offline ' + i);
    return sillage.anonymousId();
  });
  await sleep(1500); // retries fail while offline
  assert.equal(await timeline('anonymous_id', aid), null, 'nothing reached the server');
  assert.equal(JSON.parse(await page.evaluate(() => localStorage.getItem('sillage_outbox'))).length, 5);
  await context.setOffline(false);
  const ev = await until(async () => { const e = await timeline('anonymous_id', aid); return e && e.length >= 5 ? e : null; });
  await sleep(1500); // anything sent twice would have arrived by now
  const all = await timeline('anonymous_id', aid);
  assert.equal(all.length, 5);
  assert.equal(new Set(all.map((e) => e.messageId)).size, 5);
  assert.ok(ev.every((e) => e.context.page.path === '/t/offline.html'));
  assert.equal(await page.evaluate(() => JSON.parse(localStorage.getItem('sillage_outbox')).length), 0);
  await context.close();
});

test('opt-out and Global Privacy Control send nothing and leave nothing on the device', async () => {
  const context = await browser.newContext();
  const page = await tagPage(context, 'optout', { flushAt: 1 });
  const aid = await page.evaluate(() => { sillage.optOut(); sillage.track('Nope'); sillage.page(); return sillage.anonymousId(); });
  assert.equal(aid, undefined);
  // the tag does not remember an objection: the site says it again on each page, before any other call
  const page2 = await tagPage(context, 'optout2', { flushAt: 1 }, 'sillage.optOut(); sillage.track("Still nope");');
  const gpc = await browser.newContext();
  await gpc.addInitScript(() => Object.defineProperty(navigator, 'globalPrivacyControl', { get: () => true }));
  const page3 = await tagPage(gpc, 'gpc', { flushAt: 1 }, 'sillage.track("GPC"); sillage.identify("gpc-user");');
  assert.equal(await page3.evaluate(() => sillage.anonymousId()), undefined);
  await sleep(1500);
  assert.deepEqual(await context.cookies(), []);
  assert.deepEqual(await gpc.cookies(), []);
  assert.deepEqual(await page2.evaluate(() => Object.keys(localStorage)), []);
  assert.deepEqual(await page3.evaluate(() => Object.keys(localStorage)), []);
  assert.equal(await timeline('user_id', 'gpc-user'), null);
  // optIn: sending resumes, under a new anonymousId
  const back = await page2.evaluate(() => { sillage.optIn(); sillage.track('Back'); return sillage.anonymousId(); });
  const ev = await until(() => timeline('anonymous_id', back));
  assert.deepEqual(ev.map((e) => e.event), ['Back']);
  await context.close();
  await gpc.close();
});

test('single-page apps: pushState and popstate send page views', async () => {
  const context = await browser.newContext();
  const page = await tagPage(context, 'spa', { flushAt: 1, spa: true });
  const aid = await page.evaluate(() => {
    history.pushState({}, '', '/t/spa/step-2?utm_campaign=winter&utm_source=news');
    return sillage.anonymousId();
  });
  const ev = await until(async () => { const e = await timeline('anonymous_id', aid); return e && e.length ? e : null; });
  assert.equal(ev[0].type, 'page');
  assert.equal(ev[0].properties.path, '/t/spa/step-2');
  assert.deepEqual(ev[0].context.campaign, { name: 'winter', source: 'news' });
  assert.ok(ev[0].sentAt || ev[0].receivedAt);
  await context.close();
});

test('/debug shows events live with their profile (screenshot)', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const dbg = await context.newPage();
  const streams = [];
  dbg.on('request', (req) => { if (req.url().includes('/debug/stream')) streams.push(req); });
  await dbg.goto(srv.url + '/debug');
  await dbg.fill('#token', 'wrong-token');
  await dbg.dispatchEvent('#token', 'change');
  await dbg.waitForSelector('#state.down');
  assert.match(await dbg.textContent('#state'), /wrong token/);
  await dbg.fill('#token', ADMIN);
  await dbg.dispatchEvent('#token', 'change');
  await dbg.waitForSelector('#state.live');
  // the token travels as a header, never in a URL, and is not stored
  assert.ok(streams.length >= 2);
  for (const req of streams) {
    assert.equal(new URL(req.url()).search, '', req.url());
    assert.match(req.headers().authorization, /^Bearer /);
  }
  assert.equal(streams.at(-1).headers().authorization, 'Bearer ' + ADMIN);
  const stored = await dbg.evaluate(() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)]));
  assert.ok(!stored.includes(ADMIN), 'no admin token in web storage: ' + stored);
  const shop = await context.newPage();
  await shop.goto(srv.url + '/demo/product.html?id=mug-wake');
  await shop.click('#add');
  await shop.evaluate(() => sillage.flush());
  await dbg.waitForFunction(() => document.querySelectorAll('.ev').length >= 3, null, { timeout: 10000 });
  const text = await dbg.textContent('#list');
  assert.match(text, /Product Added/);
  assert.match(text, /profile p_\d+/);
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = join(ARTIFACTS, 'debug.png');
  await dbg.screenshot({ path: file, fullPage: false });
  assert.ok(statSync(file).size > 10000, 'a real screenshot');
  // the stream needs the admin token
  assert.equal((await fetch(srv.url + '/debug/stream')).status, 401);
  await context.close();
});

test('the demo shop shows the stored user name as text, never as markup', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(srv.url + '/demo/');
  const evil = '<img src=x onerror="window.__pwned=1">eve@example.com';
  await page.evaluate((u) => localStorage.setItem('demo_user', u), evil);
  await page.reload();
  await page.waitForSelector('#who');
  assert.equal(await page.textContent('#who'), evil);
  assert.equal(await page.evaluate(() => document.querySelectorAll('#header img').length), 0);
  await sleep(200);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await context.close();
});
