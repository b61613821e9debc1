#!/usr/bin/env bash
# profile.sh - where ucanal's workers spend their time against the relay (the ceiling of the
# design): the two ucanal labs of bench.sh (ucanal, and ucanal with `relay = true`), the same
# iperf3 run in each, alternating, under `perf record -a -g -e cpu-clock`; then the worker
# threads' (ucanal-w*) samples per symbol, as CPU milliseconds per GB received, side by side.
# On a loaded machine read the per-GB costs and the shares, not the Gbit/s.
#
#   profile.sh [--streams N] [--duration SECS] [--rounds N] [--settings LINES] [--keep DIR]
#
#   --streams N       iperf3 parallel streams, ghost-ep1 -> 10.244.0.74 (default 4)
#   --duration SECS   length of every iperf3 run (default 5)
#   --rounds N        relay/ucanal alternations (default 2); samples and bytes are summed
#   --settings LINES  extra [dataplane] lines for both labs (default none)
#   --keep DIR        keep the perf.data files and reports in DIR
#
# Environment: PROFILE_UCANAL_PREFIX (default pu-), PROFILE_RELAY_PREFIX (default pr-).
# Everything it creates is removed on exit, success or not.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

streams=4
duration=5
rounds=2
settings=
keep=
while (($#)); do
    case $1 in
    --streams) streams=${2:-}; shift ;;
    --duration) duration=${2:-}; shift ;;
    --rounds) rounds=${2:-}; shift ;;
    --settings) settings=${2:-}; shift ;;
    --keep) keep=${2:-}; shift ;;
    *) sed -n '8,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
    esac
    shift
done
[[ $streams =~ ^[1-9][0-9]*$ && $duration =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ ]] ||
    lab_die "--streams, --duration and --rounds want whole numbers >= 1"
((EUID == 0)) || lab_die "must run as root"
for c in iperf3 perf python3; do command -v "$c" >/dev/null || lab_die "'$c' is needed"; done

UPREFIX=${PROFILE_UCANAL_PREFIX:-pu-}
RPREFIX=${PROFILE_RELAY_PREFIX:-pr-}
WORK=$(mktemp -d /tmp/ucanal-profile.XXXXXX)
perf_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    [[ -z $perf_pid ]] || kill -INT "$perf_pid" 2>/dev/null
    lab_use "$UPREFIX"; lab_down
    lab_use "$RPREFIX"; lab_down
    if [[ -n $keep ]]; then mkdir -p "$keep" && cp -- "$WORK"/* "$keep"/; fi
    rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

for p in "$UPREFIX" "$RPREFIX"; do
    lab_use "$p"
    LAB_UCANAL_DATAPLANE=$settings
    [[ $p == "$RPREFIX" ]] && LAB_UCANAL_DATAPLANE="relay = true"$'\n'"$settings"
    lab_up --node1 ucanal --node2 ucanal >"$WORK/$p.up.log" 2>&1 || { cat "$WORK/$p.up.log" >&2; lab_die "lab $p did not come up"; }
    lab_nsexec ghost-ep2 iperf3 -s -D -p 5201 -I "$LAB_RUN_DIR/iperf3.pid" --logfile "$LAB_RUN_DIR/iperf3.log"
    sleep 0.5
    lab_nsexec ghost-ep1 ping -c 2 -i 0.2 -W 2 10.244.0.74 >/dev/null || lab_die "lab $p: no ping"
done

for ((r = 1; r <= rounds; r++)); do
    for p in "$RPREFIX" "$UPREFIX"; do
        lab_use "$p"
        name=${p%-}.$r
        perf record -a -g -e cpu-clock -F 499 -o "$WORK/$name.data" -- sleep "$((duration + 1))" 2>/dev/null &
        perf_pid=$!
        sleep 0.5
        lab_nsexec ghost-ep1 iperf3 -c 10.244.0.74 -P "$streams" -t "$duration" -J >"$WORK/$name.json" ||
            lab_die "iperf3 in lab $p failed"
        wait "$perf_pid"
        perf_pid=
        perf report -i "$WORK/$name.data" --stdio --no-children -n -g none --sort comm,dso,sym \
            >"$WORK/$name.txt" 2>/dev/null
        printf 'profile: %s round %s: %s Gbit/s\n' "$p" "$r" \
            "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9,2))' "$WORK/$name.json")" >&2
    done
done

python3 - "$WORK" "${RPREFIX%-}" "${UPREFIX%-}" "$rounds" <<'EOF'
import collections, json, re, sys
work, rp, up, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
HZ = 499
def load(p):
    per, comm_tot, gb = collections.Counter(), collections.Counter(), 0.0
    for r in range(1, rounds + 1):
        gb += json.load(open(f"{work}/{p}.{r}.json"))["end"]["sum_received"]["bytes"] / 1e9
        for line in open(f"{work}/{p}.{r}.txt"):
            m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.*\S)", line)
            if not m:
                continue
            n, comm, dso, kind, sym = int(m[1]), m[2], m[3], m[4], m[5]
            group = "ucanal workers" if comm.startswith("ucanal-w") else ("iperf3" if comm == "iperf3" else "other")
            comm_tot[group] += n
            if group == "ucanal workers":
                per[("k " if kind == "k" else "u ") + sym] += n
    return per, comm_tot, gb
R, U = load(rp), load(up)
ms = lambda n, gb: 1000.0 * n / HZ / gb
print(f"\nCPU ms per GB received ({rounds} round(s), {R[2]:.2f} GB relay, {U[2]:.2f} GB ucanal)")
print(f"{'':40s} {'relay':>8s} {'ucanal':>8s} {'diff':>8s}")
for g in ("ucanal workers", "iperf3", "other"):
    a, b = ms(R[1][g], R[2]), ms(U[1][g], U[2])
    print(f"{g:40s} {a:8.1f} {b:8.1f} {b - a:+8.1f}")
print("\nworker symbols (k = kernel, u = userspace), sorted by the difference:")
keys = set(R[0]) | set(U[0])
rows = sorted(keys, key=lambda k: -abs(ms(U[0][k], U[2]) - ms(R[0][k], R[2])))
for k in rows[:40]:
    a, b = ms(R[0][k], R[2]), ms(U[0][k], U[2])
    print(f"{k[:40]:40s} {a:8.1f} {b:8.1f} {b - a:+8.1f}")
EOF
