"""``fastproxy selfcheck``: show the packet core working on this machine.

Every step runs on the compiled core and on its pure-Python twin and checks that
both give the same bytes; the last step sends real echo requests, but only to
127.0.0.1 and ::1. Exit status 0 means every step passed.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from types import ModuleType
from typing import TextIO

from . import _impl
from . import _purepy as twin

CLIENT_V4 = bytes([100, 64, 0, 2])  # the client's tunnel address (CGNAT space, never on the wire here)
TARGET_V4 = bytes([192, 0, 2, 8])  # a documentation address: only bytes in memory, nothing is sent to it
CONNECTOR_V4 = bytes([198, 51, 100, 1])


class _Steps:
    """Runs named steps, prints one line each, remembers failures."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed: list[str] = []

    def run(self, name: str, step: Callable[[], str]) -> None:
        try:
            detail = step()
        except Exception as exc:  # a self-check reports every failure and goes on
            self.failed.append(name)
            self.out.write(f"  FAIL  {name}: {type(exc).__name__}: {exc}\n")
        else:
            self.out.write(f"  ok    {name}: {detail}\n")


def _both(fn: Callable[[ModuleType], object]) -> object:
    """Run ``fn`` on the selected core and on the twin; they must agree."""
    ours, theirs = fn(_impl.core), fn(twin)
    if ours != theirs:
        raise AssertionError(f"compiled core and twin disagree: {ours!r} != {theirs!r}")
    return ours


def _echo_request(core: ModuleType) -> bytes:
    return bytes(core.build_echo(CLIENT_V4, TARGET_V4, 0x1234, 1, b"fastproxy" * 6, ttl=64))


def _step_build_parse() -> str:
    packet = _both(_echo_request)
    info = _impl.core.parse_packet(packet)
    fields = (info.version, info.ttl, info.icmp_type, info.echo_id, info.echo_seq)
    if fields != (4, 64, 8, 0x1234, 1):
        raise AssertionError(f"parsed fields {fields}")
    return f"built a {len(packet)}-byte IPv4 echo request and parsed it back (checksums verified)"


def _nat_round_trip(core: ModuleType) -> tuple[int, bytes, tuple[int, bytes, int]]:
    table = core.FlowTable(1024, idle_timeout=60.0)
    packet = bytearray(_echo_request(core))
    assigned = table.acquire(7, CLIENT_V4, TARGET_V4, 0x1234, 1.0)
    core.rewrite_echo(packet, src=CONNECTOR_V4, echo_id=assigned, ttl=63)
    core.parse_packet(packet)  # checksums still verify after the incremental update
    back = table.reverse(TARGET_V4, assigned, 2.0)
    return assigned, bytes(packet), back


def _step_nat() -> str:
    assigned, _, back = _both(_nat_round_trip)  # type: ignore[misc]
    if back != (7, CLIENT_V4, 0x1234):
        raise AssertionError(f"reverse lookup gave {back!r}")
    return f"flow table assigned echo id {assigned:#06x}; source, id and TTL rewritten with incremental checksums"


def _translated_error(core: ModuleType) -> bytes:
    table = core.FlowTable(1024)
    request = bytearray(_echo_request(core))
    assigned = table.acquire(7, CLIENT_V4, TARGET_V4, 0x1234, 1.0)
    core.rewrite_echo(request, src=CONNECTOR_V4, echo_id=assigned, ttl=1)
    router = bytes([203, 0, 113, 1])
    error = bytearray(core.build_time_exceeded(router, request))
    conn_id, client_src, client_id = table.reverse(TARGET_V4, assigned)
    core.translate_icmp_error(error, client_src, client_id)
    return bytes(error)


def _step_translate() -> str:
    error = _both(_translated_error)
    info = _impl.core.parse_packet(error)
    inner = info.inner
    if (info.dst, inner.src, inner.echo_id) != (CLIENT_V4, CLIENT_V4, 0x1234):
        raise AssertionError("translated error does not point back at the client")
    return "router's Time Exceeded translated back to the client (outer and quoted packet, all checksums)"


