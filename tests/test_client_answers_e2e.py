"""Answers instead of silence, end to end (privileged): user host (TUN client) — edge —
connector — target, each in a namespace this test builds, the real three processes and the
system's own ping and traceroute -I.

The edge lets the client reach 203.0.113.0/24 and 2001:db8:4::/48, wider than the
connector serves (203.0.113.128/25, 2001:db8:4::/64). The client routes what is announced
within its policy; routes added by hand into the device for the rest of the policy
(203.0.113.0/25, 2001:db8:4:1::/64) make "no route", and for a prefix outside the policy
(198.51.100.128/25, 2001:db8:99::/64) "policy denied". The user's namespace has no default route, and the edge answers those
packets itself, so nothing leaves these namespaces.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Link, Route, Topology
from .test_client_e2e import fastproxy, wait_until

pytestmark = pytest.mark.privileged

TARGET4, TARGET6 = "203.0.113.130", "2001:db8:4::2"
UNSERVED4, UNSERVED6 = "203.0.113.100", "2001:db8:4:1::1"
DENIED4, DENIED6 = "198.51.100.200", "2001:db8:99::1"

Network = tuple[Topology, str, str]
"""The topology, a directory with the logs, the edge's pin."""


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    require_root("builds namespaces, runs a TUN client")
    from fastproxy.tunnel.certs import generate_self_signed

    workdir = tempfile.mkdtemp(prefix="fastproxy-answers-e2e-")
    cert = generate_self_signed(workdir)
    topo = Topology(
        links=[
            Link("user", "edge", ["192.0.2.1/24", "2001:db8:1::1/64"], ["192.0.2.2/24", "2001:db8:1::2/64"]),
            Link("edge", "conn", ["198.51.100.1/25", "2001:db8:2::1/64"], ["198.51.100.2/25", "2001:db8:2::2/64"]),
            Link("conn", "target", ["203.0.113.129/25", "2001:db8:4::1/64"], [f"{TARGET4}/25", f"{TARGET6}/64"]),
        ],
        routes=[Route("target", "default", "203.0.113.129"), Route("target", "default", "2001:db8:4::1")],
    )
    processes: list[subprocess.Popen[bytes]] = []
    with topo:
        try:
            processes.append(fastproxy(
                topo, "edge", "edge", "--listen", "[::]:4433", "--cert", cert.cert_file, "--key", cert.key_file,
                "--client-token", "client-1-0123456789", "--connector-token", "connector-1-0123456789",
                "--client-allow", "203.0.113.0/24", "--client-allow", "2001:db8:4::/48",
                "--metrics", "127.0.0.1:9464", log=f"{workdir}/edge.log"))
            processes.append(fastproxy(
                topo, "conn", "connector", "--edge", "198.51.100.1:4433", "--token", "connector-1-0123456789",
                "--route", "203.0.113.128/25", "--route", "2001:db8:4::/64", "--pin", cert.fingerprint,
                log=f"{workdir}/connector.log"))
            assert wait_until(lambda: "connected to the edge" in Path(f"{workdir}/connector.log").read_text()), \
                Path(f"{workdir}/connector.log").read_text()
            processes.append(fastproxy(
                topo, "user", "client", "--edge", "192.0.2.2:4433", "--token", "client-1-0123456789",
                "--pin", cert.fingerprint, "--tun", "fp0", log=f"{workdir}/client.log"))
            # The client routes what is announced within its policy (the connector's prefixes).
            assert wait_until(lambda: "203.0.113.128/25" in topo.run("user", "ip", "route", check=False).stdout), \
                Path(f"{workdir}/client.log").read_text()
            assert wait_until(lambda: "2001:db8:4::/64" in topo.run("user", "ip", "-6", "route", check=False).stdout)
            # By hand: inside the policy but served by no connector ("no route") ...
            topo.run("user", "ip", "route", "add", "203.0.113.0/25", "dev", "fp0")
            topo.run("user", "ip", "-6", "route", "add", "2001:db8:4:1::/64", "dev", "fp0")
            # ... and outside the policy ("policy denied").
            topo.run("user", "ip", "route", "add", "198.51.100.128/25", "dev", "fp0")
            topo.run("user", "ip", "-6", "route", "add", "2001:db8:99::/64", "dev", "fp0")
            assert "default" not in topo.run("user", "ip", "route").stdout + topo.run("user", "ip", "-6", "route").stdout
            yield topo, workdir, cert.fingerprint
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


