// storage.test.mjs - storage faults: a full disk (a small tmpfs mounted by
// the test; the suite runs as root) answers 503 and recovers when space comes
// back, losing no acknowledged event; a corrupt or incompatible data
// directory is refused at start with a clear message and left untouched.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startServer, post, tempDir, baseConfig, BIN, exportEvents } from './helpers.mjs';

const isRoot = process.getuid && process.getuid() === 0;

test('a full disk answers 503, loses nothing acknowledged, and recovers when space returns', { skip: !isRoot && 'needs root to mount a tmpfs' }, async () => {
  const dir = tempDir();
  const mnt = join(dir, 'disk');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt]);
  let srv;
  try {
    writeFileSync(join(mnt, 'filler'), Buffer.alloc(2 << 20)); // 2 MB to give back later
    srv = await startServer({ dir, config: { data_dir: join(mnt, 'data'), map_size: '64MB' } });
    const acked = [];
    let refused = 0, n = 0;
    const big = 'x'.repeat(4000);
    while (refused < 3 && n < 5000) {
      const batch = Array.from({ length: 20 }, (_, i) => ({ type: 'track', userId: 'disk-u' + (n % 50), event: 'Fill', messageId: `fill-${n}-${i}`, properties: { big } }));
      const r = await post(srv, '/v1/batch', { batch });
      if (r.status === 200) acked.push(...batch.map((m) => m.messageId));
      else {
        assert.equal(r.status, 503, r.text);
        assert.ok(r.headers.get('retry-after'), '503 says when to retry');
        refused++;
      }
      n++;
    }
    assert.equal(refused, 3, 'the disk filled up');
    assert.ok(acked.length > 100);
    assert.equal((await fetch(srv.url + '/healthz')).status < 600, true, 'still answering');
    rmSync(join(mnt, 'filler'));
    let ok = false;
    for (let i = 0; i < 20 && !ok; i++) {
      const r = await post(srv, '/v1/track', { userId: 'disk-after', event: 'Recovered', messageId: 'recovered-' + i });
      if (r.status === 200) { ok = true; acked.push('recovered-' + i); } else await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(ok, 'writes work again once space is back');
    const { code } = await srv.stop();
    assert.equal(code, 0);
    const stored = exportEvents(join(mnt, 'data')).map((e) => e.messageId);
    const set = new Set(stored);
    assert.equal(stored.length, set.size, 'nothing stored twice');
    for (const id of acked) assert.ok(set.has(id), `acknowledged ${id} is stored`);
  } finally {
    if (srv && srv.child.exitCode === null) await srv.stop('SIGKILL');
    spawnSync('umount', [mnt]);
    rmSync(dir, { recursive: true, force: true });
  }
});

function startFails(dataDir) {
  const dir = tempDir();
  const cfgPath = join(dir, 'c.json');
  writeFileSync(cfgPath, JSON.stringify(baseConfig(dataDir)));
  const r = spawnSync(BIN, ['serve', '-c', cfgPath], { encoding: 'utf8', timeout: 10000 });
  rmSync(dir, { recursive: true, force: true });
  return r;
}
const sha = (f) => createHash('sha256').update(readFileSync(f)).digest('hex');

test('a corrupt data directory is refused with a clear message and left as it was', () => {
  const dir = tempDir();
  const data = join(dir, 'data');
  mkdirSync(data);
  writeFileSync(join(data, 'data.mdb'), randomBytes(64 * 1024));
  const before = sha(join(data, 'data.mdb'));
  const r = startFails(data);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /cannot open the store in .*data/);
  assert.match(r.stderr, /not an LMDB file|invalid/i);
  assert.equal(sha(join(data, 'data.mdb')), before, 'not overwritten');
  rmSync(dir, { recursive: true, force: true });
});

test('a data directory from a newer schema is refused and left as it was', async () => {
  const dir = tempDir();
  const srv = await startServer({ dir });
  assert.equal((await post(srv, '/v1/track', { userId: 'u', event: 'e' })).status, 200);
  await srv.stop();
  // schema 99 (little-endian u32 "c\0\0\0"), written with lmdb-utils' mdb_load
  execFileSync('mdb_load', ['-s', 'meta', srv.dataDir],
    { input: 'VERSION=3\nformat=print\ntype=btree\nHEADER=END\n schema\n c\\00\\00\\00\nDATA=END\n' });
  const before = sha(join(srv.dataDir, 'data.mdb'));
  const r = startFails(srv.dataDir);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /schema 99; this sillage reads up to/);
  assert.equal(sha(join(srv.dataDir, 'data.mdb')), before);
  assert.equal(existsSync(join(srv.dataDir, 'data.mdb')), true);
  srv.cleanup();
});
