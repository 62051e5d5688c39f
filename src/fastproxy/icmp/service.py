"""asyncio glue for :class:`IcmpProxy`: watch the backend's descriptors, expire flows, close cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from .proxy import ClientPacket, IcmpProxy

__all__ = ["IcmpService", "new_event_loop"]

logger = logging.getLogger("fastproxy.icmp")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (faster readers), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class IcmpService:
    """Runs an :class:`IcmpProxy` on the running event loop.

    ``send_to_client(packets)`` receives every batch of ``(conn_id, packet)``
    the proxy produces, as one list per batch. Feed client packets with
    :meth:`client_packets`; a reader callback per backend descriptor drains it
    batch by batch when it becomes readable (one recvmmsg and one NAT call per
    batch on the raw backend; at most ``max_batches_per_wakeup`` batches, so
    other work gets its turn), and idle flows are expired every
    ``expire_interval`` seconds, scanning at most ``expire_max_scan`` slots each
    time so a large table never stalls the loop.
    """

    def __init__(
        self,
        proxy: IcmpProxy,
        send_to_client: Callable[[list[ClientPacket]], None],
        *,
        expire_interval: float = 1.0,
        expire_max_scan: int = 4096,
        read_limit: int = 256,
        max_batches_per_wakeup: int = 16,
    ) -> None:
        self.proxy = proxy
        self._send = send_to_client
        self._expire_interval = expire_interval
        self._expire_max_scan = expire_max_scan
        self._read_limit = read_limit
        self._max_batches = max_batches_per_wakeup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._fds: list[int] = []
        self._closed = False

    async def __aenter__(self) -> IcmpService:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start watching the backend and the expiry timer (call inside the running loop)."""
        self._loop = asyncio.get_running_loop()
        for fd in self.proxy.backend.filenos():
            self._loop.add_reader(fd, self._on_readable, fd)
            self._fds.append(fd)  # only what was added, for close() to remove
        self._expiry = self._loop.call_later(self._expire_interval, self._on_expiry)

    def client_packets(self, conn_id: int, packets: Iterable[bytes | bytearray | memoryview]) -> None:
        """Packets from client connection ``conn_id``; the proxy's own answers are sent at once."""
        answers = self.proxy.handle_client_packets(conn_id, packets)
        if answers:
            self._send(answers)

    def close_connection(self, conn_id: int) -> None:
        """A client connection ended: free its flows now."""
        self.proxy.close_connection(conn_id)

    def _on_readable(self, fd: int) -> None:
        read_backend, send, limit = self.proxy.read_backend, self._send, self._read_limit
        for _ in range(self._max_batches):
            out = read_backend(fd, limit)
            if out is None:  # drained
                break
            if out:
                send(out)

    def _on_expiry(self) -> None:
        try:
            self.proxy.expire(max_scan=self._expire_max_scan)
        except Exception:  # the timer must survive a bug in one round
            logger.exception("ICMP: flow expiry failed")
        assert self._loop is not None
        self._expiry = self._loop.call_later(self._expire_interval, self._on_expiry)

    def close(self) -> None:
        """Stop watching, close every flow and the backend (also when never started); idempotent."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._loop is not None:
            for fd in self._fds:
                self._loop.remove_reader(fd)
            self._fds = []
            self._loop = None
        if not self._closed:
            self._closed = True
            self.proxy.close()
