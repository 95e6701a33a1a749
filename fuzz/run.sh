#!/usr/bin/env bash
# Builds every fuzz target in one `cargo fuzz build`, then runs each for a bounded time.
#
#   fuzz/run.sh [SECONDS] [TARGET...]    (defaults: 30 s; every target)
#
# Works on the pinned stable toolchain: cargo fuzz's nightly-only flag (-Zsanitizer=address) is
# allowed by RUSTC_BOOTSTRAP=1; libFuzzer's coverage instrumentation flags are stable. Each run
# starts from the committed seeds (fuzz/corpus/<target>/, never written to) and grows
# fuzz/work/<target>/ (ignored by git). A crash leaves its input in fuzz/artifacts/<target>/ and
# makes this script fail. Final libFuzzer stats go to fuzz/work/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1
# One set of build flags for build and run, so `run` never rebuilds: ASan, release with debug
# assertions and overflow checks (cargo fuzz's defaults, spelled out).
# FUZZ_PROFILE=dev (what CI sets) builds without optimizations instead: a cold release build
# of the node's dependency tree (webrtc, wasmtime) costs CI far more than its short runs gain.
if [ "${FUZZ_PROFILE:-release}" = dev ]; then
  flags=(--sanitizer address --dev)
else
  flags=(--sanitizer address --release --debug-assertions)
fi

# Longest input per target: each target's useful inputs are small, and short inputs keep
# execs/s high. signal's small line limit is 512 bytes; names go up to PATH_MAX (4096).
max_len() {
  case "$1" in
    journal) echo 16384 ;;
    names) echo 8192 ;;
    *) echo 8192 ;;
  esac
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build "${flags[@]}"

passed=0
for target in "${targets[@]}"; do
  mkdir -p "work/$target"
  echo "--- fuzz $target for ${seconds}s"
  # -rss_limit_mb: every target's memory is bounded far below this; -timeout: a single input
  # taking 10 s is a hang. libFuzzer exits non-zero on a crash, leak, OOM or timeout.
  if ! cargo fuzz run "${flags[@]}" "$target" "work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len="$(max_len "$target")" -rss_limit_mb=2048 \
      -timeout=10 -print_final_stats=1 >"work/$target.log" 2>&1; then
    tail -n 60 "work/$target.log"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    echo "fuzz: $passed passed, 1 failed"
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::)' "work/$target.log" || tail -n 3 "work/$target.log"
  passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
