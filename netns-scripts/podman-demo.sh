#!/usr/bin/env bash
# podman-demo.sh - containers from a real runtime on the reference lab, through ucanal-cni
# (docs/cni.md), with a podman that keeps everything in one temporary directory.
#
# Brings up the reference lab (namespaces ${LAB_PREFIX:-pd-}*, ucanal on both nodes),
# builds a busybox image from Debian's busybox-static (nothing is pulled), gives podman a
# CNI network per node whose only plugin is ucanal-cni, then: a web container on each
# node (pods of those nodes: `ucanal show pods`), HTTP across the VXLAN between them, the
# lab client through a NodePort to one of them, `podman rm` (the pods leave ucanal). On
# exit, also on failure or Ctrl-C: the containers, the image, podman's directory, what
# podman writes outside it whatever its flags, and the lab are removed. Nothing is written
# to /etc/cni.
#
# Every podman command is printed as run, so the private command line can be copied:
#   CONTAINERS_CONF=DIR/containers.conf podman --root DIR/root --runroot DIR/runroot
#       --tmpdir DIR/tmp --network-config-dir DIR/net --storage-driver vfs ...
# and containers.conf holds network_backend = "cni", cni_plugin_dirs, network_config_dir
# (see docs/cni.md). Without CAP_SYS_RESOURCE (a container, a restricted root) runc cannot
# raise the containers' limits to podman's defaults ("error setting rlimit type 7"), so
# `podman run` gets `--ulimit nofile=N:N --ulimit nproc=N:N` below the current hard limits.
#
# Needs: podman, runc, containernetworking-plugins (host-local), busybox-static, tar.
# Environment: LAB_PREFIX (default pd-), UCANAL_BIN (default target/release/ucanal;
# ucanal-cni is taken from the same directory), PODMAN_DEMO_KEEP=1 leaves everything up.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_PREFIX=${LAB_PREFIX:-pd-}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
lab_init

image=localhost/ucanal-busybox
# What podman writes outside its private directories whatever its flags (libcni's result
# cache, containers/image's blob-info cache, runc's state root, the lock next to the
# default CNI config dir); removed at the end when it was not there before.
outside=(/var/lib/cni /var/lib/containers /run/runc /run/libpod /run/containers /etc/cni/net.d/cni.lock)
created_outside=()
for p in "${outside[@]}"; do [[ -e $p ]] || created_outside+=("$p"); done

say() { printf '%s\n' "$*"; }
title() { printf '\n==== %s\n' "$*"; }

for t in podman runc tar; do command -v "$t" >/dev/null || lab_die "$t is not installed (Debian: podman runc tar)"; done
[[ -x /bin/busybox ]] || lab_die "/bin/busybox is missing (Debian: busybox-static)"
[[ -x /usr/lib/cni/host-local ]] || lab_die "/usr/lib/cni/host-local is missing (Debian: containernetworking-plugins)"
((EUID == 0)) || lab_die "must run as root"
lab_ucanal_ensure_bin
cni_bin=$(dirname "$UCANAL_BIN")/ucanal-cni
[[ -x $cni_bin ]] || lab_die "$cni_bin is missing (cargo build --release builds it next to ucanal)"

dir=$(mktemp -d /tmp/ucanal-podman.XXXXXX)
finish() {
    local rc=$?
    if [[ ${PODMAN_DEMO_KEEP:-0} == 1 && $rc == 0 ]]; then
        say "podman-demo: left up (PODMAN_DEMO_KEEP=1): podman in $dir, lab $LAB_PREFIX"
        return
    fi
    trap '' INT TERM
    if [[ -f $dir/containers.conf ]]; then
        pm rm -a -f -t 0 >/dev/null 2>&1 || true
        pm rmi -a -f >/dev/null 2>&1 || true
    fi
    local p
    for p in "${created_outside[@]}"; do rm -rf -- "$p"; done
    rm -rf -- "$dir"
    # Only the lab this script made (lab_up removes a half-made one itself).
    if ((made)); then lab_down >/dev/null 2>&1 || true; fi
    if ((rc == 0)); then say "podman-demo: done; containers, image, podman's directory and the lab removed"; fi
}
made=0
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# pm ARGS...: the private podman (everything it keeps is under $dir).
pm() {
    CONTAINERS_CONF=$dir/containers.conf podman --root "$dir/root" --runroot "$dir/runroot" --tmpdir "$dir/tmp" \
        --network-config-dir "$dir/net" --storage-driver vfs "$@"
}
# show ARGS...: print the podman command line (on stderr: callers keep stdout), then run it.
show() {
    printf '$ CONTAINERS_CONF=%s podman --root %s --runroot %s --tmpdir %s --network-config-dir %s --storage-driver vfs %s\n' \
        "$dir/containers.conf" "$dir/root" "$dir/runroot" "$dir/tmp" "$dir/net" "$*" >&2
    pm "$@"
}

