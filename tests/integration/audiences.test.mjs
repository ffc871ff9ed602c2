// audiences.test.mjs - audiences (issue 25, items 1 and 2): exact enter /
// exit sequences in the feed under events, an audience reading two others,
// a timer-driven exit (a seconds-long computed window), a merge, an import,
// erasure; the profile's "audiences", GET /v1/audiences, check-config's
// errors. Black-box against the server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, post, ADMIN, run, tempDir, baseConfig, basic, WRITE_KEY } from './helpers.mjs';
import { writeFileSync as writeCfg } from 'node:fs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const AUDIENCES = [
  { name: 'pro-customers', where: { all: [{ field: 'profile.audiences', contains: 'customers' },
    { field: 'profile.audiences', contains: 'pro' }] } },
  { name: 'customers', where: { field: 'profile.computed.orders', gte: 1 } },
  { name: 'pro', where: { field: 'profile.traits.plan', eq: 'pro' } },
  { name: 'browsing', where: { field: 'profile.computed.views_4s', gte: 1 }, include_anonymous: true },
  { name: 'exported', where: { field: 'profile.traits.segment', eq: 'x' } },
  { name: 'consented', where: { field: 'profile.traits.segment', eq: 'x' }, requires_consent: 'marketing' },
];
const config = {
  computed: { commerce: { currency: 'EUR' }, fields: [{ name: 'views_4s', type: 'count', event: 'Product Viewed', window: '4s' }] },
  audiences: AUDIENCES,
  sources: [{ name: 'test', write_key: WRITE_KEY }, { name: 'import', write_key: 'wk_import', historical: true }],
};

let srv;
before(async () => { srv = await startServer({ config }); });
after(async () => { await srv.stop(); srv.cleanup(); });

const ok = async (type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};
const get = async (path) => {
  const r = await fetch(srv.url + path, { headers: bearer });
  assert.equal(r.status, 200, path);
  return r.json();
};
// the audience entries of the feed after position `after`: [type, audience, reason, who, members]
async function moves(after, who = null) {
  const names = AUDIENCES.map((a) => a.name).join(',');
  const { triggers } = await get(`/v1/triggers?after=${after}&limit=1000&rule=${names}`);
  return triggers.filter((t) => t.type === 'audience_entered' || t.type === 'audience_exited')
    .filter((t) => who === null || t.profile.user_id === who || t.profile.id === who)
    .map((t) => [t.type, t.data.audience, t.data.reason, t.profile.user_id ?? t.profile.id, t.data.members]);
}
// every entry of server s's feed, and the position after the last
async function feedOf(s) {
  const entries = [];
  for (let after = 0; ;) {
    const page = await (await fetch(`${s.url}/v1/triggers?after=${after}&limit=1000`, { headers: bearer })).json();
    if (page.triggers.length === 0) return { entries, next: after };
    entries.push(...page.triggers);
    after = page.next;
  }
}
const last = async () => (await feedOf(srv)).next; // the feed's position now
const counts = async () => Object.fromEntries((await get('/v1/audiences')).audiences.map((a) => [a.name, a.members]));

test('events move a person in and out, an audience reading two others after them, in order', async () => {
  const p0 = await last();
  await ok('identify', { userId: 'ann', traits: { plan: 'free', email: 'Ann@Example.com' } });
  assert.deepEqual(await moves(p0), [], 'nothing holds yet');
  await ok('track', { userId: 'ann', event: 'Order Completed', properties: { order_id: 'o-1', total: 10 } });
  await ok('identify', { userId: 'ann', traits: { plan: 'pro' } });
  await ok('identify', { userId: 'ann', traits: { plan: 'free' } });
  assert.deepEqual(await moves(p0), [
    ['audience_entered', 'customers', 'event', 'ann', 1],
    ['audience_entered', 'pro', 'event', 'ann', 1],
    ['audience_entered', 'pro-customers', 'event', 'ann', 1],
    ['audience_exited', 'pro', 'event', 'ann', 0],
    ['audience_exited', 'pro-customers', 'event', 'ann', 0],
  ]);
  // a slim profile: no traits; the e-mail as the stitcher keys it
  const { triggers } = await get(`/v1/triggers?after=${p0}&limit=1&rule=customers`);
  assert.deepEqual(Object.keys(triggers[0].profile).sort(), ['email', 'id', 'user_id']);
  assert.equal(triggers[0].profile.email, 'ann@example.com');
  assert.equal(triggers[0].cause, null, 'no cause: it would hold the event back from retention');
  const prof = await get('/v1/profiles/user_id/ann');
  assert.deepEqual(prof.audiences, ['customers']);
  assert.deepEqual(await counts(), { 'pro-customers': 0, customers: 1, pro: 0, browsing: 0, exported: 0, consented: 0 });
});

