"""fastproxy forward-udp: per-peer UDP sessions through a fake tunnel, real local sockets
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fastproxy.client.forward import UdpForward, parse_forward_spec
from fastproxy.client.interfaces import UdpSession


class FakeSession:
    """Echoes each payload back upper-cased, like a service behind the connector."""

    def __init__(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self.sent: list[bytes] = []
        self.closed = False
        self._answers: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)
        self._answers.put_nowait(payload.upper())

    async def receive(self, timeout: float | None = None) -> bytes:
        answer = await self._answers.get()
        if answer is None:
            raise EOFError("session closed")
        return answer

    def close(self) -> None:
        self.closed = True
        self._answers.put_nowait(None)


class FakeOpener:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.sessions: list[FakeSession] = []
        self.delay = delay
        self.fail = fail
        self.error: BaseException = ConnectionError("destination unreachable")

    async def open_udp(self, host: str, port: int) -> FakeSession:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.error
        session = FakeSession((host, port))
        self.sessions.append(session)
        return session


def test_fake_session_is_a_udp_session() -> None:
    assert isinstance(FakeSession(("h", 1)), UdpSession)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5353=10.0.0.53:53", (("127.0.0.1", 5353), ("10.0.0.53", 53))),
    ("[::1]:5353=[fd12::53]:53", (("::1", 5353), ("fd12::53", 53))),
])
def test_parse_forward_spec(text: str, expected: object) -> None:
    assert parse_forward_spec(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:5353", "127.0.0.1:x=10.0.0.1:53", "127.0.0.1:53=10.0.0.1"])
def test_parse_forward_spec_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_forward_spec(text)


async def _exchange(sock: socket.socket, address: tuple[str, int], payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    sock.sendto(payload, address)
    return await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)


def test_each_peer_gets_its_own_session_and_answers() -> None:
    async def main() -> None:
        opener = FakeOpener(delay=0.05)
        forward = UdpForward(opener, ("10.0.0.53", 53))
        address = await forward.start("127.0.0.1", 0)
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
        try:
            # Two datagrams before the session is open: both wait and go, in order.
            a.sendto(b"first", address)
            assert await _exchange(a, address, b"second") == b"FIRST"
            assert await asyncio.wait_for(asyncio.get_running_loop().sock_recv(a, 2048), 5) == b"SECOND"
            assert await _exchange(b, address, b"from b") == b"FROM B"
            assert await _exchange(a, address, b"again") == b"AGAIN"
            assert len(opener.sessions) == 2 and forward.peers == 2
            assert opener.sessions[0].remote == ("10.0.0.53", 53)
            assert opener.sessions[0].sent == [b"first", b"second", b"again"]
            assert forward.stats["datagrams_from_local"] == 4 and forward.stats["datagrams_to_local"] == 4
        finally:
            forward.close()
            a.close()
            b.close()
        assert all(s.closed for s in opener.sessions)

    asyncio.run(main())


def test_idle_peers_expire_and_failures_are_counted() -> None:
    async def main() -> None:
        now = [0.0]
        opener = FakeOpener()
        forward = UdpForward(opener, ("10.0.0.53", 53), idle_timeout=30, clock=lambda: now[0])
        address = await forward.start("127.0.0.1", 0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            assert await _exchange(sock, address, b"x") == b"X"
            now[0] = 20.0
            assert forward.expire() == 0
            now[0] = 60.0
            assert forward.expire() == 1 and forward.peers == 0
            assert opener.sessions[0].closed
            assert await _exchange(sock, address, b"y") == b"Y"  # a new session
            assert len(opener.sessions) == 2
            opener.fail = True
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.sendto(b"lost", address)
            for _ in range(50):
                if forward.drops["forward_session_open_failed"]:
                    break
                await asyncio.sleep(0.01)
            other.close()
            assert forward.drops["forward_session_open_failed"] == 1
        finally:
            forward.close()
            sock.close()

    asyncio.run(main())


def test_peer_limit() -> None:
    async def main() -> None:
        forward = UdpForward(FakeOpener(delay=10), ("10.0.0.53", 53), max_peers=1)
        address = await forward.start("127.0.0.1", 0)
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for s in socks:
                s.sendto(b"x", address)
            for _ in range(50):
                if forward.drops["forward_peer_limit"]:
                    break
                await asyncio.sleep(0.01)
            assert forward.drops["forward_peer_limit"] == 1 and forward.peers == 1
        finally:
            forward.close()
            for s in socks:
                s.close()

    asyncio.run(main())


def test_an_unanswered_registration_is_counted_not_raised() -> None:
    """Client.open_udp times out with asyncio.TimeoutError (on Python 3.10 not the builtin
    TimeoutError): the peer's datagrams are counted as failed and the peer forgotten."""

    async def main() -> None:
        opener = FakeOpener(fail=True)
        opener.error = asyncio.TimeoutError()
        forward = UdpForward(opener, ("10.0.0.53", 53))
        address = await forward.start("127.0.0.1", 0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.sendto(b"lost", address)
            for _ in range(200):
                if forward.drops["forward_session_open_failed"]:
                    break
                await asyncio.sleep(0.01)
            assert forward.drops["forward_session_open_failed"] == 1 and forward.peers == 0
        finally:
            forward.close()
            sock.close()

    asyncio.run(main())


def test_oversize_datagrams_are_counted_and_logged_once_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    """1,300 and 3,000 bytes do not fit a tunnel datagram (1280 bytes of payload): each is
    a counted drop, the first of each peer one warning that says why; smaller ones still go."""
    from collections import Counter

    async def main() -> None:
        opener = FakeOpener()
        opener.drops = Counter()  # type: ignore[attr-defined]  # like fastproxy.Client's
        forward = UdpForward(opener, ("10.0.0.53", 53))
        address = await forward.start("127.0.0.1", 0)
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.setblocking(False)
        a.bind(("127.0.0.1", 0))
        try:
            for size in (1300, 3000, 1281):
                a.sendto(b"x" * size, address)
            assert await _exchange(a, address, b"y" * 1280) == b"Y" * 1280
            assert forward.drops["forward_payload_too_large"] == 3
            assert opener.drops["forward_payload_too_large"] == 3  # the client's counter: its metrics
            assert opener.sessions[0].sent == [b"y" * 1280]
        finally:
            forward.close()
            a.close()

    with caplog.at_level("WARNING", logger="fastproxy.client.forward"):
        asyncio.run(main())
    lines = [r for r in caplog.records if "datagram" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "dropping a 1300-byte datagram from 127.0.0.1:" in lines[0].getMessage()
    assert "at most 1280 bytes of UDP payload" in lines[0].getMessage()
    assert lines[0].event == "udp_payload_too_large"  # type: ignore[attr-defined]
