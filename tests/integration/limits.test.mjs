// limits.test.mjs - slow and many clients: per-IP rate limiting (429 with
// Retry-After), slowloris connections closed by the request timeout, the
// connection cap, and the server's memory staying under a stated bound while
// normal clients are still served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { startServer, post, ADMIN, WRITE_KEY } from './helpers.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
async function metric(srv, name) {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await (await fetch(srv.url + '/metrics')).text());
  return m ? Number(m[1]) : NaN;
}

test('rate limit per client IP: 429 with Retry-After, other addresses unaffected, refills', async () => {
  const srv = await startServer({ config: { limits: { rate_per_ip: 20, rate_burst: 20 }, trusted_proxies: ['127.0.0.1'] } });
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
  const srv = await startServer({ config: { limits: { request_timeout: '2s', idle_timeout: '2s' } } });
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
    await sleep(500);
    assert.ok(await metric(srv, 'sillage_connections') >= 1100, 'the slow connections are open');
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
    await sleep(3000); // past request_timeout, still trickling
    clearInterval(trickle);
    const open = await metric(srv, 'sillage_connections');
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
    for (let i = 0; i < 400; i++) {
      const s = net.connect(srv.port, '127.0.0.1');
      s.on('error', () => {});
      socks.push(s);
    }
    await sleep(500);
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
