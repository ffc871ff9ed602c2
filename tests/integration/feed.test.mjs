// feed.test.mjs - the feed as its own component (issue 22, item 5): filters
// by rule and type read from the entries' headers, a scan bound per call with
// `next` the last entry looked at, erasure through the entity index, the
// webhooks' own cursors (restart, rebuild, and cursors kept by older builds
// in tmeta), and entries written before the header.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, post, run, ADMIN, tempDir } from './helpers.mjs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function get(srv, path) {
  const res = await fetch(srv.url + path, { headers: bearer });
  return { status: res.status, body: await res.json() };
}
async function page(srv, query) {
  const { status, body } = await get(srv, '/v1/triggers?' + query + '&wait_ms=10000');
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}
// The whole feed, a page of 1,000 at a time.
async function all(srv, filter = '') {
  let out = [];
  for (let next = 0; ;) {
    const p = await page(srv, `after=${next}&limit=1000${filter}`);
    out = out.concat(p.triggers);
    if (p.next === next) return out;
    next = p.next;
  }
}
const ok = async (srv, type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};

test('?rule= and ?type= return exactly those entries; next moves past 10,000 that do not match; erasure takes exactly the person\'s', async () => {
  const srv = await startServer({ config: {
    triggers: [
      { name: 'every', type: 'event', event: 'page', pressure: false },
      { name: 'rare', type: 'event', event: 'Rare Thing', pressure: false },
    ],
    limits: { max_batch_messages: 1000 },
  } });
  try {
    for (let i = 0; i < 3; i++) await ok(srv, 'page', { userId: 'victim', properties: { path: '/v/' + i } });
    const N = 10500;
    for (let i = 0; i < N; i += 500) {
      const batch = [];
      for (let k = i; k < i + 500; k++) batch.push({ type: 'page', userId: 'bulk-' + (k % 50), properties: { path: '/p/' + k } });
      await ok(srv, 'batch', { batch });
    }
    await ok(srv, 'track', { userId: 'rare-u', event: 'Rare Thing' });
    const last = 3 + N + 1;

    // a rare rule: the first call looks at 10,000 entries and finds none
    const p1 = await page(srv, 'after=0&rule=rare');
    assert.deepEqual(p1.triggers, []);
    assert.equal(p1.next, 10000, 'next is the last entry looked at');
    const p2 = await page(srv, `after=${p1.next}&rule=rare`);
    assert.equal(p2.triggers.length, 1);
    assert.equal(p2.triggers[0].rule, 'rare');
    assert.equal(p2.triggers[0].profile.user_id, 'rare-u');
    assert.equal(p2.next, last);
    // several names; the limit counts what is returned
    const p3 = await page(srv, `after=10000&rule=rare,every&limit=1000`);
    assert.equal(p3.triggers.length, last - 10000);
    const p4 = await page(srv, 'after=0&rule=every&limit=7');
    assert.deepEqual(p4.triggers.map((t) => t.seq), [1, 2, 3, 4, 5, 6, 7]);
    assert.equal(p4.next, 7);
    assert.equal((await all(srv, '&rule=every')).length, N + 3);

    // the stream, filtered: only the rare entry
    const ac = new AbortController();
    const res = await fetch(srv.url + '/v1/triggers/stream?after=0&rule=rare', { headers: bearer, signal: ac.signal });
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    let text = '';
    const end = Date.now() + 10000;
    while (!/\n\n$/.test(text.replace(/^: sillage trigger stream\n\n/, '')) || !text.includes('data:')) {
      if (Date.now() > end) break;
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
    }
    ac.abort();
    const events = text.split('\n\n').filter((b) => b.includes('data: '));
    assert.equal(events.length, 1, text.slice(0, 500));
    assert.match(events[0], new RegExp(`^id: ${last}\nevent: trigger\n`));
    assert.equal(JSON.parse(events[0].split('data: ')[1]).rule, 'rare');

    // bad filters: 400, with what is wrong
    const long = 'x'.repeat(129);
    for (const [q, re] of [
      ['rule=' + Array.from({ length: 65 }, (_, i) => 'r' + i).join(','), /at most 64 names/],
      ['rule=' + long, /at most 128 bytes/],
      ['rule=a,,b', /none empty/],
      ['rule=%zz', /bad %-escape/],
      ['type=' + long, /1 to 128 bytes/],
    ]) {
      const r = await get(srv, '/v1/triggers?' + q);
      assert.equal(r.status, 400, q);
      assert.match(r.body.error, re, q);
      const s = await fetch(srv.url + '/v1/triggers/stream?' + q, { headers: bearer });
      assert.equal(s.status, 400, 'stream ' + q);
    }
    const names64 = Array.from({ length: 63 }, (_, i) => 'r' + i).concat(['rare']).join(',');
    assert.equal((await page(srv, `after=10000&rule=${names64}`)).triggers.length, 1, '64 names are fine');

    // erasure: the victim's three entries go, nothing else, one profile_erased comes
    const del = await fetch(srv.url + '/v1/profiles/user_id/victim', { method: 'DELETE', headers: bearer });
    assert.equal(del.status, 200);
    assert.equal((await del.json()).erased.triggers, 3);
    const after = await all(srv);
    assert.equal(after.length, last - 3 + 1);
    assert.equal(after.filter((t) => t.profile.user_id === 'victim').length, 0);
    assert.equal(after.filter((t) => t.rule === 'every').length, N);
    const erased = await all(srv, '&type=profile_erased');
    assert.equal(erased.length, 1);
    assert.equal(erased[0].rule, null);
    assert.match(erased[0].profile.id, /^p_\d+$/);
    assert.equal((await all(srv, '&type=profile_erased&rule=every')).length, 0);
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

// A receiver that acknowledges everything and remembers each delivery by path.
function receiver() {
  const got = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      got.push({ path: req.url, delivery: req.headers['x-sillage-delivery'], doc: JSON.parse(Buffer.concat(chunks)) });
      res.writeHead(204);
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    got, port: server.address().port,
    close() { return new Promise((r) => { server.closeAllConnections?.(); server.close(r); }); },
  })));
}

