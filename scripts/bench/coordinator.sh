#!/usr/bin/env bash
# The coordinator's own cost: one coordinator fed by 10, 100 and 1,000 agents reporting every
# second. The agents are synthetic reporters (`stampede agent --synthetic N`): real sessions,
# handshakes and V2-deflate histograms of realistic shape, but no load sockets. Prints the
# coordinator's CPU (% of one core) over the steady part of the hold, and its peak RSS.
#
# Usage: scripts/bench/coordinator.sh [AGENTS...]   (default: 10 100 1000)
# STAMPEDE_BIN=PATH measures that binary instead of building this tree (before/after runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -n ${STAMPEDE_BIN:-} ]]; then
  bin=$STAMPEDE_BIN
else
  cargo build --release --quiet
  bin=target/release/stampede
fi
counts=("$@")
((${#counts[@]})) || counts=(10 100 1000)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n ${KEEP_WORK:-} ]] || rm -rf "$work"; }
trap cleanup EXIT
hz=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "coordinator.sh: $(nproc) cores, Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg);" \
  "stampede built from $(git rev-parse --short HEAD)$([[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] &&
  echo ' with uncommitted changes'), binary sha256 $(sha256sum "$bin" | cut -c1-16)" >&2
# reports/s is the rate the agents are built to send (one per agent per second), not a count;
# "established" (summed from the merged reports) shows that every agent's reports arrived.
printf '%8s %12s %14s %12s %10s\n' agents "cpu_%_core" "peak_rss_MiB" "reports/s" established
for n in "${counts[@]}"; do
  cat > "$work/p.json" <<JSON
{"name": "coordinator-bench", "target": {"addrs": ["127.0.0.1:9"]},
 "connections": $((n * 1000)), "heartbeat": {"interval": "30s"},
 "phases": [{"ramp": {"rate": $((n * 1000))}}, {"hold": {"for": "20s"}}]}
JSON
  "$bin" coordinator "$work/p.json" --listen 127.0.0.1:0 --agents "$n" --join-timeout 60s \
    --headless --quiet --out "$work/out-$n" 2> "$work/coord-$n.err" > /dev/null &
  coord=$!
  pids+=("$coord")
  addr=
  for _ in $(seq 200); do
    addr=$(grep -o 'listening on [0-9.:]*' "$work/coord-$n.err" | awk '{print $3}' | tr -d ',' || true)
    [[ -n $addr ]] && break
    sleep 0.05
  done
  [[ -n $addr ]] || { echo "coordinator did not start" >&2; cat "$work/coord-$n.err" >&2; exit 1; }
  # In batches of at most 100, each once the last has joined: the coordinator takes 128
  # handshakes at a time and drops the rest, and synthetic agents do not dial again.
  joined=0
  while ((joined < n)); do
    batch=$((n - joined < 100 ? n - joined : 100))
    "$bin" agent --synthetic "$batch" --coordinator "$addr" --name "syn$joined" --quiet 2>> "$work/agents-$n.err" &
    pids+=("$!")
    joined=$((joined + batch))
    for _ in $(seq 600); do
      [[ $(grep -c "joined from" "$work/coord-$n.err" 2>/dev/null) -ge $joined ]] && break
      sleep 0.05
    done
  done
  # Then measure 10 s of steady state.
  sleep 4
  t0=$(cpu_ticks "$coord"); s0=$(date +%s.%N)
  sleep 10
  t1=$(cpu_ticks "$coord"); s1=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$coord/status")
  wait "$coord" || true
  cpu=$(echo "($t1 - $t0) / $hz / ($s1 - $s0) * 100" | bc -l)
  est=$(python3 -c "import json;print(json.load(open('$work/out-$n/summary.json'))['connections']['established'])")
  printf '%8d %12.1f %14.1f %12d %10s\n' "$n" "$cpu" "$(echo "$hwm / 1024" | bc -l)" "$n" "$est"
done
