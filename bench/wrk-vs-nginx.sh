#!/usr/bin/env bash
# Same-run baseline: drives nginx (return 204, access log on) and sillage
# (durability sync) with the same wrk request stream, in turns, and prints
# requests/s for each and the ratio sillage/nginx.
#
# usage: bench/wrk-vs-nginx.sh [DURATION_S] [CONNECTIONS] [ROUNDS]
# Server pinned to CPU 0, wrk to CPU 1 (when there are two).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"
CONNS="${2:-64}"
ROUNDS="${3:-3}"
BIN="${SILLAGE_BIN:-./build/sillage}"
[ -x "$BIN" ] || ./scripts/build build >/dev/null
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (scripts/setup)"; exit 1; }

WORK=$(mktemp -d /tmp/sl-bench-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT
SRV_CPU=0; GEN_CPU=1
if [ "$(nproc)" -lt 2 ]; then GEN_CPU=0; fi
NGINX_PORT=18480; SL_PORT=18481

cat > "$WORK/nginx.conf" <<NG
worker_processes 1;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log $WORK/access.log;
  client_body_temp_path $WORK;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { return 204; }
  }
}
NG
taskset -c $SRV_CPU nginx -c "$WORK/nginx.conf"

cat > "$WORK/sillage.json" <<JS
{"listen": "127.0.0.1:$SL_PORT", "data_dir": "$WORK/data", "durability": "sync",
 "map_size": "4GB", "sources": [{"name": "bench", "write_key": "bench"}],
 "admin_token": "bench-admin", "log_level": "warn",
 "geoip_db": "${GEOIP:-/usr/share/sillage/geo.mmdb}"}
JS
taskset -c $SRV_CPU "$BIN" serve -c "$WORK/sillage.json" 2> "$WORK/sillage.log" &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$SL_PORT/healthz" >/dev/null && break; sleep 0.1; done

run_wrk() { # url -> requests/s
  taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d"${DUR}s" -s bench/track.lua "$1" > "$WORK/wrk.out" 2>&1
  local non2xx; non2xx=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$WORK/wrk.out" | grep -o '[0-9]*$' || true)
  [ -z "$non2xx" ] || echo "  warning: $non2xx non-2xx answers from $1" >&2
  grep '^Requests/sec' "$WORK/wrk.out" | awk '{print $2}'
}

echo "wrk -t1 -c$CONNS -d${DUR}s, POST ~600-byte track, server on CPU $SRV_CPU, wrk on CPU $GEN_CPU"
printf "%-6s %14s %14s %8s\n" round "nginx req/s" "sillage req/s" ratio
for r in $(seq "$ROUNDS"); do
  n=$(run_wrk "http://127.0.0.1:$NGINX_PORT/v1/track")
  s=$(run_wrk "http://127.0.0.1:$SL_PORT/v1/track")
  printf "%-6s %14.0f %14.0f %8.3f\n" "$r" "$n" "$s" "$(echo "$s / $n" | bc -l)"
done
stored=$(curl -s "http://127.0.0.1:$SL_PORT/metrics" | awk '/^sillage_events_stored_total/{print $2}')
commits=$(curl -s "http://127.0.0.1:$SL_PORT/metrics" | awk '/^sillage_commits_total/{print $2}')
echo "sillage stored $stored events in $commits commits ($(echo "$stored / $commits" | bc) per commit on average)"
grep -E "lat|Latency" "$WORK/wrk.out" | head -2 || true
