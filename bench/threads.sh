#!/usr/bin/env bash
# Where the CPU goes, by thread: a closed-loop run of SECONDS (batches of
# BATCH, 64 connections), then the wait until the stage has caught up, then
# each thread's CPU time (utime + stime from /proc) divided by the events
# stored: µs per event for the loop (sillage), the log's writer (sl-writer)
# and the stage (sl-stage). Durable sillage on CPU 0, load on CPU 1.
#
# usage: bench/threads.sh [SECONDS] [BATCH]
#   SL_EXTRA='"triggers": [...],' bench/threads.sh ...  extra config keys (each followed by a comma)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-6}"; BATCH="${2:-1}"
. bench/lib.sh
start_sillage sync "${SL_EXTRA:-}"
$GEN "$BENCH" -k bench -c 64 -d "$DUR" -b "$BATCH" "$SL_URL" > "$WORK/out"
for _ in $(seq 600); do
  [ "$(curl -s "$SL_URL/healthz" | sed -n 's/.*"lag_events":\([0-9]*\).*/\1/p')" = "0" ] && break
  sleep 0.1
done
events=$(curl -s "$SL_URL/healthz" | sed -n 's/.*"last_seq":\([0-9]*\).*/\1/p')
tck=$(getconf CLK_TCK)
printf "batches of %s, %s s closed loop: %s events stored; CPU per event by thread:\n" "$BATCH" "$DUR" "$events"
for t in /proc/"$SL_PID"/task/*; do
  name=$(cat "$t/comm")
  read -r -a f < <(sed 's/^.*) //' "$t/stat")
  ticks=$(( f[11] + f[12] ))
  [ "$ticks" -gt 0 ] && printf "  %-12s %8.1f µs\n" "$name" "$(echo "$ticks * 1000000 / $tck / $events" | bc -l)"
done
