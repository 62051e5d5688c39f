"""Quick measurement loop for the deployed path (issue 11): the three real processes
(``fastproxy client`` with its TUN device, ``fastproxy edge``, ``fastproxy connector``) in
bench/e2e's topology (client → edge → connector → r1 → r2 → r3 → target, bench/e2e/systems.py),
driven through the TUN by bench/e2e's windowed ICMP echo generator (bench/c/icmp_flood.c), with
the kernel path (connector namespace → target, no tunnel) measured in the same run as the baseline.

    sudo .venv/bin/python bench/profile_deployed.py [--runs 3] [--w1 3000] [--w64 60000]
        [--backend raw] [--hold SECONDS [--hold-window W]] [--cprofile ROLE] [--src DIR] [--json FILE]

Per figure: rate, p50/p99/p99.9 RTT, CPU µs per round trip of each process (utime+stime
from /proc/PID/stat), and packets per round trip on each veth (/proc/net/dev deltas,
QUIC ACK-only packets included; a GSO batch counts once). ``--hold`` keeps the topology
up after the run with a W=``--hold-window`` load on repeat, for attaching py-spy / perf /
strace (pids are printed); ``--cprofile edge`` runs that process under cProfile
(call counts per round trip show what runs per wakeup); ``--src`` runs the processes from
another checkout's ``src/``; ``--udp-rates`` offers one-way UDP (bench/c/udp_flood.c) and says
where datagrams were dropped. ``--w64 0`` skips the W=64 runs.
Bounded: every load stops after its count or 20 s. Not a benchmark of record (that is
bench/e2e/); a fast loop for finding where time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.e2e.generators import compile_generators, parse_summary, read_rtts  # noqa: E402
from bench.e2e.loads import cpu_seconds  # noqa: E402
from bench.e2e.systems import TARGET, UDP_PORT, FastproxyOptions, System, setup  # noqa: E402
from tests.netns import Topology  # noqa: E402

UDP_SOURCE_PORT = 40100
"""The UDP load's source port: its warm-up opens the tunnel's session for the measured run."""
LINKS = {"client>edge": ("client", "to-edge"), "edge>client": ("edge", "to-client"),
         "edge>conn": ("edge", "to-conn"), "conn>edge": ("conn", "to-edge"), "conn>r1": ("conn", "to-r1")}
"""The veths whose packets per round trip are counted: label -> (node, device)."""
METRICS = "127.0.0.1:9464"


def link_packets(topo: Topology, node: str) -> dict[str, int]:
    """tx packets of every veth in ``node`` (rx of the peer is the same)."""
    out: dict[str, int] = {}
    for line in topo.run(node, "cat", "/proc/net/dev").stdout.splitlines()[2:]:
        name, data = line.split(":", 1)
        values = data.split()
        out[name.strip()] = int(values[9])  # tx packets
    return out


def _percentile(values: list[int], q: float) -> int:
    return values[int((len(values) - 1) * q)] // 1000 if values else 0


def measure(topo: Topology, node: str, icmp: Path, window: int, count: int, pids: dict[str, int]) -> dict[str, object]:
    """``icmp_flood -w WINDOW -n COUNT`` from ``node`` to the target, with the CPU of ``pids`` and
    the packets on LINKS per round trip."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    packets_before = {label: link_packets(topo, n)[i] for label, (n, i) in LINKS.items()}
    with tempfile.NamedTemporaryFile(prefix="icmp-rtt-", suffix=".bin") as rtt_file:
        result: dict[str, object] = dict(parse_summary(topo.run(
            node, str(icmp), "-w", str(window), "-n", str(count), "-t", "20", "-T", "200", "-o", rtt_file.name,
            TARGET, timeout=60).stdout))
        rtts = sorted(read_rtts(rtt_file.name))
    received = max(int(result["received"]), 1)  # type: ignore[call-overload]
    result.update(p50_us=_percentile(rtts, 0.5), p99_us=_percentile(rtts, 0.99), p999_us=_percentile(rtts, 0.999))
    result["cpu_us_per_rt"] = {name: round((cpu_seconds(pid) - before[name]) * 1e6 / received, 1)
                               for name, pid in pids.items()}
    result["packets_per_rt"] = {label: round((link_packets(topo, n)[i] - packets_before[label]) / received, 2)
                                for label, (n, i) in LINKS.items()}
    return result


SCRAPE = ("import urllib.request; print(urllib.request.urlopen('http://%s/metrics', timeout=5)"
          ".read().decode())" % METRICS)


def counted_drops(topo: Topology) -> dict[str, float]:
    """fastproxy_drops_total of the three processes (each serves /metrics in its namespace)."""
    drops: dict[str, float] = {}
    for node in ("client", "edge", "conn"):
        for line in topo.run(node, sys.executable, "-c", SCRAPE).stdout.splitlines():
            if line.startswith("fastproxy_drops_total{"):
                name, value = line.rsplit(" ", 1)
                drops[f"{node}:{name[len('fastproxy_drops_total'):]}"] = float(value)
    return drops


