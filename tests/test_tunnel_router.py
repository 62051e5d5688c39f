"""The edge's routing core without I/O: prefixes, spreading, failover, policy, spoofing."""

from __future__ import annotations

import ipaddress
import os

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, IPerror, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPv6

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
from fastproxy.tunnel.control import ERROR_AUTHENTICATION_FAILED, Announce, Error, Hello, RouteUpdate, Welcome
from fastproxy.tunnel.router import EdgeConfig, EdgeRouter, intersect_prefixes

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
    # A never-used address first: the released one stays free for its previous holder.
    assert str(admit(router, 12).client_v4) == "100.96.0.4"


def test_a_reconnecting_client_gets_its_addresses_back_after_others_came_and_went() -> None:
    router = make_router(client_tokens={"c": None, "other": None})
    first = admit(router, 10)
    router.remove(10)  # its connection closed
    other = router.authenticate(11, Hello("client", "other"))  # another client comes meanwhile
    assert isinstance(other, Welcome)
    assert (other.client_v4, other.client_v6) != (first.client_v4, first.client_v6)
    again = admit(router, 12)
    assert (again.client_v4, again.client_v6) == (first.client_v4, first.client_v6)


def test_reconnect_while_the_old_connection_still_holds_the_address_never_takes_it() -> None:
    # Only the glue knows a connection is closed (it calls remove at once): while the old
    # one is in the router it may be a live client sharing the token, so it keeps them.
    router = make_router()
    first = admit(router, 10)
    second = admit(router, 11)
    assert second.client_v4 != first.client_v4
    assert router.client_addresses(10) == (first.client_v4.packed, first.client_v6.packed)  # type: ignore[union-attr]
    router.remove(10)
    router.remove(11)
    assert admit(router, 12).client_v4 == second.client_v4  # the token's last addresses


def test_previous_holder_is_only_ever_a_connection_of_the_same_token() -> None:
    router = make_router(client_tokens={"c": None, "other": None})
    admit(router, 10)
    assert router.previous_holder(Hello("client", "c")) == 10
    assert router.previous_holder(Hello("client", "other")) is None  # its addresses are not the other's to take
    assert router.previous_holder(Hello("client", "wrong")) is None
    assert router.previous_holder(Hello("connector", "k")) is None
    router.remove(10)
    assert router.previous_holder(Hello("client", "c")) is None  # free: nobody to close


def test_released_addresses_are_reused_oldest_first_once_the_pool_is_used_up() -> None:
    router = make_router(client_pools=("100.96.0.0/29",), client_tokens={"c": None, "d": None, "e": None})
    held = [router.authenticate(conn_id, Hello("client", "e")) for conn_id in range(10, 15)]  # .2 to .6
    assert [str(w.client_v4) for w in held] == [f"100.96.0.{n}" for n in range(2, 7)]  # type: ignore[union-attr]
    assert isinstance(router.authenticate(15, Hello("client", "c")), Error)  # exhausted
    router.remove(11)  # .3
    router.remove(13)  # .5
    assert str(admit(router, 16).client_v4) == "100.96.0.3"


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
    assert welcome.prefixes == ()  # nothing is announced yet
    connector(router, A, "10.0.0.0/8")
    assert router.take_route_updates() == {CLIENT: RouteUpdate((net("10.1.0.0/16"),))}  # announced ∩ policy
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
    # Spoofed packets get no answer; the refused registration and echo do (see below).
    assert list(out) == [CLIENT] and len(out[CLIENT]) == 2
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


# -- answers instead of silence: Destination Unreachable and refused registrations -----------


def unreachable_oracle(edge: str, client: str, quoted: bytes, code: int) -> bytes:
    """What a router sends (scapy builds it, checksums and all): Destination Unreachable from
    the edge to the client, quoting the packet as RFC 792 (v4: up to 576 bytes in all) and
    RFC 4443 (v6: up to 1280) say."""
    if ":" not in edge:
        return raw(IP(src=edge, dst=client, id=0, flags="DF", ttl=64) / ICMP(type=3, code=code) / quoted[:576 - 28])
    return raw(IPv6(src=edge, dst=client, hlim=64) / ICMPv6DestUnreach(code=code) / quoted[:1280 - 48])


