"""traceroute and mtr through the TUN client across several routers, on both ICMP backends (privileged).

user (client with a TUN device) — edge — connector — r1 — r2 — r3 — target, each in a
namespace this test builds; the real ``fastproxy edge``, ``connector --backend ping|raw``
and ``client`` processes, and the system's own ``traceroute -I``, ``mtr`` and ``ping``
with their default behaviour. traceroute sends many probes at once on one echo id with
rising TTLs: on a ping socket a router's Time Exceeded for one probe must not make the
send of the next one fail (issue 9, item 1); every hop must show the router's own answer.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Link, Route, Topology
from .test_client_e2e import fastproxy, wait_until

pytestmark = pytest.mark.privileged

TARGET = {4: "203.0.113.130", 6: "2001:db8:4::2"}
# What each hop answers from, as the client must see it: the edge's tunnel address, the
# connector, then each router's address on its link towards the connector, then the target.
HOPS = {
    4: ["100.96.0.1", "203.0.113.1", "203.0.113.2", "203.0.113.10", "203.0.113.18", TARGET[4]],
    6: ["fd00:fa57::1", "2001:db8:3::1", "2001:db8:3::2", "2001:db8:5::2", "2001:db8:6::2", TARGET[6]],
}

Network = tuple[Topology, str, str]
"""The topology, a directory with the logs, the connector's backend."""


def topology() -> Topology:
    links = [
        Link("user", "edge", ["192.0.2.1/24", "2001:db8:1::1/64"], ["192.0.2.2/24", "2001:db8:1::2/64"]),
        Link("edge", "conn", ["198.51.100.1/24", "2001:db8:2::1/64"], ["198.51.100.2/24", "2001:db8:2::2/64"]),
        Link("conn", "r1", ["203.0.113.1/29", "2001:db8:3::1/64"], ["203.0.113.2/29", "2001:db8:3::2/64"]),
        Link("r1", "r2", ["203.0.113.9/29", "2001:db8:5::1/64"], ["203.0.113.10/29", "2001:db8:5::2/64"]),
        Link("r2", "r3", ["203.0.113.17/29", "2001:db8:6::1/64"], ["203.0.113.18/29", "2001:db8:6::2/64"]),
        Link("r3", "target", ["203.0.113.129/25", "2001:db8:4::1/64"], [f"{TARGET[4]}/25", f"{TARGET[6]}/64"]),
    ]
    routes = [
        Route("conn", "203.0.113.128/25", "203.0.113.2"), Route("conn", "2001:db8:4::/64", "2001:db8:3::2"),
        Route("r1", "203.0.113.128/25", "203.0.113.10"), Route("r1", "2001:db8:4::/64", "2001:db8:5::2"),
        Route("r1", "default", "203.0.113.1"), Route("r1", "default", "2001:db8:3::1"),
        Route("r2", "203.0.113.128/25", "203.0.113.18"), Route("r2", "2001:db8:4::/64", "2001:db8:6::2"),
        Route("r2", "default", "203.0.113.9"), Route("r2", "default", "2001:db8:5::1"),
        Route("r3", "default", "203.0.113.17"), Route("r3", "default", "2001:db8:6::1"),
        Route("target", "default", "203.0.113.129"), Route("target", "default", "2001:db8:4::1"),
    ]
    # Ping sockets for the connector's "ping" backend (every group: it runs as root here).
    sysctls = {"conn": {"net.ipv4.ping_group_range": "0 2147483647"}}
    return Topology(links=links, routes=routes, routers=["r1", "r2", "r3"], sysctls=sysctls)


@pytest.fixture(scope="module", params=["ping", "raw"])
def network(request: pytest.FixtureRequest) -> Iterator[Network]:
    require_root("builds namespaces, runs a TUN client")
    from fastproxy.tunnel.certs import generate_self_signed

    backend = request.param
    workdir = tempfile.mkdtemp(prefix=f"fastproxy-routers-{backend}-")
    cert = generate_self_signed(workdir)
    processes: list[subprocess.Popen[bytes]] = []
    with topology() as topo:
        try:
            processes.append(fastproxy(
                topo, "edge", "edge", "--listen", "[::]:4433", "--cert", cert.cert_file, "--key", cert.key_file,
                "--client-token", "client-1", "--connector-token", "connector-1", log=f"{workdir}/edge.log"))
            processes.append(fastproxy(
                topo, "conn", "connector", "--edge", "198.51.100.1:4433", "--token", "connector-1",
                "--route", "203.0.113.128/25", "--route", "2001:db8:4::/64", "--pin", cert.fingerprint,
                "--backend", backend, log=f"{workdir}/connector.log"))
            assert wait_until(lambda: "connected to the edge" in Path(f"{workdir}/connector.log").read_text()), \
                Path(f"{workdir}/connector.log").read_text()
            processes.append(fastproxy(
                topo, "user", "client", "--edge", "192.0.2.2:4433", "--token", "client-1", "--pin", cert.fingerprint,
                "--tun", "fp0", log=f"{workdir}/client.log"))
            up = wait_until(lambda: "2001:db8:4::/64" in topo.run("user", "ip", "-6", "route", check=False).stdout
                            and "203.0.113.128/25" in topo.run("user", "ip", "route", check=False).stdout)
            assert up, Path(f"{workdir}/client.log").read_text()
            yield topo, workdir, backend
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


