"""The connector's ICMP handler around IcmpProxy: batching per client, answers in one batch,
CLIENT_GONE frees flows (fake backend, no network)."""

from __future__ import annotations

import asyncio

from fastproxy.icmp import IcmpProxy
from fastproxy.packet import build_echo, parse_packet
from fastproxy.tunnel.connector_icmp import IcmpProxyHandler
from tests.icmp_fakes import FakeBackend, addr

A, B, TARGET = addr("100.96.0.2"), addr("100.96.0.3"), addr("10.0.0.8")


def _run(body):
    async def main() -> None:
        await body()

    asyncio.run(main())


def test_one_proxy_call_per_client_per_batch_and_answers_in_one_sink_call() -> None:
    async def body() -> None:
        backend = FakeBackend()
        proxy = IcmpProxy(["10.0.0.0/8"], backend)
        calls: list[tuple[int, int]] = []
        original = proxy.handle_client_packets

        def spy(conn_id, packets, now=None):
            packets = list(packets)
            calls.append((conn_id, len(packets)))
            return original(conn_id, packets, now)

        proxy.handle_client_packets = spy  # type: ignore[method-assign]
        sent: list[list[bytes]] = []
        handler = IcmpProxyHandler(sent.append, proxy)
        handler.start()
        try:
            packets = [build_echo(src, TARGET, 9, seq, b"x", ttl=ttl)
                       for seq, (src, ttl) in enumerate([(A, 64), (B, 64), (A, 64), (A, 1), (B, 1)])]
            handler.handle_packets([memoryview(p) for p in packets])
            assert sorted(n for _, n in calls) == [2, 3] and len({c for c, _ in calls}) == 2
            assert len(backend.sent) == 3 and len(proxy.flows()) == 2
            # The two TTL-1 packets are answered (Time Exceeded), one sink call per client group.
            answered = [parse_packet(p).dst for batch in sent for p in batch]
            assert sorted(answered) == sorted([A, B])
            # The same client keeps its id in the next batch (same flow, no new one).
            handler.handle_packets([memoryview(build_echo(A, TARGET, 9, 7, b"x"))])
            assert len(proxy.flows()) == 2 and calls[-1][0] in {c for c, _ in calls[:2]}
            handler.client_gone([A, addr("fd00:fa57::2")])
            assert [f.client_src for f in proxy.flows()] == [B]
            assert len(backend.closed) == 1
        finally:
            handler.close()

    _run(body)


def test_a_batch_is_split_by_version_and_source_even_when_the_source_fields_overlap() -> None:
    """An IPv6 packet whose bytes 12-16 equal the first (IPv4) packet's source, and a packet too
    short to have a source, do not ride along with the first packet's client."""

    async def body() -> None:
        backend = FakeBackend()
        proxy = IcmpProxy(["10.0.0.0/8", "fd00:10::/32"], backend)
        calls: list[tuple[int, int]] = []
        original = proxy.handle_client_packets

        def spy(conn_id, packets, now=None):
            packets = list(packets)
            calls.append((conn_id, len(packets)))
            return original(conn_id, packets, now)

        proxy.handle_client_packets = spy  # type: ignore[method-assign]
        handler = IcmpProxyHandler(lambda packets: None, proxy)
        handler.start()
        try:
            lookalike = addr("fd00:fa57:6460:2::3")  # bytes 4-8 are A's address
            v4 = build_echo(A, TARGET, 9, 1, b"x")
            v6 = build_echo(lookalike, addr("fd00:10::8"), 9, 2, b"x")
            assert v6[12:16] == A
            handler.handle_packets([memoryview(v4), memoryview(v6)])
            assert [n for _, n in calls] == [1, 1] and len({c for c, _ in calls}) == 2
            assert len(backend.sent) == 2
            calls.clear()
            handler.handle_packets([memoryview(v4), memoryview(v4[:14])])
            assert [n for _, n in calls] == [1, 1] and calls[1][0] == 0  # the short packet: no client
            calls.clear()
            handler.handle_packets([memoryview(v4), memoryview(v4)])  # one client: one call
            assert len(calls) == 1 and calls[0][1] == 2
        finally:
            handler.close()

    _run(body)
