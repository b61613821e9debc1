#!/usr/bin/env python3
"""Long-lived TCP line streams for the restart tests (no third-party modules).

  lines.py serve PORT NAME              echo every line back as "NAME LINE" (one thread per connection)
  lines.py client HOST PORT CONNS SECONDS OUT.json
      CONNS connections, each sending its sequence number every 50 ms for SECONDS; the
      summary counts resets, lines lost or out of order, endpoint changes, the longest
      gap between two echoes (the stall a restart causes), and every gap over 80 ms as
      [Unix time of the echo that ended it, gap in ms] (to tell which restart caused it).
"""
import json
import socket
import sys
import threading
import time


def serve(port, name):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(128)

    def one(c):
        f = c.makefile("rb")
        try:
            for line in f:
                c.sendall(name.encode() + b" " + line)
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def client(host, port, conns, seconds, out):
    results = [None] * conns

    def run(i):
        r = {"sent": 0, "echoed": 0, "lost_or_reordered": 0, "reset": None, "endpoints": [], "max_gap_ms": 0.0, "gaps": []}
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError as e:
            r["reset"] = "connect: %s" % e
            results[i] = r
            return
        s.settimeout(0.2)
        stop = time.monotonic() + seconds
        done = threading.Event()

        def send():
            n = 0
            try:
                while time.monotonic() < stop:
                    s.sendall(b"%d\n" % n)
                    n += 1
                    r["sent"] = n
                    time.sleep(0.05)
            except OSError as e:
                r["reset"] = r["reset"] or "send: %s" % e
            done.set()

        threading.Thread(target=send, daemon=True).start()
        want = 0
        last = time.monotonic()
        buf = b""
        while not (done.is_set() and r["echoed"] >= r["sent"]):
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if time.monotonic() - last > 30:
                    r["reset"] = r["reset"] or "stalled for 30 s"
                    break
                continue
            except OSError as e:
                r["reset"] = r["reset"] or "recv: %s" % e
                break
            if not chunk:
                r["reset"] = r["reset"] or "connection closed by peer"
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                now = time.monotonic()
                r["max_gap_ms"] = max(r["max_gap_ms"], (now - last) * 1000)
                if (now - last) * 1000 > 80:
                    r["gaps"].append([time.time(), round((now - last) * 1000, 1)])
                last = now
                ep, seq = line.split()
                ep = ep.decode()
                if not r["endpoints"] or r["endpoints"][-1] != ep:
                    r["endpoints"].append(ep)
                if int(seq) != want:
                    r["lost_or_reordered"] += 1
                want = int(seq) + 1
                r["echoed"] += 1
        s.close()
        results[i] = r

    ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in ts:
        t.start()
        time.sleep(0.013)
    for t in ts:
        t.join()
    with open(out, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(__doc__)
