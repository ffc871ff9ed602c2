// security.test.mjs - regressions for the security review of 2026-11-30
// (issue 13): each input that crashed, poisoned or amplified the server is
// sent to the real binary, and the answer, the stored events and `sillage
// verify` are checked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, run, basic, ADMIN, WRITE_KEY } from './helpers.mjs';

const SERVER_KEY = 'wk_srv_456';
let srv;
before(async () => {
  srv = await startServer({
    config: { sources: [{ name: 'shop', write_key: WRITE_KEY }, { name: 'backend', write_key: SERVER_KEY, trusted: true }] },
  });
});
after(async () => {
  const { code } = await srv.stop();
  assert.equal(code, 0, 'server exits 0 on SIGTERM:\n' + srv.log());
  srv.cleanup();
});

function verifyClean(s = srv) {
  const r = run(['verify', '--data', s.dataDir]);
  assert.equal(r.code, 0, 'sillage verify: ' + r.stdout + r.stderr);
  assert.match(r.stdout + r.stderr, / 0 problems/);
}

async function profile(kind, id) {
  const res = await fetch(`${srv.url}/v1/profiles/${kind}/${encodeURIComponent(id)}`, {
    headers: { Authorization: 'Bearer ' + ADMIN },
  });
  return { status: res.status, json: res.status === 200 ? await res.json() : null };
}

// C1: a message whose printed form outgrows the scratch buffer was printed
// into the JSON arena, freed, then copied by the writer (use-after-free).
test('C1: a message that grows when printed (9e15 -> 9e+15) is refused with 413, nothing stored', async () => {
  const body = '{"userId":"numexp","event":"E","messageId":"c1-numexp","properties":{"a":[' +
    Array(6400).fill('9e15').join(',') + ']}}';
  assert.ok(body.length < 32768, 'under max_message_bytes as sent');
  const r = await post(srv, '/v1/track', body);
  assert.equal(r.status, 413, r.text);
  assert.equal(r.json.success, false);
  assert.match(r.json.error, /max_message_bytes once normalised/);
  // the server is alive and the next message is stored as sent
  const ok = await post(srv, '/v1/track', { userId: 'numexp', event: 'After', messageId: 'c1-after' });
  assert.deepEqual(ok.json, { success: true });
  const ev = srv.exportEvents();
  assert.equal(ev.filter((e) => e.messageId === 'c1-numexp').length, 0);
  assert.equal(ev.filter((e) => e.messageId === 'c1-after').length, 1);
});

test('C1/H2: a batch context that makes each message too big is reported per message; another request is unharmed', async () => {
  const big = {
    batch: [{ type: 'track', anonymousId: 'uaf-anon', event: 'UAF test', messageId: 'uaf-1' }],
    context: { big: 'X'.repeat(40000) },
  };
  const other = {
    batch: [{ type: 'track', anonymousId: 'other-anon', event: 'Other', messageId: 'uaf-other' }],
    context: { secret: 'OTHER-USER-PRIVATE-DATA-'.repeat(100) },
  };
  const [a, b] = await Promise.all([post(srv, '/v1/batch', big), post(srv, '/v1/batch', other)]);
  assert.equal(a.status, 400, a.text);
  assert.equal(a.json.errors.length, 1);
  assert.equal(a.json.errors[0].index, 0);
  assert.match(a.json.errors[0].error, /once normalised/);
  assert.deepEqual(b.json, { success: true });
  const ev = srv.exportEvents();
  assert.equal(ev.filter((e) => e.messageId === 'uaf-1').length, 0);
  const o = ev.filter((e) => e.messageId === 'uaf-other');
  assert.equal(o.length, 1);
  assert.equal(o[0].context.secret, other.context.secret);
  verifyClean();
});

test('C1: 1,000 messages with a 200 KB batch context (killed the release build) get 400, server alive', async () => {
  const body = JSON.stringify({
    batch: Array.from({ length: 1000 }, (_, i) => ({ type: 'page', anonymousId: 'amp-' + i })),
    context: { pad: 'P'.repeat(200000) },
  });
  const r = await post(srv, '/v1/batch', body);
  assert.equal(r.status, 400, r.text.slice(0, 300));
  assert.equal(r.json.errors.length, 1000);
  const h = await fetch(srv.url + '/healthz');
  assert.equal((await h.json()).status, 'ok');
});

