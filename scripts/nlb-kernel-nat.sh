#!/usr/bin/env bash
# The kernel-NAT NLB: the load balancer played by nftables and conntrack in a network namespace
# of its own, so a flow costs a conntrack entry instead of two proxy sockets (for rehearsals
# far past the user-space emulator's ~10,000 flows per process).
#
#   clients (P-c, 10.214.0.2)  --veth--  nlb (P-n: VIP 10.214.0.100:443, node IP 10.214.1.1)
#                                        --veth--  targets (P-t: sink on 10.214.1.100:7000..)
#
# In P-n: DNAT from the VIP to a target chosen by a hash of the client's address and port; SNAT
# to the node IP with a bounded port range (--ports: the per-(node, target) port wall, as with
# client-IP preservation off); conntrack forgets an established flow after --idle (the idle
# timeout), and any packet that belongs to no known flow is answered with a reset (counted).
#
# Usage (as root):
#   scripts/nlb-kernel-nat.sh run  [--prefix P] [--ports N] [--targets T] [--connections C]
#                                  [--idle S] [--heartbeat D] [--hold D] [--out DIR]
#   scripts/nlb-kernel-nat.sh down [--prefix P]                 # remove the namespaces
#
# `run` builds the namespaces, starts a sink in P-t listening on T ports, plays a profile from
# P-c through the VIP, prints the kernel's counters (conntrack, the reset rule), and removes
# everything. Traffic stays inside the namespaces it makes.
set -euo pipefail

cmd=${1:-}
shift || true
prefix=nn
ports=1000
targets=1
connections=1500
idle=
heartbeat=1s
hold=5s
out=
while (($#)); do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --ports) ports=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --heartbeat) heartbeat=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "nlb-kernel-nat: unknown option $1" >&2; exit 2 ;;
  esac
done
if ((${#prefix} > 6)); then
  echo "nlb-kernel-nat: --prefix must be at most 6 characters (interface names are short)" >&2
  exit 2
fi
if ((ports < 1 || ports > 45000 || targets < 1 || targets > 16)); then
  echo "nlb-kernel-nat: --ports must be 1 to 45000 and --targets 1 to 16" >&2
  exit 2
fi
command -v nft >/dev/null || { echo "nlb-kernel-nat: needs nft (apt-get install nftables conntrack)" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${STAMPEDE_BIN:-$root/target/release/stampede}
c=$prefix-c
n=$prefix-n
t=$prefix-t

down() {
  for ns in "$c" "$n" "$t"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
}

up() {
  down
  for ns in "$c" "$n" "$t"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip link add "${prefix}c0" type veth peer name "${prefix}n0"
  ip link set "${prefix}c0" netns "$c"
  ip link set "${prefix}n0" netns "$n"
  ip link add "${prefix}n1" type veth peer name "${prefix}t0"
  ip link set "${prefix}n1" netns "$n"
  ip link set "${prefix}t0" netns "$t"
  ip -n "$c" addr add 10.214.0.2/24 dev "${prefix}c0"
  ip -n "$n" addr add 10.214.0.1/24 dev "${prefix}n0"
  ip -n "$n" addr add 10.214.0.100/32 dev "${prefix}n0"
  ip -n "$n" addr add 10.214.1.1/24 dev "${prefix}n1"
  ip -n "$t" addr add 10.214.1.100/24 dev "${prefix}t0"
  for dev in "$c ${prefix}c0" "$n ${prefix}n0" "$n ${prefix}n1" "$t ${prefix}t0"; do
    set -- $dev
    ip -n "$1" link set "$2" up
  done
  ip -n "$c" route add default via 10.214.0.1
  ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
  # Mid-flow packets of a forgotten flow must not be picked up as a new flow.
  ip netns exec "$n" sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0 2>/dev/null || true
  local map=""
  for ((i = 0; i < targets; i++)); do
    map+="${map:+, }$i : 10.214.1.100 . $((7000 + i))"
  done
  local last=$((20000 + ports - 1))
  # Conntrack's sysctls appear once the namespace has a conntrack user: the ruleset first.
  ip netns exec "$n" nft -f - <<NFT
table ip nlb {
  counter elb_resets {
  }
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.214.0.100 tcp dport 443 dnat ip to jhash ip saddr . tcp sport mod $targets map { $map }
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${prefix}n1" meta l4proto tcp snat ip to 10.214.1.1:20000-$last
  }
  chain forward_rst {
    type filter hook forward priority filter; policy accept;
    ct state invalid tcp flags & rst == 0 counter name elb_resets reject with tcp reset
  }
  chain input_rst {
    type filter hook input priority filter; policy accept;
    ct state invalid tcp flags & rst == 0 counter name elb_resets reject with tcp reset
  }
}
NFT
  ip netns exec "$n" sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
  if [[ -n $idle ]]; then
    ip netns exec "$n" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established="$idle"
  fi
}

run() {
  [[ -x $bin ]] || { echo "nlb-kernel-nat: $bin not built (cargo build --release)" >&2; exit 2; }
  work=$(mktemp -d)
  trap 'down; rm -rf "$work"' EXIT
  up
  local listen=() i
  for ((i = 0; i < targets; i++)); do listen+=(--listen "10.214.1.100:$((7000 + i))"); done
  ip netns exec "$t" "$bin" sink --quiet "${listen[@]}" >"$work/sink.out" 2>&1 &
  disown
  local tries=0
  until grep -q "listening on" "$work/sink.out"; do
    ((tries++ < 100)) || { echo "nlb-kernel-nat: the sink did not start" >&2; cat "$work/sink.out" >&2; exit 3; }
    sleep 0.05
  done
  cat >"$work/profile.json" <<JSON
{
  "name": "nlb-kernel-nat",
  "target": {"addrs": ["10.214.0.100:443"]},
  "connections": $connections,
  "heartbeat": {"interval": "$heartbeat", "payload_bytes": 16, "timeout": "2s"},
  "connect_timeout": "2s",
  "reconnect": {"policy": "none"},
  "phases": [{"ramp": {"rate": 2000}}, {"hold": {"for": "$hold"}}]
}
JSON
  local dir=${out:-$work/out} status=0
  ip netns exec "$c" "$bin" run --headless --out "$dir" "$work/profile.json" || status=$?
  echo "nlb-kernel-nat: kernel counters in $n (ports $ports per node and target, targets $targets${idle:+, idle timeout ${idle}s}):"
  echo "  conntrack entries now: $(ip netns exec "$n" conntrack -C 2>/dev/null || echo '?')"
  # Per-CPU lines, summed: insert_failed/drop rise when the SNAT range has no free port (a
  # dropped SYN: PortAllocationErrorCount; the client retries it until its connect times out).
  ip netns exec "$n" conntrack -S 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] ~ /^(insert_failed|drop|invalid)$/) s[kv[1]] += kv[2] } } END { for (k in s) printf "  %s %d\n", k, s[k] }' | sort
  echo "  resets sent (TCP_ELB_Reset_Count): $(ip netns exec "$n" nft list counter ip nlb elb_resets | awk '/packets/ {print $2}')"
  exit "$status"
}

case $cmd in
  run) run ;;
  down) down ;;
  *) sed -n '2,21p' "$0" >&2; exit 2 ;;
esac
