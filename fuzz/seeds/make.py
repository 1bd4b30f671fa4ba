#!/usr/bin/env python3
"""Writes seed scripts for the `pipeline` fuzz target (the format is in
tests/testkit/src/fuzzing.rs): real exchanges between the hosts of examples/replay/node.toml, so
the fuzzer starts from frames that reach conntrack, policy and forwarding instead of having to
discover Ethernet, IP and a valid checksum first.

    python3 fuzz/seeds/make.py fuzz/corpus/pipeline     # then: cargo +nightly fuzz run pipeline
"""
import os
import struct
import sys

CLIENT, SERVER, DB, OUTSIDE = "198.18.1.10", "198.18.2.20", "198.18.2.21", "198.18.9.9"
C6, S6 = "2001:2:0:1::10", "2001:2:0:2::20"
CM, NM1 = "02:00:00:00:01:10", "02:00:00:00:01:01"
SM, NM2 = "02:00:00:00:02:20", "02:00:00:00:02:01"


def mac(m):
    return bytes(int(x, 16) for x in m.split(":"))


def ip4(a):
    return bytes(int(x) for x in a.split("."))


def ip6(a):
    import ipaddress
    return ipaddress.IPv6Address(a).packed


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, etype, payload, vlans=()):
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return mac(dst) + mac(src) + tags + struct.pack("!H", etype) + payload


def ipv4(src, dst, proto, l4, ttl=64):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, ttl, proto, 0, ip4(src), ip4(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + l4


def ipv6(src, dst, nh, l4, hops=64, ext=b""):
    return struct.pack("!IHBB", 6 << 28, len(ext) + len(l4), nh, hops) + ip6(src) + ip6(dst) + ext + l4


def udp(sp, dp, data=b"x"):
    return struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data


def tcp(sp, dp, seq, ack, flags, data=b""):
    return struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, 65535, 0, 0) + data


def icmp(t, c, rest, data=b""):
    return struct.pack("!BBH", t, c, 0) + rest + data


FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16


def c2s4(proto, l4, ttl=64, dst=SERVER):
    return eth(NM1, CM, 0x0800, ipv4(CLIENT, dst, proto, l4, ttl))


def s2c4(proto, l4, src=SERVER):
    return eth(NM2, SM, 0x0800, ipv4(src, CLIENT, proto, l4))


def frame(f):
    assert len(f) <= 255, len(f)
    return bytes([1, len(f)]) + f


def clock(s):
    return bytes([2, s])


SWAP, TICK = bytes([3, 0]), bytes([4, 8])

tcp_flow = [
    c2s4(6, tcp(40000, 80, 1000, 0, SYN)),
    s2c4(6, tcp(80, 40000, 5000, 1001, SYN | ACK)),
    c2s4(6, tcp(40000, 80, 1001, 5001, ACK)),
    c2s4(6, tcp(40000, 80, 1001, 5001, PSH | ACK, b"GET / HTTP/1.0\r\n\r\n")),
    s2c4(6, tcp(80, 40000, 5001, 1019, PSH | ACK, b"HTTP/1.0 200 OK\r\n\r\n")),
    c2s4(6, tcp(40000, 80, 1019, 5020, FIN | ACK)),
    s2c4(6, tcp(80, 40000, 5020, 1020, FIN | ACK)),
    c2s4(6, tcp(40000, 80, 1020, 5021, ACK)),
]
dns = [c2s4(17, udp(5353, 53, b"query")), s2c4(17, udp(53, 5353, b"answer"))]
quoted = ipv4(CLIENT, SERVER, 17, udp(5353, 53, b"query"))[:28]
ping = [
    c2s4(1, icmp(8, 0, struct.pack("!HH", 7, 1), b"ping")),
    s2c4(1, icmp(0, 0, struct.pack("!HH", 7, 1), b"ping")),
    s2c4(1, icmp(3, 3, b"\0\0\0\0", quoted)),
]
v6 = [
    eth(NM1, CM, 0x86DD, ipv6(C6, S6, 17, udp(5353, 53, b"q6"))),
    eth(NM2, SM, 0x86DD, ipv6(S6, C6, 17, udp(53, 5353, b"a6"))),
    eth(NM1, CM, 0x86DD, ipv6(C6, S6, 58, icmp(128, 0, struct.pack("!HH", 9, 1)))),
    # Hop-by-hop options, then a first fragment, then TCP.
    eth(NM1, CM, 0x86DD, ipv6(C6, S6, 0, tcp(40001, 80, 1, 0, SYN), ext=bytes([44, 0]) + b"\x01\x04\0\0\0\0" + bytes([6, 0, 0, 1, 0, 0, 0, 42]))),
]
odd = [
    c2s4(17, udp(5353, 53), ttl=1),  # expires here
    c2s4(17, udp(5353, 9999), dst=DB),  # denied by the db's tier
    c2s4(17, udp(5353, 53), dst=OUTSIDE),  # no route
    c2s4(6, tcp(40002, 80, 1, 1, ACK)),  # no flow: invalid
    c2s4(6, tcp(40000, 80, 1, 0, RST)),
    eth(NM1, CM, 0x0800, ipv4(CLIENT, SERVER, 17, udp(5353, 53)), vlans=[(0x8100, 5)]),
    eth(NM1, CM, 0x0800, ipv4(CLIENT, SERVER, 17, udp(5353, 53)), vlans=[(0x88A8, 5), (0x8100, 6)]),
    eth(NM1, CM, 0x0806, b"\0" * 28),  # ARP: not ours
]

seeds = {
    "tcp": b"".join(map(frame, tcp_flow)),
    "tcp-swap-age": b"".join(map(frame, tcp_flow[:4])) + SWAP + clock(40) + TICK + b"".join(map(frame, tcp_flow[4:])),
    "dns-ping-error": b"".join(map(frame, dns + ping)) + clock(10) + b"".join(map(frame, dns)),
    "ipv6": b"".join(map(frame, v6)),
    "odd": b"".join(map(frame, odd)) + TICK,
}
out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/pipeline"
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
