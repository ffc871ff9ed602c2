// tcf.test.mjs - the IAB TCF adapter (/sillage-tcf.js, served by sillage) in
// Debian's chromium with a real consent platform API: the IAB's own
// @iabtcf/cmpapi (npm) answering __tcfapi with TC strings encoded by
// @iabtcf/core, loaded in the page as ES modules. The tag runs in its consent
// mode; what it leaves on the device and what the server stored are read as
// in consent.test.mjs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { startServer, WRITE_KEY } from '../integration/helpers.mjs';
import { launchChromium, until, SNIPPET } from './helpers.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const require = createRequire(new URL('../../package.json', import.meta.url));
const MJS = {
  core: join(dirname(require.resolve('@iabtcf/core')), '../mjs'), // (from lib/cjs/index.js)
  cmpapi: join(dirname(require.resolve('@iabtcf/cmpapi')), '../mjs'),
};
const STUB = require.resolve('@iabtcf/stub'); // the IAB's stub: __tcfapi queueing calls until the platform loads
let srv, browser;

before(async () => {
  srv = await startServer();
  browser = await launchChromium();
});
after(async () => { await browser?.close(); await srv.stop(); srv.cleanup(); });


// The consent platform: CmpApi on window.__tcfapi, and window.tcString(purposes,
// vendors) encoding a visitor's choice against a small vendor list (vendor 7).
const PLATFORM = `
import { CmpApi } from '@iabtcf/cmpapi';
import { TCModel, TCString, GVL } from '@iabtcf/core';
const purposes = {};
for (let i = 1; i <= 11; i++) purposes[i] = { id: i, name: 'p' + i, description: '', illustrations: [] };
const gvl = new GVL({ gvlSpecificationVersion: 3, vendorListVersion: 1, tcfPolicyVersion: 5,
  lastUpdated: '2026-11-01T00:00:00Z', purposes, specialPurposes: {}, features: {}, specialFeatures: {},
  stacks: {}, dataCategories: {}, vendors: { 7: { id: 7, name: 'v7', purposes: [1, 3, 4, 8], legIntPurposes: [],
  flexiblePurposes: [], specialPurposes: [], features: [], specialFeatures: [] } } });
window.tcString = (p, v = []) => {
  const m = new TCModel(gvl);
  m.cmpId = 10; m.cmpVersion = 1; m.consentScreen = 1; m.publisherCountryCode = 'FR';
  m.purposeConsents.set(p);
  m.vendorConsents.set(v);
  return TCString.encode(m);
};
window.cmp = new CmpApi(10, 1, false);
`;

