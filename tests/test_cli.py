"""The command line: help texts and the self-check that `make run` shows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "selfcheck" in result.stdout


@pytest.mark.privileged
@pytest.mark.parametrize("twin", ["0", "1"])
def test_selfcheck_passes_every_step(twin: str) -> None:
    from .conftest import require_root

    require_root("the self-check's loopback echo needs ping or raw sockets")
    result = run("selfcheck", FASTPROXY_NO_EXTENSIONS=twin)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert ("compiled" in lines[0]) == (twin == "0")
    steps = [line for line in lines if line.startswith("  ")]
    assert len(steps) == 7 and all(line.startswith("  ok") for line in steps), result.stdout
    assert "self-check passed" in lines[-1]


@pytest.mark.privileged
def test_selfcheck_reports_failure_with_nonzero_exit() -> None:
    """As an unprivileged user with ping sockets disallowed, the loopback steps fail, the
    message names the sysctl to set, and the exit status is 1."""
    from .conftest import require_root

    require_root("switches to an unprivileged user and sets net.ipv4.ping_group_range")
    path = "/proc/sys/net/ipv4/ping_group_range"
    with open(path) as f:
        saved = f.read()
    # Import everything first (the interpreter lives where nobody may not read), then drop.
    code = (
        "import os, sys; from fastproxy.selfcheck import run_selfcheck; "
        "os.setgroups([]); os.setgid(65534); os.setuid(65534); sys.exit(run_selfcheck(sys.stdout))"
    )
    try:
        with open(path, "w") as f:
            f.write("1 0")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        with open(path, "w") as f:
            f.write(saved)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  loopback echo IPv4" in result.stdout
    assert "ping_group_range" in result.stdout
    assert "ok    source NAT" in result.stdout