test('an anonymous visitor enters a seconds-long window and leaves it by the timer', async () => {
  const p0 = await last();
  await ok('track', { anonymousId: 'tmr-a', event: 'Product Viewed', properties: { sku: 's1' } });
  const [entered] = await moves(p0);
  assert.deepEqual(entered.slice(0, 3), ['audience_entered', 'browsing', 'event']);
  const end = Date.now() + 15000;
  let m;
  for (;;) {
    m = await moves(p0);
    if (m.length >= 2) break;
    assert.ok(Date.now() < end, 'the window timer moves it out: ' + JSON.stringify(m));
    await sleep(200);
  }
  assert.deepEqual(m.map((x) => x.slice(0, 3)), [['audience_entered', 'browsing', 'event'],
    ['audience_exited', 'browsing', 'timer']]);
  const { triggers } = await get(`/v1/triggers?after=${p0}&limit=10&rule=browsing`);
  assert.equal(triggers[1].cause, null, 'no event caused it');
});

test('a merge: the absorbed visitor leaves, the customer is evaluated again', async () => {
  const p0 = await last();
  await ok('track', { anonymousId: 'mg-a', event: 'Product Viewed', properties: { sku: 's2' } });
  await ok('identify', { userId: 'ann', anonymousId: 'mg-a' });
  const m = await moves(p0);
  assert.equal(m.length, 3, JSON.stringify(m));
  assert.deepEqual(m[0].slice(0, 3), ['audience_entered', 'browsing', 'event']);
  assert.deepEqual(m[1].slice(0, 3), ['audience_exited', 'browsing', 'merge']); // the absorbed person
  assert.notEqual(m[1][3], 'ann');
  assert.deepEqual(m[2].slice(0, 4), ['audience_entered', 'browsing', 'merge', 'ann']); // the window moved with it
  assert.deepEqual((await get('/v1/profiles/user_id/ann')).audiences.sort(), ['browsing', 'customers']);
});

test('an import moves membership with reason import', async () => {
  const p0 = await last();
  const r = await post(srv, '/v1/track', { userId: 'imp', event: 'Order Completed', properties: { order_id: 'o-imp', total: 5 },
    timestamp: new Date(Date.now() - 90 * 86400000).toISOString() }, { Authorization: basic('wk_import') });
  assert.equal(r.status, 200, r.text);
  const m = await moves(p0, 'imp');
  assert.deepEqual(m.map((x) => x.slice(0, 3)), [['audience_entered', 'customers', 'import']]);
});

test('erasure takes the person out of every audience (profile_erased is the exit)', async () => {
  const before = await counts();
  assert.ok(before.customers >= 2);
  const del = await fetch(srv.url + '/v1/profiles/user_id/ann', { method: 'DELETE', headers: bearer });
  assert.equal(del.status, 200, await del.text());
  const after = await counts();
  assert.equal(after.customers, before.customers - 1);
  const names = AUDIENCES.map((a) => a.name).join(',');
  const { triggers } = await get(`/v1/triggers?after=0&limit=1000&rule=${names}`);
  assert.equal(triggers.filter((t) => t.profile?.user_id === 'ann').length, 0, 'its entries went');
});

const sha256 = async (s) => (await import('node:crypto')).createHash('sha256').update(s).digest('hex');

