"""The connector: dials out to the edge, announces its routes, proxies UDP sessions
itself and hands ICMP datagrams (0x02) to an ICMP handler (normally the ICMP proxy,
:class:`fastproxy.tunnel.connector_icmp.IcmpProxyHandler`).

ICMP handler interface: the connector calls ``icmp_handler_factory(sink)`` once, where
``sink(packets)`` sends a list of whole IP packets back through the current tunnel
connection (one ``send_datagrams`` call). The handler gets

- ``start()`` once the event loop runs (``Connector.start``),
- ``handle_packets(packets)`` with the whole IP packets of one received datagram batch
  (memoryviews valid during the call),
- ``client_gone(addresses)`` when the edge says a client left (control message
  CLIENT_GONE with its 4- and 16-byte tunnel addresses): its flows can go now,
- ``set_routes(routes)`` (if it has one) when the connector's routes change,
- ``close()`` when the connector stops.

Clients are told apart by their tunnel address (the edge drops spoofed sources), which
stays the same across a reconnect of this connector, so ICMP flows survive it.

Reconnects: exponential backoff with full jitter, from ``backoff_initial`` up to
``backoff_max`` seconds, reset after a connection that stayed up.

Routes can change while it runs (``update_routes``, what SIGHUP does): the connector
announces the new set on its connection (control protocol version 2) and the edge
tells the clients; with an edge of version 1 it reconnects to announce them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from ..datagram import DATAGRAM_ICMP, UdpPayload, UdpRegistration, decode_datagram, encode_icmp
from ..errors import EdgeUnreachable, MalformedDatagram
from ..logs import format_address
from . import quic
from .control import (
    ROLE_CONNECTOR,
    Announce,
    ClientGone,
    ControlMessage,
    Error,
    Network,
    Welcome,
    encode_message,
)
from .dial import Backoff, dial
from .udp_sessions import DEFAULT_IDLE_TIMEOUT, UdpSessionTable

__all__ = ["Connector", "IcmpHandler", "IcmpHandlerFactory", "IcmpSink"]

log = logging.getLogger("fastproxy.connector")

IcmpSink = Callable[[list[bytes]], None]
"""Sends whole IP packets back to clients through the tunnel (one batch per call)."""


class IcmpHandler(Protocol):
    """Takes the ICMP packets the edge sends to this connector (see the module docstring)."""

    def start(self) -> None: ...

    def handle_packets(self, packets: list[memoryview]) -> None: ...

    def client_gone(self, addresses: list[bytes]) -> None: ...

    def close(self) -> None: ...


IcmpHandlerFactory = Callable[[IcmpSink], IcmpHandler]

EARLY_DATAGRAM_LIMIT = 256
"""Datagrams kept while the welcome is on its way (see ``Connector._on_datagrams``)."""


class Connector:
    """A connector (library class and what ``fastproxy connector`` runs).

    ::

        async with Connector("edge.example", 4433, token="k", routes=[ip_network("10.0.0.0/8")],
                             trust=Trust(pin=PIN), icmp_backend="auto") as connector:
            await connector.connected.wait()
            await stop.wait()

    or ``await connector.start()`` / ``await connector.close()``. ``icmp_backend`` (``auto``,
    ``ping``, ``raw``...) runs the ICMP proxy for ``routes``; it raises
    :class:`fastproxy.icmp.BackendUnavailable` at once, naming the sysctl or capability
    that is missing. Without it (and without ``icmp_handler_factory``) ICMP datagrams are
    dropped and counted (``drops["icmp_no_handler"]``); UDP sessions always work.
    Counters: ``drops``, ``stats``, ``udp_drops``, ``udp_stats``; ``icmp`` is the ICMP handler.
    """

    def __init__(
        self,
        edge_host: str,
        edge_port: int,
        *,
        token: str,
        routes: Sequence[Network],
        trust: quic.Trust,
        icmp_backend: str | None = None,
        icmp_handler_factory: IcmpHandlerFactory | None = None,
        max_udp_sessions: int = 1024,
        udp_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        expiry_interval: float = 1.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
    ) -> None:
        if icmp_backend is not None and icmp_handler_factory is not None:
            raise ValueError("give icmp_backend or icmp_handler_factory, not both")
        self.edge_host = edge_host
        self.edge_port = edge_port
        self._token = token
        self.routes = tuple(routes)
        self._trust = trust
        self.max_udp_sessions = max_udp_sessions
        self.udp_idle_timeout = udp_idle_timeout
        self.expiry_interval = expiry_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.drops: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.udp_drops: Counter[str] = Counter()
        self.udp_stats: Counter[str] = Counter()
        self.last_error: BaseException | None = None
        self.connected = asyncio.Event()
        if icmp_backend is not None:
            from .connector_icmp import icmp_proxy_factory

            icmp_handler_factory = icmp_proxy_factory(self.routes, icmp_backend)
        self.icmp: IcmpHandler | None = icmp_handler_factory(self._send_icmp) if icmp_handler_factory else None
        self._connection: quic.TunnelConnection | None = None
        self.control_version = 0  # what the edge speaks on the current connection
        self._conn_id = 0
        self._sessions: UdpSessionTable | None = None
        self._early: list[tuple[quic.TunnelConnection, list[bytes]]] = []
        self._task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Connector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def conn_id(self) -> int:
        """Number of the current tunnel connection (0 before the first; +1 per reconnect)."""
        return self._conn_id

    @property
    def udp_sessions(self) -> UdpSessionTable | None:
        """The UDP sessions of the current connection."""
        return self._sessions

    async def start(self) -> None:
        """Start dialling (returns at once; wait on ``connected`` for the first welcome)."""
        if self.icmp is not None:
            self.icmp.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop: close the connection, every session and the ICMP handler; no reconnect."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._drop_connection()
        if self.icmp is not None:
            self.icmp.close()

    def update_routes(self, routes: Sequence[Network]) -> None:
        """Serve ``routes`` from now on: the ICMP proxy and new UDP sessions take them at
        once, and the edge is told (an announce on the current connection; a reconnect
        when the edge speaks control protocol version 1)."""
        self.routes = tuple(routes)
        set_routes = getattr(self.icmp, "set_routes", None)
        if set_routes is not None:
            set_routes(self.routes)
        if self._sessions is not None:
            self._sessions.allowed = self.routes
        connection = self._connection
        if connection is None or connection.is_closed:
            return  # the next connection announces them
        if self.control_version >= 2:
            connection.send_control(encode_message(Announce(self.routes), self.control_version))
        else:
            log.warning("the edge speaks control protocol version 1, which cannot take new routes on a "
                        "connection: reconnecting to announce them")
            connection.close(0, "connector routes changed")

    async def _run(self) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while True:
            closed = asyncio.Event()
            try:
                await self._connect_once(closed)
                backoff.connected()
                await closed.wait()
                quic.log_connection_lost(log, self._connection, "connector")
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self.last_error = exc
                self.stats["connect_failures"] += 1
                # Refusals and certificate problems need someone to act; an edge down may come back.
                level = logging.WARNING if isinstance(exc, EdgeUnreachable) else logging.ERROR
                log.log(level, "cannot connect to the edge %s: %s", format_address((self.edge_host, self.edge_port)), exc)
            self._drop_connection()
            await asyncio.sleep(backoff.next_delay())

    async def _connect_once(self, closed: asyncio.Event) -> None:
        connection, welcome = await dial(
            self.edge_host, self.edge_port, trust=self._trust, role=ROLE_CONNECTOR, token=self._token,
            prefixes=self.routes, on_datagrams=self._on_datagrams, on_message=self._on_message,
        )
        self._conn_id += 1
        self._connection = connection
        self.control_version = welcome.version
        self._check_accepted(welcome)
        self._sessions = UdpSessionTable(
            connection.send_datagrams, allowed=self.routes, max_sessions=self.max_udp_sessions,
            default_idle_timeout=self.udp_idle_timeout, drops=self.udp_drops, stats=self.udp_stats,
        )

        def on_closed(_: quic.TunnelConnection, code: int, reason: str) -> None:
            self.connected.clear()
            closed.set()

        connection.on_closed = on_closed
        if connection.is_closed:
            closed.set()
            return
        self.stats["connections"] += 1
        log.info("connected to the edge %s, serving %s", format_address((self.edge_host, self.edge_port)),
                 ", ".join(map(str, self.routes)),
                 extra={"event": "connect", "peer": format_address((self.edge_host, self.edge_port)),
                        "role": ROLE_CONNECTOR, "prefixes": [str(p) for p in self.routes]})
        self.connected.set()
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop(connection))
        early, self._early = self._early, []
        for sender, batch in early:
            self._on_datagrams(sender, batch)

    async def _expire_loop(self, connection: quic.TunnelConnection) -> None:
        while not connection.is_closed and self._connection is connection:
            await asyncio.sleep(self.expiry_interval)
            if self._sessions is not None and self._connection is connection:
                self._sessions.expire()

    def _drop_connection(self) -> None:
        self.connected.clear()
        self._early.clear()
        if self._expiry_task is not None:  # not left pending after close()
            self._expiry_task.cancel()
            self._expiry_task = None
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None
        if self._connection is not None:
            if not self._connection.is_closed:
                self._connection.close(0, "connector closing")
            self._connection = None

    def _send_icmp(self, packets: list[bytes]) -> None:
        connection = self._connection
        if connection is None:
            self.drops["icmp_no_connection"] += len(packets)
            return
        connection.send_datagrams([encode_icmp(packet) for packet in packets])

    def _check_accepted(self, welcome: Welcome) -> None:
        refused = [p for p in self.routes if p not in welcome.prefixes]
        if refused:
            log.warning("the edge refused the routes %s: this connector's token may not announce them "
                        "(the edge's connector_policy for it)", ", ".join(map(str, refused)))

    def _on_message(self, message: ControlMessage) -> None:
        if isinstance(message, Welcome):  # the edge's answer to an announce after the first
            self.stats["announces_accepted"] += 1
            log.info("the edge accepted the routes: %s", ", ".join(map(str, message.prefixes)) or "none")
            self._check_accepted(message)
        elif isinstance(message, Error):  # sent just before the edge closes the connection
            log.error("the edge is closing the connection: %s", message.reason)
        elif isinstance(message, ClientGone):
            self.stats["clients_gone"] += 1
            if self.icmp is not None:
                addresses = [a.packed for a in (message.client_v4, message.client_v6) if a is not None]
                self.icmp.client_gone(addresses)
        else:
            self.drops["unexpected_control_message"] += 1

    def _on_datagrams(self, connection: quic.TunnelConnection, datagrams: list[bytes]) -> None:
        sessions = self._sessions
        if sessions is None or connection is not self._connection:
            # The edge routes to this connector as soon as it has the announce, and its
            # clients are told at once: their first packets can come a moment before
            # dial() has returned here. Keep them (bounded) for when it has.
            if self._connection is None and sum(len(b) for _, b in self._early) + len(datagrams) <= EARLY_DATAGRAM_LIMIT:
                self._early.append((connection, datagrams))
            else:
                self.drops["datagram_before_welcome"] += len(datagrams)
            return
        icmp_packets: list[memoryview] = []
        for data in datagrams:
            if data and data[0] == DATAGRAM_ICMP:
                if len(data) < 2:
                    self.drops["malformed_icmp_empty"] += 1
                else:
                    icmp_packets.append(memoryview(data)[1:])
                continue
            try:
                message = decode_datagram(data)
            except MalformedDatagram as exc:
                self.drops[f"malformed_{exc.reason}"] += 1
                continue
            if isinstance(message, UdpRegistration):
                sessions.handle_registration(message)
            elif isinstance(message, UdpPayload):
                sessions.handle_payload(message)
            else:
                self.drops["unexpected_registration_response"] += 1
        if icmp_packets:
            if self.icmp is None:
                self.drops["icmp_no_handler"] += len(icmp_packets)
            else:
                self.icmp.handle_packets(icmp_packets)
