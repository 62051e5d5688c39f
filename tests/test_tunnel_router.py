"""The edge's routing core without I/O: prefixes, spreading, failover, policy, spoofing."""

from __future__ import annotations

import ipaddress
import os

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

from fastproxy.datagram import (
    RESPONSE_DESTINATION_UNREACHABLE,
    RESPONSE_TOO_MANY_ACTIVE_FLOWS,
    RegistrationResponse,
    UdpRegistration,
    decode_datagram,
    encode_icmp,
    encode_registration_response,
    encode_udp_payload,
    encode_udp_registration,
)
from fastproxy.tunnel.control import Announce, Error, Hello, Welcome
from fastproxy.tunnel.router import EdgeConfig, EdgeRouter

CLIENT, A, B = 1, 2, 3
net = ipaddress.ip_network


def make_router(**config: object) -> EdgeRouter:
    config.setdefault("client_tokens", {"c": None})
    config.setdefault("connector_tokens", ("k",))
    return EdgeRouter(EdgeConfig(**config))  # type: ignore[arg-type]


def admit(router: EdgeRouter, conn_id: int = CLIENT) -> Welcome:
    welcome = router.authenticate(conn_id, Hello("client", "c"))
    assert isinstance(welcome, Welcome)
    return welcome


def connector(router: EdgeRouter, conn_id: int, *prefixes: str) -> None:
    assert isinstance(router.authenticate(conn_id, Hello("connector", "k")), Welcome)
    router.announce(conn_id, Announce(tuple(net(p) for p in prefixes)))


def registration(dst: str, request_id: bytes | None = None, payload: bytes | None = None) -> bytes:
    return encode_udp_registration(request_id or os.urandom(16), ipaddress.ip_address(dst).packed, 53, 30, payload=payload)


def echo4(src: str, dst: str, ttl: int = 64) -> bytes:
    return encode_icmp(bytes(IP(src=src, dst=dst, ttl=ttl) / ICMP(type=8, id=7, seq=1) / b"ping"))


def echo6(src: str, dst: str, hlim: int = 64) -> bytes:
    return encode_icmp(bytes(IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6EchoRequest(id=7, seq=1) / b"ping"))


def test_tokens_and_addresses() -> None:
    router = make_router()
    bad = router.authenticate(CLIENT, Hello("client", "wrong"))
    missing = router.authenticate(CLIENT, Hello("client", ""))
    as_connector = router.authenticate(CLIENT, Hello("connector", "c"))
    assert isinstance(bad, Error) and "bad token" in bad.reason
    assert isinstance(missing, Error) and "missing token" in missing.reason
    assert isinstance(as_connector, Error)
    assert router.auth_failures == {"client_bad_token": 1, "client_missing_token": 1, "connector_bad_token": 1}
    first, second = admit(router, 10), admit(router, 11)
    assert str(first.client_v4) == "100.96.0.2" and str(second.client_v4) == "100.96.0.3"
    assert str(first.client_v6) == "fd00:fa57::2"
    assert router.edge_v4 == ipaddress.ip_address("100.96.0.1").packed
    router.remove(10)
    assert str(admit(router, 12).client_v4) == "100.96.0.2"  # released address reused


def test_one_token_cannot_take_the_whole_pool() -> None:
    router = make_router(client_tokens={"c": None, "other": None}, max_connections_per_token=2)
    admit(router, 10), admit(router, 11)
    refused = router.authenticate(12, Hello("client", "c"))
    assert isinstance(refused, Error) and "already has 2 connections" in refused.reason
    assert router.auth_failures == {"token_connection_limit": 1}
    assert not router.is_client(12)
    assert isinstance(router.authenticate(13, Hello("client", "other")), Welcome)  # others still get in
    router.remove(10)
    assert isinstance(router.authenticate(14, Hello("client", "c")), Welcome)  # a freed slot is usable


def test_longest_prefix_match() -> None:
    router = make_router()
    admit(router)
    connector(router, A, "10.0.0.0/8")
    connector(router, B, "10.1.0.0/16")
    out = router.route(CLIENT, [registration("10.1.2.3"), registration("10.2.0.1"), registration("192.0.2.1")])
    assert len(out[B]) == 1 and len(out[A]) == 1
    assert decode_datagram(out[B][0]).dst == bytes([10, 1, 2, 3])
    assert router.drops["no_route"] == 1


