"""Living routes and SIGHUP reloads with the real commands, each in a namespace (root only).

user (``fastproxy client``, TUN fp0) --192.0.2.0/29-- edge --192.0.2.8/29-- conn1 -- target1
                                                        \\--192.0.2.16/29-- conn2 -- target2

conn1 serves 203.0.113.0/29 (target1 .2) and 2001:db8:1::/64 (target1 ::2); conn2 serves
203.0.113.8/29 (target2 .10) and 2001:db8:2::/64. Connectors come and go while the client
runs: its kernel routes must follow, and the system's ping must get through, without the
client ever reconnecting. Then the edge's and a connector's config files change and
SIGHUP applies them to the running processes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Link, Route, Topology
from .test_tunnel_netns import ENV, ROOT, Process
from .tunnel_support import certificate

pytestmark = pytest.mark.privileged

PORT = 4433
EDGE_FOR = {"user": "192.0.2.2", "conn1": "192.0.2.9", "conn2": "192.0.2.17"}
TARGET1 = {4: "203.0.113.2", 6: "2001:db8:1::2"}
TARGET2 = {4: "203.0.113.10", 6: "2001:db8:2::2"}
ROUTES1 = ("203.0.113.0/29", "2001:db8:1::/64")
ROUTES2 = ("203.0.113.8/29", "2001:db8:2::/64")


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_root("network namespaces and a TUN device")
    links = [
        Link("user", "edge", ["192.0.2.1/29"], ["192.0.2.2/29"]),
        Link("edge", "conn1", ["192.0.2.9/29"], ["192.0.2.10/29"]),
        Link("edge", "conn2", ["192.0.2.17/29"], ["192.0.2.18/29"]),
        Link("conn1", "target1", ["203.0.113.1/29", "2001:db8:1::1/64"], ["203.0.113.2/29", "2001:db8:1::2/64"]),
        Link("conn2", "target2", ["203.0.113.9/29", "2001:db8:2::1/64"], ["203.0.113.10/29", "2001:db8:2::2/64"]),
    ]
    routes = [
        Route("target1", "default", "203.0.113.1"), Route("target1", "default", "2001:db8:1::1"),
        Route("target2", "default", "203.0.113.9"), Route("target2", "default", "2001:db8:2::1"),
    ]
    with Topology(links=links, routes=routes) as topology:
        yield topology


class Processes:
    """The fastproxy processes of one test; all stopped at the end, even on failure."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.started: list[Process] = []
        self.pin = certificate().fingerprint

    def fastproxy(self, node: str, *args: str) -> Process:
        process = Process(self.topo, node, sys.executable, "-m", "fastproxy", *args)
        self.started.append(process)
        return process

    def edge(self, *args: str) -> Process:
        cert = certificate()
        edge = self.fastproxy("edge", "edge", "--cert", cert.cert_file, "--key", cert.key_file, *args)
        edge.wait_for("edge listening")
        return edge

    def connector(self, node: str, *args: str) -> Process:
        return self.fastproxy(node, "connector", "--edge", f"{EDGE_FOR[node]}:{PORT}", "--pin", self.pin,
                              "--backend", "raw", *args)

    def client(self, token: str) -> Process:
        client = self.fastproxy("user", "client", "--edge", f"{EDGE_FOR['user']}:{PORT}", "--token", token,
                                "--pin", self.pin, "--tun", "fp0")
        client.wait_for("tunnel up on fp0")
        return client

    def tool(self, *args: str, token: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``fastproxy ping``/``traceroute`` in the user namespace to completion."""
        return self.topo.run("user", sys.executable, "-m", "fastproxy", *args, "--edge", f"{EDGE_FOR['user']}:{PORT}",
                             "--token", token, "--pin", self.pin, check=False, env=ENV, cwd=ROOT, timeout=timeout)

    def close(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def processes(topo: Topology) -> Iterator[Processes]:
    running = Processes(topo)
    try:
        yield running
    finally:
        running.close()


def kernel_routes(topo: Topology) -> set[str]:
    """The prefixes routed into fp0 in the user namespace (v4 and v6)."""
    out = topo.run("user", "ip", "-4", "route", "show", "dev", "fp0", check=False).stdout
    out += topo.run("user", "ip", "-6", "route", "show", "dev", "fp0", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line and not line.startswith(("fe80", "fd00:fa57"))}


def wait_for_routes(topo: Topology, expected: set[str], timeout: float = 15.0) -> None:
    """Wait until exactly ``expected`` is routed into fp0."""
    deadline = time.monotonic() + timeout
    while (routes := kernel_routes(topo)) != expected:
        assert time.monotonic() < deadline, f"routes into fp0: {routes}, expected {expected}"
        time.sleep(0.1)


def system_ping(topo: Topology, target: str, count: int = 3) -> str:
    result = topo.run("user", "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", target, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} packets transmitted, {count} received, 0% packet loss" in result.stdout, result.stdout
    return result.stdout


def tunnel_address(topo: Topology) -> str:
    return topo.run("user", "ip", "-o", "addr", "show", "dev", "fp0").stdout


def log_of(process: Process) -> str:
    return "".join(process.lines)


def test_kernel_routes_follow_connectors_that_come_and_go(topo: Topology, processes: Processes) -> None:
    edge = processes.edge("--listen", f"0.0.0.0:{PORT}", "--client-token", "user-token-1",
                          "--connector-token", "connector-token-1")
    client = processes.client("user-token-1")
    assert kernel_routes(topo) == set()
    client.wait_for("no prefixes yet")
    address = tunnel_address(topo)
    # The built-in ping, started before any connector exists, waits for the route.
    early_ping = subprocess.Popen(
        ["ip", "netns", "exec", topo.ns("user"), sys.executable, "-m", "fastproxy", "ping", "-c", "3", "-i", "0.2",
         "--edge", f"{EDGE_FOR['user']}:{PORT}", "--token", "user-token-1", "--pin", processes.pin, TARGET1[4]],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)  # it is up (or starting) before the connector
        conn1 = processes.connector("conn1", "--token", "connector-token-1", "--route", ROUTES1[0],
                                    "--route", ROUTES1[1])
        out, _ = early_ping.communicate(timeout=40)
    finally:
        if early_ping.poll() is None:
            early_ping.kill()
            early_ping.wait()
    assert early_ping.returncode == 0, out
    assert "3 packets transmitted, 3 received, 0% packet loss" in out, out

    wait_for_routes(topo, set(ROUTES1))
    client.wait_for("routes added: 203.0.113.0/29, 2001:db8:1::/64")
    system_ping(topo, TARGET1[4])
    system_ping(topo, TARGET1[6])

    # A second connector with more prefixes: added, and reachable.
    processes.connector("conn2", "--token", "connector-token-1", "--route", ROUTES2[0], "--route", ROUTES2[1])
    wait_for_routes(topo, set(ROUTES1 + ROUTES2))
    system_ping(topo, TARGET2[4])
    system_ping(topo, TARGET2[6])

    # The first leaves: its prefixes are withdrawn, the second's stay and work.
    conn1.stop()
    wait_for_routes(topo, set(ROUTES2))
    client.wait_for("routes removed: 203.0.113.0/29, 2001:db8:1::/64")
    system_ping(topo, TARGET2[4])

    # It comes back (a restarted connector): its routes come back too.
    processes.connector("conn1", "--token", "connector-token-1", "--route", ROUTES1[0], "--route", ROUTES1[1])
    wait_for_routes(topo, set(ROUTES1 + ROUTES2))
    system_ping(topo, TARGET1[4])

    # All of it on the first connection: same tunnel address, no reconnect.
    assert tunnel_address(topo) == address
    assert "; reconnecting" not in log_of(client), log_of(client)
    assert "client 1 " in log_of(edge) and "client 3 " not in log_of(edge)  # 1: the TUN client, 2: the ping


def test_the_builtin_ping_gives_up_clearly_when_no_route_comes(topo: Topology, processes: Processes) -> None:
    processes.edge("--listen", f"0.0.0.0:{PORT}", "--client-token", "user-token-1",
                   "--connector-token", "connector-token-1")
    started = time.monotonic()
    result = processes.tool("ping", "-c", "1", TARGET1[4], token="user-token-1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"no route to {TARGET1[4]} through the tunnel" in result.stderr, result.stdout + result.stderr
    assert "the edge allows this client nothing" in result.stderr
    assert time.monotonic() - started < 25  # bounded: a few seconds of waiting, not forever


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def test_sighup_reloads_edge_and_connector_without_dropping_connections(topo: Topology, processes: Processes,
                                                                        tmp_path: Path) -> None:
    edge_toml, connector_toml = tmp_path / "edge.toml", tmp_path / "connector.toml"
    cert = certificate()
    edge_table = (f'[edge]\nlisten = "0.0.0.0:{PORT}"\ncert = "{cert.cert_file}"\nkey = "{cert.key_file}"\n'
                  # The flag --connector-token overrides this, at start and at every reload.
                  'connector_token = ["not-the-connector-token"]\n')
    _write(edge_toml, edge_table + 'client_token = ["user-token-1", "user-token-2"]\n')
    connector_table = (f'[connector]\nedge = "{EDGE_FOR["conn1"]}:{PORT}"\ntoken = "connector-token-1"\n'
                       f'pin = "{processes.pin}"\nbackend = "raw"\n')
    _write(connector_toml, connector_table + f'route = ["{ROUTES1[0]}"]\n')

    cert_args = ("--cert", cert.cert_file, "--key", cert.key_file)
    edge = processes.fastproxy("edge", "edge", "--config", str(edge_toml), "--connector-token", "connector-token-1",
                               *cert_args)
    edge.wait_for("edge listening")
    conn1 = processes.fastproxy("conn1", "connector", "--config", str(connector_toml))
    edge.wait_for("serves 203.0.113.0/29")
    client = processes.client("user-token-1")
    wait_for_routes(topo, {ROUTES1[0]})
    address = tunnel_address(topo)
    second = processes.fastproxy("user", "ping", "-i", "0.5", "--edge", f"{EDGE_FOR['user']}:{PORT}",
                                 "--token", "user-token-2", "--pin", processes.pin, TARGET1[4])
    edge.wait_for("admitted", count=2)  # the TUN client, then this one

    # The system's ping runs across both reloads.
    steady = subprocess.Popen(["ip", "netns", "exec", topo.ns("user"), "ping", "-n", "-c", "30", "-i", "0.2",
                               "-W", "2", TARGET1[4]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        _write(edge_toml, edge_table + 'client_token = ["user-token-1", "user-token-3"]\nverbose = true\n')
        edge.process.send_signal(signal.SIGHUP)
        edge.wait_for("SIGHUP: configuration reloaded")
        _write(connector_toml, connector_table + f'route = ["{ROUTES1[0]}", "{ROUTES1[1]}"]\n')
        conn1.process.send_signal(signal.SIGHUP)
        conn1.wait_for("SIGHUP: configuration reloaded")
        out, _ = steady.communicate(timeout=30)
    finally:
        if steady.poll() is None:
            steady.kill()
            steady.wait()
    assert "30 packets transmitted, 30 received, 0% packet loss" in out, out

    reload_line = next(line for line in edge.lines if "SIGHUP: configuration reloaded" in line)
    assert "client tokens: 1 added, 1 removed" in reload_line and "log level debug" in reload_line, reload_line
    assert "user-token" not in reload_line  # tokens are secrets
    # The removed token's connection was closed with the reason; it cannot come back.
    edge.wait_for("no longer accepts this client's token (configuration reloaded)")
    second.wait_for("closed (the edge no longer accepts this client's token (configuration reloaded)); reconnecting")
    second.wait_for("bad token")
    refused = processes.tool("ping", "-c", "1", TARGET1[4], token="user-token-2")
    assert refused.returncode == 2 and "bad token" in refused.stderr + refused.stdout, refused.stdout + refused.stderr
    # The new token is admitted.
    admitted = processes.tool("ping", "-c", "2", "-i", "0.2", TARGET1[4], token="user-token-3")
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr

    # The connector's new route reached the client's kernel, on the same connections.
    conn1.wait_for("routes 203.0.113.0/29, 2001:db8:1::/64 (added 2001:db8:1::/64)")
    wait_for_routes(topo, set(ROUTES1))
    system_ping(topo, TARGET1[6])
    assert tunnel_address(topo) == address
    for process in (client, conn1):
        assert "; reconnecting" not in log_of(process), log_of(process)
    assert "closing connector" not in log_of(edge)  # the flag's connector token still holds

    # A config that does not load: logged, and the running one stays.
    _write(edge_toml, "[edge\n")
    edge.process.send_signal(signal.SIGHUP)
    edge.wait_for("SIGHUP: configuration not reloaded, the running one stays")
    assert re.search(r"edge\.toml: not valid TOML", log_of(edge)), log_of(edge)
    system_ping(topo, TARGET1[4])

    # The TUN client takes SIGHUP without dying.
    client.process.send_signal(signal.SIGHUP)
    client.wait_for("SIGHUP: fastproxy client keeps running")
    system_ping(topo, TARGET1[4])
    assert client.process.poll() is None
