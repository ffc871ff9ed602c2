// events.test.mjs - the generic `event` rule (issue 22): an event fires at
// once or after a delay, unless another event of the same person (paired by
// `match`) comes first; pending triggers follow the person through a login.
// Black-box against the real server, with delays of a second or two.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, ADMIN, run } from './helpers.mjs';
import { writeFileSync } from 'node:fs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const RULES = [
  { name: 'sms-fallback', type: 'event', event: 'Email Sent', delay: '2s',
    unless: { event: 'Email Opened', match: 'properties.email_id' } },
  { name: 'welcome', type: 'event', event: 'Signed Up', delay: '2s', unless: { event: 'Order Completed' } },
  { name: 'big-order', type: 'event', event: 'Order Completed' },
  { name: 'joined', type: 'event', event: 'identify' },
];

let srv;
before(async () => { srv = await startServer({ config: { triggers: RULES } }); });
after(async () => { await srv.stop(); srv.cleanup(); });

const ok = async (type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};
async function feed(s = srv) {
  const res = await fetch(`${s.url}/v1/triggers?after=0&limit=1000`, { headers: bearer });
  assert.equal(res.status, 200);
  return (await res.json()).triggers;
}
// The triggers of rule for userId once `ms` passed (the delays are 2 s: a
// trigger that should not fire has had its chance by then).
async function after2(pred, ms = 3500) {
  const end = Date.now() + ms;
  for (;;) {
    const all = await feed();
    if (Date.now() > end) return all.filter(pred);
    await sleep(100);
  }
}
const mine = (rule, user) => (t) => t.rule === rule && t.profile.user_id === user;

test('an e-mail not opened within the delay fires once, with the e-mail\'s id in data', async () => {
  await ok('track', { userId: 'sms-1', event: 'Email Sent', messageId: 'sent-1', properties: { email_id: 'e-1', subject: 'Hi' } });
  const got = await after2(mine('sms-fallback', 'sms-1'));
  assert.equal(got.length, 1);
  const t = got[0];
  assert.equal(t.type, 'event');
  assert.equal(t.data.delay_seconds, 2);
  assert.deepEqual({ ...t.data.event, timestamp: 0 },
                   { name: 'Email Sent', messageId: 'sent-1', timestamp: 0, properties: { email_id: 'e-1', subject: 'Hi' } });
  assert.ok(!Number.isNaN(Date.parse(t.data.event.timestamp)));
  assert.equal(t.cause?.messageId ?? null, null, 'a timer fired it: no causing event');
});

test('the open of the same e-mail cancels; the open of another does not', async () => {
  await ok('track', { userId: 'sms-2', event: 'Email Sent', properties: { email_id: 'e-2' } });
  await ok('track', { userId: 'sms-2', event: 'Email Opened', properties: { email_id: 'e-2' } });
  await ok('track', { userId: 'sms-3', event: 'Email Sent', properties: { email_id: 'e-3' } });
  await ok('track', { userId: 'sms-3', event: 'Email Opened', properties: { email_id: 'another' } });
  const all = await after2((t) => t.rule === 'sms-fallback');
  assert.deepEqual(all.filter((t) => t.profile.user_id === 'sms-2'), [], 'opened: cancelled');
  const three = all.filter((t) => t.profile.user_id === 'sms-3');
  assert.equal(three.length, 1, 'another e-mail\'s open cancels nothing');
  assert.equal(three[0].data.event.properties.email_id, 'e-3');
});

test('several pending triggers of one rule wait at once; an open cancels only its own', async () => {
  await ok('track', { userId: 'sms-4', event: 'Email Sent', properties: { email_id: 'a' } });
  await ok('track', { userId: 'sms-4', event: 'Email Sent', properties: { email_id: 'b' } });
  const p = await (await fetch(`${srv.url}/v1/profiles/user_id/sms-4`, { headers: bearer })).json();
  // the profile lists them, with what would cancel them
  assert.deepEqual(p.pending_triggers.map((x) => [x.rule, x.waiting_for_login, x.cancelled_by]),
                   [['sms-fallback', false, 'Email Opened'], ['sms-fallback', false, 'Email Opened']]);
  assert.ok(Date.parse(p.pending_triggers[0].due) > Date.now() - 1000);
  await ok('track', { userId: 'sms-4', event: 'Email Opened', properties: { email_id: 'a' } });
  const got = await after2(mine('sms-fallback', 'sms-4'));
  assert.deepEqual(got.map((t) => t.data.event.properties.email_id), ['b']);
  const later = await (await fetch(`${srv.url}/v1/profiles/user_id/sms-4`, { headers: bearer })).json();
  assert.deepEqual(later.pending_triggers, [], 'one cancelled, one fired: none left');
});

