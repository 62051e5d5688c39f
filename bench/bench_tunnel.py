"""The tunnel with the connector's ICMP proxy in it, against stock aioquic, on loopback.

Run as a script (the figures in bench/RESULTS.md, section quic, come from this):
    PYTHONPATH=src:. /work/devvenv/bin/python bench/bench_tunnel.py
or one round through pytest:
    PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_tunnel.py -s

In one run (uvloop, one process, everything on 127.0.0.1, bounded like bench_quic_transport):
- edge -> connector -> edge: datagrams echoed over one connection, stock aioquic (its event
  queue, one sendto per packet) against our transport;
- the whole tunnel, client -> edge -> connector -> edge -> client, with the connector running
  the real IcmpProxy on the raw backend (``icmp_backend="raw"``) towards 127.0.0.8, which the
  kernel answers;
- the connector's ICMP cost per echoed packet on that same path (see connector_icmp_cost),
  with the socket I/O left out and with it, and the raw socket's own cost, against the
  transport's cost per echoed datagram.
The ICMP parts need raw sockets (root); without, only the transport rows are printed. Loopback
only: the raw socket sends to 127.0.0.8 alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import resource
import sys
import tempfile
import time
from typing import Any

from bench.bench_quic_transport import SIZES, _Counter, _drive, _measure_ours, _measure_stock
from fastproxy._impl import core
from fastproxy.packet import build_echo

BATCH = 32
PROXY_ROUNDS = 1000  # x BATCH packets, for the per-packet cost
REPEATS = 5
ROUTE = ipaddress.ip_network("127.0.0.0/8")
TARGET = bytes([127, 0, 0, 8])  # the kernel answers on loopback
CLIENT = bytes([100, 96, 0, 2])


def raw_available() -> bool:
    """The raw ICMP backend needs CAP_NET_RAW (root in the bench)."""
    return os.geteuid() == 0


async def measure_tunnel_with_proxy(size: int, cert: Any) -> float:
    """Echo requests client -> edge -> connector (IcmpProxy, raw backend) -> 127.0.0.8 -> back, per second."""
    from fastproxy.tunnel.client import Client
    from fastproxy.tunnel.connector import Connector
    from fastproxy.tunnel.edge import Edge, EdgeConfig

    counter = _Counter()
    async with Edge(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",)), cert_file=cert.cert_file,
                    key_file=cert.key_file) as edge, Connector(
        "127.0.0.1", edge.port, token="k", routes=[ROUTE], trust=_trust(cert), icmp_backend="raw",
    ) as connector:
        await asyncio.wait_for(connector.connected.wait(), 5)

        def on_packets(packets: list[bytes]) -> None:
            counter.received += len(packets)

        async with Client(("127.0.0.1", edge.port), "c", _trust(cert), on_packets=on_packets) as client:
            assert client.address_v4 is not None
            packet = build_echo(client.address_v4.packed, TARGET, 1, 1, bytes(size - 1 - 28))
            rate = await _drive(lambda batch: client.send_packets([packet] * len(batch)), counter, size)
        assert connector.icmp is not None and connector.icmp.metrics.forwarded > 0
    return rate


def _trust(cert: Any) -> Any:
    from fastproxy.tunnel.quic import Trust

    return Trust(pin=cert.fingerprint)


class _StubConnection:
    """The tunnel connection's place in the connector: counts the datagrams sent back."""

    is_closed = False

    def __init__(self) -> None:
        self.sent = 0

    def send_datagrams(self, datagrams: list[bytes]) -> None:
        self.sent += len(datagrams)


