"""The scenarios: each one does the same thing to the kernel lab and to the ucanal lab.

The node under test is centos7-1 (kernel or ucanal); centos7-2 is a kernel node in both labs.
Each scenario gets a tag (a port number, or an ICMP echo id) that every frame of it carries,
so its frames are told apart from anything else in the lab. `row` names the line of the
semantics it exercises; `known` explains a difference that is expected, with the fields it
may show (a difference outside them is reported as unexplained).
"""

import time

from packets import (ETH_ARP, ETH_IP, PROTO_ICMP, PROTO_TCP, PROTO_UDP, arp, ether, icmp_echo, ipv4, tcp,
                     udp, vxlan)

A, A_MAC = "10.244.1.5", "0a:58:0a:f4:01:05"  # ghost-ep1, on the node under test
C, C_MAC = "10.244.1.6", "0a:58:0a:f4:01:06"  # ghost-ep3, on the node under test
B, B_MAC = "10.244.0.74", "0a:58:0a:f4:00:4a"  # ghost-ep2, on the kernel peer
GW, GW_MAC = "169.254.1.1", "ee:ee:ee:ee:ee:ee"
CLIENT, CLIENT_MAC = "172.16.240.1", "00:50:56:c0:00:08"
N, N_MAC = "172.16.240.131", "00:0c:29:b2:8d:83"
P, P_MAC = "172.16.240.132", "00:0c:29:b5:b6:92"
N_VTEP, N_VTEP_MAC = "10.244.1.0", "8a:40:90:1c:cf:7e"
P_VTEP, P_VTEP_MAC = "10.244.0.0", "32:a9:79:6d:0b:b1"
BCAST, ZERO = "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"

# Services the suite adds to the lab (conformance.sh passes them to lib.sh); one endpoint
# each, so that the endpoint choice (random in kube-proxy, a flow hash in ucanal) is not a
# variable.
SERVICES = [
    "conf/tcp-remote tcp 10.250.1.1 80 30001 10.244.0.74:7000",
    "conf/tcp-local tcp 10.250.1.2 80 30002 10.244.1.5:7000",
    "conf/tcp-empty tcp 10.250.1.3 80 30003",
    "conf/udp-empty udp 10.250.1.4 53 30004",
    "conf/dns udp 10.250.0.10 53 30053 10.244.0.74:5353",
    "conf/dns-local udp 10.250.1.6 53 - 10.244.1.5:5353",
    "conf/moving udp 10.250.1.7 53 - 10.244.0.74:5353",
    "conf/deaf udp 10.250.1.9 53 30009 10.244.0.74:5999",
]
PODS = {"ghost-ep3": ("10.244.1.6", "centos7-1")}


# Why a scenario may differ (see `known`).
WHY_MASQ_PORT = (
    "ucanal masquerades pod egress to a port of its own range (masquerade_ports 61000-65534, sent back "
    "to it by one static ip rule): without netfilter the node's stack, whose ephemeral ports "
    "(32768-60999) overlap the pods', cannot tell a reply to a pod's kept port from one to its own "
    "socket, and steering per flow would cost a syscall per new flow; nf_nat keeps the pod's port "
    "when it is free"
)


class Scenario:
    def __init__(self, name, row, text, fn, settle, known, tag):
        self.name, self.row, self.text, self.fn = name, row, text, fn
        self.settle, self.known, self.tag = settle, known, tag
        self.arp_target, self.extra_ports = None, set()


SCENARIOS = []


def scenario(name, row, text, settle=0.4, known=None, arp_target=None, extra_ports=()):
    """extra_ports: ports that also tie a frame to the scenario (a port no other scenario uses),
    for flows whose tag port a NAT may change."""

    def deco(fn):
        sc = Scenario(name, row, text, fn, settle, known, 21000 + len(SCENARIOS))
        sc.arp_target, sc.extra_ports = arp_target, set(extra_ports)
        SCENARIOS.append(sc)
        return fn

    return deco