test('welcome: cancelled by an order, fired without one', async () => {
  await ok('track', { userId: 'w-buyer', event: 'Signed Up' });
  await ok('track', { userId: 'w-buyer', event: 'Order Completed', properties: { revenue: 10 } });
  await ok('track', { userId: 'w-idle', event: 'Signed Up' });
  const all = await after2((t) => t.rule === 'welcome');
  assert.deepEqual(all.filter((t) => t.profile.user_id === 'w-buyer'), []);
  assert.equal(all.filter((t) => t.profile.user_id === 'w-idle').length, 1);
});

test('an anonymous sign-up, a login, then an order under the user id cancels the pending welcome', async () => {
  await ok('track', { anonymousId: 'anon-w', event: 'Signed Up' });
  await ok('identify', { anonymousId: 'anon-w', userId: 'w-login' });
  await ok('track', { userId: 'w-login', event: 'Order Completed', properties: { revenue: 5 } });
  const all = await after2((t) => t.rule === 'welcome' && (t.profile.user_id === 'w-login'));
  assert.deepEqual(all, []);
});

test('an anonymous sign-up that comes due waits for the login, then fires for the customer', async () => {
  await ok('track', { anonymousId: 'anon-late', event: 'Signed Up', messageId: 'anon-late-su' });
  await sleep(2500); // due while anonymous: it waits
  const early = (await feed()).filter((t) => t.rule === 'welcome' && t.data.event.messageId === 'anon-late-su');
  assert.deepEqual(early, [], 'nothing for an anonymous visitor');
  await ok('identify', { anonymousId: 'anon-late', userId: 'w-late' });
  const got = await after2(mine('welcome', 'w-late'), 1500);
  assert.equal(got.length, 1);
  assert.equal(got[0].data.event.messageId, 'anon-late-su');
});

test('without a delay it fires in the transaction that applies the event; "identify" names the call', async () => {
  await ok('track', { userId: 'bo-1', event: 'Order Completed', messageId: 'bo-order', properties: { revenue: 150 } });
  await ok('identify', { userId: 'bo-1', traits: { plan: 'pro' } });
  // read-your-writes: a feed read waits for what was acknowledged before it
  const all = (await feed()).filter((t) => t.profile.user_id === 'bo-1');
  assert.deepEqual(all.map((t) => t.rule).sort(), ['big-order', 'joined']);
  const bo = all.find((t) => t.rule === 'big-order');
  assert.equal(bo.data.delay_seconds, 0);
  assert.equal(bo.data.event.messageId, 'bo-order');
  assert.equal(bo.data.event.properties.revenue, 150);
});

test('check-config names what is wrong with an event rule', () => {
  const bad = [
    [{ name: 'x', type: 'event' }, /triggers\[0\]\.event is required/],
    [{ name: 'x', type: 'event', event: 'A', unless: { event: 'B' } }, /triggers\[0\]\.unless needs triggers\[0\]\.delay/],
    [{ name: 'x', type: 'event', event: 'A', delay: '1h', unless: { event: 'B', match: 'a..b' } }, /triggers\[0\]\.unless\.match "a\.\.b" must be a path/],
    [{ name: 'x', type: 'event', event: 'A', delay: '1h', unless: { event: 'B', when: 1 } }, /unknown key "triggers\[0\]\.unless\.when"/],
    [{ name: 'x', type: 'event', event: 'A', url: '/x' }, /unknown key "triggers\[0\]\.url"/],
    // a name is a key and a ?rule= list item: no comma, no control character (\x1f separates keys), bounded
    [{ name: 'a,b', type: 'event', event: 'A' }, /triggers\[0\]\.name must be 1 to 128 bytes without a comma/],
    [{ name: 'a\x1fb', type: 'event', event: 'A' }, /triggers\[0\]\.name must be 1 to 128 bytes/],
    [{ name: 'n'.repeat(129), type: 'event', event: 'A' }, /triggers\[0\]\.name must be 1 to 128 bytes/],
  ];
  for (const [rule, re] of bad) {
    const path = srv.dir + '/bad.json';
    writeFileSync(path, JSON.stringify({ ...srv.config, listen: '127.0.0.1:0', triggers: [rule] }), { mode: 0o600 });
    const r = run(['check-config', '-c', path]);
    assert.equal(r.code, 1, JSON.stringify(rule));
    assert.match(r.stderr, re);
  }
});

