# fastproxy._core: datagram (included by _core.pyx; see the module docstring there).
#
# The tunnel datagram codec of DESIGN section 2, byte-compatible with cloudflared's
# datagram v3 (quic/v3/datagram.go). _dg_parse() validates a datagram in place and
# describes it with offsets (no copies) for the hot path; decode_datagram() wraps it.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_CheckExact
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize

from fastproxy._datagram_types import IcmpDatagram, RegistrationResponse, UdpPayload, UdpRegistration

cdef enum:
    _DG_TYPE_UDP_REGISTRATION = 0x00
    _DG_TYPE_UDP_PAYLOAD = 0x01
    _DG_TYPE_ICMP = 0x02
    _DG_TYPE_REGISTRATION_RESPONSE = 0x03
    _DG_RESPONSE_TOO_MANY_ACTIVE_FLOWS = 0x03
    _DG_RESPONSE_ERROR = 0xFF
    _DG_MAX_PAYLOAD = 1280

DATAGRAM_UDP_REGISTRATION = _DG_TYPE_UDP_REGISTRATION
DATAGRAM_UDP_PAYLOAD = _DG_TYPE_UDP_PAYLOAD
DATAGRAM_ICMP = _DG_TYPE_ICMP
DATAGRAM_REGISTRATION_RESPONSE = _DG_TYPE_REGISTRATION_RESPONSE

RESPONSE_OK = 0x00
RESPONSE_DESTINATION_UNREACHABLE = 0x01
RESPONSE_UNABLE_TO_BIND_SOCKET = 0x02
RESPONSE_TOO_MANY_ACTIVE_FLOWS = _DG_RESPONSE_TOO_MANY_ACTIVE_FLOWS
RESPONSE_ERROR = _DG_RESPONSE_ERROR

MAX_DATAGRAM_PAYLOAD = _DG_MAX_PAYLOAD

# Index i holds the reason of _dg_parse() result -(i + 1).
DATAGRAM_MALFORMED_REASONS = (
    "empty",               # no type byte
    "unknown_type",        # type byte not 0x00..0x03
    "truncated_header",    # shorter than the fixed header of its type
    "bad_flags",           # registration flags with reserved bits (3..7) set
    "payload_too_large",   # payload, ICMP packet or message over its limit
    "payload_missing",     # ICMP datagram without a packet, or bundled flag without a payload
    "unexpected_payload",  # registration with bytes after the address but no bundled flag
    "bad_message_length",  # response message length disagrees with the datagram length
    "bad_utf8",            # response message is not valid UTF-8
    "bad_response_code",   # response code not one of RESPONSE_*
)

cdef enum:
    _DG_EMPTY = -1
    _DG_UNKNOWN_TYPE = -2
    _DG_TRUNCATED_HEADER = -3
    _DG_BAD_FLAGS = -4
    _DG_PAYLOAD_TOO_LARGE = -5
    _DG_PAYLOAD_MISSING = -6
    _DG_UNEXPECTED_PAYLOAD = -7
    _DG_BAD_MESSAGE_LENGTH = -8
    _DG_BAD_UTF8 = -9
    _DG_BAD_RESPONSE_CODE = -10

cdef enum:
    _DG_REQUEST_ID_LEN = 16
    _DG_FLAG_IPV6 = 0x01
    _DG_FLAG_TRACED = 0x02
    _DG_FLAG_BUNDLED = 0x04
    _DG_REGISTRATION_V4_LEN = 26       # type, flags, port, idle, request ID, IPv4 address
    _DG_REGISTRATION_V6_LEN = 38
    _DG_PAYLOAD_HEADER_LEN = 17        # type, request ID
    _DG_RESPONSE_HEADER_LEN = 20       # type, code, request ID, message length
    _DG_MAX_MESSAGE = 1260             # cloudflared: 1280 - the response header


ctypedef struct _dg_view:
    # One validated datagram, as offsets into the caller's buffer.
    uint8_t type            # DATAGRAM_*
    uint8_t flags           # registration flags (0 for other types)
    uint8_t code            # response code (0 for other types)
    uint16_t port           # registration destination port
    uint16_t idle_timeout   # registration idle timeout, seconds
    size_t request_id_off   # 16 bytes at this offset (0: the type has no request ID)
    size_t addr_off         # registration destination address
    size_t addr_len         # 4 or 16 (0 for other types)
    size_t body_off         # payload, ICMP packet, or response message
    size_t body_len         # its length (0 for a registration without a bundled payload)


