"""IP fragment reassembly for the TUN bridge (sans-I/O: the caller passes ``now``).

The tunnel carries whole packets only (an ICMP datagram holds one IP packet of at most
1280 bytes, a UDP payload at most 1280 bytes; DESIGN section 2), and the edge drops
fragments. The kernel fragments what local programs send when it is larger than the TUN
device's MTU (``ping -s 1400``, a DNS answer over 1252 bytes...), so the bridge puts the
fragments back together; the bridge then decides whether the whole packet fits.

Bounded: at most ``max_datagrams`` in progress and ``max_bytes`` buffered in all, each
given ``timeout`` seconds (RFC 791 / RFC 8200 leave the value to the host; Linux waits
30 s, far longer than ping or DNS wait). Overlapping fragments end the datagram (RFC 5722
for IPv6; for IPv4 a legitimate sender never overlaps either). Every drop is counted in
``drops`` under a stable reason; a datagram that timed out with its first fragment in hand
is returned by :meth:`expire` so the caller can answer with Time Exceeded (code 1,
fragment reassembly time exceeded) quoting it, as a host must (RFC 792, RFC 8200 4.5).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from ..checksum import internet_checksum

__all__ = ["Reassembler", "is_fragment"]

_V6_FRAGMENT = 44
_MAX_PACKET = 65535


def is_fragment(packet: bytes) -> bool:
    """True for an IPv4 fragment (MF set or an offset) or an IPv6 packet whose first next
    header is a Fragment header."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bool(((packet[6] << 8) | packet[7]) & 0x3FFF)
    return len(packet) >= 48 and packet[0] >> 4 == 6 and packet[6] == _V6_FRAGMENT


@dataclass
class _Datagram:
    started: float
    header: bytes | None = None  # IPv4 header / IPv6 fixed header of the first fragment
    next_header: int = 0  # IPv6: the protocol after the Fragment header
    pieces: dict[int, bytes] = field(default_factory=dict)  # byte offset -> data
    total: int | None = None  # payload length, known once the last fragment is in
    size: int = 0


class Reassembler:
    """Puts IPv4 and IPv6 fragments back together (see the module docstring)."""

    def __init__(self, *, max_datagrams: int = 64, max_bytes: int = 256 * 1024, timeout: float = 5.0,
                 drops: Counter[str] | None = None, prefix: str = "") -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.drops: Counter[str] = drops if drops is not None else Counter()
        self._prefix = prefix
        self._datagrams: dict[tuple[object, ...], _Datagram] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._datagrams)

    def add(self, packet: bytes, now: float) -> bytes | None:
        """Take one fragment; the whole packet once its last missing piece came, else None."""
        parsed = self._parse(packet)
        if parsed is None:
            self.drops[self._prefix + "fragment_malformed"] += 1
            return None
        key, offset, more, data, header, next_header = parsed
        datagram = self._datagrams.get(key)
        if datagram is None:
            if len(self._datagrams) >= self.max_datagrams:
                self.drops[self._prefix + "fragment_table_full"] += 1
                return None
            datagram = self._datagrams[key] = _Datagram(now)
        end = offset + len(data)
        if end + (len(header) if header else 20) > _MAX_PACKET or (more and len(data) % 8):
            self._discard(key, "fragment_malformed")
            return None
        if self._bytes + len(data) > self.max_bytes:
            self._discard(key, "fragment_buffer_full")
            return None
        if (datagram.total is not None and (end > datagram.total or (not more and end != datagram.total))) or any(
                offset < o + len(d) and o < end for o, d in datagram.pieces.items()):
            self._discard(key, "fragment_overlap")
            return None
        datagram.pieces[offset] = data
        datagram.size += len(data)
        self._bytes += len(data)
        if offset == 0:
            datagram.header, datagram.next_header = header, next_header
        if not more:
            datagram.total = end
        if datagram.header is None or datagram.total is None or datagram.size != datagram.total:
            return None
        del self._datagrams[key]
        self._bytes -= datagram.size
        payload = b"".join(datagram.pieces[o] for o in sorted(datagram.pieces))
        return self._whole(datagram, payload)

    def expire(self, now: float) -> list[bytes]:
        """Forget datagrams older than ``timeout``; returns, of those, the ones whose first
        fragment came (as that fragment), for a Time Exceeded answer."""
        first_fragments = []
        for key, datagram in list(self._datagrams.items()):
            if now - datagram.started > self.timeout:
                if datagram.header is not None:
                    first_fragments.append(datagram.header + datagram.pieces[0])
                self._discard(key, "fragment_timeout")
        return first_fragments

    def _discard(self, key: tuple[object, ...], reason: str) -> None:
        datagram = self._datagrams.pop(key)
        self._bytes -= datagram.size
        self.drops[self._prefix + reason] += 1

    @staticmethod
    def _parse(packet: bytes) -> tuple[tuple[object, ...], int, bool, bytes, bytes, int] | None:
        """(key, offset, more fragments, data, header of this fragment, IPv6 next header)."""
        version = packet[0] >> 4 if packet else 0
        if version == 4 and len(packet) >= 20:
            ihl = (packet[0] & 0x0F) * 4
            total = (packet[2] << 8) | packet[3]
            if ihl < 20 or total < ihl or total > len(packet):
                return None
            flags = (packet[6] << 8) | packet[7]
            key = (4, packet[12:16], packet[16:20], packet[4:6], packet[9])
            return key, (flags & 0x1FFF) * 8, bool(flags & 0x2000), packet[ihl:total], packet[:ihl], packet[9]
        if version == 6 and len(packet) >= 48 and packet[6] == _V6_FRAGMENT:
            end = 40 + ((packet[4] << 8) | packet[5])
            if end > len(packet) or end < 48:
                return None
            next_header, _, offset_flags, ident = struct.unpack_from("!BBHI", packet, 40)
            key = (6, packet[8:24], packet[24:40], ident)
            return key, offset_flags & 0xFFF8, bool(offset_flags & 1), packet[48:end], packet[:40], next_header
        return None

    @staticmethod
    def _whole(datagram: _Datagram, payload: bytes) -> bytes:
        header = bytearray(datagram.header or b"")
        if header[0] >> 4 == 4:
            struct.pack_into("!H", header, 2, len(header) + len(payload))
            header[6] &= 0x40  # keep DF, clear MF and the offset
            header[7] = 0
            struct.pack_into("!H", header, 10, 0)
            struct.pack_into("!H", header, 10, internet_checksum(header))
        else:
            struct.pack_into("!H", header, 4, len(payload))
            header[6] = datagram.next_header
        return bytes(header) + payload