test('SIGHUP: a removed rule\'s pending triggers go; a changed delay applies to new starts', async () => {
  const s = await startServer({ config: { triggers: [
    { name: 'gone', type: 'event', event: 'Ping', delay: '2s' },
    { name: 'slow', type: 'event', event: 'Pong', delay: '2s' }] } });
  try {
    const send = async (u, ev) => assert.equal((await post(s, '/v1/track', { userId: u, event: ev })).status, 200);
    await send('hup-1', 'Ping');
    await send('hup-1', 'Pong');
    const cfg = { ...s.config, triggers: [{ name: 'slow', type: 'event', event: 'Pong', delay: '1h' }] };
    writeFileSync(s.cfgPath, JSON.stringify(cfg), { mode: 0o600 });
    s.child.kill('SIGHUP');
    for (let i = 0; i < 50 && !/reload: 1 trigger rules/.test(s.log()); i++) await sleep(100);
    assert.match(s.log(), /reload: 1 trigger rules/);
    await send('hup-2', 'Pong'); // due in an hour now
    await sleep(3000);
    const all = await feed(s);
    assert.deepEqual(all.map((t) => [t.rule, t.profile.user_id]), [['slow', 'hup-1']],
      'the kept rule\'s earlier start fires at its old due time; the removed rule\'s never; the new start waits an hour');
  } finally {
    await s.stop();
    s.cleanup();
  }
});

// Conditions (docs/CONDITIONS.md): a rule's `where` on the causing event, its
// `if` on the person when the trigger would be appended.
test('where (gte, [] paths, starts_with) and if (at the deadline, suppressed and counted)', async () => {
  const s = await startServer({ config: { triggers: [
    { name: 'big', type: 'event', event: 'Order Completed', where: { field: 'properties.total', gte: 100 } },
    { name: 'shoes', type: 'event', event: 'Order Completed',
      where: { field: 'properties.products[].category', eq: 'shoes' } },
    { name: 'promo-page', type: 'event', event: 'page', where: { field: 'properties.path', starts_with: '/promo/' } },
    { name: 'sms', type: 'event', event: 'Email Sent', delay: '2s', unless: { event: 'Email Opened' },
      if: { field: 'profile.traits.phone', exists: true } },
  ] } });
  try {
    const send = async (type, m) => assert.equal((await post(s, '/v1/' + type, m)).status, 200);
    await send('track', { userId: 'c-1', event: 'Order Completed', properties: { total: 99.99, products: [{ category: 'hats' }] } });
    await send('track', { userId: 'c-2', event: 'Order Completed', properties: { total: 100, products: [{ category: 'hats' }, { category: 'shoes' }] } });
    await send('track', { userId: 'c-3', event: 'Order Completed', properties: { total: '250', products: { category: 'shoes' } } });
    await send('page', { userId: 'c-4', properties: { path: '/promo/winter' } });
    await send('page', { userId: 'c-5', properties: { path: '/promotions' } });
    await send('identify', { userId: 'c-phone', traits: { phone: '+33600000000' } });
    await send('track', { userId: 'c-phone', event: 'Email Sent' });
    await send('track', { userId: 'c-nophone', event: 'Email Sent' });
    await sleep(3200);
    const all = await feed(s);
    const got = (rule) => all.filter((t) => t.rule === rule).map((t) => t.profile.user_id).sort();
    assert.deepEqual(got('big'), ['c-2'], '99.99 < 100; "250" is a string, not a number');
    assert.deepEqual(got('shoes'), ['c-2'], 'any element of the array; an object is not an array');
    assert.deepEqual(got('promo-page'), ['c-4']);
    assert.deepEqual(got('sms'), ['c-phone'], 'no phone at the deadline: suppressed');
    const m = await (await fetch(s.url + '/metrics')).text();
    assert.match(m, /^sillage_triggers_suppressed_total\{rule="sms",reason="if"\} 1$/m);
  } finally {
    await s.stop();
    s.cleanup();
  }
});

test('inactivity with event: quiet since the last order, page views do not count, nobody without an order', async () => {
  const s = await startServer({ config: { triggers: [
    { name: 'lapsed', type: 'inactivity', after: '2s', event: 'Order Completed' }] } });
  try {
    const send = async (type, m) => assert.equal((await post(s, '/v1/' + type, m)).status, 200);
    await send('track', { userId: 'l-buyer', event: 'Order Completed', properties: { revenue: 1 } });
    await send('page', { userId: 'l-buyer', properties: { path: '/a' } });
    await send('page', { userId: 'l-browser', properties: { path: '/a' } });
    await sleep(1000);
    await send('page', { userId: 'l-buyer', properties: { path: '/b' } }); // would reset an any-event rule
    await sleep(2500);
    const all = (await feed(s)).filter((t) => t.rule === 'lapsed');
    assert.deepEqual(all.map((t) => t.profile.user_id), ['l-buyer'], 'fired 2 s after the order, page views or not');
    assert.equal(all[0].data.event, 'Order Completed');
    assert.ok(all[0].data.inactive_seconds >= 2);
  } finally {
    await s.stop();
    s.cleanup();
  }
});

