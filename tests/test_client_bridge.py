"""The TUN bridge without a device: fragments the kernel makes of what local programs send
are reassembled; what the tunnel cannot carry is counted, logged once per flow and answered
(Fragmentation Needed / Packet Too Big, Time Exceeded for a reassembly that timed out),
checked byte for byte against scapy."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6, fragment6
from scapy.layers.inet6 import IPv6ExtHdrFragment

from fastproxy.client.bridge import TunBridge
from fastproxy.client.fragments import Reassembler

ME4, ME6, DST4, DST6 = "100.96.0.2", "fd00:fa57::2", "203.0.113.130", "2001:db8:4::2"


class FakeTun:
    fd = None

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_batch(self, packets: list[bytes]) -> int:
        self.written.extend(packets)
        return len(packets)


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.drops: Counter[str] = Counter()

    def send_packets(self, packets: list[bytes]) -> None:
        self.sent.extend(packets)

    async def open_udp(self, destination: str, port: int) -> Any:
        raise ConnectionError("not in this test")


def make_bridge(now: list[float] | None = None) -> tuple[TunBridge, FakeTun, FakeClient]:
    tun, client = FakeTun(), FakeClient()
    clock = now or [0.0]
    return TunBridge(tun, client, clock=lambda: clock[0]), tun, client  # type: ignore[arg-type]


def test_fragments_of_an_echo_that_fits_are_reassembled_into_one_packet() -> None:
    bridge, tun, client = make_bridge()
    whole = IP(src=ME4, dst=DST4, id=99) / ICMP(type=8, id=7, seq=1) / bytes(i % 251 for i in range(1000))
    pieces = [raw(p) for p in fragment(whole, fragsize=400)]
    assert len(pieces) == 3
    bridge.from_device([pieces[2], pieces[0]])  # out of order, one missing: nothing yet
    assert client.sent == []
    bridge.from_device([pieces[1]])
    assert client.sent == [raw(whole)]  # the very packet, header checksum and all
    assert bridge.stats["reassembled"] == 1 and len(bridge.reassembly) == 0


def test_ipv6_fragments_are_reassembled_too() -> None:
    bridge, _, client = make_bridge()
    data = bytes(i % 251 for i in range(1000))
    whole = raw(IPv6(src=ME6, dst=DST6) / ICMPv6EchoRequest(id=7, seq=1, data=data))
    pieces = [raw(p) for p in fragment6(IPv6(src=ME6, dst=DST6) / IPv6ExtHdrFragment(id=5)
                                        / ICMPv6EchoRequest(id=7, seq=1, data=data), 500)]
    assert len(pieces) == 3
    bridge.from_device(pieces[::-1])
    assert client.sent == [whole]


@pytest.mark.parametrize("family", [4, 6])
def test_a_reassembled_echo_too_big_for_the_tunnel_is_answered_with_the_tunnel_mtu(
        family: int, caplog: pytest.LogCaptureFixture) -> None:
    """What the kernel makes of ``ping -s 1400`` through a device of MTU 1280."""
    bridge, tun, client = make_bridge()
    if family == 4:
        whole = raw(IP(src=ME4, dst=DST4, id=42) / ICMP(type=8, id=7, seq=1) / bytes(i % 251 for i in range(1400)))
        pieces = [raw(p) for p in fragment(IP(whole), fragsize=1256)]
        expected = raw(IP(src="192.0.0.8", dst=ME4, id=0, flags="DF", ttl=64)
                       / ICMP(type=3, code=4, nexthopmtu=1280) / whole[:576 - 28])
    else:
        data = bytes(i % 251 for i in range(1400))
        whole = raw(IPv6(src=ME6, dst=DST6) / ICMPv6EchoRequest(id=7, seq=1, data=data))
        pieces = [raw(p) for p in fragment6(IPv6(src=ME6, dst=DST6) / IPv6ExtHdrFragment(id=9)
                                            / ICMPv6EchoRequest(id=7, seq=1, data=data), 1280)]
        expected = raw(IPv6(src="fe80::1", dst=ME6, hlim=64) / ICMPv6PacketTooBig(mtu=1280) / whole[:1280 - 48])
    with caplog.at_level("WARNING", logger="fastproxy.client.bridge"):
        bridge.from_device(pieces)
        bridge.from_device(pieces)  # the same flow again: counted, not logged again
    assert client.sent == []
    assert tun.written == [expected, expected]
    assert client.drops["tun_too_big"] == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"dropping a {len(whole)}-byte packet from" in lines[0], lines
    assert "the tunnel carries at most 1280 bytes" in lines[0]


def test_reassembly_that_times_out_is_answered_with_time_exceeded_and_counted() -> None:
    now = [0.0]
    bridge, tun, client = make_bridge(now)
    whole = IP(src=ME4, dst=DST4, id=7) / ICMP(type=8, id=7, seq=1) / bytes(1000)
    first, second, _ = [raw(p) for p in fragment(whole, fragsize=400)]
    later_only = [raw(p) for p in fragment(IP(src=ME4, dst=DST4, id=8) / ICMP(type=8) / bytes(1000), fragsize=400)][1]
    bridge.from_device([first, second, later_only])
    now[0] = 10.0
    bridge.expire_fragments()
    # Only the datagram whose first fragment came is answered (RFC 792), quoting it.
    assert tun.written == [raw(IP(src="192.0.0.8", dst=ME4, id=0, flags="DF", ttl=64)
                               / ICMP(type=11, code=1) / first[:576 - 28])]
    assert client.drops["tun_fragment_timeout"] == 2 and len(bridge.reassembly) == 0


def test_reassembly_is_bounded_and_overlaps_are_refused() -> None:
    reassembler = Reassembler(max_datagrams=2, max_bytes=4000)
    pieces = [[raw(p) for p in fragment(IP(src=ME4, dst=DST4, id=i) / ICMP() / bytes(1000), fragsize=400)]
              for i in range(4)]
    assert reassembler.add(pieces[0][0], 0) is None and reassembler.add(pieces[1][0], 0) is None
    assert reassembler.add(pieces[2][0], 0) is None  # a third datagram: the table is full
    assert reassembler.drops["fragment_table_full"] == 1 and len(reassembler) == 2
    overlapping = raw(IP(src=ME4, dst=DST4, id=0, flags="MF", frag=25, proto=1) / bytes(400))  # at 200
    assert reassembler.add(overlapping, 0) is None
    assert reassembler.drops["fragment_overlap"] == 1 and len(reassembler) == 1
    big = Reassembler(max_bytes=1000)
    for piece in pieces[3]:
        assert big.add(piece, 0) is None
    assert big.drops["fragment_buffer_full"] == 1


def test_udp_reassembled_within_the_payload_limit_goes_on_larger_is_answered() -> None:
    """The tunnel carries 1280 bytes of UDP payload, more than a 1280-byte device packet
    holds (1252): such a datagram, fragmented by the kernel, is carried whole."""
    opened: list[tuple[str, int]] = []

    class Opener(FakeClient):
        async def open_udp(self, destination: str, port: int) -> Any:
            opened.append((destination, port))
            raise ConnectionError("enough")

    import asyncio

    async def main() -> tuple[TunBridge, FakeTun]:
        tun, client = FakeTun(), Opener()
        bridge = TunBridge(tun, client)  # type: ignore[arg-type]
        bridge._loop = asyncio.get_running_loop()
        fits = IP(src=ME4, dst=DST4, id=1) / UDP(sport=5000, dport=53) / bytes(1280)
        too_big = IP(src=ME4, dst=DST4, id=2) / UDP(sport=5000, dport=53) / bytes(1281)
        bridge.from_device([raw(p) for p in fragment(fits, fragsize=1256)])
        bridge.from_device([raw(p) for p in fragment(too_big, fragsize=1256)])
        await asyncio.sleep(0)
        return bridge, tun

    bridge, tun = asyncio.run(main())
    assert opened == [(DST4, 53)]
    assert bridge.drops["tun_too_big"] == 1
    assert IP(tun.written[0])[ICMP].type == 3 and IP(tun.written[0])[ICMP].code == 4


def test_icmp_errors_of_the_bridge_are_rate_limited() -> None:
    bridge, tun, client = make_bridge()
    big = raw(IP(src=ME4, dst=DST4) / ICMP(type=8) / bytes(1300))  # a device with a larger MTU
    bridge.from_device([big] * 50)
    assert len(tun.written) == 20  # the burst: twice the rate
    assert client.drops == {"tun_too_big": 50, "tun_icmp_error_rate_limited": 30}


def test_time_exceeded_type_in_v6_too() -> None:
    now = [0.0]
    bridge, tun, _ = make_bridge(now)
    first = raw(fragment6(IPv6(src=ME6, dst=DST6) / IPv6ExtHdrFragment(id=3) / ICMPv6EchoRequest(data=bytes(1000)),
                          500)[0])
    bridge.from_device([first])
    now[0] = 10.0
    bridge.expire_fragments()
    answer = IPv6(tun.written[0])
    assert answer.src == "fe80::1" and answer[ICMPv6TimeExceeded].code == 1


def test_udp_flow_refused_as_unreachable_is_answered_with_net_unreachable() -> None:
    """dig to an address no connector serves: the edge refuses the session (0x01), and the
    bridge tells the program with an ICMP error quoting its first packet."""
    import asyncio

    from fastproxy.datagram import RESPONSE_DESTINATION_UNREACHABLE
    from fastproxy.tunnel.client import UdpSessionRefused

    class Refusing(FakeClient):
        async def open_udp(self, destination: str, port: int) -> Any:
            raise UdpSessionRefused.from_response(RESPONSE_DESTINATION_UNREACHABLE, "no connector serves it",
                                                  f"{destination}:{port}")

    query = raw(IP(src=ME4, dst=DST4, id=5, flags="DF") / UDP(sport=40000, dport=53) / b"query")

    async def main() -> tuple[FakeTun, FakeClient]:
        tun, client = FakeTun(), Refusing()
        bridge = TunBridge(tun, client)  # type: ignore[arg-type]
        bridge._loop = asyncio.get_running_loop()
        bridge.from_device([query])
        for _ in range(10):
            await asyncio.sleep(0)
        return tun, client

    tun, client = asyncio.run(main())
    assert tun.written == [raw(IP(src="192.0.0.8", dst=ME4, id=0, flags="DF", ttl=64)
                               / ICMP(type=3, code=0) / query)]
    assert client.drops["tun_udp_session_refused"] == 1
