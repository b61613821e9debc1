"""The suite's kube-proxy feature services (traffic policies, session affinity, externalIPs,
load-balancer IPs with source ranges, endpoint conditions), each given to both labs from one
description: to the ucanal node as the Service and EndpointSlice manifests `ucanal apply -f`
takes, to the kernel node as the iptables rules kube-proxy's iptables mode writes for them
(pkg/proxy/iptables/proxier.go: KUBE-SVC-/KUBE-SVL-/KUBE-EXT-/KUBE-FW-/KUBE-SEP- chains, the
`recent` match for affinity, KUBE-PROXY-FIREWALL for source ranges, REJECT/DROP in the filter
table), plus what kube-proxy's nftables mode adds and iptables mode lacks: a wrong port of a
ClusterIP rejected, an unallocated ClusterIP of the service CIDR dropped.

The endpoint sets follow kube-proxy's CategorizeEndpoints: ready endpoints, else the serving
and terminating ones, never non-serving ones; `Local` scopes keep this node's endpoints.
"""

import base64
import hashlib

CLUSTER_CIDR, SERVICE_CIDR = "10.244.0.0/16", "10.250.0.0/16"
NODE = "centos7-1"  # the node under test; the other node is centos7-2
A, B, C = "10.244.1.5", "10.244.0.74", "10.244.1.6"  # ghost-ep1, ghost-ep2 (centos7-2), ghost-ep3
NODE_OF = {A: "centos7-1", C: "centos7-1", B: "centos7-2"}


def ep(ip, port, ready=True, serving=None, terminating=False):
    serving = ready if serving is None else serving
    return {"ip": ip, "port": port, "ready": ready, "serving": serving, "terminating": terminating}


def svc(name, vip, port, proto="tcp", kind="ClusterIP", node_port=None, etp="Cluster", itp="Cluster",
        affinity=None, external_ips=(), lb_ips=(), ranges=(), eps=()):
    return {"name": name, "vip": vip, "port": port, "proto": proto, "kind": kind, "node_port": node_port,
            "etp": etp, "itp": itp, "affinity": affinity, "external_ips": list(external_ips),
            "lb_ips": list(lb_ips), "ranges": list(ranges), "eps": list(eps)}


# Ports: the pods' TCP echo server is 7000, the UDP one 5353.
FEATURES = [
    svc("etp-local", "10.250.2.1", 80, kind="NodePort", node_port=30101, etp="Local",
        eps=[ep(A, 7000), ep(B, 7000)]),
    svc("etp-local-away", "10.250.2.2", 80, kind="NodePort", node_port=30102, etp="Local", eps=[ep(B, 7000)]),
    svc("itp-local-away", "10.250.2.3", 80, itp="Local", eps=[ep(B, 7000)]),
    svc("itp-local", "10.250.2.4", 80, itp="Local", eps=[ep(A, 7000), ep(B, 7000)]),
    svc("external-ip", "10.250.2.5", 80, external_ips=["172.16.240.50"], eps=[ep(B, 7000)]),
    svc("lb-ranges", "10.250.2.6", 80, kind="LoadBalancer", lb_ips=["172.16.240.60"],
        ranges=["172.16.240.0/29"], eps=[ep(B, 7000)]),
    svc("affinity", "10.250.2.7", 80, kind="NodePort", node_port=30107, affinity=60, eps=[ep(A, 7000)]),
    svc("terminating", "10.250.2.8", 80,
        eps=[ep(A, 7000, ready=False, serving=False, terminating=True),
             ep(B, 7000, ready=False, serving=True, terminating=True)]),
    svc("not-ready", "10.250.2.9", 80, eps=[ep(B, 7000, ready=False)]),
    svc("etp-local-udp", "10.250.2.10", 53, proto="udp", kind="NodePort", node_port=30110, etp="Local",
        eps=[ep(A, 5353), ep(B, 5353)]),
    svc("lb-etp-local", "10.250.2.11", 80, kind="LoadBalancer", etp="Local", lb_ips=["172.16.240.61"],
        eps=[ep(A, 7000), ep(B, 7000)]),
]
BY_NAME = {s["name"]: s for s in FEATURES}
NAMESPACE = "conf"


