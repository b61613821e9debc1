#!/usr/bin/env python3
"""flannel-lite.py ETCD_URL PREFIX OWN_PUBLIC_IP - what flanneld's vxlan backend does to a
kernel node, for the lab: every half second, read the subnet leases from etcd (v3 JSON
gateway) and make flannel.1's routes, neighbours and FDB entries match them (add what a
new vxlan lease says, remove what a vanished lease had). Leases of other backends and this
node's own are left alone. Runs inside the kernel node's namespace."""

import base64
import json
import subprocess
import sys
import time
import urllib.request


def leases(url, prefix):
    key = (prefix.rstrip("/") + "/subnets/").encode()
    end = key[:-1] + bytes([key[-1] + 1])
    body = json.dumps({"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()})
    req = urllib.request.Request(url + "/v3/kv/range", data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        out = {}
        for kv in json.load(r).get("kvs", []):
            k = base64.b64decode(kv["key"]).decode()
            try:
                v = json.loads(base64.b64decode(kv.get("value", "")))
            except ValueError:
                continue
            net, _, plen = k.rsplit("/", 1)[1].split("&")[0].partition("-")
            out[f"{net}/{plen}"] = v
        return out


def ip(*args):
    subprocess.run(list(args), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    url, prefix, me = sys.argv[1], sys.argv[2], sys.argv[3]
    have = {}  # subnet -> (vtep ip, mac, public ip)
    while True:
        try:
            want = {}
            for sn, v in leases(url, prefix).items():
                if v.get("BackendType") != "vxlan" or v.get("PublicIP") == me:
                    continue
                mac = (v.get("BackendData") or {}).get("VtepMAC")
                if mac:
                    want[sn] = (sn.split("/")[0], mac, v["PublicIP"])
            for sn, (gw, mac, pub) in want.items():
                if have.get(sn) == (gw, mac, pub):
                    continue
                ip("ip", "neigh", "replace", gw, "lladdr", mac, "dev", "flannel.1", "nud", "permanent")
                ip("bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst", pub, "self", "permanent")
                ip("ip", "route", "replace", sn, "via", gw, "dev", "flannel.1", "onlink")
                print(f"added {sn} via {gw} ({mac} at {pub})", flush=True)
                have[sn] = (gw, mac, pub)
            for sn in [s for s in have if s not in want]:
                gw, mac, pub = have.pop(sn)
                ip("ip", "route", "del", sn, "via", gw, "dev", "flannel.1", "onlink")
                ip("ip", "neigh", "del", gw, "dev", "flannel.1")
                ip("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", pub, "self")
                print(f"removed {sn}", flush=True)
        except OSError as e:
            print(f"etcd: {e}", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
