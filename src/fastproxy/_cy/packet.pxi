# fastproxy._core: packet (included by _core.pyx; see the module docstring there).
#
# IPv4/IPv6 packets carrying ICMP/ICMPv6: parse and validate, build echo and error
# messages, rewrite in place with RFC 1624 incremental checksum updates.
#
# ---- C-level API (stable; the NAT engine in this compilation unit calls it) ----
#
#   _pkt_info / _pkt_inner (structs below): one parsed packet. Addresses are OFFSETS into
#   the parsed buffer (addr_length bytes each), never copies. _pkt_inner describes the IP
#   packet quoted by an ICMP error (valid when has_inner); its offsets are absolute too.
#
#   int _pkt_parse(const uint8_t* p, size_t n, _pkt_info* out, bint verify) noexcept nogil
#       0, or a negative reason code (_PKT_E_*); verify checks the IPv4 header checksum and
#       the ICMP(v6) checksum. The name of a code: _pkt_reason_name(code), which equals
#       PACKET_MALFORMED_REASONS[-code - 1].
#   const char* _pkt_reason_name(int code) noexcept nogil
#
#   Rewrites: p/n is the buffer that `info` was parsed from (they re-check n >= total_length,
#   so they never write out of bounds), all return 0 or a negative reason code, update the
#   affected checksums incrementally and keep `info` in step with the buffer:
#   int _pkt_rewrite_addr(uint8_t* p, size_t n, _pkt_info* info, size_t addr_offset,
#                         const uint8_t* addr) noexcept nogil
#       addr_offset is info.src_offset or info.dst_offset; addr holds info.addr_length bytes.
#   int _pkt_rewrite_echo_id(uint8_t* p, size_t n, _pkt_info* info, uint16_t echo_id) noexcept nogil
#       needs info.has_echo (else _PKT_E_NOT_ECHO).
#   int _pkt_set_ttl(uint8_t* p, size_t n, _pkt_info* info, uint8_t ttl) noexcept nogil
#   int _pkt_decrement_ttl(uint8_t* p, size_t n, _pkt_info* info) noexcept nogil
#       the new TTL/hop limit; 0 (buffer untouched) when it was 0 or 1: answer Time Exceeded.
#   int _pkt_translate_icmp_error(uint8_t* p, size_t n, _pkt_info* info, const uint8_t* client_addr,
#                                 uint16_t client_echo_id) noexcept nogil
#       RFC 5508 reverse translation of an ICMP error quoting one of our echo messages.
#
#   Builders write into out[0:cap] and return the packet length, or -1 when the arguments
#   are unusable (address length not 4/16, original too short or of the other family,
#   packet larger than cap or than IP allows):
#   Py_ssize_t _pkt_build_echo(uint8_t* out, size_t cap, const uint8_t* src, const uint8_t* dst,
#           size_t addr_length, uint16_t echo_id, uint16_t seq, const uint8_t* payload,
#           size_t payload_length, uint8_t ttl, bint reply) noexcept nogil
#   Py_ssize_t _pkt_build_icmp_error(uint8_t* out, size_t cap, const uint8_t* src, size_t addr_length,
#           const uint8_t* original, size_t original_length, uint8_t icmp_type, uint8_t icmp_code,
#           uint32_t mtu, uint8_t ttl) noexcept nogil
#       cap of _PKT_V4_ERROR_MAX (576) / _PKT_V6_ERROR_MAX (1280) always suffices.
#
# Built headers: IPv4 TOS 0, identification 0 with DF set (an atomic datagram, RFC 6864), no
# options; IPv6 traffic class 0, flow label 0, no extension headers.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize


# Reason codes: -(index + 1) into PACKET_MALFORMED_REASONS (same order!).
cdef enum:
    _PKT_E_EMPTY = -1
    _PKT_E_BAD_VERSION = -2
    _PKT_E_TRUNCATED_IP_HEADER = -3
    _PKT_E_BAD_HEADER_LENGTH = -4
    _PKT_E_BAD_TOTAL_LENGTH = -5
    _PKT_E_BAD_IP_CHECKSUM = -6
    _PKT_E_FRAGMENT = -7
    _PKT_E_TRUNCATED_EXTENSION_HEADER = -8
    _PKT_E_UNSUPPORTED_EXTENSION_HEADER = -9
    _PKT_E_NOT_ICMP = -10
    _PKT_E_TRUNCATED_ICMP = -11
    _PKT_E_BAD_ICMP_CHECKSUM = -12
    _PKT_E_TRUNCATED_QUOTE = -13
    _PKT_E_BAD_QUOTE = -14
    _PKT_E_NOT_ECHO = -15
    _PKT_E_NOT_ICMP_ERROR = -16
    _PKT_E_QUOTE_NOT_ECHO = -17
    _PKT_REASON_COUNT = 17

cdef const char* _PKT_REASON_C_NAMES[17]
_PKT_REASON_C_NAMES[:] = [
    b"empty", b"bad_version", b"truncated_ip_header", b"bad_header_length", b"bad_total_length",
    b"bad_ip_checksum", b"fragment", b"truncated_extension_header", b"unsupported_extension_header",
    b"not_icmp", b"truncated_icmp", b"bad_icmp_checksum", b"truncated_quote", b"bad_quote",
    b"not_echo", b"not_icmp_error", b"quote_not_echo",
]

PACKET_MALFORMED_REASONS = tuple(_PKT_REASON_C_NAMES[i].decode() for i in range(_PKT_REASON_COUNT))

