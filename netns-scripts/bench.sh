#!/usr/bin/env bash
# bench.sh - ucanal against the kernel dataplane and against the ceiling of its own design:
# the same two-node lab three times (one kernel reference: veth + proxy_arp + flannel.1 +
# kube-proxy's iptables NodePort; one ucanal relay with no decisions, the ceiling; one ucanal),
# in one run, alternating the measurements, ratios per row, CPU seconds per GB forwarded.
#
#   bench.sh [--duration SECS] [--rounds N] [--ping-count N] [--variants LIST] [--no-ceiling] [--json FILE]
#
#   --duration SECS   length of every iperf3 run (default 3; the first second is omitted from
#                     the figure when SECS >= 5)
#   --rounds N        kernel/ucanal alternations per row; the figure is the median (default 1)
#   --ping-count N    echo requests per ping run, 10 ms apart (default 100)
#   --variants LIST   comma-separated ucanal settings to measure, each against the kernel
#                     (default: default). 'list' prints the known variants, 'every' runs them all.
#   --no-ceiling      skip the relay lab (the ceiling column)
#   --json FILE       write the results as JSON too
#
# Rows: TCP pod->pod across nodes 1 stream and 4 streams (ghost-ep1 -> 10.244.0.74),
# TCP client -> NodePort 172.16.240.131:31267 -> remote pod 10.244.0.74:5201 (1 stream),
# ping RTT median ghost-ep1 -> 10.244.0.74.
# The ceiling: ucanal with `relay = true` (src/core/relay.rs) and the variant's settings: the
# same TAPs, sockets, offloads and batches, every IPv4 frame encapsulated to the one peer and
# decapsulated to the one pod with fixed headers. It has no NAT, so no NodePort row (n/a).
# CPU s/GB: busy CPU time of the whole machine (/proc/stat, all CPUs, user+nice+system+irq+softirq)
# over each iperf3 run, divided by the GB (10^9 bytes) iperf3 received.
#
# Environment: BENCH_KERNEL_PREFIX (default uk-), BENCH_UCANAL_PREFIX (default ub-),
# BENCH_RELAY_PREFIX (default ur-), and the lab's (lab.sh). Everything it creates is removed on exit, success or not.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '7,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# The ucanal settings a variant runs with ([dataplane] lines of its config), in table order.
# Each "no-*" variant turns one technique off; against "default" it tells what that technique buys.
VARIANT_NAMES=(default no-sg-gso no-gro no-udp-gso no-udp-gro no-tap-offloads no-batch one-worker offloads-off zerocopy busy-poll)
declare -A VARIANT_SETTINGS=(
    [default]=""
    [no-sg-gso]="sg_gso = false"
    [no-gro]="gro = false"
    [no-udp-gso]="udp_gso = false"
    [no-udp-gro]="udp_gro = false"
    [no-tap-offloads]="tap_offloads = false"
    [no-batch]="batch = 1"
    [one-worker]="workers = 1"
    [zerocopy]="zerocopy = true"
    [busy-poll]="busy_poll_us = 50"
    [offloads-off]=$'tap_offloads = false\nudp_gso = false\nudp_gro = false\ngro = false'
)
declare -A VARIANT_ABOUT=(
    [default]="every technique on (the default configuration)"
    [no-sg-gso]="userspace TSO copies every segment into scratch (no scatter-gather UDP GSO send)"
    [no-gro]="no coalescing of TCP segments toward pods (one TAP write per segment)"
    [no-udp-gso]="no UDP_SEGMENT: one datagram per sendmmsg entry"
    [no-udp-gro]="no UDP_GRO on the VXLAN sockets: one datagram per recvmmsg entry"
    [no-tap-offloads]="no IFF_VNET_HDR offloads: pods hand over MTU-sized frames, checksummed"
    [no-batch]="batch of 1: one frame per read, one datagram per recvmmsg/sendmmsg"
    [one-worker]="one worker thread instead of one per core"
    [zerocopy]="spike: MSG_ZEROCOPY on the VXLAN sends, each flush waits for its completions"
    [busy-poll]="workers poll 50 us after their last packet before sleeping (latency)"
    [offloads-off]="all offloads off (TAP, UDP GSO/GRO, GRO), batching kept"
)

