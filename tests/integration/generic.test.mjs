// generic.test.mjs - generic computed fields (issue 24, item 3): each
// aggregate over its events, a `where`, windows kept as time buckets (a
// seconds-long one expiring by its timer), a label over the others, merges
// joining states, computed_change on them; black-box against the server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, ADMIN, run } from './helpers.mjs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const FIELDS = [
  { name: 'logins_30d', type: 'count', event: 'Logged In', window: '30d' },
  { name: 'basket_a', type: 'avg', event: 'Order Completed', property: 'properties.total',
    where: { field: 'properties.shop', eq: 'A' }, window: '90d' },
  { name: 'spent', type: 'sum', event: 'Order Completed', property: 'properties.total' },
  { name: 'smallest', type: 'min', event: 'Order Completed', property: 'properties.total' },
  { name: 'largest', type: 'max', event: 'Order Completed', property: 'properties.total' },
  { name: 'first_path', type: 'first', event: 'page', property: 'properties.path' },
  { name: 'last_plan', type: 'last', event: 'identify', property: 'traits.plan' },
  { name: 'brands', type: 'distinct_list', event: 'Product Viewed', property: 'properties.brand', max_values: 3 },
  { name: 'brand_count', type: 'distinct_count', event: 'Product Viewed', property: 'properties.brand' },
  { name: 'fav_brand', type: 'most_frequent', event: 'Product Viewed', property: 'properties.brand' },
  { name: 'lead_score', type: 'score', points: [{ event: 'Demo Requested', points: 20 },
    { event: 'page', where: { field: 'properties.path', starts_with: '/pricing' }, points: 5 }] },
  { name: 'tier', type: 'label', labels: [{ if: { field: 'profile.computed.lead_score', gte: 25 }, value: 'hot' },
    { if: { field: 'profile.computed.lead_score', gt: 0 }, value: 'warm' }], else: 'cold' },
  { name: 'views_3s', type: 'count', event: 'Product Viewed', window: '3s' },
];
const RULES = [
  { name: 'hot', type: 'computed_change', field: 'tier', to: ['hot'], in_payload: ['lead_score'] },
  { name: 'cooled', type: 'computed_change', field: 'views_3s', crosses: 1, direction: 'down' },
];

let srv;
const config = { computed: { fields: FIELDS }, triggers: RULES, timezone: 'Europe/Paris' };
before(async () => { srv = await startServer({ config }); });
after(async () => { await srv.stop(); srv.cleanup(); });

const ok = async (type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};
async function computed(kind, id) {
  const r = await fetch(`${srv.url}/v1/profiles/${kind}/${id}`, { headers: bearer });
  assert.equal(r.status, 200);
  return (await r.json()).computed;
}
async function feed() {
  const r = await fetch(`${srv.url}/v1/triggers?after=0&limit=1000`, { headers: bearer });
  return (await r.json()).triggers;
}

test('each aggregate, with where, first and last by timestamp, a bounded distinct set, a label', async () => {
  const t0 = Date.now();
  const at = (s) => new Date(t0 - s * 1000).toISOString();
  await ok('track', { userId: 'g1', event: 'Logged In' });
  await ok('track', { userId: 'g1', event: 'Logged In', timestamp: at(40 * 86400) }); // outside 30d
  await ok('track', { userId: 'g1', event: 'Order Completed', properties: { shop: 'A', total: 30 } });
  await ok('track', { userId: 'g1', event: 'Order Completed', properties: { shop: 'A', total: 50 } });
  await ok('track', { userId: 'g1', event: 'Order Completed', properties: { shop: 'B', total: 1000 } });
  await ok('track', { userId: 'g1', event: 'Order Completed', properties: { shop: 'A', total: 'n/a' } });
  await ok('page', { userId: 'g1', properties: { path: '/later' }, timestamp: at(10) });
  await ok('page', { userId: 'g1', properties: { path: '/landing' }, timestamp: at(100) }); // earlier: first
  await ok('identify', { userId: 'g1', traits: { plan: 'pro' }, timestamp: at(5) });
  await ok('identify', { userId: 'g1', traits: { plan: 'free' }, timestamp: at(50) }); // older: not last
  for (const b of ['acme', 'zeta', 'acme', 'beta', 'omega'])
    await ok('track', { userId: 'g1', event: 'Product Viewed', properties: { brand: b } });
  const c = await computed('user_id', 'g1');
  assert.equal(c.logins_30d, 1);
  assert.equal(c.basket_a, 40);
  assert.equal(c.spent, 1080);
  assert.equal(c.smallest, 30);
  assert.equal(c.largest, 1000);
  assert.equal(c.first_path, '/landing');
  assert.equal(c.last_plan, 'pro');
  assert.deepEqual(c.brands, ['acme', 'zeta', 'beta'], 'bounded at max_values 3');
  assert.equal(c.brand_count, 4);
  assert.equal(c.fav_brand, 'acme');
  assert.equal(c.lead_score, 0);
  assert.equal(c.tier, 'cold');
  assert.equal(c.views_3s, 5);
  assert.equal(c.orders, undefined, 'the commerce pack is off');
});

