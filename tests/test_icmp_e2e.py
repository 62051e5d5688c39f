"""End to end: the ICMP proxy in a connector namespace, routers r1 and r2, a target (v4 and v6).

connector --(192.0.2.0/28, 2001:db8:1::/64)-- r1 --(198.51.100.0/28, 2001:db8:2::/64, MTU 1280)--
r2 --(203.0.113.0/28, 2001:db8:3::/64)-- target. The proxy runs in the connector namespace
(tests/icmp_worker.py): the ping-socket backend as uid 65534 without capabilities, the raw
backend as root; both pass the same tests. scapy checks each packet as the client must see it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, ICMPerror, IPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPerror6, IPv6

from .conftest import require_root
from .netns import Link, Route, Topology
from .test_icmp_proxy import checksums_ok

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parent.parent
CLIENT = {4: "192.0.2.200", 6: "2001:db8:c::7"}  # only ever inside tunnel packets
CONNECTOR = {4: "192.0.2.1", 6: "2001:db8:1::1"}
R1 = {4: "192.0.2.2", 6: "2001:db8:1::2"}
R2 = {4: "198.51.100.2", 6: "2001:db8:2::2"}
TARGET = {4: "203.0.113.2", 6: "2001:db8:3::2"}
UNROUTED = {4: "203.0.113.100", 6: "2001:db8:3:1::1"}


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    require_root("network namespaces")
    links = [
        Link("connector", "r1", ["192.0.2.1/28", "2001:db8:1::1/64"], ["192.0.2.2/28", "2001:db8:1::2/64"]),
        Link("r1", "r2", ["198.51.100.1/28", "2001:db8:2::1/64"], ["198.51.100.2/28", "2001:db8:2::2/64"], mtu=1280),
        Link("r2", "target", ["203.0.113.1/28", "2001:db8:3::1/64"], ["203.0.113.2/28", "2001:db8:3::2/64"]),
    ]
    routes = [
        Route("connector", "default", "192.0.2.2"), Route("connector", "default", "2001:db8:1::2"),
        Route("r1", "203.0.113.0/24", "198.51.100.2"), Route("r1", "2001:db8:3::/48", "2001:db8:2::2"),
        Route("r2", "192.0.2.0/28", "198.51.100.1"), Route("r2", "2001:db8:1::/64", "2001:db8:2::1"),
        Route("target", "default", "203.0.113.1"), Route("target", "default", "2001:db8:3::1"),
    ]
    sysctls = {"connector": {"net.ipv4.ping_group_range": "0 2147483647"}}
    with Topology(links=links, routes=routes, routers=["r1", "r2"], sysctls=sysctls) as topo:
        yield topo


class Worker:
    def __init__(self, topo: Topology, backend: str, user: int | None) -> None:
        command = [sys.executable, "-m", "tests.icmp_worker", "--backend", backend]
        if user is not None:
            command += ["--user", str(user)]
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
        self.process = topo.popen("connector", *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  cwd=ROOT, env=env, text=True)

    def ask(self, **request: object) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "worker died"
        return json.loads(line)

    def send(self, conn: int, packets: list[bytes], expect: int, wait: float = 3.0) -> list[tuple[int, bytes]]:
        answer = self.ask(op="send", conn=conn, packets=[p.hex() for p in packets], expect=expect, wait=wait)
        self.last = answer
        return [(c, bytes.fromhex(p)) for c, p in answer["out"]]

    def close(self) -> None:
        try:
            self.ask(op="quit") if self.process.poll() is None else None
        except (AssertionError, BrokenPipeError, ValueError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module", params=["ping", "raw"])
def worker(request: pytest.FixtureRequest, topology: Topology) -> Iterator[Worker]:
    proxy = Worker(topology, request.param, 65534 if request.param == "ping" else None)
    try:
        yield proxy
    finally:
        proxy.close()


def echo(version: int, dst: str, echo_id: int, seq: int, ttl: int, payload: bytes = b"fastproxy-e2e",
         src: str | None = None) -> bytes:
    src = src or CLIENT[version]
    if version == 4:
        return bytes(IP(src=src, dst=dst, ttl=ttl, flags="DF") / ICMP(type=8, id=echo_id, seq=seq) / payload)
    return bytes(IPv6(src=src, dst=dst, hlim=ttl) / ICMPv6EchoRequest(id=echo_id, seq=seq, data=payload))


def parse(packet: bytes):
    return IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)


def assert_error(version: int, packet: bytes, source: str, v4: tuple[int, int], v6: tuple[int, int],
                 echo_id: int, seq: int, dst: str) -> object:
    """An ICMP error as the client must see it: from ``source`` to the client, quoting its own request."""
    assert checksums_ok(packet)
    parsed = parse(packet)
    assert (parsed.src, parsed.dst) == (source, CLIENT[version])
    raw = bytes(parsed.payload)
    assert (raw[0], raw[1]) == (v4 if version == 4 else v6)
    quoted = parsed[IPerror] if version == 4 else parsed[IPerror6]
    assert (quoted.src, quoted.dst) == (CLIENT[version], dst)
    quoted_icmp = bytes(quoted.payload)
    assert quoted_icmp[0] == (8 if version == 4 else 128)
    assert int.from_bytes(quoted_icmp[4:6], "big") == echo_id
    assert int.from_bytes(quoted_icmp[6:8], "big") == seq
    return parsed


def test_worker_privileges(worker: Worker) -> None:
    info = worker.ask(op="info")
    assert info["backend"] in ("ping", "raw")
    if info["backend"] == "ping":
        assert info["uid"] == 65534 and int(info["capeff"], 16) == 0
    else:
        assert info["uid"] == 0


@pytest.mark.parametrize("version", [4, 6])
def test_traceroute_shows_every_hop(worker: Worker, version: int) -> None:
    echo_id = 0x7000 + version
    hops = [(1, CONNECTOR), (2, R1), (3, R2)]
    for ttl, hop in hops:
        (conn, packet), = worker.send(1, [echo(version, TARGET[version], echo_id, ttl, ttl)], expect=1)
        assert conn == 1
        assert_error(version, packet, hop[version], (11, 0), (3, 0), echo_id, ttl, TARGET[version])
    (conn, packet), = worker.send(1, [echo(version, TARGET[version], echo_id, 64, 64)], expect=1)
    assert checksums_ok(packet)
    parsed = parse(packet)
    assert (parsed.src, parsed.dst) == (TARGET[version], CLIENT[version])
    reply = parsed[ICMP] if version == 4 else parsed[ICMPv6EchoReply]
    assert (reply.id, reply.seq) == (echo_id, 64)
    assert bytes(reply.payload if version == 4 else reply.data)[:13] == b"fastproxy-e2e"
    assert parsed.ttl if version == 4 else parsed.hlim  # the real TTL of the reply, as received
    assert (parsed.ttl if version == 4 else parsed.hlim) == 62  # 64 - r2 - r1


@pytest.mark.parametrize("version", [4, 6])
def test_unrouted_destination_is_unreachable(worker: Worker, version: int) -> None:
    if version == 4:
        # A v4 router's "no route" answer (ip_error) shares per-peer tokens with its other ICMP
        # errors and needs net.ipv4.route.error_cost (1 s, not per namespace) since the last one.
        time.sleep(1.1)
    (_conn, packet), = worker.send(2, [echo(version, UNROUTED[version], 0x7100, 1, 64)], expect=1)
    assert_error(version, packet, R2[version], (3, 0), (1, 0), 0x7100, 1, UNROUTED[version])


@pytest.mark.parametrize("version", [4, 6])
def test_too_big_packet_reports_the_mtu(worker: Worker, version: int) -> None:
    big = echo(version, TARGET[version], 0x7200, 1, 64, payload=bytes(1400))
    (_conn, packet), = worker.send(2, [big], expect=1)
    parsed = assert_error(version, packet, R1[version], (3, 4), (2, 0), 0x7200, 1, TARGET[version])
    raw = bytes(parsed.payload)
    mtu = int.from_bytes(raw[6:8], "big") if version == 4 else int.from_bytes(raw[4:8], "big")
    assert mtu == 1280


@pytest.mark.parametrize("version", [4, 6])
def test_same_echo_id_many_clients_isolated(worker: Worker, version: int) -> None:
    prefix = "192.0.2." if version == 4 else "2001:db8:c::"
    sources = [f"{prefix}{210 + i}" for i in range(2)]
    sent = []
    for conn in (11, 12, 13):
        packets = [echo(version, TARGET[version], 0x7300, conn, 64, payload=f"c{conn}-{src}".encode(), src=src)
                   for src in sources]
        sent += [(conn, src) for src in sources]
        worker.send(conn, packets, expect=0, wait=0.0)
    out = worker.ask(op="poll", expect=len(sent), wait=3.0)["out"]
    seen = []
    for conn, hexed in out:
        parsed = parse(bytes.fromhex(hexed))
        reply = parsed[ICMP] if version == 4 else parsed[ICMPv6EchoReply]
        data = bytes(reply.payload if version == 4 else reply.data)
        assert data == f"c{conn}-{parsed.dst}".encode() and reply.id == 0x7300 and reply.seq == conn
        seen.append((conn, parsed.dst))
    assert sorted(seen) == sorted(sent)


def test_injected_bad_replies_dropped(worker: Worker, topology: Topology) -> None:
    worker.send(3, [echo(4, TARGET[4], 0x7400, 1, 64)], expect=1)
    ids = [echo_id for dst, echo_id in worker.last["flows"] if dst == socket.inet_aton(TARGET[4]).hex()]
    before = worker.last["metrics"]
    injected = [
        IP(src=TARGET[4], dst=CONNECTOR[4]) / ICMP(type=0, id=0xFFFF ^ max(ids), seq=1) / b"unknown",
        IP(src="203.0.113.3", dst=CONNECTOR[4]) / ICMP(type=0, id=max(ids), seq=1) / b"spoofed",
        IP(src=TARGET[4], dst=CONNECTOR[4]) / ICMP(type=0, id=max(ids), seq=1, chksum=0x1234) / b"badsum",
    ]
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n"
        "for h in sys.argv[1:]:\n s.sendto(bytes.fromhex(h),(" + repr(CONNECTOR[4]) + ",0))\n"
    )
    topology.run("target", sys.executable, "-c", script, *(bytes(p).hex() for p in injected))
    answer = worker.ask(op="poll", expect=0, wait=1.0)
    assert answer["out"] == []
    after = answer["metrics"]
    delta = {k: after[k] - before[k] for k in after if k.startswith("icmp_drops_reply") and after[k] != before[k]}
    if worker.ask(op="info")["backend"] == "raw":
        assert delta == {"icmp_drops_reply_unknown_flow": 2, "icmp_drops_reply_bad_checksum": 1}
    else:  # the kernel drops unknown ids and bad checksums itself; the spoofed source reaches the flow's socket
        assert delta == {"icmp_drops_reply_spoofed": 1}
    # the flow still works
    (_conn, packet), = worker.send(3, [echo(4, TARGET[4], 0x7400, 2, 64)], expect=1)
    assert parse(packet)[ICMP].seq == 2


def answers_by_seq(version: int, out: list[tuple[int, bytes]]) -> dict[int, tuple[str, int]]:
    """Each answer's probe (the sequence number it quotes or echoes): (who answered, ICMP type)."""
    seen: dict[int, tuple[str, int]] = {}
    for _conn, packet in out:
        assert checksums_ok(packet)
        parsed = parse(packet)
        raw = bytes(parsed.payload)
        quoted = raw[8:] if raw[0] in ((11, 3) if version == 4 else (3, 1)) else None
        if quoted is not None:  # an error: the quoted request's sequence number
            message = quoted[(quoted[0] & 0xF) * 4:] if version == 4 else quoted[40:]
            seq = int.from_bytes(message[6:8], "big")
        else:
            seq = int.from_bytes(raw[6:8], "big")
        assert seq not in seen, f"two answers for probe {seq}"
        seen[seq] = (parsed.src, raw[0])
    return seen


