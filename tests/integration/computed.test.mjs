// computed.test.mjs - computed profile fields (issue 24): the order ledger
// and the commerce pack, black-box against the real server: duplicates,
// refunds sent under another identity, currencies, categories, promo
// affinity, windows, a guest order counting at login, RFM moved by a timer,
// computed_change rules with in_payload, and `sillage verify` after it all.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, basic, ADMIN, WRITE_KEY, run } from './helpers.mjs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const DAY = 86400000;
const ago = (ms) => new Date(Date.now() - ms).toISOString();

const COMMERCE = {
  currency: 'EUR',
  fx: { USD: 0.5 },
  windows: ['90d'],
  promophile: { min_orders: 2, min_share: 0.5 },
  rfm: {
    // seconds, so that the test sees time move the segment
    recency: ['3s', '5s', '7s', '3600s'],
    frequency: [2, 3, 10, 20],
    monetary: [100, 1000, 10000, 100000],
    segments: [
      { name: 'at risk', r: [1, 3], f: [3, 5] },
      { name: 'loyal', r: [4, 5], f: [3, 5] },
      { name: 'new', r: [4, 5], f: 1 },
      { name: 'promising', r: [4, 5], f: 2 },
      { name: 'others' },
    ],
  },
};
const RULES = [
  { name: 'mix', type: 'computed_change', field: 'categories_count', crosses: 3, in_payload: ['categories', 'revenue'] },
  { name: 'to-risk', type: 'computed_change', field: 'rfm.segment', to: ['at risk'], in_payload: ['rfm.segment', 'orders'] },
  { name: 'browsing', type: 'computed_change', field: 'views_1h', crosses: 2 },
  { name: 'lapsed', type: 'inactivity', after: '2s', event: 'Order Completed', in_payload: ['last_order_at', 'orders'] },
  { name: 'second', type: 'event', event: 'Order Completed',
    if: { field: 'profile.computed.orders', gte: 2 } },
  { name: 'window-2', type: 'computed_change', field: 'orders_90d', crosses: 2 },
];

let srv;
const SOURCES = [{ name: 'test', write_key: WRITE_KEY }, { name: 'backoffice', write_key: 'wk_backoffice', trusted: true }];
const FIELDS = [{ name: 'views_1h', type: 'count', event: 'Product Viewed', window: '1h' }];
const CONFIG = { sources: SOURCES, computed: { commerce: COMMERCE, fields: FIELDS }, triggers: RULES, debug: true };
before(async () => { srv = await startServer({ config: CONFIG }); });
after(async () => { await srv.stop(); srv.cleanup(); });

const ok = async (type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};
// the back office: a trusted (server-side) key, the only one whose refunds count
const bo = async (type, msg) => {
  const r = await post(srv, '/v1/' + type, msg, { Authorization: basic('wk_backoffice') });
  assert.equal(r.status, 200, r.text);
};
const order = (userId, props, extra = {}) =>
  ok('track', { userId, event: 'Order Completed', properties: props, ...extra });