test('a score moves a label; the label change fires with in_payload', async () => {
  await ok('page', { userId: 'lead', properties: { path: '/pricing/team' } });
  assert.equal((await computed('user_id', 'lead')).tier, 'warm');
  await ok('track', { userId: 'lead', event: 'Demo Requested' });
  const c = await computed('user_id', 'lead');
  assert.equal(c.lead_score, 25);
  assert.equal(c.tier, 'hot');
  const hot = (await feed()).filter((t) => t.rule === 'hot');
  assert.equal(hot.length, 1);
  assert.deepEqual(hot[0].data, { field: 'tier', old: 'warm', new: 'hot', reason: 'event' });
  assert.deepEqual(hot[0].profile.computed, { lead_score: 25 });
});

test('a merge joins the states; a seconds-long window empties by its timer', async () => {
  await ok('track', { anonymousId: 'anon-g', event: 'Product Viewed', properties: { brand: 'x' } });
  await ok('track', { anonymousId: 'anon-g', event: 'Demo Requested' });
  await ok('track', { userId: 'merged', event: 'Product Viewed', properties: { brand: 'y' } });
  await ok('identify', { userId: 'merged', anonymousId: 'anon-g' });
  let c = await computed('user_id', 'merged');
  assert.equal(c.views_3s, 2);
  assert.equal(c.brand_count, 2);
  assert.equal(c.lead_score, 20);
  // no event from here: the window empties, and the rule hears it from the timer
  let cooled = [];
  const end = Date.now() + 10000;
  while (Date.now() < end) {
    cooled = (await feed()).filter((t) => t.rule === 'cooled' && t.profile.user_id === 'merged');
    if (cooled.length) break;
    await sleep(200);
  }
  assert.equal(cooled.length, 1);
  assert.equal(cooled[0].data.reason, 'timer');
  assert.equal(cooled[0].data.new, 0);
  c = await computed('user_id', 'merged');
  assert.equal(c.views_3s, 0);
  assert.equal(c.brand_count, 2, 'lifetime fields stay');
});

