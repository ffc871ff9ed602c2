#!/usr/bin/env bash
# Retention next to a full trigger feed: does pruning hold the stage up?
#   1. sillage (durable, "anonymous_retention": "395d", a page_visit rule)
#      gets FEED identified visitors with 25 KB of traits each, one trigger
#      each: a feed of ~FEED x 25 KB;
#   2. one batch of OLD anonymous page views dated more than 395 days ago
#      (each person's only event: retention removes them whole);
#   3. for PROBES rounds, a page that fires the rule, timed from the POST
#      until /metrics shows the trigger readable: the worst and median delay
#      while the pruner works through the batch.
# usage: bench/retention.sh [FEED] [OLD] [PROBES]   (defaults 2000 2000 30)
set -euo pipefail
cd "$(dirname "$0")/.."
FEED="${1:-2000}"; OLD="${2:-2000}"; PROBES="${3:-30}"
. bench/lib.sh
start_sillage sync '"anonymous_retention": "395d", "triggers": [{"name": "seen", "type": "page_visit", "url": "/offer*"}],'
node - "$SL_URL" "$FEED" "$OLD" "$PROBES" <<'JS'
const [url, feed, old, probes] = process.argv.slice(2).map((x, i) => (i ? Number(x) : x));
const auth = { 'Content-Type': 'application/json', Authorization: 'Basic ' + Buffer.from('bench:').toString('base64') };
const post = async (path, body) => {
  const r = await fetch(url + path, { method: 'POST', headers: auth, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(path + ': ' + r.status + ' ' + await r.text());
};
const lastSeq = async () => Number(/sillage_trigger_feed_last_seq (\d+)/.exec(await (await fetch(url + '/metrics')).text())[1]);
const traits = Object.fromEntries(Array.from({ length: 10 }, (_, k) => ['t' + k, 'y'.repeat(2500)]));
for (let i = 0; i < feed; i++)
  await post('/v1/batch', { batch: [{ type: 'identify', userId: 'big-' + i, traits },
    { type: 'page', userId: 'big-' + i, properties: { path: '/offer/big' } }] });
while ((await lastSeq()) < feed) await new Promise((r) => setTimeout(r, 50));
await post('/v1/batch', { batch: Array.from({ length: old }, (_, j) =>
  ({ type: 'page', anonymousId: 'old-' + j, timestamp: '2020-01-01T00:00:00Z', properties: { path: '/p' } })) });
const took = [];
for (let k = 0; k < probes; k++) {
  const s0 = await lastSeq(), t0 = performance.now();
  await post('/v1/page', { userId: 'probe-' + k, properties: { path: '/offer/probe' } });
  while ((await lastSeq()) === s0) await new Promise((r) => setTimeout(r, 5));
  took.push(performance.now() - t0);
  await new Promise((r) => setTimeout(r, 300));
}
const m = await (await fetch(url + '/metrics')).text();
took.sort((a, b) => a - b);
console.log(`feed ${feed} triggers with 25 KB of traits each, then ${old} expired anonymous page views in one batch`);
console.log(`trigger readable after its POST, ${probes} probes: median ${took[took.length >> 1].toFixed(1)} ms, worst ${took.at(-1).toFixed(1)} ms`);
console.log(`pruned ${/sillage_retention_pruned_events_total (\d+)/.exec(m)[1]} events, removed ${/sillage_retention_persons_removed_total (\d+)/.exec(m)[1]} persons`);
JS
stop_sillage