test('H2: a batch context copied into 2,500 messages cannot make a small request store 600x its size', async () => {
  const body = JSON.stringify({
    batch: Array.from({ length: 2500 }, (_, i) => ({ type: 'page', anonymousId: 'amp2-' + i })),
    context: { pad: 'P'.repeat(35000) },
  });
  assert.ok(body.length < 150000, String(body.length));
  const before = srv.exportEvents().length;
  const r = await post(srv, '/v1/batch', body);
  assert.equal(r.status, 413, r.text.slice(0, 300));
  assert.match(r.json.error, /4 x limits.max_request_bytes \+ 1 KB per message/);
  assert.equal(srv.exportEvents().length, before, 'nothing of the request stored');
  // a modest batch context is still merged into every message
  const ok = await post(srv, '/v1/batch', {
    batch: [{ type: 'page', anonymousId: 'ctx-1', messageId: 'ctx-1' }, { type: 'page', anonymousId: 'ctx-2', messageId: 'ctx-2' }],
    context: { library: { name: 'lib', version: '1' } },
  });
  assert.deepEqual(ok.json, { success: true });
  const ev = srv.exportEvents().filter((e) => e.messageId.startsWith('ctx-'));
  assert.equal(ev.length, 2);
  for (const e of ev) assert.deepEqual(e.context.library, { name: 'lib', version: '1' });
});

// H1: an identify whose anonymousId is new, with an email another person
// owns, made the stitcher delete a person it never saved; MDB_NOTFOUND then
// failed every request of the group commit.
test('H1: a newsletter signup with a fresh anonymousId and a known email is stored, and so are its neighbours', async () => {
  const a = await post(srv, '/v1/identify', { userId: 'carol', anonymousId: 'c1', traits: { email: 'carol@example.com' } });
  assert.deepEqual(a.json, { success: true });
  for (let round = 0; round < 3; round++) {
    const filler = { batch: Array.from({ length: 2500 }, (_, i) => ({ type: 'page', anonymousId: `fill-${round}-${i % 50}` })) };
    const [f, innocent, poison] = await Promise.all([
      post(srv, '/v1/batch', filler),
      post(srv, '/v1/track', { userId: 'bystander', event: 'Order Completed', properties: { revenue: 10 }, messageId: `innocent-${round}` }),
      post(srv, '/v1/identify', { anonymousId: `brand-new-anon-${round}`, traits: { email: 'Carol@Example.com' }, messageId: `poison-${round}` }),
    ]);
    assert.deepEqual(f.json, { success: true }, f.text);
    assert.deepEqual(innocent.json, { success: true }, innocent.text);
    assert.deepEqual(poison.json, { success: true }, poison.text);
    const p = await profile('anonymous_id', `brand-new-anon-${round}`);
    assert.equal(p.status, 200);
    assert.equal(p.json.user_id, 'carol');
  }
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_commit_failures_total 0$/m);
  assert.match(m, /^sillage_requests_failed_alone_total 0$/m);
  verifyClean();
});

