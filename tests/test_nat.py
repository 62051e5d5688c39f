"""EchoNat: batched source NAT of ICMP echo, on the compiled core and the twin.

scapy builds every expected packet independently (with its own checksums).
"""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPv6

from fastproxy.errors import MalformedPacket

from .conftest import IMPLEMENTATIONS, load_impl, require_root

CLIENT4, CLIENT6 = "100.64.0.2", "fd00:64::2"
CONNECTOR4, CONNECTOR6 = "198.51.100.1", "2001:db8:1::1"
TARGET4, TARGET6 = "192.0.2.8", "2001:db8:2::8"
ROUTER4, ROUTER6 = "203.0.113.1", "2001:db8:3::1"
ALLOWED = [(ipaddress.ip_address("192.0.2.0").packed, 24), (ipaddress.ip_address("2001:db8:2::").packed, 48)]
PAYLOAD = bytes(range(56))


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def echo_request(src: str, dst: str, echo_id: int, seq: int = 1, ttl: int = 64, payload: bytes = PAYLOAD) -> bytes:
    if ":" in dst:
        return raw(IPv6(src=src, dst=dst, hlim=ttl) / ICMPv6EchoRequest(id=echo_id, seq=seq, data=payload))
    return raw(IP(src=src, dst=dst, ttl=ttl, id=0, flags="DF") / ICMP(type=8, id=echo_id, seq=seq) / payload)


def make(core: ModuleType, capacity: int = 64, **table_args: object) -> tuple[object, object, object, object]:
    table = core.FlowTable(capacity, **table_args)
    return table, core.EchoNat(table, ALLOWED), core.PacketBatch(64), core.PacketBatch(64)


def received(core: ModuleType, items: list[tuple[bytes, tuple | None, int]]) -> object:
    """A batch as a raw socket would have filled it."""
    batch = core.PacketBatch(max(1, len(items)))
    for i, (data, address, ttl) in enumerate(items):
        batch.set(i, data, address=address, ttl=ttl)
    batch.count = len(items)
    return batch


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_queues_icmp_message_with_assigned_id(impl: ModuleType, family: int) -> None:
    table, nat, out4, out6 = make(impl)
    client, target = (CLIENT4, TARGET4) if family == 4 else (CLIENT6, TARGET6)
    packets = [echo_request(client, target, 0x1234, seq=s, ttl=64) for s in (1, 2)]
    packets.append(echo_request(client, target, 0x4321, seq=9, ttl=7))  # a second flow
    n4, n6, refused = nat.outbound(5, packets, out4, out6, 1.0)
    assert refused == []
    assert (n4, n6) == ((3, 0) if family == 4 else (0, 3))
    out = out4 if family == 4 else out6
    assert out.count == 3
    assert nat.flows_created == 2 and len(table) == 2
    for slot, (echo_id, seq, ttl) in enumerate([(0x1234, 1, 64), (0x1234, 2, 64), (0x4321, 9, 7)]):
        assigned = table.lookup(5, packed(client), packed(target), echo_id)
        message = bytes(out.data(slot))
        if family == 4:
            assert message == raw(ICMP(type=8, id=assigned, seq=seq) / PAYLOAD)  # checksum updated right
            assert out.address(slot) == (target, 0)
        else:
            original = echo_request(client, target, echo_id, seq)[40:]
            assert message[4:6] == assigned.to_bytes(2, "big")
            assert message[:2] == original[:2] and message[6:] == original[6:]
            assert out.address(slot) == (target, 0, 0, 0)
        assert out.ttl(slot) == ttl - 1  # TTL - 1 goes on the wire


