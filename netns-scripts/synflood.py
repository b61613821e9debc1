#!/usr/bin/env python3
"""A bounded SYN flood for the conntrack tests: raw TCP SYNs to DST:PORT from sources
in 198.18.0.0/15 (RFC 2544's benchmark range, never a real host), for at most SECONDS
and at most COUNT packets. Run it only inside a lab namespace.

  synflood.py DST PORT SECONDS COUNT [SEED]   prints the number of packets sent
                                               (SEED, default 11: another one, other flows)
"""
import random
import socket
import struct
import sys
import time


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def syn(src, dst, sport, dport, seq):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + tcp


def main():
    dst, port, seconds, count = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 11
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    d = socket.inet_aton(dst)
    stop = time.monotonic() + seconds
    n = 0
    rnd = random.Random(seed)
    while n < count and time.monotonic() < stop:
        src = struct.pack("!I", 0xC6120000 | rnd.getrandbits(17))
        try:
            s.sendto(syn(src, d, rnd.randrange(1024, 65535), port, rnd.getrandbits(32)), (dst, 0))
        except OSError:
            time.sleep(0.001)
            continue
        n += 1
    print(n)


if __name__ == "__main__":
    main()
