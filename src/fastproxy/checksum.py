"""Internet checksums: RFC 1071 sums over buffers and RFC 1624 incremental updates.

All values are host-order integers of big-endian packet fields. The compiled core
does the work (about 12 GB/s on 1500-byte buffers); ``FASTPROXY_NO_EXTENSIONS=1``
selects the pure-Python twin, which gives identical results.
"""

from __future__ import annotations

from ._impl import core

checksum_update16 = core.checksum_update16
checksum_update_bytes = core.checksum_update_bytes
internet_checksum = core.internet_checksum
ones_complement_sum = core.ones_complement_sum
pseudo_header_sum = core.pseudo_header_sum
verify_checksum = core.verify_checksum

__all__ = [
    "checksum_update16",
    "checksum_update_bytes",
    "internet_checksum",
    "ones_complement_sum",
    "pseudo_header_sum",
    "verify_checksum",
]
