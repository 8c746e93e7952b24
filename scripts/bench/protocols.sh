#!/usr/bin/env bash
# Protocol memory benchmark: RSS per held connection for tcp, tls (with and without session
# resumption), ws, wss, mqtt (5, subscribed), h2 (one streaming request) and h2s (the same over
# TLS, ALPN h2), client and sink, with the same method as hold.sh's marginal figure.
#
# For each protocol P, one after the other:
#   1. start `stampede sink --protocol P` on 127.0.0.1:PORT and wait for its "listening on" line;
#   2. run stampede with CONNECTIONS connections (opened at RATE/s, 1 s heartbeats), wait for
#      "open N/N", wait
#      SETTLE s, sample VmRSS of the client and of the sink once a second for WINDOW s (max);
#   3. the same with SMALL connections (fixed RSS);
#   4. stop the sink.
# Marginal bytes per connection = (RSS_N - RSS_SMALL) / (N - SMALL). Prints a table with each
# protocol's figures and its ratio to tcp measured in the same invocation; exits non-zero if
# any run misses a connection.
#
# Usage:
#   scripts/bench/protocols.sh
#   CONNECTIONS=5000 scripts/bench/protocols.sh
#   KEEP=1 scripts/bench/protocols.sh        # keep the raw outputs (path printed at the end)
#
# Traffic stays on loopback. Nothing on the host is changed. Every process started here is
# killed by its PID on exit, failure or not.

set -euo pipefail

CONNECTIONS=${CONNECTIONS:-2000}
SMALL=${SMALL:-200}
PORT=${PORT:-7300}
PAYLOAD=${PAYLOAD:-16}
SETTLE=${SETTLE:-2}
WINDOW=${WINDOW:-5}
PROTOCOLS=${PROTOCOLS:-tcp tls tls-noresume ws wss mqtt h2 h2s}
RATE=${RATE:-500}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
STAMPEDE=${STAMPEDE_BIN:-$ROOT/target/release/stampede}
WORK=$(mktemp -d /tmp/stampede-protocols.XXXXXX)

die() {
    echo "protocols.sh: $*" >&2
    exit 1
}

PIDS=()
cleanup() {
    local status=$?
    stop_pids 5 "${PIDS[@]}"
    if [[ -n ${KEEP:-} ]]; then echo "protocols.sh: outputs kept in $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r eph_lo eph_hi < /proc/sys/net/ipv4/ip_local_port_range
(( PORT < eph_lo || PORT > eph_hi )) || die "PORT $PORT lies in the ephemeral range; set PORT"
[[ -z $(ss -Hltn "sport = :$PORT") ]] || die "something already listens on port $PORT; set PORT"
if [[ -z ${STAMPEDE_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi




stop() { # stop PID: SIGTERM, bounded wait, SIGKILL
    stop_pids 5 "$1"
    forget "$1"
}

# profile PROTO CA: the client profile for sink protocol PROTO, trusting the certificate CA.
profile() {
    local proto=$1 ca=$2 extra
    case $proto in
        tcp) extra='"protocol":"tcp"' ;;
        tls) extra="\"protocol\":\"tls\",\"tls\":{\"server_name\":\"localhost\",\"ca_file\":\"$ca\"}" ;;
        tls-noresume) extra="\"protocol\":\"tls\",\"tls\":{\"server_name\":\"localhost\",\"ca_file\":\"$ca\",\"resumption\":false}" ;;
        ws) extra='"protocol":"websocket","websocket":{"path":"/"}' ;;
        wss) extra="\"protocol\":\"websocket\",\"websocket\":{\"scheme\":\"wss\"},\"tls\":{\"server_name\":\"localhost\",\"ca_file\":\"$ca\"}" ;;
        mqtt) extra='"protocol":"mqtt","mqtt":{"version":"5","subscribe":true}' ;;
        h2) extra='"protocol":"http2"' ;;
        h2s) extra="\"protocol\":\"http2\",\"http2\":{\"scheme\":\"https\"},\"tls\":{\"server_name\":\"localhost\",\"ca_file\":\"$ca\"}" ;;
    esac
    cat > "$WORK/$proto.json" <<EOF
{"name":"mem-$proto","target":{"addrs":["127.0.0.1:$PORT"]},$extra,"connections":$CONNECTIONS,
 "heartbeat":{"interval":"1s","payload_bytes":$PAYLOAD,"timeout":"5s"},"connect_timeout":"10s",
 "phases":[{"ramp":{"rate":$RATE}},{"hold":{"for":"60s"}}]}