async function until(pred, ms = 10000) {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await sleep(50);
  return pred();
}

test('a webhook\'s cursor survives a restart and a rebuild; a cursor kept in tmeta by an older build is taken over', async () => {
  const rx = await receiver();
  const dir = tempDir();
  const hook = (p) => ({ url: `http://127.0.0.1:${rx.port}/${p}`, secret: 'hook-secret', rules: ['any'] });
  const config = { triggers: [{ name: 'any', type: 'page_visit', url: '/c/*' }], webhooks: [hook('hook')] };
  let srv = await startServer({ dir, config });
  let n = 0;
  const hit = async (s) => ok(s, 'page', { userId: 'c-u' + n++, properties: { path: '/c/' + n } });
  try {
    for (let i = 0; i < 3; i++) await hit(srv);
    assert.ok(await until(() => rx.got.length === 3), `3 delivered, got ${rx.got.length}`);
    await srv.stop();
    srv = await startServer({ dir, config });
    await hit(srv);
    assert.ok(await until(() => rx.got.length === 4));
    await sleep(500);
    assert.equal(rx.got.length, 4, 'nothing delivered again after the restart');
    await srv.stop();
    const rb = run(['rebuild', '-c', srv.cfgPath]);
    assert.equal(rb.code, 0, rb.stderr);
    srv = await startServer({ dir, config });
    await hit(srv);
    assert.ok(await until(() => rx.got.length === 5));
    await sleep(500);
    assert.equal(rx.got.length, 5, 'nothing delivered again after the rebuild');
    assert.equal(new Set(rx.got.map((g) => g.delivery)).size, 5);
    // each once; up to 16 deliveries are in flight at once, so they may arrive in any order (TRIGGERS.md)
    assert.deepEqual(rx.got.map((g) => g.doc.seq).sort((x, y) => x - y), [1, 2, 3, 4, 5]);
    await srv.stop();

    // An older build kept cursors in tmeta as "wh\x1f<url>": a webhook whose
    // URL has no cursor of its own yet takes that one over.
    const derived = join(srv.dataDir, 'derived');
    const url2 = hook('hook2').url;
    const esc = (s) => [...Buffer.from(s)].map((b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : '\\' + b.toString(16).padStart(2, '0'))).join('');
    const seq = Buffer.alloc(8);
    seq.writeBigUInt64LE(5n);
    const txt = join(dir, 'tmeta.txt');
    writeFileSync(txt, `${esc('wh\x1f' + url2)}\n${[...seq].map((b) => '\\' + b.toString(16).padStart(2, '0')).join('')}\n`);
    execFileSync('mdb_load', ['-T', '-s', 'tmeta', '-f', txt, derived], { stdio: 'ignore' });
    srv = await startServer({ dir, config: { ...config, webhooks: [hook('hook2')] } });
    await hit(srv);
    assert.ok(await until(() => rx.got.length === 6));
    await sleep(500);
    assert.deepEqual(rx.got.slice(5).map((g) => [g.path, g.doc.seq]), [['/hook2', 6]], 'only what follows the old cursor');
  } finally {
    await srv.stop();
    srv.cleanup();
    await rx.close();
  }
});

