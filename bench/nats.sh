#!/usr/bin/env bash
# bench/nats.sh [SECONDS] [BATCH] - scale-out throughput and edge->core lag:
# one nats-server with JetStream, one core and two edges on loopback (servers
# on CPU 0), two sillage-bench instances (CPU 1) driving the edges at once.
# Reports what the edges acknowledged per second, how long the core took
# after the load stopped to apply everything (the lag left at the end), and
# the end-to-end rate (events applied by the core / time to apply them).
set -euo pipefail
cd "$(dirname "$0")/.."
S="${1:-10}"; BATCH="${2:-20}"
BIN="${SILLAGE_BIN:-./build/sillage}"; BENCH="${SILLAGE_BENCH_BIN:-./build/sillage-bench}"
[ -x "$BIN" ] && [ -x "$BENCH" ] || ./scripts/build build >/dev/null
command -v nats-server >/dev/null || { echo "needs nats-server (scripts/setup)"; exit 1; }
SRV="taskset -c 0"; GEN="taskset -c 1"; [ "$(nproc)" -lt 2 ] && SRV="" && GEN=""
W=$(mktemp -d /tmp/sl-nats-bench-XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"' EXIT
NP=18470
$SRV nats-server -js -a 127.0.0.1 -p $NP -sd "$W/js" > "$W/nats.log" 2>&1 & PIDS+=($!)
sleep 0.5
port=18471
for r in core edge1 edge2; do
  cat > "$W/$r.json" <<JS
{"listen": "127.0.0.1:$port", "data_dir": "$W/$r", "sources": [{"name": "bench", "write_key": "bench"}],
 "admin_token": "bench-admin-token", "log_level": "warn", "role": "${r%[12]}",
 "nats": {"url": "nats://127.0.0.1:$NP"}}
JS
  $SRV "$BIN" serve -c "$W/$r.json" 2> "$W/$r.log" & PIDS+=($!)
  port=$((port + 1))
done
for p in 18471 18472 18473; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.05; done
done
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
sleep 1
t0=$(date +%s.%N)
$GEN "$BENCH" -k bench -c 32 -d "$S" -b "$BATCH" --seed 1 "http://127.0.0.1:18472" > "$W/b1" &
B1=$!
$GEN "$BENCH" -k bench -c 32 -d "$S" -b "$BATCH" --seed 2 "http://127.0.0.1:18473" > "$W/b2" &
B2=$!
wait $B1 $B2
t1=$(date +%s.%N)
stored=$(( $(metric 18472 sillage_events_stored_total) + $(metric 18473 sillage_events_stored_total) ))
lag_at_end=$(( $(metric 18472 sillage_nats_lag_events) + $(metric 18473 sillage_nats_lag_events) ))
consumed_at_end=$(metric 18471 sillage_nats_consumed_total)
for _ in $(seq 1200); do
  [ "$(metric 18471 sillage_nats_consumed_total)" -ge "$stored" ] && break
  sleep 0.05
done
t2=$(date +%s.%N)
consumed=$(metric 18471 sillage_nats_consumed_total)
awk -v s="$stored" -v c="$consumed" -v ce="$consumed_at_end" -v l="$lag_at_end" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v b="$BATCH" 'BEGIN {
  printf "two edges + one core, batches of %d, %.1f s of load\n", b, t1 - t0
  printf "edges acknowledged   %d events (%.0f events/s)\n", s, s / (t1 - t0)
  printf "at the end of load   core had applied %d; %d still on the edges (not yet in JetStream)\n", ce, l
  printf "core caught up       %.2f s after the load stopped (%d applied)\n", t2 - t1, c
  printf "end to end           %.0f events/s (applied by the core / time to apply them)\n", c / (t2 - t0)
}'
grep -h "conn errors\|status" "$W/b1" "$W/b2" | head -4