EOF
}

# measure PROTO N: one client run of N connections against the running sink; writes
# "client_kib sink_kib handshake_p50_us handshake_p99_us" to PROTO-N.measure. The client holds
# for up to 60 s and is stopped (SIGTERM: it closes, writes its summary, exits 3) once measured.
measure() {
    local proto=$1 n=$2 pid c=0 s=0 r i status label=$1-$2
    "$STAMPEDE" run "$WORK/$proto.json" --out "$WORK/$label" --set "connections=$n" \
        > "$WORK/$label.out" 2> "$WORK/$label.err" &
    pid=$!
    PIDS+=("$pid")
    wait_line "$pid" "$WORK/$label.err" " open +$n/$n " 30 ||
        { cat "$WORK/$label.err" >&2; die "$label: never reported $n open"; }
    sleep "$SETTLE"
    for (( i = 0; i < WINDOW; i++ )); do
        r=$(rss_kib "$pid") || die "$label: the client ended early"
        (( r > c )) && c=$r
        r=$(rss_kib "$SINK") || die "$label: the sink ended early"
        (( r > s )) && s=$r
        sleep 1
    done
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    (( status == 0 || status == 3 )) || { cat "$WORK/$label.err" >&2; die "$label: stampede exited $status"; }
    forget "$pid"
    [[ $(jq .connections.established "$WORK/$label/summary.json") == "$n" ]] ||
        die "$label: not all $n connections were established"
    echo "$c $s $(jq '.latency_us.handshake.p50 // 0' "$WORK/$label/summary.json")" \
        "$(jq '.latency_us.handshake.p99 // 0' "$WORK/$label/summary.json")" > "$WORK/$label.measure"
}

echo "protocols.sh: host: $(nproc) cores, Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "protocols.sh: stampede built from $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" &&
    [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] && echo ' with uncommitted changes')" >&2
# start_sink PROTO N: a fresh sink for the run of N connections, with its own output and
# certificate files (a file of an earlier sink must never pass for this one's).
start_sink() {
    local cert=() sink_protocol=${1%-noresume}
    [[ $sink_protocol == tls || $sink_protocol == wss || $sink_protocol == h2s ]] && cert=(--cert-out "$WORK/$1-$2.pem")
    "$STAMPEDE" sink --listen "127.0.0.1:$PORT" --protocol "$sink_protocol" --quiet "${cert[@]}" \
        > "$WORK/sink-$1-$2.out" 2>&1 &
    SINK=$!
    PIDS+=("$SINK")
    wait_line "$SINK" "$WORK/sink-$1-$2.out" "^listening on " 10 || die "the $1 sink did not start"
    profile "$1" "$WORK/$1-$2.pem"
}

for proto in $PROTOCOLS; do
    echo "protocols.sh: $proto: $CONNECTIONS then $SMALL connections" >&2
    # A fresh sink for each run, so the small run's RSS is not the large run's high-water mark.
    for n in "$CONNECTIONS" "$SMALL"; do
        start_sink "$proto" "$n"
        measure "$proto" "$n"
        stop "$SINK"
    done
done

echo
printf "%d vs %d connections, 1 s heartbeats of %d bytes; marginal bytes per held connection\n\n" \
    "$CONNECTIONS" "$SMALL" "$PAYLOAD"
printf "%-6s %12s %8s %12s %8s %14s %14s\n" protocol client "x tcp" sink "x tcp" "handshake p50" "handshake p99"
for proto in $PROTOCOLS; do
    read -r cl sl hp50 hp99 < "$WORK/$proto-$CONNECTIONS.measure"
    read -r cs ss _ < "$WORK/$proto-$SMALL.measure"
    echo "$proto $(( (cl - cs) * 1024 / (CONNECTIONS - SMALL) )) $(( (sl - ss) * 1024 / (CONNECTIONS - SMALL) )) $hp50 $hp99"
done | awk 'NR == 1 { c0 = $2; s0 = $3 }
    { printf "%-8s %10d %8.1f %12d %8.1f %12dus %12dus\n", $1, $2, $2 / c0, $3, $3 / s0, $4, $5 }'
echo
echo "command: CONNECTIONS=$CONNECTIONS SMALL=$SMALL RATE=$RATE PROTOCOLS=\"$PROTOCOLS\" scripts/bench/protocols.sh"