def spn(s):
    return f"{NAMESPACE}/{s['name']}:"


# -- ucanal: kubectl-shaped manifests ---------------------------------------------------------

def manifest(services):
    docs = []
    for s in services:
        spec = [f"  type: {s['kind']}", f"  clusterIP: {s['vip']}"]
        port = f"{{name: p, port: {s['port']}, protocol: {s['proto'].upper()}"
        port += f", nodePort: {s['node_port']}}}" if s["node_port"] else "}"
        spec.append(f"  ports: [{port}]")
        if s["kind"] != "ClusterIP" or s["external_ips"]:
            spec.append(f"  externalTrafficPolicy: {s['etp']}")
        if s["itp"] != "Cluster":
            spec.append(f"  internalTrafficPolicy: {s['itp']}")
        if s["external_ips"]:
            spec.append(f"  externalIPs: [{', '.join(s['external_ips'])}]")
        if s["kind"] == "LoadBalancer" and not s["node_port"]:
            spec.append("  allocateLoadBalancerNodePorts: false")
        if s["ranges"]:
            spec.append(f"  loadBalancerSourceRanges: [{', '.join(s['ranges'])}]")
        if s["affinity"]:
            spec.append("  sessionAffinity: ClientIP")
            spec.append(f"  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {s['affinity']}}}}}")
        doc = ["apiVersion: v1", "kind: Service", f"metadata: {{name: {s['name']}, namespace: {NAMESPACE}}}",
               "spec:", *spec]
        if s["lb_ips"]:
            ingress = ", ".join(f"{{ip: {ip}}}" for ip in s["lb_ips"])
            doc.append(f"status: {{loadBalancer: {{ingress: [{ingress}]}}}}")
        docs.append("\n".join(doc))
        docs.append(endpoint_slice(s))
    return "\n---\n".join(docs) + "\n"


def endpoint_slice(s):
    eps = []
    for e in s["eps"]:
        cond = f"{{ready: {str(e['ready']).lower()}, serving: {str(e['serving']).lower()}, " \
               f"terminating: {str(e['terminating']).lower()}}}"
        eps.append(f"  - {{addresses: [{e['ip']}], nodeName: {NODE_OF[e['ip']]}, conditions: {cond}}}")
    port = s["eps"][0]["port"] if s["eps"] else s["port"]
    return "\n".join([
        "apiVersion: discovery.k8s.io/v1", "kind: EndpointSlice",
        f"metadata: {{name: {s['name']}-1, namespace: {NAMESPACE}, "
        f"labels: {{kubernetes.io/service-name: {s['name']}}}}}",
        "addressType: IPv4", "endpoints:", *eps,
        f"ports: [{{name: p, port: {port}, protocol: {s['proto'].upper()}}}]"])


# -- the kernel: kube-proxy's iptables rules ------------------------------------------------------

def chain_hash(text):
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def categorize(s):
    """kube-proxy's CategorizeEndpoints: (cluster endpoints, local endpoints)."""
    def usable(lst):
        ready = [e for e in lst if e["ready"]]
        return ready or [e for e in lst if e["serving"] and e["terminating"]]
    return usable(s["eps"]), usable([e for e in s["eps"] if NODE_OF[e["ip"]] == NODE])


def _dest(s, ip, port=None):
    p = s["proto"]
    return f"-d {ip}/32 -p {p} -m {p} --dport {port or s['port']}" if ip else f"-p {p} -m {p} --dport {port}"