@pytest.mark.parametrize("version", [4, 6])
def test_router_error_does_not_fail_the_next_probe(worker: Worker, version: int) -> None:
    """A router's Time Exceeded for one probe, not yet read, must not make the next probe on the same
    echo id fail (on a ping socket it leaves an error pending that the kernel hands to the next send):
    each probe gets its own router's answer, and nothing is refused."""
    echo_id = 0x7500 + version
    time_exceeded = 11 if version == 4 else 3
    worker.send(5, [echo(version, TARGET[version], echo_id, 1, 2)], expect=0, wait=0.0)
    time.sleep(0.3)  # r1's answer is waiting on the connector, unread
    before = worker.last["metrics"].get("icmp_drops_backend_send_failed", 0)
    out = worker.send(5, [echo(version, TARGET[version], echo_id, 2, 3)], expect=2)
    assert answers_by_seq(version, out) == {1: (R1[version], time_exceeded), 2: (R2[version], time_exceeded)}
    assert worker.last["metrics"].get("icmp_drops_backend_send_failed", 0) == before


@pytest.mark.parametrize("version", [4, 6])
def test_traceroute_burst_on_one_echo_id(worker: Worker, version: int) -> None:
    """traceroute's way: 16 probes at once on one echo id, TTLs rising; then another round while the
    first round's answers arrive. Every probe is answered by its own hop."""
    echo_id = 0x7600 + version
    time_exceeded, reply = (11, 0) if version == 4 else (3, 129)
    failed = "icmp_drops_backend_send_failed"
    before = worker.ask(op="poll", expect=0, wait=0.0)["metrics"].get(failed, 0)
    for round_start in (1, 17):
        probes = [echo(version, TARGET[version], echo_id, round_start + i, 2 + i) for i in range(16)]
        out = worker.send(6, probes, expect=16)
        expected = {round_start: (R1[version], time_exceeded), round_start + 1: (R2[version], time_exceeded)}
        expected.update({round_start + i: (TARGET[version], reply) for i in range(2, 16)})
        assert answers_by_seq(version, out) == expected
    assert worker.last["metrics"].get(failed, 0) == before
