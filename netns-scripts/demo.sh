#!/usr/bin/env bash
# demo.sh - the reference lab's two walks (pod to pod, client through the NodePort), produced
# by ucanal itself.
#
# Builds ucanal, brings up the lab (two ucanal nodes, a client, ghost-ep1 and ghost-ep2),
# and for each step prints what a kernel node of the same lab prints (the reference listings
# in docs/lab.md) next to what ucanal shows now:
# the pod's view, the node's route/neighbour/FDB tables, the service rules with their
# counters, a synthetic trace of the NodePort request, a live trace of the same request
# on both nodes (reply included), the conntrack listing, a VXLAN capture read back by
# tcpdump, and the Prometheus counters. Then it removes the lab. Exit status is non-zero
# if any step does not show what the reference shows.
#
# Environment: LAB_PREFIX (default ud-), UCANAL_BIN (default target/release/ucanal,
# built if missing), DEMO_KEEP=1 to leave the lab up for exploring (then: lab.sh down).

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_PREFIX=${LAB_PREFIX:-ud-}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
lab_init

repo=$(cd "$here/.." && pwd)
bin=${UCANAL_BIN:-$repo/target/release/ucanal}
tmp=$(mktemp -d)
fail=0

finish() {
    local rc=$?
    rm -rf "$tmp"
    if [[ ${DEMO_KEEP:-0} == 1 && $rc == 0 ]]; then
        echo "demo: lab $LAB_PREFIX left up (DEMO_KEEP=1); remove it with: LAB_PREFIX=$LAB_PREFIX $here/lab.sh down"
    else
        lab_down >/dev/null 2>&1 || true
    fi
}
trap finish EXIT

