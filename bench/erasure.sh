#!/usr/bin/env bash
# Erasure next to a large trigger feed (issue 22, item 5): does erasing a
# person with 10 feed entries cost their entries, or the feed?
#   for each SIZE: sillage (durable) with a rule firing on every page view
#   gets SIZE page views by batches of 1,000 (50 visitors), among them 10 of
#   each of VICTIMS persons spread over the feed; once the feed is readable,
#   each victim is erased (DELETE /v1/profiles/user_id/...), timed from the
#   request to the answer (the stage job, its commit, the log deletions).
# usage: bench/erasure.sh [SIZES] [VICTIMS]   (defaults 100000,1000000 5)
#   SILLAGE_BIN=<an older build>/sillage bench/erasure.sh   for the A/B
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${1:-100000,1000000}"; VICTIMS="${2:-5}"
. bench/lib.sh
for N in ${SIZES//,/ }; do
  start_sillage sync '"limits": {"max_batch_messages": 1000},
    "trigger_retention": "3650d", "triggers": [{"name": "every", "type": "event", "event": "page", "pressure": false}],'
  $GEN node - "$SL_URL" "$N" "$VICTIMS" <<'JS'
const [url, n, victims] = process.argv.slice(2).map((x, i) => (i ? Number(x) : x));
const auth = { 'Content-Type': 'application/json', Authorization: 'Basic ' + Buffer.from('bench:').toString('base64') };
const admin = { Authorization: 'Bearer bench-admin-token' };
const post = async (path, body) => {
  const r = await fetch(url + path, { method: 'POST', headers: auth, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(path + ': ' + r.status + ' ' + await r.text());
};
const lastSeq = async () => Number(/sillage_trigger_feed_last_seq (\d+)/.exec(await (await fetch(url + '/metrics')).text())[1]);
// victim v's k-th page view goes at position (k * victims + v + 1) * n / (10 * victims + 1)
const at = new Map();
for (let v = 0; v < victims; v++)
  for (let k = 0; k < 10; k++) at.set(Math.floor(((k * victims + v + 1) * n) / (10 * victims + 1)), 'victim-' + v);
const t0 = performance.now();
for (let i = 0; i < n; i += 1000) {
  const batch = [];
  for (let j = i; j < Math.min(n, i + 1000); j++)
    batch.push({ type: 'page', userId: at.get(j) ?? 'visitor-' + (j % 50), properties: { path: '/p/' + j } });
  await post('/v1/batch', { batch });
}
while ((await lastSeq()) < n) await new Promise((r) => setTimeout(r, 100));
const built = (performance.now() - t0) / 1000;
const took = [];
let removed = 0;
for (let v = 0; v < victims; v++) {
  const t1 = performance.now();
  const r = await fetch(url + '/v1/profiles/user_id/victim-' + v, { method: 'DELETE', headers: admin });
  const body = await r.json();
  took.push(performance.now() - t1);
  if (!r.ok) throw new Error('erasure: ' + r.status + ' ' + JSON.stringify(body));
  removed += body.erased.triggers;
}
took.sort((a, b) => a - b);
console.log(`feed of ${n} entries (built in ${built.toFixed(0)} s); ${victims} erasures of a person with 10 entries ` +
  `(${removed} entries removed): median ${took[took.length >> 1].toFixed(1)} ms, ` +
  `min ${took[0].toFixed(1)} ms, max ${took.at(-1).toFixed(1)} ms`);
JS
  stop_sillage
done