class Ctx:
    """What a scenario function gets: the lab, its tag, fresh IP IDs, the app observations."""

    def __init__(self, lab, sc):
        self.lab, self.tag, self.app = lab, sc.tag, {}
        self.ids, self._next = set(), 0x5100

    def ident(self):
        self._next += 1
        self.ids.add(self._next)
        return self._next

    def ip(self, src, dst, proto, l4, **kw):
        return ipv4(src, dst, proto, l4, self.ident(), **kw)

    # frames as each injection point sends them
    def pod(self, where, src_mac, l3):
        self.lab.inject(where, ether(GW_MAC, src_mac, ETH_IP, l3))

    def client(self, l3):
        self.lab.inject("client", ether(N_MAC, CLIENT_MAC, ETH_IP, l3))

    def vx(self, inner_l3, vni=1, where="peer", src=P, src_mac=P_MAC, inner_dst=N_VTEP_MAC, inner_src=P_VTEP_MAC):
        inner = ether(inner_dst, inner_src, ETH_IP, inner_l3)
        self.lab.inject(where, vxlan(src_mac, N_MAC, src, N, 40000 + self.tag % 1000, vni, inner, self.ident()))

    def arp_req(self, where, sha, spa, tpa):
        self.lab.inject(where, ether(BCAST, sha, ETH_ARP, arp(1, sha, spa, ZERO, tpa)))

    def echo(self, src, dst, **kw):
        return self.ip(src, dst, PROTO_ICMP, icmp_echo(self.tag, 1), **kw)

    def syn(self, src, dst, dport, payload=b"", **kw):
        seg = tcp(src, dst, self.tag, dport, "S", 1000000 + self.tag, payload=payload, opts=b"\x02\x04\x05\xb4")
        return self.ip(src, dst, PROTO_TCP, seg, **kw)

    def udp(self, src, dst, dport, payload=b"conformance", **kw):
        return self.ip(src, dst, PROTO_UDP, udp(src, dst, self.tag, dport, payload), **kw)


# ------------------------------------------------------------------------------------------
# Calico's pod model: proxy-ARP

ROW_ARP = "Calico: a pod's ARP is answered with the host-side MAC"


@scenario("arp-gateway", ROW_ARP, "ghost-ep1 asks who-has 169.254.1.1", arp_target=GW)
def _(s):
    s.arp_req("pod-a", A_MAC, A, GW)


@scenario("arp-remote-pod", ROW_ARP, "ghost-ep1 asks who-has 10.244.0.74 (a pod on the peer)", arp_target=B)
def _(s):
    s.arp_req("pod-a", A_MAC, A, B)


@scenario("arp-same-node-pod", ROW_ARP, "ghost-ep1 asks who-has 10.244.1.6 (a pod on its node)", arp_target=C)
def _(s):
    s.arp_req("pod-a", A_MAC, A, C)


@scenario("arp-outside-address", ROW_ARP, "ghost-ep1 asks who-has 10.99.0.1 (outside every CIDR)",
          arp_target="10.99.0.1")
def _(s):
    s.arp_req("pod-a", A_MAC, A, "10.99.0.1")


@scenario("arp-probe-own-address", ROW_ARP, "ghost-ep1 probes its own address (DAD: sender 0.0.0.0)",
          arp_target=A)
def _(s):
    s.arp_req("pod-a", A_MAC, "0.0.0.0", A)


@scenario("arp-lan-node", "the node on the LAN", "the client asks who-has 172.16.240.131", arp_target=N)
def _(s):
    s.arp_req("client", CLIENT_MAC, CLIENT, N)


@scenario("arp-lan-pod-address", "the node on the LAN", "the client asks who-has 10.244.1.5 (no proxy-ARP on ens33)",
          arp_target=A)
def _(s):
    s.arp_req("client", CLIENT_MAC, CLIENT, A)


# ------------------------------------------------------------------------------------------
# Routing, VXLAN, TTL, MTU