// M2: duplicate keys were stored as sent; parsers that keep the last copy
// read a forged type, userId, receivedAt and a writeKey.
test('M2: a message repeating a member name is refused (400, or per message in a batch)', async () => {
  const body = '{"userId":"dup-u","event":"Dup","messageId":"dupmsg-1","writeKey":"wk_test","writeKey":"wk_test",' +
    '"receivedAt":"1999-01-01T00:00:00Z","receivedAt":"1999-01-01T00:00:00Z","type":"track","type":"identify",' +
    '"userId":"someone-else","context":{"ip":"6.6.6.6","ip":"7.7.7.7"}}';
  const r = await post(srv, '/v1/track', body);
  assert.equal(r.status, 400, r.text);
  assert.match(r.json.error, /repeats the member "(userId|writeKey|receivedAt|type)"/);
  const nested = await post(srv, '/v1/track', '{"userId":"dup-n","event":"E","messageId":"dupmsg-2","context":{"ip":"6.6.6.6","ip":"7.7.7.7"}}');
  assert.equal(nested.status, 400);
  assert.match(nested.json.error, /repeats the member "ip"/);
  const b = await post(srv, '/v1/batch', '{"batch":[{"type":"track","userId":"d","event":"E","messageId":"dupmsg-3"},' +
    '{"type":"track","userId":"d","event":"E","messageId":"dupmsg-4","userId":"x"}]}');
  assert.equal(b.status, 200, b.text);
  assert.equal(b.json.accepted, 1);
  assert.deepEqual(b.json.errors.map((e) => e.index), [1]);
  assert.match(b.json.errors[0].error, /repeats the member "userId"/);
  const root = await post(srv, '/v1/batch', '{"batch":[{"type":"track","userId":"d","event":"E","messageId":"dupmsg-5"}],"sentAt":"2020-01-01T00:00:00Z","sentAt":"2030-01-01T00:00:00Z"}');
  assert.equal(root.status, 400);
  assert.match(root.json.error, /repeats the member "sentAt"/);
  const ids = srv.exportEvents().map((e) => e.messageId).filter((id) => id.startsWith('dupmsg-'));
  assert.deepEqual(ids, ['dupmsg-3']);
});

// M1: a timestamp in 2099 pinned traits ("the later value wins") and
// last_seen, so the real site could not correct a victim's email.
test('M1: a future timestamp is clamped to receivedAt; the real site can correct a trait', async () => {
  const r = await post(srv, '/v1/identify', {
    userId: 'victim2', anonymousId: 'attacker-anon', traits: { email: 'attacker@evil.example' },
    timestamp: '2099-01-01T00:00:00Z', messageId: 'm1-forged',
  });
  assert.deepEqual(r.json, { success: true });
  await new Promise((res) => setTimeout(res, 20));
  const fix = await post(srv, '/v1/identify', { userId: 'victim2', traits: { email: 'victim2@example.com' } });
  assert.deepEqual(fix.json, { success: true });
  const p = await profile('user_id', 'victim2');
  assert.equal(p.json.traits.email, 'victim2@example.com');
  const now = Date.now();
  assert.ok(Date.parse(p.json.last_seen) <= now + 1000, p.json.last_seen);
  const ev = srv.exportEvents().find((e) => e.messageId === 'm1-forged');
  assert.ok(Math.abs(Date.parse(ev.timestamp) - Date.parse(ev.receivedAt)) < 1000, ev.timestamp);
  assert.equal(ev.originalTimestamp, '2099-01-01T00:00:00Z');
  assert.equal(ev.context.sillage.clampedTimestamp, '2099-01-01T00:00:00.000Z');
  const far = await post(srv, '/v1/track', { userId: 'victim2', event: 'E', messageId: 'm1-far',
    timestamp: '9999-12-31T23:59:59.999Z', sentAt: '0001-01-01T00:00:00Z' });
  assert.deepEqual(far.json, { success: true });
  const ev2 = srv.exportEvents().find((e) => e.messageId === 'm1-far');
  assert.equal(ev2.timestamp, ev2.receivedAt);
});

