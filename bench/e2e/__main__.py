"""bench/e2e: the deployed path, end to end, against the kernel path, wireguard-go and OpenVPN
in the same run (root; ``make bench-e2e`` bootstraps and runs it).

    python -m bench.e2e [--quick] [--rounds N] [--systems kernel,fastproxy-raw,...] [--markdown FILE]
                        [--json FILE] [--plot FILE]

Every system gets a fresh namespace topology (bench/e2e/systems.py), then the same loads
(bench/e2e/loads.py), then is torn down. Prints the markdown tables (bench/e2e/report.py) to
paste into bench/RESULTS.md and saves the plot (default bench/e2e.png). Bounded: about 10
minutes in all (``--quick`` about 2), and ``--max-seconds`` (default 900) stops starting loads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .generators import compile_generators
from .loads import Measurement, icmp_window, iperf_udp, loss_free_udp, ping_flood
from .report import markdown, plot
from .systems import SYSTEMS, SystemFailed, setup

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Plan:
    """How long and how much of each load."""

    icmp_seconds: float
    windows: tuple[int, ...]
    ping_count: int
    ping_seconds: float
    iperf_mbit: tuple[float, ...]
    iperf_seconds: float
    search_high: float
    search_trials: int
    search_seconds: float


FULL = Plan(icmp_seconds=5, windows=(1, 64, 256), ping_count=20000, ping_seconds=5, iperf_mbit=(210, 524, 1048),
            iperf_seconds=3, search_high=120000, search_trials=8, search_seconds=2)
QUICK = Plan(icmp_seconds=1.5, windows=(1, 64, 256), ping_count=5000, ping_seconds=2, iperf_mbit=(210, 1048),
             iperf_seconds=1.5, search_high=120000, search_trials=5, search_seconds=1)


def load_names(plan: Plan) -> list[str]:
    """The loads in report order."""
    return ([f"ICMP W={w}" for w in plan.windows] + ["ping -f"] + [f"iperf UDP {r:g} Mbit/s" for r in plan.iperf_mbit]
            + ["UDP loss-free (≤0.1%)"])


def _version(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def environment() -> str:
    """When and where: date, kernel, CPUs, load average, the peers' versions."""
    load = os.getloadavg()
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, Linux {platform.release()}, "
            f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the start; "
            f"{_version('wireguard-go', '--version')}; {_version('openvpn', '--version')[:40]}; "
            f"{_version('iperf', '-v')}")


def run_system(name: str, plan: Plan, exes: dict[str, Path], workdir: Path, deadline: float,
               log: Callable[[str], None]) -> dict[str, Measurement]:
    """Set ``name`` up, put every load of ``plan`` on it (until ``deadline``), tear it down."""
    results: dict[str, Measurement] = {}

    def keep(m: Measurement | None) -> None:
        if m is not None:
            results[m.load] = m
            log(f"  {m.load:<24} {m.rate:>10.0f}/s  loss {100 * m.loss:5.2f}%  "
                + (f"p50 {m.p50:.0f} µs p99 {m.p99:.0f} µs  " if m.p50 is not None else "")
                + "cpu µs/rt " + " ".join(f"{k} {v:.1f}" for k, v in m.cpu_us.items()))

    started = time.monotonic()
    with setup(name, workdir / name) as system:
        log(f"{name}: up in {time.monotonic() - started:.1f} s (load from {system.source}'s namespace)")
        steps = [lambda w=w: icmp_window(system, exes["icmp_flood"], w, plan.icmp_seconds) for w in plan.windows]
        steps.append(lambda: ping_flood(system, plan.ping_count, plan.ping_seconds))
        steps += [lambda r=r: iperf_udp(system, r, plan.iperf_seconds) for r in plan.iperf_mbit]
        for step in steps:
            if time.monotonic() > deadline:
                log(f"  --max-seconds reached: the rest of {name}'s loads skipped")
                return results
            try:
                keep(step())
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                log(f"  a load failed: {exc}")
        if time.monotonic() < deadline:
            # Start the search a little above the most iperf2 delivered one way: no trial wasted far
            # above what the system carries (a round trip carries at most that).
            delivered = [m.rate for m in results.values() if m.load.startswith("iperf")]
            high = min(plan.search_high, 1.5 * max(delivered)) if delivered else plan.search_high
            best, trials = loss_free_udp(system, exes["udp_flood"], high, plan.search_trials, plan.search_seconds)
            for t in trials:
                log(f"    UDP echo trial {t.extra['offered_rate']:>9.0f}/s offered: loss {100 * t.loss:6.3f}% "
                    f"({'pass' if t.extra['passed'] else 'fail'}"
                    + (f", the sender fell behind: {t.extra['send_seconds']:.2f} s to send" if t.extra.get('behind') else "")
                    + ")")
            if best is None and trials:  # none passed: say below what, rather than leave it out
                lowest = min(trials, key=lambda t: t.extra["offered_rate"])
                best = Measurement(name, "UDP loss-free (≤0.1%)", loss=lowest.loss,
                                   extra={"below": lowest.extra["offered_rate"]})
            keep(best)
    return results


