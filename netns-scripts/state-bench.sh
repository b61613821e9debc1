#!/usr/bin/env bash
# state-bench.sh [N] - the cost of the state file (`run --keep-on-exit`) at scale: the
# article lab's centos7-1 with 100,000 services (one local `apply`), then N (default 200)
# `service set` of one more service each over one API connection (set-latency.py), with the
# state file on and off; prints median / p99 / max ms of each and the state file's figures
# (snapshot and journal bytes, compactions). Then SIGKILL and a restart with the state
# file: every service must be back (the journal replayed). Runs as root; leaves nothing
# behind (lab.sh down on exit).
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_PREFIX=${LAB_PREFIX:-sj-}
BIN=${UCANAL_BIN:-$HERE/../target/release/ucanal}
export UCANAL_BIN=$BIN
n=${1:-200}
trap '"$HERE/lab.sh" down >/dev/null 2>&1 || true; rm -f /tmp/state-bench.100k.json' EXIT

count() { "$BIN" --socket "$1" show node | sed -n 's/^  "services": *\([0-9]*\).*/\1/p'; }
stats() { # median p99 max of the sorted figures on stdin
    awk '{for (i = 1; i <= NF; i++) a[i] = $i} END {printf "median %s ms  p99 %s ms  max %s ms (%d calls)", a[int((NF + 1) / 2)], a[int(NF * 0.99 + 0.5)], a[NF], NF}'
}
python3 "$HERE/gen-services.py" 100000 >/tmp/state-bench.100k.json
for mode in on off; do
    args=""
    [[ $mode == off ]] || args="--keep-on-exit"
    UCANAL_RUN_ARGS=$args "$HERE/lab.sh" up --force >"/tmp/state-bench.$LAB_PREFIX.log" 2>&1
    s=$("$HERE/lab.sh" socket centos7-1)
    base=$(count "$s")
    t0=$(date +%s%N)
    "$BIN" --socket "$s" apply -f /tmp/state-bench.100k.json >/dev/null
    until [[ $(count "$s") == $((base + 100000)) ]]; do sleep 0.05; done
    printf 'state file %s: 100,000 services in %d ms\n' "$mode" $((($(date +%s%N) - t0) / 1000000))
    sleep 2   # the compaction of the big apply's record, if any, done
    printf 'state file %s: service set on top of 100,000: %s\n' "$mode" "$(python3 "$HERE/set-latency.py" "$s" "$n" | stats)"
    if [[ $mode == on ]]; then
        "$BIN" --socket "$s" show node | python3 -c 'import json,sys; print("state file:", json.dumps(json.load(sys.stdin)["state_file"]))'
        # What a whole rewrite costs (what every change cost before the journal), off the request path now.
        grep 'state file compacted' "/run/ucanal-lab/$LAB_PREFIX/centos7-1.log" | tail -n1 | sed 's/^.*INFO/compaction (on its thread):/'
        ms=$(UCANAL_RUN_ARGS=$args "$HERE/lab.sh" restart centos7-1 KILL)
        got=$(count "$s")
        printf 'SIGKILL + restart: %s ms, %s of %s services back\n' "$ms" "$got" $((base + 100000 + n))
        [[ $got == $((base + 100000 + n)) ]] || { echo "services lost across the restart" >&2; exit 1; }
    fi
    "$HERE/lab.sh" down >/dev/null 2>&1
done
