#!/usr/bin/env python3
"""The policy lab's pod side (tests/netpol_lab.rs).

  netpol-agent.py serve PORT...          TCP and UDP servers on every PORT: a TCP
                                         connection is answered "ok", a UDP datagram
                                         echoed.
  netpol-agent.py probe TIMEOUT TARGET...
                                         TARGET is IP:PORT/PROTO; every target is tried
                                         at once (one thread each) and one line per target
                                         says "IP:PORT/PROTO 1" (answered) or "... 0"
                                         (nothing within TIMEOUT seconds).
  netpol-agent.py echo PORT              a TCP echo server.
  netpol-agent.py hold IP:PORT SECONDS   one TCP connection to an echo server, a line
                                         every 10 ms; prints "up" once it runs, then
                                         "cut <unix time of the last answered line>" when a
                                         line goes unanswered for 200 ms, or "held" after
                                         SECONDS.
"""
import socket
import sys
import threading


def tcp_loop(s):
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"ok")
        except OSError:
            pass
        finally:
            c.close()


def udp_loop(s):
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(d, a)


def serve(ports):
    for p in ports:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("0.0.0.0", p))
        t.listen(256)
        threading.Thread(target=tcp_loop, args=(t,), daemon=True).start()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", p))
        threading.Thread(target=udp_loop, args=(u,), daemon=True).start()
    print("serving", flush=True)
    threading.Event().wait()


def try_one(target, timeout, out):
    addr, proto = target.split("/")
    ip, port = addr.rsplit(":", 1)
    ok = False
    try:
        if proto == "TCP":
            with socket.create_connection((ip, int(port)), timeout=timeout) as s:
                s.settimeout(timeout)
                ok = s.recv(2) == b"ok"
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(b"probe", (ip, int(port)))
                ok = s.recvfrom(64)[0] == b"probe"
    except OSError:
        ok = False
    out[target] = ok


def probe(timeout, targets):
    out = {}
    threads = [threading.Thread(target=try_one, args=(t, timeout, out)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in targets:
        print(f"{t} {1 if out.get(t) else 0}")


def echo_conn(c):
    with c:
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)


def echo(port):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port))
    t.listen(16)
    while True:
        c, _ = t.accept()
        threading.Thread(target=echo_conn, args=(c,), daemon=True).start()


def hold(target, seconds):
    import time
    ip, port = target.rsplit(":", 1)
    s = socket.create_connection((ip, int(port)), timeout=2)
    s.settimeout(0.2)
    last = time.time()
    print("up", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        try:
            s.sendall(b"x")
            if s.recv(16) == b"":
                break
            last = time.time()
        except OSError:
            break
        time.sleep(0.01)
    else:
        print("held", flush=True)
        return
    print(f"cut {last:.3f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    elif sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    elif sys.argv[1] == "hold":
        hold(sys.argv[2], float(sys.argv[3]))
    else:
        probe(float(sys.argv[2]), sys.argv[3:])