title() {
    if [[ -t 1 ]]; then printf '\n\033[1m==== %s\033[0m\n' "$*"; else printf '\n==== %s\n' "$*"; fi
}
say() { printf '%s\n' "$*"; }
indent() { sed 's/^/    /'; }
# reference ID : a kernel node's listing, from docs/lab.md (the block after <!-- reference: ID -->)
reference() {
    local block
    block=$(awk -v id="$1" '
        $0 == "<!-- reference: " id " -->" { found = 1; next }
        found && /^```text$/ { inside = 1; next }
        inside && /^```$/ { exit }
        inside { print }' "$repo/docs/lab.md")
    if [[ -z $block ]]; then
        say "    MISSING: reference listing '$1' in docs/lab.md"
        fail=1
        return 0
    fi
    printf -- '--- kernel reference (docs/lab.md, %s):\n' "$1"
    indent <<<"$block"
}
# ucanal_out LABEL CMD... : what the lab shows now
now() {
    local label=$1 shown
    shift
    shown="$*"
    shown=${shown/#u[12] /ucanal }
    shown=${shown/#in_ns /ip netns exec $LAB_PREFIX}
    printf -- '--- now (%s): %s\n' "$label" "$shown"
    "$@" 2>&1 | indent
}
# expect TEXT PATTERN WHAT : the step shows what the kernel reference shows, or the demo fails
expect() {
    if grep -qE -- "$2" <<<"$1"; then
        say "    ok: $3"
    else
        say "    MISSING: $3 (want /$2/)"
        fail=1
    fi
}
u1() { "$bin" --socket "$(lab_socket centos7-1)" "$@"; }
u2() { "$bin" --socket "$(lab_socket centos7-2)" "$@"; }
in_ns() { lab_nsexec "$@"; }

title "build"
if [[ ! -x $bin ]]; then
    (cd "$repo" && cargo build --release)
fi
say "ucanal: $bin"

title "lab up: the reference lab's two nodes, a client and the ghost pods (namespaces ${LAB_PREFIX}*)"
export UCANAL_RUN_ARGS="--metrics 127.0.0.1:9300 ${UCANAL_RUN_ARGS:-}"
UCANAL_BIN=$bin lab_up --node1 ucanal --node2 ucanal >/dev/null
lab_status

title "1. pod to pod across nodes: ghost-ep1 (10.244.1.5, centos7-1) -> ghost-ep2 (10.244.0.74, centos7-2)"
reference pod-view
in_ns ghost-ep1 ping -c1 -W1 10.244.0.74 >/dev/null || true
out=$(in_ns ghost-ep1 sh -c 'ip -4 addr show eth0; ip route; ip neigh')
printf -- '--- now (pod ghost-ep1): ip -4 addr show eth0; ip route; ip neigh\n%s\n' "$(indent <<<"$out")"
expect "$out" "inet 10.244.1.5/32" "eth0 holds the pod IP as /32"
expect "$out" "default via 169.254.1.1 dev eth0" "default route via 169.254.1.1"
expect "$out" "169.254.1.1 dev eth0 scope link" "169.254.1.1 is on-link"
expect "$out" "169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee" "proxy-ARP answered with the host-side MAC (Calico's ee:ee:ee:ee:ee:ee)"

reference node-routes
out=$(u1 show routes)
now "centos7-1" u1 show routes
expect "$out" "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink" "remote pod subnet via the peer's VTEP address"
expect "$out" "10.244.1.5 dev cali[0-9a-f]{11} scope link" "/32 host route to the local pod"

reference node-vtep
out=$(u1 show neigh; u1 show fdb)
now "centos7-1" u1 show neigh
now "centos7-1" u1 show fdb
expect "$out" "10.244.0.0 dev flannel.1 lladdr 32:a9:79:6d:0b:b1 PERMANENT" "neighbour of the remote VTEP"
expect "$out" "32:a9:79:6d:0b:b1 dev flannel.1 dst 172.16.240.132 self permanent" "FDB entry to the remote node"

out=$(in_ns ghost-ep1 ping -c3 -i0.2 -W1 10.244.0.74 2>&1)
now "ghost-ep1" in_ns ghost-ep1 ping -c3 -i0.2 -W1 10.244.0.74
expect "$out" " 0% packet loss" "ping ghost-ep1 -> ghost-ep2"
out=$(in_ns ghost-ep1 curl -s -m5 http://10.244.0.74:2368/)
now "ghost-ep1" in_ns ghost-ep1 curl -s -m5 http://10.244.0.74:2368/
expect "$out" "ghost-ep2 10.244.0.74" "HTTP ghost-ep1 -> ghost-ep2:2368"

say "--- now (the wire): a VXLAN capture on centos7-1, read back with tcpdump -r"
("$bin" --socket "$(lab_socket centos7-1)" capture --port vxlan -w "$tmp/vxlan.pcap" --count 4 --filter "tcp port 2368" --timeout 10 >/dev/null 2>&1 &)
sleep 0.5
in_ns ghost-ep1 curl -s -m5 http://10.244.0.74:2368/ >/dev/null
for _ in $(seq 40); do [[ -s $tmp/vxlan.pcap && $(stat -c %s "$tmp/vxlan.pcap") -gt 200 ]] && break; sleep 0.1; done
sleep 0.3
out=$(tcpdump -nr "$tmp/vxlan.pcap" 2>/dev/null | head -8)
indent <<<"$out"
expect "$out" "172.16.240.131.[0-9]+ > 172.16.240.132.8472" "outer: node to node on UDP 8472"
expect "$out" "instance 1" "VNI 1"
expect "$out" "10.244.1.5.[0-9]+ > 10.244.0.74.2368: Flags \[S\]" "inner: the pod's TCP flow"

title "2. the client through the NodePort: 172.16.240.1 -> 172.16.240.131:31266 -> ghost-ep2"
reference node-services
for _ in $(seq 20); do in_ns client curl -s -m5 http://172.16.240.131:31266/; done >"$tmp/pages"
out=$(sort "$tmp/pages" | uniq -c)
# shellcheck disable=SC2016 # the command as shown, not run again
printf -- '--- now (client): %s\n' 'for i in $(seq 20); do curl -s http://172.16.240.131:31266/; done | sort | uniq -c'
indent <<<"$out"
expect "$out" "ghost-ep1" "NodePort reaches ghost-ep1"
expect "$out" "ghost-ep2" "NodePort reaches ghost-ep2"
out=$(u1 show services)
now "centos7-1" u1 show services
expect "$out" "default/ghost: cluster IP \*/ tcp dpt:2368" "the ClusterIP rule"
expect "$out" "tcp dpt:31266" "the NodePort rule"
expect "$out" "DNAT to:10.244.0.74:2368" "the endpoint DNAT rule"

say "--- now: the walk of one request, from the live tables (ucanal trace, nothing sent)"
sport=""
for p in $(seq 40000 40100); do
    if u1 trace --json --in host tcp "172.16.240.1:$p" '->' 172.16.240.131:31266 | grep -q '"endpoint": "10.244.0.74:2368"'; then
        sport=$p
        break
    fi
done
[[ -n $sport ]] || { say "    MISSING: no source port hashes to the remote endpoint"; fail=1; sport=40000; }
out=$(u1 trace --in host tcp "172.16.240.1:$sport" '->' 172.16.240.131:31266)
indent <<<"$out"
expect "$out" "KUBE-NODEPORTS tcp dpt:31266" "1. the NodePort service entry"
expect "$out" "endpoint +10.244.0.74:2368" "2. the endpoint chosen"
expect "$out" "dnat +dst 172.16.240.131:31266 -> 10.244.0.74:2368" "3. DNAT to it"
expect "$out" "masquerade +src 172.16.240.1:$sport -> 10.244.1.0:" "4. masquerade to flannel.1's address 10.244.1.0"
expect "$out" "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink" "5. the route 10.244.0.0/24"
expect "$out" "10.244.0.0 dev flannel.1 lladdr 32:a9:79:6d:0b:b1" "6. the neighbour 10.244.0.0 -> 32:a9:79:6d:0b:b1"
expect "$out" "32:a9:79:6d:0b:b1 dev flannel.1 dst 172.16.240.132" "7. the FDB entry -> 172.16.240.132"
expect "$out" "vni 1" "8. VNI 1"

say "--- now: the same request for real, traced live on centos7-1 and centos7-2 (reply included)"
"$bin" --socket "$(lab_socket centos7-1)" trace --live --node "$(lab_socket centos7-2)" \
    --filter "tcp port $sport or (tcp port 2368 and host 10.244.1.0)" --count 2 --timeout 10 >"$tmp/live" 2>&1 &
live=$!
sleep 0.7
in_ns client curl -s -m5 --local-port "$sport" http://172.16.240.131:31266/ >/dev/null || true
wait "$live" || true
out=$(cat "$tmp/live")
indent <"$tmp/live"
expect "$out" -- "--- centos7-1" "seen on centos7-1"
expect "$out" -- "--- centos7-2" "seen on centos7-2"
expect "$out" "vxlan-rx +vni 1 from 172.16.240.131" "centos7-2 decapsulates from centos7-1"
expect "$out" "reverse-nat now 172.16.240.131:31266 -> 172.16.240.1:$sport" "the reply, reverse-NATed on centos7-1"

reference node-conntrack
out=$(u1 show conntrack 2>&1 | grep "dport=$sport" || true)
printf -- '--- now (centos7-1): ucanal show conntrack | grep dport=%s\n%s\n' "$sport" "$(indent <<<"$out")"
expect "$out" "src=172.16.240.1 dst=172.16.240.131 sport=$sport dport=31266 src=10.244.0.74 dst=10.244.1.0 sport=2368 dport=$sport" "original and reply tuples as the kernel reference shows"

say "--- now: the counters of centos7-1 (ucanal show counters; Prometheus on 127.0.0.1:9300 inside the node)"
u1 show counters | indent
out=$(in_ns centos7-1 curl -s -m5 http://127.0.0.1:9300/metrics)
grep -E '^ucanal_(service_flows_total|endpoint_flows_total|port_packets_total\{[^}]*port="vxlan")' <<<"$out" | indent
expect "$out" 'ucanal_service_flows_total\{[^}]*service="default/ghost"' "per-service counters in Prometheus text"

title "lab down"
lab_down >/dev/null
remaining=$(ip netns list | awk '{print $1}' | grep -c "^$LAB_PREFIX" || true)
if ((remaining > 0)); then
    say "MISSING: $remaining namespaces of $LAB_PREFIX are left"
    fail=1
else
    say "removed every ${LAB_PREFIX}* namespace and process"
fi
if ((fail)); then
    say "demo: some steps did not show what the kernel reference shows (see MISSING above)"
    exit 1
fi
say "demo: every step showed what the kernel reference shows"
