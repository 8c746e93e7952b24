#!/usr/bin/env bash
# Hold benchmark: 19,000 connections with 1 s heartbeats in one stampede process, against the
# same number held by a minimal epoll client (rawclient.c) in the same invocation.
#
# Starts SINKS `stampede sink` processes sharing 127.0.0.1:PORT (SO_REUSEPORT), then runs, one
# after the other against them:
#   1. rawclient, CONNECTIONS connections, hold RAW_HOLD s        (the baseline)
#   2. stampede,  CONNECTIONS connections, hold STAMPEDE_HOLD s   (same sources, 1 s heartbeats)
#   3. stampede and rawclient with SMALL connections               (fixed RSS, for the marginal)
#   4. CONNECT_REPEATS more short pairs (rawclient, stampede) for the connect rate only; the
#      connects/s compared are the medians over every run of each client
# While each client holds, it samples VmRSS (/proc/PID/status, max over the window) and CPU
# (utime+stime from /proc/PID/stat over a WINDOW-second window that starts SETTLE s after every
# connection is held). Prints a table; exits non-zero if any run misses a connection.
#
# Usage (root is not needed if the hard RLIMIT_NOFILE allows CONNECTIONS + 100):
#   scripts/bench/hold.sh
#   CONNECTIONS=5000 STAMPEDE_WORKERS=1 scripts/bench/hold.sh
#   KEEP=1 scripts/bench/hold.sh        # keep the raw outputs (path printed at the end)
#   STAMPEDE_BIN=/path/to/stampede scripts/bench/hold.sh   # measure a prebuilt binary
#
# Traffic stays on loopback (127.0.0.0/8). Nothing on the host is changed: no sysctl, no
# address, no file outside a temporary directory. The sinks are killed on exit, failure or not.

set -euo pipefail

CONNECTIONS=${CONNECTIONS:-19000}
SMALL=${SMALL:-200}
SOURCES=${SOURCES:-127.0.50.1-127.0.50.4}
PORT=${PORT:-7100}
SINKS=${SINKS:-3}
PAYLOAD=${PAYLOAD:-16}
RAW_HOLD=${RAW_HOLD:-20}
STAMPEDE_HOLD=${STAMPEDE_HOLD:-30}
SMALL_HOLD=${SMALL_HOLD:-7}
SETTLE=${SETTLE:-2}
WINDOW=${WINDOW:-15}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-10}
CONNECT_REPEATS=${CONNECT_REPEATS:-4}
STAMPEDE_WORKERS=${STAMPEDE_WORKERS:-}
STAMPEDE_BIN=${STAMPEDE_BIN:-} # a prebuilt stampede to measure instead of building this tree

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STAMPEDE=${STAMPEDE_BIN:-$ROOT/target/release/stampede}
WORK=$(mktemp -d /tmp/stampede-hold.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

die() {
    echo "hold.sh: $*" >&2
    exit 1
}

# --- cleanup: every process we started, by its own pid -------------------------------------
PIDS=()
cleanup() {
    local status=$?
    # Bounded: a sink that ignores SIGTERM for 5 s is killed.
    stop_pids 5 "${PIDS[@]}"
    if [[ -n ${KEEP:-} ]]; then
        echo "hold.sh: outputs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- checks ---------------------------------------------------------------------------------
(( WINDOW + SETTLE + 3 <= RAW_HOLD )) || die "RAW_HOLD must exceed SETTLE + WINDOW + 3"
(( WINDOW + SETTLE + 5 <= STAMPEDE_HOLD )) || die "STAMPEDE_HOLD must exceed SETTLE + WINDOW + 5"
hard_nofile=$(ulimit -Hn)
[[ $hard_nofile == unlimited ]] || (( hard_nofile >= CONNECTIONS + 100 )) ||
    die "RLIMIT_NOFILE hard limit $hard_nofile < CONNECTIONS + 100; lower CONNECTIONS"
read -r eph_lo eph_hi < /proc/sys/net/ipv4/ip_local_port_range
(( PORT < eph_lo || PORT > eph_hi )) ||
    die "PORT $PORT lies in the ephemeral range $eph_lo-$eph_hi; TIME_WAIT could block it"
[[ -z $(ss -Hltn "sport = :$PORT") ]] ||
    die "something already listens on port $PORT; stop it or set PORT"

# --- build ----------------------------------------------------------------------------------
if [[ -z $STAMPEDE_BIN ]]; then
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $STAMPEDE ]] || die "$STAMPEDE is not an executable"
cc -O2 -o "$WORK/rawclient" "$ROOT/scripts/bench/rawclient.c" || die "cannot build rawclient"

