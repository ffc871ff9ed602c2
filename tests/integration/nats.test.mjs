// nats.test.mjs - edge and core roles on a real nats-server with JetStream,
// started by the test on loopback: two edges and one core stitch one
// visitor and fire one trigger that also appears on the NATS subject; an edge
// killed mid-stream and a NATS outage lose nothing acknowledged; a
// three-node JetStream cluster (R3 stream) loses nothing when a node dies.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { connect } from 'nats';
import { startServer, post, tempDir, exportEvents, basic, BIN, ADMIN } from './helpers.mjs';

const BENCH = BIN.replace(/sillage$/, 'sillage-bench');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const procs = [];
after(() => { for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL'); });

// Distinct free ports: every probe socket stays open until all are chosen, so
// two calls can never hand out the same port (a cluster needs six).
async function freePorts(n) {
  const socks = [];
  const ports = [];
  for (let i = 0; i < n; i++) {
    const s = net.createServer();
    await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
    socks.push(s);
    ports.push(s.address().port);
  }
  await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
  return ports;
}
const freePort = async () => (await freePorts(1))[0];

// One nats-server with JetStream; cluster: {name, routes: [ports], port}.
async function startNats(dir, { port, cluster } = {}) {
  port = port || await freePort();
  const args = ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', dir];
  if (cluster) args.push('-n', cluster.name, '--cluster_name', 'sl', '--cluster', `nats://127.0.0.1:${cluster.port}`,
    '--routes', cluster.routes.map((p) => `nats://127.0.0.1:${p}`).join(','));
  const child = spawn('nats-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(child);
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  // Up to 20 s: under a sanitizer build's load a clustered node is slow to
  // start; a node that exits (a port taken meanwhile) fails at once with its log.
  for (let i = 0; i < 400; i++) {
    if (/Server is ready/.test(log) || child.exitCode !== null) break;
    await sleep(50);
  }
  assert.match(log, /Server is ready/, log);
  return { child, port, url: `nats://127.0.0.1:${port}`, log: () => log,
    stop: () => new Promise((r) => { if (child.exitCode !== null) r(); else { child.on('exit', r); child.kill('SIGTERM'); } }) };
}

function nodeConfig(role, url, extra = {}) {
  return { role, nats: { url, ...extra.nats }, triggers: [{ name: 'cart', type: 'abandoned_cart', delay: '1s' }],
    ...(extra.config || {}) };
}
async function metric(srv, name) {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await (await fetch(srv.url + '/metrics')).text());
  return m ? Number(m[1]) : NaN;
}
async function until(fn, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (await fn()) return true; await sleep(100); }
  return false;
}
function bench(edge, recordFile, seconds, seed) {
  return spawn(BENCH, ['-c', '8', '-d', String(seconds), '--visitors', '2000', '--seed', String(seed), '--record', recordFile,
    '-k', 'wk_test', edge.url], { stdio: 'ignore' });
}
// The edge drains, the core applies every acknowledged id, and its export
// holds each exactly once (sillage-bench check). Stops the core.
async function drainedExactlyOnce(edge, core, acked, minimum, ms) {
  const total = readFileSync(acked, 'utf8').split('\n').filter(Boolean).length;
  assert.ok(total > minimum, `${total} acknowledged`);
  assert.ok(await until(async () => await metric(edge, 'sillage_nats_lag_events') === 0, ms), 'the edge drained');
  assert.ok(await until(async () => await metric(core, 'sillage_nats_consumed_total') >= total, ms), 'the core caught up');
  await core.stop();
  const out = checkAcked(acked, exportEvents(core.dataDir));
  assert.match(out, /missing 0, duplicated 0/, out);
}
function checkAcked(acked, coreExport) {
  const file = join(tempDir(), 'export.ndjson');
  writeFileSync(file, coreExport.map((e) => JSON.stringify(e)).join('\n') + '\n');
  const r = spawnSync(BENCH, ['check', acked, file], { encoding: 'utf8' });
  return r.stdout;
}

test('an edge whose NATS server is unreachable stores events and exits on SIGTERM within seconds', async () => {
  const closed = await freePort(); // nothing listens there
  const edge = await startServer({ config: nodeConfig('edge', `nats://natsuser:PASSWORD@127.0.0.1:${closed}`) });
  try {
    const r = await post(edge, '/v1/track', { userId: 'm7-u', event: 'Stored While NATS Is Down', messageId: 'm7-1' });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { success: true });
    await sleep(1200); // the forwarder is in its connect-retry loop
    const t0 = Date.now();
    edge.child.kill('SIGTERM');
    let timer;
    const res = await Promise.race([edge.exited, new Promise((r) => { timer = setTimeout(() => r(null), 10000); })]);
    clearTimeout(timer);
    const ms = Date.now() - t0;
    if (res === null) edge.child.kill('SIGKILL');
    assert.ok(res !== null, `still running 10 s after SIGTERM:\n${edge.log()}`);
    assert.deepEqual(res, { code: 0, sig: null });
    assert.ok(ms < 5000, `exited after ${ms} ms (bound 5 s)`);
    assert.match(edge.log(), /nats: cannot connect to nats:\/\/\*\*\*@127\.0\.0\.1:\d+: .*; retrying/);
    assert.equal(edge.log().match(/cannot connect/g).length, 1, 'one line a minute, not one per attempt');
    assert.match(edge.log(), /stopped/);
    const stored = exportEvents(edge.dataDir);
    assert.deepEqual(stored.map((e) => [e.messageId, e.event]), [['m7-1', 'Stored While NATS Is Down']],
      'the event stays in the outbox for when NATS is back');
  } finally { await edge.stop('SIGKILL'); edge.cleanup(); }
});

