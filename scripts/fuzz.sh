#!/usr/bin/env bash
# Fuzzes stampede's untrusted-input decoders with cargo-fuzz (libFuzzer), each for a while:
#   profile    profile JSON plus --set overrides, as `stampede profile check` parses them
#   wire       length-prefixed frames and messages from a peer, reports decoded to intervals
#   histogram  HdrHistogram V2(-deflate) bytes as the coordinator decodes and merges them
# Prints each target's executions and crashes; a crash's input is left in
# fuzz/artifacts/TARGET/ (replay it with `cargo +nightly fuzz run TARGET FILE`).
#
# Usage: scripts/fuzz.sh [SECONDS per target, default 60] [TARGET ...]
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(profile wire histogram)

rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || { echo "scripts/fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 2; }
cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
cargo +nightly fuzz build -O

total_runs=0
total_crashes=0
printf '%-10s %8s %14s %8s\n' target seconds executions crashes
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  log=fuzz/artifacts/$target.log
  before=$(find "fuzz/artifacts/$target" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
  # libFuzzer stops at the first crash; its exit status says so, and the log keeps the trace.
  # No decoder here has any business asking for 512 MiB at once: that is a finding too.
  cargo +nightly fuzz run -O "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || true
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  runs=${runs:-$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')}
  runs=${runs:-0}
  after=$(find "fuzz/artifacts/$target" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
  crashes=$((after - before))
  printf '%-10s %8s %14s %8s\n' "$target" "$seconds" "$runs" "$crashes"
  if ((crashes)); then
    grep -m1 -A3 -E 'panicked|ERROR: libFuzzer' "$log" | sed 's/^/    /' || true
  fi
  total_runs=$((total_runs + runs))
  total_crashes=$((total_crashes + crashes))
done
printf '%-10s %8s %14s %8s\n' total "" "$total_runs" "$total_crashes"
((total_crashes == 0))
