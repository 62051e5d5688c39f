# fastproxy._core: edgeroute (included by _core.pyx after packet and nat).
#
# EdgeIcmpRoutes: the edge's fast path for ICMP datagrams (0x02). EdgeRouter.route hands
# it each received batch; one call forwards, in order, every datagram of the common case
# (client -> connector: the source is the client's own address, the destination within its
# policy, a connector for the longest matching prefix, a whole packet whose TTL stays
# above 0; connector -> client: a destination address that is a client's) and stops at
# the first one that needs a decision of its own (UDP, an answer to build, anything odd),
# which EdgeRouter's Python path then takes; so the output and the counters are the ones
# the Python path alone gives. The tables here mirror EdgeRouter's (it pushes them on
# every change): prefixes -> connector ids, clients -> addresses and policy.

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdlib cimport realloc
from libc.string cimport memmove

ctypedef struct _er_route:
    uint8_t net[16]
    int bits
    Py_ssize_t first    # into the owners array
    Py_ssize_t count

ctypedef struct _er_address:
    uint8_t addr[16]
    uint8_t length      # 4 or 16
    uint64_t conn_id


cdef inline uint64_t _er_fnv(uint64_t h, const uint8_t* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        h = (h ^ p[i]) * <uint64_t>0x100000001b3ULL
    return h


cdef uint64_t _er_score(uint64_t client_id, const uint8_t* destination, size_t length, uint64_t owner) noexcept nogil:
    """FNV-1a over (client id, destination, owner), each id as 8 big-endian bytes, through
    splitmix64's finalizer (so that ids differing in one bit score far apart)."""
    cdef uint8_t word[8]
    cdef uint64_t h = <uint64_t>0xcbf29ce484222325ULL
    fp_store_be32(word, <uint32_t>(client_id >> 32))
    fp_store_be32(word + 4, <uint32_t>client_id)
    h = _er_fnv(h, word, 8)
    h = _er_fnv(h, destination, length)
    fp_store_be32(word, <uint32_t>(owner >> 32))
    fp_store_be32(word + 4, <uint32_t>owner)
    h = _er_fnv(h, word, 8)
    h ^= h >> 30
    h *= <uint64_t>0xbf58476d1ce4e5b9ULL
    h ^= h >> 27
    h *= <uint64_t>0x94d049bb133111ebULL
    h ^= h >> 31
    return h


def rendezvous_score(uint64_t client_id, const uint8_t[::1] destination not None, uint64_t owner) -> int:
    """The rendezvous-hashing score of connector ``owner`` for (``client_id``, ``destination``):
    of several connectors serving a prefix, a flow goes to the one with the highest score
    (the first of them on a tie), so losing one moves only the flows it carried."""
    return _er_score(client_id, &destination[0] if destination.shape[0] else NULL, destination.shape[0], owner)


cdef int _er_address_cmp(const uint8_t* addr, uint8_t length, const _er_address* entry) noexcept nogil:
    if length != entry.length:
        return -1 if length < entry.length else 1
    return memcmp(addr, entry.addr, length)


cdef class _ErClient:
    """One client as the fast path sees it: its addresses and what it may reach."""
    cdef uint8_t v4[4]
    cdef uint8_t v6[16]
    cdef bint has_v4
    cdef bint has_v6
    cdef bint allow_all
    cdef uint8_t* pfx           # n_pfx networks, 16 bytes apart
    cdef int* pfx_bits
    cdef uint8_t* pfx_length
    cdef int n_pfx

    def __dealloc__(self):
        free(self.pfx)
        free(self.pfx_bits)
        free(self.pfx_length)

    cdef bint allowed(self, const uint8_t* dst, uint8_t length) noexcept nogil:
        cdef int i
        if self.allow_all:
            return True
        for i in range(self.n_pfx):
            if self.pfx_length[i] == length and _nat_prefix_match(dst, self.pfx + 16 * i, self.pfx_bits[i]):
                return True
        return False


cdef int _er_prefix(object network, object bits, uint8_t* out, int* out_bits) except -1:
    """A (4- or 16-byte network, length) pair into ``out`` with host bits cleared; its byte length."""
    network = bytes(network)
    cdef Py_ssize_t length = len(network)
    if length not in (4, 16) or not 0 <= bits <= length * 8:
        raise ValueError(f"a prefix must be (4- or 16-byte network, length), got {(network, bits)!r}")
    memcpy(out, <const char*>network, length)
    _nat_clear_host_bits(out, <int>length, bits)
    out_bits[0] = bits
    return <int>length


cdef class EdgeIcmpRoutes:
    """The edge's batched ICMP fast path (see the module comment in edgeroute.pxi).

    ``set_routes`` and ``set_client`` / ``remove_client`` keep its tables equal to the
    router's; ``from_client`` and ``from_connector`` forward a batch from ``start`` on and
    return the index of the first datagram they left (``len(datagrams)`` when none).
    """

    cdef _er_route* _routes4
    cdef _er_route* _routes6
    cdef Py_ssize_t _n4
    cdef Py_ssize_t _n6
    cdef uint64_t* _owners
    cdef dict _clients
    cdef _er_address* _addresses     # sorted by (length, address)
    cdef Py_ssize_t _n_addresses
    cdef Py_ssize_t _cap_addresses

    def __cinit__(self):
        self._clients = {}

    def __dealloc__(self):
        free(self._routes4)
        free(self._routes6)
        free(self._owners)
        free(self._addresses)

    def set_routes(self, routes) -> None:
        """Replace the prefix table: ``routes`` holds (network, prefix length, connector ids)
        triples (4- or 16-byte networks, host bits ignored), each prefix once, its ids in the
        router's order."""
        entries = [(bytes(network), bits, [int(owner) for owner in owners]) for network, bits, owners in routes]
        cdef Py_ssize_t total = sum(len(owners) for _, _, owners in entries)
        cdef _er_route* r4 = <_er_route*>malloc(sizeof(_er_route) * (len(entries) + 1))
        cdef _er_route* r6 = <_er_route*>malloc(sizeof(_er_route) * (len(entries) + 1))
        cdef uint64_t* owners_out = <uint64_t*>malloc(sizeof(uint64_t) * (total + 1))
        cdef Py_ssize_t n4 = 0, n6 = 0, k = 0
        cdef _er_route* route
        cdef int length
        if r4 == NULL or r6 == NULL or owners_out == NULL:
            free(r4)
            free(r6)
            free(owners_out)
            raise MemoryError("cannot allocate the edge's prefix table")
        try:
            # Longest first, as the router looks them up; a prefix with no connector is not one.
            for network, bits, owners in sorted(entries, key=lambda entry: -entry[1]):
                if not owners:
                    continue
                route = &r4[n4] if len(network) == 4 else &r6[n6]
                length = _er_prefix(network, bits, route.net, &route.bits)
                route.first, route.count = k, len(owners)
                for owner in owners:
                    owners_out[k] = owner
                    k += 1
                if length == 4:
                    n4 += 1
                else:
                    n6 += 1
        except BaseException:
            free(r4)
            free(r6)
            free(owners_out)
            raise
        free(self._routes4)
        free(self._routes6)
        free(self._owners)
        self._routes4, self._routes6, self._owners, self._n4, self._n6 = r4, r6, owners_out, n4, n6

    def set_client(self, uint64_t conn_id, v4, v6, allowed) -> None:
        """Admit (or update) client ``conn_id``: its 4- and 16-byte addresses (None when it
        has none) and the (network, length) prefixes it may reach (None: any)."""
        cdef _ErClient client = _ErClient()
        prefixes = None if allowed is None else list(allowed)
        cdef int i
        cdef bytes address
        if v4 is not None:
            if len(v4) != 4:
                raise ValueError(f"a client's IPv4 address is 4 bytes, got {v4!r}")
            address = bytes(v4)
            memcpy(client.v4, <const char*>address, 4)
            client.has_v4 = True
        if v6 is not None:
            if len(v6) != 16:
                raise ValueError(f"a client's IPv6 address is 16 bytes, got {v6!r}")
            address = bytes(v6)
            memcpy(client.v6, <const char*>address, 16)
            client.has_v6 = True
        client.allow_all = prefixes is None
        if prefixes:
            client.pfx = <uint8_t*>malloc(16 * len(prefixes))
            client.pfx_bits = <int*>malloc(sizeof(int) * len(prefixes))
            client.pfx_length = <uint8_t*>malloc(len(prefixes))
            if client.pfx == NULL or client.pfx_bits == NULL or client.pfx_length == NULL:
                raise MemoryError("cannot allocate a client's policy")
            for i, (network, bits) in enumerate(prefixes):
                client.pfx_length[i] = <uint8_t>_er_prefix(network, bits, client.pfx + 16 * i, &client.pfx_bits[i])
            client.n_pfx = len(prefixes)
        self.remove_client(conn_id)
        self._clients[conn_id] = client
        if client.has_v4:
            self._add_address(client.v4, 4, conn_id)
        if client.has_v6:
            self._add_address(client.v6, 16, conn_id)

    def remove_client(self, uint64_t conn_id) -> None:
        """Forget client ``conn_id`` (nothing happens when it is unknown)."""
        cdef _ErClient client = self._clients.pop(conn_id, None)
        if client is None:
            return
        if client.has_v4:
            self._remove_address(client.v4, 4)
        if client.has_v6:
            self._remove_address(client.v6, 16)

    cdef Py_ssize_t _find_address(self, const uint8_t* addr, uint8_t length, bint* found) noexcept nogil:
        """Binary search: the index of ``addr``, or where it would go."""
        cdef Py_ssize_t lo = 0, hi = self._n_addresses, mid
        cdef int c
        found[0] = False
        while lo < hi:
            mid = (lo + hi) >> 1
            c = _er_address_cmp(addr, length, &self._addresses[mid])
            if c == 0:
                found[0] = True
                return mid
            if c < 0:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef int _add_address(self, const uint8_t* addr, uint8_t length, uint64_t conn_id) except -1:
        cdef bint found
        cdef Py_ssize_t at = self._find_address(addr, length, &found)
        cdef _er_address* grown
        if not found:
            if self._n_addresses == self._cap_addresses:
                grown = <_er_address*>realloc(self._addresses, sizeof(_er_address) * (self._cap_addresses * 2 + 16))
                if grown == NULL:
                    raise MemoryError("cannot grow the edge's client address table")
                self._addresses, self._cap_addresses = grown, self._cap_addresses * 2 + 16
            memmove(&self._addresses[at + 1], &self._addresses[at], sizeof(_er_address) * (self._n_addresses - at))
            self._n_addresses += 1
            memset(&self._addresses[at], 0, sizeof(_er_address))
            memcpy(self._addresses[at].addr, addr, length)
            self._addresses[at].length = length
        self._addresses[at].conn_id = conn_id
        return 0

    cdef void _remove_address(self, const uint8_t* addr, uint8_t length) noexcept nogil:
        cdef bint found
        cdef Py_ssize_t at = self._find_address(addr, length, &found)
        if found:
            memmove(&self._addresses[at], &self._addresses[at + 1], sizeof(_er_address) * (self._n_addresses - at - 1))
            self._n_addresses -= 1

    cdef int64_t _connector_for(self, uint64_t client_id, const uint8_t* dst, uint8_t length) noexcept nogil:
        """The connector for ``dst``: the longest matching prefix's, by rendezvous among
        several; -1 when none serves it."""
        cdef _er_route* routes = self._routes4 if length == 4 else self._routes6
        cdef Py_ssize_t n = self._n4 if length == 4 else self._n6
        cdef Py_ssize_t i, k
        cdef uint64_t owner, best = 0, score, best_score = 0
        for i in range(n):
            if _nat_prefix_match(dst, routes[i].net, routes[i].bits):
                if routes[i].count == 1:
                    return <int64_t>self._owners[routes[i].first]
                for k in range(routes[i].count):
                    owner = self._owners[routes[i].first + k]
                    score = _er_score(client_id, dst, length, owner)
                    if k == 0 or score > best_score:
                        best, best_score = owner, score
                return <int64_t>best
        return -1

    cdef int64_t _client_datagram(self, _ErClient client, uint64_t client_id, const uint8_t* p, size_t n,
                                  _pkt_info* info) noexcept nogil:
        """The connector a client's datagram goes to unchanged but for its TTL, or -1 when
        the Python path must decide (the order of its checks does not matter: any failing
        one sends the datagram there)."""
        cdef const uint8_t* ip = p + 1
        cdef size_t length = n - 1
        cdef const uint8_t* dst
        cdef uint8_t alen
        cdef int64_t connector
        if n < 2 or p[0] != 0x02:
            return -1
        if ip[0] >> 4 == 4:
            if length < 20 or (ip[0] & 0x0F) < 5 or not client.has_v4 or memcmp(ip + 12, client.v4, 4) != 0:
                return -1
            dst, alen = ip + 16, 4
        elif ip[0] >> 4 == 6:
            if length < 40 or not client.has_v6 or memcmp(ip + 8, client.v6, 16) != 0:
                return -1
            dst, alen = ip + 24, 16
        else:
            return -1
        if not client.allowed(dst, alen):
            return -1
        connector = self._connector_for(client_id, dst, alen)
        if connector < 0:
            return -1
        if _pkt_parse(ip, length, info, False) != 0 or info.ttl <= 1 or length < info.total_length:
            return -1
        return connector

    def from_client(self, uint64_t conn_id, list datagrams not None, Py_ssize_t start, dict out not None) -> int:
        """Forward client ``conn_id``'s ICMP datagrams ``datagrams[start:]`` into ``out``
        (connector id -> datagrams, the TTL / hop limit decremented, the IPv4 header checksum
        updated) up to the first one the Python path must take; return that one's index."""
        cdef _ErClient client = self._clients.get(conn_id)
        cdef Py_ssize_t i = start, n = PyList_GET_SIZE(datagrams)
        cdef object item, forwarded
        cdef list target = None
        cdef int64_t connector, last = -1
        cdef _pkt_info info
        cdef uint8_t* q
        if client is None or start < 0:
            return start
        while i < n:
            item = <object>PyList_GET_ITEM(datagrams, i)
            if not PyBytes_CheckExact(item):
                break
            connector = self._client_datagram(client, conn_id, <const uint8_t*>PyBytes_AS_STRING(item),
                                              <size_t>PyBytes_GET_SIZE(item), &info)
            if connector < 0:
                break
            forwarded = PyBytes_FromStringAndSize(PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item))
            q = <uint8_t*>PyBytes_AS_STRING(forwarded)
            _pkt_decrement_ttl(q + 1, <size_t>PyBytes_GET_SIZE(item) - 1, &info)
            if connector != last:
                target = _er_output(out, connector)
                last = connector
            target.append(forwarded)
            i += 1
        return i

    def from_connector(self, list datagrams not None, Py_ssize_t start, dict out not None) -> int:
        """Forward a connector's ICMP datagrams ``datagrams[start:]`` unchanged into ``out``
        (client id -> datagrams, by destination address) up to the first one the Python
        path must take; return that one's index."""
        cdef Py_ssize_t i = start, n = PyList_GET_SIZE(datagrams), at
        cdef object item
        cdef list target = None
        cdef const uint8_t* p
        cdef size_t length
        cdef uint64_t client_id
        cdef int64_t last = -1
        cdef bint found
        if start < 0:
            return start
        while i < n:
            item = <object>PyList_GET_ITEM(datagrams, i)
            if not PyBytes_CheckExact(item):
                break
            p = <const uint8_t*>PyBytes_AS_STRING(item)
            length = <size_t>PyBytes_GET_SIZE(item)
            if length < 2 or p[0] != 0x02:
                break
            if p[1] >> 4 == 4 and length >= 21:
                at = self._find_address(p + 17, 4, &found)
            elif p[1] >> 4 == 6 and length >= 41:
                at = self._find_address(p + 25, 16, &found)
            else:
                break
            if not found:
                break
            client_id = self._addresses[at].conn_id
            if <int64_t>client_id != last:
                target = _er_output(out, client_id)
                last = <int64_t>client_id
            target.append(item)
            i += 1
        return i


cdef list _er_output(dict out, uint64_t conn_id):
    """``out.setdefault(conn_id, [])``."""
    key = conn_id
    target = out.get(key)
    if target is None:
        target = []
        out[key] = target
    return target
