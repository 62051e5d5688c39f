"""A tiny authoritative DNS responder for the end-to-end tests (standard library only).

It is authoritative for ``fastproxy.test.`` and knows one name::

    hello.fastproxy.test.  300  IN  A     192.0.2.53
    hello.fastproxy.test.  300  IN  AAAA  2001:db8::53

so a real, unmodified DNS client (``dig``) has something to ask through the
tunnel. :func:`answer` turns one query datagram into its response (or ``None``
for a datagram to ignore) without any I/O, so it is unit-tested on bytes;
running the module serves it on UDP port 53 (or ``argv[1]``) on every v4 and
v6 address, and prints ``ready`` once bound.

Answers: a known name and type gets its record (NOERROR, AA); a known name
with another type gets an empty answer (NOERROR, "no data"); an unknown name
under the zone gets NXDOMAIN; a name outside the zone or a class other than IN
gets REFUSED; an opcode other than QUERY gets NOTIMP. Anything that is not a
well-formed query with exactly one question (too short, a response, a label
over 63 bytes, a compression pointer, a name over 255 bytes, a cut-off
question) is ignored, as a server does with garbage.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

__all__ = ["ZONE", "RECORDS", "TTL", "answer", "serve"]

ZONE = "fastproxy.test"
TTL = 300
TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 0, 3, 4, 5
RECORDS: dict[str, dict[int, bytes]] = {
    ZONE: {},
    f"hello.{ZONE}": {
        TYPE_A: ipaddress.IPv4Address("192.0.2.53").packed,
        TYPE_AAAA: ipaddress.IPv6Address("2001:db8::53").packed,
    },
}
"""Names (lower case, no trailing dot) to their records: query type -> RDATA."""

Labels = tuple[bytes, ...]
# Names are compared label by label (a label may itself hold a dot) and in
# ASCII lower case only, as DNS compares them.
_ZONE_LABELS: Labels = tuple(ZONE.encode().split(b"."))
_RECORDS_BY_LABELS: dict[Labels, dict[int, bytes]] = {
    tuple(name.encode().split(b".")): records for name, records in RECORDS.items()}

_HEADER = struct.Struct("!HHHHHH")
_FLAG_QR, _FLAG_AA, _FLAG_RD = 0x8000, 0x0400, 0x0100
_OPCODE_MASK, _OPCODE_QUERY = 0x7800, 0
_MAX_LABEL, _MAX_NAME = 63, 255
_POINTER_TO_QUESTION = b"\xc0\x0c"  # the answer's owner name is the question's name at offset 12


def _parse_question(query: bytes) -> tuple[Labels, int, int, int] | None:
    """The question's name (labels in lower case), type, class and end offset; ``None`` if malformed."""
    offset, wire_length = _HEADER.size, 1
    labels: list[bytes] = []
    while True:
        if offset >= len(query):
            return None
        length = query[offset]
        offset += 1
        if length == 0:
            break
        if length > _MAX_LABEL:  # 0xC0 pointers and the reserved 0x40/0x80 label types have no place here
            return None
        wire_length += length + 1
        if wire_length > _MAX_NAME or offset + length > len(query):
            return None
        labels.append(query[offset:offset + length].lower())
        offset += length
    if offset + 4 > len(query):
        return None
    qtype, qclass = struct.unpack_from("!HH", query, offset)
    return tuple(labels), qtype, qclass, offset + 4


def answer(query: bytes) -> bytes | None:
    """The response to one DNS query datagram, or ``None`` when it should be ignored."""
    if len(query) < _HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(query)
    if flags & _FLAG_QR or qdcount != 1:
        return None
    question = _parse_question(query)
    if question is None:
        return None
    name, qtype, qclass, end = question
    records: list[bytes] = []
    if flags & _OPCODE_MASK != _OPCODE_QUERY:
        rcode = RCODE_NOTIMP
    elif qclass != CLASS_IN or name[-len(_ZONE_LABELS):] != _ZONE_LABELS:
        rcode = RCODE_REFUSED
    elif name not in _RECORDS_BY_LABELS:
        rcode = RCODE_NXDOMAIN
    else:
        rcode = RCODE_NOERROR
        rdata = _RECORDS_BY_LABELS[name].get(qtype)
        if rdata is not None:
            records.append(_POINTER_TO_QUESTION + struct.pack("!HHIH", qtype, CLASS_IN, TTL, len(rdata)) + rdata)
    # Echo the opcode and RD bit; RA stays clear: this server does not recurse.
    reply_flags = _FLAG_QR | _FLAG_AA | (flags & (_OPCODE_MASK | _FLAG_RD)) | rcode
    header = _HEADER.pack(ident, reply_flags, 1, len(records), 0, 0)
    return header + query[_HEADER.size:end] + b"".join(records)


def serve(port: int) -> None:
    """Answer queries on UDP ``port`` on every v4 and v6 address until killed."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    print("ready", flush=True)
    while True:
        query, peer = sock.recvfrom(4096)
        response = answer(query)
        if response is not None:
            sock.sendto(response, peer)


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 53)
