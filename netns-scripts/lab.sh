#!/usr/bin/env bash
# lab.sh - the ucanal reference lab (docs/lab.md: two nodes, a client, two ghost pods)
# in network namespaces. See lib.sh for the reusable functions.
#
#   lab.sh up [--node1 ucanal|kernel] [--node2 ucanal|kernel] [--offloads on|off] [--metrics[=ADDR]] [--force]
#   lab.sh up --topology FILE [--offloads on|off] [--metrics[=ADDR]] [--force]   # a lab from a topology file (docs/lab.md)
#   lab.sh graph FILE [--svg OUT]  # FILE's topology as Graphviz dot (and drawn as SVG)
#   lab.sh down
#   lab.sh status            # exit 0 up and healthy, 1 no lab, 2 degraded
#   lab.sh socket NODE       # the ucanal API socket of NODE
#   lab.sh exec NAME CMD...  # run CMD in ${LAB_PREFIX}NAME (lan, client, centos7-1, ghost-ep1, ...);
#                            # `ucanal` is found there without installing it
#   lab.sh rules NODE        # print the iptables-restore input a kernel NODE gets
#   lab.sh endpoints SERVICE IP:PORT[,...]  # set a service's endpoints on every node
#   lab.sh restart NODE [TERM|KILL]  # signal NODE's ucanal, start it again; prints the ms until it answers
#   lab.sh up --nodes N --etcd [--kernel LIST] [--auto-cidr] [--metrics[=ADDR]]  # a cluster formed through
#       etcd (cluster-lib.sh: add-node [--kernel], remove-node NODE, etcd-stop, etcd-start, etcdctl ARGS, pingall)
#   lab.sh help
#   --metrics: every ucanal node serves Prometheus on ADDR (127.0.0.1:9300) in its own namespace.
#
# Environment: LAB_PREFIX (default uc-), UCANAL_BIN (default <repo>/target/release/ucanal,
# built with cargo if missing and a node runs ucanal), LAB_RUN_DIR (default
# /run/ucanal-lab/$LAB_PREFIX), LAB_SOCKET_DIR (default /run/ucanal), LAB_UCANAL_TIMEOUT (15),
# LAB_KUBE_RANDOM_FULLY (0), LAB_WIRE_CSUM (partial|full, default partial), LAB_PYTHON, UCANAL_RUN_ARGS.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=cluster-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/cluster-lib.sh"

# usage [0]: the command list above (up to its first empty comment line); on stdout and
# exit 0 for `lab.sh help`, else on stderr and exit 2.
usage() {
    local text
    text=$(sed -n '5,/^#$/{/^#$/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}")
    if [[ ${1:-2} == 0 ]]; then
        printf '%s\n' "$text"
        exit 0
    fi
    printf '%s\n' "$text" >&2
    exit 2
}

cmd=${1:-}
(($#)) && shift
case $cmd in
up)
    # --force: the lab there now goes first, as it was made (its own nodes and sockets).
    lab_init
    if [[ " $* " == *" --force "* ]] && lab_exists; then (lab_cluster_load || lab_topology_restore; lab_down); fi
    # Every lab comes from a topology file: the one named, topologies/article.yaml, or the
    # N-node file --nodes writes (topology-lib.sh).
    if [[ " $* " == *" --topology"* ]]; then
        lab_topology_up "$@"
    elif [[ " $* " == *" --nodes"* ]]; then
        lab_cluster_up "$@"
    else
        lab_up "$@"
    fi
    ;;
graph) (($# >= 1)) || usage; lab_init; lab_topology_graph "$@" ;;
down)
    (($# == 0)) || usage
    lab_init
    lab_cluster_load || lab_topology_restore
    lab_down
    ;;
add-node) lab_init; lab_cluster_add_node "$@" ;;
remove-node) (($# == 1)) || usage; lab_init; lab_cluster_remove_node "$1" ;;
etcd-stop) lab_init; lab_etcd_stop ;;
etcd-start) lab_init; lab_etcd_start ;;
etcd-cut) lab_init; lab_etcd_cut ;;
etcd-heal) lab_init; lab_etcd_heal ;;
etcdctl) lab_init; lab_etcdctl "$@" ;;
pingall) lab_init; lab_cluster_pingall "$@" ;;
status) (($# == 0)) || usage; lab_init; lab_cluster_load || lab_topology_restore; lab_status ;;
socket) (($# == 1)) || usage; lab_init; lab_socket "$1" ;;
restart)
    (($# >= 1)) || usage
    lab_init
    old=$(lab_ucanal_pid "$1" || true)
    if lab_cluster_load; then
        ms=$(lab_cluster_restart "$@")
    else
        lab_topology_restore
        ms=$(lab_ucanal_restart "$@")
    fi
    printf '%s ms from SIG%s to the new ucanal of %s answering (pid %s -> %s)\n' "$ms" "${2:-TERM}" "$1" \
        "${old:-?}" "$(lab_ucanal_pid "$1" || echo '?')"
    ;;
exec)
    (($# >= 2)) || usage
    lab_init
    lab_cluster_load || lab_topology_restore
    # `lab.sh exec centos7-1 ucanal show routes` works before ucanal is installed.
    PATH=$(dirname "$UCANAL_BIN"):$PATH lab_nsexec "$@"
    ;;
help | -h | --help) usage 0 ;;
endpoints) (($# == 2)) || usage; lab_init; lab_topology_restore; lab_set_endpoints "$1" "$2" ;;
rules)
    (($# == 1)) || usage
    lab_init
    lab_cluster_load || lab_topology_restore
    [[ -n ${LAB_NODE_SUBNET[$1]:-} ]] || lab_die "unknown node '$1' (nodes: ${LAB_NODES[*]})"
    lab_kube_proxy_rules
    lab_flannel_masq_rules "$1"
    ;;
*) usage ;;
esac
