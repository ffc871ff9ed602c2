#!/usr/bin/env bash
# bench/timers.sh [PERSONS] [RECENCY_S] - computed-field timers at one
# boundary: PERSONS customers (default 100000) each place one order with the
# same timestamp, under an RFM table whose first recency threshold is
# RECENCY_S seconds (default 40) and a computed_change rule on rfm.segment
# (so each customer has a durable timer, all due at the same instant). Once
# that instant has passed: how late the timers ran
# (sillage_computed_timer_late_ms_max: the latest, an upper bound of every
# percentile), how many moved a segment, and when the last trigger was
# readable. Durable sillage on CPU 0; the orders go in batches of 500.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"; REC="${2:-40}"
. bench/lib.sh
start_sillage sync '"computed": {"commerce": {"currency": "EUR", "rfm": {"recency": ["'"$REC"'s", "'"$((REC * 2))"'s", "'"$((REC * 3))"'s", "'"$((REC * 4))"'s"]}}},
 "triggers": [{"name": "aged", "type": "computed_change", "field": "rfm.segment", "pressure": false}],'
T0=$(date -u +%s)
TS=$(date -u -d "@$T0" +%Y-%m-%dT%H:%M:%S.000Z)
DUE=$((T0 + REC))
node -e '
const [url, n, ts] = [process.argv[1], Number(process.argv[2]), process.argv[3]];
(async () => {
  for (let i = 0; i < n; i += 500) {
    const batch = [];
    for (let k = i; k < Math.min(n, i + 500); k++)
      batch.push({ type: "track", userId: "t-" + k, event: "Order Completed", timestamp: ts,
        properties: { order_id: "t-o-" + k, revenue: 10 } });
    const r = await fetch(url + "/v1/batch", { method: "POST", body: JSON.stringify({ batch }),
      headers: { "Content-Type": "application/json", Authorization: "Basic " + Buffer.from("bench:").toString("base64") } });
    if (r.status !== 200) throw new Error("batch " + r.status + " " + await r.text());
  }
})().catch((e) => { console.error(e); process.exit(1); });
' "$SL_URL" "$N" "$TS"
sent=$(date -u +%s)
[ "$sent" -lt "$DUE" ] || { echo "the orders took longer than the recency threshold ($REC s): raise it"; stop_sillage; exit 1; }
metric() { curl -s "$SL_URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# wait for the boundary, then for every timer to have run
while [ "$(date -u +%s)" -le "$DUE" ]; do sleep 0.2; done
for _ in $(seq 600); do
  [ "$(metric sillage_computed_timers_total)" -ge "$N" ] 2>/dev/null && break
  sleep 0.1
done
done_at=$(date -u +%s.%N)
printf "%s customers, one order each at %s; their recency moves at %s (+%s s)\n" "$N" "$TS" \
  "$(date -u -d "@$DUE" +%H:%M:%S)" "$REC"
printf "timers run: %s, of which moved a value: %s; triggers fired: %s\n" "$(metric sillage_computed_timers_total)" \
  "$(metric sillage_computed_timer_changes_total)" "$(curl -s "$SL_URL/metrics" | awk '/^sillage_triggers_fired_total\{rule="aged"\}/ {print $2}')"
printf "the latest timer ran %s ms after it was due; all had run %.1f s after the boundary\n" \
  "$(metric sillage_computed_timer_late_ms_max)" "$(echo "$done_at - $DUE" | bc -l)"
stop_sillage
