# cython: language_level=3
"""fastproxy._core: the per-packet engine.

One compilation unit (as uvloop does it): each area lives in its own ``_cy/*.pxi``
file, pulled in with ``include``, and C helpers live in ``_cy/*.h``. Everything
here works on buffers with explicit bounds checks; no Python object is created
per packet on the batch paths. ``fastproxy._purepy`` is the pure-Python twin with
the same API; ``FASTPROXY_NO_EXTENSIONS=1`` forces it.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from fastproxy.errors import EchoIdExhausted, FlowTableFull, MalformedDatagram, MalformedPacket

include "_cy/checksum.pxi"
include "_cy/packet.pxi"
include "_cy/flowtable.pxi"
include "_cy/batchio.pxi"
include "_cy/datagram.pxi"
include "_cy/nat.pxi"
include "_cy/edgeroute.pxi"