ROW_VXLAN = "flannel VXLAN: route, neighbour, FDB; VNI 1 on UDP 8472"


@scenario("ping-pod-to-remote-pod", ROW_VXLAN, "ghost-ep1 -> ghost-ep2 ICMP echo, and its reply")
def _(s):
    s.pod("pod-a", A_MAC, s.echo(A, B))


@scenario("ping-remote-pod-to-pod", ROW_VXLAN, "ghost-ep2 -> ghost-ep1 ICMP echo through the peer's flannel.1")
def _(s):
    s.pod("pod-b", B_MAC, s.echo(B, A))


@scenario("ping-same-node", "Calico: same-node pods switched by /32 route", "ghost-ep1 -> ghost-ep3 ICMP echo")
def _(s):
    s.pod("pod-a", A_MAC, s.echo(A, C))


@scenario("ping-node-ip", "the node's own addresses", "ghost-ep1 -> 172.16.240.131 ICMP echo")
def _(s):
    s.pod("pod-a", A_MAC, s.echo(A, N))


@scenario("ping-vtep-address", "the node's own addresses", "ghost-ep1 -> 10.244.1.0 (the node's VTEP address)")
def _(s):
    s.pod("pod-a", A_MAC, s.echo(A, N_VTEP))


@scenario("ping-remote-vtep", ROW_VXLAN, "ghost-ep1 -> 10.244.0.0 (the peer's VTEP address)")
def _(s):
    s.pod("pod-a", A_MAC, s.echo(A, P_VTEP))


@scenario("pod-rst-across-nodes", ROW_VXLAN, "ghost-ep1 SYN -> ghost-ep2:9 (closed), the RST back")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, B, 9))


@scenario("ttl1-pod-to-remote", "routing: TTL and ICMP time exceeded", "ghost-ep1 -> ghost-ep2 UDP with TTL 1")
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, B, 5353, ttl=1))


@scenario("ttl1-vxlan-in", "routing: TTL and ICMP time exceeded",
          "VXLAN from the peer: ghost-ep2 -> ghost-ep1 UDP, TTL 1")
def _(s):
    s.vx(s.udp(B, A, 5353, ttl=1))


@scenario("df-oversize-nodeport", "MTU 1450: ICMP fragmentation needed for DF",
          "client -> NodePort 30001, a 1500-byte DF SYN with data, toward VXLAN")
def _(s):
    s.client(s.syn(CLIENT, N, 30001, payload=b"x" * 1456))


@scenario("fragments-nodeport-no-df", "fragments through NAT",
          "client -> NodePort 30053, a 1500-byte UDP datagram without DF (fragmented toward VXLAN), echoed",
          settle=0.8)
def _(s):
    s.client(s.udp(CLIENT, N, 30053, payload=b"f" * 1472, df=False))


@scenario("fragments-request-clusterip", "fragments through NAT",
          "ghost-ep1 (real socket) -> 10.250.0.10:53, a 3000-byte request, echoed", settle=0.3)
def _(s):
    s.app["replies"] = s.lab.udp("ghost-ep1", s.tag, ("10.250.0.10", 53), [b"q" * 3000], wait=0.8)


@scenario("fragments-reply-clusterip", "fragments through NAT",
          "ghost-ep1 (real socket) -> 10.250.0.10:53, an 8000-byte reply", settle=0.3)
def _(s):
    s.app["replies"] = s.lab.udp("ghost-ep1", s.tag, ("10.250.0.10", 53), [b"big:8000"], wait=0.8)


# ------------------------------------------------------------------------------------------
# kube-proxy: NodePort, ClusterIP, hairpin, no endpoints

ROW_NP = "kube-proxy: NodePort DNAT + masquerade"
ROW_CIP = "kube-proxy: ClusterIP DNAT"
ROW_NOEP = "kube-proxy: a service without endpoints rejects"


@scenario("nodeport-syn-remote", ROW_NP, "client SYN -> 172.16.240.131:30001 -> ghost-ep2:7000; SYN-ACK; client RST")
def _(s):
    s.client(s.syn(CLIENT, N, 30001))


