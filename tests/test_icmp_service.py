"""IcmpService on the event loop (uvloop when installed): per-descriptor readers drain the backend
batch by batch and hand each batch to the client side as one list."""

from __future__ import annotations

import asyncio
import socket

import pytest
from scapy.layers.inet import ICMP, IP

from fastproxy._impl import core
from fastproxy.icmp import IcmpProxy, IcmpService, ReceivedPacket, create_backend
from fastproxy.icmp.service import new_event_loop

from .conftest import require_root
from .icmp_fakes import FakeBackend, addr
from .test_icmp_proxy import CLIENT, CONNECTOR, TARGET, checksums_ok, echo_request, reply_from_target

LOOPBACK_CLIENT = "100.64.0.2"


def run(coroutine):
    loop = new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, 10.0))
    finally:
        loop.close()


@pytest.mark.privileged
def test_raw_backend_round_trips_in_batches_on_the_loop() -> None:
    require_root("raw ICMP sockets")
    requests = [bytes(IP(src=LOOPBACK_CLIENT, dst="127.0.0.1", ttl=64) / ICMP(type=8, id=0x5150 + i % 3, seq=i) / b"svc")
                for i in range(150)]
    calls: list[list] = []

    async def main() -> None:
        proxy = IcmpProxy(["127.0.0.0/8"], create_backend("raw", batch_size=64), icmpv4_source="127.0.0.1")
        async with IcmpService(proxy, calls.append) as service:
            service.client_packets(9, requests)
            for _ in range(200):
                if sum(map(len, calls)) >= len(requests):
                    break
                await asyncio.sleep(0.01)
            service.close_connection(9)
            assert proxy.flow_count == 0

    run(main())
    replies = [packet for batch in calls for _conn, packet in batch]
    assert len(replies) == len(requests)
    assert all(isinstance(batch, list) and batch for batch in calls)
    assert len(calls) < len(requests) // 8  # lists per batch, not a call per packet
    seen = set()
    for conn, packet in (item for batch in calls for item in batch):
        parsed = IP(bytes(packet))
        assert conn == 9 and parsed.dst == LOOPBACK_CLIENT and parsed[ICMP].type == 0 and checksums_ok(bytes(packet))
        seen.add((parsed[ICMP].id, parsed[ICMP].seq))
    assert seen == {(0x5150 + i % 3, i) for i in range(150)}


class WakingBackend(FakeBackend):
    """The fake per-packet backend with a real descriptor that is readable while packets wait."""

    def __init__(self) -> None:
        super().__init__()
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)

    def deliver(self, packets: list[ReceivedPacket]) -> None:
        self.incoming += packets
        self.writer.send(b"!")

    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        out = super().receive(limit)
        if not self.incoming:
            try:
                self.reader.recv(4096)
            except BlockingIOError:
                pass
        return out

    def filenos(self) -> list[int]:
        return [self.reader.fileno()]

    def close(self) -> None:
        super().close()
        self.reader.close()
        self.writer.close()


def test_per_packet_backend_drained_with_one_list_per_batch() -> None:
    backend = WakingBackend()
    calls: list[list] = []

    async def main() -> None:
        proxy = IcmpProxy(["203.0.113.0/24"], backend, icmpv4_source=CONNECTOR[4])
        async with IcmpService(proxy, calls.append, read_limit=64) as service:
            service.client_packets(3, [echo_request(4, CLIENT[4], TARGET[4], seq=s) for s in range(100)]
                                   + [echo_request(4, CLIENT[4], TARGET[4], ttl=1)])
            assert len(calls) == 1 and len(calls[0]) == 1  # the Time Exceeded answer, at once
            flow = backend.sent[0][0]
            backend.deliver([ReceivedPacket(reply_from_target(4, flow, seq=s), None) for s in range(100)])
            for _ in range(100):
                if sum(map(len, calls)) == 101:
                    break
                await asyncio.sleep(0.01)

    run(main())
    assert [len(batch) for batch in calls] == [1, 64, 36]
    assert {IP(bytes(packet))[ICMP].seq for batch in calls[1:] for _conn, packet in batch} == set(range(100))
    assert addr(CLIENT[4]) == bytes(core.parse_packet(calls[1][0][1]).dst)


def test_close_without_start_still_closes_the_backend() -> None:
    backend = WakingBackend()
    service = IcmpService(IcmpProxy(["203.0.113.0/24"], backend, icmpv4_source=CONNECTOR[4]), lambda batch: None)
    service.close()  # e.g. the connector gave up before its loop started the service
    assert backend.reader.fileno() == -1 and backend.writer.fileno() == -1
    service.close()  # idempotent
