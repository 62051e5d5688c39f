"""QUIC datagram throughput on loopback: aioquic vs qh3 (stock asyncio APIs) vs our wrapper.

Run as a script (the figures in bench/RESULTS.md come from this):
    PYTHONPATH=src:. /work/devvenv/bin/python bench/bench_quic_transport.py
or through pytest (one short round, prints the table):
    PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_quic_transport.py -s

One process, one event loop (uvloop), server and client both on 127.0.0.1, so every figure
includes both ends' Python work. The sender keeps at most WINDOW_BYTES of datagrams in flight (it
sees the receiver's count directly, same process), so queues stay bounded; a stall longer
than STALL seconds counts the outstanding datagrams as lost and goes on. Bounded: each
measurement runs DURATION seconds and at most MAX_COUNT datagrams.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import tempfile
import time
from typing import Any

DURATION = 2.0
MAX_COUNT = 2_000_000
WINDOW_BYTES = 128 * 1024  # below the default socket receive buffer, so loopback does not drop
BURST = 32
STALL = 0.05
SIZES = (64, 1200)
LIBRARIES = ("aioquic", "qh3")


class _Counter:
    def __init__(self) -> None:
        self.received = 0


def _stock_protocols(lib: str, counter: _Counter, echo: bool) -> tuple[type, type]:
    protocol_mod = importlib.import_module(f"{lib}.asyncio.protocol")
    events = importlib.import_module(f"{lib}.quic.events")
    base = protocol_mod.QuicConnectionProtocol
    received_cls = events.DatagramFrameReceived

    class Server(base):  # type: ignore[misc, valid-type]
        def quic_event_received(self, event: Any) -> None:
            if type(event) is received_cls:
                if echo:
                    self._quic.send_datagram_frame(event.data)
                else:
                    counter.received += 1

    class Client(base):  # type: ignore[misc, valid-type]
        def quic_event_received(self, event: Any) -> None:
            if type(event) is received_cls:
                counter.received += 1

    return Server, Client


async def _drive(send_batch: Any, counter: _Counter, size: int) -> float:
    """Send with a bounded window for DURATION seconds; return datagrams received per second."""
    payload = b"\x02" + bytes(size - 1)
    batch = [payload] * BURST
    window = max(BURST, WINDOW_BYTES // size)
    sent = 0
    lost = 0
    start = time.perf_counter()
    deadline = start + DURATION
    last_progress = start
    last_received = 0
    while True:
        now = time.perf_counter()
        if now >= deadline or sent >= MAX_COUNT:
            break
        if counter.received != last_received:
            last_received = counter.received
            last_progress = now
        if sent - lost - counter.received < window:
            send_batch(batch)
            sent += BURST
        elif now - last_progress > STALL:
            lost = sent - counter.received
            last_progress = now
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    return counter.received / elapsed


async def _measure_stock(lib: str, size: int, echo: bool, cert: Any) -> float:
    config_mod = importlib.import_module(f"{lib}.quic.configuration")
    server_mod = importlib.import_module(f"{lib}.asyncio.server")
    client_mod = importlib.import_module(f"{lib}.asyncio.client")
    counter = _Counter()
    server_cls, client_cls = _stock_protocols(lib, counter, echo)
    server_config = config_mod.QuicConfiguration(is_client=False, alpn_protocols=["bench"], max_datagram_frame_size=65536, max_datagram_size=1452)
    server_config.load_cert_chain(cert.cert_file, cert.key_file)
    client_config = config_mod.QuicConfiguration(is_client=True, alpn_protocols=["bench"], max_datagram_frame_size=65536, max_datagram_size=1452)
    client_config.verify_mode = 0  # ssl.CERT_NONE: the bench measures datagrams, not trust
    server = await server_mod.serve("127.0.0.1", 0, configuration=server_config, create_protocol=server_cls)
    port = server._transport.get_extra_info("sockname")[1]
    try:
        async with client_mod.connect("127.0.0.1", port, configuration=client_config, create_protocol=client_cls) as client:

            def send_batch(batch: list[bytes]) -> None:
                for data in batch:
                    client._quic.send_datagram_frame(data)
                client.transmit()

            return await _drive(send_batch, counter, size)
    finally:
        server.close()


async def _measure_ours(size: int, echo: bool, cert: Any) -> float:
    from fastproxy.tunnel import quic

    counter = _Counter()
    def on_server_datagrams(conn: Any, datagrams: list[bytes]) -> None:
        if echo:
            conn.send_datagrams(datagrams)
        else:
            counter.received += len(datagrams)

    def on_client_datagrams(conn: Any, datagrams: list[bytes]) -> None:
        counter.received += len(datagrams)

    def on_connection(conn: Any) -> None:
        conn.on_datagrams = on_server_datagrams

    server = await quic.serve(
        "127.0.0.1", 0, cert_file=cert.cert_file, key_file=cert.key_file, on_connection=on_connection
    )
    try:
        client = await quic.connect(
            "127.0.0.1", server.port, trust=quic.Trust(insecure=True), on_datagrams=on_client_datagrams
        )
        try:
            return await _drive(client.send_datagrams, counter, size)
        finally:
            client.close()
    finally:
        server.close()


def _swap_addresses(packet: bytes) -> bytes:
    """A stand-in for the connector's ICMP proxy: send the packet back to its source."""
    swapped = bytearray(packet)
    if packet[0] >> 4 == 4:
        swapped[12:16], swapped[16:20] = packet[16:20], packet[12:16]
    else:
        swapped[8:24], swapped[24:40] = packet[24:40], packet[8:24]
    return bytes(swapped)


