#!/usr/bin/env bash
# tests/fuzz/run.sh BUILD_DIR [SECONDS] - runs every libFuzzer target for
# SECONDS (default 10) under ASan+UBSan: seeds from tests/fuzz/corpus/<t>/,
# earlier crashers from tests/fuzz/regressions/<t>/ (replayed first), a
# dictionary where there is one. New inputs go to a scratch corpus; a crash
# leaves its input in BUILD_DIR/fuzz-artifacts/ and fails the run (copy it to
# regressions/<t>/ once fixed). The long run: tests/fuzz/run.sh build-fuzz 600
set -euo pipefail
B="$1"; S="${2:-10}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$B/fuzz-artifacts"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
for t in http message ack pixel config gunzip cond jread; do
  work=$(mktemp -d /tmp/sl-fuzz-corpus-XXXXXX)
  dict=()
  case $t in http) dict=(-dict="$HERE/http.dict") ;; message|ack|config|jread) dict=(-dict="$HERE/json.dict") ;;
    cond) dict=(-dict="$HERE/cond.dict") ;; esac
  echo "== fuzz_$t for ${S}s"
  if ! "$B/fuzz_$t" -max_total_time="$S" -timeout=10 -rss_limit_mb=2048 -max_len=65536 "${dict[@]}" \
       -artifact_prefix="$B/fuzz-artifacts/$t-" "$work" "$HERE/corpus/$t" "$HERE/regressions/$t" \
       > "$B/fuzz-artifacts/$t.log" 2>&1; then
    tail -40 "$B/fuzz-artifacts/$t.log"
    rm -rf "$work"
    echo "FAIL: fuzz_$t (input in $B/fuzz-artifacts/)"
    exit 1
  fi
  grep -E "^#[0-9]+ *DONE" "$B/fuzz-artifacts/$t.log" | tail -1 || true
  rm -rf "$work"
done
echo "fuzz: ok"
