// identity.test.mjs - identity stitching through the HTTP API: the scenarios
// of tests/identity/scenarios.json (table-driven), then erasure, pagination,
// admin auth and a restart.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { startServer, post, basic, rawExchange, parseResponses, track, ADMIN, WRITE_KEY } from './helpers.mjs';

const { scenarios } = JSON.parse(readFileSync(new URL('../identity/scenarios.json', import.meta.url)));
const JUNK = new Set(['', 'null', 'undefined', 'anonymous', '0', 'guest']);
const bearer = { Authorization: 'Bearer ' + ADMIN };
let srv;

// 'test' is a browser key (untrusted, the default); a scenario with
// "trusted": true sends with the server-side key.
const SERVER_KEY = 'wk_server_side';
before(async () => {
  srv = await startServer({
    config: { sources: [{ name: 'test', write_key: WRITE_KEY }, { name: 'backend', write_key: SERVER_KEY, trusted: true }] },
  });
});
after(async () => { await srv.stop(); srv.cleanup(); });

// Every id gets the scenario's tag, so that scenarios share one server.
function tag(t, v) {
  if (typeof v !== 'string' || JUNK.has(v.trim().toLowerCase())) return v;
  const lead = v.match(/^\s*/)[0];
  return lead + t + v.slice(lead.length);
}
function tagMessage(t, m) {
  const out = structuredClone(m);
  for (const k of ['anonymousId', 'userId', 'previousId']) if (k in out) out[k] = tag(t, out[k]);
  if (out.traits && 'email' in out.traits) out.traits.email = tag(t, out.traits.email);
  return out;
}
async function get(path) {
  const res = await fetch(srv.url + path, { headers: bearer });
  return { status: res.status, json: await res.json() };
}
const enc = encodeURIComponent;
const label = (e) => e.event || e.name || e.type;

scenarios.forEach((sc, i) => {
  test(`identity scenario: ${sc.name}`, async () => {
    const t = `s${i}-`;
    for (const m of sc.messages) {
      const r = await post(srv, '/v1/' + m.type, tagMessage(t, m), sc.trusted ? { Authorization: basic(SERVER_KEY) } : {});
      assert.equal(r.status, 200, r.text);
    }
    const persons = new Map(); // label -> person id
    for (const ex of sc.expect) {
      const id = ex.raw ? ex.id : tag(t, ex.id);
      const base = `/v1/profiles/${ex.kind}/${enc(id)}`;
      const p = await get(base);
      if (ex.missing) { assert.equal(p.status, 404, `${ex.kind}/${id} should not exist`); continue; }
      assert.equal(p.status, 200, `${ex.kind}/${id}: ${JSON.stringify(p.json)}`);
      const prof = p.json;
      if (ex.person) {
        for (const [l, pid] of persons) {
          if (l === ex.person) assert.equal(prof.id, pid, `${ex.kind}/${id} should be person ${l}`);
          else assert.notEqual(prof.id, pid, `${ex.kind}/${id} should not be person ${l}`);
        }
        persons.set(ex.person, prof.id);
      }
      if ('user_id' in ex) assert.equal(prof.user_id, ex.user_id === null ? null : tag(t, ex.user_id));
      if (ex.identities) {
        const want = ex.identities.map(([k, v]) => `${k}:${tag(t, v)}`).sort();
        assert.deepEqual(prof.identities.map((x) => `${x.kind}:${x.id}`).sort(), want);
      }
      for (const [k, v] of Object.entries(ex.counters || {})) assert.equal(prof.counters[k], v, `counter ${k}`);
      for (const [k, v] of Object.entries(ex.traits || {})) assert.equal(prof.traits[k], v, `trait ${k}`);
      if (ex.currency) assert.equal(prof.currency, ex.currency);
      if ('events' in ex || ex.order) {
        const tl = await get(base + '/events?limit=1000');
        assert.equal(tl.status, 200);
        if ('events' in ex) assert.equal(tl.json.events.length, ex.events, JSON.stringify(tl.json.events.map(label)));
        if (ex.order) assert.deepEqual(tl.json.events.map(label), ex.order);
        assert.equal(tl.json.next, null);
      }
      if ('merges' in ex || 'refused' in ex) {
        const j = await get(base + '/merges');
        assert.equal(j.status, 200);
        if ('merges' in ex) assert.equal(j.json.merges.length, ex.merges, JSON.stringify(j.json));
        if ('refused' in ex) assert.equal(j.json.refused.length, ex.refused, JSON.stringify(j.json));
        for (const m of j.json.merges) {
          assert.ok(m.at && m.survivor && m.absorbed && m.reason && Array.isArray(m.identifiers), JSON.stringify(m));
          assert.ok(m.messageId, 'a merge names the message that caused it');
        }
      }
    }
  });
});