test('edge retention: forwarded events past the shortest retention that could apply leave the edge after nats.edge_keep; the core keeps its own rules; unforwarded ones stay', async () => {
  const day = 86400000;
  const ago = (ms) => new Date(Date.now() - ms).toISOString();
  const retention = { sources: [{ name: 'test', write_key: 'wk_test', retention: '760d' },
    { name: 'short', write_key: 'wk_short', retention: '1m' }], anonymous_retention: '395d' }; // passes every second
  const edgeOpts = { config: retention, nats: { edge_keep: '5s' } };
  const bearer = { Authorization: 'Bearer ' + ADMIN };
  const dir = tempDir();
  const nats = await startNats(join(dir, 'js'));
  const core = await startServer({ config: nodeConfig('core', nats.url, { config: retention }) });
  const edge = await startServer({ config: nodeConfig('edge', nats.url, edgeOpts) });
  const closed = await freePort(); // an edge that cannot forward
  const alone = await startServer({ config: nodeConfig('edge', `nats://127.0.0.1:${closed}`, edgeOpts) });
  const pruned = (srv) => metric(srv, 'sillage_retention_pruned_events_total');
  const stored = (srv) => exportEvents(srv.dataDir).map((e) => e.event);
  try {
    const send = async (srv, event, age, key = 'wk_test') => assert.equal((await post(srv, '/v1/track',
      { userId: 'ret-u', event, timestamp: ago(age) }, { Authorization: basic(key) })).status, 200);
    await send(edge, 'Old', 800 * day); // past every retention
    await send(edge, 'Mid', 400 * day); // past the anonymous one: the edge cannot tell ret-u is identified
    await send(edge, 'New', 10 * day);
    await send(edge, 'Young', 40 * 1000, 'wk_short'); // one minute: due 20 s from now, in a later pass
    await send(alone, 'Old', 800 * day);
    assert.ok(await until(async () => await metric(edge, 'sillage_nats_lag_events') === 0), 'forwarded');
    assert.deepEqual(stored(edge), ['Old', 'Mid', 'New', 'Young'], 'kept nats.edge_keep (5 s) after receipt');
    assert.ok(await until(async () => await pruned(edge) >= 2), String(await pruned(edge)));
    assert.deepEqual(stored(edge), ['New', 'Young']);
    assert.ok(await until(async () => await pruned(edge) >= 3, 30000), 'pruned once it aged past its minute');
    assert.deepEqual(stored(edge), ['New']);
    assert.equal(await pruned(edge), 3);
    // the core applies its own rules: an identified person's events live the source's 760 days
    const events = async () => {
      const r = await fetch(core.url + '/v1/profiles/user_id/ret-u/events', { headers: bearer });
      return r.status === 200 ? (await r.json()).events.map((e) => e.event).sort() : [];
    };
    assert.ok(await until(async () => JSON.stringify(await events()) === '["Mid","New"]'), JSON.stringify(await events()));
    // nothing leaves an edge before JetStream has it
    assert.ok(await metric(alone, 'sillage_retention_passes_total') >= 2);
    assert.equal(await pruned(alone), 0);
    assert.deepEqual(stored(alone), ['Old']);
    for (const s of [alone, edge]) assert.deepEqual(await s.stop(), { code: 0, sig: null }, 'a clean stop');
  } finally {
    for (const s of [alone, edge, core]) { await s.stop(); s.cleanup(); }
    await nats.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('two edges and a core: one visitor stitched across edges, one cart trigger, also on the NATS subject', async () => {
  const dir = tempDir();
  const nats = await startNats(join(dir, 'js'));
  const nc = await connect({ servers: nats.url });
  const seen = [];
  const sub = nc.subscribe('sillage.triggers');
  (async () => { for await (const m of sub) seen.push(JSON.parse(new TextDecoder().decode(m.data))); })();
  const core = await startServer({ config: nodeConfig('core', nats.url) });
  const e1 = await startServer({ config: nodeConfig('edge', nats.url) });
  const e2 = await startServer({ config: nodeConfig('edge', nats.url) });
  try {
    assert.equal((await post(e1, '/v1/page', { anonymousId: 'x-a1', name: 'Home' })).status, 200);
    assert.equal((await post(e1, '/v1/track', { anonymousId: 'x-a1', event: 'Product Added',
      properties: { product_id: 'sku-x', price: 9, currency: 'EUR' } })).status, 200);
    assert.equal((await post(e2, '/v1/identify', { anonymousId: 'x-a1', userId: 'x-u1', traits: { email: 'x@example.com' } })).status, 200);
    const bearer = { Authorization: 'Bearer ' + ADMIN };
    assert.ok(await until(async () => {
      const r = await fetch(core.url + '/v1/profiles/user_id/x-u1/events', { headers: bearer });
      return r.status === 200 && (await r.json()).events.length === 3;
    }), 'the core holds the whole trail under the identified user');
    assert.equal((await fetch(e1.url + '/v1/profiles/user_id/x-u1', { headers: bearer })).status, 404, 'edges keep no profiles');
    assert.ok(await until(async () => seen.some((t) => t.profile.user_id === 'x-u1')), 'the trigger reached NATS');
    await sleep(1500);
    const feed = await (await fetch(core.url + '/v1/triggers', { headers: bearer })).json();
    assert.equal(feed.triggers.filter((t) => t.profile.user_id === 'x-u1').length, 1, 'fired once');
    assert.equal(seen.filter((t) => t.profile.user_id === 'x-u1').length, 1, 'published once');
    assert.deepEqual(seen[0].data.products.map((p) => p.product_id), ['sku-x']);
    assert.equal(await metric(e1, 'sillage_nats_lag_events'), 0);
  } finally {
    await nc.close();
    for (const s of [e1, e2, core]) { await s.stop(); s.cleanup(); }
    await nats.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an edge killed mid-stream, then a NATS outage: every acknowledged event reaches the core exactly once', async () => {
  const dir = tempDir();
  const jsDir = join(dir, 'js');
  let nats = await startNats(jsDir);
  const natsPort = nats.port;
  const core = await startServer({ config: nodeConfig('core', nats.url) });
  const edgeDir = join(dir, 'edge');
  mkdirSync(edgeDir);
  let edge = await startServer({ dir: edgeDir, config: nodeConfig('edge', nats.url) });
  const acked = join(dir, 'acked');
  try {
    // 1. SIGKILL the edge while it is being driven
    let b = bench(edge, acked, 30, 1);
    await sleep(1200);
    await edge.stop('SIGKILL');
    b.kill('SIGINT');
    await new Promise((r) => b.on('exit', r));
    edge = await startServer({ dir: edgeDir, config: nodeConfig('edge', nats.url) });
    // 2. NATS goes away: the edge keeps acknowledging
    await nats.stop();
    b = bench(edge, acked, 30, 2);
    await sleep(1500);
    b.kill('SIGINT');
    await new Promise((r) => b.on('exit', r));
    assert.ok(await metric(edge, 'sillage_nats_lag_events') > 0, 'events wait on the edge');
    nats = await startNats(jsDir, { port: natsPort });
    await drainedExactlyOnce(edge, core, acked, 500, 30000);
  } finally {
    for (const s of [edge, core]) { await s.stop(); s.cleanup(); }
    await nats.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a three-node JetStream cluster (R3) loses nothing when a NATS node dies', async () => {
  const dir = tempDir();
  const all = await freePorts(6);
  const ports = all.slice(0, 3);
  const cports = all.slice(3);
  const nodes = [];
  for (let i = 0; i < 3; i++)
    nodes.push(startNats(join(dir, 'js' + i), { port: ports[i], cluster: { name: 'n' + i, port: cports[i], routes: cports.filter((_, j) => j !== i) } }));
  const ns = await Promise.all(nodes);
  const urls = ns.map((n) => n.url).join(',');
  await sleep(1500); // the cluster elects its meta leader
  const core = await startServer({ config: nodeConfig('core', urls, { nats: { replicas: 3 } }) });
  const edge = await startServer({ config: nodeConfig('edge', urls, { nats: { replicas: 3 } }) });
  const acked = join(dir, 'acked');
  try {
    assert.ok(await until(async () => await metric(edge, 'sillage_nats_connected') === 1, 20000), 'the edge reached the cluster');
    const b = bench(edge, acked, 30, 3);
    await sleep(1500);
    await ns[1].stop(); // one NATS node dies mid-run
    await sleep(1500);
    b.kill('SIGINT');
    await new Promise((r) => b.on('exit', r));
    await drainedExactlyOnce(edge, core, acked, 300, 60000); // a lost fetch comes back after AckWait (10 s)
  } finally {
    for (const s of [edge, core]) { await s.stop(); s.cleanup(); }
    for (const n of ns) await n.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
