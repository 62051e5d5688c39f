"""Echo requests proxied per second through IcmpProxy to 127.0.0.1, and CPU time per round trip.

The issue's shape: whole IPv4 echo requests (56-byte payload) handed to the
proxy in memory as if they came from datagrams, destination 127.0.0.1, a window
of 64 outstanding, every reply checked (echo reply, to the client, with the
client's echo id). The driver plays the QUIC session: it hands over a list per
batch and takes a list per batch, so its own Python costs little per packet.

Cases, all in one run, each in its own process inside a throw-away network
namespace (root only; ping_group_range set there for the ping backend):

- raw batched backend and ping-socket backend, 1 flow and 1,000 flows, with the
  compiled core;
- the same with the pure-Python twin (FASTPROXY_NO_EXTENSIONS=1) as the
  baseline (a tenth of the requests: it is slow, and its rate does not depend on
  the count);
- a C echo loop (bench/c/echo_loop.c, compiled with ``cc -O2`` at run time) on
  a raw and on a ping socket, as a flood with 64 outstanding and as a
  send-and-wait loop: the physical limit of this machine's kernel.

CPU per round trip is user+sys of the measuring process (resource.getrusage;
the C loop measures its own), which includes the kernel's work for the echo on
loopback. Bounded: ``FASTPROXY_BENCH_ICMP_REQUESTS`` requests a case (default
20,000; the issue's shape is 200,000) and 60 s a case at most.

Run: ``FASTPROXY_BENCH_ICMP_REQUESTS=200000 PYTHONPATH=src:. /work/devvenv/bin/python -m pytest
bench/bench_icmp_proxy.py --benchmark-only -s``
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
C_LOOP = Path(__file__).parent / "c" / "echo_loop.c"
REQUESTS = int(os.environ.get("FASTPROXY_BENCH_ICMP_REQUESTS", "20000"))
TWIN_REQUESTS = max(REQUESTS // 10, 1000)
WINDOW = 64
TIME_LIMIT = 60.0
CLIENT = bytes([100, 64, 0, 2])


def measure(backend_name: str, flows: int, requests: int) -> dict[str, float]:
    """Run one case in this process; returns the rate, the CPU per round trip and the counts."""
    from fastproxy import _impl
    from fastproxy._impl import core
    from fastproxy.icmp import IcmpProxy, create_backend

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit[1], limit[1]))
    proxy = IcmpProxy(["127.0.0.0/8"], create_backend(backend_name), icmpv4_source="127.0.0.1",
                      max_flows=4096, max_flows_per_connection=0)
    dst = bytes([127, 0, 0, 1])
    payload = bytes(range(56))
    # A ring of prepared requests, flows interleaved (1,000 flows: every window touches 64 of them).
    ring = [core.build_echo(CLIENT, dst, 0x1000 + i % flows, i // flows, payload) for i in range(max(4 * flows, 256))]
    ring += ring[:WINDOW]  # any window-sized slice from a position < len(ring) - WINDOW is contiguous
    wrap = len(ring) - WINDOW
    fds = proxy.backend.filenos()
    read = proxy.read_backend
    handle = proxy.handle_client_packets
    sent = received = checked_bad = position = 0
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    while received < requests and time.perf_counter() - start < TIME_LIMIT:
        room = min(WINDOW - (sent - received), requests - sent)
        if room > 0:
            handle(1, ring[position : position + room])
            position = (position + room) % wrap
            sent += room
        got = 0
        for fd in fds:
            while True:
                replies = read(fd)
                if replies is None:
                    break
                got += len(replies)
                # The client's view: an echo reply (type 0) addressed to the client.
                checked_bad += sum(1 for conn, packet in replies if conn != 1 or packet[20] or packet[16:20] != CLIENT)
        if got:
            received += got
        elif not select.select(fds, [], [], 1.0)[0]:
            sent = received  # lost in flight (should not happen on loopback): refill the window
    elapsed = time.perf_counter() - start
    usage_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage_end.ru_utime - usage_start.ru_utime) + (usage_end.ru_stime - usage_start.ru_stime)
    forwarded = proxy.metrics.forwarded
    proxy.close()
    return {"compiled": float(_impl.COMPILED), "received": received, "bad_replies": checked_bad,
            "forwarded": forwarded, "seconds": elapsed, "per_second": received / elapsed,
            "cpu_us_per_rt": 1e6 * cpu / max(received, 1)}


def _run(namespace: str, command: list[str], env: dict[str, str]) -> dict[str, float]:
    result = subprocess.run(["ip", "netns", "exec", namespace, *command], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=TIME_LIMIT * 2, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_case(namespace: str, backend_name: str, flows: int, twin: bool) -> dict[str, float]:
    """``measure`` in a subprocess inside ``namespace`` (twin: FASTPROXY_NO_EXTENSIONS=1)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    if twin:
        env["FASTPROXY_NO_EXTENSIONS"] = "1"
    else:
        env.pop("FASTPROXY_NO_EXTENSIONS", None)
    requests = TWIN_REQUESTS if twin else REQUESTS
    return _run(namespace, [sys.executable, "-m", "bench.bench_icmp_proxy", backend_name, str(flows), str(requests)],
                env)