def service_rules(s, chains_only=False):
    """(nat chains, nat rules, filter rules) of one service; `chains_only`: its own chains
    only (an endpoint update: the portal rules in KUBE-SERVICES/KUBE-NODEPORTS stay)."""
    h = chain_hash(spn(s) + s["proto"])
    svc_c, svl_c, ext_c, fw_c = (f"KUBE-{k}-{h}" for k in ("SVC", "SVL", "EXT", "FW"))
    name, p = spn(s), s["proto"]
    cluster, local = categorize(s)
    has_eps = bool(cluster)
    internal = local if s["itp"] == "Local" else cluster
    external = local if s["etp"] == "Local" else cluster
    internal_chain = svl_c if s["itp"] == "Local" else svc_c
    external_reachable = bool(s["node_port"] or s["external_ips"] or s["lb_ips"])
    uses_ext = has_eps and external_reachable
    lb_chain = fw_c if s["ranges"] else ext_c
    chains, nat, flt = [], [], []

    def target(ok, what):
        if ok:
            return None
        return ("REJECT", f"{name} has no endpoints") if not has_eps else ("DROP", f"{name} has no local endpoints")

    # Portals.
    if not chains_only:
        cip = f'-m comment --comment "{name} cluster IP" {_dest(s, s["vip"])}'
        if internal:
            nat.append(f"-A KUBE-SERVICES {cip} -j {internal_chain}")
        elif t := target(False, "internal"):
            flt.append(f'-A KUBE-SERVICES -m comment --comment "{t[1]}" {_dest(s, s["vip"])} -j {t[0]}'
                       + (" --reject-with icmp-port-unreachable" if t[0] == "REJECT" else ""))
        ext_t = target(bool(external), "external")
        for ip in s["external_ips"]:
            if has_eps:
                nat.append(f'-A KUBE-SERVICES -m comment --comment "{name} external IP" {_dest(s, ip)} -j {ext_c}')
            if ext_t:
                flt.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{ext_t[1]}" {_dest(s, ip)} -j {ext_t[0]}')
        for ip in s["lb_ips"]:
            if has_eps:
                nat.append(f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP" {_dest(s, ip)} '
                           f'-j {lb_chain}')
            if ext_t:
                flt.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{ext_t[1]}" {_dest(s, ip)} -j {ext_t[0]}')
            elif s["ranges"]:
                flt.append(f'-A KUBE-PROXY-FIREWALL -m comment --comment "{name} traffic not accepted by {fw_c}" '
                           f'{_dest(s, ip)} -j DROP')
        if s["node_port"]:
            if has_eps:
                nat.append(f'-A KUBE-NODEPORTS -m comment --comment "{name}" {_dest(s, None, s["node_port"])} '
                           f'-j {ext_c}')
            if ext_t:
                flt.append(f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "{ext_t[1]}" -m addrtype '
                           f'--dst-type LOCAL {_dest(s, None, s["node_port"])} -j {ext_t[0]}')

    # The service's own chains.
    if uses_ext:
        chains.append(ext_c)
        if s["etp"] == "Local":
            nat += [f'-A {ext_c} -s {CLUSTER_CIDR} -m comment --comment "pod traffic for {name} external '
                    f'destinations" -j {svc_c}',
                    f'-A {ext_c} -m comment --comment "masquerade LOCAL traffic for {name} external destinations" '
                    f'-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
                    f'-A {ext_c} -m comment --comment "route LOCAL traffic for {name} external destinations" '
                    f'-m addrtype --src-type LOCAL -j {svc_c}',
                    *([f'-A {ext_c} -j {svl_c}'] if local else [])]
        else:
            nat += [f'-A {ext_c} -m comment --comment "masquerade traffic for {name} external destinations" '
                    f'-j KUBE-MARK-MASQ', f'-A {ext_c} -j {svc_c}']
    if s["ranges"] and has_eps:
        chains.append(fw_c)
        for r in s["ranges"]:
            nat.append(f'-A {fw_c} -m comment --comment "{name} loadbalancer IP" -s {r} -j {ext_c}')
        nat.append(f'-A {fw_c} -m comment --comment "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"')
    # kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints, for chains with endpoints.
    uses_svc = has_eps and (s["itp"] != "Local" or external_reachable)
    uses_svl = bool(local) and (s["itp"] == "Local" or (s["etp"] == "Local" and external_reachable))
    seps = {}
    for chain, eps, used in ((svc_c, cluster, uses_svc), (svl_c, local, uses_svl)):
        if not used:
            continue
        chains.append(chain)
        if chain == internal_chain and internal:
            nat.append(f'-A {chain} ! -s {CLUSTER_CIDR} -m comment --comment "{name} cluster IP" '
                       f'{_dest(s, s["vip"])} -j KUBE-MARK-MASQ')
        for e in eps:
            seps[f"{e['ip']}:{e['port']}"] = e
        nat += _to_endpoints(s, chain, eps)
    for addr in seps:
        sep = "KUBE-SEP-" + chain_hash(spn(s) + p + addr)
        chains.append(sep)
        recent = f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource" if s["affinity"] else ""
        nat += [f'-A {sep} -s {addr.split(":")[0]}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ',
                f'-A {sep} -p {p} -m comment --comment "{name}"{recent} -m {p} -j DNAT --to-destination {addr}']
    return chains, nat, flt


