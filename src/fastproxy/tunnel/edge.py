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

from ..logs import format_address
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
    negotiate,
)
from .router import DEFAULT_CLIENT_POOLS, EdgeConfig, EdgeRouter, Outbound

__all__ = ["DEFAULT_CLIENT_POOLS", "Edge", "EdgeConfig", "EdgeRouter", "Network", "Outbound"]

log = logging.getLogger("fastproxy.edge")

HELLO_TIMEOUT = 5.0
# A client connection that has sent nothing for this long has missed two keepalives in a
# row: when a client of its token reconnects, it is taken for that client's dead previous
# connection (a network blip), closed, and its addresses go to the newcomer.
SILENT_AFTER = 2.5 * quic.KEEPALIVE_INTERVAL


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
    ``connections_rejected``, ``connections_revoked``, ``connections_replaced``: a silent
    client connection closed because a client of its token reconnected) and
    ``route_updates_sent``.
    ``reconfigure(config)`` applies a reloaded configuration without dropping connections.
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
        log.debug("connection %d from %s", conn_id, format_address(connection.remote_address),
                  extra={"event": "connect", "peer": format_address(connection.remote_address), "conn_id": conn_id})
        loop = asyncio.get_running_loop()
        loop.call_later(HELLO_TIMEOUT, self._check_hello, conn_id)

    def _check_hello(self, conn_id: int) -> None:
        if conn_id in self._connections and conn_id not in self._roles:
            self.router.auth_failures["hello_timeout"] += 1
            self._reject(self._connections[conn_id], Error(ERROR_AUTHENTICATION_FAILED, "no hello within 5 seconds"))

    def _reject(self, connection: quic.TunnelConnection, error: Error, version: int = 1) -> None:
        conn_id: int = connection.conn_id  # type: ignore[attr-defined]
        peer = format_address(connection.remote_address)
        log.warning("rejecting %s: %s", peer, error.reason,
                    extra={"event": "reject", "peer": peer, "conn_id": conn_id, "role": self._roles.get(conn_id),
                           "reason": error.reason})
        self.stats["connections_rejected"] += 1
        try:
            connection.send_control(encode_message(error, version))
        finally:
            connection.close(error.code, error.reason)

    def reconfigure(self, config: EdgeConfig) -> None:
        """Apply a reloaded configuration: connections whose token is no longer accepted
        are closed with a reason saying so; the others stay up, and clients whose
        reachable set changed are told. ValueError (nothing changed) if it cannot apply."""
        versions = {conn_id: self.router.version_of(conn_id) for conn_id in self._roles}
        clients = {conn_id: self.router.client_addresses(conn_id) for conn_id in self._roles
                   if self.router.is_client(conn_id)}
        revoked = self.router.reconfigure(config)  # the router forgets these at once
        for conn_id, error in revoked.items():
            connection = self._connections.get(conn_id)
            if connection is None:
                continue
            log.warning("closing %s %d from %s: %s", self._roles.get(conn_id, "peer"), conn_id,
                        connection.remote_address, error.reason)
            self.stats["connections_revoked"] += 1
            self._roles.pop(conn_id, None)  # logged above: no second line when it closes
            connection.send_control(encode_message(error, versions.get(conn_id, 1)))
            connection.close(error.code, error.reason)
            if conn_id in clients:
                self._client_gone(*clients[conn_id])
        self._push_routes()

    def _push_routes(self) -> None:
        """Send each client the RouteUpdate the router recorded for it."""
        sent = 0
        for conn_id, update in self.router.take_route_updates().items():
            connection = self._connections.get(conn_id)
            if connection is None:
                continue
            connection.send_control(encode_message(update, self.router.version_of(conn_id)))
            sent += 1
            log.debug("client %d may now reach %s", conn_id, ", ".join(map(str, update.prefixes)) or "nothing")
        if sent:
            self.stats["route_updates_sent"] += sent
            log.info("sent new routes to %d client%s", sent, "" if sent == 1 else "s")

    def _on_control(self, connection: quic.TunnelConnection, data: bytes) -> None:
        conn_id: int = connection.conn_id  # type: ignore[attr-defined]
        if connection.close_code is not None:  # closing (rejected or revoked): nothing more is read
            return
        try:
            messages = self._decoders[conn_id].feed(data)
        except MalformedControlMessage as exc:
            self.router.auth_failures[f"control_{exc.reason}"] += 1
            self._reject(connection, Error(ERROR_PROTOCOL, f"malformed control message: {exc.reason}"),
                         self.router.version_of(conn_id))
            return
        for message in messages:
            role = self._roles.get(conn_id)
            version = self.router.version_of(conn_id)
            if role is None and isinstance(message, Hello):
                version = negotiate(message.version)
                self._close_silent_previous(message)
                result = self.router.authenticate(conn_id, message)
                if isinstance(result, Error):
                    self._reject(connection, result, version)
                    return
                self._roles[conn_id] = message.role
                self.stats[f"connections_total_{message.role}"] += 1
                if message.role == ROLE_CLIENT:
                    connection.send_control(encode_message(result))
                    peer = format_address(connection.remote_address)
                    addresses = [str(a) for a in (result.client_v4, result.client_v6) if a is not None]
                    log.info("client %d from %s admitted (control protocol %d): %s; may reach %s", conn_id, peer,
                             version, ", ".join(addresses), ", ".join(map(str, result.prefixes)) or "nothing yet",
                             extra={"event": "admit", "peer": peer, "role": ROLE_CLIENT, "client_id": conn_id,
                                    "addresses": addresses, "prefixes": [str(p) for p in result.prefixes]})
            elif role == ROLE_CONNECTOR and isinstance(message, Announce) and (
                    version >= 2 or not self.router.is_connector(conn_id)):
                again = self.router.is_connector(conn_id)
                welcome = self.router.announce(conn_id, message)
                connection.send_control(encode_message(welcome))
                peer = format_address(connection.remote_address)
                refused = [p for p in message.prefixes if p not in welcome.prefixes]
                if refused:
                    log.warning("connector %d from %s may not announce %s (outside its token's connector policy)",
                                conn_id, peer, ", ".join(map(str, refused)),
                                extra={"event": "announce_refused", "peer": peer, "role": ROLE_CONNECTOR,
                                       "connector_id": conn_id, "prefixes": [str(p) for p in refused]})
                prefixes = [str(p) for p in welcome.prefixes]
                log.info("connector %d from %s %s %s", conn_id, peer, "now serves" if again else "serves",
                         ", ".join(prefixes) or "nothing",
                         extra={"event": "announce", "peer": peer, "role": ROLE_CONNECTOR, "connector_id": conn_id,
                                "prefixes": prefixes})
                self._push_routes()
            else:
                self.router.auth_failures["unexpected_control_message"] += 1
                self._reject(connection, Error(ERROR_PROTOCOL, f"unexpected {type(message).__name__} message"),
                             version)
                return

    def _close_silent_previous(self, hello: Hello) -> None:
        """Before admitting a client: if the connection holding the addresses its token
        had last is of that token and has gone silent (SILENT_AFTER), it is that client's
        previous connection, dead without a close (a network blip, a NAT rebinding): close
        it now rather than at its idle timeout, so the client gets its addresses back."""
        holder = self.router.previous_holder(hello)
        connection = self._connections.get(holder) if holder is not None else None
        if connection is None:
            return
        silent = asyncio.get_running_loop().time() - connection.last_received
        if silent < SILENT_AFTER:
            return  # alive: another client sharing the token keeps its addresses
        self.stats["connections_replaced"] += 1
        log.info("client %d from %s silent for %.1f s: closed, a client of its token reconnected", holder,
                 format_address(connection.remote_address), silent,
                 extra={"event": "replace", "peer": format_address(connection.remote_address), "client_id": holder})
        self._roles.pop(holder, None)  # logged here: no second line when it closes
        connection.close(0, "replaced by a new connection of this client")  # forgotten at once (_on_closed)

    def _on_datagrams(self, connection: quic.TunnelConnection, datagrams: list[bytes]) -> None:
        out = self.router.route(connection.conn_id, datagrams)  # type: ignore[attr-defined]
        connections = self._connections
        for target, batch in out.items():
            peer = connections.get(target)
            if peer is not None:
                peer.send_datagrams(batch)

    def _log_disconnect(self, connection: quic.TunnelConnection, conn_id: int, role: str | None, code: int,
                        reason: str) -> None:
        """One line per admitted connection that ends: INFO when closed normally (code 0,
        by either side), WARNING for an error or a timeout."""
        if role is None:  # never admitted: its rejection (if any) was logged
            return
        peer = format_address(connection.remote_address)
        reason = reason or ("idle timeout" if code == 0 else f"error code {code:#x}")
        log.log(logging.INFO if code == 0 else logging.WARNING, "%s %d from %s disconnected: %s", role, conn_id, peer,
                reason, extra={"event": "disconnect", "peer": peer, "role": role, f"{role}_id": conn_id,
                               "reason": reason, "code": code})

    def _on_closed(self, connection: quic.TunnelConnection, code: int, reason: str) -> None:
        # Called as soon as the connection is known closed (by us, by the peer, or by a
        # timeout), not after its closing period: its addresses are free from now on,
        # so a client that reconnects at once gets them back.
        conn_id: int = connection.conn_id  # type: ignore[attr-defined]
        if self._connections.pop(conn_id, None) is not None:
            self.stats["datagrams_in_closed"] += connection.datagrams_in
            self.stats["datagrams_out_closed"] += connection.datagrams_out
        self._decoders.pop(conn_id, None)
        self._log_disconnect(connection, conn_id, self._roles.get(conn_id), code, reason)
        self._forget(conn_id)

    def _forget(self, conn_id: int) -> None:
        """The router forgets ``conn_id``: connectors hear that a client went, clients
        that a connector's prefixes went (idempotent)."""
        self._roles.pop(conn_id, None)
        addresses = self.router.client_addresses(conn_id) if self.router.is_client(conn_id) else None
        self.router.remove(conn_id)
        if addresses is not None:
            self._client_gone(*addresses)
        self._push_routes()

    def _client_gone(self, v4: bytes | None, v6: bytes | None) -> None:
        """Tell every connector that the client with these addresses has gone, so they
        free its ICMP flows now (a reconnecting client may get the same addresses back;
        it must not inherit stale flows)."""
        gone = ClientGone(ipaddress.IPv4Address(v4) if v4 else None, ipaddress.IPv6Address(v6) if v6 else None)
        for connector_id in self.router.connector_ids():
            peer = self._connections.get(connector_id)
            if peer is not None:
                peer.send_control(encode_message(gone, self.router.version_of(connector_id)))
