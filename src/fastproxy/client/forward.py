"""``fastproxy forward-udp``: a local UDP port that reaches a private UDP service.

Each local peer (address, port) gets its own UDP session through the tunnel, so answers
go back to the peer that asked. Datagrams that arrive while the session is being opened
wait in a short queue; a peer idle for ``idle_timeout`` seconds loses its session. A
datagram larger than the tunnel carries (MAX_DATAGRAM_PAYLOAD, 1280 bytes) is dropped,
counted (``forward_payload_too_large``) and logged once per peer: a local UDP socket has
no way to tell its sender (no ICMP comes back over loopback for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..datagram import MAX_DATAGRAM_PAYLOAD
from ..logs import format_address
from .interfaces import UdpSession, UdpSessionOpener

__all__ = ["UdpForward", "parse_forward_spec"]

log = logging.getLogger("fastproxy.client.forward")

_PENDING_LIMIT = 64


def parse_forward_spec(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """``LOCAL_ADDR:PORT=REMOTE_ADDR:PORT`` (IPv6 in brackets) -> ((host, port), (host, port)).
    ValueError says what is wrong."""
    from ..config import parse_host_port

    local, sep, remote = text.partition("=")
    if not sep:
        raise ValueError(f"expected LOCAL_ADDR:PORT=REMOTE_ADDR:PORT, got {text!r}")
    return parse_host_port(local), parse_host_port(remote)


class _Peer:
    __slots__ = ("address", "session", "pending", "last_seen", "task", "told_too_large")

    def __init__(self, address: Any, now: float) -> None:
        self.address = address
        self.told_too_large = False
        self.session: UdpSession | None = None
        self.pending: list[bytes] = []
        self.last_seen = now
        self.task: asyncio.Task[None] | None = None


class UdpForward(asyncio.DatagramProtocol):
    """Forwards datagrams from a local UDP socket to ``remote`` through ``opener``.

    ``start()`` binds the local socket; ``close()`` ends every session. Counters:
    ``stats`` (datagrams each way, sessions opened) and ``drops`` (by reason, each prefixed
    ``forward_``) — the opener's own drop counter when it has one (a
    :class:`fastproxy.Client`), so the client's metrics show them as
    ``fastproxy_drops_total{component="client",reason="forward_..."}``.
    """

    def __init__(
        self,
        opener: UdpSessionOpener,
        remote: tuple[str, int],
        *,
        idle_timeout: float = 210.0,
        max_peers: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self.remote = remote
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self._clock = clock
        self._peers: dict[Any, _Peer] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.stats: Counter[str] = Counter()
        drops = getattr(opener, "drops", None)
        self.drops: Counter[str] = drops if isinstance(drops, Counter) else Counter()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind the local socket; returns the address it got (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        assert self._transport is not None
        self._schedule_expiry()
        return self._transport.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = self._clock()
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= self.max_peers:
                self.drops["forward_peer_limit"] += 1
                return
            peer = self._peers[addr] = _Peer(addr, now)
            peer.task = asyncio.get_running_loop().create_task(self._serve(peer))
        peer.last_seen = now
        self.stats["datagrams_from_local"] += 1
        if len(data) > MAX_DATAGRAM_PAYLOAD:
            self._too_large(peer, len(data))
        elif peer.session is not None:
            peer.session.send(data)
        elif len(peer.pending) < _PENDING_LIMIT:
            peer.pending.append(data)
        else:
            self.drops["forward_pending_overflow"] += 1

    def _too_large(self, peer: _Peer, size: int) -> None:
        self.drops["forward_payload_too_large"] += 1
        if not peer.told_too_large:  # once per peer: the counter says how many followed
            peer.told_too_large = True
            log.warning("dropping a %d-byte datagram from %s to %s: the tunnel carries at most %d bytes "
                        "of UDP payload (further drops for this peer are only counted)",
                        size, format_address(peer.address), format_address(self.remote), MAX_DATAGRAM_PAYLOAD,
                        extra={"event": "udp_payload_too_large", "peer": format_address(peer.address),
                               "size": size, "limit": MAX_DATAGRAM_PAYLOAD})

    async def _serve(self, peer: _Peer) -> None:
        try:
            session = await self._opener.open_udp(*self.remote)
        # asyncio.TimeoutError (an unanswered registration): not the builtin one on 3.10.
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot open a UDP session to %s for %s: %s", format_address(self.remote),
                        format_address(peer.address), exc,
                        extra={"event": "udp_session_refused", "peer": format_address(peer.address),
                               "reason": str(exc)})
            self.drops["forward_session_open_failed"] += len(peer.pending)
            self._peers.pop(peer.address, None)
            return
        self.stats["sessions_opened"] += 1
        log.debug("UDP session to %s for %s", format_address(self.remote), format_address(peer.address))
        peer.session = session
        for data in peer.pending:
            session.send(data)
        peer.pending.clear()
        try:
            while True:
                payload = await session.receive()
                peer.last_seen = self._clock()
                if self._transport is None:
                    break
                self._transport.sendto(payload, peer.address)
                self.stats["datagrams_to_local"] += 1
        except (EOFError, ConnectionError):  # the session ended (idle expiry, connection lost)
            pass
        finally:
            session.close()
            if self._peers.get(peer.address) is peer:
                del self._peers[peer.address]

    def expire(self) -> int:
        """End the sessions of peers idle longer than ``idle_timeout``; returns how many."""
        now = self._clock()
        idle = [p for p in self._peers.values() if now - p.last_seen > self.idle_timeout]
        for peer in idle:
            del self._peers[peer.address]
            if peer.session is not None:
                peer.session.close()
            if peer.task is not None:
                peer.task.cancel()
        self.stats["sessions_expired"] += len(idle)
        return len(idle)

    def _schedule_expiry(self) -> None:
        def tick() -> None:
            self.expire()
            self._schedule_expiry()

        self._expiry = asyncio.get_running_loop().call_later(max(self.idle_timeout / 4, 0.05), tick)

    @property
    def peers(self) -> int:
        """Local peers with a session (or one being opened)."""
        return len(self._peers)

    def close(self) -> None:
        """Close the local socket and every session."""
        if self._expiry is not None:
            self._expiry.cancel()
        for peer in list(self._peers.values()):
            if peer.session is not None:
                peer.session.close()
            if peer.task is not None:
                peer.task.cancel()
        self._peers.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
