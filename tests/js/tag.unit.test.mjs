// tag.unit.test.mjs - sillage.js's logic with Node's test runner: the tag runs
// in a vm context with a small fake browser (window, document.cookie,
// localStorage, navigator, fetch, sendBeacon) that records what it sends and
// every read and write of the device (b.log).
// The real-browser behaviour is tested in tests/browser/. Also checks the
// built tag's size (SL_TAG_MIN: the minified file the build embeds).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { webcrypto } from 'node:crypto';
import vm from 'node:vm';

const SRC = readFileSync(new URL('../../js-tag/sillage.js', import.meta.url), 'utf8');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// cond() or 3 s, whichever first (timers are late on a loaded machine); then check.
async function until(cond, ms = 3000) {
  for (const end = Date.now() + ms; !cond() && Date.now() < end;) await sleep(5);
}

function browser({ storage = {}, jar = {}, respond = () => ({ ok: true, status: 200 }), gpc, search = '', stub, script } = {}) {
  const cookieWrites = [];
  const log = []; // 'get k', 'set k', 'del k', 'cookie?', 'cookie=...': every device access, in order
  const listeners = {};
  const on = (t, f) => { (listeners[t] ||= []).push(f); };
  const sent = [], beacons = [];
  const location = { href: 'https://shop.example/p' + search, pathname: '/p', search, protocol: 'https:' };
  const currentScript = script && { src: 'https://collect.example/sillage.js', getAttribute: (a) => (a in script ? script[a] : null) };
  const document = { title: 'Shop', referrer: 'https://ref.example/', visibilityState: 'visible', currentScript, addEventListener: on };
  Object.defineProperty(document, 'cookie', {
    get: () => { log.push('cookie?'); return Object.entries(jar).map(([k, v]) => k + '=' + v).join('; '); },
    set: (s) => {
      log.push('cookie=' + s);
      cookieWrites.push(s);
      const [kv] = s.split('; ');
      const i = kv.indexOf('=');
      if (s.includes('max-age=0')) delete jar[kv.slice(0, i)]; else jar[kv.slice(0, i)] = kv.slice(i + 1);
    },
  });
  const localStorage = {
    getItem: (k) => { log.push('get ' + k); return k in storage ? storage[k] : null; },
    setItem: (k, v) => { log.push('set ' + k); storage[k] = String(v); },
    removeItem: (k) => { log.push('del ' + k); delete storage[k]; },
  };
  const window = {
    location, localStorage, crypto: webcrypto, addEventListener: on, sillage: stub,
    history: { pushState() {}, replaceState() {} },
    fetch: (url, opts) => {
      sent.push({ url, opts, body: JSON.parse(opts.body) });
      const r = respond(sent.length);
      return r instanceof Error ? Promise.reject(r) : Promise.resolve(r);
    },
  };
  const navigator = {
    language: 'fr-FR', userAgent: 'test-agent', globalPrivacyControl: gpc,
    sendBeacon: (url, blob) => { beacons.push({ url, blob }); return true; },
  };
  // The tag's timers must not keep the test process alive (retries back off for minutes).
  const timer = (f, ms) => { const t = setTimeout(f, ms); t.unref(); return t; };
  const ctx = vm.createContext({ window, document, navigator, screen: { width: 1280, height: 800 }, setTimeout: timer,
    clearTimeout, Blob, Uint8Array, URLSearchParams, console });
  vm.runInContext(SRC, ctx);
  const fire = (t) => (listeners[t] || []).forEach((f) => f());
  return { sillage: window.sillage, sent, beacons, storage, jar, cookieWrites, log, fire, document, location,
    outbox: () => JSON.parse(storage.sillage_outbox || '[]'),
    // what read or stored something (deleting is neither)
    touched: () => log.filter((x) => !x.startsWith('del ') && !(x.startsWith('cookie=') && x.includes('max-age=0'))) };
}
const messages = (b) => b.sent.flatMap((s) => s.body.batch);
const DAY = 86400e3;
const init = (b, o = {}) => b.sillage.init({ writeKey: 'wk1', host: 'https://collect.example/', flushAt: 3, flushIntervalMs: 20, ...o });

