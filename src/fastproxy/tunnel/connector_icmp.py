"""The connector's ICMP proxy behind the tunnel's ICMP handler interface.

:class:`IcmpProxyHandler` runs a :class:`fastproxy.icmp.IcmpProxy` (through
:class:`fastproxy.icmp.IcmpService`) for one connector. The proxy's "client connection"
is a small integer per client tunnel address: the edge guarantees sources are assigned
addresses (it drops spoofed ones), so the address identifies the client, its flows, its
per-client flow limit and its error rate limit; and it survives a reconnect of the
connector. Each received datagram batch becomes one ``handle_client_packets`` call per
client in it; each batch of answers becomes one ``send_datagrams`` call.

A client's flows are freed when the edge sends CLIENT_GONE for its addresses; flows of
clients the connector never hears about (a connector that was disconnected when the
client left) simply expire after the proxy's idle timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..icmp import IcmpProxy, IcmpService, create_backend
from ..icmp.proxy import ClientPacket
from .connector import IcmpHandlerFactory, IcmpSink
from .control import Network

__all__ = ["IcmpProxyHandler", "icmp_proxy_factory"]


def _source(packet: memoryview) -> bytes:
    """The source address of a whole IP packet; b"" when too short (the proxy counts it)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[12:16])
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return bytes(packet[8:24])
    return b""


def _all_from(packets: list[memoryview], source: bytes) -> bool:
    """Whether every packet has the version of ``source`` (4 or 16 bytes) and ``source`` in its
    source field, compared in place (no bytes object per packet). A packet too short for its
    header may pass: the proxy drops and counts it as malformed under any client id."""
    version, start = (4, 12) if len(source) == 4 else (6, 8)
    end = start + len(source)
    for packet in packets:
        if packet[start:end] != source or packet[0] >> 4 != version:
            return False
    return True


class IcmpProxyHandler:
    """Feeds the ICMP packets of a connector's tunnel to an IcmpProxy and sends its answers
    back through ``sink`` (see the module docstring). ``proxy`` is the IcmpProxy; its
    ``metrics`` are the ICMP counters."""

    def __init__(self, sink: IcmpSink, proxy: IcmpProxy, *, expire_interval: float = 1.0) -> None:
        self.proxy = proxy
        self._sink = sink
        self._service = IcmpService(proxy, self._send, expire_interval=expire_interval)
        self._ids: dict[bytes, int] = {}
        self._next_id = 1

    @property
    def metrics(self) -> Any:
        """The proxy's :class:`fastproxy.icmp.IcmpMetrics`."""
        return self.proxy.metrics

    def start(self) -> None:
        """Start reading the backend and expiring flows (inside the running loop)."""
        self._service.start()

    def _send(self, answers: list[ClientPacket]) -> None:
        self._sink([packet for _, packet in answers])

    def _client_id(self, source: bytes) -> int:
        client_id = self._ids.get(source)
        if client_id is None:
            client_id = self._ids[source] = self._next_id
            self._next_id += 1
        return client_id

    def handle_packets(self, packets: list[memoryview]) -> None:
        """Whole IP packets of one received batch: one proxy call per client in it."""
        first = _source(packets[0])
        # The usual batch comes from one client: sort packet by packet only when it does not.
        if first and _all_from(packets, first):
            self._service.client_packets(self._client_id(first), packets)
            return
        by_client: dict[bytes, list[memoryview]] = {}
        for packet in packets:
            by_client.setdefault(_source(packet), []).append(packet)
        for source, group in by_client.items():
            self._service.client_packets(self._client_id(source) if source else 0, group)

    def client_gone(self, addresses: list[bytes]) -> None:
        """Free the flows of the client that had ``addresses``."""
        for address in addresses:
            client_id = self._ids.pop(address, None)
            if client_id is not None:
                self._service.close_connection(client_id)

    def set_routes(self, routes: Sequence[Network]) -> None:
        """Let clients reach ``routes`` from now on (the connector's routes changed)."""
        self.proxy.set_allowed_prefixes(routes)

    def close(self) -> None:
        """Close every flow and the backend."""
        self._service.close()


def icmp_proxy_factory(
    routes: Sequence[Network], backend: str = "auto", **proxy_options: Any
) -> IcmpHandlerFactory:
    """An ``icmp_handler_factory`` for :class:`~fastproxy.tunnel.connector.Connector`: an
    IcmpProxy letting clients reach ``routes`` through ``backend``. The backend is opened
    now, so :class:`fastproxy.icmp.BackendUnavailable` (naming what to change) comes at once.
    ``proxy_options`` go to IcmpProxy (idle_timeout, max_flows...)."""
    proxy = IcmpProxy(routes, create_backend(backend), **proxy_options)

    def factory(sink: IcmpSink) -> IcmpProxyHandler:
        return IcmpProxyHandler(sink, proxy)

    return factory
