// triggers.test.mjs - trigger rules, the durable feed (long poll, SSE) and
// signed webhooks, black-box against the real server with delays of seconds.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, post, ADMIN, tempDir } from './helpers.mjs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const RULES = [
  { name: 'cart', type: 'abandoned_cart', delay: '1s' },
  { name: 'pricing', type: 'page_visit', url: '/pricing*', min_count: 2, within: '1h' },
  { name: 'dormant', type: 'inactivity', after: '2s' },
  { name: 'plan', type: 'trait_change', trait: 'plan' },
];

async function feed(srv, after = 0, extra = '') {
  const res = await fetch(`${srv.url}/v1/triggers?after=${after}&limit=1000${extra}`, { headers: bearer });
  assert.equal(res.status, 200);
  return res.json();
}
// Triggers of one profile (by user id or anonymous person) after `after`.
async function triggersFor(srv, userId, after = 0) {
  const { triggers } = await feed(srv, after);
  return triggers.filter((t) => t.profile.user_id === userId);
}
// Waits (long poll) until pred holds over the whole feed, or the deadline.
async function waitFor(srv, pred, ms = 8000) {
  const end = Date.now() + ms;
  let all = [];
  let next = 0;
  while (Date.now() < end) {
    const page = await feed(srv, next, '&wait=1');
    all = all.concat(page.triggers);
    next = page.next;
    if (pred(all)) return all;
  }
  return all;
}
const ok = async (srv, type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};
const added = (product_id, price, quantity = 1) =>
  ({ event: 'Product Added', properties: { product_id, name: 'Item ' + product_id, price, quantity, currency: 'EUR' } });

let srv;
before(async () => { srv = await startServer({ config: { triggers: RULES, pressure: { max_per_profile_per_day: 20 } } }); });
after(async () => { await srv.stop(); srv.cleanup(); });

test('the feed needs the admin token', async () => {
  assert.equal((await fetch(srv.url + '/v1/triggers')).status, 401);
  assert.equal((await fetch(srv.url + '/v1/triggers', { headers: { Authorization: 'Bearer nope' } })).status, 401);
  assert.equal((await fetch(srv.url + '/v1/triggers/stream')).status, 401);
  const r = await fetch(srv.url + '/v1/triggers?limit=abc', { headers: bearer });
  assert.equal(r.status, 400);
});

test('a cart built anonymously fires once the visitor logs in, with the cart', async () => {
  await ok(srv, 'track', { anonymousId: 'cart-a1', ...added('sku-1', 20, 2) });
  await ok(srv, 'track', { anonymousId: 'cart-a1', ...added('sku-2', 5) });
  await sleep(1800); // the delay passes while the visitor is anonymous
  assert.equal((await feed(srv)).triggers.filter((t) => t.rule === 'cart' && t.profile.id && !t.profile.user_id
    && t.data.products.some((p) => p.product_id === 'sku-1')).length, 0, 'an anonymous cart must wait for an identity');
  await ok(srv, 'identify', { anonymousId: 'cart-a1', userId: 'cart-u1', traits: { email: 'Cart.U1@Example.com' } });
  const all = await waitFor(srv, (ts) => ts.some((t) => t.rule === 'cart' && t.profile.user_id === 'cart-u1'));
  const mine = all.filter((t) => t.rule === 'cart' && t.profile.user_id === 'cart-u1');
  assert.equal(mine.length, 1);
  const t = mine[0];
  assert.equal(t.type, 'abandoned_cart');
  assert.equal(t.profile.email, 'cart.u1@example.com');
  assert.deepEqual(t.data.products.map((p) => [p.product_id, p.quantity, p.price]), [['sku-1', 2, 20], ['sku-2', 1, 5]]);
  assert.equal(t.data.value, 45);
  assert.equal(t.data.currency, 'EUR');
  assert.ok(Date.parse(t.data.abandoned_at) >= Date.parse(t.data.last_activity_at) + 1000);
  assert.ok(Number.isInteger(t.seq) && typeof t.id === 'string' && t.at);
  // fires at most once per cart
  await ok(srv, 'page', { userId: 'cart-u1', name: 'Home' });
  await sleep(1500);
  assert.equal((await triggersFor(srv, 'cart-u1')).filter((x) => x.rule === 'cart').length, 1);
});