def _to_endpoints(s, chain, eps):
    name, p, out = spn(s), s["proto"], []
    if s["affinity"]:
        for e in eps:
            sep = "KUBE-SEP-" + chain_hash(spn(s) + p + f"{e['ip']}:{e['port']}")
            out.append(f'-A {chain} -m comment --comment "{name} -> {e["ip"]}:{e["port"]}" -m recent --rcheck '
                       f'--seconds {s["affinity"]} --reap --name {sep} --mask 255.255.255.255 --rsource -j {sep}')
    n = len(eps)
    for i, e in enumerate(eps):
        sep = "KUBE-SEP-" + chain_hash(spn(s) + p + f"{e['ip']}:{e['port']}")
        stat = f" -m statistic --mode random --probability {1 / (n - i):.11f}" if i < n - 1 else ""
        out.append(f'-A {chain} -m comment --comment "{name} -> {e["ip"]}:{e["port"]}"{stat} -j {sep}')
    return out


def iptables(services, cluster_ips):
    """iptables-restore --noflush input: the services' rules, the hooks kube-proxy adds for
    them, and nftables mode's checks of the service CIDR (after every portal's REJECT)."""
    chains, nat, flt = [], [], []
    for s in services:
        c, n, f = service_rules(s)
        chains += c
        nat += n
        flt += f
    out = ["*nat", *(f":{c} - [0:0]" for c in chains), *nat, "COMMIT", "*filter", ":KUBE-PROXY-FIREWALL - [0:0]",
           "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" "
           "-j KUBE-PROXY-FIREWALL",
           "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" "
           "-j KUBE-PROXY-FIREWALL",
           "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service "
           "portals\" -j KUBE-EXTERNAL-SERVICES", *flt]
    for ip in sorted(set(cluster_ips)):
        out.append(f'-A KUBE-SERVICES -d {ip}/32 -m comment --comment "Reject traffic to invalid ports of '
                   f'ClusterIPs" -j REJECT --reject-with icmp-port-unreachable')
    out.append(f'-A KUBE-SERVICES -d {SERVICE_CIDR} -m comment --comment "Drop traffic to unallocated ClusterIPs" '
               f'-j DROP')
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def update(s):
    """iptables-restore --noflush input that replaces one service's own chains (its endpoints
    changed); its portals stay, and so do the `recent` lists its rules name."""
    chains, nat, _ = service_rules(s, chains_only=True)
    return "\n".join(["*nat", *(f":{c} - [0:0]" for c in chains), *nat, "COMMIT"]) + "\n"
