"""The QUIC transport module alone: batches both ways, the datagram fast path, the
control stream, closing with a reason, and keepalive pings."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from qh3.quic import events

from fastproxy.tunnel import quic
from tests.tunnel_support import Inbox, certificate, pin_trust, run, wait_for


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_datagram_batches_echo_through_the_fast_path(host: str) -> None:
    async def body() -> None:
        cert = certificate()
        server_side: list[quic.TunnelConnection] = []
        control_seen: list[bytes] = []
        event_types: list[type] = []

        def on_connection(connection: quic.TunnelConnection) -> None:
            server_side.append(connection)
            connection.on_datagrams = lambda conn, batch: conn.send_datagrams(batch)
            connection.on_control = lambda conn, data: (control_seen.append(data), conn.send_control(b"pong"))
            original = connection.quic_event_received
            connection.quic_event_received = lambda event: (event_types.append(type(event)), original(event))  # type: ignore[method-assign]

        server = await quic.serve(host, 0, cert_file=cert.cert_file, key_file=cert.key_file, on_connection=on_connection)
        try:
            inbox = Inbox()
            replies: list[bytes] = []
            client = await quic.connect(host, server.port, trust=pin_trust(), on_datagrams=inbox,
                                        on_control=lambda conn, data: replies.append(data))
            client.start_keepalive(0.05)
            sent = [bytes([0x02, i % 256]) * 600 for i in range(300)]
            for start in range(0, 300, 50):
                client.send_datagrams(sent[start:start + 50])
                await asyncio.sleep(0)
            await inbox.wait(250, timeout=5)  # datagrams are unreliable; nearly all arrive on loopback
            assert set(inbox.items) <= set(sent)
            client.send_control(b"ping")
            await wait_for(lambda: replies == [b"pong"])
            assert control_seen == [b"ping"]
            await asyncio.sleep(0.2)  # keepalive pings go out and are acknowledged
            assert not client.is_closed
            # The fast path: no datagram ever became a library event.
            assert events.DatagramFrameReceived not in event_types
            assert server_side[0].datagrams_in >= len(inbox.items) == client.datagrams_in
            closed: list[tuple[int, str]] = []
            client.on_closed = lambda conn, code, reason: closed.append((code, reason))
            server_side[0].close(7, "bye now")
            await wait_for(lambda: closed == [(7, "bye now")])
            client.send_datagrams([b"\x02late"])
            assert client.datagrams_dropped_closed == 1
        finally:
            server.close()

    run(body)


def count_packets(connection: quic.TunnelConnection) -> list[int]:
    """Wrap the connection's UDP send so the returned one-item list counts QUIC packets sent."""
    sent = [0]
    send = connection._sendto_many
    assert send is not None

    def counting(datagrams: list[bytes], addr: object = None) -> None:
        sent[0] += len(datagrams)
        send(datagrams, addr)

    connection._sendto_many = counting  # type: ignore[assignment]
    return sent


def test_one_request_in_flight_sends_no_ack_only_packets() -> None:
    """A ping-pong of datagrams (one in flight, as a ping through an idle tunnel): each
    side's ACKs ride on its next datagram, so each side sends one QUIC packet per datagram
    instead of an extra ACK-only packet for every second one received (qh3 adds an ACK to a
    packet only once the ACK is due)."""
    rounds = 40

    async def body() -> None:
        cert = certificate()
        server_side: list[quic.TunnelConnection] = []

        def on_connection(connection: quic.TunnelConnection) -> None:
            server_side.append(connection)
            connection.on_datagrams = lambda conn, batch: conn.send_datagrams(batch)

        server = await quic.serve("127.0.0.1", 0, cert_file=cert.cert_file, key_file=cert.key_file,
                                  on_connection=on_connection)
        try:
            inbox = Inbox()
            client = await quic.connect("127.0.0.1", server.port, trust=pin_trust(), on_datagrams=inbox)
            await asyncio.sleep(0.05)  # the handshake's last packets settle
            client_sent, server_sent = count_packets(client), count_packets(server_side[0])
            for number in range(rounds):
                client.send_datagram(b"\x02ping %d" % number)
                await inbox.wait(number + 1, timeout=2)
            # Without coalescing each side sends 1.5 packets per round (60). A few ACK-only
            # packets remain (qh3 lets a due ACK out when its pacing timer expires), hence 1.35.
            assert client_sent[0] <= rounds * 1.35, client_sent
            assert server_sent[0] <= rounds * 1.35, server_sent
            # The last ACKs still go out on their own, within ACK_COALESCE of being due.
            before = server_sent[0]
            await wait_for(lambda: server_sent[0] > before)
            client.close()
        finally:
            server.close()

    run(body)


