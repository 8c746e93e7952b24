#!/usr/bin/env bash
# Starts a sink (or two) and `stampede nlb` on fixed loopback ports, runs one of the NLB
# profiles through them, prints what the emulator counted, and stops what it started.
#
# Usage:
#   scripts/nlb-demo.sh port-allocation [off|on|two-targets] [--out DIR]
#   scripts/nlb-demo.sh idle-timeout    [slow|fast]          [--out DIR]
#
# Ports (below the ephemeral range): sinks 127.0.0.1:7000 and :7001, emulator 127.0.0.1:7100,
# its admin endpoint 127.0.0.1:7101 (as the profiles name them). STAMPEDE=path overrides the
# binary (default target/release/stampede, built if missing).
set -euo pipefail

scenario=${1:-}
variant=${2:-}
shift 2 || true
out=
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    *) echo "nlb-demo: unknown option $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${STAMPEDE:-$root/target/release/stampede}
if [[ ! -x $bin ]]; then
  (cd "$root" && cargo build --release)
fi
work=$(mktemp -d)
out=${out:-$work/out}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a server whose first line says `listening on`; waits (bounded) for that line.
start() {
  local name=$1
  shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do
    if grep -q '^listening on' "$work/$name.out" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "nlb-demo: $name did not start: $(cat "$work/$name.err")" >&2
  exit 1
}

targets=127.0.0.1:7000
nlb_flags=()
set_flags=()
case $scenario/$variant in
  port-allocation/ | port-allocation/off) ;;
  port-allocation/on) nlb_flags+=(--client-ip-preservation on) ;;
  port-allocation/two-targets) targets=127.0.0.1:7000,127.0.0.1:7001 ;;
  idle-timeout/ | idle-timeout/slow) nlb_flags+=(--idle-timeout 3s) ;;
  idle-timeout/fast) nlb_flags+=(--idle-timeout 3s); set_flags+=(--set heartbeat.interval=1s) ;;
  *)
    echo "usage: nlb-demo.sh port-allocation [off|on|two-targets] | idle-timeout [slow|fast]" >&2
    exit 2
    ;;
esac
case $scenario in
  port-allocation) nlb_flags+=(--ports-per-target 1000 --on-exhaustion reset) ;;
esac

start sink "$bin" sink --listen 127.0.0.1:7000 --listen 127.0.0.1:7001 --quiet
start nlb "$bin" nlb --listen 127.0.0.1:7100 --admin 127.0.0.1:7101 --targets "$targets" \
  --metrics-period 5s "${nlb_flags[@]}"
echo "nlb-demo: sink on 127.0.0.1:7000,7001; nlb on 127.0.0.1:7100 (admin 7101) ${nlb_flags[*]}"
status=0
"$bin" run --headless --out "$out" "${set_flags[@]}" "$root/profiles/nlb-$scenario.json" || status=$?
python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
n = s.get("nlb", {})
t = n.get("total", {})
print("nlb-demo: emulator counted during the run:")
for k in ("NewFlowCount", "PortAllocationErrorCount", "TCP_ELB_Reset_Count",
          "TCP_Target_Reset_Count", "TCP_Client_Reset_Count", "ProcessedBytes"):
    print(f"  {k:<26} {t.get(k)}")
print(f"  {'peak active flows':<26} {n.get('peak_active_flows')}")
errors = {k: v for k, v in s["errors"].items() if v}
print(f"nlb-demo: clients established {s['connections']['established']}, errors {errors or 0}")
PY
exit "$status"
