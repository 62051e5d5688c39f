# fastproxy._core: nat (included by _core.pyx after packet, flowtable and batchio).
#
# EchoNat: batched source NAT of ICMP echo for the backends that rewrite echo ids
# themselves (raw sockets on Linux, SOCK_DGRAM ICMP on Darwin). One call handles a
# whole batch in C: parse and verify, policy (echo requests to allowed prefixes),
# flow acquire / reverse lookup, echo-id and address rewrite with incremental
# checksums, and the copy into (or out of) a PacketBatch. Python sees only the
# packets that need a decision of its own (TTL expired, refused, malformed).

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc

cdef enum:
    _NAT_MAX_PREFIXES = 256
    _NAT_SCRATCH = 40 + 0xFFFF   # an IPv6 header + the largest ICMPv6 message its payload length allows

# Reasons for client packets the engine does not forward (besides PACKET_MALFORMED_REASONS).
NAT_REFUSAL_REASONS = (
    "not_echo_request",
    "destination_not_allowed",
    "ttl_expired",
    "flow_limit_global",
    "flow_limit_connection",
    "echo_ids_exhausted",
    "packet_too_large",
)
# Reasons for received packets the engine drops; counted, read with EchoNat.take_drops().
NAT_REPLY_DROP_REASONS = (
    "reply_malformed",
    "reply_bad_checksum",
    "reply_truncated",
    "reply_not_echo_or_error",
    "reply_unknown_flow",
)
cdef enum:
    _NAT_R_MALFORMED = 0
    _NAT_R_BAD_CHECKSUM = 1
    _NAT_R_TRUNCATED = 2
    _NAT_R_NOT_ECHO_OR_ERROR = 3
    _NAT_R_UNKNOWN_FLOW = 4
    _NAT_R_COUNT = 5


def normalize_bsd_ipv4_headers(PacketBatch batch not None) -> None:
    """Put back in network form the IPv4 headers a BSD/macOS ICMP socket delivered.

    Those kernels hand ``ip_len`` and ``ip_off`` over in host byte order (and ``ip_len``
    possibly without the header), which the strict parse would reject. A socket sees
    reassembled datagrams, so ``ip_off`` can only be 0 or DF, in either byte order: it is
    set to DF in network order when it was DF either way; ``ip_len`` is set from the
    received length; the header checksum (verified by the kernel) is computed again.
    Slots that are not IPv4 or are too short are left for the parse to refuse. Whole
    network-form headers come out unchanged.
    """
    cdef int i
    cdef size_t n, hlen
    cdef uint8_t* p
    for i in range(batch.bio.count):
        p = batch.bio.base + <size_t>i * batch.bio.stride
        n = <size_t>batch.bio.lengths[i]
        if n < 20 or n > 0xFFFF or (p[0] >> 4) != 4:
            continue
        hlen = <size_t>(p[0] & 0x0F) * 4
        if hlen < 20 or hlen > n:
            continue
        fp_store_be16(p + 2, <uint16_t>n)
        if p[6] == 0x00 and p[7] == 0x40:
            p[6] = 0x40
            p[7] = 0x00
        fp_store_be16(p + 10, 0)
        fp_store_be16(p + 10, fp_csum_finish(fp_csum_add(p, hlen, 0)))


cdef inline bint _nat_prefix_match(const uint8_t* addr, const uint8_t* prefix, int bits) noexcept nogil:
    cdef int whole = bits >> 3
    cdef int rest = bits & 7
    cdef uint8_t mask
    if whole and memcmp(addr, prefix, whole) != 0:
        return False
    if rest:
        mask = <uint8_t>(0xFF << (8 - rest))
        return (addr[whole] & mask) == prefix[whole]
    return True


cdef void _nat_clear_host_bits(uint8_t* network, int length, int bits) noexcept nogil:
    """Zero the bits after the first ``bits``, so _nat_prefix_match compares networks only."""
    cdef int i
    for i in range(length):
        if bits >= 8:
            bits -= 8
        else:
            network[i] &= <uint8_t>(0xFF00 >> bits)
            bits = 0


