// pipeline.test.mjs - what a client sees of the pipeline (docs/API.md,
// "Consistency"): the ingest answer's log position, reads that wait for it
// (bounded), the stage's lag in /healthz and /metrics, and the admin routes
// over the events the stage set aside (list, replay).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, ADMIN } from './helpers.mjs';

const auth = { Authorization: 'Bearer ' + ADMIN };

test('read-your-writes: the answer carries the log position; a read waits for it, bounded', async (t) => {
  const srv = await startServer();
  t.after(() => { srv.stop(); srv.cleanup(); });
  const a = await post(srv, '/v1/track', { userId: 'ryw-1', event: 'One', messageId: 'ryw-m1' });
  assert.equal(a.status, 200, a.text);
  const p1 = Number(a.headers.get('x-sillage-position'));
  assert.ok(Number.isInteger(p1) && p1 >= 1, `position ${a.headers.get('x-sillage-position')}`);
  const b = await post(srv, '/v1/batch', { batch: [
    { type: 'track', userId: 'ryw-1', event: 'Two', messageId: 'ryw-m2' },
    { type: 'track', userId: 'ryw-1', event: 'Three', messageId: 'ryw-m3' }] });
  const p2 = Number(b.headers.get('x-sillage-position'));
  assert.equal(p2, p1 + 2, 'the position is the last event the request stored');

  // a duplicate stores nothing: its position is still one to wait for
  const d = await post(srv, '/v1/track', { userId: 'ryw-1', event: 'One', messageId: 'ryw-m1' });
  assert.equal(d.status, 200);
  assert.ok(Number(d.headers.get('x-sillage-position')) >= p2);

  const r = await fetch(`${srv.url}/v1/profiles/user_id/ryw-1?position=${p2}&wait_ms=5000`, { headers: auth });
  assert.equal(r.status, 200);
  assert.ok(Number(r.headers.get('x-sillage-applied')) >= p2);
  assert.equal(r.headers.get('x-sillage-stale'), null);
  const prof = await r.json();
  assert.equal(prof.counters.events, 3, JSON.stringify(prof));

  // a position the log has not reached: answered when wait_ms runs out, marked stale
  const t0 = Date.now();
  const s = await fetch(`${srv.url}/v1/profiles/user_id/ryw-1?position=${p2 + 1000}&wait_ms=150`, { headers: auth });
  const took = Date.now() - t0;
  assert.equal(s.status, 200);
  assert.equal(s.headers.get('x-sillage-stale'), '1');
  assert.equal((await s.json()).counters.events, 3, 'what was applied by then');
  assert.ok(took >= 140 && took < 3000, `waited ${took} ms`);

  const bad = await fetch(`${srv.url}/v1/profiles/user_id/ryw-1?wait_ms=10001`, { headers: auth });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /wait_ms must be a whole number from 0 to 10000/);

  // the lag, in /healthz and /metrics
  const h = await (await fetch(srv.url + '/healthz')).json();
  assert.equal(typeof h.stage.lag_ms, 'number');
  assert.equal(typeof h.stage.lag_events, 'number');
  assert.ok(h.stage.applied >= p2, JSON.stringify(h.stage));
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_stage_lag_events \d+$/m);
  assert.match(m, /^sillage_stage_lag_seconds [\d.]+$/m);
  assert.match(m, /^sillage_stage_replayed_total 0$/m);
});

test('set-aside routes: admin only, a listing and a replay with their counts', async (t) => {
  const srv = await startServer();
  t.after(() => { srv.stop(); srv.cleanup(); });
  await post(srv, '/v1/track', { userId: 'sa-1', event: 'One' });

  const anon = await fetch(srv.url + '/v1/admin/set-aside/replay', { method: 'POST' });
  assert.equal(anon.status, 401);
  const list = await fetch(srv.url + '/v1/admin/set-aside', { headers: auth });
  assert.equal(list.status, 200);
  assert.deepEqual(await list.json(), { set_aside: [] });

  const rp = await fetch(srv.url + '/v1/admin/set-aside/replay?from=1&limit=10', { method: 'POST', headers: auth });
  assert.equal(rp.status, 200);
  assert.deepEqual(await rp.json(), { success: true, replayed: 0, failed: 0, gone: 0, more: false });

  const get = await fetch(srv.url + '/v1/admin/set-aside/replay', { headers: auth });
  assert.equal(get.status, 405);
  const zero = await fetch(srv.url + '/v1/admin/set-aside/replay?limit=0', { method: 'POST', headers: auth });
  assert.equal(zero.status, 400);
  assert.match((await zero.json()).error, /limit must be a whole number from 1 to 10000/);
});

test('GET /v1/profiles: the most recently active first, a page at a time; merged persons once', async (t) => {
  const srv = await startServer();
  t.after(() => { srv.stop(); srv.cleanup(); });
  const t0 = Date.parse('2026-11-29T08:00:00Z');
  const at = (min) => new Date(t0 + min * 60000).toISOString();
  for (const [i, u] of ['r1', 'r2', 'r3', 'r4', 'r5'].entries())
    await post(srv, '/v1/track', { userId: u, event: 'Seen', timestamp: at(i * 10) });
  await post(srv, '/v1/track', { userId: 'r2', event: 'Back', timestamp: at(100) });
  // an anonymous visitor, later identified as r1: one person, active at the identify
  await post(srv, '/v1/page', { anonymousId: 'r-anon', timestamp: at(110) });
  await post(srv, '/v1/identify', { userId: 'r1', anonymousId: 'r-anon', traits: { email: 'r1@example.com' }, timestamp: at(120) });

  const page = async (q) => {
    const r = await fetch(`${srv.url}/v1/profiles${q}`, { headers: auth });
    return { status: r.status, json: await r.json() };
  };
  const p1 = await page('?limit=2');
  assert.equal(p1.status, 200, JSON.stringify(p1.json));
  assert.deepEqual(p1.json.profiles.map((p) => p.user_id), ['r1', 'r2']);
  assert.equal(p1.json.profiles[0].counters.events, 3, 'r1 with its anonymous page');
  assert.ok(p1.json.profiles[0].identities.some((i) => i.kind === 'email' && i.id === 'r1@example.com'));
  const p2 = await page('?limit=2&before=' + encodeURIComponent(p1.json.next));
  assert.deepEqual(p2.json.profiles.map((p) => p.user_id), ['r5', 'r4']);
  const p3 = await page('?limit=2&before=' + encodeURIComponent(p2.json.next));
  assert.deepEqual(p3.json.profiles.map((p) => p.user_id), ['r3']);
  assert.equal(p3.json.next, null);
  const all = await page('');
  assert.equal(all.json.profiles.length, 5, 'merged persons appear once');

  // an event may claim 1970: time 0 is a place like another, never a second entry
  await post(srv, '/v1/track', { userId: 'r0', event: 'Old', timestamp: '1970-01-01T00:00:00Z' });
  await post(srv, '/v1/track', { userId: 'r0', event: 'Older still', timestamp: '1970-01-01T00:05:00Z' });
  const listed = (await page('?limit=100')).json.profiles.map((p) => p.user_id);
  assert.equal(listed.filter((u) => u === 'r0').length, 1, JSON.stringify(listed));
  assert.equal(listed.at(-1), 'r0', 'the least recently active last');

  assert.equal((await page('?before=nonsense')).status, 400);
  assert.equal((await page('?limit=101')).status, 400);
  assert.equal((await fetch(`${srv.url}/v1/profiles`)).status, 401);
});