cdef enum:
    _PKT_V4_ERROR_MAX = 576    # RFC 792/1812: an ICMPv4 error is at most 576 bytes in all
    _PKT_V6_ERROR_MAX = 1280   # RFC 4443 2.4(c): an ICMPv6 error fits the minimum IPv6 MTU


ctypedef struct _pkt_inner:
    uint32_t offset          # where the quoted IP packet starts in the buffer
    uint32_t length          # bytes of it present (never more than its total length)
    uint8_t version
    uint16_t header_length   # v4 IHL*4; v6 40 + skipped extension headers
    uint8_t protocol         # v6: after the extension headers skipped
    uint8_t ttl
    uint32_t src_offset
    uint32_t dst_offset
    bint has_icmp            # icmp_offset/icmp_type/icmp_code valid
    uint32_t icmp_offset
    uint8_t icmp_type
    uint8_t icmp_code
    bint has_echo            # echo request/reply: echo_id/echo_seq valid
    uint16_t echo_id
    uint16_t echo_seq

ctypedef struct _pkt_info:
    uint8_t version          # 4 or 6
    uint8_t addr_length      # 4 or 16
    uint16_t header_length
    uint32_t total_length    # == the buffer length (trailing bytes are rejected)
    uint8_t ttl
    uint8_t protocol         # 1 or 58
    uint32_t src_offset
    uint32_t dst_offset
    uint32_t icmp_offset
    uint8_t icmp_type
    uint8_t icmp_code
    uint16_t icmp_checksum
    bint has_echo
    uint16_t echo_id
    uint16_t echo_seq
    bint has_mtu
    uint32_t mtu
    bint has_inner
    _pkt_inner inner


cdef const char* _pkt_reason_name(int code) noexcept nogil:
    """The name of a negative reason code (as in PACKET_MALFORMED_REASONS)."""
    if code >= 0 or code < -_PKT_REASON_COUNT:
        return "unknown"
    return _PKT_REASON_C_NAMES[-code - 1]



# ---------------------------------------------------------------- parsing

cdef inline int _pkt_v6_skip_extensions(const uint8_t* p, size_t end, uint8_t* next_header,
                                        size_t* offset, bint final) noexcept nogil:
    """Skip hop-by-hop (0), routing (43) and destination options (60) headers.

    -1 if one is cut short. With final (the packet is addressed to us), -2 for a routing
    header with segments left: the packet is still in transit, and its ICMPv6 checksum
    would use another destination in the pseudo-header (RFC 8200 8.1).
    """
    cdef size_t length
    while next_header[0] == 0 or next_header[0] == 43 or next_header[0] == 60:
        if offset[0] + 2 > end:
            return -1
        length = (<size_t>p[offset[0] + 1] + 1) * 8
        if offset[0] + length > end:
            return -1
        if final and next_header[0] == 43 and p[offset[0] + 3] != 0:
            return -2
        next_header[0] = p[offset[0]]
        offset[0] += length
    return 0


cdef inline bint _pkt_is_upper_layer(uint8_t next_header) noexcept nogil:
    """Protocols that end the IPv6 header chain (so the packet is simply not ICMPv6)."""
    return (next_header == 1 or next_header == 2 or next_header == 4 or next_header == 6
            or next_header == 17 or next_header == 33 or next_header == 41 or next_header == 47
            or next_header == 59 or next_header == 103 or next_header == 132 or next_header == 136)


cdef inline uint64_t _pkt_v6_pseudo_sum(const uint8_t* ip, size_t upper_length) noexcept nogil:
    """RFC 8200 8.1 pseudo-header (source, destination, length, next header 58) of the v6 header at ip."""
    return fp_csum_add(ip + 8, 32, 0) + (upper_length >> 16) + (upper_length & 0xffff) + 58


cdef int _pkt_parse_quote(const uint8_t* p, size_t qoff, size_t end, size_t field_length,
                          _pkt_info* out) noexcept nogil:
    """Parse the IP packet quoted by an ICMP error: it starts at qoff and the message ends at end.

    field_length is the RFC 4884 length of the original-datagram field (0: absent, the
    quote runs to the end of the message and must not be longer than the quoted packet).
    """
    cdef _pkt_inner* inner = &out.inner
    cdef size_t qlen = end - qoff
    cdef size_t hlen, inner_total
    cdef uint8_t next_header
    cdef const uint8_t* q = p + qoff
    if field_length:
        if field_length > qlen:
            return _PKT_E_BAD_QUOTE
        qlen = field_length
    if qlen == 0:
        return _PKT_E_TRUNCATED_QUOTE
    if (q[0] >> 4) != out.version:
        return _PKT_E_BAD_QUOTE
    if out.version == 4:
        if qlen < 20:
            return _PKT_E_TRUNCATED_QUOTE
        hlen = <size_t>(q[0] & 0x0f) * 4
        if hlen < 20:
            return _PKT_E_BAD_QUOTE
        if qlen < hlen + 8:
            return _PKT_E_TRUNCATED_QUOTE
        inner_total = fp_load_be16(q + 2)
        inner.ttl = q[8]
        inner.protocol = q[9]
        inner.src_offset = <uint32_t>(qoff + 12)
        inner.dst_offset = <uint32_t>(qoff + 16)
        # A non-first fragment carries no ICMP header.
        inner.has_icmp = q[9] == 1 and (fp_load_be16(q + 6) & 0x1fff) == 0
    else:
        if qlen < 40:
            return _PKT_E_TRUNCATED_QUOTE
        next_header = q[6]
        hlen = 40
        if _pkt_v6_skip_extensions(q, qlen, &next_header, &hlen, False) < 0:
            return _PKT_E_TRUNCATED_QUOTE
        if qlen < hlen + 8:
            return _PKT_E_TRUNCATED_QUOTE
        inner_total = 40 + <size_t>fp_load_be16(q + 4)
        inner.ttl = q[7]
        inner.protocol = next_header
        inner.src_offset = <uint32_t>(qoff + 8)
        inner.dst_offset = <uint32_t>(qoff + 24)
        inner.has_icmp = next_header == 58
    # Truncation (quote shorter than the packet) is normal; a quote longer than the packet
    # is not, except for RFC 4884 zero padding.
    if inner_total < hlen + 8 or (field_length == 0 and inner_total < qlen):
        return _PKT_E_BAD_QUOTE
    inner.offset = <uint32_t>qoff
    inner.length = <uint32_t>(qlen if qlen < inner_total else inner_total)
    inner.version = out.version
    inner.header_length = <uint16_t>hlen
    if inner.has_icmp:
        inner.icmp_offset = <uint32_t>(qoff + hlen)
        inner.icmp_type = q[hlen]
        inner.icmp_code = q[hlen + 1]
        if out.version == 4:
            inner.has_echo = inner.icmp_type == 8 or inner.icmp_type == 0
        else:
            inner.has_echo = inner.icmp_type == 128 or inner.icmp_type == 129
        if inner.has_echo:
            inner.echo_id = fp_load_be16(q + hlen + 4)
            inner.echo_seq = fp_load_be16(q + hlen + 6)
    out.has_inner = True
    return 0