@scenario("nodeport-syn-local", ROW_NP, "client SYN -> 172.16.240.131:30002 -> ghost-ep1:7000 (local endpoint)")
def _(s):
    s.client(s.syn(CLIENT, N, 30002))


@scenario("nodeport-udp-remote", ROW_NP, "client UDP -> 172.16.240.131:30053 -> ghost-ep2:5353, echoed")
def _(s):
    s.client(s.udp(CLIENT, N, 30053))


@scenario("nodeport-from-pod", ROW_NP, "ghost-ep1 SYN -> its own node's 172.16.240.131:30001")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, N, 30001))


@scenario("clusterip-tcp-from-pod", ROW_CIP, "ghost-ep1 SYN -> 10.250.1.1:80 -> ghost-ep2:7000 (not masqueraded)")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.1.1", 80))


@scenario("clusterip-tcp-same-node", ROW_CIP, "ghost-ep3 SYN -> 10.250.1.2:80 -> ghost-ep1:7000 on the same node")
def _(s):
    s.pod("pod-c", C_MAC, s.syn(C, "10.250.1.2", 80))


@scenario("clusterip-udp-from-pod", ROW_CIP, "ghost-ep1 UDP -> 10.250.0.10:53 -> ghost-ep2:5353, echoed")
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.0.10", 53))


@scenario("clusterip-tcp-from-node", ROW_CIP, "a real socket on centos7-1 connects to 10.250.1.1:80, FIN close",
          settle=0.6)
def _(s):
    s.app["tcp"] = s.lab.tcp("centos7-1", s.tag, ("10.250.1.1", 80))


@scenario("clusterip-udp-from-node", ROW_CIP, "a real socket on centos7-1 -> 10.250.0.10:53, echoed", settle=0.2)
def _(s):
    s.app["replies"] = s.lab.udp("centos7-1", s.tag, ("10.250.0.10", 53), [b"node-query"])


@scenario("hairpin-tcp", "kube-proxy: hairpin is masqueraded", "ghost-ep1 SYN -> 10.250.1.2:80 -> itself")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.1.2", 80))


@scenario("hairpin-udp", "kube-proxy: hairpin is masqueraded", "ghost-ep1 UDP -> 10.250.1.6:53 -> itself, echoed")
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.1.6", 53))


@scenario("no-endpoints-tcp-clusterip", ROW_NOEP, "ghost-ep1 SYN -> 10.250.1.3:80 (no endpoints)")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.1.3", 80))


@scenario("no-endpoints-udp-clusterip", ROW_NOEP, "ghost-ep1 UDP -> 10.250.1.4:53 (no endpoints)")
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.1.4", 53))


@scenario("no-endpoints-tcp-nodeport", ROW_NOEP, "client SYN -> 172.16.240.131:30003 (no endpoints)")
def _(s):
    s.client(s.syn(CLIENT, N, 30003))


@scenario("no-endpoints-udp-nodeport", ROW_NOEP, "client UDP -> 172.16.240.131:30004 (no endpoints)")
def _(s):
    s.client(s.udp(CLIENT, N, 30004))


# ------------------------------------------------------------------------------------------
# flannel ip-masq, ICMP errors about NATed flows

ROW_MASQ = "flannel ip-masq: pod -> outside, masqueraded to the node IP"
ROW_ICMPNAT = "conntrack: ICMP errors about a NATed flow are translated"


@scenario("egress-masq-icmp", ROW_MASQ, "ghost-ep1 ICMP echo -> the client 172.16.240.1")
def _(s):
    s.pod("pod-a", A_MAC, s.echo(A, CLIENT))


@scenario("egress-masq-tcp", ROW_MASQ, "ghost-ep1 SYN -> 172.16.240.1:19, the client's RST back", extra_ports=(19,),
          known=({"tcp.sport", "tcp.dport"}, WHY_MASQ_PORT))
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, CLIENT, 19))


