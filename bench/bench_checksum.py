"""Checksum throughput: compiled core vs the pure-Python twin, same run, same buffers.

Run: PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_checksum.py --benchmark-only
Each group (one buffer size) holds both implementations; GB/s is in extra_info.
"""

from __future__ import annotations

import os

import pytest

from .conftest import IMPLEMENTATIONS, load_impl

SIZES = [1500, 64]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_internet_checksum(benchmark, name: str, size: int) -> None:
    impl = load_impl(name)
    # One byte in: an odd start address, as a packet inside a receive buffer often has.
    data = memoryview(bytearray(os.urandom(size + 1)))[1:]
    benchmark.group = f"internet_checksum {size} B"
    result = benchmark(impl.internet_checksum, data)
    assert result == load_impl("twin").internet_checksum(data)
    benchmark.extra_info["GB/s"] = round(size / benchmark.stats.stats.min / 1e9, 3)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_checksum_update16(benchmark, name: str) -> None:
    impl = load_impl(name)
    benchmark.group = "checksum_update16"
    assert benchmark(impl.checksum_update16, 0xDD2F, 0x5555, 0x3285) == 0