async function newContext() {
  const context = await browser.newContext();
  await context.route(`${srv.url}/iabtcf/**`, (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path === '/iabtcf/stub.js') return route.fulfill({ contentType: 'application/javascript', body: readFileSync(STUB) });
    const [, pkg, file] = /\/iabtcf\/(core|cmpapi)\/(.+)$/.exec(path);
    route.fulfill({ contentType: 'application/javascript', body: readFileSync(join(MJS[pkg], file)) });
  });
  return context;
}
// A page with the platform, the snippet in consent mode with a held page view,
// and the adapter (options: window.sillageTcf). stub: the platform's stub
// comes first, as a platform's install puts it (else __tcfapi appears only
// when the platform's module has loaded, after the adapter).
async function tcfPage(context, name, options, { stub = false } = {}) {
  const url = `${srv.url}/t/${name}.html`;
  await context.route(url, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><title>${name}</title>
${stub ? '<script src="/iabtcf/stub.js"></script>' : ''}<script type="importmap">{"imports": {"@iabtcf/core": "/iabtcf/core/index.js", "@iabtcf/cmpapi": "/iabtcf/cmpapi/index.js"}}</script>
<script type="module">${PLATFORM}</script>
<script>${SNIPPET}
sillage.init(${JSON.stringify({ writeKey: WRITE_KEY, host: srv.url, consent: 'required', flushAt: 1, flushIntervalMs: 100 })});
${options ? `window.sillageTcf = ${JSON.stringify(options)};` : ''}
sillage.page("${name}");</script>
<script src="/sillage-tcf.js"></script>
<script>window.queued = typeof __tcfapi == 'function' && __tcfapi() ? __tcfapi().map((c) => c[0]) : null;</script>
<body>${name}</body>` }));
  const page = await context.newPage();
  page.requests = [];
  page.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/v1/')) page.requests.push(r.url()); });
  await page.goto(url);
  await page.waitForFunction(() => window.sillage && window.sillage.v && window.cmp);
  return page;
}
const cookies = async (context) => (await context.cookies()).filter((c) => c.name.startsWith('sillage')).map((c) => c.name);
const stored = (name) => srv.exportEvents().filter((e) => e.context?.page?.path === `/t/${name}.html`);

test('the adapter is served like the tag', async () => {
  const res = await fetch(srv.url + '/sillage-tcf.js', { headers: { 'Accept-Encoding': 'identity' } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^application\/javascript/);
  assert.equal(res.headers.get('cache-control'), 'public, max-age=3600');
  assert.match(await res.text(), /__tcfapi/);
});

test('TCF: nothing while the banner is up; the visitor\'s choice starts the tag with the purposes mapped to categories', async () => {
  const context = await newContext();
  const page = await tcfPage(context, 'tcf-banner');
  await page.evaluate(() => window.cmp.update('', true)); // GDPR applies, no choice yet: the banner is shown
  await sleep(1000);
  assert.deepEqual(await cookies(context), []);
  assert.deepEqual(await page.evaluate(() => Object.keys(localStorage)), []);
  assert.deepEqual(page.requests, []);

  // the visitor accepts measurement (purposes 1 and 8), not advertising profiles
  await page.evaluate(() => window.cmp.update(window.tcString([1, 8]), false));
  const ev = await until(() => { const e = stored('tcf-banner'); return e.length ? e : null; });
  assert.deepEqual(ev.map((e) => [e.type, e.name]), [['page', 'tcf-banner']]);
  assert.deepEqual(ev[0].context.consent, { categoryPreferences: { analytics: true, marketing: false } });
  assert.deepEqual(await cookies(context), ['sillage_aid']);

  // the banner reopened, marketing granted too: one Consent Preference Updated
  await page.evaluate(() => { window.cmp.update(window.tcString([1, 8]), true); window.cmp.update(window.tcString([1, 3, 4, 8]), false); });
  const upd = await until(() => stored('tcf-banner').find((e) => e.event === 'Consent Preference Updated'));
  assert.ok(upd, 'the change was sent');
  assert.deepEqual(upd.context.consent, { categoryPreferences: { analytics: true, marketing: true } });
  await context.close();
});

test('TCF: with the platform\'s stub in the page first (the usual install), the adapter listens at once', async () => {
  const context = await newContext();
  const page = await tcfPage(context, 'tcf-stub', undefined, { stub: true });
  assert.deepEqual(await page.evaluate(() => window.queued), ['addEventListener'], 'queued in the stub before the platform loaded');
  await page.evaluate(() => window.cmp.update(window.tcString([1, 3, 4, 8]), false)); // the stored choice
  const ev = await until(() => { const e = stored('tcf-stub'); return e.length ? e : null; });
  assert.deepEqual(ev[0].context.consent, { categoryPreferences: { analytics: true, marketing: true } });
  await context.close();
});

test('TCF: a stored refusal leaves nothing; a vendor option needs the vendor\'s consent; outside GDPR every category', async () => {
  const context = await newContext();
  const refused = await tcfPage(context, 'tcf-refused');
  await refused.evaluate(() => window.cmp.update(window.tcString([]), false)); // the stored choice: nothing
  // the vendor-option page: purposes granted, vendor 7 refused, then accepted
  const vendor = await tcfPage(context, 'tcf-vendor', { vendor: 7 });
  await vendor.evaluate(() => window.cmp.update(window.tcString([1, 8], []), false));
  const none = await tcfPage(context, 'tcf-nogdpr');
  await none.evaluate(() => window.cmp.update(null)); // GDPR does not apply
  const ev = await until(() => { const e = stored('tcf-nogdpr'); return e.length ? e : null; });
  assert.deepEqual(ev[0].context.consent, { categoryPreferences: { analytics: true, marketing: true } });
  await sleep(1000); // the other two pages had as long to send as this one
  assert.deepEqual(stored('tcf-refused'), []);
  assert.deepEqual(stored('tcf-vendor'), []);
  assert.deepEqual([refused.requests, vendor.requests], [[], []]);
  assert.ok(none.requests.length > 0);

  await vendor.evaluate(() => { window.cmp.update(window.tcString([1, 8], []), true); window.cmp.update(window.tcString([1, 8], [7]), false); });
  const v = await until(() => { const e = stored('tcf-vendor'); return e.length ? e : null; });
  assert.deepEqual(v[0].context.consent, { categoryPreferences: { analytics: true, marketing: false } });
  assert.deepEqual(stored('tcf-refused'), []);
  await context.close();
});