duration=3
rounds=1
ping_count=100
variants=default
ceiling=1
json=
while (($#)); do
    case $1 in
    --duration) duration=${2:-}; shift ;;
    --rounds) rounds=${2:-}; shift ;;
    --ping-count) ping_count=${2:-}; shift ;;
    --variants) variants=${2:-}; shift ;;
    --no-ceiling) ceiling=0 ;;
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
RPREFIX=${BENCH_RELAY_PREFIX:-ur-}
[[ $KPREFIX != "$UPREFIX" && $KPREFIX != "$RPREFIX" && $UPREFIX != "$RPREFIX" ]] ||
    lab_die "BENCH_KERNEL_PREFIX, BENCH_UCANAL_PREFIX and BENCH_RELAY_PREFIX must differ"

# An iperf3 target behind a NodePort: one endpoint, on the other node than the one the client
# enters by, so the path is DNAT + masquerade + VXLAN (the article's §3.2 path).
IPERF_PORT=5201
LAB_SERVICES+=("default/iperf tcp 10.250.0.41 $IPERF_PORT 31267 10.244.0.74:$IPERF_PORT")
# Both labs carry the veth defaults on the wire (checksum offload on): the kernel reference
# at its best. Homogeneous labs need no full wire checksums (lib.sh).
LAB_WIRE_CSUM=${BENCH_WIRE_CSUM:-partial}

WORK=$(mktemp -d /tmp/ucanal-bench.XXXXXX)
results=$WORK/results.tsv   # variant test lab round value cpu_s_per_gb
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
    lab_use "$RPREFIX"; lab_down
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
for p in "$KPREFIX" "$UPREFIX" "$RPREFIX"; do
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
    [[ $prefix != "$RPREFIX" ]] || return 0 # the relay has no services
    lab_nsexec client curl -s -m 3 -o /dev/null http://172.16.240.131:31266/ || lab_die "lab $prefix: NodePort 31266 does not answer"
}

# Busy CPU time of the whole machine so far, in USER_HZ ticks (user nice system irq softirq).
cpu_busy_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat
}

# measure PREFIX TEST: prints the figure (Gbit/s for tcp-*, ms for ping) and the CPU seconds
# per GB received ("-" for ping), tab-separated.
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
print(f"{statistics.median(times):.4f}\t-")
EOF
        return
        ;;
    tcp-pod-1) who=ghost-ep1; target=10.244.0.74 ;;
    tcp-pod-4) who=ghost-ep1; target=10.244.0.74; streams=4 ;;
    tcp-nodeport) who=client; target=172.16.240.131; port=31267 ;;
    *) lab_die "unknown test $test" ;;
    esac
    out=$WORK/iperf.$prefix.$test.json
    local t0 t1
    t0=$(cpu_busy_ticks)
    if ! lab_nsexec "$who" iperf3 -c "$target" -p "$port" -t "$duration" -O "$omit" -P "$streams" -J >"$out" 2>&1; then
        # iperf3 -J reports its error inside the JSON.
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error","?"))' "$out" >&2 2>/dev/null || cat "$out" >&2
        lab_die "iperf3 $test in lab $prefix failed"
    fi
    t1=$(cpu_busy_ticks)
    python3 - "$out" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["end"]["sum_received"]
bps = s["bits_per_second"]
if bps <= 0:
    sys.exit("iperf3 received nothing")
# The CPU time covers the whole run, omitted seconds too: divide by every byte sent in it
# (the receiver's count less what was still in flight; close enough at these rates).
total = s["bytes"] + sum(i["sum"]["bytes"] for i in r["intervals"] if i["sum"].get("omitted"))
cpu = int(sys.argv[2]) / int(sys.argv[3])
print(f"{bps / 1e9:.3f}\t{cpu / (total / 1e9):.3f}")
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
def vals(v, key, lab, col=4):
    return [float(r[col]) for r in rows if r[0] == v and r[1] == key and r[2] == lab and r[col] != "-"]
def med(xs):
    return statistics.median(xs) if xs else None
def fmt(x, prec, unit):
    return f"{x:>8.{prec}f} {unit:<6}" if x is not None else f"{'n/a':>8} {'':<6}"