def test_spread_by_flow_and_failover_moves_only_lost_flows() -> None:
    router = make_router()
    admit(router)
    connector(router, A, "10.0.0.0/8")
    connector(router, B, "10.0.0.0/8")
    ids = {f"10.0.{i // 250}.{i % 250 + 1}": os.urandom(16) for i in range(200)}
    out = router.route(CLIENT, [registration(dst, rid) for dst, rid in ids.items()])
    on_a = {decode_datagram(d).request_id for d in out[A]}
    on_b = {decode_datagram(d).request_id for d in out[B]}
    assert len(on_a) > 40 and len(on_b) > 40 and len(on_a) + len(on_b) == 200
    # The same flow goes to the same connector again.
    dst, rid = next(iter(ids.items()))
    again = router.route(CLIENT, [registration(dst, rid)])
    assert list(again) == ([A] if rid in on_a else [B])
    router.remove(A)
    payloads = [encode_udp_payload(rid, b"x") for rid in ids.values()]
    out = router.route(CLIENT, payloads)
    assert list(out) == [B]
    kinds = [d[0] for d in out[B]]
    # A's sessions are re-registered on B before their payload; B's just get the payload.
    assert kinds.count(0x00) == len(on_a) and kinds.count(0x01) == 200
    # Responses from the survivor reach the client; the dead connector's are unknown.
    back = router.route(B, [encode_registration_response(rid, 0) for rid in list(ids.values())[:5]])
    assert len(back[CLIENT]) == 5


def test_client_policy_and_anti_spoofing_are_counted() -> None:
    router = make_router(client_tokens={"c": (net("10.1.0.0/16"),)})
    welcome = admit(router)
    assert welcome.prefixes == (net("10.1.0.0/16"),)
    connector(router, A, "10.0.0.0/8")
    me = str(welcome.client_v4)
    out = router.route(
        CLIENT,
        [
            registration("10.2.0.1"),  # outside policy
            echo4(me, "10.2.0.1"),  # outside policy
            echo4("100.96.0.99", "10.1.0.1"),  # spoofed source
            echo6("fd00:fa57::99", "2001:db8::1"),  # spoofed source
        ],
    )
    assert out == {}
    assert router.drops == {"policy_denied": 2, "spoofed_source": 2}


def test_connector_icmp_goes_to_the_client_owning_the_destination() -> None:
    router = make_router()
    w1, w2 = admit(router, 10), admit(router, 11)
    connector(router, A, "10.0.0.0/8")
    reply1 = echo4("10.0.0.5", str(w1.client_v4))
    reply2 = echo6("2001:db8::5", str(w2.client_v6))
    stray = echo4("10.0.0.5", "100.96.0.200")
    out = router.route(A, [reply1, reply2, stray])
    assert out == {10: [reply1], 11: [reply2]}
    assert router.drops == {"unknown_client_address": 1}


def test_unauthenticated_and_wrong_direction_datagrams_are_dropped() -> None:
    router = make_router()
    admit(router)
    connector(router, A, "10.0.0.0/8")
    assert router.route(99, [registration("10.0.0.1")]) == {}
    rid = os.urandom(16)
    assert router.route(CLIENT, [encode_registration_response(rid, 0)]) == {}
    assert router.route(A, [registration("10.0.0.1"), encode_udp_payload(rid, b"x")]) == {}
    assert router.drops == {
        "unauthenticated": 1, "client_sent_response": 1, "connector_sent_registration": 1, "unknown_session": 1,
    }


def test_session_limit_answers_too_many_flows_and_failure_responses_end_sessions() -> None:
    router = make_router(max_sessions_per_client=2)
    admit(router)
    connector(router, A, "10.0.0.0/8")
    rids = [os.urandom(16) for _ in range(3)]
    out = router.route(CLIENT, [registration("10.0.0.1", r) for r in rids])
    assert len(out[A]) == 2
    answer = decode_datagram(out[CLIENT][0])
    assert isinstance(answer, RegistrationResponse) and answer.code == RESPONSE_TOO_MANY_ACTIVE_FLOWS
    assert answer.request_id == rids[2]
    router.route(A, [encode_registration_response(rids[0], RESPONSE_DESTINATION_UNREACHABLE, "no")])
    assert router.session_count == 1
    assert router.expire(now=10**9) == 1 and router.session_count == 0


def test_bundled_payload_is_forwarded_with_the_registration() -> None:
    router = make_router()
    admit(router)
    connector(router, A, "10.0.0.0/8")
    out = router.route(CLIENT, [registration("10.0.0.1", payload=b"first")])
    message = decode_datagram(out[A][0])
    assert isinstance(message, UdpRegistration) and message.payload == b"first"


@pytest.mark.parametrize("family", [4, 6])
def test_ttl_one_is_answered_with_time_exceeded_from_the_edge(family: int) -> None:
    from fastproxy import packet as packet_api
    router = make_router()
    welcome = admit(router)
    connector(router, A, "10.0.0.0/8", "2001:db8::/32")
    if family == 4:
        datagrams = [echo4(str(welcome.client_v4), "10.0.0.1", ttl=1), echo4(str(welcome.client_v4), "10.0.0.1", ttl=5)]
    else:
        datagrams = [echo6(str(welcome.client_v6), "2001:db8::1", 1), echo6(str(welcome.client_v6), "2001:db8::1", 5)]
    out = router.route(CLIENT, datagrams)
    answer = packet_api.parse_packet(out[CLIENT][0][1:])
    assert answer.src == (router.edge_v4 if family == 4 else router.edge_v6)
    assert answer.icmp_type == (11 if family == 4 else 3)
    forwarded = packet_api.parse_packet(out[A][0][1:])
    assert forwarded.ttl == 4
