"""Frames for the conformance suite: build them (Ethernet, ARP, IPv4, ICMP, UDP, TCP, VXLAN)
and take captured ones apart into flat {field: value} dicts that can be compared field by field.

Only the standard library: the suite runs on a fresh Debian machine with python3 alone.
"""

import hashlib
import ipaddress
import struct

ETH_IP, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
VXLAN_PORT = 8472
TCP_FLAGS = "FSRPAUEC"  # bit 0 .. bit 7


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_str(b):
    return ":".join(f"{x:02x}" for x in b)


def ip_bytes(ip):
    return ipaddress.IPv4Address(ip).packed


def ip_str(b):
    return str(ipaddress.IPv4Address(bytes(b)))


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_sum(data, start=0):
    if len(data) % 2:
        data = bytes(data) + b"\0"
    return fold(start + sum(struct.unpack(f"!{len(data) // 2}H", data)))


def checksum(data, start=0):
    return ~csum_sum(data, start) & 0xFFFF


def pseudo_sum(src, dst, proto, length):
    return csum_sum(ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, proto, length))


# ------------------------------------------------------------------------------------------
# Building


def ether(dst, src, etype, payload):
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", etype) + payload


def arp(op, sha, spa, tha, tpa):
    """op 1 request, 2 reply."""
    return struct.pack("!HHBBH", 1, ETH_IP, 6, 4, op) + mac_bytes(sha) + ip_bytes(spa) + mac_bytes(tha) + ip_bytes(tpa)


def ipv4(src, dst, proto, l4, ident, ttl=64, df=True, mf=False, frag_off=0, tos=0, total_len=None):
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_off // 8)
    length = total_len if total_len is not None else 20 + len(l4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, length, ident, flags, ttl, proto, 0, ip_bytes(src), ip_bytes(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + l4


def _l4_csum(src, dst, proto, seg, off, mode):
    """Fills the checksum at `off`: mode full (correct), partial (the folded pseudo-header sum, as
    CHECKSUM_PARTIAL leaves it), bad (correct + 1)."""
    seg = bytearray(seg)
    ps = pseudo_sum(src, dst, proto, len(seg))
    if mode == "partial":
        c = ps
    else:
        c = checksum(bytes(seg), ps)
        if proto == PROTO_UDP and c == 0:
            c = 0xFFFF
        if mode == "bad":
            c = (c + 1) & 0xFFFF or 1
    seg[off : off + 2] = struct.pack("!H", c)
    return bytes(seg)


def udp(src, dst, sport, dport, payload, csum="full"):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _l4_csum(src, dst, PROTO_UDP, seg, 6, csum)


def tcp(src, dst, sport, dport, flags, seq, ack=0, win=64240, payload=b"", opts=b"", csum="full"):
    fl = sum(1 << TCP_FLAGS.index(c) for c in flags)
    doff = (20 + len(opts)) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, fl, win, 0, 0) + opts + payload
    return _l4_csum(src, dst, PROTO_TCP, seg, 16, csum)


def icmp_echo(ident, seq, payload=b"ucanal-conformance", reply=False):
    msg = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def vxlan(src_mac, dst_mac, src, dst, sport, vni, inner, ident):
    v = struct.pack("!II", 0x08000000, vni << 8) + inner
    u = udp(src, dst, sport, VXLAN_PORT, v)
    return ether(dst_mac, src_mac, ETH_IP, ipv4(src, dst, PROTO_UDP, u, ident, df=False))


# ------------------------------------------------------------------------------------------
# Parsing


class Info:
    """What the runner needs besides the fields: what ties a frame to a scenario."""

    def __init__(self):
        self.ports = set()  # every TCP/UDP port, at any depth (outer, inner, quoted by ICMP)
        self.echo_ids = set()
        self.frag_ids = set()  # (proto, ip id) of fragments
        self.arp = None  # (op, spa, tpa)
        self.tcp_flows = []  # (prefix, (src, sport, dst, dport), seq, ack, flags) to normalise


def _csum_state(ok, partial=False, none=False):
    if none:
        return "none"
    if ok:
        return "ok"
    return "partial" if partial else "bad"


def _l4_state(src, dst, proto, seg, field, full):
    """ok / partial / bad / none / unverifiable for a TCP or UDP checksum."""
    if proto == PROTO_UDP and field == 0:
        return "none"
    if not full:
        return "unverifiable"
    ps = pseudo_sum(src, dst, proto, len(seg))
    if csum_sum(seg, ps) == 0xFFFF:
        return "ok"
    if field == ps:
        return "partial"
    return "bad"


def _lco_state(src, dst, seg, f):
    """The outer UDP checksum of a VXLAN datagram whose inner checksum is partial: Linux fills
    it by local checksum offload (LCO), as it will be once the inner checksum is completed.
    Complete the inner one in a copy and check the outer again."""
    proto = f.get("in.ip.proto")
    kind = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}.get(proto)
    if not kind or f.get(f"in.{kind}.csum") != "partial" or f.get("in.eth.type") != "0x0800":
        return "bad"
    l3 = 16 + 14
    ihl = f["in.ip.ihl"]
    inner = bytearray(seg[l3 + ihl : l3 + f["in.ip.len"]])
    off = 16 if proto == PROTO_TCP else 6
    inner[off : off + 2] = b"\0\0"
    c = checksum(bytes(inner), pseudo_sum(f["in.ip.src"], f["in.ip.dst"], proto, len(inner)))
    fixed = bytearray(seg)
    fixed[l3 + ihl + off : l3 + ihl + off + 2] = struct.pack("!H", c)
    return "ok" if csum_sum(bytes(fixed), pseudo_sum(src, dst, PROTO_UDP, len(fixed))) == 0xFFFF else "bad"


