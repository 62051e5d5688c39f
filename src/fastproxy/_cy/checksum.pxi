# fastproxy._core: checksum (included by _core.pyx; see the module docstring there).
#
# RFC 1071 Internet checksum and RFC 1624 incremental updates. The C work is in
# fp_checksum.h (shared by every area); this file declares it and wraps it for Python.

cdef extern from "fp_checksum.h" nogil:
    uint64_t fp_csum_add(const uint8_t *p, size_t n, uint64_t acc)
    uint16_t fp_csum_fold(uint64_t acc)
    uint16_t fp_csum_finish(uint64_t acc)
    uint16_t fp_csum_update16(uint16_t csum, uint16_t old_value, uint16_t new_value)
    uint16_t fp_csum_update32(uint16_t csum, uint32_t old_value, uint32_t new_value)
    uint16_t fp_csum_update_bytes(uint16_t csum, const uint8_t *old_value, const uint8_t *new_value, size_t n)
    uint64_t fp_csum_pseudo_header(const uint8_t *src, const uint8_t *dst, size_t addr_len,
                                   uint32_t length, uint8_t next_header)
    uint16_t fp_load_be16(const uint8_t *p)
    void fp_store_be16(uint8_t *p, uint16_t v)
    uint32_t fp_load_be32(const uint8_t *p)
    void fp_store_be32(uint8_t *p, uint32_t v)


from cpython.number cimport PyNumber_Index


cdef uint16_t _cs_u16(object value, str name) except? 0:
    # Integers only (as operator.index), and a range error is a ValueError, like the twin.
    value = PyNumber_Index(value)
    if not 0 <= value <= 0xffff:
        raise ValueError(f"{name} must be a 16-bit value (0..65535), got {value!r}")
    return <uint16_t>value


cdef inline uint64_t _cs_sum_buffer(object data, object initial) except? 0:
    cdef const uint8_t[::1] view = data
    cdef uint64_t acc = _cs_u16(initial, "initial")
    if view.shape[0] == 0:
        return acc
    return fp_csum_add(&view[0], <size_t>view.shape[0], acc)


def internet_checksum(data, initial=0):
    """The RFC 1071 checksum of ``data``: the value to store in a checksum field.

    ``data`` is any readable buffer (an odd length is padded with one zero byte);
    ``initial`` is a 16-bit partial sum, not complemented, added in (for example
    ``pseudo_header_sum(...)``). Compute it with the checksum field set to zero.
    """
    return fp_csum_finish(_cs_sum_buffer(data, initial))


def ones_complement_sum(data, initial=0):
    """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not complemented)."""
    return fp_csum_fold(_cs_sum_buffer(data, initial))


def verify_checksum(data, initial=0):
    """True when ``data`` (checksum field included) plus ``initial`` sums to 0xffff, i.e. the checksum is right."""
    return fp_csum_fold(_cs_sum_buffer(data, initial)) == 0xffff


def pseudo_header_sum(src, dst, length, next_header):
    """The folded sum (not complemented) of the IPv4 or IPv6 pseudo-header.

    ``src`` and ``dst`` are both 4-byte (IPv4, RFC 768/793) or both 16-byte (IPv6,
    RFC 8200 section 8.1) addresses; ``length`` is the upper-layer length (at most
    65535 for IPv4, 2**32 - 1 for IPv6); ``next_header`` the protocol number.
    Pass the result as ``initial`` to internet_checksum().
    """
    cdef const uint8_t[::1] s = src
    cdef const uint8_t[::1] d = dst
    cdef size_t n = <size_t>s.shape[0]
    if n != <size_t>d.shape[0] or (n != 4 and n != 16):
        raise ValueError(f"src and dst must both be 4 (IPv4) or 16 (IPv6) bytes, got {s.shape[0]} and {d.shape[0]}")
    length = PyNumber_Index(length)
    next_header = PyNumber_Index(next_header)
    if not 0 <= length <= (0xffff if n == 4 else 0xffffffff):
        raise ValueError(f"length {length!r} out of range for IPv{4 if n == 4 else 6}")
    if not 0 <= next_header <= 0xff:
        raise ValueError(f"next_header must be 0..255, got {next_header!r}")
    return fp_csum_fold(fp_csum_pseudo_header(&s[0], &d[0], n, <uint32_t>length, <uint8_t>next_header))


def checksum_update16(checksum, old, new):
    """The checksum after a 16-bit field changes from ``old`` to ``new`` (RFC 1624 eqn. 3)."""
    return fp_csum_update16(_cs_u16(checksum, "checksum"), _cs_u16(old, "old"), _cs_u16(new, "new"))


def checksum_update_bytes(checksum, old, new):
    """The checksum after a field (for example an address) changes from bytes ``old`` to ``new``.

    ``old`` and ``new`` are readable buffers of the same even length (RFC 1624 eqn. 3
    applied to each 16-bit word).
    """
    cdef const uint8_t[::1] o = old
    cdef const uint8_t[::1] w = new
    cdef uint16_t csum = _cs_u16(checksum, "checksum")
    if o.shape[0] != w.shape[0] or o.shape[0] % 2:
        raise ValueError(f"old and new must have the same even length, got {o.shape[0]} and {w.shape[0]}")
    if o.shape[0] == 0:
        return csum
    return fp_csum_update_bytes(csum, &o[0], &w[0], <size_t>o.shape[0])