test('timeline pages newest first with a cursor, across merged identities', async () => {
  for (let i = 0; i < 7; i++) {
    const r = await post(srv, '/v1/track', { anonymousId: 'pg-a', event: `E${i}`, timestamp: `2026-02-01T10:0${i}:00Z` });
    assert.equal(r.status, 200);
  }
  await post(srv, '/v1/identify', { anonymousId: 'pg-a', userId: 'pg-u', timestamp: '2026-02-01T10:09:00Z' });
  const seen = [];
  let next = null, pages = 0;
  do {
    const q = `?limit=3${next ? '&before=' + enc(next) : ''}`;
    const r = await get(`/v1/profiles/user_id/pg-u/events${q}`);
    assert.equal(r.status, 200);
    assert.ok(r.json.events.length <= 3);
    seen.push(...r.json.events.map(label));
    next = r.json.next;
    pages++;
  } while (next && pages < 10);
  assert.deepEqual(seen, ['identify', 'E6', 'E5', 'E4', 'E3', 'E2', 'E1', 'E0']);
  assert.equal(pages, 3);
  const bad = await get('/v1/profiles/user_id/pg-u/events?before=garbage');
  assert.equal(bad.status, 400);
});

test("an identify's traits in context.traits (RudderStack's SDKs) count like top-level traits", async () => {
  await post(srv, '/v1/identify', { userId: 'ctx-u', anonymousId: 'ctx-a',
    context: { traits: { email: 'Ctx.User@Example.com', plan: 'team' } } });
  const p = await get('/v1/profiles/email/' + enc('ctx.user@example.com'));
  assert.equal(p.status, 200);
  assert.equal(p.json.user_id, 'ctx-u');
  assert.equal(p.json.traits.plan, 'team');
  // top-level traits win when both are there
  await post(srv, '/v1/identify', { userId: 'ctx-u', traits: { plan: 'pro' }, context: { traits: { plan: 'free' } } });
  assert.equal((await get('/v1/profiles/user_id/ctx-u')).json.traits.plan, 'pro');
});

test('profile routes need the admin token', async () => {
  await post(srv, '/v1/page', { anonymousId: 'auth-a', name: 'Home' });
  for (const headers of [{}, { Authorization: 'Bearer wrong' }, { Authorization: 'Basic ' + Buffer.from(ADMIN + ':').toString('base64') }]) {
    const r = await fetch(srv.url + '/v1/profiles/anonymous_id/auth-a', { headers });
    assert.equal(r.status, 401);
  }
  assert.equal((await get('/v1/profiles/anonymous_id/auth-a')).status, 200);
  assert.equal((await get('/v1/profiles/shoe_size/42')).status, 404);
  assert.equal((await get('/v1/profiles/anonymous_id/nobody-here')).status, 404);
});

