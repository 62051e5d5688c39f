"""Pure-Python twin of fastproxy._core: packet.

IPv4/IPv6 packets carrying ICMP/ICMPv6: parse and validate, build echo and error
messages, rewrite in place with RFC 1624 incremental checksum updates. Same API,
results and MalformedPacket reasons as the compiled core (``_cy/packet.pxi``), which
documents the rules; this file mirrors its structure step by step.
"""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastproxy.errors import MalformedPacket

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "PACKET_MALFORMED_REASONS",
    "InnerPacket",
    "PacketInfo",
    "build_destination_unreachable",
    "build_echo",
    "build_icmp_error",
    "build_packet_too_big",
    "build_time_exceeded",
    "decrement_ttl",
    "parse_packet",
    "rewrite_echo",
    "translate_icmp_error",
]

PACKET_MALFORMED_REASONS: tuple[str, ...] = (
    "empty",
    "bad_version",
    "truncated_ip_header",
    "bad_header_length",
    "bad_total_length",
    "bad_ip_checksum",
    "fragment",
    "truncated_extension_header",
    "unsupported_extension_header",
    "not_icmp",
    "truncated_icmp",
    "bad_icmp_checksum",
    "truncated_quote",
    "bad_quote",
    "not_echo",
    "not_icmp_error",
    "quote_not_echo",
)

_V4_ERROR_MAX = 576  # RFC 792/1812: an ICMPv4 error is at most 576 bytes in all
_V6_ERROR_MAX = 1280  # RFC 4443 2.4(c): an ICMPv6 error fits the minimum IPv6 MTU
_V6_SKIPPED = (0, 43, 60)  # hop-by-hop, routing, destination options
_UPPER_LAYER = frozenset((1, 2, 4, 6, 17, 33, 41, 47, 59, 103, 132, 136))


@dataclass(frozen=True, slots=True)
class InnerPacket:
    """The IP packet quoted by an ICMP error (usually truncated); see PacketInfo.inner.

    offset/length: where the quote starts in the parsed buffer and how many bytes of the
    quoted packet it holds. icmp_type/icmp_code are None unless the quoted packet is
    ICMP(v6) of the same family (and, for v4, not a non-first fragment); echo_id/echo_seq
    are None unless it is an echo request or reply. protocol is the v6 next header after
    hop-by-hop, routing and destination options headers (44 for a fragment header).
    """

    offset: int
    length: int
    version: int
    header_length: int
    protocol: int
    ttl: int
    src: bytes
    dst: bytes
    icmp_type: int | None
    icmp_code: int | None
    echo_id: int | None
    echo_seq: int | None


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What parse_packet found in one IPv4/IPv6 packet carrying ICMP(v6).

    header_length includes v4 options / skipped v6 extension headers; total_length is the
    IP total length (v6: 40 + payload length); ttl is the TTL or hop limit; src/dst are
    4 or 16 bytes; icmp_offset is where the ICMP message starts. echo_id/echo_seq are set
    for echo request/reply only; inner for ICMP errors (v4 types 3, 11, 12; v6 types 1-4);
    mtu for v4 type 3 code 4 (next-hop MTU) and v6 type 2 (packet too big).
    """

    version: int
    header_length: int
    total_length: int
    ttl: int
    protocol: int
    src: bytes
    dst: bytes
    icmp_offset: int
    icmp_type: int
    icmp_code: int
    icmp_checksum: int
    echo_id: int | None
    echo_seq: int | None
    inner: InnerPacket | None
    mtu: int | None


# ---------------------------------------------------------------- checksums (private)


def _sum16(data: bytes | memoryview) -> int:
    """One's-complement sum (unfolded) of data as big-endian 16-bit words, odd byte padded."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(acc: int) -> int:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def _update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def _v6_pseudo_sum(ip: bytes | bytearray | memoryview, upper_length: int) -> int:
    """RFC 8200 8.1 pseudo-header (addresses, length, next header 58) of the v6 header at ip."""
    return _sum16(ip[8:40]) + (upper_length >> 16) + (upper_length & 0xFFFF) + 58


def _load16(p: bytes | bytearray | memoryview, offset: int) -> int:
    return (p[offset] << 8) | p[offset + 1]


