#!/usr/bin/env bash
# Resource figures: bytes on disk per stored event after EVENTS events (batches
# of 20), and sillage's resident memory with CONNS idle keep-alive connections.
#
# usage: bench/resources.sh [EVENTS] [CONNS]
#   SL_EXTRA='"computed": {...},' bench/resources.sh ...   extra config keys for the first part (each followed by a comma)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${1:-1000000}"; CONNS="${2:-10000}"
. bench/lib.sh
metric() { curl -s "$SL_URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SL_PID/status"; }

start_sillage sync "${SL_EXTRA:-}"
$GEN "$BENCH" -k bench -c 64 -b 20 -n $((EVENTS / 20)) -d 600 "$SL_URL" > "$WORK/out"
grep -E "events|status" "$WORK/out"
stored=$(metric sillage_events_stored_total)
stop_sillage
# the log (data.mdb) and the derived store (derived/data.mdb), all in
file=$(( $(stat -c %s "$WORK/data/data.mdb") + $(stat -c %s "$WORK/data/derived/data.mdb") ))
psize=$(mdb_stat -e "$WORK/data" | awk '/Page size/ {print $3}')
used=$(( $(mdb_stat -e "$WORK/data" | awk '/Number of pages used/ {print $5}') + \
         $(mdb_stat -e "$WORK/data/derived" | awk '/Number of pages used/ {print $5}') ))
printf "stored %d events: data.mdb + derived/data.mdb %d bytes, %d pages of %d in use\n" "$stored" "$file" "$used" "$psize"
printf "bytes per event on disk: %.0f (pages in use), %.0f (file size)\n" \
  "$(echo "$used * $psize / $stored" | bc -l)" "$(echo "$file / $stored" | bc -l)"
printf "log %d pages, derived %d pages\n" "$(mdb_stat -e "$WORK/data" | awk '/Number of pages used/ {print $5}')" "$(mdb_stat -e "$WORK/data/derived" | awk '/Number of pages used/ {print $5}')"
for env in "$WORK/data" "$WORK/data/derived"; do
  mdb_stat -a "$env" | awk '/^Status of/ {db=$3} /Leaf pages/ {print "  " db ": " $3 " leaf pages"} /Overflow pages/ {print "  " db ": " $3 " overflow pages"}'
done

# every idle connection comes from one address: past the per-address cap
start_sillage sync '"limits": {"max_connections_per_ip": 20000},'
before=$(rss_kb)
$GEN "$BENCH" --idle "$CONNS" -d 60 "$SL_URL" > "$WORK/idle.out" 2>&1 &
BPID=$!
for _ in $(seq 600); do grep -q "idle ready" "$WORK/idle.out" && break; sleep 0.1; done
cat "$WORK/idle.out"
open=$(metric sillage_connections)
after=$(rss_kb)
kill -INT $BPID 2>/dev/null; wait $BPID 2>/dev/null || true
printf "RSS: %d kB at start, %d kB with %d open connections (%.1f MB, %.0f bytes per connection)\n" \
  "$before" "$after" "$open" "$(echo "$after / 1024" | bc -l)" "$(echo "($after - $before) * 1024 / $open" | bc -l)"
