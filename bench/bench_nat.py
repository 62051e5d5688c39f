"""Benchmark of the NAT hot path: parse + verify + flow lookup + rewrite + checksum update.

One EchoNat.outbound call per batch of 64 whole 64-byte IPv4 echo requests (20 + 8 +
36) whose flows exist (the steady state), compiled core vs pure-Python twin in the
same run; and EchoNat.inbound on the matching echo replies. ns/packet = time / 64.

Run:
    PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_nat.py --benchmark-only
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.conftest import IMPLEMENTATIONS, load_impl

BATCH = 64
CLIENT = ipaddress.ip_address("100.64.0.2").packed
CONNECTOR = ipaddress.ip_address("198.51.100.1").packed


def target(i: int) -> bytes:
    return ipaddress.ip_address(0xC0000200 + (i % 250) + (i // 250) * 256).packed  # 192.0.2.x, 192.0.3.x, ...


def setup(name: str, flows: int) -> tuple[object, object, list[bytes], object, object]:
    core = load_impl(name)
    table = core.FlowTable(4096)
    nat = core.EchoNat(table, [(bytes([192, 0, 0, 0]), 16)])
    packets = [core.build_echo(CLIENT, target(i % flows), 0x100 + i % flows, i, bytes(36)) for i in range(BATCH)]
    assert len(packets[0]) == 64
    out4, out6 = core.PacketBatch(BATCH), core.PacketBatch(BATCH)
    for i in range(flows):  # create every flow once: the benchmark measures the steady state
        nat.outbound(1, [core.build_echo(CLIENT, target(i), 0x100 + i, 0, bytes(36))], out4, out6, 1.0)
    return core, nat, packets, out4, out6


@pytest.mark.parametrize("flows", [1, 1000])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_outbound_batch(benchmark, name: str, flows: int) -> None:
    core, nat, packets, out4, out6 = setup(name, flows)
    benchmark.group = f"EchoNat.outbound, batch of {BATCH} x 64 B, {flows} flows"
    n4, n6, refused = benchmark(nat.outbound, 1, packets, out4, out6, 2.0)
    assert (n4, n6, refused) == (BATCH, 0, [])


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_inbound_batch(benchmark, name: str) -> None:
    core, nat, packets, out4, out6 = setup(name, 1000)
    nat.outbound(1, packets, out4, out6, 2.0)
    received = core.PacketBatch(BATCH)
    for i in range(BATCH):  # the target's echo replies to what we sent, as a raw socket delivers them
        info = core.parse_packet(packets[i])
        reply = bytearray(core.build_echo(info.dst, CONNECTOR, 0, info.echo_seq, bytes(36), reply=True))
        core.rewrite_echo(reply, echo_id=int.from_bytes(out4.data(i)[4:6], "big"))
        received.set(i, reply, address=(str(ipaddress.ip_address(info.dst)), 0), ttl=64)
    received.count = BATCH
    benchmark.group = f"EchoNat.inbound, batch of {BATCH} x 64 B, 1000 flows"
    replies = benchmark(nat.inbound, received, 4, 3.0)
    assert len(replies) == BATCH
