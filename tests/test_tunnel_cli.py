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
        assert 'fastproxy_drops_total{component="icmp",reason="destination_not_allowed"} 0.0' in text
        connector.terminate()
        assert connector.wait(30) == 0, (tmp_path / "connector.log").read_text()
        edge.terminate()
        assert edge.wait(30) == 0
    finally:
        for proc in (connector, edge):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
