"""Resolve a host name with a DNS server inside the private network, asked through the
tunnel (``fastproxy ping --resolver IP``): one A or AAAA query per family, sent as a UDP
session (DESIGN section 4) to port 53 of that server.

:func:`build_query` and :func:`parse_response` are pure (tested on bytes);
:func:`resolve_through_tunnel` does the exchange over a
:class:`~fastproxy.client.interfaces.UdpSessionOpener` such as :class:`fastproxy.Client`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import struct
from dataclasses import dataclass

from ..errors import FastproxyError
from .interfaces import UdpSessionOpener

__all__ = ["DnsAnswer", "DnsError", "TYPE_A", "TYPE_AAAA", "build_query", "parse_response",
           "resolve_through_tunnel"]

TYPE_A, TYPE_AAAA, _TYPE_CNAME, _CLASS_IN = 1, 28, 5, 1
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
_RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_HEADER = struct.Struct("!HHHHHH")
_FLAG_QR, _FLAG_TC, _FLAG_RD = 0x8000, 0x0200, 0x0100
_MAX_LABEL, _MAX_NAME, _MAX_POINTERS = 63, 255, 32

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsError(FastproxyError):
    """Resolution through the tunnel failed; the message says why (a bad name, no answer,
    a malformed answer, or the server's error code)."""


@dataclass(frozen=True)
class DnsAnswer:
    """A parsed response: its ``rcode`` (0 NOERROR, 3 NXDOMAIN...) and the addresses of
    the asked type in its answer section (CNAME chains followed by the server)."""

    rcode: int
    addresses: tuple[IpAddress, ...]


def _encode_name(name: str) -> bytes:
    labels = name.rstrip(".").split(".")
    try:
        encoded = [label.encode("idna") for label in labels]
    except UnicodeError:
        raise DnsError(f"{name}: not a valid host name") from None
    if not name.strip(".") or any(not 0 < len(label) <= _MAX_LABEL for label in encoded):
        raise DnsError(f"{name}: not a valid host name (empty label or one longer than 63 bytes)")
    wire = b"".join(bytes([len(label)]) + label for label in encoded) + b"\0"
    if len(wire) > _MAX_NAME:
        raise DnsError(f"{name}: not a valid host name (longer than 255 bytes)")
    return wire


def build_query(name: str, qtype: int, ident: int) -> bytes:
    """A recursive (RD) query for ``name`` of type ``qtype`` (TYPE_A / TYPE_AAAA) with id
    ``ident``; DnsError if ``name`` cannot be a DNS name."""
    return _HEADER.pack(ident & 0xFFFF, _FLAG_RD, 1, 0, 0, 0) + _encode_name(name) + struct.pack("!HH", qtype,
                                                                                              _CLASS_IN)


def _skip_name(message: bytes, offset: int) -> int:
    """The offset just past the (possibly compressed) name at ``offset``."""
    while True:
        if offset >= len(message):
            raise DnsError("malformed DNS answer: a name runs past the end")
        length = message[offset]
        if length & 0xC0 == 0xC0:  # a pointer ends the name in place
            if offset + 2 > len(message):
                raise DnsError("malformed DNS answer: a cut-off compression pointer")
            return offset + 2
        if length & 0xC0:
            raise DnsError("malformed DNS answer: an unknown label type")
        offset += 1 + length
        if length == 0:
            return offset


def parse_response(message: bytes, ident: int, qtype: int) -> DnsAnswer | None:
    """The answer in ``message`` to our query ``ident`` for ``qtype``; None when the message
    is not a response to it (another id, a query); DnsError when it is malformed."""
    if len(message) < _HEADER.size:
        return None
    got_id, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(message)
    if got_id != ident & 0xFFFF or not flags & _FLAG_QR:
        return None
    rcode = flags & 0x000F
    offset = _HEADER.size
    for _ in range(qdcount):
        offset = _skip_name(message, offset) + 4
    addresses: list[IpAddress] = []
    for _ in range(ancount):
        offset = _skip_name(message, offset)
        if offset + 10 > len(message):
            raise DnsError("malformed DNS answer: a cut-off record")
        rtype, rclass, _, rdlength = struct.unpack_from("!HHIH", message, offset)
        offset += 10
        rdata = message[offset:offset + rdlength]
        if len(rdata) != rdlength:
            raise DnsError("malformed DNS answer: record data runs past the end")
        offset += rdlength
        if rclass != _CLASS_IN or rtype != qtype:
            continue  # a CNAME on the way, or something we did not ask for
        if rtype == TYPE_A and rdlength == 4:
            addresses.append(ipaddress.IPv4Address(rdata))
        elif rtype == TYPE_AAAA and rdlength == 16:
            addresses.append(ipaddress.IPv6Address(rdata))
        else:
            raise DnsError(f"malformed DNS answer: an address record of {rdlength} bytes")
    if not addresses and flags & _FLAG_TC and rcode == RCODE_NOERROR:
        raise DnsError("the DNS answer was truncated (TC) and held no address")
    return DnsAnswer(rcode, tuple(addresses))


async def resolve_through_tunnel(
    opener: UdpSessionOpener, server: IpAddress, name: str, qtype: int, *, timeout: float = 2.0,
    attempts: int = 2, port: int = 53,
) -> DnsAnswer:
    """Ask ``server`` (an address inside the private network) for ``name``'s records of
    type ``qtype`` over a UDP session through the tunnel; ``attempts`` tries of ``timeout``
    seconds each. DnsError says what failed; rcodes other than NOERROR and NXDOMAIN
    (SERVFAIL, REFUSED...) are errors, NXDOMAIN is an answer."""
    ident = int.from_bytes(os.urandom(2), "big")
    query = build_query(name, qtype, ident)
    try:
        session = await opener.open_udp(str(server), port)
    # asyncio.TimeoutError: the registration went unanswered (not the builtin on 3.10).
    except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
        raise DnsError(f"resolver {server}: cannot open a UDP session through the tunnel: "
                       f"{exc or type(exc).__name__}") from None
    try:
        for _ in range(attempts):
            session.send(query)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                try:
                    message = await session.receive(timeout=remaining)
                except asyncio.TimeoutError:
                    break
                except EOFError as exc:
                    raise DnsError(f"resolver {server}: the UDP session ended: {exc}") from None
                answer = parse_response(message, ident, qtype)
                if answer is None:
                    continue  # not ours: a late answer to another query
                if answer.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
                    raise DnsError(f"resolver {server} answered {_RCODES.get(answer.rcode, answer.rcode)} "
                                   f"for {name}")
                return answer
        raise DnsError(f"resolver {server}: no answer for {name} within {attempts} x {timeout:g} s "
                       f"(is a DNS server listening on UDP port {port} there?)")
    finally:
        session.close()
