#!/usr/bin/env bash
# bench/identify.sh [SAMPLES] [SIZES] - identify latency against the length of
# the anonymous history it merges (issue 4). Starts a durable sillage on
# loopback (CPU 0), then `sillage-bench identify` (CPU 1): per sample and size,
# a user known on one device, a second device with SIZES page views, then the
# timed identify that merges them. Prints the table and the ratio of the
# largest history to the smallest.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES="${1:-5}"; SIZES="${2:-10,1000,10000,100000}"
. bench/lib.sh
start_sillage sync
$GEN "$BENCH" identify -k bench --samples "$SAMPLES" --sizes "$SIZES" "$SL_URL"
