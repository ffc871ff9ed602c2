// limits.test.mjs - slow and many clients: per-IP rate limiting (429 with
// Retry-After), slowloris connections closed by the request timeout, the
// connection cap, and the server's memory staying under a stated bound while
// normal clients are still served; the budgets shared by many addresses
// (bodies, connections, the reserve) and the header and body-rate timeouts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import { startServer, post, ADMIN, WRITE_KEY } from './helpers.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
async function metric(srv, name) {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await (await fetch(srv.url + '/metrics')).text());
  return m ? Number(m[1]) : NaN;
}
// The metric once ok(value) holds, or its value at the deadline.
async function metricUntil(srv, name, ok, ms = 5000) {
  let v;
  for (const end = Date.now() + ms; !ok(v = await metric(srv, name)) && Date.now() < end;) await sleep(50);
  return v;
}

test('rate limit per client IP: 429 with Retry-After, other addresses unaffected, refills', async () => {
  // a burst of 20, then one a second: 40 requests in a row find the bucket empty
  // after the 20th however slow the machine (up to 20 s for the 40)
  const srv = await startServer({ config: { limits: { rate_per_ip: 1, rate_burst: 20 }, trusted_proxies: ['127.0.0.1'] } });
  try {
    const send = (ip, i) => post(srv, '/v1/track', { userId: 'rl', event: 'e', messageId: `rl-${ip}-${i}-${Date.now()}` },
      { 'X-Forwarded-For': ip });
    const statuses = [];
    for (let i = 0; i < 40; i++) statuses.push(await send('10.1.1.1', i));
    const limited = statuses.filter((r) => r.status === 429);
    assert.ok(statuses.filter((r) => r.status === 200).length >= 20, 'the burst passes');
    assert.ok(limited.length >= 10, `${limited.length} limited`);
    assert.ok(Number(limited[0].headers.get('retry-after')) >= 1);
    assert.match(limited[0].text, /rate_per_ip/);
    assert.equal((await send('10.1.1.2', 0)).status, 200, 'another address has its own bucket');
    await sleep(1100);
    assert.equal((await send('10.1.1.1', 99)).status, 200, 'the bucket refills');
    assert.ok(await metric(srv, 'sillage_rate_limited_total') >= 10);
  } finally { await srv.stop(); srv.cleanup(); }
});

test('slow clients are cut off by the request timeout; memory stays bounded; others are served', async () => {
  const srv = await startServer({ config: { limits: { request_timeout: '4s', idle_timeout: '4s' } } });
  const socks = [];
  try {
    const rss0 = rssKiB(srv.child.pid);
    // 1200 slowloris connections: a request line, then a header byte now and then
    for (let i = 0; i < 1200; i++) {
      const s = net.connect(srv.port, '127.0.0.1');
      s.on('error', () => {});
      s.write('POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: ');
      socks.push(s);
    }
    const trickle = setInterval(() => { for (const s of socks) if (!s.destroyed) s.write('a'); }, 300);
    assert.ok(await metricUntil(srv, 'sillage_connections', (n) => n >= 1100, 3000) >= 1100, 'the slow connections are open');
    // a flood of normal requests from a few clients meanwhile
    let served = 0;
    await Promise.all(Array.from({ length: 8 }, async (_, k) => {
      for (let i = 0; i < 60; i++) {
        const r = await post(srv, '/v1/track', { userId: 'flood', event: 'e', messageId: `flood-${k}-${i}` });
        if (r.status === 200) served++;
      }
    }));
    const rssPeak = rssKiB(srv.child.pid);
    assert.equal(served, 480, 'normal clients are served during the attack');
    assert.ok(rssPeak - rss0 < 64 * 1024, `RSS grew ${(rssPeak - rss0) >> 10} MB with 1200 slow connections (bound 64 MB)`);
    // past request_timeout, still trickling: cut off
    const open = await metricUntil(srv, 'sillage_connections', (n) => n < 20, 10000);
    clearInterval(trickle);
    assert.ok(open < 20, `${open} connections left open after the request timeout`);
  } finally {
    for (const s of socks) s.destroy();
    await srv.stop(); srv.cleanup();
  }
});

