"""Write the seed corpus of every fuzz target into tests/fuzz/corpus/<target>/ (committed).

    python -m tests.fuzz.seeds

Seeds are valid inputs of each decoder and a few near-misses, built with the project's
own encoders (the pure-Python twin, so the seeds do not depend on the compiled core).
Files are named by the SHA-1 of their content, like libFuzzer's, so running this again
adds nothing that is already there. Crash reproducers go in tests/fuzz/crashes/<target>/.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from fastproxy import _purepy as twin
from fastproxy.client.udp_packets import build_udp_packet
from fastproxy.tunnel import control as ctl

CORPUS = Path(__file__).resolve().parent / "corpus"

__all__ = ["CORPUS", "seeds", "write"]


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _frame(pieces: list[bytes]) -> bytes:
    """pieces in the chunks() format of tests/fuzz/targets.py."""
    return b"".join(bytes([len(p)]) + p for p in pieces)


C4, C6 = _ip("100.64.0.2"), _ip("fd00:64::2")
D4, D6 = _ip("10.10.10.10"), _ip("fd00::a0a:a0a")
R4 = _ip("192.0.2.1")
RID = bytes(range(16))


def _echo4(echo_id: int = 0x1234, seq: int = 1, ttl: int = 64, payload: bytes = b"ping") -> bytes:
    return twin.build_echo(C4, D4, echo_id, seq, payload, ttl=ttl)


def _echo6(echo_id: int = 0x1234, seq: int = 1, ttl: int = 64, payload: bytes = b"ping") -> bytes:
    return twin.build_echo(C6, D6, echo_id, seq, payload, ttl=ttl)


def _packets() -> list[bytes]:
    e4, e6 = _echo4(), _echo6()
    reply4 = twin.build_echo(D4, C4, 0x1234, 1, b"ping", reply=True)
    reply6 = twin.build_echo(D6, C6, 0x1234, 1, b"ping", reply=True)
    options4 = bytearray(e4)
    options4[0] = 0x46
    options4 = options4[:20] + b"\x01\x01\x01\x00" + options4[20:]
    options4[2:4] = len(options4).to_bytes(2, "big")
    hop_by_hop = bytearray(e6[:40]) + bytes([58, 0]) + bytes(6) + e6[40:]
    hop_by_hop[6] = 0
    hop_by_hop[4:6] = (len(hop_by_hop) - 40).to_bytes(2, "big")
    return [
        e4, e6, reply4, reply6, _echo4(ttl=1), _echo6(ttl=0), _echo4(payload=bytes(1000)),
        twin.build_time_exceeded(R4, e4), twin.build_time_exceeded(_ip("2001:db8::1"), e6),
        twin.build_destination_unreachable(R4, e4, 1), twin.build_destination_unreachable(_ip("2001:db8::1"), e6, 4),
        twin.build_packet_too_big(R4, e4, 1280), twin.build_packet_too_big(_ip("2001:db8::1"), e6, 1280),
        twin.build_time_exceeded(R4, e4[:28]), bytes(options4), bytes(hop_by_hop),
        e4[:19], e6[:39], b"", b"\x45", b"\x60" + bytes(39),
    ]


def _datagrams() -> list[bytes]:
    e4, e6 = _echo4(), _echo6()
    return [
        twin.encode_icmp(e4), twin.encode_icmp(e6),
        twin.encode_udp_registration(RID, D4, 53, 30),
        twin.encode_udp_registration(RID, D6, 7007, 120, traced=True),
        twin.encode_udp_registration(RID, D4, 53, 30, payload=b"query"),
        twin.encode_udp_registration(RID, D6, 53, 0, traced=True, payload=bytes(1280)),
        twin.encode_udp_payload(RID, b""), twin.encode_udp_payload(RID, b"hello"),
        twin.encode_udp_payload(RID, bytes(1280)),
        twin.encode_registration_response(RID, twin.RESPONSE_OK),
        twin.encode_registration_response(RID, twin.RESPONSE_DESTINATION_UNREACHABLE, "no route to 10.0.0.1"),
        twin.encode_registration_response(RID, twin.RESPONSE_TOO_MANY_ACTIVE_FLOWS, "caf\u00e9 \u2603"),
        twin.encode_registration_response(RID, twin.RESPONSE_ERROR, "x" * 1260),
        b"", b"\x00", b"\x02", b"\x04", b"\x00\x08" + bytes(24), b"\x03\x07" + bytes(18),
        b"\x03\x00" + RID + b"\x00\x02\xc3\x28",
    ]


def _controls() -> list[bytes]:
    nets = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "203.0.113.128/25", "fd12::/48", "::/0", "0.0.0.0/0"))
    messages: list[ctl.ControlMessage] = [
        ctl.Hello(ctl.ROLE_CLIENT, "client-1"), ctl.Hello(ctl.ROLE_CONNECTOR, "t" * 1024), ctl.Hello(ctl.ROLE_CLIENT),
        ctl.Announce(nets), ctl.Announce(()),
        ctl.Welcome(ipaddress.IPv4Address("100.96.0.2"), ipaddress.IPv6Address("fd00:fa57::2"), nets),
        ctl.Welcome(None, None, ()),
        ctl.Error(ctl.ERROR_AUTHENTICATION_FAILED, "bad token"), ctl.Error(ctl.ERROR_POLICY, "caf\u00e9"),
        ctl.ClientGone(ipaddress.IPv4Address("100.96.0.2"), None),
    ]
    frames = [ctl.encode_message(m) for m in messages]
    # Version 1 framings too: what a version-1 peer sends, and what a version-2 edge speaks to it.
    v1_frames = [ctl.encode_message(m, 1) for m in messages]
    routes = ctl.encode_message(ctl.RouteUpdate(nets))
    newer_hello = bytearray(frames[0])
    newer_hello[2] = 9  # a HELLO from a future version: read, and negotiated down
    routes_in_v1 = bytearray(routes)
    routes_in_v1[2] = 1  # ROUTES does not exist in version 1: unknown_message_type
    return [*frames, b"".join(frames), frames[0] + frames[3][:7], b"\x00\x01\x01", b"\xff\xff\x01\x01",
            b"\x00\x02\x02\x01", b"\x00\x02\x01\x09", frames[3][:-1] + b"\x01",
            *v1_frames, b"".join(v1_frames), routes, ctl.encode_message(ctl.RouteUpdate(())),
            frames[5] + routes + frames[3], bytes(newer_hello), bytes(routes_in_v1), b"\x00\x02\x02\x07"]


def _nat_inputs() -> list[bytes]:
    e4, e6 = _echo4(), _echo6()
    # Replies as the raw sockets deliver them: a whole IPv4 packet; an ICMPv6 message alone.
    reply4 = twin.build_echo(D4, R4, 0x1234, 1, b"ping", reply=True)
    reply6 = twin.build_echo(D6, C6, 0x1234, 1, b"ping", reply=True)[40:]
    error4 = twin.build_time_exceeded(R4, twin.build_echo(R4, D4, 0x1234, 1, b"ping", ttl=1))
    error6 = twin.build_time_exceeded(_ip("2001:db8::1"), twin.build_echo(C6, D6, 0x1234, 1, b"ping"))[40:]
    outside = twin.build_echo(C4, _ip("198.51.100.1"), 1, 1, b"")
    return [
        bytes([0]) + _frame([e4, reply4]), bytes([1]) + _frame([e6, reply6]),
        bytes([0]) + _frame([e4, error4]), bytes([1]) + _frame([e6, error6]),
        bytes([6]) + _frame([e4, reply4, _echo4(0x99), reply4]), bytes([7]) + _frame([e6, reply6, _echo6(7), b""]),
        bytes([0]) + _frame([outside, reply4, _echo4(ttl=1), b"\x45"]),
        bytes([0]) + _frame([_echo4(i) for i in range(12)]), bytes([0x81]) + _frame([e6, reply6[:7]]),
    ]


def _fragments(packet: bytes, size: int, ident: int = 7) -> list[bytes]:
    """``packet`` (IPv4 without options, or IPv6 without extension headers) cut into
    fragments of at most ``size`` data bytes (a multiple of 8), as the kernel sends them."""
    v6 = packet[0] >> 4 == 6
    header, payload = (packet[:40], packet[40:]) if v6 else (packet[:20], packet[20:])
    pieces = []
    for offset in range(0, len(payload), size):
        data = payload[offset : offset + size]
        more = offset + size < len(payload)
        if v6:
            fixed = bytearray(header)
            fixed[4:6] = (8 + len(data)).to_bytes(2, "big")
            fixed[6] = 44
            frag = bytes([header[6], 0]) + (offset | more).to_bytes(2, "big") + ident.to_bytes(4, "big")
            pieces.append(bytes(fixed) + frag + data)
        else:
            h = bytearray(header)
            h[2:4] = (20 + len(data)).to_bytes(2, "big")
            h[4:6] = ident.to_bytes(2, "big")
            h[6:8] = ((0x2000 if more else 0) | offset // 8).to_bytes(2, "big")
            h[10:12] = b"\0\0"
            h[10:12] = _sum16(h).to_bytes(2, "big")
            pieces.append(bytes(h) + data)
    return pieces


def _sum16(data: bytes | bytearray) -> int:
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _bridge_inputs() -> list[bytes]:
    u4 = build_udp_packet(C4, D4, 40000, 53, b"query")
    u6 = build_udp_packet(C6, D6, 40000, 7007, b"hello")
    u4_refused = build_udp_packet(C4, D4, 40001, 55, b"x")
    tcp = bytearray(u4)
    tcp[9] = 6
    fragment = bytearray(u4)
    fragment[6] = 0x20
    return [
        _frame([u4]), _frame([u6]), _frame([_echo4(), _echo6()]), _frame([u4, u4, u6, _echo4()]),
        _frame([u4_refused, u4]), _frame([bytes(tcp), bytes(fragment), b"", b"\x45" + bytes(19)]),
        _frame([twin.build_echo(C4, D4, 1, 1, b"", reply=True), _echo6()[:41]]),
        _frame([build_udp_packet(C4, D4, p, 53, b"") for p in range(40000, 40006)]),
        _frame([build_udp_packet(C6, D6, 1, 2, bytes(200))]),
        # Fragments (the bridge reassembles them): in order, out of order, one missing
        # (held, then timed out: Time Exceeded), overlapping, and whole packets too big
        # for the tunnel once reassembled (answered with Fragmentation Needed / Packet Too Big).
        _frame(_fragments(_echo4(payload=bytes(300)), 160)),
        _frame(_fragments(_echo6(payload=bytes(300)), 160)[::-1]),
        _frame(_fragments(build_udp_packet(C4, D4, 40000, 53, bytes(400)), 200)),
        _frame(_fragments(build_udp_packet(C6, D6, 40000, 53, bytes(400)), 200, ident=9)[1:]),
        _frame(_fragments(_echo4(payload=bytes(300)), 160)[:1]),
        _frame([_fragments(_echo4(payload=bytes(300)), 160)[0], _fragments(_echo4(payload=bytes(300)), 80)[1],
                *_fragments(_echo4(payload=bytes(300)), 160)[1:]]),
        _frame(_fragments(_echo4(payload=bytes(1400)), 232)),
        _frame(_fragments(_echo6(payload=bytes(1400)), 200)),
    ]


_CONFIGS = [
    """[edge]
