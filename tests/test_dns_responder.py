"""The test DNS responder (tests/dns_responder.py) on bytes, with scapy's DNS layer as the
independent oracle for building queries and reading answers. No network."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR

from .dns_responder import TTL, answer


def ask(qname: str, qtype: str = "A", *, ident: int = 0x1234, rd: int = 1, qclass: str = "IN",
        opcode: int = 0) -> DNS:
    response = answer(bytes(DNS(id=ident, rd=rd, opcode=opcode, qd=DNSQR(qname=qname, qtype=qtype, qclass=qclass))))
    assert response is not None
    return DNS(response)


def question(reply: DNS) -> tuple[bytes, int, int]:
    return reply.qd[0].qname, reply.qd[0].qtype, reply.qd[0].qclass


@pytest.mark.parametrize(("qtype", "address"), [("A", "192.0.2.53"), ("AAAA", "2001:db8::53")])
def test_known_name_gets_its_record(qtype: str, address: str) -> None:
    reply = ask("hello.fastproxy.test.", qtype, ident=0xBEEF)
    assert (reply.id, reply.qr, reply.aa, reply.ra, reply.rd, reply.rcode) == (0xBEEF, 1, 1, 0, 1, 0)
    assert question(reply) == (b"hello.fastproxy.test.", DNSQR(qtype=qtype).qtype, 1)
    assert (reply.qdcount, reply.ancount, reply.nscount, reply.arcount) == (1, 1, 0, 0)
    record = reply.an[0]
    assert isinstance(record, DNSRR)
    assert (record.rrname, record.type, record.rclass, record.ttl, record.rdata) == (
        b"hello.fastproxy.test.", DNSQR(qtype=qtype).qtype, 1, TTL, address)


def test_names_compare_without_ascii_case_and_the_question_is_echoed_as_sent() -> None:
    reply = ask("HeLLo.FastProxy.TEST.", "A", rd=0)
    assert (reply.rcode, reply.rd, reply.an[0].rdata) == (0, 0, "192.0.2.53")
    assert question(reply)[0] == b"HeLLo.FastProxy.TEST."


@pytest.mark.parametrize(("qname", "qtype", "qclass", "rcode"), [
    ("nothere.fastproxy.test.", "A", "IN", 3),        # NXDOMAIN: in the zone, no such name
    ("deeper.hello.fastproxy.test.", "AAAA", "IN", 3),
    ("hello.fastproxy.test.", "MX", "IN", 0),         # the name exists, no record of that type
    ("fastproxy.test.", "A", "IN", 0),                # the zone's apex exists
    ("example.org.", "A", "IN", 5),                   # REFUSED: not this server's zone
    ("fastproxy.test.example.", "A", "IN", 5),
    ("test.", "A", "IN", 5),
    ("hello.fastproxy.test.", "A", "CH", 5),          # only class IN is served
])
def test_other_questions_get_no_record(qname: str, qtype: str, qclass: str, rcode: int) -> None:
    reply = ask(qname, qtype, qclass=qclass)
    assert (reply.qr, reply.aa, reply.rcode, reply.ancount) == (1, 1, rcode, 0)
    assert question(reply) == (qname.encode(), DNSQR(qtype=qtype).qtype, DNSQR(qclass=qclass).qclass)


def test_a_label_holding_a_dot_is_not_two_labels() -> None:
    query = bytes(DNS(id=7, qd=DNSQR(qname="x.", qtype="A")))
    # Swap the name for the two labels "hello.fastproxy" and "test": read as a dotted
    # string it would be hello.fastproxy.test; it is a name outside the zone.
    query = query[:12] + b"\x0fhello.fastproxy\x04test\x00" + query[-4:]
    reply = DNS(answer(query))
    assert (reply.rcode, reply.ancount) == (5, 0)


def test_other_opcodes_get_notimp() -> None:
    reply = ask("hello.fastproxy.test.", opcode=2)  # STATUS
    assert (reply.opcode, reply.rcode, reply.ancount) == (2, 4, 0)


def test_additional_records_such_as_edns_are_tolerated() -> None:
    from scapy.layers.dns import DNSRROPT

    query = DNS(id=9, rd=1, qd=DNSQR(qname="hello.fastproxy.test.", qtype="A"), ar=DNSRROPT(rclass=1232))
    reply = DNS(answer(bytes(query)))
    assert (reply.id, reply.rcode, reply.an[0].rdata, reply.arcount) == (9, 0, "192.0.2.53", 0)


VALID = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="hello.fastproxy.test.", qtype="A")))


@pytest.mark.parametrize("length", range(len(VALID)))
def test_a_cut_off_query_is_ignored(length: int) -> None:
    assert answer(VALID[:length]) is None


@pytest.mark.parametrize("query", [
    bytes(DNS(id=1, qr=1, qd=DNSQR(qname="hello.fastproxy.test."))),                    # a response
    struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0),                                            # no question
    bytes(DNS(id=1, qd=[DNSQR(qname="hello.fastproxy.test."), DNSQR(qname="a.fastproxy.test.")])),  # two
    VALID[:12] + b"\xc0\x0c" + VALID[-4:],                                               # a pointer
    VALID[:12] + b"\x40" + b"a" * 64 + b"\x00" + VALID[-4:],                              # a 64-byte label
    VALID[:12] + b"\x80\x00" + VALID[-4:],                                               # a reserved label type
])
def test_malformed_queries_are_ignored(query: bytes) -> None:
    assert answer(query) is None


def name_of_wire_length(length: int) -> str:
    """A name under the zone taking ``length`` bytes on the wire (length bytes and the root included)."""
    rest = length - len(b"\x09fastproxy\x04test\x00")
    labels = []
    while rest > 64:
        labels.append("a" * 63)
        rest -= 64
    labels.append("b" * (rest - 1))
    return ".".join([*labels, "fastproxy", "test"]) + "."


def test_names_up_to_255_bytes_are_served_and_longer_ones_ignored() -> None:
    longest = name_of_wire_length(255)
    assert len(bytes(DNSQR(qname=longest))) == 255 + 4
    assert ask(longest).rcode == 3
    too_long = bytes(DNS(id=1, qd=DNSQR(qname=name_of_wire_length(256))))
    assert answer(too_long) is None
    assert ask("a" * 63 + ".fastproxy.test.").rcode == 3


def mutations_of_valid() -> st.SearchStrategy[bytes]:
    """VALID with one byte replaced, cut short, or with bytes appended."""
    return st.one_of(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)).map(
            lambda change: VALID[:change[0]] + bytes([change[1]]) + VALID[change[0] + 1:]),
        st.binary(max_size=40).map(lambda tail: VALID + tail),
    )


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), mutations_of_valid()))
def test_any_bytes_give_nothing_or_a_response_to_that_id(data: bytes) -> None:
    response = answer(data)
    if response is not None:
        reply = DNS(response)
        assert reply.id == DNS(data).id and reply.qr == 1 and reply.qdcount == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(rb"\A[a-zA-Z0-9-]{1,20}\Z"), min_size=0, max_size=4), st.sampled_from(["A", "AAAA"]))
def test_names_under_the_zone_get_an_authoritative_answer(labels: list[bytes], qtype: str) -> None:
    qname = b".".join([*labels, b"fastproxy", b"test"]) + b"."
    reply = ask(qname.decode(), qtype)
    known = [label.lower() for label in labels] in ([], [b"hello"])
    assert (reply.aa, reply.rcode) == (1, 0 if known else 3)
    assert reply.ancount == (1 if labels and known else 0)
