"""Fake ICMP backends (per-packet and batched) and packet helpers for the sans-I/O proxy tests."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from fastproxy._impl import core
from fastproxy.icmp.backends import BackendFlow, BatchedBackend, PerPacketBackend, ReceivedPacket, SendFailure


def addr(text: str) -> bytes:
    """Packed bytes of an IPv4/IPv6 address."""
    return ipaddress.ip_address(text).packed


class FakeBackend(PerPacketBackend):
    """Records what the proxy asks for; replies are injected by the test."""

    name = "fake"

    def __init__(self) -> None:
        self.open: set[BackendFlow] = set()
        self.opened: list[BackendFlow] = []
        self.closed: list[BackendFlow] = []
        self.sent: list[tuple[BackendFlow, bytes, int]] = []
        self.fail_next: list[tuple[int, int, int]] = []  # (errno, mtu) per upcoming send, by call order
        self.incoming: list[ReceivedPacket] = []
        self.drained: list[ReceivedPacket] = []  # what the next flush "takes off the network"
        self._batch = 0

    def open_flow(self, flow: BackendFlow) -> None:
        self.open.add(flow)
        self.opened.append(flow)

    def close_flow(self, flow: BackendFlow) -> None:
        self.open.discard(flow)
        self.closed.append(flow)

    def send_echo(self, flow: BackendFlow, message, ttl: int) -> None:
        assert flow in self.open
        self.sent.append((flow, bytes(message), ttl))
        self._batch += 1

    def flush(self) -> list[SendFailure]:
        failures = [SendFailure(index, err, mtu) for index, err, mtu in self.fail_next if index < self._batch]
        self.fail_next = []
        self._batch = 0
        return failures

    def receive(self, limit: int = 256) -> list[ReceivedPacket]:
        out, self.incoming = self.incoming[:limit], self.incoming[limit:]
        return out

    def received_while_sending(self) -> list[ReceivedPacket]:
        out, self.drained = self.drained, []
        return out

    def filenos(self) -> list[int]:
        return []

    def close(self) -> None:
        self.open.clear()


class SentFlow(NamedTuple):
    """What a batched backend knows of a request's flow: its destination and assigned echo id."""

    dst: bytes
    echo_id: int


class FakeBatchedBackend(BatchedBackend):
    """A batched backend (like raw sockets) without sockets: records the send batches, and hands
    injected packets back in receive batches as raw sockets would fill them (IPv4 with the IP
    header, IPv6 as the ICMPv6 message with the peer address and hop limit)."""

    name = "fake-batched"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[SentFlow, bytes, int]] = []
        self.fail_next: list[tuple[int, int, int]] = []  # (slot, errno, mtu) for the next send_batch
        self.incoming: list[ReceivedPacket] = []
        self._received = core.PacketBatch(batch_size)

    def families(self) -> tuple[int, ...]:
        return (4, 6)

    def send_batch(self, family: int, batch, count: int) -> list[SendFailure]:
        failed = {slot: SendFailure(slot, err, mtu) for slot, err, mtu in self.fail_next if slot < count}
        self.fail_next = []
        for slot in range(count):
            if slot not in failed:
                message = bytes(batch.data(slot))
                dst = ipaddress.ip_address(batch.address(slot)[0]).packed
                assert len(dst) == (4 if family == 4 else 16)
                self.sent.append((SentFlow(dst, int.from_bytes(message[4:6], "big")), message, batch.ttl(slot)))
        return list(failed.values())

    def receive_batch(self, fd: int):
        family, batch = fd, self._received
        mine = [r for r in self.incoming if r.packet[0] >> 4 == family][: self.batch_size]
        for item in mine:
            self.incoming.remove(item)
        for slot, (packet, _flow) in enumerate(mine):
            src = packet[12:16] if family == 4 else packet[8:24]
            text = str(ipaddress.ip_address(src))
            if family == 4:
                batch.set(slot, packet, address=(text, 0), ttl=packet[8])
            else:
                batch.set(slot, packet[40:], address=(text, 0, 0, 0), ttl=packet[7])
        batch.count = len(mine)
        return family, batch

    def filenos(self) -> list[int]:
        return [4, 6]  # stand-ins: receive_batch takes the family for the descriptor

    def close(self) -> None:
        self.incoming.clear()
