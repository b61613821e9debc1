#!/usr/bin/env bash
# matrix-bench.sh - tests/bulk_matrix.rs as figures: iperf3 on every path of the mixed lab (ucanal
# on centos7-1, the kernel on centos7-2), both directions, under every uplink setting, so that a
# stall shows as a rate (and its retransmits) rather than as a timeout.
#
#   matrix-bench.sh [--duration SECS] [--settings LIST] [--kernel-reference] [--tsv FILE]
#
#   --duration SECS      length of every iperf3 run (default 3)
#   --settings LIST      comma-separated uplink settings (default: all): csum-partial.tso-on,
#                        csum-partial.tso-off, csum-partial.tso-on.gro-on, csum-full, offloads-off
#   --kernel-reference   run every cell in an all-kernel lab too, and print ucanal/kernel
#   --tsv FILE           write the rows as tab-separated values too
#
# Paths (as in the test): pod <-> pod across the nodes; client -> NodePort 30201 on each node ->
# each endpoint; each pod -> ClusterIP 10.250.0.41:5201 -> each endpoint (itself: hairpin). The
# service default/iperf is forced to one endpoint at a time on both nodes (lab.sh endpoints):
# iperf3's control and data connections must reach the same server. Downloads are iperf3 -R
# (the server sends). Every row also says whether a node's stack refused to forward for size
# (IpFragFails, nstat) and what ucanal wrote over the host port's MTU without GSO (host_oversize).
#
# Environment: MATRIX_PREFIX (default mx-), MATRIX_KERNEL_PREFIX (default mk-), and the lab's
# (lab.sh). Everything it creates is removed on exit, success or not.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '6,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

SETTINGS=(csum-partial.tso-on csum-partial.tso-off csum-partial.tso-on.gro-on csum-full offloads-off)
duration=3
settings=$(IFS=,; echo "${SETTINGS[*]}")
reference=0
tsv=
while (($#)); do
    case $1 in
    --duration) duration=${2:-}; shift ;;
    --settings) settings=${2:-}; shift ;;
    --kernel-reference) reference=1 ;;
    --tsv) tsv=${2:-}; shift ;;
    -h | --help) usage ;;
    *) echo "matrix-bench: unknown option '$1'" >&2; usage ;;
    esac
    shift
done
[[ $duration =~ ^[1-9][0-9]*$ ]] || lab_die "--duration wants whole seconds >= 1, not '$duration'"
IFS=, read -r -a chosen <<<"$settings"
for s in "${chosen[@]}"; do
    [[ " ${SETTINGS[*]} " == *" $s "* ]] || lab_die "unknown setting '$s' (known: ${SETTINGS[*]})"
done
((EUID == 0)) || lab_die "must run as root"
for c in iperf3 ethtool nstat python3; do
    command -v "$c" >/dev/null || lab_die "'$c' is needed (apt-get install iperf3 ethtool iproute2 python3)"
done

UPREFIX=${MATRIX_PREFIX:-mx-}
KPREFIX=${MATRIX_KERNEL_PREFIX:-mk-}
[[ $UPREFIX != "$KPREFIX" ]] || lab_die "MATRIX_PREFIX and MATRIX_KERNEL_PREFIX must differ"
IPERF_PORT=5201
IPERF_NODE_PORT=30201
IPERF_VIP=10.250.0.41
LAB_SERVICES+=("default/iperf tcp $IPERF_VIP $IPERF_PORT $IPERF_NODE_PORT 10.244.0.74:$IPERF_PORT,10.244.1.5:$IPERF_PORT")

WORK=$(mktemp -d /tmp/ucanal-matrix.XXXXXX)
rows=$WORK/rows.tsv   # setting cell dir lab gbps retransmits fragfails oversize
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    lab_use "$UPREFIX"; lab_down >/dev/null 2>&1
    lab_use "$KPREFIX"; lab_down >/dev/null 2>&1
    if [[ -n $tsv && -s $rows ]]; then cp "$rows" "$tsv"; fi
    rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

log() { printf 'matrix: %s\n' "$*" >&2; }

# The cells of one setting: "<path> <client ns> <target> <port> <forced endpoint|->", endpoint
# changes grouped (the order of tests/bulk_matrix.rs).
cells() {
    printf '%s\n' "pod.ghost-ep1-ghost-ep2 ghost-ep1 10.244.0.74 $IPERF_PORT -" \
        "pod.ghost-ep2-ghost-ep1 ghost-ep2 10.244.1.5 $IPERF_PORT -"
    local ep
    for ep in ghost-ep1 ghost-ep2; do
        printf '%s\n' "nodeport.client-centos7-1-$ep client 172.16.240.131 $IPERF_NODE_PORT $ep" \
            "nodeport.client-centos7-2-$ep client 172.16.240.132 $IPERF_NODE_PORT $ep" \
            "clusterip.ghost-ep1-$ep ghost-ep1 $IPERF_VIP $IPERF_PORT $ep" \
            "clusterip.ghost-ep2-$ep ghost-ep2 $IPERF_VIP $IPERF_PORT $ep"
    done
}

