// console.test.mjs - the operator's /console in Debian's chromium against
// the real server: find a person by e-mail, read identities, traits with
// when each was set, counters, the timeline a page at a time, the merge
// journal and the triggers the person caused; watch the live trigger feed
// and each rule's counters; erase the person after confirming. A
// screenshot is kept as a test artifact.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, post, ADMIN } from '../integration/helpers.mjs';
import { launchChromium } from './helpers.mjs';

const ARTIFACTS = process.env.SL_TEST_ARTIFACTS || join(process.cwd(), 'test-artifacts');
let srv, browser;

before(async () => {
  srv = await startServer({ config: { triggers: [{ name: 'pricing', type: 'page_visit', url: '/pricing*' }],
    computed: { commerce: { currency: 'EUR' } },
    audiences: [{ name: 'buyers', where: { field: 'profile.computed.orders', gte: 1 } },
      { name: 'nobody', where: { field: 'profile.traits.plan', eq: 'none' } }] } });
  browser = await launchChromium();
});
after(async () => { await browser?.close(); await srv.stop(); srv.cleanup(); });

async function send(path, body) {
  const r = await post(srv, path, body);
  assert.equal(r.status, 200, r.text);
}

test('/console: find, read, page through, journal, triggers, live feed, erase', async () => {
  const t0 = Date.parse('2026-11-30T09:00:00Z');
  const at = (i) => new Date(t0 + i * 1000).toISOString();
  await send('/v1/page', { anonymousId: 'c-anon', properties: { path: '/pricing' }, timestamp: at(0) });
  await send('/v1/batch', { batch: Array.from({ length: 25 }, (_, i) =>
    ({ type: 'track', anonymousId: 'c-anon', event: 'Step ' + i, timestamp: at(1 + i) })) });
  await send('/v1/identify', { userId: 'c-user', anonymousId: 'c-anon', timestamp: at(30),
    traits: { email: 'Console.User@Example.com', plan: 'pro' } });
  await send('/v1/page', { anonymousId: 'c-anon2', name: 'Phone', timestamp: at(40) });
  await send('/v1/track', { userId: 'c-user', event: 'Order Completed', timestamp: at(31),
    properties: { order_id: 'c-1', revenue: 42, currency: 'EUR', products: [{ category: 'Books' }] } });
  await send('/v1/identify', { userId: 'c-user', anonymousId: 'c-anon2', timestamp: at(41), // a second device: merged
    context: { consent: { categoryPreferences: { marketing: true, ads: false } } } });

  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(srv.url + '/console');
  assert.equal(new URL(page.url()).search, '', 'nothing in the URL');
  await page.fill('#token', ADMIN);
  await page.locator('#token').dispatchEvent('change');
  await page.waitForSelector('#feed-empty');
  // the rule's total so far, from /metrics
  await page.waitForFunction(() => [...document.querySelectorAll('#rules tr')].some((r) =>
    r.children[0].textContent === 'pricing' && r.children[2] && r.children[2].textContent === '1'));
  // the most recently active first: the person is found from the list
  await page.waitForSelector('#recent .recent-item');
  assert.match(await page.textContent('#recent .recent-item'), /^console\.user@example\.com · 2026-11-30T09:00:41/);
  await page.click('#recent .recent-item');
  await page.waitForSelector('#identities .chip');
  assert.equal(await page.inputValue('#ident'), 'c-user');

  const chips = await page.$$eval('#identities .chip', (els) => els.map((e) => e.textContent));
  for (const want of ['user_id c-user', 'anonymous_id c-anon', 'anonymous_id c-anon2', 'email console.user@example.com'])
    assert.ok(chips.includes(want), `${want} in ${chips}`);
  const traits = await page.$$eval('#traits tr', (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  const plan = traits.find((t) => t[0] === 'plan');
  assert.equal(plan[1], '"pro"');
  assert.match(plan[2], /^2026-11-30T09:00:30/, 'when the trait was set');
  assert.equal(await page.textContent('#c-events'), '30');
  // computed fields: the ledger's figures and the RFM segment, and the customers per segment
  const comp = Object.fromEntries(await page.$$eval('#computed tr', (rows) => rows.map((r) => [r.children[0].textContent, r.children[1].textContent])));
  assert.equal(comp.orders, '1');
  assert.equal(comp.top_category, '"books"');
  assert.match(comp['rfm.segment'], /^"(new|lost|hibernating|need attention|promising)"$/);
  await page.waitForSelector('#rfm tr');
  assert.ok(await page.isVisible('#rfm-section'));
  assert.match(await page.textContent('#rfm'), new RegExp(JSON.parse(comp['rfm.segment']) + '1'));
  // audiences: the person's, and the list with its KPIs and the day's moves
  assert.deepEqual(await page.$$eval('#memberships .chip', (els) => els.map((e) => e.textContent)), ['buyers']);
  await page.waitForSelector('#audiences tr[data-audience="buyers"]');
  const aud = await page.$$eval('#audiences tr[data-audience="buyers"] td', (tds) => tds.map((t) => t.textContent));
  assert.deepEqual(aud.slice(0, 5), ['buyers', '1', '1', '1', '1'], aud.join('|'));
  assert.match(aud[8], /: 1 \(\+1 −0\)$/, 'today: one member, one entered');
  assert.match(await page.textContent('#audiences tr[data-audience="nobody"]'), /no move/);
  assert.equal(await page.textContent('#pending'), 'none', 'no event rule here: no pending trigger');
  assert.equal(await page.textContent('#consent'), 'marketing grantedads refused 2026-11-30T09:00:41.000Z');

  await page.waitForFunction(() => document.querySelectorAll('#events tr').length === 20);
  await page.click('#older');
  await page.waitForFunction(() => document.querySelectorAll('#events tr').length === 30);
  assert.ok(await page.isHidden('#older'), 'no page after the last');
  const first = await page.textContent('#events tr:first-child td:nth-child(3) summary');
  assert.equal(first, 'traits', 'newest first: the second identify');

  await page.waitForSelector('#merges div');
  assert.match(await page.textContent('#merges'), /merge/);
  await page.waitForSelector('#ptrig .trig');
  assert.match(await page.textContent('#ptrig'), /pricing/);

  // live: another visitor reaches /pricing
  await send('/v1/page', { anonymousId: 'c-other', properties: { path: '/pricing/teams' } });
  await page.waitForSelector('#feed .trig');
  assert.match(await page.textContent('#feed .trig'), /pricing/);
  await page.waitForFunction(() => [...document.querySelectorAll('#rules tr')].some((r) =>
    r.children[0].textContent === 'pricing' && r.children[1].textContent === '1' && r.children[2].textContent === '2'));

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(ARTIFACTS, 'console.png') });

  // erase, after the confirmation
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await page.click('#erase');
  await page.waitForSelector('#erased');
  assert.match(asked, /cannot be undone/);
  // feed entries: its page_visit trigger and its audience_entered (buyers)
  assert.match(await page.textContent('#erased'), /30 events, 4 identities, 1 journal entries, 2 triggers/);
  const gone = await fetch(srv.url + '/v1/profiles/user_id/c-user', { headers: { Authorization: 'Bearer ' + ADMIN } });
  assert.equal(gone.status, 404);
  await page.waitForFunction(() => !/console\.user/.test(document.getElementById('recent').textContent));
  assert.deepEqual(errors, []);
  await page.close();
});

