# shellcheck shell=bash
# topology-lib.sh - labs described by topology files (topologies/*.yaml, docs/lab.md);
# sourced by lib.sh.
#
#   lab.sh up --topology FILE [--force] ...   the lab FILE describes (etcd: true -> through etcd)
#   lab.sh graph FILE [--svg OUT]             FILE as Graphviz dot on stdout; --svg also draws it
#
# `ucanal topology` reads and checks the file (a field that does not validate is named with
# its line and column, and nothing is created) and prints the plan: lib.sh's own arrays
# (LAB_NODES, LAB_NODE_*, LAB_PODS, LAB_POD_*, LAB_SERVICES, ...), which lib.sh and
# cluster-lib.sh build the lab from. The old flags go through the same files: `up` is
# topologies/article.yaml (--node1/--node2 set a node's kind on top of it), `up --nodes N
# --etcd` writes the N-node file first (lab_cluster_topology) and starts that.
#
# LAB_TOOL_BIN: the ucanal that reads topology files (default <repo>/target/release/ucanal,
# built with cargo if missing; UCANAL_BIN may be another build, e.g. an older one to compare).

: "${LAB_TOOL_BIN:=$LAB_REPO/target/release/ucanal}"
LAB_TOPOLOGY_DEFAULT=$LAB_LIB_DIR/topologies/article.yaml
LAB_TOPOLOGY_FILE=

# What a plan sets, besides LAB_NODES/LAB_PODS/LAB_SERVICES (declared so that lookups of
# a node that has no entry read as empty under `set -u`).
_LAB_PLAN_ASSOC=(LAB_NODE_IP LAB_NODE_MAC LAB_NODE_SUBNET LAB_NODE_VTEP_MAC LAB_NODE_MODE LAB_NODE_CONF_NODE
    LAB_NODE_CONF_DATAPLANE LAB_NODE_CONF_API LAB_NODE_CONF_CLUSTER LAB_NODE_CONF_TABLES LAB_POD_IP LAB_POD_NODE
    LAB_POD_NAMESPACE LAB_POD_LABELS LAB_POD_PORTS)
_LAB_PLAN_LISTS=(LAB_NODES LAB_PODS LAB_SERVICES LAB_MANIFESTS LAB_LANS LAB_LAN_MEMBERS)
for _lab_v in "${_LAB_PLAN_ASSOC[@]}"; do declare -gA "$_lab_v=()"; done
for _lab_v in "${_LAB_PLAN_LISTS[@]}"; do declare -ga "$_lab_v=()"; done
unset _lab_v
LAB_TOPOLOGY_ETCD=0
_LAB_NL=$'\n'   # a newline, for the config heredocs

# lab_topology_tool ARGS...: `ucanal topology ARGS` (building ucanal when the default is missing).
lab_topology_tool() {
    if [[ ! -x $LAB_TOOL_BIN ]]; then
        [[ $LAB_TOOL_BIN == "$_LAB_DEFAULT_UCANAL_BIN" ]] || lab_die "LAB_TOOL_BIN=$LAB_TOOL_BIN is not executable"
        UCANAL_BIN=$LAB_TOOL_BIN lab_ucanal_ensure_bin
    fi
    "$LAB_TOOL_BIN" topology "$@"
}

# lab_topology_load FILE: check FILE and set the arrays from its plan.
lab_topology_load() {
    local plan
    [[ -f $1 ]] || lab_die "no topology file $1"
    plan=$(lab_topology_tool plan "$1") || lab_die "topology $1 does not validate (nothing was created)"
    eval "$plan"
    LAB_TOPOLOGY_FILE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
}

# lab_topology_save / lab_topology_restore: the plan the running lab was made from, for
# the commands that come after `up` (down, exec, restart, status, ...).
lab_topology_save() {
    declare -p "${_LAB_PLAN_ASSOC[@]}" "${_LAB_PLAN_LISTS[@]}" LAB_TOPOLOGY_ETCD LAB_TOPOLOGY_FILE LAB_CLUSTER_AUTO \
        | sed 's/^declare -\([aA]\)/declare -g\1/' >"$LAB_RUN_DIR/topology.sh"
}
lab_topology_restore() {
    if [[ -f $LAB_RUN_DIR/topology.sh ]]; then
        # shellcheck disable=SC1091
        . "$LAB_RUN_DIR/topology.sh"
    fi
}

