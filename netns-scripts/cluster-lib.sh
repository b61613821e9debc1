# shellcheck shell=bash
# cluster-lib.sh - a lab of N nodes formed only through etcd (sourced by lab.sh after lib.sh).
#
#   lab.sh up --nodes N --etcd [--kernel LIST]   etcd on the LAN (172.16.240.10:2379, data in
#                                              the run dir) and N nodes node01..nodeNN, each
#                                              with one pod podNN (10.244.NN.5); LIST names
#                                              kernel nodes by number (e.g. 2,5): flannel.1
#                                              programmed from the leases by flannel-lite.py
#   lab.sh up --nodes N --etcd --auto-cidr     the nodes' configs have no pod_cidr: each node
#                                              leases a free subnet from etcd; its pod (the
#                                              subnet's .5) is added over the API once the
#                                              subnet is known, then written into its config
#   lab.sh restart NODE [TERM|KILL]            restart a node's ucanal with its config
#   lab.sh add-node [--kernel]                 one more node, started at runtime
#   lab.sh remove-node NODE                    stop it and delete its lease
#   lab.sh etcd-stop | etcd-start              an etcd outage (same data dir on return)
#   lab.sh etcd-cut | etcd-heal                etcd unreachable from the LAN, still running
#   lab.sh etcdctl ARGS...                     etcdctl against the lab's etcd
#   lab.sh pingall [TIMEOUT]                   every pod pings every other; prints "ok/total"
#
# Node i: 172.16.240.(130+i) on the LAN, subnet 10.244.i.0/24 (node02: the article's
# 10.244.0.0/24 with pod 10.244.0.74), VTEP MAC 0a:58:0a:f4:ii:00.
# Every member gets permanent LAN neighbour entries for every other one: N x (N-1) dynamic
# entries would overflow the kernel's shared neighbour table (gc_thresh3 1024) at 32 nodes,
# and permanent entries do not count against it. No host-wide setting is changed.

LAB_ETCD_IP=172.16.240.10
LAB_ETCD_MAC=00:50:56:00:02:10
LAB_ETCD_PREFIX=/coreos.com/network
LAB_ETCD_URL=http://$LAB_ETCD_IP:2379

lab_cluster_node() { printf 'node%02d\n' "$1"; }
# --auto-cidr: the subnet each node leased, by node number (from the state file).
declare -gA LAB_CLUSTER_LEASED=()
LAB_CLUSTER_AUTO=0
lab_cluster_pod() { printf 'pod%02d\n' "$1"; }

# lab_cluster_define I MODE: the arrays lib.sh works from, for node I.
lab_cluster_define() {
    local i=$1 node pod
    node=$(lab_cluster_node "$i")
    pod=$(lab_cluster_pod "$i")
    LAB_NODES+=("$node")
    LAB_NODE_IP[$node]=172.16.240.$((130 + i))
    LAB_NODE_MAC[$node]=$(printf '00:0c:29:00:01:%02x' "$i")
    LAB_NODE_SUBNET[$node]=10.244.$i.0/24
    # node02 is the article's centos7-2 (10.244.0.0/24, its ghost pod 10.244.0.74), so the
    # article's default/ghost manifest applies to the cluster lab as it is.
    ((i != 2)) || LAB_NODE_SUBNET[$node]=10.244.0.0/24
    LAB_NODE_VTEP_MAC[$node]=$(printf '0a:58:0a:f4:%02x:00' "$i")
    LAB_NODE_MODE[$node]=$2
    LAB_PODS+=("$pod")
    LAB_POD_IP[$pod]=10.244.$i.5
    ((i != 2)) || LAB_POD_IP[$pod]=10.244.0.74
    if ((LAB_CLUSTER_AUTO)); then
        # Unknown until the node leased it; then the pod is the subnet's .5.
        LAB_NODE_SUBNET[$node]=${LAB_CLUSTER_LEASED[$i]:-}
        LAB_POD_IP[$pod]=
        [[ -z ${LAB_CLUSTER_LEASED[$i]:-} ]] || LAB_POD_IP[$pod]=$(lab_cluster_ip_in "${LAB_CLUSTER_LEASED[$i]}" 5)
    fi
    LAB_POD_NODE[$pod]=$node
}

# lab_cluster_ip_in CIDR N: the CIDR's network address plus N.
lab_cluster_ip_in() {
    local a b c d
    IFS=. read -r a b c d <<<"${1%/*}"
    local v=$(((a << 24 | b << 16 | c << 8 | d) + $2))
    printf '%d.%d.%d.%d\n' $((v >> 24 & 255)) $((v >> 16 & 255)) $((v >> 8 & 255)) $((v & 255))
}

