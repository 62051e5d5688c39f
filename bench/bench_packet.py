"""Benchmarks of the packet core: compiled vs pure-Python twin on 64-byte echo packets.

Run (figures go to bench/RESULTS.md as compiled/twin ratios):
    PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_packet.py --benchmark-only
"""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.conftest import IMPLEMENTATIONS, load_impl

V4 = (b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x02")
V6 = (b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02")


def echo_64(impl: ModuleType, family: str) -> bytes:
    """A 64-byte echo request: 20 + 8 + 36 (v4) or 40 + 8 + 16 (v6)."""
    src, dst = V4 if family == "v4" else V6
    packet = impl.build_echo(src, dst, 0x1234, 1, bytes(range(36 if family == "v4" else 16)))
    assert len(packet) == 64
    return packet


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_parse_packet(benchmark, name: str, family: str) -> None:
    impl = load_impl(name)
    benchmark.group = f"parse_packet {family} 64 B"
    packet = echo_64(impl, family)
    info = benchmark(impl.parse_packet, packet)
    assert info.echo_id == 0x1234


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_rewrite_echo(benchmark, name: str, family: str) -> None:
    impl = load_impl(name)
    benchmark.group = f"rewrite_echo {family} 64 B (src, echo_id, ttl)"
    buf = bytearray(echo_64(impl, family))
    new_src = (V4 if family == "v4" else V6)[1]
    benchmark(lambda: impl.rewrite_echo(buf, src=new_src, echo_id=0x4321, ttl=63))
    assert impl.parse_packet(buf).echo_id == 0x4321