cdef inline bint _dg_utf8_valid(const uint8_t *p, size_t n) noexcept nogil:
    # Strict UTF-8 as Python's decoder: no overlong forms, no surrogates, nothing past U+10FFFF.
    cdef size_t i = 0
    cdef size_t need, k
    cdef uint8_t c, lo, hi
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            need = 1
        elif 0xE0 <= c <= 0xEF:
            need = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            need = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if n - i - 1 < need or not (lo <= p[i + 1] <= hi):
            return False
        for k in range(2, need + 1):
            if not (0x80 <= p[i + k] <= 0xBF):
                return False
        i += need + 1
    return True


cdef int _dg_parse(const uint8_t *p, size_t n, _dg_view *out) noexcept nogil:
    """Validate the n-byte datagram at p and describe it in *out: 0, or a negative _DG_* reason."""
    cdef size_t header_len, rest, message_len
    memset(out, 0, sizeof(_dg_view))
    if n == 0:
        return _DG_EMPTY
    out.type = p[0]
    if p[0] == _DG_TYPE_UDP_REGISTRATION:
        if n < 2:
            return _DG_TRUNCATED_HEADER
        out.flags = p[1]
        if out.flags & ~(_DG_FLAG_IPV6 | _DG_FLAG_TRACED | _DG_FLAG_BUNDLED):
            return _DG_BAD_FLAGS
        header_len = _DG_REGISTRATION_V6_LEN if out.flags & _DG_FLAG_IPV6 else _DG_REGISTRATION_V4_LEN
        if n < header_len:
            return _DG_TRUNCATED_HEADER
        out.port = fp_load_be16(p + 2)
        out.idle_timeout = fp_load_be16(p + 4)
        out.request_id_off = 6
        out.addr_off = 22
        out.addr_len = header_len - 22
        rest = n - header_len
        if out.flags & _DG_FLAG_BUNDLED:
            if rest == 0:
                return _DG_PAYLOAD_MISSING
            if rest > _DG_MAX_PAYLOAD:
                return _DG_PAYLOAD_TOO_LARGE
        elif rest:
            return _DG_UNEXPECTED_PAYLOAD
        out.body_off = header_len
        out.body_len = rest
        return 0
    if p[0] == _DG_TYPE_UDP_PAYLOAD:
        if n < _DG_PAYLOAD_HEADER_LEN:
            return _DG_TRUNCATED_HEADER
        if n - _DG_PAYLOAD_HEADER_LEN > _DG_MAX_PAYLOAD:
            return _DG_PAYLOAD_TOO_LARGE
        out.request_id_off = 1
        out.body_off = _DG_PAYLOAD_HEADER_LEN
        out.body_len = n - _DG_PAYLOAD_HEADER_LEN
        return 0
    if p[0] == _DG_TYPE_ICMP:
        if n == 1:
            return _DG_PAYLOAD_MISSING
        if n - 1 > _DG_MAX_PAYLOAD:
            return _DG_PAYLOAD_TOO_LARGE
        out.body_off = 1
        out.body_len = n - 1
        return 0
    if p[0] == _DG_TYPE_REGISTRATION_RESPONSE:
        if n < _DG_RESPONSE_HEADER_LEN:
            return _DG_TRUNCATED_HEADER
        out.code = p[1]
        if out.code > _DG_RESPONSE_TOO_MANY_ACTIVE_FLOWS and out.code != _DG_RESPONSE_ERROR:
            return _DG_BAD_RESPONSE_CODE
        message_len = fp_load_be16(p + 18)
        if message_len > _DG_MAX_MESSAGE:
            return _DG_PAYLOAD_TOO_LARGE
        if message_len != n - _DG_RESPONSE_HEADER_LEN:
            return _DG_BAD_MESSAGE_LENGTH
        if not _dg_utf8_valid(p + _DG_RESPONSE_HEADER_LEN, message_len):
            return _DG_BAD_UTF8
        out.request_id_off = 2
        out.body_off = _DG_RESPONSE_HEADER_LEN
        out.body_len = message_len
        return 0
    return _DG_UNKNOWN_TYPE


