"""Pure-Python twin of fastproxy._core: the same API, the same tests, slower.

Used when ``FASTPROXY_NO_EXTENSIONS=1`` is set or no compiled core is available.
"""

from __future__ import annotations

from .batchio import *  # noqa: F403
from .checksum import *  # noqa: F403
from .datagram import *  # noqa: F403
from .edgeroute import *  # noqa: F403
from .flowtable import *  # noqa: F403
from .nat import *  # noqa: F403
from .packet import *  # noqa: F403
from . import batchio, checksum, datagram, edgeroute, flowtable, nat, packet

__all__ = [*checksum.__all__, *packet.__all__, *flowtable.__all__, *batchio.__all__, *datagram.__all__, *nat.__all__,
           *edgeroute.__all__]
