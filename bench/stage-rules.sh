#!/usr/bin/env bash
# The stage alone with different rule sets, on ONE log: sillage (durable,
# CPU 0) takes SECONDS of sillage-bench batches (BATCH, 64 connections, load
# on CPU 1) with the rules of the first file, stops, and the data directory is
# kept. Then, ROUNDS times, for each rule file in turn: the directory is put
# back as it was, and `sillage rebuild` derives the whole log again with those
# rules on one core (the feed the live run wrote is carried over each time,
# the same for every rule set). A/B in one sitting, alternating.
#
# usage: bench/stage-rules.sh SECONDS BATCH ROUNDS FILE...
#   NO_FEED=1 bench/stage-rules.sh ...   each rebuild without the old derived store (no feed to carry over)
#   BINS="build/sillage /old/build/sillage" bench/stage-rules.sh ...   rebuild with each binary too (A/B;
#     with NO_FEED when their derived layouts differ)
#   KEEP_DATA=/tmp/stage-data bench/stage-rules.sh ...   keep a copy of the log (to profile a rebuild of it)
#   bench/stage-rules.sh 8 20 3 bench/stage-rules/events5.txt bench/stage-rules/demo.txt
# (each FILE holds extra config keys, each followed by a comma, as bench/stage.sh's SL_EXTRA)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-8}"; BATCH="${2:-20}"; ROUNDS="${3:-3}"; shift 3
[ "$#" -ge 1 ] || { echo "usage: bench/stage-rules.sh SECONDS BATCH ROUNDS FILE..."; exit 2; }
. bench/lib.sh
start_sillage sync "$(cat "$1")"
$GEN "$BENCH" -k bench -c 64 -d "$DUR" -b "$BATCH" --seed 1 "$SL_URL" > "$WORK/out"
for _ in $(seq 1200); do
  [ "$(curl -s "$SL_URL/healthz" | sed -n 's/.*"lag_events":\([0-9]*\).*/\1/p')" = "0" ] && break
  sleep 0.05
done
stored=$(curl -s "$SL_URL/healthz" | sed -n 's/.*"last_seq":\([0-9]*\).*/\1/p')
kill "$SL_PID"; wait "$SL_PID" 2>/dev/null || true; SL_PID=""
cp -a "$WORK/data" "$WORK/data.orig"
[ -n "${KEEP_DATA:-}" ] && { rm -rf "$KEEP_DATA"; cp -a "$WORK/data" "$KEEP_DATA"; }
feed=$(mdb_stat -s feed "$WORK/data/derived" | awk '/Entries:/ {print $2}')
printf "one log of %s events (rules of %s live), a feed of %s entries carried over by each rebuild\n" \
  "$stored" "$(basename "$1")" "$feed"
for r in $(seq "$ROUNDS"); do
  for b in ${BINS:-$BIN}; do
  for f in "$@"; do
    rm -rf "$WORK/data"; cp -a "$WORK/data.orig" "$WORK/data"
    [ -n "${NO_FEED:-}" ] && rm -rf "$WORK/data/derived"
    sillage_config "$WORK/rules.json" sync "$(cat "$f")"
    t0=$(date +%s.%N)
    taskset -c $SRV_CPU "$b" rebuild -c "$WORK/rules.json" > "$WORK/rebuild.out" 2>&1 || { cat "$WORK/rebuild.out"; exit 1; }
    secs=$(echo "$(date +%s.%N) - $t0" | bc -l)
    printf "round %s  %-24s %-16s %.2f s  %.0f events/s\n" "$r" "$b" "$(basename "$f")" "$secs" "$(echo "$stored / $secs" | bc -l)"
  done
  done
done