def test_outbound_refusals_name_their_reason(impl: ModuleType) -> None:
    table, nat, out4, out6 = make(impl, capacity=2, max_per_connection=1)
    bad_checksum = bytearray(echo_request(CLIENT4, TARGET4, 1))
    bad_checksum[-1] ^= 0xFF
    reply = raw(IP(src=CLIENT4, dst=TARGET4) / ICMP(type=0, id=1, seq=1))
    packets = [
        bytes(bad_checksum),
        reply,
        echo_request(CLIENT4, "198.51.100.77", 1),  # outside the allowed prefixes
        echo_request(CLIENT4, TARGET4, 1, ttl=1),
        echo_request(CLIENT6, TARGET6, 1, ttl=0),
        echo_request(CLIENT4, TARGET4, 2),  # conn 1's only flow
        echo_request(CLIENT4, TARGET4, 3),  # conn 1's second flow: per-connection limit
        b"",
    ]
    n4, n6, refused = nat.outbound(1, packets, out4, out6, 1.0)
    assert (n4, n6) == (1, 0)
    assert refused == [
        (0, "bad_icmp_checksum"),
        (1, "not_echo_request"),
        (2, "destination_not_allowed"),
        (3, "ttl_expired"),
        (4, "ttl_expired"),
        (6, "flow_limit_connection"),
        (7, "empty"),
    ]
    assert nat.outbound(2, [echo_request(CLIENT4, TARGET4, 4)], out4, out6, 1.0)[2] == []
    assert nat.outbound(3, [echo_request(CLIENT4, TARGET4, 5)], out4, out6, 1.0)[2] == [(0, "flow_limit_global")]
    assert out4.count == 0 and len(table) == 2


def test_outbound_too_large_for_slot_and_too_many_packets(impl: ModuleType) -> None:
    table, nat, _, _ = make(impl)
    small4, small6 = impl.PacketBatch(2, slot_size=32), impl.PacketBatch(2, slot_size=32)
    assert nat.outbound(1, [echo_request(CLIENT4, TARGET4, 1)], small4, small6, 1.0) == (0, 0, [(0, "packet_too_large")])
    assert len(table) == 0
    with pytest.raises(ValueError, match="do not fit"):
        nat.outbound(1, [b""] * 3, small4, small6, 1.0)


def test_outbound_takes_any_buffer(impl: ModuleType) -> None:
    _, nat, out4, out6 = make(impl)
    packet = echo_request(CLIENT4, TARGET4, 7)
    assert nat.outbound(1, (bytearray(packet), memoryview(packet)), out4, out6, 1.0)[:2] == (2, 0)


@pytest.mark.parametrize("network, bits", [("192.0.2.129", 25), ("192.0.2.77", 0), ("2001:db8:2::8", 33)])
def test_prefix_host_bits_are_ignored(impl: ModuleType, network: str, bits: int) -> None:
    # (192.0.2.129, 25) allows 192.0.2.128/25, as ipaddress.ip_network(strict=False) reads it.
    nat = impl.EchoNat(impl.FlowTable(8), [(packed(network), bits)])
    out4, out6 = impl.PacketBatch(4), impl.PacketBatch(4)
    inside = [echo_request(CLIENT4, "192.0.2.200", 1), echo_request(CLIENT6, "2001:db8:2::1", 2)]
    outside = [echo_request(CLIENT4, "192.0.2.100", 3), echo_request(CLIENT6, "2001:db8:3::1", 4)]
    n4, n6, refused = nat.outbound(1, inside + outside, out4, out6, 1.0)
    allowed = [p for p in inside + outside
               if ipaddress.ip_address(parse_dst(p)) in ipaddress.ip_network(f"{network}/{bits}", strict=False)]
    assert n4 + n6 == len(allowed) > 0
    assert [reason for _, reason in refused] == ["destination_not_allowed"] * (4 - len(allowed))


def parse_dst(packet: bytes) -> str:
    return str(IP(packet).dst) if packet[0] >> 4 == 4 else str(IPv6(packet).dst)


def test_bad_prefixes_rejected(impl: ModuleType) -> None:
    table = impl.FlowTable(8)
    with pytest.raises(ValueError, match="prefix"):
        impl.EchoNat(table, [(b"\x01\x02\x03", 8)])
    with pytest.raises(ValueError, match="prefix"):
        impl.EchoNat(table, [(bytes(4), 33)])


