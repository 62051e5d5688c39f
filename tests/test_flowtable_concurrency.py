"""FlowTable under churn, and lock-free readers racing the writer (compiled core)."""

from __future__ import annotations

import array
import ipaddress
import random
import threading
import time
from types import ModuleType

import pytest

MISS = 0xFFFFFFFF


def v4(i: int) -> bytes:
    return ipaddress.IPv4Address(0x0A000000 + i).packed


DSTS = [ipaddress.IPv4Address(f"198.51.100.{i}").packed for i in range(1, 5)]


@pytest.fixture
def compiled() -> ModuleType:
    return pytest.importorskip("fastproxy._core")


def test_readers_never_see_a_value_of_another_key(compiled: ModuleType) -> None:
    """Readers run lookup_batch without the GIL while the writer inserts, removes and expires.

    Every key has its own echo id and no two keys share (destination, echo id),
    so a flow is always given its client's id: the only correct answers for key
    i are MISS and echo[i]. Entries are reused for other keys all the time, so
    a torn or stale read would show up as another key's id.
    """
    n = 3000
    flows = [(i % 64, v4(i), DSTS[i % 4], (i * 7919) % 65536) for i in range(n)]
    expected = array.array("I", [f[3] for f in flows])
    packed = b"".join(compiled.pack_flow_key(*f) for f in flows)
    t = compiled.FlowTable(2048, idle_timeout=0.05)
    stop = threading.Event()
    wrong: list[tuple[int, int, int]] = []
    tallies: list[tuple[int, int]] = []

    def reader() -> None:
        out = array.array("I", bytes(4 * n))
        batches = hits = 0
        while not stop.is_set():
            hits += t.lookup_batch(packed, out)
            batches += 1
            if out != expected:
                for i, (got, want) in enumerate(zip(out, expected)):
                    if got != MISS and got != want:
                        wrong.append((i, got, want))
        tallies.append((batches, hits))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    rng = random.Random(1)
    now = 0.0
    deadline = time.monotonic() + 3.0
    ops = 0
    try:
        while time.monotonic() < deadline and not wrong:
            for _ in range(500):
                f = flows[rng.randrange(n)]
                r = rng.random()
                if r < 0.6:
                    if len(t) < t.capacity:
                        assert t.acquire(*f, now) == f[3]
                elif r < 0.9:
                    t.remove(*f)
                elif r < 0.99:
                    now += 0.01
                    t.expire(now, max_scan=256)
                else:
                    t.remove_connection(f[0])
                ops += 1
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert wrong == [], f"readers saw ids of other keys: {wrong[:5]}"
    batches = sum(b for b, _ in tallies)
    hits = sum(h for _, h in tallies)
    assert ops > 10_000 and batches > 20
    assert 0 < hits < batches * n  # readers saw both hits and misses


@pytest.mark.parametrize("impl_name, cycles", [("compiled", 2_000_000), ("twin", 100_000)])
def test_churn_keeps_lookups_and_len_right(impl_name: str, cycles: int) -> None:
    """Millions of acquire/expire cycles at moderate size: no drift, no lost or phantom flows."""
    from tests.conftest import load_impl

    impl = load_impl(impl_name)
    t = impl.FlowTable(1024, idle_timeout=0.25)
    rng = random.Random(7)
    model: dict[tuple[int, bytes, bytes, int], tuple[int, float]] = {}
    acquired = 0
    step = 0  # time in 1/128 s, exact in binary floating point
    now = 0.0
    for cycle in range(cycles):
        key = (rng.randrange(16), v4(rng.randrange(4096)), DSTS[rng.randrange(4)], rng.randrange(65536))
        if len(t) < t.capacity or key in model:
            model[key] = (t.acquire(*key, now), now)
            acquired += 1
        if cycle % 16 == 15:
            step += 1
            now = step / 128
            for conn, src, dst, echo, assigned in t.expire(now, max_scan=128):
                assert model.pop((conn, src, dst, echo))[0] == assigned
        if cycle % 200_000 == 0:
            assert len(t) == len(model)
    assert acquired > cycles * 0.9
    assert len(t) == len(model) > 300
    for key, (assigned, last) in model.items():
        assert t.lookup(*key) == assigned
        assert t.reverse(key[2], assigned) == (key[0], key[1], key[3])
    stale = {k for k, (_, last) in model.items() if int(now * 1000) - int(last * 1000) > 250}
    removed = {(c, s, d, e) for c, s, d, e, _ in t.expire(now)}
    assert removed == stale
    assert len(t) == len(model) - len(stale)
