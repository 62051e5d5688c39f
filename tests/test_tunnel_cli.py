"""``fastproxy edge`` and ``fastproxy connector`` as real processes on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastproxy.config import parse_host_port
from fastproxy.tunnel.commands import resolve_tokens
from tests.conftest import require_root
from tests.tunnel_support import free_udp_port

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:4433") == ("127.0.0.1", 4433)
    assert parse_host_port("[::1]:4433") == ("::1", 4433)
    assert parse_host_port("edge.example:1") == ("edge.example", 1)
    for bad in ("4433", ":4433", "host:", "host:70000", "host:x"):
        with pytest.raises(Exception):
            parse_host_port(bad)


def test_tokens_from_environment_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_TEST_TOKEN", "from-env")
    token_file = tmp_path / "tokens"
    token_file.write_text("# comment\nfirst\n\nsecond\n")
    assert resolve_tokens(["plain", "env:FP_TEST_TOKEN", f"@{token_file}"]) == ["plain", "from-env", "first", "second"]
    with pytest.raises(ValueError):
        resolve_tokens(["env:FP_TEST_UNSET_VARIABLE"])
    with pytest.raises(ValueError):
        resolve_tokens([""])


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 10.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in: {''.join(seen)}")


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _curl(port: int) -> str:
    """GET /metrics with curl, as an operator would."""
    result = subprocess.run(["curl", "-sS", "--fail", f"http://127.0.0.1:{port}/metrics"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _assert_every_family_has_samples(text: str) -> None:
    """No HELP/TYPE lines about a family without a sample."""
    samples = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and line[0] != "#"}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names = {name, f"{name}_total"} | ({f"{name}_bucket"} if kind == "histogram" else set())
            assert names & samples, f"{name} has HELP/TYPE but no sample:\n{text}"


@pytest.mark.privileged
def test_edge_and_connector_processes_with_metrics(tmp_path: Path) -> None:
    require_root("the connector's raw-socket ICMP backend")
    port = free_udp_port()
    edge_metrics, connector_metrics = _free_tcp_port(), _free_tcp_port()
    env = dict(os.environ, PYTHONPATH=SRC, FP_CONNECTOR_TOKEN="k-secret")
    edge = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "edge", "--listen", f"127.0.0.1:{port}",
         "--client-token", "c-secret", "--connector-token", "env:FP_CONNECTOR_TOKEN",
         "--metrics", f"127.0.0.1:{edge_metrics}", "--state-dir", str(tmp_path / "state")],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    connector = None
    try:
        pin = _wait_for_line(edge, r"--pin ([0-9a-f:]{95})").group(1)
        _wait_for_line(edge, "edge listening")
        connector = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "connector", "--edge", f"127.0.0.1:{port}",
             "--token", "env:FP_CONNECTOR_TOKEN", "--route", "127.0.0.0/8", "--pin", pin,
             "--backend", "raw", "--metrics", f"127.0.0.1:{connector_metrics}"],
            stderr=(tmp_path / "connector.log").open("w"), text=True, env=env,
        )
        _wait_for_line(edge, r"connector \d+ from .* serves 127\.0\.0\.0/8")
        text = _scrape(edge_metrics)
        assert 'fastproxy_connections_active{role="connector"} 1.0' in text
        assert 'fastproxy_connections_total{role="connector"} 1.0' in text
        deadline = time.monotonic() + 10
        while True:  # the connector's endpoint comes up right after its first welcome
            try:
                text = _scrape(connector_metrics)
                if 'fastproxy_connections_active{role="edge"} 1.0' in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "connector.log").read_text()
            time.sleep(0.1)
        assert "fastproxy_icmp_flows_active 0.0" in text
        # A client whose ping no connector serves: the built-in ping waits a few seconds for
        # a route (a connector may be coming up), then says what the edge allows (exit 2).
        # The edge's Destination Net Unreachable for what reaches it unrouted is checked
        # through the TUN device in test_client_answers_e2e.py.
        ping = subprocess.run(
            [sys.executable, "-m", "fastproxy", "ping", "--edge", f"127.0.0.1:{port}", "--token", "c-secret",
             "--pin", pin, "-c", "1", "192.0.2.1"], capture_output=True, text=True, env=env, timeout=30)
        assert ping.returncode == 2, ping.stdout + ping.stderr
        assert "no route to 192.0.2.1 through the tunnel" in ping.stderr and "127.0.0.0/8" in ping.stderr
        edge_text = _curl(edge_metrics)
        assert 'fastproxy_connections_total{role="client"} 1.0' in edge_text
        for role, scraped, port_ in (("edge", edge_text, edge_metrics), ("connector", text, connector_metrics)):
            _assert_every_family_has_samples(scraped)
            # Drop reasons the same way in both roles: those that happened, none declared at 0.
            assert not re.search(r"^fastproxy_drops_total\{.*\} 0\.0$", scraped, re.M), (role, scraped)
            head = subprocess.run(["curl", "-sS", "-I", f"http://127.0.0.1:{port_}/metrics"],
                                  capture_output=True, text=True, timeout=10)
            assert head.returncode == 0 and head.stdout.startswith("HTTP/1.1 200 OK"), (role, head.stdout + head.stderr)
            assert "Content-Type: text/plain; version=0.0.4" in head.stdout
        connector.terminate()
        assert connector.wait(30) == 0, (tmp_path / "connector.log").read_text()
        edge.terminate()
        assert edge.wait(30) == 0
    finally:
        for proc in (connector, edge):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_edge_json_log_lines_carry_structured_fields(tmp_path: Path) -> None:
    """Admit, disconnect and reject of real clients, logged by a real edge as JSON: event,
    peer (printed as 127.0.0.1:PORT), role, client id and reason are keys; a normal
    disconnect is INFO, and qh3's WARNING naming its native close tuple is gone."""
    import json

    port = free_udp_port()
    env = dict(os.environ, PYTHONPATH=SRC)
    log_path = tmp_path / "edge.log"
    edge = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "edge", "--listen", f"127.0.0.1:{port}", "--log-format", "json",
         "--client-token", "c-secret-0123456789", "--connector-token", "k-secret-0123456789"],
        stderr=log_path.open("w"), text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 10
        while "edge listening" not in log_path.read_text():
            assert time.monotonic() < deadline and edge.poll() is None, log_path.read_text()
            time.sleep(0.05)
        pin = re.search(r"--pin ([0-9a-f:]{95})", log_path.read_text()).group(1)  # type: ignore[union-attr]
        for token in ("c-secret-0123456789", "wrong-0123456789"):
            subprocess.run([sys.executable, "-m", "fastproxy", "ping", "--edge", f"127.0.0.1:{port}", "--token", token,
                            "--pin", pin, "-c", "1", "192.0.2.1"], capture_output=True, env=env, timeout=30)
        deadline = time.monotonic() + 10
        while '"reject"' not in log_path.read_text() or '"disconnect"' not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        edge.terminate()
        edge.wait(30)
    text = log_path.read_text()
    assert "Native peer close" not in text and "('127.0.0.1'" not in text, text
    records = {r.get("event"): r for r in map(json.loads, text.splitlines())}
    admit, gone, reject = records["admit"], records["disconnect"], records["reject"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", admit["peer"]) and admit["role"] == "client"
    assert admit["client_id"] == gone["client_id"] and gone["peer"] == admit["peer"]
    assert gone["level"] == "info" and gone["reason"] == "client closing" and gone["role"] == "client"
    assert reject["level"] == "warning" and reject["reason"] == "authentication failed: bad token"
    assert f"from {admit['peer']} admitted" in admit["message"]


@pytest.mark.parametrize(("address", "text"), [
    (("127.0.0.1", 49026), "127.0.0.1:49026"), (("::1", 49026, 0, 0), "[::1]:49026"),
    (("::ffff:127.0.0.1", 5), "127.0.0.1:5"), ("unix", "unix"),
])
def test_addresses_print_as_people_write_them(address: object, text: str) -> None:
    from fastproxy.logs import format_address

    assert format_address(address) == text
