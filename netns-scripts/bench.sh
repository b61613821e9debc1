#!/usr/bin/env bash
# bench.sh - ucanal against the kernel dataplane: the same two-node lab twice (one kernel
# reference: veth + proxy_arp + flannel.1 + kube-proxy's iptables NodePort; one ucanal), in
# one run, alternating kernel and ucanal measurements, ratios per row.
#
#   bench.sh [--duration SECS] [--rounds N] [--ping-count N] [--variants LIST] [--json FILE]
#
#   --duration SECS   length of every iperf3 run (default 3; the first second is omitted from
#                     the figure when SECS >= 5)
#   --rounds N        kernel/ucanal alternations per row; the figure is the median (default 1)
#   --ping-count N    echo requests per ping run, 10 ms apart (default 100)
#   --variants LIST   comma-separated ucanal settings to measure, each against the kernel
#                     (default: default). 'list' prints the known variants, 'every' runs them all.
#   --json FILE       write the results as JSON too
#
# Rows: TCP pod->pod across nodes 1 stream and 4 streams (ghost-ep1 -> 10.244.0.74),
# TCP client -> NodePort 172.16.240.131:31267 -> remote pod 10.244.0.74:5201 (1 stream),
# ping RTT median ghost-ep1 -> 10.244.0.74.
#
# Environment: BENCH_KERNEL_PREFIX (default uk-), BENCH_UCANAL_PREFIX (default ub-), and the
# lab's (lab.sh). Everything it creates is removed on exit, success or not.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '6,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# The ucanal settings a variant runs with ([dataplane] lines of its config), in table order.
# Each "no-*" variant turns one technique off; against "default" it tells what that technique buys.
VARIANT_NAMES=(default no-gro no-udp-gso no-udp-gro no-tap-offloads no-batch one-worker offloads-off)
declare -A VARIANT_SETTINGS=(
    [default]=""
    [no-gro]="gro = false"
    [no-udp-gso]="udp_gso = false"
    [no-udp-gro]="udp_gro = false"
    [no-tap-offloads]="tap_offloads = false"
    [no-batch]="batch = 1"
    [one-worker]="workers = 1"
    [offloads-off]=$'tap_offloads = false\nudp_gso = false\nudp_gro = false\ngro = false'
)
declare -A VARIANT_ABOUT=(
    [default]="every technique on (the default configuration)"
    [no-gro]="no coalescing of TCP segments toward pods (one TAP write per segment)"
    [no-udp-gso]="no UDP_SEGMENT: one datagram per sendmmsg entry"
    [no-udp-gro]="no UDP_GRO on the VXLAN sockets: one datagram per recvmmsg entry"
    [no-tap-offloads]="no IFF_VNET_HDR offloads: pods hand over MTU-sized frames, checksummed"
    [no-batch]="batch of 1: one frame per read, one datagram per recvmmsg/sendmmsg"
    [one-worker]="one worker thread instead of one per core"
    [offloads-off]="all offloads off (TAP, UDP GSO/GRO, GRO), batching kept"
)

duration=3
rounds=1
ping_count=100
variants=default
json=
while (($#)); do
    case $1 in
    --duration) duration=${2:-}; shift ;;
    --rounds) rounds=${2:-}; shift ;;
    --ping-count) ping_count=${2:-}; shift ;;
    --variants) variants=${2:-}; shift ;;
    --json) json=${2:-}; shift ;;
    -h | --help) usage ;;
    *) echo "bench: unknown option '$1'" >&2; usage ;;
    esac
    shift
done
if [[ $variants == list ]]; then
    for v in "${VARIANT_NAMES[@]}"; do printf '%-16s %s\n' "$v" "${VARIANT_ABOUT[$v]}"; done
    exit 0
