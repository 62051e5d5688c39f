"""The edge over QUIC: authenticates clients and connectors and routes datagrams between them.

Two layers, as in aioquic: :class:`~fastproxy.tunnel.router.EdgeRouter` is the routing
core and does no I/O, and :class:`Edge` here is the asyncio glue that runs it over QUIC
(fastproxy.tunnel.quic). See the router's module for the routing rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter

from . import quic
from .certs import check_key_pair, generate_self_signed, load_or_create_identity
from .control import (
    ERROR_AUTHENTICATION_FAILED,
    ERROR_PROTOCOL,
    ROLE_CLIENT,
    ROLE_CONNECTOR,
    Announce,
    ClientGone,
    ControlDecoder,
    Error,
    Hello,
    MalformedControlMessage,
    Network,
    encode_message,
)
from .router import DEFAULT_CLIENT_POOLS, EdgeConfig, EdgeRouter, Outbound

__all__ = ["DEFAULT_CLIENT_POOLS", "Edge", "EdgeConfig", "EdgeRouter", "Network", "Outbound"]

log = logging.getLogger("fastproxy.edge")

HELLO_TIMEOUT = 5.0


class Edge:
    """The edge over QUIC (library class and what ``fastproxy edge`` runs).

    Use as an async context manager::

        async with Edge(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",)),
                        listen=("0.0.0.0", 4433)) as edge:
            print(edge.port, edge.fingerprint)
            await stop.wait()

    or call ``await edge.start(host, port)`` and ``edge.close()``. Without ``cert_file`` /
    ``key_file`` a self-signed certificate is made; clients and connectors pin
    ``edge.fingerprint``. It is kept in ``state_dir`` when one is given (reused on the next
    start, so the pin stays; ``identity_created`` says whether it was made now), else it
    lives only as long as the process. A certificate and key that do not belong together,
    or an unusable state directory, raise CertificateFileError. ``edge.router`` is the routing core with every counter;
    ``edge.stats`` counts connections (``connections_total_<role>``,
    ``connections_rejected``).
    """

    def __init__(
        self,
        config: EdgeConfig,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        state_dir: str | None = None,
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        self.identity_created = False
        if cert_file is None:
            if state_dir is not None:
                pair, self.identity_created = load_or_create_identity(state_dir)
            else:
                pair = generate_self_signed()
            cert_file, key_file, self.fingerprint = pair.cert_file, pair.key_file, pair.fingerprint
        else:
            assert key_file is not None
            self.fingerprint = check_key_pair(cert_file, key_file)
        self.router = EdgeRouter(config)
        self.listen = listen
        self.stats: Counter[str] = Counter()
        self._cert_file = cert_file
        self._key_file: str = key_file  # type: ignore[assignment]
        self._server: quic.TunnelServer | None = None
        self._connections: dict[int, quic.TunnelConnection] = {}
        self._decoders: dict[int, ControlDecoder] = {}
        self._roles: dict[int, str] = {}
        self._next_id = 1
        self._expiry_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Edge:
        await self.start(*self.listen)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await asyncio.sleep(0)  # let the close frames go out

    @property
    def port(self) -> int:
        """The UDP port the edge listens on."""
        assert self._server is not None
        return self._server.port

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the edge listens on."""
        assert self._server is not None
        return self._server.address

    @property
    def connections(self) -> dict[str, int]:
        """Open connections by role (``client``, ``connector``, ``pending`` before a hello)."""
        counts = {ROLE_CLIENT: 0, ROLE_CONNECTOR: 0, "pending": 0}
        for conn_id in self._connections:
            counts[self._roles.get(conn_id, "pending")] += 1
        return counts

    def datagram_totals(self) -> tuple[int, int]:
        """QUIC datagrams (received, sent) over every connection so far."""
        received, sent = self.stats["datagrams_in_closed"], self.stats["datagrams_out_closed"]
        for connection in self._connections.values():
            received += connection.datagrams_in
            sent += connection.datagrams_out
        return received, sent

    async def start(self, host: str, port: int) -> None:
        """Start listening."""
        self._server = await quic.serve(
            host, port, cert_file=self._cert_file, key_file=self._key_file, on_connection=self._on_connection
        )
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop())

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        for connection in list(self._connections.values()):
            connection.close(0, "edge shutting down")
        if self._server is not None:
            self._server.close()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            self.router.expire()

    def _on_connection(self, connection: quic.TunnelConnection) -> None:
        conn_id = self._next_id
        self._next_id += 1
        connection.conn_id = conn_id  # type: ignore[attr-defined]
        self._connections[conn_id] = connection
        self._decoders[conn_id] = ControlDecoder()
        connection.on_control = self._on_control
        connection.on_datagrams = self._on_datagrams
        connection.on_closed = self._on_closed
        loop = asyncio.get_running_loop()
        loop.call_later(HELLO_TIMEOUT, self._check_hello, conn_id)

    def _check_hello(self, conn_id: int) -> None:
        if conn_id in self._connections and conn_id not in self._roles:
            self.router.auth_failures["hello_timeout"] += 1
            self._reject(self._connections[conn_id], Error(ERROR_AUTHENTICATION_FAILED, "no hello within 5 seconds"))

    def _reject(self, connection: quic.TunnelConnection, error: Error) -> None:
        log.warning("rejecting %s: %s", connection.remote_address, error.reason)
        self.stats["connections_rejected"] += 1
        try:
            connection.send_control(encode_message(error))
        finally:
            connection.close(error.code, error.reason)

    def _on_control(self, connection: quic.TunnelConnection, data: bytes) -> None:
        conn_id: int = connection.conn_id  # type: ignore[attr-defined]
        try:
            messages = self._decoders[conn_id].feed(data)
        except MalformedControlMessage as exc:
            self.router.auth_failures[f"control_{exc.reason}"] += 1
            self._reject(connection, Error(ERROR_PROTOCOL, f"malformed control message: {exc.reason}"))
            return
        for message in messages:
            role = self._roles.get(conn_id)
            if role is None and isinstance(message, Hello):
                result = self.router.authenticate(conn_id, message)
                if isinstance(result, Error):
                    self._reject(connection, result)
                    return
                self._roles[conn_id] = message.role
                self.stats[f"connections_total_{message.role}"] += 1
                if message.role == ROLE_CLIENT:
                    connection.send_control(encode_message(result))
                    log.info("client %d from %s admitted", conn_id, connection.remote_address)
            elif role == ROLE_CONNECTOR and isinstance(message, Announce) and not self.router.is_connector(conn_id):
                connection.send_control(encode_message(self.router.announce(conn_id, message)))
                log.info("connector %d from %s serves %s", conn_id, connection.remote_address,
                         ", ".join(map(str, message.prefixes)))
            else:
                self.router.auth_failures["unexpected_control_message"] += 1
                self._reject(connection, Error(ERROR_PROTOCOL, f"unexpected {type(message).__name__} message"))
                return

    def _on_datagrams(self, connection: quic.TunnelConnection, datagrams: list[bytes]) -> None:
        out = self.router.route(connection.conn_id, datagrams)  # type: ignore[attr-defined]
        connections = self._connections
        for target, batch in out.items():
            peer = connections.get(target)
            if peer is not None:
                peer.send_datagrams(batch)

    def _on_closed(self, connection: quic.TunnelConnection, code: int, reason: str) -> None:
        conn_id: int = connection.conn_id  # type: ignore[attr-defined]
        if self._connections.pop(conn_id, None) is not None:
            self.stats["datagrams_in_closed"] += connection.datagrams_in
            self.stats["datagrams_out_closed"] += connection.datagrams_out
        self._decoders.pop(conn_id, None)
        self._roles.pop(conn_id, None)
        gone = None
        if self.router.is_client(conn_id):
            v4, v6 = self.router.client_addresses(conn_id)
            gone = encode_message(ClientGone(
                ipaddress.IPv4Address(v4) if v4 else None, ipaddress.IPv6Address(v6) if v6 else None
            ))
        self.router.remove(conn_id)
        if gone is not None:
            # Connectors free that client's ICMP flows now (a reconnecting client may
            # get the same address back; it must not inherit stale flows).
            for connector_id in self.router.connector_ids():
                peer = self._connections.get(connector_id)
                if peer is not None:
                    peer.send_control(gone)
