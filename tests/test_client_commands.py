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


NO_EDGE = ["--edge", "127.0.0.1:9", "--token", "t", "--insecure"]  # flags are checked before any dial


@pytest.mark.parametrize("flags", [
    ["-c", "0"], ["-c", "-1"], ["-c", "abc"], ["-c", "1.5"], ["-s", "-1"], ["-s", "abc"], ["-t", "256"],
    ["-t", "0"], ["-W", "-1"], ["-W", "abc"], ["-w", "-1"], ["-w", "abc"], ["-i", "abc"], ["-i", "99999999"],
    ["-p", "zz"], ["-4", "-6"], ["-4", "::1"], ["-6", "127.0.0.1"],
])
def test_ping_flag_errors_are_iputils_own(flags: list[str]) -> None:
    """The same flags given to the system's ping (iputils) and to ours: the same message,
    prefixed with the command; exit status 2."""
    import shutil

    if shutil.which("ping") is None:
        pytest.skip("the system's ping (iputils-ping) is not installed")
    host = [] if flags[-1] in ("::1", "127.0.0.1") else ["127.0.0.1"]
    # iputils only warns about garbage in -i and -W ("will become fatal"), then pings: once, to loopback.
    once = ["-c", "1"] if flags[0] in ("-i", "-W") and flags[1] == "abc" else []
    theirs = subprocess.run(["ping", *once, *flags, *host], capture_output=True, text=True, timeout=10)
    assert theirs.stderr.startswith("ping: "), theirs
    expected = "fastproxy " + theirs.stderr.splitlines()[0]
    ours = fastproxy("ping", *NO_EDGE, *flags, *host)
    assert ours.returncode == 2
    assert ours.stderr.strip() == expected
    assert ours.stdout == ""


def test_traceroute_count_needs_report_and_flag_errors() -> None:
    result = fastproxy("traceroute", *NO_EDGE, "-c", "5", "127.0.0.1")
    assert result.returncode == 2
    assert result.stderr.startswith("fastproxy traceroute: -c COUNT is the number of rounds of --report (or --json)")
    result = fastproxy("traceroute", *NO_EDGE, "-f", "9", "-m", "4", "127.0.0.1")
    assert result.returncode == 2
    assert result.stderr.startswith("fastproxy traceroute: -f 9: first hop out of range")
    result = fastproxy("traceroute", *NO_EDGE, "--resolver", "dns.example", "db.example")
    assert result.returncode == 2
    assert result.stderr.startswith("fastproxy traceroute: --resolver dns.example: not an IP address")


@pytest.mark.parametrize("command", ["ping", "traceroute"])
def test_every_tool_option_has_help(command: str) -> None:
    from fastproxy.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    tool = commands.choices[command]  # type: ignore[index]
    undocumented = [a.option_strings or a.dest for a in tool._actions if not a.help]
    assert undocumented == []
    text = fastproxy(command, "--help").stdout
    assert "resolved on this machine" in text and "--resolver IP" in text
    if command == "traceroute":
        assert "the most hops (largest TTL) to probe" in text
        for flag in ("-n ", "-I ", "-N SQUERIES", "-p PORT", "--json"):
            assert flag in text


@pytest.mark.parametrize("command", ["traceroute", "ping"])
def test_ctrl_c_while_dialling_stops_at_once(command: str) -> None:
    """An edge that does not answer: Ctrl-C ends the tool at once (130), not after the
    10 s connect timeout, and with no traceback."""
    import signal
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        process = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", command, "--edge", f"127.0.0.1:{silent.getsockname()[1]}",
             "--token", "t", "--insecure", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
        try:
            time.sleep(2.5)  # Python start-up, then dialling
            assert process.poll() is None, process.communicate()
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            out, errors = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert time.monotonic() - interrupted < 3
    assert process.returncode == 130, out + errors
    assert "Traceback" not in errors and "never retrieved" not in errors, errors