fi
if [[ $variants == every ]]; then variants=$(IFS=,; echo "${VARIANT_NAMES[*]}"); fi
[[ $duration =~ ^[1-9][0-9]*$ ]] || lab_die "--duration wants whole seconds >= 1, not '$duration'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || lab_die "--rounds wants a count >= 1, not '$rounds'"
[[ $ping_count =~ ^[1-9][0-9]*$ ]] || lab_die "--ping-count wants a count >= 1, not '$ping_count'"
IFS=, read -r -a chosen <<<"$variants"
((${#chosen[@]})) || lab_die "--variants is empty"
for v in "${chosen[@]}"; do
    [[ -n ${VARIANT_ABOUT[$v]:-} ]] || lab_die "unknown variant '$v' (known: ${VARIANT_NAMES[*]})"
done
((EUID == 0)) || lab_die "must run as root"
for c in iperf3 ping python3; do
    command -v "$c" >/dev/null || lab_die "'$c' is needed (apt-get install iperf3 iputils-ping python3)"
done

KPREFIX=${BENCH_KERNEL_PREFIX:-uk-}
UPREFIX=${BENCH_UCANAL_PREFIX:-ub-}
[[ $KPREFIX != "$UPREFIX" ]] || lab_die "BENCH_KERNEL_PREFIX and BENCH_UCANAL_PREFIX must differ"

# An iperf3 target behind a NodePort: one endpoint, on the other node than the one the client
# enters by, so the path is DNAT + masquerade + VXLAN (the article's §3.2 path).
IPERF_PORT=5201
LAB_SERVICES+=("default/iperf tcp 10.250.0.41 $IPERF_PORT 31267 10.244.0.74:$IPERF_PORT")
# Both labs carry the veth defaults on the wire (checksum offload on): the kernel reference
# at its best. Homogeneous labs need no full wire checksums (lib.sh).
LAB_WIRE_CSUM=${BENCH_WIRE_CSUM:-partial}

WORK=$(mktemp -d /tmp/ucanal-bench.XXXXXX)
results=$WORK/results.tsv   # variant test lab round value
reported=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    if ((!reported)) && [[ -s $results ]]; then
        printf '\nbench: stopped early (exit %s); what was measured before that:\n' "$rc"
        mapfile -t done_variants < <(cut -f1 "$results" | uniq)
        report_py "${done_variants[@]}"
    fi
    lab_use "$UPREFIX"; lab_down
    lab_use "$KPREFIX"; lab_down
    rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

log() { printf 'bench: %s\n' "$*" >&2; }

# Leftovers of an interrupted earlier run would make lab_up refuse.
for p in "$KPREFIX" "$UPREFIX"; do
    lab_use "$p"
    if lab_exists; then log "removing a leftover lab with prefix $p"; lab_down; fi
done

start_iperf_server() {
    lab_nsexec ghost-ep2 iperf3 -s -D -p "$IPERF_PORT" -I "$LAB_RUN_DIR/iperf3.pid" --logfile "$LAB_RUN_DIR/iperf3.log"
    local deadline=$((SECONDS + 5))
    until lab_nsexec ghost-ep2 sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN"; do
        ((SECONDS < deadline)) || lab_die "iperf3 server did not start in $(lab_ns ghost-ep2)"
        sleep 0.1
    done
}

# lab_up for a lab, then the iperf3 server and a first packet each way (ARP, FDB warm).
bench_lab_up() {
    local prefix=$1 mode=$2 settings=$3
    lab_use "$prefix"
    LAB_UCANAL_DATAPLANE=$settings
    lab_up --node1 "$mode" --node2 "$mode" >"$WORK/$prefix.up.log" 2>&1 || {
        cat "$WORK/$prefix.up.log" >&2
        lab_die "lab $prefix ($mode) did not come up"
    }
    start_iperf_server
    lab_nsexec ghost-ep1 ping -c 2 -i 0.2 -W 2 10.244.0.74 >/dev/null || lab_die "lab $prefix: ghost-ep1 cannot ping 10.244.0.74"
    lab_nsexec client curl -s -m 3 -o /dev/null http://172.16.240.131:31266/ || lab_die "lab $prefix: NodePort 31266 does not answer"
}

# measure PREFIX TEST: prints one number (Gbit/s for tcp-*, ms for ping).
measure() {
    local prefix=$1 test=$2 out omit=0 who target port=$IPERF_PORT streams=1
    lab_use "$prefix"
    ((duration >= 5)) && omit=1
    case $test in
    ping)
        out=$WORK/ping.$prefix.txt
        lab_nsexec ghost-ep1 ping -n -c "$ping_count" -i 0.01 -W 1 10.244.0.74 >"$out" || {
            tail -n 3 "$out" >&2
            lab_die "ping in lab $prefix failed"
        }
        python3 - "$out" "$ping_count" <<'EOF'
import re, statistics, sys
times = [float(m) for m in re.findall(r"time=([0-9.]+) ms", open(sys.argv[1]).read())]
if len(times) < int(sys.argv[2]) * 0.9:
    sys.exit(f"only {len(times)} of {sys.argv[2]} echo replies")
print(f"{statistics.median(times):.4f}")
EOF
        return
        ;;
    tcp-pod-1) who=ghost-ep1; target=10.244.0.74 ;;
    tcp-pod-4) who=ghost-ep1; target=10.244.0.74; streams=4 ;;
    tcp-nodeport) who=client; target=172.16.240.131; port=31267 ;;
    *) lab_die "unknown test $test" ;;
    esac
    out=$WORK/iperf.$prefix.$test.json
    if ! lab_nsexec "$who" iperf3 -c "$target" -p "$port" -t "$duration" -O "$omit" -P "$streams" -J >"$out" 2>&1; then
        # iperf3 -J reports its error inside the JSON.
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error","?"))' "$out" >&2 2>/dev/null || cat "$out" >&2
        lab_die "iperf3 $test in lab $prefix failed"
    fi
    python3 - "$out" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
