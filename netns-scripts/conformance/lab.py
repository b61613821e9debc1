"""One lab as the suite drives it: capture sockets at the observation points, injection sockets,
the pods' echo servers, real sockets in any of the lab's namespaces.

Every socket is opened inside the lab's namespace (setns on this thread, then back), so one
process serves both labs and nothing is ever sent outside them.
"""

import ctypes
import mmap
import os
import socket
import struct
import subprocess
import threading
import time
from contextlib import contextmanager

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_RX_RING, PACKET_VERSION, TPACKET_V2, TP_STATUS_USER = 263, 5, 10, 1, 1
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)


@contextmanager
def netns(name):
    """Runs the block in network namespace /run/netns/NAME (this thread only)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {name}: {os.strerror(e)}")
        yield
    finally:
        if _libc.setns(_home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the suite's own namespace failed")
        os.close(fd)


# Observation points: name -> (lab member, device, label of frames the capture socket sends out).
# The wire point is the node under test's port on the LAN bridge: every frame to or from
# centos7-1 on the LAN, VXLAN included, as the rest of the world sees it.
POINTS = {
    "pod-a": ("ghost-ep1", "eth0", "from pod", "to pod"),
    "pod-c": ("ghost-ep3", "eth0", "from pod", "to pod"),
    "wire": ("lan", "centos7-1", "to node", "from node"),
    "pod-b": ("ghost-ep2", "eth0", "from pod", "to pod"),
}
# Where frames are injected: name -> (lab member, device).
INJECT = {
    "pod-a": ("ghost-ep1", "eth0"),
    "pod-b": ("ghost-ep2", "eth0"),
    "pod-c": ("ghost-ep3", "eth0"),
    "client": ("client", "eth0"),
    "peer": ("centos7-2", "ens33"),
}
# Pods and their echo servers (TCP 7000: read to EOF, close 0.3 s later; UDP 5353: echo, or
# "big:N" -> N bytes).
SERVER_PODS = ("ghost-ep1", "ghost-ep2", "ghost-ep3")
TCP_PORT, UDP_PORT = 7000, 5353


class Ring:
    """A capture socket with a TPACKET_V2 receive ring. The ring matters: the kernel copies a
    frame into it when the frame passes, while a plain packet socket queues a reference to
    buffers that a kernel node may still rewrite in place (seen with fragments: conntrack's
    reassembly and NAT changed frames after they were captured)."""

    FRAME = 1 << 17  # a 64 KB GSO frame and the headers
    COUNT = 48

    def __init__(self, dev):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        req = struct.pack("IIII", self.FRAME, self.COUNT, self.FRAME, self.COUNT)  # struct tpacket_req
        self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.ring = mmap.mmap(self.sock.fileno(), self.FRAME * self.COUNT, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.sock.bind((dev, ETH_P_ALL))
        self.i = 0

    def read(self):
        """[(packet type, frame)] waiting in the ring, oldest first."""
        out = []
        while True:
            off = self.i * self.FRAME
            # struct tpacket2_hdr: status, len, snaplen, mac, net, ...; sockaddr_ll at 32.
            status, _, snaplen, mac = struct.unpack_from("IIIH", self.ring, off)
            if not status & TP_STATUS_USER:
                return out
            pkttype = self.ring[off + 32 + 10]
            out.append((pkttype, bytes(self.ring[off + mac : off + mac + snaplen])))
            struct.pack_into("I", self.ring, off, 0)  # back to the kernel
            self.i = (self.i + 1) % self.COUNT

    def close(self):
        self.ring.close()
        self.sock.close()


class Lab:
    def __init__(self, prefix, mode, ucanal_bin=None, socket=None):
        self.prefix, self.mode = prefix, mode
        self.ucanal_bin, self.socket = ucanal_bin, socket
        self.caps, self.inj, self.closing, self.sent = {}, {}, [], []
        self.stop = threading.Event()

    def ns(self, member):
        return self.prefix + member

    def open(self):
        for point, (member, dev, _, _) in POINTS.items():
            with netns(self.ns(member)):
                self.caps[point] = Ring(dev)
        for name, (member, dev) in INJECT.items():
            with netns(self.ns(member)):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                s.bind((dev, 0))
                self.inj[name] = s
        for pod in SERVER_PODS:
            with netns(self.ns(pod)):
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind(("0.0.0.0", TCP_PORT))
                t.listen(64)
                t.settimeout(0.2)
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("0.0.0.0", UDP_PORT))
                u.settimeout(0.2)
            self.closing += [t, u]
            threading.Thread(target=self._tcp_server, args=(t,), daemon=True).start()
            threading.Thread(target=self._udp_server, args=(u,), daemon=True).start()

    def close(self):
        self.stop.set()
        time.sleep(0.3)
        for s in list(self.caps.values()) + list(self.inj.values()) + self.closing:
            s.close()

    def _tcp_server(self, lsock):
        while not self.stop.is_set():
            try:
                c, _ = lsock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._tcp_conn, args=(c,), daemon=True).start()

    def _tcp_conn(self, c):
        c.settimeout(5)
        try:
            while c.recv(65536):
                pass
            time.sleep(0.3)
        except OSError:
            pass
        c.close()

    def _udp_server(self, u):
        while not self.stop.is_set():
            try:
                data, peer = u.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            reply = b"R" * int(data[4:]) if data.startswith(b"big:") else data
            try:
                u.sendto(reply, peer)
            except OSError:
                pass

    # -- per scenario -----------------------------------------------------------------------

    def drain(self):
        self.sent = []
        for r in self.caps.values():
            r.read()

    def collect(self):
        """{point: [(direction, frame)]} of everything captured since the last drain."""
        out = {}
        for point, r in self.caps.items():
            _, _, out_label, in_label = POINTS[point]
            out[point] = [(out_label if t == PACKET_OUTGOING else in_label, d) for t, d in r.read()]
        return out

    def inject(self, where, frame):
        self.sent.append(frame)
        self.inj[where].send(frame)

    def sock(self, member, kind, sport=None):
        with netns(self.ns(member)):
            s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sport:
            s.bind(("0.0.0.0", sport))
        return s

    def udp(self, member, sport, dst, payloads, wait=0.6):
        """Sends each payload from a real socket in MEMBER; returns the replies as text."""
        s = self.sock(member, socket.SOCK_DGRAM, sport)
        for p in payloads:
            s.sendto(p, dst)
        replies, deadline = [], time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, src = s.recvfrom(65536)
                replies.append(f"{src[0]}:{src[1]} {len(data)} bytes")
            except TimeoutError:
                break
            except OSError as e:  # e.g. ECONNREFUSED after an ICMP error
                replies.append(f"error {e.strerror}")
        s.close()
        return sorted(replies)

    def tcp(self, member, sport, dst, close="fin"):
        """connect() from MEMBER; then close with a FIN (after shutdown, waiting for the
        server's FIN) or with a RST (SO_LINGER 0). Returns what the application saw."""
        s = self.sock(member, socket.SOCK_STREAM, sport)
        s.settimeout(2)
        try:
            s.connect(dst)
        except OSError as e:
            s.close()
            return f"connect: {e.strerror or e}"
        res = "connected"
        if close == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            s.shutdown(socket.SHUT_WR)
            try:
                res += ", eof" if s.recv(100) == b"" else ", data"
            except OSError as e:
                res += f", {e.strerror}"
        s.close()
        return res

    def run(self, member, *argv):
        r = subprocess.run(["ip", "netns", "exec", self.ns(member), *argv], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.ns(member)} failed: {r.stderr.strip()}")
        return r.stdout

    def ucanal(self, *argv):
        r = subprocess.run([self.ucanal_bin, "--socket", self.socket, *argv], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ucanal {' '.join(argv)} failed: {r.stderr.strip()}")
        return r.stdout
