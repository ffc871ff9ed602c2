// sdk.test.mjs - acceptance: the official Segment and RudderStack Node SDKs,
// pointed at sillage unchanged, deliver events that `sillage export` shows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { startServer, WRITE_KEY } from './helpers.mjs';

const require = createRequire(import.meta.url);
const nodeModules = process.env.NODE_PATH || new URL('../../node_modules', import.meta.url).pathname;

test('@segment/analytics-node delivers track, identify, page, group, alias', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const { Analytics } = require(require.resolve('@segment/analytics-node', { paths: [nodeModules] }));
  const errors = [];
  const analytics = new Analytics({ writeKey: WRITE_KEY, host: srv.url, flushAt: 3, flushInterval: 200, maxRetries: 1 });
  analytics.on('error', (e) => errors.push(e));
  analytics.identify({ userId: 'seg-user', anonymousId: 'seg-anon', traits: { email: 'seg@example.com', plan: 'pro' } });
  analytics.track({ userId: 'seg-user', event: 'Order Completed', properties: { revenue: 42.5, currency: 'EUR' } });
  analytics.page({ anonymousId: 'seg-anon', name: 'Pricing', properties: { path: '/pricing' } });
  analytics.group({ userId: 'seg-user', groupId: 'acme', traits: { name: 'Acme' } });
  analytics.alias({ userId: 'seg-user', previousId: 'seg-anon' });
  await analytics.closeAndFlush({ timeout: 10000 });
  assert.deepEqual(errors, []);
  const events = srv.exportEvents();
  const types = events.map((e) => e.type).sort();
  assert.deepEqual(types, ['alias', 'group', 'identify', 'page', 'track']);
  const order = events.find((e) => e.type === 'track');
  assert.equal(order.event, 'Order Completed');
  assert.equal(order.properties.revenue, 42.5);
  assert.match(order.context.library.name, /analytics-node/);
  assert.ok(order.messageId, 'SDK messageId kept');
  assert.equal(events.find((e) => e.type === 'identify').traits.email, 'seg@example.com');
});

test('@rudderstack/rudder-sdk-node delivers (gzip on, its default)', async (t) => {
  const srv = await startServer();
  t.after(async () => { await srv.stop(); srv.cleanup(); });
  const Analytics = require(require.resolve('@rudderstack/rudder-sdk-node', { paths: [nodeModules] }));
  const client = new Analytics(WRITE_KEY, { dataPlaneUrl: srv.url, flushAt: 2, flushInterval: 200, logLevel: 'error' });
  client.identify({ userId: 'rs-user', anonymousId: 'rs-anon', traits: { email: 'rs@example.com' } });
  client.track({ userId: 'rs-user', event: 'Product Added', properties: { product_id: 'p1', price: 9.99 } });
  client.page({ anonymousId: 'rs-anon', name: 'Home', properties: { path: '/' } });
  await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
  // flush() sends what is queued; wait until all three have landed
  let events = [];
  for (let i = 0; i < 50 && events.length < 3; i++) {
    events = srv.exportEvents();
    if (events.length < 3) await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(events.map((e) => e.type).sort(), ['identify', 'page', 'track']);
  const added = events.find((e) => e.type === 'track');
  assert.equal(added.event, 'Product Added');
  assert.equal(added.properties.product_id, 'p1');
  // RudderStack's SDK names itself analytics-node; its version is the package's
  const rsVersion = require(require.resolve('@rudderstack/rudder-sdk-node/package.json', { paths: [nodeModules] })).version;
  assert.equal(added.context.library.version, rsVersion);
  const m = await (await fetch(srv.url + '/metrics')).text();
  assert.match(m, /route="batch",status="200"/);
});