@scenario("egress-icmp-error", ROW_ICMPNAT, "ghost-ep1 UDP -> 172.16.240.1:17, the client's port unreachable back",
          extra_ports=(17,),
          known=({"udp.sport", "icmp.orig.udp.sport"}, WHY_MASQ_PORT))
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, CLIENT, 17))


@scenario("nodeport-icmp-error", ROW_ICMPNAT,
          "client UDP -> NodePort 30009 -> ghost-ep2:5999 (closed), ghost-ep2's port unreachable back")
def _(s):
    s.client(s.udp(CLIENT, N, 30009))


@scenario("clusterip-icmp-error-ttl", ROW_ICMPNAT,
          "ghost-ep1 UDP TTL 2 -> 10.250.0.10:53: time exceeded on the peer, about the DNATed packet")
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.0.10", 53, ttl=2))


# ------------------------------------------------------------------------------------------
# What the node refuses

ROW_VXSEC = "flannel.1's receive path: the VNI, the inner MACs, any sender, the inner packet routed"


@scenario("vxlan-unknown-vni", ROW_VXSEC, "VXLAN from the peer with VNI 2: ghost-ep2 -> ghost-ep1 echo")
def _(s):
    s.vx(s.echo(B, A), vni=2)


@scenario("vxlan-unknown-peer", ROW_VXSEC, "VXLAN VNI 1 from the client 172.16.240.1: ghost-ep2 -> ghost-ep1 echo")
def _(s):
    s.vx(s.echo(B, A), where="client", src=CLIENT, src_mac=CLIENT_MAC)


@scenario("vxlan-foreign-subnet", ROW_VXSEC,
          "VXLAN from the peer carrying 10.244.7.7 -> ghost-ep1 (not the peer's subnet)")
def _(s):
    s.vx(s.echo("10.244.7.7", A))


@scenario("vxlan-inner-dmac-other", ROW_VXSEC,
          "VXLAN from the peer: ghost-ep2 -> ghost-ep1 echo in a frame to another MAC (not flannel.1's)")
def _(s):
    s.vx(s.echo(B, A), inner_dst="02:00:00:00:00:01")


@scenario("vxlan-inner-smac-own", ROW_VXSEC,
          "VXLAN from the peer: ghost-ep2 -> ghost-ep1 echo in a frame from flannel.1's own MAC (a loop)")
def _(s):
    s.vx(s.echo(B, A), inner_src=N_VTEP_MAC)


@scenario("vxlan-transit-to-peer", ROW_VXSEC,
          "VXLAN from the client carrying 10.244.7.7 -> ghost-ep2: routed back out by VXLAN to the peer")
def _(s):
    s.vx(s.echo("10.244.7.7", B), where="client", src=CLIENT, src_mac=CLIENT_MAC)


@scenario("vxlan-transit-to-outside", ROW_VXSEC,
          "VXLAN from the peer carrying ghost-ep2 -> the client 172.16.240.1 echo: routed out, masqueraded")
def _(s):
    s.vx(s.echo(B, CLIENT))


@scenario("vxlan-to-clusterip", ROW_VXSEC,
          "VXLAN from the client carrying ghost-ep2 SYN -> 10.250.1.2:80: kube-proxy's DNAT applies to it too")
def _(s):
    s.vx(s.syn(B, "10.250.1.2", 80), where="client", src=CLIENT, src_mac=CLIENT_MAC)


@scenario("spoofed-pod-source", "Calico: a pod may only send from its own IP",
          "ghost-ep1 sends from 10.244.1.99 to ghost-ep2")
def _(s):
    s.pod("pod-a", A_MAC, s.echo("10.244.1.99", B))


ROW_PARTIAL = "any wire: partial checksums from a kernel peer"


@scenario("vxlan-partial-csum-udp", ROW_PARTIAL,
          "ghost-ep2 (real socket) -> ghost-ep1:5353, its checksum left partial by the peer's veth", settle=0.2)
