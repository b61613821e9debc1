#!/usr/bin/env python3
"""set-latency.py SOCKET N [FIRST] - N `service set` requests (one new ClusterIP service
each, bench/set-i at 10.250.(i/256 mod 256).(i mod 256) port 80 + i/65536, as
gen-services.py numbers them from FIRST, default 100000) over one API connection; prints
the round trip of each request in ms, sorted (no process start in the figures)."""
import json
import socket
import sys
import time

path, n = sys.argv[1], int(sys.argv[2])
first = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rwb")
times = []
for i in range(first, first + n):
    svc = {"name": f"bench/set-{i}", "protocol": "tcp", "cluster_ip": f"10.250.{(i >> 8) & 255}.{i & 255}",
           "port": 80 + (i >> 16), "endpoints": ["10.244.1.5:2368"]}
    t = time.monotonic()
    f.write(json.dumps({"op": "service_set", "service": svc}).encode() + b"\n")
    f.flush()
    r = json.loads(f.readline())
    times.append((time.monotonic() - t) * 1000)
    if not r.get("ok"):
        sys.exit(f"service set {svc['name']}: {r}")
print(" ".join(f"{t:.2f}" for t in sorted(times)))
