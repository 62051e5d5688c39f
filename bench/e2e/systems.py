"""The systems bench/e2e measures, each in a namespace topology of its own, built before it
and deleted after it:

    client ─── edge ─────────── conn ─────────── r1 ── r2 ── r3 ── target
    192.0.2.1  192.0.2.2        198.51.100.2                        203.0.113.130
               198.51.100.1     203.0.113.1      (routers)          (203.0.113.128/25)

- ``kernel``: no tunnel; the load runs in the connector's namespace straight to the target
  through the three routers (the path behind the connector, with nothing in the way).
- ``wireguard-go``: client ↔ hub on the edge ↔ connector, one wireguard-go in each, the hub
  routing between its two peers, the connector forwarding into the private network (tunnel
  addresses 198.18.0.0/24).
- ``openvpn``: OpenVPN 2.6, UDP, AES-256-GCM, no DCO; the server on the edge with
  client-to-client, the client and the connector its clients, the connector with an iroute for
  the private prefix (tunnel addresses 198.18.1.0/24).
- ``fastproxy-raw`` / ``fastproxy-ping``: the real ``fastproxy edge``, ``connector
  --backend raw|ping`` and ``client --tun`` processes.

The private network routes the VPNs' tunnel prefix (198.18.0.0/15, RFC 2544's benchmark range)
back to the connector, as a site would. No namespace has a default route; nothing leaves them.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import Link, Route, Topology

__all__ = ["SYSTEMS", "TARGET", "PRIVATE_PREFIX", "FastproxyOptions", "System", "SystemFailed", "setup", "topology"]

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = "203.0.113.130"
PRIVATE_PREFIX = "203.0.113.128/25"
CLIENT, EDGE_CLIENT_SIDE = "192.0.2.1", "192.0.2.2"
EDGE_CONN_SIDE, CONN_EDGE_SIDE = "198.51.100.1", "198.51.100.2"
VPN_PREFIX = "198.18.0.0/15"
UDP_PORT, IPERF_PORT = 40000, 5001

SYSTEMS = ("kernel", "wireguard-go", "openvpn", "fastproxy-raw", "fastproxy-ping")


class SystemFailed(RuntimeError):
    """A system did not come up (its processes' logs in the message)."""


@dataclass
class System:
    """A system that is up: where the load runs, and the processes whose CPU is counted."""

    name: str
    topo: Topology
    source: str
    """The node the load generators run in."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """The tunnel's processes by role (client, edge, connector); empty for the kernel path."""

    def pids(self) -> dict[str, int]:
        """The process id of each role (``ip netns exec`` execs the command, so it is the tool's own)."""
        return {role: process.pid for role, process in self.processes.items()}


def topology() -> Topology:
    """The namespaces and links of every system (built on entering)."""
    return Topology(
        links=[
            Link("client", "edge", [f"{CLIENT}/24"], [f"{EDGE_CLIENT_SIDE}/24"]),
            Link("edge", "conn", [f"{EDGE_CONN_SIDE}/24"], [f"{CONN_EDGE_SIDE}/24"]),
            Link("conn", "r1", ["203.0.113.1/30"], ["203.0.113.2/30"]),
            Link("r1", "r2", ["203.0.113.5/30"], ["203.0.113.6/30"]),
            Link("r2", "r3", ["203.0.113.9/30"], ["203.0.113.10/30"]),
            Link("r3", "target", ["203.0.113.129/25"], [f"{TARGET}/25"]),
        ],
        routes=[
            Route("conn", PRIVATE_PREFIX, "203.0.113.2"),
            Route("r1", PRIVATE_PREFIX, "203.0.113.6"), Route("r1", VPN_PREFIX, "203.0.113.1"),
            Route("r2", PRIVATE_PREFIX, "203.0.113.10"), Route("r2", "203.0.113.0/30", "203.0.113.5"),
            Route("r2", VPN_PREFIX, "203.0.113.5"),
            Route("r3", "203.0.113.0/29", "203.0.113.9"), Route("r3", VPN_PREFIX, "203.0.113.9"),
            Route("target", "203.0.113.0/25", "203.0.113.129"), Route("target", VPN_PREFIX, "203.0.113.129"),
        ],
        routers=["r1", "r2", "r3"],
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> None:
    """Poll ``check`` every 50 ms; SystemFailed naming ``what`` (and the logs) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemFailed(f"{what} within {timeout:.0f} s\n{logs()}")


def stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process (last started first), SIGKILL after 5 s."""
    for process in reversed(list(processes.values())):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _reaches_target(topo: Topology, node: str) -> bool:
    return topo.run(node, "ping", "-n", "-q", "-c", "1", "-W", "1", TARGET, check=False).returncode == 0


def _log_text(workdir: Path, names: list[str]) -> str:
    parts = []
    for name in names:
        path = workdir / f"{name}.log"
        if path.exists():
            parts.append(f"--- {name}.log (last 20 lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
    return "\n".join(parts)


def _spawn(topo: Topology, node: str, workdir: Path, name: str, *command: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(workdir / f"{name}.log", "wb") as log:
        return topo.popen(node, *command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


# --- fastproxy ---------------------------------------------------------------------------------

@dataclass
class FastproxyOptions:
    """How the fastproxy systems run their three processes (bench/profile_deployed.py sets these)."""

    src: Path = ROOT / "src"
    """The source tree the processes import fastproxy from (another checkout's ``src/`` to compare)."""
    interpreter_args: dict[str, list[str]] = field(default_factory=dict)
    """Role -> arguments put before ``-m fastproxy`` (e.g. ``-m cProfile -o FILE``)."""
    metrics: str | None = None
    """Each process serves /metrics here (in its own namespace) when set."""


def _fastproxy(topo: Topology, workdir: Path, backend: str, processes: dict[str, subprocess.Popen[bytes]],
               options: FastproxyOptions) -> None:
    from fastproxy.tunnel.certs import generate_self_signed

    cert = generate_self_signed(str(workdir))
    env = {"PYTHONPATH": str(options.src)}

    def command_of(role: str) -> list[str]:
        metrics = ["--metrics", options.metrics] if options.metrics else []
        return [sys.executable, *options.interpreter_args.get(role, []), "-m", "fastproxy", role, *metrics]

    logs = lambda: _log_text(workdir, ["edge", "connector", "client"])  # noqa: E731
    if backend == "ping":  # ping sockets for root's group inside the connector's namespace
        topo.sysctl("conn", "net.ipv4.ping_group_range", "0 2147483647")
    processes["edge"] = _spawn(topo, "edge", workdir, "edge", *command_of("edge"), "--listen", "0.0.0.0:4433",
                               "--cert", cert.cert_file, "--key", cert.key_file, "--client-token", "client-1",
                               "--connector-token", "connector-1", env=env)
    processes["connector"] = _spawn(topo, "conn", workdir, "connector", *command_of("connector"), "--edge",
                                    f"{EDGE_CONN_SIDE}:4433", "--token", "connector-1", "--route", PRIVATE_PREFIX,
                                    "--pin", cert.fingerprint, "--backend", backend, env=env)
    wait_until(lambda: "connected to the edge" in (workdir / "connector.log").read_text(errors="replace"),
               20, "the connector did not connect to the edge", logs)
    processes["client"] = _spawn(topo, "client", workdir, "client", *command_of("client"), "--edge",
                                 f"{EDGE_CLIENT_SIDE}:4433", "--token", "client-1", "--pin", cert.fingerprint,
                                 "--tun", "fp0", env=env)
    wait_until(lambda: PRIVATE_PREFIX in topo.run("client", "ip", "route", check=False).stdout,
               20, "the client did not route the private prefix into fp0", logs)


# --- wireguard-go ------------------------------------------------------------------------------

def _wg_keys(topo: Topology) -> tuple[str, str]:
    private = topo.run("client", "wg", "genkey").stdout.strip()
    public = topo.run("client", "wg", "pubkey", input=private + "\n").stdout.strip()
    return private, public


def _wireguard(topo: Topology, workdir: Path, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    keys = {node: _wg_keys(topo) for node in ("client", "edge", "conn")}
    addresses = {"edge": "198.18.0.1", "client": "198.18.0.2", "conn": "198.18.0.3"}
    # wireguard-go's control socket is /var/run/wireguard/NAME.sock, shared by every namespace:
    # each device gets a name of its own (the topology's random prefix and the node).
    dev = {node: f"wg{topo.prefix[3:]}{node[:2]}" for node in addresses}
    # wireguard-go refuses to run on Linux unless told that userspace is meant (no kernel module here).
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}
    for node in ("edge", "conn", "client"):
        processes[{"conn": "connector"}.get(node, node)] = _spawn(
            topo, node, workdir, f"wg-{node}", "wireguard-go", "-f", dev[node], env=env)
    for node in ("edge", "conn", "client"):
        wait_until(lambda node=node: topo.run(node, "ip", "link", "show", dev[node], check=False).returncode == 0,
                   10, f"wireguard-go did not create {dev[node]} in {node}", lambda: _log_text(workdir, [f"wg-{node}"]))
        key_file = workdir / f"wg-{node}.key"
        key_file.write_text(keys[node][0] + "\n")
        key_file.chmod(0o600)
        topo.run(node, "wg", "set", dev[node], "private-key", str(key_file), "listen-port", "51820")
        topo.run(node, "ip", "addr", "add", f"{addresses[node]}/24", "dev", dev[node])
        topo.run(node, "ip", "link", "set", dev[node], "up")
    # The hub: both spokes are its peers, each allowed its own addresses (the connector the prefix).
    topo.run("edge", "wg", "set", dev["edge"], "peer", keys["client"][1], "allowed-ips", "198.18.0.2/32")
    topo.run("edge", "wg", "set", dev["edge"], "peer", keys["conn"][1], "allowed-ips", f"198.18.0.3/32,{PRIVATE_PREFIX}")
    topo.run("edge", "ip", "route", "add", PRIVATE_PREFIX, "dev", dev["edge"])
    topo.sysctl("edge", "net.ipv4.ip_forward", "1")
    topo.run("client", "wg", "set", dev["client"], "peer", keys["edge"][1], "endpoint", f"{EDGE_CLIENT_SIDE}:51820",
             "allowed-ips", f"198.18.0.0/24,{PRIVATE_PREFIX}", "persistent-keepalive", "25")
    topo.run("client", "ip", "route", "add", PRIVATE_PREFIX, "dev", dev["client"])
    topo.run("conn", "wg", "set", dev["conn"], "peer", keys["edge"][1], "endpoint", f"{EDGE_CONN_SIDE}:51820",
             "allowed-ips", "198.18.0.0/24", "persistent-keepalive", "25")
    topo.sysctl("conn", "net.ipv4.ip_forward", "1")
    # The connector's handshake first, so the hub knows where it is when the client's packets come.
    wait_until(lambda: topo.run("conn", "ping", "-n", "-q", "-c", "1", "-W", "1", "198.18.0.1",
                                check=False).returncode == 0, 15, "the connector's WireGuard did not reach the hub")


# --- OpenVPN -----------------------------------------------------------------------------------

def _pki(directory: Path) -> None:
    """A CA and certificates for the server and the two clients (CNs client, connector), EC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-e2e CA")])

    def builder(name: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2)))

    ca = (builder(ca_name, ca_key).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
                        ("connector", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(ca_key, hashes.SHA256()))
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = directory / f"{name}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)


def _openvpn(topo: Topology, workdir: Path, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    pki = workdir / "pki"
    pki.mkdir()
    _pki(pki)
    ccd = workdir / "ccd"
    ccd.mkdir()
    (ccd / "client").write_text("ifconfig-push 198.18.1.2 255.255.255.0\n")
    net = ipaddress.ip_network(PRIVATE_PREFIX)
    (ccd / "connector").write_text(f"ifconfig-push 198.18.1.3 255.255.255.0\niroute {net.network_address} {net.netmask}\n")
    common = ["--dev", "tun0", "--proto", "udp4", "--ca", str(pki / "ca.pem"), "--data-ciphers", "AES-256-GCM",
              "--disable-dco", "--verb", "3", "--persist-key"]
    processes["edge"] = _spawn(
        topo, "edge", workdir, "openvpn-edge", "openvpn", *common, "--port", "1194",
        "--server", "198.18.1.0", "255.255.255.0", "--topology", "subnet", "--client-to-client",
        "--client-config-dir", str(ccd), "--cert", str(pki / "server.pem"), "--key", str(pki / "server.key"),
        "--dh", "none", "--keepalive", "10", "60")
    wait_until(lambda: "Initialization Sequence Completed" in (workdir / "openvpn-edge.log").read_text(errors="replace"),
               20, "the OpenVPN server did not start", lambda: _log_text(workdir, ["openvpn-edge"]))
    for node, role, remote in (("conn", "connector", EDGE_CONN_SIDE), ("client", "client", EDGE_CLIENT_SIDE)):
        processes[role] = _spawn(
            topo, node, workdir, f"openvpn-{role}", "openvpn", *common, "--client", "--nobind", "--remote", remote,
            "1194", "--cert", str(pki / f"{role}.pem"), "--key", str(pki / f"{role}.key"), "--remote-cert-tls", "server")
        wait_until(lambda role=role: "Initialization Sequence Completed" in
                   (workdir / f"openvpn-{role}.log").read_text(errors="replace"),
                   30, f"the OpenVPN {role} did not connect", lambda role=role: _log_text(workdir, ["openvpn-edge", f"openvpn-{role}"]))
    topo.sysctl("conn", "net.ipv4.ip_forward", "1")
    topo.run("client", "ip", "route", "add", PRIVATE_PREFIX, "dev", "tun0")


@contextlib.contextmanager
def setup(name: str, workdir: Path, fastproxy: FastproxyOptions | None = None) -> Iterator[System]:
    """Build a fresh topology, start system ``name`` in it, check the target answers a ping through
    it, yield it; stop its processes and delete the namespaces afterwards, even on failure.
    ``fastproxy``: how the fastproxy systems run their processes (default: this checkout, plain)."""
    workdir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with topology() as topo:
        try:
            if name == "kernel":
                source = "conn"
            elif name == "wireguard-go":
                source = "client"
                _wireguard(topo, workdir, processes)
            elif name == "openvpn":
                source = "client"
                _openvpn(topo, workdir, processes)
            elif name in ("fastproxy-raw", "fastproxy-ping"):
                source = "client"
                _fastproxy(topo, workdir, name.split("-")[1], processes, fastproxy or FastproxyOptions())
            else:
                raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
            wait_until(lambda: _reaches_target(topo, source), 15, f"{name}: the target did not answer a ping from {source}",
                       lambda: _log_text(workdir, sorted(p.stem for p in workdir.glob("*.log"))))
            yield System(name, topo, source, processes)
        finally:
            stop(processes)