@pytest.mark.parametrize("family", [4, 6])
def test_inbound_echo_reply_restores_client_view(impl: ModuleType, family: int) -> None:
    table, nat, out4, out6 = make(impl)
    client, target, connector = (CLIENT4, TARGET4, CONNECTOR4) if family == 4 else (CLIENT6, TARGET6, CONNECTOR6)
    nat.outbound(9, [echo_request(client, target, 0x0BAD, seq=3)], out4, out6, 1.0)
    assigned = table.lookup(9, packed(client), packed(target), 0x0BAD)
    if family == 4:
        wire = raw(IP(src=target, dst=connector, ttl=60, id=777) / ICMP(type=0, id=assigned, seq=3) / PAYLOAD)
        batch = received(impl, [(wire, (target, 0), 60)])
        expected = raw(IP(src=target, dst=client, ttl=60, id=777) / ICMP(type=0, id=0x0BAD, seq=3) / PAYLOAD)
    else:
        # A raw ICMPv6 socket delivers the message alone; its checksum was for our address.
        wire = raw(IPv6(src=target, dst=connector) / ICMPv6EchoReply(id=assigned, seq=3, data=PAYLOAD))[40:]
        batch = received(impl, [(wire, (target, 0, 0, 0), 60)])
        expected = raw(IPv6(src=target, dst=client, hlim=60) / ICMPv6EchoReply(id=0x0BAD, seq=3, data=PAYLOAD))
    assert nat.inbound(batch, family, 2.0) == [(9, expected)]
    assert nat.take_drops() == {}


@pytest.mark.parametrize("family", [4, 6])
def test_inbound_router_error_translated_for_traceroute(impl: ModuleType, family: int) -> None:
    table, nat, out4, out6 = make(impl)
    client, target, connector, router = (
        (CLIENT4, TARGET4, CONNECTOR4, ROUTER4) if family == 4 else (CLIENT6, TARGET6, CONNECTOR6, ROUTER6)
    )
    nat.outbound(4, [echo_request(client, target, 0x7777, seq=12, ttl=3)], out4, out6, 1.0)
    assigned = table.lookup(4, packed(client), packed(target), 0x7777)
    if family == 4:
        def quote(src: str, echo_id: int) -> bytes:
            return raw(IP(src=src, dst=target, ttl=1, id=99, flags="DF") / ICMP(type=8, id=echo_id, seq=12) / PAYLOAD)

        wire = raw(IP(src=router, dst=connector, ttl=250) / ICMP(type=11, code=0) / quote(connector, assigned))
        batch = received(impl, [(wire, (router, 0), 250)])
        expected = raw(IP(src=router, dst=client, ttl=250) / ICMP(type=11, code=0) / quote(client, 0x7777))
    else:
        def quote(src: str, echo_id: int) -> bytes:
            return raw(IPv6(src=src, dst=target, hlim=1) / ICMPv6EchoRequest(id=echo_id, seq=12, data=PAYLOAD))

        wire = raw(IPv6(src=router, dst=connector) / ICMPv6TimeExceeded(code=0) / quote(connector, assigned))[40:]
        batch = received(impl, [(wire, (router, 0, 0, 0), 63)])
        expected = raw(IPv6(src=router, dst=client, hlim=63) / ICMPv6TimeExceeded(code=0) / quote(client, 0x7777))
    assert nat.inbound(batch, family, 2.0) == [(4, expected)]


