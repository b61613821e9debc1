"""From captured frames to a verdict: pick a scenario's frames, normalise the fields that may
legitimately differ (each by name, with its reason), and compare kernel and ucanal point by
point, direction by direction, field by field.
"""

from collections import defaultdict

from packets import parse, summary

# Fields whose values are not compared as they are, by name, and why. Printed with every report.
NORMALISED = {
    "ip.id": "compared only as 'the injected datagram's ID' or 'chosen by a stack': IDs a stack "
             "picks for its own datagrams (per-socket counters, hashed or random) are not the dataplane's",
    "udp.sport (VXLAN outer)": "the outer source port is a hash of the inner flow, and the hash "
                               "function is each implementation's own (the range is what ECMP needs)",
    "*.csum": "compared as correct or not (ok / bad / none): the value follows from the other fields; a "
              "partial checksum (the pseudo-header sum a veth hands on for CHECKSUM_PARTIAL) counts as "
              "correct, because the receiving device or stack completes it, and so does an outer VXLAN "
              "checksum filled by local checksum offload for such an inner one",
    "icmp.orig.udp.csum, icmp.orig.tcp.csum": "the L4 checksum inside an ICMP error's quote is not compared: "
                                              "a kernel host quotes a datagram whose checksum a veth left "
                                              "partial as it is, and a NAT then adjusts that unfinished value",
    "tcp.seq, tcp.ack": "relative to the first sequence number of each direction at each point, as "
                        "Wireshark shows them: initial sequence numbers are random (RFC 6528)",
    "tcp.opts ts": "timestamp option values carry a random per-connection offset and the clock (RFC 7323); "
                   "the option's presence and place are compared",
    "GSO super-frames": "not compared as such: the nodes' uplinks segment UDP and UDP tunnels in software "
                        "(ethtool tx-udp-segmentation, tx-udp_tnl-segmentation off), so the capture sees the "
                        "datagrams a wire carries, where a veth would hand a super-frame on whole",
    "frames: IPv6": "not part of the lab (IPv4 only); the namespaces' own IPv6 housekeeping is dropped",
    "frames: ARP outside ARP scenarios": "neighbour refreshes follow each stack's NUD timers, not the "
                                          "scenario; ARP scenarios compare their ARP frames",
    "frame order at one point": "counts and contents are compared as a multiset: two workers may interleave "
                                "independent frames",
}


def related(infos, sc):
    """Indexes of the frames of one point that belong to scenario sc."""
    keep = []
    for i, (f, info) in enumerate(infos):
        if f.get("eth.type") == "0x86dd":
            continue
        if sc.arp_target and info.arp:
            op, spa, tpa = info.arp
            if sc.arp_target in (spa, tpa) and (op == 2 or f.get("injected")):
                keep.append(i)
            continue
        if info.arp:
            continue
        if sc.tag in info.ports or sc.tag in info.echo_ids or info.ports & sc.extra_ports:
            keep.append(i)
    return keep


def frag_related(infos, keep, frag_ids):
    return [i for i, (f, info) in enumerate(infos) if i in keep or (info.frag_ids & frag_ids)]


def normalise(frames, injected, sc):
    """frames: {point: [(direction, bytes)]}, injected: (the IP IDs, the frames) the scenario
    injected -> {point: [dict]} of the scenario's frames."""
    injected_ids, sent = injected
    sent = set(sent)
    parsed = {pt: [(d, *parse(b), b in sent) for d, b in fr] for pt, fr in frames.items()}
    frag_ids = set()
    keep = {}
    for pt, lst in parsed.items():
        infos = [(f, info) for _, f, info, _ in lst]
        for (_, f, _, was_sent) in lst:
            if was_sent:
                f["injected"] = True
        keep[pt] = set(related(infos, sc))
        for i in keep[pt]:
            frag_ids |= infos[i][1].frag_ids
    out = {}
    for pt, lst in parsed.items():
        infos = [(f, info) for _, f, info, _ in lst]
        idx = frag_related(infos, keep[pt], frag_ids) if frag_ids else sorted(keep[pt])
        isn = {}
        res = []
        for i in idx:
            d, f, info, _ = lst[i]
            res.append(_norm_fields(d, f, info, injected_ids, isn))
        out[pt] = res
    return out