# --- helpers --------------------------------------------------------------------------------

# wait_exit PID TIMEOUT_S: waits for PID, killing it after TIMEOUT_S; sets EXIT_STATUS.
wait_exit() {
    local pid=$1 i
    for (( i = 0; i < $2 * 10; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "hold.sh: pid $pid overran its time; killing it" >&2
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < 50; i++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    EXIT_STATUS=0
    wait "$pid" || EXIT_STATUS=$?
    forget "$pid"
}




host_busy_ticks() { # busy and total jiffies of the whole host (first line of /proc/stat)
    local _ user nice system idle iowait irq softirq steal
    read -r _ user nice system idle iowait irq softirq steal _ < /proc/stat
    echo "$(( user + nice + system + irq + softirq + steal )) $(( user + nice + system + idle + iowait + irq + softirq + steal ))"
}

netcounter() { # netcounter FILE PREFIX NAME: a counter from /proc/net/{netstat,snmp}
    awk -v p="$2:" -v n="$3" '$1 == p && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
        $1 == p && h { print $col[n]; exit }' "$1"
}

net_snapshot() {
    echo "$(netcounter /proc/net/netstat TcpExt ListenOverflows) $(netcounter /proc/net/snmp Tcp RetransSegs)"
}

# measure PID LABEL: after SETTLE s, samples RSS each second for WINDOW s and CPU over the
# window; writes LABEL.measure as "rss_max_kib cpu_pct sinks_cpu_pct host_busy_pct window_s".
# Fails if the client exits before the window ends.
measure() {
    local pid=$1 label=$2 t_start t_end c0 c1 s0 s1 h0 h1 rss rss_max=0 i sink_pid
    sleep "$SETTLE"
    c0=$(cpu_ticks "$pid") || return 1
    s0=0
    for sink_pid in "${SINK_PIDS[@]}"; do s0=$(( s0 + $(cpu_ticks "$sink_pid") )); done
    h0=$(host_busy_ticks)
    t_start=$EPOCHREALTIME
    for (( i = 1; i <= WINDOW; i++ )); do
        rss=$(rss_kib "$pid") || return 1
        (( rss > rss_max )) && rss_max=$rss
        echo "$i $rss" >> "$WORK/$label.rss"
        sleep 1
    done
    c1=$(cpu_ticks "$pid") || return 1
    s1=0
    for sink_pid in "${SINK_PIDS[@]}"; do s1=$(( s1 + $(cpu_ticks "$sink_pid") )); done
    h1=$(host_busy_ticks)
    t_end=$EPOCHREALTIME
    [[ -r /proc/$pid/smaps_rollup ]] && cp "/proc/$pid/smaps_rollup" "$WORK/$label.smaps_rollup"
    awk -v r="$rss_max" -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" -v hz="$CLK_TCK" \
        -v t0="$t_start" -v t1="$t_end" -v h0="$h0" -v h1="$h1" 'BEGIN {
            split(h0, a, " "); split(h1, b, " "); w = t1 - t0
            printf "%d %.2f %.2f %.1f %.2f\n", r, 100 * (c1 - c0) / hz / w,
                100 * (s1 - s0) / hz / w, 100 * (b[1] - a[1]) / (b[2] - a[2]), w }' \
        > "$WORK/$label.measure"
}

# early PID LABEL OUTPUT: a client ended before its measurement window did; say how, and fail.
early() {
    wait_exit "$1" 1
    tail -n 5 "$3" "$WORK/$2.err" >&2 || true
    die "$2: the client ended during the measurement window (exit status $EXIT_STATUS)"
}

# raw_run LABEL N HOLD [measure]: the baseline client; with "measure", samples its hold.
raw_run() {
    local label=$1 n=$2 hold=$3 mode=${4:-} pid net0
    net0=$(net_snapshot)
    "$WORK/rawclient" -t "127.0.0.1:$PORT" -s "$SOURCES" -n "$n" -H "$hold" -p "$PAYLOAD" \
        -c "$CONNECT_TIMEOUT" -T 5 -v > "$WORK/$label.json" 2> "$WORK/$label.err" &
    pid=$!
    PIDS+=("$pid")
    if [[ $mode == measure ]]; then
        wait_line "$pid" "$WORK/$label.err" "^holding $n\$" $(( CONNECT_TIMEOUT + 10 )) ||
            { cat "$WORK/$label.err" >&2; die "$label: not all $n connections were established"; }
        echo "$(net_snapshot)" "$net0" > "$WORK/$label.net"
        measure "$pid" "$label" || early "$pid" "$label" "$WORK/$label.json"
    fi
    wait_exit "$pid" $(( CONNECT_TIMEOUT + hold + 30 ))
    [[ $EXIT_STATUS == 0 && $(jq .established "$WORK/$label.json") == "$n" ]] ||
        { cat "$WORK/$label.json" "$WORK/$label.err" >&2; die "$label: rawclient exited $EXIT_STATUS, not all $n held"; }
}

# stampede_run LABEL N HOLD [measure]: stampede with progress lines on stderr (the "open N/N"
# line is the all-held signal; --quiet would leave nothing to poll). Its hold starts when the
# ramp is planned to end, not when the last connection is up.
stampede_run() {
    local label=$1 n=$2 hold=$3 mode=${4:-} pid net0 workers=()
    [[ -n $STAMPEDE_WORKERS ]] && workers=(--workers "$STAMPEDE_WORKERS")
    net0=$(net_snapshot)
    "$STAMPEDE" run "$WORK/profile.json" --out "$WORK/$label" "${workers[@]}" \
        --set "connections=$n" --set "phases.1.hold.for=${hold}s" \
        > "$WORK/$label.out" 2> "$WORK/$label.err" &
    pid=$!
    PIDS+=("$pid")
    if [[ $mode == measure ]]; then
        wait_line "$pid" "$WORK/$label.err" " open +$n/$n " $(( CONNECT_TIMEOUT + 10 )) ||
            { cat "$WORK/$label.err" >&2; die "$label: stampede never reported $n connections open"; }
        echo "$(net_snapshot)" "$net0" > "$WORK/$label.net"
        measure "$pid" "$label" || early "$pid" "$label" "$WORK/$label.out"
    fi
    wait_exit "$pid" $(( CONNECT_TIMEOUT + hold + 30 ))
    [[ $EXIT_STATUS == 0 ]] ||
        { cat "$WORK/$label.out" "$WORK/$label.err" >&2; die "$label: stampede exited $EXIT_STATUS"; }
    [[ $(jq .connections.established "$WORK/$label/summary.json") == "$n" ]] ||
        die "$label: summary.json does not show $n connections established"
}

# --- sinks ----------------------------------------------------------------------------------
SINK_PIDS=()
for (( i = 1; i <= SINKS; i++ )); do
    "$STAMPEDE" sink --listen "127.0.0.1:$PORT" --quiet > "$WORK/sink$i.out" 2>&1 &
    SINK_PIDS+=("$!")
    PIDS+=("$!")
done
for (( i = 1; i <= SINKS; i++ )); do
    wait_line "${SINK_PIDS[i - 1]}" "$WORK/sink$i.out" "^listening on 127.0.0.1:$PORT\$" 10 ||
        { cat "$WORK/sink$i.out" >&2; die "sink $i did not start"; }
done

cat > "$WORK/profile.json" <<EOF
{"name":"hold-${CONNECTIONS}","target":{"addrs":["127.0.0.1:$PORT"]},"protocol":"tcp","connections":$CONNECTIONS,
 "sources":{"addrs":["$SOURCES"]},
 "heartbeat":{"interval":"1s","payload_bytes":$PAYLOAD,"timeout":"5s"},
 "connect_timeout":"${CONNECT_TIMEOUT}s",
 "phases":[{"ramp":{"rate":1000000}},{"hold":{"for":"${STAMPEDE_HOLD}s"}}]}
EOF

TW_BEFORE=$(ss -Htan state time-wait "dport = :$PORT" | wc -l)
echo "hold.sh: host: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
    "Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [[ -n $STAMPEDE_BIN ]]; then
    echo "hold.sh: stampede is $STAMPEDE_BIN ($("$STAMPEDE" --version))" >&2
else
    echo "hold.sh: stampede built from $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" &&
        [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] && echo ' with uncommitted changes')" >&2
