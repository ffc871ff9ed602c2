// identity.test.mjs - identity stitching through the HTTP API: the scenarios
// of tests/identity/scenarios.json (table-driven), then erasure, pagination,
// admin auth and a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startServer, post, basic, ADMIN, WRITE_KEY } from './helpers.mjs';

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