test('erasure removes the person, its identifiers and events; a re-visit starts afresh', async () => {
  await post(srv, '/v1/page', { anonymousId: 'er-a', name: 'Home' });
  await post(srv, '/v1/track', { anonymousId: 'er-a', event: 'Product Added' });
  await post(srv, '/v1/identify', { anonymousId: 'er-a', userId: 'er-u', traits: { email: 'er@example.com' } });
  const del = await fetch(srv.url + '/v1/profiles/email/' + enc('er@example.com'), { method: 'DELETE', headers: bearer });
  assert.equal(del.status, 200);
  const body = await del.json();
  assert.equal(body.erased.events, 3);
  assert.equal(body.erased.identities, 3);
  for (const [k, v] of [['user_id', 'er-u'], ['anonymous_id', 'er-a'], ['email', 'er@example.com']])
    assert.equal((await get(`/v1/profiles/${k}/${enc(v)}`)).status, 404);
  const again = await fetch(srv.url + '/v1/profiles/user_id/er-u', { method: 'DELETE', headers: bearer });
  assert.equal(again.status, 404);
  const exported = srv.exportEvents();
  assert.equal(exported.filter((e) => e.anonymousId === 'er-a' || e.userId === 'er-u').length, 0, 'events erased from the store');
  await post(srv, '/v1/page', { anonymousId: 'er-a', name: 'Back again' });
  const p = await get('/v1/profiles/anonymous_id/er-a');
  assert.equal(p.status, 200);
  assert.equal(p.json.counters.events, 1);
  assert.equal(p.json.user_id, null);
});

test('profiles survive a restart', async () => {
  await post(srv, '/v1/page', { anonymousId: 'rs-a', name: 'Home' });
  await post(srv, '/v1/identify', { anonymousId: 'rs-a', userId: 'rs-u' });
  const before1 = await get('/v1/profiles/user_id/rs-u');
  await srv.stop();
  const s2 = await startServer({ dir: srv.dir });
  const old = srv;
  srv = s2;
  const after1 = await get('/v1/profiles/user_id/rs-u');
  assert.equal(after1.status, 200);
  assert.deepEqual(after1.json, before1.json);
  await post(srv, '/v1/track', { anonymousId: 'rs-a', event: 'After Restart' });
  assert.equal((await get('/v1/profiles/user_id/rs-u')).json.counters.events, 3);
  assert.ok(old);
});

// Issue 21, M4: anyone with the public key can claim a user's identifiers
// thousands of times; the user's journal keeps one counted entry, and
// /merges answers a page.
test('5,000 refused aliases against one user: one coalesced entry, a bounded page, cursors that work', async () => {
  // the victim: five devices merged, so that its journal holds several entries
  for (let i = 0; i < 5; i++) {
    assert.equal((await post(srv, '/v1/page', { anonymousId: `jv-dev-${i}`, name: 'Home' })).status, 200);
    assert.equal((await post(srv, '/v1/identify', { anonymousId: `jv-dev-${i}`, userId: 'jvictim' })).status, 200);
  }
  for (let r = 0; r < 5; r++) {
    const batch = Array.from({ length: 1000 }, (_, i) =>
      ({ type: 'alias', previousId: 'jvictim', userId: `jatt-${r}-${i}` }));
    const res = await post(srv, '/v1/batch', { batch });
    assert.equal(res.status, 200, res.text);
  }
  const res = await fetch(srv.url + '/v1/profiles/user_id/jvictim/merges', { headers: bearer });
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.ok(text.length < 100000, `a page, not the whole history: ${text.length} bytes`);
  const j = JSON.parse(text);
  assert.equal(j.refused.length, 1, JSON.stringify(j.refused));
  const e = j.refused[0];
  assert.ok(e.count >= 5000, `count ${e.count}`);
  assert.deepEqual(e.identifier, { kind: 'user_id', id: 'jvictim' });
  assert.match(e.reason, /alias/);
  assert.ok(e.first_at <= e.last_at && e.at === e.last_at, JSON.stringify(e));
  assert.ok(e.messageId && e.event_person && e.owner === j.person, JSON.stringify(e));
  assert.equal(j.merges.length, 4, 'the first device became the user, four were merged');
  assert.equal(j.next, null);
  // a claimant sees its claim refused
  const att = await get('/v1/profiles/user_id/jatt-3-7/merges');
  assert.equal(att.status, 200);
  assert.equal(att.json.refused.length, 1);
  // a page at a time, newest first: the refusal came last
  const seen = [];
  let next = null, pages = 0;
  do {
    const p = await get(`/v1/profiles/user_id/jvictim/merges?limit=2${next ? '&before=' + enc(next) : ''}`);
    assert.equal(p.status, 200, JSON.stringify(p.json));
    const entries = [...p.json.refused, ...p.json.merges];
    assert.ok(entries.length <= 2);
    if (pages === 0) assert.equal(p.json.refused.length, 1, 'the newest entry first');
    seen.push(...entries.map((x) => x.type + ':' + (x.absorbed || x.identifier.id)));
    next = p.json.next;
    pages++;
  } while (next && pages < 10);
  assert.equal(pages, 3);
  assert.equal(new Set(seen).size, 5, seen.join(' '));
});