fi
# The binary's own identity: if someone rebuilds the tree while this runs, a later run's hash
# (and the commit line above) shows it.
echo "hold.sh: binary sha256 $(sha256sum "$STAMPEDE" | cut -c1-16), built $(date -r "$STAMPEDE" '+%F %T')" >&2
echo "hold.sh: $SINKS sinks on 127.0.0.1:$PORT; $CONNECTIONS connections from $SOURCES" \
    "($TW_BEFORE TIME_WAIT to the port before the first run)" >&2
echo "hold.sh: rawclient, $CONNECTIONS connections, hold ${RAW_HOLD}s" >&2
raw_run raw "$CONNECTIONS" "$RAW_HOLD" measure
echo "hold.sh: stampede, $CONNECTIONS connections, hold ${STAMPEDE_HOLD}s" >&2
stampede_run stampede "$CONNECTIONS" "$STAMPEDE_HOLD" measure
SETTLE=1 WINDOW=3
echo "hold.sh: fixed RSS: stampede and rawclient with $SMALL connections" >&2
stampede_run stampede_small "$SMALL" "$SMALL_HOLD" measure
raw_run raw_small "$SMALL" "$SMALL_HOLD" measure
# The connect phase lasts well under a second, so one pair of runs is at the mercy of whatever
# else the host does in that second: repeat it, alternating, and compare the medians.
for (( k = 1; k <= CONNECT_REPEATS; k++ )); do
    echo "hold.sh: connect rate, pair $k of $CONNECT_REPEATS" >&2
    raw_run "raw_c$k" "$CONNECTIONS" 1
    stampede_run "stampede_c$k" "$CONNECTIONS" 3