@pytest.fixture(scope="module")
def namespace():
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace for the ping backend)")
    from tests.netns import Topology

    with Topology(links=[], nodes=["bench"], sysctls={"bench": {"net.ipv4.ping_group_range": "0 2147483647"}}) as topo:
        yield topo.ns("bench")


@pytest.fixture(scope="module")
def echo_loop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/c/echo_loop.c compiled with cc -O2."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the echo-loop baseline")
    exe = tmp_path_factory.mktemp("echo_loop") / "echo_loop"
    subprocess.run([cc, "-O2", "-o", str(exe), str(C_LOOP)], check=True)
    return exe


@pytest.mark.parametrize("flows", [1, 1000])
@pytest.mark.parametrize("backend_name", ["raw", "ping"])
def test_icmp_proxy_round_trips(benchmark, namespace: str, echo_loop: Path, backend_name: str, flows: int) -> None:
    """One pedantic round per case: twin, C loop (flood, then send-and-wait) on the backend's socket
    kind, then the compiled proxy, back to back so the C loop sees the same machine load; the
    figures and their ratios go into extra_info."""
    results: dict[str, dict[str, float]] = {}

    def run() -> None:
        results["twin"] = run_case(namespace, backend_name, flows, twin=True)
        for mode in ("flood", "wait"):
            results[mode] = _run(namespace, [str(echo_loop), backend_name, mode, str(REQUESTS)], dict(os.environ))
        results["core"] = run_case(namespace, backend_name, flows, twin=False)

    benchmark.pedantic(run, rounds=1, iterations=1)
    core_result, twin_result, flood, wait = results["core"], results["twin"], results["flood"], results["wait"]
    assert core_result["received"] == REQUESTS and twin_result["received"] == TWIN_REQUESTS
    assert core_result["bad_replies"] == 0 and twin_result["bad_replies"] == 0
    benchmark.extra_info.update({
        "core_per_second": round(core_result["per_second"]),
        "core_cpu_us_per_rt": round(core_result["cpu_us_per_rt"], 2),
        "twin_per_second": round(twin_result["per_second"]),
        "twin_cpu_us_per_rt": round(twin_result["cpu_us_per_rt"], 1),
        "speedup_vs_twin": round(core_result["per_second"] / twin_result["per_second"], 2),
        "c_flood_per_second": round(flood["per_second"]),
        "c_flood_cpu_us_per_rt": round(flood["cpu_us_per_rt"], 2),
        "c_wait_per_second": round(wait["per_second"]),
        "vs_c_flood": round(core_result["per_second"] / flood["per_second"], 2),
        "vs_c_wait": round(core_result["per_second"] / wait["per_second"], 2),
        # CPU per round trip does not move with the machine's load: the sturdier comparison.
        "cpu_vs_c_flood": round(flood["cpu_us_per_rt"] / core_result["cpu_us_per_rt"], 2),
        "core_is_compiled": bool(core_result["compiled"]),
    })
    print(f"\nICMP {backend_name} flows={flows}: {benchmark.extra_info}")


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
