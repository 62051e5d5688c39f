"""The whole tunnel between network namespaces, as real processes over real QUIC.

client --(192.0.2.0/29)-- edge --(192.0.2.8/29)-- connector --(203.0.113.0/29, 2001:db8:1::/64)-- r1
                              \\-(192.0.2.16/29)-- connector2 -(203.0.113.8/29, 2001:db8:2::/64)--/
r1 --(203.0.113.16/29, 2001:db8:3::/64)-- target

``fastproxy edge`` runs in the edge namespace, ``fastproxy connector`` (raw-socket ICMP
backend) in the connector namespaces, a fastproxy.Client (tests/tunnel_client_worker.py)
in the client namespace, a UDP echo server on the target. Client tunnel addresses come
from 198.51.100.128/25 and 2001:db8:ff::/64; the edge's own is the first of each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from .conftest import require_root
from .netns import Link, Route, Topology
from .tunnel_support import certificate

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PYTHONUNBUFFERED": "1"}
PORT = 4433
CLIENT_TOKEN, CONNECTOR_TOKEN = "netns-client", "netns-connector"
EDGE_TUNNEL = {4: "198.51.100.129", 6: "2001:db8:ff::1"}
CONNECTOR = {4: "203.0.113.1", 6: "2001:db8:1::1"}
CONNECTOR2 = {4: "203.0.113.9", 6: "2001:db8:2::1"}
R1 = {4: "203.0.113.2", 6: "2001:db8:1::2"}
TARGET = {4: "203.0.113.18", 6: "2001:db8:3::2"}
EDGE_FOR = {"client": "192.0.2.2", "connector": "192.0.2.9", "connector2": "192.0.2.17"}
UDP_ECHO = """
import select, socket
socks = []
for family, host in ((socket.AF_INET, "203.0.113.18"), (socket.AF_INET6, "2001:db8:3::2")):
    s = socket.socket(family, socket.SOCK_DGRAM); s.bind((host, 7007)); socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048); s.sendto(b"echo:" + data, peer)
