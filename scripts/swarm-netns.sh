#!/usr/bin/env bash
# A swarm across real network stacks on one machine: each agent, the coordinator and the sink
# run in network namespaces of their own, joined by veth pairs to a bridge that lives in its own
# namespace too. Nothing is routed outside the namespaces this script makes.
#
# Usage (as root):
#   scripts/swarm-netns.sh run  [--prefix P] [--agents N] [--connections C] [--hold D] [--out DIR]
#   scripts/swarm-netns.sh up   [--prefix P] [--agents N]     # build the namespaces only
#   scripts/swarm-netns.sh down [--prefix P]                  # remove them (idempotent)
#
# Addresses (10.213.0.0/16, inside the namespaces only):
#   coordinator 10.213.0.1, sink 10.213.0.2:7000,
#   agent i: 10.213.<i>.1 plus 10.213.<i>.2-10.213.<i>.4 as extra source addresses.
set -euo pipefail

cmd=${1:-}
shift || true
prefix=st
agents=2
connections=400
hold=3s
out=
while (($#)); do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --agents) agents=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "swarm-netns: unknown option $1" >&2; exit 2 ;;
  esac
done
if ((${#prefix} > 6)); then
  echo "swarm-netns: --prefix must be at most 6 characters (interface names are short)" >&2
  exit 2
fi
if ((agents < 1 || agents > 50)); then
  echo "swarm-netns: --agents must be 1 to 50" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${STAMPEDE_BIN:-$root/target/release/stampede}
br=$prefix-br

nodes() {
  echo co si
  for ((i = 1; i <= agents; i++)); do echo "a$i"; done
}

down() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
}

up() {
  down
  ip netns add "$br"
  ip -n "$br" link add br0 type bridge
  ip -n "$br" link set br0 up
  ip -n "$br" link set lo up
  for node in $(nodes); do
    local ns=$prefix-$node
    ip netns add "$ns"
    ip link add "$prefix$node" type veth peer name "${prefix}p$node"
    ip link set "$prefix$node" netns "$ns"
    ip link set "${prefix}p$node" netns "$br"
    ip -n "$br" link set "${prefix}p$node" master br0
    ip -n "$br" link set "${prefix}p$node" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$prefix$node" name eth0
    ip -n "$ns" link set eth0 up
  done
  ip -n "$prefix-co" addr add 10.213.0.1/16 dev eth0
  ip -n "$prefix-si" addr add 10.213.0.2/16 dev eth0
  for ((i = 1; i <= agents; i++)); do
    for j in 1 2 3 4; do
      ip -n "$prefix-a$i" addr add "10.213.$i.$j/16" dev eth0
    done
  done
}

run() {
  [[ -x $bin ]] || { echo "swarm-netns: $bin not built (cargo build --release)" >&2; exit 2; }
  trap down EXIT
  up
  local work
  work=$(mktemp -d)
  head -c 32 /dev/urandom | base64 > "$work/token"
  cat > "$work/profile.json" <<JSON
{
  "name": "netns-swarm",
  "target": {"addrs": ["10.213.0.2:7000"]},
  "connections": $connections,
  "heartbeat": {"interval": "500ms"},
  "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "$hold"}}],
  "thresholds": ["established_ratio >= 1", "errors <= 0"]
}
JSON
  ip netns exec "$prefix-si" "$bin" sink --quiet --listen 10.213.0.2:7000 > "$work/sink.out" 2>&1 &
  local tries=0
  until grep -q "listening on" "$work/sink.out"; do
    ((tries++ < 100)) || { echo "swarm-netns: the sink did not start" >&2; cat "$work/sink.out" >&2; exit 3; }
    sleep 0.05
  done
  local coord_out=${out:-$work/out}
  ip netns exec "$prefix-co" "$bin" coordinator "$work/profile.json" --listen 10.213.0.1:7700 \
    --agents "$agents" --token-file "$work/token" --join-timeout 30s --out "$coord_out" --headless &
  local coord=$!
  local agent_pids=()
  for ((i = 1; i <= agents; i++)); do
    ip netns exec "$prefix-a$i" "$bin" agent --quiet --coordinator 10.213.0.1:7700 \
      --token-file "$work/token" --name "ns-agent-$i" --sources "10.213.$i.1-10.213.$i.4" \
      --allow-targets 10.213.0.0/16 &
    agent_pids+=($!)
  done
  local status=0
  wait "$coord" || status=$?
  for pid in "${agent_pids[@]}"; do wait "$pid" || true; done
  echo "swarm-netns: coordinator exited with $status; summary in $coord_out/summary.json"
  exit "$status"
}

case $cmd in
  up) up ;;
  down) down ;;
  run) run ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
