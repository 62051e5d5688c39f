"""The ICMP backend interface and the choice of backend for this platform.

A backend is the only part of the ICMP proxy that touches the network. The
proxy (:class:`fastproxy.icmp.proxy.IcmpProxy`) owns the flow table and every
policy decision. There are two kinds of backend:

- :class:`BatchedBackend` (raw sockets, Darwin): one socket per address family,
  echo ids rewritten by the proxy's batched NAT engine (``EchoNat``). The proxy
  fills send batches (``PacketBatch``) in one C call and the backend sends them
  (:meth:`BatchedBackend.send_batch`); the backend fills a receive batch from one
  socket (:meth:`BatchedBackend.receive_batch`) and the proxy maps it back to
  clients in one C call.
- :class:`PerPacketBackend` (Linux ping sockets, Windows): the kernel or the API
  keeps one handle per flow, so the proxy opens and closes flows
  (:meth:`PerPacketBackend.open_flow`, :meth:`PerPacketBackend.close_flow`),
  queues echo requests (:meth:`PerPacketBackend.send_echo`), sends the queue
  (:meth:`PerPacketBackend.flush`, which reports what could not be sent) and gets
  back what came from the network (:meth:`PerPacketBackend.receive`, and
  :meth:`PerPacketBackend.received_while_sending` after a flush) as whole IP
  packets in one normal form: the echo id (for errors: the quoted echo id) is the
  flow's assigned id, the destination (for errors: also the quoted source) is the
  connector's address or, where the socket does not tell it, the unspecified
  address; checksums are consistent with those addresses. The proxy maps them
  back to the client.

Backends by name: ``"ping"`` (Linux unprivileged ping sockets), ``"raw"``
(raw sockets, CAP_NET_RAW), ``"darwin"`` (macOS), ``"windows"`` (IcmpSendEcho2).
``"auto"`` picks ping sockets where allowed, else raw sockets where permitted,
else raises :class:`BackendUnavailable` saying what to change.
"""

from __future__ import annotations

import abc
import logging
import sys
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from fastproxy._impl import core
from fastproxy.errors import FastproxyError

__all__ = [
    "BACKEND_NAMES",
    "BackendFlow",
    "BackendUnavailable",
    "BatchedBackend",
    "IcmpBackend",
    "PerPacketBackend",
    "ReceivedPacket",
    "SendFailure",
    "create_backend",
]

logger = logging.getLogger("fastproxy.icmp")

BACKEND_NAMES: tuple[str, ...] = ("auto", "ping", "raw", "darwin", "windows")


class BackendUnavailable(FastproxyError):
    """The requested ICMP backend cannot run here; the message says what to change."""


@dataclass(frozen=True, slots=True, eq=False)
class BackendFlow:
    """One proxied flow: a client's (connection, source, destination, echo id) and its assigned echo id.

    The proxy makes one object per flow for the flow's lifetime, so flows compare
    and hash by identity (a cheap dictionary key for per-flow backend state).
    """

    conn_id: int
    client_src: bytes
    dst: bytes
    client_echo_id: int
    echo_id: int

    @property
    def version(self) -> int:
        """4 or 6, from the destination address length."""
        return 4 if len(self.dst) == 4 else 6


class ReceivedPacket(NamedTuple):
    """A packet from the network in the backend normal form (see the module docstring).

    ``flow`` is the flow the backend attributes it to when the socket already
    demultiplexed it (ping sockets, Windows); None when the proxy must find the
    flow from the packet itself (raw sockets).
    """

    packet: bytes | bytearray
    flow: BackendFlow | None


class SendFailure(NamedTuple):
    """An echo request that could not be sent.

    ``index`` counts :meth:`PerPacketBackend.send_echo` calls since the previous
    flush, or is the slot of the batch given to :meth:`BatchedBackend.send_batch`;
    ``errno`` is the socket error (ENETUNREACH, EHOSTUNREACH, EMSGSIZE...);
    ``mtu`` is the path MTU the kernel reported for EMSGSIZE, else 0.
    """

    index: int
    errno: int
    mtu: int


class IcmpBackend(abc.ABC):
    """What every backend has: a name, descriptors to watch, and a close."""

    #: The name ``create_backend`` knows this backend by.
    name: ClassVar[str]

    @abc.abstractmethod
    def filenos(self) -> list[int]:
        """File descriptors that become readable when the backend has something (fixed after creation)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every socket and thread of the backend; idempotent."""