done

# --- report ---------------------------------------------------------------------------------
to_us() { # "343µs", "1.55ms", "2.1s" or a bare number of microseconds -> microseconds
    awk '{ x = $1; u = x; sub(/^[0-9.]+/, "", u); x = x + 0
           if (u == "ms") x *= 1000; else if (u == "s") x *= 1e6; printf "%.0f\n", x }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : "-") }'; }
read -r raw_rss raw_cpu raw_sinks raw_host raw_w < "$WORK/raw.measure"
read -r st_rss st_cpu st_sinks st_host st_w < "$WORK/stampede.measure"
read -r st_small_rss _ < "$WORK/stampede_small.measure"
read -r raw_small_rss _ < "$WORK/raw_small.measure"
read -r raw_ovf1 raw_rtx1 raw_ovf0 raw_rtx0 < "$WORK/raw.net"
read -r st_ovf1 st_rtx1 st_ovf0 st_rtx0 < "$WORK/stampede.net"
S=$WORK/stampede/summary.json
raw_cps_all=$(for f in "$WORK"/raw.json "$WORK"/raw_c*.json; do jq .connects_per_s "$f"; done | sort -n)
st_cps_all=$(for f in "$WORK"/stampede/summary.json "$WORK"/stampede_c*/summary.json; do
    jq .connections.connects_per_s "$f"; done | sort -n)
raw_cps=$(median <<< "$raw_cps_all")
st_cps=$(median <<< "$st_cps_all")
raw_secs=$(jq .connect_seconds "$WORK/raw.json")
raw_p99=$(jq .heartbeat_rtt_us.p99 "$WORK/raw.json")
st_secs=$(jq '.connections.last_established_s - .connections.first_attempt_s' "$S")
st_p99=$(jq .latency_us.heartbeat_rtt.p99 "$S")
st_p999=$(jq .latency_us.heartbeat_rtt.p999 "$S")
st_hb=$(jq -r '"\(.heartbeats.answered)/\(.heartbeats.sent)"' "$S")
raw_hb=$(jq -r '"\(.heartbeats.answered)/\(.heartbeats.sent)"' "$WORK/raw.json")
# Median of the per-second heartbeat p99s each client printed while holding, skipping the
# first 3 s (stampede's first seconds overlap its connect burst).
st_p99_steady=$(awk '/hold/ && / open / { for (i = 1; i <= NF; i++) if ($i == "p99") v = $(i + 1)
        if (++n > 3) print v }' "$WORK/stampede.err" | to_us | median)
raw_p99_steady=$(awk '/^second / { for (i = 1; i <= NF; i++) if ($i == "p99") v = $(i + 1); if (++n > 3) print v }' "$WORK/raw.err" | median)
workers=$(jq .workers "$S")

