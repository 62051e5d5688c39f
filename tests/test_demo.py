"""``fastproxy demo``: as root, as the unprivileged user nobody, and where nobody may
open neither ping nor raw sockets. Each run is inside a network namespace of its own,
so its ping_group_range setting touches nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_root
from .netns import Topology

pytestmark = pytest.mark.privileged

SRC = str(Path(__file__).resolve().parent.parent / "src")

# The real command as root with --user nobody, watched: every module loaded after the drop to
# nobody is reported on stderr, since nobody may not be able to read it where fastproxy or
# Python is installed (a checkout in /root, a pyenv Python). Nothing may be.
AS_NOBODY = """
import os, sys
late = []
def watch(event, args):
    if event == "import" and args[0] not in sys.modules and os.getuid() != 0:
        late.append(args[0])
sys.addaudithook(watch)
from fastproxy.cli import main
status = main(["demo", "--user", "nobody"])
print(f"uid {os.getuid()} gid {os.getgid()} groups {os.getgroups()}; loaded after the drop: {late}", file=sys.stderr)
sys.exit(status)
"""
NOBODY_EPILOGUE = "uid 65534 gid 65534 groups []; loaded after the drop: []\n"


def run_in_namespace(ping_group_range: str, *command: str) -> subprocess.CompletedProcess[str]:
    with Topology(links=[], nodes=["demo"]) as topo:
        topo.sysctl("demo", "net.ipv4.ping_group_range", ping_group_range)
        return topo.run("demo", *command, check=False, timeout=120, env={**os.environ, "PYTHONPATH": SRC})


def test_demo_as_root_exits_0() -> None:
    require_root("runs the demo in a namespace of its own")
    result = run_in_namespace("1 0", sys.executable, "-m", "fastproxy", "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "client  ==QUIC==>  edge  <==QUIC==  connector  -->  127.0.0.1" in text
    assert "3 packets transmitted, 3 received, 0% packet loss" in text
    hops = [line.split() for line in text.splitlines() if line.startswith("     ") and "ms" in line]
    assert [hop[1] for hop in hops] == ["100.96.0.1", "127.0.0.1", "127.0.0.1"]  # edge, connector, target
    assert text.count("got back") == 3
    assert 'fastproxy_routed_total{kind="icmp_to_connector"}' in text
    assert "fastproxy_client_rtt_seconds_count 6" in text
    assert "Result: all 3 steps worked." in text
    assert result.stderr == ""


def test_demo_as_nobody_with_ping_sockets_exits_0() -> None:
    require_root("switches to nobody and sets ping_group_range in its own namespace")
    result = run_in_namespace("0 2147483647", sys.executable, "-c", AS_NOBODY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("=> ok:") == 3
    assert result.stderr == NOBODY_EPILOGUE


def test_demo_without_icmp_names_the_sysctl_and_still_runs_udp() -> None:
    require_root("switches to nobody and sets ping_group_range in its own namespace")
    result = run_in_namespace("1 0", sys.executable, "-c", AS_NOBODY)
    assert result.returncode == 1, result.stdout + result.stderr
    text = result.stdout
    assert "=> FAILED: ping through the tunnel" in text
    assert "=> FAILED: traceroute through the tunnel" in text
    assert "=> ok: UDP echo through the tunnel" in text
    assert "sysctl -w net.ipv4.ping_group_range=" in text
    assert "Result: 2 of 3 steps failed" in text
    assert result.stderr == NOBODY_EPILOGUE


def test_demo_user_needs_root_and_a_real_user() -> None:
    """--user says what is wrong instead of failing half-way."""
    require_root("runs the demo as nobody")
    env = {**os.environ, "PYTHONPATH": SRC}
    # Loaded as root, then nobody (the interpreter may live where nobody cannot run it from).
    as_nobody = subprocess.run([sys.executable, "-c", "import os, fastproxy.demo; from fastproxy.cli import main\n"
                                "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                                "raise SystemExit(main(['demo', '--user', 'nobody']))"],
                               capture_output=True, text=True, timeout=60, env=env)
    assert as_nobody.returncode == 2, as_nobody.stdout + as_nobody.stderr
    assert "--user nobody needs root" in as_nobody.stderr
    unknown = subprocess.run([sys.executable, "-m", "fastproxy", "demo", "--user", "no-such-user-fp"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert unknown.returncode == 2 and "no such user: 'no-such-user-fp'" in unknown.stderr, unknown.stderr
