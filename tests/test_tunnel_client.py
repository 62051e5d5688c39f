"""The client library (fastproxy.Client) and the Edge / Connector library classes, on loopback."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

import fastproxy
from fastproxy.datagram import RESPONSE_DESTINATION_UNREACHABLE, RESPONSE_TOO_MANY_ACTIVE_FLOWS
from fastproxy.packet import build_echo, parse_packet
from tests.test_tunnel_e2e import _EchoResponder
from tests.tunnel_support import CLIENT_TOKEN, CONNECTOR_TOKEN, certificate, networks, run, udp_echo_server, wait_for


def _edge(**config: object) -> fastproxy.Edge:
    config.setdefault("client_tokens", {CLIENT_TOKEN: None})
    config.setdefault("connector_tokens", (CONNECTOR_TOKEN,))
    return fastproxy.Edge(fastproxy.EdgeConfig(**config), cert_file=certificate().cert_file,
                          key_file=certificate().key_file, listen=("127.0.0.1", 0))


def test_package_exports_the_library_classes() -> None:
    from fastproxy.tunnel.client import Client
    from fastproxy.tunnel.connector import Connector
    from fastproxy.tunnel.edge import Edge

    assert (fastproxy.Client, fastproxy.Connector, fastproxy.Edge) == (Client, Connector, Edge)
    with pytest.raises(AttributeError):
        fastproxy.NoSuchThing  # noqa: B018


def test_client_icmp_udp_refusal_and_recovery_after_reconnect() -> None:
    async def body() -> None:
        handlers: list[_EchoResponder] = []
        async with _edge() as edge, fastproxy.Connector(
            "127.0.0.1", edge.port, token=CONNECTOR_TOKEN, routes=networks("127.0.0.0/8"),
            trust=fastproxy.Trust(pin=edge.fingerprint),
            icmp_handler_factory=lambda sink: handlers.append(_EchoResponder(sink)) or handlers[-1],
            max_udp_sessions=1,
        ) as connector, udp_echo_server() as (_, port):
            await asyncio.wait_for(connector.connected.wait(), 5)
            async with fastproxy.Client(f"127.0.0.1:{edge.port}", CLIENT_TOKEN, edge.fingerprint,
                                        backoff_initial=0.05) as client:
                assert client.address_v4 is not None and client.address_v4.packed != edge.router.edge_v4
                assert ipaddress.ip_network("127.0.0.0/8") in client.prefixes
                me = client.address_v4.packed
                dst = bytes([127, 0, 0, 9])
                client.send_packets([build_echo(me, dst, 7, seq, b"hi", ttl=64) for seq in (1, 2, 3)])
                replies = [parse_packet(await client.receive_packet(3)) for _ in range(3)]
                assert sorted(r.echo_seq for r in replies) == [1, 2, 3]
                assert all((r.src, r.dst, r.echo_id) == (dst, me, 7) for r in replies)
                assert handlers[0].batches[0] == 3  # one batch reached the ICMP handler

                session = await client.open_udp("127.0.0.1", port, payload=b"first")
                assert await session.receive(3) == b"echo:first"
                session.send(b"second")
                assert await session.receive(3) == b"echo:second"
                with pytest.raises(fastproxy.UdpPayloadTooLarge, match="1300 bytes to 127.0.0.1:"):
                    session.send(b"x" * 1300)
                assert client.drops["udp_payload_too_large"] == 1

                with pytest.raises(fastproxy.UdpSessionRefused) as refused:
                    await client.open_udp("127.0.0.1", port)  # past the connector's session limit
                assert refused.value.code == RESPONSE_TOO_MANY_ACTIVE_FLOWS

                # The edge drops the connection: the client reconnects by itself, gets the
                # same address back, and its session and pings work again.
                address = client.address_v4
                edge._connections[max(edge._connections)].close(0, "test")
                await wait_for(lambda: client.stats["reconnects"] == 1, 5)
                await asyncio.wait_for(client.connected.wait(), 5)
                assert client.address_v4 == address
                session.send(b"third")
                assert await session.receive(3) == b"echo:third"
                client.send_packets([build_echo(me, dst, 7, 4, b"hi", ttl=64)])
                assert parse_packet(await client.receive_packet(3)).echo_seq == 4
                session.close()
                with pytest.raises(fastproxy.UdpSessionClosed):
                    session.send(b"late")

    run(body, timeout=30)


@pytest.mark.parametrize("closed_by", ["edge", "client"])
def test_a_closed_connection_frees_its_addresses_at_once_and_the_reconnect_gets_them_back(closed_by: str) -> None:
    """The edge forgets a client's connection as soon as it is known closed, not when its
    closing period (three PTOs) ends: a client that reconnects within that time (edge-side
    close, a network blip on the client's side) gets its tunnel addresses back."""
    async def body() -> None:
        async with _edge() as edge, fastproxy.Client(f"127.0.0.1:{edge.port}", CLIENT_TOKEN, edge.fingerprint,
                                                      backoff_initial=0.001) as client:
            addresses = client.address_v4, client.address_v6
            old_id = max(edge._connections)
            old = edge._connections[old_id]
            assert edge.router.is_client(old_id)
            if closed_by == "edge":
                old.close(0, "test")
            else:
                client._connection.close(0, "network blip")  # type: ignore[union-attr]

                async def close_arrived() -> None:
                    while old._quic._close_event is None:  # the peer's CONNECTION_CLOSE came in
                        await asyncio.sleep(0.001)

                await asyncio.wait_for(close_arrived(), 5)
            # Still in its closing or draining period, yet already gone from the router.
            assert not old._terminated
            assert not edge.router.is_client(old_id)
            assert old_id not in edge._connections
            await wait_for(lambda: client.stats["reconnects"] == 1, 5)
            await asyncio.wait_for(client.connected.wait(), 5)
            assert (client.address_v4, client.address_v6) == addresses
            assert edge.router.client_count == 1

    run(body, timeout=30)


@pytest.mark.parametrize("silent", [True, False])
def test_a_reconnect_takes_over_the_addresses_of_its_tokens_silent_connection_only(silent: bool) -> None:
    """A client whose network blipped reconnects before the edge's idle timeout noticed
    the old connection died: the old connection (same token, silent for two keepalives)
    is closed and the newcomer gets its addresses. A live one keeps them (clients may
    share a token)."""
    from fastproxy.tunnel.dial import dial
    from fastproxy.tunnel.edge import SILENT_AFTER

    async def body() -> None:
        async with _edge() as edge:
            trust = fastproxy.Trust(pin=edge.fingerprint)
            previous, welcome = await dial("127.0.0.1", edge.port, trust=trust, role="client", token=CLIENT_TOKEN)
            old_id = max(edge._connections)
            old = edge._connections[old_id]
            if silent:  # the blip: nothing from the old connection reaches the edge any more
                old.datagram_received = old.datagrams_received = lambda *_: None  # type: ignore[method-assign]
                old.last_received -= SILENT_AFTER  # as if that long had passed
            try:
                async with fastproxy.Client(f"127.0.0.1:{edge.port}", CLIENT_TOKEN, edge.fingerprint) as client:
                    same = (client.address_v4, client.address_v6) == (welcome.client_v4, welcome.client_v6)
                    assert same is silent
                    assert edge.router.is_client(old_id) is not silent
                    assert edge.stats["connections_replaced"] == (1 if silent else 0)
                    assert edge.router.client_count == 1 if silent else 2
            finally:
                previous.close(0, "test done")

    run(body, timeout=30)


def test_client_with_a_bad_token_is_rejected_on_entry() -> None:
    async def body() -> None:
        async with _edge() as edge:
            with pytest.raises(fastproxy.TunnelRejected):
                async with fastproxy.Client(("127.0.0.1", edge.port), "wrong", edge.fingerprint):
                    pass

    run(body)


def test_backoff_grows_with_full_jitter_and_restarts_only_after_a_stable_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    from fastproxy.tunnel import dial

    clock = [100.0]
    monkeypatch.setattr(dial.time, "monotonic", lambda: clock[0])
    random.seed(7)
    backoff = dial.Backoff(0.25, 2.0, stable_after=10.0)
    delays = [backoff.next_delay() for _ in range(8)]
    bounds = [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert all(0 <= d <= b for d, b in zip(delays, bounds))
    assert max(delays[3:]) > 1.0  # the bound really grew to the maximum
    backoff.connected()
    clock[0] += 1.0  # dropped after a second: keep backing off
    assert max(backoff.next_delay() for _ in range(20)) > 1.0
    backoff.connected()
    clock[0] += 60.0  # stayed up for a minute: start again from the beginning
    assert backoff.next_delay() <= 0.25
    assert backoff.next_delay() <= 0.5
    with pytest.raises(ValueError):
        dial.Backoff(0, 1)


@pytest.mark.parametrize(("destination", "says"), [
    ("10.9.0.1", "no connector serves 10.9.0.1"),
    ("192.0.2.1", "192.0.2.1 is outside what this client may reach"),
])
def test_open_udp_to_an_unroutable_destination_raises_why_at_once(destination: str, says: str) -> None:
    """The edge refuses at once (0x01): a specific error naming the destination and the
    cause, long before the 5 s registration timeout."""
    async def body() -> None:
        async with _edge(client_tokens={CLIENT_TOKEN: networks("10.0.0.0/8")}) as edge, fastproxy.Connector(
            "127.0.0.1", edge.port, token=CONNECTOR_TOKEN, routes=networks("10.1.0.0/16"),
            trust=fastproxy.Trust(pin=edge.fingerprint),
        ) as connector:
            await asyncio.wait_for(connector.connected.wait(), 5)
            async with fastproxy.Client(f"127.0.0.1:{edge.port}", CLIENT_TOKEN, edge.fingerprint) as client:
                # Without the edge's answer this would be UdpSessionTimeout after 5 s.
                with pytest.raises(fastproxy.UdpDestinationUnreachable) as refused:
                    await client.open_udp(destination, 53, timeout=5.0)
                assert refused.value.code == RESPONSE_DESTINATION_UNREACHABLE
                assert f"UDP session to {destination}:53 refused: destination unreachable" in str(refused.value)
                assert says in str(refused.value)
                assert client.udp_sessions == []

    run(body, timeout=30)
