// tcf.unit.test.mjs - sillage-tcf.js's mapping of an IAB TCF v2 platform's
// answers to sillage.consent() calls, in a vm context with a recording
// __tcfapi. With a real consent platform API in chromium: tests/browser/tcf.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';

const SRC = readFileSync(new URL('../../js-tag/sillage-tcf.js', import.meta.url), 'utf8');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Runs the adapter; returns the calls it made to sillage.consent() and a
// function that plays the platform's callback with a tcData.
function adapter({ options, snippet = true, tcfapi = true } = {}) {
  const calls = [];
  const listeners = [];
  const w = { setTimeout, sillageTcf: options };
  if (snippet) { w.sillage = []; w.sillage.consent = (c) => calls.push(JSON.parse(JSON.stringify(c))); } // (objects of the vm context)
  const api = (cmd, version, cb) => {
    assert.equal(cmd, 'addEventListener');
    assert.equal(version, 2);
    listeners.push(cb);
  };
  if (tcfapi) w.__tcfapi = api;
  vm.runInNewContext(SRC, { window: w, setTimeout });
  return {
    w, calls, listeners,
    install: () => { w.__tcfapi = api; },
    tell: (tc, ok = true) => { for (const cb of listeners) cb(tc, ok); },
  };
}
const tc = (eventStatus, purposes = {}, more = {}) => ({ eventStatus, gdprApplies: true, purpose: { consents: purposes },
  publisher: { consents: {} }, vendor: { consents: {} }, ...more });

test('the stored choice and each new one reach consent(); the platform showing its banner says nothing', () => {
  const a = adapter();
  assert.equal(a.listeners.length, 1, 'listens once');
  a.tell(tc('cmpuishown', { 1: true, 8: true }));
  a.tell(tc('tcloaded', { 1: true, 8: true }), false); // the platform's failure: nothing known
  assert.deepEqual(a.calls, []);
  a.tell(tc('tcloaded', { 1: true, 8: true }));
  a.tell(tc('useractioncomplete', { 1: true, 3: true, 4: true, 8: true }));
  a.tell(tc('useractioncomplete', { 3: true, 4: true, 8: true })); // no device access (purpose 1): nothing granted
  assert.deepEqual(a.calls, [{ analytics: true, marketing: false }, { analytics: true, marketing: true },
    { analytics: false, marketing: false }]);
});

test('where GDPR does not apply every category is granted', () => {
  const a = adapter();
  a.tell({ eventStatus: 'tcloaded', gdprApplies: false });
  assert.deepEqual(a.calls, [{ analytics: true, marketing: true }]);
});

test('options: own categories, the publisher\'s purposes, a vendor that must have consent', () => {
  const own = adapter({ options: { categories: { measure: [1, 9], nothing: [] } } });
  own.tell(tc('tcloaded', { 1: true, 9: true }));
  assert.deepEqual(own.calls, [{ measure: true, nothing: false }], 'a category with no purpose is never granted');

  const pub = adapter({ options: { publisher: true } });
  pub.tell(tc('tcloaded', { 1: true, 8: true }, { publisher: { consents: { 1: true, 3: true, 4: true } } }));
  assert.deepEqual(pub.calls, [{ analytics: false, marketing: true }]);

  const ven = adapter({ options: { vendor: 7 } });
  ven.tell(tc('tcloaded', { 1: true, 8: true }, { vendor: { consents: { 6: true } } }));
  ven.tell(tc('tcloaded', { 1: true, 8: true }, { vendor: { consents: { 7: true } } }));
  assert.deepEqual(ven.calls, [{ analytics: false, marketing: false }, { analytics: true, marketing: false }]);
});

test('a platform that comes later is found; without the snippet the choice waits in the tag\'s queue', async () => {
  const a = adapter({ snippet: false, tcfapi: false });
  await sleep(250);
  assert.equal(a.listeners.length, 0);
  a.install();
  for (let i = 0; i < 50 && !a.listeners.length; i++) await sleep(20);
  assert.equal(a.listeners.length, 1);
  a.tell(tc('tcloaded', { 1: true, 8: true }));
  assert.deepEqual(JSON.parse(JSON.stringify(a.w.sillage)), [['consent', { analytics: true, marketing: false }]]);
});