@pytest.mark.parametrize(("family", "reason", "code"), [
    (4, "no_route", 0), (4, "policy_denied", 13), (6, "no_route", 0), (6, "policy_denied", 1),
])
@pytest.mark.parametrize("size", [4, 1200])
def test_unserved_or_forbidden_destination_is_answered_with_destination_unreachable(
        family: int, reason: str, code: int, size: int) -> None:
    router = make_router(client_tokens={"c": (net("10.0.0.0/8"), net("2001:db8::/32"))})
    welcome = admit(router)
    connector(router, A, "10.1.0.0/16", "2001:db8:1::/48")
    # no_route: inside the policy, outside what the connector serves; policy_denied: outside the policy.
    dst = {(4, "no_route"): "10.2.0.1", (4, "policy_denied"): "192.0.2.1",
           (6, "no_route"): "2001:db8:2::1", (6, "policy_denied"): "2001:db9::1"}[family, reason]
    me = str(welcome.client_v4 if family == 4 else welcome.client_v6)
    edge = "100.96.0.1" if family == 4 else "fd00:fa57::1"
    payload = bytes(i % 251 for i in range(size))
    if family == 4:
        sent = bytes(IP(src=me, dst=dst, ttl=1) / ICMP(type=8, id=7, seq=1) / payload)
    else:
        sent = bytes(IPv6(src=me, dst=dst, hlim=1) / ICMPv6EchoRequest(id=7, seq=1) / payload)
    out = router.route(CLIENT, [encode_icmp(sent)], now=0.0)
    assert list(out) == [CLIENT]  # nothing went to the connector
    answer = out[CLIENT][0]
    assert answer[0] == 0x02
    # The same bytes as scapy's, so type, code, quoted packet (as sent: TTL 1 untouched,
    # no route wins over TTL exceeded, as in a router) and both checksums are right.
    assert answer[1:] == unreachable_oracle(edge, me, sent, code)
    parsed = (IP if family == 4 else IPv6)(answer[1:])
    if family == 4:
        assert (parsed[ICMP].type, parsed[ICMP].code) == (3, code)
        assert parsed[IPerror].dst == dst
    else:
        assert (parsed[ICMPv6DestUnreach].type, parsed[ICMPv6DestUnreach].code) == (1, code)
    assert router.drops == {reason: 1}
    assert router.routed[f"icmp_unreachable_{reason}"] == 1


def test_unreachable_answers_are_rate_limited_per_client() -> None:
    router = make_router(client_tokens={"c": None, "d": None}, unreachable_rate=2.0, unreachable_burst=3.0)
    first = admit(router, 10)
    second = router.authenticate(11, Hello("client", "d"))
    assert isinstance(second, Welcome)
    connector(router, A, "10.1.0.0/16")
    flood = [echo4(str(first.client_v4), "10.9.0.1") for _ in range(10)]
    out = router.route(10, flood, now=100.0)
    assert len(out[10]) == 3  # the burst
    assert router.drops == {"no_route": 10, "unreachable_rate_limited": 7}
    # Another client has a bucket of its own.
    assert len(router.route(11, [echo4(str(second.client_v4), "10.9.0.1")], now=100.0)[11]) == 1
    # The bucket refills at the rate: one second later, two more answers.
    assert len(router.route(10, flood, now=101.0)[10]) == 2


def test_no_error_about_an_icmp_error_or_a_later_fragment() -> None:
    router = make_router()
    welcome = admit(router)
    connector(router, A, "10.1.0.0/16")
    me, me6 = str(welcome.client_v4), str(welcome.client_v6)
    error4 = bytes(IP(src=me, dst="10.9.0.1") / ICMP(type=3, code=3) / IPerror(src="10.9.0.1", dst=me) / UDP())
    fragment = bytes(IP(src=me, dst="10.9.0.1", frag=100, proto=1) / (b"x" * 64))
    error6 = bytes(IPv6(src=me6, dst="2001:db8::1") / ICMPv6TimeExceeded() / (b"q" * 48))
    out = router.route(CLIENT, [encode_icmp(p) for p in (error4, fragment, error6)], now=0.0)
    assert out == {}
    assert router.drops == {"no_route": 3}


@pytest.mark.parametrize(("dst", "reason", "text"), [
    ("10.2.0.1", "no_route", "no connector serves 10.2.0.1"),
    ("192.0.2.1", "policy_denied", "192.0.2.1 is outside what this client may reach"),
])
def test_unroutable_registration_is_refused_at_once(dst: str, reason: str, text: str) -> None:
    router = make_router(client_tokens={"c": (net("10.0.0.0/8"),)})
    admit(router)
    connector(router, A, "10.1.0.0/16")
    rid = os.urandom(16)
    out = router.route(CLIENT, [registration(dst, rid, payload=b"query")])
    assert list(out) == [CLIENT]
    answer = decode_datagram(out[CLIENT][0])
    assert isinstance(answer, RegistrationResponse)
    assert (answer.request_id, answer.code) == (rid, RESPONSE_DESTINATION_UNREACHABLE)
    assert text in answer.message
    assert router.drops == {reason: 1} and router.session_count == 0


