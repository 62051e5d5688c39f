"""bench/e2e's report: markdown tables (rates and loss, latency percentiles, ratios to the kernel
path and to each peer in the same run, CPU per round trip of each process) and the plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .loads import Measurement

__all__ = ["markdown", "plot"]

PEERS = ("kernel", "wireguard-go", "openvpn")


def _rate(m: Measurement | None) -> str:
    if m is None:
        return "—"
    if "below" in m.extra:  # a rate search where no trial passed
        return f"< {m.extra['below'] / 1000:.1f}k/s"
    if m.mbit is not None:
        text = f"{m.rate / 1000:.1f}k/s ({m.mbit:.0f} Mbit/s)"
    else:
        text = f"{m.rate / 1000:.1f}k/s"
    if m.loss >= 0.0005:
        text += f", {100 * m.loss:.1f}% loss"
    return text


def _us(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f} ms" if value >= 1000 else f"{value:.0f} µs"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(results: dict[str, dict[str, Measurement]], loads: Sequence[str], failures: dict[str, str],
             command: str, environment: str) -> str:
    """The report as markdown: one table per kind of figure, systems as columns."""
    systems = list(results)
    ours = [s for s in systems if s.startswith("fastproxy")]
    peers = [s for s in systems if s in PEERS]
    out = [f"`{command}` — {environment}", ""]
    out.append("Rate per load (ICMP: round trips/s; iperf2: datagrams/s delivered one way; UDP echo: echoes/s), "
               "loss when ≥ 0.05%:")
    out.append("")
    out += _table(["load", *systems], [[load, *(_rate(results[s].get(load)) for s in systems)] for load in loads])
    rows = []
    for load in loads:
        cells = []
        for s in systems:
            m = results[s].get(load)
            if m is None or (m.p50 is None and "avg_us" not in m.extra):
                cells.append("—")
            elif m.p50 is None:
                cells.append(f"avg {_us(m.extra['avg_us'])}")
            else:
                cells.append(f"{_us(m.p50)} / {_us(m.p99)} / {_us(m.p999)}")
        if any(c != "—" for c in cells):
            rows.append([load, *cells])
    if rows:
        out += ["", "Round-trip latency p50 / p99 / p99.9 (µs unless marked; `ping -f`: its avg):", ""]
        out += _table(["load", *systems], rows)
    if ours and peers:
        out += ["", "fastproxy's rate as a ratio to each peer's in this run (>1: fastproxy is faster; "
                "p50: ratio of median round trips, <1: fastproxy is quicker):", ""]
        header = ["load"] + [f"{o} ÷ {p}" for o in ours for p in peers]
        rows = []
        for load in loads:
            row = [load]
            for o in ours:
                for p in peers:
                    a, b = results[o].get(load), results[p].get(load)
                    if a is None or b is None or not b.rate:
                        row.append("—")
                        continue
                    cell = f"{a.rate / b.rate:.2f}"
                    if a.p50 and b.p50:
                        cell += f" (p50 {a.p50 / b.p50:.1f}×)"
                    row.append(cell)
            rows.append(row)
        out += _table(header, rows)
    tunnels = [s for s in systems if s != "kernel"]
    if tunnels:
        out += ["", "CPU µs per round trip (per delivered datagram for iperf2) of each process, "
                "client + edge + connector = total (utime+stime from /proc):", ""]
        rows = []
        for load in loads:
            cells = []
            for s in tunnels:
                m = results[s].get(load)
                if m is None or not m.cpu_us:
                    cells.append("—")
                    continue
                parts = [m.cpu_us.get(role, 0.0) for role in ("client", "edge", "connector")]
                cells.append(" + ".join(f"{v:.0f}" for v in parts) + f" = **{sum(parts):.0f}**")
            rows.append([load, *cells])
        out += _table(["load", *tunnels], rows)
    for name, reason in failures.items():
        out += ["", f"**{name} did not run**: {reason.splitlines()[0] if reason else 'unknown'}"]
    return "\n".join(out) + "\n"


def plot(results: dict[str, dict[str, Measurement]], loads: Sequence[str], path: Path) -> None:
    """Latency CDFs (ICMP W=1 solid, W=64 dashed) and rate per load per system (relative to the
    kernel path), saved to ``path`` with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = list(results)
    colors = {s: f"C{i}" for i, s in enumerate(systems)}
    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(14, 5.5))
    for s in systems:
        for load, style in (("ICMP W=1", "-"), ("ICMP W=64", "--")):
            m = results[s].get(load)
            if m is None or not m.rtts_us:
                continue
            values = np.sort(np.asarray(m.rtts_us))
            cdf.plot(values, np.arange(1, len(values) + 1) / len(values), style, color=colors[s],
                     label=f"{s} {load[5:]}")
    cdf.set_xscale("log")
    cdf.set_xlabel("round trip (µs, log)")
    cdf.set_ylabel("fraction of round trips")
    cdf.set_title("ICMP echo latency CDF (solid W=1, dashed W=64)")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=7)
    shown = [load for load in loads if any(results[s].get(load) for s in systems)]
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(shown))
    for i, s in enumerate(systems):
        heights = [results[s][load].rate if load in results[s] else 0 for load in shown]
        bars.bar(x + i * width, heights, width, label=s, color=colors[s])
    bars.set_yscale("log")
    bars.set_xticks(x + width * (len(systems) - 1) / 2)
    bars.set_xticklabels(shown, rotation=35, ha="right", fontsize=7)
    bars.set_ylabel("round trips or datagrams per second (log)")
    bars.set_title("rate per load")
    bars.grid(True, axis="y", which="both", alpha=0.3)
    bars.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
