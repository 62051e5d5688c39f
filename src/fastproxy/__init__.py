"""fastproxy: ICMP and UDP through a QUIC datagram tunnel into private networks."""

from __future__ import annotations

from ._impl import COMPILED
from .errors import (
    CertificateFileError,
    CertificateRejected,
    DialError,
    EchoIdExhausted,
    EdgeUnreachable,
    FastproxyError,
    FlowTableFull,
    HandshakeFailed,
    MalformedDatagram,
    MalformedPacket,
)

__version__ = "0.1.0"

# The tunnel's library classes load the QUIC stack, so they are imported on first use.
_TUNNEL_CLASSES = {
    "Client": "fastproxy.tunnel.client",
    "Connector": "fastproxy.tunnel.connector",
    "Edge": "fastproxy.tunnel.edge",
    "EdgeConfig": "fastproxy.tunnel.edge",
    "NoRouteError": "fastproxy.tunnel.client",
    "Trust": "fastproxy.tunnel.quic",
    "TunnelRejected": "fastproxy.tunnel.dial",
    "UdpSession": "fastproxy.tunnel.client",
    "UdpSessionClosed": "fastproxy.tunnel.client",
    "UdpSessionRefused": "fastproxy.tunnel.client",
    "UdpDestinationUnreachable": "fastproxy.tunnel.client",
    "UdpSessionTimeout": "fastproxy.tunnel.client",
    "UdpPayloadTooLarge": "fastproxy.tunnel.client",
}


def __getattr__(name: str) -> object:
    """``fastproxy.Client``, ``fastproxy.Edge``, ``fastproxy.Connector`` (and their helper
    types): async context managers of the tunnel, see fastproxy.tunnel."""
    module = _TUNNEL_CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'fastproxy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

__all__ = [
    "COMPILED",
    "Client",
    "Connector",
    "Edge",
    "EdgeConfig",
    "NoRouteError",
    "Trust",
    "TunnelRejected",
    "UdpSession",
    "UdpSessionClosed",
    "UdpSessionRefused",
    "UdpDestinationUnreachable",
    "UdpSessionTimeout",
    "UdpPayloadTooLarge",
    "CertificateFileError",
    "CertificateRejected",
    "DialError",
    "EchoIdExhausted",
    "EdgeUnreachable",
    "FastproxyError",
    "FlowTableFull",
    "HandshakeFailed",
    "MalformedDatagram",
    "MalformedPacket",
    "__version__",
]
