#!/usr/bin/env bash
# conformance.sh - the differential conformance suite: the same scenarios, packet for packet,
# through a lab whose centos7-1 is the kernel (flannel.1, Calico veths, kube-proxy iptables) and
# a lab whose centos7-1 is ucanal (centos7-2 is a kernel node in both), what comes out compared
# header field by header field at every observation point (ghost-ep1's and ghost-ep3's eth0 on
# centos7-1, centos7-1's port on the LAN bridge, ghost-ep2's eth0 on centos7-2).
#
#   conformance.sh [--json FILE] [--doc] [--only NAME,...] [--details]
#
# Prints a table (scenario x same | differs: fields), the score and the normalised fields with
# their reasons; --json writes the same as JSON; --doc rewrites the table in docs/conformance.md
# and the score in README.md (conformance/doc.py). Both labs are removed on exit, also on failure.
# Environment: CONF_KERNEL_PREFIX (ck-), CONF_UCANAL_PREFIX (cu-), UCANAL_BIN, LAB_WIRE_CSUM
# (default partial: the veth default, as labs built the ordinary way have it), LAB_PYTHON.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_WIRE_CSUM=${LAB_WIRE_CSUM:-partial}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
command -v ethtool >/dev/null || lab_die "ethtool is not installed"
kprefix=${CONF_KERNEL_PREFIX:-ck-}
uprefix=${CONF_UCANAL_PREFIX:-cu-}
unset LAB_RUN_DIR
lab_init
pydir=$here/conformance

# The suite's services and the third pod (ghost-ep3, beside ghost-ep1 on centos7-1).
mapfile -t extra < <(cd "$pydir" && "$LAB_PYTHON" -c 'import scenarios; print("\n".join(scenarios.SERVICES))')
((${#extra[@]})) || lab_die "could not read the suite's services from $pydir/scenarios.py"
LAB_SERVICES+=("${extra[@]}")
LAB_PODS+=(ghost-ep3)
LAB_POD_IP[ghost-ep3]=10.244.1.6
LAB_POD_NODE[ghost-ep3]=centos7-1

cleanup() {
    local p
    for p in "$kprefix" "$uprefix"; do
        lab_use "$p"
        lab_down >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# pod_mac IP: the MAC ucanal gives a pod (0a:58 + the IP), given to the kernel's pods as well so
# that Ethernet headers compare.
pod_mac() {
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    printf '0a:58:%02x:%02x:%02x:%02x\n' "$a" "$b" "$c" "$d"
}

# Makes a lab comparable: pod MACs, no ICMP rate limits (the suite's result must not depend on
# timing), no IPv6, datagrams segmented before the uplinks, and Calico's anti-spoofing rule on
# kernel nodes (felix's rpfilter check on traffic from workload interfaces).
prepare() {
    local ns node pod
    for ns in $(lab_namespaces); do
        ip netns exec "$ns" sysctl -qw net.ipv4.icmp_ratemask=0 net.ipv6.conf.all.disable_ipv6=1 \
            net.ipv6.conf.default.disable_ipv6=1
    done
    for pod in "${LAB_PODS[@]}"; do
        [[ ${LAB_NODE_MODE[${LAB_POD_NODE[$pod]}]} == kernel ]] || continue
        ip -n "$(lab_ns "$pod")" link set eth0 address "$(pod_mac "${LAB_POD_IP[$pod]}")"
    done
    for node in "${LAB_NODES[@]}"; do
        ip -n "$(lab_ns "$node")" neigh flush all
        # UDP (and UDP tunnel) segmentation in software before the uplink: a veth hands a GSO
        # super-frame on whole, the capture would see one frame where a wire carries several.
        ip netns exec "$(lab_ns "$node")" ethtool -K "$LAB_UPLINK" tx-udp-segmentation off \
            tx-udp_tnl-segmentation off >/dev/null
        [[ ${LAB_NODE_MODE[$node]} == kernel ]] || continue
        ip netns exec "$(lab_ns "$node")" iptables -t raw -A PREROUTING -i 'cali+' -m rpfilter --invert \
            -m comment --comment "calico: workload source spoofing" -j DROP
    done
}

lab_use "$kprefix"
lab_up --force --node1 kernel --node2 kernel >/dev/null
prepare
lab_use "$uprefix"
lab_up --force --node1 ucanal --node2 kernel >/dev/null
prepare

cd "$pydir"
"$LAB_PYTHON" run.py --kernel "$kprefix" --ucanal "$uprefix" --ucanal-bin "$UCANAL_BIN" \
    --ucanal-socket "$(lab_socket centos7-1)" "$@"
