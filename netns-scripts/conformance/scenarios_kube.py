"""The scenarios of kube-proxy's service features (services.py gives both labs the services):
traffic policies, session affinity, externalIPs, load-balancer IPs and their source ranges,
endpoint conditions, and the service CIDR's wrong ports and unallocated addresses. Each
service's candidate set has one endpoint, or the scenario makes the choice deterministic
(affinity recorded while the service has one endpoint), so that kube-proxy's random pick is
not a variable.
"""

import os
import tempfile
import time

import services
from packets import PROTO_TCP, ether, ETH_IP, tcp
from scenarios import A_MAC, C, C_MAC, CLIENT, CLIENT_MAC, N, N_MAC, A, scenario

ROW_ETP = "kube-proxy: externalTrafficPolicy Local"
ROW_ITP = "kube-proxy: internalTrafficPolicy Local"
ROW_EXT = "kube-proxy: externalIPs and load-balancer IPs, loadBalancerSourceRanges"
ROW_AFF = "kube-proxy: sessionAffinity ClientIP"
ROW_COND = "kube-proxy: endpoint conditions (ready, serving, terminating)"
ROW_CIDR = "kube-proxy: the service CIDR (wrong port rejected, unallocated address dropped)"


def setup(lab, cluster_ips):
    """Gives the lab's node under test the feature services."""
    if lab.mode == "ucanal":
        apply(lab, services.manifest(services.FEATURES))
        return
    restore(lab, services.iptables(services.FEATURES, cluster_ips))


def apply(lab, text):
    fd, path = tempfile.mkstemp(prefix="conformance-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        lab.ucanal("apply", "-f", path)
    finally:
        os.unlink(path)


def restore(lab, rules):
    fd, path = tempfile.mkstemp(prefix="conformance-", suffix=".rules")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(rules)
        lab.run("centos7-1", "iptables-restore", "--noflush", path)
    finally:
        os.unlink(path)


def set_endpoints(lab, name, eps):
    """An EndpointSlice update: ucanal applies the slice; the kernel's service chains are
    rendered anew in one iptables-restore (the portals and the `recent` lists stay)."""
    s = dict(services.BY_NAME[name], eps=eps)
    if lab.mode == "ucanal":
        apply(lab, services.endpoint_slice(s) + "\n")
    else:
        restore(lab, services.update(s))


# ------------------------------------------------------------------------------------------

@scenario("etp-local-nodeport-keeps-client", ROW_ETP,
          "client SYN -> NodePort 30101 (eTP Local, endpoints here and on the peer) -> ghost-ep1, not masqueraded")
def _(s):
    s.client(s.syn(CLIENT, N, 30101))


@scenario("etp-local-udp-keeps-client", ROW_ETP,
          "client UDP -> NodePort 30110 (eTP Local) -> ghost-ep1:5353 from 172.16.240.1, echoed")
def _(s):
    s.client(s.udp(CLIENT, N, 30110))


@scenario("etp-local-no-local-endpoint-drops", ROW_ETP,
          "client SYN -> NodePort 30102 (eTP Local, its only endpoint on the peer): dropped")
def _(s):
    s.client(s.syn(CLIENT, N, 30102))


@scenario("etp-local-pod-short-circuits", ROW_ETP,
          "ghost-ep1 SYN -> its node's NodePort 30102 (eTP Local, endpoint on the peer) -> ghost-ep2, unmasqueraded")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, N, 30102))


@scenario("etp-local-lb-ip-keeps-client", ROW_ETP,
          "client SYN -> load-balancer IP 172.16.240.61:80 (eTP Local) -> ghost-ep1, not masqueraded")
def _(s):
    s.client(s.syn(CLIENT, "172.16.240.61", 80))


@scenario("itp-local-no-local-endpoint-drops", ROW_ITP,
          "ghost-ep1 SYN -> 10.250.2.3:80 (iTP Local, its only endpoint on the peer): dropped")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.2.3", 80))


@scenario("itp-local-uses-the-local-endpoint", ROW_ITP,
          "ghost-ep3 SYN -> 10.250.2.4:80 (iTP Local, endpoints here and on the peer) -> ghost-ep1 only")
def _(s):
    s.pod("pod-c", C_MAC, s.syn(C, "10.250.2.4", 80))


@scenario("external-ip-dnat", ROW_EXT, "client SYN -> externalIP 172.16.240.50:80 -> ghost-ep2, masqueraded")
def _(s):
    s.client(s.syn(CLIENT, "172.16.240.50", 80))


@scenario("lb-source-range-allowed", ROW_EXT,
          "client SYN -> load-balancer IP 172.16.240.60:80 (source range 172.16.240.0/29) -> ghost-ep2")
def _(s):
    s.client(s.syn(CLIENT, "172.16.240.60", 80))


@scenario("lb-source-range-blocked", ROW_EXT,
          "SYN from 172.16.240.99 (outside 172.16.240.0/29) -> load-balancer IP 172.16.240.60:80: dropped")
def _(s):
    s.client(s.syn("172.16.240.99", "172.16.240.60", 80))


AFFINITY_SECOND_PORT = 29107


@scenario("affinity-keeps-client-on-endpoint", ROW_AFF,
          "client SYN -> NodePort 30107 (ClientIP affinity) -> ghost-ep1; ghost-ep3 added; a new connection "
          "from another port -> ghost-ep1 again", settle=0.5, extra_ports=(AFFINITY_SECOND_PORT,))
def _(s):
    s.client(s.syn(CLIENT, N, 30107))
    time.sleep(0.3)
    set_endpoints(s.lab, "affinity", [services.ep(services.A, 7000), services.ep(services.C, 7000)])
    time.sleep(0.3)
    seg = tcp(CLIENT, N, AFFINITY_SECOND_PORT, 30107, "S", 2000000, opts=b"\x02\x04\x05\xb4")
    s.lab.inject("client", ether(N_MAC, CLIENT_MAC, ETH_IP, s.ip(CLIENT, N, PROTO_TCP, seg)))


@scenario("terminating-endpoint-fallback", ROW_COND,
          "ghost-ep3 SYN -> 10.250.2.8:80 (no ready endpoint; ghost-ep2 serving and terminating) -> ghost-ep2")
def _(s):
    s.pod("pod-c", C_MAC, s.syn(C, "10.250.2.8", 80))


@scenario("not-ready-endpoint-rejects", ROW_COND,
          "ghost-ep1 SYN -> 10.250.2.9:80 (its only endpoint not ready, not serving): port unreachable")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.2.9", 80))


@scenario("clusterip-wrong-port-rejects", ROW_CIDR, "ghost-ep1 SYN -> 10.250.1.1:81 (the service has port 80)")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.1.1", 81))


@scenario("unallocated-clusterip-drops", ROW_CIDR, "ghost-ep1 SYN -> 10.250.9.9:80 (no service has it): dropped")
def _(s):
    s.pod("pod-a", A_MAC, s.syn(A, "10.250.9.9", 80))
