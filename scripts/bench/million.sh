#!/usr/bin/env bash
# A million connections on one box: `stampede sink --workers N` holds one end, `stampede run
# --agents auto` the other, with heartbeats, for HOLD seconds. Reports time to ramp, peak
# connects/s, the agents' RSS per held connection, the coordinator's CPU and memory, the sinks'
# totals and the kernel's slab; exits non-zero if CONNECTIONS were not all held at once.
#
# Usage (root, for the sysctls it may need):
#   scripts/bench/million.sh
#   CONNECTIONS=100000 HOLD=20 scripts/bench/million.sh      # a smaller rehearsal
#   KEEP=1 scripts/bench/million.sh                          # keep outputs (path printed)
#
# Safe on a developer machine:
#   - it refuses to start when MemAvailable cannot hold the plan (kernel ~10 KB per connection
#     for both ends, stampede ~1 KB, the sinks ~1.5 KB, plus 2 GiB to spare);
#   - it changes only the sysctls it needs (net.core.somaxconn, and nf_conntrack_max if
#     conntrack is loaded and too small), says so, and restores them on exit, failure or not;
#   - it adds no address (every 127.x.y.z works on loopback), and traffic stays on 127.0.0.0/8;
#   - every process it starts is killed on exit; the run itself is bounded by the profile and
#     a watchdog (ramp + hold + 120 s).

set -euo pipefail

