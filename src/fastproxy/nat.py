"""Batched source NAT of ICMP echo (the raw and Darwin backends' engine).

``EchoNat(table, allowed)`` turns client packets into ICMP messages ready for a
``PacketBatch.send`` on a raw socket (``outbound``) and packets a raw socket
received back into the packets each client must see (``inbound``), one call per
batch. Compiled core, or the pure-Python twin with ``FASTPROXY_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

from ._impl import core

EchoNat = core.EchoNat
normalize_bsd_ipv4_headers = core.normalize_bsd_ipv4_headers
NAT_REFUSAL_REASONS: tuple[str, ...] = core.NAT_REFUSAL_REASONS
NAT_REPLY_DROP_REASONS: tuple[str, ...] = core.NAT_REPLY_DROP_REASONS

__all__ = ["NAT_REFUSAL_REASONS", "NAT_REPLY_DROP_REASONS", "EchoNat", "normalize_bsd_ipv4_headers"]