listen = "0.0.0.0:4433"
client_token = ["env:FP_CLIENT_TOKEN"]
connector_token = ["@/etc/fastproxy/connector.tokens"]
client_policy = ["alice=10.0.0.0/8,fd12::/48"]
client_pool = ["100.96.0.0/16", "fd00:fa57::/64"]
client_allow = ["10.0.0.0/8"]
max_connections_per_token = 8
metrics = "127.0.0.1:9100"
log_format = "json"
verbose = true
""",
    """[connector]
edge = "edge.example.net:4433"
token = "env:FP_CONNECTOR_TOKEN"
route = ["10.0.0.0/8", "fd12::/48"]
pin = "3f2a"
backend = "raw"
""",
    """[client]
edge = "[2001:db8::1]:4433"
token = "@/etc/fastproxy/client.token"
ca = "/etc/fastproxy/ca.pem"
tun = "fp%d"
""",
    '[client]\nedge = "e:1"\ntoken = "t"\ninsecure = true\npin = "ab"\n',
    '[connector]\nedge = "e:1"\ntoken = "t"\nroute = ["10.0.0.1/8"]\ninsecure = true\n',
    '[edge]\nlisten = "0.0.0.0:99999"\nconnector_token = "x"\n',
    '[edge]\nlistn = "x"\n', 'edge = 1\n', '[connector\n', '[edge]\nmax_connections_per_token = true\n',
    '[edge.sub]\nx = 1\n[[client]]\n', '# only a comment\n', '',
]


def seeds() -> dict[str, list[bytes]]:
    """The seed inputs of every target, by target name."""
    return {
        "packet": _packets(),
        "datagram": _datagrams(),
        "control": _controls(),
        "nat": _nat_inputs(),
        "bridge": _bridge_inputs(),
        "config": [text.encode() for text in _CONFIGS] + ['[edge]\nlisten = "caf\u00e9:1"\n'.encode("latin-1")],
    }


def write(root: Path = CORPUS) -> int:
    """Write every seed under ``root``; returns how many files were new."""
    new = 0
    for target, inputs in seeds().items():
        directory = root / target
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            path = directory / hashlib.sha1(data).hexdigest()
            if not path.exists():
                path.write_bytes(data)
                new += 1
    return new


if __name__ == "__main__":
    print(f"{write()} new seed files under {CORPUS}")
