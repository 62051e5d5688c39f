"""What the user-side tools need from a tunnel client, as two small protocols.

The ping, traceroute, UDP forward and TUN bridge code is written against these, so
it is tested with fakes and runs over :class:`fastproxy.Client` (or anything else
that carries IP packets and UDP sessions).
"""

from __future__ import annotations

import ipaddress
from typing import Protocol, runtime_checkable

__all__ = ["PacketTunnel", "UdpSession", "UdpSessionOpener"]


@runtime_checkable
class PacketTunnel(Protocol):
    """Carries whole IPv4/IPv6 packets (ICMP) to the edge and back.

    ``address_v4`` / ``address_v6``: the tunnel addresses the edge assigned (None if it
    gave none of that family); packets sent must come from them. ``prefixes``: what the
    edge lets this client reach. :class:`fastproxy.Client` is one.
    """

    @property
    def address_v4(self) -> ipaddress.IPv4Address | None: ...

    @property
    def address_v6(self) -> ipaddress.IPv6Address | None: ...

    @property
    def prefixes(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]: ...

    def send_packets(self, packets: list[bytes]) -> None:
        """Queue these whole IP packets for the edge (no wait)."""

    async def receive_packet(self, timeout: float | None = None) -> bytes:
        """The next whole IP packet from the edge (TimeoutError after ``timeout``)."""


@runtime_checkable
class UdpSession(Protocol):
    """One UDP flow to a fixed remote address and port, through the tunnel."""

    def send(self, payload: bytes) -> None:
        """Send one datagram's payload to the remote (no wait)."""

    async def receive(self, timeout: float | None = None) -> bytes:
        """The next payload from the remote; EOFError once the session has ended,
        TimeoutError after ``timeout``."""

    def close(self) -> None:
        """End the session."""


class UdpSessionOpener(Protocol):
    """Opens UDP sessions (the client side of DESIGN section 4)."""

    async def open_udp(self, destination: str, port: int) -> UdpSession:
        """A session to ``destination`` (an IP address) and ``port``, once the far side
        has answered its registration (ConnectionError if refused, TimeoutError)."""