def test_payload_of_a_session_whose_route_went_away_is_refused_and_ends_it() -> None:
    router = make_router()
    admit(router)
    connector(router, A, "10.1.0.0/16")
    rid = os.urandom(16)
    router.route(CLIENT, [registration("10.1.0.1", rid)])
    router.remove(A)
    out = router.route(CLIENT, [encode_udp_payload(rid, b"x")])
    answer = decode_datagram(out[CLIENT][0])
    assert isinstance(answer, RegistrationResponse) and answer.code == RESPONSE_DESTINATION_UNREACHABLE
    assert router.session_count == 0


# -- living routes (control protocol version 2) -------------------------------------


def nets(*cidrs: str) -> tuple[object, ...]:
    return tuple(net(c) for c in cidrs)


def test_clients_are_told_each_announce_and_withdrawal() -> None:
    router = make_router()
    assert admit(router).prefixes == ()  # edge up, client up, no connector yet
    assert admit(router, 9).prefixes == ()
    connector(router, A, "10.0.0.0/8", "fd12::/64")
    assert router.take_route_updates() == {CLIENT: RouteUpdate(nets("10.0.0.0/8", "fd12::/64")),
                                           9: RouteUpdate(nets("10.0.0.0/8", "fd12::/64"))}
    assert router.take_route_updates() == {}  # taken once
    # A second connector with more prefixes: the new whole set, once per client.
    connector(router, B, "10.0.0.0/8", "192.168.0.0/16")
    assert router.take_route_updates()[CLIENT] == RouteUpdate(nets("10.0.0.0/8", "192.168.0.0/16", "fd12::/64"))
    # A leaves: B still serves 10/8 (failover, no change for it); fd12::/64 is withdrawn.
    router.remove(A)
    assert router.take_route_updates()[CLIENT] == RouteUpdate(nets("10.0.0.0/8", "192.168.0.0/16"))
    router.remove(B)
    assert router.take_route_updates() == {CLIENT: RouteUpdate(()), 9: RouteUpdate(())}


def test_failover_between_connectors_of_one_prefix_pushes_nothing() -> None:
    router = make_router()
    connector(router, A, "10.0.0.0/8")
    connector(router, B, "10.0.0.0/8")
    assert admit(router).prefixes == nets("10.0.0.0/8")
    router.remove(A)
    assert router.take_route_updates() == {}
    connector(router, 7, "10.0.0.0/8")  # A comes back as a new connection
    assert router.take_route_updates() == {}


def test_reannounce_replaces_a_connectors_prefixes() -> None:
    router = make_router()
    admit(router)
    connector(router, A, "10.0.0.0/8")
    router.take_route_updates()
    welcome = router.announce(A, Announce(nets("10.1.0.0/16", "172.16.0.0/12")))
    assert welcome.prefixes == nets("10.1.0.0/16", "172.16.0.0/12")
    assert router.take_route_updates() == {CLIENT: RouteUpdate(nets("10.1.0.0/16", "172.16.0.0/12"))}
    assert router.connectors_for(net("10.2.0.1/32").network_address.packed) == []
    assert router.connectors_for(net("172.16.0.1/32").network_address.packed) == [A]


def test_version_1_clients_get_no_route_updates_and_the_old_welcome() -> None:
    router = make_router(client_tokens={"c": nets("10.1.0.0/16"), "d": None})
    old = router.authenticate(CLIENT, Hello("client", "c", version=1))
    assert isinstance(old, Welcome) and old.version == 1 and old.prefixes == nets("10.1.0.0/16")
    new = router.authenticate(9, Hello("client", "d"))
    assert isinstance(new, Welcome) and new.version == 2
    connector(router, A, "10.0.0.0/8")
    assert router.take_route_updates() == {9: RouteUpdate(nets("10.0.0.0/8"))}
    assert router.version_of(CLIENT) == 1 and router.version_of(9) == 2 and router.version_of(A) == 2


