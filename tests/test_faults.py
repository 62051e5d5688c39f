"""Faults with the three deployed processes (privileged): a lossy or dark underlay, delay,
jitter, reordering and duplication, and processes killed or stopped, while the system's
``ping`` (and a UDP echo loop) run through the real TUN clients.

    user  --(192.0.2.0/29)--  edge  --(198.51.100.0/29)--  conn  --(203.0.113.0/29)--  target
    user2 --(192.0.2.8/29)--/

``fastproxy edge`` (fixed --cert/--key, so its pin survives a restart), ``fastproxy
connector`` (raw backend) and two ``fastproxy client`` TUN clients run each in its own
namespace. client2 (user2, device fp1) dials the edge directly; client1 (user, fp0)
dials it through tests/impairment_relay.py in the edge's namespace (a plain forwarder
until a test sets an impairment). Loss and blackouts are nftables rules on the tunnel's
UDP port inside one namespace (both directions of that link). Figures printed here are
recorded in bench/RELIABILITY.md. The 60-second soak runs with FASTPROXY_SOAK=1.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Link, Route, Topology

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
PORT, RELAY_PORT = 4433, 5433
TARGET = "203.0.113.2"
ECHO_PORT, BLAST_PORT = 7007, 7008
TARGET_SERVER = """
import select, socket, time
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind(("203.0.113.2", 7007))
blast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); blast.bind(("203.0.113.2", 7008))
print("ready", flush=True)
while True:
    for s in select.select([echo, blast], [], [])[0]:
        data, peer = s.recvfrom(2048)
        if s is echo:
            s.sendto(data, peer)
            continue
        # b"COUNT SIZE RATE": COUNT datagrams of SIZE bytes at RATE per second (bounded).
        count, size, rate = (int(x) for x in data.split())
        count, size, rate = min(count, 100000), min(size, 1200), min(rate, 10000)
        start = time.monotonic()
        for i in range(count):
            s.sendto(b"x" * size, peer)
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
"""
# UDP load through the TUN: COUNT numbered datagrams at INTERVAL, then how many came back.
UDP_LOAD = """
import socket, sys, time
count, interval = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
s.connect(("203.0.113.2", 7007))
seen, start = set(), time.monotonic()
for i in range(count):
    try:
        s.send(str(i).encode())
    except OSError:
        pass
    while True:
        try:
            seen.add(int(s.recv(64)))
        except (BlockingIOError, ConnectionRefusedError):
            break
    time.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))
end = time.monotonic() + 1.0
while time.monotonic() < end and len(seen) < count:
    try:
        seen.add(int(s.recv(64)))
    except (BlockingIOError, ConnectionRefusedError):
        time.sleep(0.01)