def udp_drops(topo: Topology) -> dict[str, int]:
    """UDP receive-buffer and other input errors in each namespace (/proc/net/snmp)."""
    drops: dict[str, int] = {}
    for node in ("client", "edge", "conn", "target"):
        lines = [line.split() for line in topo.run(node, "cat", "/proc/net/snmp").stdout.splitlines()
                 if line.startswith("Udp:")]
        fields = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
        drops[node] = fields["RcvbufErrors"] + fields["InErrors"] + fields["SndbufErrors"]
    # Packets the kernel dropped because the TUN client did not read them in time.
    drops["tun"] = sum(int(topo.run("client", "cat", f"/sys/class/net/fp0/statistics/{name}").stdout)
                       for name in ("tx_dropped", "rx_dropped"))
    return drops


def measure_udp(topo: Topology, node: str, udp: Path, rate: int, pids: dict[str, int],
                seconds: float = 2.0, size: int = 1200) -> dict[str, object]:
    """Offer ``rate`` packets/s of UDP from ``node`` to a counting sink on the target for
    ``seconds`` (after a slow warm-up from the same source port, so the tunnel's session is open)."""
    sender = [str(udp), "send", "-s", str(size), "-D", "200", "-p", str(UDP_SOURCE_PORT)]
    # Warm-up with no sink yet (the target's port unreachable answers are harmless): the session opens.
    topo.run(node, *sender, "-r", "200", "-t", "0.2", TARGET, str(UDP_PORT))
    sink = topo.popen("target", str(udp), "echo", "-q", "-t", str(seconds + 30), str(UDP_PORT),
                      stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline() == "ready\n"
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        drops_before = udp_drops(topo)
        counted_before = counted_drops(topo)
        sent = parse_summary(topo.run(node, *sender, "-r", str(rate), "-t", str(seconds), TARGET, str(UDP_PORT),
                                      timeout=seconds + 20).stdout)
        sink.send_signal(signal.SIGTERM)
        got = parse_summary(sink.communicate(timeout=10)[0])
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    packets = max(int(sent["sent"]), 1)
    received = int(got["received"])
    drops: dict[str, int] = {node: count - drops_before[node] for node, count in udp_drops(topo).items()}
    for name, count in counted_drops(topo).items():
        if count != counted_before.get(name, 0):
            drops[name] = int(count - counted_before.get(name, 0))
    return {"socket_drops": drops, "offered_per_second": rate, "sent": sent["sent"], "received": received,
            "received_per_second": round(received / float(sent["send_seconds"]), 1),
            "loss": round(1 - received / packets, 5),
            "cpu_us_per_packet": {name: round((cpu_seconds(pid) - before[name]) * 1e6 / packets, 1)
                                  for name, pid in pids.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--w1", type=int, default=3000, help="echoes per W=1 run")
    parser.add_argument("--w64", type=int, default=60000, help="echoes per W=64 run")
    parser.add_argument("--backend", default="raw", choices=("raw", "ping"))
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
    options = FastproxyOptions(metrics=METRICS, interpreter_args={
        role: ["-m", "cProfile", "-o", f"/tmp/fastproxy-{role}.prof"] for role in args.cprofile})
    if args.src:
        options.src = Path(args.src).resolve()
    results: dict[str, list[dict[str, object]]] = {"kernel_w1": [], "kernel_w64": [], "tunnel_w1": [], "tunnel_w64": []}
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the namespaces and processes go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="fastproxy-profile-") as workdir:
        generators = compile_generators(workdir)
        with setup(f"fastproxy-{args.backend}", Path(workdir), options) as system:
            run(system, args, results, generators["icmp_flood"], generators["udp_flood"])
    return 0


def run(system: System, args: argparse.Namespace, results: dict[str, list[dict[str, object]]],
        icmp: Path, udp: Path) -> None:
    """Take every measurement ``args`` asks for on the fastproxy ``system`` (and the kernel path
    from its connector's namespace)."""
    topo, pids = system.topo, system.pids()
    topo.run("client", str(icmp), "-w", "1", "-n", "200", "-t", "5", TARGET, timeout=30)  # warm up
    print("pids", pids, "namespaces", topo.namespaces, flush=True)
    for _ in range(args.runs):
        for window, count in ((1, args.w1), (64, args.w64)):
            if not count:
                continue
            for path, node in (("kernel", "conn"), ("tunnel", "client")):
                r = measure(topo, node, icmp, window, count, pids)
                results[f"{path}_w{window}"].append(r)
                print(f"{path:6} W={window:<3} {r['per_second']:>9.0f}/s p50 {r['p50_us']:>5} µs "
                      f"p99 {r['p99_us']:>6} µs lost {r['lost']:>4} cpu µs/rt {r['cpu_us_per_rt']} "
                      f"pkts/rt {r['packets_per_rt']}", flush=True)
    if args.runs:
        summary(results)
    for rate in [int(r) for r in args.udp_rates.split(",") if r]:
        for path, node in (("kernel", "conn"), ("tunnel", "client")):
            r = measure_udp(topo, node, udp, rate, pids)
            results.setdefault(f"{path}_udp", []).append(r)
            print(f"{path:6} UDP {rate:>6}/s offered ({rate * 1200 * 8 / 1e6:.0f} Mbit/s): "
                  f"delivered {r['received_per_second']:>7.0f}/s loss {r['loss'] * 100:5.2f}% "
                  f"cpu µs/packet {r['cpu_us_per_packet']} socket drops {r['socket_drops']}", flush=True)
    if args.hold:
        print("holding; pids", pids, flush=True)
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            topo.run("client", str(icmp), "-w", str(args.hold_window), "-t", "10", TARGET, timeout=40)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


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
