#!/usr/bin/env python3
"""tcp-order.py - does a node keep each TCP flow's packets in the order they arrived?

Reads a pcap taken on a node's uplink (tcpdump -i ens33 -w FILE in the node's namespace),
which holds both what arrived and what left: plain TCP between the LAN and the node, and
VXLAN (UDP 8472) between the node and its peers, whose inner frames are decoded. A flow
that crosses the node shows up twice, once on each side (NAT changes its addresses and
ports, never its sequence or acknowledgement numbers); the two are paired by the first
sequence and acknowledgement numbers seen.

For every flow on each side it counts the segments, the data segments, retransmissions
(data again below the highest sequence number seen) and the segments out of order. For
every pair it then checks that the node sent the segments in the order they arrived: each
segment that left is matched to the one it came from (the same sequence number inside its
payload; for a segment without data the same seq, ack and flags), and a segment that left
after one that arrived later is a reordering by the node. GSO runs (one captured packet
for a run of segments) count as their first segment.

Usage: tcp-order.py PCAP --node-ip 172.16.240.131 [--vxlan-port 8472] [--json]
Exit status: 0 no reordering by the node, 1 some, 2 bad input.
"""

import argparse
import bisect
import json
import struct
import sys
from collections import defaultdict

ETH_IPV4 = 0x0800
PROTO_TCP, PROTO_UDP = 6, 17
SYN, FIN, RST = 0x02, 0x01, 0x04


def ipv4(b, off):
    """(src, dst, proto, payload offset, end) of the IPv4 header at b[off:], or None."""
    if len(b) < off + 20 or b[off] >> 4 != 4:
        return None
    ihl = (b[off] & 15) * 4
    total = struct.unpack_from("!H", b, off + 2)[0]
    src, dst = b[off + 12:off + 16], b[off + 16:off + 20]
    return ".".join(map(str, src)), ".".join(map(str, dst)), b[off + 9], off + ihl, off + total


def tcp(b, off, end):
    """(sport, dport, seq, ack, flags, payload length) of the TCP header at b[off:]."""
    if len(b) < off + 20:
        return None
    sport, dport, seq, ack, doff_flags = struct.unpack_from("!HHIIH", b, off)
    hlen = (doff_flags >> 12) * 4
    return sport, dport, seq, ack, doff_flags & 0x3F, max(0, end - off - hlen)


