#!/usr/bin/env bash
# Starts a sink (or two) and `stampede nlb` on fixed loopback ports, runs one of the NLB
# profiles through them, prints what the emulator counted, and stops what it started.
#
# Usage:
#   scripts/nlb-demo.sh port-allocation [off|on|two-targets] [--out DIR]
#   scripts/nlb-demo.sh idle-timeout    [slow|fast]          [--out DIR]
#   scripts/nlb-demo.sh real-wall       [one-target|two-targets] [--out DIR]   (root)
#
# real-wall plays AWS's own numbers through the kernel datapath (`stampede nlb --datapath
# kernel`, namespace `snlbw`, 10.215.0.0/16): 82,500 connections from 5 agent processes and 8
# source addresses, ramped at 2,500/s, against --ports-per-target 55000; the sink runs as 5
# worker processes. One target: 55,000 established, 27,500 refused (connect timeouts). Two
# targets: all 82,500. About 70 s here; checks the counts and exits 1 if they differ.
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
restore=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for entry in "${restore[@]}"; do sysctl -qw "$entry" || true; done
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

if [[ $scenario == real-wall ]]; then
  ((EUID == 0)) || { echo "nlb-demo: real-wall builds a network namespace and needs root" >&2; exit 2; }
  case $variant in
    "" | one-target) targets=10.215.1.100:7000; want_established=55000 ;;
    two-targets) targets=10.215.1.100:7000,10.215.1.100:7001; want_established=82500 ;;
    *) echo "usage: nlb-demo.sh real-wall [one-target|two-targets]" >&2; exit 2 ;;
  esac
  # 2,500 connects a second outrun the default accept backlogs (somaxconn 4096): raised for
  # the run, as scripts/bench/million.sh does, and restored on exit.
  for entry in net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535; do
    key=${entry%=*}
    now=$(sysctl -n "$key")
    if ((now < ${entry#*=})); then
      restore+=("$key=$now")
      sysctl -qw "$entry"
      echo "nlb-demo: $key $now -> ${entry#*=} (restored on exit)"
    fi
  done
  start nlb "$bin" nlb --datapath kernel --netns snlbw --kernel-net 215 \
    --listen 10.215.2.100:443 --targets "$targets" --ports-per-target 55000 \
    --admin 127.0.0.1:7111 --metrics-period 10s
  start sink "$bin" sink --workers 5 --listen 10.215.1.100:7000 --listen 10.215.1.100:7001 --quiet
  echo "nlb-demo: kernel datapath on 10.215.2.100:443 (admin 127.0.0.1:7111), targets $targets"
  slab_before=$(awk '$1 == "nf_conntrack" {print $2 * $4}' /proc/slabinfo)
  status=0
  started=$SECONDS
  "$bin" run --headless --agents 5 --out "$out" "$root/profiles/nlb-real-wall.json" || status=$?
  echo "nlb-demo: run took $((SECONDS - started)) s (exit $status)"
  slab_after=$(awk '$1 == "nf_conntrack" {print $2 * $4}' /proc/slabinfo)
  echo "nlb-demo: conntrack slab grew by $(((slab_after - slab_before) / 1024)) KiB during the run"
  check=0
  python3 - "$out/summary.json" "$want_established" <<'PY' || check=$?
import json, sys
s = json.load(open(sys.argv[1]))
want = int(sys.argv[2])
t = s["nlb"]["total"]
c = s["connections"]
errors = {k: v for k, v in s["errors"].items() if v}
print(f"nlb-demo: established {c['established_slots']} of {c['requested']}, errors {errors or 0}")
for k in ("NewFlowCount", "PortAllocationErrorCount", "PortAllocationErrorCount_Concurrent",
          "PortAllocationErrorCount_PerMinute", "TCP_ELB_Reset_Count", "ProcessedBytes"):
    print(f"  {k:<36} {t.get(k)}")
print(f"  {'peak active flows':<36} {s['nlb'].get('peak_active_flows')}")
refused = c["requested"] - want
ok = (c["established_slots"] == want and t["PortAllocationErrorCount"] == refused
      and s["errors"]["connect_timeout"] == refused)
verdict = "as AWS would" if ok else "NOT as expected"
print(f"nlb-demo: {verdict}: {want} established, {refused} refused and counted once each")
sys.exit(0 if ok else 1)
PY
  exit $((status > 1 ? status : check))
fi

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
