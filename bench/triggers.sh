#!/usr/bin/env bash
# bench/triggers.sh [N] [RATE] - trigger latency: a hit acknowledged -> its
# trigger readable in the feed (long poll), N samples. First on an idle
# server, then beside open-loop visitor traffic at RATE requests/s (single
# events, 64 connections). Durable sillage on CPU 0; both clients on CPU 1.
# The server runs the demo rules plus a page_visit rule on /bench-trigger/*.
#   EXTRA_RULES="$(cat bench/stage-rules/event-rules5.txt)" bench/triggers.sh ...
#     more rule objects (comma-separated) in the same array: issue 22's five event rules
#   SL_EXTRA='"limits": {...},' bench/triggers.sh ...  other config keys (each followed by a comma)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2000}"; RATE="${2:-5000}"
. bench/lib.sh
start_sillage sync '"triggers": [{"name": "cart", "type": "abandoned_cart", "delay": "1h"},
  {"name": "pricing", "type": "page_visit", "url": "/pricing*", "min_count": 2, "within": "7d"},
  {"name": "bench", "type": "page_visit", "url": "/bench-trigger/*"}'"${EXTRA_RULES:+,$EXTRA_RULES}"'],'" ${SL_EXTRA:-}"
ADMIN=(--admin bench-admin-token -k bench)
$GEN "$BENCH" triggers "${ADMIN[@]}" -n "$N" --label idle "$SL_URL"
# Loaded: the visitor model for long enough to cover the samples.
$GEN "$BENCH" -k bench -c 64 -r "$RATE" -d 60 "$SL_URL" > "$WORK/load.out" &
LOAD=$!
sleep 1
$GEN "$BENCH" triggers "${ADMIN[@]}" -n "$N" --label "under ${RATE} req/s" "$SL_URL"
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
grep -E "requests|latency" "$WORK/load.out" | head -4 || true
