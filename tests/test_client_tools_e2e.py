"""``fastproxy ping`` / ``fastproxy traceroute`` end to end (privileged), the way users run
them: real edge and connector processes, the tools as subprocesses in the user's namespace.

user — edge — conn — router — target, each in a namespace this test builds, none with a
default route. The target also holds 192.0.2.53 and 2001:db8::53 (what
tests/dns_responder.py, running there, answers for hello.fastproxy.test); the router
blackholes 203.0.113.192/26, which the connector serves: probes there vanish silently.
"""

from __future__ import annotations

import json
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
from .test_client_e2e import wait_until

pytestmark = pytest.mark.privileged

SRC = str(Path(__file__).resolve().parent.parent / "src")
DNS_RESPONDER = str(Path(__file__).resolve().parent / "dns_responder.py")
EDGE_HOP4, EDGE_HOP6 = "100.96.0.1", "fd00:fa57::1"
CONNECTOR4, ROUTER4, TARGET4 = "203.0.113.1", "203.0.113.2", "203.0.113.130"
TARGET6 = "2001:db8:4::2"
BLACKHOLE4 = "203.0.113.200"
NAMED4, NAMED6 = "192.0.2.53", "2001:db8::53"  # hello.fastproxy.test, as the responder answers
ENV = {**os.environ, "PYTHONPATH": SRC}

Network = tuple[Topology, list[str]]
"""The topology and the connection flags for the tools."""


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    require_root("builds namespaces, runs an edge and a connector in them")
    from fastproxy.tunnel.certs import generate_self_signed

    workdir = tempfile.mkdtemp(prefix="fastproxy-tools-e2e-")
    cert = generate_self_signed(workdir)
    topo = Topology(
        links=[
            Link("user", "edge", ["198.51.100.1/26", "2001:db8:1::1/64"], ["198.51.100.2/26", "2001:db8:1::2/64"]),
            Link("edge", "conn", ["198.51.100.65/26", "2001:db8:2::1/64"], ["198.51.100.66/26", "2001:db8:2::2/64"]),
            Link("conn", "router", [f"{CONNECTOR4}/26", "2001:db8:3::1/64"], [f"{ROUTER4}/26", "2001:db8:3::2/64"]),
            Link("router", "target", ["203.0.113.129/26", "2001:db8:4::1/64"], [f"{TARGET4}/26", f"{TARGET6}/64"]),
        ],
        routes=[
            Route("conn", "203.0.113.128/25", ROUTER4), Route("conn", f"{NAMED4}/32", ROUTER4),
            Route("conn", "2001:db8:4::/64", "2001:db8:3::2"), Route("conn", f"{NAMED6}/128", "2001:db8:3::2"),
            Route("router", f"{NAMED4}/32", TARGET4), Route("router", f"{NAMED6}/128", TARGET6),
            Route("target", "203.0.113.0/26", "203.0.113.129"), Route("target", "2001:db8:3::/64", "2001:db8:4::1"),
        ],
        routers=["router"],
    )
    processes: list[subprocess.Popen[bytes]] = []
    with topo:
        try:
            topo.run("router", "ip", "route", "add", "blackhole", "203.0.113.192/26")
            topo.run("target", "ip", "addr", "add", f"{NAMED4}/32", "dev", "lo")
            topo.run("target", "ip", "addr", "add", f"{NAMED6}/128", "dev", "lo")
            responder = topo.popen("target", sys.executable, DNS_RESPONDER, "53", stdout=subprocess.PIPE)
            processes.append(responder)
            assert responder.stdout is not None and responder.stdout.readline() == b"ready\n"
            for node, args in (
                ("edge", ["edge", "--listen", "[::]:4433", "--cert", cert.cert_file, "--key", cert.key_file,
                          "--client-token", "client-1", "--connector-token", "connector-1"]),
                ("conn", ["connector", "--edge", "198.51.100.65:4433", "--token", "connector-1", "--pin",
                          cert.fingerprint, "--route", "203.0.113.128/25", "--route", f"{NAMED4}/32",
                          "--route", "2001:db8:4::/64", "--route", f"{NAMED6}/128", "--route", "::1/128"]),
            ):
                processes.append(topo.popen(node, sys.executable, "-m", "fastproxy", *args,
                                            stdout=open(f"{workdir}/{node}.log", "wb"),  # noqa: SIM115
                                            stderr=subprocess.STDOUT, env=ENV))
            log = Path(f"{workdir}/conn.log")
            assert wait_until(lambda: "connected to the edge" in log.read_text()), log.read_text()
            yield topo, ["--edge", "198.51.100.2:4433", "--token", "client-1", "--pin", cert.fingerprint]
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


