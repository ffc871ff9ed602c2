// consent.test.mjs - sillage.js's consent modes, opt-out and cookie lifetime
// in Debian's chromium (playwright-core) against the real server on loopback.
// What the tag leaves on the device is read through the browser's own APIs
// (context.cookies(), localStorage); what it sends, through the requests the
// page makes and the events the server stored (`sillage export`, in log order).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, WRITE_KEY } from '../integration/helpers.mjs';
import { launchChromium, until, SNIPPET } from './helpers.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let srv, browser;

before(async () => {
  srv = await startServer();
  browser = await launchChromium();
});
after(async () => { await browser?.close(); await srv.stop(); srv.cleanup(); });


// A new browser context that records every request to the collector's API.
async function newContext() {
  const context = await browser.newContext();
  context.requests = [];
  context.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/v1/')) context.requests.push(r); });
  return context;
}
// A page on the collector's origin: the snippet, init(init), then script.
async function tagPage(context, name, init, script = '') {
  const url = `${srv.url}/t/${name}.html`;
  await context.route(url, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><title>${name}</title>
<script>${SNIPPET}
sillage.init(${JSON.stringify({ writeKey: WRITE_KEY, host: srv.url, ...init })});${script}</script><body>${name}</body>` }));
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.sillage && window.sillage.v);
  return page;
}
// What sillage left on the device, as the browser reports it.
async function device(context, page) {
  return {
    cookies: (await context.cookies()).filter((c) => c.name.startsWith('sillage')).map((c) => c.name),
    storage: await page.evaluate(() => Object.keys(localStorage)),
  };
}
const NOTHING = { cookies: [], storage: [] };
// The events the server stored from one test page, in log order.
const stored = (name) => srv.exportEvents().filter((e) => e.context?.page?.path === `/t/${name}.html`);
const label = (e) => [e.type, e.event || e.name || null];

test('consent required: no cookie, no storage, no request before consent; then every held call arrives, in order, with its own time', async () => {
  const context = await newContext();
  const page = await tagPage(context, 'required', { consent: 'required', flushAt: 1, flushIntervalMs: 100 },
    'sillage.page("Landing"); sillage.track("Clicked", {n: 1}); sillage.identify("consent-user", {email: "consent@example.com"});');
  await page.evaluate(() => { sillage.track('Later', { n: 2 }); sillage.flush(); });
  assert.equal(await page.evaluate(() => sillage.anonymousId()), undefined);
  await sleep(1500); // anything sent would have been by now (flushAt 1)
  assert.deepEqual(await device(context, page), NOTHING);
  assert.deepEqual(context.requests.map((r) => r.url()), []);
  assert.deepEqual(stored('required'), []);

  const consentAt = await page.evaluate(() => { const t = Date.now(); sillage.consent({ analytics: true, marketing: false }); return t; });
  const aid = await page.evaluate(() => sillage.anonymousId());
  assert.match(aid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const ev = await until(() => { const e = stored('required'); return e.length >= 4 ? e : null; }, 10000, 250);
  assert.deepEqual(ev.map(label), [['page', 'Landing'], ['track', 'Clicked'], ['identify', null], ['track', 'Later']]);
  for (const e of ev) {
    assert.ok(Date.parse(e.originalTimestamp) < consentAt - 1000, `${label(e)} keeps the time of the call (${e.originalTimestamp})`);
    assert.equal(e.anonymousId, aid);
    assert.deepEqual(e.context.consent, { categoryPreferences: { analytics: true, marketing: false } });
  }
  assert.deepEqual([ev[1].properties, ev[2].traits, ev[3].userId], [{ n: 1 }, { email: 'consent@example.com' }, 'consent-user']);
  const d = await device(context, page);
  assert.deepEqual(d.cookies, ['sillage_aid']);
  assert.ok(d.storage.includes('sillage_aid') && d.storage.includes('sillage_consent'), d.storage.join());
  await context.close();
});

test('data-consent="required" on the script tag holds its automatic page view until consent', async () => {
  const context = await newContext();
  const url = `${srv.url}/t/attr.html`;
  await context.route(url, (route) => route.fulfill({ contentType: 'text/html', body:
    `<!doctype html><title>attr</title><script src="/sillage.js" data-write-key="${WRITE_KEY}" data-consent="required"></script><body>attr</body>` }));
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.sillage && window.sillage.v);
  await page.evaluate(() => sillage.flush());
  await sleep(1000);
  assert.deepEqual(await device(context, page), NOTHING);
  assert.deepEqual(context.requests.map((r) => r.url()), []);
  await page.evaluate(() => { sillage.consent({ analytics: true }); sillage.flush(); });
  const ev = await until(() => { const e = stored('attr'); return e.length ? e : null; }, 10000, 250);
  assert.deepEqual(ev.map(label), [['page', null]]);
  assert.equal(ev[0].properties.title, 'attr');
  await context.close();
});

test('consent refused: nothing sent, nothing stored on the device or the server, not even when the page goes', async () => {
  const context = await newContext();
  const page = await tagPage(context, 'refused', { consent: 'required', flushAt: 1 },
    'sillage.page("Landing"); sillage.identify("refused-user", {email: "refused@example.com"});');
  await page.evaluate(() => {
    sillage.consent({ analytics: false, marketing: false });
    sillage.track('After refusal'); sillage.optIn(); sillage.track('After optIn'); sillage.flush();
  });
  await page.goto('about:blank'); // pagehide: the tag would send a beacon now
  await sleep(1500);
  assert.deepEqual(await device(context, await tagPage(context, 'refused-next', { consent: 'required' })), NOTHING);
  assert.deepEqual(context.requests.map((r) => r.url()), []);
  assert.deepEqual(stored('refused'), []);
  await context.close();
});

test('a revocation after consent: one last event carries it, then the device is cleared and nothing more is sent', async () => {
  const context = await newContext();
  const page = await tagPage(context, 'revoke', { consent: 'required', flushAt: 1 },
    'sillage.consent({analytics: true, marketing: true}); sillage.track("Granted");');
  const aid = await page.evaluate(() => sillage.anonymousId());
  await until(() => stored('revoke').length >= 1, 10000, 250);
  await page.evaluate(() => sillage.consent({ analytics: true, marketing: false })); // a change
  // stored before the revocation: a refusal drops what is still unsent, as optOut() does
  await until(() => stored('revoke').length >= 2, 10000, 250);
  await page.evaluate(() => sillage.consent({ analytics: false, marketing: false })); // a revocation
  const ev = await until(() => { const e = stored('revoke'); return e.length >= 3 ? e : null; }, 10000, 250);
  assert.deepEqual(ev.map((e) => [e.event, e.anonymousId, e.context.consent.categoryPreferences]), [
    ['Granted', aid, { analytics: true, marketing: true }],
    ['Consent Preference Updated', aid, { analytics: true, marketing: false }],
    ['Consent Preference Updated', aid, { analytics: false, marketing: false }]]);
  assert.equal(ev[2].context.sessionId, undefined, 'the last one reads nothing from the device');
  assert.deepEqual(await device(context, page), NOTHING);
  const sent = context.requests.length;
  await page.evaluate(() => { sillage.track('After'); sillage.page(); sillage.flush(); });
  await page.goto('about:blank');
  await sleep(1500);
  assert.equal(context.requests.length, sent);
  assert.equal(stored('revoke').length, 3);
  await context.close();
});

test('optOut removes the cookie and every sillage_ entry and stops requests', async () => {
  const context = await newContext();
  const page = await tagPage(context, 'optout-now', { flushAt: 100, flushIntervalMs: 600000 },
    'sillage.identify("optout-user"); sillage.track("Sent");');
  await until(() => stored('optout-now').length >= 2, 10000, 250); // the load's flush sent these
  await page.evaluate(() => { sillage.track('Pending'); localStorage.setItem('site_own', 'kept'); });
  const before = await device(context, page);
  assert.deepEqual(before.cookies, ['sillage_aid']);
  for (const k of ['sillage_aid', 'sillage_uid', 'sillage_outbox', 'sillage_session']) assert.ok(before.storage.includes(k), k);
  assert.equal(JSON.parse(await page.evaluate(() => localStorage.getItem('sillage_outbox')))[0].event, 'Pending');
  const sent = context.requests.length;
  await page.evaluate(() => sillage.optOut());
  assert.deepEqual(await device(context, page), { cookies: [], storage: ['site_own'] });
  await page.evaluate(() => { sillage.track('Nope'); sillage.identify('optout-user-2'); sillage.flush(); });
  assert.equal(await page.evaluate(() => sillage.anonymousId()), undefined);
  await page.goto('about:blank'); // pagehide: the pending outbox would go now
  await sleep(1500);
  assert.equal(context.requests.length, sent, 'no request after optOut');
  assert.deepEqual(stored('optout-now').map(label), [['identify', null], ['track', 'Sent']]);
  await context.close();
});

test("the cookie's expiry is set once, about 395 days out, and a later visit does not move it", async () => {
  const context = await newContext();
  const page = await tagPage(context, 'expiry', { flushAt: 1 }, 'sillage.page();');
  const aid = await page.evaluate(() => sillage.anonymousId());
  const first = (await context.cookies()).find((c) => c.name === 'sillage_aid');
  assert.equal(first.value, aid);
  const days = (first.expires * 1000 - Date.now()) / 86400e3;
  assert.ok(days > 394.9 && days <= 395, `${days} days`);
  await sleep(2500);
  await page.reload();
  await page.waitForFunction(() => window.sillage && window.sillage.v);
  await until(() => stored('expiry').length >= 2, 10000, 250); // the second visit ran and sent
  assert.equal(await page.evaluate(() => sillage.anonymousId()), aid);
  const second = (await context.cookies()).find((c) => c.name === 'sillage_aid');
  assert.equal(second.expires, first.expires);
  assert.equal(second.value, aid);
  assert.ok(stored('expiry').every((e) => e.anonymousId === aid));
  await context.close();
});