cdef int _pkt_parse(const uint8_t* p, size_t n, _pkt_info* out, bint verify) noexcept nogil:
    """Parse and validate one whole IPv4/IPv6 packet carrying ICMP; 0 or a _PKT_E_* code."""
    cdef size_t hlen, total, icmp_length, field_length = 0
    cdef uint8_t next_header, icmp_type
    cdef const uint8_t* icmp
    cdef uint64_t acc
    cdef bint is_error
    cdef int rc
    memset(out, 0, sizeof(_pkt_info))
    if n == 0:
        return _PKT_E_EMPTY
    out.version = p[0] >> 4
    if out.version == 4:
        if n < 20:
            return _PKT_E_TRUNCATED_IP_HEADER
        hlen = <size_t>(p[0] & 0x0f) * 4
        if hlen < 20:
            return _PKT_E_BAD_HEADER_LENGTH
        if hlen > n:
            return _PKT_E_TRUNCATED_IP_HEADER
        total = fp_load_be16(p + 2)
        if total != n:
            return _PKT_E_BAD_TOTAL_LENGTH
        if verify and fp_csum_fold(fp_csum_add(p, hlen, 0)) != 0xffff:
            return _PKT_E_BAD_IP_CHECKSUM
        if fp_load_be16(p + 6) & 0x3fff:   # MF flag or a fragment offset
            return _PKT_E_FRAGMENT
        if p[9] != 1:
            return _PKT_E_NOT_ICMP
        out.addr_length = 4
        out.ttl = p[8]
        out.src_offset = 12
        out.dst_offset = 16
    elif out.version == 6:
        if n < 40:
            return _PKT_E_TRUNCATED_IP_HEADER
        total = 40 + <size_t>fp_load_be16(p + 4)
        if total != n:
            return _PKT_E_BAD_TOTAL_LENGTH
        next_header = p[6]
        hlen = 40
        rc = _pkt_v6_skip_extensions(p, n, &next_header, &hlen, True)
        if rc == -2:
            return _PKT_E_UNSUPPORTED_EXTENSION_HEADER
        if rc < 0:
            return _PKT_E_TRUNCATED_EXTENSION_HEADER
        if next_header == 44:
            return _PKT_E_FRAGMENT
        if next_header != 58:
            return _PKT_E_NOT_ICMP if _pkt_is_upper_layer(next_header) else _PKT_E_UNSUPPORTED_EXTENSION_HEADER
        out.addr_length = 16
        out.ttl = p[7]
        out.src_offset = 8
        out.dst_offset = 24
    else:
        return _PKT_E_BAD_VERSION
    out.header_length = <uint16_t>hlen
    out.total_length = <uint32_t>total
    out.protocol = 1 if out.version == 4 else 58
    out.icmp_offset = <uint32_t>hlen
    icmp_length = total - hlen
    if icmp_length < 8:
        return _PKT_E_TRUNCATED_ICMP
    icmp = p + hlen
    if verify:
        acc = fp_csum_add(icmp, icmp_length, 0)
        if out.version == 6:
            acc += _pkt_v6_pseudo_sum(p, icmp_length)
        if fp_csum_fold(acc) != 0xffff:
            return _PKT_E_BAD_ICMP_CHECKSUM
    icmp_type = icmp[0]
    out.icmp_type = icmp_type
    out.icmp_code = icmp[1]
    out.icmp_checksum = fp_load_be16(icmp + 2)
    if out.version == 4:
        out.has_echo = icmp_type == 8 or icmp_type == 0
        is_error = icmp_type == 3 or icmp_type == 11 or icmp_type == 12
        if is_error:
            field_length = <size_t>icmp[5] * 4      # RFC 4884 length, 32-bit words
        if icmp_type == 3 and icmp[1] == 4:
            out.has_mtu = True
            out.mtu = fp_load_be16(icmp + 6)
    else:
        out.has_echo = icmp_type == 128 or icmp_type == 129
        is_error = 1 <= icmp_type <= 4
        if icmp_type == 1 or icmp_type == 3:
            field_length = <size_t>icmp[4] * 8      # RFC 4884 length, 64-bit words
        elif icmp_type == 2:
            out.has_mtu = True
            out.mtu = fp_load_be32(icmp + 4)
    if out.has_echo:
        out.echo_id = fp_load_be16(icmp + 4)
        out.echo_seq = fp_load_be16(icmp + 6)
    if is_error:
        return _pkt_parse_quote(p, hlen + 8, total, field_length, out)
    return 0