awk -v n="$CONNECTIONS" -v small="$SMALL" -v rcps="$raw_cps" -v scps="$st_cps" \
    -v runs=$(( CONNECT_REPEATS + 1 )) -v rall="$(echo $raw_cps_all)" -v sall="$(echo $st_cps_all)" \
    -v rsecs="$raw_secs" -v ssecs="$st_secs" \
    -v rrss="$raw_rss" -v srss="$st_rss" -v rsmall="$raw_small_rss" -v ssmall="$st_small_rss" \
    -v rcpu="$raw_cpu" -v scpu="$st_cpu" -v rsinks="$raw_sinks" -v ssinks="$st_sinks" \
    -v rhost="$raw_host" -v shost="$st_host" -v w="$st_w" \
    -v rp99="$raw_p99" -v sp99="$st_p99" -v sp999="$st_p999" -v sp99s="$st_p99_steady" \
    -v rp99s="$raw_p99_steady" \
    -v rhb="$raw_hb" -v shb="$st_hb" -v workers="$workers" -v ncpu="$(nproc)" \
    -v rovf=$(( raw_ovf1 - raw_ovf0 )) -v rrtx=$(( raw_rtx1 - raw_rtx0 )) \
    -v sovf=$(( st_ovf1 - st_ovf0 )) -v srtx=$(( st_rtx1 - st_rtx0 )) 'BEGIN {
    ratio = scps / rcps
    rtot = rrss * 1024 / n; stot = srss * 1024 / n
    rmarg = (rrss - rsmall) * 1024 / (n - small); smarg = (srss - ssmall) * 1024 / (n - small)
    printf "\n%d connections, 1 s heartbeats; stampede with %d worker(s)\n\n", n, workers
    printf "%-44s %14s %14s %10s\n", "", "rawclient", "stampede", "ratio"
    printf "%-44s %14.0f %14.0f %10.3f  %s\n", sprintf("connects/s, median of %d runs", runs), rcps, scps, ratio, (ratio >= 0.9 ? "goal >= 0.9: met" : "goal >= 0.9: MISSED")
    printf "%-44s %14.3f %14.3f\n", "  seconds to establish all (held run)", rsecs, ssecs
    printf "%-44s %14d %14d %10.1f\n", "RSS while holding, KiB", rrss, srss, srss / rrss
    printf "%-44s %14d %14d\n", sprintf("RSS with %d connections, KiB", small), rsmall, ssmall
    printf "%-44s %14.0f %14.0f %10.1f  %s\n", "RSS per connection, total, bytes", rtot, stot, stot / rtot, (stot <= 1024 ? "goal <= 1 KiB: met" : "goal <= 1 KiB: MISSED")
    printf "%-44s %14.0f %14.0f %10.1f  %s\n", "RSS per connection, marginal, bytes", rmarg, smarg, (rmarg > 0 ? smarg / rmarg : 0), (smarg <= 1024 ? "goal <= 1 KiB: met" : "goal <= 1 KiB: MISSED")
    printf "%-44s %14.1f %14.1f %10.2f\n", sprintf("CPU while holding, %% of one core (%.0f s)", w), rcpu, scpu, (rcpu > 0 ? scpu / rcpu : 0)
    printf "%-44s %14.1f %14.1f\n", "  sinks CPU in the same window, % of one core", rsinks, ssinks
    printf "%-44s %14.1f %14.1f\n", sprintf("  whole host busy in the window, %% of %d cores", ncpu), rhost, shost
    printf "%-44s %14s %14s\n", "heartbeat RTT p99, us (all heartbeats)", rp99, sp99
    printf "%-44s %14s %14s\n", "heartbeat RTT p99, us (median of 1 s, hold)", rp99s, sp99s
    printf "%-44s %14s %14s\n", "heartbeat RTT p99.9, us (whole run)", "-", sp999
    printf "%-44s %14s %14s\n", "heartbeats answered/sent", rhb, shb
    printf "%-44s %14s %14s\n", "listen overflows / TCP retransmits, connect", rovf " / " rrtx, sovf " / " srtx
    printf "\nconnects/s of every run, slowest first: rawclient %s; stampede %s\n", rall, sall
}'
echo
echo "command: CONNECTIONS=$CONNECTIONS SOURCES=$SOURCES SINKS=$SINKS CONNECT_REPEATS=$CONNECT_REPEATS" \
    "${STAMPEDE_WORKERS:+STAMPEDE_WORKERS=$STAMPEDE_WORKERS }${STAMPEDE_BIN:+STAMPEDE_BIN=$STAMPEDE_BIN }scripts/bench/hold.sh"
