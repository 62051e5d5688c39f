"""The QUIC transport of the tunnel: the one module that imports the QUIC library (qh3).

Everything else in fastproxy talks to a :class:`TunnelConnection`: batches of QUIC
DATAGRAM frames in and out (RFC 9221), one bidirectional control stream, and a close
with an application error code and reason. TLS 1.3 with ALPN ``fastproxy``.

Why qh3 (bench/RESULTS.md, section quic): its connection state machine is native code,
so its per-datagram Python cost is several times lower than aioquic's.

Datagram fast path: qh3 turns each received DATAGRAM frame into an event object in a
generic queue that the asyncio protocol then walks one by one. Here the connection's
native event drain is intercepted: DATAGRAM payloads are peeled off into a plain list
as they are drained (no event objects), and the application gets that list in one
callback per received UDP batch. Sending queues frames straight into the native core
and flushes them with one transmit per event-loop iteration, whatever the number of
frames queued.

Mutual TLS: not offered. qh3 2.1's TLS server never sends a CertificateRequest (its
server state machine goes from ClientHello straight to the client's Finished), so a server
built on it cannot ask for or verify client certificates; clients and connectors
authenticate with tokens on the control stream instead.

Socket I/O: both sides use qh3's quinn-udp transport (recvmmsg with GRO, sendmsg with
GSO on Linux). On the server, each receive batch is demultiplexed by connection id first;
each connection then decrypts its share in one native call, processes events once and
transmits once. (fastproxy.batchio is not used here: qh3 already batches this socket.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio._transport import OptimizedDatagramTransport, create_optimized_datagram_transport
from qh3.asyncio.server import QuicServer
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicErrorCode

from ..errors import CertificateRejected, EdgeUnreachable, HandshakeFailed
from ..logs import format_address
from .certs import check_pin, normalize_pin, verify_with_bundle

__all__ = [
    "ALPN",
    "CONTROL_STREAM_ID",
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_DATAGRAM_FRAME_SIZE",
    "MAX_UDP_PAYLOAD",
    "ControlHandler",
    "CloseHandler",
    "DatagramHandler",
    "TunnelConnection",
    "TunnelServer",
    "Trust",
    "client_configuration",
    "connect",
    "serve",
]

log = logging.getLogger("fastproxy.tunnel.quic")


class _PeerCloseFilter(logging.Filter):
    """qh3 logs every close by the peer, normal ones too, as a WARNING naming its native
    event tuple; the edge, connector and client log each disconnect themselves (INFO when
    normal), so that line is kept only for debugging, and then at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Native peer close"):
            return True
        if not log.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("quic").addFilter(_PeerCloseFilter())


def log_connection_lost(logger: logging.Logger, connection: TunnelConnection | None, role: str) -> None:
    """The line a connector or client logs when its connection to the edge ends: INFO when
    the edge closed it normally (code 0 with a reason, such as "edge shutting down"),
    WARNING otherwise (an error, or the idle timeout: the edge went silent)."""
    code = connection.close_code if connection is not None else None
    reason = connection.close_reason if connection is not None else ""
    peer = format_address(connection.remote_address) if connection is not None else ""
    normal = code == 0 and bool(reason)
    why = reason or ("no answer within the idle timeout" if code == 0 else f"error code {code:#x}" if code else "lost")
    logger.log(logging.INFO if normal else logging.WARNING, "connection to the edge %s closed (%s); reconnecting",
               peer, why, extra={"event": "disconnect", "peer": peer, "role": role, "reason": why, "code": code})

ALPN = "fastproxy"
# The largest tunnel datagram is a UDP registration with an IPv6 destination (38 bytes
# of header) and a bundled 1280-byte payload: 1318 bytes. Leave a little headroom.
MAX_DATAGRAM_FRAME_SIZE = 1350
# UDP payload of a QUIC packet: fits a 1500-byte IPv6 path (1500 - 40 - 8), and leaves
# room for the largest datagram frame plus the short header and AEAD tag.
MAX_UDP_PAYLOAD = 1452
# A silent connection is closed after IDLE_TIMEOUT; the dialling side pings every
# KEEPALIVE_INTERVAL so an idle connector or client stays up, and a dead peer is noticed
# within IDLE_TIMEOUT. Short on purpose: when a connector dies (SIGKILL, lost host) the
# edge moves its flows to another connector once the connection times out, so this is
# the failover time. Four keepalives fit in it, so a few lost packets do not end a
# healthy connection; a PING every second costs nothing measurable.
IDLE_TIMEOUT = 5.0
KEEPALIVE_INTERVAL = 1.0
# How long a due ACK may wait for a packet to ride on (see TunnelConnection._after_receive).
# Well inside the 25 ms max_ack_delay qh3 advertises, so the peer's loss detection is
# unaffected; long enough for an answer through the tunnel to come back and carry it.
ACK_COALESCE = 0.002
# Receive and send buffer of each QUIC socket: about 80 ms of a 400 Mbit/s flood.
SOCKET_BUFFER_SIZE = 4 * 1024 * 1024
# The client opens the first bidirectional stream; its id is 0 (RFC 9000 2.1).
CONTROL_STREAM_ID = 0

