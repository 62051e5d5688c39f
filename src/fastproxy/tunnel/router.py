"""The edge's routing core: authentication, address pools, prefixes, policy and routing.

:class:`EdgeRouter` does no I/O (peers are integer connection ids; every call returns
what to send to whom), as aioquic keeps its protocol core apart from its glue;
:class:`fastproxy.tunnel.edge.Edge` runs it over QUIC. A module of its own so that
every front (the native protocol today) shares one router.

Routing (DESIGN sections 1, 2, 4):
- client ICMP (0x02): the source must be the client's assigned address (anti-spoofing),
  the destination inside the client's allowed prefixes (policy); the TTL / hop limit is
  decremented (the edge is a hop), and a packet whose TTL would reach zero is answered
  with Time Exceeded from the edge's tunnel address (first address of the client pool).
  A destination outside the policy, or that no connector serves, is answered as a router
  answers (RFC 792 / RFC 4443, RFC 1812 5.2.7.1): Destination Unreachable from the edge's
  tunnel address, communication administratively prohibited (v4 code 13, v6 code 1) or
  net unreachable / no route (code 0), quoting the packet, at most
  ``unreachable_rate`` a second per client (token bucket), never about an ICMP error or
  a non-first fragment (RFC 1122 3.2.2), so ``ping`` and ``traceroute`` say so at once.
  The packet goes to a connector serving the longest matching prefix; with several
  connectors, flows are spread by rendezvous hashing of (client, destination), so when
  one goes away only its flows move.
  The common case of ICMP both ways is forwarded in C, a batch at a time
  (``fastproxy.edgeroute.EdgeIcmpRoutes``, whose tables this router keeps in step); every
  other datagram takes the Python path below, so the results and counters are the same.
- connector ICMP: routed back to the client that owns the destination address.
- UDP sessions: the edge keeps (request id -> client, connector, registration); client
  registrations (0x00) and payloads (0x01) go to the session's connector, connector
  payloads and responses (0x03) back to the client. When a session's connector goes
  away, the next client payload re-registers the session on another connector. A
  registration outside the policy or with no route is refused at once with a
  registration response 0x01 (destination unreachable) saying why.
Every drop is counted in ``EdgeRouter.drops`` under a stable reason.

Living routes (control protocol version 2, DESIGN section 9): what a client may reach is
what is announced now, within its policy (``reachable``). Whenever that set changes for
a client that speaks version 2 — a connector announces, announces again (its new set
replaces the old), goes away while no other serves its prefixes, or the configuration
is reloaded (``reconfigure``) — the router records a RouteUpdate with the client's whole
new set; the glue sends what ``take_route_updates`` returns. A connector taking over a
prefix from one that left changes nothing a client sees, so nothing is sent. Version-1
clients get what they always got (their policy, or what was announced when they
connected) in their WELCOME only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..datagram import (
    DATAGRAM_ICMP,
    RESPONSE_DESTINATION_UNREACHABLE,
    RESPONSE_OK,
    RESPONSE_TOO_MANY_ACTIVE_FLOWS,
    RegistrationResponse,
    UdpPayload,
    UdpRegistration,
    decode_datagram,
    encode_icmp,
    encode_registration_response,
    encode_udp_registration,
)
from ..edgeroute import EdgeIcmpRoutes, rendezvous_score
from ..errors import MalformedDatagram, MalformedPacket
from ..icmp.ratelimit import RateLimitedLog, TokenBucketLimiter
from ..packet import build_destination_unreachable, build_time_exceeded, decrement_ttl
from .control import (
    ERROR_AUTHENTICATION_FAILED,
    ERROR_POLICY,
    ERROR_PROTOCOL,
    ROLE_CLIENT,
    ROLE_CONNECTOR,
    Announce,
    Error,
    Hello,
    Network,
    RouteUpdate,
    Welcome,
    negotiate,
)

__all__ = ["DEFAULT_CLIENT_POOLS", "EdgeConfig", "EdgeRouter", "Network", "Outbound", "UNREACHABLE_CODES"]

log = logging.getLogger("fastproxy.edge")

Outbound = dict[int, list[bytes]]
"""Datagrams to send, by destination connection id."""

DEFAULT_CLIENT_POOLS: tuple[str, ...] = ("100.96.0.0/16", "fd00:fa57::/64")

UNREACHABLE_CODES: dict[tuple[str, int], int] = {
    ("no_route", 4): 0,  # net unreachable: ping says "Destination Net Unreachable", traceroute !N
    ("no_route", 6): 0,  # no route to destination
    ("policy_denied", 4): 13,  # communication administratively prohibited: traceroute !X
    ("policy_denied", 6): 1,  # administratively prohibited
}
"""Destination Unreachable code the edge answers with, by (drop reason, IP version)."""

_UNREACHABLE_MESSAGES = {
    "no_route": "no connector serves {destination}",
    "policy_denied": "{destination} is outside what this client may reach (the edge's policy)",
}
# ICMP types that are errors, about which no error is sent (RFC 1122 3.2.2, RFC 4443 2.4).
_ICMP4_ERRORS = frozenset((3, 4, 5, 11, 12))


@dataclass
class EdgeConfig:
    """What the edge accepts.

    ``client_tokens`` maps each client token to the prefixes that client may reach (None:
    ``client_allow``, and when that is empty too, every announced route).
    ``connector_tokens`` are the tokens connectors may present and announce any prefix
    with; ``connector_policies`` maps more connector tokens to the only prefixes each may
    announce (DESIGN section 9: others in its announce are refused). ``client_pools`` are the
    CIDRs client addresses come from (one IPv4, one IPv6 at most); the first address of
    each pool is the edge's own tunnel address. ``max_connections_per_token`` bounds the
    clients one token may have connected at once (each takes pool addresses; 0: no bound).
    """

    client_tokens: dict[str, tuple[Network, ...] | None] = field(default_factory=dict)
    connector_tokens: tuple[str, ...] = ()
    connector_policies: dict[str, tuple[Network, ...]] = field(default_factory=dict)
    client_pools: tuple[str, ...] = DEFAULT_CLIENT_POOLS
    client_allow: tuple[Network, ...] = ()
    max_sessions_per_client: int = 1024
    max_connections_per_token: int = 64
    session_idle_slack: float = 30.0
    # Destination Unreachable answers per client: a token bucket of this rate (per second)
    # and burst, like a router's ICMP rate limit (Linux: icmp_ratelimit); enough for ping
    # and a parallel traceroute, too few to make the edge an amplifier.
    unreachable_rate: float = 10.0
    unreachable_burst: float = 50.0


def _tokens_match(presented: str, candidates: Iterable[str]) -> str | None:
    """The candidate equal to ``presented``, compared in constant time against all of them."""
    presented_digest = hashlib.sha256(presented.encode("utf-8")).digest()
    found = None
    for candidate in candidates:
        # Compare fixed-length digests so neither length nor content leaks through timing,
        # and go through every candidate whatever matched.
        if hmac.compare_digest(presented_digest, hashlib.sha256(candidate.encode("utf-8")).digest()):
            found = candidate
    return found


class _AddressPool:
    """Hands out host addresses of one CIDR; the first one is the edge's own.

    A released address is handed out again only when no address was ever used is left,
    and then the longest-free one first: a client that reconnects asks for its previous
    address (``preferred``), which someone else must not have taken meanwhile."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr, strict=True)
        if self.network.num_addresses < 4:
            raise ValueError(f"client pool {cidr} is too small")
        base = int(self.network.network_address)
        # v4: skip the network address; the edge takes the first host.
        self._first = base + 1
        self.edge_address = ipaddress.ip_address(self._first).packed
        self._next = self._first + 1
        self._last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        self._free: dict[int, None] = {}  # released addresses, oldest first (an ordered set)
        self._size = 4 if self.network.version == 4 else 16

    def allocate(self, preferred: bytes | None = None) -> bytes:
        """A free address: ``preferred`` when it is free, else a never-used one, else the
        one released longest ago."""
        if preferred is not None:
            value = int.from_bytes(preferred, "big")
            if value in self._free:
                del self._free[value]
                return preferred
            if value == self._next and value <= self._last:
                self._next += 1
                return preferred
        if self._next <= self._last:
            value = self._next
            self._next += 1
        elif self._free:
            value = next(iter(self._free))
            del self._free[value]
        else:
            raise OverflowError(f"client pool {self.network} exhausted")
        return value.to_bytes(self._size, "big")

    def release(self, address: bytes) -> None:
        self._free[int.from_bytes(address, "big")] = None


