#!/usr/bin/env bash
# The deploy scenarios side by side: each shipped storm/drain profile played once against the
# embedded sink, in this invocation, and the figures README's "Deploy scenarios" table shows.
# Compare the rows of one invocation with each other (loopback rates vary between machines).
#
# Usage: scripts/bench/scenarios.sh [PROFILE...]
#        (default: bluegreen-storm gradual-drain backoff-jitter; names are files in profiles/)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=target/release/stampede
names=("$@")
((${#names[@]})) || names=(bluegreen-storm gradual-drain backoff-jitter)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "scenarios.sh: $(nproc) cores, Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg);" \
  "stampede built from $(git rev-parse --short HEAD)$([[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] &&
  echo ' with uncommitted changes')" >&2
printf '%-18s %8s %12s %10s %11s %16s %9s %7s\n' \
  profile outcome peak_conn/s "99%_back" "100%_back" "connect_p99_ms" recovered reconn
for name in "${names[@]}"; do
  out="$work/$name"
  rc=0
  "$bin" run "profiles/$name.json" --headless --quiet --out "$out" > /dev/null 2> "$work/$name.err" || rc=$?
  if [[ ! -f $out/summary.json ]]; then
    echo "scenarios.sh: $name wrote no summary (exit $rc):" >&2
    cat "$work/$name.err" >&2
    exit 1
  fi
  # The first disruptive phase is the one each profile exists to show.
  python3 - "$out/summary.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
phase = next(p for p in s["phases"] if p.get("recovered_ratio") is not None)
def secs(v):
    return "never" if v is None else f"{v:.2f}s"
p99 = phase.get("connect_p99_us")
print(f"{sys.argv[2]:<18} {s['outcome']:>8} {phase['peak_connects_per_s']:>12} "
      f"{secs(phase['recovery_99_s']):>10} {secs(phase['recovery_100_s']):>11} "
      f"{'-' if p99 is None else f'{p99 / 1000:.2f}':>16} {phase['recovered_ratio']:>9.4f} "
      f"{phase['reconnects']:>7}")
PY
done