test('calls queued by the snippet are replayed in order', async () => {
  const stub = [['init', { writeKey: 'wk1', host: 'https://c.example', flushAt: 10, flushIntervalMs: 10 }],
    ['track', 'A', { n: 1 }], ['identify', 'u1', { plan: 'pro' }], ['track', 'B']];
  const b = browser({ stub });
  await until(() => b.sent.length >= 1);
  assert.equal(b.sent.length, 1);
  const { batch, writeKey, sentAt } = b.sent[0].body;
  assert.equal(writeKey, 'wk1');
  assert.ok(!Number.isNaN(Date.parse(sentAt)));
  assert.deepEqual(batch.map((m) => [m.type, m.event || null, m.userId || null]),
    [['track', 'A', null], ['identify', null, 'u1'], ['track', 'B', 'u1']]);
  assert.deepEqual(batch[1].traits, { plan: 'pro' });
  assert.equal(b.sent[0].url, 'https://c.example/v1/batch');
  // a string body, no headers: the browser sends text/plain;charset=UTF-8, no CORS preflight
  assert.equal(typeof b.sent[0].opts.body, 'string');
  assert.equal(b.sent[0].opts.headers, undefined);
  assert.equal(b.sent[0].opts.credentials, 'omit');
});

test('batches at flushAt, or after flushIntervalMs', async () => {
  const b = browser();
  init(b, { flushIntervalMs: 100000 });
  b.sillage.track('one');
  b.sillage.track('two');
  assert.equal(b.sent.length, 0);
  b.sillage.track('three');
  assert.equal(b.sent.length, 1);
  assert.equal(b.sent[0].body.batch.length, 3);
  const b2 = browser();
  init(b2, { flushAt: 50, flushIntervalMs: 20 });
  b2.sillage.track('lonely');
  assert.equal(b2.sent.length, 0);
  await until(() => b2.sent.length >= 1);
  assert.equal(b2.sent.length, 1);
});

test('every message carries ids, time and the page context with UTM fields', async () => {
  const b = browser({ search: '?utm_campaign=winter+sale&utm_source=news&utm_medium=email&x=1' });
  init(b, { flushAt: 1 });
  b.sillage.page('Home', { section: 'top' });
  await until(() => b.sent.length >= 1);
  const m = b.sent[0].body.batch[0];
  assert.equal(m.type, 'page');
  assert.equal(m.name, 'Home');
  assert.equal(m.properties.section, 'top');
  assert.equal(m.properties.path, '/p');
  assert.match(m.messageId, /^[0-9a-f-]{36}$/);
  assert.equal(m.anonymousId, b.sillage.anonymousId());
  assert.deepEqual(m.context.campaign, { name: 'winter sale', source: 'news', medium: 'email' });
  assert.equal(m.context.locale, 'fr-FR');
  assert.deepEqual(m.context.screen, { width: 1280, height: 800 });
  assert.deepEqual(m.context.library, { name: 'sillage.js', version: '0.1.0' });
  assert.equal(m.context.page.title, 'Shop');
  assert.equal(m.context.page.referrer, 'https://ref.example/');
  assert.ok(m.context.sessionId);
});