// Issue 21: the journal comes a page at a time; a refusal names the
// identifier claimed (it printed [object Object]) and how often.
test('/console: the journal a page at a time, refusals counted and named', async () => {
  const devices = Array.from({ length: 55 }, (_, i) => 'j-dev-' + i);
  await send('/v1/batch', { batch: devices.map((a) => ({ type: 'page', anonymousId: a, name: 'Home' })) });
  for (const a of devices) await send('/v1/identify', { userId: 'j-user', anonymousId: a }); // 54 merges
  for (const u of ['j-in-1', 'j-in-2', 'j-in-3']) await send('/v1/alias', { previousId: 'j-user', userId: u }); // refused
  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(srv.url + '/console');
  await page.fill('#token', ADMIN);
  await page.locator('#token').dispatchEvent('change');
  await page.selectOption('#kind', 'user_id');
  await page.fill('#ident', 'j-user');
  await page.click('#find button');
  await page.waitForFunction(() => document.querySelectorAll('#merges div').length === 50);
  const top = await page.textContent('#merges div:first-child');
  assert.match(top, /^refused .* alias would join two users.* user_id j-user ×3, first /, top);
  assert.ok(await page.isVisible('#older-journal'));
  await page.click('#older-journal');
  await page.waitForFunction(() => document.querySelectorAll('#merges div').length === 55);
  assert.ok(await page.isHidden('#older-journal'), 'no page after the last');
  const text = await page.textContent('#merges');
  assert.doesNotMatch(text, /object Object/);
  assert.match(text, /merge .* anonymous_id j-dev-54/);
  assert.deepEqual(errors, []);
  await page.close();
});

test('/console without the token shows nothing and says why', async () => {
  const page = await browser.newPage();
  await page.goto(srv.url + '/console');
  await page.fill('#token', 'not-the-token-000');
  await page.fill('#ident', 'anyone@example.com');
  await page.click('#find button');
  await page.waitForFunction(() => /wrong admin token/.test(document.getElementById('status').textContent));
  assert.equal(await page.$$eval('#identities', (e) => e.length), 0);
  const res = await fetch(srv.url + '/console');
  assert.equal(res.headers.get('x-frame-options'), 'DENY');
  // issue 21, I1: no inline script, and a policy that would not run one
  assert.match(res.headers.get('content-security-policy'), /default-src 'none'; script-src 'self';/);
  assert.doesNotMatch(await res.text(), /<script>/);
  await page.close();
});