test('reads built off the loop: clients that leave before the answer cost nothing, others are served', async () => {
  const req = (path) => `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`;
  await Promise.all(Array.from({ length: 20 }, (_, i) => new Promise((resolve) => {
    const sock = net.connect(srv.port, '127.0.0.1', () => {
      sock.write(req(i % 2 ? '/v1/profiles/user_id/jvictim/merges?limit=1000' : '/v1/profiles/user_id/jvictim'));
      sock.destroy(); // gone before the answer
      resolve();
    });
    sock.on('error', resolve);
  })));
  // Their reads still queued are cancelled as they leave, the running ones
  // end in milliseconds; until then more than the cap of reads may be in
  // progress, which a client is told with 503 + Retry-After (shortened here).
  let answers;
  for (let tries = 0; ; tries++) {
    answers = parseResponses(await rawExchange(srv.port,
      req('/v1/profiles/user_id/jvictim') + req('/v1/profiles/user_id/jvictim/merges?limit=1'), { untilResponses: 2 }));
    if (!answers.some((a) => a.status === 503) || tries === 20) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(answers.map((a) => a.status), [200, 200]);
  assert.equal(JSON.parse(answers[0].body).user_id, 'jvictim');
  assert.equal(JSON.parse(answers[1].body).refused.length, 1, 'answers in order on one connection');
});

test('/merges: limit and before are checked', async () => {
  await post(srv, '/v1/identify', { anonymousId: 'mlim-a', userId: 'mlim-u' });
  for (const q of ['limit=0', 'limit=1001', 'limit=abc', 'limit=-1']) {
    const r = await get('/v1/profiles/user_id/mlim-u/merges?' + q);
    assert.equal(r.status, 400, q);
    assert.match(r.json.error, /limit must be a whole number from 1 to 1000/, q);
  }
  for (const q of ['before=abc', 'before=-1', 'before=0', 'before=%zz', 'before=1e3', 'before=99999999999999999999999',
    'before=', 'before=1%00', 'before=5%00x', 'before=5&before=', 'limit=5&before=&x=1']) {
    const r = await get('/v1/profiles/user_id/mlim-u/merges?' + q);
    assert.equal(r.status, 400, q);
    assert.match(r.json.error, /before must be a cursor from a previous page/, q);
  }
  // the same for the other pages
  for (const path of ['/v1/profiles/user_id/mlim-u/events?before=', '/v1/profiles/user_id/mlim-u/events?before=1%00',
    '/v1/profiles?before=', '/v1/profiles?before=%zz', '/v1/profiles?before=1%00']) {
    const r = await get(path);
    assert.equal(r.status, 400, path);
    assert.match(r.json.error, /before must be a cursor from a previous page/, path);
  }
  const ok = await get('/v1/profiles/user_id/mlim-u/merges?limit=1000&before=5');
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json.merges, []);
  assert.equal(ok.json.next, null);
});