// H4: with the public key, alias(previousId=<victim userId>, userId=<attacker>)
// fused two identified users.
test('H4: a browser key cannot alias two users together; a trusted key can; the source is stored with the event', async () => {
  const ident = async (u, a, email) => assert.deepEqual((await post(srv, '/v1/identify', { userId: u, anonymousId: a, traits: { email } })).json, { success: true });
  await ident('victim3', 'v3-anon', 'victim3@example.com');
  assert.deepEqual((await post(srv, '/v1/track', { userId: 'victim3', event: 'Order Completed', properties: { revenue: 120 } })).json, { success: true });
  await ident('attacker', 'att-anon', 'attacker3@evil.example');
  // as a browser sends it: text/plain, writeKey in the body
  const res = await fetch(srv.url + '/v1/alias', {
    method: 'POST', headers: { 'Content-Type': 'text/plain' },
    body: JSON.stringify({ writeKey: WRITE_KEY, previousId: 'victim3', userId: 'attacker', messageId: 'h4-alias' }),
  });
  assert.deepEqual(await res.json(), { success: true }, 'the message is stored; the merge is refused');
  const v = await profile('user_id', 'victim3');
  const a = await profile('user_id', 'attacker');
  assert.notEqual(v.json.id, a.json.id);
  assert.equal(v.json.traits.email, 'victim3@example.com');
  assert.equal(a.json.counters.orders, 0);
  const j = await (await fetch(`${srv.url}/v1/profiles/user_id/victim3/merges`, { headers: { Authorization: 'Bearer ' + ADMIN } })).json();
  const refusal = j.refused.find((x) => x.messageId === 'h4-alias');
  assert.ok(refusal, JSON.stringify(j));
  assert.match(refusal.reason, /trusted source/);
  const stored = srv.exportEvents().find((e) => e.messageId === 'h4-alias');
  assert.deepEqual(stored.context.sillage, { source: 'shop' });
  // a client cannot claim another source
  assert.deepEqual((await post(srv, '/v1/track', { userId: 'x', event: 'E', messageId: 'h4-forge', context: { sillage: { source: 'backend' } } })).json, { success: true });
  assert.equal(srv.exportEvents().find((e) => e.messageId === 'h4-forge').context.sillage.source, 'shop');
  // the server-side key may join them
  const t = await post(srv, '/v1/alias', { previousId: 'victim3', userId: 'attacker', messageId: 'h4-trusted' }, { Authorization: basic(SERVER_KEY) });
  assert.deepEqual(t.json, { success: true });
  assert.equal((await profile('user_id', 'victim3')).json.id, (await profile('user_id', 'attacker')).json.id);
  verifyClean();
});

// H3: ~100k traits on one person made each identify hold the writer for
// seconds. A person keeps at most limits.max_traits_per_person traits in
// limits.max_traits_bytes; the rest is reported per message, not kept.
test('H3: traits per person are bounded (count and bytes); the excess is reported per message', async () => {
  const traits = (round) => Object.fromEntries(Array.from({ length: 1500 }, (_, i) => [`k${round}_${i}`, `v${i}`]));
  let last;
  for (let round = 0; round < 20; round++) {
    last = await post(srv, '/v1/identify', { userId: 'traitbomb', traits: traits(round), messageId: `tb-${round}` });
    assert.equal(last.status, 200, last.text);
    assert.equal(last.json.success, true);
  }
  assert.equal(last.json.warnings.length, 1);
  assert.equal(last.json.warnings[0].messageId, 'tb-19');
  assert.match(last.json.warnings[0].warning, /1500 traits are more than a profile keeps.*max_traits_per_person \(256\)/);
  const p = await profile('user_id', 'traitbomb');
  assert.equal(Object.keys(p.json.traits).length, 256);
  // the round-0 traits are kept; an update of a kept trait still applies
  assert.equal(p.json.traits.k0_0, 'v0');
  const upd = await post(srv, '/v1/identify', { userId: 'traitbomb', traits: { k0_0: 'changed' } });
  assert.deepEqual(upd.json, { success: true });
  assert.equal((await profile('user_id', 'traitbomb')).json.traits.k0_0, 'changed');
  // bytes: one trait too large for the document is refused the same way
  assert.deepEqual((await post(srv, '/v1/identify', { userId: 'bytes-bomb', traits: { a: 'x'.repeat(20000) } })).json, { success: true });
  // what a person accumulated over several messages is bounded by the stage,
  // which counts what it drops (the answer came before it applied the message)
  const big = await post(srv, '/v1/identify', { userId: 'bytes-bomb', traits: { b: 'y'.repeat(20000), small: 1 } });
  assert.deepEqual(big.json, { success: true }, big.text);
  const b = await profile('user_id', 'bytes-bomb');
  assert.deepEqual(Object.keys(b.json.traits).sort(), ['a', 'small']);
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_traits_dropped_total [1-9]\d*$/m);
  // every identify was stored as sent
  assert.equal(srv.exportEvents().filter((e) => e.messageId.startsWith('tb-')).length, 20);
});