print(count, len(seen))
"""


class Daemon:
    """A fastproxy (or helper) process in a namespace; output to a log file."""

    def __init__(self, topo: Topology, node: str, name: str, workdir: str, *command: str,
                 stdin: bool = False) -> None:
        self.topo, self.node, self.name, self.command, self.stdin = topo, node, name, command, stdin
        self.log = Path(workdir) / f"{name}.log"
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        """(Re)start the process, appending to its log."""
        log = open(self.log, "a")  # noqa: SIM115 - the child holds it
        self.process = self.topo.popen(
            self.node, *self.command, env=ENV, cwd=ROOT, text=True, stderr=log,
            stdout=subprocess.PIPE if self.stdin else log, stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL)
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    def wait_for(self, needle: str, count: int = 1, timeout: float = 15.0) -> float:
        """Seconds until ``needle`` appeared ``count`` times in the log."""
        start = time.monotonic()
        while self.count(needle) < count:
            assert self.process is not None and self.process.poll() is None, f"{self.name} exited: {self.text()}"
            assert time.monotonic() - start < timeout, f"no {needle!r} in {self.name}: {self.text()[-3000:]}"
            time.sleep(0.02)
        return time.monotonic() - start

    def ask(self, request: dict) -> str:
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Faults:
    topo: Topology
    workdir: str
    edge: Daemon
    connector: Daemon
    relay: Daemon
    client1: Daemon
    client2: Daemon
    server: subprocess.Popen[str]
    pin: str
    all: list[Daemon] = field(default_factory=list)


def fastproxy(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "fastproxy", *args)


def routed(topo: Topology, node: str, device: str) -> bool:
    routes = topo.run(node, "ip", "route", "show", "dev", device, check=False).stdout
    return "203.0.113.0/29" in routes


def wait_until(check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def faults() -> Iterator[Faults]:
    require_root("builds namespaces, runs TUN clients, sets nftables rules")
    from fastproxy.tunnel.certs import generate_self_signed

    workdir = tempfile.mkdtemp(prefix="fastproxy-faults-")
    cert = generate_self_signed(workdir)
    topo = Topology(
        links=[
            Link("user", "edge", ["192.0.2.1/29"], ["192.0.2.2/29"]),
            Link("user2", "edge", ["192.0.2.9/29"], ["192.0.2.10/29"]),
            Link("edge", "conn", ["198.51.100.1/29"], ["198.51.100.2/29"]),
            Link("conn", "target", ["203.0.113.1/29"], [f"{TARGET}/29"]),
        ],
        routes=[Route("target", "default", "203.0.113.1")],
    )
    daemons: list[Daemon] = []
    server = None
    with topo:
        try:
            server = topo.popen("target", sys.executable, "-c", TARGET_SERVER, stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            edge = Daemon(topo, "edge", "edge", workdir, *fastproxy(
                "edge", "--listen", f"0.0.0.0:{PORT}", "--cert", cert.cert_file, "--key", cert.key_file,
                "--client-token", "client-1", "--client-token", "client-2", "--connector-token", "connector-1"))
            daemons.append(edge)
            edge.wait_for("edge listening")
            relay = Daemon(topo, "edge", "relay", workdir, sys.executable, str(ROOT / "tests" / "impairment_relay.py"),
                           "192.0.2.2", str(RELAY_PORT), "127.0.0.1", str(PORT), stdin=True)
            daemons.append(relay)
            assert relay.process is not None and relay.process.stdout is not None
            assert relay.process.stdout.readline() == "ready\n"
            connector = Daemon(topo, "conn", "connector", workdir, *fastproxy(
                "connector", "--edge", f"198.51.100.1:{PORT}", "--token", "connector-1", "--pin", cert.fingerprint,
                "--route", "203.0.113.0/29", "--backend", "raw"))
            daemons.append(connector)
            connector.wait_for("connected to the edge")
            client1 = Daemon(topo, "user", "client1", workdir, *fastproxy(
                "client", "--edge", f"192.0.2.2:{RELAY_PORT}", "--token", "client-1", "--pin", cert.fingerprint,
                "--tun", "fp0"))
            client2 = Daemon(topo, "user2", "client2", workdir, *fastproxy(
                "client", "--edge", f"192.0.2.10:{PORT}", "--token", "client-2", "--pin", cert.fingerprint,
                "--tun", "fp1"))
            daemons += [client1, client2]
            wait_until(lambda: routed(topo, "user", "fp0") and routed(topo, "user2", "fp1"), 20)
            yield Faults(topo, workdir, edge, connector, relay, client1, client2, server, cert.fingerprint, daemons)
        finally:
            for daemon in reversed(daemons):
                daemon.stop()
            if server is not None:
                server.kill()
                server.wait()


# ---------------------------------------------------------------- load generators and rules


@dataclass
class PingResult:
    sent: int
    received: int
    replies: list[tuple[float, int]]  # (wall-clock time, icmp_seq)
    duplicates: int
    output: str

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent


def ping(topo: Topology, node: str, count: int, interval: float = 0.01, timeout: float = 60.0) -> PingResult:
    """The system's ping, ``count`` echoes at ``interval`` (bounded), with reply timestamps."""
    result = topo.run(node, "ping", "-n", "-D", "-i", str(interval), "-c", str(count), "-W", "1", TARGET,
                      check=False, timeout=timeout)
    return _ping_result(result.stdout)


