"""The client library: a tunnel connection to the edge for user traffic.

::

    async with fastproxy.Client(edge="edge.example:4433", token=TOKEN, trust=PIN) as client:
        print(client.address_v4, client.address_v6, client.prefixes)
        client.send_packets([echo_request])          # whole IP packets (ICMP)
        async for packet in client.packets():        # whole IP packets back
            ...
        session = await client.open_udp("10.0.0.5", 53)
        session.send(b"query")
        answer = await session.receive(timeout=2)

Packets must use the client's tunnel address as their source (the edge drops others).
The client reconnects by itself with exponential backoff and full jitter; the edge gives
a reconnecting token its previous addresses back when they are free, and every open UDP
session is registered again on the new connection, so flows and sessions carry on
(``on_reconnect`` is called after each reconnect, e.g. to notice changed addresses).

Routes are live: ``client.prefixes`` is what the edge lets this client reach now, and
follows the edge's route updates as connectors come and go (control protocol version 2).
``on_routes(previous, current)`` is called after each change; ``await
client.wait_for_route(address, timeout)`` waits until a prefix covers ``address``::

    prefix = await client.wait_for_route("10.0.0.8", timeout=5)   # NoRouteError if none came
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Union

from ..datagram import (
    DATAGRAM_ICMP,
    MAX_DATAGRAM_PAYLOAD,
    RESPONSE_DESTINATION_UNREACHABLE,
    RESPONSE_ERROR,
    RESPONSE_OK,
    RESPONSE_TOO_MANY_ACTIVE_FLOWS,
    RESPONSE_UNABLE_TO_BIND_SOCKET,
    RegistrationResponse,
    UdpPayload,
    decode_datagram,
    encode_icmp,
    encode_udp_payload,
    encode_udp_registration,
)
from ..errors import EdgeUnreachable, FastproxyError, MalformedDatagram
from ..logs import format_address
from . import quic
from .control import ROLE_CLIENT, ControlMessage, Error, Network, RouteUpdate
from .dial import Backoff, dial
from .udp_sessions import DEFAULT_IDLE_TIMEOUT

__all__ = [
    "Client", "NoRouteError", "UdpDestinationUnreachable", "UdpPayloadTooLarge", "UdpSession", "UdpSessionClosed",
    "UdpSessionRefused", "UdpSessionTimeout",
]

log = logging.getLogger("fastproxy.client")

Address = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


_RESPONSE_NAMES = {
    RESPONSE_DESTINATION_UNREACHABLE: "destination unreachable",
    RESPONSE_UNABLE_TO_BIND_SOCKET: "the connector could not bind a socket",
    RESPONSE_TOO_MANY_ACTIVE_FLOWS: "too many active flows",
    RESPONSE_ERROR: "error",
}


class UdpSessionRefused(FastproxyError, ConnectionError):
    """The connector (or the edge) refused a UDP session registration: ``code`` is the
    RESPONSE_* value, ``message`` its text, ``destination`` what was asked for ("HOST:PORT")."""

    def __init__(self, code: int, message: str, destination: str = "") -> None:
        self.code = code
        self.message = message
        self.destination = destination
        what = _RESPONSE_NAMES.get(code, f"code {code}")
        to = f" to {destination}" if destination else ""
        super().__init__(f"UDP session{to} refused: {what}" + (f" ({message})" if message else ""))

    @classmethod
    def from_response(cls, code: int, message: str, destination: str = "") -> UdpSessionRefused:
        """The most specific class for ``code`` (UdpDestinationUnreachable for 0x01)."""
        kind = UdpDestinationUnreachable if code == RESPONSE_DESTINATION_UNREACHABLE else cls
        return kind(code, message, destination)


class UdpDestinationUnreachable(UdpSessionRefused):
    """Refused with 0x01: no connector serves the destination, or the client's policy does
    not allow it (the edge's answer says which), or the connector cannot reach it."""


class UdpPayloadTooLarge(FastproxyError, ValueError):
    """A UDP payload larger than one tunnel datagram carries (MAX_DATAGRAM_PAYLOAD, 1280 bytes)."""


class UdpSessionTimeout(FastproxyError, asyncio.TimeoutError):
    """No answer to a UDP session registration in time (the edge or connector is
    overloaded, or the connection was lost meanwhile)."""


class NoRouteError(FastproxyError, TimeoutError):
    """No prefix the edge allows this client covers ``address`` (``prefixes``: what it
    does allow), and none came within the time waited."""

    def __init__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefixes: tuple[Network, ...],
                 waited: float) -> None:
        self.address = address
        self.prefixes = prefixes
        allowed = ", ".join(map(str, prefixes)) or "nothing"
        super().__init__(f"no route to {address} through the tunnel after {waited:g} s: the edge allows this "
                         f"client {allowed} (is a connector serving {address} connected, and does this client's "
                         "policy on the edge include it?)")


