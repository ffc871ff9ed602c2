// ingest.test.mjs - the Segment-compatible API against a real server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { startServer, post, basic, track, WRITE_KEY } from './helpers.mjs';

let srv;
before(async () => {
  srv = await startServer({
    config: {
      geoip_db: process.env.SL_TEST_CITY_MMDB,
      trusted_proxies: ['127.0.0.1'],
      limits: { max_message_bytes: 2048, max_request_bytes: 16384, max_batch_messages: 50 },
    },
  });
});
after(async () => {
  const { code } = await srv.stop();
  assert.equal(code, 0, 'server exits 0 on SIGTERM');
  srv.cleanup();
});

function stored() {
  return srv.exportEvents();
}
function byMessageId(id) {
  return stored().filter((e) => e.messageId === id);
}

test('each single-message endpoint stores its type', async () => {
  const cases = {
    track: { userId: 'u1', event: 'Product Viewed', properties: { sku: 'A1' } },
    page: { anonymousId: 'a1', name: 'Home', properties: { path: '/' } },
    screen: { anonymousId: 'a1', name: 'Dashboard' },
    identify: { userId: 'u1', anonymousId: 'a1', traits: { email: 'u1@example.com' } },
    alias: { previousId: 'a1', userId: 'u1' },
    group: { userId: 'u1', groupId: 'g1', traits: { name: 'Acme' } },
  };
  for (const [type, msg] of Object.entries(cases)) {
    const id = `ep-${type}`;
    const r = await post(srv, `/v1/${type}`, { ...msg, messageId: id });
    assert.equal(r.status, 200, `${type}: ${r.text}`);
    assert.deepEqual(r.json, { success: true });
    const ev = byMessageId(id);
    assert.equal(ev.length, 1, type);
    assert.equal(ev[0].type, type);
    assert.ok(ev[0].receivedAt && ev[0].timestamp);
  }
});

test('analytics.js 2.0 routes: /v1/<first letter of the type>, /v1/b, and /v1/m answered cheaply', async () => {
  const letters = { t: 'track', p: 'page', s: 'screen', i: 'identify', a: 'alias', g: 'group' };
  for (const [l, type] of Object.entries(letters)) {
    const msg = { type, userId: 'ajs-u', anonymousId: 'ajs-a', previousId: 'ajs-old', groupId: 'ajs-g', event: 'E',
      messageId: `short-${l}`, writeKey: WRITE_KEY };
    const r = await post(srv, `/v1/${l}`, JSON.stringify(msg), { 'Content-Type': 'text/plain', Authorization: '' });
    assert.equal(r.status, 200, `/v1/${l}: ${r.text}`);
    assert.deepEqual(r.json, { success: true });
    const ev = byMessageId(`short-${l}`);
    assert.equal(ev.length, 1, l);
    assert.equal(ev[0].type, type, `/v1/${l} stores a ${type}`);
  }
  const b = await post(srv, '/v1/b', { batch: [{ type: 'track', userId: 'ajs-u', event: 'B', messageId: 'short-b1' }],
    sentAt: new Date().toISOString() });
  assert.equal(b.status, 200, b.text);
  assert.equal(byMessageId('short-b1').length, 1);
  // the library's metrics about itself: a success, nothing stored, no key needed
  const before = stored().length;
  const m = await fetch(srv.url + '/v1/m', { method: 'POST', headers: { 'Content-Type': 'text/plain' },
    body: JSON.stringify({ series: [{ type: 'Counter', metric: 'analytics_js.invoke', value: 1, tags: {} }] }) });
  assert.equal(m.status, 200);
  assert.deepEqual(await m.json(), { success: true });
  assert.equal(stored().length, before);
  assert.equal((await fetch(srv.url + '/v1/m')).status, 405);
  assert.equal((await post(srv, '/v1/x', { type: 'track' })).status, 404, 'other letters are no route');
  // its retries carry X-Retry-Count: the preflight allows it
  const pf = await fetch(srv.url + '/v1/t', { method: 'OPTIONS', headers: { Origin: 'http://shop.example',
    'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization,content-type,x-retry-count' } });
  assert.equal(pf.status, 204);
  assert.match(pf.headers.get('access-control-allow-headers'), /X-Retry-Count/);
});

