"""Raw ICMP sockets (CAP_NET_RAW): one socket per address family, echo ids rewritten by the proxy.

The high-throughput gateway mode: requests and replies move in batches
(``recvmmsg`` / ``sendmmsg`` through :class:`PacketBatch`, TTL / hop limit per
packet as ancillary data), and a kernel filter keeps every other ICMP packet
out of the process: classic BPF on the IPv4 socket (echo reply, destination
unreachable, time exceeded, parameter problem) and ``ICMP6_FILTER`` on the
IPv6 one (echo reply, destination unreachable, packet too big, time exceeded,
parameter problem).

:class:`DatagramIcmpEngine` holds everything but the socket setup, so the
macOS backend (SOCK_DGRAM ICMP sockets, which behave like raw ones there)
shares it.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import socket
import struct

from fastproxy._impl import core

from . import BackendFlow, BackendUnavailable, IcmpBackend, ReceivedPacket, SendFailure
from ._wire import address_bytes, address_text, wrap_icmp_message

__all__ = ["DatagramIcmpEngine", "RawSocketBackend", "icmp_type_filter_v4", "icmp6_type_filter"]

_SO_ATTACH_FILTER = 26
_ICMP6_FILTER = 1
_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_PROBE = 3
_IPV6_MTU_DISCOVER = 23
_IPV6_PMTUDISC_PROBE = 3
_IPV6_RECVHOPLIMIT = 51

#: ICMP types the IPv4 socket lets through: echo reply, unreachable, time exceeded, parameter problem.
ICMPV4_ACCEPTED_TYPES = (0, 3, 11, 12)
#: ICMPv6 types the IPv6 socket lets through: unreachable, too big, time exceeded, parameter problem, echo reply.
ICMPV6_ACCEPTED_TYPES = (1, 2, 3, 4, 129)

_UNSPECIFIED6 = bytes(16)


def icmp_type_filter_v4(accepted: tuple[int, ...] = ICMPV4_ACCEPTED_TYPES) -> bytes:
    """A classic BPF program (array of ``struct sock_filter``) accepting ICMP packets of ``accepted`` types.

    A raw IPv4 socket sees the IP header: load 4*IHL into X, the ICMP type at
    [X], compare with each accepted type.
    """
    instructions = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)
        (0x50, 0, 0, 0),  # ldb [x+0]
    ]
    count = len(accepted)
    for position, icmp_type in enumerate(accepted):
        # jeq #type, jump to "accept" (after the remaining compares and the reject), else next
        instructions.append((0x15, count - position, 0, icmp_type))
    instructions.append((0x06, 0, 0, 0))  # ret #0: drop
    instructions.append((0x06, 0, 0, 0x40000))  # ret #262144: whole packet
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)


def icmp6_type_filter(accepted: tuple[int, ...] = ICMPV6_ACCEPTED_TYPES) -> bytes:
    """A ``struct icmp6_filter`` blocking every ICMPv6 type except ``accepted`` (a set bit blocks)."""
    words = [0xFFFFFFFF] * 8
    for icmp_type in accepted:
        words[icmp_type >> 5] &= ~(1 << (icmp_type & 31))
    return struct.pack("=8I", *words)


def _attach_bpf(sock: socket.socket, program: bytes) -> None:
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)  # the kernel copies the program


class DatagramIcmpEngine(IcmpBackend):
    """Shared engine of the raw and macOS backends: one socket per family, batched, ids rewritten
    by the proxy. Subclasses open the sockets (:meth:`_open_socket`)."""

    name = "raw"
    #: whether the IPv4 socket hands over the IP header with each packet
    v4_has_ip_header = True

    def __init__(self, *, batch_size: int = 64) -> None:
        self._sockets: dict[int, socket.socket] = {}
        try:
            self._sockets[4] = self._open_socket(4)
            try:
                self._sockets[6] = self._open_socket(6)
            except OSError as exc:
                if exc.errno not in (errno_codes.EAFNOSUPPORT, errno_codes.EPROTONOSUPPORT):
                    raise
        except PermissionError as exc:
            self.close()
            raise BackendUnavailable(
                f"raw ICMP sockets need CAP_NET_RAW ({exc}); run as root, grant the capability "
                "(setcap cap_net_raw+ep, or AmbientCapabilities=CAP_NET_RAW in systemd), "
                "or use the unprivileged ping-socket backend"
            ) from None
        self._batch_size = batch_size
        self._send = {version: core.PacketBatch(batch_size) for version in self._sockets}
        self._queued = {version: 0 for version in self._sockets}
        # Positions (send_echo call numbers) of the queued slots, to report failures.
        self._positions: dict[int, list[int]] = {version: [] for version in self._sockets}
        self._calls = 0
        self._failures: list[SendFailure] = []
        self._recv = core.PacketBatch(batch_size)

    def _open_socket(self, version: int) -> socket.socket:
        raise NotImplementedError

    def open_flow(self, flow: BackendFlow) -> None:
        """Nothing to open: the family's socket serves every flow."""
        if flow.version not in self._sockets:
            raise OSError(errno_codes.EAFNOSUPPORT, "no IPv6 ICMP socket on this host")

    def close_flow(self, flow: BackendFlow) -> None:
        """Nothing to close."""

    def send_echo(self, flow: BackendFlow, message: bytes | bytearray | memoryview, ttl: int) -> None:
        """Put the request in the family's send batch (sent when full or on flush)."""
        version = flow.version
        slot = self._queued[version]
        if slot == self._batch_size:
            self._send_queued(version)
            slot = 0
        address = (address_text(flow.dst), 0) if version == 4 else (address_text(flow.dst), 0, 0, 0)
        self._send[version].set(slot, message, address, ttl)
        self._positions[version].append(self._calls)
        self._queued[version] = slot + 1
        self._calls += 1

    def flush(self) -> list[SendFailure]:
        """Send both families' batches; returns the requests the kernel refused."""
        for version in self._sockets:
            if self._queued[version]:
                self._send_queued(version)
        failures, self._failures, self._calls = self._failures, [], 0
        return failures

    def _send_queued(self, version: int) -> None:
        batch, sock, count = self._send[version], self._sockets[version], self._queued[version]
        positions = self._positions[version]
        start = 0
        while start < count:
            try:
                sent = batch.send(sock, count, start)
            except OSError as exc:  # sendmmsg reports an error only for its first message
                self._failures.append(SendFailure(positions[start], exc.errno or 0, 0))
                start += 1
                continue
            if sent <= 0:  # socket buffer full: the rest is lost, as a router would lose it
                self._failures.extend(SendFailure(position, errno_codes.ENOBUFS, 0) for position in positions[start:count])
                break
            start += sent
        self._queued[version] = 0
        positions.clear()

    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        """Drain up to ``limit`` packets from both sockets in batches."""
        out: list[ReceivedPacket] = []
        batch = self._recv
        for version, sock in self._sockets.items():
            while len(out) < limit:
                count = batch.recv(sock)
                for index in range(count):
                    if batch.truncated(index):
                        continue
                    out.append(ReceivedPacket(self._normalise(version, batch, index), None))
                if count < len(batch):
                    break
        return out

    def _normalise(self, version: int, batch: object, index: int) -> bytes:
        """The received packet as a whole IP packet (sockets without the header get one rebuilt)."""
        data = batch.data(index)  # type: ignore[attr-defined]
        if version == 4 and self.v4_has_ip_header:
            return bytes(data)
        address = batch.address(index)  # type: ignore[attr-defined]
        ttl = batch.ttl(index)  # type: ignore[attr-defined]
        source = address_bytes(address[0]) if address else bytes(4 if version == 4 else 16)
        # An error is addressed to the source of the packet it quotes; a reply's own
        # destination is not given by the socket, and the proxy rewrites it anyway.
        destination = bytes(4 if version == 4 else 16)
        if version == 6 and len(data) >= 48 and data[0] < 128:
            destination = bytes(data[16:32])
        return bytes(wrap_icmp_message(source, destination, ttl if ttl >= 0 else 64, data))

    def filenos(self) -> list[int]:
        """One socket per address family."""
        return [sock.fileno() for sock in self._sockets.values()]

    def close(self) -> None:
        """Close the sockets."""
        for sock in self._sockets.values():
            sock.close()


class RawSocketBackend(DatagramIcmpEngine):
    """ICMP through raw sockets with kernel filters (Linux, CAP_NET_RAW)."""

    name = "raw"

    def _open_socket(self, version: int) -> socket.socket:
        if version == 4:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            try:
                _attach_bpf(sock, icmp_type_filter_v4())
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            try:
                sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, icmp6_type_filter())
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_PROBE)
            except BaseException:
                sock.close()
                raise
        sock.setblocking(False)
        return sock
