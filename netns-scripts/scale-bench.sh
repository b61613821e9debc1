#!/usr/bin/env bash
# scale-bench.sh [RUNS] - the service-table scale figures of the etcd lab, RUNS times each
# (default 3), printing every run and the median:
#   apply4   `apply -f` of 10,000 Services + Endpoints (one JSON List, gen-services.py) on
#            node01 of a 4-node cluster -> all 10,000 in every node's table (s); `written`
#            is when `apply` returned (manifest read + check + etcd writes)
#   fill1    100,000 in one manifest -> in node01's table (s) (a 1-node cluster)
#   plus1    one more service on top of those 100,000 -> in node01's table (ms), as
#            `show node` sees it (`services` count), polled every 2 ms
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
count() { "$BIN" --socket "$(sock "$1")" show node --json 2>/dev/null | sed -n 's/.*"services":\([0-9]*\).*/\1/p'; }
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

python3 "$HERE/gen-services.py" 10000 >"/tmp/scale-bench.10k.json"
python3 "$HERE/gen-services.py" 100000 >"/tmp/scale-bench.100k.json"
python3 "$HERE/gen-services.py" 1 100000 >"/tmp/scale-bench.plus1.json"
A4=() W4=() F1=() P1=()
for ((r = 1; r <= runs; r++)); do
    "$HERE/lab.sh" up --force --nodes 4 --etcd >"/tmp/scale-bench.$LAB_PREFIX.log" 2>&1
    t=$(now)
    "$BIN" --socket "$(sock node01)" apply -f /tmp/scale-bench.10k.json >/dev/null
    w=$(since "$t")
    wait_count 10000 120 node01 node02 node03 node04 && a=$(since "$t") || a=timeout
    "$HERE/lab.sh" down >/dev/null 2>&1
    "$HERE/lab.sh" up --force --nodes 1 --etcd >>"/tmp/scale-bench.$LAB_PREFIX.log" 2>&1
    t=$(now)
    "$BIN" --socket "$(sock node01)" apply -f /tmp/scale-bench.100k.json >/dev/null
    wait_count 100000 300 node01 && f=$(since "$t") || f=timeout
    sleep 1
    t=$(now)
    "$BIN" --socket "$(sock node01)" apply -f /tmp/scale-bench.plus1.json >/dev/null
    until [[ $(count node01) == 100001 ]]; do sleep 0.002; done
    p=$(echo "($(now) - $t) * 1000" | bc | awk '{printf "%.0f", $1}')
    "$HERE/lab.sh" down >/dev/null 2>&1
    printf 'run %d: apply4 %s s (written %s s)  fill1 %s s  plus1 %s ms\n' "$r" "$a" "$w" "$f" "$p"
    A4+=("$a") W4+=("$w") F1+=("$f") P1+=("$p")
done
printf 'median: apply4 %s s (written %s s)  fill1 %s s  plus1 %s ms\n' \
    "$(printf '%s\n' "${A4[@]}" | median)" "$(printf '%s\n' "${W4[@]}" | median)" \
    "$(printf '%s\n' "${F1[@]}" | median)" "$(printf '%s\n' "${P1[@]}" | median)"