test('the connection cap refuses the extra connections, and frees up', async () => {
  const srv = await startServer({ config: { limits: { max_connections: 300 } } });
  const socks = [];
  try {
    let closed = 0; // by the server: refused (/metrics cannot be asked while the cap is full)
    for (let i = 0; i < 400; i++) {
      const s = net.connect(srv.port, '127.0.0.1');
      s.on('error', () => {});
      s.on('close', () => { closed++; });
      socks.push(s);
    }
    for (const end = Date.now() + 5000; closed < 100 && Date.now() < end;) await sleep(50);
    assert.ok(closed >= 100, `${closed} refused`);
    for (const s of socks) s.destroy();
    await sleep(300);
    assert.ok(await metric(srv, 'sillage_connections_refused_total') >= 100);
    assert.equal((await post(srv, '/v1/track', { userId: 'cap', event: 'e' })).status, 200);
  } finally { await srv.stop(); srv.cleanup(); }
});

test('metrics_auth puts /metrics behind the admin token; the demo and debug pages are off unless enabled; no secret in the log', async () => {
  // Nothing listens on these ports: the NATS connect and the webhook fail,
  // so their failure lines are logged too, not only the start lines.
  const closed = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
  const srv = await startServer({ config: {
    metrics_auth: true,
    role: 'core', nats: { url: `nats://natsuser:PASSWORD@127.0.0.1:${closed}` },
    triggers: [{ name: 'any', type: 'page_visit', url: '*' }],
    webhooks: [{ url: `http://127.0.0.1:${closed}/hook?api_key=URLSECRET`, secret: 'HOOKSECRET', rules: ['any'] }],
  } });
  try {
    assert.equal((await fetch(srv.url + '/metrics')).status, 401);
    const ok = await fetch(srv.url + '/metrics', { headers: { Authorization: 'Bearer ' + ADMIN } });
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /^sillage_events_stored_total \d+$/m);
    assert.equal((await fetch(srv.url + '/demo/')).status, 404);
    assert.equal((await fetch(srv.url + '/debug')).status, 404);
    assert.equal((await fetch(srv.url + '/debug/stream?token=' + ADMIN)).status, 404);
    assert.equal((await fetch(srv.url + '/sillage.js')).status, 200, 'the tag is always served');
    assert.equal((await post(srv, '/v1/page', { userId: 'log-u', properties: { path: '/x' } })).status, 200);
    const end = Date.now() + 8000;
    while (!/attempt 1 failed/.test(srv.log()) && Date.now() < end) await sleep(100);
    const log = srv.log();
    assert.match(log, /webhook http:\/\/127\.0\.0\.1:\d+\/hook\?\*\*\*: trigger \d+ attempt 1 failed/, log);
    assert.match(log, new RegExp(`nats: core node on nats://\\*\\*\\*@127\\.0\\.0\\.1:${closed},`), log);
    for (const secret of [ADMIN, WRITE_KEY, 'wk_other', 'natsuser', 'PASSWORD', 'api_key', 'URLSECRET', 'HOOKSECRET'])
      assert.ok(!log.includes(secret), `"${secret}" is in the log:\n${log}`);
  } finally {
    // an unfixed server may hang on a NATS connect at exit (M7): not this test's subject
    const t = setTimeout(() => srv.child.kill('SIGKILL'), 8000);
    await srv.stop(); clearTimeout(t); srv.cleanup();
  }
});

// ---- bodies held before authentication (M3), per-address connection cap (M4),
// failed admin tokens (L1), refused-request log lines (L6)