test('an anonymous cart merged into a known customer on another device fires for the customer', async () => {
  await ok(srv, 'identify', { anonymousId: 'cart-phone', userId: 'cart-u2', traits: { email: 'u2@example.com' } });
  await ok(srv, 'track', { anonymousId: 'cart-laptop', ...added('sku-9', 99) });
  await sleep(1500);
  await ok(srv, 'identify', { anonymousId: 'cart-laptop', userId: 'cart-u2' }); // merge laptop into the customer
  const all = await waitFor(srv, (ts) => ts.some((t) => t.rule === 'cart' && t.profile.user_id === 'cart-u2'));
  const mine = all.filter((t) => t.rule === 'cart' && t.profile.user_id === 'cart-u2');
  assert.equal(mine.length, 1);
  assert.deepEqual(mine[0].data.products.map((p) => p.product_id), ['sku-9']);
});

test('a cart followed by an order does not fire; an identified cart fires after the delay', async () => {
  await ok(srv, 'track', { userId: 'cart-buyer', ...added('sku-3', 10) });
  await ok(srv, 'track', { userId: 'cart-buyer', event: 'Order Completed', properties: { revenue: 10, currency: 'EUR' } });
  await ok(srv, 'track', { userId: 'cart-leaver', ...added('sku-4', 7) });
  const all = await waitFor(srv, (ts) => ts.some((t) => t.rule === 'cart' && t.profile.user_id === 'cart-leaver'));
  assert.equal(all.filter((t) => t.rule === 'cart' && t.profile.user_id === 'cart-leaver').length, 1);
  await sleep(300);
  assert.equal((await triggersFor(srv, 'cart-buyer')).filter((t) => t.rule === 'cart').length, 0);
});

test('page visit with a minimum count', async () => {
  await ok(srv, 'page', { userId: 'pv-u1', properties: { path: '/pricing', url: 'https://shop.example/pricing' } });
  await ok(srv, 'page', { userId: 'pv-u1', properties: { path: '/about' } });
  assert.equal((await triggersFor(srv, 'pv-u1')).filter((t) => t.rule === 'pricing').length, 0);
  await ok(srv, 'page', { userId: 'pv-u1', context: { page: { url: 'https://shop.example/pricing/teams?x=1' } } });
  const got = (await triggersFor(srv, 'pv-u1')).filter((t) => t.rule === 'pricing');
  assert.equal(got.length, 1, 'the trigger is readable as soon as the hit is acknowledged');
  assert.equal(got[0].data.count, 2);
  assert.equal(got[0].data.path, '/pricing/teams');
});

test('erasing a profile removes its triggers from the feed and its rule state', async () => {
  await ok(srv, 'page', { userId: 'er-t1', properties: { path: '/pricing' } });
  await ok(srv, 'page', { userId: 'er-t1', properties: { path: '/pricing' } });
  await ok(srv, 'track', { userId: 'er-t1', ...added('sku-e', 1) });
  assert.equal((await triggersFor(srv, 'er-t1')).filter((t) => t.rule === 'pricing').length, 1);
  const res = await fetch(srv.url + '/v1/profiles/user_id/er-t1', { method: 'DELETE', headers: bearer });
  assert.equal(res.status, 200);
  // pricing's; also the cart's (1 s) and dormant's (2 s) when the machine was slow enough for them to fire first
  const erased = (await res.json()).erased.triggers;
  assert.ok(erased >= 1 && erased <= 3, String(erased));
  assert.equal((await triggersFor(srv, 'er-t1')).length, 0);
  await sleep(1500); // the cart's timer comes due and finds nobody
  assert.equal((await feed(srv)).triggers.filter((t) => JSON.stringify(t).includes('sku-e')).length, 0);
});

test('trait change carries the old and new value; a first value does not fire', async () => {
  await ok(srv, 'identify', { userId: 'tc-u1', traits: { plan: 'free' } });
  await ok(srv, 'identify', { userId: 'tc-u1', traits: { plan: 'free', name: 'x' } });
  await ok(srv, 'identify', { userId: 'tc-u1', traits: { plan: 'pro' } });
  const got = (await triggersFor(srv, 'tc-u1')).filter((t) => t.rule === 'plan');
  assert.equal(got.length, 1);
  assert.deepEqual(got[0].data, { trait: 'plan', old: 'free', new: 'pro' });
  assert.equal(got[0].profile.traits.plan, 'pro');
});

