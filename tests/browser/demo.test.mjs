// demo.test.mjs - what the README promises a newcomer: `./scripts/demo`
// (sillage with no config file: the embedded demo, its rules) and a few
// clicks in the demo shop make three different triggers fire within two
// minutes, and /debug shows each one as it arrives, with its payload.
// The same binary and defaults as the demo, on a free port and a temporary
// data directory; Debian's chromium drives the clicks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, tempDir } from '../integration/helpers.mjs';
import { launchChromium } from './helpers.mjs';

const ARTIFACTS = process.env.SL_TEST_ARTIFACTS || join(process.cwd(), 'test-artifacts');
let child, url, dir, browser;

before(async () => {
  dir = tempDir('sl-demo-');
  child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--data', join(dir, 'data')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the demo did not start:\n' + log)), 10000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = /listening on (\S+:\d+)/.exec(log);
      if (m) { clearTimeout(timer); resolve('http://' + m[1]); }
    });
  });
  assert.match(log, /no config file: running the local demo/);
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  child?.kill('SIGTERM');
});

test('the demo: view two products, add one, log in, pick a plan — /debug shows three different triggers', async () => {
  const t0 = Date.now();
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  // /debug first, as the README says: one tab for the live view
  const debug = await context.newPage();
  const page0 = await debug.goto(url + '/debug');
  // issue 21, I1: no inline script, and a policy that would not run one
  assert.match(page0.headers()['content-security-policy'], /default-src 'none'; script-src 'self';/);
  assert.equal(await debug.$$eval('script:not([src])', (e) => e.length), 0);
  await debug.fill('#token', 'demo-admin');
  await debug.press('#token', 'Enter');
  await debug.locator('#token').dispatchEvent('change');
  await debug.waitForSelector('#state.live');

  const shop = await context.newPage();
  await shop.goto(url + '/demo/');
  await shop.click('#p-tee-ink');               // product page 1
  await shop.waitForSelector('#add');
  await shop.goto(url + '/demo/');
  await shop.click('#p-mug-wake');              // product page 2: "viewed-twice"
  await shop.waitForSelector('#add');
  await shop.click('#add');                     // a cart opens: "cart" 30 s after the last activity
  await shop.click('#login-link');
  await shop.fill('#email', 'Demo.Newcomer@Example.com');
  await Promise.all([shop.waitForURL('**/demo/cart.html'), shop.click('button[type=submit]')]);
  await shop.click('#account-link');
  await shop.check('input[value=pro]');
  await shop.click('#save-plan');               // "plan": the trait's first value
  await shop.waitForSelector('#saved:not([hidden])');

  // the triggers as /debug shows them: rule names, one card each, payload inside
  const rules = async () => debug.$$eval('.ev.trigger .what', (els) => els.map((e) => e.textContent));
  const deadline = Date.now() + 110000;
  let seen = [];
  while (Date.now() < deadline) {
    seen = await rules();
    if (['viewed-twice', 'plan', 'cart'].every((r) => seen.includes(r))) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.ok(['viewed-twice', 'plan', 'cart'].every((r) => seen.includes(r)), `three triggers on /debug (${seen})`);
  assert.ok(Date.now() - t0 < 120000, 'within two minutes');
  const cart = await debug.$$eval('.ev.trigger', (els) => els.filter((e) => e.querySelector('.what').textContent === 'cart')
    .map((e) => ({ who: e.querySelector('.who').textContent, payload: JSON.parse(e.querySelector('pre').textContent) }))[0]);
  assert.match(cart.who, /demo\.newcomer@example\.com/);
  assert.equal(cart.payload.products[0].product_id, 'mug-wake');
  assert.equal(cart.payload.value, 14);
  const plan = await debug.$$eval('.ev.trigger', (els) => els.filter((e) => e.querySelector('.what').textContent === 'plan')
    .map((e) => JSON.parse(e.querySelector('pre').textContent))[0]);
  assert.deepEqual({ trait: plan.trait, new: plan.new }, { trait: 'plan', new: 'pro' });
  mkdirSync(ARTIFACTS, { recursive: true });
  await debug.screenshot({ path: join(ARTIFACTS, 'debug-triggers.png'), fullPage: false });
  await context.close();
});

test('the demo checkout sends categories and a coupon: the profile computes them, /debug shows the RFM segment', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const debug = await context.newPage();
  await debug.goto(url + '/debug');
  await debug.fill('#token', 'demo-admin');
  await debug.locator('#token').dispatchEvent('change');
  await debug.waitForSelector('#state.live');
  const shop = await context.newPage();
  await shop.goto(url + '/demo/');
  await shop.click('#p-tee-ink');
  await shop.waitForSelector('#add');
  await shop.click('#add');
  await shop.click('#login-link');
  await shop.fill('#email', 'Coupon.Buyer@Example.com');
  await Promise.all([shop.waitForURL('**/demo/cart.html'), shop.click('button[type=submit]')]);
  await shop.goto(url + '/demo/checkout.html');
  assert.equal(await shop.inputValue('#coupon'), 'WELCOME10');
  await shop.click('#pay');
  await shop.waitForSelector('#thanks');
  let p;
  const end = Date.now() + 10000;
  while (Date.now() < end) {
    const r = await fetch(url + '/v1/profiles/email/coupon.buyer%40example.com', { headers: { Authorization: 'Bearer demo-admin' } });
    p = r.status === 200 ? await r.json() : null;
    if (p && p.computed.orders === 1) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(p.computed.orders, 1);
  assert.deepEqual(p.computed.categories, ['clothing']);
  assert.equal(p.computed.promo_orders, 1);
  assert.equal(p.computed.revenue, 21.6); // 24 less the 10% coupon
  assert.equal(p.computed.rfm.segment, 'new');
  assert.equal(p.currency, 'EUR');
  await debug.waitForFunction(() => [...document.querySelectorAll('.ev .what')].some((e) => e.textContent === 'Order Completed'));
  const seg = await debug.$$eval('.ev', (els) => els.filter((e) => e.querySelector('.what').textContent === 'Order Completed')
    .map((e) => e.querySelector('.segment')?.textContent)[0]);
  assert.equal(seg, 'new');
  await context.close();
});
