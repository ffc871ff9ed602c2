#!/usr/bin/env bash
# The derivation stage behind the log: how far it lags under load, how long
# it takes to catch up, and what it sustains alone.
#   1. sillage (durable, server on CPU 0) takes SECONDS of sillage-bench
#      (batches of BATCH, load on CPU 1); /healthz says how far the stage is
#      behind the log when the load stops, and the time until it caught up;
#   2. the server stops and `sillage rebuild` derives the whole log again
#      from scratch on one core: the stage alone, events/s;
#   3. bytes on disk per event: the log (data.mdb) and the derived store.
#
# usage: bench/stage.sh [SECONDS] [BATCH] [CONNECTIONS]
#   BENCH_ARGS="--active 5000" bench/stage.sh ...   extra sillage-bench options
#   SL_EXTRA='"triggers": [...],' bench/stage.sh ...  extra config keys (each followed by a comma)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; BATCH="${2:-20}"; CONNS="${3:-64}"
. bench/lib.sh
start_sillage sync "${SL_EXTRA:-}"
$GEN "$BENCH" -k bench -c "$CONNS" -d "$DUR" -b "$BATCH" --seed 1 ${BENCH_ARGS:-} "$SL_URL" > "$WORK/out"
acked=$(field events)
h=$(curl -s "$SL_URL/healthz")
lag=$(echo "$h" | sed -n 's/.*"lag_events":\([0-9]*\).*/\1/p')
lagms=$(echo "$h" | sed -n 's/.*"lag_ms":\([0-9]*\).*/\1/p')
t0=$(date +%s.%N)
while :; do
  h=$(curl -s "$SL_URL/healthz")
  [ "$(echo "$h" | sed -n 's/.*"lag_events":\([0-9]*\).*/\1/p')" = "0" ] && break
  sleep 0.05
done
catch=$(echo "$(date +%s.%N) - $t0" | bc -l)
stored=$(echo "$h" | sed -n 's/.*"last_seq":\([0-9]*\).*/\1/p')
stop_sillage
printf "load: %s s, batches of %s, %s connections: %.0f events/s acknowledged (durable)\n" "$DUR" "$BATCH" "$CONNS" "$acked"
printf "stage behind the log when the load stopped: %s events (%s ms); caught up %.2f s later\n" "$lag" "$lagms" "$catch"
printf "stage under load, averaged to the catch-up: %.0f events/s\n" "$(echo "$stored / ($DUR + $catch)" | bc -l)"
t0=$(date +%s.%N)
taskset -c $SRV_CPU "$BIN" rebuild -c "$WORK/sillage.json" > "$WORK/rebuild.out" 2>&1
secs=$(echo "$(date +%s.%N) - $t0" | bc -l)
printf "stage alone (sillage rebuild of %s events on one core): %.2f s, %.0f events/s\n" "$stored" "$secs" \
  "$(echo "$stored / $secs" | bc -l)"
log=$(stat -c %s "$WORK/data/data.mdb"); der=$(stat -c %s "$WORK/data/derived/data.mdb")
# pages in use, not the file's high-water mark: mdb_stat -e
used() { mdb_stat -e "$1" | awk '/Number of pages used/ {print $5}'; }
lp=$(used "$WORK/data"); dp=$(used "$WORK/data/derived")
printf "on disk per event: log %.0f B, derived %.0f B, total %.0f B (pages in use x 4096 / %s events; files %s + %s bytes)\n" \
  "$(echo "$lp * 4096 / $stored" | bc -l)" "$(echo "$dp * 4096 / $stored" | bc -l)" \
  "$(echo "($lp + $dp) * 4096 / $stored" | bc -l)" "$stored" "$log" "$der"
# where the derived pages go: pages per database (branch + leaf + overflow)
mdb_stat -a "$WORK/data/derived" | awk '/^Status of/ {db=$3} /Branch pages/ {b=$3} /Leaf pages/ {l=$3}
  /Overflow pages/ {o=$3; if (db != "") printf "  derived %-10s %8d pages\n", db, b + l + o}'
