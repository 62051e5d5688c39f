"""PacketBatch on real loopback sockets (127.0.0.1, ::1), compiled core and twin alike."""

from __future__ import annotations

import array
import errno
import os
import random
import select
import socket
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest

from .conftest import require_root

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TTL cmsgs as Linux numbers them")

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux's value; Python < 3.14 lacks the name
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]


def enable_ttl_reporting(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)


def default_ttl(sock: socket.socket) -> int:
    if sock.family == socket.AF_INET:
        return sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)


def wait_readable(sock: socket.socket, timeout: float = 2.0) -> None:
    assert select.select([sock], [], [], timeout)[0], "nothing arrived on loopback"


def udp_pair(family: int) -> tuple[socket.socket, socket.socket]:
    """(sender, receiver) bound on loopback; the receiver reports TTLs."""
    sender = socket.socket(family, socket.SOCK_DGRAM)
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    for s in (sender, receiver):
        s.bind((LOOPBACK[family], 0))
    enable_ttl_reporting(receiver)
    return sender, receiver


@pytest.fixture
def udp4() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender, receiver = udp_pair(socket.AF_INET)
    yield sender, receiver
    sender.close()
    receiver.close()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("as_fd", [False, True], ids=["socket", "fd"])
def test_udp_batch_roundtrip_keeps_payload_length_address_and_ttl(impl: ModuleType, family: int, as_fd: bool) -> None:
    sender, receiver = udp_pair(family)
    with sender, receiver:
        out = impl.PacketBatch(8, 512)
        ttls = [1, 2, 17, 64, 128, 254, 255, -1]
        payloads = [bytes([i]) * (i * 37) for i in range(8)]  # lengths 0 .. 259
        for i in range(8):
            out.set(i, payloads[i], receiver.getsockname(), ttls[i])
        assert out.send(sender.fileno() if as_fd else sender, 8) == 8

        wait_readable(receiver)
        batch = impl.PacketBatch(16, 512)
        assert batch.recv(receiver.fileno() if as_fd else receiver) == 8
        assert batch.count == 8
        expected_ttls = ttls[:-1] + [default_ttl(sender)]
        for i in range(8):
            assert bytes(batch.data(i)) == payloads[i]
            assert batch.length(i) == len(payloads[i])
            assert batch.address(i) == sender.getsockname()
            assert batch.ttl(i) == expected_ttls[i]
            assert not batch.truncated(i)
        assert batch.recv(receiver) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_ttl_is_minus_one_without_ttl_reporting(impl: ModuleType, family: int) -> None:
    sender, receiver = udp_pair(family)
    plain = socket.socket(family, socket.SOCK_DGRAM)
    plain.bind((LOOPBACK[family], 0))
    with sender, receiver, plain:
        out = impl.PacketBatch(2)
        out.set(0, b"x", plain.getsockname(), 9)
        out.set(1, b"y", plain.getsockname())
        assert out.send(sender, 2) == 2
        wait_readable(plain)
        batch = impl.PacketBatch(4)
        assert batch.recv(plain) == 2
        assert [batch.ttl(0), batch.ttl(1)] == [-1, -1]