"""


class Process:
    """A process in a namespace whose stderr is collected by a thread (for waiting on log lines)."""

    def __init__(self, topo: Topology, node: str, *command: str, stdin: bool = False) -> None:
        self.lines: list[str] = []
        self.process = topo.popen(node, *command, env=ENV, cwd=ROOT, text=True, stderr=subprocess.PIPE,
                                  stdin=subprocess.PIPE if stdin else None,
                                  stdout=subprocess.PIPE if stdin else subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            assert self.process.poll() is None, f"exited {self.process.returncode}: {''.join(self.lines)}"
            assert time.monotonic() < deadline, f"no {text!r} in: {''.join(self.lines)}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


P = TypeVar("P", bound=Process)

class ClientWorker(Process):
    def ask(self, **request: object) -> dict:
        import json

        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"client worker died: {''.join(self.lines)}"
        return json.loads(line)

    def ping(self, dst: str, ttl: int = 64, wait: float = 2.0) -> dict:
        return self.ask(op="ping", dst=dst, ttl=ttl, wait=wait)

    def ping_until_answered(self, dst: str, ttl: int = 64, within: float = 10.0) -> tuple[dict, float]:
        """Ping every ~0.3 s until an answer comes; returns it and how long that took."""
        start = time.monotonic()
        while True:
            answer = self.ping(dst, ttl, wait=0.3)
            if "src" in answer:
                return answer, time.monotonic() - start
            assert time.monotonic() - start < within, f"no answer from {dst} within {within} s"


class Tunnel:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        cert = certificate()
        self.pin = cert.fingerprint
        self.announced = 0
        self.connectors: dict[str, Process] = {}
        self.started: list[Process] = []  # stopped by close(), also when setting up fails half-way
        try:
            self.edge = self._started(Process(
                topo, "edge", sys.executable, "-m", "fastproxy", "edge", "--listen", f"0.0.0.0:{PORT}",
                "--cert", cert.cert_file, "--key", cert.key_file, "--client-token", CLIENT_TOKEN,
                "--connector-token", CONNECTOR_TOKEN, "--client-pool", "198.51.100.128/25",
                "--client-pool", "2001:db8:ff::/64",
            ))
            self.edge.wait_for("edge listening")
            self.start_connector("connector")
            self.echo = self._started(Process(topo, "target", sys.executable, "-c", UDP_ECHO))
            self.client = self._started(ClientWorker(
                topo, "client", sys.executable, "-m", "tests.tunnel_client_worker", "--edge",
                f"{EDGE_FOR['client']}:{PORT}", "--token", CLIENT_TOKEN, "--pin", self.pin, stdin=True,
            ))
        except BaseException:
            self.close()
            raise

    def _started(self, process: P) -> P:
        self.started.append(process)
        return process

    def start_connector(self, node: str) -> None:
        self.connectors[node] = self._started(Process(
            self.topo, node, sys.executable, "-m", "fastproxy", "connector", "--edge", f"{EDGE_FOR[node]}:{PORT}",
            "--token", CONNECTOR_TOKEN, "--pin", self.pin, "--route", "203.0.113.16/29",
            "--route", "2001:db8:3::/64", "--backend", "raw",
        ))
        self.announced += 1
        self.edge.wait_for("serves 203.0.113.16/29", count=self.announced)

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None and client.process.poll() is None:
            try:
                client.ask(op="quit")
            except (AssertionError, OSError):
                pass
        for process in reversed(self.started):
            process.stop(signal.SIGKILL if process is getattr(self, "echo", None) else signal.SIGTERM)


@pytest.fixture(scope="module")
def tunnel() -> Iterator[Tunnel]:
    require_root("network namespaces")
    links = [
        Link("client", "edge", ["192.0.2.1/29"], ["192.0.2.2/29"]),
        Link("edge", "connector", ["192.0.2.9/29"], ["192.0.2.10/29"]),
        Link("edge", "connector2", ["192.0.2.17/29"], ["192.0.2.18/29"]),
        Link("connector", "r1", ["203.0.113.1/29", "2001:db8:1::1/64"], ["203.0.113.2/29", "2001:db8:1::2/64"]),
        Link("connector2", "r1", ["203.0.113.9/29", "2001:db8:2::1/64"], ["203.0.113.10/29", "2001:db8:2::2/64"]),
        Link("r1", "target", ["203.0.113.17/29", "2001:db8:3::1/64"], ["203.0.113.18/29", "2001:db8:3::2/64"]),
    ]
    routes = [
        Route("connector", "203.0.113.16/29", "203.0.113.2"), Route("connector", "2001:db8:3::/64", "2001:db8:1::2"),
        Route("connector2", "203.0.113.16/29", "203.0.113.10"),
        Route("connector2", "2001:db8:3::/64", "2001:db8:2::2"),
        Route("target", "default", "203.0.113.17"), Route("target", "default", "2001:db8:3::1"),
    ]
    with Topology(links=links, routes=routes, routers=["r1"]) as topo:
        tunnel = Tunnel(topo)
        try:
            yield tunnel
        finally:
            tunnel.close()


@pytest.mark.parametrize("version", [4, 6])
def test_echo_and_full_path_traceroute_through_the_tunnel(tunnel: Tunnel, version: int) -> None:
    answer, _ = tunnel.client.ping_until_answered(TARGET[version])
    echo_reply = 0 if version == 4 else 129
    time_exceeded = 11 if version == 4 else 3
    assert answer == {"src": TARGET[version], "type": echo_reply, "code": 0}
    # Every hop answers: the edge (its tunnel address), the connector, r1, then the target.
    hops = [tunnel.client.ping(TARGET[version], ttl=ttl) for ttl in (1, 2, 3, 4)]
    assert hops == [
        {"src": EDGE_TUNNEL[version], "type": time_exceeded, "code": 0},
        {"src": CONNECTOR[version], "type": time_exceeded, "code": 0},
        {"src": R1[version], "type": time_exceeded, "code": 0},
        {"src": TARGET[version], "type": echo_reply, "code": 0},
    ]


@pytest.mark.parametrize("version", [4, 6])
def test_udp_round_trip_to_the_target(tunnel: Tunnel, version: int) -> None:
    for n in range(3):
        assert tunnel.client.ask(op="udp", dst=TARGET[version], port=7007, payload=f"hello {n}", wait=3.0) == {
            "reply": f"echo:hello {n}"
        }


def test_failover_when_the_serving_connector_is_killed_then_restart(tunnel: Tunnel) -> None:
    if "connector2" not in tunnel.connectors:
        tunnel.start_connector("connector2")
    tunnel.client.ping_until_answered(TARGET[4])
    # TTL 2 expires at the connector carrying this flow: that is the one to kill.
    serving = tunnel.client.ping(TARGET[4], ttl=2)["src"]
    victim, survivor = ("connector", "connector2") if serving == CONNECTOR[4] else ("connector2", "connector")
    assert serving in (CONNECTOR[4], CONNECTOR2[4])
    assert tunnel.client.ask(op="udp", dst=TARGET[4], port=7007, payload="before", wait=3.0) == {"reply": "echo:before"}
    tunnel.connectors[victim].stop(signal.SIGKILL)
    answer, took = tunnel.client.ping_until_answered(TARGET[4], within=12.0)
    assert answer["src"] == TARGET[4]
    survivor_address = CONNECTOR[4] if survivor == "connector" else CONNECTOR2[4]
    assert tunnel.client.ping(TARGET[4], ttl=2)["src"] == survivor_address
    # The UDP session moved too (the edge re-registered it on the survivor).
    assert tunnel.client.ask(op="udp", dst=TARGET[4], port=7007, payload="after", wait=3.0) == {"reply": "echo:after"}
    print(f"failover took {took:.1f} s")

    # The killed connector comes back; then the survivor is killed too: traffic works
    # again through the restarted one within seconds.
    tunnel.start_connector(victim)
    tunnel.connectors[survivor].stop(signal.SIGKILL)
    answer, took = tunnel.client.ping_until_answered(TARGET[6], within=12.0)
    assert answer["src"] == TARGET[6]
    assert tunnel.client.ask(op="udp", dst=TARGET[6], port=7007, payload="again", wait=3.0) == {"reply": "echo:again"}
    print(f"recovery after restart took {took:.1f} s")


def test_unavailable_backend_names_the_sysctl(tunnel: Tunnel) -> None:
    # Root in a fresh namespace, where ping sockets are off by default (ping_group_range "1 0").
    result = tunnel.topo.run(
        "client", sys.executable, "-m", "fastproxy", "connector", "--edge", f"192.0.2.2:{PORT}",
        "--token", CONNECTOR_TOKEN, "--pin", tunnel.pin, "--route", "203.0.113.16/29", "--backend", "ping",
        check=False, env=ENV, cwd=ROOT,
    )
    assert result.returncode != 0
    assert "net.ipv4.ping_group_range" in result.stderr