class _PrefixTable:
    """Longest-prefix match over announced prefixes; each prefix maps to connector ids."""

    def __init__(self) -> None:
        # (version, prefix length) -> {network as int: [connector ids]}
        self._by_length: dict[tuple[int, int], dict[int, list[int]]] = {}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}

    def add(self, prefix: Network, conn_id: int) -> None:
        key = (prefix.version, prefix.prefixlen)
        table = self._by_length.setdefault(key, {})
        owners = table.setdefault(int(prefix.network_address), [])
        if conn_id not in owners:
            owners.append(conn_id)
        self._refresh(prefix.version)

    def remove_connector(self, conn_id: int) -> None:
        for key, table in list(self._by_length.items()):
            for net, owners in list(table.items()):
                if conn_id in owners:
                    owners.remove(conn_id)
                    if not owners:
                        del table[net]
            if not table:
                del self._by_length[key]
        self._refresh(4)
        self._refresh(6)

    def _refresh(self, version: int) -> None:
        self._lengths[version] = sorted((length for v, length in self._by_length if v == version), reverse=True)

    def lookup(self, address: bytes) -> list[int] | None:
        version = 4 if len(address) == 4 else 6
        bits = 32 if version == 4 else 128
        value = int.from_bytes(address, "big")
        for length in self._lengths[version]:
            net = value >> (bits - length) << (bits - length) if length else 0
            owners = self._by_length[(version, length)].get(net)
            if owners:
                return owners
        return None

    def entries(self) -> list[tuple[bytes, int, list[int]]]:
        """Every prefix as (network bytes, length, connector ids), for the ICMP fast path."""
        return [(net.to_bytes(4 if version == 4 else 16, "big"), length, list(owners))
                for (version, length), table in self._by_length.items() for net, owners in table.items()]

    def prefixes(self) -> tuple[Network, ...]:
        result = []
        for (version, length), table in self._by_length.items():
            for net in table:
                address = ipaddress.IPv4Address(net) if version == 4 else ipaddress.IPv6Address(net)
                result.append(ipaddress.ip_network((address, length)))
        return tuple(result)