def _ping_result(output: str) -> PingResult:
    stats = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", output)
    assert stats, output
    replies = [(float(ts), int(seq)) for ts, seq in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)",
                                                              output, re.M)]
    return PingResult(int(stats.group(1)), int(stats.group(2)), replies, int(stats.group(3) or 0), output)


class Background:
    """A ping (or UDP load) running in a thread while the test does something else."""

    def __init__(self, topo: Topology, node: str, *command: str, timeout: float = 60.0) -> None:
        self.result: subprocess.CompletedProcess[str] | None = None
        self.thread = threading.Thread(target=self._run, args=(topo, node, command, timeout), daemon=True)
        self.thread.start()

    def _run(self, topo: Topology, node: str, command: tuple[str, ...], timeout: float) -> None:
        self.result = topo.run(node, *command, check=False, timeout=timeout)

    def join(self) -> str:
        self.thread.join(120)
        assert self.result is not None
        return self.result.stdout


def background_ping(topo: Topology, node: str, count: int, interval: float = 0.01) -> Background:
    return Background(topo, node, "ping", "-n", "-D", "-i", str(interval), "-c", str(count), "-W", "1", TARGET)


def background_udp(topo: Topology, node: str, count: int, interval: float = 0.01) -> Background:
    return Background(topo, node, sys.executable, "-c", UDP_LOAD, str(count), str(interval))


def udp_loss(output: str) -> tuple[int, int]:
    sent, received = (int(x) for x in output.split())
    return sent, received


class Rules:
    """nftables rules on the tunnel's UDP port in one namespace, both directions."""

    TABLE = "fpfault"

    def __init__(self, topo: Topology, node: str, port: int) -> None:
        self.topo, self.node, self.port = topo, node, port

    def set(self, match: str) -> None:
        """Drop the packets ``match`` selects (an nft expression, e.g. ``numgen random mod 100 < 5``)."""
        self.clear()
        nft = ["nft"]
        self.topo.run(self.node, *nft, "add", "table", "inet", self.TABLE)
        for chain, hook, direction in (("out", "output", "dport"), ("in", "input", "sport")):
            self.topo.run(self.node, *nft, "add", "chain", "inet", self.TABLE, chain,
                          f"{{ type filter hook {hook} priority 0; }}")
            self.topo.run(self.node, *nft, "add", "rule", "inet", self.TABLE, chain, "udp", direction,
                          str(self.port), *match.split(), "drop")

    def clear(self) -> None:
        self.topo.run(self.node, "nft", "delete", "table", "inet", self.TABLE, check=False)


def loss_bound(per_packet: float, n: int) -> float:
    """Highest echo loss that is still no amplification: an echo crosses the impaired link
    twice (1 - (1-p)^2 lost), plus four standard deviations of a binomial over n echoes."""
    expected = 1 - (1 - per_packet) ** 2
    return expected + 4 * math.sqrt(max(expected * (1 - expected), 1 / n) / n) + 1 / n


LINKS = {"client-edge": ("user2", PORT), "edge-connector": ("conn", PORT)}


# ---------------------------------------------------------------- underlay impairment


def test_baseline_no_loss(faults: Faults) -> None:
    for node in ("user", "user2"):
        result = ping(faults.topo, node, 50)
        assert result.loss == 0, result.output
    print("baseline: 2 x 50 echoes at 10 ms, no loss")