test('verify and check-config', async () => {
  await srv.stop();
  const v = run(['verify', '-c', srv.cfgPath]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.match(v.stdout, / 0 problems/);
  assert.match(v.stdout, /^\d+ persons' generic computed fields recomputed from their events$/m);
  srv = await startServer({ dir: srv.dir, config });
  assert.equal((await computed('user_id', 'g1')).fav_brand, 'acme', 'states survive a restart');
});

test('a field added on SIGHUP reads the past (backfill) to the values a fresh store gets, firing nothing meanwhile', async () => {
  const { baseConfig } = await import('./helpers.mjs');
  const { writeFileSync } = await import('node:fs');
  const ADDED = [
    { name: 'views_all', type: 'count', event: 'Product Viewed' },
    { name: 'views_30d', type: 'count', event: 'Product Viewed', window: '30d' },
    { name: 'brand_list', type: 'distinct_list', event: 'Product Viewed', property: 'properties.brand' },
    { name: 'spent_all', type: 'sum', event: 'Order Completed', property: 'properties.total' },
    { name: 'idents', type: 'count', event: 'identify' },
  ];
  const RULE = { name: 'first-view', type: 'computed_change', field: 'views_all', crosses: 1 };
  const events = [];
  const t0 = Date.now();
  for (let i = 0; i < 40; i++) {
    const who = i % 4 === 0 ? { anonymousId: 'bf-anon-' + (i % 8) } : { userId: 'bf-user-' + (i % 5) };
    events.push(['track', { ...who, event: 'Product Viewed', properties: { brand: 'b' + (i % 3) },
      timestamp: new Date(t0 - (i * 86400000) / 2).toISOString(), messageId: 'bf-' + i }]);
  }
  events.push(['track', { userId: 'bf-user-1', event: 'Order Completed', properties: { total: 12.5 }, messageId: 'bf-o1' }]);
  events.push(['identify', { userId: 'bf-user-2', anonymousId: 'bf-anon-0', messageId: 'bf-id' }]);
  // an identify the stitcher keys by its e-mail alone (its ids are junk)
  events.push(['identify', { userId: 'null', anonymousId: 'undefined', traits: { email: 'BF-Mail@Example.com' },
    messageId: 'bf-mail' }]);
  const a = await startServer({ config: {} });
  const b = await startServer({ config: { computed: { fields: ADDED }, triggers: [RULE] } });
  const send = async (s, [type, msg]) => {
    const r = await post(s, '/v1/' + type, msg);
    assert.equal(r.status, 200, r.text);
  };
  const get = async (s, path) => (await fetch(s.url + path, { headers: bearer })).json();
  try {
    for (const e of events) { await send(a, e); await send(b, e); }
    // the fields arrive with a reload: the events above came before them
    writeFileSync(a.cfgPath, JSON.stringify(baseConfig(a.dataDir, { computed: { fields: ADDED }, triggers: [RULE] })));
    a.child.kill('SIGHUP');
    const end = Date.now() + 10000;
    let list;
    for (;;) {
      list = await get(a, '/v1/computed');
      const names = list.fields.map((f) => f.name);
      if (ADDED.every((f) => names.includes(f.name)) && list.fields.every((f) => !f.backfilling)) break;
      assert.ok(Date.now() < end, 'the backfill ends: ' + JSON.stringify(list));
      await sleep(100);
    }
    for (const id of ['bf-user-0', 'bf-user-1', 'bf-user-2', 'bf-user-3', 'bf-user-4']) {
      const ca = (await get(a, `/v1/profiles/user_id/${id}`)).computed;
      const cb = (await get(b, `/v1/profiles/user_id/${id}`)).computed;
      assert.deepEqual({ ...ca, brand_list: [...ca.brand_list].sort() }, { ...cb, brand_list: [...cb.brand_list].sort() }, id);
      assert.ok(ca.views_all > 0);
    }
    const byMail = async (s) => (await get(s, '/v1/profiles/email/bf-mail%40example.com')).computed.idents;
    assert.equal(await byMail(a), 1, 'the backfill found the person of an identify keyed by its e-mail');
    assert.equal(await byMail(b), 1);
    assert.equal((await get(a, '/v1/profiles/user_id/bf-user-2')).computed.views_all,
      (await get(b, '/v1/profiles/user_id/bf-user-2')).computed.views_all, 'the merged anonymous views too');
    const fired = async (s) => (await get(s, '/v1/triggers?after=0&limit=1000')).triggers.filter((t) => t.rule === 'first-view');
    assert.equal((await fired(a)).length, 0, 'nothing fired for the past');
    assert.ok((await fired(b)).length > 0, 'the fresh store fired as the events came');
    // from now on the field is live: a new person's first view fires
    await send(a, ['track', { userId: 'bf-new', event: 'Product Viewed', properties: { brand: 'z' } }]);
    assert.equal((await get(a, '/v1/profiles/user_id/bf-new')).computed.views_all, 1);
    assert.equal((await fired(a)).length, 1);
  } finally {
    await a.stop(); a.cleanup();
    await b.stop(); b.cleanup();
  }
});
