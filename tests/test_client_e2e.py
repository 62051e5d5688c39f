"""``fastproxy client`` end to end (privileged): user host (client with a TUN device) —
edge — connector — router — target, each in a namespace this test builds. The
system's own ping, traceroute -I, mtr and dig (against tests/dns_responder.py on the
target) run unmodified in the user's namespace; stopping the client removes its device and routes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Link, Route, Topology

pytestmark = pytest.mark.privileged

SRC = str(Path(__file__).resolve().parent.parent / "src")
TARGET4, TARGET6 = "203.0.113.130", "2001:db8:4::2"
ROUTER4, ROUTER6 = "203.0.113.2", "2001:db8:3::2"
CONNECTOR4, CONNECTOR6 = "203.0.113.1", "2001:db8:3::1"

DNS_RESPONDER = str(Path(__file__).resolve().parent / "dns_responder.py")


Network = tuple[Topology, subprocess.Popen[bytes], str, str]
"""The topology, the running client, a directory with the logs, the edge's pin."""


def fastproxy(topo: Topology, node: str, *args: str, log: str) -> subprocess.Popen[bytes]:
    return topo.popen(node, sys.executable, "-m", "fastproxy", *args, stdout=open(log, "wb"),  # noqa: SIM115
                      stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": SRC})


def wait_until(check, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    require_root("builds namespaces, runs a TUN client")
    from fastproxy.tunnel.certs import generate_self_signed

    workdir = tempfile.mkdtemp(prefix="fastproxy-client-e2e-")
    cert = generate_self_signed(workdir)
    topo = Topology(
        links=[
            Link("user", "edge", ["192.0.2.1/24", "2001:db8:1::1/64"], ["192.0.2.2/24", "2001:db8:1::2/64"]),
            Link("edge", "conn", ["198.51.100.1/24", "2001:db8:2::1/64"], ["198.51.100.2/24", "2001:db8:2::2/64"]),
            Link("conn", "router", [f"{CONNECTOR4}/25", f"{CONNECTOR6}/64"], [f"{ROUTER4}/25", f"{ROUTER6}/64"]),
            Link("router", "target", ["203.0.113.129/25", "2001:db8:4::1/64"], [f"{TARGET4}/25", f"{TARGET6}/64"]),
        ],
        routes=[
            Route("conn", "203.0.113.128/25", ROUTER4), Route("conn", "2001:db8:4::/64", ROUTER6),
            Route("target", "default", "203.0.113.129"), Route("target", "default", "2001:db8:4::1"),
            Route("router", "default", CONNECTOR4), Route("router", "default", CONNECTOR6),
        ],
        routers=["router"],
    )
    processes: list[subprocess.Popen[bytes]] = []
    with topo:
        try:
            responder = topo.popen("target", sys.executable, DNS_RESPONDER, "53", stdout=subprocess.PIPE)
            processes.append(responder)
            assert responder.stdout is not None and responder.stdout.readline() == b"ready\n"
            processes.append(fastproxy(
                topo, "edge", "edge", "--listen", "[::]:4433", "--cert", cert.cert_file, "--key", cert.key_file,
                "--client-token", "client-1", "--connector-token", "connector-1", log=f"{workdir}/edge.log"))
            processes.append(fastproxy(
                topo, "conn", "connector", "--edge", "198.51.100.1:4433", "--token", "connector-1",
                "--route", "203.0.113.128/25", "--route", "2001:db8:4::/64", "--pin", cert.fingerprint,
                log=f"{workdir}/connector.log"))
            # The edge tells a client the prefixes announced when it connects.
            assert wait_until(lambda: "connected to the edge" in Path(f"{workdir}/connector.log").read_text()), \
                Path(f"{workdir}/connector.log").read_text()
            client = fastproxy(topo, "user", "client", "--edge", "192.0.2.2:4433", "--token", "client-1",
                               "--pin", cert.fingerprint, "--tun", "fp0", "--metrics", "127.0.0.1:9464", log=f"{workdir}/client.log")
            processes.append(client)
            up = wait_until(lambda: "203.0.113.128/25" in topo.run("user", "ip", "route", check=False).stdout)
            assert up, Path(f"{workdir}/client.log").read_text()
            yield topo, client, workdir, cert.fingerprint
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


@pytest.mark.parametrize("target", [TARGET4, TARGET6])
def test_system_ping(network: Network, target: str) -> None:
    topo, *_ = network
    result = topo.run("user", "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", target, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 packets transmitted, 5 received, 0% packet loss" in result.stdout


@pytest.mark.parametrize(("target", "hops"), [
    (TARGET4, ["100.96.0.1", CONNECTOR4, ROUTER4, TARGET4]),
    (TARGET6, ["fd00:fa57::1", CONNECTOR6, ROUTER6, TARGET6]),
])
def test_system_traceroute_shows_every_hop(network: Network, target: str,
                                           hops: list[str]) -> None:
    topo, *_ = network
    result = topo.run("user", "traceroute", "-I", "-n", "-q", "1", "-w", "2", "-m", "8", target, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = [line.split()[1] for line in result.stdout.splitlines()[1:]]
    assert seen == hops, result.stdout


def test_system_mtr_report(network: Network) -> None:
    topo, *_ = network
    result = topo.run("user", "mtr", "--report", "-n", "-c", "3", TARGET4, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if ".|--" in line]
    assert [row[1] for row in rows] == ["100.96.0.1", CONNECTOR4, ROUTER4, TARGET4], result.stdout
    assert rows[-1][2] == "0.0%"


def dig(topo: Topology, target: str, name: str, qtype: str) -> tuple[str, list[list[str]]]:
    """Run the system's dig in the user's namespace: its output and its answer section's records."""
    result = topo.run("user", "dig", "+time=2", "+tries=2", f"@{target}", "-p", "53", name, qtype, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # dig names the server that answered: the target, reached over UDP through fp0.
    assert f"SERVER: {target}#53({target}) (UDP)" in result.stdout, result.stdout
    lines = result.stdout.splitlines()
    records: list[list[str]] = []
    if ";; ANSWER SECTION:" in lines:  # the section runs to the next blank line
        for line in lines[lines.index(";; ANSWER SECTION:") + 1:]:
            if not line.strip():
                break
            records.append(line.split())
    return result.stdout, records


@pytest.mark.parametrize("target", [TARGET4, TARGET6])
@pytest.mark.parametrize(("qtype", "address"), [("A", "192.0.2.53"), ("AAAA", "2001:db8::53")])
def test_dig_gets_its_answer_through_the_tunnel(network: Network, target: str, qtype: str, address: str) -> None:
    """The system's dig, unmodified, asks the DNS responder on the target (tests/dns_responder.py)."""
    topo, *_ = network
    output, records = dig(topo, target, "hello.fastproxy.test", qtype)
    assert "status: NOERROR" in output, output
    assert records == [["hello.fastproxy.test.", "300", "IN", qtype, address]], output


def test_dig_gets_nxdomain_through_the_tunnel(network: Network) -> None:
    topo, *_ = network
    output, records = dig(topo, TARGET6, "nothere.fastproxy.test", "A")
    assert "status: NXDOMAIN" in output, output
    assert records == [], output


SCRAPE = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=5).read().decode())"


def test_client_metrics_after_traffic(network: Network) -> None:
    topo, *_ = network
    topo.run("user", "ping", "-n", "-c", "2", "-i", "0.2", TARGET4)
    result = topo.run("user", sys.executable, "-c", SCRAPE)
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in result.stdout.splitlines() if line.startswith("fastproxy_")}
    assert values['fastproxy_connections_active{role="client"}'] == 1
    assert values['fastproxy_datagrams_total{direction="in"}'] >= 2
    assert values['fastproxy_datagrams_total{direction="out"}'] >= 2


def test_builtin_tools_without_tun(network: Network) -> None:
    topo, _, _, pin = network
    common = ["--edge", "192.0.2.2:4433", "--token", "client-1", "--pin", pin]
    env = {**os.environ, "PYTHONPATH": SRC}
    ping = topo.run("user", sys.executable, "-m", "fastproxy", "ping", *common, "-c", "3", "-i", "0.2", TARGET4,
                    check=False, env=env)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "3 packets transmitted, 3 received, 0% packet loss" in ping.stdout
    trace = topo.run("user", sys.executable, "-m", "fastproxy", "traceroute", *common, "-w", "2", TARGET6,
                     check=False, env=env)
    assert trace.returncode == 0, trace.stdout + trace.stderr
    assert [line.split()[1] for line in trace.stdout.splitlines()[1:]] == [
        "fd00:fa57::1", CONNECTOR6, ROUTER6, TARGET6]


def test_stop_removes_device_and_routes(network: Network) -> None:
    """Runs last in this module: SIGTERM the client; its device and routes are gone."""
    topo, client, workdir, _ = network
    assert "fp0" in topo.run("user", "ip", "link").stdout
    client.send_signal(signal.SIGTERM)
    assert client.wait(10) == 0, Path(f"{workdir}/client.log").read_text()
    assert "fp0" not in topo.run("user", "ip", "link").stdout
    routes = topo.run("user", "ip", "route").stdout + topo.run("user", "ip", "-6", "route").stdout
    assert "203.0.113.128" not in routes and "2001:db8:4::" not in routes
    assert "removed fp0 and its routes" in Path(f"{workdir}/client.log").read_text()
