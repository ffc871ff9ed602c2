// tag.unit.test.mjs - sillage.js's logic with Node's test runner: the tag runs
// in a vm context with a small fake browser (window, document.cookie,
// localStorage, navigator, fetch, sendBeacon) that records what it sends.
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

function browser({ storage = {}, respond = () => ({ ok: true, status: 200 }), gpc, search = '', stub } = {}) {
  const jar = {};
  const cookieWrites = [];
  const listeners = {};
  const on = (t, f) => { (listeners[t] ||= []).push(f); };
  const sent = [], beacons = [];
  const location = { href: 'https://shop.example/p' + search, pathname: '/p', search, protocol: 'https:' };
  const document = { title: 'Shop', referrer: 'https://ref.example/', visibilityState: 'visible', currentScript: null, addEventListener: on };
  Object.defineProperty(document, 'cookie', {
    get: () => Object.entries(jar).map(([k, v]) => k + '=' + v).join('; '),
    set: (s) => {
      cookieWrites.push(s);
      const [kv] = s.split('; ');
      const i = kv.indexOf('=');
      if (s.includes('max-age=0')) delete jar[kv.slice(0, i)]; else jar[kv.slice(0, i)] = kv.slice(i + 1);
    },
  });
  const localStorage = {
    getItem: (k) => (k in storage ? storage[k] : null),
    setItem: (k, v) => { storage[k] = String(v); },
    removeItem: (k) => { delete storage[k]; },
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
    clearTimeout, Blob, Uint8Array, console });
  vm.runInContext(SRC, ctx);
  const fire = (t) => (listeners[t] || []).forEach((f) => f());
  return { sillage: window.sillage, sent, beacons, storage, jar, cookieWrites, fire, document,
    outbox: () => JSON.parse(storage.sillage_outbox || '[]') };
}
const init = (b, o = {}) => b.sillage.init({ writeKey: 'wk1', host: 'https://collect.example/', flushAt: 3, flushIntervalMs: 20, ...o });

test('calls queued by the snippet are replayed in order', async () => {
  const stub = [['init', { writeKey: 'wk1', host: 'https://c.example', flushAt: 10, flushIntervalMs: 10 }],
    ['track', 'A', { n: 1 }], ['identify', 'u1', { plan: 'pro' }], ['track', 'B']];
  const b = browser({ stub });
  await sleep(60);
  assert.equal(b.sent.length, 1);
  const { batch, writeKey, sentAt } = b.sent[0].body;
  assert.equal(writeKey, 'wk1');
  assert.ok(!Number.isNaN(Date.parse(sentAt)));
  assert.deepEqual(batch.map((m) => [m.type, m.event || null, m.userId || null]),
    [['track', 'A', null], ['identify', null, 'u1'], ['track', 'B', 'u1']]);
  assert.deepEqual(batch[1].traits, { plan: 'pro' });
  assert.equal(b.sent[0].url, 'https://c.example/v1/batch');
  assert.equal(b.sent[0].opts.headers['Content-Type'], 'text/plain'); // no CORS preflight
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
  await sleep(60);
  assert.equal(b2.sent.length, 1);
});

test('every message carries ids, time and the page context with UTM fields', async () => {
  const b = browser({ search: '?utm_campaign=winter+sale&utm_source=news&utm_medium=email&x=1' });
  init(b, { flushAt: 1 });
  b.sillage.page('Home', { section: 'top' });
  await sleep(10);
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

test('anonymousId: cookie (SameSite=Lax, Secure on https, a year) and localStorage; kept across loads', () => {
  const b = browser();
  const aid = b.sillage.anonymousId();
  const w = b.cookieWrites.find((c) => c.startsWith('sillage_aid='));
  assert.match(w, /SameSite=Lax/);
  assert.match(w, /max-age=31536000/);
  assert.match(w, /Secure/);
  assert.equal(b.storage.sillage_aid, aid);
  // the next page load reads it back, from the cookie or from localStorage alone
  assert.equal(browser({ storage: { ...b.storage } }).sillage.anonymousId(), aid);
  assert.equal(browser({ storage: { sillage_aid: 'from-storage' } }).sillage.anonymousId(), 'from-storage');
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
  const b = browser({ storage: { sillage_session: JSON.stringify({ id: 'old', t: Date.now() - 31 * 60000 }) } });
  init(b, { flushAt: 100 });
  b.sillage.track('x');
  const s1 = b.outbox()[0].context.sessionId;
  assert.notEqual(s1, 'old');
  b.sillage.track('y');
  assert.equal(b.outbox()[1].context.sessionId, s1);
  const fresh = browser({ storage: { sillage_session: JSON.stringify({ id: 'recent', t: Date.now() - 60000 }) } });
  init(fresh, { flushAt: 100 });
  fresh.sillage.track('z');
  assert.equal(fresh.outbox()[0].context.sessionId, 'recent');
});

test('failures keep the outbox and retry with backoff; a 4xx drops the batch', async () => {
  const b = browser({ respond: (n) => (n <= 1 ? new Error('offline') : n === 2 ? { ok: false, status: 503 } : { ok: true, status: 200 }) });
  init(b, { flushAt: 1 });
  b.sillage.track('kept');
  await sleep(20);
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

test('opt-out is persisted and sends nothing; Global Privacy Control is honoured unless disabled', async () => {
  const b = browser();
  init(b, { flushAt: 1 });
  b.sillage.optOut();
  b.sillage.track('no');
  await sleep(30);
  assert.equal(b.sent.length, 0);
  assert.equal(b.outbox().length, 0);
  const next = browser({ storage: { ...b.storage } });
  init(next, { flushAt: 1 });
  next.sillage.track('still no');
  await sleep(30);
  assert.equal(next.sent.length, 0);
  next.sillage.optIn();
  next.sillage.track('yes');
  await sleep(30);
  assert.equal(next.sent.length, 1);

  const gpc = browser({ gpc: true });
  init(gpc, { flushAt: 1 });
  gpc.sillage.track('gpc');
  await sleep(30);
  assert.equal(gpc.sent.length, 0);
  const ignored = browser({ gpc: true });
  init(ignored, { flushAt: 1, respectGpc: false });
  ignored.sillage.track('sent');
  await sleep(30);
  assert.equal(ignored.sent.length, 1);
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