// The test seam SILLAGE_TEST_READ_DELAY_MS makes every profile read sleep on
// its worker thread: reads can be held in flight. With UV_THREADPOOL_SIZE=2
// two run at once and at most four (twice the pool) are taken.
describe('profile reads on the threadpool, each held DELAY ms by the test seam', () => {
  const DELAY = 2000, POOL = 2, CAP = 2 * POOL;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  let slow;
  before(async () => {
    const saved = { delay: process.env.SILLAGE_TEST_READ_DELAY_MS, pool: process.env.UV_THREADPOOL_SIZE };
    process.env.SILLAGE_TEST_READ_DELAY_MS = String(DELAY);
    process.env.UV_THREADPOOL_SIZE = String(POOL);
    const started = startServer(); // spawns at once, with this environment
    for (const [k, v] of [['SILLAGE_TEST_READ_DELAY_MS', saved.delay], ['UV_THREADPOOL_SIZE', saved.pool]]) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    slow = await started;
    assert.equal((await post(slow, '/v1/identify', { userId: 'slow-u', anonymousId: 'slow-a' })).status, 200);
  });
  after(async () => { await slow.stop(); slow.cleanup(); });

  // A profile GET on a connection of its own: the socket, and its answer
  // (null when the connection closed without one).
  function openRead(path = '/v1/profiles/user_id/slow-u') {
    const sock = net.connect(slow.port, '127.0.0.1');
    let data = '';
    const answer = new Promise((resolve) => {
      sock.on('data', (d) => {
        data += d.toString('latin1');
        const got = parseResponses(data);
        if (got.length) { resolve(got[0]); sock.destroy(); }
      });
      sock.on('close', () => resolve(parseResponses(data)[0] || null));
      sock.on('error', () => {});
    });
    sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`);
    return { sock, answer };
  }
  async function timed(p) {
    const t = performance.now();
    const r = await p;
    return { r, ms: performance.now() - t };
  }

  test('a read in flight never holds the loop: ingestion and /healthz answer meanwhile', async () => {
    const t0 = performance.now();
    const read = openRead();
    let answeredAt = null;
    read.answer.then(() => { answeredAt = performance.now(); });
    await sleep(200); // the read is on a worker thread, sleeping
    // built on the loop, these would wait for the read: DELAY ms
    const tr = await timed(post(slow, '/v1/track', track()));
    assert.equal(tr.r.status, 200, tr.r.text);
    assert.ok(tr.ms < 1000, `POST /v1/track took ${Math.round(tr.ms)} ms while a read was in flight`);
    const hz = await timed(fetch(slow.url + '/healthz'));
    assert.equal(hz.r.status, 200);
    assert.ok(hz.ms < 1000, `GET /healthz took ${Math.round(hz.ms)} ms while a read was in flight`);
    assert.equal(answeredAt, null, 'the read was still in flight meanwhile');
    const a = await read.answer;
    assert.equal(a.status, 200);
    assert.equal(JSON.parse(a.body).user_id, 'slow-u');
    assert.ok(performance.now() - t0 >= DELAY - 100, 'the seam held the read');
  });

  test('past twice the pool of reads at once: 503, Retry-After and a JSON error that says why', async () => {
    const reads = Array.from({ length: CAP }, () => openRead());
    await sleep(300); // all taken: POOL running, the rest queued
    const res = await fetch(slow.url + '/v1/profiles/user_id/slow-u', { headers: bearer });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '1');
    const j = await res.json();
    assert.equal(j.success, false);
    assert.match(j.error, /too many profile reads in progress/);
    const answers = await Promise.all(reads.map((r) => r.answer));
    assert.deepEqual(answers.map((a) => a && a.status), Array(CAP).fill(200));
  });

  test('reads whose clients left are cancelled: their slots free at once, the next read waits for the running ones only', async () => {
    const t0 = performance.now();
    const reads = Array.from({ length: CAP }, () => openRead());
    await sleep(300);
    for (const r of reads) r.sock.destroy(); // POOL of them run on; the queued ones are cancelled
    let res;
    for (;;) {
      res = await fetch(slow.url + '/v1/profiles/user_id/slow-u', { headers: bearer });
      if (res.status !== 503) break;
      await res.arrayBuffer();
      // kept to their end, the slots would free at t0 + DELAY
      assert.ok(performance.now() - t0 < 1300, 'a slot is free within a second of the clients leaving');
      await sleep(50);
    }
    assert.equal(res.status, 200);
    assert.equal((await res.json()).user_id, 'slow-u');
    // behind the POOL running reads: t0 + 2 DELAY; behind the cancelled ones too, t0 + 3 DELAY
    const ms = performance.now() - t0;
    assert.ok(ms < 2.5 * DELAY, `answered ${Math.round(ms)} ms after the first reads were sent`);
  });
});