def median(measurements: list[Measurement]) -> Measurement:
    """The measurement of median rate (the lower middle one of an even count)."""
    ordered = sorted(measurements, key=lambda m: m.rate)
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every system, print and save the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter loads (about 2 minutes in all)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--markdown", type=Path, help="also write the markdown report to this file")
    parser.add_argument("--json", type=Path, help="write every measurement (no raw RTTs) as JSON to this file")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "e2e.png", help="default bench/e2e.png")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench-e2e",
                        help="where the C generators are compiled (default build/bench-e2e)")
    parser.add_argument("--max-seconds", type=float, default=900, help="start no load after this (default 900)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times (alternating the order) and report each "
                        "figure's median round, by rate (default 1)")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be between 1 and 10")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if os.geteuid() != 0:
        parser.error("needs root: it builds network namespaces and TUN devices (run it as root, or `sudo make bench-e2e`)")
    needed = {"kernel": ["ping", "iperf"], "wireguard-go": ["wireguard-go", "wg"], "openvpn": ["openvpn"]}
    missing = sorted({tool for s in systems for tool in needed.get(s, []) + ["ip", "ping", "iperf"]
                      if shutil.which(tool) is None})
    if missing:
        parser.error(f"missing {', '.join(missing)}: run bench/e2e/bootstrap.sh (or `make bench-e2e`) first")
    plan = QUICK if args.quick else FULL
    exes = compile_generators(args.build_dir)
    command = "python -m bench.e2e" + (" " + shlex.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    env = environment()
    log(f"bench-e2e: {env}")
    deadline = time.monotonic() + args.max_seconds
    rounds: dict[str, dict[str, list[Measurement]]] = {name: {} for name in systems}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fastproxy-bench-e2e-") as tmp:
        for number in range(args.rounds):
            # Every other round in reverse order, so a drift in the machine's load does not
            # always favour the same systems.
            for name in systems if number % 2 == 0 else systems[::-1]:
                if name in failures:
                    continue
                if time.monotonic() > deadline:
                    failures.setdefault(name, "--max-seconds reached before it started")
                    continue
                try:
                    measured = run_system(name, plan, exes, Path(tmp) / f"round{number}", deadline, log)
                except SystemFailed as exc:
                    failures[name] = str(exc)
                    log(f"{name}: did not come up: {exc}")
                    continue
                for load, m in measured.items():
                    rounds[name].setdefault(load, []).append(m)
    results = {name: {load: median(ms) for load, ms in by_load.items()}
               for name, by_load in rounds.items() if by_load}
    if args.rounds > 1:
        env += f"; median of {args.rounds} rounds (by rate)"
    loads = load_names(plan)
    report = markdown(results, loads, failures, command, env)
    print(report)
    if args.markdown:
        args.markdown.write_text(report)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "command": command, "failures": failures,
                                         "results": {s: {k: m.summary() for k, m in r.items()}
                                                     for s, r in results.items()}}, indent=1))
    if results:
        plot(results, loads, args.plot)
        log(f"bench-e2e: plot saved to {args.plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
