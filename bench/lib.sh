# Shared by the bench scripts (sourced, from the repository root): starts nginx
# (return 204 + access log) and sillage on loopback, pinned to CPU 0, and
# cleans up on exit. The load generator runs on CPU 1 ($GEN).
BIN="${SILLAGE_BIN:-./build/sillage}"
BENCH="${SILLAGE_BENCH_BIN:-./build/sillage-bench}"
[ -x "$BIN" ] && [ -x "$BENCH" ] || ./scripts/build build >/dev/null
SRV_CPU=0; GEN_CPU=1
if [ "$(nproc)" -lt 2 ]; then GEN_CPU=0; fi
GEN="taskset -c $GEN_CPU"
NGINX_PORT="${NGINX_PORT:-18480}"; SL_PORT="${SL_PORT:-18481}"
NGINX_URL="http://127.0.0.1:$NGINX_PORT"; SL_URL="http://127.0.0.1:$SL_PORT"
WORK=$(mktemp -d /tmp/sl-bench-XXXXXX)
SL_PID=""
ulimit -n 65536 2>/dev/null || true

bench_cleanup() {
  [ -n "$SL_PID" ] && kill "$SL_PID" 2>/dev/null && wait "$SL_PID" 2>/dev/null
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap bench_cleanup EXIT

start_nginx() {
  command -v nginx >/dev/null || { echo "needs nginx (scripts/setup)"; exit 1; }
  cat > "$WORK/nginx.conf" <<NG
worker_processes 1;
worker_rlimit_nofile 65536;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 20000; }
http {
  access_log $WORK/access.log;
  client_body_temp_path $WORK;
  client_max_body_size 8m;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { return 204; }
  }
}
NG
  taskset -c $SRV_CPU nginx -c "$WORK/nginx.conf"
}

# start_sillage [durability] [extra config keys, JSON, each followed by a comma]
# sillage_config FILE [durability] [extra config keys]: the bench's config.
sillage_config() {
  cat > "$1" <<JS
{"listen": "127.0.0.1:$SL_PORT", "data_dir": "$WORK/data", "durability": "${2:-sync}",
 "map_size": "4GB", "sources": [{"name": "bench", "write_key": "bench", "trusted": true}], ${3:-}
 "admin_token": "bench-admin-token", "log_level": "warn",
 "geoip_db": "${GEOIP:-/usr/share/sillage/geo.mmdb}"}
JS
}

start_sillage() {
  sillage_config "$WORK/sillage.json" "${1:-sync}" "${2:-}"
  rm -rf "$WORK/data"
  taskset -c $SRV_CPU "$BIN" serve -c "$WORK/sillage.json" 2> "$WORK/sillage.log" &
  SL_PID=$!
  for _ in $(seq 100); do curl -sf "$SL_URL/healthz" >/dev/null && return 0; sleep 0.05; done
  echo "sillage did not start:"; cat "$WORK/sillage.log"; exit 1
}

stop_sillage() {
  kill -TERM "$SL_PID" && wait "$SL_PID" || true
  SL_PID=""
}

# field NAME: a value from the report sillage-bench printed into $WORK/out
field() {
  case "$1" in
    reqs) awk '/requests/ {gsub(/\(/,"",$4); print $4}' "$WORK/out" ;;
    events) awk '/events .*acknowledged/ {gsub(/\(/,"",$4); print $4}' "$WORK/out" ;;
  esac
}