test('inactivity fires after the configured quiet time, once', async () => {
  await ok(srv, 'track', { userId: 'in-u1', event: 'Logged In' });
  const all = await waitFor(srv, (ts) => ts.some((t) => t.rule === 'dormant' && t.profile.user_id === 'in-u1'), 8000);
  const got = all.filter((t) => t.rule === 'dormant' && t.profile.user_id === 'in-u1');
  assert.equal(got.length, 1);
  assert.ok(got[0].data.inactive_seconds >= 2);
  await sleep(2500);
  assert.equal((await triggersFor(srv, 'in-u1')).filter((t) => t.rule === 'dormant').length, 1);
});

test('long poll returns as soon as a trigger is durable; SSE resumes after Last-Event-ID', async () => {
  const { next } = await feed(srv);
  const t0 = Date.now();
  const poll = feed(srv, next, '&wait=10');
  await sleep(200);
  await ok(srv, 'page', { userId: 'lp-u1', properties: { path: '/pricing' } });
  await ok(srv, 'page', { userId: 'lp-u1', properties: { path: '/pricing' } });
  const page = await poll;
  assert.ok(Date.now() - t0 < 5000, 'the poll did not wait for its deadline');
  assert.ok(page.triggers.length >= 1 && page.triggers[0].seq === next + 1);

  const ctrl = new AbortController();
  const res = await fetch(srv.url + '/v1/triggers/stream', {
    headers: { ...bearer, 'Last-Event-ID': String(next) }, signal: ctrl.signal });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /text\/event-stream/);
  const reader = res.body.getReader();
  let text = '';
  const deadline = Date.now() + 5000;
  while (!text.includes(`id: ${next + 1}\n`) && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += Buffer.from(value).toString();
  }
  ctrl.abort();
  assert.match(text, new RegExp(`id: ${next + 1}\nevent: trigger\ndata: \\{"seq":${next + 1},`));
  assert.ok(!text.includes(`id: ${next}\n`), 'nothing at or before Last-Event-ID');
});

test('the 401 of the feed is whole JSON (its length was hand-counted)', async () => {
  const r = await fetch(srv.url + '/v1/triggers');
  assert.equal(r.status, 401);
  assert.equal(r.headers.get('www-authenticate'), 'Bearer realm="sillage"');
  const text = await r.text();
  assert.equal(Number(r.headers.get('content-length')), Buffer.byteLength(text));
  assert.deepEqual(JSON.parse(text),
    { success: false, error: 'admin token required (Authorization: Bearer <admin_token>)' });
});

test('the feed cursor never wraps: after=2^64-1 is the end, past it and limit=0 are 400', async () => {
  const MAX = '18446744073709551615';
  assert.ok((await feed(srv)).triggers.length >= 1, 'the feed has triggers to replay');
  const end = await feed(srv, MAX);
  assert.deepEqual(end, { triggers: [], next: Number(MAX) });
  const endRaw = await (await fetch(`${srv.url}/v1/triggers?after=${MAX}`, { headers: bearer })).text();
  assert.equal(endRaw, `{"triggers":[],"next":${MAX}}`);
  for (const [q, what] of [['after=18446744073709551616', 'after'], ['after=99999999999999999999999', 'after'],
    ['limit=0', 'limit'], ['limit=1001', 'limit'], ['after=-1', 'after']]) {
    const r = await fetch(`${srv.url}/v1/triggers?${q}`, { headers: bearer });
    assert.equal(r.status, 400, q);
    const body = await r.json();
    assert.equal(body.success, false);
    assert.match(body.error, new RegExp(`^${what} must be a whole number from`), q);
  }
  // the stream: ?after= and Last-Event-ID alike
  const over = await fetch(`${srv.url}/v1/triggers/stream?after=18446744073709551616`, { headers: bearer });
  assert.equal(over.status, 400);
  assert.match((await over.json()).error, /^after must be/);
  const lei = await fetch(`${srv.url}/v1/triggers/stream`, { headers: { ...bearer, 'Last-Event-ID': '18446744073709551616' } });
  assert.equal(lei.status, 400);
  assert.equal((await lei.json()).error, 'Last-Event-ID must be a trigger sequence number');
  for (const headers of [{ ...bearer }, { ...bearer, 'Last-Event-ID': MAX }]) {
    const ctrl = new AbortController();
    const res = await fetch(`${srv.url}/v1/triggers/stream${headers['Last-Event-ID'] ? '' : '?after=' + MAX}`,
      { headers, signal: ctrl.signal });
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    let text = '';
    const stop = setTimeout(() => ctrl.abort(), 1000);
    try {
      for (;;) { const { value, done } = await reader.read(); if (done) break; text += Buffer.from(value).toString(); }
    } catch { /* aborted */ }
    clearTimeout(stop);
    assert.match(text, /: sillage trigger stream/);
    assert.doesNotMatch(text, /event: trigger/, 'nothing replayed from the start');
  }
});

