// http.test.mjs - HTTP/1.1 behaviour on raw sockets, restart persistence,
// graceful shutdown, a full map.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer, post, rawExchange, parseResponses, track, WRITE_KEY } from './helpers.mjs';

const auth = 'Basic ' + Buffer.from(WRITE_KEY + ':').toString('base64');

function rawPost(path, body, extra = '') {
  return `POST ${path} HTTP/1.1\r\nHost: t\r\nAuthorization: ${auth}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;
}

test('pipelined requests are answered in order on one connection', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const reqs = [];
  for (let i = 0; i < 20; i++) {
    if (i % 5 === 4) reqs.push('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
    else if (i % 7 === 3) reqs.push(rawPost('/v1/track', JSON.stringify({ userId: 'p' }))); // 400: no event
    else reqs.push(rawPost('/v1/track', JSON.stringify({ userId: 'p', event: 'Pipelined', messageId: `pipe-${i}` })));
  }
  const text = await rawExchange(srv.port, reqs.join(''), { untilResponses: 20 });
  const res = parseResponses(text);
  assert.equal(res.length, 20);
  res.forEach((r, i) => {
    if (i % 5 === 4) { assert.equal(r.status, 200); assert.match(r.body, /"status":"ok"/); }
    else if (i % 7 === 3) { assert.equal(r.status, 400, `response ${i}`); }
    else { assert.equal(r.status, 200, `response ${i}`); assert.equal(r.body, '{"success":true}'); }
  });
  const ids = srv.exportEvents().map((e) => e.messageId);
  const want = reqs.map((_, i) => i).filter((i) => i % 5 !== 4 && i % 7 !== 3).map((i) => `pipe-${i}`);
  assert.deepEqual(ids, want, 'stored in request order');
});

test('chunked request body, split across packets', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const body = JSON.stringify({ userId: 'c', event: 'Chunked', messageId: 'chunk-1' });
  const a = body.slice(0, 10), b = body.slice(10);
  const head = `POST /v1/track HTTP/1.1\r\nHost: t\r\nAuthorization: ${auth}\r\nTransfer-Encoding: chunked\r\n\r\n`;
  const parts = [head, `${a.length.toString(16)}\r\n${a}\r\n`, `${b.length.toString(16)}\r\n${b}\r\n`, '0\r\n\r\n'];
  const res = parseResponses(await rawExchange(srv.port, parts, { untilResponses: 1 }));
  assert.equal(res[0].status, 200);
  assert.equal(srv.exportEvents()[0].event, 'Chunked');
});

test('keep-alive: many requests on one connection', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set();
  for (let i = 0; i < 30; i++) {
    const status = await new Promise((resolve, reject) => {
      const req = http.request(`${srv.url}/v1/track`, { method: 'POST', agent, headers: { Authorization: auth, 'Content-Type': 'application/json' } }, (res) => {
        sockets.add(res.socket);
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.on('error', reject);
      req.end(JSON.stringify(track({ messageId: `ka-${i}` })));
    });
    assert.equal(status, 200);
  }
  agent.destroy();
  assert.equal(sockets.size, 1, 'one connection served all requests');
  assert.equal(srv.exportEvents().length, 30);
});

test('HTTP/1.0 closes after the answer; malformed requests get 400 and a close', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  let text = await rawExchange(srv.port, 'GET /healthz HTTP/1.0\r\n\r\n');
  assert.match(text, /^HTTP\/1\.1 200/);
  assert.match(text, /Connection: close/);
  text = await rawExchange(srv.port, 'BLAH\x01 / HTTP/1.1\r\n\r\n');
  assert.match(text, /^HTTP\/1\.1 400/);
  text = await rawExchange(srv.port, 'POST /v1/track HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
  assert.match(text, /^HTTP\/1\.1 400/, 'Content-Length with Transfer-Encoding is refused (smuggling)');
  text = await rawExchange(srv.port, `GET /healthz HTTP/1.1\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`);
  assert.match(text, /^HTTP\/1\.1 431/);
  const h = await fetch(srv.url + '/healthz');
  assert.equal(h.status, 200, 'still serving');
});

test('events survive a restart; dedupe survives it too', async (t) => {
  const first = await startServer();
  t.after(() => first.cleanup());
  for (let i = 0; i < 10; i++) assert.equal((await post(first, '/v1/track', track({ messageId: `rs-${i}` }))).status, 200);
  assert.equal((await first.stop()).code, 0);
  assert.equal(first.exportEvents().length, 10, 'export after stop');

  const second = await startServer({ dir: first.dir, config: { data_dir: first.dataDir } });
  assert.equal((await post(second, '/v1/track', track({ messageId: 'rs-3' }))).status, 200);
  assert.equal((await post(second, '/v1/track', track({ messageId: 'rs-new' }))).status, 200);
  await second.stop();
  const ids = second.exportEvents().map((e) => e.messageId);
  assert.equal(ids.length, 11);
  assert.equal(ids.filter((x) => x === 'rs-3').length, 1);
  assert.equal(ids.at(-1), 'rs-new');
});

test('SIGTERM: requests in flight are committed and answered before exit', async (t) => {
  const srv = await startServer();
  t.after(() => srv.cleanup());
  const acked = [];
  let n = 0, stop = false;
  async function worker() {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    while (!stop) {
      const id = `term-${n++}`;
      const status = await new Promise((resolve) => {
        const req = http.request(`${srv.url}/v1/track`, { method: 'POST', agent, headers: { Authorization: auth } }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
          res.on('error', () => resolve(0));
        });
        req.on('error', () => resolve(0));
        req.end(JSON.stringify(track({ messageId: id })));
      });
      if (status === 200) acked.push(id);
      else if (status === 0) stop = true; // connection refused or closed: the server is going away
    }
    agent.destroy();
  }
  const workers = Array.from({ length: 16 }, worker);
  await new Promise((r) => setTimeout(r, 400));
  srv.child.kill('SIGTERM');
  await Promise.all(workers);
  const { code } = await srv.exited;
  assert.equal(code, 0);
  assert.ok(acked.length > 16, `requests were acknowledged before the stop (${acked.length})`);
  const stored = new Set(srv.exportEvents().map((e) => e.messageId));
  for (const id of acked) assert.ok(stored.has(id), `acknowledged ${id} is stored`);
});

test('a full map answers 503 and keeps serving; nothing acknowledged is lost', async (t) => {
  const srv = await startServer({ config: { map_size: '1MB', map_size_max: '2MB' } });
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const acked = [];
  let got503 = null;
  for (let i = 0; i < 400 && !got503; i++) {
    const batch = Array.from({ length: 10 }, (_, j) => ({ type: 'track', ...track({ messageId: `full-${i}-${j}`, properties: { pad: 'z'.repeat(1000) } }) }));
    const r = await post(srv, '/v1/batch', { batch });
    if (r.status === 200) acked.push(...batch.map((m) => m.messageId));
    else if (r.status === 503) got503 = r;
    else assert.fail(`unexpected ${r.status}: ${r.text}`);
  }
  assert.ok(got503, 'the map filled up');
  assert.equal(got503.json.success, false);
  assert.match(got503.json.error, /MDB_MAP_FULL|map/i);
  assert.equal(got503.headers.get('retry-after'), '1');
  assert.equal((await fetch(srv.url + '/healthz')).status, 200);
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /^sillage_lmdb_map_resizes_total 1$/m, 'grew once, to map_size_max');
  const stored = new Set(srv.exportEvents().map((e) => e.messageId));
  for (const id of acked) assert.ok(stored.has(id), `acknowledged ${id} is stored`);
});

test('CORS: admin routes send none and their preflight grants nothing; ingestion allows only its headers', async (t) => {
  const srv = await startServer({ config: { debug: true } });
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const evil = 'https://evil.example';
  const aca = (h) => [...h.keys()].filter((k) => k.startsWith('access-control-'));
  for (const path of ['/v1/profiles/user_id/victim', '/v1/triggers', '/v1/triggers/stream', '/debug/stream']) {
    const pre = await fetch(srv.url + path, {
      method: 'OPTIONS',
      headers: { Origin: evil, 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'authorization' },
    });
    assert.equal(pre.status, 204, path);
    assert.deepEqual(aca(pre.headers), [], `${path} preflight: ${aca(pre.headers)}`);
  }
  const bearer = { Authorization: 'Bearer admin-test-token-0123' };
  const prof = await fetch(srv.url + '/v1/profiles/user_id/victim', { headers: { ...bearer, Origin: evil } });
  assert.equal(prof.status, 404);
  assert.equal((await prof.json()).error, 'no profile has that identifier');
  assert.deepEqual(aca(prof.headers), []);
  const feed = await fetch(srv.url + '/v1/triggers', { headers: { ...bearer, Origin: evil } });
  assert.equal(feed.status, 200);
  assert.deepEqual((await feed.json()).triggers, []);
  assert.deepEqual(aca(feed.headers), []);
  const denied = await fetch(srv.url + '/v1/triggers', { headers: { Origin: evil } });
  assert.equal(denied.status, 401);
  assert.deepEqual(aca(denied.headers), []);
  // the stream's head, on a raw socket (it never ends)
  const head = await rawExchange(srv.port, `GET /v1/triggers/stream HTTP/1.1\r\nHost: t\r\nOrigin: ${evil}\r\n` +
    'Authorization: Bearer admin-test-token-0123\r\n\r\n', { untilResponses: 99, timeoutMs: 500 });
  assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(head, /: sillage trigger stream/);
  assert.doesNotMatch(head, /access-control/i);

  // ingestion: the configured CORS, but only the headers it needs
  const pre = await fetch(srv.url + '/v1/track', {
    method: 'OPTIONS',
    headers: { Origin: 'https://shop.example', 'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'content-type, x-anything-at-all' },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), 'https://shop.example');
  assert.equal(pre.headers.get('access-control-allow-headers'), 'Content-Type, Authorization, Content-Encoding, X-Retry-Count, AnonymousId, SentAt, Rsa-Retry-Attempt, Rsa-Retry-Reason, Rsa-Since-First-Attempt, Rsa-Since-Last-Attempt, Rsa-Recovered');
  const ok = await post(srv, '/v1/track', track(), { Origin: 'https://shop.example' });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('access-control-allow-origin'), 'https://shop.example');
  assert.equal(ok.headers.get('access-control-allow-credentials'), 'true');
  // Origin: null (sandboxed frames, file://) is never reflected unless listed
  const nul = await post(srv, '/v1/track', track(), { Origin: 'null' });
  assert.equal(nul.status, 200, nul.text);
  assert.deepEqual(nul.json, { success: true });
  assert.deepEqual(aca(nul.headers), []);
});

test('small answers: 301 has its reason phrase; %00 in a profile id is refused; the debug token is a header only', async (t) => {
  const srv = await startServer({ config: { demo: true, debug: true } });
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const demo = await rawExchange(srv.port, 'GET /demo HTTP/1.1\r\nHost: t\r\n\r\n');
  const [r] = parseResponses(demo);
  assert.match(r.head, /^HTTP\/1\.1 301 Moved Permanently\r\n/);
  assert.match(r.head, /\r\nLocation: \/demo\/(\r\n|$)/);
  assert.equal(r.body, '/demo/\n');
  // a profile whose id is a prefix of the one asked for must not answer
  assert.equal((await post(srv, '/v1/identify', { userId: 'victim', traits: { email: 'victim@example.com' } })).status, 200);
  const bearer = { Authorization: 'Bearer admin-test-token-0123' };
  const found = await fetch(srv.url + '/v1/profiles/user_id/victim', { headers: bearer });
  assert.equal(found.status, 200);
  const nul = await fetch(srv.url + '/v1/profiles/user_id/victim%00junk', { headers: bearer });
  assert.equal(nul.status, 400);
  assert.deepEqual(await nul.json(), { success: false, error: 'the identifier holds a NUL byte (%00)' });
  // the admin token in the URL is not accepted any more (it lands in proxy logs)
  const q = await fetch(srv.url + '/debug/stream?token=admin-test-token-0123');
  assert.equal(q.status, 401);
  assert.equal((await q.json()).success, false);
  const ctl = new AbortController();
  const h = await fetch(srv.url + '/debug/stream', { headers: bearer, signal: ctl.signal });
  assert.equal(h.status, 200);
  assert.equal(h.headers.get('content-type'), 'text/event-stream');
  ctl.abort();
});
