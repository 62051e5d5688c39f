"""The DNS client of ``--resolver``: queries and answers as bytes (against the test
responder, tests/dns_responder.py), and the exchange over a fake UDP session opener."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from fastproxy.client.dns import (
    TYPE_A,
    TYPE_AAAA,
    DnsError,
    build_query,
    parse_response,
    resolve_through_tunnel,
)

from . import dns_responder

SERVER = ipaddress.ip_address("10.0.0.53")


def test_query_is_what_the_responder_answers() -> None:
    query = build_query("Hello.Fastproxy.Test.", TYPE_A, 0xBEEF)
    assert query[:12] == struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)  # RD, one question
    assert query[12:] == b"\x05Hello\x09Fastproxy\x04Test\x00\x00\x01\x00\x01"
    answer = parse_response(dns_responder.answer(query) or b"", 0xBEEF, TYPE_A)
    assert answer is not None and answer.rcode == 0
    assert answer.addresses == (ipaddress.ip_address("192.0.2.53"),)
    answer = parse_response(dns_responder.answer(build_query("hello.fastproxy.test", TYPE_AAAA, 7)) or b"", 7,
                            TYPE_AAAA)
    assert answer is not None and answer.addresses == (ipaddress.ip_address("2001:db8::53"),)


def test_nxdomain_and_no_data() -> None:
    answer = parse_response(dns_responder.answer(build_query("nothere.fastproxy.test", TYPE_A, 1)) or b"", 1, TYPE_A)
    assert answer is not None and answer.rcode == 3 and answer.addresses == ()
    answer = parse_response(dns_responder.answer(build_query("fastproxy.test", TYPE_A, 2)) or b"", 2, TYPE_A)
    assert answer is not None and answer.rcode == 0 and answer.addresses == ()


def test_cname_chain_is_skipped_to_the_address() -> None:
    query = build_query("www.example.test", TYPE_A, 9)
    header = struct.pack("!HHHHHH", 9, 0x8180, 1, 2, 0, 0)
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 6) + b"\x03web\xc0\x10"
    a_record = b"\xc0\x2e" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 8])
    answer = parse_response(header + query[12:] + cname + a_record, 9, TYPE_A)
    assert answer is not None and answer.addresses == (ipaddress.ip_address("10.0.0.8"),)


def test_not_ours_and_malformed() -> None:
    response = dns_responder.answer(build_query("hello.fastproxy.test", TYPE_A, 5)) or b""
    assert parse_response(response, 6, TYPE_A) is None  # another id
    assert parse_response(build_query("hello.fastproxy.test", TYPE_A, 5), 5, TYPE_A) is None  # a query
    with pytest.raises(DnsError, match="record data runs past the end"):
        parse_response(response[:-2], 5, TYPE_A)
    with pytest.raises(DnsError, match="not a valid host name"):
        build_query("a" * 64 + ".test", TYPE_A, 1)
    with pytest.raises(DnsError, match="not a valid host name"):
        build_query("bad..name", TYPE_A, 1)


class FakeSession:
    def __init__(self, respond: bool, rcode_override: int | None = None) -> None:
        self.respond = respond
        self.rcode_override = rcode_override
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)
        if self.respond:
            self.queue.put_nowait(b"\x00\x00garbage")  # a stray datagram first: ignored
            response = bytearray(dns_responder.answer(payload) or b"")
            if self.rcode_override is not None:
                response[3] = (response[3] & 0xF0) | self.rcode_override
            self.queue.put_nowait(bytes(response))

    async def receive(self, timeout: float | None = None) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.closed = True


class FakeOpener:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.opened: list[tuple[str, int]] = []

    async def open_udp(self, destination: str, port: int) -> FakeSession:
        self.opened.append((destination, port))
        return self.session


def test_resolve_through_a_udp_session() -> None:
    opener = FakeOpener(FakeSession(respond=True))
    answer = asyncio.run(resolve_through_tunnel(opener, SERVER, "hello.fastproxy.test", TYPE_A))
    assert answer.addresses == (ipaddress.ip_address("192.0.2.53"),)
    assert opener.opened == [("10.0.0.53", 53)] and opener.session.closed


def test_resolver_errors_say_what_failed() -> None:
    opener = FakeOpener(FakeSession(respond=False))
    with pytest.raises(DnsError, match=r"resolver 10.0.0.53: no answer for hello.fastproxy.test within 2 x 0.05 s"):
        asyncio.run(resolve_through_tunnel(opener, SERVER, "hello.fastproxy.test", TYPE_A, timeout=0.05))
    assert len(opener.session.sent) == 2 and opener.session.closed
    opener = FakeOpener(FakeSession(respond=True, rcode_override=2))
    with pytest.raises(DnsError, match="resolver 10.0.0.53 answered SERVFAIL for hello.fastproxy.test"):
        asyncio.run(resolve_through_tunnel(opener, SERVER, "hello.fastproxy.test", TYPE_A))

    class Refusing:
        async def open_udp(self, destination: str, port: int) -> FakeSession:
            raise ConnectionRefusedError("UDP session refused (code 2): no route")

    with pytest.raises(DnsError, match="cannot open a UDP session through the tunnel: UDP session refused"):
        asyncio.run(resolve_through_tunnel(Refusing(), SERVER, "hello.fastproxy.test", TYPE_A))