title "the lab (namespaces ${LAB_PREFIX}*): two ucanal nodes, the client, ghost-ep1/ghost-ep2"
lab_up >/dev/null
made=1
lab_status

title "a private podman in $dir"
mkdir -p "$dir"/{bin,net,root,runroot,tmp,rootfs/bin,rootfs/www,rootfs/tmp,rootfs/etc}
install -m 0755 "$cni_bin" "$dir/bin/ucanal-cni"
for i in 1 2; do
    node=centos7-$i
    printf '{"cniVersion":"1.0.0","name":"ucanal-n%s","plugins":[{"type":"ucanal-cni","socket":"%s"}]}\n' \
        "$i" "$(lab_socket "$node")" >"$dir/net/ucanal-n$i.conflist"
done
cat >"$dir/containers.conf" <<EOF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$dir/bin", "/usr/lib/cni"]
network_config_dir = "$dir/net"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$dir/tmp"
EOF
say "containers.conf:"
sed 's/^/    /' "$dir/containers.conf"
say "networks (one per node, ucanal-cni only):"
for f in "$dir"/net/*.conflist; do printf '    %s: %s\n' "$(basename "$f")" "$(cat "$f")"; done

# runc sets podman's default limits (nofile 1048576) unless it may not: without
# CAP_SYS_RESOURCE the container would fail to start, so ask for the hard limits we have.
ulimits=()
cap_eff=$(sed -n 's/^CapEff:\t*//p' /proc/self/status)
if (((16#$cap_eff >> 24 & 1) == 0)); then
    nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
    [[ $nofile == unlimited || $nofile -gt 1024 ]] && nofile=1024
    [[ $nproc == unlimited || $nproc -gt 1024 ]] && nproc=1024
    ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
    say "no CAP_SYS_RESOURCE here: podman run gets ${ulimits[*]}"
fi

title "the image: busybox-static in a rootfs, imported (nothing pulled)"
cp /bin/busybox "$dir/rootfs/bin/busybox"
for a in sh ping wget httpd sleep cat echo ifconfig ip hostname timeout sed; do ln -s busybox "$dir/rootfs/bin/$a"; done
tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
show import "$dir/rootfs.tar" "$image" >/dev/null

title "a web container on each node (CNI_ARGS names them default/<name> in ucanal)"
web() {
    local name=$1 net=$2
    CNI_ARGS=K8S_POD_NAMESPACE=default show run -d --name "$name" --network "$net" "${ulimits[@]}" "$image" \
        sh -c "echo $name > /www/index.html; exec httpd -f -p 2368 -h /www" >/dev/null
    pm inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$name"
}
ip1=$(web web1 ucanal-n1)
ip2=$(web web2 ucanal-n2)
say "web1 $ip1 (centos7-1), web2 $ip2 (centos7-2)"
say "--- ucanal --node centos7-1 show pods"
"$UCANAL_BIN" --socket "$(lab_socket centos7-1)" show pods | sed 's/^/    /'
say "--- ucanal --node centos7-2 show pods"
"$UCANAL_BIN" --socket "$(lab_socket centos7-2)" show pods | sed 's/^/    /'

title "across the VXLAN: web1 -> web2"
page=""
for _ in $(seq 20); do
    page=$(pm exec web1 timeout 5 wget -qO- "http://$ip2:2368/" 2>/dev/null) && break
    sleep 0.25
done
say "$ page=\$(podman exec web1 wget -qO- http://$ip2:2368/): $page"
[[ $page == web2 ]] || lab_die "web1 could not fetch web2's page (got '$page')"

title "the client through a NodePort of centos7-1 to web2 (its address the endpoint)"
"$UCANAL_BIN" --socket "$(lab_socket centos7-1)" service set --name default/web --cluster-ip 10.250.0.50 --port 2368 \
    --node-port 31080 --endpoint "$ip2:2368"
page=$(lab_nsexec client curl -s -m 5 http://172.16.240.131:31080/)
say "client: curl -s http://172.16.240.131:31080/ -> $page"
[[ $page == web2 ]] || lab_die "the NodePort did not reach web2 (got '$page')"

title "podman rm: the pods leave ucanal, their addresses are free again"
show rm -f -t 0 web1 web2 >/dev/null
left=$("$UCANAL_BIN" --socket "$(lab_socket centos7-1)" show pods --json | grep -c '"default/web1"' || true)
((left == 0)) || lab_die "web1 is still a pod of centos7-1"
say "ucanal show pods: web1 and web2 are gone"