class UdpSessionClosed(FastproxyError, EOFError):
    """The UDP session ended (closed, idle timeout, or refused on re-registration)."""


class UdpSession:
    """One UDP session through the tunnel (made by :meth:`Client.open_udp`).

    ``send(payload)`` sends one datagram (at most 1280 bytes); ``await receive()`` returns
    the next datagram from the destination; ``async for payload in session`` iterates.
    The session ends after ``idle_timeout`` seconds without traffic either way, or on
    :meth:`close`; then receive raises :class:`UdpSessionClosed`.
    """

    def __init__(self, client: Client, destination: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                 idle_timeout: int, queue_limit: int) -> None:
        self.client = client
        self.destination = destination
        self.port = port
        self.idle_timeout = idle_timeout
        self.request_id = os.urandom(16)
        self.last_activity = time.monotonic()
        self.dropped = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_limit)
        self._answer: asyncio.Future[RegistrationResponse] | None = None
        self._closed: BaseException | None = None

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        return self._closed is not None

    def registration(self, payload: bytes | None = None) -> bytes:
        """The registration datagram of this session (with a bundled payload)."""
        return encode_udp_registration(self.request_id, self.destination.packed, self.port, self.idle_timeout,
                                       payload=payload)

    def send(self, payload: bytes) -> None:
        """Send one payload to the destination (dropped and counted while disconnected);
        UdpPayloadTooLarge when it is over MAX_DATAGRAM_PAYLOAD (1280 bytes)."""
        if self._closed is not None:
            raise UdpSessionClosed(str(self._closed))
        if len(payload) > MAX_DATAGRAM_PAYLOAD:
            self.client.drops["udp_payload_too_large"] += 1
            raise UdpPayloadTooLarge(f"a UDP payload of {len(payload)} bytes to {self.target} does not fit the "
                                     f"tunnel (at most {MAX_DATAGRAM_PAYLOAD} bytes); send smaller datagrams")
        self.last_activity = time.monotonic()
        self.client._send([encode_udp_payload(self.request_id, payload)])

    async def receive(self, timeout: float | None = None) -> bytes:
        """The next payload from the destination (TimeoutError after ``timeout`` seconds)."""
        if self._closed is not None and self._queue.empty():
            raise UdpSessionClosed(str(self._closed))
        payload = await asyncio.wait_for(self._queue.get(), timeout)
        if payload is None:
            raise UdpSessionClosed(str(self._closed))
        return payload

    def __aiter__(self) -> UdpSession:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except UdpSessionClosed:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """End the session (the connector lets it expire; nothing more is delivered)."""
        self._end(UdpSessionClosed("closed"))

    def _end(self, why: BaseException) -> None:
        if self._closed is not None:
            return
        self._closed = why
        self.client._sessions.pop(self.request_id, None)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(why)
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            self._queue.get_nowait()
            self._queue.put_nowait(None)

    def _deliver(self, payload: bytes) -> None:
        self.last_activity = time.monotonic()
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1

    def _response(self, response: RegistrationResponse) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(response)
        elif response.code != RESPONSE_OK:  # a re-registration (or a later payload) was refused
            self._end(UdpSessionRefused.from_response(response.code, response.message, self.target))

    @property
    def target(self) -> str:
        """The destination as ``HOST:PORT`` (``[V6]:PORT``)."""
        return format_address((str(self.destination), self.port))


