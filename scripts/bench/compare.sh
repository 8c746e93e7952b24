#!/usr/bin/env bash
# Side by side at 19,000 connections per process: the raw epoll client (baseline), stampede and
# tsung (Debian's package), each holding every connection with a 16-byte heartbeat a second
# against the same kind of sink: 3 `stampede sink` processes sharing 127.0.0.1:PORT.
#
#   1. scripts/bench/hold.sh measures rawclient and stampede (connect rate as the median of
#      CONNECT_REPEATS + 1 runs each, RSS at CONNECTIONS and at SMALL connections).
#   2. tsung then runs the same load on fresh sinks of the same kind: CONNECTIONS users
#      arriving as fast as it can start them (ARRIVAL per second asked), each sending the same
#      heartbeat every second; then SMALL users for its fixed RSS.
#
# tsung reports no per-connection connect timestamps, so its connect rate is measured from
# outside: `ss` counts established connections to PORT every 0.1 s, from the first to the
# last. rawclient and stampede time their own connects; their figures come from hold.sh.
# Prints connects/s and RSS per held connection (total and marginal) for each, as ratios to
# the raw client; exits non-zero if a client did not hold every connection.
#
# Usage: scripts/bench/compare.sh            (installs tsung with apt-get when missing, as root)
#        CONNECTIONS=5000 scripts/bench/compare.sh
# Traffic stays on 127.0.0.0/8; nothing on the host changes besides the tsung package.

set -euo pipefail

CONNECTIONS=${CONNECTIONS:-19000}
SMALL=${SMALL:-200}
SOURCES_LIST=${SOURCES_LIST:-127.0.50.1 127.0.50.2 127.0.50.3 127.0.50.4}
PORT=${PORT:-7100}
ARRIVAL=${ARRIVAL:-50000}
WINDOW=${WINDOW:-10}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STAMPEDE=$ROOT/target/release/stampede
WORK=$(mktemp -d /tmp/stampede-compare.XXXXXX)
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
say() { echo "compare.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

PIDS=()
cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    pkill -f "tsung.*$WORK" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n ${KEEP:-} ]]; then say "outputs kept in $WORK"; else rm -rf "$WORK" "${HOLD:-}"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v tsung > /dev/null; then
    say "installing tsung (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tsung > "$WORK/apt.log" 2>&1 ||
        { cat "$WORK/apt.log" >&2; die "cannot install tsung"; }
fi

# --- 1. rawclient and stampede ----------------------------------------------------------------
say "rawclient and stampede: scripts/bench/hold.sh (CONNECTIONS=$CONNECTIONS)"
KEEP=1 CONNECTIONS=$CONNECTIONS SMALL=$SMALL PORT=$PORT SOURCES=${SOURCES:-127.0.50.1-127.0.50.4} \
    "$ROOT/scripts/bench/hold.sh" > "$WORK/hold.out" 2> "$WORK/hold.err" ||
    { tail -20 "$WORK/hold.err" >&2; die "hold.sh failed"; }
HOLD=$(sed -n 's/^hold.sh: outputs kept in //p' "$WORK/hold.err")
[[ -d $HOLD ]] || die "hold.sh did not say where its outputs are"


# --- 2. tsung -----------------------------------------------------------------------------------
established() { ss -Htn state established "( dport = :$PORT )" | wc -l; }

for i in 1 2 3; do
    "$STAMPEDE" sink --listen "127.0.0.1:$PORT" --quiet > "$WORK/sink$i.out" 2>&1 &
    PIDS+=("$!")
done
for i in 1 2 3; do
    for (( t = 0; t < 100; t++ )); do
        grep -q "^listening on" "$WORK/sink$i.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "^listening on" "$WORK/sink$i.out" || die "sink $i did not start"
done