@pytest.mark.parametrize(("announced", "policy", "expected"), [
    (("10.0.0.0/8",), ("10.1.0.0/16",), ("10.1.0.0/16",)),
    (("10.1.0.0/16",), ("10.0.0.0/8",), ("10.1.0.0/16",)),
    (("10.1.0.0/16", "10.2.0.0/16"), ("10.0.0.0/8", "192.168.0.0/16"), ("10.1.0.0/16", "10.2.0.0/16")),
    (("10.0.0.0/8",), ("192.168.0.0/16", "fd12::/64"), ()),
    (("0.0.0.0/0", "::/0"), ("10.0.0.0/8", "fd12::/64"), ("10.0.0.0/8", "fd12::/64")),
    (("10.0.0.0/9", "10.128.0.0/9"), ("10.0.0.0/8",), ("10.0.0.0/9", "10.128.0.0/9")),  # as announced
    (("10.0.0.0/8", "10.1.0.0/16"), ("10.0.0.0/8",), ("10.0.0.0/8",)),  # a covered one goes
])
def test_reachable_is_announced_within_policy(announced: tuple[str, ...], policy: tuple[str, ...],
                                              expected: tuple[str, ...]) -> None:
    assert intersect_prefixes(nets(*announced), nets(*policy)) == nets(*expected)


def test_reconfigure_revokes_tokens_and_pushes_new_policies() -> None:
    router = make_router(client_tokens={"c": None, "d": None, "e": None}, connector_tokens=("k", "k2"))
    admit(router)
    assert isinstance(router.authenticate(9, Hello("client", "d")), Welcome)
    assert isinstance(router.authenticate(10, Hello("client", "e")), Welcome)
    connector(router, A, "10.0.0.0/8", "192.168.0.0/16")
    assert isinstance(router.authenticate(B, Hello("connector", "k2")), Welcome)
    router.announce(B, Announce(nets("172.16.0.0/12")))
    router.take_route_updates()
    address = router.client_addresses(CLIENT)
    closed = router.reconfigure(EdgeConfig(client_tokens={"c": nets("10.1.0.0/16"), "e": None},
                                           connector_tokens=("k",)))
    assert set(closed) == {9, B}
    assert all(e.code == ERROR_AUTHENTICATION_FAILED and "no longer accepts" in e.reason for e in closed.values())
    assert not router.is_client(9) and not router.is_connector(B)
    # c: its new policy; e: B's prefixes are withdrawn. Addresses stay.
    assert router.take_route_updates() == {CLIENT: RouteUpdate(nets("10.1.0.0/16")),
                                           10: RouteUpdate(nets("10.0.0.0/8", "192.168.0.0/16"))}
    assert router.client_addresses(CLIENT) == address
    # The policy check follows the new policy.
    me = str(ipaddress.ip_address(address[0]))
    denied = router.route(CLIENT, [echo4(me, "10.2.0.1")])
    assert list(denied) == [CLIENT]  # answered (administratively prohibited), not forwarded
    assert router.drops["policy_denied"] == 1
    assert A in router.route(CLIENT, [echo4(me, "10.1.0.1")])
    # The removed token is refused from now on; a pool change is refused.
    assert isinstance(router.authenticate(11, Hello("client", "d")), Error)
    with pytest.raises(ValueError, match="client_pool"):
        router.reconfigure(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",),
                                      client_pools=("10.200.0.0/16",)))


def test_connectors_announce_only_what_their_token_allows() -> None:
    router = make_router(connector_tokens=("k",), connector_policies={"lab": nets("10.0.0.0/8", "fd12::/48")})
    admit(router)
    assert isinstance(router.authenticate(A, Hello("connector", "lab")), Welcome)
    welcome = router.announce(A, Announce(nets("10.1.0.0/16", "192.168.0.0/16", "fd12:0:0:1::/64", "0.0.0.0/0")))
    assert welcome.prefixes == nets("10.1.0.0/16", "fd12:0:0:1::/64")  # the accepted ones
    assert router.auth_failures["connector_prefix_refused"] == 2
    assert router.take_route_updates() == {CLIENT: RouteUpdate(nets("10.1.0.0/16", "fd12:0:0:1::/64"))}
    assert router.connectors_for(ipaddress.ip_address("192.168.0.1").packed) == []
    # A token without a policy announces anything.
    connector(router, B, "192.168.0.0/16")
    assert router.connectors_for(ipaddress.ip_address("192.168.0.1").packed) == [B]
    router.take_route_updates()
    # A reload widens the policy: what A announced before is served now, without a re-announce.
    closed = router.reconfigure(EdgeConfig(client_tokens={"c": None}, connector_tokens=("k",),
                                           connector_policies={"lab": nets("0.0.0.0/0", "::/0")}))
    assert closed == {}
    assert router.take_route_updates() == {CLIENT: RouteUpdate(nets("0.0.0.0/0", "fd12:0:0:1::/64"))}
    assert A in router.connectors_for(ipaddress.ip_address("192.168.0.1").packed)