test('anonymousId: cookie (SameSite=Lax, Secure on https, 395 days) and localStorage with its creation time', () => {
  const t0 = Date.now();
  const b = browser();
  const aid = b.sillage.anonymousId();
  assert.match(aid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const w = b.cookieWrites.filter((c) => c.startsWith('sillage_aid='));
  assert.equal(w.length, 1, w);
  assert.equal(w[0], `sillage_aid=${aid}; path=/; SameSite=Lax; max-age=${395 * 86400}; Secure`);
  const stored = JSON.parse(b.storage.sillage_aid);
  assert.equal(stored.id, aid);
  assert.ok(stored.t >= t0 && stored.t <= Date.now(), 'the creation time beside it');
});

test('a later page load reuses the identifier and never rewrites the cookie', () => {
  const b = browser();
  const aid = b.sillage.anonymousId();
  const again = browser({ storage: { ...b.storage }, jar: { ...b.jar } });
  init(again, { flushAt: 100 });
  again.sillage.track('x');
  assert.equal(again.sillage.anonymousId(), aid);
  assert.deepEqual(again.cookieWrites, [], 'the expiry set at creation stays');
  assert.equal(again.storage.sillage_aid, b.storage.sillage_aid, 'its creation time unchanged');
  // the cookie alone (localStorage cleared) is enough, and is not rewritten either
  const cookieOnly = browser({ jar: { ...b.jar } });
  assert.equal(cookieOnly.sillage.anonymousId(), aid);
  assert.deepEqual(cookieOnly.cookieWrites, []);
});

test('localStorage restores a lost cookie with its remaining life only, never past it', () => {
  const created = Date.now() - 100 * DAY;
  const b = browser({ storage: { sillage_aid: JSON.stringify({ id: 'kept-id', t: created }) } });
  assert.equal(b.sillage.anonymousId(), 'kept-id');
  const age = +b.cookieWrites[0].match(/max-age=(\d+)/)[1];
  assert.ok(Math.abs(age - 295 * 86400) <= 2, `${age} s left, not a new 395 days`);
  assert.equal(JSON.parse(b.storage.sillage_aid).t, created);
  // past its age: a new identifier, and what belonged to the old one goes with it
  const old = browser({ storage: { sillage_aid: JSON.stringify({ id: 'old-id', t: Date.now() - 396 * DAY }),
    sillage_uid: 'u-old', sillage_traits: '{"email":"old@example.com"}' } });
  init(old, { flushAt: 100 });
  old.sillage.track('after expiry');
  assert.notEqual(old.sillage.anonymousId(), 'old-id');
  assert.equal(old.outbox()[0].userId, undefined);
  assert.equal(old.storage.sillage_uid, undefined);
  assert.equal(old.storage.sillage_traits, undefined);
  assert.match(old.cookieWrites[0], /max-age=34128000;/);
  // a copy from an older tag (no creation time) is not trusted
  assert.notEqual(browser({ storage: { sillage_aid: 'from-storage' } }).sillage.anonymousId(), 'from-storage');
});

test('cookieDays sets the life, bounded at 395', () => {
  const b = browser();
  init(b, { cookieDays: 30 });
  b.sillage.anonymousId();
  assert.match(b.cookieWrites[0], /max-age=2592000;/);
  const restored = browser({ storage: { sillage_aid: JSON.stringify({ id: 'a', t: Date.now() - 31 * DAY }) } });
  init(restored, { cookieDays: 30 });
  assert.notEqual(restored.sillage.anonymousId(), 'a', 'older than the configured life');
  const big = browser();
  init(big, { cookieDays: 1000 });
  big.sillage.anonymousId();
  assert.match(big.cookieWrites[0], /max-age=34128000;/);
});

test('identify with another userId, and reset(), rotate the anonymousId', () => {
  const b = browser();
  init(b, { flushAt: 100 });
  const a0 = b.sillage.anonymousId();
  b.sillage.identify('u1', { email: 'a@example.com' });
  assert.equal(b.sillage.anonymousId(), a0, 'the first identify keeps the device id');
  b.sillage.identify('u1', { plan: 'pro' });
  assert.equal(b.sillage.anonymousId(), a0);
  b.sillage.identify('u2');
  const a1 = b.sillage.anonymousId();
  assert.notEqual(a1, a0, 'another person on this device');
  assert.deepEqual(b.outbox().at(-1).traits, {}, 'traits do not leak to the next person');
  b.sillage.reset();
  assert.notEqual(b.sillage.anonymousId(), a1);
  b.sillage.track('after reset');
  assert.equal(b.outbox().at(-1).userId, undefined);
});

test('a session ends after 30 minutes without activity', () => {
  const jar = { sillage_aid: 'a1' };
  const b = browser({ jar, storage: { sillage_session: JSON.stringify({ id: 'old', t: Date.now() - 31 * 60000 }) } });
  init(b, { flushAt: 100 });
  b.sillage.track('x');
  const s1 = b.outbox()[0].context.sessionId;
  assert.notEqual(s1, 'old');
  b.sillage.track('y');
  assert.equal(b.outbox()[1].context.sessionId, s1);
  const fresh = browser({ jar, storage: { sillage_session: JSON.stringify({ id: 'recent', t: Date.now() - 60000 }) } });
  init(fresh, { flushAt: 100 });
  fresh.sillage.track('z');
  assert.equal(fresh.outbox()[0].context.sessionId, 'recent');
});

test('failures keep the outbox and retry with backoff; a 4xx drops the batch', async () => {
  const b = browser({ respond: (n) => (n <= 1 ? new Error('offline') : n === 2 ? { ok: false, status: 503 } : { ok: true, status: 200 }) });
  init(b, { flushAt: 1 });
  b.sillage.track('kept');
  await until(() => b.sent.length >= 1);
  assert.equal(b.sent.length, 1);
  assert.equal(b.outbox().length, 1, 'still there after a network error');
  await sleep(1400); // first backoff ~1 s
  assert.equal(b.sent.length, 2);
  assert.equal(b.outbox().length, 1, 'still there after a 503');
  await sleep(2700); // second backoff ~2 s
  assert.equal(b.sent.length, 3);
  assert.equal(b.outbox().length, 0);
  const ids = b.sent.map((s) => s.body.batch[0].messageId);
  assert.equal(new Set(ids).size, 1, 'the same message, so the server can dedupe');

  const bad = browser({ respond: () => ({ ok: false, status: 400 }) });
  init(bad, { flushAt: 1 });
  bad.sillage.track('malformed on the server side');
  await sleep(20);
  assert.equal(bad.outbox().length, 0, 'a 400 is not retried forever');
});

test('the outbox is bounded: the oldest go first', async () => {
  const b = browser({ respond: () => new Error('offline') });
  init(b, { flushAt: 1000, maxOutbox: 5, flushIntervalMs: 100000 });
  for (let i = 0; i < 8; i++) b.sillage.track('e' + i);
  assert.deepEqual(b.outbox().map((m) => m.event), ['e3', 'e4', 'e5', 'e6', 'e7']);
});

test('pagehide sends the outbox with sendBeacon as text/plain', async () => {
  const b = browser();
  init(b, { flushAt: 100, flushIntervalMs: 100000 });
  b.sillage.track('a');
  b.sillage.track('b');
  b.fire('pagehide');
  assert.equal(b.beacons.length, 1);
  assert.equal(b.beacons[0].url, 'https://collect.example/v1/batch');
  assert.equal(b.beacons[0].blob.type, 'text/plain');
  const body = JSON.parse(await b.beacons[0].blob.text());
  assert.deepEqual(body.batch.map((m) => m.event), ['a', 'b']);
  assert.equal(body.writeKey, 'wk1');
  assert.equal(b.outbox().length, 0);
  assert.equal(b.sent.length, 0);
});

test('optOut deletes the cookie and every sillage_ entry, then reads, writes and sends nothing', async () => {
  const b = browser({ respond: () => new Error('offline') });
  init(b, { flushAt: 100, flushIntervalMs: 100000 });
  b.sillage.identify('u1', { plan: 'pro' });
  b.sillage.track('pending');
  const aid0 = b.sillage.anonymousId();
  assert.ok(b.storage.sillage_outbox && b.jar.sillage_aid === aid0);
  b.storage.other_key = 'not ours';
  b.sillage.optOut();
  assert.deepEqual(Object.keys(b.storage), ['other_key']);
  assert.deepEqual(b.jar, {});
  assert.match(b.cookieWrites.at(-1), /^sillage_aid=; path=\/; SameSite=Lax; max-age=0/);
  const mark = b.log.length;
  b.sillage.track('no');
  b.sillage.page();
  b.sillage.identify('u2');
  b.sillage.flush();
  b.fire('pagehide');
  assert.equal(b.sillage.anonymousId(), undefined);
  await sleep(40);
  assert.deepEqual(b.log.slice(mark), [], 'no read or write after optOut');
  assert.equal(b.sent.length + b.beacons.length, 0);
  // optIn resumes, with a new identifier (the old one is gone)
  b.sillage.optIn();
  b.sillage.track('yes');
  assert.ok(b.sillage.anonymousId() && b.sillage.anonymousId() !== aid0);
  assert.deepEqual(b.outbox().map((m) => [m.event, m.userId]), [['yes', undefined]]);
});

test('optOut is not remembered by the tag: queued in the snippet on each page, it comes before any access', async () => {
  const stub = [['init', { writeKey: 'wk1', host: 'https://c.example', flushAt: 1 }], ['optOut'], ['page'], ['track', 'A']];
  const b = browser({ stub, storage: { sillage_aid: JSON.stringify({ id: 'x', t: Date.now() }), sillage_outbox: '[{"messageId":"m"}]' } });
  await sleep(40);
  assert.deepEqual(b.touched(), [], 'nothing read, nothing stored');
  assert.equal(b.storage.sillage_aid, undefined, 'and what an earlier consent left is deleted');
  assert.equal(b.sent.length + b.beacons.length, 0);
  // without the call, the next page runs as before (the site's consent platform decides)
  const next = browser({ stub: stub.filter((c) => c[0] !== 'optOut') });
  await until(() => messages(next).length >= 2);
  assert.deepEqual(messages(next).map((m) => m.type), ['page', 'track']);
});

test('Global Privacy Control: nothing read, written or sent, unless respectGpc is false', async () => {
  const gpc = browser({ gpc: true, jar: { sillage_aid: 'earlier' }, storage: { sillage_outbox: '[{"messageId":"m"}]' } });
  init(gpc, { flushAt: 1 });
  gpc.sillage.page();
  gpc.sillage.identify('u1', { email: 'a@example.com' });
  gpc.sillage.track('gpc');
  assert.equal(gpc.sillage.anonymousId(), undefined);
  gpc.fire('pagehide');
  await sleep(30);
  assert.deepEqual(gpc.log, []);
  assert.equal(gpc.sent.length + gpc.beacons.length, 0);
  const ignored = browser({ gpc: true });
  init(ignored, { flushAt: 1, respectGpc: false });
  ignored.sillage.track('sent');
  await until(() => messages(ignored).length >= 1);
  assert.deepEqual(messages(ignored).map((m) => m.event), ['sent']);
});

// Consent "required": the calls a page makes before the banner is answered.
function beforeConsent(b) {
  b.sillage.page('Landing');
  b.sillage.track('Clicked', { n: 1 });
  b.sillage.identify('u1', { email: 'a@example.com' });
  b.sillage.alias('u1-new');
  b.sillage.flush();
  b.fire('pagehide');
}

test('consent required: nothing read, written or sent before consent; the anonymousId does not exist yet', async () => {
  const b = browser({ jar: { sillage_aid: 'earlier' }, storage: { sillage_outbox: '[{"messageId":"m"}]' } });
  init(b, { consent: 'required', flushAt: 1, flushIntervalMs: 10 });
  beforeConsent(b);
  assert.equal(b.sillage.anonymousId(), undefined);
  await sleep(60);
  assert.deepEqual(b.log, []);
  assert.equal(b.sent.length + b.beacons.length, 0);
});

test('consent granted: the held calls go out in order, with their own time and page, and the consent in context', async () => {
  const b = browser({ search: '?utm_source=news' });
  init(b, { consent: 'required', flushAt: 100, flushIntervalMs: 10 });
  const t0 = Date.now();
  beforeConsent(b);
  b.location.href = 'https://shop.example/next'; b.location.pathname = '/next'; b.location.search = '';
  await sleep(30);
  const t1 = Date.now();
  assert.equal(b.log.length, 0);
  b.sillage.consent({ analytics: true, marketing: false });
  const aid = b.sillage.anonymousId();
  assert.ok(aid, 'created at consent');
  assert.equal(JSON.parse(b.storage.sillage_aid).id, aid);
  b.sillage.track('After');
  await until(() => messages(b).length >= 5);
  const ms = messages(b);
  assert.deepEqual(ms.map((m) => [m.type, m.event || m.name || null]),
    [['page', 'Landing'], ['track', 'Clicked'], ['identify', null], ['alias', null], ['track', 'After']]);
  for (const m of ms.slice(0, 4)) {
    const t = Date.parse(m.timestamp);
    assert.ok(t >= t0 && t < t1, `held ${m.type} keeps its time (${m.timestamp})`);
    assert.equal(m.context.page.path, '/p', 'and its page');
  }
  assert.ok(Date.parse(ms[4].timestamp) >= t1);
  assert.equal(ms[4].context.page.path, '/next');
  assert.deepEqual(ms[0].context.campaign, { source: 'news' });
  assert.equal(ms[0].properties.path, '/p');
  assert.ok(ms.every((m) => m.anonymousId === aid));
  assert.ok(ms.every((m) => JSON.stringify(m.context.consent) === '{"categoryPreferences":{"analytics":true,"marketing":false}}'));
  assert.deepEqual([ms[1].userId, ms[2].userId, ms[4].userId], [undefined, 'u1', 'u1']);
  assert.deepEqual([ms[3].previousId, ms[3].userId], ['u1', 'u1-new']);
  assert.ok(!ms.some((m) => m.event === 'Consent Preference Updated'), 'a first grant is no change');
  assert.ok(Date.parse(b.sent[0].body.sentAt) >= t1, 'sentAt is the real send time');
});

test('consent granted on a later page: the identifier from the earlier consent is reused, the cookie untouched', async () => {
  const first = browser();
  init(first, { consent: 'required', flushAt: 100 });
  first.sillage.consent({ analytics: true });
  const aid = first.sillage.anonymousId();
  const b = browser({ storage: { ...first.storage }, jar: { ...first.jar } });
  init(b, { consent: 'required', flushAt: 1 });
  b.sillage.page();
  assert.deepEqual(b.log, []);
  b.sillage.consent({ analytics: true });
  await until(() => messages(b).length >= 1);
  assert.equal(b.sillage.anonymousId(), aid);
  assert.deepEqual(b.cookieWrites, []);
  assert.deepEqual(messages(b).map((m) => [m.type, m.anonymousId]), [['page', aid]], 'the same preferences: no update');
});

test('consent required: at most 100 calls are held, the first ones', async () => {
  const b = browser();
  init(b, { consent: 'required', flushAt: 1000, flushIntervalMs: 10 });
  for (let i = 0; i < 130; i++) b.sillage.track('e' + i);
  b.sillage.consent({ analytics: true });
  await until(() => messages(b).length >= 100);
  const ev = messages(b).map((m) => m.event);
  assert.equal(ev.length, 100);
  assert.equal(ev[0], 'e0');
  assert.equal(ev[99], 'e99');
});

test('consent refused: the held calls are dropped, nothing stored or sent, later calls dropped too', async () => {
  const b = browser({ jar: { sillage_aid: 'earlier' }, storage: { sillage_aid: '{"id":"earlier","t":1}' } });
  init(b, { consent: 'required', flushAt: 1, flushIntervalMs: 10 });
  beforeConsent(b);
  b.sillage.consent({ analytics: false, marketing: false });
  b.sillage.track('after refusal');
  b.sillage.optIn(); // still needs consent
  b.sillage.track('after optIn');
  b.fire('pagehide');
  await sleep(40);
  assert.deepEqual(b.touched(), []);
  assert.equal(b.sent.length + b.beacons.length, 0);
  assert.deepEqual(b.jar, {}, 'an identifier an earlier consent left is deleted');
  assert.deepEqual(b.storage, {});
  // a later grant on the same page starts afresh: only what comes after it
  b.sillage.consent({ analytics: true });
  b.sillage.track('granted');
  await until(() => messages(b).length >= 1);
  assert.deepEqual(messages(b).map((m) => m.event), ['granted']);
  assert.notEqual(messages(b)[0].anonymousId, 'earlier');
});

test('data-consent="required" on the script tag holds the automatic page view until consent', async () => {
  const b = browser({ script: { 'data-write-key': 'wk-tag', 'data-consent': 'required' } });
  await sleep(30);
  assert.deepEqual(b.log, []);
  assert.equal(b.sent.length, 0);
  b.sillage.consent({ marketing: true });
  b.sillage.flush();
  await until(() => b.sent.length >= 1);
  assert.equal(b.sent[0].url, 'https://collect.example/v1/batch');
  assert.equal(b.sent[0].body.writeKey, 'wk-tag');
  assert.deepEqual(messages(b).map((m) => [m.type, m.context.consent.categoryPreferences.marketing]), [['page', true]]);
  // without the attribute: the default mode, the page view goes at once
  const plain = browser({ script: { 'data-write-key': 'wk-tag' } });
  assert.equal(plain.outbox().length, 1);
  // an objection the page queued before the tag loaded comes before the automatic page view
  const objected = browser({ script: { 'data-write-key': 'wk-tag' }, stub: [['optOut']] });
  await sleep(30);
  assert.deepEqual(objected.touched(), []);
  assert.equal(objected.sent.length + objected.beacons.length, 0);
});

test('default mode: consent() adds the categories to later messages, remembered for later pages', async () => {
  const b = browser();
  init(b, { flushAt: 100 });
  b.sillage.track('before');
  b.sillage.consent({ analytics: true, marketing: true });
  b.sillage.track('after');
  assert.deepEqual(b.outbox().map((m) => [m.event, m.context.consent?.categoryPreferences]),
    [['before', undefined], ['after', { analytics: true, marketing: true }]]);
  assert.equal(b.storage.sillage_consent, '{"analytics":true,"marketing":true}');
  const next = browser({ storage: { ...b.storage }, jar: { ...b.jar } });
  init(next, { flushAt: 100 });
  next.sillage.track('next page');
  assert.deepEqual(next.outbox().at(-1).context.consent, { categoryPreferences: { analytics: true, marketing: true } });
});

test('a change of preferences sends one "Consent Preference Updated"; the same preferences send nothing', async () => {
  const b = browser();
  init(b, { consent: 'required', flushAt: 100 });
  b.sillage.consent({ analytics: true, marketing: true });
  b.sillage.consent({ analytics: true, marketing: true });
  assert.equal(b.outbox().length, 0);
  b.sillage.consent({ analytics: true, marketing: false });
  b.sillage.consent({ analytics: true, marketing: false });
  const ob = b.outbox();
  assert.equal(ob.length, 1);
  assert.deepEqual([ob[0].type, ob[0].event], ['track', 'Consent Preference Updated']);
  assert.deepEqual(ob[0].context.consent.categoryPreferences, { analytics: true, marketing: false });
  assert.equal(ob[0].anonymousId, b.sillage.anonymousId());
  // changed while the tag was not running (another page): learnt at the next grant
  const later = browser({ storage: { ...b.storage, sillage_outbox: '[]' }, jar: { ...b.jar } });
  init(later, { consent: 'required', flushAt: 100 });
  later.sillage.consent({ analytics: true, marketing: true });
  assert.deepEqual(later.outbox().map((m) => [m.event, m.context.consent.categoryPreferences.marketing]),
    [['Consent Preference Updated', true]]);
});

test('a revocation sends one last message with nothing from the device, then stops like optOut', async () => {
  const b = browser({ respond: () => new Error('offline') });
  init(b, { consent: 'required', flushAt: 100, flushIntervalMs: 100000 });
  b.sillage.consent({ analytics: true, marketing: true });
  b.sillage.identify('u1');
  b.sillage.track('pending');
  const aid = b.sillage.anonymousId();
  const mark = b.log.length;
  b.sillage.consent({ analytics: false, marketing: false });
  assert.equal(b.beacons.length, 1);
  const body = JSON.parse(await b.beacons[0].blob.text());
  assert.equal(body.batch.length, 1);
  const m = body.batch[0];
  assert.deepEqual([m.type, m.event, m.anonymousId, m.userId], ['track', 'Consent Preference Updated', aid, 'u1']);
  assert.deepEqual(m.context.consent.categoryPreferences, { analytics: false, marketing: false });
  assert.equal(m.context.sessionId, undefined, 'nothing read from the device for it');
  assert.deepEqual(b.log.slice(mark).filter((x) => !x.startsWith('del ') && !x.includes('max-age=0')), []);
  assert.deepEqual(b.storage, {});
  assert.deepEqual(b.jar, {});
  b.sillage.track('after');
  b.fire('pagehide');
  await sleep(30);
  assert.equal(b.beacons.length, 1);
  assert.equal(b.sent.length, 0);
  assert.deepEqual(b.storage, {});
});

test('a refusal when nothing was ever granted sends nothing, in either mode', async () => {
  const d = browser();
  init(d, { flushAt: 1 });
  d.sillage.consent({ analytics: false });
  assert.deepEqual(d.touched(), [], 'default mode too: a refusal reads and writes nothing (it only deletes)');
  d.sillage.track('x');
  d.fire('pagehide');
  await sleep(30);
  assert.equal(d.sent.length + d.beacons.length, 0);
  assert.deepEqual(d.storage, {});
  const r = browser();
  init(r, { consent: 'required', flushAt: 1 });
  r.sillage.track('x');
  r.sillage.consent({});
  r.fire('pagehide');
  await sleep(30);
  assert.equal(r.sent.length + r.beacons.length, 0);
  assert.deepEqual(r.touched(), []);
});

test('alias sends previousId and userId', async () => {
  const b = browser();
  init(b, { flushAt: 1 });
  b.sillage.identify('old-id');
  b.sillage.alias('new-id');
  await sleep(30);
  const m = b.sent.flatMap((s) => s.body.batch).find((x) => x.type === 'alias');
  assert.deepEqual([m.previousId, m.userId], ['old-id', 'new-id']);
});

test('the built tag is at most 2.5 KB minified and gzipped', () => {
  const file = process.env.SL_TAG_MIN;
  assert.ok(file, 'SL_TAG_MIN names the minified tag (set by ctest)');
  const min = readFileSync(file);
  const gz = gzipSync(min, { level: 9 }).length;
  assert.ok(min.length < SRC.length, 'it is minified');
  assert.ok(gz <= 2560, `${gz} bytes gzipped`);
});
