"""``fastproxy edge`` and ``fastproxy connector`` as real processes on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastproxy.tunnel.commands import parse_host_port, resolve_tokens
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


def test_edge_and_connector_processes(tmp_path: Path) -> None:
    port = free_udp_port()
    env = dict(os.environ, PYTHONPATH=SRC, FP_CONNECTOR_TOKEN="k-secret")
    edge = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "edge", "--listen", f"127.0.0.1:{port}",
         "--client-token", "c-secret", "--connector-token", "env:FP_CONNECTOR_TOKEN"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    connector = None
    try:
        pin = _wait_for_line(edge, r"--pin ([0-9a-f:]{95})").group(1)
        _wait_for_line(edge, "edge listening")
        connector = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "connector", "--edge", f"127.0.0.1:{port}",
             "--token", "env:FP_CONNECTOR_TOKEN", "--route", "127.0.0.0/8", "--pin", pin],
            stderr=(tmp_path / "connector.log").open("w"), text=True, env=env,
        )
        _wait_for_line(edge, r"connector \d+ from .* serves 127\.0\.0\.0/8")
        connector.terminate()
        assert connector.wait(30) == 0, (tmp_path / "connector.log").read_text()
        edge.terminate()
        assert edge.wait(30) == 0
    finally:
        for proc in (connector, edge):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