def frames(path):
    """(time, original length, captured bytes) of a classic pcap file (either byte order,
    us or ns)."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise ValueError("not a pcap file (too short)")
        magic = struct.unpack("<I", head[:4])[0]
        order = {0xA1B2C3D4: ("<", 1e-6), 0xA1B23C4D: ("<", 1e-9),
                 0xD4C3B2A1: (">", 1e-6), 0x4D3CB2A1: (">", 1e-9)}.get(magic)
        if order is None:
            raise ValueError("not a pcap file (magic %08x)" % magic)
        e, unit = order
        if struct.unpack(e + "I", head[20:24])[0] != 1:
            raise ValueError("not an Ethernet capture")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, caplen, length = struct.unpack(e + "IIII", rec)
            yield sec + frac * unit, length, f.read(caplen)


def segments(path, node_ip, vxlan_port):
    """Every TCP segment: (side, direction, flow, seq, ack, flags, len, time, index)."""
    out = []
    for i, (t, length, b) in enumerate(frames(path)):
        if len(b) < 14 or struct.unpack_from("!H", b, 12)[0] != ETH_IPV4:
            continue
        ip = ipv4(b, 14)
        if ip is None:
            continue
        src, dst, proto, off, end = ip
        side, run = "plain", None
        if proto == PROTO_UDP and len(b) >= off + 8:
            sport, dport = struct.unpack_from("!HH", b, off)
            if vxlan_port not in (sport, dport):
                continue
            side = "vxlan"
            inner = off + 8 + 8 + 14           # UDP, VXLAN, inner Ethernet
            if len(b) < inner or struct.unpack_from("!H", b, inner - 2)[0] != ETH_IPV4:
                continue
            direction = "in" if dst == node_ip else "out"
            # A UDP GSO send is captured once: datagrams of one size (the first one's)
            # but the last, each a VXLAN frame of one TCP segment, in `length` bytes.
            run = (length - off - 8, off + 8)
            ip = ipv4(b, inner)
            if ip is None:
                continue
            src, dst, proto, off, end = ip
        else:
            direction = "in" if dst == node_ip else "out"
        if proto != PROTO_TCP:
            continue
        t4 = tcp(b, off, end)
        if t4 is None:
            continue
        sport, dport, seq, ack, flags, plen = t4
        if run is not None and plen > 0:
            payload, udp_payload_at = run
            datagram = end - udp_payload_at
            n = -(-payload // datagram)
            if n > 1:
                plen = payload - n * (datagram - plen)
        flow = (src, sport, dst, dport)
        out.append((side, direction, flow, seq, ack, flags, plen, t, i))
    return out


def seq_lt(a, b):
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


class Unwrap:
    """32-bit sequence numbers as 64-bit offsets from the flow's first one (a flow may
    send more than 4 GiB, and its numbers wrap)."""

    def __init__(self, first):
        self.last, self.abs = first, 0

    def __call__(self, seq):
        d = (seq - self.last) & 0xFFFFFFFF
        d = d - (1 << 32) if d > 0x7FFFFFFF else d
        self.last, self.abs = seq, self.abs + d
        return self.abs


def cover(ranges, start, end):
    """Adds [start, end) to a sorted list of disjoint ranges, merging what it touches.
    (A GSO run is captured as its first segment, so the leaving side has gaps.)"""
    i = bisect.bisect_left(ranges, (start, start))
    if i > 0 and ranges[i - 1][1] >= start:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= end:
        start, end = min(start, ranges[j][0]), max(end, ranges[j][1])
        j += 1
    ranges[i:j] = [(start, end)]


def order_of(segs):
    """Per-flow counts on one side: segments, data (and SYN/FIN) segments, retransmitted
    (every byte already seen: the sender's, or a retransmission cut differently) and out
    of order (below the highest byte seen, with bytes not seen before, or a bare ACK below
    it: a later segment passed it)."""
    n = data = retrans = ooo = 0
    covered = []          # merged [start, end) ranges of bytes seen, in order
    high = None
    unwrap = Unwrap(segs[0][3]) if segs else None
    for s in segs:
        _, _, _, seq, _, flags, plen, _, _ = s
        n += 1
        start = unwrap(seq)
        if plen == 0 and not flags & (SYN | FIN):
            # A bare ACK carries the sender's next sequence number: one below bytes
            # already seen was passed by them (the handshake's last ACK behind data).
            if high is not None and start < high:
                ooo += 1
            continue
        data += 1
        end = start + max(plen, 1)
        if high is not None and start < high:
            i = bisect.bisect_right(covered, (start, float("inf"))) - 1
            if i >= 0 and covered[i][0] <= start and end <= covered[i][1]:
                retrans += 1
            else:
                ooo += 1
        high = end if high is None else max(high, end)
        cover(covered, start, end)
    return {"segments": n, "data": data, "retransmitted": retrans, "out_of_order": ooo}


def matches(a, b):
    """Whether segment b (one that left) came from segment a (one that arrived)."""
    _, _, _, sa, aa, fa, la, _, _ = a
    _, _, _, sb, ab, fb, lb, _, _ = b
    if lb > 0 and la > 0:
        return not seq_lt(sb, sa) and seq_lt(sb, (sa + la) & 0xFFFFFFFF)
    return lb == la == 0 and sa == sb and aa == ab and (fa & (SYN | FIN | RST)) == (fb & (SYN | FIN | RST))


def reordered(arrived, left):
    """Segments that left after a segment that arrived later (by the node, not the wire),
    and the segments that left with no arrival found (capture drops)."""
    p, bad, unmatched, examples = 0, 0, 0, []
    for b in left:
        j = next((j for j in range(p, len(arrived)) if matches(arrived[j], b)), None)
        if j is not None:
            p = j
            continue
        k = next((k for k in range(len(arrived)) if matches(arrived[k], b)), None)
        if k is None:
            unmatched += 1
            continue
        bad += 1
        if len(examples) < 3:
            examples.append({"left": {"seq": b[3], "len": b[6], "time": b[7]},
                             "after_arrival_of": {"seq": arrived[p][3], "len": arrived[p][6]}})
    return bad, unmatched, examples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pcap")
    ap.add_argument("--node-ip", required=True)
    ap.add_argument("--vxlan-port", type=int, default=8472)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        segs = segments(a.pcap, a.node_ip, a.vxlan_port)
    except (OSError, ValueError) as e:
        print("tcp-order: %s: %s" % (a.pcap, e), file=sys.stderr)
        return 2
    flows = defaultdict(list)
    for s in segs:
        flows[(s[0], s[1], s[2])].append(s)
    # A flow's two sides: the same first (seq, ack) on an arriving and a leaving side.
    first = {}
    for k, v in flows.items():
        first.setdefault((k[1], v[0][3], v[0][4]), []).append(k)
    rows, pairs, total_bad = [], [], 0
    for k, v in sorted(flows.items(), key=lambda kv: kv[1][0][7]):
        row = {"side": k[0], "direction": k[1], "flow": "%s:%d -> %s:%d" % k[2]}
        row.update(order_of(v))
        rows.append(row)
        if k[1] != "in":
            continue
        # The leaving side of this arriving flow: same first numbers, the other side.
        out = [o for o in first.get(("out", v[0][3], v[0][4]), []) if o[0] != k[0]]
        if not out:
            continue
        bad, unmatched, examples = reordered(v, flows[out[0]])
        total_bad += bad
        pairs.append({"arrived": row["flow"] + " (%s)" % k[0], "left": "%s:%d -> %s:%d (%s)" % (out[0][2] + (out[0][0],)),
                      "left_segments": len(flows[out[0]]), "reordered_by_node": bad, "unmatched": unmatched,
                      "examples": examples})
    if a.json:
        print(json.dumps({"flows": rows, "pairs": pairs, "reordered_by_node": total_bad}, indent=1))
    else:
        print("%-6s %-4s %-46s %9s %7s %8s %6s" % ("side", "dir", "flow", "segments", "data", "retrans", "ooo"))
        for r in rows:
            print("%-6s %-4s %-46s %9d %7d %8d %6d" % (r["side"], r["direction"], r["flow"], r["segments"],
                                                       r["data"], r["retransmitted"], r["out_of_order"]))
        print()
        for p in pairs:
            print("%s -> %s: %d segments left, %d reordered by the node, %d without a captured arrival"
                  % (p["arrived"], p["left"], p["left_segments"], p["reordered_by_node"], p["unmatched"]))
            for e in p["examples"]:
                print("    e.g. %s" % json.dumps(e))
        print("\n%d flow pair(s) through the node, %d segment(s) reordered by it" % (len(pairs), total_bad))
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