test('the pressure cap suppresses the N+1th trigger and counts it', async () => {
  const dir = tempDir();
  const s2 = await startServer({ dir, config: {
    triggers: [{ name: 'any', type: 'page_visit', url: '*' }, { name: 'two', type: 'page_visit', url: '/two', max_per_profile_per_day: 1 }],
    pressure: { max_per_profile_per_day: 3 } } });
  try {
    for (let i = 0; i < 3; i++) await ok(s2, 'page', { userId: 'cap-u1', properties: { path: '/x' + i } });
    await ok(s2, 'page', { userId: 'cap-u1', properties: { path: '/y' } });
    await ok(s2, 'page', { userId: 'cap-u2', properties: { path: '/two' } }); // any + two
    await ok(s2, 'page', { userId: 'cap-u2', properties: { path: '/two' } }); // any; two capped per rule
    const { triggers } = await feed(s2);
    assert.equal(triggers.filter((t) => t.profile.user_id === 'cap-u1').length, 3);
    const u2 = triggers.filter((t) => t.profile.user_id === 'cap-u2').map((t) => t.rule).sort();
    assert.deepEqual(u2, ['any', 'any', 'two']);
    const m = await (await fetch(s2.url + '/metrics')).text();
    assert.match(m, /sillage_triggers_suppressed_total\{rule="any",reason="pressure"\} 1\n/);
    assert.match(m, /sillage_triggers_suppressed_total\{rule="two",reason="pressure"\} 1\n/);
  } finally { await s2.stop(); s2.cleanup(); }
});

test('a timer pending at shutdown fires after the restart; SIGHUP reloads rules', async () => {
  const dir = tempDir();
  const config = { triggers: [{ name: 'cart', type: 'abandoned_cart', delay: '2s' }] };
  let s2 = await startServer({ dir, config });
  try {
    await ok(s2, 'track', { userId: 'rs-u1', ...added('sku-r', 3) });
    await s2.stop();
    await sleep(2500); // due while the server is down
    s2 = await startServer({ dir, config });
    const all = await waitFor(s2, (ts) => ts.some((t) => t.profile.user_id === 'rs-u1'), 5000);
    assert.equal(all.filter((t) => t.rule === 'cart' && t.profile.user_id === 'rs-u1').length, 1);

    // reload: a new rule, the cart rule kept with its pending timer
    await ok(s2, 'track', { userId: 'rs-u2', ...added('sku-s', 4) });
    const cfg = JSON.parse(readFileSync(s2.cfgPath, 'utf8'));
    cfg.triggers.unshift({ name: 'docs', type: 'page_visit', url: '/docs/*' }); // first: the cart rule moves
    writeFileSync(s2.cfgPath, JSON.stringify(cfg));
    s2.child.kill('SIGHUP');
    // the new rules apply from the stage's next transaction once switched (logged)
    for (const end = Date.now() + 5000; !/reload: \d+ trigger rules/.test(s2.log()) && Date.now() < end;) await sleep(50);
    assert.match(s2.log(), /reload: 2 trigger rules/);
    await ok(s2, 'page', { userId: 'rs-u3', properties: { path: '/docs/api' } });
    const after2 = await waitFor(s2, (ts) => ts.some((t) => t.profile.user_id === 'rs-u2'), 6000);
    assert.equal(after2.filter((t) => t.rule === 'docs' && t.profile.user_id === 'rs-u3').length, 1);
    assert.equal(after2.filter((t) => t.rule === 'cart' && t.profile.user_id === 'rs-u2').length, 1);
    const m = await (await fetch(s2.url + '/metrics')).text();
    assert.match(m, /sillage_triggers_fired_total\{rule="docs"\} 1\n/, 'metrics name the reloaded rules');
    assert.match(m, /sillage_triggers_fired_total\{rule="cart"\} 2\n/, 'a rule\'s counts follow it to its new place');
  } finally { await s2.stop(); s2.cleanup(); }
});

