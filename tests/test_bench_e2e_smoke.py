"""The load generators of bench/e2e (bench/c/icmp_flood.c, bench/c/udp_flood.c) count what
really happened (privileged): compiled as the benchmark compiles them, run between two
namespaces, their counts are checked against nftables counters on the other side, with a known
share of the packets dropped there (``numgen random mod 100 < 10 drop``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Link, Topology

pytestmark = pytest.mark.privileged

A, B = "192.0.2.1", "192.0.2.2"
PORT = 40000


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_root("builds namespaces; the ICMP generator uses a raw socket")
    from bench.e2e.generators import compile_generators  # bench/ sits beside tests/ in the repository

    return compile_generators(tmp_path_factory.mktemp("generators"))


@pytest.fixture
def pair() -> Iterator[Topology]:
    with Topology(links=[Link("a", "b", [f"{A}/24"], [f"{B}/24"])]) as topo:
        yield topo


def nft(topo: Topology, node: str, *rules: str) -> None:
    """A table ``bench`` in ``node`` with input and output chains holding ``rules`` ('input: ...')."""
    topo.run(node, "nft", "add", "table", "inet", "bench")
    for chain in ("input", "output"):
        topo.run(node, "nft", "add", "chain", "inet", "bench", chain,
                 f"{{ type filter hook {chain} priority 0; policy accept; }}")
    for rule in rules:
        chain, _, body = rule.partition(": ")
        topo.run(node, "nft", "add", "rule", "inet", "bench", chain, *body.split())


def counters(topo: Topology, node: str) -> list[int]:
    """The packet counts of the table's counters, in rule order."""
    listing = json.loads(topo.run(node, "nft", "-j", "list", "table", "inet", "bench").stdout)
    found = []
    for item in listing["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                found.append(expr["counter"]["packets"])
    return found


def rtts(path: Path) -> list[int]:
    from bench.e2e.generators import read_rtts

    return read_rtts(path)


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, float]:
    assert result.returncode == 0, result.stdout + result.stderr
    from bench.e2e.generators import parse_summary

    return parse_summary(result.stdout)


def test_icmp_flood_counts_every_reply(pair: Topology, generators: dict[str, Path], tmp_path: Path) -> None:
    nft(pair, "b", "output: icmp type echo-reply counter")
    out = tmp_path / "rtt.bin"
    s = summary(pair.run("a", str(generators["icmp_flood"]), "-w", "16", "-n", "3000", "-o", str(out), B))
    replies = counters(pair, "b")[0]
    assert s["sent"] == s["received"] == replies == 3000, s
    assert s["lost"] == s["late"] == s["duplicates"] == 0, s
    times = rtts(out)
    assert len(times) == 3000 and min(times) > 0, (len(times), min(times, default=0))


def test_icmp_flood_counts_dropped_replies_as_lost(pair: Topology, generators: dict[str, Path], tmp_path: Path) -> None:
    nft(pair, "b", "output: icmp type echo-reply numgen random mod 100 < 10 counter drop",
        "output: icmp type echo-reply counter")
    out = tmp_path / "rtt.bin"
    s = summary(pair.run("a", str(generators["icmp_flood"]), "-w", "32", "-n", "4000", "-T", "200", "-o", str(out), B))
    dropped, passed = counters(pair, "b")
    assert dropped + passed == s["sent"] == 4000, (dropped, passed, s)
    assert s["received"] == passed and s["lost"] == dropped, (dropped, passed, s)
    assert 0.06 < s["lost"] / s["sent"] < 0.14, s  # 10% with a binomial spread of 0.5%
    assert len(rtts(out)) == passed


def test_udp_flood_measures_a_known_drop_rate(pair: Topology, generators: dict[str, Path]) -> None:
    nft(pair, "b", f"input: udp dport {PORT} numgen random mod 100 < 10 counter drop")
    echo = pair.popen("b", str(generators["udp_flood"]), "echo", "-t", "30", str(PORT),
                      stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline() == "ready\n"
        s = summary(pair.run("a", str(generators["udp_flood"]), "send", "-r", "5000", "-s", "1200", "-t", "1",
                             "-D", "300", B, str(PORT)))
    finally:
        echo.terminate()
        server = json.loads(echo.communicate(timeout=5)[0].splitlines()[-1])
    (dropped,) = counters(pair, "b")
    assert s["offered"] == s["sent"] == 5000 and s["send_failed"] == 0, s
    assert server["received"] + dropped == 5000 and server["replied"] == server["received"], (server, dropped)
    assert s["echoed"] == server["replied"], (s, server)  # nothing lost on the way back
    assert s["loss"] == pytest.approx(dropped / 5000) and 0.07 < s["loss"] < 0.13, (s, dropped)


def test_udp_flood_without_drops_echoes_everything(pair: Topology, generators: dict[str, Path], tmp_path: Path) -> None:
    echo = pair.popen("b", str(generators["udp_flood"]), "echo", "-t", "30", str(PORT),
                      stdout=subprocess.PIPE, text=True)
    out = tmp_path / "rtt.bin"
    try:
        assert echo.stdout is not None and echo.stdout.readline() == "ready\n"
        s = summary(pair.run("a", str(generators["udp_flood"]), "send", "-r", "2000", "-s", "1200", "-t", "1",
                             "-o", str(out), B, str(PORT)))
    finally:
        echo.terminate()
        echo.communicate(timeout=5)
    assert s["echoed"] == s["offered"] == 2000 and s["loss"] == 0 and s["duplicates"] == 0, s
    times = rtts(out)
    assert len(times) == 2000 and 0 < min(times) and max(times) < 1_000_000_000, (min(times), max(times))
    # Paced, not bursty: 2000 datagrams over about one second.
    assert 0.95 < s["send_seconds"] < 1.1, s