async function profile(kind, id) {
  const r = await fetch(`${srv.url}/v1/profiles/${kind}/${encodeURIComponent(id)}`, { headers: bearer });
  assert.equal(r.status, 200, await r.clone().text());
  return r.json();
}
async function orders(kind, id) {
  const r = await fetch(`${srv.url}/v1/profiles/${kind}/${encodeURIComponent(id)}/orders`, { headers: bearer });
  assert.equal(r.status, 200);
  return r.json();
}
async function feed() {
  const r = await fetch(`${srv.url}/v1/triggers?after=0&limit=1000`, { headers: bearer });
  return (await r.json()).triggers;
}
async function metric(name) {
  const text = await (await fetch(srv.url + '/metrics', { headers: bearer })).text();
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

test('the ledger: first copy wins, revenue rules, currencies, categories, promo, windows', async () => {
  await order('led', { order_id: 'L1', revenue: 100, currency: 'EUR', coupon: 'WELCOME',
    products: [{ category: ' Shoes ' }, { category: 'shoes' }, { category: 'BAGS' }] }, { timestamp: ago(100 * DAY) });
  await order('led', { order_id: 'L1', revenue: 999 }); // a copy: ignored, counted
  await order('led', { order_id: 'L2', total: 130, tax: 20, shipping: 10, currency: 'USD', category: 'Hats' },
    { timestamp: ago(10 * DAY) });
  await order('led', { order_id: 'L3', revenue: 40, currency: 'GBP', discount: 5 }, { timestamp: ago(5 * DAY) });
  const p = await profile('user_id', 'led');
  assert.equal(p.counters.orders, 3);
  assert.equal(p.counters.revenue, 150); // 100 + (130-20-10)*0.5; GBP unknown: counted, not its revenue
  assert.equal(p.currency, 'EUR');
  const c = p.computed;
  assert.equal(c.orders, 3);
  assert.equal(c.revenue, 150);
  assert.equal(c.aov, 75); // over the 2 orders with a known revenue
  assert.deepEqual(c.categories, ['shoes', 'bags', 'hats']);
  assert.equal(c.categories_count, 3);
  assert.equal(c.top_category, 'bags'); // 1 order each: by name
  assert.equal(c.promo_orders, 2);
  assert.equal(c.promo_share, 0.67);
  assert.equal(c.promophile, true);
  assert.equal(c.orders_90d, 2);
  assert.equal(c.revenue_90d, 50);
  assert.equal(c.aov_90d, 50);
  assert.equal(Date.parse(c.first_order_at) < Date.parse(c.second_order_at), true);
  assert.equal(c.avg_days_between_orders, 47.5);
  assert.equal(c.rfm.segment, 'at risk', JSON.stringify(c.rfm)); // 3 orders, the last 5 days ago: r 1
  const l = await orders('user_id', 'led');
  assert.equal(l.orders.length, 3);
  assert.deepEqual(l.orders.map((o) => o.order_id), ['L3', 'L2', 'L1']);
  const l1 = l.orders[2];
  assert.equal(l1.duplicates, 1);
  assert.equal(l1.revenue, 100);
  assert.deepEqual(l1.categories, ['shoes', 'bags']);
  assert.equal(l.orders[0].revenue, null);
  assert.equal(l.orders[1].revenue, 50);
  assert.equal(l.orders[1].currency, 'USD');
  assert.ok((await metric('sillage_orders_unknown_currency_total')) >= 1);
  assert.ok((await metric('sillage_orders_duplicate_total')) >= 1);
});

test('refunds under another identity: partial reduces revenue, full leaves every figure; promophile follows', async () => {
  await order('ref', { order_id: 'R1', revenue: 80, coupon: 'X', category: 'a' });
  await order('ref', { order_id: 'R2', revenue: 20, coupon: 'Y', category: 'b' });
  await order('ref', { order_id: 'R3', revenue: 50, category: 'c' });
  let c = (await profile('user_id', 'ref')).computed;
  assert.equal(c.promophile, true);
  assert.equal(c.revenue, 150);
  // a browser key cannot refund anyone's order: ignored, counted
  await ok('track', { userId: 'ref', event: 'Order Refunded', properties: { order_id: 'R3' } });
  assert.equal((await profile('user_id', 'ref')).computed.orders, 3);
  assert.ok((await metric('sillage_order_refunds_untrusted_total')) >= 1);
  // the back office, as an anonymous caller
  await bo('track', { anonymousId: 'backoffice', event: 'Order Refunded', properties: { order_id: 'R1', total: 30 } });
  c = (await profile('user_id', 'ref')).computed;
  assert.equal(c.orders, 3);
  assert.equal(c.revenue, 120);
  await bo('track', { anonymousId: 'backoffice', event: 'Order Cancelled', properties: { order_id: 'R2' } });
  c = (await profile('user_id', 'ref')).computed;
  assert.equal(c.orders, 2);
  assert.equal(c.revenue, 100);
  assert.equal(c.promo_orders, 1);
  assert.equal(c.promophile, false, 'one promo order of two: under min_orders 2');
  assert.deepEqual(c.categories, ['a', 'c']);
  const l = await orders('user_id', 'ref');
  const byId = Object.fromEntries(l.orders.map((o) => [o.order_id, o]));
  assert.equal(byId.R1.status, 'partially_refunded');
  assert.equal(byId.R1.refunded, 30);
  assert.equal(byId.R2.status, 'refunded');
  assert.equal(byId.R2.refunds.length, 1);
  assert.equal(byId.R2.refunds[0].amount, null);
  // a refund that comes before its order waits for it
  await bo('track', { userId: 'ref', event: 'Order Refunded', properties: { order_id: 'R4' } });
  await order('ref', { order_id: 'R4', revenue: 500 });
  c = (await profile('user_id', 'ref')).computed;
  assert.equal(c.orders, 2);
  assert.equal(c.revenue, 100);
});

test('a guest order counts at login; one order_id sent for two persons counts once after they merge', async () => {
  await order('buyer', { order_id: 'G1', revenue: 10 });
  await ok('track', { anonymousId: 'guest-1', event: 'Order Completed', properties: { order_id: 'G2', revenue: 25 } });
  await ok('track', { anonymousId: 'guest-1', event: 'Order Completed', properties: { order_id: 'G1', revenue: 10 } });
  assert.equal((await profile('anonymous_id', 'guest-1')).computed.orders, 1);
  await ok('identify', { userId: 'buyer', anonymousId: 'guest-1' });
  const p = await profile('user_id', 'buyer');
  assert.equal(p.counters.orders, 2);
  assert.equal(p.counters.revenue, 35);
  const l = await orders('user_id', 'buyer');
  assert.equal(l.orders.length, 2);
  const g1 = l.orders.find((o) => o.order_id === 'G1'), g2 = l.orders.find((o) => o.order_id === 'G2');
  assert.equal(g1.duplicates, 1);
  assert.ok(g2.from === null || /^p_\d+$/.test(g2.from));
  assert.notEqual(g1.from, g2.from, 'the guest order names the person that placed it');
});

test('product mix: a rule fires with a third category, not with two; in_payload carries computed values', async () => {
  await order('mixer', { order_id: 'M1', revenue: 10, category: 'tea' });
  await order('mixer', { order_id: 'M2', revenue: 10, category: 'coffee' });
  await order('two-only', { order_id: 'M3', revenue: 10, products: [{ category: 'x' }, { category: 'y' }] });
  await sleep(300);
  const mixes = async () => (await feed()).filter((t) => t.rule === 'mix' && ['mixer', 'two-only'].includes(t.profile.user_id));
  let mix = await mixes();
  assert.equal(mix.length, 0);
  await order('mixer', { order_id: 'M4', revenue: 10, category: 'cocoa' });
  const end = Date.now() + 3000;
  while ((mix = await mixes()).length === 0 && Date.now() < end) await sleep(100);
  assert.equal(mix.length, 1);
  assert.equal(mix[0].profile.user_id, 'mixer');
  assert.deepEqual(mix[0].data, { field: 'categories_count', old: 2, new: 3, reason: 'event' });
  assert.deepEqual(mix[0].profile.computed, { categories: ['tea', 'coffee', 'cocoa'], revenue: 30 });
  // the `if` on profile.computed.orders: from the second order on
  const second = (await feed()).filter((t) => t.rule === 'second' && t.profile.user_id === 'mixer');
  assert.equal(second.length, 2);
});

test('RFM: new -> promising -> loyal by events, then at risk by the timer alone', async () => {
  await order('rfm', { order_id: 'F1', revenue: 5 });
  let r = (await profile('user_id', 'rfm')).computed.rfm;
  assert.equal(r.segment, 'new');
  assert.equal(r.previous, null);
  await order('rfm', { order_id: 'F2', revenue: 5 });
  assert.equal((await profile('user_id', 'rfm')).computed.rfm.segment, 'promising');
  await order('rfm', { order_id: 'F3', revenue: 5 });
  r = (await profile('user_id', 'rfm')).computed.rfm;
  assert.equal(r.segment, 'loyal');
  assert.equal(r.previous, 'promising');
  assert.equal(r.r, 5);
  assert.equal(r.f, 3);
  // no event from here: past 5 s the recency score is 3 -> at risk, by the timer
  let hit = [];
  const end = Date.now() + 12000;
  while (Date.now() < end) {
    hit = (await feed()).filter((t) => t.rule === 'to-risk' && t.profile.user_id === 'rfm');
    if (hit.length) break;
    await sleep(200);
  }
  assert.equal(hit.length, 1, 'the timer moved the segment and the rule fired');
  assert.equal(hit[0].data.field, 'rfm.segment');
  assert.equal(hit[0].data.old, 'loyal');
  assert.equal(hit[0].data.new, 'at risk');
  assert.equal(hit[0].data.reason, 'timer');
  assert.equal(hit[0].cause, null, 'no event caused it');
  assert.deepEqual(hit[0].profile.computed, { 'rfm.segment': 'at risk', orders: 3 });
  r = (await profile('user_id', 'rfm')).computed.rfm;
  assert.equal(r.segment, 'at risk');
  assert.equal(r.previous, 'loyal');
  assert.ok((await metric('sillage_computed_timer_changes_total')) >= 1);
});

test('re-engagement on the last order: inactivity on orders, its payload carrying computed.last_order_at', async () => {
  const at = new Date(Date.now() - 1000).toISOString();
  await order('lapser', { order_id: 'LA1', revenue: 12 }, { timestamp: at });
  let hit = [];
  const end = Date.now() + 8000;
  while (Date.now() < end && !hit.length) {
    hit = (await feed()).filter((t) => t.rule === 'lapsed' && t.profile.user_id === 'lapser');
    if (!hit.length) await sleep(200);
  }
  assert.equal(hit.length, 1);
  assert.equal(hit[0].profile.computed.last_order_at, at);
  assert.equal(hit[0].profile.computed.orders, 1);
});

test('a generic field beside the pack: its change fires once, when it crosses', async () => {
  for (let i = 0; i < 3; i++) await ok('track', { userId: 'browser', event: 'Product Viewed', properties: { i } });
  assert.equal((await profile('user_id', 'browser')).computed.views_1h, 3);
  const hits = (await feed()).filter((t) => t.rule === 'browsing' && t.profile.user_id === 'browser');
  assert.equal(hits.length, 1);
  assert.deepEqual(hits[0].data, { field: 'views_1h', old: 1, new: 2, reason: 'event' });
});

test('/debug shows the RFM segment with each event', async () => {
  const ctl = new AbortController();
  const res = await fetch(srv.url + '/debug/stream', { headers: bearer, signal: ctl.signal });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  await order('dbg', { order_id: 'D1', revenue: 5 });
  let text = '';
  const end = Date.now() + 5000;
  while (!/"rfm_segment":"new"/.test(text) && Date.now() < end) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  ctl.abort();
  assert.match(text, /"rfm_segment":"new","message":\{[^\n]*"order_id":"D1"/);
});

test('explain, the list of fields and a distribution with suggested RFM thresholds', async () => {
  const get = async (path) => {
    const r = await fetch(srv.url + path, { headers: bearer });
    return { status: r.status, body: await r.json() };
  };
  let r = await get('/v1/profiles/user_id/led/computed?explain=revenue_90d');
  assert.equal(r.status, 200);
  assert.equal(r.body.value, 50);
  assert.deepEqual(r.body.explain.orders.map((o) => o.order), ['L2', 'L3'], 'the orders inside the window');
  assert.equal(r.body.explain.orders[1].net_revenue, null, 'the GBP order counts, not its revenue');
  r = await get('/v1/profiles/user_id/rfm/computed?explain=rfm.segment');
  assert.equal(r.status, 200);
  assert.equal(r.body.explain.frequency.orders, 3);
  assert.equal(r.body.explain.frequency.score, 3);
  assert.deepEqual(r.body.explain.recency.thresholds, ['3s', '5s', '7s', '1h']);
  assert.equal(r.body.explain.segment, r.body.value);
  r = await get('/v1/profiles/user_id/led/computed');
  assert.equal(r.body.computed.orders, 3);
  assert.equal((await get('/v1/profiles/user_id/led/computed?explain=nope')).status, 404);
  const list = await get('/v1/computed');
  assert.equal(list.status, 200);
  const names = list.body.fields.map((f) => f.name);
  for (const n of ['orders', 'revenue_90d', 'promophile', 'rfm.segment']) assert.ok(names.includes(n), n);
  assert.equal(list.body.fields.find((f) => f.name === 'revenue_90d').window, '90d');
  assert.equal(list.body.fields.every((f) => f.backfilling === false), true);
  const d = await get('/v1/computed/rfm/distribution');
  assert.equal(d.status, 200);
  assert.ok(d.body.persons >= 6);
  assert.ok(d.body.values['at risk'] >= 2, JSON.stringify(d.body.values));
  assert.equal(d.body.suggested.frequency.length, 4);
  assert.equal(d.body.suggested.recency.length, 4);
  const o = await get('/v1/computed/orders/distribution');
  assert.equal(o.status, 200);
  assert.equal(o.body.numbers.max, 3);
  assert.equal(o.body.numbers.quintiles.length, 4);
  assert.equal((await get('/v1/computed/nope/distribution')).status, 404);
  assert.equal((await fetch(srv.url + '/v1/computed')).status, 401);
});

test('erasure takes the ledger entries; verify finds the ledger and every summary right', async () => {
  await order('gone', { order_id: 'E1', revenue: 10 });
  const del = await fetch(`${srv.url}/v1/profiles/user_id/gone`, { method: 'DELETE', headers: bearer });
  assert.equal(del.status, 200);
  const r = await fetch(`${srv.url}/v1/profiles/user_id/gone/orders`, { headers: bearer });
  assert.equal(r.status, 404);
  // the order id is free again: another person's order with it is a first copy
  await order('other', { order_id: 'E1', revenue: 7 });
  assert.equal((await profile('user_id', 'other')).computed.revenue, 7);
  const people = ['led', 'ref', 'buyer', 'mixer', 'two-only', 'rfm', 'other', 'dbg', 'lapser'];
  let n = 0;
  for (const u of people) n += (await orders('user_id', u)).orders.length;
  assert.equal(n, 19);
  await srv.stop();
  const v = run(['verify', '-c', srv.cfgPath]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.match(v.stdout, /0 problems/);
  assert.match(v.stdout, /^19 orders checked/m, 'every order of the ledger was checked');
  assert.match(v.stdout, /^[1-9]\d* stored order events found in the ledger$/m, 'the ledger against the log');
  srv = await startServer({ dir: srv.dir, config: CONFIG });
  assert.equal((await profile('user_id', 'led')).computed.orders, 3, 'the ledger survives a restart');
});

// Hostile values from the public key (each case was a bug): an order_id
// cut in the middle of a character, negative amounts, timestamps at or
// before 1970, refunds summing past 1e15; and a merge's window change.
test('hostile orders: a long id cut between characters, negative amounts, old timestamps, huge refunds', async () => {
  const long = 'x' + 'é'.repeat(200); // 401 bytes: cut at 256 would split an é
  await order('hx', { order_id: long, revenue: 10 });
  await bo('track', { anonymousId: 'bo', event: 'Order Refunded', properties: { order_id: long, total: 4 } });
  const r = await fetch(`${srv.url}/v1/profiles/user_id/hx/orders`, { headers: bearer });
  const text = new TextDecoder('utf-8', { fatal: true }).decode(await r.arrayBuffer()); // throws on half a character
  const l = JSON.parse(text);
  assert.equal(l.orders.length, 1);
  assert.equal(l.orders[0].order_id, 'x' + 'é'.repeat(127));
  assert.equal(l.orders[0].refunded, 4, 'the refund with the same long id found the order');

  const ignored = await metric('sillage_order_amounts_ignored_total');
  await order('hn', { order_id: 'N1', revenue: -50 });
  await order('hn', { order_id: 'N2', total: 5, shipping: 20 }); // revenue -15
  await order('hn', { order_id: 'N3', revenue: 30 });
  let c = (await profile('user_id', 'hn')).computed;
  assert.equal(c.orders, 3);
  assert.equal(c.revenue, 30);
  assert.equal(c.aov, 30, 'orders with a negative amount have no known revenue');
  assert.equal(await metric('sillage_order_amounts_ignored_total'), ignored + 2);
  const byId = Object.fromEntries((await orders('user_id', 'hn')).orders.map((o) => [o.order_id, o]));
  assert.equal(byId.N1.revenue, null);
  assert.equal(byId.N2.total, null);

  await order('ht', { order_id: 'T1', revenue: 10 }, { timestamp: '1970-01-01T00:00:00Z' });
  await order('ht', { order_id: 'T2', revenue: 10 }, { timestamp: '0000-01-01T00:00:00Z' });
  c = (await profile('user_id', 'ht')).computed;
  assert.equal(c.orders, 2);
  assert.equal(c.first_order_at, '1970-01-01T00:00:00.001Z');
  assert.equal(c.second_order_at, '1970-01-01T00:00:00.001Z');
  assert.equal(c.last_order_at, '1970-01-01T00:00:00.001Z', 'an order has a last order date');
  assert.equal(c.avg_days_between_orders, 0);

  await order('hr', { order_id: 'B1', revenue: 1e15 });
  await order('hr', { order_id: 'B2', revenue: 1 });
  for (let i = 0; i < 2; i++)
    await bo('track', { anonymousId: 'bo', event: 'Order Refunded', properties: { order_id: 'B1', total: 6e14 } });
  c = (await profile('user_id', 'hr')).computed;
  assert.equal(c.orders, 1, 'refunds past the total refund the order, also past 1e15 in all');
  assert.equal(c.revenue, 1);
  const b1 = (await orders('user_id', 'hr')).orders.find((o) => o.order_id === 'B1');
  assert.equal(b1.status, 'refunded');
  assert.equal(b1.refunded, 1e15);
});

test('a merge tells the window fields it moves (reason merge)', async () => {
  await order('mw', { order_id: 'W1', revenue: 1 });
  await ok('track', { anonymousId: 'mw-guest', event: 'Order Completed', properties: { order_id: 'W2', revenue: 1 } });
  await ok('identify', { userId: 'mw', anonymousId: 'mw-guest' });
  let hit = [];
  const end = Date.now() + 3000;
  while (Date.now() < end) {
    hit = (await feed()).filter((t) => t.rule === 'window-2' && t.profile.user_id === 'mw');
    if (hit.length) break;
    await sleep(100);
  }
  assert.equal(hit.length, 1, JSON.stringify(hit));
  assert.deepEqual(hit[0].data, { field: 'orders_90d', old: 1, new: 2, reason: 'merge' });
  // a refund of no known order waits in the ledger: verify counts it
  await bo('track', { anonymousId: 'bo', event: 'Order Refunded', properties: { order_id: 'no-such-order' } });
  await srv.stop();
  const v = run(['verify', '-c', srv.cfgPath]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.match(v.stdout, / 0 problems/);
  assert.match(v.stdout, /^1 refunds wait for their order$/m);
});