// What a receiver does with X-Sillage-Signature, as docs/TRIGGERS.md says:
// null when the delivery is authentic and fresh, else why it is refused.
function verifySignature({ secret, header, delivery, body, nowS = Math.floor(Date.now() / 1000), toleranceS = 300 }) {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header || '');
  if (!m) return 'malformed';
  const t = Number(m[1]);
  if (Math.abs(nowS - t) > toleranceS) return 'stale';
  const want = createHmac('sha256', secret).update(`${t}.${delivery}.`).update(body).digest();
  return timingSafeEqual(want, Buffer.from(m[2], 'hex')) ? null : 'mismatch';
}

// A webhook receiver on loopback that fails the first `failFirst` attempts of
// each delivery, checks every signature and records what it saw.
function receiver({ secret, failFirst = 2, tls = null }) {
  const seen = new Map(); // delivery id -> [{attempt, body, sig, t, recvS}]
  const bad = [];
  let failAll = false;
  const handler = (req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const raw = Buffer.concat(chunks), body = raw.toString();
      const recvS = Math.floor(Date.now() / 1000);
      const id = req.headers['x-sillage-delivery'];
      const sig = req.headers['x-sillage-signature'];
      const why = verifySignature({ secret, header: sig, delivery: id, body: raw, nowS: recvS });
      if (why) bad.push({ id, sig, why });
      if (!seen.has(id)) seen.set(id, []);
      const list = seen.get(id);
      list.push({ attempt: Number(req.headers['x-sillage-attempt']), body, sig, t: Number(/^t=(\d+),/.exec(sig)?.[1]), recvS });
      const fail = failAll || list.length <= failFirst;
      res.writeHead(fail ? 503 : 204);
      res.end();
    });
  };
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    server, seen, bad, port: server.address().port,
    setFailAll(v) { failAll = v; },
    delivered() { return [...seen.values()].filter((l) => l.length > failFirst || (!failAll && l.length > 0)); },
    close() { return new Promise((r) => { server.closeAllConnections?.(); server.close(r); }); },
  })));
}

