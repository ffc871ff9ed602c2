// hostile.test.mjs - replays tests/hostile/*.req, raw requests with their
// expected status, against the real server over TCP, each on its own
// connection. Then the server must still serve, and the events acknowledged
// before the corpus must be stored exactly once with nothing else beside
// them.
//
// A .req file: "expect: 400" (or "400|413"), optionally "stores: <messageId>"
// for a request the server must accept and store (hostile values inside a
// valid message: they must not poison what is derived), then the request on one line
// with escapes \r \n \\ \xHH, and these expansions:
//   @repeat(TEXT,N)   TEXT N times          @repeatj(TEXT,N)  N times, comma-separated
//   @chunks(SIZE,N)   N chunks of SIZE bytes in chunked encoding
//   @gzipbomb(N)      gzip of N zero bytes  @len  the body's length in bytes
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import net from 'node:net';
import { startServer, post, ADMIN } from './helpers.mjs';

const DIR = new URL('../hostile/', import.meta.url);
let srv;
before(async () => { srv = await startServer({ config: { demo: true, debug: true } }); });
after(async () => { await srv.stop(); srv.cleanup(); });

function unescape(s) {
  return Buffer.from(s.replace(/\\(r|n|\\|x[0-9a-fA-F]{2})/g, (m, e) =>
    e === 'r' ? '\r' : e === 'n' ? '\n' : e === '\\' ? '\\' : String.fromCharCode(parseInt(e.slice(1), 16))), 'latin1');
}

function buildRequest(line) {
  const parts = [];
  const re = /@(repeatj|repeat|chunks|gzipbomb)\(([\s\S]*?)(?:,(\d+))?\)/g;
  let last = 0, m;
  while ((m = re.exec(line)) !== null) {
    parts.push(unescape(line.slice(last, m.index)));
    const [, fn, arg, n] = m;
    if (fn === 'repeat') parts.push(Buffer.concat(Array(Number(n)).fill(unescape(arg))));
    else if (fn === 'repeatj') parts.push(unescape(Array(Number(n)).fill(arg).join(',')));
    else if (fn === 'chunks') {
      const size = Number(arg), chunk = Buffer.concat([Buffer.from(size.toString(16) + '\r\n'), Buffer.alloc(size, 'a'), Buffer.from('\r\n')]);
      parts.push(Buffer.concat(Array(Number(n)).fill(chunk)));
    } else parts.push(gzipSync(Buffer.alloc(Number(arg))));
    last = re.lastIndex;
  }
  parts.push(unescape(line.slice(last)));
  let buf = Buffer.concat(parts);
  const he = buf.indexOf('\r\n\r\n');
  const at = buf.indexOf('@len');
  if (at >= 0 && at < he) { // the head's "@len": the body after it is unchanged
    const bodyLen = buf.length - (he + 4);
    buf = Buffer.concat([buf.subarray(0, at), Buffer.from(String(bodyLen)), buf.subarray(at + 4)]);
  }
  return buf;
}

// Sends buf on a new connection; resolves with the first response's status
// (0: the server closed without answering).
function exchange(buf) {
  return new Promise((resolve) => {
    const sock = net.connect(srv.port, '127.0.0.1');
    let data = '';
    const done = () => { clearTimeout(timer); sock.destroy(); const m = /^HTTP\/1\.1 (\d{3})/.exec(data); resolve(m ? Number(m[1]) : 0); };
    const timer = setTimeout(done, 8000);
    sock.on('data', (d) => { data += d.toString('latin1'); if (/\r\n\r\n/.test(data)) done(); });
    sock.on('close', done);
    sock.on('error', done);
    sock.write(buf, () => {});
  });
}

const files = readdirSync(DIR).filter((f) => f.endsWith('.req')).sort();

test('the corpus has at least 50 requests', () => { assert.ok(files.length >= 50, `${files.length}`); });

let controlIds = [];
test('hostile requests get their 4xx, and nothing else is disturbed', async () => {
  for (let i = 0; i < 5; i++) {
    const id = 'control-' + i;
    const r = await post(srv, '/v1/track', { userId: 'control', event: 'Control', messageId: id });
    assert.equal(r.status, 200);
    controlIds.push(id);
  }
  const wrong = [];
  for (const f of files) {
    let [head, ...rest] = readFileSync(new URL(f, DIR), 'latin1').split('\n');
    const expect = head.replace(/^expect:\s*/, '').split('|').map(Number);
    if (rest[0].startsWith('stores:')) controlIds.push(rest.shift().replace(/^stores:\s*/, ''));
    const status = await exchange(buildRequest(rest.join('\n').replace(/\n$/, '')));
    if (!expect.includes(status)) wrong.push(`${f}: got ${status}, expected ${expect.join(' or ')}`);
    assert.ok(status < 500 || expect.includes(status), `${f}: ${status}`);
  }
  assert.deepEqual(wrong, []);
  // what was derived from the stored hostile values reads back as JSON
  for (const path of ['/v1/profiles/user_id/h1-rich', '/v1/profiles/user_id/h1-victim', '/v1/profiles?limit=50',
                      '/v1/triggers?after=0&limit=1000']) {
    const a = await fetch(srv.url + path, { headers: { authorization: 'Bearer ' + ADMIN } });
    const text = await a.text();
    assert.equal(a.status, 200, `${path}: ${text}`);
    assert.doesNotThrow(() => JSON.parse(text), `${path} is not JSON: ${text.slice(0, 300)}`);
  }
  const h = await fetch(srv.url + '/healthz');
  assert.equal(h.status, 200, 'still serving');
  const r = await post(srv, '/v1/track', { userId: 'control', event: 'After', messageId: 'control-after' });
  assert.equal(r.status, 200);
  controlIds.push('control-after');
});

test('only the acknowledged control events are stored, once each', async () => {
  await srv.stop();
  const ids = srv.exportEvents().map((e) => e.messageId);
  assert.deepEqual(ids.sort(), controlIds.sort());
});
