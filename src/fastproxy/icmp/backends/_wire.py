"""Helpers shared by the backends: batched sends, and packets rebuilt for sockets that give ICMP messages
without the IP header."""

from __future__ import annotations

import errno as errno_codes
import socket
import struct
from collections.abc import Callable

from fastproxy._impl import core

__all__ = ["address_bytes", "address_text", "send_slots", "wrap_icmp_message"]

_ICMPV6 = 58
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_CHECKSUM = struct.Struct("!H")


def wrap_icmp_message(src: bytes, dst: bytes, ttl: int, message: bytes | bytearray | memoryview) -> bytearray:
    """A whole IP packet ``src`` -> ``dst`` carrying the ICMP ``message``.

    IPv4: the message is kept as it is (its checksum does not cover the IP
    header). IPv6: the ICMPv6 checksum is recomputed for ``src``/``dst``, since a
    socket that strips the header has already verified it against the real
    addresses, which may differ from the ones given here.
    """
    length = len(message)
    if len(src) == 4:
        packet = bytearray(_IPV4_HEADER.pack(0x45, 0, 20 + length, 0, 0x4000, ttl & 0xFF, 1, 0, src, dst))
        _CHECKSUM.pack_into(packet, 10, core.internet_checksum(packet))
        packet += message
        return packet
    packet = bytearray(_IPV6_HEADER.pack(6 << 28, length, _ICMPV6, ttl & 0xFF, src, dst))
    packet += message
    packet[42:44] = b"\0\0"
    initial = core.pseudo_header_sum(src, dst, length, _ICMPV6)
    _CHECKSUM.pack_into(packet, 42, core.internet_checksum(memoryview(packet)[40:], initial))
    return packet


def address_text(address: bytes) -> str:
    """``address`` (4 or 16 bytes) as text for the socket module."""
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)


def address_bytes(text: str) -> bytes:
    """A socket-module address string (a v6 one may carry ``%scope``) as 4 or 16 bytes."""
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0])
    return socket.inet_pton(socket.AF_INET, text)


def send_slots(
    batch: core.PacketBatch, sock: socket.socket | int, start: int, count: int,
    retry: Callable[[int], bool] | None = None,
) -> list[tuple[int, int]]:
    """Send slots [start, start+count) of ``batch`` on ``sock``; returns the ``(slot, errno)`` pairs
    that could not be sent.

    One sendmmsg when all goes well. sendmmsg reports an error only for the first
    message of a call, so a refused slot is reported and the rest retried after
    it; a full socket buffer loses the rest (ENOBUFS), as a router would.
    ``retry(errno)``, when given, is asked about each refused slot: when it returns
    True (it cleared what made the send fail), the slot is sent once more before it
    counts as refused.
    """
    failures: list[tuple[int, int]] = []
    end = start + count
    retried = -1  # the slot already sent once more
    while start < end:
        try:
            sent = batch.send(sock, end - start, start)
        except OSError as exc:
            err = exc.errno or 0
            if retry is not None and retried != start and retry(err):
                retried = start
                continue
            failures.append((start, err))
            start += 1
            continue
        if sent <= 0:
            failures.extend((slot, errno_codes.ENOBUFS) for slot in range(start, end))
            break
        start += sent
    return failures
