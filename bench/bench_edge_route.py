"""Benchmark of the edge's per-datagram routing: EdgeRouter.route on a batch of 64 ICMP echo
requests (IPv4, 84 bytes: 20 + 8 + 56) from a client, and on their 64 replies from the
connector, with the batched fast path (EdgeIcmpRoutes, compiled core) and without it (the
Python path alone, ``icmp_fast_path=False``), in the same run. One connector for the
destinations' prefix, or two (rendezvous hashing picks one per flow). ns/datagram = time / 64.

Run:
    PYTHONPATH=src:. .venv/bin/python -m pytest bench/bench_edge_route.py --benchmark-only
    PYTHONPATH=src:. .venv/bin/python bench/bench_edge_route.py    (the ratio, as in bench/RESULTS.md)
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from fastproxy.datagram import encode_icmp
from fastproxy.packet import build_echo
from fastproxy.tunnel.control import Announce, Hello, Welcome
from fastproxy.tunnel.router import EdgeConfig, EdgeRouter

BATCH = 64
CLIENT, CONNECTORS = 1, (2, 3)
PREFIX = ipaddress.ip_network("203.0.113.128/25")


def setup(fast: bool, connectors: int) -> tuple[EdgeRouter, list[bytes], list[bytes]]:
    """A router with one client and ``connectors`` connectors for PREFIX; a batch of echo
    requests from the client to 64 targets and the batch of their replies."""
    router = EdgeRouter(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",)), icmp_fast_path=fast)
    welcome = router.authenticate(CLIENT, Hello("client", "c"))
    assert isinstance(welcome, Welcome) and welcome.client_v4 is not None
    for conn_id in CONNECTORS[:connectors]:
        router.authenticate(conn_id, Hello("connector", "k"))
        router.announce(conn_id, Announce((PREFIX,)))
    me = welcome.client_v4.packed
    targets = [(PREFIX.network_address + 2 + i % 120).packed for i in range(BATCH)]
    requests = [encode_icmp(build_echo(me, t, 0x77, i, bytes(56))) for i, t in enumerate(targets)]
    replies = [encode_icmp(build_echo(t, me, 0x77, i, bytes(56), reply=True)) for i, t in enumerate(targets)]
    return router, requests, replies


PATHS = {"fast path": True, "Python path": False}


@pytest.mark.parametrize("connectors", [1, 2])
@pytest.mark.parametrize("path", list(PATHS))
def test_route_from_client(benchmark, path: str, connectors: int) -> None:
    router, requests, _ = setup(PATHS[path], connectors)
    benchmark.group = f"EdgeRouter.route, client -> connector, {BATCH} x ICMP echo, {connectors} connector(s)"
    out = benchmark(router.route, CLIENT, requests, 1.0)
    assert sum(len(v) for v in out.values()) == BATCH


@pytest.mark.parametrize("path", list(PATHS))
def test_route_from_connector(benchmark, path: str) -> None:
    router, _, replies = setup(PATHS[path], 1)
    benchmark.group = f"EdgeRouter.route, connector -> client, {BATCH} x ICMP echo reply"
    out = benchmark(router.route, CONNECTORS[0], replies, 1.0)
    assert len(out[CLIENT]) == BATCH


def per_datagram_ns(fast: bool, connectors: int, direction: str, rounds: int = 3000) -> float:
    """Best of 5: ns per datagram of EdgeRouter.route over ``rounds`` batches."""
    router, requests, replies = setup(fast, connectors)
    conn_id, batch = (CLIENT, requests) if direction == "client" else (CONNECTORS[0], replies)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            router.route(conn_id, batch, 1.0)
        best = min(best, (time.perf_counter_ns() - start) / rounds / BATCH)
    return best


def main() -> None:
    from fastproxy._impl import COMPILED

    print(f"compiled core: {COMPILED}; ns per datagram of EdgeRouter.route, batches of {BATCH}, best of 5")
    for direction, connectors in (("client", 1), ("client", 2), ("connector", 1)):
        python, fast = per_datagram_ns(False, connectors, direction), per_datagram_ns(True, connectors, direction)
        print(f"from {direction:9} ({connectors} connector{'s' if connectors > 1 else ''}): Python path "
              f"{python:7.0f} ns, fast path {fast:5.0f} ns: {python / fast:5.1f}x")


if __name__ == "__main__":
    main()