def _(s):
    s.app["replies"] = s.lab.udp("ghost-ep2", s.tag, (A, 5353), [b"partial"])


@scenario("vxlan-partial-csum-tcp", ROW_PARTIAL, "ghost-ep2 (real socket) connects to ghost-ep1:7000, FIN close",
          settle=0.6)
def _(s):
    s.app["tcp"] = s.lab.tcp("ghost-ep2", s.tag, (A, 7000))


@scenario("vxlan-bad-full-csum", ROW_PARTIAL,
          "VXLAN from the peer: ghost-ep2 -> ghost-ep1:5353 UDP with a complete but wrong checksum")
def _(s):
    seg = udp(B, A, s.tag, 5353, b"corrupt", csum="bad")
    s.vx(s.ip(B, A, PROTO_UDP, seg))


# ------------------------------------------------------------------------------------------
# conntrack

ROW_CT = "conntrack: TCP state, UDP flows, endpoint removal"


@scenario("dns-race", "the DNS race: both datagrams of a new UDP flow delivered",
          "ghost-ep1 sends two datagrams of one new flow to 10.250.0.10:53 back to back")
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.0.10", 53, payload=b"query-A"))
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.0.10", 53, payload=b"query-AAAA"))


@scenario("tcp-fin-nodeport", ROW_CT, "client (real socket) -> NodePort 30001, shutdown, FIN both ways", settle=0.6)
def _(s):
    s.app["tcp"] = s.lab.tcp("client", s.tag, (N, 30001))


@scenario("tcp-rst-nodeport", ROW_CT, "client (real socket) -> NodePort 30001, closed with a RST", settle=0.4)
def _(s):
    s.app["tcp"] = s.lab.tcp("client", s.tag, (N, 30001), close="rst")


@scenario("udp-removed-endpoint", ROW_CT,
          "ghost-ep1 UDP -> 10.250.1.7:53 (ghost-ep2); the endpoint becomes ghost-ep3; the same flow again", settle=0.5)
def _(s):
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.1.7", 53, payload=b"before"))
    time.sleep(0.4)
    move_endpoint(s.lab, "conf/moving", "10.250.1.7", "10.244.0.74:5353", "10.244.1.6:5353")
    s.pod("pod-a", A_MAC, s.udp(A, "10.250.1.7", 53, payload=b"after"))


def move_endpoint(lab, svc, vip, old, new):
    """Replace a UDP service's only endpoint, the way each dataplane's control plane does it."""
    if lab.mode == "ucanal":
        lab.ucanal("endpoint", "add", "--service", svc, "--endpoint", new)
        lab.ucanal("endpoint", "del", "--service", svc, "--endpoint", old)
        return
    # kube-proxy: the endpoint chain now DNATs to the new endpoint; then the conntrack entries
    # of the old one are deleted (kube-proxy's ClearEntriesForNAT for UDP).
    rules = lab.run("centos7-1", "iptables-save", "-t", "nat").splitlines()
    chain = next(r.split()[1] for r in rules if r.startswith("-A KUBE-SEP-") and f"--to-destination {old}" in r
                 and svc in r)
    lab.run("centos7-1", "iptables", "-t", "nat", "-R", chain, "1", "-s", new.split(":")[0] + "/32",
            "-m", "comment", "--comment", svc + ":", "-j", "KUBE-MARK-MASQ")
    lab.run("centos7-1", "iptables", "-t", "nat", "-R", chain, "2", "-p", "udp", "-m", "comment", "--comment",
            svc + ":", "-m", "udp", "-j", "DNAT", "--to-destination", new)
    try:  # conntrack -D exits 1 when nothing matched
        lab.run("centos7-1", "conntrack", "-D", "-p", "udp", "--orig-dst", vip, "--dst-nat", old.split(":")[0])
    except RuntimeError:
        pass



# kube-proxy's service features: their own module, registered here after the scenarios above
# (their tags follow on).
import scenarios_kube  # noqa: E402,F401  (registers its scenarios)