def test_sockets_get_large_buffers() -> None:
    """Both ends' QUIC sockets get SOCKET_BUFFER_SIZE buffers (beyond rmem_max as root):
    the default ~200 KiB overflowed under a UDP flood while the process was busy."""

    def buffers(transport: object) -> tuple[int, int]:
        sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))

    async def body() -> None:
        cert = certificate()
        server = await quic.serve("127.0.0.1", 0, cert_file=cert.cert_file, key_file=cert.key_file,
                                  on_connection=lambda connection: None)
        try:
            client = await quic.connect("127.0.0.1", server.port, trust=pin_trust())
            if os.geteuid() == 0:
                wanted = quic.SOCKET_BUFFER_SIZE
            else:  # capped by the sysctls (the kernel reports twice what it grants)
                wanted = min(quic.SOCKET_BUFFER_SIZE, int(Path("/proc/sys/net/core/rmem_max").read_text()))
            for transport in (server._server._transport, client._transport):
                receive, send = buffers(transport)
                assert receive >= wanted and send >= min(wanted, quic.SOCKET_BUFFER_SIZE), (receive, send)
            client.close()
        finally:
            server.close()

    run(body)


class FakeUdpState:
    """Stands in for qh3's quinn-udp socket state: each recv() returns the next list."""

    def __init__(self, *receives: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.receives = list(receives)
        self.calls = 0

    def recv(self) -> list[tuple[bytes, tuple[str, int]]]:
        self.calls += 1
        return self.receives.pop(0) if self.receives else []


def short_read_transport(batches: list[tuple[list[bytes], object]]) -> quic._ShortReadTransport:
    class Protocol:
        def datagrams_received(self, datagrams: list[bytes], addr: object) -> None:
            batches.append((datagrams, addr))

    transport = object.__new__(quic._ShortReadTransport)
    transport._protocol = Protocol()  # type: ignore[assignment]
    transport._protocol_supports_batch = True
    transport._closing = transport._paused = False
    transport._reader_registered = False
    return transport


def test_a_short_receive_ends_the_read() -> None:
    """One datagram waiting: one receive call, not a second one that finds the socket
    empty (a syscall per wakeup); a full receive (32) is followed by another."""
    a, b = ("192.0.2.1", 1), ("192.0.2.2", 2)
    batches: list[tuple[list[bytes], object]] = []
    state = FakeUdpState([(b"1", a)], [(b"never read", a)])
    short_read_transport(batches)._recv_rust(state)
    assert state.calls == 1
    assert batches == [([b"1"], a)]

    batches.clear()
    full = [(b"x%d" % i, a if i < 20 else b) for i in range(quic._RECV_BATCH)]
    state = FakeUdpState(full, [(b"last", b)])
    short_read_transport(batches)._recv_rust(state)
    assert state.calls == 2
    # Consecutive datagrams from one address go up together, in order.
    assert batches == [([d for d, _ in full[:20]], a), ([d for d, _ in full[20:]], b), ([b"last"], b)]


def test_trust_needs_exactly_one_choice_and_a_valid_pin() -> None:
    with pytest.raises(ValueError):
        quic.Trust()
    with pytest.raises(ValueError):
        quic.Trust(pin="00" * 32, insecure=True)
    with pytest.raises(ValueError):
        quic.Trust(pin="abcd")
    pin = "AB:" * 31 + "AB"
    assert quic.Trust(pin="sha256/" + pin.replace(":", "")).pin == pin.lower()