# lab_cluster_load: the nodes of a running cluster lab, from its state file.
lab_cluster_load() {
    local line i mode
    [[ -f $LAB_RUN_DIR/state ]] && grep -q '^cluster=1' "$LAB_RUN_DIR/state" || return 1
    LAB_CLUSTER_AUTO=0
    ! grep -q '^autocidr=1' "$LAB_RUN_DIR/state" || LAB_CLUSTER_AUTO=1
    LAB_CLUSTER_LEASED=()
    while IFS='=' read -r i line; do
        LAB_CLUSTER_LEASED[$i]=$line
    done < <(sed -n 's/^csubnet\.//p' "$LAB_RUN_DIR/state")
    LAB_NODES=()
    LAB_PODS=()
    LAB_SERVICES=()
    while IFS= read -r line; do
        i=${line%%=*}
        mode=${line#*=}
        lab_cluster_define "$i" "$mode"
    done < <(sed -n 's/^cnode\.//p' "$LAB_RUN_DIR/state" | awk -F= '{m[$1]=$2} END {for (k in m) if (m[k] != "gone") print k "=" m[k]}' | sort -n)
}

lab_etcdctl() { ETCDCTL_API=3 ip netns exec "$(lab_ns etcd)" etcdctl --endpoints "http://127.0.0.1:2379" "$@"; }

lab_etcd_start() {
    local ns deadline
    ns=$(lab_ns etcd)
    mkdir -p "$LAB_RUN_DIR/etcd"
    # shellcheck disable=SC2016
    setsid ip netns exec "$ns" sh -c 'echo $$ >"$1"; shift; exec "$@"' etcd-lab "$LAB_RUN_DIR/etcd.pid" \
        etcd --name lab --data-dir "$LAB_RUN_DIR/etcd/data" \
        --listen-client-urls "$LAB_ETCD_URL,http://127.0.0.1:2379" --advertise-client-urls "$LAB_ETCD_URL" \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster lab=http://127.0.0.1:2380 </dev/null >>"$LAB_RUN_DIR/etcd.log" 2>&1 &
    deadline=$((SECONDS + 15))
    until lab_etcdctl endpoint health >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { tail -n 20 "$LAB_RUN_DIR/etcd.log" >&2; lab_die "etcd did not start"; }
        sleep 0.2
    done
    lab_log "etcd up at $LAB_ETCD_URL (data $LAB_RUN_DIR/etcd/data)"
}

# lab_etcd_cut / lab_etcd_heal: a partition between etcd and the LAN (etcd keeps running and
# answers etcdctl on its own loopback, so leases can change while the nodes cannot see it).
lab_etcd_cut() { ip -n "$(lab_ns etcd)" link set eth0 down; lab_log "etcd cut off the LAN"; }
lab_etcd_heal() { ip -n "$(lab_ns etcd)" link set eth0 up; lab_log "etcd back on the LAN"; }

lab_etcd_stop() {
    local pid
    pid=$(_lab_pidfile "$LAB_RUN_DIR/etcd.pid") || return 0
    _lab_pid_alive "$pid" || return 0
    lab_log "stopping etcd (pid $pid)"
    _lab_kill_wait 5 "$pid"
}

# lab_cluster_neigh_batch: `ip -batch` lines of permanent neighbours for every LAN member.
lab_cluster_members() {
    local n
    printf '%s %s\n' "$LAB_ETCD_IP" "$LAB_ETCD_MAC" "$LAB_CLIENT_IP" "$LAB_CLIENT_MAC"
    for n in "${LAB_NODES[@]}"; do printf '%s %s\n' "${LAB_NODE_IP[$n]}" "${LAB_NODE_MAC[$n]}"; done
}

# lab_cluster_neigh MEMBER IFNAME [ONLY_IP]: permanent LAN neighbours in MEMBER's namespace.
lab_cluster_neigh() {
    local ns=$1 dev=$2 only=${3:-} ip mac
    while read -r ip mac; do
        [[ -z $only || $ip == "$only" ]] || continue
        printf 'neigh replace %s lladdr %s dev %s nud permanent\n' "$ip" "$mac" "$dev"
    done < <(lab_cluster_members) | ip -n "$ns" -batch - 2>/dev/null || true
}

lab_cluster_ucanal_config() {
    local node=$1 pod
    cat <<EOF
# generated by netns-scripts/cluster-lib.sh for lab prefix '$LAB_PREFIX'
[node]
name = "$node"
uplink = "$LAB_UPLINK"
node_ip = "${LAB_NODE_IP[$node]}"
$( ((LAB_CLUSTER_AUTO)) || printf 'pod_cidr = "%s"' "${LAB_NODE_SUBNET[$node]}")
cluster_cidr = "$LAB_CLUSTER_CIDR"
service_cidr = "$LAB_SERVICE_CIDR"
vtep_mac = "${LAB_NODE_VTEP_MAC[$node]}"

[api]
socket = "$(lab_socket "$node")"

[dataplane]
workers = 1
offloads = $([[ $LAB_OFFLOADS == on ]] && echo true || echo false)
${LAB_UCANAL_DATAPLANE:-}

[cluster]
etcd_endpoints = ["$LAB_ETCD_URL"]
prefix = "$LAB_ETCD_PREFIX"
${LAB_CLUSTER_EXTRA:-}
EOF
    for pod in "${LAB_PODS[@]}"; do
        [[ ${LAB_POD_NODE[$pod]} == "$node" && -n ${LAB_POD_IP[$pod]} ]] || continue
        printf '\n[[pods]]\nname = "%s"\nnetns = "%s"\nip = "%s"\n' "$pod" "$(lab_ns "$pod")" "${LAB_POD_IP[$pod]}"
    done
}

# lab_cluster_kernel NODE: a kernel node as flanneld would leave it: its lease written in
# flannel's format, flannel.1, and flannel-lite.py keeping the peers in step with the leases.
lab_cluster_kernel() {
    local node=$1 ns lease key value
    ns=$(lab_ns "$node")
    lab_flannel_dev "$node"
    lab_kernel_pod "$node" "$(lab_cluster_pod "${node#node}")" "${LAB_POD_IP[$(lab_cluster_pod "${node#node}")]}"
    lab_flannel_masq_rules "$node" | ip netns exec "$ns" iptables-restore --noflush
    lease=$(lab_etcdctl lease grant 86400 | awk '{print $2}')
    key=$LAB_ETCD_PREFIX/subnets/${LAB_NODE_SUBNET[$node]/\//-}
    value=$(printf '{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":%s,"VtepMAC":"%s"}}' \
        "${LAB_NODE_IP[$node]}" "$LAB_VNI" "${LAB_NODE_VTEP_MAC[$node]}")
    lab_etcdctl put --lease="$lease" "$key" "$value" >/dev/null
    # shellcheck disable=SC2016
    setsid ip netns exec "$ns" sh -c 'echo $$ >"$1"; shift; exec "$@"' flannel-lab "$LAB_RUN_DIR/$node.flannel.pid" \
        "$LAB_PYTHON" -u "$LAB_LIB_DIR/flannel-lite.py" "$LAB_ETCD_URL" "$LAB_ETCD_PREFIX" "${LAB_NODE_IP[$node]}" \
        </dev/null >"$LAB_RUN_DIR/$node.flannel.log" 2>&1 &
}

# lab_cluster_node_up I MODE: create node I with its pod and start it (ucanal or kernel).
lab_cluster_node_up() {
    local i=$1 mode=$2 node pod n
    lab_cluster_define "$i" "$mode"
    node=$(lab_cluster_node "$i")
    pod=$(lab_cluster_pod "$i")
    _lab_state "cnode.$i=$mode"
    _lab_state "node.$node=$mode"
    lab_node_create "$node"
    lab_pod_create "$pod"
    lab_cluster_neigh "$(lab_ns "$node")" "$LAB_UPLINK"
    # Everyone else learns the newcomer permanently too.
    for n in "${LAB_NODES[@]}"; do
        [[ $n == "$node" ]] || lab_cluster_neigh "$(lab_ns "$n")" "$LAB_UPLINK" "${LAB_NODE_IP[$node]}"
    done
    lab_cluster_neigh "$(lab_ns etcd)" eth0 "${LAB_NODE_IP[$node]}"
    lab_cluster_neigh "$(lab_ns client)" eth0 "${LAB_NODE_IP[$node]}"
    if [[ $mode == kernel ]]; then
        lab_cluster_kernel "$node"
    else
        lab_cluster_ucanal_config "$node" >"$LAB_RUN_DIR/$node.toml.in"
        # lab_ucanal_start writes the config from lab_ucanal_config: give it ours.
        lab_ucanal_config() { cat "$LAB_RUN_DIR/$1.toml.in"; }
        lab_ucanal_start "$node"
        # --auto-cidr: the pod once the node leased its subnet (lab_cluster_up starts every
        # node first, so they race for leases as flanneld's do, then adds the pods).
        if ((LAB_CLUSTER_AUTO)); then
            [[ -n ${LAB_CLUSTER_STARTING:-} ]] && return 0
            lab_cluster_auto_pod "$i"
        fi
    fi
    lab_http_start "$pod"
}

# lab_cluster_auto_pod I: (--auto-cidr) waits for node I, reads the subnet it leased, adds
# its pod at the subnet's .5 over the API and writes both into the state and its config
# (still without pod_cidr: a restart leases again, and must get the same subnet back).
lab_cluster_auto_pod() {
    local i=$1 node pod subnet
    node=$(lab_cluster_node "$i")
    pod=$(lab_cluster_pod "$i")
    lab_ucanal_wait "$node" 60
    subnet=$("$UCANAL_BIN" --socket "$(lab_socket "$node")" show node | sed -n 's/^ *"pod_cidr": "\(.*\)",*$/\1/p' | head -n1)
    [[ $subnet == */* ]] || lab_die "$node: no pod_cidr in 'ucanal show node'"
    LAB_CLUSTER_LEASED[$i]=$subnet
    _lab_state "csubnet.$i=$subnet"
    LAB_NODE_SUBNET[$node]=$subnet
    LAB_POD_IP[$pod]=$(lab_cluster_ip_in "$subnet" 5)
    "$UCANAL_BIN" --socket "$(lab_socket "$node")" pod add --name "$pod" --netns "$(lab_ns "$pod")" \
        --ip "${LAB_POD_IP[$pod]}" >/dev/null || lab_die "$node: pod add $pod ${LAB_POD_IP[$pod]} failed"
    lab_cluster_ucanal_config "$node" >"$LAB_RUN_DIR/$node.toml.in"
    lab_log "$node leased $subnet; $pod is ${LAB_POD_IP[$pod]}"
}

# lab_cluster_restart NODE [TERM|KILL]: lab_ucanal_restart with the node's cluster config.
lab_cluster_restart() {
    lab_cluster_load || lab_die "no cluster lab with prefix '$LAB_PREFIX'"
    lab_ucanal_config() { cat "$LAB_RUN_DIR/$1.toml.in"; }
    lab_ucanal_restart "$@"
}

lab_cluster_up() {
    local n=0 etcd=0 kernel="" v i mode
    lab_init
    LAB_OFFLOADS=on
    LAB_METRICS=
    while (($#)); do
        case $1 in
        --nodes) n=${2:-}; shift ;;
        --nodes=*) n=${1#*=} ;;
        --etcd) etcd=1 ;;
        --kernel) kernel=${2:-}; shift ;;
        --kernel=*) kernel=${1#*=} ;;
        --auto-cidr) LAB_CLUSTER_AUTO=1 ;;
        --offloads) LAB_OFFLOADS=${2:-}; shift ;;
        --metrics) LAB_METRICS=$LAB_METRICS_DEFAULT ;;
        --metrics=*) LAB_METRICS=${1#*=} ;;
        --force) lab_exists && lab_down ;;
        *) lab_die "unknown option '$1' (up --nodes N --etcd [--kernel LIST] [--auto-cidr] [--offloads on|off] [--metrics[=ADDR]] [--force])" ;;
        esac
        shift
    done
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 120)) || lab_die "--nodes wants 1..120, not '$n'"
    ((etcd)) || lab_die "--nodes needs --etcd (a lab of N nodes is formed through etcd)"
    [[ -z $kernel ]] || ((!LAB_CLUSTER_AUTO)) || lab_die "--auto-cidr starts ucanal nodes only (kernel nodes write fixed leases)"
    _lab_require
    command -v etcd >/dev/null && command -v etcdctl >/dev/null || lab_die "etcd and etcdctl are needed (Debian: etcd-server etcd-client)"
    ! lab_exists || lab_die "a lab with prefix '$LAB_PREFIX' already exists; 'lab.sh down' first or use --force"
    lab_ucanal_ensure_bin
    LAB_NODES=()
    LAB_PODS=()
    LAB_SERVICES=()
    (
        trap 'rc=$?; if ((rc)); then lab_log "up failed (exit $rc); removing everything"; _lab_tmp_links_cleanup; lab_down; fi' EXIT
        mkdir -p "$LAB_RUN_DIR"
        : >"$LAB_RUN_DIR/.ucanal-lab"
        : >"$LAB_RUN_DIR/state"
        _lab_state "prefix=$LAB_PREFIX"
        _lab_state "cluster=1"
        _lab_state "offloads=$LAB_OFFLOADS"
        _lab_state "autocidr=$LAB_CLUSTER_AUTO"
        if [[ -n $LAB_METRICS ]]; then _lab_state "metrics=$LAB_METRICS"; fi
        lab_lan_create
        lab_client_create
        lab_netns_add etcd
        lab_lan_attach etcd eth0 "$LAB_ETCD_MAC" "$LAB_ETCD_IP/$LAB_LAN_PREFIXLEN"
        lab_etcd_start
        lab_etcdctl put "$LAB_ETCD_PREFIX/config" \
            "{\"Network\":\"$LAB_CLUSTER_CIDR\",\"SubnetLen\":24,\"SubnetMin\":\"10.244.0.0\",\"Backend\":{\"Type\":\"vxlan\",\"VNI\":$LAB_VNI,\"Port\":$LAB_VXLAN_PORT}}" >/dev/null
        for ((i = 1; i <= n; i++)); do
            mode=ucanal
            [[ ,$kernel, == *",$i,"* ]] && mode=kernel
            LAB_CLUSTER_STARTING=1 lab_cluster_node_up "$i" "$mode"
        done
        if ((LAB_CLUSTER_AUTO)); then
            for ((i = 1; i <= n; i++)); do
                lab_cluster_auto_pod "$i"
                lab_http_start "$(lab_cluster_pod "$i")"
            done
        fi
        for node in "${LAB_NODES[@]}"; do
            [[ ${LAB_NODE_MODE[$node]} == ucanal ]] && lab_ucanal_wait "$node" 60
        done
        for pod in "${LAB_PODS[@]}"; do lab_http_wait "$pod"; done
        _lab_state "up=1"
        _LAB_TMP_LINKS=()
        lab_log "up: $n nodes through etcd at $LAB_ETCD_URL"
    )
}

lab_cluster_add_node() {
    local mode=ucanal i node
    [[ ${1:-} == --kernel ]] && mode=kernel
    lab_cluster_load || lab_die "no cluster lab with prefix '$LAB_PREFIX'"
    ((!LAB_CLUSTER_AUTO)) || [[ $mode == ucanal ]] || lab_die "--auto-cidr lab: ucanal nodes only"
    i=$(sed -n 's/^cnode\.\([0-9]*\)=.*/\1/p' "$LAB_RUN_DIR/state" | sort -n | tail -n1)
    i=$((i + 1))
    lab_cluster_node_up "$i" "$mode"
    node=$(lab_cluster_node "$i")
    if [[ $mode == ucanal ]]; then lab_ucanal_wait "$node" 60; fi
    lab_http_wait "$(lab_cluster_pod "$i")"
    printf '%s\n' "$node"
}

lab_cluster_remove_node() {
    local node=$1 i pid
    lab_cluster_load || lab_die "no cluster lab with prefix '$LAB_PREFIX'"
    [[ -n ${LAB_NODE_IP[$node]:-} ]] || lab_die "no node $node (nodes: ${LAB_NODES[*]})"
    i=$((10#${node#node}))
    lab_ucanal_stop "$node"
    if pid=$(_lab_pidfile "$LAB_RUN_DIR/$node.flannel.pid"); then _lab_kill_wait 3 "$pid"; fi
    lab_etcdctl del "$LAB_ETCD_PREFIX/subnets/${LAB_NODE_SUBNET[$node]/\//-}" >/dev/null
    ip netns pids "$(lab_ns "$(lab_cluster_pod "$i")")" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$(lab_ns "$(lab_cluster_pod "$i")")" 2>/dev/null || true
    ip netns del "$(lab_ns "$node")" 2>/dev/null || true
    rm -f "$(lab_socket "$node")"
    _lab_state "cnode.$i=gone"
    lab_log "removed $node and its lease"
}

# lab_cluster_pingall [TIMEOUT]: every pod to every other, one ping each, in parallel per
# source pod; prints the failures and "ok/total".
lab_cluster_pingall() {
    local w=${1:-2} a b out
    lab_cluster_load || lab_die "no cluster lab with prefix '$LAB_PREFIX'"
    out=$(mktemp -d)
    for a in "${LAB_PODS[@]}"; do
        (
            for b in "${LAB_PODS[@]}"; do
                [[ $a != "$b" ]] || continue
                if ip netns exec "$(lab_ns "$a")" ping -c 1 -W "$w" "${LAB_POD_IP[$b]}" >/dev/null 2>&1; then
                    echo ok
                else
                    echo "FAIL $a -> $b (${LAB_POD_IP[$b]})"
                fi
            done >"$out/$a"
        ) &
    done
    wait
    cat "$out"/* | grep FAIL || true
    printf '%s/%s\n' "$(cat "$out"/* | grep -c '^ok')" "$(cat "$out"/* | wc -l)"
    rm -rf "$out"
}