// Opens a connection (from `localAddress`), sends `head` and `body`; resolves
// with what came back once the server answered `untilResponses` times or closed.
function rawConn(port, head, body = '', { localAddress = '127.0.0.1', timeoutMs = 4000 } = {}) {
  const sock = net.connect({ port, host: '127.0.0.1', localAddress });
  sock.on('error', () => {});
  const c = { sock, data: '' };
  const t0 = Date.now();
  c.done = new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ data: c.data, closed: false, ms: Date.now() - t0 }), timeoutMs);
    sock.on('data', (d) => { c.data += d.toString('latin1'); });
    sock.on('close', () => { clearTimeout(timer); resolve({ data: c.data, closed: true, ms: Date.now() - t0 }); });
  });
  if (head) sock.write(head);
  if (body) sock.write(body);
  return c;
}
function parse1(data) {
  const he = data.indexOf('\r\n\r\n');
  const head = he < 0 ? data : data.slice(0, he);
  const m = /^HTTP\/1\.1 (\d{3})/.exec(head);
  let json = null;
  try { json = JSON.parse(data.slice(he + 4)); } catch { /* not JSON */ }
  return { status: m ? Number(m[1]) : 0, head, json };
}
const badBasic = 'Basic ' + Buffer.from('wk_wrong:').toString('base64');
const goodBasic = 'Basic ' + Buffer.from('wk_test:').toString('base64');
async function until(fn, ms = 3000) {
  const end = Date.now() + ms;
  for (;;) { const v = await fn(); if (v || Date.now() > end) return v; await sleep(50); }
}
// GET from a given source address (127.0.0.2 is a second client on lo).
function getFrom(srv, path, localAddress = '127.0.0.2', headers = {}) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: srv.port, path, localAddress, agent: false, headers }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
    });
    req.on('error', (e) => resolve({ status: 0, text: String(e) }));
  });
}
async function metricFrom(srv, name, localAddress = '127.0.0.2') {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec((await getFrom(srv, '/metrics', localAddress)).text);
  return m ? Number(m[1]) : NaN;
}