// M8: the dedupe table had no memory bound. Past limits.max_dedupe_ids the
// oldest ids are forgotten (never those of the last few seconds, by time),
// which /metrics and the log say.
test('M8: the dedupe table holds at most limits.max_dedupe_ids ids and says when it forgets', async () => {
  const s2 = await startServer({ config: { limits: { max_dedupe_ids: 1000 } } });
  const batch = (k) => ({ batch: Array.from({ length: 600 }, (_, i) => ({ type: 'track', userId: 'd', event: 'E', messageId: `dd-${k}-${i}` })) });
  try {
    assert.deepEqual((await post(s2, '/v1/batch', batch('old'))).json, { success: true });
    await new Promise((r) => setTimeout(r, 6000)); // older than the few seconds a cut never forgets
    assert.deepEqual((await post(s2, '/v1/batch', batch('new'))).json, { success: true });
    const m = await (await fetch(s2.url + '/metrics')).text();
    const val = (name) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(m)[1]);
    assert.ok(val('sillage_dedupe_entries') <= 1000, m);
    assert.ok(val('sillage_dedupe_evicted_total') >= 600, m);
    assert.ok(val('sillage_dedupe_window_seconds') < 86400, m);
    assert.match(s2.log(), /WARN dedupe table full \(limits.max_dedupe_ids\)/);
    // the recent ids are still deduplicated; a forgotten old one is stored again, as documented
    const again = await post(s2, '/v1/batch', { batch: [
      { type: 'track', userId: 'd', event: 'E', messageId: 'dd-new-599' },
      { type: 'track', userId: 'd', event: 'E', messageId: 'dd-old-0' }] });
    assert.deepEqual(again.json, { success: true });
    const ev = s2.exportEvents();
    assert.equal(ev.filter((e) => e.messageId === 'dd-new-599').length, 1);
    assert.equal(ev.filter((e) => e.messageId === 'dd-old-0').length, 2);
  } finally {
    await s2.stop();
    s2.cleanup();
  }
});

// L8: e-mails were lower-cased for ASCII only, and "\u200Bnull" passed the
// junk filter and became a real userId.
test('L8: e-mail identifiers fold beyond ASCII; invisible characters do not make junk an identifier', async () => {
  assert.deepEqual((await post(srv, '/v1/identify', { userId: 'elodie', traits: { email: 'Élodie@Exemple.fr' } })).json, { success: true });
  const a = await profile('email', 'élodie@exemple.fr');
  const b = await profile('email', 'ÉLODIE@EXEMPLE.FR');
  assert.equal(a.status, 200);
  assert.equal(a.json.user_id, 'elodie');
  assert.equal(b.json.id, a.json.id);
  assert.deepEqual((await post(srv, '/v1/track', { userId: '\u200Bnull', anonymousId: 'zw-anon', event: 'E' })).json, { success: true });
  const p = await profile('anonymous_id', 'zw-anon');
  assert.equal(p.status, 200);
  assert.equal(p.json.user_id, null);
  assert.equal((await profile('user_id', '\u200Bnull')).status, 404);
});

// Review of the fixes: an identity trait longer than an LMDB key failed its
// whole request (and, on a NATS core, wedged the consumer).
test('a 600-byte e-mail trait is stored but identifies no one; the request and its neighbours succeed', async () => {
  const long = 'a'.repeat(600) + '@x.com';
  const r = await post(srv, '/v1/batch', { batch: [
    { type: 'identify', userId: 'longmail', traits: { email: long }, messageId: 'long-1' },
    { type: 'track', userId: 'longmail', event: 'Order Completed', properties: { revenue: 5 }, messageId: 'long-2' }] });
  assert.deepEqual(r.json, { success: true }, r.text);
  const p = await profile('user_id', 'longmail');
  assert.equal(p.status, 200);
  assert.equal(p.json.traits.email, long);
  assert.ok(!p.json.identities.some((i) => i.kind === 'email'), JSON.stringify(p.json.identities));
  assert.equal(p.json.counters.orders, 1);
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_requests_failed_alone_total 0$/m);
  verifyClean();
});