@pytest.mark.parametrize(("target", "says"), [
    (UNSERVED4, "From 100.96.0.1 icmp_seq=1 Destination Net Unreachable"),
    (UNSERVED6, "From fd00:fa57::1 icmp_seq=1 Destination unreachable: No route"),
    (DENIED4, "From 100.96.0.1 icmp_seq=1 Packet filtered"),
    (DENIED6, "From fd00:fa57::1 icmp_seq=1 Destination unreachable: Administratively prohibited"),
])
def test_system_ping_is_told_why(network: Network, target: str, says: str) -> None:
    topo, *_ = network
    result = topo.run("user", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", target, check=False)
    assert says in result.stdout, result.stdout + result.stderr
    assert "2 packets transmitted, 0 received, +2 errors, 100% packet loss" in result.stdout, result.stdout


@pytest.mark.parametrize(("target", "mark"), [
    (UNSERVED4, "!N"), (UNSERVED6, "!N"), (DENIED4, "!X"), (DENIED6, "!X"),
])
def test_system_traceroute_shows_the_edge_and_the_mark(network: Network, target: str, mark: str) -> None:
    topo, *_ = network
    result = topo.run("user", "traceroute", "-I", "-n", "-q", "1", "-w", "2", "-m", "5", target, check=False)
    rows = result.stdout.splitlines()[1:]
    # The edge answers at the first hop and traceroute stops there, instead of 5 rows of "*".
    assert len(rows) == 1, result.stdout + result.stderr
    assert rows[0].split()[1] == ("100.96.0.1" if ":" not in target else "fd00:fa57::1"), result.stdout
    assert rows[0].split()[-1] == mark, result.stdout


def test_ping_too_big_for_the_tunnel_is_told_the_mtu(network: Network) -> None:
    """``ping -s 1400`` through a device of MTU 1280: the kernel fragments it; the bridge
    reassembles, finds 1428 bytes too big for the tunnel and answers Fragmentation Needed
    with the tunnel's MTU. With DF (``-M do``) the kernel refuses it itself, naming the MTU."""
    topo, workdir, _ = network
    fragmented = topo.run("user", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", "1400", TARGET4, check=False)
    assert "Frag needed and DF set (mtu = 1280)" in fragmented.stdout, fragmented.stdout + fragmented.stderr
    dont_fragment = topo.run("user", "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", TARGET4, check=False)
    assert "mtu=1280" in (dont_fragment.stdout + dont_fragment.stderr).replace(" ", ""), dont_fragment.stderr
    # What fits still goes: 1252 bytes of data make a 1280-byte packet.
    fits = topo.run("user", "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1252", TARGET4, check=False)
    assert "1 received" in fits.stdout, fits.stdout + fits.stderr
    log = Path(f"{workdir}/client.log").read_text()
    assert log.count(f"dropping a 1428-byte packet from 100.96.0.2 to {TARGET4}") == 1, log


def test_ping6_too_big_for_the_tunnel_is_told_the_mtu(network: Network) -> None:
    """IPv6 sources fragment themselves: the bridge reassembles 1448 bytes and answers
    Packet Too Big (mtu 1280); 1232 bytes of data (a 1280-byte packet) still go."""
    topo, *_ = network
    fragmented = topo.run("user", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", "1400", TARGET6, check=False)
    assert "Packet too big: mtu=1280" in fragmented.stdout, fragmented.stdout + fragmented.stderr
    fits = topo.run("user", "ping", "-n", "-c", "1", "-W", "2", "-s", "1232", TARGET6, check=False)
    assert "1 received" in fits.stdout, fits.stdout + fits.stderr


def _forward(topo: Topology, workdir: str, pin: str, remote: str, name: str) -> tuple[subprocess.Popen[bytes], str]:
    log = f"{workdir}/{name}.log"
    process = fastproxy(topo, "user", "forward-udp", "--edge", "192.0.2.2:4433", "--token", "client-1-0123456789",
                        "--pin", pin, "--log-format", "json", "--metrics", "127.0.0.1:9470",
                        f"127.0.0.1:5300={remote}:53", log=log)
    assert wait_until(lambda: "forwarding udp" in Path(log).read_text()), Path(log).read_text()
    return process, log


SEND = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "[s.sendto(b'x' * int(n), ('127.0.0.1', 5300)) for n in sys.argv[1:]]")


def test_forward_udp_oversize_is_counted_and_logged_and_unserved_is_refused(network: Network) -> None:
    topo, workdir, pin = network
    process, log = _forward(topo, workdir, pin, TARGET4, "forward")
    try:
        topo.run("user", sys.executable, "-c", SEND, "1300", "3000", "2000")
        assert wait_until(lambda: "udp_payload_too_large" in Path(log).read_text()), Path(log).read_text()
        scrape = topo.run("user", "curl", "-sS", "http://127.0.0.1:9470/metrics").stdout
        assert 'fastproxy_drops_total{component="client",reason="forward_payload_too_large"} 3.0' in scrape, scrape
        lines = [json.loads(line) for line in Path(log).read_text().splitlines() if line.startswith("{")]
        told = [line for line in lines if line.get("event") == "udp_payload_too_large"]
        assert len(told) == 1 and told[0]["size"] == 1300 and told[0]["peer"].startswith("127.0.0.1:"), told
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    process, log = _forward(topo, workdir, pin, UNSERVED4, "forward-unserved")
    try:
        topo.run("user", sys.executable, "-c", SEND, "10")
        # Refused by the edge at once, and the log says why (not a timeout after 5 s).
        assert wait_until(lambda: "udp_session_refused" in Path(log).read_text(), timeout=3), Path(log).read_text()
        refused = [json.loads(line) for line in Path(log).read_text().splitlines()
                   if '"udp_session_refused"' in line][0]
        assert (f"UDP session to {UNSERVED4}:53 refused: destination unreachable "
                f"(no connector serves {UNSERVED4})") in refused["message"], refused
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def test_edge_metrics_count_the_answers(network: Network) -> None:
    topo, workdir, _ = network
    edge_log = Path(f"{workdir}/edge.log").read_text()
    # Addresses print as people write them, IPv6 in brackets; a normal disconnect is INFO.
    assert "edge listening on [::]:4433" in edge_log and "metrics at http://127.0.0.1:9464/metrics" in edge_log
    assert "Native peer close" not in edge_log and "WARNING" not in edge_log, edge_log
    topo.run("user", "ping", "-n", "-c", "1", "-W", "2", UNSERVED4, check=False)
    scrape = topo.run("edge", "curl", "-sS", "http://127.0.0.1:9464/metrics").stdout
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in scrape.splitlines() if line.startswith("fastproxy_")}
    assert values['fastproxy_routed_total{kind="icmp_unreachable_no_route"}'] >= 1
    assert values['fastproxy_drops_total{component="edge",reason="no_route"}'] >= 1
    head = topo.run("edge", "curl", "-sS", "-I", "http://127.0.0.1:9464/metrics").stdout
    assert head.startswith("HTTP/1.1 200 OK"), head




# A UDP client that asks for ICMP errors (IP_RECVERR, as traceroute -U and many resolvers
# do; without it Linux reports only "hard" errors such as port unreachable to a socket).
RECVERR = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.settimeout(3)
s.connect((sys.argv[1], 53))
s.send(b"query")
try:
    s.recv(512)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno) if exc.errno else "timeout")
"""


def test_udp_through_the_tun_to_an_unserved_address_fails_at_once(network: Network) -> None:
    """The edge refuses the session (0x01); the bridge answers the program's first packet
    with Destination Unreachable (net unreachable): its socket gets ENETUNREACH, not silence."""
    topo, *_ = network
    result = topo.run("user", sys.executable, "-c", RECVERR, UNSERVED4, timeout=20)
    assert result.stdout.strip() == "ENETUNREACH", result.stdout + result.stderr
