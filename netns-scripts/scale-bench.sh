#!/usr/bin/env bash
# scale-bench.sh [RUNS] - the service-table scale figures of the etcd lab, RUNS times each
# (default 3), printing every run and the median:
#   apply4   `apply -f` of 10,000 Services + Endpoints (one JSON List, gen-services.py) on
#            node01 of a 4-node cluster -> all 10,000 in every node's table (s); `written`
#            is when `apply` returned (manifest read + check + etcd writes)
#   fill1    100,000 in one manifest -> in node01's table (s), through etcd (a 1-node
#            cluster) and without (the article lab's centos7-1, `local`)
#   plus1    one more service on top of those 100,000 -> in that table (ms): from the
#            `apply` request to the first `show node` answer counting it, both on one API
#            connection (apply-latency.py), so no process start is in the figure
# and, for apply4 and fill1, the CPU seconds (user+sys) the client, the daemons and etcd
# spent meanwhile (load-independent, unlike the wall clock on a shared machine).
# Runs as root; leaves nothing behind (lab.sh down on exit).
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_PREFIX=${LAB_PREFIX:-sb-}
BIN=${UCANAL_BIN:-$HERE/../target/release/ucanal}
export UCANAL_BIN=$BIN
RUN=/run/ucanal-lab/$LAB_PREFIX
runs=${1:-3}
trap '"$HERE/lab.sh" down >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc | awk '{printf "%.2f", $1}'; }
sock() { printf '/run/ucanal/%s%s.sock\n' "$LAB_PREFIX" "$1"; }
count() { "$BIN" --socket "$(sock "$1")" show node --json 2>/dev/null | sed -n "s/.*\"services\": *\([0-9]*\).*/\1/p"; }
wait_count() { # wait_count N SECONDS NODES...: every node's table holds N services
    local want=$1 deadline=$(($(date +%s) + $2)) n
    shift 2
    for n in "$@"; do
        until [[ $(count "$n") == "$want" ]]; do
            (($(date +%s) < deadline)) || return 1
            sleep 0.02
        done
    done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ticks() { # ticks PID...: their user+sys CPU, in clock ticks
    local p t=0
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
lab_pids() { pgrep -f "ucanal run --config $RUN" || true; pgrep -f "etcd .*$RUN" || true; }
HZ=$(getconf CLK_TCK)
cpu_s() { echo "scale=2; $1 / $HZ" | bc; }
CLIENT_CPU=/tmp/scale-bench.client-cpu
timed_apply() { # timed_apply SOCKET FILE: apply, the client's CPU seconds in $CLIENT_CPU
    local TIMEFORMAT='%U %S' # bash's own `time`: no extra package
    { time "$BIN" --socket "$1" apply -f "$2" >/dev/null 2>"$CLIENT_CPU.err"; } 2>"$CLIENT_CPU.raw" ||
        { cat "$CLIENT_CPU.err" >&2; return 1; }
    awk '{printf "%.2f\n", $1 + $2}' "$CLIENT_CPU.raw" >"$CLIENT_CPU"
}

python3 "$HERE/gen-services.py" 10000 >"/tmp/scale-bench.10k.json"
python3 "$HERE/gen-services.py" 100000 >"/tmp/scale-bench.100k.json"
python3 "$HERE/gen-services.py" 1 100000 >"/tmp/scale-bench.plus1.json"
plus1() { # plus1 SOCKET WANT: ms from the `apply` request of one more service until the
    # table holds WANT, over one API connection (apply-latency.py: no process start in it)
    python3 "$HERE/apply-latency.py" "$1" "$2" /tmp/scale-bench.plus1.json
}
count_sock() { "$BIN" --socket "$1" show node --json 2>/dev/null | sed -n "s/.*\"services\": *\([0-9]*\).*/\1/p"; }
fill() { # fill SOCKET WANT SECONDS: s from `apply` of the 100,000 until the table holds WANT,
    # and the CPU seconds of the client, the daemons and etcd meanwhile ("S CPU")
    local t c0 f
    mapfile -t pids < <(lab_pids)
    c0=$(ticks "${pids[@]}")
    t=$(now)
    timed_apply "$1" /tmp/scale-bench.100k.json
    until [[ $(count_sock "$1") == "$2" ]]; do
        (($(date +%s) - ${t%.*} < $3)) || { echo timeout; return; }
        sleep 0.02
    done
    f=$(since "$t")
    echo "$f $(echo "$(cat "$CLIENT_CPU") + $(cpu_s $(($(ticks "${pids[@]}") - c0)))" | bc)"
}
A4=() W4=() C4=() F1=() CF=() P1=() FL=() CL=() PL=()
for ((r = 1; r <= runs; r++)); do
    "$HERE/lab.sh" up --force --nodes 4 --etcd >"/tmp/scale-bench.$LAB_PREFIX.log" 2>&1
    mapfile -t pids < <(lab_pids)
    c0=$(ticks "${pids[@]}")
    t=$(now)
    timed_apply "$(sock node01)" /tmp/scale-bench.10k.json
    w=$(since "$t")
    wait_count 10000 120 node01 node02 node03 node04 && a=$(since "$t") || a=timeout
    c4=$(echo "$(cat "$CLIENT_CPU") + $(cpu_s $(($(ticks "${pids[@]}") - c0)))" | bc)
    "$HERE/lab.sh" down >/dev/null 2>&1
    "$HERE/lab.sh" up --force --nodes 1 --etcd >>"/tmp/scale-bench.$LAB_PREFIX.log" 2>&1
    read -r f cf < <(fill "$(sock node01)" 100000 300)
    sleep 1
    p=$(plus1 "$(sock node01)" 100001)
    "$HERE/lab.sh" down >/dev/null 2>&1
    # the same without etcd: the article lab's centos7-1, services applied to it alone
    "$HERE/lab.sh" up --force >>"/tmp/scale-bench.$LAB_PREFIX.log" 2>&1
    s=$("$HERE/lab.sh" socket centos7-1)
    base=$(count_sock "$s")
    read -r fl cl < <(fill "$s" $((base + 100000)) 300)
    sleep 1
    pl=$(plus1 "$s" $((base + 100001)))
    "$HERE/lab.sh" down >/dev/null 2>&1
    printf 'run %d: apply4 %s s (written %s s, %s CPU-s)  etcd: fill1 %s s (%s CPU-s) plus1 %s ms  local: fill1 %s s (%s CPU-s) plus1 %s ms  load %s\n' \
        "$r" "$a" "$w" "$c4" "$f" "$cf" "$p" "$fl" "$cl" "$pl" "$(cut -d' ' -f1-3 /proc/loadavg)"
    A4+=("$a") W4+=("$w") C4+=("$c4") F1+=("$f") CF+=("$cf") P1+=("$p") FL+=("$fl") CL+=("$cl") PL+=("$pl")
done
m() { printf '%s\n' "$@" | median; }
printf 'median: apply4 %s s (written %s s, %s CPU-s)  etcd: fill1 %s s (%s CPU-s) plus1 %s ms  local: fill1 %s s (%s CPU-s) plus1 %s ms\n' \
    "$(m "${A4[@]}")" "$(m "${W4[@]}")" "$(m "${C4[@]}")" "$(m "${F1[@]}")" "$(m "${CF[@]}")" "$(m "${P1[@]}")" \
    "$(m "${FL[@]}")" "$(m "${CL[@]}")" "$(m "${PL[@]}")"