# ---------------------------------------------------------------- parsing


class _Fail(Exception):
    """Internal: carries a reason name out of the parser (mirrors the C negative return)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _skip_extensions(p: memoryview, end: int, next_header: int, offset: int, final: bool) -> tuple[int, int]:
    """Skip hop-by-hop, routing and destination options headers: (next header, offset).

    (-1, 0) if one is cut short; with final, (-2, 0) for a routing header with segments
    left (still in transit; its ICMPv6 checksum would use another pseudo-header address).
    """
    while next_header in _V6_SKIPPED:
        if offset + 2 > end:
            return -1, 0
        length = (p[offset + 1] + 1) * 8
        if offset + length > end:
            return -1, 0
        if final and next_header == 43 and p[offset + 3] != 0:
            return -2, 0
        next_header = p[offset]
        offset += length
    return next_header, offset


def _parse_quote(p: memoryview, version: int, qoff: int, end: int, field_length: int, alen: int) -> InnerPacket:
    qlen = end - qoff
    if field_length:
        if field_length > qlen:
            raise _Fail("bad_quote")
        qlen = field_length
    if qlen == 0:
        raise _Fail("truncated_quote")
    q = p[qoff : qoff + qlen]
    if q[0] >> 4 != version:
        raise _Fail("bad_quote")
    if version == 4:
        if qlen < 20:
            raise _Fail("truncated_quote")
        hlen = (q[0] & 0x0F) * 4
        if hlen < 20:
            raise _Fail("bad_quote")
        if qlen < hlen + 8:
            raise _Fail("truncated_quote")
        inner_total = _load16(q, 2)
        ttl, protocol, src_off = q[8], q[9], 12
        has_icmp = protocol == 1 and (_load16(q, 6) & 0x1FFF) == 0  # a non-first fragment has no ICMP header
    else:
        if qlen < 40:
            raise _Fail("truncated_quote")
        protocol, hlen = _skip_extensions(q, qlen, q[6], 40, False)
        if protocol < 0:
            raise _Fail("truncated_quote")
        if qlen < hlen + 8:
            raise _Fail("truncated_quote")
        inner_total = 40 + _load16(q, 4)
        ttl, src_off = q[7], 8
        has_icmp = protocol == 58
    if inner_total < hlen + 8 or (field_length == 0 and inner_total < qlen):
        raise _Fail("bad_quote")
    icmp_type = icmp_code = echo_id = echo_seq = None
    if has_icmp:
        icmp_type, icmp_code = q[hlen], q[hlen + 1]
        if icmp_type in ((8, 0) if version == 4 else (128, 129)):
            echo_id, echo_seq = _load16(q, hlen + 4), _load16(q, hlen + 6)
    return InnerPacket(
        offset=qoff,
        length=min(qlen, inner_total),
        version=version,
        header_length=hlen,
        protocol=protocol,
        ttl=ttl,
        src=bytes(q[src_off : src_off + alen]),
        dst=bytes(q[src_off + alen : src_off + 2 * alen]),
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        echo_id=echo_id,
        echo_seq=echo_seq,
    )


def _parse(p: memoryview, verify: bool) -> PacketInfo:
    n = len(p)
    if n == 0:
        raise _Fail("empty")
    version = p[0] >> 4
    if version == 4:
        if n < 20:
            raise _Fail("truncated_ip_header")
        hlen = (p[0] & 0x0F) * 4
        if hlen < 20:
            raise _Fail("bad_header_length")
        if hlen > n:
            raise _Fail("truncated_ip_header")
        total = _load16(p, 2)
        if total != n:
            raise _Fail("bad_total_length")
        if verify and _fold(_sum16(p[:hlen])) != 0xFFFF:
            raise _Fail("bad_ip_checksum")
        if _load16(p, 6) & 0x3FFF:  # MF flag or a fragment offset
            raise _Fail("fragment")
        if p[9] != 1:
            raise _Fail("not_icmp")
        alen, ttl, src_off, protocol = 4, p[8], 12, 1
    elif version == 6:
        if n < 40:
            raise _Fail("truncated_ip_header")
        total = 40 + _load16(p, 4)
        if total != n:
            raise _Fail("bad_total_length")
        next_header, hlen = _skip_extensions(p, n, p[6], 40, True)
        if next_header == -2:
            raise _Fail("unsupported_extension_header")
        if next_header < 0:
            raise _Fail("truncated_extension_header")
        if next_header == 44:
            raise _Fail("fragment")
        if next_header != 58:
            raise _Fail("not_icmp" if next_header in _UPPER_LAYER else "unsupported_extension_header")
        alen, ttl, src_off, protocol = 16, p[7], 8, 58
    else:
        raise _Fail("bad_version")
    icmp_length = total - hlen
    if icmp_length < 8:
        raise _Fail("truncated_icmp")
    if verify:
        acc = _sum16(p[hlen:total])
        if version == 6:
            acc += _v6_pseudo_sum(p, icmp_length)
        if _fold(acc) != 0xFFFF:
            raise _Fail("bad_icmp_checksum")
    icmp_type, icmp_code = p[hlen], p[hlen + 1]
    echo_id = echo_seq = mtu = None
    inner = None
    field_length = 0
    if version == 4:
        is_echo = icmp_type in (8, 0)
        is_error = icmp_type in (3, 11, 12)
        if is_error:
            field_length = p[hlen + 5] * 4  # RFC 4884 length, 32-bit words
        if icmp_type == 3 and icmp_code == 4:
            mtu = _load16(p, hlen + 6)
    else:
        is_echo = icmp_type in (128, 129)
        is_error = 1 <= icmp_type <= 4
        if icmp_type in (1, 3):
            field_length = p[hlen + 4] * 8  # RFC 4884 length, 64-bit words
        elif icmp_type == 2:
            mtu = int.from_bytes(p[hlen + 4 : hlen + 8], "big")
    if is_echo:
        echo_id, echo_seq = _load16(p, hlen + 4), _load16(p, hlen + 6)
    if is_error:
        inner = _parse_quote(p, version, hlen + 8, total, field_length, alen)
    return PacketInfo(
        version=version,
        header_length=hlen,
        total_length=total,
        ttl=ttl,
        protocol=protocol,
        src=bytes(p[src_off : src_off + alen]),
        dst=bytes(p[src_off + alen : src_off + 2 * alen]),
        icmp_offset=hlen,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        icmp_checksum=_load16(p, hlen + 2),
        echo_id=echo_id,
        echo_seq=echo_seq,
        inner=inner,
        mtu=mtu,
    )


def _byte_view(data: ReadableBuffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _parse_or_raise(p: memoryview, verify: bool) -> PacketInfo:
    try:
        return _parse(p, verify)
    except _Fail as fail:
        raise MalformedPacket(fail.reason) from None


def parse_packet(data: ReadableBuffer, *, verify_checksums: bool = True) -> PacketInfo:
    """Parse and validate one whole IPv4/IPv6 packet carrying ICMP/ICMPv6; return a PacketInfo.

    Raises MalformedPacket; its reason is one of PACKET_MALFORMED_REASONS. Bytes beyond the
    IP total length are rejected ("bad_total_length"): the tunnel carries exactly one
    packet per datagram, so a disagreement means corruption. Fragments are rejected
    ("fragment"; nothing is reassembled). v4 options are allowed; v6 hop-by-hop, routing and
    destination options headers are skipped (a routing header with segments left is
    "unsupported_extension_header": the packet is not at its destination). With verify_checksums the IPv4 header checksum
    and the ICMP(v6) checksum (v6 with the RFC 8200 pseudo-header) must be right; checksums
    inside an error's quote are never checked. An error's quote must hold the quoted IP
    header plus 8 bytes and may be shorter than the quoted packet, not longer (unless an
    RFC 4884 length says where it ends).
    """
    return _parse_or_raise(_byte_view(data), verify_checksums)


# ---------------------------------------------------------------- building


def _check_range(value: object, name: str, bits: int) -> int:
    """ValueError unless value is an integer in 0 .. 2**bits - 1 (TypeError if not an integer)."""
    number = operator.index(value)  # type: ignore[call-overload]
    if not 0 <= number < (1 << bits):
        raise ValueError(f"{name} must be in 0..{(1 << bits) - 1}, got {value}")
    return number


def _ip_header(src: bytes, dst: bytes, icmp_length: int, ttl: int) -> bytearray:
    if len(src) == 4:
        # id 0, DF: an atomic datagram (RFC 6864); checksum filled in below
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + icmp_length, 0, 0x4000, ttl, 1, 0, src, dst))
        header[10:12] = (~_fold(_sum16(header)) & 0xFFFF).to_bytes(2, "big")
        return header
    return bytearray(struct.pack("!IHBB16s16s", 0x60000000, icmp_length, 58, ttl, src, dst))


def _finish_icmp(packet: bytearray, hlen: int) -> bytes:
    icmp_length = len(packet) - hlen
    acc = _sum16(packet[hlen:])
    if hlen == 40:
        acc += _v6_pseudo_sum(packet, icmp_length)
    packet[hlen + 2 : hlen + 4] = (~_fold(acc) & 0xFFFF).to_bytes(2, "big")
    return bytes(packet)


def build_echo(
    src: ReadableBuffer,
    dst: ReadableBuffer,
    echo_id: int,
    seq: int,
    payload: ReadableBuffer = b"",
    *,
    ttl: int = 64,
    reply: bool = False,
) -> bytes:
    """Build an ICMP echo request (or reply with reply=True); IPv4 or IPv6 by address length.

    IPv4: no options, TOS 0, identification 0, DF set. IPv6: traffic class and flow label 0.
    Raises ValueError for unusable arguments (address lengths, ranges, packet too long).
    """
    src_b, dst_b, payload_b = bytes(_byte_view(src)), bytes(_byte_view(dst)), bytes(_byte_view(payload))
    alen = len(src_b)
    if alen not in (4, 16) or len(dst_b) != alen:
        raise ValueError(f"addresses must both be 4 (IPv4) or 16 (IPv6) bytes, got {alen} and {len(dst_b)}")
    _check_range(echo_id, "echo_id", 16)
    _check_range(seq, "seq", 16)
    _check_range(ttl, "ttl", 8)
    icmp_length = 8 + len(payload_b)
    if icmp_length + (20 if alen == 4 else 0) > 0xFFFF:
        raise ValueError(f"payload of {len(payload_b)} bytes does not fit in one IP packet")
    icmp_type = (0 if reply else 8) if alen == 4 else (129 if reply else 128)
    packet = _ip_header(src_b, dst_b, icmp_length, ttl)
    packet += struct.pack("!BBHHH", icmp_type, 0, 0, echo_id, seq) + payload_b
    return _finish_icmp(packet, len(packet) - icmp_length)


def build_icmp_error(
    src: ReadableBuffer,
    original: ReadableBuffer,
    icmp_type: int,
    icmp_code: int,
    *,
    mtu: int = 0,
    ttl: int = 64,
) -> bytes:
    """Build an ICMP(v6) error from src to original's source, quoting as much of original as fits.

    The family follows len(src) and must match original's. The whole packet is at most 576
    bytes for IPv4 (RFC 792/1812) and 1280 for IPv6 (RFC 4443). mtu goes in bytes 6-7 for
    v4 type 3 code 4 and bytes 4-7 for v6 type 2, and must be 0 for any other message.
    Raises ValueError for unusable arguments.
    """
    src_b = bytes(_byte_view(src))
    orig = _byte_view(original)
    alen = len(src_b)
    if alen not in (4, 16):
        raise ValueError(f"src must be 4 (IPv4) or 16 (IPv6) bytes, got {alen}")
    v4 = alen == 4
    if len(orig) < (20 if v4 else 40) or orig[0] >> 4 != (4 if v4 else 6):
        raise ValueError(f"original must be a whole IPv{4 if v4 else 6} header or more, like src")
    _check_range(icmp_type, "icmp_type", 8)
    _check_range(icmp_code, "icmp_code", 8)
    _check_range(ttl, "ttl", 8)
    has_mtu = (icmp_type == 3 and icmp_code == 4) if v4 else icmp_type == 2
    if has_mtu:
        _check_range(mtu, "mtu", 16 if v4 else 32)
    elif mtu != 0:
        raise ValueError("mtu applies only to v4 type 3 code 4 and v6 type 2 messages")
    hlen = 20 if v4 else 40
    quote = bytes(orig[: (_V4_ERROR_MAX if v4 else _V6_ERROR_MAX) - hlen - 8])
    dst_b = bytes(orig[12:16]) if v4 else bytes(orig[8:24])
    rest = mtu if has_mtu else 0  # v4: bytes 6-7 (the high half stays 0), v6: bytes 4-7
    packet = _ip_header(src_b, dst_b, 8 + len(quote), ttl)
    packet += struct.pack("!BBHI", icmp_type, icmp_code, 0, rest) + quote
    return _finish_icmp(packet, hlen)


def build_time_exceeded(src: ReadableBuffer, original: ReadableBuffer) -> bytes:
    """ICMP Time Exceeded in transit (v4 type 11, v6 type 3; code 0) about original."""
    return build_icmp_error(src, original, 11 if len(_byte_view(src)) == 4 else 3, 0)


def build_destination_unreachable(src: ReadableBuffer, original: ReadableBuffer, code: int) -> bytes:
    """ICMP Destination Unreachable (v4 type 3, v6 type 1) with the family's own code."""
    return build_icmp_error(src, original, 3 if len(_byte_view(src)) == 4 else 1, code)


