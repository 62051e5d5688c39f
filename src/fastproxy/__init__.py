"""fastproxy: ICMP and UDP through a QUIC datagram tunnel into private networks."""

from __future__ import annotations

from ._impl import COMPILED
from .errors import EchoIdExhausted, FastproxyError, FlowTableFull, MalformedDatagram, MalformedPacket

__version__ = "0.1.0"

__all__ = [
    "COMPILED",
    "EchoIdExhausted",
    "FastproxyError",
    "FlowTableFull",
    "MalformedDatagram",
    "MalformedPacket",
    "__version__",
]
