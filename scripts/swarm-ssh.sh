#!/usr/bin/env bash
# Runs a swarm over plain VMs: copies this stampede binary and the token to each host, starts an
# agent there over ssh, runs the coordinator here, and stops every agent when it ends.
#
# Usage:
#   scripts/swarm-ssh.sh --profile P --listen ADDR:PORT --token-file F \
#       [--allow-targets CIDR[,CIDR]] [--sources-file F] [--out DIR] HOST...
#
#   --listen        the coordinator's address, reachable from every host (agents dial it)
#   --sources-file  lines "HOST SPEC[,SPEC]" giving each host's source addresses (optional)
#   HOST            anything ssh accepts (user@host, an ~/.ssh/config alias)
#
# SSH and SCP may be overridden (e.g. SSH="ssh -i key -o StrictHostKeyChecking=accept-new").
# The remote side needs nothing but a Linux kernel: the binary goes to /tmp/stampede-$USER.
set -euo pipefail

SSH=${SSH:-ssh}
SCP=${SCP:-scp}
profile= listen= token= allow= sources_file= out=
hosts=()
while (($#)); do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    --token-file) token=$2; shift 2 ;;
    --allow-targets) allow=$2; shift 2 ;;
    --sources-file) sources_file=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "swarm-ssh: unknown option $1" >&2; exit 2 ;;
    *) hosts+=("$1"); shift ;;
  esac
done
[[ -n $profile && -n $listen && -n $token ]] || { echo "swarm-ssh: --profile, --listen and --token-file are required" >&2; exit 2; }
((${#hosts[@]})) || { echo "swarm-ssh: name at least one HOST" >&2; exit 2; }
[[ -r $token ]] || { echo "swarm-ssh: cannot read --token-file $token" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${STAMPEDE_BIN:-$root/target/release/stampede}
[[ -x $bin ]] || (cd "$root" && cargo build --release)
remote_dir="/tmp/stampede-${USER:-user}"

sources_for() {
  [[ -n $sources_file ]] || return 0
  awk -v h="$1" '$1 == h { print $2 }' "$sources_file"
}

pids=()
stop_agents() {
  for host in "${hosts[@]}"; do
    $SSH "$host" "pkill -f '$remote_dir/stampede agent' || true" >/dev/null 2>&1 || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_agents EXIT

out_args=()
[[ -n $out ]] && out_args=(--out "$out")
"$bin" coordinator "$profile" --listen "$listen" --agents "${#hosts[@]}" \
  --token-file "$token" --headless "${out_args[@]}" &
coordinator=$!

for host in "${hosts[@]}"; do
  $SSH "$host" "mkdir -p '$remote_dir' && chmod 700 '$remote_dir'"
  $SCP -q "$bin" "$host:$remote_dir/stampede"
  $SCP -q "$token" "$host:$remote_dir/token"
  args=(agent --quiet --coordinator "$listen" --token-file "$remote_dir/token" --name "$host")
  [[ -n $allow ]] && args+=(--allow-targets "$allow")
  src=$(sources_for "$host")
  [[ -n $src ]] && args+=(--sources "$src")
  $SSH "$host" "$remote_dir/stampede ${args[*]}" &
  pids+=($!)
done

status=0
wait "$coordinator" || status=$?
exit "$status"