# ---------------------------------------------------------------- rewriting

cdef inline uint16_t _pkt_store16(uint8_t* p, size_t offset, uint16_t value) noexcept nogil:
    """Store a 16-bit field and return its old value."""
    cdef uint16_t old = fp_load_be16(p + offset)
    fp_store_be16(p + offset, value)
    return old


cdef inline void _pkt_csum_update(uint8_t* p, size_t csum_offset, uint16_t old, uint16_t new) noexcept nogil:
    """RFC 1624 update of the checksum at csum_offset for one 16-bit word old -> new."""
    fp_store_be16(p + csum_offset, fp_csum_update16(fp_load_be16(p + csum_offset), old, new))


cdef inline void _pkt_nested_csum_update(uint8_t* p, size_t csum_offset, size_t outer_csum_offset,
                                         uint16_t old, uint16_t new) noexcept nogil:
    """Update the checksum at csum_offset, which itself lies under the checksum at outer_csum_offset."""
    cdef uint16_t old_csum = fp_load_be16(p + csum_offset)
    cdef uint16_t new_csum = fp_csum_update16(old_csum, old, new)
    fp_store_be16(p + csum_offset, new_csum)
    _pkt_csum_update(p, outer_csum_offset, old_csum, new_csum)


cdef int _pkt_rewrite_addr(uint8_t* p, size_t n, _pkt_info* info, size_t addr_offset,
                           const uint8_t* addr) noexcept nogil:
    """Overwrite the address at addr_offset (info.src_offset or info.dst_offset).

    v4: the IP header checksum is updated; v6: the ICMPv6 checksum (its pseudo-header
    holds both addresses).
    """
    cdef size_t i, csum_offset
    cdef uint16_t old, new
    if n < info.total_length or (addr_offset != info.src_offset and addr_offset != info.dst_offset):
        return _PKT_E_BAD_TOTAL_LENGTH
    csum_offset = 10 if info.version == 4 else info.icmp_offset + 2
    for i in range(0, info.addr_length, 2):
        new = fp_load_be16(addr + i)
        old = _pkt_store16(p, addr_offset + i, new)
        _pkt_csum_update(p, csum_offset, old, new)
    info.icmp_checksum = fp_load_be16(p + info.icmp_offset + 2)
    return 0


cdef void _pkt_fix_all_zero_icmp(uint8_t* p, const _pkt_info* info) noexcept nogil:
    """RFC 1624 eqn. 3 yields 0x0000 where recomputation gives 0xffff: when every byte is zero.

    Only an ICMPv4 echo reply with id, seq and payload all zero can be that (the IPv4
    header and the ICMPv6 pseudo-header are never all zero); rare enough to scan for.
    """
    cdef size_t i
    for i in range(info.icmp_offset, info.total_length):
        if p[i]:
            return
    fp_store_be16(p + info.icmp_offset + 2, 0xffff)


cdef int _pkt_rewrite_echo_id(uint8_t* p, size_t n, _pkt_info* info, uint16_t echo_id) noexcept nogil:
    """Overwrite the echo identifier and update the ICMP(v6) checksum."""
    cdef uint16_t old
    if n < info.total_length:
        return _PKT_E_BAD_TOTAL_LENGTH
    if not info.has_echo:
        return _PKT_E_NOT_ECHO
    old = _pkt_store16(p, info.icmp_offset + 4, echo_id)
    _pkt_csum_update(p, info.icmp_offset + 2, old, echo_id)
    if info.version == 4 and fp_load_be16(p + info.icmp_offset + 2) == 0:
        _pkt_fix_all_zero_icmp(p, info)
    info.echo_id = echo_id
    info.icmp_checksum = fp_load_be16(p + info.icmp_offset + 2)
    return 0


cdef int _pkt_set_ttl(uint8_t* p, size_t n, _pkt_info* info, uint8_t ttl) noexcept nogil:
    """Set the TTL (v4, header checksum updated) or hop limit (v6, not under any checksum)."""
    cdef uint16_t old
    if n < info.total_length:
        return _PKT_E_BAD_TOTAL_LENGTH
    if info.version == 4:
        old = _pkt_store16(p, 8, (<uint16_t>ttl << 8) | p[9])
        _pkt_csum_update(p, 10, old, (<uint16_t>ttl << 8) | p[9])
    else:
        p[7] = ttl
    info.ttl = ttl
    return 0


cdef int _pkt_decrement_ttl(uint8_t* p, size_t n, _pkt_info* info) noexcept nogil:
    """TTL - 1 on the wire; the new value, or 0 with the buffer untouched when it was 0 or 1."""
    cdef int rc
    if n < info.total_length:
        return _PKT_E_BAD_TOTAL_LENGTH
    if info.ttl <= 1:
        return 0
    rc = _pkt_set_ttl(p, n, info, info.ttl - 1)
    return rc if rc < 0 else info.ttl


