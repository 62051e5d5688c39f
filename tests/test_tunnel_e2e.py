"""The tunnel over real QUIC connections on loopback: client -> edge -> connector -> UDP
echo server and back, authentication, session rules, spreading, failover, restart and
malformed datagrams."""

from __future__ import annotations

import asyncio
import ipaddress
import os

import pytest

from fastproxy.datagram import (
    RESPONSE_DESTINATION_UNREACHABLE,
    RESPONSE_OK,
    RESPONSE_TOO_MANY_ACTIVE_FLOWS,
    RegistrationResponse,
    UdpPayload,
    decode_datagram,
    encode_icmp,
    encode_registration_response,
    encode_udp_payload,
    encode_udp_registration,
)
from fastproxy.tunnel import quic
from fastproxy.tunnel.certs import generate_self_signed
from fastproxy.tunnel.connector import Connector
from fastproxy.tunnel.dial import TunnelRejected, dial
from tests.tunnel_support import (
    CLIENT_TOKEN,
    CONNECTOR_TOKEN,
    dial_client,
    networks,
    pin_trust,
    run,
    running_edge,
    udp_echo_server,
    wait_for,
)

LOOPBACK = {4: ("127.0.0.1", "127.0.0.0/8"), 6: ("::1", "::1/128")}


def make_connector(edge: object, routes: str = "127.0.0.0/8", host: str = "127.0.0.1", **kwargs: object) -> Connector:
    kwargs.setdefault("token", CONNECTOR_TOKEN)
    kwargs.setdefault("trust", pin_trust())
    return Connector(host, edge.port, routes=networks(routes), **kwargs)  # type: ignore[attr-defined, arg-type]


async def started(connector: Connector) -> Connector:
    await connector.start()
    await asyncio.wait_for(connector.connected.wait(), 5)
    return connector


async def udp_exchange(client: quic.TunnelConnection, inbox, dst: str, port: int, payload: bytes,
                       request_id: bytes | None = None, timeout: float = 3.0) -> tuple[bytes, list[object]]:
    """Register a session with a bundled payload; return the request id and the answers."""
    request_id = request_id or os.urandom(16)
    start = len(inbox.items)
    client.send_datagrams([encode_udp_registration(request_id, ipaddress.ip_address(dst).packed, port, 30, payload=payload)])
    await inbox.wait(start + 2, timeout)
    return request_id, [decode_datagram(d) for d in inbox.items[start:]]


@pytest.mark.parametrize("family", [4, 6])
def test_udp_round_trip_with_bundled_payload_and_more_payloads(family: int) -> None:
    host, route = LOOPBACK[family]

    async def body() -> None:
        async with running_edge(host) as edge, udp_echo_server(host) as (echo, port):
            connector = await started(make_connector(edge, route, host))
            client, welcome, inbox = await dial_client(edge, host=host)
            assert welcome.client_v4 is not None and welcome.prefixes == networks(route)
            rid, answers = await udp_exchange(client, inbox, host, port, b"hello")
            assert answers == [RegistrationResponse(rid, RESPONSE_OK, ""), UdpPayload(rid, b"echo:hello")]
            client.send_datagrams([encode_udp_payload(rid, b"two"), encode_udp_payload(rid, b"three")])
            await inbox.wait(4)
            assert {decode_datagram(d).payload for d in inbox.items[2:]} == {b"echo:two", b"echo:three"}
            assert echo.received == [b"hello", b"two", b"three"]
            # Idempotent registration: answered again, no second socket, bundled payload delivered.
            _, again = await udp_exchange(client, inbox, host, port, b"again", request_id=rid)
            assert again[0] == RegistrationResponse(rid, RESPONSE_OK, "")
            assert len(connector.udp_sessions) == 1
            assert connector.udp_sessions.stats["registrations_repeated"] == 1
            assert edge.router.drops == {} and connector.drops == {}
            client.close()
            await connector.close()

    run(body)


