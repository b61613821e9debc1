#!/usr/bin/env python3
"""UDP flows for the known-bugs tests (no third-party modules).

  udp-probe.py serve PORT NAME LOG
      echo every datagram back as "NAME PAYLOAD"; append "UNIXTIME PAYLOAD" to LOG for each
  udp-probe.py race HOST PORT N
      N times: a new socket sends two datagrams back to back (the A and AAAA queries of a
      resolver); prints JSON {"flows": N, "both": flows with both answered within 1 s}
  udp-probe.py stream HOST PORT SPORT SECONDS OUT.json
      one connected socket from SPORT sends its sequence number every 100 ms for SECONDS;
      writes [[unix time, result], ...], result the answering NAME, "refused" (an ICMP
      port unreachable came back) or "silent" (nothing within 100 ms)
"""
import json
import socket
import sys
import time


def serve(port, name, log):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    with open(log, "a", buffering=1) as fh:
        while True:
            data, peer = s.recvfrom(65536)
            fh.write(f"{time.time():.3f} {data.decode(errors='replace')}\n")
            s.sendto(name.encode() + b" " + data, peer)


def race(host, port, n):
    both = 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        s.sendto(f"A {i}".encode(), (host, port))
        s.sendto(f"AAAA {i}".encode(), (host, port))
        got = 0
        try:
            while got < 2:
                s.recvfrom(65536)
                got += 1
        except OSError:
            pass
        both += got == 2
        s.close()
    print(json.dumps({"flows": n, "both": both}))


def stream(host, port, sport, seconds, out):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.connect((host, port))
    s.settimeout(0.1)
    res, seq, end = [], 0, time.monotonic() + seconds
    while time.monotonic() < end:
        seq += 1
        t0 = time.monotonic()
        try:
            s.send(str(seq).encode())
            r = s.recv(65536).split()[0].decode()
        except ConnectionRefusedError:
            r = "refused"
        except TimeoutError:
            r = "silent"
        res.append([round(time.time(), 3), r])
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
    with open(out, "w") as fh:
        json.dump(res, fh)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["serve"] and len(a) == 4:
        serve(int(a[1]), a[2], a[3])
    elif a[:1] == ["race"] and len(a) == 4:
        race(a[1], int(a[2]), int(a[3]))
    elif a[:1] == ["stream"] and len(a) == 6:
        stream(a[1], int(a[2]), int(a[3]), float(a[4]), a[5])
    else:
        sys.exit(__doc__)