test('a wrong Basic key is refused from the headers: 401 before the body, nothing buffered', async () => {
  const srv = await startServer();
  const conns = [];
  try {
    // one honest client half-way through a big batch: its bytes are what the gauge counts
    const payload = JSON.stringify({ batch: [{ type: 'track', userId: 'big', event: 'Big', messageId: 'big-1' }] });
    const total = 200000, first = 100000;
    const full = Buffer.from(payload + ' '.repeat(total - payload.length));
    const honest = rawConn(srv.port, `POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: ${goodBasic}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${total}\r\n\r\n`, full.subarray(0, first));
    assert.equal(await until(async () => (await metric(srv, 'sillage_buffered_body_bytes')) === first), true,
      'the gauge counts the honest client\'s body');
    // 40 clients with a wrong key announce 400 KB and send a quarter of it
    const t0 = Date.now();
    for (let i = 0; i < 40; i++)
      conns.push(rawConn(srv.port, `POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: ${badBasic}\r\n` +
        `Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n`, Buffer.alloc(100000, 'x')));
    const answers = await Promise.all(conns.map((c) => c.done));
    for (const a of answers) {
      const r = parse1(a.data);
      assert.equal(r.status, 401, a.data.slice(0, 200));
      assert.deepEqual(r.json, { success: false, error: 'unknown write key' });
      assert.match(r.head, /\r\nConnection: close/i);
      assert.ok(a.closed, 'the connection is closed: the rest of the body is never read');
    }
    assert.ok(Date.now() - t0 < 3000, `answered in ${Date.now() - t0} ms`);
    assert.equal(await metric(srv, 'sillage_buffered_body_bytes'), first, 'no wrong-key body was buffered');
    // the honest client finishes and is stored; its buffer is given back
    honest.sock.write(full.subarray(first));
    await until(async () => /\r\n\r\n\{.*\}/.test(honest.data));
    const h = parse1(honest.data);
    assert.equal(h.status, 200, honest.data);
    assert.deepEqual(h.json, { success: true });
    assert.equal(await until(async () => (await metric(srv, 'sillage_buffered_body_bytes')) === 0), true);
    honest.sock.destroy();
    const r = await post(srv, '/v1/track', { userId: 'after', event: 'e' });
    assert.equal(r.status, 200, r.text);
  } finally {
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});

test('bodies held across all connections are bounded: past limits.max_buffered_bytes, 503 with Retry-After', async () => {
  const srv = await startServer({ config: { limits: { max_request_bytes: 100000, max_buffered_bytes: 150000 } } });
  const conns = [];
  try {
    const payload = JSON.stringify({ batch: [{ type: 'track', userId: 'held', event: 'Held', messageId: 'held-1' }] });
    const full = Buffer.from(payload + ' '.repeat(100000 - payload.length));
    const head = `POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: ${goodBasic}\r\nContent-Type: application/json\r\n` +
      'Content-Length: 100000\r\n\r\n';
    const a = rawConn(srv.port, head, full.subarray(0, 90000));
    conns.push(a);
    assert.equal(await until(async () => (await metric(srv, 'sillage_buffered_body_bytes')) === 90000), true);
    // announced: 90,000 held + 100,000 > 150,000
    const b = rawConn(srv.port, head, full.subarray(0, 1000));
    conns.push(b);
    const rb = await b.done;
    const r = parse1(rb.data);
    assert.equal(r.status, 503, rb.data);
    assert.match(r.head, /\r\nRetry-After: \d+/i);
    assert.equal(r.json.success, false);
    assert.match(r.json.error, /limits\.max_buffered_bytes/);
    // chunked (no length announced): refused once the bytes arrive
    const c = rawConn(srv.port, `POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: ${goodBasic}\r\n` +
      'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n', `11170\r\n${' '.repeat(70000)}\r\n`);
    conns.push(c);
    const rc = parse1((await c.done).data);
    assert.equal(rc.status, 503);
    assert.match(rc.json.error, /limits\.max_buffered_bytes/);
    assert.ok(await metric(srv, 'sillage_buffered_body_refused_total') >= 2);
    // the first client is not disturbed, and the budget comes back
    a.sock.write(full.subarray(90000));
    await until(async () => /\r\n\r\n\{.*\}/.test(a.data));
    assert.deepEqual(parse1(a.data).json, { success: true });
    assert.equal(await until(async () => (await metric(srv, 'sillage_buffered_body_bytes')) === 0), true);
    const again = await post(srv, '/v1/batch', full.toString());
    assert.equal(again.status, 200, again.text);
  } finally {
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});

// Opens n connections from one address; resolves once the server had time to refuse any.
async function hold(srv, n, localAddress = '127.0.0.1') {
  const socks = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect({ port: srv.port, host: '127.0.0.1', localAddress });
    s.on('error', () => {});
    s.closedByServer = false;
    s.on('close', () => { s.closedByServer = true; });
    socks.push(s);
    await new Promise((r) => s.once('connect', r));
  }
  await sleep(300);
  return socks;
}

test('per-address connection cap: the next connection is refused; another address still gets /healthz', async () => {
  const srv = await startServer({ config: { limits: { max_connections: 100, max_connections_per_ip: 10 } } });
  let socks = [];
  try {
    socks = await hold(srv, 10);
    assert.equal(socks.filter((s) => s.closedByServer).length, 0, 'ten are held');
    const [extra] = await hold(srv, 1);
    socks.push(extra);
    assert.equal(extra.closedByServer, true, 'the eleventh from the same address is closed at once');
    const h = await getFrom(srv, '/healthz');
    assert.equal(h.status, 200);
    assert.equal(JSON.parse(h.text).status, 'ok');
    assert.equal(await metricFrom(srv, 'sillage_connections_refused_per_ip_total'), 1);
    assert.ok(await metricFrom(srv, 'sillage_connections_refused_total') >= 1);
    for (const s of socks) s.destroy();
    await sleep(200);
    assert.equal((await post(srv, '/v1/track', { userId: 'cap', event: 'e' })).status, 200, 'freed');
  } finally { for (const s of socks) s.destroy(); await srv.stop(); srv.cleanup(); }
});

test('one address holding max_connections does not lock out /healthz from another (reserved slots)', async () => {
  const srv = await startServer({ config: { limits: { max_connections: 20 } } });
  let socks = [];
  try {
    socks = await hold(srv, 20);
    assert.equal(socks.filter((s) => s.closedByServer).length, 0);
    const [extra] = await hold(srv, 1);
    socks.push(extra);
    assert.equal(extra.closedByServer, true, 'the holder gets no reserved slot');
    const h = await getFrom(srv, '/healthz');
    assert.equal(h.status, 200, h.text);
    assert.equal(JSON.parse(h.text).status, 'ok');
    const m = await getFrom(srv, '/metrics');
    assert.match(m.text, /^sillage_connections 2\d$/m);
  } finally { for (const s of socks) s.destroy(); await srv.stop(); srv.cleanup(); }
});

test('failed admin tokens are limited per address: 10 a minute, then 429 even for the right token', async () => {
  const srv = await startServer({ config: { metrics_auth: true, debug: true } });
  try {
    const routes = ['/v1/profiles/user_id/x', '/v1/triggers', '/debug/stream', '/metrics'];
    for (let i = 0; i < 10; i++) {
      const r = await fetch(srv.url + routes[i % 4], { headers: { Authorization: 'Bearer guess-' + i } });
      assert.equal(r.status, 401, routes[i % 4]);
      assert.equal((await r.json()).success, false);
    }
    for (const path of routes) {
      const r = await fetch(srv.url + path, { headers: { Authorization: 'Bearer admin-test-token-0123' } });
      assert.equal(r.status, 429, path);
      assert.ok(Number(r.headers.get('retry-after')) >= 1);
      const body = await r.json();
      assert.equal(body.success, false);
      assert.match(body.error, /too many failed admin token attempts/);
    }
    // another address is not affected
    const other = await getFrom(srv, '/v1/triggers', '127.0.0.2', { Authorization: 'Bearer admin-test-token-0123' });
    assert.equal(other.status, 200, other.text);
    assert.deepEqual(JSON.parse(other.text).triggers, []);
    const m = await getFrom(srv, '/metrics', '127.0.0.2', { Authorization: 'Bearer admin-test-token-0123' });
    assert.match(m.text, /^sillage_admin_auth_limited_total 4$/m);
  } finally { await srv.stop(); srv.cleanup(); }
});

test('refused requests log at most a few INFO lines a second, then one line counting the rest', async () => {
  const srv = await startServer();
  try {
    const t0 = Date.now();
    for (let i = 0; i < 60; i++) {
      const a = await post(srv, '/v1/track', { userId: 'u', event: 'e' }, { Authorization: badBasic });
      assert.equal(a.status, 401);
      const b = await post(srv, '/v1/track', { userId: 'u', event: 'e', writeKey: 'wk_wrong' }, { Authorization: '' });
      assert.equal(b.status, 401);
    }
    const secs = Math.ceil((Date.now() - t0) / 1000) + 1;
    // the count of what was left out is written within a second or so (the sweep timer)
    const accounted = () => {
      const ls = srv.log().split('\n');
      return ls.filter((l) => /unknown write key/.test(l)).length +
        ls.map((l) => /\((\d+) similar refused-request lines suppressed\)/.exec(l)).filter(Boolean).reduce((s, m) => s + Number(m[1]), 0);
    };
    for (let i = 0; i < 50 && accounted() < 120; i++) await sleep(100);
    const lines = srv.log().split('\n');
    const refused = lines.filter((l) => /unknown write key/.test(l)).length;
    assert.ok(refused >= 1 && refused <= 10 * secs, `${refused} lines for 120 refusals in ${secs} s`);
    const counts = lines.map((l) => /\((\d+) similar refused-request lines suppressed\)/.exec(l)).filter(Boolean);
    assert.ok(counts.length >= 1, 'a line says how many were left out');
    assert.equal(refused + counts.reduce((s, m) => s + Number(m[1]), 0), 120, 'every refusal is accounted for');
  } finally { await srv.stop(); srv.cleanup(); }
});

// ---- shared budgets (issue 21, M3 and L1 of the 2026-12-07 review): bodies a
// route does not use are not held, the short routes check a Basic key from the
// headers, /v1/m is rate-limited, one address holds a small share of the body
// budget and one reserved connection, and silent or trickling clients are cut off.

// The gauge once it held still for a second (every poll the same): the
// server has read what the clients sent.
async function settledMetric(srv, name) {
  let last = NaN, same = 0;
  for (const end = Date.now() + 20000; same < 10 && Date.now() < end;) {
    const v = await metric(srv, name);
    same = v === last ? same + 1 : 0;
    last = v;
    await sleep(100);
  }
  return last;
}
const written = (c) => new Promise((r) => c.sock.write('', r));

test('bodies held without a key from several addresses cannot make a keyed batch get 503', async () => {
  // each address may hold 2 x 100,000 bytes; bodies whose key was not checked, half of 1,600,000
  const srv = await startServer({ config: { limits: { max_request_bytes: 100000, max_buffered_bytes: 1600000 } } });
  const conns = [];
  try {
    const head = (path, auth) => `POST ${path} HTTP/1.1\r\nHost: x\r\n${auth ? `Authorization: ${auth}\r\n` : ''}` +
      'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n';
    const part = Buffer.alloc(95000, ' ');
    const kinds = [['/v1/m', null], ['/v1/nonexistent', null], ['/v1/t', badBasic], ['/v1/track', null]];
    const byKind = new Map(kinds.map(([p]) => [p, []]));
    for (let a = 2; a <= 9; a++)
      for (const [path, auth] of kinds)
        for (let k = 0; k < 2; k++) {
          const c = rawConn(srv.port, head(path, auth), part, { localAddress: `127.0.0.${a}`, timeoutMs: 30000 });
          conns.push(c);
          byKind.get(path).push(c);
        }
    await Promise.all(conns.map(written));
    const held = await settledMetric(srv, 'sillage_buffered_body_bytes');
    // a legitimate batch with its key in the header is served meanwhile
    const batch = { batch: Array.from({ length: 300 }, (_, i) => ({ type: 'track', userId: 'legit', event: 'Legit', messageId: `legit-${i}`, properties: { pad: 'x'.repeat(200) } })) };
    const size = JSON.stringify(batch).length;
    assert.ok(size > 80000 && size < 99000, `${size} bytes`);
    for (let i = 0; i < 5; i++) {
      const r = await post(srv, '/v1/batch', { ...batch, batch: batch.batch.map((m) => ({ ...m, messageId: `${m.messageId}-${i}` })) });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json, { success: true });
    }
    // only the no-key bodies of an ingestion route are held, within half the budget
    assert.ok(held > 0 && held <= 800000, `${held} bytes held`);
    // a wrong key on a short route: 401 from the headers
    for (const c of byKind.get('/v1/t')) {
      const r = parse1((await c.done).data);
      assert.equal(r.status, 401, c.data.slice(0, 200));
      assert.deepEqual(r.json, { success: false, error: 'unknown write key' });
    }
    // the no-key bodies past their part of the budget got 503 and say why
    const refused = byKind.get('/v1/track').filter((c) => c.data).map((c) => parse1(c.data));
    assert.ok(refused.length >= 1, 'some no-key bodies were refused');
    for (const r of refused) {
      assert.equal(r.status, 503);
      assert.match(r.json.error, /without a write key in an Authorization header reached half of limits\.max_buffered_bytes|from this address reached its share/);
    }
    // the drained routes answer once their body is in, and kept none of it
    const m = byKind.get('/v1/m')[0], nf = byKind.get('/v1/nonexistent')[0];
    m.sock.write(Buffer.alloc(5000, ' '));
    nf.sock.write(Buffer.alloc(5000, ' '));
    assert.ok(await until(async () => parse1(m.data).json && parse1(nf.data).json, 5000));
    assert.deepEqual(parse1(m.data).json, { success: true });
    assert.equal(parse1(nf.data).status, 404);
    assert.deepEqual(parse1(nf.data).json, { success: false, error: 'no such route' });
    assert.equal(await metric(srv, 'sillage_buffered_body_bytes'), held, 'the drained bodies were never counted');
  } finally {
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});

test('a wrong Basic key on a short route gets 401 from the headers: no 100 Continue, no body read', async () => {
  const srv = await startServer();
  const conns = [];
  try {
    for (const r of ['t', 'p', 's', 'i', 'a', 'g', 'b']) {
      const c = rawConn(srv.port, `POST /v1/${r} HTTP/1.1\r\nHost: x\r\nAuthorization: ${badBasic}\r\n` +
        'Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 400000\r\n\r\n');
      conns.push(c);
      const a = await c.done;
      assert.ok(!/100 Continue/.test(a.data), `/v1/${r}: ${a.data.slice(0, 120)}`);
      const res = parse1(a.data);
      assert.equal(res.status, 401, `/v1/${r}: ${a.data.slice(0, 200)}`);
      assert.deepEqual(res.json, { success: false, error: 'unknown write key' });
      assert.ok(a.closed, `/v1/${r}: closed, the body is never read`);
    }
    // the right key on a short route is invited to send its body
    const body = JSON.stringify({ userId: 'short', event: 'Short', messageId: 'short-1' });
    const ok = rawConn(srv.port, `POST /v1/t HTTP/1.1\r\nHost: x\r\nAuthorization: ${goodBasic}\r\n` +
      `Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`);
    conns.push(ok);
    assert.ok(await until(async () => /^HTTP\/1\.1 100 Continue\r\n\r\n/.test(ok.data)), ok.data);
    ok.sock.write(body);
    assert.ok(await until(async () => /\r\n\r\n\{.*\}$/.test(ok.data)), ok.data);
    assert.deepEqual(parse1(ok.data.slice(ok.data.indexOf('\r\n\r\n') + 4)).json, { success: true });
  } finally {
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});

test('/v1/m is rate-limited like ingestion: 429 with Retry-After', async () => {
  const srv = await startServer({ config: { limits: { rate_per_ip: 1, rate_burst: 3 } } });
  try {
    const answers = [];
    for (let i = 0; i < 8; i++) {
      const res = await fetch(srv.url + '/v1/m', { method: 'POST', headers: { 'Content-Type': 'text/plain' },
        body: JSON.stringify({ series: [{ type: 'Counter', metric: 'analytics_js.invoke', value: 1 }] }) });
      answers.push({ status: res.status, retry: res.headers.get('retry-after'), json: await res.json() });
    }
    assert.deepEqual(answers[0].json, { success: true });
    const limited = answers.filter((a) => a.status === 429);
    assert.ok(limited.length >= 4, JSON.stringify(answers));
    assert.ok(Number(limited[0].retry) >= 1);
    assert.deepEqual(limited[0].json, { success: false, error: 'too many requests from this address (limits.rate_per_ip)' });
  } finally { await srv.stop(); srv.cleanup(); }
});

test('limits.header_timeout: a connection that sends nothing is closed, unfinished headers get 408; keep-alive is not cut', async () => {
  const srv = await startServer({ config: { limits: { header_timeout: '2s' } } });
  const conns = [];
  try {
    const silent = rawConn(srv.port, '', '', { timeoutMs: 20000 });
    const partial = rawConn(srv.port, 'POST /v1/track HTTP/1.1\r\nHost: x\r\n', '', { timeoutMs: 20000 });
    const kept = rawConn(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n', '', { timeoutMs: 20000 });
    conns.push(silent, partial, kept);
    const s = await silent.done;
    assert.ok(s.closed, 'the silent connection is closed');
    assert.equal(s.data, '', 'nothing to answer');
    assert.ok(s.ms >= 1500, `closed after ${s.ms} ms, not before the timeout`);
    const p = await partial.done;
    assert.ok(p.closed);
    const r = parse1(p.data);
    assert.equal(r.status, 408, p.data);
    assert.deepEqual(r.json, { success: false, error: 'request headers not completed within limits.header_timeout' });
    // the keep-alive connection had its request: idle_timeout (60 s) applies to it
    assert.ok(await until(async () => parse1(kept.data).status === 200), kept.data);
    kept.data = '';
    kept.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.ok(await until(async () => /\r\n\r\n\{.*\}$/.test(kept.data)), `still open: ${kept.data}`);
    assert.equal(parse1(kept.data).json.status, 'ok');
  } finally {
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});

test('limits.min_body_rate: a trickled body is cut off with 408, on a kept route and on a drained one', async () => {
  const srv = await startServer({ config: { limits: { min_body_rate: 10000 } } });
  const conns = [];
  let trickle;
  try {
    const kept = rawConn(srv.port, `POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: ${goodBasic}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n{', '', { timeoutMs: 25000 });
    const drained = rawConn(srv.port, 'POST /v1/m HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n' +
      'Content-Length: 2000\r\n\r\n{', '', { timeoutMs: 25000 });
    conns.push(kept, drained);
    trickle = setInterval(() => { for (const c of conns) if (!c.sock.destroyed) c.sock.write(' '); }, 200);
    for (const c of conns) {
      const a = await c.done;
      assert.ok(a.closed, 'closed before limits.request_timeout (30 s)');
      const r = parse1(a.data);
      assert.equal(r.status, 408, a.data);
      assert.deepEqual(r.json, { success: false, error: 'request body arrived slower than limits.min_body_rate' });
    }
    assert.equal(await metric(srv, 'sillage_buffered_body_bytes'), 0);
  } finally {
    clearInterval(trickle);
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});

test('connection reserve: addresses that fill their share and the reserve leave room for /healthz from another', async () => {
  const srv = await startServer({ config: { limits: { max_connections: 20, max_connections_per_ip: 10 } } });
  let socks = [];
  try {
    socks = socks.concat(await hold(srv, 10, '127.0.0.2'), await hold(srv, 10, '127.0.0.3'));
    assert.equal(socks.filter((s) => s.closedByServer).length, 0, 'two addresses hold max_connections');
    // six more addresses try four connections each: one reserved slot each
    const late = [];
    for (let a = 4; a <= 9; a++) late.push(await hold(srv, 4, `127.0.0.${a}`));
    socks = socks.concat(late.flat());
    for (const group of late)
      assert.ok(await until(async () => group.filter((s) => s.closedByServer).length === 3),
        `${group.filter((s) => !s.closedByServer).length} kept of 4`);
    const h = await getFrom(srv, '/healthz', '127.0.0.10');
    assert.equal(h.status, 200, h.text);
    assert.equal(JSON.parse(h.text).status, 'ok');
    const m = await getFrom(srv, '/metrics', '127.0.0.11');
    assert.match(m.text, /^sillage_connections 2[78]$/m, '20 + 6 reserved + this one (+ /healthz\'s if not closed yet)');
  } finally { for (const s of socks) s.destroy(); await srv.stop(); srv.cleanup(); }
});

test('behind a trusted proxy, body shares are keyed on the client address X-Forwarded-For yields', async () => {
  // each client address may hold 2 x 100,000 bytes of 6,400,000
  const srv = await startServer({ config: { trusted_proxies: ['127.0.0.1'],
    limits: { max_request_bytes: 100000, max_buffered_bytes: 6400000 } } });
  const conns = [];
  try {
    const open = (xff) => {
      const c = rawConn(srv.port, `POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: ${goodBasic}\r\n` +
        `X-Forwarded-For: ${xff}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n`,
        Buffer.alloc(95000, ' '), { timeoutMs: 10000 });
      conns.push(c);
      return c;
    };
    open('198.51.100.7'); open('198.51.100.7');
    assert.equal(await until(async () => (await metric(srv, 'sillage_buffered_body_bytes')) === 190000), true);
    // the same client through the same proxy: past its share
    const third = open('198.51.100.7');
    const r = parse1((await third.done).data);
    assert.equal(r.status, 503, third.data);
    assert.equal(r.json.error, 'server busy: request bodies in memory from this address reached its share of ' +
      'limits.max_buffered_bytes (1/64, at least 2 x limits.max_request_bytes), retry later');
    // another client through the same proxy has its own share
    const other = open('203.0.113.9');
    assert.equal(await until(async () => (await metric(srv, 'sillage_buffered_body_bytes')) === 285000), true);
    assert.equal(other.data, '', 'still being received');
  } finally {
    for (const c of conns) c.sock.destroy();
    await srv.stop(); srv.cleanup();
  }
});
