#!/usr/bin/env python3
"""api-idle.py SOCKET N SECONDS: hold N idle connections to a ucanal API socket for
SECONDS (bounded: N <= 10000, SECONDS <= 600), sending nothing, reconnecting the ones
the daemon closes (at most 500 a second). Prints one JSON line: connections made,
closed by the daemon, and by which error code (its last line: "timeout" for an idle
or yielded slot, "busy" when refused)."""
import json
import resource
import selectors
import socket
import sys
import time


def main():
    path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if not (0 < n <= 10000 and 0 < secs <= 600):
        sys.exit("api-idle.py: N must be 1..10000 and SECONDS 0..600")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    sel = selectors.DefaultSelector()
    stats = {"connections": 0, "closed_by_daemon": 0, "codes": {}}

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            stats["codes"]["connect:" + e.__class__.__name__] = stats["codes"].get("connect:" + e.__class__.__name__, 0) + 1
            s.close()
            return
        stats["connections"] += 1
        sel.register(s, selectors.EVENT_READ, bytearray())

    for _ in range(n):
        connect()
    end = time.monotonic() + secs
    closed = 0
    while time.monotonic() < end:
        tick = time.monotonic()
        for _ in range(min(closed, 50)):
            connect()
            closed -= 1
        for key, _ in sel.select(timeout=0.1):
            s, buf = key.fileobj, key.data
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if d:
                buf.extend(d)
                continue
            line = bytes(buf).split(b"\n")[0]
            try:
                code = json.loads(line)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "closed"
            stats["codes"][code] = stats["codes"].get(code, 0) + 1
            stats["closed_by_daemon"] += 1
            sel.unregister(s)
            s.close()
            closed += 1
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()
