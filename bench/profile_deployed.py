"""Quick measurement loop for the deployed path (issue 11): the three real processes
(``fastproxy client`` with its TUN device, ``fastproxy edge``, ``fastproxy connector``),
each in its own network namespace (client → edge → connector → router → target), driven
through the TUN by a windowed ICMP echo load (C, compiled here), with the kernel path
(connector namespace → target, no tunnel) measured in the same run as the baseline.

    sudo .venv/bin/python bench/profile_deployed.py [--runs 3] [--w1 3000] [--w64 60000]
        [--backend raw] [--hold SECONDS [--hold-window W]] [--cprofile ROLE] [--json FILE]

Per figure: rate, p50/p99/p99.9 RTT, CPU µs per round trip of each process (utime+stime
from /proc/PID/stat), and packets per round trip on each veth (/proc/net/dev deltas,
QUIC ACK-only packets included; a GSO batch counts once). ``--hold`` keeps the topology
up after the run with a W=``--hold-window`` load on repeat, for attaching py-spy / perf /
strace (pids are printed); ``--cprofile edge`` runs that process under cProfile
(call counts per round trip show what runs per wakeup). ``--w64 0`` skips the W=64 runs.
Bounded: every load stops after its count or 20 s. Not a benchmark of record (that is
bench/e2e/); a fast loop for finding where time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.netns import Link, Route, Topology  # noqa: E402

TARGET = "203.0.113.130"
CLK_TCK = os.sysconf("SC_CLK_TCK")

C_DIR = Path(__file__).resolve().parent / "c"
UDP_PORT = 9000


def build(workdir: str, name: str) -> str:
    binary = os.path.join(workdir, name)
    subprocess.run(["cc", "-O2", "-o", binary, str(C_DIR / f"{name}.c")], check=True)
    return binary


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def link_packets(topo: Topology, node: str) -> dict[str, int]:
    """tx packets of every veth in ``node`` (rx of the peer is the same)."""
    out: dict[str, int] = {}
    for line in topo.run(node, "cat", "/proc/net/dev").stdout.splitlines()[2:]:
        name, data = line.split(":", 1)
        values = data.split()
        out[name.strip()] = int(values[9])  # tx packets
    return out


SOURCE = [str(ROOT / "src")]
"""Where the three processes import fastproxy from (--src: compare another checkout)."""
CPROFILE: dict[str, str] = {}
"""Role -> output file: run that process under cProfile (--cprofile ROLE)."""


def fastproxy(topo: Topology, node: str, *args: str, log: str) -> subprocess.Popen[bytes]:
    wrap = ["-m", "cProfile", "-o", CPROFILE[args[0]]] if args[0] in CPROFILE else []
    return topo.popen(node, sys.executable, *wrap, "-m", "fastproxy", *args, stdout=open(log, "wb"),  # noqa: SIM115
                      stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": SOURCE[0]})


def wait_until(check, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def measure(topo: Topology, node: str, echo: str, window: int, count: int,
            pids: dict[str, int], links: dict[str, str]) -> dict[str, object]:
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    packets_before = {label: link_packets(topo, n)[i] for label, (n, i) in links.items()}
    result = json.loads(topo.run(node, echo, TARGET, str(window), str(count), "20", timeout=40).stdout)
    received = max(int(result["received"]), 1)
    result["cpu_us_per_rt"] = {name: round((cpu_ticks(pid) - before[name]) / CLK_TCK * 1e6 / received, 1)
                               for name, pid in pids.items()}
    result["packets_per_rt"] = {label: round((link_packets(topo, n)[i] - packets_before[label]) / received, 2)
                                for label, (n, i) in links.items()}
    return result


SCRAPE = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=5)"
          ".read().decode())")


def counted_drops(topo: Topology) -> dict[str, float]:
    """fastproxy_drops_total of the three processes (each serves /metrics in its namespace)."""
    drops: dict[str, float] = {}
    for node in ("user", "edge", "conn"):
        for line in topo.run(node, sys.executable, "-c", SCRAPE).stdout.splitlines():
            if line.startswith("fastproxy_drops_total{"):
                name, value = line.rsplit(" ", 1)
                drops[f"{node}:{name[len('fastproxy_drops_total'):]}"] = float(value)
    return drops


def udp_drops(topo: Topology) -> dict[str, int]:
    """UDP receive-buffer and other input errors in each namespace (/proc/net/snmp)."""
    drops: dict[str, int] = {}
    for node in ("user", "edge", "conn", "target"):
        lines = [line.split() for line in topo.run(node, "cat", "/proc/net/snmp").stdout.splitlines()
                 if line.startswith("Udp:")]
        fields = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
        drops[node] = fields["RcvbufErrors"] + fields["InErrors"] + fields["SndbufErrors"]
    # Packets the kernel dropped because the TUN client did not read them in time.
    drops["tun"] = sum(int(topo.run("user", "cat", f"/sys/class/net/fp0/statistics/{name}").stdout)
                       for name in ("tx_dropped", "rx_dropped"))
    return drops


def measure_udp(topo: Topology, node: str, udp: str, rate: int, pids: dict[str, int],
                seconds: float = 2.0, size: int = 1200) -> dict[str, object]:
    """Offer ``rate`` packets/s of UDP from ``node`` to the target's sink for ``seconds``
    (after a slow warm-up from the same source port, so the tunnel's session is open)."""
    topo.run(node, udp, "send", TARGET, str(UDP_PORT), "200", "0.2", str(size), "40000")
    sink = topo.popen("target", udp, "sink", str(UDP_PORT), str(seconds + 5), stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline() == "ready\n"
        before = {name: cpu_ticks(pid) for name, pid in pids.items()}
        drops_before = udp_drops(topo)
        counted_before = counted_drops(topo)
        sent = json.loads(topo.run(node, udp, "send", TARGET, str(UDP_PORT), str(rate), str(seconds), str(size),
                                   "40000", timeout=seconds + 20).stdout)
        got = json.loads(sink.communicate(timeout=seconds + 20)[0])
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    packets = max(int(sent["sent"]), 1)
    drops = {node: count - drops_before[node] for node, count in udp_drops(topo).items()}
    for name, count in counted_drops(topo).items():
        if count != counted_before.get(name, 0):
            drops[name] = int(count - counted_before.get(name, 0))
    return {"socket_drops": drops, "offered_per_second": rate, "sent": sent["sent"], "received": got["received"],
            "received_per_second": round(got["received"] / float(sent["seconds"]), 1),
            "loss": round(1 - got["received"] / packets, 5),
            "cpu_us_per_packet": {name: round((cpu_ticks(pid) - before[name]) / CLK_TCK * 1e6 / packets, 1)
                                  for name, pid in pids.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--w1", type=int, default=3000, help="echoes per W=1 run")
    parser.add_argument("--w64", type=int, default=60000, help="echoes per W=64 run")
    parser.add_argument("--backend", default="raw", choices=("raw", "ping", "auto"))
    parser.add_argument("--udp-rates", default="", metavar="PPS,...",
                        help="also offer UDP at these packet rates (1200-byte payloads, 2 s each)")
    parser.add_argument("--hold", type=float, default=0.0, help="then keep a W=64 load going this long")
    parser.add_argument("--hold-window", type=int, default=64, help="window of the --hold load")
    parser.add_argument("--cprofile", action="append", default=[], choices=("client", "edge", "connector"),
                        help="run this process under cProfile (its stats: /tmp/fastproxy-ROLE.prof)")
    parser.add_argument("--src", help="run the processes from this source tree (another commit's src/)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, TUN, raw sockets)")
    from fastproxy.tunnel.certs import generate_self_signed

    if args.src:
        SOURCE[0] = str(Path(args.src).resolve())
    for role in args.cprofile:
        CPROFILE[role] = f"/tmp/fastproxy-{role}.prof"
    workdir = tempfile.mkdtemp(prefix="fastproxy-profile-")
    echo = build(workdir, "profile_echo_window")
    udp = build(workdir, "profile_udp")
    cert = generate_self_signed(workdir)
    topo = Topology(
        links=[
            Link("user", "edge", ["192.0.2.1/24"], ["192.0.2.2/24"]),
            Link("edge", "conn", ["198.51.100.1/24"], ["198.51.100.2/24"]),
            Link("conn", "router", ["203.0.113.1/25"], ["203.0.113.2/25"]),
            Link("router", "target", ["203.0.113.129/25"], [f"{TARGET}/25"]),
        ],
        routes=[Route("conn", "203.0.113.128/25", "203.0.113.2"), Route("target", "default", "203.0.113.129"),
                Route("router", "default", "203.0.113.1")],
        routers=["router"],
    )
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[dict[str, object]]] = {"kernel_w1": [], "kernel_w64": [], "tunnel_w1": [], "tunnel_w64": []}
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the namespaces and processes go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(topo, args, processes, results, workdir, cert, echo, udp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run(topo: Topology, args: argparse.Namespace, processes: list[subprocess.Popen[bytes]],
        results: dict[str, list[dict[str, object]]], workdir: str, cert: Any, echo: str, udp: str) -> None:
    """Start the three processes in ``topo`` and take every measurement ``args`` asks for."""
    with topo:
        try:
            edge = fastproxy(topo, "edge", "edge", "--listen", "0.0.0.0:4433", "--cert", cert.cert_file,
                             "--key", cert.key_file, "--client-token", "c1", "--connector-token", "k1",
                             "--metrics", "127.0.0.1:9464", log=f"{workdir}/edge.log")
            processes.append(edge)
            connector = fastproxy(topo, "conn", "connector", "--edge", "198.51.100.1:4433", "--token", "k1",
                                  "--route", "203.0.113.128/25", "--pin", cert.fingerprint,
                                  "--backend", args.backend, "--metrics", "127.0.0.1:9464", log=f"{workdir}/connector.log")
            processes.append(connector)
            assert wait_until(lambda: "connected to the edge" in Path(f"{workdir}/connector.log").read_text()), \
                Path(f"{workdir}/connector.log").read_text()
            client = fastproxy(topo, "user", "client", "--edge", "192.0.2.2:4433", "--token", "c1",
                               "--pin", cert.fingerprint, "--tun", "fp0", "--metrics", "127.0.0.1:9464", log=f"{workdir}/client.log")
            processes.append(client)
            assert wait_until(lambda: "203.0.113.128/25" in topo.run("user", "ip", "route", check=False).stdout), \
                Path(f"{workdir}/client.log").read_text()
            pids = {"client": client.pid, "edge": edge.pid, "connector": connector.pid}
            links = {"user>edge": ("user", "to-edge"), "edge>user": ("edge", "to-user"),
                     "edge>conn": ("edge", "to-conn"), "conn>edge": ("conn", "to-edge"),
                     "conn>router": ("conn", "to-router")}
            topo.run("user", echo, TARGET, "1", "200", "5")  # warm up
            print("pids", pids, "namespaces", topo.namespaces, flush=True)
            for _ in range(args.runs):
                for window, count in ((1, args.w1), (64, args.w64)):
                    if not count:
                        continue
                    for path, node in (("kernel", "conn"), ("tunnel", "user")):
                        r = measure(topo, node, echo, window, count, pids, links)
                        results[f"{path}_w{window}"].append(r)
                        print(f"{path:6} W={window:<3} {r['per_second']:>9.0f}/s p50 {r['p50_us']:>5} µs "
                              f"p99 {r['p99_us']:>6} µs lost {r['lost']:>4} cpu µs/rt {r['cpu_us_per_rt']} "
                              f"pkts/rt {r['packets_per_rt']}", flush=True)
            if args.runs:
                summary(results)
            for rate in [int(r) for r in args.udp_rates.split(",") if r]:
                for path, node in (("kernel", "conn"), ("tunnel", "user")):
                    r = measure_udp(topo, node, udp, rate, pids)
                    results.setdefault(f"{path}_udp", []).append(r)
                    print(f"{path:6} UDP {rate:>6}/s offered ({rate * 1200 * 8 / 1e6:.0f} Mbit/s): "
                          f"delivered {r['received_per_second']:>7.0f}/s loss {r['loss'] * 100:5.2f}% "
                          f"cpu µs/packet {r['cpu_us_per_packet']} socket drops {r['socket_drops']}", flush=True)
            if args.hold:
                print("holding; pids", pids, flush=True)
                deadline = time.monotonic() + args.hold
                while time.monotonic() < deadline:
                    topo.run("user", echo, TARGET, str(args.hold_window), "200000", "10", timeout=40)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def summary(results: dict[str, list[dict[str, object]]]) -> None:
    """Medians over the runs, and the tunnel as a ratio to the kernel path."""
    med = {key: {m: _median([float(r[m]) for r in runs]) for m in ("per_second", "p50_us", "p99_us")}
           for key, runs in results.items() if runs}
    for w in ("w1", "w64"):
        if not results[f"tunnel_{w}"]:
            continue
        k, t = med[f"kernel_{w}"], med[f"tunnel_{w}"]
        cpu = {name: _median([float(r["cpu_us_per_rt"][name]) for r in results[f"tunnel_{w}"]])  # type: ignore[index]
               for name in ("client", "edge", "connector")}
        print(f"median {w}: kernel {k['per_second']:.0f}/s p50 {k['p50_us']:.0f} µs | tunnel {t['per_second']:.0f}/s "
              f"p50 {t['p50_us']:.0f} µs p99 {t['p99_us']:.0f} µs | rate ratio {t['per_second'] / k['per_second']:.3f} "
              f"| cpu µs/rt {cpu} total {sum(cpu.values()):.1f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
