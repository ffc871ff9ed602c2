// numbers.test.mjs - issue 21, H1: amounts that sum to infinity. Two orders of
// revenue 1e308, or one cart line of price 1e300 x quantity 1e300, printed
// "inf" with %.2f: the profile, the feed, SSE and webhooks carried invalid
// JSON and webhooks dropped the entry without a word. Every answer below is
// parsed as JSON; a feed entry that is not JSON (a store written by an older
// build) is a counted, logged delivery failure for a webhook.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, post, ADMIN, tempDir } from './helpers.mjs';

const bearer = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function getJSON(srv, path) {
  const res = await fetch(srv.url + path, { headers: bearer });
  const text = await res.text();
  let body;
  assert.doesNotThrow(() => { body = JSON.parse(text); }, `${path} answered what is not JSON: ${text.slice(0, 400)}`);
  return { status: res.status, body };
}

async function metric(srv, name) {
  const text = await (await fetch(srv.url + '/metrics')).text();
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

// Waits until the feed holds an entry pred accepts; the whole feed, parsed.
async function feedUntil(srv, pred, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const { status, body } = await getJSON(srv, '/v1/triggers?after=0&limit=1000');
    assert.equal(status, 200);
    if (body.triggers.some(pred) || Date.now() > end) return body.triggers;
    await sleep(100);
  }
}

const ok = async (srv, type, msg) => {
  const r = await post(srv, '/v1/' + type, msg);
  assert.equal(r.status, 200, r.text);
};

// A webhook receiver that, like a strict automation engine, answers 400 to a
// body that is not JSON.
function receiver() {
  const got = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      let doc = null;
      try { doc = JSON.parse(body); } catch { /* counted below */ }
      got.push({ body, doc });
      res.writeHead(doc ? 204 : 400);
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    got, port: server.address().port,
    close() { return new Promise((r) => { server.closeAllConnections?.(); server.close(r); }); },
  })));
}

test('orders of revenue 1e308 count as orders, their amounts are ignored and counted', async () => {
  const srv = await startServer();
  try {
    for (let i = 1; i <= 2; i++)
      await ok(srv, 'track', { userId: 'rich', event: 'Order Completed', properties: { order_id: 'o' + i, revenue: 1e308 } });
    await ok(srv, 'track', { userId: 'rich', event: 'Order Completed', properties: { order_id: 'o3', revenue: 42.5 } });
    await ok(srv, 'track', { userId: 'rich', event: 'Order Completed', properties: { order_id: 'o4', total: -1e16 } });
    const { status, body } = await getJSON(srv, '/v1/profiles/user_id/rich');
    assert.equal(status, 200);
    assert.equal(body.counters.orders, 4);
    assert.equal(body.counters.revenue, 42.5);
    const list = await getJSON(srv, '/v1/profiles?limit=20');
    assert.ok(list.body.profiles.some((p) => p.user_id === 'rich'));
    assert.equal(await metric(srv, 'sillage_order_amounts_ignored_total'), 3);
  } finally {
    await srv.stop();
    srv.cleanup();
  }
});