cdef int _pkt_translate_icmp_error(uint8_t* p, size_t n, _pkt_info* info, const uint8_t* client_addr,
                                   uint16_t client_echo_id) noexcept nogil:
    """RFC 5508: turn an ICMP error quoting our echo message into the one the client must see.

    Outer destination and quoted source -> client_addr, quoted echo id -> client_echo_id;
    every checksum that covers a changed word is updated, including the outer ICMP checksum
    for the changed quoted checksums.
    """
    cdef _pkt_inner* inner = &info.inner
    cdef size_t i
    cdef size_t icmp_csum = info.icmp_offset + 2
    cdef size_t inner_icmp_csum = inner.icmp_offset + 2
    cdef uint16_t old, new
    if n < info.total_length:
        return _PKT_E_BAD_TOTAL_LENGTH
    if not info.has_inner:
        return _PKT_E_NOT_ICMP_ERROR
    if not inner.has_echo:
        return _PKT_E_QUOTE_NOT_ECHO
    # Outer destination: under the v4 header checksum, or the ICMPv6 pseudo-header.
    _pkt_rewrite_addr(p, n, info, info.dst_offset, client_addr)
    for i in range(0, info.addr_length, 2):
        new = fp_load_be16(client_addr + i)
        old = _pkt_store16(p, inner.src_offset + i, new)
        _pkt_csum_update(p, icmp_csum, old, new)       # the quote is outer ICMP payload
        if info.version == 4:
            _pkt_nested_csum_update(p, inner.offset + 10, icmp_csum, old, new)
        else:
            _pkt_nested_csum_update(p, inner_icmp_csum, icmp_csum, old, new)   # inner pseudo-header
    old = _pkt_store16(p, inner.icmp_offset + 4, client_echo_id)
    _pkt_csum_update(p, icmp_csum, old, client_echo_id)
    _pkt_nested_csum_update(p, inner_icmp_csum, icmp_csum, old, client_echo_id)
    inner.echo_id = client_echo_id
    info.icmp_checksum = fp_load_be16(p + icmp_csum)
    return 0


# ---------------------------------------------------------------- building

cdef size_t _pkt_write_ip_header(uint8_t* out, const uint8_t* src, const uint8_t* dst, size_t addr_length,
                                 size_t icmp_length, uint8_t ttl) noexcept nogil:
    """Write the IP header for an ICMP(v6) message of icmp_length bytes; return its length."""
    if addr_length == 4:
        out[0] = 0x45
        out[1] = 0
        fp_store_be16(out + 2, <uint16_t>(20 + icmp_length))
        fp_store_be32(out + 4, 0x00004000)    # id 0, DF: an atomic datagram (RFC 6864)
        out[8] = ttl
        out[9] = 1
        fp_store_be16(out + 10, 0)
        memcpy(out + 12, src, 4)
        memcpy(out + 16, dst, 4)
        fp_store_be16(out + 10, fp_csum_finish(fp_csum_add(out, 20, 0)))
        return 20
    fp_store_be32(out, 0x60000000)
    fp_store_be16(out + 4, <uint16_t>icmp_length)
    out[6] = 58
    out[7] = ttl
    memcpy(out + 8, src, 16)
    memcpy(out + 24, dst, 16)
    return 40


cdef void _pkt_finish_icmp(uint8_t* out, size_t hlen, size_t icmp_length) noexcept nogil:
    """Fill in the ICMP(v6) checksum of the message at out + hlen (zero in the field before)."""
    cdef uint64_t acc = fp_csum_add(out + hlen, icmp_length, 0)
    if hlen == 40:
        acc += _pkt_v6_pseudo_sum(out, icmp_length)
    fp_store_be16(out + hlen + 2, fp_csum_finish(acc))


cdef Py_ssize_t _pkt_build_echo(uint8_t* out, size_t cap, const uint8_t* src, const uint8_t* dst,
                                size_t addr_length, uint16_t echo_id, uint16_t seq, const uint8_t* payload,
                                size_t payload_length, uint8_t ttl, bint reply) noexcept nogil:
    """Write an echo request (or reply) packet; its length, or -1 if the arguments are unusable."""
    cdef size_t hlen = 20 if addr_length == 4 else 40
    cdef size_t icmp_length = 8 + payload_length
    if addr_length != 4 and addr_length != 16:
        return -1
    if icmp_length + (hlen if addr_length == 4 else 0) > 0xffff or hlen + icmp_length > cap:
        return -1
    _pkt_write_ip_header(out, src, dst, addr_length, icmp_length, ttl)
    if addr_length == 4:
        out[hlen] = 0 if reply else 8
    else:
        out[hlen] = 129 if reply else 128
    out[hlen + 1] = 0
    fp_store_be16(out + hlen + 2, 0)
    fp_store_be16(out + hlen + 4, echo_id)
    fp_store_be16(out + hlen + 6, seq)
    if payload_length:
        memcpy(out + hlen + 8, payload, payload_length)
    _pkt_finish_icmp(out, hlen, icmp_length)
    return <Py_ssize_t>(hlen + icmp_length)


