"""The tunnel with the connector's ICMP proxy in it, against stock aioquic, on loopback.

Run as a script (the figures in bench/RESULTS.md, section quic, come from this):
    PYTHONPATH=src:. /work/devvenv/bin/python bench/bench_tunnel.py
or one round through pytest:
    PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_tunnel.py -s

In one run (uvloop, one process, everything on 127.0.0.1, bounded like bench_quic_transport):
- edge -> connector -> edge: datagrams echoed over one connection, stock aioquic (its event
  queue, one sendto per packet) against our transport;
- the whole tunnel, client -> edge -> connector -> edge -> client, with the connector running
  the real IcmpProxy (through IcmpService and the tunnel's ICMP handler) over a loopback
  backend that answers every echo request at once (no kernel ICMP);
- the ICMP proxy's own cost per packet (handle_client_packets + poll_backend, batches of 32,
  replies pre-built) against the transport's cost per echoed datagram.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import sys
import tempfile
import time
from typing import Any

from bench.bench_quic_transport import SIZES, _Counter, _drive, _measure_ours, _measure_stock
from fastproxy.icmp import IcmpProxy
from fastproxy.icmp.backends import BackendFlow, IcmpBackend, ReceivedPacket, SendFailure
from fastproxy.packet import build_echo

BATCH = 32
PROXY_ROUNDS = 2000  # x BATCH packets, for the per-packet cost


class LoopbackBackend(IcmpBackend):
    """Answers every echo request with its echo reply on the next read (a socketpair wakes
    the event loop, like a real backend's socket)."""

    name = "loopback"

    def __init__(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._replies: list[ReceivedPacket] = []

    def open_flow(self, flow: BackendFlow) -> None:
        pass

    def close_flow(self, flow: BackendFlow) -> None:
        pass

    def send_echo(self, flow: BackendFlow, message: Any, ttl: int) -> None:
        view = memoryview(message)
        seq = int.from_bytes(view[6:8], "big")
        unspecified = bytes(len(flow.dst))
        reply = build_echo(flow.dst, unspecified, flow.echo_id, seq, bytes(view[8:]), reply=True)
        self._replies.append(ReceivedPacket(reply, flow))

    def flush(self) -> list[SendFailure]:
        if self._replies:
            try:
                self._wake_w.send(b"x")
            except BlockingIOError:
                pass
        return []

    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        out, self._replies = self._replies[:limit], self._replies[limit:]
        if self._replies:
            self._wake_w.send(b"x")
        return out

    def filenos(self) -> list[int]:
        return [self._wake_r.fileno()]

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


async def measure_tunnel_with_proxy(size: int, cert: Any) -> float:
    """Echo requests client -> edge -> connector (IcmpProxy) -> edge -> client, per second."""
    from fastproxy.tunnel.client import Client
    from fastproxy.tunnel.connector import Connector
    from fastproxy.tunnel.connector_icmp import IcmpProxyHandler
    from fastproxy.tunnel.edge import Edge, EdgeConfig

    route = ipaddress.ip_network("10.0.0.0/8")
    proxy = IcmpProxy([route], LoopbackBackend(), max_flows_per_connection=0)
    counter = _Counter()
    async with Edge(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",)), cert_file=cert.cert_file,
                    key_file=cert.key_file) as edge, Connector(
        "127.0.0.1", edge.port, token="k", routes=[route], trust=_trust(cert),
        icmp_handler_factory=lambda sink: IcmpProxyHandler(sink, proxy),
    ) as connector:
        await asyncio.wait_for(connector.connected.wait(), 5)

        def on_packets(packets: list[bytes]) -> None:
            counter.received += len(packets)

        async with Client(("127.0.0.1", edge.port), "c", _trust(cert), on_packets=on_packets) as client:
            assert client.address_v4 is not None
            packet = build_echo(client.address_v4.packed, bytes([10, 0, 0, 8]), 1, 1, bytes(size - 1 - 28))
            rate = await _drive(lambda batch: client.send_packets([packet] * len(batch)), counter, size)
    assert proxy.metrics.forwarded > 0
    return rate


def _trust(cert: Any) -> Any:
    from fastproxy.tunnel.quic import Trust

    return Trust(pin=cert.fingerprint)


def proxy_cost_per_packet(size: int) -> float:
    """Seconds of IcmpProxy work per echoed packet (request in, reply out), batches of BATCH."""
    backend = LoopbackBackend()
    proxy = IcmpProxy(["10.0.0.0/8"], backend, max_flows_per_connection=0)
    client = bytes([100, 96, 0, 2])
    requests = [build_echo(client, bytes([10, 0, 0, 8]), 7, seq, bytes(size - 1 - 28)) for seq in range(BATCH)]
    proxy.handle_client_packets(1, requests)
    replies = backend.receive(BATCH)  # pre-built: the flow's assigned id does not change
    assert len(proxy.handle_client_packets(1, requests)) == 0
    backend._replies.clear()
    backend.send_echo = lambda flow, message, ttl: None  # type: ignore[method-assign]
    start = time.perf_counter()
    for _ in range(PROXY_ROUNDS):
        proxy.handle_client_packets(1, requests)
        backend._replies = list(replies)
        out = proxy.poll_backend(BATCH)
    elapsed = time.perf_counter() - start
    assert len(out) == BATCH, out
    return elapsed / (PROXY_ROUNDS * BATCH)


async def run_all() -> list[tuple[str, int, float]]:
    from fastproxy.tunnel.certs import generate_self_signed

    cert = generate_self_signed(tempfile.mkdtemp(prefix="fastproxy-bench-"))
    rows = []
    for size in SIZES:
        rows.append(("edge->connector->edge, stock aioquic", size, await _measure_stock("aioquic", size, True, cert)))
        rows.append(("edge->connector->edge, fastproxy.tunnel.quic", size, await _measure_ours(size, True, cert)))
        rows.append(("client->edge->connector(IcmpProxy)->edge->client", size,
                     await measure_tunnel_with_proxy(size, cert)))
    return rows


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rows = asyncio.run(run_all())
    stock = {size: rate for name, size, rate in rows if "stock" in name}
    print("| path | size | datagrams/s | vs stock aioquic |")
    print("|---|---|---|---|")
    for name, size, rate in rows:
        print(f"| {name} | {size} B | {rate:,.0f} | {rate / stock[size]:.2f}x |")
    print()
    print("| size | IcmpProxy µs/packet (request + reply) | transport µs/echoed datagram (ours) | proxy / transport |")
    print("|---|---|---|---|")
    for size in SIZES:
        proxy = proxy_cost_per_packet(size) * 1e6
        ours = next(rate for name, s, rate in rows if s == size and name.endswith("fastproxy.tunnel.quic"))
        transport = 1e6 / ours
        print(f"| {size} B | {proxy:.2f} | {transport:.2f} | {proxy / transport:.2f} |")


def test_tunnel_figures() -> None:
    """One round under pytest; prints the tables (no speed assertion)."""
    main()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