test('webhooks: signed, retried with the same delivery id, resent after a restart', async () => {
  const secret = 'hook-secret';
  const rx = await receiver({ secret, failFirst: 2 });
  const dir = tempDir();
  const config = {
    triggers: [{ name: 'any', type: 'page_visit', url: '/wh/*' }, { name: 'other', type: 'page_visit', url: '/no/*' }],
    webhooks: [{ url: `http://127.0.0.1:${rx.port}/hook`, secret, rules: ['any'], expire: '1h' }],
  };
  let s2 = await startServer({ dir, config });
  try {
    for (let i = 0; i < 3; i++) await ok(s2, 'page', { userId: 'wh-u' + i, properties: { path: '/wh/' + i } });
    await ok(s2, 'page', { userId: 'wh-x', properties: { path: '/no/1' } }); // not for this webhook
    const end = Date.now() + 15000;
    const acked = () => [...rx.seen.values()].filter((l) => l.length >= 3).length;
    while (acked() < 3 && Date.now() < end) await sleep(100);
    assert.equal(acked(), 3, 'each trigger acknowledged after two failures');
    assert.deepEqual(rx.bad, [], 'every signature verifies');
    for (const [id, list] of rx.seen) {
      assert.deepEqual(list.map((a) => a.attempt), [1, 2, 3], id);
      assert.ok(list.every((a) => a.body === list[0].body));
      assert.equal(JSON.parse(list[0].body).rule, 'any');
      // t is each attempt's time (backoff puts >= 1.1 s between attempts 1 and 3): signed afresh
      for (const a of list) assert.ok(Math.abs(a.t - a.recvS) <= 1, `t=${a.t} received at ${a.recvS}`);
      assert.ok(list[2].t > list[0].t, `attempt 3 signed at ${list[2].t}, attempt 1 at ${list[0].t}`);
      assert.notEqual(list[2].sig, list[0].sig);
    }
    // A receiver refuses what it should: a replay past 5 minutes, a re-dated
    // or altered delivery, another delivery's id, the wrong secret, the old scheme.
    const [id0, [a0]] = [...rx.seen.entries()][0];
    const check = (over) => verifySignature({ secret, header: a0.sig, delivery: id0, body: a0.body, nowS: a0.t, ...over });
    const resign = (t, body = a0.body) =>
      `t=${t},v1=` + createHmac('sha256', secret).update(`${t}.${id0}.${body}`).digest('hex');
    assert.equal(check({}), null, 'the captured delivery verifies');
    assert.equal(check({ header: resign(a0.t) }), null, 'the documented recipe gives the same signature');
    assert.equal(check({ nowS: a0.t + 301 }), 'stale', 'replayed 5 min later');
    assert.equal(check({ header: resign(a0.t - 600), nowS: a0.t }), 'stale', 'signed 10 min ago');
    assert.equal(check({ header: a0.sig.replace(/^t=\d+/, `t=${a0.t + 60}`) }), 'mismatch', 're-dated');
    assert.equal(check({ body: a0.body.replace('"any"', '"ANY"') }), 'mismatch', 'body altered');
    assert.equal(check({ delivery: [...rx.seen.keys()][1] }), 'mismatch', 'another delivery id');
    assert.equal(check({ secret: 'not-the-secret' }), 'mismatch', 'wrong secret');
    assert.equal(check({ header: 'sha256=' + createHmac('sha256', secret).update(a0.body).digest('hex') }), 'malformed',
      'the old body-only scheme');

    // The receiver fails everything; sillage restarts; then it recovers:
    // the unacknowledged trigger is resent with the same delivery id.
    rx.setFailAll(true);
    await ok(s2, 'page', { userId: 'wh-late', properties: { path: '/wh/late' } });
    const idOf = () => [...rx.seen.entries()].find(([, l]) => JSON.parse(l[0].body).profile.user_id === 'wh-late')?.[0];
    while (!idOf() && Date.now() < end + 5000) await sleep(50);
    const lateId = idOf();
    assert.ok(lateId, 'the new trigger was attempted');
    await s2.stop();
    const n0 = rx.seen.get(lateId).length;
    rx.setFailAll(false);
    s2 = await startServer({ dir, config });
    const end2 = Date.now() + 10000;
    while (Date.now() < end2 && rx.seen.get(lateId).length <= n0) await sleep(100);
    const list = rx.seen.get(lateId);
    assert.ok(list.length > n0, 'resent after the restart under the same delivery id');
    // the first attempt of the new process (a retry may follow it 375 ms later)
    assert.equal(list[n0].attempt, 1, 'attempts count from 1 again in the new process');
    assert.equal(list.filter((a) => a.body === list[0].body).length, list.length);
    // nothing already acknowledged came back with a new id
    assert.equal(rx.seen.size, 4);
    // it is acknowledged in the end (the receiver still fails its first two attempts)
    let m = '';
    const end3 = Date.now() + 10000;
    while (Date.now() < end3 && !/sillage_webhook_deliveries_total [1-9]/.test(m)) {
      await sleep(100);
      m = await (await fetch(s2.url + '/metrics')).text();
    }
    assert.match(m, /sillage_webhook_deliveries_total 1\n/);
  } finally { await s2.stop(); s2.cleanup(); await rx.close(); }
});

test('webhooks over HTTPS with the receiver\'s CA', async () => {
  const dir = tempDir();
  const key = join(dir, 'key.pem'), cert = join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert,
    '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const secret = 'tls-secret';
  const rx = await receiver({ secret, failFirst: 0, tls: { key: readFileSync(key), cert: readFileSync(cert) } });
  const s2 = await startServer({ dir, config: {
    triggers: [{ name: 'any', type: 'page_visit', url: '*' }],
    webhooks: [{ url: `https://127.0.0.1:${rx.port}/hook`, secret, ca_file: cert }] } });
  try {
    await ok(s2, 'page', { userId: 'tls-u1', properties: { path: '/' } });
    const end = Date.now() + 8000;
    while (rx.seen.size < 1 && Date.now() < end) await sleep(50);
    assert.equal(rx.seen.size, 1);
    assert.deepEqual(rx.bad, []);
  } finally { await s2.stop(); s2.cleanup(); await rx.close(); }
});