cdef Py_ssize_t _pkt_build_icmp_error(uint8_t* out, size_t cap, const uint8_t* src, size_t addr_length,
                                      const uint8_t* original, size_t original_length, uint8_t icmp_type,
                                      uint8_t icmp_code, uint32_t mtu, uint8_t ttl) noexcept nogil:
    """Write an ICMP(v6) error to original's source quoting as much of original as fits."""
    cdef size_t hlen, limit, quote_length
    if addr_length == 4:
        hlen = 20
        limit = _PKT_V4_ERROR_MAX
        if original_length < 20 or (original[0] >> 4) != 4:
            return -1
    elif addr_length == 16:
        hlen = 40
        limit = _PKT_V6_ERROR_MAX
        if original_length < 40 or (original[0] >> 4) != 6:
            return -1
    else:
        return -1
    quote_length = limit - hlen - 8
    if original_length < quote_length:
        quote_length = original_length
    if hlen + 8 + quote_length > cap:
        return -1
    _pkt_write_ip_header(out, src, original + (12 if hlen == 20 else 8), addr_length, 8 + quote_length, ttl)
    out[hlen] = icmp_type
    out[hlen + 1] = icmp_code
    fp_store_be16(out + hlen + 2, 0)
    fp_store_be32(out + hlen + 4, 0)
    if hlen == 20 and icmp_type == 3 and icmp_code == 4:
        fp_store_be16(out + hlen + 6, <uint16_t>mtu)
    elif hlen == 40 and icmp_type == 2:
        fp_store_be32(out + hlen + 4, mtu)
    memcpy(out + hlen + 8, original, quote_length)
    _pkt_finish_icmp(out, hlen, 8 + quote_length)
    return <Py_ssize_t>(hlen + 8 + quote_length)


# ---------------------------------------------------------------- Python API