test('batch with one bad message keeps the good ones and reports the bad one', async () => {
  const r = await post(srv, '/v1/batch', {
    batch: [
      { type: 'track', userId: 'b1', event: 'Good One', messageId: 'batch-good-1' },
      { type: 'track', userId: 'b1', messageId: 'batch-bad' },
      { type: 'identify', userId: 'b1', traits: { plan: 'pro' }, messageId: 'batch-good-2' },
      { type: 'unknown', userId: 'b1', messageId: 'batch-bad-2' },
    ],
    context: { library: { name: 'test-lib' } },
    sentAt: new Date().toISOString(),
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.success, true);
  assert.equal(r.json.accepted, 2);
  assert.equal(r.json.rejected, 2);
  assert.deepEqual(r.json.errors.map((e) => e.index), [1, 3]);
  assert.match(r.json.errors[0].error, /event/);
  assert.equal(byMessageId('batch-good-1').length, 1);
  assert.equal(byMessageId('batch-good-2').length, 1);
  assert.equal(byMessageId('batch-bad').length, 0);
  assert.equal(byMessageId('batch-good-1')[0].context.library.name, 'test-lib', 'batch context applied');
});

test('a batch with only bad messages is a 400 listing each', async () => {
  const r = await post(srv, '/v1/batch', { batch: [{ type: 'track', userId: 'x' }, { type: 'page' }] });
  assert.equal(r.status, 400);
  assert.equal(r.json.success, false);
  assert.equal(r.json.errors.length, 2);
});

test('gzip body', async () => {
  const body = gzipSync(JSON.stringify(track({ messageId: 'gz-1' })));
  const r = await post(srv, '/v1/track', body, { 'Content-Encoding': 'gzip' });
  assert.equal(r.status, 200, r.text);
  assert.equal(byMessageId('gz-1').length, 1);
  const bad = await post(srv, '/v1/track', Buffer.from('not gzip'), { 'Content-Encoding': 'gzip' });
  assert.equal(bad.status, 400);
  assert.match(bad.json.error, /gzip/);
});

test('gzip bomb is refused by the decompressed bound', async () => {
  const bomb = gzipSync(Buffer.alloc(4 << 20, 0x20));
  assert.ok(bomb.length < 16384);
  const r = await post(srv, '/v1/track', bomb, { 'Content-Encoding': 'gzip' });
  assert.equal(r.status, 413);
  assert.match(r.json.error, /max_request_bytes/);
});

test('text/plain body with writeKey in the body (sendBeacon)', async () => {
  const r = await fetch(srv.url + '/v1/batch', {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
    body: JSON.stringify({ writeKey: WRITE_KEY, batch: [{ type: 'page', anonymousId: 'beacon', messageId: 'tp-1' }] }),
  });
  assert.equal(r.status, 200);
  const ev = byMessageId('tp-1');
  assert.equal(ev.length, 1);
  assert.equal(ev[0].writeKey, undefined, 'the write key is not stored');
});

test('pixel answers a GIF and stores the event', async () => {
  const data = Buffer.from(JSON.stringify({ writeKey: WRITE_KEY, userId: 'px', event: 'Email Opened', messageId: 'px-1' })).toString('base64');
  const r = await fetch(`${srv.url}/v1/pixel/track?data=${encodeURIComponent(data)}`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'image/gif');
  const buf = Buffer.from(await r.arrayBuffer());
  assert.equal(buf.subarray(0, 6).toString(), 'GIF89a');
  assert.equal(byMessageId('px-1')[0].event, 'Email Opened');
  const bad = await fetch(`${srv.url}/v1/pixel/track?data=%%%`);
  assert.equal(bad.status, 400);
  const bad2 = await fetch(`${srv.url}/v1/pixel/track?data=!!!!`);
  assert.equal(bad2.status, 400);
  const noKey = Buffer.from(JSON.stringify({ userId: 'px', event: 'E' })).toString('base64');
  assert.equal((await fetch(`${srv.url}/v1/pixel/page?data=${noKey}`)).status, 401);
});

test('write key: wrong or missing is 401, Basic or body both work', async () => {
  const wrong = await post(srv, '/v1/track', track(), { Authorization: basic('nope') });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.json.success, false);
  const missing = await post(srv, '/v1/track', track(), { Authorization: '' });
  assert.equal(missing.status, 401);
  assert.match(missing.json.error, /write key/);
  const inBody = await post(srv, '/v1/track', { ...track(), writeKey: 'wk_other', messageId: 'wk-body' }, { Authorization: '' });
  assert.equal(inBody.status, 200);
  assert.equal(byMessageId('wk-body').length, 1);
});