def test_inbound_drops_are_counted(impl: ModuleType) -> None:
    table, nat, out4, out6 = make(impl)
    nat.outbound(1, [echo_request(CLIENT4, TARGET4, 5)], out4, out6, 1.0)
    assigned = table.lookup(1, packed(CLIENT4), packed(TARGET4), 5)
    good = raw(IP(src=TARGET4, dst=CONNECTOR4) / ICMP(type=0, id=assigned, seq=1) / PAYLOAD)
    unknown = raw(IP(src=TARGET4, dst=CONNECTOR4) / ICMP(type=0, id=assigned ^ 1, seq=1) / PAYLOAD)
    spoofed = raw(IP(src="192.0.2.9", dst=CONNECTOR4) / ICMP(type=0, id=assigned, seq=1) / PAYLOAD)
    bad = bytearray(good)
    bad[-1] ^= 1
    request = raw(IP(src=CONNECTOR4, dst=TARGET4) / ICMP(type=8, id=assigned, seq=1))
    batch = received(impl, [(x, (TARGET4, 0), 64) for x in (unknown, spoofed, bytes(bad), request, b"\x45", good)])
    replies = nat.inbound(batch, 4, 2.0)
    assert [conn for conn, _ in replies] == [1]
    assert nat.take_drops() == {
        "reply_unknown_flow": 2,
        "reply_bad_checksum": 1,
        "reply_not_echo_or_error": 1,
        "reply_malformed": 1,
    }
    assert nat.take_drops() == {}
    with pytest.raises(ValueError):
        nat.inbound(batch, 5, 2.0)


def test_inbound_truncated_slot_dropped(impl: ModuleType) -> None:
    _, nat, _, _ = make(impl)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.sendto(bytes(100), rx.getsockname())
        select.select([rx], [], [], 2.0)
        batch = impl.PacketBatch(4, slot_size=16)
        assert batch.recv(rx) == 1 and batch.truncated(0)
    assert nat.inbound(batch, 4, 1.0) == []
    assert nat.take_drops() == {"reply_truncated": 1}


def test_inbound_v6_message_too_long_for_an_ipv6_header_dropped(impl: ModuleType) -> None:
    # A slot may hold more than an IPv6 payload length can say (slot_size up to 256 KiB).
    _, nat, _, _ = make(impl)
    batch = impl.PacketBatch(2, slot_size=70000)
    for i, size in enumerate((65536, 70000)):
        batch.set(i, bytes([129]) + bytes(size - 1), address=(TARGET6, 0, 0, 0), ttl=64)
    batch.count = 2
    assert nat.inbound(batch, 6, 1.0) == []
    assert nat.take_drops() == {"reply_malformed": 2}


@settings(max_examples=150, deadline=None)
@given(
    packets=st.lists(
        st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(-1, 40)),
        min_size=1,
        max_size=20,
    )
)
def test_compiled_and_twin_agree(packets: list[tuple[bool, int, int, int, int]]) -> None:
    results = []
    for name in IMPLEMENTATIONS:
        core = load_impl(name)
        table, nat, out4, out6 = make(core, capacity=16, max_per_connection=8)
        batch = []
        for v6, host, echo_id, ttl, flip in packets:
            target = (TARGET6 if v6 else TARGET4)[:-1] + str(host)
            packet = bytearray(echo_request(CLIENT6 if v6 else CLIENT4, target, echo_id, ttl=ttl))
            if 0 <= flip < len(packet):
                packet[flip] ^= 0x10
            batch.append(bytes(packet))
        n4, n6, refused = nat.outbound(3, batch, out4, out6, 1.0)
        slots = [(bytes(o.data(i)), o.address(i), o.ttl(i)) for o, n in ((out4, n4), (out6, n6)) for i in range(n)]
        results.append((n4, n6, refused, slots, len(table), nat.flows_created))
    assert results[0] == results[1]


