"""FlowTable benchmarks: batched lookups at 1M flows, acquire rate, memory per flow.

Run:  PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_flowtable.py --benchmark-only
Each test stores its per-operation figure in extra_info["ns_per_op"] (and bytes per
flow for the memory test); compare the compiled core with the twin and with a
Python loop over lookup() from the same run. The twin uses a 2**16 table (filling
1M flows in Python takes too long); its dict lookups barely depend on size.
"""

from __future__ import annotations

import array
import ipaddress
import random
from types import ModuleType

import pytest

from tests.conftest import load_impl

BATCH = 128
SAMPLE = 65536  # lookups per measured round


def make_flows(n: int, seed: int = 3) -> list[tuple[int, bytes, bytes, int]]:
    """n distinct flows: 4096 connections, v4 and v6 mixed, random echo ids."""
    rng = random.Random(seed)
    flows = []
    for i in range(n):
        if i % 4:
            src, dst = (0x0A000000 + i).to_bytes(4, "big"), (0xC6336400 + i % 251).to_bytes(4, "big")
        else:
            src = ipaddress.IPv6Address((0x20010DB8 << 96) | i).packed
            dst = ipaddress.IPv6Address((0x20010DB8FFFF << 80) | (i % 251)).packed
        flows.append((i % 4096, src, dst, rng.randrange(65536)))
    return flows


class Loaded:
    def __init__(self, impl: ModuleType, capacity: int, live: int) -> None:
        self.table = impl.FlowTable(capacity)
        self.flows = make_flows(live)
        for f in self.flows:
            self.table.acquire(*f, 0.0)
        sample = random.Random(5).choices(self.flows, k=SAMPLE)  # random order over the whole table
        self.sample = sample
        packed = b"".join(impl.pack_flow_key(*f) for f in sample)
        size = impl.FLOW_KEY_SIZE * BATCH
        self.batches = [memoryview(packed)[i : i + size] for i in range(0, len(packed), size)]
        self.out = array.array("I", bytes(4 * BATCH))


@pytest.fixture(scope="module")
def compiled_1m() -> Loaded:
    return Loaded(load_impl("compiled"), 2**20, 1_000_000)


@pytest.fixture(scope="module")
def twin_64k() -> Loaded:
    return Loaded(load_impl("twin"), 2**16, 60_000)


def run_batches(loaded: Loaded) -> int:
    hits = 0
    lookup_batch, out = loaded.table.lookup_batch, loaded.out
    for b in loaded.batches:
        hits += lookup_batch(b, out)
    return hits


def record(benchmark, per_round: int) -> None:
    benchmark.extra_info["ns_per_op"] = round(benchmark.stats.stats.min * 1e9 / per_round, 1)


def test_lookup_batch_compiled_1m_flows(benchmark, compiled_1m: Loaded) -> None:
    hits = benchmark.pedantic(run_batches, args=(compiled_1m,), rounds=7, iterations=1)
    assert hits == SAMPLE
    record(benchmark, SAMPLE)


def test_lookup_loop_compiled_1m_flows(benchmark, compiled_1m: Loaded) -> None:
    """Baseline: a Python loop calling lookup() once per key, same keys, same table."""

    def loop() -> int:
        lookup = compiled_1m.table.lookup
        return sum(lookup(*f) is not None for f in compiled_1m.sample)

    assert benchmark.pedantic(loop, rounds=3, iterations=1) == SAMPLE
    record(benchmark, SAMPLE)


def test_lookup_batch_twin_64k_flows(benchmark, twin_64k: Loaded) -> None:
    assert benchmark.pedantic(run_batches, args=(twin_64k,), rounds=3, iterations=1) == SAMPLE
    record(benchmark, SAMPLE)


@pytest.mark.parametrize("impl_name", ["compiled", "twin"])
def test_acquire_new_flows(benchmark, impl_name: str) -> None:
    impl = load_impl(impl_name)
    flows = make_flows(SAMPLE, seed=9)

    def fill() -> int:
        t = impl.FlowTable(2**17)
        acquire = t.acquire
        for f in flows:
            acquire(*f, 0.0)
        return len(t)

    assert benchmark.pedantic(fill, rounds=3, iterations=1) == SAMPLE
    record(benchmark, SAMPLE)


def test_memory_per_flow_compiled(benchmark, compiled_1m: Loaded) -> None:
    t = compiled_1m.table
    per_flow = benchmark.pedantic(lambda: t.memory_bytes / t.capacity, rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_flow"] = round(per_flow, 3)
    assert per_flow <= 64.01