test('limits: each answers 400/413 naming the limit', async () => {
  const bigMsg = track({ properties: { blob: 'x'.repeat(3000) } });
  let r = await post(srv, '/v1/track', bigMsg);
  assert.equal(r.status, 413);
  assert.match(r.json.error, /max_message_bytes/);

  r = await post(srv, '/v1/batch', { batch: [{ type: 'track', ...bigMsg, messageId: 'lim-big' }, { type: 'track', ...track(), messageId: 'lim-small' }] });
  assert.equal(r.status, 200);
  assert.match(r.json.errors[0].error, /max_message_bytes/);
  assert.equal(byMessageId('lim-small').length, 1);
  assert.equal(byMessageId('lim-big').length, 0);

  const many = Array.from({ length: 12 }, (_, i) => ({ type: 'track', ...track(), properties: { pad: 'y'.repeat(1500), i } }));
  r = await post(srv, '/v1/batch', { batch: many });
  assert.equal(r.status, 413);
  assert.match(r.json.error, /max_request_bytes/);

  r = await post(srv, '/v1/batch', { batch: Array.from({ length: 51 }, () => ({ type: 'track', userId: 'u', event: 'e' })) });
  assert.equal(r.status, 413);
  assert.match(r.json.error, /max_batch_messages/);

  let deep = { userId: 'd', event: 'deep' };
  let cur = deep;
  for (let i = 0; i < 40; i++) { cur.p = {}; cur = cur.p; }
  r = await post(srv, '/v1/track', deep);
  assert.equal(r.status, 400);
  assert.match(r.json.error, /max_json_depth/);

  r = await post(srv, '/v1/track', '{"userId": "u", "event": ');
  assert.equal(r.status, 400);
  assert.match(r.json.error, /JSON/);

  r = await post(srv, '/v1/track', Buffer.from('{"userId":"\xff\xfe","event":"x"}', 'latin1'));
  assert.equal(r.status, 400);
  assert.match(r.json.error, /UTF-8/);

  r = await post(srv, '/v1/track', { event: 'no id' });
  assert.equal(r.status, 400);
  assert.match(r.json.error, /userId or anonymousId/);
});

test('a duplicate messageId is acknowledged and stored once', async () => {
  const msg = track({ messageId: 'dup-1' });
  for (let i = 0; i < 3; i++) assert.equal((await post(srv, '/v1/track', msg)).status, 200);
  const r = await post(srv, '/v1/batch', { batch: [{ type: 'track', ...msg }, { type: 'track', ...msg }] });
  assert.equal(r.status, 200);
  assert.equal(byMessageId('dup-1').length, 1);
});

test('a missing messageId is assigned by the server', async () => {
  const r = await post(srv, '/v1/track', { userId: 'noid', event: 'No Id' });
  assert.equal(r.status, 200);
  const ev = stored().filter((e) => e.userId === 'noid');
  assert.equal(ev.length, 1);
  assert.match(ev[0].messageId, /^[0-9a-f-]{36}$/);
});