# tsung_run LABEL USERS: writes its config, starts it, measures; leaves LABEL.measure with
# "connects_per_s rss_max_kib".
tsung_run() {
    local label=$1 users=$2 ips="" ip beats duration pid t0="" t1="" n now rss rss_max=0 deadline
    for ip in $SOURCES_LIST; do ips+="<ip value=\"$ip\"/>"; done
    # tsung starts users one by one in its launcher (a few hundred a second on this machine
    # while the host is busy), whatever arrival rate is asked for; maxnumber stops the phase.
    duration=$(( users / 200 + 30 ))
    # Enough beats to connect everyone, settle and measure.
    beats=$(( duration + 30 + WINDOW ))
    mkdir -p "$WORK/$label"
    cat > "$WORK/$label.xml" <<EOF
<?xml version="1.0"?>
<!DOCTYPE tsung SYSTEM "/usr/share/tsung/tsung-1.0.dtd">
<tsung loglevel="error" version="1.0">
  <clients><client host="localhost" use_controller_vm="true" maxusers="$(( users + 1000 ))">$ips</client></clients>
  <servers><server host="127.0.0.1" port="$PORT" type="tcp"/></servers>
  <load>
    <arrivalphase phase="1" duration="$duration" unit="second">
      <users maxnumber="$users" arrivalrate="$ARRIVAL" unit="second"/>
    </arrivalphase>
  </load>
  <sessions>
    <session probability="100" name="hold" type="ts_raw">
      <for from="1" to="$beats" var="i">
        <request><raw data="0123456789abcdef" ack="local"/></request>
        <thinktime value="1" random="false"/>
      </for>
    </session>
  </sessions>
</tsung>
EOF
    tsung -f "$WORK/$label.xml" -l "$WORK/$label" start > "$WORK/$label.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    deadline=$(( SECONDS + duration + 30 ))
    while (( SECONDS < deadline )); do
        n=$(established)
        now=$EPOCHREALTIME
        [[ -z $t0 ]] && (( n > 0 )) && t0=$now
        if (( n >= users )); then t1=$now; break; fi
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/$label.out" >&2; die "tsung ($label) exited early"; }
        sleep 0.1
    done
    [[ -n $t1 ]] || die "tsung ($label) did not hold $users connections within $(( duration + 30 )) s (reached $(established))"
    sleep 2
    local beam
    beam=$(pgrep -f "beam.*tsung_controller" | head -1)
    [[ -n $beam ]] || die "cannot find tsung's Erlang VM"
    for (( i = 0; i < WINDOW; i++ )); do
        rss=$(rss_kib "$beam" || echo 0)
        (( rss > rss_max )) && rss_max=$rss
        sleep 1
    done
    n=$(established)
    (( n >= users )) || die "tsung ($label) dropped connections while holding: $n of $users"
    awk -v a="$t0" -v b="$t1" -v u="$users" -v r="$rss_max" \
        'BEGIN { printf "%.0f %d\n", (b > a ? u / (b - a) : u / 0.1), r }' > "$WORK/$label.measure"
    kill "$beam" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for (( i = 0; i < 100; i++ )); do (( $(established) == 0 )) && break; sleep 0.1; done
}

say "tsung $(dpkg-query -W -f '${Version}' tsung 2>/dev/null), $CONNECTIONS users"
tsung_run tsung "$CONNECTIONS"
say "tsung, $SMALL users (fixed RSS)"
tsung_run tsung_small "$SMALL"

# --- report -----------------------------------------------------------------------------------------
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : "-") }'; }
raw_cps=$(for f in "$HOLD"/raw.json "$HOLD"/raw_c*.json; do jq .connects_per_s "$f"; done | median)
st_cps=$(for f in "$HOLD"/stampede/summary.json "$HOLD"/stampede_c*/summary.json; do
    jq .connections.connects_per_s "$f"; done | median)
read -r raw_rss _ < "$HOLD/raw.measure"
read -r raw_small _ < "$HOLD/raw_small.measure"
read -r st_rss _ < "$HOLD/stampede.measure"
read -r st_small _ < "$HOLD/stampede_small.measure"
read -r ts_cps ts_rss < "$WORK/tsung.measure"
read -r _ ts_small < "$WORK/tsung_small.measure"

awk -v n="$CONNECTIONS" -v small="$SMALL" \
    -v rc="$raw_cps" -v sc="$st_cps" -v tc="$ts_cps" \
    -v rr="$raw_rss" -v sr="$st_rss" -v tr="$ts_rss" \
    -v rs="$raw_small" -v ss="$st_small" -v ts="$ts_small" 'BEGIN {
    printf "\n%d connections per process, 1 s heartbeats of 16 bytes, same sinks\n\n", n
    printf "%-12s %12s %8s %16s %8s %19s %8s\n", "client", "connects/s", "x raw", "RSS/conn total", "x raw", "RSS/conn marginal", "x raw"
    split("rawclient stampede tsung", name, " ")
    c[1] = rc; c[2] = sc; c[3] = tc; r[1] = rr; r[2] = sr; r[3] = tr; s[1] = rs; s[2] = ss; s[3] = ts
    for (i = 1; i <= 3; i++) {
        tot[i] = r[i] * 1024 / n; marg[i] = (r[i] - s[i]) * 1024 / (n - small)
        printf "%-12s %12.0f %8.3f %14.0f B %8.1f %17.0f B %8.1f\n", name[i], c[i], c[i] / c[1], tot[i], tot[i] / tot[1], marg[i], (marg[1] > 0 ? marg[i] / marg[1] : 0)
    }
    printf "\ngoals: connects/s >= 0.9 x raw: %s; RSS per held connection <= 1 KiB: total %s, marginal %s; better than tsung on both: %s\n",
        (c[2] / c[1] >= 0.9 ? "met" : "MISSED"), (tot[2] <= 1024 ? "met" : "MISSED"), (marg[2] <= 1024 ? "met" : "MISSED"),
        (c[2] > c[3] && tot[2] < tot[3] ? "met" : "MISSED")
}'