test('historical imports fire nothing: a "historical" source, or context.sillage.import on a trusted source\'s message', async (t) => {
  const srv = await startServer({ config: {
    sources: [{ name: 'live', write_key: 'wk_live' }, { name: 'crm-import', write_key: 'wk_import', trusted: true, historical: true },
              { name: 'backend', write_key: 'wk_backend', trusted: true }],
    triggers: [
      { name: 'pricing', type: 'page_visit', url: '/pricing*' },
      { name: 'cart', type: 'abandoned_cart', delay: '1s' },
      { name: 'plan', type: 'trait_change', trait: 'plan', on_first_set: true },
    ] } });
  t.after(() => { srv.stop(); srv.cleanup(); });
  const send = async (key, path, body) => {
    const r = await post(srv, path, body, { Authorization: 'Basic ' + Buffer.from(key + ':').toString('base64') });
    assert.equal(r.status, 200, r.text);
  };
  const old = (d) => new Date(Date.parse('2024-06-01T10:00:00Z') + d * 1000).toISOString();
  // two years of a customer's history, from the import source: a page on /pricing, a cart, a plan
  await send('wk_import', '/v1/batch', { batch: [
    { type: 'page', userId: 'h-u1', properties: { path: '/pricing' }, timestamp: old(0) },
    { type: 'track', userId: 'h-u1', event: 'Product Added', properties: { product_id: 'p1', price: 5 }, timestamp: old(1) },
    { type: 'identify', userId: 'h-u1', traits: { email: 'h1@example.com', plan: 'pro' }, timestamp: old(2) },
  ] });
  // the same from a trusted server key, marked as an import message by message
  await send('wk_backend', '/v1/page', { userId: 'h-u2', properties: { path: '/pricing' }, context: { sillage: { import: true } } });
  await send('wk_backend', '/v1/identify', { userId: 'h-u2', traits: { plan: 'team' }, context: { sillage: { import: true } } });
  // from the public browser key the mark is ignored (issue 21, I1): a page
  // must not hide a cart or a trait change from the rules
  await send('wk_live', '/v1/identify', { userId: 'h-u4', traits: { plan: 'free' }, context: { sillage: { import: true } } });
  // a live customer's cart, added after the imports: once its timer fired,
  // the imported cart's (older) would have too
  await send('wk_live', '/v1/track', { userId: 'h-live', event: 'Product Added', properties: { product_id: 'p2', price: 7 } });
  let first = { triggers: [], next: 0 };
  for (let i = 0; i < 20 && !first.triggers.some((x) => x.rule === 'cart'); i++) {
    const page = await (await fetch(`${srv.url}/v1/triggers?after=${first.next}&limit=100&wait=10`, { headers: bearer })).json();
    first = { triggers: first.triggers.concat(page.triggers), next: page.next };
  }
  assert.deepEqual(first.triggers.map((x) => [x.rule, x.profile.user_id]), [['plan', 'h-u4'], ['cart', 'h-live']],
    'the live cart and the browser key\'s "import" fired; nothing for the imports');
  // stored and stitched all the same
  const p1 = await (await fetch(`${srv.url}/v1/profiles/email/h1%40example.com`, { headers: bearer })).json();
  assert.equal(p1.user_id, 'h-u1');
  assert.equal(p1.traits.plan, 'pro');
  assert.equal(p1.counters.events, 3);
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_trigger_historical_events_total 5$/m);
  // a live event fires as usual
  await send('wk_live', '/v1/page', { userId: 'h-u3', properties: { path: '/pricing' } });
  const live = await (await fetch(`${srv.url}/v1/triggers?after=${first.next}&limit=100`, { headers: bearer })).json();
  assert.deepEqual(live.triggers.map((x) => [x.rule, x.profile.user_id]), [['pricing', 'h-u3']]);
});