def _tcp_opts(b):
    out, i = [], 0
    while i < len(b):
        kind = b[i]
        if kind == 0:
            break
        if kind == 1:
            out.append("nop")
            i += 1
            continue
        if i + 1 >= len(b) or b[i + 1] < 2:
            out.append(f"bad{kind}")
            break
        ln, val = b[i + 1], b[i + 2 : i + b[i + 1]]
        if kind == 2 and ln == 4:
            out.append(f"mss={struct.unpack('!H', val)[0]}")
        elif kind == 3 and ln == 3:
            out.append(f"wscale={val[0]}")
        elif kind == 4:
            out.append("sackok")
        elif kind == 8:
            out.append("ts")  # values: see IGNORED in compare.py
        else:
            out.append(f"opt{kind}/{ln}")
        i += ln
    return ",".join(out)


def _payload(b):
    return f"{len(b)}:{hashlib.sha1(b).hexdigest()[:10]}" if b else "0"


def parse_ipv4(b, f, info, p="", quoted=False):
    """IPv4 and what it carries into f with prefix p. quoted: the copy inside an ICMP error
    (may be cut short)."""
    if len(b) < 20 or b[0] >> 4 != 4:
        f[p + "ip"] = "malformed"
        return
    ihl = (b[0] & 15) * 4
    tot, ident, fl = struct.unpack("!HHH", b[2:8])
    src, dst, proto = ip_str(b[12:16]), ip_str(b[16:20]), b[9]
    frag_off, mf, df = (fl & 0x1FFF) * 8, bool(fl & 0x2000), bool(fl & 0x4000)
    f.update({
        p + "ip.src": src, p + "ip.dst": dst, p + "ip.proto": proto, p + "ip.ttl": b[8],
        p + "ip.tos": b[1], p + "ip.len": tot, p + "ip.df": df, p + "ip.mf": mf,
        p + "ip.frag_off": frag_off, p + "ip.id": ident, p + "ip.ihl": ihl,
        p + "ip.csum": _csum_state(csum_sum(b[:ihl]) == 0xFFFF),
    })
    if mf or frag_off:
        info.frag_ids.add((proto, ident))
    l4 = b[ihl : min(tot, len(b))]
    full = not quoted or len(b) >= tot
    whole = full and not mf and not frag_off
    if frag_off:
        f[p + "payload"] = _payload(l4)
        return
    if proto == PROTO_TCP and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        info.ports.update((sport, dport))
        f.update({p + "tcp.sport": sport, p + "tcp.dport": dport})
        if len(l4) >= 20:
            seq, ack, doff, flags, win, cs, urg = struct.unpack("!IIBBHHH", l4[4:20])
            hl = (doff >> 4) * 4
            fl = "".join(c for i, c in enumerate(TCP_FLAGS) if flags >> i & 1)
            f.update({p + "tcp.flags": fl, p + "tcp.win": win, p + "tcp.urg": urg,
                      p + "tcp.opts": _tcp_opts(l4[20:hl]), p + "tcp.payload": _payload(l4[hl:]),
                      p + "tcp.csum": _l4_state(src, dst, proto, l4, cs, whole)})
            f[p + "tcp.seq"], f[p + "tcp.ack"] = seq, ack
            info.tcp_flows.append((p, (src, sport, dst, dport), seq, ack, fl))
        elif len(l4) >= 8:
            f[p + "tcp.seq"] = struct.unpack("!I", l4[4:8])[0]
            info.tcp_flows.append((p, (src, sport, dst, dport), f[p + "tcp.seq"], None, ""))
    elif proto == PROTO_UDP and len(l4) >= 8:
        sport, dport, ln, cs = struct.unpack("!HHHH", l4[:8])
        if dport != VXLAN_PORT or quoted:
            info.ports.update((sport, dport))
        f.update({p + "udp.sport": sport, p + "udp.dport": dport, p + "udp.len": ln,
                  p + "udp.csum": _l4_state(src, dst, proto, l4[:ln] if whole else l4, cs, whole)})
        if dport == VXLAN_PORT and len(l4) >= 16 and not quoted and p == "":
            flags, vni = struct.unpack("!II", l4[8:16])
            f.update({"vxlan.flags": flags >> 24, "vxlan.vni": vni >> 8})
            parse_ether(l4[16:], f, info, "in.")
            if f[p + "udp.csum"] == "bad" and whole:
                f[p + "udp.csum"] = _lco_state(src, dst, l4[:ln], f)
        elif whole or not quoted:
            f[p + "udp.payload"] = _payload(l4[8:])
    elif proto == PROTO_ICMP and len(l4) >= 4:
        t, code = l4[0], l4[1]
        f.update({p + "icmp.type": t, p + "icmp.code": code})
        if not quoted:
            f[p + "icmp.csum"] = _csum_state(csum_sum(l4) == 0xFFFF)
        if t in (0, 8) and len(l4) >= 8:
            ident, seq = struct.unpack("!HH", l4[4:8])
            info.echo_ids.add(ident)
            f.update({p + "icmp.id": ident, p + "icmp.seq": seq})
            if not quoted:
                f[p + "icmp.payload"] = _payload(l4[8:])
        elif t in (3, 11, 12) and not quoted and len(l4) >= 8:
            if t == 3 and code == 4:
                f[p + "icmp.mtu"] = struct.unpack("!H", l4[6:8])[0]
            f[p + "icmp.quote_len"] = len(l4) - 8
            parse_ipv4(l4[8:], f, info, p + "icmp.orig.", quoted=True)


