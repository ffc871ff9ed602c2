// loops.test.mjs - ingest_loops: more loops accepting connections on the
// same address (SO_REUSEPORT). Every connection, whichever loop the kernel
// gives it to, is answered: ingestion where it landed, a profile read or
// /healthz moved to the main loop with its bytes, on the same connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, rawExchange, parseResponses, basic, ADMIN, run } from './helpers.mjs';

function trackReq(user, i) {
  const body = JSON.stringify({ userId: user, event: 'Loop Test', properties: { i }, messageId: `${user}-${i}` });
  return `POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: ${basic()}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

function profileReq(user) {
  return `GET /v1/profiles/user_id/${user}?wait_ms=5000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`;
}

test('connections spread over three loops: ingestion, then a profile read on the same connection', async () => {
  const srv = await startServer({ config: { ingest_loops: 3 } });
  try {
    // 6 at a time: profile reads in progress are bounded (twice the
    // threadpool's size); 36 connections leave no loop without some
    const N = 36;
    const answers = [];
    for (let g = 0; g < N; g += 6) {
      answers.push(...await Promise.all(Array.from({ length: 6 }, (_, j) => {
        const user = `loop-u${g + j}`;
        // two events, then the profile (moved to the main loop when the
        // connection landed elsewhere), then one more event on the same connection
        const payload = trackReq(user, 1) + trackReq(user, 2) + profileReq(user) + trackReq(user, 3);
        return rawExchange(srv.port, payload, { untilResponses: 4, timeoutMs: 8000 });
      })));
    }
    for (let k = 0; k < N; k++) {
      const rs = parseResponses(answers[k]);
      assert.equal(rs.length, 4, `connection ${k}: ${answers[k].slice(0, 300)}`);
      assert.deepEqual(rs.map((r) => r.status), [200, 200, 200, 200], rs.map((r) => r.body).join("\n"));
      assert.equal(JSON.parse(rs[0].body).success, true);
      const prof = JSON.parse(rs[2].body);
      assert.equal(prof.user_id, `loop-u${k}`, `profile of connection ${k}: ${rs[2].body.slice(0, 300)}`);
      assert.equal(prof.counters.events, 2, rs[2].body.slice(0, 300)); /* both events before it, read your writes */
    }
    // /healthz from many connections: always the main loop's answer
    const hz = await Promise.all(Array.from({ length: 24 }, () =>
      rawExchange(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')));
    for (const h of hz) {
      const [r] = parseResponses(h);
      assert.equal(r.status, 200);
      assert.ok(JSON.parse(r.body).stage, r.body);
    }
    const st = await srv.stop();
    assert.equal(st.code, 0, srv.log());
    // every event stored once
    const ev = run(['export', '--data', srv.dataDir], { maxBuffer: 1 << 26 });
    assert.equal(ev.code, 0, ev.stderr);
    const events = ev.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(events.filter((e) => e.event === 'Loop Test').length, 3 * N);
    assert.equal(new Set(events.map((e) => e.messageId)).size, events.length);
    assert.match(srv.log(), /listening on/);
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

test('ingest_loops is checked: a whole number from 1 to 16', async () => {
  for (const bad of [0, 17, 2.5, '2']) {
    await assert.rejects(startServer({ config: { ingest_loops: bad } }), /ingest_loops must be a whole number from 1 to 16/);
  }
});