def tool(network: Network, command: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``fastproxy COMMAND`` with the connection flags in the user's namespace."""
    topo, common = network
    return topo.run("user", sys.executable, "-m", "fastproxy", command, *common, *args, check=False,
                    timeout=timeout, env=ENV)


def start_tool(network: Network, command: str, *args: str) -> subprocess.Popen[str]:
    topo, common = network
    return topo.popen("user", sys.executable, "-m", "fastproxy", command, *common, *args,  # type: ignore[return-value]
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


@pytest.mark.parametrize(("host", "shown"), [("[::1]", "::1"), ("::1", "::1"), (f"[{TARGET6}]", TARGET6)])
def test_ping_ipv6_literals_with_and_without_brackets(network: Network, host: str, shown: str) -> None:
    result = tool(network, "ping", "-c", "2", "-i", "0.2", host)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"PING {shown} ({shown}) 56 data bytes"
    assert "2 packets transmitted, 2 received, 0% packet loss" in result.stdout


def test_ping_flood_prints_dots_and_backspaces(network: Network) -> None:
    result = tool(network, "ping", "-f", "-c", "50", TARGET4)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == f"PING {TARGET4} ({TARGET4}) 56(84) bytes of data."
    # iputils: '.' per request, backspace-space-backspace per reply, then the summary.
    assert lines[1].count(".") == 50 and set(lines[1]) <= {".", "\b", " ", "E"}, repr(lines[1])
    received = int(lines[3].split(", ")[1].split()[0])
    assert lines[1].count("\b \b") == received > 0, result.stdout
    assert lines[3].startswith("50 packets transmitted")
    assert ", ipg/ewma " in lines[4], lines[4]


def test_ping_timestamps_quiet_pattern(network: Network) -> None:
    result = tool(network, "ping", "-D", "-c", "2", "-i", "0.2", TARGET4)
    assert result.returncode == 0, result.stdout + result.stderr
    replies = result.stdout.splitlines()[1:3]
    for line in replies:
        stamp, rest = line.split("] ", 1)
        assert stamp.startswith("[") and abs(float(stamp[1:]) - time.time()) < 60, line
        assert len(stamp.split(".")[1]) == 6 and rest.startswith(f"64 bytes from {TARGET4}: icmp_seq="), line
    result = tool(network, "ping", "-q", "-c", "2", "-i", "0.2", TARGET4)
    assert result.returncode == 0 and "bytes from" not in result.stdout, result.stdout
    assert "2 packets transmitted, 2 received" in result.stdout
    result = tool(network, "ping", "-p", "ff00", "-s", "8", "-c", "1", TARGET4)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:3] == [
        "PATTERN: 0xff00", f"PING {TARGET4} ({TARGET4}) 8(36) bytes of data.",
        result.stdout.splitlines()[2]]
    assert result.stdout.splitlines()[2].startswith(f"16 bytes from {TARGET4}: icmp_seq=1 ")


def test_ping_deadline_and_outstanding_against_a_blackhole(network: Network) -> None:
    started = time.monotonic()
    result = tool(network, "ping", "-O", "-w", "2", "-i", "0.5", BLACKHOLE4)
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 15
    assert "no answer yet for icmp_seq=1" in result.stdout, result.stdout
    summary = [line for line in result.stdout.splitlines() if "packets transmitted" in line]
    transmitted = int(summary[0].split()[0])
    assert 3 <= transmitted <= 5 and ", 0 received, 100% packet loss" in summary[0], result.stdout


def test_ping_deadline_with_count_counts_replies(network: Network) -> None:
    """iputils: with -w, -c is the number of replies to wait for; fewer by the deadline is exit 1."""
    result = tool(network, "ping", "-c", "2", "-w", "3", "-i", "0.2", TARGET4)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 packets transmitted, 2 received" in result.stdout
    result = tool(network, "ping", "-c", "2", "-w", "1", "-i", "0.2", BLACKHOLE4)
    assert result.returncode == 1, result.stdout + result.stderr


def _rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()[1:]]


def test_traceroute_flags_first_ttl_queries_numeric_icmp_port(network: Network) -> None:
    result = tool(network, "traceroute", "-n", "-I", "-p", "33434", "-f", "2", "-q", "1", "-N", "1", "-w", "2",
                  TARGET4)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(row[0], row[1]) for row in _rows(result.stdout)] == [("2", CONNECTOR4), ("3", ROUTER4), ("4", TARGET4)]
    result = tool(network, "traceroute", "-q", "2", "-w", "2", TARGET6)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row[1] for row in _rows(result.stdout)] == [EDGE_HOP6, "2001:db8:3::1", "2001:db8:3::2", TARGET6]
    assert all(len([f for f in row if f == "ms"]) == 2 for row in _rows(result.stdout))