def _parse_edge(edge: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(edge, tuple):
        return edge
    from ..config import parse_host_port

    return parse_host_port(edge)


class Client:
    """A client of the edge (async context manager; see the module docstring).

    Parameters:
        edge: ``"HOST:PORT"`` (``[V6]:PORT``) or a (host, port) tuple.
        token: the client token the edge knows.
        trust: a :class:`fastproxy.tunnel.quic.Trust`, or a SHA-256 pin string.
        on_packets: called with each batch of whole IP packets from the edge; without it
            they are queued (at most ``queue_limit``) for :meth:`packets`.
        on_reconnect: called with the client after every reconnect.
        on_routes: called with (previous, current) prefixes each time what the client
            may reach changes (a route update from the edge, or a reconnect's welcome).
        backoff_initial, backoff_max: reconnect delays (seconds, full jitter).
        connect_timeout: for each dial.

    Attributes: ``address_v4``, ``address_v6`` (tunnel addresses), ``prefixes`` (what the
    client may reach now), ``control_version`` (the control protocol the edge speaks; 1:
    no route updates), ``connected`` (an asyncio.Event), ``stats`` and ``drops`` (Counters).
    Entering the context raises :class:`~fastproxy.tunnel.dial.TunnelRejected` when the
    edge refuses the first connection (bad token), and the other
    :class:`~fastproxy.errors.DialError` subclasses when it cannot be reached or its
    certificate is refused (each a ConnectionError with a one-line message).
    """

    def __init__(
        self,
        edge: str | tuple[str, int],
        token: str,
        trust: quic.Trust | str,
        *,
        on_packets: Callable[[list[bytes]], None] | None = None,
        on_reconnect: Callable[[Client], None] | None = None,
        on_routes: Callable[[tuple[Network, ...], tuple[Network, ...]], None] | None = None,
        queue_limit: int = 4096,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.edge_host, self.edge_port = _parse_edge(edge)
        self._token = token
        self._trust = trust if isinstance(trust, quic.Trust) else quic.Trust(pin=trust)
        self.on_packets = on_packets
        self.on_reconnect = on_reconnect
        self.on_routes = on_routes
        self.queue_limit = queue_limit
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.address_v4: ipaddress.IPv4Address | None = None
        self.address_v6: ipaddress.IPv6Address | None = None
        self.prefixes: tuple[Network, ...] = ()
        self.control_version = 0
        self._routes_changed = asyncio.Event()  # replaced by a fresh one at each change
        self.connected = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.last_error: BaseException | None = None
        self._packets: asyncio.Queue[bytes] = asyncio.Queue(queue_limit)
        self._sessions: dict[bytes, UdpSession] = {}
        self._connection: quic.TunnelConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (errors of this first attempt are raised) and keep reconnecting."""
        closed = asyncio.Event()
        await self._connect_once(closed)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(closed))
        self._expiry = loop.create_task(self._expire_sessions())

    async def close(self) -> None:
        """Close the connection and every session; no reconnect."""
        for task in (self._task, self._expiry):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._expiry = None
        for session in list(self._sessions.values()):
            session.close()
        if self._connection is not None and not self._connection.is_closed:
            self._connection.close(0, "client closing")
        self._connection = None
        self.connected.clear()

    # -- ICMP (whole IP packets) ---------------------------------------------------

    def send_packets(self, packets: list[bytes]) -> None:
        """Send whole IP packets (ICMP echo requests...) with a tunnel address as source;
        dropped and counted (``drops["not_connected"]``) while disconnected."""
        self._send([encode_icmp(packet) for packet in packets])

    async def packets(self) -> AsyncIterator[bytes]:
        """Whole IP packets from the edge, as they come (when no ``on_packets`` is set)."""
        while True:
            yield await self._packets.get()

    async def receive_packet(self, timeout: float | None = None) -> bytes:
        """The next whole IP packet from the edge (TimeoutError after ``timeout``)."""
        return await asyncio.wait_for(self._packets.get(), timeout)

    # -- routes ------------------------------------------------------------------

    def route_for(self, address: Address) -> Network | None:
        """The longest allowed prefix that covers ``address``, or None."""
        ip = ipaddress.ip_address(address)
        covering = [p for p in self.prefixes if p.version == ip.version and ip in p]
        return max(covering, key=lambda p: p.prefixlen) if covering else None

    async def wait_for_route(self, address: Address, timeout: float) -> Network:
        """The prefix that covers ``address``, as soon as the edge allows one (at once if
        it does already). Raises NoRouteError after ``timeout`` seconds without one."""
        ip = ipaddress.ip_address(address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            prefix = self.route_for(ip)
            if prefix is not None:
                return prefix
            changed = self._routes_changed
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                raise NoRouteError(ip, self.prefixes, timeout) from None

    def _set_routes(self, prefixes: tuple[Network, ...]) -> None:
        previous = self.prefixes
        if set(prefixes) == set(previous):
            return
        self.prefixes = prefixes
        self.stats["route_changes"] += 1
        log.debug("the edge allows this client %s (was %s)", ", ".join(map(str, prefixes)) or "nothing",
                  ", ".join(map(str, previous)) or "nothing")
        changed, self._routes_changed = self._routes_changed, asyncio.Event()
        changed.set()
        if self.on_routes is not None:
            self.on_routes(previous, prefixes)

    # -- UDP sessions ------------------------------------------------------------

    async def open_udp(
        self, destination: Address, port: int, *, idle_timeout: int = int(DEFAULT_IDLE_TIMEOUT),
        payload: bytes | None = None, timeout: float = 5.0,
    ) -> UdpSession:
        """Register a UDP session to ``destination``:``port`` and wait for the answer.
        ``payload`` is bundled with the registration. Raises UdpDestinationUnreachable when
        no connector serves the destination or the policy forbids it (the edge answers at
        once), UdpSessionRefused for other refusals, UdpSessionTimeout if unanswered."""
        address = ipaddress.ip_address(destination)
        session = UdpSession(self, address, port, idle_timeout, self.queue_limit)
        session._answer = asyncio.get_running_loop().create_future()
        self._sessions[session.request_id] = session
        try:
            self._send([session.registration(payload)])
            try:
                response = await asyncio.wait_for(session._answer, timeout)
            except asyncio.TimeoutError:
                raise UdpSessionTimeout(
                    f"no answer to the UDP session registration to {session.target} within {timeout:g} s") from None
        except BaseException:
            session._end(UdpSessionClosed("registration failed"))
            raise
        session._answer = None
        if response.code != RESPONSE_OK:
            refused = UdpSessionRefused.from_response(response.code, response.message, session.target)
            session._end(refused)
            raise refused
        self.stats["udp_sessions_opened"] += 1
        return session

    @property
    def udp_sessions(self) -> list[UdpSession]:
        """The open UDP sessions."""
        return list(self._sessions.values())

    # -- internals ---------------------------------------------------------------

    def _send(self, datagrams: list[bytes]) -> None:
        connection = self._connection
        if connection is None or connection.is_closed:
            self.drops["not_connected"] += len(datagrams)
            return
        connection.send_datagrams(datagrams)

    async def _connect_once(self, closed: asyncio.Event) -> None:
        # Route updates may come right behind the welcome, before dial returns: the
        # newest of those replaces the welcome's set.
        early: list[tuple[Network, ...]] = []
        welcomed = False

        def on_message(message: ControlMessage) -> None:
            if isinstance(message, Error):  # sent just before the edge closes the connection
                log.error("the edge is closing the connection: %s", message.reason)
            elif not isinstance(message, RouteUpdate):
                self.drops["unexpected_control_message"] += 1
            elif welcomed:
                self._set_routes(message.prefixes)
            else:
                early.append(message.prefixes)

        connection, welcome = await dial(
            self.edge_host, self.edge_port, trust=self._trust, role=ROLE_CLIENT, token=self._token,
            on_datagrams=self._on_datagrams, on_message=on_message, timeout=self.connect_timeout,
        )

        def on_closed(_: quic.TunnelConnection, code: int, reason: str) -> None:
            self.connected.clear()
            closed.set()

        connection.on_closed = on_closed
        self._connection = connection
        self.address_v4, self.address_v6 = welcome.client_v4, welcome.client_v6
        self.control_version = welcome.version
        welcomed = True
        self._set_routes(early[-1] if early else welcome.prefixes)
        self.stats["connections"] += 1
        if connection.is_closed:
            closed.set()
            return
        # Sessions carry on: register each again (idempotent at the connector).
        registrations = [session.registration() for session in self._sessions.values()]
        if registrations:
            connection.send_datagrams(registrations)
        self.connected.set()

    async def _run(self, closed: asyncio.Event) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while True:
            await closed.wait()
            quic.log_connection_lost(log, self._connection, "client")
            closed = asyncio.Event()
            while True:
                await asyncio.sleep(backoff.next_delay())
                try:
                    await self._connect_once(closed)
                except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                    self.last_error = exc
                    self.stats["connect_failures"] += 1
                    # Refusals and certificate problems need someone to act; an edge down may come back.
                    level = logging.WARNING if isinstance(exc, EdgeUnreachable) else logging.ERROR
                    log.log(level, "cannot reconnect to the edge %s: %s",
                            format_address((self.edge_host, self.edge_port)), exc)
                    continue
                backoff.connected()
                self.stats["reconnects"] += 1
                if self.on_reconnect is not None:
                    self.on_reconnect(self)
                break

    async def _expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if session._answer is None and now - session.last_activity > session.idle_timeout:
                    self.stats["udp_sessions_expired"] += 1
                    session._end(UdpSessionClosed("idle timeout"))

    def _on_datagrams(self, connection: quic.TunnelConnection, datagrams: list[bytes]) -> None:
        packets: list[bytes] = []
        for data in datagrams:
            if data and data[0] == DATAGRAM_ICMP:
                if len(data) > 1:
                    packets.append(data[1:])
                else:
                    self.drops["malformed_icmp_empty"] += 1
                continue
            try:
                message = decode_datagram(data)
            except MalformedDatagram as exc:
                self.drops[f"malformed_{exc.reason}"] += 1
                continue
            if isinstance(message, (UdpPayload, RegistrationResponse)):
                session = self._sessions.get(message.request_id)
                if session is None:
                    self.drops["udp_unknown_session"] += 1
                elif isinstance(message, UdpPayload):
                    session._deliver(message.payload)
                else:
                    session._response(message)
            else:
                self.drops["unexpected_registration"] += 1
        if packets:
            self.stats["packets_in"] += len(packets)
            if self.on_packets is not None:
                self.on_packets(packets)
                return
            for packet in packets:
                try:
                    self._packets.put_nowait(packet)
                except asyncio.QueueFull:
                    self.drops["packet_queue_full"] += 1