def test_empty_recv_returns_zero_without_blocking(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    _, receiver = udp4
    batch = impl.PacketBatch(4)
    for timeout in (None, 0.0, 30.0):  # blocking, non-blocking, and with a timeout
        receiver.settimeout(timeout)
        began = time.monotonic()
        assert batch.recv(receiver) == 0
        assert batch.count == 0
        assert time.monotonic() - began < 5, f"recv waited on a socket with timeout {timeout}"


def test_partial_batches_drain_in_order(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp4
    out = impl.PacketBatch(8)
    for i in range(8):
        out.set(i, f"packet {i}".encode(), receiver.getsockname())
    assert out.send(sender, 3, start=2) == 3  # slots 2, 3, 4 only
    assert out.send(sender, 0, start=8) == 0
    assert out.send(sender, 3, start=5) == 3  # slots 5, 6, 7
    wait_readable(receiver)
    batch = impl.PacketBatch(4)
    got = []
    for expected in (4, 2, 0):
        assert batch.recv(receiver) == expected
        got += [bytes(batch.data(i)) for i in range(batch.count)]
    assert got == [f"packet {i}".encode() for i in range(2, 8)]


def test_more_slots_than_one_system_call_takes(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp4  # recvmmsg / sendmmsg take at most 1024 messages per call
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    out = impl.PacketBatch(1100, 8)
    for i in range(1100):
        out.set(i, i.to_bytes(4, "big"), receiver.getsockname(), 1 + i % 255)
    assert out.send(sender, 1100) == 1100
    wait_readable(receiver)
    batch = impl.PacketBatch(1100, 8)
    assert batch.recv(receiver) == 1100
    assert [int.from_bytes(batch.data(i), "big") for i in range(1100)] == list(range(1100))
    assert [batch.ttl(i) for i in range(1100)] == [1 + i % 255 for i in range(1100)]


def test_truncated_datagram_is_flagged_and_cut_to_slot(
    impl: ModuleType, udp4: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = udp4
    long, short = bytes(range(40)), b"0123456789abcdef"
    sender.sendto(long, receiver.getsockname())
    sender.sendto(short, receiver.getsockname())
    wait_readable(receiver)
    batch = impl.PacketBatch(4, 16)
    assert batch.recv(receiver) == 2
    assert batch.truncated(0) and batch.length(0) == 16 and bytes(batch.data(0)) == long[:16]
    assert not batch.truncated(1) and bytes(batch.data(1)) == short


def test_connected_socket_sends_slots_without_address(
    impl: ModuleType, udp4: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = udp4
    sender.connect(receiver.getsockname())
    out = impl.PacketBatch(3)
    for i in range(3):
        out.set(i, b"c%d" % i, ttl=40 + i)
        assert out.address(i) is None
    assert out.send(sender, 3) == 3
    wait_readable(receiver)
    batch = impl.PacketBatch(3)
    assert batch.recv(receiver) == 3
    assert [bytes(batch.data(i)) for i in range(3)] == [b"c0", b"c1", b"c2"]
    assert [batch.ttl(i) for i in range(3)] == [40, 41, 42]  # family taken from the socket


def test_build_packet_in_place(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp4
    out = impl.PacketBatch(1, 64)
    slot = out.buffer(0)
    assert len(slot) == 64 and not slot.readonly
    slot[:5] = b"hello"
    out.set_length(0, 5)
    out.set_address(0, receiver.getsockname())
    out.data(0)[0:1] = b"j"
    assert out.send(sender, 1) == 1
    assert receiver.recv(100) == b"jello"


def test_full_send_buffer_gives_partial_count_then_zero(impl: ModuleType) -> None:
    # A unix datagram pair keeps sent datagrams charged to the sender until they are read,
    # so a tiny send buffer fills (EAGAIN) after a few.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        out = impl.PacketBatch(64, 32)
        for i in range(64):
            out.set(i, b"u%d" % i)
        sent = out.send(a, 64)
        assert 0 < sent < 64
        assert out.send(a, 64 - sent, start=sent) == 0
        batch = impl.PacketBatch(64, 32)
        assert batch.recv(b) == sent
        assert [bytes(batch.data(i)) for i in range(sent)] == [b"u%d" % i for i in range(sent)]
        assert batch.address(0) is None  # not an IP family
        assert out.send(a, 1, start=sent) == 1  # room again: retry from start + sent


def test_send_errors_raise_only_before_the_first_packet(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp4
    out = impl.PacketBatch(2)
    out.set(0, b"ok", receiver.getsockname())
    out.set(1, b"bad", ("::1", 9))  # an IPv6 destination on an IPv4 socket
    assert out.send(sender, 2) == 1
    with pytest.raises(OSError) as info:
        out.send(sender, 1, start=1)
    assert info.value.errno == errno.EAFNOSUPPORT


def test_ipv4_destination_from_dual_stack_socket(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    _, receiver = udp4
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        out = impl.PacketBatch(1)
        out.set(0, b"mapped", receiver.getsockname(), 33)
        assert out.send(sender, 1) == 1
        wait_readable(receiver)
        batch = impl.PacketBatch(1)
        assert batch.recv(receiver) == 1
        assert (bytes(batch.data(0)), batch.address(0)[0], batch.ttl(0)) == (b"mapped", "127.0.0.1", 33)


def test_recv_on_closed_socket_raises(impl: ModuleType) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = os.dup(s.fileno())
    s.close()
    os.close(fd)
    batch = impl.PacketBatch(2)
    with pytest.raises(OSError) as info:
        batch.recv(fd)
    assert info.value.errno == errno.EBADF
    assert batch.count == 0


def test_slot_accessors_and_their_errors(impl: ModuleType) -> None:
    batch = impl.PacketBatch(3, 10)
    assert len(batch) == 3 and batch.slot_size == 10 and batch.count == 0
    assert [batch.length(i) for i in range(3)] == [0, 0, 0]
    assert [batch.ttl(i) for i in range(3)] == [-1, -1, -1]
    assert batch.address(0) is None and not batch.truncated(0)
    for call in (
        lambda: batch.data(3),
        lambda: batch.buffer(-1),
        lambda: batch.length(3),
        lambda: batch.set_length(3, 0),
        lambda: batch.address(7),
        lambda: batch.set_address(3, None),
        lambda: batch.ttl(-1),
        lambda: batch.set_ttl(3, 1),
        lambda: batch.truncated(3),
        lambda: batch.set(3, b""),
        lambda: batch.send(0, 2, start=2),
        lambda: batch.send(0, -1),
    ):
        with pytest.raises(IndexError):
            call()
    batch.set(1, b"abc", ("127.0.0.1", 5), 7)
    for call in (
        lambda: batch.set_length(1, 11),
        lambda: batch.set_length(1, -1),
        lambda: batch.set_ttl(1, 256),
        lambda: batch.set_ttl(1, -2),
        lambda: batch.set(1, b"x" * 11),
        lambda: batch.set(1, b"x", ("127.0.0.1", 70000)),
        lambda: batch.set(1, b"x", ("not-an-address", 1)),
        lambda: batch.set(1, b"x", ("::1", 1, 1 << 20, 0)),
        lambda: batch.set(1, b"x", ttl=300),
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        batch.set_address(1, "127.0.0.1:5")  # type: ignore[arg-type]
    # a refused set leaves the slot as it was
    assert (bytes(batch.data(1)), batch.address(1), batch.ttl(1)) == (b"abc", ("127.0.0.1", 5), 7)
    batch.set_length(1, 10)
    assert len(batch.data(1)) == 10
    for bad in (0, 65537):
        with pytest.raises(ValueError):
            impl.PacketBatch(bad)
    with pytest.raises(ValueError):
        impl.PacketBatch(1, 0)


def test_address_forms_match_the_socket_module(impl: ModuleType) -> None:
    batch = impl.PacketBatch(1)
    cases = [
        (("127.0.0.1", 53), ("127.0.0.1", 53)),
        (("::1", 53), ("::1", 53, 0, 0)),
        (("0:0::1", 53, 5, 0), ("::1", 53, 5, 0)),
        (("::ffff:127.0.0.1", 1, 0, 0), ("::ffff:127.0.0.1", 1, 0, 0)),
        (("fe80::1%1", 9), ("fe80::1", 9, 0, 1)),
        (("fe80::1%lo", 9, 0, 0), ("fe80::1", 9, 0, socket.if_nametoindex("lo"))),
        (("fe80::1", 9, 0, 4), ("fe80::1", 9, 0, 4)),
    ]
    for given, stored in cases:
        batch.set_address(0, given)
        assert batch.address(0) == stored
    batch.set_address(0, None)
    assert batch.address(0) is None


def test_views_outlive_nothing_they_should_not(impl: ModuleType) -> None:
    batch = impl.PacketBatch(2, 8)
    batch.set(1, b"keep")
    view = batch.data(1)
    del batch  # the view keeps the slot memory alive
    assert bytes(view) == b"keep"


# ---- ICMP: raw sockets and unprivileged ping sockets ----


def icmp_echo(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """Echo request bytes built by scapy (the kernel fills the ICMPv6 checksum on raw/ping sockets)."""
    from scapy.layers.inet import ICMP
    from scapy.layers.inet6 import ICMPv6EchoRequest

    if family == socket.AF_INET:
        return bytes(ICMP(type=8, id=ident, seq=seq) / payload)
    packet = ICMPv6EchoRequest(id=ident, seq=seq, data=payload)
    packet.cksum = 0
    return bytes(packet)


def raw_icmp_socket(family: int) -> socket.socket:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    enable_ttl_reporting(sock)
    return sock


def parse_icmp(family: int, packet: bytes) -> tuple[int, int, int, int | None]:
    """(type, id, seq, IP header TTL or None) of a packet read from a raw / ping socket."""
    if family == socket.AF_INET and packet[0] >> 4 == 4:  # v4 raw sockets deliver the IP header
        from scapy.layers.inet import ICMP, IP

        ip = IP(packet)
        return ip[ICMP].type, ip[ICMP].id, ip[ICMP].seq, ip.ttl
    return packet[0], int.from_bytes(packet[4:6], "big"), int.from_bytes(packet[6:8], "big"), None


def collect_icmp(impl: ModuleType, sock: socket.socket, family: int, wanted: int, keep) -> list[tuple]:
    """Read batches until `wanted` packets pass `keep` (others on the host may ping too)."""
    batch = impl.PacketBatch(64, 2048)
    found: list[tuple] = []
    deadline = time.monotonic() + 3.0
    while len(found) < wanted and time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        for i in range(batch.recv(sock)):
            kind, ident, seq, header_ttl = parse_icmp(family, bytes(batch.data(i)))
            if keep(kind, ident):
                found.append((kind, seq, batch.ttl(i), header_ttl, batch.address(i)))
    return found


ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
ICMP_TTLS = [1, 7, 100, 255]


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_raw_icmp_per_packet_ttl_on_the_wire(impl: ModuleType, family: int) -> None:
    require_root("raw ICMP sockets")
    ident = random.randrange(1, 0xFFFF)
    with raw_icmp_socket(family) as sender, raw_icmp_socket(family) as watcher:
        out = impl.PacketBatch(len(ICMP_TTLS))
        for seq, ttl in enumerate(ICMP_TTLS):
            out.set(seq, icmp_echo(family, ident, seq, b"batchio raw %d" % seq), (LOOPBACK[family], 0), ttl)
        assert out.send(sender, len(ICMP_TTLS)) == len(ICMP_TTLS)

        seen = collect_icmp(impl, watcher, family, 2 * len(ICMP_TTLS), lambda kind, i: i == ident)
    requests = sorted(p for p in seen if p[0] == ECHO_REQUEST[family])
    replies = sorted(p for p in seen if p[0] == ECHO_REPLY[family])
    assert [(seq, ttl) for _, seq, ttl, _, _ in requests] == list(enumerate(ICMP_TTLS))
    assert [seq for _, seq, _, _, _ in replies] == list(range(len(ICMP_TTLS)))
    for _, _, ttl, header_ttl, address in requests + replies:
        assert address[0] == LOOPBACK[family]
        assert 0 <= ttl <= 255
        if family == socket.AF_INET:
            assert header_ttl == ttl  # the cmsg and the IP header agree


@pytest.fixture
def ping_sockets_allowed() -> Iterator[None]:
    require_root("net.ipv4.ping_group_range is a root-only sysctl")
    path = "/proc/sys/net/ipv4/ping_group_range"
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write("0 2147483647")
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(old)


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_ping_socket_batch_with_per_packet_ttl(impl: ModuleType, family: int, ping_sockets_allowed: None) -> None:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    with socket.socket(family, socket.SOCK_DGRAM, proto) as ping, raw_icmp_socket(family) as watcher:
        ping.bind((LOOPBACK[family], 0))
        enable_ttl_reporting(ping)
        ident = ping.getsockname()[1]  # the kernel puts the socket's port in the echo ID
        out = impl.PacketBatch(len(ICMP_TTLS))
        for seq, ttl in enumerate(ICMP_TTLS):
            out.set(seq, icmp_echo(family, 0, seq, b"batchio ping %d" % seq), (LOOPBACK[family], 0), ttl)
        assert out.send(ping, len(ICMP_TTLS)) == len(ICMP_TTLS)

        replies = collect_icmp(impl, ping, family, len(ICMP_TTLS), lambda kind, i: True)
        requests = collect_icmp(
            impl, watcher, family, len(ICMP_TTLS), lambda kind, i: kind == ECHO_REQUEST[family] and i == ident
        )
    assert sorted((kind, seq) for kind, seq, *_ in replies) == [(ECHO_REPLY[family], s) for s in range(len(ICMP_TTLS))]
    for _, _, ttl, _, address in replies:
        assert address[0] == LOOPBACK[family] and 1 <= ttl <= 255
    # the kernel put each slot's TTL on the wire: the raw watcher saw it
    assert sorted((seq, ttl) for _, seq, ttl, _, _ in requests) == list(enumerate(ICMP_TTLS))
    for _, _, ttl, header_ttl, _ in requests:
        if family == socket.AF_INET:
            assert header_ttl == ttl


@pytest.mark.parametrize("family", FAMILIES)
def test_twin_ttl_by_socket_option_path_restores_the_socket_ttl(monkeypatch: pytest.MonkeyPatch, family: int) -> None:
    # The twin's macOS / Windows path (setsockopt around each packet), exercised on Linux.
    from fastproxy._purepy import batchio as twin_batchio

    monkeypatch.setattr(twin_batchio, "_TTL_BY_SETSOCKOPT_V4", True)
    monkeypatch.setattr(twin_batchio, "_TTL_BY_SETSOCKOPT_V6", True)
    sender, receiver = udp_pair(family)
    with sender, receiver:
        own = default_ttl(sender)
        out = twin_batchio.PacketBatch(4)
        for i, ttl in enumerate([5, -1, 9, 9]):
            out.set(i, b"s%d" % i, receiver.getsockname(), ttl)
        assert out.send(sender, 4) == 4
        assert default_ttl(sender) == own
        wait_readable(receiver)
        batch = twin_batchio.PacketBatch(4)
        assert batch.recv(receiver) == 4
        assert [batch.ttl(i) for i in range(4)] == [5, own, 9, 9]


def test_any_object_with_fileno_is_a_socket(impl: ModuleType, udp4: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = udp4

    class Wrapped:  # e.g. asyncio's TransportSocket
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

        def fileno(self) -> int:
            return self._sock.fileno()

    out = impl.PacketBatch(1)
    out.set(0, b"wrapped", receiver.getsockname(), 12)
    assert out.send(Wrapped(sender), 1) == 1
    wait_readable(receiver)
    batch = impl.PacketBatch(1)
    assert batch.recv(Wrapped(receiver)) == 1
    assert (bytes(batch.data(0)), batch.ttl(0)) == (b"wrapped", 12)
    assert sender.fileno() >= 0 and receiver.fileno() >= 0  # the wrappers closed nothing


def test_recv_many_fills_one_batch_from_several_sockets(impl: ModuleType) -> None:
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for rx in receivers:
            rx.bind(("127.0.0.1", 0))
            rx.setblocking(False)
        for index, count in ((0, 2), (2, 3)):  # the middle socket gets nothing
            for n in range(count):
                sender.sendto(f"s{index}-{n}".encode(), receivers[index].getsockname())
        for index in (0, 2):
            wait_readable(receivers[index])
        sources = array.array("i", [-1] * 4)
        batch = impl.PacketBatch(4)
        socks = [receivers[0], receivers[1].fileno(), receivers[2]]
        assert batch.recv_many(socks, sources) == 4 == batch.count  # full: the last datagram waits
        assert [bytes(batch.data(i)) for i in range(4)] == [b"s0-0", b"s0-1", b"s2-0", b"s2-1"]
        assert list(sources) == [0, 0, 2, 2]
        assert batch.address(2) == ("127.0.0.1", sender.getsockname()[1])
        last = sources[3]
        assert batch.recv_many(socks[last:], sources) == 1 and bytes(batch.data(0)) == b"s2-2" and sources[0] == 0
        assert batch.recv_many(socks, sources) == 0 and batch.count == 0
        assert batch.recv_many([], sources) == 0
        with pytest.raises(ValueError, match="sources"):
            batch.recv_many(socks, array.array("i", [0] * 3))
    finally:
        sender.close()
        for rx in receivers:
            rx.close()


def test_recv_many_skips_a_socket_whose_receive_fails(impl: ModuleType) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as refused, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed_port, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good:
        closed_port.bind(("127.0.0.1", 0))
        refused.connect(closed_port.getsockname())
        closed_port.close()
        refused.setblocking(False)
        refused.send(b"nobody listens")  # the port unreachable comes back as a pending ECONNREFUSED
        good.bind(("127.0.0.1", 0))
        good.setblocking(False)
        good.sendto(b"hello", good.getsockname())
        wait_readable(good)
        time.sleep(0.05)
        sources = array.array("i", [-1] * 8)
        batch = impl.PacketBatch(8)
        assert batch.recv_many([refused, good], sources) == 1
        assert bytes(batch.data(0)) == b"hello" and sources[0] == 1
        with pytest.raises(BlockingIOError):  # the error was consumed by the skipped receive
            refused.recv(100)


def test_recv_many_wants_an_int_buffer(impl: ModuleType) -> None:
    batch = impl.PacketBatch(2)
    with pytest.raises(ValueError):
        batch.recv_many([], array.array("d", [0.0] * 2))
    with pytest.raises(TypeError):
        batch.recv_many([], [0, 0])
