#!/usr/bin/env bash
# Same-run baseline with sillage-bench: the same visitor stream (same seed)
# goes to nginx (return 204, access log) and to sillage (durable), in turns;
# prints requests/s, events/s and the ratio sillage/nginx.
#
# usage: bench/baseline.sh [SECONDS] [CONNECTIONS] [ROUNDS] [BATCH]
#   BENCH_ARGS="--active 5000" bench/baseline.sh ...   extra sillage-bench options
#   DURABILITY=os bench/baseline.sh ...                  sillage with durability "os"
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONNS="${2:-64}"; ROUNDS="${3:-3}"; BATCH="${4:-1}"
. bench/lib.sh
start_nginx
start_sillage "${DURABILITY:-sync}"
echo "sillage-bench -c $CONNS -d $DUR -b $BATCH, closed loop; servers on CPU $SRV_CPU, load on CPU $GEN_CPU"
printf "%-6s %14s %14s %16s %8s\n" round "nginx req/s" "sillage req/s" "sillage events/s" ratio
for r in $(seq "$ROUNDS"); do
  $GEN "$BENCH" -k bench -c "$CONNS" -d "$DUR" -b "$BATCH" --seed "$r" ${BENCH_ARGS:-} "$NGINX_URL" > "$WORK/out"
  n=$(field reqs)
  $GEN "$BENCH" -k bench -c "$CONNS" -d "$DUR" -b "$BATCH" --seed "$r" ${BENCH_ARGS:-} "$SL_URL" > "$WORK/out"
  s=$(field reqs); e=$(field events)
  grep -q 'unanswered=0 partial=0' "$WORK/out" || grep status "$WORK/out"
  printf "%-6s %14.0f %14.0f %16.0f %8.3f\n" "$r" "$n" "$s" "$e" "$(echo "$s / $n" | bc -l)"
done
grep -E "latency|conn errors" "$WORK/out" | sed 's/^ */sillage, last round: /'
