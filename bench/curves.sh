#!/usr/bin/env bash
# Curves: throughput against connections (closed loop, sillage and nginx), then
# latency percentiles against offered load (open loop at 10 %..100 % of the
# best closed-loop sillage rate, with the connection count that reached
# it). Writes CSV and PNG (gnuplot) to OUTDIR.
#
# usage: bench/curves.sh [BATCH] [SECONDS] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${1:-1}"; DUR="${2:-5}"; OUT="${3:-bench/results}"
. bench/lib.sh
mkdir -p "$OUT"
TP="$OUT/throughput-b$BATCH.csv"; LAT="$OUT/latency-b$BATCH.csv"
rm -f "$TP" "$LAT"
start_nginx
start_sillage sync

best=0; best_c=64
for c in 1 2 4 8 16 32 64 128 256; do
  $GEN "$BENCH" -k bench -c "$c" -d "$DUR" -b "$BATCH" --label nginx --csv "$TP" "$NGINX_URL" > "$WORK/out"
  $GEN "$BENCH" -k bench -c "$c" -d "$DUR" -b "$BATCH" --label sillage --csv "$TP" "$SL_URL" > "$WORK/out"
  r=$(field reqs)
  echo "connections $c: sillage $r req/s"
  if [ "$(echo "$r > $best" | bc)" = 1 ]; then best=$r; best_c=$c; fi
done
echo "best closed-loop sillage rate: $best req/s with $best_c connections"
for pct in 10 20 30 40 50 60 70 80 90 100; do
  rate=$(echo "$best * $pct / 100" | bc -l)
  $GEN "$BENCH" -k bench -c "$best_c" -d "$DUR" -b "$BATCH" -r "$rate" --label "sillage-$pct%" --csv "$LAT" "$SL_URL" > "$WORK/out"
  echo "$pct% ($(printf %.0f "$rate") req/s): $(grep latency "$WORK/out" | sed 's/^ *//')"
done

if command -v gnuplot >/dev/null; then
  unit="requests/s"; [ "$BATCH" -gt 1 ] && unit="requests/s (batches of $BATCH)"
  gnuplot <<GP
set datafile separator ","
set terminal pngcairo size 900,540 noenhanced
set key top left
set grid
set output "$OUT/throughput-b$BATCH.png"
set title "Closed loop: throughput against connections, batch $BATCH"
set xlabel "connections"; set ylabel "$unit"; set logscale x 2
plot "< grep '^nginx,' $TP" using 3:8 with linespoints title "nginx return 204 + access log", \
     "< grep '^sillage,' $TP" using 3:8 with linespoints title "sillage, durable"
unset logscale x
set output "$OUT/latency-b$BATCH.png"
set title "Open loop, $best_c connections: latency against offered load, batch $BATCH"
set xlabel "offered load, requests/s"; set ylabel "latency, microseconds"; set logscale y
plot "$LAT" using 4:12 with linespoints title "p50", "$LAT" using 4:13 with linespoints title "p90", \
     "$LAT" using 4:14 with linespoints title "p99", "$LAT" using 4:15 with linespoints title "p99.9"
GP
  echo "wrote $OUT/throughput-b$BATCH.png $OUT/latency-b$BATCH.png"
fi
