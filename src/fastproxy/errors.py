"""Exceptions raised by fastproxy.

Every exception carries enough to act on: packet and datagram errors name a
stable ``reason`` (the same string the drop counters use), so an operator can
search the metrics for it.
"""

from __future__ import annotations


class FastproxyError(Exception):
    """Base class of every error fastproxy raises on purpose."""


class MalformedPacket(FastproxyError, ValueError):
    """An IP/ICMP packet failed validation.

    ``reason`` is a short stable name (for example ``"truncated_ip_header"`` or
    ``"bad_icmp_checksum"``); it doubles as the drop-counter label.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class MalformedDatagram(FastproxyError, ValueError):
    """A tunnel datagram (DESIGN section 2) failed validation; see ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class FlowTableFull(FastproxyError):
    """The flow table reached a bound; ``scope`` is ``"global"`` or ``"connection"``.

    The new flow is refused and nothing already in the table is touched. Raise
    the table's capacity (or the per-connection limit), or lower the idle
    timeout so stale flows leave sooner.
    """

    def __init__(self, scope: str, limit: int) -> None:
        self.scope = scope
        self.limit = limit
        super().__init__(
            f"flow table full ({scope} limit of {limit} flows reached); "
            "raise the limit or lower the idle timeout"
        )


class EchoIdExhausted(FastproxyError):
    """Every echo identifier towards one destination is already assigned."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        super().__init__(
            f"all 65536 echo identifiers towards {destination} are in use; "
            "wait for flows to expire or lower the idle timeout"
        )


class DialError(FastproxyError, ConnectionError):
    """A connection to the edge could not be made; the message names the cause and the fix.

    Subclasses say which kind: :class:`EdgeUnreachable`, :class:`CertificateRejected`,
    :class:`HandshakeFailed`, and ``fastproxy.tunnel.dial.TunnelRejected`` (the edge itself
    refused, with its reason)."""


class EdgeUnreachable(DialError, TimeoutError):
    """Nothing answered the QUIC handshake (edge down, wrong address or port, UDP blocked)."""


class HandshakeFailed(DialError):
    """The QUIC/TLS handshake failed for a reason other than the edge's certificate
    (ALPN mismatch, a TLS alert from the peer...). ``code`` is the QUIC error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        self.code = code
        super().__init__(message)


class CertificateRejected(DialError):
    """The edge's certificate failed our check (pin, CA bundle, name, validity period)."""


class CertificateFileError(FastproxyError, ValueError):
    """A certificate or key file the edge was given (or keeps in its state directory)
    cannot be used; the message names the file and what to do."""
