// commands.test.mjs - check-config, export, backup, version, and the demo default.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, existsSync, readFileSync, statSync, mkdirSync, chmodSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { BIN, run, startServer, post, track, tempDir, baseConfig, ADMIN } from './helpers.mjs';

const designExample = JSON.parse(readFileSync(new URL('../data/design-example.json', import.meta.url)));

test('version', () => {
  const r = run(['version']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^sillage \d+\.\d+\.\d+ \(libuv .*LMDB .*llhttp 8\.1\.0/);
});

test('check-config accepts the DESIGN.md example and explains the first error', () => {
  const dir = tempDir();
  const good = join(dir, 'good.json');
  writeFileSync(good, JSON.stringify(designExample));
  let r = run(['check-config', '-c', good]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /OK/);

  const cases = [
    [{ ...designExample, listne: 'x' }, /unknown key "listne"/],
    [{ ...designExample, limits: { max_message_bytes: 32768, max_reqest_bytes: 1 } }, /unknown key "limits.max_reqest_bytes"/],
    [{ ...designExample, triggers: [{ name: 'c', type: 'abandoned_cart', delay: 'soon' }] }, /triggers\[0\]\.delay must be a duration/],
    [{ ...designExample, durability: 'maybe' }, /durability must be "sync" or "os"/],
  ];
  for (const [cfg, re] of cases) {
    const p = join(dir, 'bad.json');
    writeFileSync(p, JSON.stringify(cfg));
    r = run(['check-config', '-c', p]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, re);
  }
  writeFileSync(join(dir, 'broken.json'), '{"listen": \n "x",,}');
  r = run(['check-config', '-c', join(dir, 'broken.json')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not valid JSON near line 2/);
  r = run(['check-config', '-c', join(dir, 'missing.json')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /No such file/);
  r = run(['check-config']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /demo default/);
});

test('check-config and serve refuse a weak admin_token, naming the key, never its value', async () => {
  const dir = tempDir();
  const p = join(dir, 'weak.json');
  const cases = [
    ['change-me', /config error: .*weak\.json: admin_token has 9 characters; it must have at least 16/],
    ['wk_live_123_long_key', /config error: .*admin_token is the same as sources\[0\]\.write_key \(source "shop"\)/],
  ];
  for (const [token, re] of cases) {
    const cfg = { ...designExample, data_dir: join(dir, 'd'), listen: '127.0.0.1:0', admin_token: token,
      sources: [{ name: 'shop', write_key: 'wk_live_123_long_key' }] };
    writeFileSync(p, JSON.stringify(cfg), { mode: 0o600 });
    for (const cmd of ['check-config', 'serve']) {
      const r = run([cmd, '-c', p], { timeout: 10000 });
      assert.equal(r.code, 1, `${cmd} ${token}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, re);
      assert.ok(!r.stderr.includes(token), `the secret is not printed: ${r.stderr}`);
      assert.doesNotMatch(r.stdout + r.stderr, /OK|listening/);
    }
  }
  assert.ok(!existsSync(join(dir, 'd')), 'serve refused before creating the store');
});

test('a config file with secrets that others can read: a WARN from check-config and serve, not a refusal', async () => {
  const dir = tempDir();
  const p = join(dir, 'sillage.json');
  writeFileSync(p, JSON.stringify(baseConfig(join(dir, 'data'))));
  chmodSync(p, 0o644);
  let r = run(['check-config', '-c', p]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /OK/);
  assert.match(r.stderr, /WARN: .*sillage\.json holds secrets \(admin_token, write keys\) and every local user can read it \(mode 644\)/);
  const child = spawn(BIN, ['serve', '-c', p], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(log)), 10000);
    child.stderr.on('data', (d) => { log += d; if (/listening on/.test(log)) { clearTimeout(timer); resolve(); } });
  });
  child.kill('SIGTERM');
  await new Promise((res) => child.on('exit', res));
  assert.match(log, /WARN .*sillage\.json holds secrets.*\(mode 644\): chmod o-r/);
  chmodSync(p, 0o640);
  r = run(['check-config', '-c', p]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '', 'no warning once others cannot read it');
});

test('unknown command and flags are usage errors', () => {
  assert.equal(run(['frobnicate']).code, 2);
  assert.equal(run(['serve', '--bogus']).code, 2);
  assert.equal(run([]).code, 2);
});

test('the demo default never binds beyond loopback', () => {
  const dir = tempDir();
  const r = run(['serve', '--listen', '0.0.0.0:18999', '--data', join(dir, 'd')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /refusing to listen on 0\.0\.0\.0:18999 with the demo/);
});

test('the demo default serves with write key "demo" and says so', async () => {
  const dir = tempDir();
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(log)), 10000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = /listening on \S+:(\d+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
  });
  assert.match(log, /demo/);
  assert.match(log, /write key "demo"/);
  const res = await fetch(`http://127.0.0.1:${port}/v1/track`, {
    method: 'POST',
    headers: { Authorization: 'Basic ' + Buffer.from('demo:').toString('base64'), 'Content-Type': 'application/json' },
    body: JSON.stringify({ userId: 'demo-user', event: 'Demo Event' }),
  });
  assert.equal(res.status, 200);
  child.kill('SIGTERM');
  await new Promise((r) => child.on('exit', r));
  assert.ok(existsSync(join(dir, 'sillage-data', 'data.mdb')), 'data in ./sillage-data');
  const ex = run(['export'], { cwd: dir });
  assert.equal(ex.code, 0);
  assert.match(ex.stdout, /Demo Event/);
});

test('export and backup while the server runs; the backup opens and holds the same events', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  for (let i = 0; i < 25; i++) assert.equal((await post(srv, '/v1/track', track({ messageId: `bk-${i}` }))).status, 200);
  const live = srv.exportEvents();
  assert.equal(live.length, 25);
  const dest = join(srv.dir, 'backup');
  let r = run(['backup', '--data', srv.dataDir, dest]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(join(dest, 'data.mdb')));
  r = run(['export', '--data', dest]);
  assert.equal(r.code, 0);
  const copied = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(copied.map((e) => e.messageId), live.map((e) => e.messageId));
  r = run(['backup', '--data', srv.dataDir, dest]);
  assert.equal(r.code, 1, 'refuses to overwrite a backup');
  r = run(['export', '--data', join(srv.dir, 'nothing-here')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no store/);
  // export with -c reads data_dir from the config
  r = run(['export', '-c', srv.cfgPath]);
  assert.equal(r.code, 0);
  assert.equal(r.stdout.trim().split('\n').length, 25);
});

test('backup files are 0640 and a new DEST 0750, whatever the umask', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  assert.equal((await post(srv, '/v1/track', track({ messageId: 'mode-1' }))).status, 200);
  // umask 000: an unprotected process would write 0666 / 0777
  const backup = (dest) => spawnSync('sh', ['-c', 'umask 000; exec "$0" backup --data "$1" "$2"', BIN, srv.dataDir, dest],
    { encoding: 'utf8' });
  const fresh = join(srv.dir, 'new', 'bk');
  let r = backup(fresh);
  assert.equal(r.status, 0, r.stderr);
  assert.equal((statSync(fresh).mode & 0o777).toString(8), '750');
  assert.equal((statSync(join(fresh, 'data.mdb')).mode & 0o777).toString(8), '640');
  // an existing directory keeps the mode its owner gave it; the file is still 0640
  const existing = join(srv.dir, 'existing');
  mkdirSync(existing);
  chmodSync(existing, 0o755);
  r = backup(existing);
  assert.equal(r.status, 0, r.stderr);
  assert.equal((statSync(existing).mode & 0o777).toString(8), '755');
  assert.equal((statSync(join(existing, 'data.mdb')).mode & 0o777).toString(8), '640');
  r = run(['export', '--data', existing]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n').map((l) => JSON.parse(l).messageId), ['mode-1']);
  // refused over an earlier backup, which stays intact
  r = backup(existing);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /already holds a data\.mdb/);
  assert.equal(run(['export', '--data', existing]).stdout.trim().split('\n').length, 1);
});

test('serve: --listen and --data override the file', async (t) => {
  const dir = tempDir();
  const cfgPath = join(dir, 'c.json');
  writeFileSync(cfgPath, JSON.stringify(baseConfig(join(dir, 'from-file'), { listen: '127.0.0.1:1' })));
  const child = spawn(BIN, ['serve', '-c', cfgPath, '--listen', '127.0.0.1:0', '--data', join(dir, 'from-flag')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(log)), 10000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = /listening on \S+:(\d+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
  });
  assert.notEqual(port, 1);
  child.kill('SIGTERM');
  await new Promise((r) => child.on('exit', r));
  assert.ok(existsSync(join(dir, 'from-flag', 'data.mdb')));
  assert.ok(!existsSync(join(dir, 'from-file')));
});

test('a port already in use is a clear error, not a crash', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const dir = tempDir();
  const r = run(['serve', '--listen', `127.0.0.1:${srv.port}`, '--data', join(dir, 'd')]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /cannot listen on 127\.0\.0\.1:\d+: address already in use/);
  assert.equal((await fetch(srv.url + '/healthz')).status, 200);
});

test('rebuild derives profiles, timelines and trigger state again from the log, firing nothing twice', async () => {
  const dir = tempDir();
  const config = { triggers: [{ name: 'cart', type: 'abandoned_cart', delay: '1s' }, { name: 'pv', type: 'page_visit', url: '/pricing*' }] };
  let srv = await startServer({ dir, config });
  const bearer = { Authorization: 'Bearer ' + ADMIN };
  const feed = async (s) => (await (await fetch(s.url + '/v1/triggers?limit=1000', { headers: bearer })).json()).triggers;
  try {
    await post(srv, '/v1/page', { anonymousId: 'rb-a', properties: { path: '/pricing' } });
    await post(srv, '/v1/identify', { anonymousId: 'rb-a', userId: 'rb-u', traits: { email: 'rb@example.com' } });
    await post(srv, '/v1/track', { userId: 'rb-u', event: 'Product Added', properties: { product_id: 'p1', price: 3 } });
    await post(srv, '/v1/track', { userId: 'rb-later', event: 'Product Added', properties: { product_id: 'p2', price: 4 } });
    for (let i = 0; i < 50 && (await feed(srv)).length < 3; i++) await new Promise((r) => setTimeout(r, 100));
    const before = await feed(srv);
    assert.deepEqual(before.map((t) => t.rule).sort(), ['cart', 'cart', 'pv']);
    const profile = async (s) => (await (await fetch(s.url + '/v1/profiles/user_id/rb-u', { headers: bearer })).json());
    const p1 = await profile(srv);
    await srv.stop();
    const r = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /rebuilt .* from 4 events/);
    const v = run(['verify', '-c', srv.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, / 3 triggers: 0 problems/);
    srv = await startServer({ dir, config });
    const p2 = await profile(srv);
    assert.deepEqual({ ...p2, last_seen: 0 }, { ...p1, last_seen: 0 });
    await new Promise((r) => setTimeout(r, 1500)); // a cart timer would be due by now
    const after = await feed(srv);
    assert.deepEqual(after.map((t) => [t.seq, t.id]), before.map((t) => [t.seq, t.id]), 'the same feed, nothing fired again');
    await srv.stop();

    // The feed's indexes are carried over in key order when they hold exactly
    // what the feed needs; one that does not (a key too many) is built again
    // from the entries: verify finds nothing either way, and an erasure finds
    // the person's entries through the index.
    const derived = join(srv.dataDir, 'derived');
    const dump = execFileSync('mdb_dump', ['-s', 'fentity', derived], { encoding: 'latin1' });
    const bogus = ' 01' + '00'.repeat(7) + '63' + '00'.repeat(7) + '63\n \n'; // person 99, entry 99
    writeFileSync(join(dir, 'fentity.dump'), dump.replace('DATA=END', bogus + 'DATA=END'), 'latin1');
    execFileSync('mdb_load', ['-s', 'fentity', '-f', join(dir, 'fentity.dump'), derived], { stdio: 'ignore' });
    let bad = run(['verify', '-c', srv.cfgPath]);
    assert.match(bad.stdout, /the entity index names trigger 99, which is not in the feed/, 'the damage is there');
    for (let i = 0; i < 2; i++) {
      const again = run(['rebuild', '-c', srv.cfgPath]);
      assert.equal(again.code, 0, again.stderr);
      const v2 = run(['verify', '-c', srv.cfgPath]);
      assert.equal(v2.code, 0, `rebuild ${i + 1}: ` + v2.stdout + v2.stderr);
      assert.match(v2.stdout, / 3 triggers: 0 problems/);
    }
    srv = await startServer({ dir, config });
    const del = await fetch(srv.url + '/v1/profiles/user_id/rb-u', { method: 'DELETE', headers: bearer });
    assert.equal((await del.json()).erased.triggers, 2, 'its cart and page-visit triggers, found through the index');
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

test('a store written before the pipeline (derived state beside the log) is refused by serve until rebuild moves it', async () => {
  const dir = tempDir();
  let srv = await startServer({ dir });
  try {
    await post(srv, '/v1/identify', { userId: 'legacy-u', anonymousId: 'legacy-a' });
    await srv.stop();
    // what sillage 0.1 kept in data.mdb beside the events: a "persons" database
    const load = spawnSync('mdb_load', ['-T', '-s', 'persons', srv.dataDir], { input: 'k\nv\n', encoding: 'utf8' });
    assert.equal(load.status, 0, load.stderr);
    const refused = spawnSync(BIN, ['serve', '-c', srv.cfgPath], { encoding: 'utf8', timeout: 10000 });
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /holds the identity graph beside the log.*sillage rebuild -c/);
    const r = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /moved out of the log/);
    srv = await startServer({ dir });
    const p = await fetch(srv.url + '/v1/profiles/user_id/legacy-u', { headers: { Authorization: 'Bearer ' + ADMIN } });
    assert.equal(p.status, 200);
    assert.equal((await p.json()).user_id, 'legacy-u');
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

// issue 21, M1: a rebuild beside a live server swapped derived/ under it, and
// an erasure made meanwhile came back after the next restart.
test('rebuild and a second serve refuse while a server holds the data directory; an erasure stays erased', async () => {
  const dir = tempDir();
  const bearer = { Authorization: 'Bearer ' + ADMIN };
  let srv = await startServer({ dir });
  try {
    assert.equal((await post(srv, '/v1/identify', { userId: 'lk-u', traits: { email: 'lk@example.com' } })).status, 200);
    let r = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /another sillage \(a server or a rebuild, process \d+\) is using .*: it holds a lock on the directory, which is never stale .*Stop it before you run sillage rebuild/);
    assert.ok(!existsSync(join(srv.dataDir, 'derived.rebuild')), 'nothing was built');
    const second = spawnSync(BIN, ['serve', '-c', srv.cfgPath], { encoding: 'utf8', timeout: 10000 });
    assert.equal(second.status, 1);
    assert.match(second.stderr, /another sillage .* is using .*: it holds a lock on the directory/);
    // the lock is the directory's: no file to delete to defeat it (review N2)
    rmSync(join(srv.dataDir, 'sillage.pid'));
    assert.equal(run(['rebuild', '-c', srv.cfgPath]).code, 1, 'still refused without the pid file');
    // export, verify and backup read beside it
    assert.equal(run(['export', '-c', srv.cfgPath]).code, 0);
    const v = run(['verify', '-c', srv.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const del = await fetch(srv.url + '/v1/profiles/user_id/lk-u', { method: 'DELETE', headers: bearer });
    assert.equal(del.status, 200);
    await srv.stop();
    r = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(r.code, 0, r.stderr);
    srv = await startServer({ dir });
    const p = await fetch(srv.url + '/v1/profiles/email/lk%40example.com', { headers: bearer });
    assert.equal(p.status, 404, 'still erased after a rebuild and a restart');
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

// issue 21, M2: serve with a non-empty log and no derived store derived the
// whole log again with the rules live, firing every past trigger again.
test('serve refuses a missing derived store and a rebuild\'s leftovers, naming the command; rebuild takes them up', async () => {
  const dir = tempDir();
  const bearer = { Authorization: 'Bearer ' + ADMIN };
  const config = { triggers: [{ name: 'pv', type: 'page_visit', url: '/pricing*' }] };
  const feed = async (s) => (await (await fetch(s.url + '/v1/triggers?limit=1000', { headers: bearer })).json()).triggers;
  const refused = (cfgPath) => spawnSync(BIN, ['serve', '-c', cfgPath], { encoding: 'utf8', timeout: 10000 });
  let srv = await startServer({ dir, config });
  try {
    for (const u of ['m2-a', 'm2-b'])
      assert.equal((await post(srv, '/v1/page', { userId: u, properties: { path: '/pricing' } })).status, 200);
    for (let i = 0; i < 50 && (await feed(srv)).length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    const before = await feed(srv);
    assert.equal(before.length, 2);
    await srv.stop();
    const derived = join(srv.dataDir, 'derived'), old = join(srv.dataDir, 'derived.old');

    // a crash between an older rebuild's two renames
    renameSync(derived, old);
    let r = refused(srv.cfgPath);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /derived\.old is left by an interrupted `sillage rebuild`: run `sillage rebuild -c /);
    r = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /derived\.old was the store in place .*put back/);
    assert.ok(!existsSync(old));
    srv = await startServer({ dir, config });
    assert.deepEqual((await feed(srv)).map((t) => [t.seq, t.id]), before.map((t) => [t.seq, t.id]),
                     'the feed of the store in place, nothing fired again');
    await srv.stop();

    // scratch left by a killed rebuild
    mkdirSync(join(srv.dataDir, 'derived.rebuild'));
    r = refused(srv.cfgPath);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /derived\.rebuild is left by an interrupted `sillage rebuild`/);
    assert.equal(run(['rebuild', '-c', srv.cfgPath]).code, 0);
    assert.ok(!existsSync(join(srv.dataDir, 'derived.rebuild')));

    // an operator deleting the derived store as "derived"
    rmSync(derived, { recursive: true });
    r = refused(srv.cfgPath);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /the log in .* holds events \(up to 2\) but there is no derived store .*fire every past trigger a second time\. Run `sillage rebuild -c /);
    assert.equal(run(['rebuild', '-c', srv.cfgPath]).code, 0);
    srv = await startServer({ dir, config });
    await new Promise((res) => setTimeout(res, 300));
    assert.deepEqual(await feed(srv), [], 'the feed was lost with the store, and nothing fired again');
    const m = await (await fetch(srv.url + '/metrics')).text();
    assert.match(m, /sillage_triggers_fired_total\{rule="pv"\} 0/);
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

// issue 21, L3: backup followed a planted DEST/derived link, and left half a
// backup when DEST held a data.mdb.
test('backup never writes through a symbolic link and checks DEST before writing anything', async () => {
  const srv = await startServer();
  try {
    assert.equal((await post(srv, '/v1/track', track({ messageId: 'bk-l3' }))).status, 200);
    const elsewhere = join(srv.dir, 'elsewhere');
    mkdirSync(elsewhere);
    const dest = join(srv.dir, 'b3');
    mkdirSync(dest);
    symlinkSync(elsewhere, join(dest, 'derived'));
    let r = run(['backup', '--data', srv.dataDir, dest]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /already holds a derived\//);
    assert.ok(!existsSync(join(elsewhere, 'data.mdb')), 'nothing written through the link');
    assert.ok(!existsSync(join(dest, 'data.mdb')), 'nothing written at all');

    const full = join(srv.dir, 'b4');
    mkdirSync(full);
    writeFileSync(join(full, 'data.mdb'), 'an earlier backup');
    r = run(['backup', '--data', srv.dataDir, full]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /already holds a data\.mdb/);
    assert.ok(!existsSync(join(full, 'derived')), 'no half backup');

    const link = join(srv.dir, 'b5');
    symlinkSync(elsewhere, link);
    r = run(['backup', '--data', srv.dataDir, link]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /symbolic link or not a directory/);
    r = run(['backup', '--data', srv.dataDir, link + '/']); // a trailing slash resolves the link (review N3)
    assert.equal(r.code, 1);
    assert.match(r.stderr, /symbolic link or not a directory/);
    assert.ok(!existsSync(join(elsewhere, 'data.mdb')));

    r = run(['backup', '--data', srv.dataDir, join(srv.dir, 'b6', 'nested')]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(join(srv.dir, 'b6', 'nested', 'derived', 'data.mdb')));
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

// issue 21, I1: a package built without node_modules carried a config naming
// a missing geo.mmdb, which check-config called OK and serve refused.
test('check-config refuses a geoip_db it cannot open, as serve would', () => {
  const dir = tempDir();
  const cfgPath = join(dir, 'sillage.json');
  writeFileSync(cfgPath, JSON.stringify(baseConfig(join(dir, 'data'), { geoip_db: join(dir, 'missing.mmdb') })), { mode: 0o600 });
  const r = run(['check-config', '-c', cfgPath]);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /geoip_db .*missing\.mmdb cannot be opened as a MaxMind database .*serve would refuse to start/);
  const s = spawnSync(BIN, ['serve', '-c', cfgPath], { encoding: 'utf8', timeout: 10000 });
  assert.equal(s.status, 1);
});

// review of issue 21, N6: a derived/ that is a symbolic link was moved by the
// exchange and the store behind it emptied as "the old one".
test('rebuild refuses a derived store reached through a symbolic link, and changes nothing', async () => {
  const dir = tempDir();
  let srv = await startServer({ dir });
  try {
    assert.equal((await post(srv, '/v1/track', track({ userId: 'n6-user', messageId: 'n6' }))).status, 200);
    await srv.stop();
    const derived = join(srv.dataDir, 'derived'), moved = join(dir, 'vol2-derived');
    renameSync(derived, moved);
    symlinkSync(moved, derived);
    const r = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /derived is a symbolic link: rebuild swaps directories .*nothing was changed/);
    assert.ok(existsSync(join(moved, 'data.mdb')), 'the store behind the link is whole');
    assert.ok(!existsSync(join(srv.dataDir, 'derived.rebuild')));
    srv = await startServer({ dir }); // serving through the link still works
    const p = await fetch(srv.url + '/v1/profiles/user_id/n6-user', { headers: { Authorization: 'Bearer ' + ADMIN } });
    assert.equal(p.status, 200);
    assert.equal((await p.json()).user_id, 'n6-user');
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});