cdef inline bytes _dg_bytes(const uint8_t *p, size_t n):
    return PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>n)


def decode_datagram(data):
    """Decode one tunnel datagram (any readable buffer).

    Returns an IcmpDatagram, UdpRegistration, UdpPayload or RegistrationResponse, whose
    byte fields are copies (bytes). Raises MalformedDatagram, with ``reason`` one of
    DATAGRAM_MALFORMED_REASONS, for anything malformed; never any other exception for
    bad content.
    """
    cdef const uint8_t[::1] view = data
    cdef size_t n = <size_t>view.shape[0]
    cdef const uint8_t *p = &view[0] if n else NULL
    cdef _dg_view dg
    cdef int result = _dg_parse(p, n, &dg)
    if result < 0:
        raise MalformedDatagram(DATAGRAM_MALFORMED_REASONS[-result - 1], f"datagram of {n} bytes")
    if dg.type == DATAGRAM_ICMP:
        return IcmpDatagram(_dg_bytes(p + dg.body_off, dg.body_len))
    if dg.type == DATAGRAM_UDP_PAYLOAD:
        return UdpPayload(_dg_bytes(p + dg.request_id_off, _DG_REQUEST_ID_LEN), _dg_bytes(p + dg.body_off, dg.body_len))
    if dg.type == DATAGRAM_UDP_REGISTRATION:
        return UdpRegistration(
            _dg_bytes(p + dg.request_id_off, _DG_REQUEST_ID_LEN),
            _dg_bytes(p + dg.addr_off, dg.addr_len),
            dg.port,
            dg.idle_timeout,
            bool(dg.flags & _DG_FLAG_TRACED),
            _dg_bytes(p + dg.body_off, dg.body_len) if dg.body_len else None,
        )
    return RegistrationResponse(
        _dg_bytes(p + dg.request_id_off, _DG_REQUEST_ID_LEN),
        dg.code,
        (<const char *>p + dg.body_off)[:dg.body_len].decode("utf-8"),
    )


cdef const uint8_t[::1] _dg_request_id(object request_id):
    cdef const uint8_t[::1] view = request_id
    if view.shape[0] != _DG_REQUEST_ID_LEN:
        raise ValueError(f"request_id must be 16 bytes, got {view.shape[0]}")
    return view


cdef int _dg_check_range(object value, str name, long limit) except -1:
    value = PyNumber_Index(value)
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be 0..{limit}, got {value!r}")
    return 0


cdef bytes _dg_concat(const uint8_t *header, size_t header_len, const uint8_t[::1] body):
    # One allocation for header + body.
    cdef size_t body_len = <size_t>body.shape[0]
    cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(header_len + body_len))
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    memcpy(o, header, header_len)
    if body_len:
        memcpy(o + header_len, &body[0], body_len)
    return out


def encode_icmp(packet):
    """The ICMP datagram (type 0x02) carrying ``packet``, one whole IP packet of 1 to 1280 bytes."""
    cdef Py_buffer view
    cdef const uint8_t[::1] body
    # bytes and bytearray, what the tunnel encodes for every packet, are read through a plain
    # buffer: acquiring a typed memoryview costs more than the copy at these sizes.
    if PyBytes_CheckExact(packet) or PyByteArray_CheckExact(packet):
        PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE)
        try:
            return _dg_encode_icmp(<const uint8_t *>view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)
    body = packet
    return _dg_encode_icmp(&body[0] if body.shape[0] else NULL, <size_t>body.shape[0])


cdef bytes _dg_encode_icmp(const uint8_t *packet, size_t length):
    if length == 0:
        raise ValueError("packet must not be empty")
    if length > _DG_MAX_PAYLOAD:
        raise ValueError(f"packet of {length} bytes exceeds MAX_DATAGRAM_PAYLOAD (1280)")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(length + 1))
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    o[0] = _DG_TYPE_ICMP
    memcpy(o + 1, packet, length)
    return out