DatagramHandler = Callable[["TunnelConnection", list[bytes]], None]
ControlHandler = Callable[["TunnelConnection", bytes], None]
CloseHandler = Callable[["TunnelConnection", int, str], None]


@dataclass(frozen=True)
class Trust:
    """How a client or connector checks the edge's certificate: exactly one of a SHA-256
    ``pin`` (hex, ``:`` optional), a ``cafile`` (PEM bundle), or ``insecure``."""

    pin: str | None = None
    cafile: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        chosen = sum((self.pin is not None, self.cafile is not None, self.insecure))
        if chosen != 1:
            raise ValueError("choose exactly one of pin, cafile, insecure")
        if self.pin is not None:
            object.__setattr__(self, "pin", normalize_pin(self.pin))


def _base_configuration(is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        max_datagram_size=MAX_UDP_PAYLOAD,
        idle_timeout=IDLE_TIMEOUT,
    )


class _NativeEventFilter:
    """Stands in for the native core while the library drains events: hands the library
    every event except DATAGRAM frames, whose payloads go straight into ``batch``."""

    __slots__ = ("_core", "_held", "_batch")

    def __init__(self, core: Any, held: tuple[Any, ...], batch: list[bytes]) -> None:
        self._core = core
        self._held: tuple[Any, ...] | None = held
        self._batch = batch

    def next_event(self) -> tuple[Any, ...] | None:
        if self._held is not None:
            event, self._held = self._held, None
            return event
        next_event = self._core.next_event
        while True:
            event = next_event()
            if event is None or event[0] != "datagram":
                return event
            self._batch.append(event[1])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


class _FastConnection(QuicConnection):
    """qh3's connection with DATAGRAM frames collected into a list instead of events."""

    datagram_batch: list[bytes]

    def _drain_core(self) -> None:
        core = self._core
        batch = self.datagram_batch
        next_event = core.next_event
        while True:
            event = next_event()
            if event is None:
                return
            if event[0] != "datagram":
                break
            batch.append(event[1])
        # A rare event (handshake, stream data, close...): let the library handle it and
        # everything after it, still keeping datagrams out of its queue.
        self._core = _NativeEventFilter(core, event, batch)
        try:
            super()._drain_core()
        finally:
            if isinstance(self._core, _NativeEventFilter):
                self._core = core


