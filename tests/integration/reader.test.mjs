// reader.test.mjs - odd but accepted JSON through the public write key
// reaches the stage's tree-less reader and the conditions evaluated on the
// text (escapes, surrogate pairs, U+2028, long escaped strings, runs of
// backslashes, extreme numbers, a properties that is no object): nothing is
// set aside, and each rule fires on what the message says.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, ADMIN } from './helpers.mjs';

const admin = { Authorization: 'Bearer ' + ADMIN };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const RULES = [
  { name: 'cart', type: 'abandoned_cart', delay: '1s' },
  { name: 'c1', type: 'event', event: 'Odd', where: { field: 'properties.s', contains: 'zz\u00e9' } },
  { name: 'g1', type: 'event', event: 'Odd', where: { field: 'properties.s', glob: '*\u00e9*' } },
  { name: 'n1', type: 'event', event: 'Odd', where: { field: 'properties.n', gt: 1e300 } },
  { name: 'a1', type: 'event', event: 'Odd', where: { field: 'properties.products[].k', eq: 'q"\\' } },
  { name: 'p1', type: 'event', event: 'Odd', where: { field: 'context.page.path', starts_with: '/\u2028' } },
];
let srv;
before(async () => { srv = await startServer({ config: { triggers: RULES } }); });
after(async () => { await srv.stop(); srv.cleanup(); });

test('odd accepted messages are all derived', async () => {
  const long = 'a\\u00e9\\"\\\\\\n'.repeat(1500) + 'zz\\u00e9';
  const bodies = [
    `{"userId":"h1","event":"Odd","properties":{"s":"${long}","n":1e308,"products":[{"k":"q\\"\\\\"},1,"x",null,[]]},"context":{"page":{"path":"/\\u2028x"}}}`,
    `{"userId":"h2","event":"Odd","properties":{"\\u0073":"zz\\u00e9","n":-0.0,"products":{}}}`,
    `{"userId":"h3","event":"Product Added","properties":{"product_id":"\\ud83d\\ude00","price":1.7976931348623157e308,"quantity":4.9e-324,"name":"${'\\u00e9'.repeat(5000)}"}}`,
    `{"userId":"h4","event":"Product Added","properties":[1,2]}`,
    `{"userId":"h5","event":"Product Added","properties":{"products":[{"id":123456789012345678901234567890,"price":1e-400}]}}`,
    `{"userId":"h6","event":"Odd","properties":"str","context":"x"}`,
    `{"anonymousId":"h7","type":"identify","traits":{"email":"h7@x.example","${'k'.repeat(3000)}":1},"context":{"traits":{"email":"no@x"}}}`,
    `{"userId":"h8","event":"Odd","properties":{"s":"${'\\\\'.repeat(10000)}zz\\u00e9"}}`,
  ];
  const status = [];
  for (const b of bodies) {
    const path = b.includes('"type":"identify"') ? '/v1/identify' : '/v1/track';
    status.push((await post(srv, path, b)).status);
  }
  await post(srv, '/v1/track', { userId: 'last', event: 'Last' });
  for (let i = 0; i < 50; i++) {
    if ((await fetch(srv.url + '/v1/profiles/user_id/last', { headers: admin })).status === 200) break;
    await sleep(100);
  }
  await sleep(1500);
  const aside = await (await fetch(srv.url + '/v1/admin/set-aside', { headers: admin })).json();
  const feed = await (await fetch(srv.url + '/v1/triggers?after=0&limit=1000', { headers: admin })).json();
  const fired = feed.triggers.map((t) => `${t.rule}:${t.profile.user_id}`).sort();
  // a properties or context that is no object is refused at the ack; the rest is stored
  assert.deepEqual(status, [200, 200, 200, 400, 200, 400, 200, 200]);
  assert.deepEqual(aside.set_aside, []);
  assert.ok(fired.includes('c1:h1') && fired.includes('g1:h1') && fired.includes('n1:h1') && fired.includes('a1:h1') && fired.includes('p1:h1'));
  assert.ok(fired.includes('c1:h2') && fired.includes('c1:h8'));
});
