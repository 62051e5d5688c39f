"""The TUN device (privileged): made inside a namespace this test creates, so nothing is
left on the host even when a step fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy.client.tun import TX_QUEUE_LENGTH

from .conftest import require_root
from .netns import Topology

pytestmark = pytest.mark.privileged

SRC = str(Path(__file__).resolve().parent.parent / "src")

# Runs inside the namespace: make a device, let the system's ping send through it,
# answer the echo request by writing a reply to the device, then close it.
WORKER = r"""
import ipaddress, json, select, subprocess, sys, time
from fastproxy.client.tun import TunDevice
from fastproxy.packet import build_echo, parse_packet

def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout

out = {}
tun = TunDevice("fptest%d")
out["name"] = tun.name
tun.configure(["100.96.0.2/32", "fd00:fa57::2/128"],
              routes=[ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:5::/64")])
out["link"] = ip("link", "show", "dev", tun.name)
out["addr"] = ip("addr", "show", "dev", tun.name)
out["routes4"] = ip("-4", "route", "show", "dev", tun.name)
out["routes6"] = ip("-6", "route", "show", "dev", tun.name)
tun.set_addresses(["100.96.0.9/32", "fd00:fa57::2/128"])  # a reconnect that got a new IPv4 address
out["readdressed"] = ip("addr", "show", "dev", tun.name)
tun.set_addresses(["100.96.0.2/32", "fd00:fa57::2/128"])
out["early"] = [p[0] >> 4 for p in tun.read_batch()]  # IPv6 router solicitations and such
for family, target in (("-4", "192.0.2.5"), ("-6", "2001:db8:5::5")):
    ping = subprocess.Popen(["ping", family, "-n", "-c", "1", "-W", "5", target],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    request = None
    deadline = time.monotonic() + 5
    while request is None and time.monotonic() < deadline:
        select.select([tun.fd], [], [], 0.5)
        for packet in tun.read_batch():
            info = parse_packet(packet, verify_checksums=True) if packet[0] >> 4 in (4, 6) else None
            if info is not None and info.icmp_type in (8, 128) and info.protocol in (1, 58):
                request = (packet, info)
                break
    packet, info = request
    out[f"request{family}"] = [ipaddress.ip_address(info.src).compressed, ipaddress.ip_address(info.dst).compressed]
    payload = packet[info.icmp_offset + 8:]
    reply = build_echo(info.dst, info.src, info.echo_id, info.echo_seq, payload, reply=True)
    out[f"written{family}"] = tun.write_batch([reply])
    out[f"ping{family}"] = [ping.wait(10), ping.stdout.read()]
tun.close()
out["after_link"] = subprocess.run(["ip", "link", "show", "dev", out["name"]], capture_output=True).returncode
out["after_routes"] = ip("route", "show") + ip("-6", "route", "show")
print(json.dumps(out))
"""


def test_tun_device_lifecycle_and_packets() -> None:
    require_root("creates a TUN device inside a network namespace")
    with Topology(links=[], nodes=["user"]) as topo:
        result = topo.run("user", sys.executable, "-c", WORKER, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": SRC})
        assert result.returncode == 0, result.stdout + result.stderr
        out = json.loads(result.stdout)
        assert out["name"].startswith("fptest")
        assert "mtu 1280" in out["link"] and ",UP" in out["link"]
        # A deep queue: a client descheduled for a while on a busy host loses no packets.
        assert f"qlen {TX_QUEUE_LENGTH}" in out["link"], out["link"]
        assert "100.96.0.2/32" in out["addr"] and "fd00:fa57::2/128" in out["addr"]
        assert "192.0.2.0/24" in out["routes4"]
        assert "100.96.0.9/32" in out["readdressed"] and "100.96.0.2/" not in out["readdressed"]
        assert "fd00:fa57::2/128" in out["readdressed"]
        assert "2001:db8:5::/64" in out["routes6"]
        assert set(out["early"]) <= {4, 6}
        assert out["request-4"] == ["100.96.0.2", "192.0.2.5"]
        assert out["request-6"] == ["fd00:fa57::2", "2001:db8:5::5"]
        for family in ("-4", "-6"):
            assert out[f"written{family}"] == 1
            status, text = out[f"ping{family}"]
            assert status == 0, text
            assert "1 received" in text
        assert out["after_link"] != 0
        assert "192.0.2.0" not in out["after_routes"] and "2001:db8:5::" not in out["after_routes"]
        # Nothing of it exists on the host.
        assert out["name"] not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


# A /dev/net/tun of the given mode for one child only: a tmpfs over /dev/net in a private mount
# namespace holds a fresh node of the TUN driver (10, 200); the host's node is never touched.
# With mode "none", no node at all (a container without the device).
WITH_TUN_NODE = ("mount -t tmpfs -o mode=0755 fastproxy-test /dev/net && "
                 '{{ [ {mode} = none ] || mknod -m {mode} /dev/net/tun c 10 200; }} && exec "$@"')


@pytest.mark.parametrize(("mode", "failing_step", "advice"), [
    ("0666", "cannot create TUN device 'fptest%d': Operation not permitted", "needs root or CAP_NET_ADMIN"),
    ("0600", "cannot open /dev/net/tun: Permission denied", "needs root or CAP_NET_ADMIN"),
    ("none", "cannot open /dev/net/tun: No such file or directory", "modprobe tun"),
], ids=["0666", "0600", "missing"])
def test_tun_needs_privileges_error_is_clear(mode: str, failing_step: str, advice: str) -> None:
    """Without CAP_NET_ADMIN the error says what is needed (as nobody, in a child), whether the
    device node lets anyone open it (most distributions: the ioctl refuses) or not (the open
    refuses); without the node, it says how to get the driver."""
    require_root("switches to an unprivileged user, makes a device node in a private mount namespace")
    code = (
        "import os, stat, sys; from fastproxy.client.tun import TunDevice, TunError\n"
        "print(oct(stat.S_IMODE(os.stat('/dev/net/tun').st_mode)) if os.path.exists('/dev/net/tun') else 'none')\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "try:\n    TunDevice('fptest%d')\nexcept TunError as exc:\n    print(exc); sys.exit(3)\n"
    )
    host_node = os.stat("/dev/net/tun")
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", WITH_TUN_NODE.format(mode=mode), "sh",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": SRC})
    assert result.returncode == 3, result.stdout + result.stderr
    node_mode, message = result.stdout.splitlines()
    assert node_mode == (f"0o{mode[1:]}" if mode != "none" else mode)  # the child saw the node of this case
    assert failing_step in message
    assert advice in message
    assert os.stat("/dev/net/tun") == host_node  # the host's node is as it was
