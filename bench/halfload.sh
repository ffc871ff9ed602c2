#!/usr/bin/env bash
# Half load: the issue-14 bars "p99 < 5 ms and p99.9 < 10 ms at 50 % of max
# (open loop)" and "the stage's lag stays bounded at 50 % of the max ingest
# rate".
#   1. closed loop for SECONDS: the maximum acknowledged rate (req/s);
#   2. once the stage has caught up: open loop at half that rate for
#      SECONDS (latency from each request's intended send time), while
#      /healthz is sampled every 0.2 s for the stage's lag;
#   3. prints the latency percentiles, the largest lag seen (events, ms) and
#      the lag when the load stopped.
# Durable sillage on CPU 0 (loop, writer and stage threads share it), load
# on CPU 1.
#
# usage: bench/halfload.sh [SECONDS] [BATCH] [CONNECTIONS]
#   RATE=8000 bench/halfload.sh ...   the open loop at RATE requests/s instead
#                                      (the closed loop still runs first: warm-up)
#   SL_EXTRA='"limits": {...},' bench/halfload.sh ...  extra config keys (each followed by a comma)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; BATCH="${2:-1}"; CONNS="${3:-64}"
. bench/lib.sh
start_sillage sync "${SL_EXTRA:-}"

lag_of() { curl -s "$SL_URL/healthz" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
wait_caught_up() {
  for _ in $(seq 600); do [ "$(lag_of lag_events)" = "0" ] && return 0; sleep 0.1; done
  echo "the stage did not catch up within 60 s"; exit 1
}

$GEN "$BENCH" -k bench -c "$CONNS" -d "$DUR" -b "$BATCH" --seed 1 "$SL_URL" > "$WORK/out"
max=$(field reqs)
wait_caught_up
rate=${RATE:-$(echo "$max / 2" | bc -l)}
# bytes each thread wrote (write and pwrite calls: pages LMDB writes, answers on sockets) during the open loop
io_by_thread() { for t in /proc/"$SL_PID"/task/*; do echo "$(cat "$t/comm") $(sed -n "s/^wchar: //p" "$t/io")"; done | sort; }
io_by_thread > "$WORK/io0"
$GEN "$BENCH" -k bench -c "$CONNS" -d "$DUR" -b "$BATCH" -r "$rate" --seed 2 "$SL_URL" > "$WORK/open" &
LOAD=$!
: > "$WORK/lag"
while kill -0 "$LOAD" 2>/dev/null; do
  echo "$(lag_of lag_events) $(lag_of lag_ms)" >> "$WORK/lag"
  sleep 0.2
done
wait "$LOAD"
io_by_thread > "$WORK/io1"
end=$(tail -1 "$WORK/lag")
printf "closed loop, batches of %s, %s connections: %.0f req/s (%.0f events/s) acknowledged (durable)\n" \
  "$BATCH" "$CONNS" "$max" "$(echo "$max * $BATCH" | bc -l)"
if [ -n "${RATE:-}" ]; then what="a fixed rate"; else what="half of it"; fi
printf "open loop at %s, %.0f req/s for %s s:\n" "$what" "$rate" "$DUR"
grep -E "requests|status|latency" "$WORK/open" | sed 's/^ */  /'
awk 'NF == 2 { if ($1 > me) me = $1; if ($2 > mm) mm = $2; n++ }
     END { printf "  stage lag over %d samples: at most %d events, %d ms\n", n, me, mm }' "$WORK/lag"
echo "  stage lag at the last sample: ${end% *} events, ${end#* } ms"
join "$WORK/io0" "$WORK/io1" | awk -v d="$DUR" '$3 > $2 { printf "  %s wrote %.1f MB/s (write calls) during the open loop\n", $1, ($3 - $2) / d / 1e6 }'
curl -s "$SL_URL/metrics" | grep -E '^sillage_(commit_duration_seconds_count|stage_commits_total)' | sed 's/^/  /'