def build_packet_too_big(src: ReadableBuffer, original: ReadableBuffer, mtu: int) -> bytes:
    """v4 Fragmentation Needed (type 3 code 4) or v6 Packet Too Big (type 2), carrying mtu."""
    v4 = len(_byte_view(src)) == 4
    return build_icmp_error(src, original, 3 if v4 else 2, 4 if v4 else 0, mtu=mtu)


# ---------------------------------------------------------------- rewriting


def _store16(p: memoryview, offset: int, value: int) -> int:
    """Store a 16-bit field and return its old value."""
    old = _load16(p, offset)
    p[offset] = value >> 8
    p[offset + 1] = value & 0xFF
    return old


def _csum_update(p: memoryview, csum_offset: int, old: int, new: int) -> None:
    _store16(p, csum_offset, _update16(_load16(p, csum_offset), old, new))


def _nested_csum_update(p: memoryview, csum_offset: int, outer_csum_offset: int, old: int, new: int) -> None:
    """Update the checksum at csum_offset, which itself lies under the one at outer_csum_offset."""
    old_csum = _load16(p, csum_offset)
    new_csum = _update16(old_csum, old, new)
    _store16(p, csum_offset, new_csum)
    _csum_update(p, outer_csum_offset, old_csum, new_csum)


def _rewrite_addr(p: memoryview, info: PacketInfo, addr_offset: int, addr: bytes) -> None:
    csum_offset = 10 if info.version == 4 else info.icmp_offset + 2
    for i in range(0, len(addr), 2):
        new = (addr[i] << 8) | addr[i + 1]
        _csum_update(p, csum_offset, _store16(p, addr_offset + i, new), new)