def encode_udp_payload(request_id, payload):
    """The UDP session payload datagram (type 0x01) carrying ``payload`` (0 to 1280 bytes)."""
    cdef const uint8_t[::1] rid = _dg_request_id(request_id)
    cdef const uint8_t[::1] body = payload
    cdef uint8_t header[_DG_PAYLOAD_HEADER_LEN]
    if body.shape[0] > _DG_MAX_PAYLOAD:
        raise ValueError(f"payload of {body.shape[0]} bytes exceeds MAX_DATAGRAM_PAYLOAD (1280)")
    header[0] = DATAGRAM_UDP_PAYLOAD
    memcpy(header + 1, &rid[0], _DG_REQUEST_ID_LEN)
    return _dg_concat(header, _DG_PAYLOAD_HEADER_LEN, body)


def encode_udp_registration(request_id, dst, port, idle_timeout, *, traced=False, payload=None):
    """The UDP session registration datagram (type 0x00).

    ``dst`` is the destination address, 4 (IPv4) or 16 (IPv6) bytes; ``port`` and
    ``idle_timeout`` (seconds) are 16-bit. A non-empty ``payload`` (at most 1280
    bytes) is bundled and sets the bundled flag; None or empty bundles nothing.
    """
    cdef const uint8_t[::1] rid = _dg_request_id(request_id)
    cdef const uint8_t[::1] addr = dst
    cdef const uint8_t[::1] body = payload if payload is not None else b""
    cdef uint8_t header[_DG_REGISTRATION_V6_LEN]
    cdef size_t addr_len = <size_t>addr.shape[0]
    if addr_len != 4 and addr_len != 16:
        raise ValueError(f"dst must be 4 (IPv4) or 16 (IPv6) bytes, got {addr_len}")
    _dg_check_range(port, "port", 0xFFFF)
    _dg_check_range(idle_timeout, "idle_timeout", 0xFFFF)
    if body.shape[0] > _DG_MAX_PAYLOAD:
        raise ValueError(f"payload of {body.shape[0]} bytes exceeds MAX_DATAGRAM_PAYLOAD (1280)")
    header[0] = DATAGRAM_UDP_REGISTRATION
    header[1] = ((_DG_FLAG_IPV6 if addr_len == 16 else 0)
                 | (_DG_FLAG_TRACED if traced else 0)
                 | (_DG_FLAG_BUNDLED if body.shape[0] else 0))
    fp_store_be16(header + 2, <uint16_t>port)
    fp_store_be16(header + 4, <uint16_t>idle_timeout)
    memcpy(header + 6, &rid[0], _DG_REQUEST_ID_LEN)
    memcpy(header + 22, &addr[0], addr_len)
    return _dg_concat(header, 22 + addr_len, body)


def encode_registration_response(request_id, code, message=""):
    """The registration response datagram (type 0x03) with ``code`` (a RESPONSE_* value).

    ``message`` (str) is sent UTF-8 encoded, at most 1260 bytes.
    """
    cdef const uint8_t[::1] rid = _dg_request_id(request_id)
    cdef uint8_t header[_DG_RESPONSE_HEADER_LEN]
    if not isinstance(message, str):
        raise TypeError(f"message must be str, got {type(message).__name__}")
    code = PyNumber_Index(code)
    if code not in (RESPONSE_OK, RESPONSE_DESTINATION_UNREACHABLE, RESPONSE_UNABLE_TO_BIND_SOCKET,
                    RESPONSE_TOO_MANY_ACTIVE_FLOWS, RESPONSE_ERROR):
        raise ValueError(f"code must be one of the RESPONSE_* values, got {code!r}")
    cdef bytes encoded = message.encode("utf-8")
    if len(encoded) > _DG_MAX_MESSAGE:
        raise ValueError(f"message of {len(encoded)} UTF-8 bytes exceeds the limit of 1260")
    header[0] = DATAGRAM_REGISTRATION_RESPONSE
    header[1] = <uint8_t>code
    memcpy(header + 2, &rid[0], _DG_REQUEST_ID_LEN)
    fp_store_be16(header + 18, <uint16_t>len(encoded))
    return _dg_concat(header, _DG_RESPONSE_HEADER_LEN, encoded)