class PerPacketBackend(IcmpBackend):
    """A backend with one kernel or API handle per flow: requests and replies go one by one, tagged with their flow."""

    @abc.abstractmethod
    def open_flow(self, flow: BackendFlow) -> None:
        """Prepare to send for a new flow (for example open its socket); raises OSError on failure."""

    @abc.abstractmethod
    def close_flow(self, flow: BackendFlow) -> None:
        """Forget a flow and release what it held; unknown flows are ignored."""

    @abc.abstractmethod
    def send_echo(self, flow: BackendFlow, message: bytes | bytearray | memoryview, ttl: int) -> None:
        """Queue one echo request: ``message`` is the ICMP message (type, code, checksum, id, seq,
        payload) already carrying ``flow.echo_id``; ``ttl`` is the TTL / hop limit to put on the wire."""

    @abc.abstractmethod
    def flush(self) -> list[SendFailure]:
        """Send everything queued since the last flush; returns the requests that failed."""

    @abc.abstractmethod
    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        """Return up to ``limit`` packets that have arrived, without blocking (empty when none)."""

    def received_while_sending(self) -> list[ReceivedPacket]:
        """Packets :meth:`flush` had to take off the network to send (the ping-socket backend
        drains a socket's ICMP errors to clear the error they left pending), each returned once,
        here or by the next :meth:`receive`; the proxy asks after every flush, since the
        descriptors may no longer wake it for them. None by default."""
        return []


class BatchedBackend(IcmpBackend):
    """A backend with one socket per address family whose echo ids the proxy rewrites itself (EchoNat).

    ``batch_size`` is the number of slots of every batch it sends or receives.
    """

    batch_size: int

    @abc.abstractmethod
    def families(self) -> tuple[int, ...]:
        """The address families (4, 6) it has a socket for."""

    @abc.abstractmethod
    def send_batch(self, family: int, batch: core.PacketBatch, count: int) -> list[SendFailure]:
        """Send slots [0, count) of ``batch`` (ICMP messages with their destination and TTL) on the
        socket of ``family``; returns the slots that could not be sent, by slot index."""

    @abc.abstractmethod
    def receive_batch(self, fd: int) -> tuple[int, core.PacketBatch]:
        """Receive one batch, without blocking, from the socket whose descriptor is ``fd``; returns its
        family and the batch (``count`` packets, 0 when nothing waits), valid until the next call."""


def create_backend(name: str = "auto", **options: object) -> IcmpBackend:
    """Create the backend called ``name`` (one of :data:`BACKEND_NAMES`).

    ``auto``: Linux ping sockets if this process's groups are inside
    ``net.ipv4.ping_group_range``, else raw sockets if it has CAP_NET_RAW, else
    :class:`BackendUnavailable` naming the sysctl to set. On macOS ``auto`` is
    ``darwin``, on Windows ``windows``. ``options`` go to the backend's constructor.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown ICMP backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        if sys.platform == "darwin":
            name = "darwin"
        elif sys.platform == "win32":
            name = "windows"
        else:
            return _auto_linux(**options)
    if name == "ping":
        from .linux_ping import PingSocketBackend

        return PingSocketBackend(**options)  # type: ignore[arg-type]
    if name == "raw":
        from .raw import RawSocketBackend

        return RawSocketBackend(**options)  # type: ignore[arg-type]
    if name == "darwin":
        from .darwin import DarwinBackend

        return DarwinBackend(**options)  # type: ignore[arg-type]
    from .windows import WindowsBackend

    return WindowsBackend(**options)  # type: ignore[arg-type]


def _auto_linux(**options: object) -> IcmpBackend:
    from .linux_ping import PingSocketBackend, ping_sockets_allowed
    from .raw import RawSocketBackend

    allowed, why_not = ping_sockets_allowed()
    if allowed:
        return PingSocketBackend(**options)  # type: ignore[arg-type]
    try:
        backend = RawSocketBackend(**options)  # type: ignore[arg-type]
    except BackendUnavailable as raw_error:
        raise BackendUnavailable(f"{why_not}; and raw sockets are not possible either: {raw_error}") from None
    logger.warning("%s; using raw ICMP sockets instead (CAP_NET_RAW)", why_not)
    return backend