def _writable_view(buf: WriteableBuffer) -> memoryview:
    view = _byte_view(buf)
    if view.readonly:
        raise BufferError("Object is not writable.")
    return view


def _address_arg(value: ReadableBuffer, name: str, info: PacketInfo) -> bytes:
    addr = bytes(_byte_view(value))
    if len(addr) != len(info.src):
        raise ValueError(f"{name} must be {len(info.src)} bytes for IPv{info.version}, got {len(addr)}")
    return addr


def rewrite_echo(
    buf: WriteableBuffer,
    *,
    src: ReadableBuffer | None = None,
    dst: ReadableBuffer | None = None,
    echo_id: int | None = None,
    ttl: int | None = None,
) -> None:
    """Rewrite addresses, echo id and TTL of the echo request/reply in buf, in place.

    Checksums are updated incrementally (RFC 1624): the IPv4 header checksum, and the ICMP
    checksum (v6: also for address changes, through the pseudo-header). Checksums are not
    verified first, so a wrong one stays wrong. Raises MalformedPacket (nothing written) if
    buf is not a whole echo packet; ValueError for unusable arguments.
    """
    p = _writable_view(buf)
    info = _parse_or_raise(p, False)
    if info.echo_id is None:
        raise MalformedPacket("not_echo")
    new_src = None if src is None else _address_arg(src, "src", info)
    new_dst = None if dst is None else _address_arg(dst, "dst", info)
    if echo_id is not None:
        _check_range(echo_id, "echo_id", 16)
    if ttl is not None:
        _check_range(ttl, "ttl", 8)
    if new_src is not None:
        _rewrite_addr(p, info, 12 if info.version == 4 else 8, new_src)
    if new_dst is not None:
        _rewrite_addr(p, info, 16 if info.version == 4 else 24, new_dst)
    if echo_id is not None:
        _csum_update(p, info.icmp_offset + 2, _store16(p, info.icmp_offset + 4, echo_id), echo_id)
        if info.version == 4 and not any(p[info.icmp_offset :]):
            # RFC 1624 eqn. 3 gives 0x0000 where recomputation gives 0xffff: only for an
            # all-zero ICMPv4 message (an echo reply with id, seq and payload all zero).
            _store16(p, info.icmp_offset + 2, 0xFFFF)
    if ttl is not None:
        _set_ttl(p, info.version, ttl)