test('the export: JSON, NDJSON, CSV per RFC 4180, chosen fields, hashed e-mails, pages', async () => {
  const ids = ['ex-1', 'ex-2', 'ex,"3"'];
  for (const [i, id] of ids.entries())
    await ok('identify', { userId: id, traits: { segment: 'x', email: i === 0 ? ' Test@Example.com ' : `e${i}@example.com` } });
  await ok('identify', { userId: 'ex-no', traits: { segment: 'y' } });
  // JSON, in pages of 2: the position the page was read at, the cursor to the next
  let r = await fetch(srv.url + '/v1/audiences/exported/members?limit=2', { headers: bearer });
  assert.equal(r.status, 200, r.status === 200 ? '' : await r.text());
  const p1 = await r.json();
  assert.equal(p1.audience, 'exported');
  assert.equal(p1.members.length, 2);
  assert.equal(String(p1.position), r.headers.get('x-sillage-feed-position'));
  assert.equal(p1.next, r.headers.get('x-sillage-next'));
  assert.deepEqual(Object.keys(p1.members[0]), ['id', 'user_id', 'email', 'unsubscribed']);
  const p2 = await get(`/v1/audiences/exported/members?limit=2&after=${p1.next}`);
  assert.equal(p2.members.length, 1);
  assert.equal(p2.next, null);
  const all = [...p1.members, ...p2.members];
  assert.deepEqual(all.map((m) => m.user_id).sort(), [...ids].sort());
  // the e-mail hashed as ad platforms take it: SHA-256 of the trimmed, lower-cased address
  const h = await get('/v1/audiences/exported/members?hash=email:sha256&fields=user_id,email');
  const hashed = Object.fromEntries(h.members.map((m) => [m.user_id, m.email]));
  assert.equal(hashed['ex-1'], '973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b'); // test@example.com
  assert.equal(hashed['ex-2'], await sha256('e1@example.com'));
  assert.deepEqual(Object.keys(h.members[0]), ['user_id', 'email']);
  // NDJSON: one object a line
  r = await fetch(srv.url + '/v1/audiences/exported/members?format=ndjson&fields=user_id', { headers: bearer });
  assert.equal(r.headers.get('content-type'), 'application/x-ndjson');
  const lines = (await r.text()).split('\n');
  assert.equal(lines.pop(), '');
  assert.deepEqual(lines.map((l) => JSON.parse(l).user_id).sort(), [...ids].sort());
  // CSV: a header line, CRLF, a field with a comma or a quote quoted and its quotes doubled
  r = await fetch(srv.url + '/v1/audiences/exported/members?format=csv&fields=user_id,email', { headers: bearer });
  assert.match(r.headers.get('content-type'), /^text\/csv/);
  const csv = await r.text();
  assert.ok(csv.startsWith('user_id,email\r\n'), csv);
  assert.ok(csv.includes('"ex,""3""",e2@example.com\r\n'), csv);
  assert.ok(csv.includes('ex-1,test@example.com\r\n'), csv);
  assert.ok(csv.endsWith('\r\n'));
  // entered_at: when the member entered (the entry's first 8 bytes, whatever its layout), not 1970
  const since = Date.now() - 3600e3;
  const e = await get('/v1/audiences/exported/members?fields=id,entered_at');
  assert.ok(e.members.every((m) => Date.parse(m.entered_at) > since), JSON.stringify(e.members));
  r = await fetch(srv.url + '/v1/audiences/exported/members?format=csv&fields=entered_at,id', { headers: bearer });
  const rows = (await r.text()).split('\r\n').slice(1, -1); // (fields are written in their fixed order)
  assert.equal(rows.length, ids.length);
  assert.ok(rows.every((l) => /^p_\d+,[^,"]+Z$/.test(l) && Date.parse(l.split(',')[1]) > since), rows.join('|'));
  // bad requests
  for (const [q, code] of [['format=xml', 400], ['hash=email:md5', 400], ['fields=id,phone', 400], ['after=42', 400], ['limit=0', 400]]) {
    const b = await fetch(srv.url + '/v1/audiences/exported/members?' + q, { headers: bearer });
    assert.equal(b.status, code, q);
  }
  assert.equal((await fetch(srv.url + '/v1/audiences/nope/members', { headers: bearer })).status, 404);
  assert.equal((await fetch(srv.url + '/v1/audiences/exported/members')).status, 401);
});

test('an audience with requires_consent lists only members who granted it; unsubscribed ones are flagged', async () => {
  const consent = (granted) => ({ consent: { categoryPreferences: { marketing: granted } } });
  await ok('identify', { userId: 'c-yes', traits: { segment: 'x' }, context: consent(true) });
  await ok('identify', { userId: 'c-no', traits: { segment: 'x' }, context: consent(false) });
  await ok('identify', { userId: 'c-none', traits: { segment: 'x' } });
  await ok('identify', { userId: 'c-unsub', traits: { segment: 'x' }, context: consent(true) });
  await ok('track', { userId: 'c-unsub', event: 'Unsubscribed' });
  const m = await get('/v1/audiences/consented/members?fields=user_id,unsubscribed');
  const got = Object.fromEntries(m.members.filter((x) => x.user_id.startsWith('c-')).map((x) => [x.user_id, x.unsubscribed]));
  assert.deepEqual(got, { 'c-yes': false, 'c-unsub': true });
  assert.equal((await counts()).consented, (await counts()).exported, 'membership itself does not need consent');
});

test('under load, a snapshot taken page by page plus the feed replayed from its first position is the membership', async () => {
  const N = 120;
  for (let i = 0; i < N; i++) await ok('identify', { userId: 'cv-' + i, traits: { segment: i % 2 ? 'x' : 'y' } });
  let stop = false;
  const load = (async () => { // flips persons in and out while the snapshot is read
    for (let round = 0; !stop; round++) {
      const batch = [];
      for (let k = 0; k < 20; k++) {
        const i = (round * 37 + k * 11) % N;
        batch.push({ type: 'identify', userId: 'cv-' + i, traits: { segment: (round + k) % 3 ? 'x' : 'y' } });
      }
      const r = await post(srv, '/v1/batch', { batch });
      assert.equal(r.status, 200);
    }
  })();
  const snapshot = new Set();
  let first = null;
  let after = '';
  let pages = 0;
  for (;;) {
    const page = await get(`/v1/audiences/exported/members?limit=7&fields=id${after}`);
    if (first === null) first = page.position;
    for (const m of page.members) snapshot.add(m.id);
    pages++;
    if (!page.next) break;
    after = '&after=' + page.next;
    await sleep(5);
  }
  stop = true;
  await load;
  assert.ok(pages > 5);
  // the feed after the first page's position, this audience only
  let pos = first;
  let replayed = 0;
  for (;;) {
    const { triggers, next } = await get(`/v1/triggers?after=${pos}&limit=1000&rule=exported`);
    if (triggers.length === 0) break;
    for (const t of triggers) {
      replayed++;
      if (t.type === 'audience_entered') snapshot.add(t.profile.id);
      else if (t.type === 'audience_exited') snapshot.delete(t.profile.id);
    }
    pos = next;
  }
  assert.ok(replayed > 0, 'membership moved while the snapshot was read');
  const live = new Set();
  for (let a = ''; ;) {
    const page = await get(`/v1/audiences/exported/members?limit=10000&fields=id${a}`);
    for (const m of page.members) live.add(m.id);
    if (!page.next) break;
    a = '&after=' + page.next;
  }
  assert.ok(live.size > 10);
  assert.deepEqual([...snapshot].sort(), [...live].sort());
});

test('check-config: names unique with trigger rules, known audiences, no cycle', () => {
  const dir = tempDir();
  const cases = [
    [{ triggers: [{ name: 'vip', type: 'trait_change', trait: 'plan' }], audiences: [{ name: 'vip', where: { field: 'profile.identified', eq: true } }] },
      /audiences\[0\]\.name "vip" is also the name of a trigger rule/],
    [{ audiences: [{ name: 'a', where: { field: 'profile.audiences', contains: 'nope' } }] },
      /audiences\[0\]\.where reads the audience "nope", which is not defined/],
    [{ audiences: [{ name: 'a', where: { field: 'profile.audiences', contains: 'b' } },
      { name: 'b', where: { field: 'profile.audiences', contains: 'a' } }] }, /a cycle of audiences reading each other: a -> b -> a/],
    [{ audiences: [{ name: 'a', where: { field: 'event', eq: 'x' } }] }, /audiences\[0\]\.where: event paths are not allowed here/],
    [{ audiences: [{ name: 'a', where: { field: 'profile.identified', eq: true } }, { name: 'a', where: { field: 'profile.identified', eq: false } }] }, /"a" is used twice/],
  ];
  for (const [extra, re] of cases) {
    const p = join(dir, 'aud.json');
    writeFileSync(p, JSON.stringify(baseConfig(join(dir, 'data'), extra)));
    const r = run(['check-config', '-c', p]);
    assert.equal(r.code, 1, JSON.stringify(extra));
    assert.match(r.stderr, re);
  }
});

test('verify checks memberships, the members index and the counts; rebuild recomputes them and appends nothing', async () => {
  const { execFileSync } = await import('node:child_process');
  const fnv = (s) => { let h = 2166136261; for (const b of Buffer.from(s)) h = Math.imul(h ^ b, 16777619) >>> 0; return h; };
  const feedBefore = await last();
  await srv.stop();
  let v = run(['verify', '-c', srv.cfgPath]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.match(v.stdout, /^[1-9]\d* persons' audiences evaluated again$/m);
  assert.doesNotMatch(v.stdout, /audiences: .* is (listed|in|not in)/);
  // damage: a member no person stands behind, in the index only
  const derived = join(srv.dataDir, 'derived');
  const dump = execFileSync('mdb_dump', ['-s', 'amembers', derived], { encoding: 'latin1' });
  const key = fnv('exported').toString(16).padStart(8, '0') + '000000000001869f'; // person 99999
  const bogus = ' ' + key + '\n ' + '00'.repeat(8) + '\n';
  const dir = tempDir();
  writeFileSync(join(dir, 'amembers.dump'), dump.replace('DATA=END', bogus + 'DATA=END'), 'latin1');
  execFileSync('mdb_load', ['-s', 'amembers', '-f', join(dir, 'amembers.dump'), derived], { stdio: 'ignore' });
  v = run(['verify', '-c', srv.cfgPath]);
  assert.equal(v.code, 1, v.stdout);
  assert.match(v.stdout, /audiences: p_99999 is listed in exported but no such person exists/);
  assert.match(v.stdout, /audiences: exported counts \d+ members \(.*\), its index lists \d+ /);
  const rb = run(['rebuild', '-c', srv.cfgPath]);
  assert.equal(rb.code, 0, rb.stderr);
  v = run(['verify', '-c', srv.cfgPath]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  srv = await startServer({ dir: srv.dir, config });
  assert.equal(await last(), feedBefore, 'the rebuild appended nothing');
  assert.ok((await counts()).exported > 0, 'membership came back from the log');
});

test('a reload builds a new or changed audience over existing persons, announced once; a removed one is announced once', async () => {
  const A = (where) => ({ field: 'profile.traits.plan', ...where });
  const cfg1 = { audiences: [{ name: 'keep', where: A({ eq: 'pro' }) }, { name: 'old', where: A({ eq: 'free' }) },
    { name: 'chg', where: A({ eq: 'pro' }) }] };
  const s2 = await startServer({ config: cfg1 });
  const h = { headers: bearer };
  const feedAll = async () => (await feedOf(s2)).entries;
  try {
    for (const [u, plan] of [['r1', 'pro'], ['r2', 'pro'], ['r3', 'pro'], ['r4', 'free'], ['r5', 'free']]) {
      const r = await post(s2, '/v1/identify', { userId: u, traits: { plan } });
      assert.equal(r.status, 200);
    }
    const before = (await feedAll()).length;
    const cfg2 = { audiences: [{ name: 'keep', where: A({ eq: 'pro' }) }, { name: 'chg', where: A({ eq: 'free' }) },
      { name: 'new', where: A({ exists: true }) }] };
    writeCfg(s2.cfgPath, JSON.stringify(baseConfig(s2.dataDir, cfg2)));
    s2.child.kill('SIGHUP');
    const end = Date.now() + 10000;
    let list;
    for (;;) {
      list = await (await fetch(s2.url + '/v1/audiences', h)).json();
      const names = list.audiences.map((x) => x.name).sort();
      if (names.join() === 'chg,keep,new' && list.audiences.every((x) => x.status === 'live')) {
        const fresh = (await feedAll()).slice(before);
        if (fresh.some((t) => t.type === 'audience_deleted')) break;
      }
      assert.ok(Date.now() < end, 'the builds end: ' + JSON.stringify(list));
      await sleep(100);
    }
    assert.deepEqual(Object.fromEntries(list.audiences.map((x) => [x.name, x.members])), { keep: 3, chg: 2, new: 5 });
    const fresh = (await feedAll()).slice(before);
    assert.deepEqual(fresh.map((t) => [t.type, t.rule, t.data.members, t.data.reason]).sort(), [
      ['audience_built', 'chg', 2, 'definition'],
      ['audience_built', 'new', 5, 'definition'],
      ['audience_deleted', 'old', 0, 'definition'],
    ], 'no entry per member, one announcement each');
    assert.equal(fresh[0].profile, null);
    // from now on they are live
    const r = await post(s2, '/v1/identify', { userId: 'r6', traits: { plan: 'free' } });
    assert.equal(r.status, 200);
    const live = (await feedAll()).slice(before + fresh.length).map((t) => [t.type, t.rule, t.data.reason]).sort();
    assert.deepEqual(live, [['audience_entered', 'chg', 'event'], ['audience_entered', 'new', 'event']]);
    await s2.stop();
    const v = run(['verify', '-c', s2.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  } finally {
    await s2.stop(); s2.cleanup();
  }
});

test('an audience removed then configured again is built from its members index, not the ids its members\' records kept', async () => {
  const pro = { field: 'profile.traits.plan', eq: 'pro' };
  const withAgain = { audiences: [{ name: 'keep', where: pro }, { name: 'again', where: pro }] };
  const s4 = await startServer({ config: withAgain });
  const h = { headers: bearer };
  const feedAll = async () => (await feedOf(s4)).entries;
  const reload = async (cfg, type) => {
    const had = (await feedAll()).filter((t) => t.type === type && t.rule === 'again').length;
    writeCfg(s4.cfgPath, JSON.stringify(baseConfig(s4.dataDir, cfg)));
    s4.child.kill('SIGHUP');
    for (const end = Date.now() + 10000; ;) {
      if ((await feedAll()).filter((t) => t.type === type && t.rule === 'again').length > had) return;
      assert.ok(Date.now() < end, 'no ' + type);
      await sleep(100);
    }
  };
  try {
    for (const [u, plan] of [['a1', 'pro'], ['a2', 'pro'], ['a3', 'free']]) {
      const r = await post(s4, '/v1/identify', { userId: u, traits: { plan } });
      assert.equal(r.status, 200);
    }
    await reload({ audiences: [{ name: 'keep', where: pro }] }, 'audience_deleted');
    await reload(withAgain, 'audience_built');
    const list = (await (await fetch(s4.url + '/v1/audiences', h)).json()).audiences;
    assert.deepEqual(list.map((x) => [x.name, x.status, x.members]), [['keep', 'live', 2], ['again', 'live', 2]]);
    const m = await (await fetch(s4.url + '/v1/audiences/again/members?fields=user_id', h)).json();
    assert.deepEqual(m.members.map((x) => x.user_id).sort(), ['a1', 'a2']);
    // the removed audience's history went with it: today counts the build's two entries only
    const k = await (await fetch(s4.url + '/v1/audiences/again/kpis?days=2', h)).json();
    assert.deepEqual(k.history.map((d) => [d.members, d.entered, d.exited]), [[2, 2, 0]], JSON.stringify(k.history));
    // live again: a member leaving takes its entry and its count with it
    const r = await post(s4, '/v1/identify', { userId: 'a1', traits: { plan: 'free' } });
    assert.equal(r.status, 200);
    const left = (await feedAll()).filter((t) => t.type === 'audience_exited' && t.rule === 'again');
    assert.deepEqual(left.map((t) => [t.profile.user_id, t.data.members]), [['a1', 1]]);
    await s4.stop();
    const v = run(['verify', '-c', s4.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  } finally {
    await s4.stop(); s4.cleanup();
  }
});

test('KPIs per audience: sums kept with each move and each order, the day\'s history, the period\'s shares', async () => {
  const s3 = await startServer({ config: {
    computed: { commerce: { currency: 'EUR' } },
    audiences: [{ name: 'buyers', where: { field: 'profile.computed.orders', gte: 1 } },
      { name: 'known', where: { field: 'profile.identified', eq: true } }],
  } });
  const send = async (type, body) => { const r = await post(s3, '/v1/' + type, body); assert.equal(r.status, 200, r.text); };
  const kpis = async (name, q = '') => (await fetch(`${s3.url}/v1/audiences/${name}/kpis${q}`, { headers: bearer })).json();
  try {
    await send('identify', { userId: 'k1', traits: { email: 'k1@example.com' } });
    await send('identify', { userId: 'k2' });
    await send('track', { userId: 'k1', event: 'Order Completed', properties: { order_id: 'k1-a', revenue: 10 } });
    await send('track', { userId: 'k2', event: 'Order Completed', properties: { order_id: 'k2-a', revenue: 30 } });
    await send('track', { userId: 'k2', event: 'Order Completed', properties: { order_id: 'k2-b', revenue: 20 } });
    let k = await kpis('buyers');
    assert.deepEqual([k.members, k.identified, k.with_email, k.orders, k.revenue, k.aov, k.revenue_per_member],
      [2, 2, 1, 3, 60, 20, 30], JSON.stringify(k));
    const kn = await kpis('known');
    assert.deepEqual([kn.members, kn.orders, kn.revenue], [2, 3, 60], 'a member\'s orders move the sums of every audience it is in');
    // the day's history: two entered today, none left
    assert.equal(k.history.length, 1);
    assert.deepEqual([k.history[0].members, k.history[0].entered, k.history[0].exited], [2, 2, 0]);
    assert.match(k.history[0].day, /^\d{4}-\d\d-\d\d$/);
    // the period: both active; one of two buyers ordered twice
    assert.equal(k.period.active_share, 1);
    assert.equal(k.period.second_order_conversion, 0.5);
    assert.equal(k.period.churned_share, null, 'nobody was seen before the period');
    // an e-mail gained moves with_email of every audience the person is in
    await send('identify', { userId: 'k2', traits: { email: 'k2@example.com' } });
    assert.equal((await kpis('known')).with_email, 2);
    // the list carries the sums too
    const list = await (await fetch(s3.url + '/v1/audiences', { headers: bearer })).json();
    const b = list.audiences.find((x) => x.name === 'buyers');
    assert.deepEqual([b.members, b.orders, b.revenue, b.aov], [2, 3, 60, 20]);
    assert.equal((await fetch(`${s3.url}/v1/audiences/buyers/kpis?period=soon`, { headers: bearer })).status, 400);
    await s3.stop();
    const v = run(['verify', '-c', s3.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  } finally {
    await s3.stop(); s3.cleanup();
  }
});

test('a timer that moves orders (a windowed field of that name) moves the sums of the member\'s audiences', async () => {
  const s5 = await startServer({ config: {
    computed: { fields: [{ name: 'orders', type: 'count', event: 'Order Completed', window: '2s' }] },
    audiences: [{ name: 'known', where: { field: 'profile.identified', eq: true } }],
  } });
  const kpis = async () => (await fetch(`${s5.url}/v1/audiences/known/kpis`, { headers: bearer })).json();
  try {
    for (const [type, body] of [['identify', { userId: 't1' }], ['track', { userId: 't1', event: 'Order Completed' }]]) {
      const r = await post(s5, '/v1/' + type, body);
      assert.equal(r.status, 200, r.text);
    }
    assert.equal((await kpis()).orders, 1);
    for (const end = Date.now() + 10000; (await kpis()).orders !== 0;) {
      assert.ok(Date.now() < end, 'the window\'s timer took the order from the sums: ' + JSON.stringify(await kpis()));
      await sleep(200);
    }
    await s5.stop();
    const v = run(['verify', '-c', s5.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  } finally {
    await s5.stop(); s5.cleanup();
  }
});

test('pressure by audience: a weekly tier lets 1 of 2 triggers through where the global cap lets 2; moves are never held back', async () => {
  const s4 = await startServer({ config: {
    audiences: [{ name: 'vip', where: { field: 'profile.traits.plan', eq: 'vip' } }],
    triggers: [{ name: 'color', type: 'trait_change', trait: 'color', on_first_set: true }],
    pressure: { max_per_profile_per_day: 2, tiers: [{ audience: 'vip', max_per_profile_per_week: 1 }] },
  } });
  const send = async (body) => { const r = await post(s4, '/v1/identify', body); assert.equal(r.status, 200, r.text); };
  try {
    await send({ userId: 'v1', traits: { plan: 'vip' } });
    for (const color of ['red', 'blue']) {
      await send({ userId: 'v1', traits: { color } });
      await send({ userId: 'n1', traits: { color } });
    }
    // the vip's cap is spent: its moves still come
    await send({ userId: 'v1', traits: { plan: 'free' } });
    await send({ userId: 'v1', traits: { plan: 'vip' } });
    const { triggers } = await (await fetch(`${s4.url}/v1/triggers?after=0&limit=1000`, { headers: bearer })).json();
    const fired = (u) => triggers.filter((t) => t.rule === 'color' && t.profile.user_id === u).length;
    assert.equal(fired('v1'), 1, 'the vip tier: one a week');
    assert.equal(fired('n1'), 2, 'everyone else: the global cap of two a day');
    assert.deepEqual(triggers.filter((t) => t.rule === 'vip' && t.type !== 'audience_built').map((t) => t.type),
      ['audience_entered', 'audience_exited', 'audience_entered']);
    const m = await (await fetch(`${s4.url}/metrics`, { headers: bearer })).text();
    assert.match(m, /sillage_triggers_suppressed_total\{rule="color",reason="pressure"\} 1/);
  } finally {
    await s4.stop(); s4.cleanup();
  }
  // check-config: a tier names an audience
  const dir = tempDir();
  const p = join(dir, 'tiers.json');
  writeFileSync(p, JSON.stringify(baseConfig(join(dir, 'data'), { pressure: { tiers: [{ audience: 'ghost', max_per_profile_per_day: 1 }] } })));
  let r = run(['check-config', '-c', p]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /pressure\.tiers\[0\]\.audience names "ghost", which is not an audience/);
  writeFileSync(p, JSON.stringify(baseConfig(join(dir, 'data'), { audiences: [{ name: 'a', where: { field: 'profile.identified', eq: true } }],
    pressure: { tiers: [{ audience: 'a', max_per_profile_per_day: 1, max_per_profile_per_week: 3 }] } })));
  r = run(['check-config', '-c', p]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /pressure\.tiers\[0\] needs one of max_per_profile_per_day and max_per_profile_per_week/);
});

test('retention removing a never-identified member: an exit with reason expired and the id alone', async () => {
  const s5 = await startServer({ config: {
    anonymous_retention: '395d',
    audiences: [{ name: 'visitors', where: { field: 'profile.identified', eq: false }, include_anonymous: true }],
  } });
  try {
    const r = await post(s5, '/v1/page', { anonymousId: 'rt-old', properties: { path: '/x' },
      timestamp: new Date(Date.now() - 400 * 86400000).toISOString() });
    assert.equal(r.status, 200);
    const feed = async () => (await (await fetch(`${s5.url}/v1/triggers?after=0&limit=1000&rule=visitors`, { headers: bearer })).json()).triggers;
    const end = Date.now() + 30000;
    let t;
    for (;;) {
      t = (await feed()).filter((x) => x.type === 'audience_exited');
      if (t.length) break;
      assert.ok(Date.now() < end, 'retention removes the visitor: ' + JSON.stringify(await feed()));
      await sleep(200);
    }
    assert.equal(t.length, 1);
    assert.equal(t[0].data.reason, 'expired');
    assert.deepEqual(Object.keys(t[0].profile), ['id']);
    assert.equal(t[0].data.members, 0);
    const list = await (await fetch(s5.url + '/v1/audiences', { headers: bearer })).json();
    assert.equal(list.audiences[0].members, 0);
  } finally {
    await s5.stop(); s5.cleanup();
  }
});

// RFC 4180 records of a CSV text (quoted fields with doubled quotes, CRLF)
function parseCsv(text) {
  const rows = [];
  let row = [], f = '', q = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (q) {
      if (ch === '"' && text[i + 1] === '"') { f += '"'; i++; } else if (ch === '"') q = false; else f += ch;
    } else if (ch === '"') q = true;
    else if (ch === ',') { row.push(f); f = ''; } else if (ch === '\r' && text[i + 1] === '\n') { row.push(f); rows.push(row); row = []; f = ''; i++; } else f += ch;
  }
  return rows;
}

test('hostile identifiers reach the export intact (line breaks, quotes, tabs, long UTF-8; a NUL is refused at the door); bad cursors refused', async () => {
  // a NUL never gets in: the collector refuses the message
  const nul = await post(srv, '/v1/identify', { userId: 'hx-nul\u0000,"x"', traits: { segment: 'x' } });
  assert.equal(nul.status, 400);
  assert.match(nul.text, /\\u0000/);
  const ids = ['hx-line\r\nbreak', 'hx-quote,"x"', 'hx-' + 'é'.repeat(100), 'hx-tab\tcomma,'];
  for (const id of ids) await ok('identify', { userId: id, traits: { segment: 'x', email: `${ids.indexOf(id)}@hx.example.com` } });
  const json = (await get('/v1/audiences/exported/members?fields=user_id&limit=10000')).members.map((m) => m.user_id);
  const r = await fetch(srv.url + '/v1/audiences/exported/members?format=csv&fields=user_id,email&limit=10000', { headers: bearer });
  const rows = parseCsv(await r.text());
  assert.deepEqual(rows[0], ['user_id', 'email']);
  assert.ok(rows.slice(1).every((x) => x.length === 2), 'every record has its two fields');
  const csvIds = rows.slice(1).map((x) => x[0]);
  for (const id of ids) {
    assert.ok(json.includes(id), JSON.stringify(id) + ' in the JSON export');
    assert.ok(csvIds.includes(id), JSON.stringify(id) + ' in the CSV export');
  }
  for (const bad of ['after=p_', 'after=p_-1', 'after=p_18446744073709551616', 'limit=99999999999999999999', 'fields=', 'format=']) {
    const b = await fetch(srv.url + '/v1/audiences/exported/members?' + bad, { headers: bearer });
    assert.ok(b.status === 400 || b.status === 200, bad + ': ' + b.status);
    if (bad.startsWith('after') || bad.startsWith('limit')) assert.equal(b.status, 400, bad);
  }
});
