#!/usr/bin/env python3
"""gen-services.py N [FIRST] - a kubectl-style JSON List of N ClusterIP Services (and their
Endpoints on the cluster lab's pod01, 10.244.1.5) for scale runs: service i is
bench/svc-i at 10.250.(i/256 mod 256).(i mod 256), port 80 + i/65536."""
import json
import sys

n = int(sys.argv[1])
first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
items = []
for i in range(first, first + n):
    name = f"svc-{i}"
    ip = f"10.250.{(i >> 8) & 255}.{i & 255}"
    port = 80 + (i >> 16)
    meta = {"name": name, "namespace": "bench"}
    items.append({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                  "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"port": port, "protocol": "TCP"}]}})
    items.append({"apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
                  "subsets": [{"addresses": [{"ip": "10.244.1.5"}], "ports": [{"port": 2368, "protocol": "TCP"}]}]})
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout)
