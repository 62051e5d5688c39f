"""Batched datagram socket I/O: PacketBatch (recvmmsg / sendmmsg with per-packet TTL).

Re-exports the compiled core's names, or the pure-Python twin's when
``FASTPROXY_NO_EXTENSIONS=1`` is set or no compiled core is available.
"""

from __future__ import annotations

from ._impl import core

PacketBatch = core.PacketBatch

__all__ = ["PacketBatch"]