def test_bad_token_no_token_and_wrong_pin_are_rejected_and_nothing_is_routed() -> None:
    async def body() -> None:
        async with running_edge() as edge, udp_echo_server() as (echo, port):
            for token in ("not-the-token", ""):
                with pytest.raises(TunnelRejected) as info:
                    await dial("127.0.0.1", edge.port, trust=pin_trust(), role="client", token=token)
                assert "authentication failed" in info.value.reason
            with pytest.raises(TunnelRejected):
                await dial("127.0.0.1", edge.port, trust=pin_trust(), role="connector", token=CLIENT_TOKEN,
                           prefixes=networks("127.0.0.0/8"))
            other_pin = generate_self_signed().fingerprint
            with pytest.raises(ConnectionError):
                await dial("127.0.0.1", edge.port, trust=quic.Trust(pin=other_pin), role="client", token=CLIENT_TOKEN,
                           timeout=3)
            assert edge.router.auth_failures == {
                "client_bad_token": 1, "client_missing_token": 1, "connector_bad_token": 1,
            }
            # A connector with a bad token keeps retrying but never serves anything.
            bad = make_connector(edge, token="wrong", backoff_initial=0.05, backoff_max=0.1)
            await bad.start()
            await wait_for(lambda: bad.stats["connect_failures"] >= 2)
            assert isinstance(bad.last_error, TunnelRejected) and not bad.connected.is_set()
            client, _, inbox = await dial_client(edge)
            client.send_datagrams([encode_udp_registration(os.urandom(16), bytes([127, 0, 0, 1]), port, 30, payload=b"x")])
            await wait_for(lambda: edge.router.drops["no_route"] == 1)
            await inbox.wait(1)  # refused by the edge at once: nothing serves 127.0.0.1
            refusal = decode_datagram(inbox.items[0])
            assert echo.received == [] and len(inbox.items) == 1
            assert isinstance(refusal, RegistrationResponse) and refusal.code == RESPONSE_DESTINATION_UNREACHABLE
            await bad.close()

    run(body)


def test_session_limit_and_idle_expiry() -> None:
    async def body() -> None:
        async with running_edge() as edge, udp_echo_server() as (echo, port):
            connector = await started(make_connector(edge, max_udp_sessions=1, expiry_interval=0.1))
            client, _, inbox = await dial_client(edge)
            first = os.urandom(16)
            client.send_datagrams([encode_udp_registration(first, bytes([127, 0, 0, 1]), port, 1)])
            second = os.urandom(16)
            client.send_datagrams([encode_udp_registration(second, bytes([127, 0, 0, 1]), port, 1)])
            await inbox.wait(2)
            answers = {decode_datagram(d).request_id: decode_datagram(d).code for d in inbox.items}
            assert answers == {first: RESPONSE_OK, second: RESPONSE_TOO_MANY_ACTIVE_FLOWS}
            assert connector.udp_sessions.drops["udp_session_limit"] == 1
            # Idle timeout of 1 s from the registration ends the session.
            await wait_for(lambda: len(connector.udp_sessions) == 0, timeout=4)
            assert connector.udp_sessions.stats["sessions_expired"] == 1
            sessions = connector.udp_sessions
            client.send_datagrams([encode_udp_payload(first, b"late")])
            await wait_for(lambda: sessions.drops["udp_unknown_session"] == 1)
            assert echo.received == []
            await connector.close()

    run(body)


def test_two_connectors_spread_flows_and_fail_over() -> None:
    async def body() -> None:
        async with running_edge() as edge, udp_echo_server("127.0.0.1") as (echo, port):
            a = await started(make_connector(edge))
            b = await started(make_connector(edge))
            client, _, inbox = await dial_client(edge)
            assert len(edge.router.connectors_for(bytes([127, 0, 0, 1]))) == 2
            sessions = {}
            for i in range(40):
                rid = os.urandom(16)
                sessions[rid] = i
                client.send_datagrams([encode_udp_registration(rid, bytes([127, 0, 0, 1]), port, 30)])
            await inbox.wait(40)
            # One destination: every flow of this client to it lands on one connector.
            counts = sorted([len(a.udp_sessions), len(b.udp_sessions)])
            assert counts == [0, 40]
            # Different clients spread across the connectors.
            others = [await dial_client(edge) for _ in range(12)]
            for other, _, other_inbox in others:
                other.send_datagrams([encode_udp_registration(os.urandom(16), bytes([127, 0, 0, 1]), port, 30)])
                await other_inbox.wait(1)
            assert len(a.udp_sessions) >= 1 and len(b.udp_sessions) >= 1
            # Kill the connector carrying the first client's flows: its payloads go on
            # through the other one (the edge re-registers the sessions there).
            carrying, survivor = (a, b) if len(a.udp_sessions) >= 40 else (b, a)
            await carrying.close()
            await wait_for(lambda: len(edge.router.connectors_for(bytes([127, 0, 0, 1]))) == 1)
            start = len(inbox.items)
            rid = next(iter(sessions))
            client.send_datagrams([encode_udp_payload(rid, b"after failover")])
            await inbox.wait(start + 2)
            answers = [decode_datagram(d) for d in inbox.items[start:]]
            assert RegistrationResponse(rid, RESPONSE_OK, "") in answers
            assert UdpPayload(rid, b"echo:after failover") in answers
            await survivor.close()

    run(body, timeout=30)


