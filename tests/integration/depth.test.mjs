// depth.test.mjs - what the collector stores, the stage reads: an event as
// deep as limits.max_json_depth allows (up to 1000) is stitched, not set
// aside by the stage's tree-less reader (a review found it checked only 512
// levels: the event then had no person, and retention never reached it).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, post, ADMIN } from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ config: { limits: { max_json_depth: 1000 } } }); });
after(async () => { await srv.stop(); srv.cleanup(); });

const admin = { Authorization: 'Bearer ' + ADMIN };
function nested(d) { return '['.repeat(d) + ']'.repeat(d); }

test('an event the collector stores (depth 600) is stitched, not set aside', async () => {
  const body = `{"userId":"deep-u","event":"Deep","properties":{"x":${nested(598)}}}`; // depth 600
  const r = await post(srv, '/v1/track', body);
  assert.equal(r.status, 200, r.text);
  const ok = await post(srv, '/v1/track', { userId: 'shallow-u', event: 'Shallow' });
  assert.equal(ok.status, 200);
  // wait for the stage to reach the shallow event
  let prof;
  for (let i = 0; i < 50; i++) {
    prof = await fetch(srv.url + '/v1/profiles/user_id/shallow-u', { headers: admin });
    if (prof.status === 200) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(prof.status, 200);
  const aside = await (await fetch(srv.url + '/v1/admin/set-aside', { headers: admin })).json();
  assert.deepEqual(aside.set_aside, [], 'set aside: ' + JSON.stringify(aside));
  const deep = await fetch(srv.url + '/v1/profiles/user_id/deep-u', { headers: admin });
  assert.equal(deep.status, 200);
});
