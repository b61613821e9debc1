#!/usr/bin/env python3
"""apply-latency.py SOCKET WANT MANIFEST.json - sends the manifest's objects (a JSON List)
as one `apply` request over the daemon's socket, then polls `show node` on the same
connection until its table holds WANT services; prints the milliseconds from sending the
request to the first answer that shows WANT (no process start in the figure)."""
import json
import socket
import sys
import time

path, want, manifest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
items = json.load(open(manifest))["items"]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rwb")


def call(req):
    f.write(json.dumps(req).encode() + b"\n")
    f.flush()
    return json.loads(f.readline())


t = time.monotonic()
r = call({"op": "apply", "objects": items, "delete": False})
if not r.get("ok"):
    sys.exit(f"apply: {r}")
while time.monotonic() - t < 10:
    if call({"op": "show", "what": "node"})["data"]["services"] == want:
        print(f"{(time.monotonic() - t) * 1000:.1f}")
        sys.exit(0)
print("timeout")