@pytest.mark.parametrize("link", list(LINKS))
@pytest.mark.parametrize(("percent", "count"), [
    pytest.param(1, 1000, marks=pytest.mark.soak, id="1-percent"),  # 10 s each: with the soak (opt-in)
    pytest.param(5, 300, id="5-percent"),
])
def test_random_loss_is_not_amplified(faults: Faults, link: str, percent: int, count: int) -> None:
    node, port = LINKS[link]
    rules = Rules(faults.topo, node, port)
    lost_before = faults.client2.count("connection to the edge lost") + faults.connector.count("connection to the edge lost")
    rules.set(f"numgen random mod 100 < {percent}")
    try:
        udp = background_udp(faults.topo, "user2", count)
        result = ping(faults.topo, "user2", count)
        udp_sent, udp_received = udp_loss(udp.join())
    finally:
        rules.clear()
    bound = loss_bound(percent / 100, count)
    udp_lost = 1 - udp_received / udp_sent
    print(f"{link} {percent}% loss each way: ICMP {result.loss:.1%}, UDP {udp_lost:.1%} lost of {count} "
          f"(impairment's own for a round trip {1 - (1 - percent / 100) ** 2:.1%}, bound {bound:.1%})")
    assert result.loss <= bound, result.output
    assert udp_lost <= bound
    assert result.duplicates == 0
    # The tunnel stayed up: no reconnect on either side.
    assert faults.client2.count("connection to the edge lost") + faults.connector.count("connection to the edge lost") == lost_before


@pytest.mark.parametrize("link", list(LINKS))
def test_two_second_blackout_recovers_within_a_second(faults: Faults, link: str) -> None:
    node, port = LINKS[link]
    rules = Rules(faults.topo, node, port)
    lost_before = faults.client2.count("connection to the edge lost") + faults.connector.count("connection to the edge lost")
    load = background_ping(faults.topo, "user2", 500)  # 5 s at 10 ms
    time.sleep(1.0)
    rules.set("")  # drop everything on the tunnel's port
    try:
        time.sleep(2.0)
    finally:
        rules.clear()
        lifted = time.time()
    result = _ping_result(load.join())
    after = [ts for ts, _ in result.replies if ts > lifted]
    assert after, result.output
    recovery = after[0] - lifted
    gap = [ts for ts, _ in result.replies if ts <= lifted]
    print(f"{link} 2 s blackout: first reply {recovery * 1000:.0f} ms after the rule went; "
          f"{result.sent - result.received} of {result.sent} echoes lost (about 200 fall in the blackout)")
    assert recovery < 1.0, result.output
    assert gap and result.received >= result.sent - 200 - 100 * 1.0  # at most the blackout and the recovery
    assert faults.client2.count("connection to the edge lost") + faults.connector.count("connection to the edge lost") == lost_before


def test_delay_jitter_reordering_duplication_through_the_relay(faults: Faults) -> None:
    assert faults.relay.ask({"set": {"delay": 0.05, "jitter": 0.01, "reorder": 0.01, "duplicate": 0.01}}) == "ok"
    lost_before = faults.client1.count("connection to the edge lost")
    count = 250
    try:
        udp = background_udp(faults.topo, "user", count)
        result = ping(faults.topo, "user", count)
        udp_sent, udp_received = udp_loss(udp.join())
    finally:
        assert faults.relay.ask({"set": {"delay": 0.0, "jitter": 0.0, "reorder": 0.0, "duplicate": 0.0}}) == "ok"
    stats = json.loads(faults.relay.ask({"stats": True}))
    rtt = re.search(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)", result.output)
    assert rtt, result.output
    print(f"relay 50±10 ms each way, 1% reordered, 1% duplicated: ICMP loss {result.loss:.1%}, UDP loss "
          f"{1 - udp_received / udp_sent:.1%}, rtt avg {rtt.group(2)} ms, relay {stats}")
    assert float(rtt.group(1)) >= 78  # the relay is in the path: two crossings of 50 ms ± 10 ms
    assert stats["duplicated"] > 0 and stats["reordered"] > 0
    # Nothing lost, and QUIC dropped the duplicated packets: no duplicate echo reached ping.
    assert result.loss <= 0.01 and udp_received >= udp_sent * 0.99, result.output
    assert result.duplicates == 0
    assert faults.client1.count("connection to the edge lost") == lost_before


