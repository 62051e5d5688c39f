"""Pure-Python twin of fastproxy._core: checksum (RFC 1071 sums, RFC 1624 updates).

Works on whole buffers at once: since 2**16 == 1 (mod 0xffff), the one's-complement
sum of the big-endian 16-bit words of ``data`` is ``int.from_bytes(data, "big") %
0xffff``, except that a non-zero sum congruent to 0 is written 0xffff ("negative
zero"), and only an all-zero input sums to 0.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "checksum_update16",
    "checksum_update_bytes",
    "internet_checksum",
    "ones_complement_sum",
    "pseudo_header_sum",
    "verify_checksum",
]


def byte_view(data: ReadableBuffer) -> memoryview:
    """``data`` as a flat unsigned-byte memoryview, refusing what the compiled core refuses."""
    view = memoryview(data)
    if view.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {view.ndim})")
    if view.format not in ("B", "c"):
        raise ValueError(f"Buffer dtype mismatch, expected 'const uint8_t' but got format {view.format!r}")
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.cast("B") if view.format != "B" else view


def _u16(value: int, name: str) -> int:
    value = operator.index(value)
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be a 16-bit value (0..65535), got {value!r}")
    return value


def _fold(total: int) -> int:
    """Fold a non-negative sum of 16-bit words to 16 bits with end-around carry."""
    if total == 0:
        return 0
    return total % 0xFFFF or 0xFFFF


def _word_sum(view: memoryview) -> int:
    """A number congruent (mod 0xffff) to the sum of the words of ``view``, zero only for all-zero input."""
    value = int.from_bytes(view, "big")
    return value << 8 if len(view) % 2 else value  # pad an odd length with a zero low byte


def internet_checksum(data: ReadableBuffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data``: the value to store in a checksum field.

    ``data`` is any readable buffer (an odd length is padded with one zero byte);
    ``initial`` is a 16-bit partial sum, not complemented, added in (for example
    ``pseudo_header_sum(...)``). Compute it with the checksum field set to zero.
    """
    return ~ones_complement_sum(data, initial) & 0xFFFF


def ones_complement_sum(data: ReadableBuffer, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not complemented)."""
    view = byte_view(data)
    return _fold(_word_sum(view) + _u16(initial, "initial"))


def verify_checksum(data: ReadableBuffer, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) plus ``initial`` sums to 0xffff, i.e. the checksum is right."""
    return ones_complement_sum(data, initial) == 0xFFFF


def pseudo_header_sum(src: ReadableBuffer, dst: ReadableBuffer, length: int, next_header: int) -> int:
    """The folded sum (not complemented) of the IPv4 or IPv6 pseudo-header.

    ``src`` and ``dst`` are both 4-byte (IPv4, RFC 768/793) or both 16-byte (IPv6,
    RFC 8200 section 8.1) addresses; ``length`` is the upper-layer length (at most
    65535 for IPv4, 2**32 - 1 for IPv6); ``next_header`` the protocol number.
    Pass the result as ``initial`` to internet_checksum().
    """
    s, d = byte_view(src), byte_view(dst)
    n = len(s)
    if n != len(d) or n not in (4, 16):
        raise ValueError(f"src and dst must both be 4 (IPv4) or 16 (IPv6) bytes, got {len(s)} and {len(d)}")
    length = operator.index(length)
    next_header = operator.index(next_header)
    if not 0 <= length <= (0xFFFF if n == 4 else 0xFFFFFFFF):
        raise ValueError(f"length {length!r} out of range for IPv{4 if n == 4 else 6}")
    if not 0 <= next_header <= 0xFF:
        raise ValueError(f"next_header must be 0..255, got {next_header!r}")
    return _fold(_word_sum(s) + _word_sum(d) + (length >> 16) + (length & 0xFFFF) + next_header)


def checksum_update16(checksum: int, old: int, new: int) -> int:
    """The checksum after a 16-bit field changes from ``old`` to ``new`` (RFC 1624 eqn. 3)."""
    checksum, old, new = _u16(checksum, "checksum"), _u16(old, "old"), _u16(new, "new")
    return ~_fold((~checksum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def checksum_update_bytes(checksum: int, old: ReadableBuffer, new: ReadableBuffer) -> int:
    """The checksum after a field (for example an address) changes from bytes ``old`` to ``new``.

    ``old`` and ``new`` are readable buffers of the same even length (RFC 1624 eqn. 3
    applied to each 16-bit word).
    """
    o, w = byte_view(old), byte_view(new)
    checksum = _u16(checksum, "checksum")
    if len(o) != len(w) or len(o) % 2:
        raise ValueError(f"old and new must have the same even length, got {len(o)} and {len(w)}")
    if not o:
        return checksum
    # ~m summed word by word equals the sum of the complemented field, as one big number
    complement_old = int.from_bytes(o, "big") ^ ((1 << (8 * len(o))) - 1)
    return ~_fold((~checksum & 0xFFFF) + complement_old + int.from_bytes(w, "big")) & 0xFFFF
