"""The connector process: dials out to the edge, announces its routes, proxies UDP
sessions itself and hands ICMP datagrams (0x02) to an ICMP handler.

ICMP handler interface (the connector's ICMP proxy plugs in here): the connector calls
``icmp_handler_factory(sink)`` once; ``sink(conn_id, ip_packet)`` sends a whole IP packet
back through the tunnel connection ``conn_id``. The returned handler is called as
``handler(conn_id, ip_packet)`` for every ICMP datagram the edge sends, and its optional
``connection_lost(conn_id)`` when that tunnel connection ends. ``conn_id`` changes with
every reconnect.

Reconnects: exponential backoff with full jitter, from ``backoff_initial`` up to
``backoff_max`` seconds, reset after a connection that stayed up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..datagram import DATAGRAM_ICMP, UdpPayload, UdpRegistration, decode_datagram, encode_icmp
from ..errors import MalformedDatagram
from . import quic
from .control import ROLE_CONNECTOR, Network
from .dial import TunnelRejected, dial
from .udp_sessions import DEFAULT_IDLE_TIMEOUT, UdpSessionTable

__all__ = ["Connector", "IcmpHandler", "IcmpHandlerFactory", "IcmpSink"]

log = logging.getLogger("fastproxy.connector")

IcmpSink = Callable[[int, bytes], None]


class IcmpHandler(Protocol):
    """Takes the ICMP packets the edge sends to this connector."""

    def __call__(self, conn_id: int, packet: bytes) -> None: ...


IcmpHandlerFactory = Callable[[IcmpSink], IcmpHandler]


class Connector:
    """``await connector.start()`` dials the edge and keeps a connection up until
    ``await connector.close()``."""

    def __init__(
        self,
        edge_host: str,
        edge_port: int,
        *,
        token: str,
        routes: Sequence[Network],
        trust: quic.Trust,
        icmp_handler_factory: IcmpHandlerFactory | None = None,
        max_udp_sessions: int = 1024,
        udp_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        expiry_interval: float = 1.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
    ) -> None:
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
        self.last_error: BaseException | None = None
        self.connected = asyncio.Event()
        self._icmp_handler: Any = icmp_handler_factory(self._send_icmp) if icmp_handler_factory else None
        self._connection: quic.TunnelConnection | None = None
        self._conn_id = 0
        self._sessions: UdpSessionTable | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def conn_id(self) -> int:
        """Id of the current tunnel connection (0 before the first)."""
        return self._conn_id

    @property
    def udp_sessions(self) -> UdpSessionTable | None:
        """The UDP sessions of the current connection."""
        return self._sessions

    async def start(self) -> None:
        """Start dialling (returns at once; wait on ``connected`` for the first welcome)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop: close the connection and every session, no reconnect."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._drop_connection()

    async def _run(self) -> None:
        failures = 0
        while True:
            closed = asyncio.Event()
            try:
                await self._connect_once(closed)
                failures = 0
                await closed.wait()
                log.warning("connection to the edge lost; reconnecting")
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self.last_error = exc
                self.stats["connect_failures"] += 1
                level = logging.ERROR if isinstance(exc, TunnelRejected) else logging.WARNING
                log.log(level, "cannot connect to the edge %s:%d: %s", self.edge_host, self.edge_port, exc)
            self._drop_connection()
            delay = random.uniform(0, min(self.backoff_max, self.backoff_initial * (2**failures)))
            failures = min(failures + 1, 30)
            await asyncio.sleep(delay)

    async def _connect_once(self, closed: asyncio.Event) -> None:
        connection, _welcome = await dial(
            self.edge_host, self.edge_port, trust=self._trust, role=ROLE_CONNECTOR, token=self._token,
            prefixes=self.routes, on_datagrams=self._on_datagrams,
        )
        self._conn_id += 1
        self._connection = connection
        self._sessions = UdpSessionTable(
            connection.send_datagrams, allowed=self.routes, max_sessions=self.max_udp_sessions,
            default_idle_timeout=self.udp_idle_timeout,
        )

        def on_closed(_: quic.TunnelConnection, code: int, reason: str) -> None:
            self.connected.clear()
            closed.set()

        connection.on_closed = on_closed
        if connection.is_closed:
            closed.set()
            return
        self.stats["connections"] += 1
        self.connected.set()
        asyncio.get_running_loop().create_task(self._expire_loop(connection))

    async def _expire_loop(self, connection: quic.TunnelConnection) -> None:
        while not connection.is_closed and self._connection is connection:
            await asyncio.sleep(self.expiry_interval)
            if self._sessions is not None and self._connection is connection:
                self._sessions.expire()

    def _drop_connection(self) -> None:
        self.connected.clear()
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None
        if self._connection is not None:
            if not self._connection.is_closed:
                self._connection.close(0, "connector closing")
            if self._icmp_handler is not None and hasattr(self._icmp_handler, "connection_lost"):
                self._icmp_handler.connection_lost(self._conn_id)
            self._connection = None

    def _send_icmp(self, conn_id: int, packet: bytes) -> None:
        connection = self._connection
        if connection is None or conn_id != self._conn_id:
            self.drops["icmp_connection_gone"] += 1
            return
        connection.send_datagrams([encode_icmp(packet)])

    def _on_datagrams(self, connection: quic.TunnelConnection, datagrams: list[bytes]) -> None:
        sessions = self._sessions
        if sessions is None or connection is not self._connection:
            self.drops["datagram_before_welcome"] += len(datagrams)
            return
        handler = self._icmp_handler
        conn_id = self._conn_id
        for data in datagrams:
            if data and data[0] == DATAGRAM_ICMP:
                if handler is None:
                    self.drops["icmp_no_handler"] += 1
                elif len(data) < 2:
                    self.drops["malformed_icmp_empty"] += 1
                else:
                    handler(conn_id, data[1:])
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