def test_traceroute_to_a_blackhole_probes_in_parallel(network: Network) -> None:
    """12 hops of 3 probes, 1 s each: one by one that is over 10 s of waiting; 16 at a time, about 3."""
    started = time.monotonic()
    result = tool(network, "traceroute", "-w", "1", "-m", "12", BLACKHOLE4)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    rows = _rows(result.stdout)
    assert [row[0] for row in rows] == [str(ttl) for ttl in range(1, 13)], result.stdout
    assert rows[0][1] == EDGE_HOP4 and rows[1][1] == CONNECTOR4, result.stdout
    assert all(row[1:] == ["*", "*", "*"] for row in rows[3:]), result.stdout
    assert elapsed < 8, f"took {elapsed:.1f} s: probes were not in flight together"


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float = 20.0) -> list[str]:
    """Lines of ``process``'s stdout up to the first starting with ``marker``."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no line starting with {marker!r} in: {lines}")


def test_ctrl_c_stops_traceroute_at_once_and_keeps_the_rows(network: Network) -> None:
    process = start_tool(network, "traceroute", "-w", "20", "-m", "10", BLACKHOLE4)
    try:
        head = _read_until(process, " 2 ")
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert time.monotonic() - interrupted < 5  # not the 20 s wait of the probes in flight
    assert process.returncode == 130, errors
    assert head[0].startswith(f"traceroute to {BLACKHOLE4} ({BLACKHOLE4}), 10 hops max")
    assert head[1].split()[1] == EDGE_HOP4 and head[2].split()[1] == CONNECTOR4
    assert "Traceback" not in errors, errors


def test_ctrl_c_stops_the_report_and_prints_the_table(network: Network) -> None:
    process = start_tool(network, "traceroute", "--report", "-c", "100", "-w", "1", "-m", "4", BLACKHOLE4)
    try:
        time.sleep(4)  # start-up, the connection, and a few 1 s rounds
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, errors = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert time.monotonic() - interrupted < 5
    assert process.returncode == 130, out + errors
    rows = [line.split() for line in out.splitlines() if ".|--" in line]
    assert [row[1] for row in rows] == [EDGE_HOP4, CONNECTOR4, "???", "???"], out
    sent = int(rows[0][3])
    assert 1 <= sent < 100 and rows[0][2] == "0.0%" and rows[2][2] == "100.0%", out


def test_json_report_as_mtr_json(network: Network) -> None:
    result = tool(network, "traceroute", "--json", "-c", "2", "-w", "2", TARGET4)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)["report"]
    assert [hub["host"] for hub in report["hubs"]] == [EDGE_HOP4, CONNECTOR4, ROUTER4, TARGET4]
    assert [hub["count"] for hub in report["hubs"]] == [1, 2, 3, 4]
    assert all(hub["Snt"] == 2 and hub["Loss%"] == 0.0 for hub in report["hubs"]), report
    assert all(0 < hub["Best"] <= hub["Avg"] <= hub["Wrst"] for hub in report["hubs"]), report
    assert report["mtr"]["dst"] == TARGET4 and report["mtr"]["tests"] == 2
    # The key names are mtr's own: ask the system's mtr (on loopback) for its JSON.
    mtr = subprocess.run(["mtr", "--json", "-n", "-c", "1", "127.0.0.1"], capture_output=True, text=True,
                         timeout=30, check=True)
    theirs = json.loads(mtr.stdout)["report"]
    assert set(report) == set(theirs) and set(report["mtr"]) == set(theirs["mtr"])
    assert list(report["hubs"][0]) == list(theirs["hubs"][0])


def test_resolver_resolves_through_the_tunnel(network: Network) -> None:
    """hello.fastproxy.test is unknown on the user's machine; the DNS server behind the
    connector (tests/dns_responder.py on the target) knows it."""
    result = tool(network, "ping", "-c", "1", "hello.fastproxy.test")
    assert result.returncode == 2 and "hello.fastproxy.test: Name or service not known" in result.stderr
    assert "resolved on this machine" in result.stderr
    for family, address in (("-4", NAMED4), ("-6", NAMED6)):
        result = tool(network, "ping", family, "--resolver", TARGET4, "-c", "2", "-i", "0.2", "hello.fastproxy.test")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"PING hello.fastproxy.test ({address}) 56"), result.stdout
        assert "2 packets transmitted, 2 received" in result.stdout
    result = tool(network, "traceroute", "--resolver", f"[{TARGET6}]", "-q", "1", "-w", "2", "hello.fastproxy.test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"traceroute to hello.fastproxy.test ({NAMED4}),")
    assert _rows(result.stdout)[-1][1] == NAMED4
    result = tool(network, "ping", "--resolver", TARGET4, "-c", "1", "nothere.fastproxy.test")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fastproxy ping: nothere.fastproxy.test: Name or service not known "
                                      f"(asked the resolver {TARGET4} through the tunnel)")
    result = tool(network, "ping", "--resolver", BLACKHOLE4, "-c", "1", "hello.fastproxy.test")
    assert result.returncode == 2
    assert f"resolver {BLACKHOLE4}: no answer for hello.fastproxy.test" in result.stderr, result.stderr