CONNECTIONS=${CONNECTIONS:-1000000}
HOLD=${HOLD:-100}
# The ramp can finish after its planned end on a saturated host: the run fails unless every
# connection was held at once for at least this long.
MIN_HELD=${MIN_HELD:-60}
# Two cores carry both ends of every connection: a 10,000/s ramp and a heartbeat a minute per
# connection (16,700/s at a million) leave room for the reports to flow. Faster settings
# saturated the host until heartbeats took longer than their timeout.
RATE=${RATE:-10000}
INTERVAL=${INTERVAL:-60s}
PAYLOAD=${PAYLOAD:-16}
# 256 source addresses: ~3,900 connections each, a seventh of the default port range, so no
# (source, target) pair comes near exhaustion, where connect() slows down.
SOURCES=${SOURCES:-127.0.101.0/24}
PORT=${PORT:-7300} # below the ephemeral range: TIME_WAIT sockets cannot block it
STAMPEDE_BIN=${STAMPEDE_BIN:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STAMPEDE=${STAMPEDE_BIN:-$ROOT/target/release/stampede}
WORK=$(mktemp -d /tmp/stampede-million.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

say() { echo "million.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# --- cleanup: processes by pid, then sysctls back as they were ---------------------------
PIDS=()
RESTORE=()
cleanup() {
    local status=$? entry
    stop_pids 10 "${PIDS[@]}"
    for entry in "${RESTORE[@]}"; do
        sysctl -qw "$entry" >/dev/null && say "restored $entry"
    done
    if [[ -n ${KEEP:-} ]]; then say "outputs kept in $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# set_at_least KEY VALUE: raises a sysctl to VALUE if it is lower, remembering the old value.
set_at_least() {
    local key=$1 want=$2 now
    now=$(sysctl -n "$key")
    if (( now < want )); then
        [[ $(id -u) == 0 ]] || die "$key is $now, needs $want: run as root, or: sysctl -w $key=$want"
        RESTORE+=("$key=$now")
        sysctl -qw "$key=$want"
        say "changed $key: $now -> $want (restored on exit)"
    else
        say "kept $key = $now (enough)"
    fi
}

# A process gone between listing and reading counts as 0 KiB.
rss_or_zero() { rss_kib "$1" || echo 0; }
slab_kib() { awk '/^Slab:/ { print $2 }' /proc/meminfo; }

# --- checks -----------------------------------------------------------------------------------
if [[ -z $STAMPEDE_BIN ]]; then
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $STAMPEDE ]] || die "$STAMPEDE is not an executable"
HARD=$(ulimit -Hn)
[[ $HARD == unlimited ]] && HARD=1048576
ulimit -Sn "$HARD"
PER_PROCESS=$(( HARD - 64 ))
# SO_REUSEPORT hashes connections to workers, so fill them to 90 % on average.
SINK_WORKERS=$(( (CONNECTIONS * 10 / 9 + PER_PROCESS - 1) / PER_PROCESS ))
NEED_KIB=$(( CONNECTIONS * (10 + 1 + 2) + 2 * 1024 * 1024 ))
AVAIL_KIB=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
(( AVAIL_KIB >= NEED_KIB )) ||
    die "refusing: $CONNECTIONS connections need about $(( NEED_KIB / 1024 )) MiB, MemAvailable is $(( AVAIL_KIB / 1024 )) MiB; lower CONNECTIONS"
ss -Hltn "sport = :$PORT" | grep -q . && die "something already listens on port $PORT; stop it or set PORT"

say "host: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
say "stampede built from $(cd "$ROOT" && git rev-parse --short HEAD), binary sha256 $(sha256sum "$STAMPEDE" | cut -c1-16)"
say "file limit $HARD per process: $SINK_WORKERS sink workers; agents: auto"

# --- host preparation ---------------------------------------------------------------------------
set_at_least net.core.somaxconn 65535
set_at_least net.ipv4.tcp_max_syn_backlog 65535
if [[ -r /proc/sys/net/netfilter/nf_conntrack_max ]]; then
    set_at_least net.netfilter.nf_conntrack_max $(( CONNECTIONS * 2 + 65536 ))
fi
say "ip_local_port_range $(sysctl -n net.ipv4.ip_local_port_range | tr '\t' ' ') (not changed)"

# --- sink -----------------------------------------------------------------------------------------
"$STAMPEDE" sink --listen "127.0.0.1:$PORT" --workers "$SINK_WORKERS" > "$WORK/sink.out" 2> "$WORK/sink.err" &
SINK=$!
PIDS+=("$SINK")
for (( i = 0; i < 600; i++ )); do
    grep -q "^workers $SINK_WORKERS\$" "$WORK/sink.out" 2>/dev/null && break
    kill -0 "$SINK" 2>/dev/null || { cat "$WORK/sink.err" >&2; die "the sink did not start"; }
    sleep 0.1
done
grep -q "^workers " "$WORK/sink.out" || die "the sink's workers did not all start within 60 s"

cat > "$WORK/profile.json" <<EOF
{"name":"million","target":{"addrs":["127.0.0.1:$PORT"]},"protocol":"tcp","connections":$CONNECTIONS,
 "sources":{"addrs":["$SOURCES"]},
 "heartbeat":{"interval":"$INTERVAL","payload_bytes":$PAYLOAD,"timeout":"20s"},
 "connect_timeout":"30s",
 "phases":[{"ramp":{"rate":$RATE}},{"hold":{"for":"${HOLD}s"}}]}
EOF

# --- run ------------------------------------------------------------------------------------------
SLAB0=$(slab_kib)
T0=$EPOCHREALTIME
"$STAMPEDE" run "$WORK/profile.json" --agents auto --headless --out "$WORK/out" \
    > "$WORK/run.out" 2> "$WORK/run.err" &
RUN=$!
PIDS+=("$RUN")
LIMIT=$(( CONNECTIONS / RATE + HOLD + 120 ))
HELD_AT=""
AGENT_RSS_MAX=0 COORD_RSS_MAX=0 SLAB_MAX=0 SINK_RSS_MAX=0 AGENTS=0 COORD_TICKS=0
while kill -0 "$RUN" 2>/dev/null; do
    now=$EPOCHREALTIME
    (( ${now%.*} - ${T0%.*} < LIMIT )) || { say "the run overran ${LIMIT}s; stopping it"; kill -TERM "$RUN"; break; }
    # The coordinator's own CPU so far; read while it runs, since it is reaped when it exits.
    t=$(cpu_ticks "$RUN" 2>/dev/null) && COORD_TICKS=$t
    if [[ -z $HELD_AT ]] && grep -qE " open +$CONNECTIONS/$CONNECTIONS " "$WORK/run.err" 2>/dev/null; then
        HELD_AT=$now
        say "all $CONNECTIONS held after $(awk -v a="$T0" -v b="$now" 'BEGIN { printf "%.1f", b - a }') s"
    fi
    if [[ -n $HELD_AT ]]; then
        agents_kib=0 agents=0
        for pid in $(pgrep -P "$RUN" -f " agent " || true); do
            agents_kib=$(( agents_kib + $(rss_or_zero "$pid") ))
            agents=$(( agents + 1 ))
        done
        (( agents > AGENTS )) && AGENTS=$agents
        sinks_kib=$(rss_or_zero "$SINK")
        for pid in $(pgrep -P "$SINK" || true); do sinks_kib=$(( sinks_kib + $(rss_or_zero "$pid") )); done
        (( agents_kib > AGENT_RSS_MAX )) && AGENT_RSS_MAX=$agents_kib
        (( sinks_kib > SINK_RSS_MAX )) && SINK_RSS_MAX=$sinks_kib
        c=$(rss_or_zero "$RUN"); (( c > COORD_RSS_MAX )) && COORD_RSS_MAX=$c
        s=$(slab_kib); (( s > SLAB_MAX )) && SLAB_MAX=$s
    fi
    sleep 1
done
STATUS=0
wait "$RUN" || STATUS=$?
T1=$EPOCHREALTIME
SINK_LINE=$(grep "^sink: " "$WORK/sink.err" | sort -t' ' -k3 -n | tail -1 || true)

# How long every connection was held at once, from the progress lines ("[ 12.0s] ... open N/N").
HELD_FOR=$(awk -v n="$CONNECTIONS" '$0 ~ (" open +" n "/") {
        t = $2; sub(/s\]$/, "", t); t += 0; if (first == "") first = t; last = t }
    END { printf "%.0f", (first == "" ? 0 : last - first) }' "$WORK/run.err")
SUMMARY=$WORK/out/summary.json
[[ -f $SUMMARY ]] || { tail -20 "$WORK/run.err" >&2; die "the run wrote no summary (exit $STATUS)"; }
read -r ESTABLISHED PEAK FIRST LAST PEAK_RATE ERRORS HB_P99 CONNECT_P99 < <(jq -r '[
    .connections.established, .connections.peak_open, .connections.first_attempt_s,
    .connections.last_established_s, ([.timeline[].connects] | max),
    ([.errors[]] | add), .latency_us.heartbeat_rtt.p99, .latency_us.connect.p99] | @tsv' "$SUMMARY")

# The coordinator's CPU: its own ticks, last read while it ran (within a second of its end).
COORD_CPU=$(awk -v t="$COORD_TICKS" -v hz="$CLK_TCK" -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", 100 * t / hz / (b - a) }')
per_conn() { awk -v k="$1" -v n="$PEAK" 'BEGIN { if (n > 0) printf "%.0f", k * 1024 / n; else print "-" }'; }

cat <<EOF

| figure | value |
|---|---|
| connections held at once (peak open) | $PEAK of $CONNECTIONS, all of them for $HELD_FOR s |
| established / errors | $ESTABLISHED / $ERRORS |
| time to ramp (first connect to last established) | $(awk -v a="$FIRST" -v b="$LAST" 'BEGIN { printf "%.1f s", b - a }') |
| connects/s over the ramp | $(jq -r '.connections.connects_per_s | floor' "$SUMMARY") (peak second: $PEAK_RATE) |
| connect p99 / heartbeat p99 | $(( CONNECT_P99 / 1000 )) ms / $(( HB_P99 / 1000 )) ms |
| agents | $AGENTS processes, RSS $(( AGENT_RSS_MAX / 1024 )) MiB, **$(per_conn "$AGENT_RSS_MAX") B per held connection** |
| coordinator | RSS $(( COORD_RSS_MAX / 1024 )) MiB, CPU $COORD_CPU % of one core over the run |
| sinks | $SINK_WORKERS workers, RSS $(( SINK_RSS_MAX / 1024 )) MiB ($(per_conn "$SINK_RSS_MAX") B per connection); busiest line: ${SINK_LINE:-none} |
| kernel slab | $(( SLAB0 / 1024 )) MiB before, $(( SLAB_MAX / 1024 )) MiB holding: $(per_conn $(( SLAB_MAX - SLAB0 ))) B per connection (both ends) |
| run exit status | $STATUS |
EOF

(( PEAK >= CONNECTIONS )) || die "NOT HELD: peak open $PEAK < $CONNECTIONS"
(( HELD_FOR >= MIN_HELD )) || die "NOT HELD LONG ENOUGH: all $CONNECTIONS for $HELD_FOR s < $MIN_HELD s (raise HOLD)"
say "held $PEAK connections at once, all of them for $HELD_FOR s"