def _may_answer(data: bytes, version: int) -> bool:
    """False for packets no ICMP error may be sent about (RFC 1122 3.2.2, RFC 4443 2.4(e)):
    ICMP errors and non-first IPv4 fragments. ``data`` is the ICMP datagram (type byte first)."""
    if version == 4:
        if int.from_bytes(data[7:9], "big") & 0x1FFF:  # fragment offset: not the first fragment
            return False
        ihl = (data[1] & 0x0F) * 4
        return not (data[10] == 1 and len(data) > 1 + ihl and data[1 + ihl] in _ICMP4_ERRORS)
    # IPv6: types below 128 are errors.
    return not (data[7] == 58 and len(data) > 41 and data[41] < 128)


def _in_prefixes(address: bytes, prefixes: tuple[Network, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == p.version and ip in p for p in prefixes)


def canonical_prefixes(prefixes: Iterable[Network]) -> tuple[Network, ...]:
    """``prefixes`` without duplicates and without any that lies inside another, sorted
    (IPv4 first): one spelling for each set, so that sets covering the same addresses
    compare equal. Adjacent prefixes stay apart, as they were announced."""
    ordered = sorted(set(prefixes), key=lambda p: (p.version, p.network_address, p.prefixlen))
    result: list[Network] = []
    for prefix in ordered:
        # Sorted by address then length, a covering prefix comes before what it covers.
        if not (result and result[-1].version == prefix.version and prefix.subnet_of(result[-1])):  # type: ignore[arg-type]
            result.append(prefix)
    return tuple(result)


def intersect_prefixes(announced: Iterable[Network], policy: Iterable[Network]) -> tuple[Network, ...]:
    """The addresses inside both sets, as canonical prefixes: of two prefixes that
    overlap, the longer one lies inside the other (prefixes nest or are disjoint)."""
    policy = tuple(policy)
    common: list[Network] = []
    for prefix in announced:
        for allowed in policy:
            if prefix.version != allowed.version:
                continue
            if prefix.subnet_of(allowed):  # type: ignore[arg-type]
                common.append(prefix)
            elif allowed.subnet_of(prefix):  # type: ignore[arg-type]
                common.append(allowed)
    return canonical_prefixes(common)


@dataclass
class _Client:
    conn_id: int
    v4: bytes | None
    v6: bytes | None
    allowed: tuple[Network, ...] | None  # None: every announced route
    token_key: bytes = b""
    sessions: set[bytes] = field(default_factory=set)
    token: str = ""  # to re-check it when the configuration is reloaded
    version: int = 1  # control protocol version of its connection
    routes: tuple[Network, ...] = ()  # the set it was last told (version 2)


@dataclass
class _Connector:
    token: str
    version: int
    announced: tuple[Network, ...] = ()  # what it asked for
    prefixes: tuple[Network, ...] | None = None  # what was accepted; None until its first announce


@dataclass
class _Session:
    client: int
    connector: int | None
    registration: bytes  # the registration without its bundled payload, for re-registering
    destination: bytes
    idle_timeout: float
    last_seen: float


class EdgeRouter:
    """The edge's routing core (no I/O). Connection ids are chosen by the caller.
    ``icmp_fast_path=False`` routes every datagram in Python (to compare the two)."""

    def __init__(self, config: EdgeConfig, *, icmp_fast_path: bool = True) -> None:
        self.config = config
        self._fast = EdgeIcmpRoutes() if icmp_fast_path else None
        self.drops: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()
        self._pools: dict[int, _AddressPool] = {}
        for cidr in config.client_pools:
            pool = _AddressPool(cidr)
            if pool.network.version in self._pools:
                raise ValueError("at most one client pool per address family")
            self._pools[pool.network.version] = pool
        self._clients: dict[int, _Client] = {}
        self._client_by_address: dict[bytes, int] = {}
        self._connectors: dict[int, _Connector] = {}  # authenticated; announced once prefixes is set
        self._route_updates: dict[int, RouteUpdate] = {}
        self._routes = _PrefixTable()
        self._sessions: dict[bytes, _Session] = {}
        self._unreachable_limiter = TokenBucketLimiter(config.unreachable_rate, config.unreachable_burst)
        self._limit_log = RateLimitedLog(log)
        # Last addresses given to each client token (by digest): a client that reconnects
        # gets them back when they are free, so its flows and sessions carry on.
        self._last_addresses: dict[bytes, tuple[bytes | None, bytes | None]] = {}

    # -- membership --------------------------------------------------------------

    @property
    def edge_v4(self) -> bytes | None:
        """The edge's IPv4 tunnel address (source of its Time Exceeded messages)."""
        pool = self._pools.get(4)
        return pool.edge_address if pool else None

    @property
    def edge_v6(self) -> bytes | None:
        """The edge's IPv6 tunnel address."""
        pool = self._pools.get(6)
        return pool.edge_address if pool else None

    def authenticate(self, conn_id: int, hello: Hello) -> Welcome | Error:
        """Check a hello. Clients are admitted here (addresses assigned); connectors are
        admitted by ``announce``. On failure the result is the Error to send before closing."""
        if hello.role == ROLE_CLIENT:
            token = _tokens_match(hello.token, self.config.client_tokens) if hello.token else None
        else:
            token = _tokens_match(hello.token, self._connector_tokens()) if hello.token else None
        if token is None:
            reason = "missing_token" if not hello.token else "bad_token"
            self.auth_failures[f"{hello.role}_{reason}"] += 1
            return Error(ERROR_AUTHENTICATION_FAILED, f"authentication failed: {reason.replace('_', ' ')}")
        version = negotiate(hello.version)
        if hello.role == ROLE_CONNECTOR:
            self._connectors[conn_id] = _Connector(token, version)
            return Welcome(None, None, (), version=version)
        allowed = self._policy(token)
        token_key = hashlib.sha256(token.encode("utf-8")).digest()
        # Each connection takes pool addresses: one token must not be able to use them all up.
        limit = self.config.max_connections_per_token
        if limit and sum(1 for c in self._clients.values() if c.token_key == token_key) >= limit:
            self.auth_failures["token_connection_limit"] += 1
            return Error(ERROR_POLICY, f"this token already has {limit} connections (the edge's limit); "
                         "close one, or raise max_connections_per_token on the edge")
        last_v4, last_v6 = self._last_addresses.get(token_key, (None, None))
        try:
            v4 = self._pools[4].allocate(last_v4) if 4 in self._pools else None
            v6 = self._pools[6].allocate(last_v6) if 6 in self._pools else None
        except OverflowError as exc:
            self.auth_failures["pool_exhausted"] += 1
            return Error(ERROR_PROTOCOL, str(exc))
        self._last_addresses[token_key] = (v4, v6)
        client = _Client(conn_id, v4, v6, allowed, token_key, token=token, version=version)
        self._clients[conn_id] = client
        for address in (v4, v6):
            if address is not None:
                self._client_by_address[address] = conn_id
        self._sync_client(client)
        if version >= 2:
            client.routes = prefixes = self.reachable(conn_id)
        else:  # what version 1 always gave: the policy itself, else what is announced now
            prefixes = allowed if allowed is not None else self._routes.prefixes()
        return Welcome(
            ipaddress.IPv4Address(v4) if v4 else None,
            ipaddress.IPv6Address(v6) if v6 else None,
            prefixes,
            version=version,
        )

    def previous_holder(self, hello: Hello) -> int | None:
        """The client connection that holds the addresses a client with ``hello``'s token
        was given last, if it has that same token (None otherwise, or for a connector or
        a token the edge does not accept). The glue closes it when it is known dead (gone
        silent), so that a client reconnecting after a network blip, before the edge's
        idle timeout noticed, gets its addresses back; a holder of another token is never
        returned (handing its addresses over would be a hijack)."""
        if hello.role != ROLE_CLIENT or not hello.token:
            return None
        token = _tokens_match(hello.token, self.config.client_tokens)
        if token is None:
            return None
        token_key = hashlib.sha256(token.encode("utf-8")).digest()
        for address in self._last_addresses.get(token_key, ()):
            holder = self._client_by_address.get(address) if address is not None else None
            if holder is not None and self._clients[holder].token_key == token_key:
                return holder
        return None

    def _connector_tokens(self) -> list[str]:
        return [*self.config.connector_tokens, *self.config.connector_policies]

    def _accepted(self, token: str, announced: tuple[Network, ...]) -> tuple[Network, ...]:
        """What a connector with ``token`` may serve of ``announced``: all of it, or with a
        connector policy, each prefix that lies inside the policy."""
        allowed = self.config.connector_policies.get(token)
        if allowed is None:
            return announced
        return tuple(p for p in announced if any(p.version == a.version and p.subnet_of(a) for a in allowed))  # type: ignore[arg-type]

    def _policy(self, token: str) -> tuple[Network, ...] | None:
        """What a client with ``token`` may reach under the current config (None: anything)."""
        allowed = self.config.client_tokens[token]
        if allowed is None and self.config.client_allow:
            allowed = self.config.client_allow
        return allowed

    def announce(self, conn_id: int, announce: Announce) -> Welcome:
        """Register the prefixes an authenticated connector serves: those its token may
        announce (the Welcome lists them; the others are refused and counted as
        ``auth_failures["connector_prefix_refused"]``). Again from the same connector
        (version 2), the new set replaces the old one. Clients whose reachable set changes
        get a RouteUpdate (``take_route_updates``)."""
        connector = self._connectors[conn_id]
        connector.announced = announce.prefixes
        accepted = self._accepted(connector.token, announce.prefixes)
        refused = len(announce.prefixes) - len(accepted)
        if refused:
            self.auth_failures["connector_prefix_refused"] += refused
        self._serve(conn_id, connector, accepted)
        self._refresh_routes()
        return Welcome(None, None, accepted, version=connector.version)

    def _serve(self, conn_id: int, connector: _Connector, prefixes: tuple[Network, ...]) -> None:
        if connector.prefixes is not None:
            self._routes.remove_connector(conn_id)
        connector.prefixes = prefixes
        for prefix in prefixes:
            self._routes.add(prefix, conn_id)

    def reachable(self, conn_id: int) -> tuple[Network, ...]:
        """What client ``conn_id`` may reach now: the announced prefixes within its
        policy, canonical (see ``canonical_prefixes``)."""
        return self._reachable(self._routes.prefixes(), self._clients[conn_id].allowed)

    @staticmethod
    def _reachable(announced: tuple[Network, ...], allowed: tuple[Network, ...] | None) -> tuple[Network, ...]:
        if allowed is None:
            return canonical_prefixes(announced)
        return intersect_prefixes(announced, allowed)

    def _sync_client(self, client: _Client) -> None:
        """Tell the ICMP fast path a client's addresses and policy (after either changed)."""
        if self._fast is not None:
            allowed = None if client.allowed is None else [
                (p.network_address.packed, p.prefixlen) for p in client.allowed]
            self._fast.set_client(client.conn_id, client.v4, client.v6, allowed)

    def _refresh_routes(self) -> None:
        # Every change of the prefix table ends here: the fast path gets the new one.
        if self._fast is not None:
            self._fast.set_routes(self._routes.entries())
        announced = self._routes.prefixes()
        by_policy: dict[tuple[Network, ...] | None, tuple[Network, ...]] = {}  # clients mostly share a few
        for conn_id, client in self._clients.items():
            if client.version < 2:
                continue
            routes = by_policy.get(client.allowed)
            if routes is None:
                routes = by_policy[client.allowed] = self._reachable(announced, client.allowed)
            if routes != client.routes:
                client.routes = routes
                self._route_updates[conn_id] = RouteUpdate(routes)

    def take_route_updates(self) -> dict[int, RouteUpdate]:
        """The RouteUpdate each client must be sent (by client id) since the last call:
        its whole new reachable set (only the latest, when it changed more than once)."""
        updates, self._route_updates = self._route_updates, {}
        return updates

    def reconfigure(self, config: EdgeConfig) -> dict[int, Error]:
        """Apply a reloaded configuration to the connections in place. Returns the
        connections whose token the new config no longer accepts, each with the Error to
        send before closing it (the caller closes them and calls ``remove``). Clients keep
        their addresses and get the new policy; RouteUpdates go to those whose reachable
        set changed. ``client_pools`` cannot change while addresses are handed out
        (ValueError)."""
        if tuple(config.client_pools) != tuple(self.config.client_pools):
            raise ValueError("client_pool cannot change while the edge runs (restart the edge)")
        self.config = config
        revoked: dict[int, Error] = {}
        for conn_id, client in self._clients.items():
            if client.token not in config.client_tokens:
                revoked[conn_id] = Error(ERROR_AUTHENTICATION_FAILED,
                                         "the edge no longer accepts this client's token (configuration reloaded)")
            else:
                client.allowed = self._policy(client.token)
                self._sync_client(client)
        connector_tokens = set(self._connector_tokens())
        for conn_id, connector in self._connectors.items():
            if connector.token not in connector_tokens:
                revoked[conn_id] = Error(ERROR_AUTHENTICATION_FAILED,
                                         "the edge no longer accepts this connector's token (configuration reloaded)")
            elif connector.prefixes is not None:
                accepted = self._accepted(connector.token, connector.announced)
                if accepted != connector.prefixes:
                    self._serve(conn_id, connector, accepted)
        for conn_id in revoked:
            self.remove(conn_id)
        self._refresh_routes()
        return revoked

    def version_of(self, conn_id: int) -> int:
        """The control protocol version of an admitted connection (1 when unknown)."""
        peer = self._clients.get(conn_id) or self._connectors.get(conn_id)
        return peer.version if peer is not None else 1

    def is_client(self, conn_id: int) -> bool:
        """True if ``conn_id`` is an admitted client."""
        return conn_id in self._clients

    def is_connector(self, conn_id: int) -> bool:
        """True if ``conn_id`` is a connector that has announced its prefixes."""
        connector = self._connectors.get(conn_id)
        return connector is not None and connector.prefixes is not None

    def connectors_for(self, address: bytes) -> list[int]:
        """Connector ids serving the longest prefix that matches ``address`` (4 or 16 bytes)."""
        return list(self._routes.lookup(address) or ())

    def connector_ids(self) -> list[int]:
        """Ids of every admitted connector (announced)."""
        return [conn_id for conn_id in self._connectors if self.is_connector(conn_id)]

    @property
    def client_count(self) -> int:
        """Admitted clients."""
        return len(self._clients)

    @property
    def connector_count(self) -> int:
        """Admitted connectors (announced)."""
        return len(self.connector_ids())

    def client_addresses(self, conn_id: int) -> tuple[bytes | None, bytes | None]:
        """The (IPv4, IPv6) tunnel addresses assigned to a client."""
        client = self._clients[conn_id]
        return client.v4, client.v6

    def remove(self, conn_id: int) -> None:
        """Forget a connection (client or connector) and everything routed through it."""
        client = self._clients.pop(conn_id, None)
        if client is not None:
            if self._fast is not None:
                self._fast.remove_client(conn_id)
            self._unreachable_limiter.forget(conn_id)
            for address, version in ((client.v4, 4), (client.v6, 6)):
                if address is not None:
                    self._client_by_address.pop(address, None)
                    self._pools[version].release(address)
            for request_id in client.sessions:
                self._sessions.pop(request_id, None)
        self._route_updates.pop(conn_id, None)
        connector = self._connectors.pop(conn_id, None)
        if connector is not None and connector.prefixes is not None:
            self._routes.remove_connector(conn_id)
            for session in self._sessions.values():
                if session.connector == conn_id:
                    session.connector = None
            self._refresh_routes()

    # -- routing -----------------------------------------------------------------

    def route(self, conn_id: int, datagrams: list[bytes], now: float | None = None) -> Outbound:
        """Route a batch of datagrams received from ``conn_id``; returns what to send."""
        if now is None:
            now = time.monotonic()
        out: Outbound = {}
        fast = self._fast
        if conn_id in self._clients:
            client = self._clients[conn_id]
            self._route_batch(datagrams, out, lambda data: self._from_client(client, data, now, out),
                              None if fast is None else lambda batch, i: fast.from_client(conn_id, batch, i, out),
                              "icmp_to_connector")
        elif self.is_connector(conn_id):
            self._route_batch(datagrams, out, lambda data: self._from_connector(conn_id, data, now, out),
                              None if fast is None else lambda batch, i: fast.from_connector(batch, i, out),
                              "icmp_to_client")
        else:
            self.drops["unauthenticated"] += len(datagrams)
        return out

    def _route_batch(self, datagrams: list[bytes], out: Outbound, slow: Callable[[bytes], None],
                     fast: Callable[[list[bytes], int], int] | None, routed_kind: str) -> None:
        """Route ``datagrams`` in order: the ICMP fast path (``fast(batch, start)`` forwards
        from ``start`` up to the first datagram it leaves and returns that index) and, for
        each datagram it leaves, the Python path ``slow``; then the fast path again from the
        next one, so the order holds. Without a fast path, everything goes through ``slow``."""
        if fast is None:
            for data in datagrams:
                slow(data)
            return
        if type(datagrams) is not list:
            datagrams = list(datagrams)
        i, forwarded, count = 0, 0, len(datagrams)
        while i < count:
            stop = fast(datagrams, i)
            forwarded += stop - i
            if stop < count:
                slow(datagrams[stop])
            i = stop + 1
        if forwarded:
            self.routed[routed_kind] += forwarded

    def _pick_connector(self, client_id: int, destination: bytes) -> int | None:
        owners = self._routes.lookup(destination)
        if not owners:
            return None
        if len(owners) == 1:
            return owners[0]
        # Rendezvous hashing: stable per (client, destination); losing a connector moves
        # only the flows it carried. The ICMP fast path hashes the same way.
        return max(owners, key=lambda owner: rendezvous_score(client_id, destination, owner))

    def _allowed(self, client: _Client, destination: bytes) -> bool:
        return client.allowed is None or _in_prefixes(destination, client.allowed)

    def _from_client(self, client: _Client, data: bytes, now: float, out: Outbound) -> None:
        if not data:
            self.drops["empty_datagram"] += 1
            return
        kind = data[0]
        if kind == DATAGRAM_ICMP:
            self._client_icmp(client, data, now, out)
            return
        try:
            message = decode_datagram(data)
        except MalformedDatagram as exc:
            self.drops[f"malformed_{exc.reason}"] += 1
            return
        if isinstance(message, UdpRegistration):
            self._client_registration(client, message, now, out)
        elif isinstance(message, UdpPayload):
            session = self._sessions.get(message.request_id)
            if session is None or session.client != client.conn_id:
                self.drops["unknown_session"] += 1
                return
            session.last_seen = now
            if session.connector is None:
                connector = self._pick_connector(client.conn_id, session.destination)
                if connector is None:
                    # Its connector went away and none serves the destination now: end the
                    # session and say so, so the client stops sending into nothing.
                    self.drops["no_route"] += 1
                    self._refuse_registration(client, message.request_id, "no_route", session.destination, out)
                    self._end_session(message.request_id)
                    return
                session.connector = connector
                out.setdefault(connector, []).append(session.registration)
            out.setdefault(session.connector, []).append(data)
            self.routed["udp_payload_to_connector"] += 1
        else:
            self.drops["client_sent_response"] += 1

    def _client_registration(self, client: _Client, message: UdpRegistration, now: float, out: Outbound) -> None:
        destination = message.dst
        if not self._allowed(client, destination):
            self.drops["policy_denied"] += 1
            self._refuse_registration(client, message.request_id, "policy_denied", destination, out)
            return
        session = self._sessions.get(message.request_id)
        if session is not None and session.client != client.conn_id:
            self.drops["request_id_conflict"] += 1
            return
        if session is None:
            if len(client.sessions) >= self.config.max_sessions_per_client:
                self.drops["client_session_limit"] += 1
                self._limit_log.warning("client_session_limit", now, "client %d has %d UDP sessions (the edge's "
                                        "max_sessions_per_client); refusing more", client.conn_id, len(client.sessions))
                out.setdefault(client.conn_id, []).append(
                    encode_registration_response(message.request_id, RESPONSE_TOO_MANY_ACTIVE_FLOWS, "edge session limit")
                )
                return
            connector = self._pick_connector(client.conn_id, destination)
            if connector is None:
                self.drops["no_route"] += 1
                self._refuse_registration(client, message.request_id, "no_route", destination, out)
                return
            registration = encode_udp_registration(
                message.request_id, destination, message.port, message.idle_timeout, traced=message.traced
            )
            session = _Session(client.conn_id, connector, registration, destination, float(message.idle_timeout), now)
            self._sessions[message.request_id] = session
            client.sessions.add(message.request_id)
        elif session.connector is None:
            session.connector = self._pick_connector(client.conn_id, destination)
            if session.connector is None:
                self.drops["no_route"] += 1
                self._refuse_registration(client, message.request_id, "no_route", destination, out)
                self._end_session(message.request_id)
                return
        session.last_seen = now
        out.setdefault(session.connector, []).append(
            encode_udp_registration(
                message.request_id, destination, message.port, message.idle_timeout,
                traced=message.traced, payload=message.payload,
            )
        )
        self.routed["udp_registration_to_connector"] += 1

    def _refuse_registration(self, client: _Client, request_id: bytes, reason: str, destination: bytes,
                             out: Outbound) -> None:
        """Answer a registration the edge cannot route with 0x01 (destination unreachable)."""
        message = _UNREACHABLE_MESSAGES[reason].format(destination=ipaddress.ip_address(destination))
        out.setdefault(client.conn_id, []).append(
            encode_registration_response(request_id, RESPONSE_DESTINATION_UNREACHABLE, message))
        self.routed[f"udp_refused_{reason}"] += 1

    def _client_icmp(self, client: _Client, data: bytes, now: float, out: Outbound) -> None:
        length = len(data) - 1
        if length < 1:
            self.drops["icmp_truncated"] += 1
            return
        version = data[1] >> 4
        if version == 4:
            if length < 20 or (data[1] & 0x0F) < 5:
                self.drops["icmp_truncated"] += 1
                return
            src, dst, own = data[13:17], data[17:21], client.v4
            edge_address = self.edge_v4
        elif version == 6:
            if length < 40:
                self.drops["icmp_truncated"] += 1
                return
            src, dst, own = data[9:25], data[25:41], client.v6
            edge_address = self.edge_v6
        else:
            self.drops["icmp_bad_ip_version"] += 1
            return
        if src != own:
            self.drops["spoofed_source"] += 1
            return
        if not self._allowed(client, dst):
            self.drops["policy_denied"] += 1
            self._unreachable(client, data, "policy_denied", version, edge_address, now, out)
            return
        # The route is looked up before the TTL is touched, as a router does (no route wins
        # over TTL 1), so the quoted packet is the one the client sent.
        connector = self._pick_connector(client.conn_id, dst)
        if connector is None:
            self.drops["no_route"] += 1
            self._unreachable(client, data, "no_route", version, edge_address, now, out)
            return
        packet = bytearray(memoryview(data)[1:])
        try:
            ttl = decrement_ttl(packet)
        except MalformedPacket as exc:
            self.drops[f"icmp_{exc.reason}"] += 1
            return
        if ttl == 0:  # the packet is left as received, to be quoted
            self._time_exceeded(client, packet, edge_address, out)
            return
        out.setdefault(connector, []).append(encode_icmp(packet))
        self.routed["icmp_to_connector"] += 1

    def _unreachable(self, client: _Client, data: bytes, reason: str, version: int, edge_address: bytes | None,
                     now: float, out: Outbound) -> None:
        """Answer a dropped client packet (``data``: the ICMP datagram) with Destination
        Unreachable, unless it is one no error may be sent about or the client's bucket is empty."""
        if edge_address is None or not _may_answer(data, version):
            return
        if not self._unreachable_limiter.allow(client.conn_id, now):
            self.drops["unreachable_rate_limited"] += 1
            return
        try:
            answer = build_destination_unreachable(edge_address, memoryview(data)[1:], UNREACHABLE_CODES[reason, version])
        except (MalformedPacket, ValueError):
            self.drops["icmp_unreachable_unbuildable"] += 1
            return
        out.setdefault(client.conn_id, []).append(encode_icmp(answer))
        self.routed[f"icmp_unreachable_{reason}"] += 1

    def _time_exceeded(self, client: _Client, packet: bytearray, edge_address: bytes | None, out: Outbound) -> None:
        if edge_address is None:
            self.drops["ttl_exceeded_no_edge_address"] += 1
            return
        try:
            answer = build_time_exceeded(edge_address, packet)
        except MalformedPacket as exc:
            self.drops[f"icmp_{exc.reason}"] += 1
            return
        out.setdefault(client.conn_id, []).append(encode_icmp(answer))
        self.routed["icmp_time_exceeded"] += 1

    def _from_connector(self, conn_id: int, data: bytes, now: float, out: Outbound) -> None:
        if not data:
            self.drops["empty_datagram"] += 1
            return
        if data[0] == DATAGRAM_ICMP:
            length = len(data) - 1
            version = data[1] >> 4 if length >= 1 else 0
            if version == 4 and length >= 20:
                dst = data[17:21]
            elif version == 6 and length >= 40:
                dst = data[25:41]
            else:
                self.drops["icmp_truncated" if version in (4, 6) or length < 1 else "icmp_bad_ip_version"] += 1
                return
            client_id = self._client_by_address.get(dst)
            if client_id is None:
                self.drops["unknown_client_address"] += 1
                return
            out.setdefault(client_id, []).append(data)
            self.routed["icmp_to_client"] += 1
            return
        try:
            message = decode_datagram(data)
        except MalformedDatagram as exc:
            self.drops[f"malformed_{exc.reason}"] += 1
            return
        if isinstance(message, (UdpPayload, RegistrationResponse)):
            session = self._sessions.get(message.request_id)
            if session is None or session.connector != conn_id:
                self.drops["unknown_session"] += 1
                return
            session.last_seen = now
            out.setdefault(session.client, []).append(data)
            if isinstance(message, RegistrationResponse) and message.code != RESPONSE_OK:
                self._end_session(message.request_id)
            self.routed["udp_to_client"] += 1
        else:
            self.drops["connector_sent_registration"] += 1

    def _end_session(self, request_id: bytes) -> None:
        session = self._sessions.pop(request_id, None)
        if session is not None:
            client = self._clients.get(session.client)
            if client is not None:
                client.sessions.discard(request_id)

    def expire(self, now: float | None = None) -> int:
        """Forget sessions idle longer than their idle timeout plus some slack; returns
        how many ended."""
        if now is None:
            now = time.monotonic()
        slack = self.config.session_idle_slack
        stale = [rid for rid, s in self._sessions.items() if now - s.last_seen > s.idle_timeout + slack]
        for request_id in stale:
            self._end_session(request_id)
        return len(stale)

    @property
    def session_count(self) -> int:
        """UDP sessions the edge tracks."""
        return len(self._sessions)