@pytest.mark.privileged
@pytest.mark.parametrize("family", [4, 6])
def test_raw_socket_round_trip_on_loopback(impl: ModuleType, family: int) -> None:
    """Client packets -> EchoNat -> raw socket -> the kernel's echo reply -> EchoNat -> the client."""
    require_root("raw ICMP sockets")
    if family == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL (Linux)
        target, client, allowed = "127.0.0.1", CLIENT4, [(packed("127.0.0.0"), 8)]
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        target, client, allowed = "::1", CLIENT6, [(packed("::1"), 128)]
    with sock:
        sock.setblocking(False)
        table = impl.FlowTable(64)
        nat = impl.EchoNat(table, allowed)
        out4, out6, rx = impl.PacketBatch(64), impl.PacketBatch(64), impl.PacketBatch(64)
        requests = [echo_request(client, target, 0x2000 + i % 2, seq=i, ttl=30) for i in range(16)]
        n4, n6, refused = nat.outbound(11, requests, out4, out6, time.monotonic())
        assert refused == [] and n4 + n6 == 16
        assert (out4 if family == 4 else out6).send(sock, 16) == 16
        replies: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 3.0
        while len(replies) < 16 and time.monotonic() < deadline:
            select.select([sock], [], [], 0.2)
            if rx.recv(sock):
                replies += nat.inbound(rx, family, time.monotonic())
    assert len(replies) == 16
    seen = set()
    for conn, packet in replies:
        info = impl.parse_packet(packet)  # every checksum verifies
        assert conn == 11 and info.dst == packed(client) and info.src == packed(target)
        assert info.icmp_type == (0 if family == 4 else 129)
        assert info.echo_id == 0x2000 + info.echo_seq % 2
        assert info.ttl > 0
        seen.add(info.echo_seq)
    assert seen == set(range(16))
    # our own requests (seen by a v4 raw socket on loopback) are counted, never delivered
    assert set(nat.take_drops()) <= {"reply_not_echo_or_error"}


def bsd_form(packet: bytes, subtract_header: bool, df_host_order: bool) -> bytes:
    """The IPv4 header as a BSD/macOS ICMP socket hands it over: ip_len (maybe without the
    header) and ip_off in little-endian host order, the header checksum left as it was."""
    header = bytearray(packet)
    length = len(packet) - (20 if subtract_header else 0)
    header[2:4] = length.to_bytes(2, "little")
    if df_host_order:
        header[6:8] = (0x4000).to_bytes(2, "little")
    return bytes(header)


@pytest.mark.parametrize("subtract_header", [False, True])
@pytest.mark.parametrize("df", [False, True])
def test_bsd_ipv4_headers_normalized_for_the_darwin_backend(
    impl: ModuleType, subtract_header: bool, df: bool
) -> None:
    reply = raw(IP(src=TARGET4, dst=CONNECTOR4, ttl=60, id=4321, flags="DF" if df else 0)
                / ICMP(type=0, id=77, seq=3) / PAYLOAD)
    ipv6_message = raw(ICMPv6EchoReply(id=1, seq=1))  # not IPv4: left alone
    batch = received(impl, [(bsd_form(reply, subtract_header, df), (TARGET4, 0), 60), (reply, (TARGET4, 0), 60),
                            (ipv6_message, None, -1), (b"\x45\x00", None, -1)])
    with pytest.raises(MalformedPacket):
        impl.parse_packet(bytes(batch.data(0)))  # what the strict parse makes of it as delivered
    impl.normalize_bsd_ipv4_headers(batch)
    assert bytes(batch.data(0)) == reply  # exactly the packet as it was on the wire
    assert bytes(batch.data(1)) == reply  # a network-form header comes out unchanged
    assert bytes(batch.data(2)) == ipv6_message and bytes(batch.data(3)) == b"\x45\x00"
    # and the NAT engine now takes it
    table, nat, out4, out6 = make(impl)
    nat.outbound(2, [echo_request(CLIENT4, TARGET4, 0x0101, seq=3)], out4, out6, 1.0)
    assigned = table.lookup(2, packed(CLIENT4), packed(TARGET4), 0x0101)
    wire = raw(IP(src=TARGET4, dst=CONNECTOR4, ttl=60, flags="DF") / ICMP(type=0, id=assigned, seq=3) / PAYLOAD)
    batch = received(impl, [(bsd_form(wire, subtract_header, True), (TARGET4, 0), 60)])
    impl.normalize_bsd_ipv4_headers(batch)
    [(conn, packet)] = nat.inbound(batch, 4, 2.0)
    assert conn == 2 and impl.parse_packet(packet).echo_id == 0x0101
