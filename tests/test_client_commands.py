"""The user-side commands' CLI: help with examples, config errors, exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")


def fastproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": SRC})


@pytest.mark.parametrize("command", ["client", "ping", "traceroute", "forward-udp", "demo"])
def test_help_has_examples(command: str) -> None:
    result = fastproxy(command, "--help")
    assert result.returncode == 0
    assert "example" in result.stdout and f"fastproxy {command}" in result.stdout


def test_top_level_help_lists_user_commands() -> None:
    text = fastproxy("--help").stdout
    for command in ("client", "ping", "traceroute", "forward-udp", "demo"):
        assert command in text


def test_config_error_names_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "fastproxy.toml"
    config.write_text('[client]\nedge = "127.0.0.1:4433"\ntokn = "x"\n')
    result = fastproxy("ping", "--config", str(config), "127.0.0.1")
    assert result.returncode == 2
    assert f"fastproxy ping: {config}: [client] unknown key 'tokn' (did you mean 'token'?)" in result.stderr


def test_missing_settings_exit_2() -> None:
    result = fastproxy("traceroute", "127.0.0.1")
    assert result.returncode == 2
    assert "--edge is required" in result.stderr
    result = fastproxy("ping", "--edge", "127.0.0.1:9", "--token", "t", "127.0.0.1")
    assert result.returncode == 2
    assert "exactly one of --ca, --pin, --insecure is needed" in result.stderr


def test_unreachable_edge_exits_2() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody answers on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = fastproxy("ping", "--edge", f"127.0.0.1:{port}", "--token", "t", "--insecure", "-c", "1", "127.0.0.1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"fastproxy ping: edge 127.0.0.1:{port}:" in result.stderr


def test_bad_forward_mapping_exit_2() -> None:
    result = fastproxy("forward-udp", "--edge", "127.0.0.1:9", "--token", "t", "--insecure", "127.0.0.1:53")
    assert result.returncode == 2
    assert "expected LOCAL_ADDR:PORT=REMOTE_ADDR:PORT" in result.stderr
