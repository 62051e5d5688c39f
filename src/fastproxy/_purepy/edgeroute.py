"""Pure-Python twin of the edge's batched ICMP fast path (``_cy/edgeroute.pxi``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import MalformedPacket
from .packet import decrement_ttl

__all__ = ["EdgeIcmpRoutes", "rendezvous_score"]

_MASK = (1 << 64) - 1


def rendezvous_score(client_id: int, destination: bytes, owner: int) -> int:
    """The rendezvous-hashing score of connector ``owner`` for (``client_id``, ``destination``):
    of several connectors serving a prefix, a flow goes to the one with the highest score
    (the first of them on a tie), so losing one moves only the flows it carried."""
    h = 0xCBF29CE484222325
    for byte in client_id.to_bytes(8, "big") + bytes(destination) + owner.to_bytes(8, "big"):
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


_Prefix = tuple[int, int, int]
"""(address length in bytes, network as an integer, mask as an integer)."""


def _prefix(network: bytes, bits: int) -> _Prefix:
    network = bytes(network)
    if len(network) not in (4, 16) or not 0 <= bits <= len(network) * 8:
        raise ValueError(f"a prefix must be (4- or 16-byte network, length), got {(network, bits)!r}")
    width = len(network) * 8
    mask = ((1 << bits) - 1) << (width - bits)
    return len(network), int.from_bytes(network, "big") & mask, mask


def _matches(prefix: _Prefix, dst: bytes, value: int) -> bool:
    return prefix[0] == len(dst) and value & prefix[2] == prefix[1]


class _Client:
    def __init__(self, v4: bytes | None, v6: bytes | None, allowed: list[_Prefix] | None) -> None:
        self.v4, self.v6, self.allowed = v4, v6, allowed

    def may_reach(self, dst: bytes, value: int) -> bool:
        return self.allowed is None or any(_matches(p, dst, value) for p in self.allowed)


class EdgeIcmpRoutes:
    """The edge's batched ICMP fast path (see ``fastproxy.edgeroute``).

    ``set_routes`` and ``set_client`` / ``remove_client`` keep its tables equal to the
    router's; ``from_client`` and ``from_connector`` forward a batch from ``start`` on and
    return the index of the first datagram they left (``len(datagrams)`` when none).
    """

    def __init__(self) -> None:
        self._routes: list[tuple[_Prefix, list[int]]] = []
        self._clients: dict[int, _Client] = {}
        self._by_address: dict[bytes, int] = {}

    def set_routes(self, routes: Iterable[tuple[bytes, int, Sequence[int]]]) -> None:
        """Replace the prefix table: ``routes`` holds (network, prefix length, connector ids)
        triples (4- or 16-byte networks, host bits ignored), each prefix once, its ids in the
        router's order."""
        table = [(_prefix(network, bits), bits, [int(owner) for owner in owners]) for network, bits, owners in routes]
        # Longest first, as the router looks them up; a prefix with no connector is not one.
        self._routes = [(prefix, owners) for prefix, _, owners in sorted(table, key=lambda entry: -entry[1]) if owners]

    def set_client(self, conn_id: int, v4: bytes | None, v6: bytes | None,
                   allowed: Iterable[tuple[bytes, int]] | None) -> None:
        """Admit (or update) client ``conn_id``: its 4- and 16-byte addresses (None when it
        has none) and the (network, length) prefixes it may reach (None: any)."""
        if v4 is not None and len(v4) != 4:
            raise ValueError(f"a client's IPv4 address is 4 bytes, got {v4!r}")
        if v6 is not None and len(v6) != 16:
            raise ValueError(f"a client's IPv6 address is 16 bytes, got {v6!r}")
        prefixes = None if allowed is None else [_prefix(network, bits) for network, bits in allowed]
        self.remove_client(conn_id)
        self._clients[conn_id] = _Client(None if v4 is None else bytes(v4), None if v6 is None else bytes(v6), prefixes)
        for address in (v4, v6):
            if address is not None:
                self._by_address[bytes(address)] = conn_id

    def remove_client(self, conn_id: int) -> None:
        """Forget client ``conn_id`` (nothing happens when it is unknown)."""
        client = self._clients.pop(conn_id, None)
        if client is not None:
            for address in (client.v4, client.v6):
                if address is not None:
                    self._by_address.pop(address, None)

    def _connector_for(self, client_id: int, dst: bytes, value: int) -> int | None:
        for prefix, owners in self._routes:
            if _matches(prefix, dst, value):
                if len(owners) == 1:
                    return owners[0]
                return max(owners, key=lambda owner: rendezvous_score(client_id, dst, owner))
        return None

    def _client_datagram(self, client: _Client, client_id: int, data: bytes) -> tuple[int, bytes] | None:
        """(connector, the datagram with its TTL decremented), or None when the Python path
        must decide."""
        if len(data) < 2 or data[0] != 0x02:
            return None
        version, length = data[1] >> 4, len(data) - 1
        if version == 4:
            if length < 20 or data[1] & 0x0F < 5 or client.v4 is None or data[13:17] != client.v4:
                return None
            dst = data[17:21]
        elif version == 6:
            if length < 40 or client.v6 is None or data[9:25] != client.v6:
                return None
            dst = data[25:41]
        else:
            return None
        value = int.from_bytes(dst, "big")
        if not client.may_reach(dst, value):
            return None
        connector = self._connector_for(client_id, dst, value)
        if connector is None:
            return None
        forwarded = bytearray(data)
        try:
            if decrement_ttl(memoryview(forwarded)[1:]) == 0:
                return None
        except MalformedPacket:
            return None
        return connector, bytes(forwarded)

    def from_client(self, conn_id: int, datagrams: list[bytes], start: int, out: dict[int, list[bytes]]) -> int:
        """Forward client ``conn_id``'s ICMP datagrams ``datagrams[start:]`` into ``out``
        (connector id -> datagrams, the TTL / hop limit decremented, the IPv4 header checksum
        updated) up to the first one the Python path must take; return that one's index."""
        client = self._clients.get(conn_id)
        if client is None or start < 0:
            return start
        i = start
        while i < len(datagrams):
            data = datagrams[i]
            if type(data) is not bytes:
                break
            routed = self._client_datagram(client, conn_id, data)
            if routed is None:
                break
            out.setdefault(routed[0], []).append(routed[1])
            i += 1
        return i

    def from_connector(self, datagrams: list[bytes], start: int, out: dict[int, list[bytes]]) -> int:
        """Forward a connector's ICMP datagrams ``datagrams[start:]`` unchanged into ``out``
        (client id -> datagrams, by destination address) up to the first one the Python
        path must take; return that one's index."""
        if start < 0:
            return start
        i = start
        while i < len(datagrams):
            data = datagrams[i]
            if type(data) is not bytes or len(data) < 2 or data[0] != 0x02:
                break
            if data[1] >> 4 == 4 and len(data) >= 21:
                dst = data[17:21]
            elif data[1] >> 4 == 6 and len(data) >= 41:
                dst = data[25:41]
            else:
                break
            client_id = self._by_address.get(dst)
            if client_id is None:
                break
            out.setdefault(client_id, []).append(data)
            i += 1
        return i