def ratio(a, b):
    return a / b if a is not None and b else None
def rfmt(x, width):
    return f"{x:>{width}.2f}" if x is not None else f"{'n/a':>{width}}"
for v in variants:
    vr = {"variant": v, "rows": []}
    print(f"\nvariant {v}")
    print(f"  {'test':<28} {'kernel':>15} {'ceiling':>15} {'ucanal':>15} {'ucanal/kernel':>14} "
          f"{'ucanal/ceiling':>15} {'ceiling/kernel':>15}  target (ucanal/kernel)")
    cpu_lines = []
    for key, name, unit, op, target in tests:
        k, c, u = vals(v, key, "kernel"), vals(v, key, "ceiling"), vals(v, key, "ucanal")
        if not k or not u:
            continue  # a partial report after a failure
        km, cm, um = med(k), med(c), med(u)
        r_uk, r_uc, r_ck = ratio(um, km), ratio(um, cm), ratio(cm, km)
        met = r_uk >= target if op == ">=" else r_uk <= target
        kc, cc, uc = (med(vals(v, key, lab, 5)) for lab in ("kernel", "ceiling", "ucanal"))
        row = {"test": key, "name": name, "unit": unit, "kernel": k, "ucanal": u,
               "kernel_median": km, "ucanal_median": um, "ratio": round(r_uk, 3),
               "target": f"{op} {target}", "met": met, "ceiling": c, "ceiling_median": cm,
               "ucanal_over_ceiling": None if r_uc is None else round(r_uc, 3),
               "ceiling_over_kernel": None if r_ck is None else round(r_ck, 3)}
        if unit != "ms":
            row["cpu_s_per_gb"] = {"kernel": kc, "ceiling": cc, "ucanal": uc}
            cpu_lines.append(f"  {name:<28} {fmt(kc, 2, 's/GB')} {fmt(cc, 2, 's/GB')} {fmt(uc, 2, 's/GB')} "
                             f"{rfmt(ratio(uc, kc), 14)} {rfmt(ratio(uc, cc), 15)} {rfmt(ratio(cc, kc), 15)}")
        vr["rows"].append(row)
        prec = 3 if unit == "ms" else 2
        print(f"  {name:<28} {fmt(km, prec, unit)} {fmt(cm, prec, unit)} {fmt(um, prec, unit)} {rfmt(r_uk, 14)} "
              f"{rfmt(r_uc, 15)} {rfmt(r_ck, 15)}  {op} {target} {'met' if met else 'MISSED'}")
    if cpu_lines:
        print(f"  CPU seconds per GB forwarded (whole machine, busy time over each iperf3 run):")
        print("\n".join(cpu_lines))
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
    labs=("$KPREFIX" "$UPREFIX")
    if ((ceiling)); then
        log "relay lab ($RPREFIX*, the ceiling), variant $v"
        bench_lab_up "$RPREFIX" ucanal "relay = true"$'\n'"${VARIANT_SETTINGS[$v]}"
        labs=("$KPREFIX" "$RPREFIX" "$UPREFIX")
    fi
    for ((r = 1; r <= rounds; r++)); do
        for t in "${TESTS[@]}"; do
            # Alternate the order of the labs, so none always runs on a warmer machine.
            order=("${labs[@]}")
            if (((r % 2) == 0)); then mapfile -t order < <(printf '%s\n' "${labs[@]}" | tac); fi
            for p in "${order[@]}"; do
                case $p in
                "$KPREFIX") lab=kernel ;;
                "$RPREFIX") lab=ceiling ;;
                *) lab=ucanal ;;
                esac
                # The relay has no NAT: the NodePort row does not apply to it.
                [[ $lab == ceiling && $t == tcp-nodeport ]] && continue
                val=$(measure "$p" "$t")
                printf '%s\t%s\t%s\t%s\t%s\n' "$v" "$t" "$lab" "$r" "$val" >>"$results"
                log "$v round $r: $t $lab $val"
            done
        done
    done
    for p in "$UPREFIX" "$RPREFIX"; do
        lab_use "$p"
        lab_down >/dev/null 2>&1
    done
done

report_py "${chosen[@]}"
reported=1
