"""Prometheus metrics of an edge, a connector or a client (``--metrics HOST:PORT``).

Nothing is counted per packet for this: the edge router, the connector, the UDP session
tables and the ICMP proxy already keep plain counters, and :class:`TunnelCollector`
reads them when Prometheus scrapes. One registry per process (:func:`create_registry`);
:func:`serve_metrics` answers ``GET /metrics`` on the event loop itself (no thread, so
the counters are never read while the loop changes them).

Metric names (all prefixed ``fastproxy_``):

=========================================  =======  ==========================================
connections_active{role}                   gauge    open tunnel connections (edge: client,
                                                    connector, pending; connector: edge)
connections_total{role}                    counter  connections admitted (connector: made)
connections_rejected_total                 counter  edge: refused connections
connections_revoked_total                  counter  edge: closed by a reload that removed their token
route_updates_total                        counter  edge: route sets pushed to clients
auth_failures_total{reason}                counter  edge: why (bad_token, missing_token...)
datagrams_total{direction}                 counter  QUIC datagrams in / out
routed_total{kind}                         counter  edge: datagrams routed, by type and way
drops_total{component,reason}              counter  every drop: edge, connector, udp, icmp,
                                                    client
udp_sessions_active                        gauge    edge: sessions tracked; connector: open
udp_sessions_total                         counter  connector: sessions opened
icmp_flows_active / icmp_flows_total       gauge /  connector: ICMP proxy flows
                                           counter
icmp_packets_total{kind}                   counter  connector: ICMP proxy packets (in, out,
                                                    forwarded, replies_in, time_exceeded_sent,
                                                    unreachable_sent)
client_rtt_seconds                         histo    client: round-trip times it observed
                                                    (:meth:`ClientMetrics.observe_rtt`)
=========================================  =======  ==========================================

A family is written only when it has a sample (no HELP/TYPE lines about nothing).
Reason-labelled counters (``drops_total``, ``auth_failures_total``, ``routed_total``) carry
the reasons that happened, never declared reasons at 0, the same way in every role: the
reason sets are open (the core's malformed reasons, each component's own), all of them at 0
would be some hundred series per process that say nothing; an absent series means 0
(``sum(rate(fastproxy_drops_total[5m])) or vector(0)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ClientMetrics", "TunnelCollector", "create_registry", "serve_metrics"]

_PREFIX = "fastproxy_"


def _counter(name: str, documentation: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, documentation, labels=list(labels))


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, documentation, labels=list(labels))


def _add_reasons(family: CounterMetricFamily, component: str | None, counts: Any) -> None:
    """One sample per reason that happened (count > 0; see the module docstring for why)."""
    for reason, count in counts.items():
        if count > 0:
            family.add_metric([reason] if component is None else [component, reason], count)


def _with_samples(*families: Metric) -> Iterator[Metric]:
    """The families that have a sample: an empty one would be HELP and TYPE lines alone."""
    return (family for family in families if family.samples)


class TunnelCollector(Collector):
    """Reads the counters of an :class:`~fastproxy.tunnel.edge.Edge`, a
    :class:`~fastproxy.tunnel.connector.Connector` and :class:`~fastproxy.tunnel.client.Client`
    objects at scrape time (give any of them)."""

    def __init__(self, *, edge: Any = None, connector: Any = None, clients: Iterable[Any] = ()) -> None:
        self.edge = edge
        self.connector = connector
        self.clients = list(clients)

    def collect(self) -> Iterator[Metric]:
        active = _gauge("connections_active", "Open tunnel connections", ["role"])
        total = _counter("connections", "Tunnel connections admitted or made", ["role"])
        datagrams = _counter("datagrams", "QUIC datagrams", ["direction"])
        drops = _counter("drops", "Dropped datagrams and packets", ["component", "reason"])
        sessions_active = _gauge("udp_sessions_active", "UDP sessions open")
        sessions_total = _counter("udp_sessions", "UDP sessions opened")
        yield from self._edge(active, total, datagrams, drops, sessions_active)
        yield from self._connector(active, total, datagrams, drops, sessions_active, sessions_total)
        for client in self.clients:
            connection = client._connection
            active.add_metric(["client"], 1 if client.connected.is_set() else 0)
            total.add_metric(["client"], client.stats["connections"])
            _add_reasons(drops, "client", client.drops)
            if connection is not None:
                datagrams.add_metric(["in"], connection.datagrams_in)
                datagrams.add_metric(["out"], connection.datagrams_out)
        yield from _with_samples(active, total, datagrams, drops, sessions_active, sessions_total)

    def _edge(self, active: Any, total: Any, datagrams: Any, drops: Any, sessions_active: Any) -> Iterator[Metric]:
        edge = self.edge
        if edge is None:
            return
        for role, count in edge.connections.items():
            active.add_metric([role], count)
        for role in ("client", "connector"):
            total.add_metric([role], edge.stats[f"connections_total_{role}"])
        rejected = _counter("connections_rejected", "Connections the edge refused")
        rejected.add_metric([], edge.stats["connections_rejected"])
        revoked = _counter("connections_revoked", "Connections the edge closed when a reload removed their token")
        revoked.add_metric([], edge.stats["connections_revoked"])
        route_updates = _counter("route_updates", "Route sets the edge pushed to clients")
        route_updates.add_metric([], edge.stats["route_updates_sent"])
        auth = _counter("auth_failures", "Authentication failures at the edge", ["reason"])
        _add_reasons(auth, None, edge.router.auth_failures)
        routed = _counter("routed", "Datagrams the edge routed", ["kind"])
        _add_reasons(routed, None, edge.router.routed)
        _add_reasons(drops, "edge", edge.router.drops)
        received, sent = edge.datagram_totals()
        datagrams.add_metric(["in"], received)
        datagrams.add_metric(["out"], sent)
        sessions_active.add_metric([], edge.router.session_count)
        yield from _with_samples(rejected, revoked, route_updates, auth, routed)

    def _connector(self, active: Any, total: Any, datagrams: Any, drops: Any, sessions_active: Any,
                   sessions_total: Any) -> Iterator[Metric]:
        connector = self.connector
        if connector is None:
            return
        active.add_metric(["edge"], 1 if connector.connected.is_set() else 0)
        total.add_metric(["edge"], connector.stats["connections"])
        connection = connector._connection
        if connection is not None:
            datagrams.add_metric(["in"], connection.datagrams_in)
            datagrams.add_metric(["out"], connection.datagrams_out)
        _add_reasons(drops, "connector", connector.drops)
        _add_reasons(drops, "udp", connector.udp_drops)
        table = connector.udp_sessions
        sessions_active.add_metric([], len(table) if table is not None else 0)
        sessions_total.add_metric([], connector.udp_stats["sessions_opened"])
        icmp = getattr(connector.icmp, "metrics", None)
        if icmp is None:
            return
        flows_active = _gauge("icmp_flows_active", "ICMP proxy flows open")
        flows_active.add_metric([], icmp.flows_active)
        flows_total = _counter("icmp_flows", "ICMP proxy flows opened")
        flows_total.add_metric([], icmp.flows_total)
        packets = _counter("icmp_packets", "ICMP proxy packets", ["kind"])
        for kind in ("packets_in", "packets_out", "forwarded", "replies_in", "time_exceeded_sent", "unreachable_sent"):
            packets.add_metric([kind], getattr(icmp, kind))
        _add_reasons(drops, "icmp", icmp.drops)
        yield from _with_samples(flows_active, flows_total, packets)


class ClientMetrics:
    """The client-side RTT histogram: tools (ping, traceroute) call :meth:`observe_rtt`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rtt = Histogram(
            _PREFIX + "client_rtt_seconds", "Round-trip times seen by the client", registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )

    def observe_rtt(self, seconds: float) -> None:
        """Record one round-trip time."""
        self.rtt.observe(seconds)


def create_registry(*, edge: Any = None, connector: Any = None, clients: Iterable[Any] = ()) -> CollectorRegistry:
    """A fresh registry (one per process) exporting these objects' counters."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TunnelCollector(edge=edge, connector=connector, clients=clients))
    return registry


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> asyncio.Server:
    """Answer ``GET /metrics`` (and ``HEAD /metrics``: the same headers, no body) with the
    registry in the Prometheus text format; 404 for other paths, 405 for other methods.
    Runs on the current event loop; close the returned server to stop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            parts = request.split(b"\r\n", 1)[0].split()
            method = parts[0] if parts else b""
            extra = b""
            if len(parts) < 2 or parts[1].split(b"?")[0] != b"/metrics":
                body, status, content_type = b"not found\n", b"404 Not Found", b"text/plain"
            elif method in (b"GET", b"HEAD"):
                body, status = generate_latest(registry), b"200 OK"
                content_type = b"text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, content_type = b"only GET and HEAD\n", b"405 Method Not Allowed", b"text/plain"
                extra = b"\r\nAllow: GET, HEAD"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + extra
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
