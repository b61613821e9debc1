#!/usr/bin/env bash
# flow-order.sh - one flow's packets leave a ucanal node in the order they arrived:
# iperf3 with N parallel streams from the lab client through a NodePort of centos7-1 to
# ghost-ep2 on centos7-2, then short HTTP requests through a NodePort to ghost-ep2 alone (a handshake's
# last ACK and the request right behind it), captured with tcpdump on centos7-1's uplink
# (what arrives from the client and what leaves by VXLAN, and the way back), then checked
# flow by flow by tcp-order.py (sequence order on each side, and the order of each segment
# that left against the one it came from).
#
#   flow-order.sh [--streams 4] [--seconds 3] [--requests 40] [--keep-pcap FILE]
#
# Exit status: 0 no segment reordered by the node, 1 some, 2 the run failed.
#
# Known (issue 24, item 17): rarely (1 short request of about 120 in 5 runs) a handshake's last ACK
# leaves after the request segment behind it. Likely cause (not yet confirmed): the node's
# kernel picks the host TAP's queue (so the worker) of a flow from tun's flow table, which
# the write of the SYN-ACK updates only once that write is delivered; the client's ACK can
# reach the TAP before (the old queue) and its data after (the new one), and two workers
# send them. The bulk streams, past their handshakes, stay on one queue: none seen there.
#
# Environment: LAB_PREFIX (default fo-), UCANAL_BIN, LAB_UCANAL_DATAPLANE (e.g. "workers = 2").
# The lab is removed on exit, also on failure or Ctrl-C; iperf3 runs for --seconds only.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_PREFIX=${LAB_PREFIX:-fo-}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
lab_init

streams=4 seconds=3 requests=40 keep=""
while (($#)); do
    case $1 in
    --streams) streams=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --requests) requests=$2; shift ;;
    --keep-pcap) keep=$2; shift ;;
    *) lab_die "unknown option '$1' (flow-order.sh [--streams N] [--seconds S] [--requests N] [--keep-pcap FILE])" ;;
    esac
    shift
done
[[ $streams =~ ^[1-9][0-9]?$ && $seconds =~ ^[1-9][0-9]?$ ]] || lab_die "--streams and --seconds take 1..99"
[[ $requests =~ ^[0-9]{1,4}$ ]] || lab_die "--requests takes 0..9999"
for t in iperf3 tcpdump; do command -v "$t" >/dev/null || lab_die "$t is not installed"; done

tmp=$(mktemp -d)
finish() {
    local rc=$?
    trap '' INT TERM
    [[ -z ${dump:-} ]] || { kill -TERM "$dump" 2>/dev/null; wait "$dump" 2>/dev/null; }
    # Only the lab this script made (lab_up removes a half-made one itself).
    if ((made)); then lab_down >/dev/null 2>&1 || true; fi
    rm -rf "$tmp"
    exit "$rc"
}
made=0
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

lab_up >/dev/null || exit 2
made=1
lab_nsexec ghost-ep2 iperf3 -s -D -p 5201 --pidfile "$tmp/iperf3.pid" >/dev/null
"$UCANAL_BIN" --socket "$(lab_socket centos7-1)" service set --name default/iperf --cluster-ip 10.250.0.41 \
    --port 5201 --node-port 31267 --endpoint 10.244.0.74:5201 >/dev/null
# ghost-ep2's HTTP alone, so that every request crosses the VXLAN (default/ghost may pick
# the local ghost-ep1, whose packets never reach the uplink).
"$UCANAL_BIN" --socket "$(lab_socket centos7-1)" service set --name default/ghost-ep2 --cluster-ip 10.250.0.42 \
    --port 2368 --node-port 31268 --endpoint 10.244.0.74:2368 >/dev/null
for _ in $(seq 50); do lab_nsexec ghost-ep2 ss -ltnH 'sport = :5201' | grep -q . && break; sleep 0.1; done

pcap=${keep:-$tmp/uplink.pcap}
# Headers only (the inner TCP header of a VXLAN frame ends before byte 130), a large buffer.
# (ip netns exec execs tcpdump: $! is its pid, for the SIGTERM that ends it.)
ip netns exec "$(lab_ns centos7-1)" tcpdump -i "$LAB_UPLINK" -s 160 -B 65536 -w "$pcap" \
    "tcp port 31267 or tcp port 31268 or udp port $LAB_VXLAN_PORT" 2>"$tmp/tcpdump.err" &
dump=$!
sleep 1
printf 'iperf3 -P %s -t %s: client -> 172.16.240.131:31267 (NodePort of centos7-1) -> ghost-ep2:5201\n' "$streams" "$seconds"
lab_nsexec client iperf3 -c 172.16.240.131 -p 31267 -P "$streams" -t "$seconds" -f g |
    grep -E 'SUM.*(sender|receiver)' || exit 2
if ((requests)); then
    printf '%s HTTP requests: client -> 172.16.240.131:31268 (NodePort of centos7-1) -> ghost-ep2:2368\n' "$requests"
    lab_nsexec client sh -c "for i in \$(seq $requests); do curl -s -m 5 -o /dev/null http://172.16.240.131:31268/; done"
fi
sleep 0.5
# (SIGTERM: a background job of a script ignores SIGINT.)
kill -TERM "$dump"
wait "$dump" || true
dump=
sed -n 's/^\(.*\(captured\|dropped\).*\)$/tcpdump: \1/p' "$tmp/tcpdump.err"
printf 'capture: %s (%s bytes), tcpdump on %s of centos7-1\n' "$pcap" "$(stat -c %s "$pcap")" "$LAB_UPLINK"
"$LAB_PYTHON" "$here/tcp-order.py" "$pcap" --node-ip 172.16.240.131 --vxlan-port "$LAB_VXLAN_PORT"
