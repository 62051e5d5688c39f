"""Network-namespace topologies for end-to-end tests (root only).

Describe nodes, links (with addresses and MTU) and routes; :class:`Topology`
builds them in namespaces with unique names (``fp-<random>-<node>``) and
deletes everything on exit, even when the test fails. Nothing leaves the
namespaces: they have no link to the host's network.

Example::

    with Topology(
        links=[Link("client", "router", ["192.0.2.1/24", "2001:db8:1::1/64"], ["192.0.2.2/24", "2001:db8:1::2/64"])],
        routes=[Route("client", "default", "192.0.2.2")],
        routers=["router"],
    ) as topo:
        topo.run("client", "ping", "-c1", "192.0.2.2")

IPv6 duplicate address detection is off in every namespace (addresses work at
once); routers forward v4 and v6 and send ICMP errors without rate limits, so
tests are deterministic.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CommandFailed", "Link", "Route", "Topology"]


class CommandFailed(subprocess.CalledProcessError):
    """A topology command failed; unlike CalledProcessError, the message carries its stderr,
    which says what went wrong (a missing ``ip``, a taken name, an unknown sysctl...)."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip() or '(no output)'}"


def _root(*command: str) -> None:
    """Run ``command`` in the root namespace; CommandFailed if it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise CommandFailed(result.returncode, list(command), result.stdout, result.stderr)


@dataclass(frozen=True)
class Link:
    """A veth pair between nodes ``a`` and ``b``, with their addresses (``addr/prefix``) and MTU.

    The interface in each namespace is named after the node at the other end
    (``to-<peer>``, cut to 15 characters) unless ``a_name`` / ``b_name`` say otherwise.
    """

    a: str
    b: str
    a_addresses: Sequence[str] = ()
    b_addresses: Sequence[str] = ()
    mtu: int = 1500
    a_name: str | None = None
    b_name: str | None = None

    def interface(self, node: str) -> str:
        """The interface name of this link inside ``node``."""
        if node == self.a:
            return self.a_name or f"to-{self.b}"[:15]
        return self.b_name or f"to-{self.a}"[:15]


@dataclass(frozen=True)
class Route:
    """``ip route add <destination> via <via>`` in ``node`` (``destination`` may be ``default``)."""

    node: str
    destination: str
    via: str


@dataclass
class Topology:
    """Builds namespaces, links, addresses, routes and sysctls; removes them all on exit."""

    links: Sequence[Link]
    routes: Sequence[Route] = ()
    routers: Iterable[str] = ()
    nodes: Sequence[str] = ()
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"fp-{secrets.token_hex(3)}")
    namespaces: dict[str, str] = field(default_factory=dict, init=False)

    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ns(self, node: str) -> str:
        """The namespace name of ``node``."""
        return self.namespaces[node]

    def run(self, node: str, *command: str, check: bool = True, timeout: float = 30.0,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside ``node``'s namespace and return its result (text output);
        with ``check``, CommandFailed (its stderr in the message) when it exits non-zero."""
        result = subprocess.run(["ip", "netns", "exec", self.ns(node), *command], timeout=timeout,
                                capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
        if check and result.returncode:
            raise CommandFailed(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def popen(self, node: str, *command: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``command`` inside ``node``'s namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(node), *command], **kwargs)  # type: ignore[call-overload]

    def sysctl(self, node: str, name: str, value: str) -> None:
        """Set ``name`` to ``value`` inside ``node``'s namespace."""
        self.run(node, "sysctl", "-q", "-w", f"{name}={value}")

    def _build(self) -> None:
        nodes = list(dict.fromkeys([*self.nodes, *(n for link in self.links for n in (link.a, link.b))]))
        for node in nodes:
            name = f"{self.prefix}-{node}"
            _root("ip", "netns", "add", name)
            self.namespaces[node] = name
            self.run(node, "ip", "link", "set", "lo", "up")
            for key in ("all", "default"):
                self.sysctl(node, f"net.ipv6.conf.{key}.accept_dad", "0")
        for number, link in enumerate(self.links):
            # Create both ends in the root namespace under unique temporary names, then move them.
            temp_a, temp_b = f"{self.prefix}{number}a", f"{self.prefix}{number}b"
            _root("ip", "link", "add", temp_a, "type", "veth", "peer", "name", temp_b)
            for node, temp, addresses in ((link.a, temp_a, link.a_addresses), (link.b, temp_b, link.b_addresses)):
                interface = link.interface(node)
                _root("ip", "link", "set", temp, "netns", self.ns(node), "name", interface)
                self.run(node, "ip", "link", "set", interface, "mtu", str(link.mtu))
                for address in addresses:
                    extra = ["nodad"] if ":" in address else []
                    self.run(node, "ip", "addr", "add", address, "dev", interface, *extra)
                self.run(node, "ip", "link", "set", interface, "up")
        for router in self.routers:
            for name, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                                ("net.ipv4.icmp_ratelimit", "0"), ("net.ipv6.icmp.ratelimit", "0")):
                self.sysctl(router, name, value)
        for node, values in self.sysctls.items():
            for name, value in values.items():
                self.sysctl(node, name, value)
        for route in self.routes:
            family = ["-6"] if ":" in route.via else []
            self.run(route.node, "ip", *family, "route", "add", route.destination, "via", route.via)

    def close(self) -> None:
        """Delete every namespace (their veths go with them); idempotent."""
        for name in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self.namespaces.clear()
        # A link whose move failed half-way may still be in the root namespace.
        for number in range(len(self.links)):
            subprocess.run(["ip", "link", "del", f"{self.prefix}{number}a"], check=False, capture_output=True)
