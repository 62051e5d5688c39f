"""Dialling the edge: QUIC handshake, then hello (and announce) on the control stream,
then the edge's welcome. Shared by connectors and clients.

The hello offers the newest control protocol (PROTOCOL_VERSION); an edge that speaks
only version 1 refuses it, and the dial is made once more speaking version 1 (see
fastproxy.tunnel.control, "Negotiation"). ``welcome.version`` is what was agreed."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

from ..errors import DialError, EdgeUnreachable
from . import quic
from .control import (
    PROTOCOL_VERSION,
    ROLE_CONNECTOR,
    Announce,
    ControlDecoder,
    ControlMessage,
    Error,
    Hello,
    MalformedControlMessage,
    Network,
    Welcome,
    encode_message,
    is_version_refusal,
)

__all__ = ["Backoff", "TunnelRejected", "dial"]

log = logging.getLogger("fastproxy.dial")


class Backoff:
    """Reconnect delays: exponential from ``initial`` up to ``maximum`` seconds, with full
    jitter (a uniform draw below the bound) so that many clients and connectors losing one
    edge do not come back in step. Call ``connected()`` when a connection comes up: the
    delays start again from ``initial`` only if that connection then stayed up for
    ``stable_after`` seconds, so an edge that accepts and drops at once is not hammered."""

    def __init__(self, initial: float, maximum: float, stable_after: float = 10.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial} and {maximum}")
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self._failures = 0
        self._up_since: float | None = None

    def connected(self) -> None:
        """A connection came up now."""
        self._up_since = time.monotonic()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        if self._up_since is not None:
            if time.monotonic() - self._up_since >= self.stable_after:
                self._failures = 0
            self._up_since = None
        bound = min(self.maximum, self.initial * (2 ** self._failures))
        self._failures = min(self._failures + 1, 30)
        return random.uniform(0, bound)


class TunnelRejected(DialError):
    """The edge refused the connection (``code`` is a control ERROR_* code, or the QUIC
    close code; ``reason`` is the edge's text). Other dial failures are the other
    DialError subclasses (fastproxy.errors)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"edge refused the connection (code {code}): {reason}")


async def dial(
    host: str,
    port: int,
    *,
    trust: quic.Trust,
    role: str,
    token: str,
    prefixes: Sequence[Network] = (),
    on_datagrams: quic.DatagramHandler | None = None,
    on_message: Callable[[ControlMessage], None] | None = None,
    timeout: float = 10.0,
    version: int = PROTOCOL_VERSION,
) -> tuple[quic.TunnelConnection, Welcome]:
    """Connect to the edge as ``role`` and wait for its welcome. Raises TunnelRejected if
    the edge refuses, and the other DialError subclasses (EdgeUnreachable -- also a
    TimeoutError --, CertificateRejected, HandshakeFailed) with a one-line message naming
    the cause. Control messages after the welcome (ClientGone for connectors, RouteUpdate
    for clients...) go to ``on_message``. ``version``: the control protocol to offer; an edge
    that refuses it as too new is dialled again with version 1."""
    try:
        return await _dial_once(host, port, trust, role, token, prefixes, on_datagrams, on_message, timeout, version)
    except TunnelRejected as exc:
        if version == 1 or not is_version_refusal(exc.code, exc.reason):
            raise
    log.warning("the edge %s:%d speaks control protocol version 1 only: routes announced after this %s "
                "connects reach it only when it reconnects; upgrade the edge", host, port, role)
    return await _dial_once(host, port, trust, role, token, prefixes, on_datagrams, on_message, timeout, 1)


async def _dial_once(
    host: str, port: int, trust: quic.Trust, role: str, token: str, prefixes: Sequence[Network],
    on_datagrams: quic.DatagramHandler | None, on_message: Callable[[ControlMessage], None] | None,
    timeout: float, version: int,
) -> tuple[quic.TunnelConnection, Welcome]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Welcome] = loop.create_future()
    decoder = ControlDecoder()

    def on_control(connection: quic.TunnelConnection, data: bytes) -> None:
        try:
            messages = decoder.feed(data)
        except MalformedControlMessage as exc:
            if not answer.done():
                answer.set_exception(TunnelRejected(0, f"malformed control message from the edge: {exc}"))
            connection.close(1, "malformed control message")
            return
        for message in messages:
            if answer.done():
                if on_message is not None:
                    on_message(message)
                continue
            if isinstance(message, Welcome):
                answer.set_result(message)
            elif isinstance(message, Error):
                answer.set_exception(TunnelRejected(message.code, message.reason))

    def on_closed(connection: quic.TunnelConnection, code: int, reason: str) -> None:
        if answer.done():
            return
        if "idle timeout" in reason.lower():
            answer.set_exception(EdgeUnreachable("the edge stopped answering before its welcome"))
        else:
            answer.set_exception(TunnelRejected(code, reason or "connection closed without a reason"))

    # on_closed is set only once the handshake is through: a handshake failure is raised by
    # connect itself, and must not also fail ``answer``, which nobody would then await.
    connection = await quic.connect(
        host, port, trust=trust, on_datagrams=on_datagrams, on_control=on_control, timeout=timeout,
    )
    connection.on_closed = on_closed
    if connection.is_closed:
        on_closed(connection, connection.close_code or 0, connection.close_reason)
    message = encode_message(Hello(role, token, version))
    if role == ROLE_CONNECTOR:
        message += encode_message(Announce(tuple(prefixes)), version)
    connection.send_control(message)
    try:
        welcome = await asyncio.wait_for(answer, timeout)
    except asyncio.TimeoutError:
        connection.close(0, "no welcome")
        raise EdgeUnreachable(f"the edge sent no welcome within {timeout:g} s of the handshake") from None
    except BaseException:
        connection.close(0, "no welcome")
        raise
    return connection, welcome