def test_connector_restart_traffic_works_again_within_seconds() -> None:
    async def body() -> None:
        async with running_edge() as edge, udp_echo_server() as (echo, port):
            first = await started(make_connector(edge))
            client, _, inbox = await dial_client(edge)
            rid, answers = await udp_exchange(client, inbox, "127.0.0.1", port, b"before")
            assert UdpPayload(rid, b"echo:before") in answers
            await first.close()
            second = await started(make_connector(edge))
            loop = asyncio.get_running_loop()
            began = loop.time()
            start = len(inbox.items)
            while True:  # the client keeps sending, as an application would
                client.send_datagrams([encode_udp_payload(rid, b"after")])
                await asyncio.sleep(0.1)
                if any(decode_datagram(d) == UdpPayload(rid, b"echo:after") for d in inbox.items[start:]):
                    break
                assert loop.time() - began < 3.0
            await second.close()

    run(body)


def test_connector_reconnects_by_itself_after_the_edge_closes_it() -> None:
    async def body() -> None:
        async with running_edge() as edge:
            connector = await started(make_connector(edge, backoff_initial=0.05))
            first_id = connector.conn_id
            for connection in list(edge._connections.values()):
                connection.close(0, "test closes it")
            await wait_for(lambda: connector.conn_id > first_id and connector.connected.is_set(), timeout=5)
            expiry = connector._expiry_task
            await connector.close()
            await asyncio.sleep(0)
            assert expiry is not None and expiry.done()  # no task left behind by close()

    run(body)


def _truncations() -> list[bytes]:
    rid = bytes(range(16))
    whole = [
        encode_udp_registration(rid, bytes([127, 0, 0, 1]), 9, 30),
        encode_udp_registration(rid, bytes(15) + b"\x01", 9, 30),
        encode_udp_payload(rid, b"payload"),
        encode_registration_response(rid, 0xFF, "message"),
        encode_icmp(bytes(28)),
    ]
    cuts = []
    for datagram in whole:
        limit = len(datagram) if datagram[0] != 0x02 else 20  # an ICMP datagram needs 1 + 20 bytes of IP header
        cuts.extend(datagram[:n] for n in range(0, limit))
    return cuts


def test_truncated_datagrams_at_every_length_are_dropped_and_counted() -> None:
    async def body() -> None:
        async with running_edge() as edge, udp_echo_server() as (echo, port):
            connector = await started(make_connector(edge))
            client, _, inbox = await dial_client(edge)
            bad = _truncations()
            client.send_datagrams(bad)
            await wait_for(lambda: sum(edge.router.drops.values()) == len(bad))
            assert inbox.items == [] and echo.received == []
            # From the connector's side too.
            connector._connection.send_datagrams(bad)
            await wait_for(lambda: sum(edge.router.drops.values()) == 2 * len(bad))
            # A payload cut after its request id is still a valid (shorter) payload: unknown session.
            assert all(reason.startswith(("malformed_", "icmp_", "empty_", "unknown_session")) for reason in edge.router.drops), edge.router.drops
            # Both connections are still up and carry traffic.
            rid, answers = await udp_exchange(client, inbox, "127.0.0.1", port, b"still up")
            assert UdpPayload(rid, b"echo:still up") in answers
            await connector.close()

    run(body)


def test_spoofed_and_out_of_policy_icmp_are_dropped_and_counted() -> None:
    from scapy.layers.inet import ICMP, IP

    async def body() -> None:
        async with running_edge(client_tokens={CLIENT_TOKEN: networks("127.0.0.0/24")}) as edge:
            connector = await started(make_connector(edge))
            client, welcome, inbox = await dial_client(edge)
            me = str(welcome.client_v4)
            client.send_datagrams([
                encode_icmp(bytes(IP(src="100.96.0.77", dst="127.0.0.1") / ICMP())),
                encode_icmp(bytes(IP(src=me, dst="127.0.1.1") / ICMP())),
                encode_udp_registration(os.urandom(16), bytes([127, 0, 1, 1]), 9, 30),
            ])
            await wait_for(lambda: sum(edge.router.drops.values()) == 3)
            assert edge.router.drops == {"spoofed_source": 1, "policy_denied": 2}
            # The spoofed packet gets nothing; the other two are told: ICMP Destination
            # Unreachable (administratively prohibited) and a refused registration.
            icmp, refusal = sorted(await inbox.wait(2))
            assert IP(icmp[1:])[ICMP].type == 3 and IP(icmp[1:])[ICMP].code == 13
            assert decode_datagram(refusal).code == RESPONSE_DESTINATION_UNREACHABLE
            await asyncio.sleep(0.1)
            assert len(inbox.items) == 2
            await connector.close()

    run(body)


