"""UDP sessions on the connector (DESIGN section 4).

A registration (0x00) opens a connected, non-blocking UDP socket to the destination and
is answered (0x03); a repeated registration is answered again and opens nothing new; a
bundled first payload is sent to the destination. Payloads (0x01) flow both ways while
the session lives; the idle timeout from the registration (default 210 s) ends it. Past
``max_sessions`` a registration is answered "too many active flows". Answers from the
destination are read in batches (until the socket would block) and handed to ``send`` as
one list of datagrams; larger than 1280 bytes they are dropped and counted.

Uses ``loop.add_reader`` (selector and uvloop loops; not the Windows proactor loop).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from ..datagram import (
    MAX_DATAGRAM_PAYLOAD,
    RESPONSE_DESTINATION_UNREACHABLE,
    RESPONSE_OK,
    RESPONSE_TOO_MANY_ACTIVE_FLOWS,
    RESPONSE_UNABLE_TO_BIND_SOCKET,
    UdpPayload,
    UdpRegistration,
    encode_registration_response,
    encode_udp_payload,
)
from .control import Network

__all__ = ["DEFAULT_IDLE_TIMEOUT", "UdpSessionTable"]

log = logging.getLogger("fastproxy.connector.udp")

DEFAULT_IDLE_TIMEOUT = 210.0
_READ_BATCH = 64


class _Session:
    __slots__ = ("request_id", "sock", "idle_timeout", "last_seen", "destination")

    def __init__(self, request_id: bytes, sock: socket.socket, idle_timeout: float, now: float, destination: str) -> None:
        self.request_id = request_id
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.last_seen = now
        self.destination = destination


class UdpSessionTable:
    """The connector's UDP sessions for one tunnel connection.

    ``send`` takes a list of encoded datagrams for the edge. ``allowed`` limits
    destinations of new sessions (None: any; it may be replaced at any time). Counters are in ``drops`` and ``stats`` (pass your own
    Counters to accumulate over several tables).
    """

    def __init__(
        self,
        send: Callable[[list[bytes]], None],
        *,
        allowed: tuple[Network, ...] | None = None,
        max_sessions: int = 1024,
        default_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        loop: asyncio.AbstractEventLoop | None = None,
        drops: Counter[str] | None = None,
        stats: Counter[str] | None = None,
    ) -> None:
        self._send = send
        self.allowed = allowed
        self.max_sessions = max_sessions
        self.default_idle_timeout = default_idle_timeout
        self._loop = loop or asyncio.get_running_loop()
        self._sessions: dict[bytes, _Session] = {}
        # Shared counters let the owner keep totals across tables (one per connection).
        self.drops: Counter[str] = drops if drops is not None else Counter()
        self.stats: Counter[str] = stats if stats is not None else Counter()

    def __len__(self) -> int:
        return len(self._sessions)

    def handle_registration(self, message: UdpRegistration, now: float | None = None) -> None:
        """Open (or confirm) a session and answer it."""
        if now is None:
            now = time.monotonic()
        request_id = message.request_id
        session = self._sessions.get(request_id)
        if session is None:
            code, text = self._open(message, now)
            if code != RESPONSE_OK:
                self._send([encode_registration_response(request_id, code, text)])
                return
            session = self._sessions[request_id]
        else:
            self.stats["registrations_repeated"] += 1
            session.last_seen = now
        self._send([encode_registration_response(request_id, RESPONSE_OK)])
        if message.payload is not None:
            self._to_destination(session, message.payload)

    def _open(self, message: UdpRegistration, now: float) -> tuple[int, str]:
        address = ipaddress.ip_address(message.dst)
        if self.allowed is not None and not any(address in p for p in self.allowed if p.version == address.version):
            self.drops["udp_destination_not_allowed"] += 1
            return RESPONSE_DESTINATION_UNREACHABLE, "destination outside the connector's routes"
        if len(self._sessions) >= self.max_sessions:
            self.drops["udp_session_limit"] += 1
            return RESPONSE_TOO_MANY_ACTIVE_FLOWS, f"session limit of {self.max_sessions} reached"
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((str(address), message.port))
        except OSError as exc:
            sock.close()
            self.drops["udp_socket_error"] += 1
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return RESPONSE_DESTINATION_UNREACHABLE, str(exc)
            return RESPONSE_UNABLE_TO_BIND_SOCKET, str(exc)
        timeout = float(message.idle_timeout) if message.idle_timeout else self.default_idle_timeout
        session = _Session(message.request_id, sock, timeout, now, f"{address}:{message.port}")
        self._sessions[message.request_id] = session
        self._loop.add_reader(sock.fileno(), self._readable, session)
        self.stats["sessions_opened"] += 1
        return RESPONSE_OK, ""

    def handle_payload(self, message: UdpPayload, now: float | None = None) -> None:
        """Send a client's payload to the session's destination."""
        session = self._sessions.get(message.request_id)
        if session is None:
            self.drops["udp_unknown_session"] += 1
            return
        session.last_seen = time.monotonic() if now is None else now
        self._to_destination(session, message.payload)

    def _to_destination(self, session: _Session, payload: bytes) -> None:
        try:
            session.sock.send(payload)
            self.stats["payloads_to_destination"] += 1
        except BlockingIOError:
            self.drops["udp_send_would_block"] += 1
        except OSError:
            # e.g. ECONNREFUSED after an ICMP port unreachable for an earlier payload
            self.drops["udp_send_error"] += 1

    def _readable(self, session: _Session) -> None:
        batch: list[bytes] = []
        sock = session.sock
        request_id = session.request_id
        for _ in range(_READ_BATCH):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                self.drops["udp_receive_error"] += 1
                break
            if len(data) > MAX_DATAGRAM_PAYLOAD:
                self.drops["udp_oversize_from_destination"] += 1
                continue
            batch.append(encode_udp_payload(request_id, data))
        if batch:
            session.last_seen = time.monotonic()
            self.stats["payloads_from_destination"] += len(batch)
            self._send(batch)

    def expire(self, now: float | None = None) -> int:
        """Close sessions idle longer than their timeout; returns how many closed."""
        if now is None:
            now = time.monotonic()
        stale = [s for s in self._sessions.values() if now - s.last_seen > s.idle_timeout]
        for session in stale:
            self._close(session)
            self.stats["sessions_expired"] += 1
        return len(stale)

    def _close(self, session: _Session) -> None:
        self._sessions.pop(session.request_id, None)
        self._loop.remove_reader(session.sock.fileno())
        session.sock.close()

    def close(self) -> None:
        """Close every session."""
        for session in list(self._sessions.values()):
            self._close(session)
