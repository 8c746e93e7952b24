# Helpers shared by the benchmark scripts (sourced, not run). Builtins where a helper runs in a
# polling loop, so that polling does not compete with the load it measures.

# stop_pids SECONDS PID...: SIGTERM to each, then SIGKILL to any still alive after SECONDS;
# reaps them. Bounded whatever the processes do.
stop_pids() {
    local grace=$1 pid i
    shift
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for (( i = 0; i < grace * 10; i++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# wait_line PID FILE REGEX TIMEOUT_S: polls FILE until a line matches, PID dies, or time is up.
wait_line() {
    local pid=$1 file=$2 re=$3 deadline line
    deadline=$(( ${EPOCHREALTIME/./} + $4 * 1000000 ))
    while :; do
        if [[ -f $file ]]; then
            while IFS= read -r line; do
                [[ $line =~ $re ]] && return 0
            done < "$file"
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        (( ${EPOCHREALTIME/./} < deadline )) || return 1
        sleep 0.05
    done
}

# forget PID: drops PID from the PIDS cleanup list once it has been reaped.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# cpu_ticks PID: utime + stime, in clock ticks (fields after comm, which has no spaces here).
cpu_ticks() {
    local f
    read -r -a f < "/proc/$1/stat" || return 1
    echo $(( f[13] + f[14] ))
}

# rss_kib PID: VmRSS in KiB; fails if the process is gone.
rss_kib() {
    local key value _
    [[ -r /proc/$1/status ]] || return 1
    while read -r key value _; do
        [[ $key == VmRSS: ]] && { echo "$value"; return 0; }
    done < "/proc/$1/status"
    return 1
}
