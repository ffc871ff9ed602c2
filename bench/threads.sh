#!/usr/bin/env bash
# Where the CPU goes, by thread: a closed-loop run of SECONDS (batches of
# BATCH, 64 connections), then the wait until the stage has caught up, then
# each thread's CPU time (utime + stime from /proc) divided by the events
# stored: µs per event for the loop (sillage), the log's writer (sl-writer)
# and the stage (sl-stage). Durable sillage on CPU 0, load on CPU 1.
# Beside it, each thread's context switches during the run and the catch-up
# (/proc/<pid>/task/<tid>/status), per 1,000 events: voluntary (it slept:
# a condition variable, epoll, fsync) and involuntary (preempted).
#
# usage: bench/threads.sh [SECONDS] [BATCH]
#   SL_EXTRA='"triggers": [...],' bench/threads.sh ...  extra config keys (each followed by a comma)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-6}"; BATCH="${2:-1}"
. bench/lib.sh
start_sillage sync "${SL_EXTRA:-}"
# switches so far, by thread id (threads started later count from 0)
declare -A vol0 inv0
switches() { sed -n "s/^$2:[[:space:]]*//p" "$1/status"; }
for t in /proc/"$SL_PID"/task/*; do
  vol0[${t##*/}]=$(switches "$t" voluntary_ctxt_switches)
  inv0[${t##*/}]=$(switches "$t" nonvoluntary_ctxt_switches)
done
$GEN "$BENCH" -k bench -c 64 -d "$DUR" -b "$BATCH" "$SL_URL" > "$WORK/out"
for _ in $(seq 600); do
  [ "$(curl -s "$SL_URL/healthz" | sed -n 's/.*"lag_events":\([0-9]*\).*/\1/p')" = "0" ] && break
  sleep 0.1
done
events=$(curl -s "$SL_URL/healthz" | sed -n 's/.*"last_seq":\([0-9]*\).*/\1/p')
tck=$(getconf CLK_TCK)
printf "batches of %s, %s s closed loop: %s events stored; CPU per event and context switches per 1,000 events by thread:\n" \
  "$BATCH" "$DUR" "$events"
printf "  %-12s %8s %10s %10s\n" thread "CPU" voluntary involuntary
for t in /proc/"$SL_PID"/task/*; do
  name=$(cat "$t/comm")
  read -r -a f < <(sed 's/^.*) //' "$t/stat")
  ticks=$(( f[11] + f[12] ))
  vol=$(( $(switches "$t" voluntary_ctxt_switches) - ${vol0[${t##*/}]:-0} ))
  inv=$(( $(switches "$t" nonvoluntary_ctxt_switches) - ${inv0[${t##*/}]:-0} ))
  [ "$ticks" -gt 0 ] || [ $((vol + inv)) -gt 0 ] || continue
  printf "  %-12s %6.1f µs %10.1f %10.1f\n" "$name" "$(echo "$ticks * 1000000 / $tck / $events" | bc -l)" \
    "$(echo "$vol * 1000 / $events" | bc -l)" "$(echo "$inv * 1000 / $events" | bc -l)"
done
metric() { curl -s "$SL_URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
commits=$(metric sillage_commits_total); txns=$(metric sillage_stage_commits_total)
printf "  log commits %s (%.1f events each), stage transactions %s\n" "$commits" \
  "$(echo "$events / $commits" | bc -l)" "$txns"