bps = r["end"]["sum_received"]["bits_per_second"]
if bps <= 0:
    sys.exit("iperf3 received nothing")
print(f"{bps / 1e9:.3f}")
EOF
}

# report_py VARIANT...: the table (and JSON) from the results measured so far.
report_py() {
    python3 - "$results" "$json" "$duration" "$rounds" "$ping_count" "$@" <<'EOF'
import json, os, platform, statistics, sys
path, json_path, duration, rounds, ping_count, *variants = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
tests = [
    ("tcp-pod-1", "TCP pod->pod, 1 stream", "Gbit/s", ">=", 0.8),
    ("tcp-pod-4", "TCP pod->pod, 4 streams", "Gbit/s", ">=", 0.8),
    ("tcp-nodeport", "TCP client->NodePort->pod", "Gbit/s", ">=", 0.8),
    ("ping", "ping RTT pod->pod, median", "ms", "<=", 1.5),
]
def cpu_model():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
out = {
    "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu_model()},
    "duration_s": int(duration), "rounds": int(rounds), "ping_count": int(ping_count),
    "variants": [],
}
for v in variants:
    vr = {"variant": v, "rows": []}
    print(f"\nvariant {v}")
    print(f"  {'test':<28} {'kernel':>12} {'ucanal':>12} {'ucanal/kernel':>14}  target")
    for key, name, unit, op, target in tests:
        k = [float(r[4]) for r in rows if r[0] == v and r[1] == key and r[2] == "kernel"]
        u = [float(r[4]) for r in rows if r[0] == v and r[1] == key and r[2] == "ucanal"]
        if not k or not u:
            continue  # a partial report after a failure
        km, um = statistics.median(k), statistics.median(u)
        ratio = um / km if km > 0 else float("inf")
        met = ratio >= target if op == ">=" else ratio <= target
        vr["rows"].append({"test": key, "name": name, "unit": unit, "kernel": k, "ucanal": u,
                           "kernel_median": km, "ucanal_median": um, "ratio": round(ratio, 3),
                           "target": f"{op} {target}", "met": met})
        prec = 3 if unit == "ms" else 2
        print(f"  {name:<28} {km:>8.{prec}f} {unit:<3} {um:>8.{prec}f} {unit:<3} {ratio:>14.2f}  {op} {target} {'met' if met else 'MISSED'}")
    out["variants"].append(vr)
m = out["machine"]
print(f"\n{m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}; iperf3 {duration} s per run, "
      f"median of {rounds} alternating round(s), ping {ping_count} x 10 ms")
if json_path:
    with open(json_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"written to {json_path}")
EOF
}

TESTS=(tcp-pod-1 tcp-pod-4 tcp-nodeport ping)
: >"$results"

lab_use "$KPREFIX"
log "kernel reference lab ($KPREFIX*)"
bench_lab_up "$KPREFIX" kernel ""
for v in "${chosen[@]}"; do
    log "ucanal lab ($UPREFIX*), variant $v: ${VARIANT_SETTINGS[$v]:-defaults}"
    bench_lab_up "$UPREFIX" ucanal "${VARIANT_SETTINGS[$v]}"
    for ((r = 1; r <= rounds; r++)); do
        for t in "${TESTS[@]}"; do
            # Alternate which lab goes first, so neither always runs on a warmer machine.
            if (((r % 2) == 1)); then order=("$KPREFIX" "$UPREFIX"); else order=("$UPREFIX" "$KPREFIX"); fi
            for p in "${order[@]}"; do
                val=$(measure "$p" "$t")
                if [[ $p == "$KPREFIX" ]]; then lab=kernel; else lab=ucanal; fi
                printf '%s\t%s\t%s\t%s\t%s\n' "$v" "$t" "$lab" "$r" "$val" >>"$results"
                log "$v round $r: $t $lab $val"
            done
        done
    done
    lab_use "$UPREFIX"
    lab_down >/dev/null 2>&1
done

report_py "${chosen[@]}"
reported=1