test('a cart line of 1e300 x 1e300 leaves the cart\'s value finite in the feed, SSE and the webhook', async () => {
  const rx = await receiver();
  const srv = await startServer({ config: {
    triggers: [{ name: 'cart', type: 'abandoned_cart', delay: '1s' }],
    webhooks: [{ url: `http://127.0.0.1:${rx.port}/hook`, secret: 'hook-secret', rules: ['cart'] }],
  } });
  const ctrl = new AbortController();
  try {
    const stream = await fetch(srv.url + '/v1/triggers/stream', { headers: bearer, signal: ctrl.signal });
    assert.equal(stream.status, 200);
    const poison = { product_id: 'x', price: 1e300, quantity: 1e300, currency: 'EUR' };
    await ok(srv, 'track', { userId: 'victim', event: 'Product Added', properties: poison });
    await ok(srv, 'track', { userId: 'victim', event: 'Product Added', properties: poison }); // quantities add up
    await ok(srv, 'track', { userId: 'victim', event: 'Product Added',
                             properties: { product_id: 'y', price: 10, quantity: 2, currency: 'EUR' } });
    const feed = await feedUntil(srv, (t) => t.rule === 'cart' && t.profile.user_id === 'victim');
    const cart = feed.find((t) => t.rule === 'cart' && t.profile.user_id === 'victim');
    assert.ok(cart, 'the cart fired');
    assert.equal(cart.data.value, 20, 'the out-of-range price counts for nothing');
    const x = cart.data.products.find((p) => p.product_id === 'x');
    assert.deepEqual([x.price, x.quantity], [undefined, 2], 'price left out, quantity 1 + 1');
    assert.equal(await metric(srv, 'sillage_cart_amounts_ignored_total'), 4);

    // the live stream: each event's data is JSON
    const reader = stream.body.getReader();
    let text = '';
    const end = Date.now() + 5000;
    while (!/event: trigger\ndata: .*"victim"/.test(text) && Date.now() < end) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
    }
    const data = [...text.matchAll(/^data: (.*)$/gm)].map((m) => m[1]);
    assert.ok(data.length >= 1, text);
    for (const d of data) assert.doesNotThrow(() => JSON.parse(d), d);

    // the webhook received it, as JSON
    const until = Date.now() + 10000;
    while (!rx.got.some((g) => g.doc?.profile?.user_id === 'victim') && Date.now() < until) await sleep(100);
    assert.ok(rx.got.some((g) => g.doc?.profile?.user_id === 'victim' && g.doc.data.value === 20));
    assert.deepEqual(rx.got.filter((g) => !g.doc).map((g) => g.body), [], 'no body that is not JSON');
  } finally {
    ctrl.abort();
    await srv.stop();
    srv.cleanup();
    await rx.close();
  }
});

test('a feed entry that is not JSON is a logged, counted failure for a webhook, not a quiet skip', async () => {
  const dir = tempDir();
  const rules = [{ name: 'cart', type: 'abandoned_cart', delay: '1s' }];
  let srv = await startServer({ dir, config: { triggers: rules } });
  await ok(srv, 'track', { userId: 'old-cart', event: 'Product Added',
                           properties: { product_id: 'y', price: 10, quantity: 2, currency: 'EUR' } });
  const feed = await feedUntil(srv, (t) => t.profile.user_id === 'old-cart');
  assert.ok(feed.some((t) => t.profile.user_id === 'old-cart'));
  await srv.stop();

  // What an older build wrote for such a cart: "value":inf
  const derived = join(srv.dataDir, 'derived');
  const dump = execFileSync('mdb_dump', ['-p', '-s', 'feed', derived], { encoding: 'latin1' });
  assert.match(dump, /"value":20\.00/);
  const bad = join(dir, 'feed.dump');
  writeFileSync(bad, dump.replace('"value":20.00', '"value":inf'), 'latin1');
  execFileSync('mdb_load', ['-s', 'feed', '-f', bad, derived], { stdio: 'ignore' });

  const rx = await receiver();
  srv = await startServer({ dir, config: {
    triggers: rules,
    webhooks: [{ url: `http://127.0.0.1:${rx.port}/hook`, secret: 'hook-secret', rules: ['cart'] }],
  } });
  try {
    await ok(srv, 'track', { userId: 'new-cart', event: 'Product Added',
                             properties: { product_id: 'z', price: 5, currency: 'EUR' } });
    const until = Date.now() + 15000;
    while (!rx.got.some((g) => g.doc?.profile?.user_id === 'new-cart') && Date.now() < until) await sleep(100);
    assert.ok(rx.got.some((g) => g.doc?.profile?.user_id === 'new-cart'), 'the later trigger is delivered');
    assert.equal(await metric(srv, 'sillage_webhook_unreadable_total'), 1);
    assert.ok(await metric(srv, 'sillage_webhook_expired_total') >= 1);
    assert.match(srv.log(), /feed entry \d+ is not valid JSON; not delivered/);
    assert.deepEqual(rx.got.filter((g) => !g.doc).map((g) => g.body), [], 'nothing sent that is not JSON');
  } finally {
    await srv.stop();
    srv.cleanup();
    await rx.close();
  }
});
