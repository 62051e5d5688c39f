"""UDP packets for the TUN bridge, checked against scapy."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from fastproxy.client.udp_packets import build_udp_packet, parse_udp_packet


@pytest.mark.parametrize(("src", "dst"), [("10.0.0.53", "100.96.0.2"), ("fd12::53", "fd00:fa57::2")])
@pytest.mark.parametrize("payload", [b"", b"x", b"hello world" * 50])
def test_build_matches_scapy_and_parses_back(src: str, dst: str, payload: bytes) -> None:
    packet = build_udp_packet(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, 53, 40000, payload)
    layer = IP if ":" not in src else IPv6
    parsed = layer(packet)
    expected = bytes(layer(src=src, dst=dst, **({"flags": "DF", "ttl": 64, "id": 0} if layer is IP else {"hlim": 64}))
                     / UDP(sport=53, dport=40000) / payload)
    assert packet == expected
    assert parsed[UDP].chksum == layer(expected)[UDP].chksum
    udp = parse_udp_packet(packet)
    assert udp is not None
    assert (udp.src_port, udp.dst_port, udp.payload) == (53, 40000, payload)
    assert udp.src == ipaddress.ip_address(src).packed and udp.dst == ipaddress.ip_address(dst).packed


def test_parse_rejects_other_and_broken_packets() -> None:
    good = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"data")
    assert parse_udp_packet(good) is not None
    assert parse_udp_packet(b"") is None
    assert parse_udp_packet(good[:24]) is None  # truncated
    assert parse_udp_packet(bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / (b"x" * 20))) is None
    assert parse_udp_packet(bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP() / b"x")) is None
    assert parse_udp_packet(bytes(IPv6(src="::1", dst="::1") / UDP(sport=1, dport=2) / b"d")) is not None
    assert parse_udp_packet(b"\x70" + bytes(60)) is None