def parse_ether(b, f, info, p=""):
    if len(b) < 14:
        f[p + "eth"] = "short"
        return
    etype = struct.unpack("!H", b[12:14])[0]
    f.update({p + "eth.dst": mac_str(b[:6]), p + "eth.src": mac_str(b[6:12]), p + "eth.type": f"0x{etype:04x}"})
    if etype == ETH_IP:
        parse_ipv4(b[14:], f, info, p)
    elif etype == ETH_ARP and len(b) >= 42:
        a = b[14:42]
        op = struct.unpack("!H", a[6:8])[0]
        f.update({p + "arp.op": op, p + "arp.sha": mac_str(a[8:14]), p + "arp.spa": ip_str(a[14:18]),
                  p + "arp.tha": mac_str(a[18:24]), p + "arp.tpa": ip_str(a[24:28])})
        info.arp = (op, f[p + "arp.spa"], f[p + "arp.tpa"])


def parse(frame):
    f, info = {}, Info()
    parse_ether(frame, f, info)
    return f, info


def summary(f):
    """One line for a parsed frame, tcpdump-like."""
    p = "in." if "in.eth.type" in f else ""
    out = []
    if p:
        out.append(f"vxlan vni {f.get('vxlan.vni')} {f.get('ip.src')}>{f.get('ip.dst')}:")
    if p + "arp.op" in f:
        op = "who-has" if f[p + "arp.op"] == 1 else "reply"
        out.append(f"arp {op} {f[p + 'arp.tpa']} tell {f[p + 'arp.spa']} ({f[p + 'arp.sha']})")
    elif p + "ip.src" in f:
        src, dst = f[p + "ip.src"], f[p + "ip.dst"]
        if p + "tcp.sport" in f:
            out.append(f"{src}:{f[p + 'tcp.sport']} > {dst}:{f[p + 'tcp.dport']} tcp {f.get(p + 'tcp.flags', '')}")
        elif p + "udp.sport" in f:
            out.append(f"{src}:{f[p + 'udp.sport']} > {dst}:{f[p + 'udp.dport']} udp len {f.get(p + 'udp.len')}")
        elif p + "icmp.type" in f:
            out.append(f"{src} > {dst} icmp {f[p + 'icmp.type']}/{f[p + 'icmp.code']}")
            if p + "icmp.orig.ip.src" in f:
                o = p + "icmp.orig."
                sp = f.get(o + "udp.sport", f.get(o + "tcp.sport", ""))
                dp = f.get(o + "udp.dport", f.get(o + "tcp.dport", ""))
                out.append(f"about {f[o + 'ip.src']}:{sp} > {f[o + 'ip.dst']}:{dp}")
        else:
            out.append(f"{src} > {dst} proto {f[p + 'ip.proto']}")
        if f.get(p + "ip.mf") or f.get(p + "ip.frag_off"):
            out.append(f"frag id {f[p + 'ip.id']} off {f[p + 'ip.frag_off']}{' MF' if f[p + 'ip.mf'] else ''}")
    else:
        out.append(f"ethertype {f.get(p + 'eth.type')}")
    return " ".join(out)