def connector_log(network: Network, since: int = 0) -> str:
    """The connector's log from character ``since`` on."""
    return Path(f"{network[1]}/connector.log").read_text()[since:]


def traceroute_hops(output: str) -> list[list[str]]:
    """What each hop line of ``traceroute -n`` shows without its timings: the answering address
    (printed again only when it changes from one probe to the next), ``*``, ``!H``..."""
    return [re.sub(r"\s[\d.]+ ms", "", line).split()[1:] for line in output.splitlines()[1:]]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("options", [(), ("-q", "1"), ("-N", "32")], ids=["default", "q1", "N32"])
def test_system_traceroute_shows_every_router(network: Network, version: int, options: tuple[str, ...]) -> None:
    """The system's traceroute -I with its defaults (3 probes per hop, 16 in flight), -q 1 and -N 32:
    every hop answers with its own address, each probe's answer is its own (no !H, no *).

    Only the wait is not the default: traceroute gives up on a probe after 5 s, or 3 times the time
    a probe to the same hop took, or 10 times one to a later hop ("-w 5,3,10"). On a loaded machine
    the edge answers hop 1's first probe in 0.4 ms and the next in 3 ms, which that rule prints as
    ``*``; "-w 5,0,0" waits 5 s for every probe, so each ``*`` here is a probe that got no answer."""
    topo, _workdir, _backend = network
    start = len(connector_log(network))
    result = topo.run("user", "traceroute", f"-{version}", "-I", "-n", "-w", "5,0,0", *options, TARGET[version],
                      check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert traceroute_hops(result.stdout) == [[hop] for hop in HOPS[version]], \
        result.stdout + connector_log(network, start)
    assert "sending an echo request failed" not in connector_log(network, start)


@pytest.mark.parametrize("version", [4, 6])
def test_system_mtr_report_shows_every_router(network: Network, version: int) -> None:
    topo, _workdir, _backend = network
    start = len(connector_log(network))
    result = topo.run("user", "mtr", f"-{version}", "--report", "-n", "-c", "3", TARGET[version],
                      check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if ".|--" in line]
    assert [row[1] for row in rows] == HOPS[version], result.stdout + connector_log(network, start)
    assert all(row[2] == "0.0%" for row in rows), result.stdout  # every probe of every hop answered
    assert "sending an echo request failed" not in connector_log(network, start)


@pytest.mark.parametrize("version", [4, 6])
def test_parallel_pings_at_several_ttls(network: Network, version: int) -> None:
    """One system ping per TTL, all at once: each sees Time Exceeded from its own hop, the last the target."""
    topo, _workdir, _backend = network
    start = len(connector_log(network))
    ttls = range(3, 8)

    def ping(ttl: int) -> subprocess.CompletedProcess[str]:
        return topo.run("user", "ping", f"-{version}", "-n", "-c", "4", "-i", "0.2", "-W", "2", "-t", str(ttl),
                        TARGET[version], check=False)

    with ThreadPoolExecutor(len(ttls)) as pool:
        results = dict(zip(ttls, pool.map(ping, ttls), strict=True))
    for ttl, result in results.items():
        hop = HOPS[version][ttl - 1] if ttl <= len(HOPS[version]) else TARGET[version]
        if hop == TARGET[version]:
            assert result.returncode == 0, result.stdout + result.stderr
            assert "4 packets transmitted, 4 received" in result.stdout, result.stdout
        else:
            # Each probe's own answer, from its hop: "From HOP icmp_seq=N Time to live exceeded"
            # (v6: "Time exceeded: Hop limit").
            answered = re.findall(r"^From (\S+) icmp_seq=(\d+) Time (?:to live|exceeded)", result.stdout, re.M)
            assert sorted(answered) == [(hop, str(seq)) for seq in range(1, 5)], f"ttl {ttl}: {result.stdout}"
    assert "sending an echo request failed" not in connector_log(network, start)
