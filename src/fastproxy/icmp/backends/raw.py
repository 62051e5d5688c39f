"""Raw ICMP sockets (CAP_NET_RAW): one socket per address family, echo ids rewritten by the proxy.

The high-throughput gateway mode: requests and replies move in batches
(``recvmmsg`` / ``sendmmsg`` through :class:`PacketBatch`, TTL / hop limit per
packet as ancillary data) that the proxy's ``EchoNat`` engine fills and maps
back in one C call each, and a kernel filter keeps every other ICMP packet
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

from . import BackendUnavailable, BatchedBackend, SendFailure
from ._wire import send_slots

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


class DatagramIcmpEngine(BatchedBackend):
    """Shared engine of the raw and macOS backends: one socket per family, batched, ids rewritten
    by the proxy. Subclasses open the sockets (:meth:`_open_socket`); IPv4 sockets must hand over
    the IP header with each packet, IPv6 ones the ICMPv6 message with its hop limit."""

    name = "raw"

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
        except BaseException:
            self.close()  # the IPv4 socket, when the IPv6 one failed
            raise
        self.batch_size = batch_size
        self._by_fd = {sock.fileno(): (version, sock) for version, sock in self._sockets.items()}
        self._recv = core.PacketBatch(batch_size)

    def _open_socket(self, version: int) -> socket.socket:
        raise NotImplementedError

    def families(self) -> tuple[int, ...]:
        """4, and 6 when the host has IPv6."""
        return tuple(self._sockets)

    def send_batch(self, family: int, batch: core.PacketBatch, count: int) -> list[SendFailure]:
        """One sendmmsg for the whole batch where all goes well (see :func:`send_slots`)."""
        sock = self._sockets.get(family)
        if sock is None:
            return [SendFailure(slot, errno_codes.EAFNOSUPPORT, 0) for slot in range(count)]
        return [SendFailure(slot, err, 0) for slot, err in send_slots(batch, sock, 0, count)]

    def receive_batch(self, fd: int) -> tuple[int, core.PacketBatch]:
        """One recvmmsg on the socket of ``fd`` into the backend's receive batch."""
        version, sock = self._by_fd[fd]
        self._recv.recv(sock)
        return version, self._recv

    def filenos(self) -> list[int]:
        """One socket per address family."""
        return list(self._by_fd)

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
