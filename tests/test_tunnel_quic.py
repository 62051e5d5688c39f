"""The QUIC transport module alone: batches both ways, the datagram fast path, the
control stream, closing with a reason, and keepalive pings."""

from __future__ import annotations

import asyncio

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


def test_trust_needs_exactly_one_choice_and_a_valid_pin() -> None:
    with pytest.raises(ValueError):
        quic.Trust()
    with pytest.raises(ValueError):
        quic.Trust(pin="00" * 32, insecure=True)
    with pytest.raises(ValueError):
        quic.Trust(pin="abcd")
    pin = "AB:" * 31 + "AB"
    assert quic.Trust(pin="sha256/" + pin.replace(":", "")).pin == pin.lower()