# lab_topology_file ARGS...: the FILE of `--topology FILE` in ARGS, if any.
lab_topology_file() {
    while (($#)); do
        case $1 in
        --topology) printf '%s\n' "${2:-}"; return 0 ;;
        --topology=*) printf '%s\n' "${1#*=}"; return 0 ;;
        esac
        shift
    done
    return 1
}

# lab_topology_up --topology FILE ARGS...: the lab FILE describes.
lab_topology_up() {
    local file
    lab_init
    file=$(lab_topology_file "$@") || lab_die "up --topology FILE"
    lab_topology_load "$file"
    if ((LAB_TOPOLOGY_ETCD)); then lab_cluster_up "$@"; else lab_up "$@"; fi
}

# lab_pod_policy_conf POD: the pod's namespace and labels (from the topology), as its
# [[pods]] entry's keys, for network policy.
lab_pod_policy_conf() {
    local ns=${LAB_POD_NAMESPACE[$1]:-} labels=${LAB_POD_LABELS[$1]:-} kv sep=
    [[ -z $ns ]] || printf 'namespace = "%s"\n' "$ns"
    [[ -n $labels ]] || return 0
    local -a kvs
    IFS=, read -r -a kvs <<<"$labels"
    printf 'labels = {'
    for kv in "${kvs[@]}"; do
        printf '%s "%s" = "%s"' "$sep" "${kv%%=*}" "${kv#*=}"
        sep=,
    done
    printf ' }\n'
}

# lab_topology_graph FILE [--svg OUT]: the topology as Graphviz dot (and drawn as SVG).
lab_topology_graph() {
    local file=${1:-} svg=
    [[ -n $file ]] || lab_die "graph FILE [--svg OUT]"
    [[ ${2:-} != --svg ]] || svg=${3:-}
    [[ ${2:-} != --svg || -n $svg ]] || lab_die "graph FILE --svg OUT"
    local g
    g=$(lab_topology_tool dot "$file") || exit 2
    printf '%s\n' "$g"
    if [[ -n $svg ]]; then
        command -v dot >/dev/null || lab_die "--svg needs Graphviz's dot (Debian: graphviz)"
        printf '%s\n' "$g" | dot -Tsvg -o "$svg"
    fi
}

# lab_extra_lans: the LANs after the first: a bridge namespace ${P}lan-NAME each, and every
# member's interface on it with its address (the LAN's network + the node's last byte).
lab_extra_lans() {
    local entry lan member iface addr ns port mac ip
    for lan in "${LAB_LANS[@]}"; do
        lab_netns_add "lan-$lan"
        ip -n "$(lab_ns "lan-$lan")" link add br0 type bridge stp_state 0 forward_delay 0
        ip -n "$(lab_ns "lan-$lan")" link set br0 up
    done
    for entry in "${LAB_LAN_MEMBERS[@]}"; do
        read -r lan member iface addr <<<"$entry"
        ns=$(lab_ns "$member")
        port=$(_lab_lan_port "$member")
        lab_veth "$ns" "$iface" "$(lab_ns "lan-$lan")" "$port"
        ip -n "$(lab_ns "lan-$lan")" link set "$port" master br0 up
        # A stable MAC: 02 (locally administered), then the member's address.
        ip=${addr%/*}
        # shellcheck disable=SC2086
        mac=$(printf '02:00:%02x:%02x:%02x:%02x' ${ip//./ })
        ip -n "$ns" link set "$iface" address "$mac"
        ip -n "$ns" addr add "$addr" dev "$iface"
        ip -n "$ns" link set "$iface" up
    done
}

# lab_apply_manifests NODE: (a lab through etcd) `ucanal apply` of the topology's manifests
# on NODE: etcd takes them to every node.
lab_apply_manifests() {
    local m
    for m in "${LAB_MANIFESTS[@]}"; do
        "$UCANAL_BIN" --socket "$(lab_socket "$1")" apply -f "$m" >/dev/null || lab_die "apply -f $m on $1 failed"
        lab_log "applied $m through etcd"
    done
}