test('timestamp corrected for client clock skew; receivedAt set', async () => {
  const now = Date.now();
  const sentAt = new Date(now + 3600_000).toISOString();      // client one hour fast
  const timestamp = new Date(now + 3600_000 - 60_000).toISOString(); // a minute before sending
  const r = await post(srv, '/v1/track', track({ messageId: 'skew-1', sentAt, timestamp }));
  assert.equal(r.status, 200);
  const ev = byMessageId('skew-1')[0];
  const received = Date.parse(ev.receivedAt);
  assert.ok(Math.abs(received - now) < 5000, 'receivedAt is the server clock');
  assert.equal(Date.parse(ev.timestamp), received - 60_000);
  assert.equal(ev.originalTimestamp, timestamp);
});

test('context.ip anonymised, X-Forwarded-For from a trusted proxy, GeoIP City fields', async () => {
  let r = await post(srv, '/v1/track', track({ messageId: 'ip-1', context: { ip: '9.9.9.9' } }));
  assert.equal(r.status, 200);
  let ev = byMessageId('ip-1')[0];
  assert.equal(ev.context.ip, '127.0.0.0', 'socket address, last octet zeroed; client-sent ip ignored');
  assert.equal(ev.context.location.city, 'Loopback City');
  assert.equal(ev.context.location.country, 'ZZ');
  assert.equal(ev.context.location.timezone, 'Etc/UTC');
  assert.equal(ev.context.location.latitude, 1.5);

  r = await post(srv, '/v1/track', track({ messageId: 'ip-2' }), { 'X-Forwarded-For': '203.0.113.50, 81.2.69.160' });
  ev = byMessageId('ip-2')[0];
  assert.equal(ev.context.ip, '81.2.69.0');
  assert.equal(ev.context.location.city, 'London', 'looked up with the full address before anonymising');
  assert.equal(ev.context.location.region, 'England');

  r = await post(srv, '/v1/track', track({ messageId: 'ip-3' }), { 'X-Forwarded-For': '2a02:cf40:1234:5678::1' });
  ev = byMessageId('ip-3')[0];
  assert.equal(ev.context.ip, '2a02:cf40:1234::');
  assert.equal(ev.context.location.country, 'FR');
});

test('CORS: preflight answered, origin echoed', async () => {
  const r = await fetch(srv.url + '/v1/batch', {
    method: 'OPTIONS',
    headers: { Origin: 'https://shop.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type, authorization' },
  });
  assert.equal(r.status, 204);
  assert.equal(r.headers.get('access-control-allow-origin'), 'https://shop.example');
  assert.match(r.headers.get('access-control-allow-methods'), /POST/);
  assert.match(r.headers.get('access-control-allow-headers'), /authorization/i);
  const p = await post(srv, '/v1/track', track(), { Origin: 'https://shop.example' });
  assert.equal(p.headers.get('access-control-allow-origin'), 'https://shop.example');
});

test('unknown route 404, wrong method 405, bad content type 415', async () => {
  assert.equal((await fetch(srv.url + '/v1/nope', { method: 'POST' })).status, 404);
  assert.equal((await fetch(srv.url + '/v1/track')).status, 405);
  const r = await post(srv, '/v1/track', track(), { 'Content-Type': 'image/png' });
  assert.equal(r.status, 415);
});

test('healthz and metrics', async () => {
  const h = await fetch(srv.url + '/healthz');
  assert.equal(h.status, 200);
  assert.equal((await h.json()).status, 'ok');
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_http_requests_total\{route="track",status="200"\} \d+$/m);
  assert.match(m, /^sillage_http_requests_total\{route="track",status="401"\} \d+$/m);
  const stored = Number(/^sillage_events_stored_total (\d+)$/m.exec(m)[1]);
  assert.equal(stored, srv.exportEvents().length);
  assert.match(m, /^sillage_commit_batch_messages_bucket\{le="\+Inf"\} \d+$/m);
  assert.match(m, /^sillage_commit_duration_seconds_count \d+$/m);
  assert.match(m, /^sillage_events_duplicate_total [1-9]\d*$/m);
});