class TunnelConnection(QuicConnectionProtocol):
    """One QUIC connection of the tunnel (either side).

    Set ``on_datagrams``, ``on_control`` and ``on_closed`` to receive; they are called on
    the event loop. ``on_closed`` is called once, as soon as the connection is known to be
    closed: when ``close`` is called, when the peer's CONNECTION_CLOSE arrives, or when
    it ends by itself (idle timeout, protocol error); not only after the closing or
    draining period (three PTOs, RFC 9000 10.2), during which nothing more can be sent
    or received on it anyway. The edge frees the connection's tunnel addresses then, so a
    client that reconnects at once gets them back. Counters: ``datagrams_in``,
    ``datagrams_out``, ``datagrams_dropped_closed``.
    """

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        quic.__class__ = _FastConnection  # same object layout; only _drain_core differs
        quic.datagram_batch = []
        super().__init__(quic, stream_handler)
        self.on_datagrams: DatagramHandler | None = None
        self.on_control: ControlHandler | None = None
        self.on_closed: CloseHandler | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.remote_address: Any = None
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.datagrams_dropped_closed = 0
        self._terminated = False
        self._close_reported = False
        self.last_received = self._loop.time()  # loop time of the last packet from the peer
        self._server: _BatchingServer | None = None
        # Dialling side, until the handshake ends: None when it completed, else the
        # (code, reason) of the close, or the OSError the socket reported.
        self._handshake: asyncio.Future[tuple[int, str] | OSError | None] | None = None

    # -- sending ---------------------------------------------------------------

    def send_datagrams(self, datagrams: list[bytes]) -> None:
        """Queue DATAGRAM frames; one transmit per event-loop iteration sends them all."""
        if self._terminated:
            self.datagrams_dropped_closed += len(datagrams)
            return
        core = self._quic._core
        send = core.send_datagram
        try:
            for data in datagrams:
                send(data)
        except RuntimeError:  # the native core refuses once the connection is closing
            self.datagrams_dropped_closed += len(datagrams)
            return
        self.datagrams_out += len(datagrams)
        self._transmit_soon()

    def send_datagram(self, data: bytes) -> None:
        """Queue one DATAGRAM frame (see send_datagrams)."""
        self.send_datagrams([data])

    def send_control(self, data: bytes) -> None:
        """Append bytes to the control stream."""
        if self._terminated:
            return
        try:
            self._quic.send_stream_data(CONTROL_STREAM_ID, data)
        except QuicConnectionError:  # closing: the peer will not read it anyway
            return
        self._transmit_soon()

    def close(self, error_code: int = 0, reason: str = "") -> None:  # type: ignore[override]
        """Close the connection with an application error code and reason for the peer."""
        if self.close_code is None:
            self.close_code, self.close_reason = error_code, reason
        self._quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()
        self._report_closed(error_code, reason)

    def _report_closed(self, code: int, reason: str) -> None:
        """Call ``on_closed`` the first time the connection is known closed."""
        if self._close_reported:
            return
        self._close_reported = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            handshake.set_result((code, reason))  # closed while dialling: connect raises it
        if self.on_closed is not None:
            self.on_closed(self, code, reason)

    def start_keepalive(self, interval: float = KEEPALIVE_INTERVAL) -> None:
        """Send a QUIC PING every ``interval`` seconds until the connection ends."""

        def ping() -> None:
            if self._terminated:
                return
            try:
                self._quic.send_ping(0)
            except QuicConnectionError:  # refused once the connection is closing: no more pings
                return
            self.transmit()
            self._loop.call_later(interval, ping)

        self._loop.call_later(interval, ping)

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed or closing (by either side or by timeout)."""
        return self._close_reported or self._terminated

    # -- receiving -------------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        server = self._server
        if server is not None and server.pending is not None:
            # Inside a receive batch of the server socket: processed once the batch is in.
            server.pending.setdefault(self, []).append(data)  # type: ignore[arg-type]
            return
        self.remote_address = addr
        self._quic.receive_datagram(data, addr, now=self._loop_time())  # type: ignore[arg-type]
        self._after_receive()

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        self.remote_address = addr
        quic = self._quic
        core = quic._core
        if core is not None and quic._handshake_complete and quic._quic_logger is None:
            # Established: straight into the native core (the library's wrapper only
            # validates the address and logs each datagram for qlog, which is off).
            try:
                core.receive_many_datagrams(data, addr, self._loop.time())
            except RuntimeError as exc:
                raise QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)) from exc
            quic._drain_core()
        else:
            quic.receive_many_datagrams(data, addr, now=self._loop_time())
        self._after_receive()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for our socket (port unreachable: nothing listens there). Only a
        # handshake in progress acts on it: later, QUIC's own timers decide (RFC 9000 14.2).
        handshake = self._handshake
        if handshake is not None and not handshake.done() and isinstance(exc, OSError):
            handshake.set_result(exc)

    def _handle_timer(self) -> None:
        super()._handle_timer()
        self._deliver_datagrams()

    def _after_receive(self) -> None:
        self.last_received = self._loop.time()
        self._process_events()
        self._deliver_datagrams()
        closing = self._quic._close_event
        if closing is not None and not self._close_reported:
            # The peer's CONNECTION_CLOSE came in: the connection is draining, and its
            # ConnectionTerminated event comes only three PTOs later.
            self._report_closed(closing.error_code, closing.reason_phrase)
        if self._transmit_task is None and self._quic._handshake_complete and self._arm_timer():
            return  # only an ACK is due: it waits for the next packet (see _arm_timer)
        self.transmit()

    def transmit(self) -> None:
        """Send what the connection has to send, then re-arm its timer (qh3's transmit,
        with ACK timers held back by ACK_COALESCE once the handshake is done)."""
        if not self._quic._handshake_complete:
            super().transmit()
            return
        self._transmit_task = None
        quic = self._quic
        if quic._core is None or quic._quic_logger is not None:
            super().transmit()
            return
        # The library's datagrams_to_send, without its per-packet qlog calls.
        poll_transmit = quic._core.poll_transmit
        now = self._loop.time()
        datagrams: list[bytes] = []
        send_addr: Any = None
        sendto_many = self._sendto_many
        while True:
            try:
                transmit = poll_transmit(now)
            except RuntimeError as exc:
                raise QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)) from exc
            if transmit is None:
                break
            data, addr = transmit[0], transmit[1]
            if datagrams and addr != send_addr:
                self._send_packets(sendto_many, datagrams, send_addr)
                datagrams = []
            datagrams.append(data)
            send_addr = addr
        if datagrams:
            self._send_packets(sendto_many, datagrams, send_addr)
        self._arm_timer()

    def _send_packets(self, sendto_many: Any, datagrams: list[bytes], addr: Any) -> None:
        if sendto_many is not None:
            sendto_many(datagrams, addr)
        else:
            for data in datagrams:
                self._transport.sendto(data, addr)

    def _arm_timer(self) -> bool:
        """Arm the loop timer for the connection's next deadline; True if that deadline
        is a due (or soon due) ACK, which is then held back by ACK_COALESCE.

        qh3 adds an ACK to an outgoing packet only once the ACK is due, and makes it due
        on every second packet received (or 1 ms after the first): with one request in
        flight each way, every second datagram cost an ACK-only packet, which wakes the
        peer for nothing. Held back a little, the ACK rides on the next packet to that
        peer (the answer, usually), still well inside the max_ack_delay qh3 advertises."""
        core = self._quic._core
        timer = core.get_timer() if core is not None else None
        is_ack = timer is not None and timer[0] == "ack_application"
        at = None if timer is None else timer[1] + ACK_COALESCE if is_ack else timer[1]
        if self._timer is not None and (at is None or at < self._timer_at):  # type: ignore[operator]
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            if at is not None:
                self._timer = self._loop.call_at(at, self._handle_timer)
            self._timer_at = at
        # A later deadline keeps the armed timer: most packets push the loss-detection
        # and idle deadlines a little later, and a new timer handle per packet costs
        # more than a timer that fires early, finds nothing due and re-arms.
        return is_ack

    def _deliver_datagrams(self) -> None:
        quic = self._quic
        batch = quic.datagram_batch
        if batch:
            quic.datagram_batch = []
            self.datagrams_in += len(batch)
            handler = self.on_datagrams
            if handler is not None and not self._terminated:
                handler(self, batch)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            if isinstance(event, events.HandshakeCompleted):
                handshake.set_result(None)
            elif isinstance(event, events.ConnectionTerminated):
                handshake.set_result((event.error_code, event.reason_phrase))
        if isinstance(event, events.StreamDataReceived):
            if event.stream_id == CONTROL_STREAM_ID:
                if event.data and self.on_control is not None:
                    self.on_control(self, event.data)
            else:
                self.close(0x1, "only the control stream may be opened")
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated = True
            self._report_closed(event.error_code, event.reason_phrase)


class TunnelServer:
    """A listening tunnel endpoint (the edge's QUIC server)."""

    def __init__(self, server: QuicServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        """The UDP port it listens on."""
        return int(self._server._transport.get_extra_info("sockname")[1])

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on."""
        sockname = self._server._transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._server.close()


class _BatchingServer(QuicServer):
    """qh3's server protocol fed by recvmmsg/GRO batches (qh3's optimized transport, which
    also sends with GSO): each batch is demultiplexed by connection id first, then every
    connection takes its share in one call, processes its events once, hands the
    application one datagram list and transmits once."""

    pending: dict[TunnelConnection, list[bytes]] | None = None

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        pending: dict[TunnelConnection, list[bytes]] = {}
        protocols = self._protocols
        cid_end = 1 + self._configuration.connection_id_length
        self.pending = pending
        try:
            for data in datagrams:
                # A short-header packet (form bit clear) of a known connection: its
                # destination connection id follows the first byte. Everything else takes
                # the library's path (header parse, version checks, new connections).
                if data and not data[0] & 0x80:
                    connection = protocols.get(data[1:cid_end])
                    if connection is not None:
                        batch = pending.get(connection)  # type: ignore[call-overload]
                        if batch is None:
                            pending[connection] = [data]  # type: ignore[index]
                        else:
                            batch.append(data)
                        continue
                self.datagram_received(data, addr)
        finally:
            self.pending = None
        for connection, batch in pending.items():
            connection.datagrams_received(batch, addr)


# quinn-udp receives up to this many messages per recvmmsg (its BATCH_SIZE on Linux).
_RECV_BATCH = 32


class _ShortReadTransport(OptimizedDatagramTransport):
    """qh3's transport, reading its socket until a receive comes back short instead of
    until one comes back empty: a recvmmsg that returned fewer messages than it had room
    for emptied the queue, so the extra call (a syscall per wakeup, one in every two
    receive calls with one request in flight) would only say so."""

    __slots__ = ()

    def _recv_rust(self, state: Any) -> None:
        if not self._protocol_supports_batch:
            super()._recv_rust(state)
            return
        batch_received = self._protocol.datagrams_received  # type: ignore[attr-defined]
        for _ in range(_RECV_BATCH):
            try:
                received = state.recv()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._report_error(exc)
                return
            # Consecutive datagrams from one address go up as one batch, in order.
            start = 0
            for index in range(1, len(received) + 1):
                if index == len(received) or received[index][1] != received[start][1]:
                    if self._closing:
                        return
                    batch_received([segment for segment, _ in received[start:index]], received[start][1])
                    start = index
            if len(received) < _RECV_BATCH:  # GRO segments count too: never short by mistake
                return
        if not self._closing and not self._paused and self._reader_registered:
            self._loop.call_soon(self._on_readable)  # a busy socket: let the loop breathe


def _read_until_short(transport: Any) -> None:
    if type(transport) is OptimizedDatagramTransport:
        transport.__class__ = _ShortReadTransport  # same slots; only _recv_rust differs


async def serve(
    host: str,
    port: int,
    *,
    cert_file: str,
    key_file: str,
    on_connection: Callable[[TunnelConnection], None],
) -> TunnelServer:
    """Listen for tunnel connections; ``on_connection`` is called with each new one
    (before its handshake completes) and sets its handlers."""
    configuration = _base_configuration(is_client=False)
    configuration.load_cert_chain(cert_file, key_file)
    loop = asyncio.get_running_loop()
    server_box: list[_BatchingServer] = []

    def create_protocol(quic: QuicConnection, stream_handler: Any = None) -> TunnelConnection:
        connection = TunnelConnection(quic, stream_handler)
        connection._server = server_box[0]
        on_connection(connection)
        return connection

    server = _BatchingServer(configuration=configuration, create_protocol=create_protocol)
    server_box.append(server)
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        enlarge_socket_buffers(sock)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    transport, _ = await create_optimized_datagram_transport(loop, lambda: server, sock=sock)
    _read_until_short(transport)
    return TunnelServer(server)


def enlarge_socket_buffers(sock: socket.socket, size: int = SOCKET_BUFFER_SIZE) -> None:
    """Ask for ``size``-byte receive and send buffers on ``sock``: beyond net.core.rmem_max
    / wmem_max when the process may (CAP_NET_ADMIN), else as much as those allow.

    The default (about 200 KiB) overflowed at the edge and connector under a UDP flood of
    a few tens of thousands of packets per second while the process was busy with the
    previous batch; with GRO each overflow drops a whole batch of QUIC packets."""
    for option, forced in ((socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None)),
                           (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None))):
        try:
            if forced is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except PermissionError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)  # capped by rmem_max / wmem_max
            except OSError as exc:
                log.debug("cannot enlarge socket buffer: %s", exc)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def client_configuration(trust: Trust, server_name: str | None = None) -> QuicConfiguration:
    """The QUIC client configuration for ``trust``. The library checks no certificate:
    :func:`connect` checks the edge's (pin or CA bundle, see fastproxy.tunnel.certs) once
    the handshake is done and before anything is sent on the connection."""
    configuration = _base_configuration(is_client=True)
    configuration.server_name = server_name
    configuration.verify_mode = ssl.CERT_NONE
    return configuration


def check_edge_certificate(quic: QuicConnection, trust: Trust, host: str) -> None:
    """Check the certificate the edge presented on ``quic`` (handshake completed) against
    ``trust`` for the dialled ``host``; CertificateRejected says what is wrong."""
    if trust.insecure:
        return
    certificate = quic.get_peercert()
    if certificate is None:
        raise CertificateRejected("the edge presented no certificate")
    leaf = certificate.public_bytes()
    if trust.pin is not None:
        # The pin replaces chain, name and date checks: a self-signed edge has no CA.
        check_pin(leaf, trust.pin)
    else:
        assert trust.cafile is not None
        verify_with_bundle(leaf, [c.public_bytes() for c in quic.get_issuercerts()], trust.cafile, host)


# TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100 + alert (RFC 9001 4.8).
_CRYPTO_ERROR_BASE = 0x100
_ALERT_NO_APPLICATION_PROTOCOL = 120


def _handshake_error(outcome: tuple[int, str] | OSError, waited: float) -> Exception:
    """The one-line exception for a handshake that ended without completing. Messages do
    not repeat the edge's address: callers put it in front ("edge HOST:PORT: ...")."""
    if isinstance(outcome, ConnectionRefusedError):
        return EdgeUnreachable("unreachable: nothing listens on that UDP port (ICMP port unreachable); is the "
                               "edge running, and is HOST:PORT right?")
    if isinstance(outcome, OSError):
        return EdgeUnreachable(f"unreachable: {outcome.strerror or outcome}")
    code, reason = outcome
    if "idle timeout" in reason.lower() or (code == 0 and not reason):
        return EdgeUnreachable(f"no answer within {waited:.0f} s: is the edge running, is HOST:PORT right, and "
                               "may UDP pass (firewall)?")
    if code == _CRYPTO_ERROR_BASE + _ALERT_NO_APPLICATION_PROTOCOL or "alpn" in reason.lower():
        return HandshakeFailed(f"not a fastproxy edge: it refused the TLS ALPN protocol {ALPN!r} "
                               f"({reason or 'no reason given'}); is HOST:PORT right?", code)
    return HandshakeFailed(f"the QUIC handshake failed: {reason or 'no reason given'} (QUIC error 0x{code:x})", code)


async def connect(
    host: str,
    port: int,
    *,
    trust: Trust,
    on_datagrams: DatagramHandler | None = None,
    on_control: ControlHandler | None = None,
    on_closed: CloseHandler | None = None,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> TunnelConnection:
    """Open a tunnel connection, wait for its handshake and check the edge's certificate.

    Raises (each a ConnectionError, with a one-line message naming the cause):
    EdgeUnreachable (no answer within the idle timeout or ``timeout``, or an ICMP error;
    also a TimeoutError), CertificateRejected (pin, CA bundle, name or dates), and
    HandshakeFailed (ALPN mismatch, a TLS alert...)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        enlarge_socket_buffers(sock)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        if server_name is None and not _is_ip_literal(host):
            server_name = host
        quic = QuicConnection(configuration=client_configuration(trust, server_name))
        transport, protocol = await create_optimized_datagram_transport(
            loop, lambda: TunnelConnection(quic), sock=sock
        )
        _read_until_short(transport)
    except BaseException:
        sock.close()
        raise
    connection: TunnelConnection = protocol  # type: ignore[assignment]
    connection.on_datagrams = on_datagrams
    connection.on_control = on_control
    connection.on_closed = on_closed
    connection.remote_address = addr
    connection._udp_transport = transport  # type: ignore[attr-defined]
    original_closed = connection._closed

    async def close_transport_when_done() -> None:
        await original_closed.wait()
        transport.close()

    closer = loop.create_task(close_transport_when_done())
    connection._transport_closer = closer  # type: ignore[attr-defined]
    # Our own handshake future, resolved (never failed) by the protocol: qh3's
    # wait_connected() future would be failed with a bare ConnectionError after a timeout
    # or a refusal with nobody left to retrieve it ("Future exception was never retrieved").
    handshake = connection._handshake = loop.create_future()
    started = loop.time()
    try:
        connection.connect(addr)
        try:
            outcome = await asyncio.wait_for(handshake, timeout)
        except asyncio.TimeoutError:
            outcome = (0, "")
        if outcome is not None:
            raise _handshake_error(outcome, loop.time() - started)
        check_edge_certificate(quic, trust, server_name or host)
    except BaseException as exc:
        connection._handshake = None
        reason = "certificate rejected" if isinstance(exc, CertificateRejected) else "handshake failed"
        if not connection.is_closed:
            connection.close(0, reason)
        transport.close()
        closer.cancel()
        raise
    connection._handshake = None
    # Open the control stream now so its id is fixed (stream 0) before any message.
    stream_id = quic._open_stream()
    assert stream_id == CONTROL_STREAM_ID, stream_id
    connection.start_keepalive()
    return connection