cdef class InnerPacket:
    """The IP packet quoted by an ICMP error (usually truncated); see PacketInfo.inner.

    offset/length: where the quote starts in the parsed buffer and how many bytes of the
    quoted packet it holds. icmp_type/icmp_code are None unless the quoted packet is
    ICMP(v6) of the same family (and, for v4, not a non-first fragment); echo_id/echo_seq
    are None unless it is an echo request or reply. protocol is the v6 next header after
    hop-by-hop, routing and destination options headers (44 for a fragment header).
    """
    cdef readonly int offset
    cdef readonly int length
    cdef readonly int version
    cdef readonly int header_length
    cdef readonly int protocol
    cdef readonly int ttl
    cdef readonly bytes src
    cdef readonly bytes dst
    cdef readonly object icmp_type
    cdef readonly object icmp_code
    cdef readonly object echo_id
    cdef readonly object echo_seq

    def _fields(self):
        return (self.offset, self.length, self.version, self.header_length, self.protocol, self.ttl,
                self.src, self.dst, self.icmp_type, self.icmp_code, self.echo_id, self.echo_seq)

    def __eq__(self, other):
        if not isinstance(other, InnerPacket):
            return NotImplemented
        return self._fields() == (<InnerPacket>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return "InnerPacket(" + ", ".join(
            f"{name}={value!r}" for name, value in zip(_PKT_INNER_FIELDS, self._fields())) + ")"


_PKT_INNER_FIELDS = ("offset", "length", "version", "header_length", "protocol", "ttl", "src", "dst",
                     "icmp_type", "icmp_code", "echo_id", "echo_seq")


cdef class PacketInfo:
    """What parse_packet found in one IPv4/IPv6 packet carrying ICMP(v6).

    header_length includes v4 options / skipped v6 extension headers; total_length is the
    IP total length (v6: 40 + payload length); ttl is the TTL or hop limit; src/dst are
    4 or 16 bytes; icmp_offset is where the ICMP message starts. echo_id/echo_seq are set
    for echo request/reply only; inner for ICMP errors (v4 types 3, 11, 12; v6 types 1-4);
    mtu for v4 type 3 code 4 (next-hop MTU) and v6 type 2 (packet too big).
    """
    cdef readonly int version
    cdef readonly int header_length
    cdef readonly int total_length
    cdef readonly int ttl
    cdef readonly int protocol
    cdef readonly bytes src
    cdef readonly bytes dst
    cdef readonly int icmp_offset
    cdef readonly int icmp_type
    cdef readonly int icmp_code
    cdef readonly int icmp_checksum
    cdef readonly object echo_id
    cdef readonly object echo_seq
    cdef readonly object inner
    cdef readonly object mtu

    def _fields(self):
        return (self.version, self.header_length, self.total_length, self.ttl, self.protocol, self.src,
                self.dst, self.icmp_offset, self.icmp_type, self.icmp_code, self.icmp_checksum,
                self.echo_id, self.echo_seq, self.inner, self.mtu)

    def __eq__(self, other):
        if not isinstance(other, PacketInfo):
            return NotImplemented
        return self._fields() == (<PacketInfo>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return "PacketInfo(" + ", ".join(
            f"{name}={value!r}" for name, value in zip(_PKT_INFO_FIELDS, self._fields())) + ")"


_PKT_INFO_FIELDS = ("version", "header_length", "total_length", "ttl", "protocol", "src", "dst",
                    "icmp_offset", "icmp_type", "icmp_code", "icmp_checksum", "echo_id", "echo_seq",
                    "inner", "mtu")


cdef PacketInfo _pkt_make_info(const uint8_t* p, const _pkt_info* info):
    cdef PacketInfo result = PacketInfo.__new__(PacketInfo)
    cdef InnerPacket inner
    cdef const _pkt_inner* qi = &info.inner
    result.version = info.version
    result.header_length = info.header_length
    result.total_length = info.total_length
    result.ttl = info.ttl
    result.protocol = info.protocol
    result.src = PyBytes_FromStringAndSize(<const char*>p + info.src_offset, info.addr_length)
    result.dst = PyBytes_FromStringAndSize(<const char*>p + info.dst_offset, info.addr_length)
    result.icmp_offset = info.icmp_offset
    result.icmp_type = info.icmp_type
    result.icmp_code = info.icmp_code
    result.icmp_checksum = info.icmp_checksum
    result.echo_id = info.echo_id if info.has_echo else None
    result.echo_seq = info.echo_seq if info.has_echo else None
    result.mtu = info.mtu if info.has_mtu else None
    if info.has_inner:
        inner = InnerPacket.__new__(InnerPacket)
        inner.offset = qi.offset
        inner.length = qi.length
        inner.version = qi.version
        inner.header_length = qi.header_length
        inner.protocol = qi.protocol
        inner.ttl = qi.ttl
        inner.src = PyBytes_FromStringAndSize(<const char*>p + qi.src_offset, info.addr_length)
        inner.dst = PyBytes_FromStringAndSize(<const char*>p + qi.dst_offset, info.addr_length)
        inner.icmp_type = qi.icmp_type if qi.has_icmp else None
        inner.icmp_code = qi.icmp_code if qi.has_icmp else None
        inner.echo_id = qi.echo_id if qi.has_echo else None
        inner.echo_seq = qi.echo_seq if qi.has_echo else None
        result.inner = inner
    return result


cdef inline int _pkt_check(int rc) except -1:
    """Raise MalformedPacket for a negative reason code."""
    if rc < 0:
        raise MalformedPacket(PACKET_MALFORMED_REASONS[-rc - 1])
    return 0


cdef int _pkt_parse_writable(uint8_t[::1] buf, _pkt_info* info) except -1:
    return _pkt_check(_pkt_parse(&buf[0] if buf.shape[0] else NULL, buf.shape[0], info, False))


cdef int _pkt_check_range(object value, str name, int bits) except -1:
    """ValueError unless value is an integer in 0 .. 2**bits - 1 (TypeError if not an integer)."""
    if not 0 <= PyNumber_Index(value) < (<uint64_t>1 << bits):
        raise ValueError(f"{name} must be in 0..{(<uint64_t>1 << bits) - 1}, got {value}")
    return 0


def parse_packet(const uint8_t[::1] data not None, *, bint verify_checksums=True):
    """Parse and validate one whole IPv4/IPv6 packet carrying ICMP/ICMPv6; return a PacketInfo.

    Raises MalformedPacket; its reason is one of PACKET_MALFORMED_REASONS. Bytes beyond the
    IP total length are rejected ("bad_total_length"): the tunnel carries exactly one
    packet per datagram, so a disagreement means corruption. Fragments are rejected
    ("fragment"; nothing is reassembled). v4 options are allowed; v6 hop-by-hop, routing and
    destination options headers are skipped (a routing header with segments left is
    "unsupported_extension_header": the packet is not at its destination). With verify_checksums the IPv4 header checksum
    and the ICMP(v6) checksum (v6 with the RFC 8200 pseudo-header) must be right; checksums
    inside an error's quote are never checked. An error's quote must hold the quoted IP
    header plus 8 bytes and may be shorter than the quoted packet, not longer (unless an
    RFC 4884 length says where it ends).
    """
    cdef _pkt_info info
    cdef size_t n = data.shape[0]
    cdef const uint8_t* p = &data[0] if n else NULL
    _pkt_check(_pkt_parse(p, n, &info, verify_checksums))
    return _pkt_make_info(p, &info)


cdef Py_ssize_t _pkt_address_length(const uint8_t[::1] src, const uint8_t[::1] dst) except -1:
    if src.shape[0] not in (4, 16) or dst.shape[0] != src.shape[0]:
        raise ValueError(f"addresses must both be 4 (IPv4) or 16 (IPv6) bytes, got {src.shape[0]} and {dst.shape[0]}")
    return src.shape[0]


def build_echo(const uint8_t[::1] src not None, const uint8_t[::1] dst not None, echo_id, seq,
               const uint8_t[::1] payload not None = b"", *, ttl=64, bint reply=False):
    """Build an ICMP echo request (or reply with reply=True); IPv4 or IPv6 by address length.

    IPv4: no options, TOS 0, identification 0, DF set. IPv6: traffic class and flow label 0.
    Raises ValueError for unusable arguments (address lengths, ranges, packet too long).
    """
    cdef Py_ssize_t alen = _pkt_address_length(src, dst)
    cdef size_t plen = payload.shape[0]
    cdef size_t length = (20 if alen == 4 else 40) + 8 + plen
    _pkt_check_range(echo_id, "echo_id", 16)
    _pkt_check_range(seq, "seq", 16)
    _pkt_check_range(ttl, "ttl", 8)
    if length - (40 if alen == 16 else 0) > 0xffff:
        raise ValueError(f"payload of {plen} bytes does not fit in one IP packet")
    result = PyBytes_FromStringAndSize(NULL, length)
    _pkt_build_echo(<uint8_t*>PyBytes_AS_STRING(result), length, &src[0], &dst[0], alen, echo_id, seq,
                    &payload[0] if plen else NULL, plen, ttl, reply)
    return result


def build_icmp_error(const uint8_t[::1] src not None, const uint8_t[::1] original not None, icmp_type, icmp_code,
                     *, mtu=0, ttl=64):
    """Build an ICMP(v6) error from src to original's source, quoting as much of original as fits.

    The family follows len(src) and must match original's. The whole packet is at most 576
    bytes for IPv4 (RFC 792/1812) and 1280 for IPv6 (RFC 4443). mtu goes in bytes 6-7 for
    v4 type 3 code 4 and bytes 4-7 for v6 type 2, and must be 0 for any other message.
    Raises ValueError for unusable arguments.
    """
    cdef size_t alen = src.shape[0]
    cdef size_t olen = original.shape[0]
    cdef uint8_t buf[_PKT_V6_ERROR_MAX]
    cdef Py_ssize_t length
    cdef bint has_mtu
    if alen not in (4, 16):
        raise ValueError(f"src must be 4 (IPv4) or 16 (IPv6) bytes, got {alen}")
    if olen < (20 if alen == 4 else 40) or (original[0] >> 4) != (4 if alen == 4 else 6):
        raise ValueError(f"original must be a whole IPv{4 if alen == 4 else 6} header or more, like src")
    _pkt_check_range(icmp_type, "icmp_type", 8)
    _pkt_check_range(icmp_code, "icmp_code", 8)
    _pkt_check_range(ttl, "ttl", 8)
    has_mtu = (icmp_type == 3 and icmp_code == 4) if alen == 4 else icmp_type == 2
    if has_mtu:
        _pkt_check_range(mtu, "mtu", 16 if alen == 4 else 32)
    elif mtu != 0:
        raise ValueError("mtu applies only to v4 type 3 code 4 and v6 type 2 messages")
    length = _pkt_build_icmp_error(buf, sizeof(buf), &src[0], alen, &original[0], olen, icmp_type, icmp_code,
                                   mtu, ttl)
    return PyBytes_FromStringAndSize(<const char*>buf, length)


def build_time_exceeded(src, original):
    """ICMP Time Exceeded in transit (v4 type 11, v6 type 3; code 0) about original."""
    return build_icmp_error(src, original, 11 if len(src) == 4 else 3, 0)


def build_destination_unreachable(src, original, code):
    """ICMP Destination Unreachable (v4 type 3, v6 type 1) with the family's own code."""
    return build_icmp_error(src, original, 3 if len(src) == 4 else 1, code)


def build_packet_too_big(src, original, mtu):
    """v4 Fragmentation Needed (type 3 code 4) or v6 Packet Too Big (type 2), carrying mtu."""
    return build_icmp_error(src, original, 3 if len(src) == 4 else 2, 4 if len(src) == 4 else 0, mtu=mtu)


def rewrite_echo(uint8_t[::1] buf not None, *, src=None, dst=None, echo_id=None, ttl=None):
    """Rewrite addresses, echo id and TTL of the echo request/reply in buf, in place.

    Checksums are updated incrementally (RFC 1624): the IPv4 header checksum, and the ICMP
    checksum (v6: also for address changes, through the pseudo-header). Checksums are not
    verified first, so a wrong one stays wrong. Raises MalformedPacket (nothing written) if
    buf is not a whole echo packet; ValueError for unusable arguments.
    """
    cdef _pkt_info info
    cdef uint8_t* p
    cdef const uint8_t[::1] new_src = None
    cdef const uint8_t[::1] new_dst = None
    _pkt_parse_writable(buf, &info)
    if not info.has_echo:
        raise MalformedPacket("not_echo")
    if src is not None:
        new_src = src
    if dst is not None:
        new_dst = dst
    if src is not None and new_src.shape[0] != info.addr_length:
        raise ValueError(f"src must be {info.addr_length} bytes for IPv{info.version}, got {new_src.shape[0]}")
    if dst is not None and new_dst.shape[0] != info.addr_length:
        raise ValueError(f"dst must be {info.addr_length} bytes for IPv{info.version}, got {new_dst.shape[0]}")
    if echo_id is not None:
        _pkt_check_range(echo_id, "echo_id", 16)
    if ttl is not None:
        _pkt_check_range(ttl, "ttl", 8)
    p = &buf[0]
    if src is not None:
        _pkt_rewrite_addr(p, buf.shape[0], &info, info.src_offset, &new_src[0])
    if dst is not None:
        _pkt_rewrite_addr(p, buf.shape[0], &info, info.dst_offset, &new_dst[0])
    if echo_id is not None:
        _pkt_rewrite_echo_id(p, buf.shape[0], &info, echo_id)
    if ttl is not None:
        _pkt_set_ttl(p, buf.shape[0], &info, ttl)


def decrement_ttl(uint8_t[::1] buf not None):
    """Decrement the TTL / hop limit of the packet in buf in place; return the new value.

    The IPv4 header checksum is updated incrementally. When the TTL is 0 or 1 the packet
    must not be forwarded: buf is left untouched (to be quoted as received) and 0 is
    returned; the caller answers with Time Exceeded. Raises MalformedPacket if buf is not
    a whole ICMP packet (checksums are not verified).
    """
    cdef _pkt_info info
    _pkt_parse_writable(buf, &info)
    cdef int ttl = _pkt_decrement_ttl(&buf[0], buf.shape[0], &info)
    _pkt_check(ttl)
    return ttl


def translate_icmp_error(uint8_t[::1] buf not None, const uint8_t[::1] client_addr not None, client_echo_id):
    """Translate, in place, an ICMP error quoting an echo message we sent into the client's view.

    RFC 5508: the outer destination and the quoted source become client_addr, the quoted
    echo id becomes client_echo_id; the quoted IPv4 header checksum, the quoted ICMP(v6)
    checksum, the outer ICMP(v6) checksum and the outer IPv4 header checksum are updated
    incrementally. Raises MalformedPacket ("not_icmp_error", "quote_not_echo", or a parse
    reason; checksums are not verified, nothing is written) and ValueError for arguments.
    """
    cdef _pkt_info info
    _pkt_parse_writable(buf, &info)
    if client_addr.shape[0] != info.addr_length:
        raise ValueError(f"client_addr must be {info.addr_length} bytes for IPv{info.version}, "
                         f"got {client_addr.shape[0]}")
    _pkt_check_range(client_echo_id, "client_echo_id", 16)
    _pkt_check(_pkt_translate_icmp_error(&buf[0], buf.shape[0], &info, &client_addr[0], client_echo_id))
