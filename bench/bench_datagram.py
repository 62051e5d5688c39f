"""Datagram codec speed: compiled core vs the pure-Python twin, same run, same datagrams.

Run: PYTHONPATH=src:. /work/devvenv/bin/python -m pytest bench/bench_datagram.py --benchmark-only
"""

from __future__ import annotations

import pytest

from .conftest import IMPLEMENTATIONS, load_impl

RID = bytes(range(16))
PACKET = bytes(84)  # a 64-byte ping inside IPv4 + ICMP headers


def _samples() -> dict[str, bytes]:
    twin = load_impl("twin")
    return {
        "icmp": twin.encode_icmp(PACKET),
        "payload": twin.encode_udp_payload(RID, bytes(512)),
        "registration": twin.encode_udp_registration(RID, bytes(16), 53, 30, payload=bytes(64)),
        "response": twin.encode_registration_response(RID, 0xFF, "destination unreachable"),
    }


@pytest.mark.parametrize("kind", ["icmp", "payload", "registration", "response"])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_decode(benchmark, name: str, kind: str) -> None:
    impl = load_impl(name)
    data = _samples()[kind]
    benchmark.group = f"decode {kind}"
    assert benchmark(impl.decode_datagram, data) == load_impl("twin").decode_datagram(data)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_encode_icmp(benchmark, name: str) -> None:
    impl = load_impl(name)
    benchmark.group = "encode icmp"
    assert benchmark(impl.encode_icmp, PACKET)[0] == 2


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_encode_udp_payload(benchmark, name: str) -> None:
    impl = load_impl(name)
    payload = bytes(512)
    benchmark.group = "encode udp payload"
    assert benchmark(impl.encode_udp_payload, RID, payload)[0] == 1
