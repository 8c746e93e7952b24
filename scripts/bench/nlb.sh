#!/usr/bin/env bash
# NLB emulator benchmark: what a flow through `stampede nlb` costs against the same traffic
# sent straight to the sink, in the same invocation.
#
#   1. Held flows: CONNECTIONS stampede connections with 1 s heartbeats, held HOLD s, first
#      straight to the sink (the baseline), then through the emulator. Compared: heartbeat
#      round-trip p50/p99 (summary.json), and for the emulator its CPU over the hold
#      (utime+stime, /proc/PID/stat) and RSS (VmRSS) per flow.
#   2. Bulk: one connection pushes BULK_MB MiB one way to a discard server (python3), straight
#      and through a second emulator, REPEATS times each, alternating; the median MiB/s of
#      each is compared.
#
# Usage: scripts/bench/nlb.sh        (CONNECTIONS=4000 HOLD=15 BULK_MB=512 REPEATS=3)
# Ports 127.0.0.1:7300 (sink), :7301 (emulator), :7302 (its admin), :7303 (discard server),
# :7304 (the emulator in front of it): below the ephemeral range.
# Traffic stays on loopback. The processes it starts are killed on exit.
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-4000}
HOLD=${HOLD:-15}
BULK_MB=${BULK_MB:-512}
REPEATS=${REPEATS:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
STAMPEDE=${STAMPEDE_BIN:-$ROOT/target/release/stampede}
WORK=$(mktemp -d /tmp/stampede-nlb.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z ${STAMPEDE_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
echo "commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' with uncommitted changes'), binary sha256 $(sha256sum "$STAMPEDE" | cut -c1-16)"

start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    wait_line "$!" "$WORK/$name.out" '^listening on' 10 && return 0
    echo "nlb.sh: $name did not start: $(cat "$WORK/$name.err")" >&2
    exit 1
}
start sink "$STAMPEDE" sink --listen 127.0.0.1:7300 --quiet
SINK_PID=${PIDS[-1]}
start nlb "$STAMPEDE" nlb --listen 127.0.0.1:7301 --admin 127.0.0.1:7302 \
    --targets 127.0.0.1:7300 --quiet --ports-per-target 30000
NLB_PID=${PIDS[-1]}

profile() { # $1 target address
    cat <<JSON
{
  "name": "nlb-bench",
  "target": { "addrs": ["$1"] },
  "connections": $CONNECTIONS,
  "heartbeat": { "interval": "1s", "payload_bytes": 16, "timeout": "2s" },
  "reconnect": { "policy": "none" },
  "phases": [ { "ramp": { "rate": 4000 } }, { "hold": { "for": "${HOLD}s" } } ]
}
JSON
}

held() { # $1 label, $2 target
    profile "$2" >"$WORK/$1.json"
    local rss0 cpu0 cpu1 rss
    rss0=$(rss_kib "$NLB_PID")
    "$STAMPEDE" run --headless --out "$WORK/$1" "$WORK/$1.json" >/dev/null 2>"$WORK/$1.err" &
    local run=$!
    # Measured from the moment every connection is up until shortly before the hold ends.
    wait_line "$run" "$WORK/$1.err" " open +$CONNECTIONS/$CONNECTIONS " 30 ||
        { echo "nlb.sh: $1: never reported $CONNECTIONS open" >&2; exit 1; }
    cpu0=$(cpu_ticks "$NLB_PID")
    sleep $((HOLD - 5))
    cpu1=$(cpu_ticks "$NLB_PID")
    rss=$(rss_kib "$NLB_PID")
    wait "$run" || true
    python3 - "$WORK/$1/summary.json" "$1" "$cpu0" "$cpu1" "$rss0" "$rss" "$CLK_TCK" "$((HOLD - 5))" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
label = sys.argv[2]
cpu0, cpu1, rss0, rss, tck, window = map(int, sys.argv[3:])
h = s["latency_us"]["heartbeat_rtt"]
line = f"{label:<8} established {s['connections']['established']:>5}  heartbeats {h['count']:>6}  rtt p50 {h['p50']}us p99 {h['p99']}us"
if label == "via-nlb":
    cpu = (cpu1 - cpu0) / tck / window
    line += f"  nlb cpu {100 * cpu:.1f}% of a core  nlb rss +{(rss - rss0) / s['connections']['established']:.2f} KiB/flow (rss {rss / 1024:.0f} MiB)"
print(line)
PY
}

held direct 127.0.0.1:7300
held via-nlb 127.0.0.1:7301

# Bulk: the sink echoes through a 256-byte buffer (it is built to hold connections, not to
# move bytes), so it would measure itself. A discard server reads 1 MiB at a time and answers
# one byte once it has everything; a second emulator sits in front of it.
python3 - "$BULK_MB" >"$WORK/discard.out" 2>&1 <<'PY' &
import socket, sys
total = int(sys.argv[1]) * 1024 * 1024
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 7303))
srv.listen(16)
print("listening on 127.0.0.1:7303", flush=True)
while True:
    c, _ = srv.accept()
    got = 0
    while got < total:
        data = c.recv(1 << 20)
        if not data:
            break
        got += len(data)
    c.sendall(b"k")
    c.close()
PY
PIDS+=($!)
wait_line "$!" "$WORK/discard.out" '^listening on' 10 ||
    { echo "nlb.sh: the discard server did not start" >&2; exit 1; }
start nlb2 "$STAMPEDE" nlb --listen 127.0.0.1:7304 --targets 127.0.0.1:7303 --quiet

bulk() { # $1 port
    python3 - "$1" "$BULK_MB" <<'PY'
import socket, sys, time
port, mb = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
chunk = memoryview(b"x" * (1 << 20))
start = time.perf_counter()
for _ in range(mb):
    s.sendall(chunk)
if s.recv(1) != b"k":
    raise SystemExit("no answer")
print(f"{mb / (time.perf_counter() - start):.0f}")
PY
}
direct=()
via=()
for _ in $(seq "$REPEATS"); do
    direct+=("$(bulk 7303)")
    via+=("$(bulk 7304)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
d=$(median "${direct[@]}")
v=$(median "${via[@]}")
echo "bulk     direct ${direct[*]} MiB/s (median $d)  via-nlb ${via[*]} MiB/s (median $v)  ratio $(awk "BEGIN {printf \"%.2f\", $v / $d}")"