cdef class EchoNat:
    """Batched source NAT of ICMP echo through a :class:`FlowTable` (raw / Darwin backends).

    ``allowed`` lists the destinations clients may reach as ``(network_bytes,
    prefix_length)`` pairs (4- or 16-byte network addresses, host bits ignored; at most 256 per family).
    Each call holds the table's critical section (free-threaded Python), so it serializes
    with the table's own writers; lock-free lookups still run alongside.
    """

    cdef FlowTable _table
    cdef uint8_t _pfx4[_NAT_MAX_PREFIXES][4]
    cdef int _pfx4_bits[_NAT_MAX_PREFIXES]
    cdef int _n4
    cdef uint8_t _pfx6[_NAT_MAX_PREFIXES][16]
    cdef int _pfx6_bits[_NAT_MAX_PREFIXES]
    cdef int _n6
    cdef uint64_t _drops[_NAT_R_COUNT]
    cdef uint8_t* _scratch
    cdef readonly uint64_t flows_created

    def __cinit__(self, FlowTable table not None, allowed):
        self._table = table
        self._scratch = <uint8_t*>malloc(_NAT_SCRATCH)
        if self._scratch == NULL:
            raise MemoryError("cannot allocate the NAT scratch buffer")
        for network, bits in allowed:
            network = bytes(network)
            if len(network) == 4 and 0 <= bits <= 32:
                if self._n4 == _NAT_MAX_PREFIXES:
                    raise ValueError(f"at most {_NAT_MAX_PREFIXES} IPv4 prefixes")
                memcpy(self._pfx4[self._n4], <const char*>network, 4)
                _nat_clear_host_bits(self._pfx4[self._n4], 4, bits)
                self._pfx4_bits[self._n4] = bits
                self._n4 += 1
            elif len(network) == 16 and 0 <= bits <= 128:
                if self._n6 == _NAT_MAX_PREFIXES:
                    raise ValueError(f"at most {_NAT_MAX_PREFIXES} IPv6 prefixes")
                memcpy(self._pfx6[self._n6], <const char*>network, 16)
                _nat_clear_host_bits(self._pfx6[self._n6], 16, bits)
                self._pfx6_bits[self._n6] = bits
                self._n6 += 1
            else:
                raise ValueError(f"allowed prefix must be (4- or 16-byte network, length), got {(network, bits)!r}")

    def __dealloc__(self):
        free(self._scratch)

    cdef bint _allowed(self, const uint8_t* dst, int family) noexcept nogil:
        cdef int i
        if family == 4:
            for i in range(self._n4):
                if _nat_prefix_match(dst, self._pfx4[i], self._pfx4_bits[i]):
                    return True
        else:
            for i in range(self._n6):
                if _nat_prefix_match(dst, self._pfx6[i], self._pfx6_bits[i]):
                    return True
        return False

    cdef int _forward_one(self, uint32_t conn_id, const uint8_t* p, size_t n, fp_bio_batch* o4,
                          fp_bio_batch* o6, double now) noexcept nogil:
        """Queue one client packet at slot ``count`` of o4 / o6; 0 when queued, else a
        refusal: a negative packet reason code, or 1 + an index into NAT_REFUSAL_REASONS."""
        cdef _pkt_info info
        cdef int r = _pkt_parse(p, n, &info, True)
        cdef int family, err = 0
        cdef int32_t assigned
        cdef uint32_t live_before
        cdef fp_bio_batch* out
        cdef int slot
        cdef size_t msg_len
        cdef uint8_t* q
        if r < 0:
            return r
        family = info.version
        if not info.has_echo or info.icmp_type != (8 if family == 4 else 128):
            return 1 + 0
        if not self._allowed(p + info.dst_offset, family):
            return 1 + 1
        if info.ttl <= 1:
            return 1 + 2
        msg_len = info.total_length - info.icmp_offset
        out = o4 if family == 4 else o6
        if msg_len > out.slot_size:
            return 1 + 6
        live_before = self._table._t.live
        assigned = self._table._ft_acquire_c(conn_id, p + info.src_offset, p + info.dst_offset, family,
                                             info.echo_id, now, &err)
        if assigned < 0:
            if err == FP_FT_ERR_FULL_GLOBAL:
                return 1 + 3
            if err == FP_FT_ERR_FULL_CONNECTION:
                return 1 + 4
            return 1 + 5
        if self._table._t.live != live_before:
            self.flows_created += 1
        slot = out.count
        q = out.base + <size_t>slot * out.stride
        # The kernel builds the IP header (raw socket without IP_HDRINCL): send the ICMP
        # message. Only the echo id changes; the ICMPv4 checksum is updated for it. The
        # ICMPv6 checksum covers our source address, which the kernel fills in, so the
        # kernel recomputes it (RFC 3542 3.1); updating it here keeps it consistent anyway.
        memcpy(q, p + info.icmp_offset, msg_len)
        fp_store_be16(q + 2, fp_csum_update16(fp_load_be16(q + 2), info.echo_id, <uint16_t>assigned))
        fp_store_be16(q + 4, <uint16_t>assigned)
        out.lengths[slot] = <int32_t>msg_len
        out.ttls[slot] = info.ttl - 1
        if family == 4:
            fp_bio_set_addr4(out, slot, p + info.dst_offset, 0)
        else:
            fp_bio_set_addr6(out, slot, p + info.dst_offset, 0, 0, 0)
        out.count = slot + 1
        return 0

    @cython.critical_section
    def outbound(self, uint32_t conn_id, packets, PacketBatch out4 not None, PacketBatch out6 not None,
                 double now):
        """NAT client packets of connection ``conn_id`` into send batches.

        ``packets`` is a sequence of whole IP packets (bytes-like). Echo requests to
        allowed destinations with TTL > 1 are written as ICMP messages, echo id
        replaced by the flow's, into ``out4`` / ``out6`` from slot 0 with the
        destination address and TTL - 1 set; send them with ``send(sock, n)``.
        Returns ``(n4, n6, refused)`` where ``refused`` lists ``(index, reason)`` for
        every packet not queued (a PACKET_MALFORMED_REASONS or NAT_REFUSAL_REASONS
        name; ``"ttl_expired"`` means answer Time Exceeded).
        """
        cdef list seq = packets if type(packets) is list else list(packets)
        cdef Py_ssize_t count = len(seq)
        cdef list refused = []
        if count > out4.bio.slots or count > out6.bio.slots:
            raise ValueError(f"{count} packets do not fit send batches of {out4.bio.slots} / {out6.bio.slots} slots")
        out4.bio.count = 0
        out6.bio.count = 0
        with cython.critical_section(self._table):
            self._outbound_locked(conn_id, seq, out4, out6, now, refused)
        return out4.bio.count, out6.bio.count, refused

    cdef void _outbound_locked(self, uint32_t conn_id, list seq, PacketBatch out4, PacketBatch out6, double now,
                               list refused) except *:
        cdef Py_ssize_t i
        cdef int r
        cdef object item
        cdef Py_buffer view
        for i in range(len(seq)):
            item = seq[i]
            if PyBytes_CheckExact(item):
                r = self._forward_one(conn_id, <const uint8_t*>PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item),
                                      &out4.bio, &out6.bio, now)
            else:
                PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
                try:
                    r = self._forward_one(conn_id, <const uint8_t*>view.buf, view.len, &out4.bio, &out6.bio, now)
                finally:
                    PyBuffer_Release(&view)
            if r < 0:
                refused.append((i, PACKET_MALFORMED_REASONS[-r - 1]))
            elif r > 0:
                refused.append((i, NAT_REFUSAL_REASONS[r - 1]))

    cdef object _reply_one(self, const uint8_t* p, size_t n, int family, const uint8_t* peer, int ttl,
                           double now, uint32_t* conn_out):
        """The client's packet for one received packet (bytes), or None (drop counted)."""
        cdef _pkt_info info
        cdef fp_ft_flow flow
        cdef const uint8_t* src
        cdef uint8_t* buf
        cdef size_t total
        cdef int r
        cdef const uint8_t* key_dst
        cdef uint16_t key_id
        cdef uint64_t acc
        cdef object result
        if family == 4:
            r = _pkt_parse(p, n, &info, True)
            if r < 0:
                self._drops[_NAT_R_BAD_CHECKSUM if r == _PKT_E_BAD_IP_CHECKSUM or r == _PKT_E_BAD_ICMP_CHECKSUM
                            else _NAT_R_MALFORMED] += 1
                return None
            src = p
            total = info.total_length
        else:
            # A raw ICMPv6 socket gives the message alone (the kernel verified its checksum):
            # put the IPv6 header back; the destination is filled in once the flow is known.
            if n > 0xFFFF:   # more than an IPv6 payload length can say (no jumbograms)
                self._drops[_NAT_R_MALFORMED] += 1
                return None
            buf = self._scratch
            total = 40 + n
            buf[0] = 0x60
            buf[1] = 0
            buf[2] = 0
            buf[3] = 0
            fp_store_be16(buf + 4, <uint16_t>n)
            buf[6] = 58
            buf[7] = <uint8_t>(ttl if ttl >= 0 else 64)
            memcpy(buf + 8, peer, 16)
            memset(buf + 24, 0, 16)
            memcpy(buf + 40, p, n)
            r = _pkt_parse(buf, total, &info, False)
            if r < 0:
                self._drops[_NAT_R_MALFORMED] += 1
                return None
            src = buf
        if info.has_echo and info.icmp_type == (0 if family == 4 else 129):
            key_dst = src + info.src_offset
            key_id = info.echo_id
        elif (info.has_inner and info.inner.has_echo and info.inner.version == family
              and info.inner.icmp_type == (8 if family == 4 else 128)):
            key_dst = src + info.inner.dst_offset
            key_id = info.inner.echo_id
        else:
            self._drops[_NAT_R_NOT_ECHO_OR_ERROR] += 1
            return None
        if not self._table._ft_reverse_c(key_dst, family, key_id, &flow) or flow.family != family:
            self._drops[_NAT_R_UNKNOWN_FLOW] += 1
            return None
        self._table._ft_touch_c(flow.entry, now)
        # The bytes object is ours alone until returned: rewrite it in place.
        result = PyBytes_FromStringAndSize(<const char*>src, total)
        buf = <uint8_t*>PyBytes_AS_STRING(result)
        if family == 6:
            memcpy(buf + 24, flow.src, 16)
            fp_store_be16(buf + 42, 0)
            acc = fp_csum_pseudo_header(buf + 8, buf + 24, 16, <uint32_t>n, 58)
            fp_store_be16(buf + 42, fp_csum_finish(fp_csum_add(buf + 40, n, acc)))
            info.icmp_checksum = fp_load_be16(buf + 42)
        if info.has_inner:
            r = _pkt_translate_icmp_error(buf, total, &info, flow.src, flow.echo_id)
        else:
            r = _pkt_rewrite_addr(buf, total, &info, info.dst_offset, flow.src) if family == 4 else 0
            if r == 0:
                r = _pkt_rewrite_echo_id(buf, total, &info, flow.echo_id)
        if r < 0:
            self._drops[_NAT_R_MALFORMED] += 1
            return None
        conn_out[0] = flow.conn
        return result

    @cython.critical_section
    def inbound(self, PacketBatch received not None, int family, double now):
        """Map packets a raw socket of ``family`` (4 or 6) received into ``received`` back to
        their clients; returns ``[(conn_id, packet), ...]`` with whole IP packets as the
        client must see them (its address and echo id restored, errors translated).

        IPv4 raw sockets deliver the IP header; IPv6 ones deliver the ICMPv6 message,
        whose header is rebuilt from the slot's peer address and hop limit (enable
        IPV6_RECVHOPLIMIT on the socket). Drops are counted (:meth:`take_drops`).
        """
        cdef list result = []
        if family != 4 and family != 6:
            raise ValueError(f"family must be 4 or 6, got {family}")
        with cython.critical_section(self._table):
            self._inbound_locked(received, family, now, result)
        return result

    cdef void _inbound_locked(self, PacketBatch received, int family, double now, list result) except *:
        cdef int i
        cdef uint8_t peer[16]
        cdef uint16_t port
        cdef uint32_t flowinfo, scope, conn = 0
        cdef const uint8_t* p
        cdef object packet
        for i in range(received.bio.count):
            if received.bio.flags[i] & FP_BIO_TRUNCATED:
                self._drops[_NAT_R_TRUNCATED] += 1
                continue
            p = received.bio.base + <size_t>i * received.bio.stride
            if family == 6 and fp_bio_get_addr(&received.bio, i, peer, &port, &flowinfo, &scope) != 6:
                self._drops[_NAT_R_MALFORMED] += 1
                continue
            packet = self._reply_one(p, received.bio.lengths[i], family, peer, received.bio.ttls[i], now, &conn)
            if packet is not None:
                result.append((conn, packet))

    @cython.critical_section
    def take_drops(self) -> dict:
        """Reply drops counted since the last call, by reason (only non-zero ones)."""
        cdef int i
        cdef dict counts = {}
        for i in range(_NAT_R_COUNT):
            if self._drops[i]:
                counts[NAT_REPLY_DROP_REASONS[i]] = self._drops[i]
                self._drops[i] = 0
        return counts