def _set_ttl(p: memoryview, version: int, ttl: int) -> None:
    if version == 4:
        new = (ttl << 8) | p[9]
        _csum_update(p, 10, _store16(p, 8, new), new)
    else:
        p[7] = ttl


def decrement_ttl(buf: WriteableBuffer) -> int:
    """Decrement the TTL / hop limit of the packet in buf in place; return the new value.

    The IPv4 header checksum is updated incrementally. When the TTL is 0 or 1 the packet
    must not be forwarded: buf is left untouched (to be quoted as received) and 0 is
    returned; the caller answers with Time Exceeded. Raises MalformedPacket if buf is not
    a whole ICMP packet (checksums are not verified).
    """
    p = _writable_view(buf)
    info = _parse_or_raise(p, False)
    if info.ttl <= 1:
        return 0
    _set_ttl(p, info.version, info.ttl - 1)
    return info.ttl - 1


def translate_icmp_error(buf: WriteableBuffer, client_addr: ReadableBuffer, client_echo_id: int) -> None:
    """Translate, in place, an ICMP error quoting an echo message we sent into the client's view.

    RFC 5508: the outer destination and the quoted source become client_addr, the quoted
    echo id becomes client_echo_id; the quoted IPv4 header checksum, the quoted ICMP(v6)
    checksum, the outer ICMP(v6) checksum and the outer IPv4 header checksum are updated
    incrementally. Raises MalformedPacket ("not_icmp_error", "quote_not_echo", or a parse
    reason; checksums are not verified, nothing is written) and ValueError for arguments.
    """
    p = _writable_view(buf)
    info = _parse_or_raise(p, False)
    addr = bytes(_byte_view(client_addr))
    if len(addr) != len(info.src):
        raise ValueError(f"client_addr must be {len(info.src)} bytes for IPv{info.version}, got {len(addr)}")
    _check_range(client_echo_id, "client_echo_id", 16)
    inner = info.inner
    if inner is None:
        raise MalformedPacket("not_icmp_error")
    if inner.echo_id is None:
        raise MalformedPacket("quote_not_echo")
    icmp_csum = info.icmp_offset + 2
    inner_icmp = inner.offset + inner.header_length
    # Outer destination: under the v4 header checksum, or the ICMPv6 pseudo-header.
    _rewrite_addr(p, info, 16 if info.version == 4 else 24, addr)
    inner_src = inner.offset + (12 if info.version == 4 else 8)
    for i in range(0, len(addr), 2):
        new = (addr[i] << 8) | addr[i + 1]
        old = _store16(p, inner_src + i, new)
        _csum_update(p, icmp_csum, old, new)  # the quote is outer ICMP payload
        if info.version == 4:
            _nested_csum_update(p, inner.offset + 10, icmp_csum, old, new)
        else:
            _nested_csum_update(p, inner_icmp + 2, icmp_csum, old, new)  # inner pseudo-header
    old = _store16(p, inner_icmp + 4, client_echo_id)
    _csum_update(p, icmp_csum, old, client_echo_id)
    _nested_csum_update(p, inner_icmp + 2, icmp_csum, old, client_echo_id)
