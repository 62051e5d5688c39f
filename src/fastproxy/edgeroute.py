"""The edge's batched ICMP fast path (issue 11).

``EdgeIcmpRoutes`` forwards, one call per received batch, the ICMP datagrams of the common
case (client -> connector with the TTL decremented, connector -> client by destination
address) and leaves the rest to :class:`fastproxy.tunnel.router.EdgeRouter`'s Python path,
which keeps its tables in step. ``rendezvous_score`` is the hash that spreads flows over the
connectors of one prefix, in both paths. Compiled core, or the pure-Python twin with
``FASTPROXY_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

from ._impl import core

EdgeIcmpRoutes = core.EdgeIcmpRoutes
rendezvous_score = core.rendezvous_score

__all__ = ["EdgeIcmpRoutes", "rendezvous_score"]