test('entries written before the header (8-byte time, then JSON) are read, filtered, erased and verified', async () => {
  const dir = tempDir();
  const config = { triggers: [{ name: 'a', type: 'page_visit', url: '/a/*' }, { name: 'b', type: 'page_visit', url: '/b/*' }] };
  let srv = await startServer({ dir, config });
  try {
    await ok(srv, 'page', { userId: 'o1', properties: { path: '/a/1' } });
    await ok(srv, 'page', { userId: 'o1', properties: { path: '/b/1' } });
    await ok(srv, 'page', { userId: 'o2', properties: { path: '/a/2' } });
    await ok(srv, 'page', { userId: 'o3', properties: { path: '/b/3' } });
    const before = await all(srv);
    assert.equal(before.length, 4);
    await srv.stop();

    // rewrite every value into the old layout: at_ms (the header's bytes 8..15), then the JSON
    const derived = join(srv.dataDir, 'derived');
    const dump = execFileSync('mdb_dump', ['-s', 'feed', derived], { encoding: 'latin1' });
    let inData = false, isKey = true, converted = 0;
    const out = dump.split('\n').map((l) => {
      if (l === 'HEADER=END') { inData = true; return l; }
      if (!inData || !l.startsWith(' ')) return l;
      isKey = !isKey;
      if (!isKey) return l; // (toggled: this line was a key)
      const v = Buffer.from(l.slice(1), 'hex');
      assert.ok(v[0] === 0xf5 && v[7] === 0xf5, 'a versioned header');
      const rl = v[4] | (v[5] << 8), tl = v[6];
      converted++;
      return ' ' + Buffer.concat([v.subarray(8, 16), v.subarray(32 + rl + tl)]).toString('hex');
    });
    assert.equal(converted, 4);
    const file = join(dir, 'feed.dump');
    writeFileSync(file, out.join('\n'), 'latin1');
    execFileSync('mdb_load', ['-s', 'feed', '-f', file, derived], { stdio: 'ignore' });
    // every value now has the old layout: byte 7 is the top byte of a time (0), never the header's magic
    // (byte 0 is the time's low byte, which may be 0xf5 by chance: CI saw it)
    const values = [];
    inData = false; isKey = true;
    for (const l of execFileSync('mdb_dump', ['-s', 'feed', derived], { encoding: 'latin1' }).split('\n')) {
      if (l === 'HEADER=END') { inData = true; continue; }
      if (!inData || !l.startsWith(' ')) continue;
      isKey = !isKey;
      if (isKey) values.push(Buffer.from(l.slice(1), 'hex'));
    }
    assert.equal(values.length, 4);
    assert.ok(values.every((v) => v[7] === 0), 'no versioned entry left');

    srv = await startServer({ dir, config });
    assert.deepEqual(await all(srv), before, 'read as they were');
    assert.deepEqual((await all(srv, '&rule=a')).map((t) => t.profile.user_id), ['o1', 'o2']);
    assert.equal((await all(srv, '&type=page_visit')).length, 4);
    const del = await fetch(srv.url + '/v1/profiles/user_id/o1', { method: 'DELETE', headers: bearer });
    assert.equal((await del.json()).erased.triggers, 2);
    assert.deepEqual((await all(srv, '&rule=b')).map((t) => t.profile.user_id), ['o3']);
    assert.deepEqual((await all(srv)).map((t) => t.type), ['page_visit', 'page_visit', 'profile_erased']);
    await srv.stop();
    const v = run(['verify', '-c', srv.cfgPath]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, / 3 triggers: 0 problems/);
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});
