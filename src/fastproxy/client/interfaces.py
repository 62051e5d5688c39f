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

    ``client_v4`` / ``client_v6``: the addresses the edge assigned (None if it gave none
    of that family); packets sent must come from them. ``prefixes``: what the edge lets
    this client reach.
    """

    @property
    def client_v4(self) -> ipaddress.IPv4Address | None: ...

    @property
    def client_v6(self) -> ipaddress.IPv6Address | None: ...

    @property
    def prefixes(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]: ...

    def send_packets(self, packets: list[bytes]) -> None:
        """Queue these whole IP packets for the edge (no wait)."""

    async def receive_packets(self) -> list[bytes]:
        """Wait for, then return, every packet that has arrived (at least one)."""


@runtime_checkable
class UdpSession(Protocol):
    """One UDP flow to a fixed remote address and port, through the tunnel."""

    def send(self, payload: bytes) -> None:
        """Send one datagram's payload to the remote (no wait)."""

    async def receive(self) -> bytes:
        """Wait for the next payload from the remote."""

    def close(self) -> None:
        """End the session; pending receive() calls raise ConnectionError."""


class UdpSessionOpener(Protocol):
    """Opens UDP sessions (the client side of DESIGN section 4)."""

    async def open_udp(self, host: str, port: int) -> UdpSession:
        """A session to ``host:port`` once the far side has answered its registration."""