async def _measure_tunnel(size: int, cert: Any) -> float:
    """ICMP datagrams client -> edge (TTL decrement, routing) -> connector (stub that swaps
    the addresses) -> edge -> client, all over our transport."""
    import ipaddress

    from fastproxy.packet import build_echo
    from fastproxy.tunnel.connector import Connector
    from fastproxy.tunnel.dial import dial
    from fastproxy.tunnel.edge import Edge, EdgeConfig
    from fastproxy.tunnel.quic import Trust

    counter = _Counter()
    edge = Edge(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",)), cert_file=cert.cert_file, key_file=cert.key_file)
    await edge.start("127.0.0.1", 0)

    class SwapHandler:
        def __init__(self, sink: Any) -> None:
            self.sink = sink

        def start(self) -> None:
            pass

        def handle_packets(self, packets: list[memoryview]) -> None:
            self.sink([_swap_addresses(bytes(packet)) for packet in packets])

        def client_gone(self, addresses: list[bytes]) -> None:
            pass

        def close(self) -> None:
            pass

    stub_factory = SwapHandler

    connector = Connector("127.0.0.1", edge.port, token="k", routes=[ipaddress.ip_network("10.0.0.0/8")],
                          trust=Trust(pin=cert.fingerprint),
                          icmp_handler_factory=stub_factory)
    try:
        await connector.start()
        await asyncio.wait_for(connector.connected.wait(), 5)

        def on_client_datagrams(conn: Any, datagrams: list[bytes]) -> None:
            counter.received += len(datagrams)

        client, welcome = await dial("127.0.0.1", edge.port, trust=Trust(pin=cert.fingerprint), role="client",
                                     token="c", on_datagrams=on_client_datagrams)
        packet = build_echo(welcome.client_v4.packed, bytes([10, 0, 0, 8]), 1, 1, bytes(size - 1 - 28))
        datagram = b"\x02" + packet
        try:
            return await _drive(lambda batch: client.send_datagrams([datagram] * len(batch)), counter, size)
        finally:
            client.close()
    finally:
        await connector.close()
        edge.close()


async def run_all() -> list[tuple[str, int, str, float]]:
    """Every (library, size, direction) figure, in one run."""
    from fastproxy.tunnel.certs import generate_self_signed

    cert = generate_self_signed(tempfile.mkdtemp(prefix="fastproxy-bench-"))
    rows = []
    for size in SIZES:
        for echo in (False, True):
            direction = "echoed" if echo else "one way"
            for lib in LIBRARIES:
                rows.append((f"{lib} (stock)", size, direction, await _measure_stock(lib, size, echo, cert)))
            rows.append(("fastproxy.tunnel.quic", size, direction, await _measure_ours(size, echo, cert)))
        rows.append(("tunnel: client-edge-connector-edge-client", size, "echoed", await _measure_tunnel(size, cert)))
    return rows


def format_table(rows: list[tuple[str, int, str, float]]) -> str:
    """A markdown table with each figure as ratios to stock aioquic and stock qh3 in the same run."""
    baselines = [
        {(size, direction): rate for name, size, direction, rate in rows if name == f"{lib} (stock)"}
        for lib in LIBRARIES
    ]
    header = "| transport | size | direction | datagrams/s | " + " | ".join(f"vs stock {lib}" for lib in LIBRARIES) + " |"
    lines = [header, "|---" * (4 + len(LIBRARIES)) + "|"]
    for name, size, direction, rate in rows:
        ratios = " | ".join(f"{rate / base[(size, direction)]:.2f}x" for base in baselines)
        lines.append(f"| {name} | {size} B | {direction} | {rate:,.0f} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rows = asyncio.run(run_all())
    print(format_table(rows))


def test_quic_transport_figures() -> None:
    """One round of the measurement under pytest; prints the table (no speed assertion)."""
    main()


if __name__ == "__main__":
    sys.exit(main())
