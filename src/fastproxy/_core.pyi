"""Type stubs for the compiled core, fastproxy._core (the twin, fastproxy._purepy, has the same API)."""

from __future__ import annotations

from _typeshed import ReadableBuffer, WriteableBuffer

# ---- checksum ----
def internet_checksum(data: ReadableBuffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (the value for a checksum field); ``initial`` is a 16-bit partial sum."""

def ones_complement_sum(data: ReadableBuffer, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not complemented)."""

def verify_checksum(data: ReadableBuffer, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) plus ``initial`` sums to 0xffff."""

def pseudo_header_sum(src: ReadableBuffer, dst: ReadableBuffer, length: int, next_header: int) -> int:
    """The folded sum of the IPv4 (4-byte addresses) or IPv6 (16-byte addresses) pseudo-header."""

def checksum_update16(checksum: int, old: int, new: int) -> int:
    """The checksum after a 16-bit field changes from ``old`` to ``new`` (RFC 1624 eqn. 3)."""

def checksum_update_bytes(checksum: int, old: ReadableBuffer, new: ReadableBuffer) -> int:
    """The checksum after an even-length field (an address) changes from ``old`` to ``new``."""

# ---- end checksum ----

# ---- packet ----
# ---- end packet ----

# ---- flowtable ----
# ---- end flowtable ----

# ---- batchio ----
# ---- end batchio ----

# ---- datagram ----
# ---- end datagram ----
