#!/usr/bin/env bash
# Same-run baseline with wrk: nginx (return 204, access log on) and sillage
# (durability sync) get the same wrk request stream (bench/track.lua, a
# ~600-byte track message with a fresh messageId each), in turns; prints
# requests/s for each and the ratio sillage/nginx.
#
# usage: bench/wrk-vs-nginx.sh [DURATION_S] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONNS="${2:-64}"; ROUNDS="${3:-3}"
command -v wrk >/dev/null || { echo "needs wrk (scripts/setup)"; exit 1; }
. bench/lib.sh
start_nginx
start_sillage sync

run_wrk() { # url -> requests/s
  $GEN wrk -t1 -c"$CONNS" -d"${DUR}s" -s bench/track.lua "$1" > "$WORK/wrk.out" 2>&1
  local non2xx; non2xx=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$WORK/wrk.out" | grep -o '[0-9]*$' || true)
  [ -z "$non2xx" ] || echo "  warning: $non2xx non-2xx answers from $1" >&2
  grep '^Requests/sec' "$WORK/wrk.out" | awk '{print $2}'
}

echo "wrk -t1 -c$CONNS -d${DUR}s, POST ~600-byte track, server on CPU $SRV_CPU, wrk on CPU $GEN_CPU"
printf "%-6s %14s %14s %8s\n" round "nginx req/s" "sillage req/s" ratio
for r in $(seq "$ROUNDS"); do
  n=$(run_wrk "$NGINX_URL/v1/track")
  s=$(run_wrk "$SL_URL/v1/track")
  printf "%-6s %14.0f %14.0f %8.3f\n" "$r" "$n" "$s" "$(echo "$s / $n" | bc -l)"
done
stored=$(curl -s "$SL_URL/metrics" | awk '/^sillage_events_stored_total/{print $2}')
commits=$(curl -s "$SL_URL/metrics" | awk '/^sillage_commits_total/{print $2}')
echo "sillage stored $stored events in $commits commits ($(echo "$stored / $commits" | bc) per commit on average)"
grep -E "Latency" "$WORK/wrk.out" | head -1 || true