class _EchoResponder:
    """A stub ICMP handler standing in for the connector's ICMP proxy: answers every echo."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.seen: list[bytes] = []
        self.batches: list[int] = []
        self.gone: list[bytes] = []

    def start(self) -> None:
        pass

    def handle_packets(self, packets) -> None:
        from fastproxy.packet import build_echo, parse_packet

        self.batches.append(len(packets))
        answers = []
        for view in packets:
            packet = bytes(view)
            self.seen.append(packet)
            info = parse_packet(packet)
            payload = packet[info.icmp_offset + 8:]
            answers.append(build_echo(info.dst, info.src, info.echo_id, info.echo_seq, payload, reply=True))
        self.sink(answers)

    def client_gone(self, addresses) -> None:
        self.gone.extend(addresses)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_echo_through_edge_and_connector_and_edge_time_exceeded(family: int) -> None:
    from fastproxy.packet import build_echo, parse_packet

    host = LOOPBACK[family][0]
    target, route = ("10.0.0.8", "10.0.0.0/8") if family == 4 else ("2001:db8::8", "2001:db8::/32")

    async def body() -> None:
        async with running_edge(host) as edge:
            handlers = []
            connector = await started(make_connector(
                edge, route, host, icmp_handler_factory=lambda sink: handlers.append(_EchoResponder(sink)) or handlers[-1]
            ))
            client, welcome, inbox = await dial_client(edge, host=host)
            me = (welcome.client_v4 if family == 4 else welcome.client_v6).packed
            dst = ipaddress.ip_address(target).packed
            client.send_datagrams([encode_icmp(build_echo(me, dst, 0x1234, 1, b"abc", ttl=64))])
            await inbox.wait(1)
            reply = parse_packet(inbox.items[0][1:])
            assert (reply.src, reply.dst, reply.echo_id, reply.echo_seq) == (dst, me, 0x1234, 1)
            assert parse_packet(handlers[0].seen[0]).ttl == 63  # the edge is a hop
            client.send_datagrams([encode_icmp(build_echo(me, dst, 0x1234, 2, b"abc", ttl=1))])
            await inbox.wait(2)
            exceeded = parse_packet(inbox.items[1][1:])
            edge_address = edge.router.edge_v4 if family == 4 else edge.router.edge_v6
            assert exceeded.src == edge_address and exceeded.dst == me
            assert exceeded.icmp_type == (11 if family == 4 else 3)
            assert exceeded.inner is not None and exceeded.inner.echo_seq == 2
            assert len(handlers[0].seen) == 1
            # The client leaves: the edge tells the connector, whose handler frees its flows.
            client.close(0, "bye")
            await wait_for(lambda: handlers[0].gone != [])
            assert me in handlers[0].gone
            await connector.close()

    run(body)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_ca_bundle_trust_accepts_the_edge_and_rejects_another_ca(host: str, tmp_path) -> None:
    from tests.tunnel_support import ca_and_leaf

    ca_file, leaf = ca_and_leaf(str(tmp_path))
    (tmp_path / "other").mkdir()
    other_ca, _ = ca_and_leaf(str(tmp_path / "other"))

    async def body() -> None:
        async with running_edge(cert=leaf) as edge:
            connection, welcome = await dial(host, edge.port, trust=quic.Trust(cafile=ca_file),
                                             role="client", token=CLIENT_TOKEN)
            assert welcome.client_v4 is not None
            connection.close()
            with pytest.raises(ConnectionError):
                await dial(host, edge.port, trust=quic.Trust(cafile=other_ca), role="client",
                           token=CLIENT_TOKEN, timeout=3)

    run(body)


def test_oversize_payloads_are_dropped_and_counted_both_ways() -> None:
    async def body() -> None:
        async with running_edge() as edge, udp_echo_server() as (echo, port):
            connector = await started(make_connector(edge))
            client, _, inbox = await dial_client(edge)
            rid, answers = await udp_exchange(client, inbox, "127.0.0.1", port, b"first")
            # Destination -> client: an answer over 1280 bytes cannot be carried.
            client.send_datagrams([encode_udp_payload(rid, b"big")])
            sessions = connector.udp_sessions
            await wait_for(lambda: sessions.drops["udp_oversize_from_destination"] == 1)
            # Client -> destination: a payload datagram over 1280 bytes is malformed at the edge.
            client.send_datagrams([b"\x01" + rid + bytes(1281)])
            await wait_for(lambda: sum(edge.router.drops.values()) == 1)
            assert edge.router.drops == {"malformed_payload_too_large": 1}
            assert echo.received == [b"first", b"big"] and len(inbox.items) == 2
            await connector.close()

    run(body)
