# shellcheck shell=bash
# lib.sh - helpers for the ucanal network-namespace lab (the reference topology of docs/lab.md).
#
# Source it from bash:   . netns-scripts/lib.sh
# It turns on `set -Eeuo pipefail` (every helper is written for it) and defines only
# `lab_*` functions and `LAB_*` variables (private ones start with `_lab`/`_LAB`).
#
# Several labs can live side by side: every name a lab creates carries LAB_PREFIX.
#   lab_use uk-; lab_up --node1 kernel --node2 kernel
#   lab_use uu-; lab_up --node1 ucanal --node2 ucanal
#   lab_use uk-; lab_nsexec client curl -s http://172.16.240.131:31266/
#   lab_use uk-; lab_down; lab_use uu-; lab_down
#
# lab_up and lab_down run in a subshell: lab_up removes everything it created if any step
# fails (and on INT/TERM); lab_down is best effort and always succeeds.
#
# NETWORK SAFETY: everything lives in namespaces named ${LAB_PREFIX}*; the root namespace only
# ever holds a veth pair for the instant between its creation and the move of both ends.
# The default route of the nodes points at 172.16.240.2, which does not exist on the lab bridge.

if [[ -n ${_LAB_LIB_SOURCED:-} ]]; then
    return 0
fi
_LAB_LIB_SOURCED=1
set -Eeuo pipefail

LAB_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_REPO=$(cd "$LAB_LIB_DIR/.." && pwd)

# ---------------------------------------------------------------------------------------------
# Environment (all optional)
: "${LAB_PREFIX:=uc-}"                              # prefix of every namespace of this lab
: "${LAB_SOCKET_DIR:=/run/ucanal}"                  # where ucanal API sockets go
: "${UCANAL_BIN:=$LAB_REPO/target/release/ucanal}"  # built with cargo if absent and needed
# LAB_RUN_DIR          default /run/ucanal-lab/${LAB_PREFIX} (configs, logs, pids, www roots)
# LAB_PYTHON           python3 used for the pods' HTTP servers and for hashing
# LAB_KUBE_RANDOM_FULLY=1  add --random-fully to KUBE-POSTROUTING's MASQUERADE (default 0: as kube-proxy's default)
# LAB_UCANAL_TIMEOUT   seconds to wait for `ucanal show pods` (default 15)
# LAB_WIRE_CSUM        partial (default) or full: see below
# UCANAL_RUN_ARGS      extra words for `ucanal run` (e.g. "--log-level warn --metrics 127.0.0.1:9300")
# LAB_UCANAL_DATAPLANE extra lines for the [dataplane] section of ucanal's configs (e.g. "batch = 1")
_LAB_DEFAULT_UCANAL_BIN=$LAB_REPO/target/release/ucanal
# shellcheck source-path=SCRIPTDIR source=topology-lib.sh
. "$LAB_LIB_DIR/topology-lib.sh"

# ---------------------------------------------------------------------------------------------
# The reference lab (docs/lab.md).
# A sourcing script may change these after sourcing and before lab_up.
LAB_UPLINK=ens33
LAB_LAN_PREFIXLEN=24
LAB_GATEWAY=172.16.240.2            # absent: nothing on the lab bridge answers it
LAB_CLIENT_IP=172.16.240.1
LAB_CLIENT_MAC=00:50:56:c0:00:08
LAB_CLUSTER_CIDR=10.244.0.0/16
LAB_SERVICE_CIDR=10.250.0.0/16
LAB_VNI=1
LAB_VXLAN_PORT=8472
LAB_MTU=1450
LAB_CALI_MAC=ee:ee:ee:ee:ee:ee
LAB_POD_GATEWAY=169.254.1.1
LAB_LOCAL_PORT_RANGE="32768 60999"
LAB_HTTP_PORT=2368

# The nodes, pods and services (LAB_NODES, LAB_NODE_*, LAB_PODS, LAB_POD_*, LAB_SERVICES: one
# service per word list "<ns/name[:port]> <tcp|udp> <cluster ip> <port> <node port|-> <ip:port,...>")
# come from a topology file: topologies/article.yaml unless `up --topology FILE` names
# another (topology-lib.sh).

LAB_OFFLOADS=on
# partial (default): veth defaults, as any lab built with `ip link add ... type veth` has them: a
# kernel sender's TCP/UDP checksums cross the wire CHECKSUM_PARTIAL (ucanal takes them as such).
# full: the lab wire carries complete checksums (tx checksumming off on every node's uplink and
# the client's eth0), as a physical NIC would put them there.
: "${LAB_WIRE_CSUM:=partial}"

# ---------------------------------------------------------------------------------------------
# Small helpers

lab_log() { printf 'lab[%s]: %s\n' "$LAB_PREFIX" "$*" >&2; }
lab_die() {
    printf 'lab[%s]: error: %s\n' "$LAB_PREFIX" "$*" >&2
    exit 1
}

# lab_use PREFIX [RUN_DIR]: switch the current shell to another lab.
lab_use() {
    LAB_PREFIX=$1
    LAB_RUN_DIR=${2:-/run/ucanal-lab/$1}
    lab_init
}

