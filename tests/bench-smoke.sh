#!/usr/bin/env bash
# Smoke run of sillage-bench so the tool cannot rot: a few seconds against the
# real server, single events, batches and open loop, every acknowledged id
# checked against `sillage export`; then the check mode must catch a missing
# and a duplicated id. The identify-latency and trigger-latency modes run once, small.
# usage: tests/bench-smoke.sh SILLAGE SILLAGE_BENCH
set -euo pipefail
SL="$1"; BENCH="$2"
W=$(mktemp -d /tmp/sl-bench-smoke-XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cat > "$W/sillage.json" <<JS
{"listen": "127.0.0.1:0", "data_dir": "$W/data", "sources": [{"name": "demo", "write_key": "demo"}],
 "admin_token": "smoke-admin-token-0123", "triggers": [{"name": "bench", "type": "page_visit", "url": "/bench-trigger/*"}]}
JS
"$SL" serve -c "$W/sillage.json" 2> "$W/log" &
PID=$!
PORT=""
for _ in $(seq 100); do
  PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$W/log" | grep -o '[0-9]*$' || true)
  [ -n "$PORT" ] && break; sleep 0.05
done
[ -n "$PORT" ] || fail "sillage did not start: $(cat "$W/log")"
URL="http://127.0.0.1:$PORT"

"$BENCH" -c 4 -d 1 --visitors 500 --record "$W/acked" --csv "$W/r.csv" --label single "$URL" | tee "$W/out1"
grep -q "unanswered=0 partial=0" "$W/out1" || fail "single-event run had failures"
"$BENCH" -c 4 -d 1 -b 20 --record "$W/acked" --csv "$W/r.csv" --label batch "$URL" | tee "$W/out2"
grep -q "unanswered=0 partial=0" "$W/out2" || fail "batch run had failures"
"$BENCH" -c 4 -d 1 -r 200 --record "$W/acked" --csv "$W/r.csv" --label open "$URL" | tee "$W/out3"
grep -q "offered rate  200 req/s" "$W/out3" || fail "open loop not reported"
n=$(grep -o 'requests *[0-9]*' "$W/out3" | grep -o '[0-9]*$')
[ "$n" -ge 150 ] && [ "$n" -le 260 ] || fail "open loop at 200 req/s for 1 s sent $n requests"
[ "$(wc -l < "$W/r.csv")" -eq 4 ] || fail "CSV should hold a header and 3 rows"
"$BENCH" -c 2 -d 1 -k wrong-key "$URL" > "$W/out4" && fail "a run with nothing acknowledged must fail"
grep -q "401=" "$W/out4" || fail "401 answers not counted"

"$BENCH" identify --samples 2 --sizes 10,500 "$URL" | tee "$W/out5"
grep -q "ratio largest/smallest history" "$W/out5" || fail "identify mode gave no ratio"
[ "$(grep -cE '^ +(10|500) ' "$W/out5")" -eq 2 ] || fail "identify mode: one row per size expected"

"$BENCH" triggers --admin smoke-admin-token-0123 -n 50 "$URL" | tee "$W/out6"
grep -q "50 triggers, ack -> readable in the feed: p50" "$W/out6" || fail "triggers mode gave no latencies"
"$BENCH" triggers --admin wrong -n 5 "$URL" > /dev/null 2>&1 && fail "triggers mode must fail without the admin token"

kill -TERM "$PID"; wait "$PID"; PID=""
"$SL" export --data "$W/data" > "$W/export"
"$BENCH" check "$W/acked" "$W/export" | tee "$W/check"
grep -q "missing 0, duplicated 0" "$W/check" || fail "acknowledged ids missing from the export"
acked=$(wc -l < "$W/acked")
[ "$acked" -gt 100 ] || fail "only $acked ids acknowledged"

# The check itself must fail when an id is missing or duplicated.
echo "never-stored-id" >> "$W/acked"
head -1 "$W/export" >> "$W/export"
if "$BENCH" check "$W/acked" "$W/export" > "$W/check2"; then fail "check passed with a missing id"; fi
grep -q "missing 1, duplicated 1" "$W/check2" || fail "check did not count: $(cat "$W/check2")"
grep -q "missing: never-stored-id" "$W/check2" || fail "check did not name the missing id"
echo "bench smoke: ok ($acked ids acknowledged and found)"