def connector_icmp_cost(size: int) -> tuple[float, float, float]:
    """The connector's ICMP work per echoed packet, as the tunnel runs it: a received datagram
    batch through ``Connector._on_datagrams`` -> IcmpProxyHandler -> IcmpProxy -> EchoNat -> the
    raw backend's send batch; the raw socket's batch -> EchoNat.inbound -> the handler's sink ->
    ``encode_icmp`` -> ``send_datagrams``. Returns seconds per packet with the socket I/O left out
    (replies pre-received, like the transport figure's Python work), CPU seconds per round trip with
    the real raw socket to 127.0.0.8 (sendmmsg, the kernel's loopback echo and recvmmsg included),
    and the CPU seconds per round trip of that socket I/O alone (the same NAT'd batch resent)."""
    from fastproxy.tunnel.connector import Connector
    from fastproxy.tunnel.quic import Trust
    from fastproxy.tunnel.udp_sessions import UdpSessionTable

    connector = Connector("127.0.0.1", 9, token="k", routes=[ROUTE], trust=Trust(insecure=True),
                          icmp_backend="raw")
    connection = _StubConnection()
    connector._connection = connection  # type: ignore[assignment]
    loop = asyncio.new_event_loop()  # the UDP session table wants one; no session is opened
    connector._sessions = UdpSessionTable(connection.send_datagrams, allowed=[ROUTE], loop=loop)
    handler: Any = connector.icmp
    proxy = handler.proxy
    backend = proxy.backend
    service = handler._service
    fd = backend.filenos()[0]  # IPv4
    datagrams = [b"\x02" + build_echo(CLIENT, TARGET, 7, seq, bytes(size - 1 - 28)) for seq in range(BATCH)]
    try:
        real = _round_trips_cpu(connector, connection, service, fd, datagrams)
        floor = _socket_floor_cpu(backend, proxy._send_batches[4], fd)
        # Pre-receive one batch of replies, then replay it with the socket I/O stubbed out.
        connector._on_datagrams(connection, datagrams)  # type: ignore[arg-type]
        time.sleep(0.05)
        _family, replies = backend.receive_batch(fd)
        assert replies.count == BATCH, replies.count
        empty = core.PacketBatch(BATCH)
        pending = [False]

        def receive_batch(_fd: int) -> tuple[int, Any]:
            pending[0] = not pending[0]
            return 4, (replies if pending[0] else empty)

        backend.send_batch = lambda family, batch, count: []
        backend.receive_batch = receive_batch
        best = float("inf")
        for _repeat in range(REPEATS):  # the least disturbed repeat, as timeit does
            sent_before = connection.sent
            start = time.perf_counter()
            for _ in range(PROXY_ROUNDS):
                connector._on_datagrams(connection, datagrams)  # type: ignore[arg-type]
                service._on_readable(fd)
            best = min(best, time.perf_counter() - start)
            assert connection.sent - sent_before == PROXY_ROUNDS * BATCH, connection.sent - sent_before
    finally:
        handler.close()
        loop.close()
    return best / (PROXY_ROUNDS * BATCH), real, floor


def _socket_floor_cpu(backend: Any, batch: Any, fd: int) -> float:
    """CPU seconds per round trip of the raw socket alone: one NAT'd batch of BATCH echo requests
    sent again and again (one sendmmsg), its replies received (recvmmsg) and dropped."""
    assert batch.count == BATCH, batch.count
    before = resource.getrusage(resource.RUSAGE_SELF)
    answered = 0
    for _ in range(PROXY_ROUNDS):
        assert not backend.send_batch(4, batch, BATCH)
        for _attempt in range(1000):
            _family, replies = backend.receive_batch(fd)
            answered += replies.count
            if not replies.count:
                break
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert answered >= PROXY_ROUNDS * BATCH * 0.99, answered
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / answered


def _round_trips_cpu(connector: Any, connection: _StubConnection, service: Any, fd: int,
                     datagrams: list[bytes]) -> float:
    """CPU seconds (user + sys of this process) per round trip through the real raw socket."""
    rounds = PROXY_ROUNDS
    before = resource.getrusage(resource.RUSAGE_SELF)
    sent_before = connection.sent
    for _ in range(rounds):
        expected = connection.sent + BATCH
        connector._on_datagrams(connection, datagrams)
        for _attempt in range(1000):  # the loopback echo is normally there at once
            service._on_readable(fd)
            if connection.sent >= expected:
                break
    after = resource.getrusage(resource.RUSAGE_SELF)
    answered = connection.sent - sent_before
    assert answered >= rounds * BATCH * 0.99, answered
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / answered


async def run_all() -> list[tuple[str, int, float]]:
    from fastproxy.tunnel.certs import generate_self_signed

    cert = generate_self_signed(tempfile.mkdtemp(prefix="fastproxy-bench-"))
    rows = []
    for size in SIZES:
        rows.append(("edge->connector->edge, stock aioquic", size, await _measure_stock("aioquic", size, True, cert)))
        rows.append(("edge->connector->edge, fastproxy.tunnel.quic", size, await _measure_ours(size, True, cert)))
        if raw_available():
            rows.append(("client->edge->connector(IcmpProxy, raw)->edge->client", size,
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
    if not raw_available():
        print("\n(the connector's ICMP figures need root: raw ICMP sockets)")
        return
    print()
    print("| size | connector ICMP µs/packet, socket I/O left out | with raw socket I/O, CPU µs/round trip "
          "| raw socket I/O alone (+ kernel echo), CPU µs/round trip | transport µs/echoed datagram (ours) "
          "| ICMP / transport (without I/O; with I/O less the socket's) |")
    print("|---|---|---|---|---|---|")
    for size in SIZES:
        work, real, floor = (seconds * 1e6 for seconds in connector_icmp_cost(size))
        ours = next(rate for name, s, rate in rows if s == size and name.endswith("fastproxy.tunnel.quic"))
        transport = 1e6 / ours
        print(f"| {size} B | {work:.2f} | {real:.2f} | {floor:.2f} | {transport:.2f} "
              f"| {work / transport:.2f}; {(real - floor) / transport:.2f} |")


def test_tunnel_figures() -> None:
    """One round under pytest; prints the tables (no speed assertion)."""
    main()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