# lab_init: validate and derive the environment. Every public entry point calls it.
lab_init() {
    [[ -n $LAB_PREFIX ]] || lab_die "LAB_PREFIX must not be empty"
    [[ $LAB_PREFIX =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || lab_die "LAB_PREFIX '$LAB_PREFIX' may only hold [A-Za-z0-9_.-]"
    (( ${#LAB_PREFIX} <= 20 )) || lab_die "LAB_PREFIX '$LAB_PREFIX' is longer than 20 characters"
    LAB_RUN_DIR=${LAB_RUN_DIR:-/run/ucanal-lab/$LAB_PREFIX}
    LAB_RUN_DIR=${LAB_RUN_DIR%/}
    [[ $LAB_WIRE_CSUM == full || $LAB_WIRE_CSUM == partial ]] || lab_die "LAB_WIRE_CSUM must be full or partial"
    [[ $LAB_RUN_DIR == /?*/?* ]] || lab_die "LAB_RUN_DIR '$LAB_RUN_DIR' must be an absolute path at least two levels deep"
    if [[ -z ${LAB_PYTHON:-} ]]; then
        # Resolve shims (pyenv) so that the pid we record is python's own.
        LAB_PYTHON=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || LAB_PYTHON=python3
    fi
}

# lab_ns NAME: the namespace name of a lab member (lan, client, a node or a pod).
lab_ns() { printf '%s%s\n' "$LAB_PREFIX" "$1"; }

# lab_nsexec NAME CMD...: run CMD inside the lab member's namespace.
lab_nsexec() {
    local n=$1
    shift
    ip netns exec "$LAB_PREFIX$n" "$@"
}

# lab_socket NODE: the ucanal API socket of a node.
lab_socket() { printf '%s/%s%s.sock\n' "$LAB_SOCKET_DIR" "$LAB_PREFIX" "$1"; }

# lab_vtep_ip NODE: flannel's VTEP address = the network address of the node's pod subnet.
lab_vtep_ip() { local s=${LAB_NODE_SUBNET[$1]}; printf '%s\n' "${s%/*}"; }

# lab_cali_name POD: Calico-style host-side interface name (cali + 11 hex digits).
lab_cali_name() {
    local h
    h=$(printf '%s' "$1" | sha1sum)
    printf 'cali%s\n' "${h:0:11}"
}

lab_ns_exists() { [[ -e /run/netns/$1 ]]; }

# lab_namespaces: the namespaces that currently exist and belong to this lab.
lab_namespaces() {
    local n want=() found=()
    want=("$(lab_ns lan)" "$(lab_ns client)")
    for n in "${LAB_NODES[@]}"; do want+=("$(lab_ns "$n")"); done
    for n in "${LAB_PODS[@]}"; do want+=("$(lab_ns "$n")"); done
    if [[ -f $LAB_RUN_DIR/state ]]; then
        while IFS= read -r n; do want+=("$n"); done < <(sed -n 's/^ns=//p' "$LAB_RUN_DIR/state")
    fi
    # Pods that tests may have added.
    while IFS= read -r n; do
        [[ $n == "${LAB_PREFIX}ghost-"* ]] && want+=("$n")
    done < <(ip netns list 2>/dev/null | awk '{print $1}')
    for n in "${want[@]}"; do
        lab_ns_exists "$n" || continue
        [[ " ${found[*]} " == *" $n "* ]] || found+=("$n")
    done
    if ((${#found[@]})); then printf '%s\n' "${found[@]}"; fi
}

lab_exists() {
    [[ -n $(lab_namespaces) || -f $LAB_RUN_DIR/.ucanal-lab ]]
}

_lab_state() { printf '%s\n' "$*" >>"$LAB_RUN_DIR/state"; }
_lab_state_get() { [[ -f $LAB_RUN_DIR/state ]] && sed -n "s/^$1=//p" "$LAB_RUN_DIR/state" | tail -n1; }

# lab_netns_add NAME: create a lab namespace (lo up) and remember it for lab_down.
lab_netns_add() {
    local ns
    ns=$(lab_ns "$1")
    ! lab_ns_exists "$ns" || lab_die "namespace $ns already exists"
    _lab_state "ns=$ns"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
}

_LAB_TMP_SEQ=0
_LAB_TMP_LINKS=()

# lab_veth NS_A NAME_A NS_B NAME_B: a veth pair between two namespaces (full names).
# Created in the root namespace under unique temporary names, both ends moved at once and
# renamed inside their namespace.
lab_veth() {
    local a b
    _LAB_TMP_SEQ=$((_LAB_TMP_SEQ + 1))
    a="lv${BASHPID}x${_LAB_TMP_SEQ}a"
    b="lv${BASHPID}x${_LAB_TMP_SEQ}b"
    (( ${#a} <= 15 )) || lab_die "temporary interface name $a too long"
    _LAB_TMP_LINKS+=("$a" "$b")
    ip link add "$a" type veth peer name "$b"
    ip link set "$a" netns "$1"
    ip link set "$b" netns "$3"
    ip -n "$1" link set "$a" name "$2"
    ip -n "$3" link set "$b" name "$4"
}

# Removes temporary veths left in the root namespace by this process (failure path).
_lab_tmp_links_cleanup() {
    local l
    for l in "${_LAB_TMP_LINKS[@]}"; do
        if ip link show dev "$l" >/dev/null 2>&1; then ip link del dev "$l" 2>/dev/null || true; fi
    done
    _LAB_TMP_LINKS=()
}

_lab_lan_port() {
    if (( ${#1} <= 15 )); then printf '%s\n' "$1"; else printf 'p%s\n' "$(printf '%s' "$1" | sha1sum | cut -c1-12)"; fi
}

# lab_features NS DEV FEATURE=on|off...: set device features (tx = tx checksumming, tso, gso,
# gro) with ethtool, or, when ethtool is not installed, with the legacy SIOCETHTOOL ioctls.
lab_features() {
    local ns=$1 dev=$2
    shift 2
    local -a args=()
    local f
    for f in "$@"; do args+=("${f%%=*}" "${f#*=}"); done
    if command -v ethtool >/dev/null; then
        ip netns exec "$ns" ethtool -K "$dev" "${args[@]}" >/dev/null
    else
        ip netns exec "$ns" "$LAB_PYTHON" -c '
import array, fcntl, socket, struct, sys
cmds = {"tx": 0x17, "tso": 0x1f, "gso": 0x24, "gro": 0x2c}   # ETHTOOL_S* (linux/ethtool.h)
dev, kv = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for k, v in zip(kv[::2], kv[1::2]):
    val = array.array("I", [cmds[k], 1 if v == "on" else 0])
    fcntl.ioctl(s.fileno(), 0x8946, struct.pack("16sP", dev.encode(), val.buffer_info()[0]))  # SIOCETHTOOL
' "$dev" "${args[@]}"
    fi
}

# lab_offloads_off NS DEV...: no segmentation offloads (the kernel side of --offloads off).
lab_offloads_off() {
    local ns=$1 d
    shift
    for d in "$@"; do lab_features "$ns" "$d" tso=off gso=off gro=off; done
}

# ---------------------------------------------------------------------------------------------
# The LAN: a bridge in ${P}lan, every node and the client hang off it.

lab_lan_create() {
    lab_netns_add lan
    ip -n "$(lab_ns lan)" link add br0 type bridge stp_state 0 forward_delay 0
    ip -n "$(lab_ns lan)" link set br0 up
}

# lab_lan_attach MEMBER IFNAME MAC ADDR/LEN: connect a member's namespace to br0.
lab_lan_attach() {
    local member=$1 ifname=$2 mac=$3 addr=$4 ns lan port
    ns=$(lab_ns "$member")
    lan=$(lab_ns lan)
    port=$(_lab_lan_port "$member")
    lab_veth "$ns" "$ifname" "$lan" "$port"
    ip -n "$lan" link set "$port" master br0
    ip -n "$lan" link set "$port" up
    ip -n "$ns" link set "$ifname" address "$mac"
    ip -n "$ns" addr add "$addr" dev "$ifname"
    ip -n "$ns" link set "$ifname" up
    if [[ $LAB_WIRE_CSUM == full ]]; then
        # A veth passes CHECKSUM_PARTIAL packets on as they are and the receiving kernel trusts
        # them; a real NIC puts complete checksums on the wire, and a userspace receiver (ucanal
        # reading VXLAN from a UDP socket) sees only the bytes. So senders onto the lab's wire
        # complete their checksums in software.
        lab_features "$ns" "$ifname" tx=off
    fi
    if [[ $LAB_OFFLOADS == off ]]; then
        lab_offloads_off "$ns" "$ifname"
        lab_offloads_off "$lan" "$port"
    fi
}

lab_client_create() {
    lab_netns_add client
    lab_lan_attach client eth0 "$LAB_CLIENT_MAC" "$LAB_CLIENT_IP/$LAB_LAN_PREFIXLEN"
}

# lab_node_create NODE: the node's namespace with its uplink, default route and sysctls.
lab_node_create() {
    local node=$1 ns
    ns=$(lab_ns "$node")
    lab_netns_add "$node"
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="$LAB_LOCAL_PORT_RANGE"
    lab_lan_attach "$node" "$LAB_UPLINK" "${LAB_NODE_MAC[$node]}" "${LAB_NODE_IP[$node]}/$LAB_LAN_PREFIXLEN"
    ip -n "$ns" route add default via "$LAB_GATEWAY" dev "$LAB_UPLINK" proto static metric 100
}

# lab_pod_create POD: the pod's namespace (lo up). Its eth0 comes from the node.
lab_pod_create() { lab_netns_add "$1"; }

# ---------------------------------------------------------------------------------------------
# Kernel node: flannel.1 + Calico veths + kube-proxy iptables, as on a Canal node.

# lab_flannel_dev NODE: the node's flannel.1 as flanneld creates it (no peers yet).
lab_flannel_dev() {
    local node=$1 ns
    ns=$(lab_ns "$node")
    ip -n "$ns" link add flannel.1 type vxlan id "$LAB_VNI" local "${LAB_NODE_IP[$node]}" \
        dev "$LAB_UPLINK" dstport "$LAB_VXLAN_PORT" nolearning
    ip -n "$ns" link set flannel.1 address "${LAB_NODE_VTEP_MAC[$node]}" mtu "$LAB_MTU"
    ip -n "$ns" addr add "$(lab_vtep_ip "$node")/32" dev flannel.1
    ip -n "$ns" link set flannel.1 up
}

# lab_kernel_flannel NODE: flannel.1 and the peer entries for every other node.
lab_kernel_flannel() {
    local node=$1 ns peer
    ns=$(lab_ns "$node")
    lab_flannel_dev "$node"
    for peer in "${LAB_NODES[@]}"; do
        [[ $peer == "$node" ]] || lab_kernel_flannel_peer "$node" "$peer"
    done
    if [[ $LAB_OFFLOADS == off ]]; then lab_offloads_off "$ns" flannel.1; fi
}

# lab_kernel_flannel_peer NODE PEER: route, neighbour and FDB entry for one peer (as flanneld).
lab_kernel_flannel_peer() {
    local node=$1 peer=$2 ns vtep
    ns=$(lab_ns "$node")
    vtep=$(lab_vtep_ip "$peer")
    ip -n "$ns" route add "${LAB_NODE_SUBNET[$peer]}" via "$vtep" dev flannel.1 onlink
    ip -n "$ns" neigh add "$vtep" lladdr "${LAB_NODE_VTEP_MAC[$peer]}" dev flannel.1 nud permanent
    ip netns exec "$ns" bridge fdb append "${LAB_NODE_VTEP_MAC[$peer]}" dev flannel.1 \
        dst "${LAB_NODE_IP[$peer]}" self permanent
}

# lab_kernel_pod NODE POD IP: Calico CNI's work for one pod (the pod namespace must exist).
lab_kernel_pod() {
    local node=$1 pod=$2 ip=$3 nns pns cali
    nns=$(lab_ns "$node")
    pns=$(lab_ns "$pod")
    cali=$(lab_cali_name "$pod")
    lab_veth "$nns" "$cali" "$pns" eth0
    ip -n "$nns" link set "$cali" address "$LAB_CALI_MAC" mtu "$LAB_MTU"
    ip netns exec "$nns" sysctl -qw "net.ipv4.conf.$cali.proxy_arp=1"
    ip netns exec "$nns" sysctl -qw "net.ipv4.neigh.$cali.proxy_delay=0"
    ip netns exec "$nns" sysctl -qw "net.ipv4.conf.$cali.forwarding=1"
    ip -n "$nns" link set "$cali" up
    ip -n "$nns" route add "$ip" dev "$cali" scope link
    ip -n "$pns" link set eth0 mtu "$LAB_MTU"
    ip -n "$pns" addr add "$ip/32" dev eth0
    ip -n "$pns" link set eth0 up
    ip -n "$pns" route add "$LAB_POD_GATEWAY" dev eth0 scope link
    ip -n "$pns" route add default via "$LAB_POD_GATEWAY" dev eth0
    if [[ $LAB_OFFLOADS == off ]]; then
        lab_offloads_off "$nns" "$cali"
        lab_offloads_off "$pns" eth0
    fi
}

# lab_kube_hashes: one line in, kube-proxy's chain hash out (base32(sha256(line))[:16]).
lab_kube_hashes() {
    "$LAB_PYTHON" -c '
import base64, hashlib, sys
for line in sys.stdin:
    h = hashlib.sha256(line.rstrip("\n").encode()).digest()
    print(base64.b32encode(h).decode()[:16])
'
}

# lab_kube_proxy_rules [SERVICE...]: kube-proxy's iptables-mode rules (iptables-restore input,
# nat and filter tables, meant for `iptables-restore --noflush`) for the services (default
# LAB_SERVICES, format above). Chain names are kube-proxy's: KUBE-SVC-/KUBE-SEP- +
# base32(sha256("ns/name:port" + proto [+ "ip:port"]))[:16]; for default/ghost this gives
# docs/lab.md's KUBE-SVC-TFV3VPHN2LAGKCVY, KUBE-SEP-UJXTJ7PNRUN6D2JD and KUBE-SEP-MNOUPYFQRWSOE45J.
lab_kube_proxy_rules() {
    local svcs=("$@") s name proto vip port nport eps spn i n ep k
    local -a keys=() hashes=() nat_chains=() nat_rules=() flt_rules=() eplist=()
    local masq="-j MASQUERADE"
    if [[ ${LAB_KUBE_RANDOM_FULLY:-0} == 1 ]]; then masq="-j MASQUERADE --random-fully"; fi
    if ((${#svcs[@]} == 0)); then svcs=("${LAB_SERVICES[@]}"); fi

    # Pass 1: everything to hash, hashed by one python process.
    for s in "${svcs[@]}"; do
        read -r name proto vip port nport eps <<<"$s"
        spn=$name
        [[ $spn == *:* ]] || spn="$spn:"
        keys+=("$spn$proto")
        IFS=, read -r -a eplist <<<"${eps:-}"
        for ep in "${eplist[@]}"; do keys+=("$spn$proto$ep"); done
    done
    mapfile -t hashes < <(printf '%s\n' "${keys[@]}" | lab_kube_hashes)
    ((${#hashes[@]} == ${#keys[@]})) || lab_die "hashing chain names failed"

    # Pass 2: the rules.
    k=0
    for s in "${svcs[@]}"; do
        read -r name proto vip port nport eps <<<"$s"
        spn=$name
        [[ $spn == *:* ]] || spn="$spn:"
        local svc="KUBE-SVC-${hashes[k]}"
        k=$((k + 1))
        IFS=, read -r -a eplist <<<"${eps:-}"
        n=${#eplist[@]}
        if ((n == 0)); then
            flt_rules+=("-A KUBE-SERVICES -d $vip/32 -p $proto -m comment --comment \"$spn has no endpoints\" -m $proto --dport $port -j REJECT --reject-with icmp-port-unreachable")
            if [[ -n $nport && $nport != - && $nport != 0 ]]; then
                flt_rules+=("-A KUBE-EXTERNAL-SERVICES -p $proto -m comment --comment \"$spn has no endpoints\" -m addrtype --dst-type LOCAL -m $proto --dport $nport -j REJECT --reject-with icmp-port-unreachable")
            fi
            continue
        fi
        nat_chains+=("$svc")
        nat_rules+=("-A KUBE-SERVICES ! -s $LAB_CLUSTER_CIDR -d $vip/32 -p $proto -m comment --comment \"$spn cluster IP\" -m $proto --dport $port -j KUBE-MARK-MASQ")
        nat_rules+=("-A KUBE-SERVICES -d $vip/32 -p $proto -m comment --comment \"$spn cluster IP\" -m $proto --dport $port -j $svc")
        if [[ -n $nport && $nport != - && $nport != 0 ]]; then
            nat_rules+=("-A KUBE-NODEPORTS -p $proto -m comment --comment \"$spn\" -m $proto --dport $nport -j KUBE-MARK-MASQ")
            nat_rules+=("-A KUBE-NODEPORTS -p $proto -m comment --comment \"$spn\" -m $proto --dport $nport -j $svc")
        fi
        for ((i = 0; i < n; i++)); do
            local sep="KUBE-SEP-${hashes[k]}"
            k=$((k + 1))
            ep=${eplist[i]}
            nat_chains+=("$sep")
            if ((i < n - 1)); then
                nat_rules+=("-A $svc -m comment --comment \"$spn\" -m statistic --mode random --probability $(awk -v a="$((n - i))" 'BEGIN{printf "%.11f", 1/a}') -j $sep")
            else
                nat_rules+=("-A $svc -m comment --comment \"$spn\" -j $sep")
            fi
            nat_rules+=("-A $sep -s ${ep%:*}/32 -m comment --comment \"$spn\" -j KUBE-MARK-MASQ")
            nat_rules+=("-A $sep -p $proto -m comment --comment \"$spn\" -m $proto -j DNAT --to-destination $ep")
        done
    done

    printf '*nat\n'
    printf ':%s - [0:0]\n' KUBE-SERVICES KUBE-NODEPORTS KUBE-POSTROUTING KUBE-MARK-MASQ KUBE-MARK-DROP
    if ((${#nat_chains[@]})); then printf ':%s - [0:0]\n' "${nat_chains[@]}"; fi
    printf '%s\n' \
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' \
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' \
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING' \
        '-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000' \
        '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000' \
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -m mark --mark 0x4000/0x4000 $masq"
    if ((${#nat_rules[@]})); then printf '%s\n' "${nat_rules[@]}"; fi
    printf '%s\n' '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    printf 'COMMIT\n'

    printf '*filter\n'
    printf ':%s - [0:0]\n' KUBE-EXTERNAL-SERVICES KUBE-SERVICES KUBE-FORWARD
    printf '%s\n' \
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES' \
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD' \
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' \
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' \
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT' \
        "-A KUBE-FORWARD -s $LAB_CLUSTER_CIDR -m comment --comment \"kubernetes forwarding conntrack pod source rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" \
        "-A KUBE-FORWARD -d $LAB_CLUSTER_CIDR -m comment --comment \"kubernetes forwarding conntrack pod destination rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    if ((${#flt_rules[@]})); then printf '%s\n' "${flt_rules[@]}"; fi
    printf 'COMMIT\n'
}

# lab_flannel_masq_rules NODE: flannel's ip-masq rules (nat POSTROUTING), as flannel installs them.
lab_flannel_masq_rules() {
    local c=$LAB_CLUSTER_CIDR
    printf '%s\n' '*nat' \
        "-A POSTROUTING -s $c -d $c -j RETURN" \
        "-A POSTROUTING -s $c ! -d 224.0.0.0/4 -j MASQUERADE" \
        "-A POSTROUTING ! -s $c -d ${LAB_NODE_SUBNET[$1]} -j RETURN" \
        "-A POSTROUTING ! -s $c -d $c -j MASQUERADE" \
        'COMMIT'
}

# lab_kernel_iptables NODE [SERVICE...]: install kube-proxy's and then flannel's rules.
lab_kernel_iptables() {
    local node=$1 ns
    shift
    ns=$(lab_ns "$node")
    lab_kube_proxy_rules "$@" | ip netns exec "$ns" iptables-restore --noflush
    lab_flannel_masq_rules "$node" | ip netns exec "$ns" iptables-restore --noflush
}

# lab_set_endpoints SERVICE IP:PORT[,IP:PORT...]: give a service of LAB_SERVICES these
# endpoints on every node, as an EndpointSlice update would: `ucanal service set` on a ucanal
# node; on a kernel node kube-proxy's rules rendered anew (the nat and filter tables replaced,
# flannel's rules put back). Established flows keep their endpoint (conntrack).
lab_set_endpoints() {
    local want=$1 eps=$2 s name proto vip port nport old node ns ep found=0
    local -a svcs=() args=()
    for s in "${LAB_SERVICES[@]}"; do
        read -r name proto vip port nport old <<<"$s"
        if [[ $name == "$want" ]]; then
            found=1
            s="$name $proto $vip $port $nport $eps"
            args=(service set --name "$name" --protocol "$proto" --cluster-ip "$vip" --port "$port")
            if [[ -n $nport && $nport != - && $nport != 0 ]]; then args+=(--node-port "$nport"); fi
            for ep in ${eps//,/ }; do args+=(--endpoint "$ep"); done
        fi
        svcs+=("$s")
    done
    ((found)) || lab_die "no service '$want' in LAB_SERVICES"
    for node in "${LAB_NODES[@]}"; do
        ns=$(lab_ns "$node")
        case $(_lab_state_get "node.$node") in
        ucanal) "$UCANAL_BIN" --socket "$(lab_socket "$node")" "${args[@]}" >/dev/null ;;
        kernel)
            lab_kube_proxy_rules "${svcs[@]}" | ip netns exec "$ns" iptables-restore
            lab_flannel_masq_rules "$node" | ip netns exec "$ns" iptables-restore --noflush
            ;;
        *) lab_die "node $node: mode unknown (is the lab up?)" ;;
        esac
    done
}

# lab_kernel_node NODE: everything flannel + Calico + kube-proxy do on a node.
lab_kernel_node() {
    local node=$1 pod
    lab_kernel_flannel "$node"
    for pod in "${LAB_PODS[@]}"; do
        if [[ ${LAB_POD_NODE[$pod]} == "$node" ]]; then
            lab_kernel_pod "$node" "$pod" "${LAB_POD_IP[$pod]}"
        fi
    done
    lab_kernel_iptables "$node"
}

# ---------------------------------------------------------------------------------------------
# ucanal node

# lab_ucanal_config NODE: the node's TOML config on stdout.
lab_ucanal_config() {
    local node=$1 peer pod s name proto vip port nport eps ep sep
    local -a eplist
    cat <<EOF
# generated by netns-scripts/lib.sh for lab prefix '$LAB_PREFIX'
[node]
name = "$node"
uplink = "$LAB_UPLINK"
node_ip = "${LAB_NODE_IP[$node]}"
pod_cidr = "${LAB_NODE_SUBNET[$node]}"
cluster_cidr = "$LAB_CLUSTER_CIDR"
service_cidr = "$LAB_SERVICE_CIDR"
vtep_mac = "${LAB_NODE_VTEP_MAC[$node]}"
vni = $LAB_VNI
vxlan_port = $LAB_VXLAN_PORT
mtu = $LAB_MTU${LAB_NODE_CONF_NODE[$node]:+$_LAB_NL${LAB_NODE_CONF_NODE[$node]}}

[api]
socket = "$(lab_socket "$node")"${LAB_NODE_CONF_API[$node]:+$_LAB_NL${LAB_NODE_CONF_API[$node]}}

[dataplane]
offloads = $([[ $LAB_OFFLOADS == on ]] && echo true || echo false)
${LAB_UCANAL_DATAPLANE:-}${LAB_NODE_CONF_DATAPLANE[$node]:+$_LAB_NL${LAB_NODE_CONF_DATAPLANE[$node]}}${LAB_NODE_CONF_TABLES[$node]:+$_LAB_NL${LAB_NODE_CONF_TABLES[$node]}}
EOF
    for peer in "${LAB_NODES[@]}"; do
        [[ $peer != "$node" ]] || continue
        cat <<EOF

[[peers]]
name = "$peer"
subnet = "${LAB_NODE_SUBNET[$peer]}"
public_ip = "${LAB_NODE_IP[$peer]}"
vtep_mac = "${LAB_NODE_VTEP_MAC[$peer]}"
EOF
    done
    for pod in "${LAB_PODS[@]}"; do
        [[ ${LAB_POD_NODE[$pod]} == "$node" ]] || continue
        cat <<EOF

[[pods]]
name = "$pod"
netns = "$(lab_ns "$pod")"
ip = "${LAB_POD_IP[$pod]}"
EOF
        lab_pod_policy_conf "$pod"
    done
    for s in "${LAB_SERVICES[@]}"; do
        read -r name proto vip port nport eps <<<"$s"
        IFS=, read -r -a eplist <<<"${eps:-}"
        printf '\n[[services]]\nname = "%s"\nprotocol = "%s"\ncluster_ip = "%s"\nport = %s\n' \
            "$name" "$proto" "$vip" "$port"
        if [[ -n $nport && $nport != - && $nport != 0 ]]; then printf 'node_port = %s\n' "$nport"; fi
        printf 'endpoints = ['
        sep=
        for ep in "${eplist[@]}"; do
            printf '%s"%s"' "$sep" "$ep"
            sep=', '
        done
        printf ']\n'
    done
}

# lab_ucanal_ensure_bin: build ucanal (cargo build --release) when the default binary is missing.
lab_ucanal_ensure_bin() {
    [[ -x $UCANAL_BIN ]] && return 0
    if [[ $UCANAL_BIN != "$_LAB_DEFAULT_UCANAL_BIN" ]]; then
        lab_die "UCANAL_BIN=$UCANAL_BIN does not exist or is not executable"
    fi
    command -v cargo >/dev/null || lab_die "$UCANAL_BIN is missing and cargo is not installed"
    lab_log "building ucanal: (cd $LAB_REPO && cargo build --release)"
    (cd "$LAB_REPO" && cargo build --release) || lab_die "cargo build --release failed"
    [[ -x $UCANAL_BIN ]] || lab_die "cargo build succeeded but $UCANAL_BIN is still missing"
}

# lab_ucanal_start NODE: write the config, start ucanal in the node's namespace (own session).
lab_ucanal_start() {
    local node=$1 ns conf log pidf
    ns=$(lab_ns "$node")
    conf=$LAB_RUN_DIR/$node.toml
    log=$LAB_RUN_DIR/$node.log
    pidf=$LAB_RUN_DIR/$node.pid
    lab_ucanal_config "$node" >"$conf"
    if [[ ! -d $LAB_SOCKET_DIR ]]; then
        mkdir -p "$LAB_SOCKET_DIR"
        chmod 0700 "$LAB_SOCKET_DIR"   # as ucanal itself would create it
    fi
    # LAB_KEEP_SOCKET: a predecessor still serves on the socket (and writes the log).
    # LAB_KEEP_LOG: a restart appends to the node's log.
    [[ -n ${LAB_KEEP_SOCKET:-} ]] || rm -f "$(lab_socket "$node")"
    [[ -n ${LAB_KEEP_SOCKET:-}${LAB_KEEP_LOG:-} ]] || : >"$log"
    local -a extra=()
    read -r -a extra <<<"${UCANAL_RUN_ARGS:-}"
    # `lab.sh up --metrics`: every ucanal node serves Prometheus, in its own namespace.
    local metrics
    if metrics=$(_lab_state_get metrics) && [[ -n $metrics && " ${extra[*]} " != *" --metrics "* ]]; then
        extra+=(--metrics "$metrics")
    fi
    _lab_state "socket=$(lab_socket "$node")"
    # sh writes its own pid, then execs ucanal: the pid file holds ucanal's pid.
    # shellcheck disable=SC2016
    setsid ip netns exec "$ns" sh -c 'p=$1; shift; echo $$ >"$p"; exec "$@"' \
        ucanal-lab "$pidf" "$UCANAL_BIN" run --config "$conf" "${extra[@]}" </dev/null >>"$log" 2>&1 &
    lab_log "started ucanal for $node in $ns (config $conf, log $log)"
}

# A pid is alive if it exists and is not a zombie waiting for its (re)parent to reap it.
_lab_pid_alive() {
    local st
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    st=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}
_lab_pidfile() { [[ -s $1 ]] && head -n1 "$1"; }

# lab_ucanal_pid NODE: pid of the node's ucanal if it is running: the one the lab started
# (its pid file), else a `ucanal run` started by hand in the node's namespace (as the
# upgrade procedure of docs/restart.md does; the newest if a hand-over is under way).
lab_ucanal_pid() {
    local pid p found=
    if pid=$(_lab_pidfile "$LAB_RUN_DIR/$1.pid") && _lab_pid_alive "$pid" &&
        grep -qF -- "$LAB_RUN_DIR/$1.toml" "/proc/$pid/cmdline" 2>/dev/null; then
        printf '%s\n' "$pid"
        return 0
    fi
    lab_ns_exists "$(lab_ns "$1")" || return 1
    for p in $(ip netns pids "$(lab_ns "$1")" 2>/dev/null); do
        _lab_pid_alive "$p" && _lab_is_ucanal_run "$p" && found=$p
    done
    [[ -n $found ]] && printf '%s\n' "$found"
}

# _lab_is_ucanal_run PID: the process is `ucanal... run ...` (any binary named ucanal*).
_lab_is_ucanal_run() {
    local -a argv
    mapfile -d '' -t argv <"/proc/$1/cmdline" 2>/dev/null || return 1
    [[ ${#argv[@]} -ge 2 && $(basename -- "${argv[0]}") == ucanal* && " ${argv[*]:1} " == *" run "* ]]
}

# lab_ucanal_wait NODE [TIMEOUT]: until `ucanal --socket S show pods` succeeds.
lab_ucanal_wait() {
    local node=$1 timeout=${2:-${LAB_UCANAL_TIMEOUT:-15}} sock deadline pid
    sock=$(lab_socket "$node")
    deadline=$((SECONDS + timeout))
    while :; do
        if "$UCANAL_BIN" --socket "$sock" show pods >/dev/null 2>&1; then
            lab_log "ucanal on $node is ready ($sock)"
            return 0
        fi
        pid=$(_lab_pidfile "$LAB_RUN_DIR/$node.pid") || pid=
        if [[ -n $pid ]] && ! _lab_pid_alive "$pid"; then
            lab_log "ucanal on $node exited; last lines of $LAB_RUN_DIR/$node.log:"
            tail -n 30 "$LAB_RUN_DIR/$node.log" >&2 || true
            lab_die "ucanal on $node did not start"
        fi
        if ((SECONDS >= deadline)); then
            lab_log "ucanal on $node not ready after ${timeout}s; last lines of $LAB_RUN_DIR/$node.log:"
            tail -n 30 "$LAB_RUN_DIR/$node.log" >&2 || true
            lab_die "ucanal on $node is not answering on $sock"
        fi
        sleep 0.2
    done
}

# _lab_kill_wait SECONDS PID...: SIGTERM, wait, then SIGKILL whatever is left.
_lab_kill_wait() {
    local secs=$1 p left deadline
    shift
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + secs))
    while :; do
        left=()
        for p in "$@"; do _lab_pid_alive "$p" && left+=("$p"); done
        ((${#left[@]})) || return 0
        if ((SECONDS >= deadline)); then
            lab_log "killing (SIGKILL) ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            sleep 0.1
            return 0
        fi
        sleep 0.1
    done
}

# lab_ucanal_stop NODE: SIGTERM, up to 5 s, then SIGKILL.
lab_ucanal_stop() {
    local pid
    pid=$(lab_ucanal_pid "$1") || return 0
    lab_log "stopping ucanal of $1 (pid $pid)"
    _lab_kill_wait 5 "$pid"
}

# lab_ucanal_restart NODE [TERM|KILL]: signal the node's ucanal, wait until it is gone
# (SIGKILL after 5 s), start it again with the same command line (UCANAL_RUN_ARGS) and wait
# until it answers. With TERM and --keep-on-exit the new one starts right after the signal
# and takes the old one's fds over (hand-over). Prints the milliseconds from the signal to
# the new one answering.
lab_ucanal_restart() {
    local node=$1 sig=${2:-TERM} pid t0 t1
    pid=$(lab_ucanal_pid "$node") || lab_die "ucanal on $node is not running"
    t0=$(date +%s%N)
    kill "-$sig" "$pid"
    local deadline=$((SECONDS + 5)) handover=
    # SIGTERM with --keep-on-exit: the old ucanal forwards on and hands its fds to a
    # successor started at once (which finds it on the socket, so the socket stays).
    if [[ $sig == TERM && " ${UCANAL_RUN_ARGS:-} " == *" --keep-on-exit "* ]]; then
        handover=1
        rm -f "$LAB_RUN_DIR/$node.pid"
        LAB_KEEP_SOCKET=1 lab_ucanal_start "$node"
        deadline=$((SECONDS + 15))
    fi
    while _lab_pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
        sleep 0.01
    done
    if [[ -z $handover ]]; then
        rm -f "$LAB_RUN_DIR/$node.pid"   # the old pid must not read as "the new ucanal exited"
        LAB_KEEP_LOG=1 lab_ucanal_start "$node"
    fi
    lab_ucanal_wait "$node" >/dev/null
    t1=$(date +%s%N)
    printf '%s\n' $(((t1 - t0) / 1000000))
}

# ---------------------------------------------------------------------------------------------
# The pods' HTTP servers (ghost stand-ins) on LAB_HTTP_PORT: http-server.py, python's
# http.server for GET plus an upload sink (PUT/POST answers "<sha256> <bytes> <pod>").

lab_www_dir() { printf '%s/www/%s\n' "$LAB_RUN_DIR" "$1"; }

# lab_http_start POD [IP]: serve "<pod> <ip>" as index.html from the pod's namespace.
lab_http_start() {
    local pod=$1 ip=${2:-${LAB_POD_IP[$1]:-}} dir
    dir=$(lab_www_dir "$pod")
    mkdir -p "$dir"
    printf '%s %s\n' "$pod" "$ip" >"$dir/index.html"
    # shellcheck disable=SC2016
    setsid ip netns exec "$(lab_ns "$pod")" sh -c 'echo $$ >"$1"; shift; exec "$@"' \
        http-lab "$LAB_RUN_DIR/$pod.http.pid" "$LAB_PYTHON" -u "$LAB_LIB_DIR/http-server.py" "$LAB_HTTP_PORT" \
        "$dir" "$pod" </dev/null >"$LAB_RUN_DIR/$pod.http.log" 2>&1 &
}

# lab_http_wait POD [TIMEOUT]: until the server answers on the pod's loopback.
lab_http_wait() {
    local pod=$1 deadline=$((SECONDS + ${2:-10}))
    until ip netns exec "$(lab_ns "$pod")" curl -s -o /dev/null -m 1 "http://127.0.0.1:$LAB_HTTP_PORT/"; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$LAB_RUN_DIR/$pod.http.log" >&2 || true
            lab_die "HTTP server of $pod is not answering"
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------------
# up / down / status

_lab_require() {
    local c
    ((EUID == 0)) || lab_die "must run as root"
    for c in ip bridge iptables-restore curl setsid sha1sum awk; do
        command -v "$c" >/dev/null || lab_die "$c is not installed"
    done
    "$LAB_PYTHON" -c 'import http.server' 2>/dev/null || lab_die "$LAB_PYTHON cannot import http.server"
}

# The address `lab.sh up --metrics` gives every ucanal node's Prometheus listener. It is
# bound in the node's network namespace (as ucanal binds everything there): reach it with
# `lab.sh exec NODE curl -s 127.0.0.1:9300/metrics`, not from the host.
LAB_METRICS_DEFAULT=127.0.0.1:9300

# lab_up [--topology FILE] [--node1 ucanal|kernel] [--node2 ucanal|kernel] [--offloads on|off] [--metrics[=ADDR]] [--force]
lab_up() {
    local force=0 i node any_ucanal=0 v
    lab_init
    LAB_OFFLOADS=on
    LAB_METRICS=
    # The article's lab unless the caller loaded a topology (lab_topology_up, or lib.sh when
    # it was sourced with ucanal built); --nodeI sets node I's kind on top of it.
    [[ -n $LAB_TOPOLOGY_FILE ]] || lab_topology_load "$LAB_TOPOLOGY_DEFAULT"
    while (($#)); do
        case $1 in
        --topology) shift ;;
        --topology=*) ;;
        --node[0-9]*)
            i=${1#--node}
            i=${i%%=*}
            if [[ $1 == *=* ]]; then v=${1#*=}; else v=${2:-}; shift; fi
            ((i >= 1 && i <= ${#LAB_NODES[@]})) || lab_die "no node $i (nodes: ${LAB_NODES[*]})"
            [[ $v == ucanal || $v == kernel ]] || lab_die "--node$i wants ucanal or kernel, not '$v'"
            LAB_NODE_MODE[${LAB_NODES[i - 1]}]=$v
            ;;
        --offloads | --offloads=*)
            if [[ $1 == *=* ]]; then v=${1#*=}; else v=${2:-}; shift; fi
            [[ $v == on || $v == off ]] || lab_die "--offloads wants on or off, not '$v'"
            LAB_OFFLOADS=$v
            ;;
        --metrics) LAB_METRICS=$LAB_METRICS_DEFAULT ;;
        --metrics=*) LAB_METRICS=${1#*=} ;;
        --force) force=1 ;;
        *) lab_die "unknown option '$1' (up [--topology FILE] [--node1 ucanal|kernel] [--node2 ucanal|kernel] [--offloads on|off] [--metrics[=ADDR]] [--force])" ;;
        esac
        shift
    done
    _lab_require
    if lab_exists; then
        if ((force)); then
            lab_log "lab exists, --force: tearing it down first"
            lab_down
        else
            lab_die "a lab with prefix '$LAB_PREFIX' already exists (namespaces: $(lab_namespaces | tr '\n' ' ')run dir: $LAB_RUN_DIR). Run 'LAB_PREFIX=$LAB_PREFIX $LAB_LIB_DIR/lab.sh down' first, or use 'up --force'."
        fi
    fi
    for node in "${LAB_NODES[@]}"; do [[ ${LAB_NODE_MODE[$node]} == ucanal ]] && any_ucanal=1; done
    if ((any_ucanal)); then lab_ucanal_ensure_bin; fi
    # The work runs in a new bash process, given this shell's LAB_*/UCANAL_* variables: there
    # `set -e` holds even when lab_up itself is called from `if`/`||`/`&&` (where bash would
    # ignore it in functions and subshells), and its EXIT trap removes whatever was created
    # when a step fails. It runs in the background so that a signal to this shell (Ctrl-C,
    # kill, timeout) is passed on to it at once; lab_up returns after it has cleaned up.
    local saved child rc=0 state
    local -a vars
    saved=$(trap -p INT TERM HUP)
    mapfile -t vars < <(compgen -v | grep -E '^(LAB_|UCANAL_)')
    state=$(declare -p "${vars[@]}")
    # shellcheck disable=SC2016
    bash -c '. "$1"; eval "$(cat)"; _lab_up_child' lab-up "$LAB_LIB_DIR/lib.sh" <<<"$state" &
    child=$!
    # shellcheck disable=SC2064
    trap "kill -TERM $child 2>/dev/null || true" INT TERM HUP
    while :; do
        rc=0
        wait "$child" || rc=$?
        kill -0 "$child" 2>/dev/null || break
    done
    trap - INT TERM HUP
    if [[ -n $saved ]]; then eval "$saved"; fi
    return "$rc"
}

_lab_up_child() {
    _lab_up_ok=0
    trap '_lab_up_exit' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    _lab_up_body
    _lab_up_ok=1
}

_lab_up_exit() {
    local rc=$?
    if [[ ${_lab_up_ok:-0} != 1 ]]; then
        ((rc != 0)) || rc=1
        trap - EXIT
        trap '' INT TERM HUP
        lab_log "up failed (exit $rc); removing everything created so far"
        _lab_tmp_links_cleanup
        lab_down || true
        exit "$rc"
    fi
}

_lab_up_body() {
    local node pod
    # (twice: a concurrent lab_down of another prefix may rmdir the common parent in between)
    mkdir -p "$LAB_RUN_DIR" 2>/dev/null || mkdir -p "$LAB_RUN_DIR"
    : >"$LAB_RUN_DIR/.ucanal-lab"
    : >"$LAB_RUN_DIR/state"
    _lab_state "prefix=$LAB_PREFIX"
    _lab_state "offloads=$LAB_OFFLOADS"
    _lab_state "wire_csum=$LAB_WIRE_CSUM"
    if [[ -n ${LAB_METRICS:-} ]]; then _lab_state "metrics=$LAB_METRICS"; fi
    for node in "${LAB_NODES[@]}"; do _lab_state "node.$node=${LAB_NODE_MODE[$node]}"; done
    lab_topology_save
    lab_log "up: nodes $(for node in "${LAB_NODES[@]}"; do printf '%s=%s ' "$node" "${LAB_NODE_MODE[$node]}"; done)offloads=$LAB_OFFLOADS run dir $LAB_RUN_DIR"

    lab_lan_create
    lab_client_create
    for node in "${LAB_NODES[@]}"; do lab_node_create "$node"; done
    for pod in "${LAB_PODS[@]}"; do lab_pod_create "$pod"; done
    lab_extra_lans
    for node in "${LAB_NODES[@]}"; do
        if [[ ${LAB_NODE_MODE[$node]} == kernel ]]; then lab_kernel_node "$node"; fi
    done
    for node in "${LAB_NODES[@]}"; do
        if [[ ${LAB_NODE_MODE[$node]} == ucanal ]]; then lab_ucanal_start "$node"; fi
    done
    for node in "${LAB_NODES[@]}"; do
        if [[ ${LAB_NODE_MODE[$node]} == ucanal ]]; then lab_ucanal_wait "$node"; fi
    done
    for pod in "${LAB_PODS[@]}"; do lab_http_start "$pod"; done
    for pod in "${LAB_PODS[@]}"; do lab_http_wait "$pod"; done
    _LAB_TMP_LINKS=()
    _lab_state "up=1"
    lab_log "up: done"
}

# lab_down: stop ucanal, kill what runs in the lab's namespaces, delete them and the run dir.
# Best effort; always returns 0 (as root).
lab_down() {
    lab_init
    ((EUID == 0)) || lab_die "must run as root"
    (
        set +e
        local node ns sock pids=() p nss=()
        for node in "${LAB_NODES[@]}"; do lab_ucanal_stop "$node"; done
        mapfile -t nss < <(lab_namespaces)
        for ns in "${nss[@]}"; do
            while IFS= read -r p; do [[ -n $p ]] && pids+=("$p"); done < <(ip netns pids "$ns" 2>/dev/null)
        done
        if ((${#pids[@]})); then
            lab_log "down: stopping processes in the lab's namespaces: ${pids[*]}"
            _lab_kill_wait 3 "${pids[@]}"
        fi
        for ns in "${nss[@]}"; do
            ip netns del "$ns" 2>/dev/null || lab_log "warning: could not delete namespace $ns"
        done
        for node in "${LAB_NODES[@]}"; do
            sock=$(lab_socket "$node")
            rm -f "$sock" "$sock".{state,state.journal,state.journal.old,conntrack}{,.tmp} \
                "${sock%.sock}.leases.json" "${sock%.sock}.leases.json.tmp"
        done
        if [[ -f $LAB_RUN_DIR/state ]]; then
            while IFS= read -r sock; do
                [[ $sock == "$LAB_SOCKET_DIR/$LAB_PREFIX"*.sock ]] && rm -f "$sock"
            done < <(sed -n 's/^socket=//p' "$LAB_RUN_DIR/state")
        fi
        if [[ -f $LAB_RUN_DIR/.ucanal-lab ]]; then
            rm -rf -- "$LAB_RUN_DIR"
        elif [[ -d $LAB_RUN_DIR ]]; then
            rmdir "$LAB_RUN_DIR" 2>/dev/null || lab_log "warning: $LAB_RUN_DIR is not a lab run dir; left alone"
        fi
        rmdir "$(dirname "$LAB_RUN_DIR")" 2>/dev/null
        if ((${#nss[@]})); then lab_log "down: removed ${nss[*]}"; else lab_log "down: nothing to remove"; fi
        exit 0
    )
}

# lab_status: namespaces, node modes, ucanal pids and sockets, pods' servers (and, for a
# cluster lab, etcd and the kernel nodes' flannel-lite). Call lab_cluster_load first for a
# cluster lab (lab.sh does). Returns 0 when the lab is up and every process runs, 1 when
# there is no lab, 2 otherwise.
lab_status() {
    lab_init
    local rc=0 node mode pid sock pod ns note metrics
    local -a nss
    mapfile -t nss < <(lab_namespaces)
    printf 'lab %s  run dir %s\n' "$LAB_PREFIX" "$LAB_RUN_DIR"
    if ((${#nss[@]} == 0)) && [[ ! -f $LAB_RUN_DIR/.ucanal-lab ]]; then
        printf 'not up\n'
        return 1
    fi
    [[ $(_lab_state_get up) == 1 ]] || { rc=2; printf 'up          not finished (or failed)\n'; }
    printf 'offloads    %s   wire checksums %s\n' "$(_lab_state_get offloads || true)" "$(_lab_state_get wire_csum || true)"
    printf 'namespaces  %s\n' "${nss[*]}"
    if [[ $(_lab_state_get cluster) == 1 ]]; then
        pid=$(_lab_pidfile "$LAB_RUN_DIR/etcd.pid") || pid=
        if _lab_pid_alive "$pid"; then :; else pid="not running"; rc=2; fi
        printf 'etcd        %s  pid %s\n' "$LAB_ETCD_URL" "$pid"
    fi
    if metrics=$(_lab_state_get metrics) && [[ -n $metrics ]]; then
        printf 'metrics     %s in each ucanal node'"'"'s namespace (lab.sh exec NODE curl -s %s/metrics)\n' "$metrics" "$metrics"
    fi
    for node in "${LAB_NODES[@]}"; do
        mode=$(_lab_state_get "node.$node") || mode=
        sock=$(lab_socket "$node")
        lab_ns_exists "$(lab_ns "$node")" || rc=2
        case $mode in
        ucanal)
            note=
            if pid=$(lab_ucanal_pid "$node"); then
                [[ $(_lab_pidfile "$LAB_RUN_DIR/$node.pid" || true) == "$pid" ]] || note=' (started by hand)'
            else
                pid="not running"
                rc=2
            fi
            printf 'node %-10s mode %-6s ns %-16s ucanal pid %s%s  socket %s%s\n' "$node" "$mode" \
                "$(lab_ns "$node")" "$pid" "$note" "$sock" "$([[ -S $sock ]] || echo ' (missing)')"
            ;;
        kernel)
            if [[ -f $LAB_RUN_DIR/$node.flannel.pid ]]; then
                pid=$(_lab_pidfile "$LAB_RUN_DIR/$node.flannel.pid") || pid=
                if _lab_pid_alive "$pid"; then :; else pid="not running"; rc=2; fi
                note="flannel-lite pid $pid"
            else
                note="flannel.1, veths, iptables (no daemon)"
            fi
            printf 'node %-10s mode %-6s ns %-16s %s\n' "$node" "$mode" "$(lab_ns "$node")" "$note"
            ;;
        *)
            rc=2
            printf 'node %-10s mode ?      ns %-16s (not in the lab'"'"'s state)\n' "$node" "$(lab_ns "$node")"
            ;;
        esac
    done
    for pod in "${LAB_PODS[@]}"; do
        ns=$(lab_ns "$pod")
        pid=$(_lab_pidfile "$LAB_RUN_DIR/$pod.http.pid") || pid=
        if _lab_pid_alive "$pid"; then :; else pid="not running"; rc=2; fi
        printf 'pod  %-10s ip %-12s node %-10s ns %-16s http pid %s\n' "$pod" "${LAB_POD_IP[$pod]:-?}" \
            "${LAB_POD_NODE[$pod]}" "$ns" "$pid"
    done
    if ((rc == 2)); then printf 'degraded: see the lines above (logs in %s)\n' "$LAB_RUN_DIR"; fi
    return "$rc"
}

# The article's lab (topologies/article.yaml) in the arrays, for scripts that source this file
# and change them before lab_up. Without a built ucanal yet, lab_up loads it (and builds).
if [[ -x $LAB_TOOL_BIN ]]; then lab_topology_load "$LAB_TOPOLOGY_DEFAULT"; fi