# matrix_lab_up PREFIX NODE1_MODE SETTING: the lab with the setting's uplinks and an iperf3
# server in each pod.
matrix_lab_up() {
    local prefix=$1 mode1=$2 setting=$3 pod ns dev
    local -a args=(--node1 "$mode1" --node2 kernel)
    lab_use "$prefix"
    ! lab_exists || lab_down >/dev/null 2>&1
    LAB_WIRE_CSUM=partial
    case $setting in
    csum-full) LAB_WIRE_CSUM=full ;;
    offloads-off) args+=(--offloads off) ;;
    esac
    lab_up "${args[@]}" >"$WORK/$prefix.up.log" 2>&1 || {
        cat "$WORK/$prefix.up.log" >&2
        lab_die "lab $prefix ($setting) did not come up"
    }
    for ns in "client eth0" "centos7-1 ens33" "centos7-2 ens33"; do
        read -r ns dev <<<"$ns"
        case $setting in
        csum-partial.tso-off) lab_features "$(lab_ns "$ns")" "$dev" tso=off ;;
        csum-partial.tso-on.gro-on) lab_features "$(lab_ns "$ns")" "$dev" gro=on ;;
        esac
    done
    for pod in "${LAB_PODS[@]}"; do
        lab_nsexec "$pod" iperf3 -s -D -p "$IPERF_PORT" -I "$LAB_RUN_DIR/$pod.iperf3.pid" \
            --logfile "$LAB_RUN_DIR/$pod.iperf3.log"
    done
    for pod in "${LAB_PODS[@]}"; do
        local deadline=$((SECONDS + 5))
        until lab_nsexec "$pod" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN"; do
            ((SECONDS < deadline)) || lab_die "iperf3 server did not start in $(lab_ns "$pod")"
            sleep 0.1
        done
    done
}

# IpFragFails of both nodes, and ucanal's host_oversize on centos7-1 (- on a kernel node).
node_counts() {
    local node n over=-
    for node in "${LAB_NODES[@]}"; do
        n=$(lab_nsexec "$node" nstat -asz IpFragFails | awk '$1 == "IpFragFails" { print $2 }')
        printf '%s ' "${n:-?}"
    done
    if [[ $(_lab_state_get node.centos7-1) == ucanal ]]; then
        over=$("$UCANAL_BIN" --socket "$(lab_socket centos7-1)" show counters --json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["decisions"]["host_oversize"])')
    fi
    printf '%s\n' "$over"
}

# measure SETTING LAB: every cell both ways in the current lab, appended to $rows.
measure() {
    local setting=$1 lab=$2 path who target port ep forced=- dir out gbps retr
    local -a flag before after
    while read -r path who target port ep; do
        if [[ $ep != - && $ep != "$forced" ]]; then
            lab_set_endpoints default/iperf "${LAB_POD_IP[$ep]}:$IPERF_PORT"
            forced=$ep
        fi
        for dir in download upload; do
            flag=()
            [[ $dir == download ]] && flag=(-R)
            out=$WORK/iperf.json
            read -r -a before <<<"$(node_counts)"
            if lab_nsexec "$who" iperf3 -c "$target" -p "$port" -t "$duration" --connect-timeout 3000 \
                "${flag[@]}" -J >"$out" 2>&1; then
                read -r gbps retr < <(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]
rate = e["sum_received"]["bits_per_second"] / 1e9
print(f"{rate:.3f}", e["sum_sent"].get("retransmits", "-"))' "$out")
            else
                gbps=fail retr=-
                log "$setting $lab $path $dir: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error","?"))' "$out" 2>/dev/null || head -c 200 "$out")"
            fi
            read -r -a after <<<"$(node_counts)"
            local frag=$((after[0] - before[0] + after[1] - before[1])) over=-
            [[ ${after[2]} == - ]] || over=$((after[2] - before[2]))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$setting" "$path" "$dir" "$lab" "$gbps" "$retr" "$frag" "$over" >>"$rows"
            log "$setting $lab $path $dir: $gbps Gbit/s, $retr retransmits, IpFragFails +$frag, host_oversize +$over"
        done
    done < <(cells)
}

: >"$rows"
for setting in "${chosen[@]}"; do
    log "setting $setting: ucanal lab ($UPREFIX*)"
    matrix_lab_up "$UPREFIX" ucanal "$setting"
    measure "$setting" ucanal
    lab_use "$UPREFIX"; lab_down >/dev/null 2>&1
    if ((reference)); then
        log "setting $setting: kernel reference lab ($KPREFIX*)"
        matrix_lab_up "$KPREFIX" kernel "$setting"
        measure "$setting" kernel
        lab_use "$KPREFIX"; lab_down >/dev/null 2>&1
    fi
done

python3 - "$rows" "$duration" <<'EOF'
import os, platform, sys
path, duration = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
kernel = {(r[0], r[1], r[2]): r[4] for r in rows if r[3] == "kernel"}
print(f"\n{'setting':<27} {'path':<38} {'dir':<8} {'ucanal':>9} {'retrans':>7} {'fragfail':>8} {'oversize':>8}"
      + (f" {'kernel':>9} {'ratio':>6}" if kernel else ""))
for s, path_, d, lab, gbps, retr, frag, over in rows:
    if lab != "ucanal":
        continue
    line = f"{s:<27} {path_:<38} {d:<8} {gbps:>9} {retr:>7} {frag:>8} {over:>8}"
    k = kernel.get((s, path_, d))
    if k is not None:
        ratio = f"{float(gbps) / float(k):.2f}" if "fail" not in (gbps, k) and float(k) > 0 else "-"
        line += f" {k:>9} {ratio:>6}"
    print(line)
print(f"\nGbit/s received, iperf3 -t {duration} (downloads -R); {os.cpu_count()} CPUs, Linux {platform.release()}")
EOF