test('check-config names the rule and the offending key of a condition', () => {
  const bad = [
    [{ name: 'x', type: 'event', event: 'A', where: { field: 'properties.total', greater: 100 } }, /triggers\[0\]\.where: unknown operator "greater"/],
    [{ name: 'x', type: 'event', event: 'A', where: { field: 'profile.traits.x', exists: true } }, /triggers\[0\]\.where/],
    [{ name: 'x', type: 'event', event: 'A', if: { field: 'properties.total', gt: 1 } }, /triggers\[0\]\.if/],
    [{ name: 'x', type: 'page_visit', url: '/x', where: { any: [{ field: 'a', eq: 1 }, { field: 'b', lt: 'x', gt: 1 }] } }, /triggers\[0\]\.where/],
  ];
  for (const [rule, re] of bad) {
    const path = srv.dir + '/bad-cond.json';
    writeFileSync(path, JSON.stringify({ ...srv.config, listen: '127.0.0.1:0', triggers: [rule] }), { mode: 0o600 });
    const r = run(['check-config', '-c', path]);
    assert.equal(r.code, 1, JSON.stringify(rule));
    assert.match(r.stderr, re);
  }
});

test('a pending trigger holds its starting event against retention; verify, rebuild and erasure keep them consistent', async () => {
  const config = {
    sources: [{ name: 'test', write_key: 'wk_test', retention: '1m' }],
    triggers: [{ name: 'later', type: 'event', event: 'Signed Up', delay: '30d' }],
  };
  let s = await startServer({ config });
  try {
    const old = new Date(Date.now() - 2 * 86400000).toISOString();
    const send = async (m) => assert.equal((await post(s, '/v1/track', m)).status, 200);
    await send({ userId: 'held-u', event: 'Signed Up', messageId: 'held-start', timestamp: old });
    await send({ userId: 'held-u2', event: 'Something Else', messageId: 'pruned-control', timestamp: old });
    // retention runs every second with a 1-minute retention: the control goes, the held event stays
    let ids = [];
    for (let i = 0; i < 100; i++) {
      ids = s.exportEvents().map((e) => e.messageId);
      if (!ids.includes('pruned-control')) break;
      await sleep(200);
    }
    assert.ok(!ids.includes('pruned-control'), 'retention ran');
    assert.ok(ids.includes('held-start'), 'the pending trigger\'s starting event is kept');
    await s.stop();
    let v = run(['verify', '-c', s.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /^1 pending triggers checked$/m);
    // a rebuild derives the same pending trigger and fires nothing
    const r = run(['rebuild', '-c', s.cfgPath]);
    assert.equal(r.code, 0, r.stderr);
    v = run(['verify', '-c', s.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /^1 pending triggers checked$/m);
    s = await startServer({ dir: s.dir, config });
    assert.deepEqual(await feed(s), []);
    // erasure drops it, and its hold
    const del = await fetch(`${s.url}/v1/profiles/user_id/held-u`, { method: 'DELETE', headers: bearer });
    assert.equal(del.status, 200);
    await s.stop();
    v = run(['verify', '-c', s.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.doesNotMatch(v.stdout, /pending triggers checked/);
  } finally {
    await s.stop();
    s.cleanup();
  }
});

test('GET /v1/rules: each rule as compiled, its counters and its pending triggers', async () => {
  assert.equal((await fetch(srv.url + '/v1/rules')).status, 401);
  const rules = async () => {
    const res = await fetch(srv.url + '/v1/rules', { headers: bearer });
    assert.equal(res.status, 200);
    return (await res.json()).rules;
  };
  const sms = async () => (await rules()).find((r) => r.name === 'sms-fallback');
  const before = await sms();
  assert.deepEqual({ ...before, fired: 0, pending: 0, suppressed: 0 }, {
    name: 'sms-fallback', type: 'event', event: 'Email Sent', delay: '2s',
    unless: { event: 'Email Opened', match: 'properties.email_id', where: null }, max_wait: '7d', max_pending: 100,
    where: null, if: null, max_per_profile_per_day: 0, pressure: true, requires_consent: null,
    fired: 0, pending: 0, suppressed: 0 });
  assert.deepEqual(Object.keys(before.suppressed), ['pressure', 'consent', 'unsubscribed', 'if']);
  const bigBefore = (await rules()).find((r) => r.name === 'big-order').fired;
  await ok('track', { userId: 'rules-u', event: 'Order Completed', properties: { revenue: 1 } });
  assert.equal((await rules()).find((r) => r.name === 'big-order').fired, bigBefore + 1, 'fired counts what committed');
  await ok('track', { userId: 'rules-u', event: 'Email Sent', properties: { email_id: 'r-1' } });
  assert.equal((await sms()).pending, before.pending + 1);
  await ok('track', { userId: 'rules-u', event: 'Email Opened', properties: { email_id: 'r-1' } });
  assert.equal((await sms()).pending, before.pending);
  assert.deepEqual((await rules()).map((r) => r.type), ['event', 'event', 'event', 'event']);
});
