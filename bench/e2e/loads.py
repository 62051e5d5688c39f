"""The loads bench/e2e puts on a system that is up, each bounded in time, each a
:class:`Measurement`: the C generators (ICMP echo with a window, paced UDP echo and the
loss-free search over its rate), ``ping -f`` and iperf2 UDP.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .generators import parse_summary, read_rtts
from .systems import IPERF_PORT, TARGET, UDP_PORT, System

__all__ = ["Measurement", "cpu_seconds", "icmp_window", "ping_flood", "iperf_udp", "udp_echo", "loss_free_udp"]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    """One load on one system. ``rate`` is round trips (or delivered datagrams) per second;
    latencies are in µs; ``cpu_us`` is CPU µs per round trip (or datagram) of each process."""

    system: str
    load: str
    rate: float = 0.0
    loss: float = 0.0
    p50: float | None = None
    p99: float | None = None
    p999: float | None = None
    mbit: float | None = None
    count: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rtts_us: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the raw round-trip times (for the JSON file)."""
        data = asdict(self)
        data.pop("rtts_us")
        return data


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` and all its threads, from /proc/PID/stat (0 if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # comm may hold spaces; fields start at state (3)
    return (int(fields[11]) + int(fields[12])) / _TICK


def _percentiles(measurement: Measurement, rtts_ns: list[int]) -> None:
    import numpy as np

    if rtts_ns:
        values = np.asarray(rtts_ns, dtype=np.float64) / 1000.0
        measurement.p50, measurement.p99, measurement.p999 = (float(v) for v in np.percentile(values, [50, 99, 99.9]))
        measurement.rtts_us = values.tolist()


def _measured(system: System, load: str, run: Callable[[], Measurement]) -> Measurement:
    """Run ``run`` with the CPU of the system's processes read before and after."""
    pids = system.pids()
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    measurement = run()
    after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    if measurement.count:
        measurement.cpu_us = {role: 1e6 * (after[role] - before[role]) / measurement.count for role in pids}
    measurement.system, measurement.load = system.name, load
    return measurement


def _run(system: System, *command: str, timeout: float, ok: tuple[int, ...] = (0,)) -> str:
    result = system.topo.run(system.source, *command, timeout=timeout, check=False)
    if result.returncode not in ok:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def icmp_window(system: System, exe: Path, window: int, seconds: float) -> Measurement:
    """``icmp_flood -w WINDOW`` (raw socket) to the target for ``seconds``."""
    def run() -> Measurement:
        with tempfile.NamedTemporaryFile(prefix="icmp-rtt-", suffix=".bin") as rtt_file:
            summary = parse_summary(_run(system, str(exe), "-w", str(window), "-t", str(seconds), "-o", rtt_file.name,
                                         TARGET, timeout=seconds + 30))
            rtts = read_rtts(rtt_file.name)
        if len(rtts) != summary["received"]:
            raise RuntimeError(f"icmp_flood wrote {len(rtts)} round trips for {summary['received']} replies")
        m = Measurement(system.name, "", rate=summary["per_second"], count=int(summary["received"]),
                        loss=summary["lost"] / summary["sent"] if summary["sent"] else 1.0, extra=summary)
        _percentiles(m, rtts)
        return m

    return _measured(system, f"ICMP W={window}", run)


_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received.*time (\d+)ms")
_PING_RTT = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def ping_flood(system: System, count: int, seconds: float) -> Measurement:
    """The system's ``ping -f -c COUNT -w SECONDS`` (iputils, default 56 data bytes)."""
    def run() -> Measurement:
        out = _run(system, "ping", "-n", "-q", "-f", "-c", str(count), "-w", str(int(seconds)), TARGET,
                   timeout=seconds + 30, ok=(0, 1))  # 1: some replies missing, which the figures show
        summary, rtt = _PING_SUMMARY.search(out), _PING_RTT.search(out)
        if not summary:
            raise RuntimeError(f"no summary in ping's output: {out!r}")
        sent, received, ms = (int(g) for g in summary.groups())
        m = Measurement(system.name, "", rate=received / max(ms / 1000, 1e-3), count=received,
                        loss=1 - received / sent if sent else 1.0)
        if rtt:
            m.extra = {"min_us": float(rtt[1]) * 1000, "avg_us": float(rtt[2]) * 1000,
                       "max_us": float(rtt[3]) * 1000, "mdev_us": float(rtt[4]) * 1000}
        return m

    return _measured(system, "ping -f", run)


def iperf_udp(system: System, mbit: float, seconds: float, size: int = 1200) -> Measurement:
    """iperf2 UDP at ``mbit`` Mbit/s offered, ``size``-byte datagrams, one way to the target; the
    server's own report (``-y C``) gives what arrived (``rate``: delivered datagrams per second)."""
    def run() -> Measurement:
        with tempfile.NamedTemporaryFile("w+", prefix="iperf-server-", suffix=".csv") as report_file:
            server = system.topo.popen("target", "iperf", "-s", "-u", "-p", str(IPERF_PORT), "-l", str(size),
                                       "-w", "4M", "-y", "C", stdout=report_file, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.3)
                _run(system, "iperf", "-c", TARGET, "-u", "-p", str(IPERF_PORT), "-b", f"{mbit}M", "-l", str(size),
                     "-t", str(seconds), "-w", "4M", timeout=seconds + 30)
            finally:
                # iperf2's server asks for a second interrupt while its threads finish.
                for _ in range(2):
                    if server.poll() is None:
                        server.send_signal(signal.SIGINT)
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            server.wait(1)
                if server.poll() is None:
                    server.kill()
                    server.wait()
            report_file.seek(0)
            out = report_file.read()
        # timestamp,src,port,dst,port,id,interval,bytes,bits/s,jitter ms,lost,total,%,out of order
        reports = [line.split(",") for line in out.splitlines() if line.count(",") >= 13]
        if not reports:
            raise RuntimeError(f"iperf's server printed no report: {out!r}")
        report = reports[-1]
        bits, jitter_ms, lost, total = float(report[8]), float(report[9]), int(report[10]), int(report[11])
        start, end = (float(x) for x in report[6].split("-"))
        delivered = total - lost
        return Measurement(system.name, "", rate=delivered / max(end - start, 1e-3), count=delivered,
                           loss=lost / total if total else 1.0, mbit=bits / 1e6,
                           extra={"offered_mbit": mbit, "jitter_us": jitter_ms * 1000, "total": total, "lost": lost})

    return _measured(system, f"iperf UDP {mbit:g} Mbit/s", run)


def udp_echo(system: System, exe: Path, rate: float, seconds: float, size: int = 1200) -> Measurement:
    """``udp_flood send`` at ``rate`` datagrams/s of ``size`` bytes to ``udp_flood echo`` on the
    target; ``rate`` in the result is echoes per second, loss is round-trip loss."""
    def run() -> Measurement:
        echo = system.topo.popen("target", str(exe), "echo", "-t", str(seconds + 30), str(UDP_PORT),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            if echo.stdout is None or echo.stdout.readline() != b"ready\n":
                raise RuntimeError(f"udp_flood echo did not start on the target (exit status {echo.poll()})")
            with tempfile.NamedTemporaryFile(prefix="udp-rtt-", suffix=".bin") as rtt_file:
                summary = parse_summary(_run(system, str(exe), "send", "-r", str(int(rate)), "-s", str(size), "-t",
                                             str(seconds), "-o", rtt_file.name, TARGET, str(UDP_PORT),
                                             timeout=seconds + 30))
                rtts = read_rtts(rtt_file.name)
        finally:
            echo.terminate()
            server_out = echo.communicate(timeout=5)[0].decode()
        server = parse_summary(server_out)
        m = Measurement(system.name, "", rate=summary["echoed"] / seconds, count=int(summary["echoed"]),
                        loss=summary["loss"], mbit=summary["echoed"] * size * 8 / seconds / 1e6,
                        extra={**summary, "offered_rate": rate, "target_received": server["received"],
                               "one_way_loss": 1 - server["received"] / summary["offered"]})
        _percentiles(m, rtts)
        return m

    return _measured(system, f"UDP echo {rate:.0f}/s", run)


def loss_free_udp(system: System, exe: Path, high: float, trials: int, seconds: float,
                  max_loss: float = 0.001, size: int = 1200) -> tuple[Measurement | None, list[Measurement]]:
    """The highest paced UDP echo rate with round-trip loss ≤ ``max_loss``: RFC 2544's throughput
    search, bisecting (geometrically) between the highest rate that passed and the lowest that
    failed, starting at ``high`` and down to ``high``/128, in at most ``trials`` trials. Returns
    the best passing trial (None if none passed) and every trial."""
    passed, failed = high / 128, high
    best: Measurement | None = None
    tried: list[Measurement] = []
    rate = high
    for _ in range(trials):
        m = udp_echo(system, exe, rate, seconds, size)
        # A sender that could not keep its pace did not offer the rate: count that as a failure.
        behind = m.extra.get("send_seconds", 0) > seconds * 1.05
        ok = m.loss <= max_loss and not behind
        m.extra["passed"], m.extra["behind"] = ok, behind
        tried.append(m)
        if ok:
            best, passed = m, rate
            if rate >= high:
                break
        else:
            failed = rate
        rate = (passed * failed) ** 0.5
    if best is not None:
        best.load = "UDP loss-free (≤0.1%)"
    return best, tried