def _norm_fields(direction, f, info, injected_ids, isn):
    f = dict(f)
    f.pop("injected", None)
    f["dir"] = direction
    for k in list(f):
        if k.endswith("ip.id"):
            f[k] = "injected" if f[k] in injected_ids else "stack"
        elif k.endswith("csum") and "icmp.orig." in k and not k.endswith("ip.csum"):
            f[k] = "quoted"
        elif k.endswith("csum") and f[k] == "partial":
            f[k] = "ok"
            f["~partial"] = True  # kept as evidence, not compared
    if "vxlan.vni" in f:
        f["udp.sport"] = "hash"
    for p, tup, seq, ack, flags in info.tcp_flows:
        rev = (tup[2], tup[3], tup[0], tup[1])
        if p.startswith("icmp.orig.") or p.startswith("in.icmp.orig."):
            if tup in isn:
                f[p + "tcp.seq"] = (seq - isn[tup]) % (1 << 32)
            continue
        base = isn.setdefault(tup, seq)
        f[p + "tcp.seq"] = (seq - base) % (1 << 32)
        if ack is not None:
            if "A" in flags and rev in isn:
                f[p + "tcp.ack"] = (ack - isn[rev]) % (1 << 32)
            elif "A" in flags:
                f[p + "tcp.ack"] = "unknown-isn"
    return f


def _diff_fields(a, b):
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith("~"))


def _same(a, b):
    return not _diff_fields(a, b)


def compare(kn, un, kapp, uapp):
    """-> (details: [str], fields: sorted list of differing field names)."""
    details, fields = [], set()
    for pt in kn:
        by_dir = defaultdict(lambda: ([], []))
        for f in kn[pt]:
            by_dir[f["dir"]][0].append(f)
        for f in un.get(pt, []):
            by_dir[f["dir"]][1].append(f)
        for d, (ks, us) in by_dir.items():
            ks, us = list(ks), list(us)
            for f in list(ks):  # exact matches first, in any order
                u = next((u for u in us if _same(f, u)), None)
                if u is not None:
                    us.remove(u)
                    ks.remove(f)
            pairs = []
            while ks and us:  # then the closest pair, again and again
                k, u = min(((k, u) for k in ks for u in us), key=lambda p: len(_diff_fields(*p)))
                ks.remove(k)
                us.remove(u)
                pairs.append((k, u))
            for k, u in pairs:
                diff = _diff_fields(k, u)
                fields.update(diff)
                shown = ", ".join(f"{x} {k.get(x, '-')} -> {u.get(x, '-')}" for x in diff[:6])
                details.append(f"{pt} {d}: {summary(k)}: {shown}")
            for k in ks:
                fields.add("frames")
                details.append(f"{pt} {d}: only with the kernel: {summary(k)}")
            for u in us:
                fields.add("frames")
                details.append(f"{pt} {d}: only with ucanal: {summary(u)}")
    for key in sorted(set(kapp) | set(uapp)):
        if kapp.get(key) != uapp.get(key):
            fields.add("app." + key)
            details.append(f"app {key}: kernel {kapp.get(key)!r}, ucanal {uapp.get(key)!r}")
    partial = sum(1 for pt in un for f in un[pt] if f.get("~partial") and f["dir"] in ("to pod", "to node"))
    if partial and fields:
        details.append(f"evidence: {partial} frame(s) into the ucanal node or its pods carried a partial checksum")
    return details, sorted(fields)


# Differences recognised from the evidence itself (any scenario): (test on the details, reason).
PENDING = [
    (lambda ds: any("frag id" in d for d in ds),
     "IP fragments: ucanal fragments, reassembles or translates them otherwise than the kernel's "
     "nf_defrag + NAT (see the frames)"),
    (lambda ds: any("csum ok -> bad" in d or "carried a partial checksum" in d for d in ds),
     "a checksum the kernel peer left partial (CHECKSUM_PARTIAL over the veth wire) is passed on "
     "unfinished and the receiving stack drops the packet"),
]


def explain(sc, fields, details):
    """The one-line reason for a difference: one the scenario expects (its fields, or '*' for a
    different packet altogether), or one recognised from the evidence."""
    if not fields:
        return None
    if sc.known and ("*" in sc.known[0] or set(fields) <= set(sc.known[0])):
        return sc.known[1]
    for test, why in PENDING:
        if test(details):
            return why
    return None
