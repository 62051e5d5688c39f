"""A fake ICMP backend and packet helpers for the sans-I/O proxy tests."""

from __future__ import annotations

import ipaddress

from fastproxy.icmp.backends import BackendFlow, IcmpBackend, ReceivedPacket, SendFailure


def addr(text: str) -> bytes:
    """Packed bytes of an IPv4/IPv6 address."""
    return ipaddress.ip_address(text).packed


class FakeBackend(IcmpBackend):
    """Records what the proxy asks for; replies are injected by the test."""

    name = "fake"

    def __init__(self) -> None:
        self.open: set[BackendFlow] = set()
        self.opened: list[BackendFlow] = []
        self.closed: list[BackendFlow] = []
        self.sent: list[tuple[BackendFlow, bytes, int]] = []
        self.fail_next: list[tuple[int, int, int]] = []  # (errno, mtu) per upcoming send, by call order
        self.incoming: list[ReceivedPacket] = []
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

    def filenos(self) -> list[int]:
        return []

    def close(self) -> None:
        self.open.clear()