def _step_datagram() -> str:
    packet = _echo_request(_impl.core)
    wire = _both(lambda core: bytes(core.encode_icmp(packet)))
    decoded = _impl.core.decode_datagram(wire)
    if bytes(decoded.packet) != packet:
        raise AssertionError("ICMP datagram did not round-trip")
    return f"ICMP packet framed as a {len(wire)}-byte tunnel datagram (type 0x02) and decoded"


def _open_echo_socket(family: int) -> tuple[socket.socket, str]:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), "ping socket"
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
            raise
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), "raw socket"
    except PermissionError:
        raise PermissionError(
            "this user may open neither ping sockets nor raw sockets; allow ping sockets with "
            f"`sysctl -w net.ipv4.ping_group_range=\"{os.getgid()} {os.getgid()}\"`"
        ) from None


def _step_loopback_echo(family: int) -> Callable[[], str]:
    def step() -> str:
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        sock, kind = _open_echo_socket(family)
        with sock:
            sock.setblocking(False)
            batch = _impl.core.PacketBatch(8)
            request_type = 8 if family == socket.AF_INET else 128
            for i in range(8):
                # ICMP header + payload only; the kernel adds the IP header (and, for ping
                # sockets, replaces the echo id with the socket's own).
                message = bytes([request_type, 0, 0, 0, 0x12, 0x34, 0, i]) + b"selfcheck"
                if family == socket.AF_INET:
                    csum = _impl.core.internet_checksum(message)
                    message = message[:2] + csum.to_bytes(2, "big") + message[4:]
                address = (host, 0) if family == socket.AF_INET else (host, 0, 0, 0)
                batch.set(i, message, address=address, ttl=5 + i)
            sent = batch.send(sock, 8)
            replies = 0
            deadline = time.monotonic() + 2.0
            while replies < sent and time.monotonic() < deadline:
                got = batch.recv(sock)
                reply_type = 0 if family == socket.AF_INET else 129
                for i in range(got):
                    data = batch.data(i)
                    offset = (data[0] & 0x0F) * 4 if kind == "raw socket" and family == socket.AF_INET else 0
                    replies += data[offset] == reply_type
                if not got:
                    time.sleep(0.005)
            if replies < sent:
                raise AssertionError(f"{replies} of {sent} echo replies from {host}")
            return f"{sent} echo requests to {host} in one sendmmsg with per-packet TTL, {replies} replies ({kind})"

    return step


def _step_speed() -> str:
    def per_packet(core: ModuleType) -> float:
        table = core.FlowTable(64)
        nat = core.EchoNat(table, [(TARGET_V4[:3] + b"\0", 24)])
        packets = [_echo_request(core)] * 64
        out4, out6 = core.PacketBatch(64), core.PacketBatch(64)
        rounds = 50
        start = time.perf_counter()
        for _ in range(rounds):
            nat.outbound(7, packets, out4, out6, 1.0)
        return (time.perf_counter() - start) / (rounds * 64)

    ours, slow = per_packet(_impl.core), per_packet(twin)
    return (
        f"NAT hot path (parse, verify, flow lookup, rewrite, checksum) {ours * 1e9:.0f} ns/packet "
        f"in batches of 64 vs {slow * 1e9:.0f} ns in the twin ({slow / ours:.0f}x)"
    )


def run_selfcheck(out: TextIO) -> int:
    """Exercise the core, print each step to ``out``; return 0 when every step passed."""
    kind = "compiled Cython core" if _impl.COMPILED else "pure-Python twin (FASTPROXY_NO_EXTENSIONS or no build)"
    out.write(f"fastproxy self-check — packet core: {kind}\n")
    steps = _Steps(out)
    steps.run("build + parse", _step_build_parse)
    steps.run("source NAT", _step_nat)
    steps.run("ICMP error translation", _step_translate)
    steps.run("tunnel datagram", _step_datagram)
    steps.run("loopback echo IPv4", _step_loopback_echo(socket.AF_INET))
    if socket.has_ipv6:
        steps.run("loopback echo IPv6", _step_loopback_echo(socket.AF_INET6))
    steps.run("speed", _step_speed)
    if steps.failed:
        out.write(f"self-check FAILED: {', '.join(steps.failed)}\n")
        return 1
    out.write("self-check passed: the core builds, NATs, translates and moves real packets on this machine\n")
    return 0