# ---------------------------------------------------------------- process faults


def test_connector_stopped_for_three_seconds(faults: Faults) -> None:
    load = background_ping(faults.topo, "user2", 450)  # 4.5 s
    time.sleep(1.0)
    faults.connector.send(signal.SIGSTOP)
    time.sleep(3.0)
    faults.connector.send(signal.SIGCONT)
    resumed = time.time()
    result = _ping_result(load.join())
    after = [ts for ts, _ in result.replies if ts > resumed]
    assert after, result.output
    print(f"connector SIGSTOP 3 s: first reply {(after[0] - resumed) * 1000:.0f} ms after SIGCONT")
    assert after[0] - resumed < 1.0
    assert faults.connector.process is not None and faults.connector.process.poll() is None
    # No stuck flows: fresh echoes and UDP get through in full.
    assert ping(faults.topo, "user2", 30).loss == 0
    udp = background_udp(faults.topo, "user2", 30)
    sent, received = udp_loss(udp.join())
    assert received >= sent - 1


def test_edge_killed_and_restarted(faults: Faults) -> None:
    """SIGKILL the edge and start it again at once (same --cert/--key, so the same pin):
    the connector and both TUN clients come back by themselves, each keeping its device
    and getting its routes back."""
    connects = faults.connector.count("connected to the edge")
    loads = {node: background_ping(faults.topo, node, 200, interval=0.05) for node in ("user", "user2")}  # 10 s
    time.sleep(1.0)
    killed = time.time()
    faults.edge.stop(signal.SIGKILL)
    faults.edge.start()
    restarted, restarted_wall = time.monotonic(), time.time()
    faults.edge.wait_for("edge listening", count=2)
    faults.connector.wait_for("connected to the edge", count=connects + 1, timeout=30)
    took = {"connector": time.monotonic() - restarted}
    for name, node, device in (("client1", "user", "fp0"), ("client2", "user2", "fp1")):
        result = _ping_result(loads[node].join())
        # Resumed: the first reply after the longest silence (replies already past the edge
        # when it was killed may still trickle in just after the restart).
        times = [killed] + [ts for ts, _ in result.replies if ts > killed]
        assert len(times) > 1, result.output
        gap = max(range(1, len(times)), key=lambda i: times[i] - times[i - 1])
        took[name] = times[gap] - restarted_wall
        assert routed(faults.topo, node, device)  # kept its device and its routes
    print("edge SIGKILL + restart: reconnected after " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
    # Within the QUIC idle timeout (5 s, by which the peers notice the old connection is
    # gone) plus a reconnect with backoff. Issue 12 asks for 5 s; the peers cannot do better
    # than the idle timeout while the new edge drops the old connections' packets silently
    # (no stateless reset: its token would need a key that survives restarts, which qh3
    # does not offer); measured 5.2-5.9 s (bench/RELIABILITY.md).
    assert max(took.values()) <= 8.0, took


def test_stopped_client_costs_the_edge_bounded_memory(faults: Faults) -> None:
    topo = faults.topo
    rss_before = faults.edge.rss_kib()
    # client1 asks the target for 6 s of 1000-byte datagrams at 4000/s (24 MB), then stops.
    topo.run("user", sys.executable, "-c",
             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.sendto(b'24000 1000 4000', ('{TARGET}', {BLAST_PORT}))")
    time.sleep(0.3)
    # Count what the edge receives from the connector meanwhile (it must really get that traffic).
    topo.run("edge", "nft", "add", "table", "inet", "fpcount")
    topo.run("edge", "nft", "add", "chain", "inet", "fpcount", "in", "{ type filter hook input priority 0; }")
    topo.run("edge", "nft", "add", "rule", "inet", "fpcount", "in", "ip", "saddr", "198.51.100.2", "counter")
    faults.client1.send(signal.SIGSTOP)
    try:
        other = background_ping(topo, "user2", 300, interval=0.02)  # 6 s
        peak = rss_before
        for _ in range(12):
            time.sleep(0.5)
            peak = max(peak, faults.edge.rss_kib())
        other_result = _ping_result(other.join())
    finally:
        faults.client1.send(signal.SIGCONT)
        counted = topo.run("edge", "nft", "list", "table", "inet", "fpcount").stdout
        topo.run("edge", "nft", "delete", "table", "inet", "fpcount", check=False)
    received = int(re.search(r"counter packets \d+ bytes (\d+)", counted).group(1))  # type: ignore[union-attr]
    print(f"client1 stopped 6 s, {received / 1e6:.1f} MB came to the edge for it: edge RSS "
          f"{rss_before / 1024:.1f} -> peak {peak / 1024:.1f} MiB; client2 ping loss {other_result.loss:.1%}")
    assert received > 6e6  # at least a quarter of what the target sent did reach the edge
    assert peak - rss_before < 16 * 1024, (rss_before, peak)
    assert other_result.loss <= 0.01, other_result.output
    # client1 comes back (its connection may have timed out meanwhile) with its device.
    wait_until(lambda: ping(topo, "user", 1, timeout=5).received == 1, 20)
    assert routed(topo, "user", "fp0")


# ---------------------------------------------------------------- soak (opt-in)


@pytest.mark.soak
def test_soak_with_churn(faults: Faults) -> None:
    """60 s (FASTPROXY_SOAK_SECONDS) of ping and UDP with new echo ids and UDP sessions
    every second (each ping and each UDP load is a new process); RSS and fds of every
    process printed each 10 s. RSS stays flat; fds too, except the connector's one socket
    per UDP session, which lives until the session's idle timeout (210 s by default)."""
    from fastproxy.tunnel.udp_sessions import DEFAULT_IDLE_TIMEOUT

    seconds = int(os.environ.get("FASTPROXY_SOAK_SECONDS", "60"))
    topo = faults.topo
    daemons = (faults.edge, faults.connector, faults.client1, faults.client2)
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
    sessions: list[float] = []  # when each UDP load (one new session) started
    lost = sent = 0
    start = time.monotonic()
    next_sample = 0.0

    def live_sessions(at: float) -> int:
        return sum(1 for t in sessions if t > at - DEFAULT_IDLE_TIMEOUT - 5)

    while True:
        elapsed = time.monotonic() - start
        if elapsed >= next_sample or elapsed >= seconds:
            sample = {d.name: (d.rss_kib(), d.fds()) for d in daemons}
            samples.append((elapsed, sample))
            print(f"t={elapsed:4.0f}s " + "  ".join(f"{k}: {v[0] / 1024:.1f} MiB {v[1]} fds" for k, v in sample.items())
                  + f"  live UDP sessions <= {live_sessions(time.monotonic())}", flush=True)
            next_sample += 10
        if elapsed >= seconds:
            break
        sessions.append(time.monotonic())
        udp = background_udp(topo, "user2", 50, interval=0.02)
        result = ping(topo, "user", 50, interval=0.02)
        udp_sent, udp_received = udp_loss(udp.join())
        sent += result.sent + udp_sent
        lost += result.sent - result.received + udp_sent - udp_received
    print(f"soak {seconds} s: {sent} echoes and datagrams, {lost} lost")
    assert lost <= sent * 0.001
    (_, zero), (_, warm), (_, last) = samples[0], samples[1], samples[-1]
    for name in last:
        assert last[name][0] - warm[name][0] < 20 * 1024, (name, warm[name], last[name])  # RSS, KiB
        allowed = live_sessions(start + samples[-1][0]) if name == "connector" else 0
        assert last[name][1] - zero[name][1] <= allowed + 3, (name, zero[name], last[name], allowed)
