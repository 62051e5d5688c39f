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


def test_version_prints_the_package_version() -> None:
    import fastproxy

    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fastproxy {fastproxy.__version__}"


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
    """Without raw sockets and with ping sockets disallowed, the loopback steps fail, the
    message names the sysctl to set, the other steps still run, and the exit status is 1."""
    from .conftest import require_root

    require_root("drops CAP_NET_RAW and sets net.ipv4.ping_group_range")
    # Root without CAP_NET_RAW (dropped from the bounding set) and outside
    # ping_group_range is a user who may open neither raw nor ping sockets.
    # ping_group_range is per network namespace: set it in a namespace of the
    # self-check's own, so the host's setting is never touched (not even briefly).
    disallow = 'echo "1 0" > /proc/sys/net/ipv4/ping_group_range && exec "$@"'
    command = ["unshare", "--net", "sh", "-c", disallow, "sh",
               "setpriv", "--bounding-set=-net_raw", "--", sys.executable, "-m", "fastproxy", "selfcheck"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  loopback echo IPv4" in result.stdout
    assert "ping_group_range" in result.stdout
    assert "ok    source NAT" in result.stdout
