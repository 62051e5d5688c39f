"""``fastproxy demo``: a whole tunnel in one process on loopback, shown step by step.

An edge, a connector (serving 127.0.0.0/8 and ::1/128) and a client start on 127.0.0.1;
then the built-in ping and traceroute go through the tunnel to 127.0.0.1, a UDP session
talks to a small echo server the demo runs, and the metrics that changed are printed.
Exit status 0 only if every step worked. Needs no root: the connector uses ping
sockets (or raw sockets where it may); where neither is allowed the ICMP steps are
reported as failed with the sysctl that would allow them, and the UDP step still runs.

Run as root with ``--user NAME`` it shows the unprivileged case: it loads first all it
will need from disk (its modules, the lazily imported parts of the libraries, the
edge's certificate, made for that user), then drops to the user (uid, primary gid, no
other groups, no capabilities) before anything starts, so it works wherever fastproxy
and Python are installed, even where that user may not read them (a checkout in /root).
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import io
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

from .errors import FastproxyError

__all__ = ["DemoUserError", "UdpEchoServer", "run_demo"]

# Everything the demo imports once running, loaded before a privilege drop (see the module
# docstring): its own modules, the ICMP backends create_backend picks lazily, and the parts of
# the standard library asyncio loads on first use (an executor for getaddrinfo, the idna codec).
_MODULES_TO_PRELOAD = (
    "fastproxy.icmp", "fastproxy.icmp.backends.linux_ping", "fastproxy.icmp.backends.raw",
    "fastproxy.metrics", "fastproxy.tunnel.client", "fastproxy.tunnel.connector",
    "fastproxy.tunnel.connector_icmp", "fastproxy.tunnel.edge", "fastproxy.tunnel.quic", "fastproxy.client.tools",
    "concurrent.futures.thread", "encodings.idna",
)

LOOPBACK_ROUTES = ("127.0.0.0/8", "::1/128")
_UDP_MESSAGES = (b"hello through fastproxy", b"UDP sessions work", b"goodbye")


class UdpEchoServer(asyncio.DatagramProtocol):
    """Answers every datagram with the same bytes (the demo's private UDP service)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.echoed = 0

    @classmethod
    async def start(cls, host: str = "127.0.0.1") -> tuple[UdpEchoServer, int]:
        """A running server on ``host`` and the port it got."""
        loop = asyncio.get_running_loop()
        _, server = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        assert server.transport is not None
        return server, server.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.echoed += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _indent(text: str, prefix: str = "    ") -> str:
    return "".join((prefix + line if line else "") + "\n" for line in text.splitlines())


def _samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _metric_changes(before: dict[Any, float], after: dict[Any, float]) -> list[str]:
    lines = []
    for key in sorted(after):
        if after[key] == before.get(key, 0.0) or key[0].endswith("_bucket"):
            continue
        name, labels = key
        label_text = "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""
        value = after[key]
        shown = f"{value:g}" if not name.endswith("_sum") else f"{value:.6f}"
        lines.append(f"{name}{label_text} {shown}")
    return lines


class DemoUserError(FastproxyError):
    """``--user`` cannot be honoured (not root, or no such user); the message says why."""


def _lookup_user(user: str) -> tuple[int, int]:
    """The uid and primary gid of ``user`` (a name or a number)."""
    import pwd

    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise DemoUserError(f"no such user: {user!r} (give a name from /etc/passwd, e.g. nobody, or a uid)") from None
    return entry.pw_uid, entry.pw_gid


def _prepare(user: tuple[int, int] | None) -> tuple[str, str]:
    """Load everything the demo will need from disk, and make the edge's certificate (owned by
    ``user``'s uid and gid when given, so the edge can read it after the drop); returns the
    certificate and key files."""
    from .tunnel.certs import generate_self_signed

    for name in _MODULES_TO_PRELOAD:
        importlib.import_module(name)
    directory = tempfile.mkdtemp(prefix="fastproxy-demo-")
    pair = generate_self_signed(directory)  # also loads cryptography's lazily imported backend
    if user is not None:
        for path in (directory, pair.cert_file, pair.key_file):
            os.chown(path, *user)
    return pair.cert_file, pair.key_file


def _drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good: no supplementary groups, and (the kernel clears them when
    every uid leaves 0) no capabilities."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


class _Demo:
    def __init__(self, out: TextIO, clock: Callable[[], float], cert: tuple[str, str]) -> None:
        self.out = out
        self.clock = clock
        self.cert_file, self.key_file = cert
        self.results: list[tuple[str, bool]] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, name: str, ok: bool, why: str = "") -> None:
        self.results.append((name, ok))
        self.say(f"  => {'ok' if ok else 'FAILED'}: {name}" + (f" ({why})" if why else ""))

    async def run(self) -> int:
        from .icmp import BackendUnavailable
        from .metrics import ClientMetrics, create_registry
        from .tunnel.client import Client
        from .tunnel.connector import Connector
        from .tunnel.edge import Edge, EdgeConfig
        from .tunnel.quic import Trust

        from .client.tools import ping, traceroute

        client_token, connector_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        routes = [ipaddress.ip_network(r) for r in LOOPBACK_ROUTES]
        config = EdgeConfig(client_tokens={client_token: None}, connector_tokens=(connector_token,))
        echo_server, echo_port = await UdpEchoServer.start()
        icmp_problem = ""
        try:
            async with Edge(config, cert_file=self.cert_file, key_file=self.key_file,
                            listen=("127.0.0.1", 0)) as edge:
                trust = Trust(pin=edge.fingerprint)
                try:
                    connector = Connector("127.0.0.1", edge.port, token=connector_token, routes=routes, trust=trust,
                                          icmp_backend="auto")
                except BackendUnavailable as exc:
                    icmp_problem = str(exc)
                    connector = Connector("127.0.0.1", edge.port, token=connector_token, routes=routes, trust=trust)
                async with connector:
                    await asyncio.wait_for(connector.connected.wait(), 10)
                    async with Client(("127.0.0.1", edge.port), client_token, trust) as client:
                        registry = create_registry(edge=edge, connector=connector, clients=[client])
                        client_metrics = ClientMetrics(registry)
                        before = _samples(registry)
                        self.picture(edge.port, client, edge.router)
                        await self.ping_step(client, icmp_problem, ping, client_metrics.observe_rtt)
                        await self.traceroute_step(client, icmp_problem, traceroute)
                        await self.udp_step(client, echo_port, client_metrics.observe_rtt)
                        await asyncio.sleep(0.05)  # let the last counters settle
                        self.metrics_step(before, _samples(registry))
        finally:
            echo_server.close()
        return self.summary(icmp_problem)

    def picture(self, port: int, client: Any, router: Any) -> None:
        v4 = client.address_v4
        edge_v4 = ipaddress.ip_address(router.edge_v4) if router.edge_v4 else "-"
        self.say("fastproxy demo: ICMP and UDP through a QUIC tunnel, all three roles in this process")
        self.say()
        self.say("    client  ==QUIC==>  edge  <==QUIC==  connector  -->  127.0.0.1")
        self.say(f"    {str(v4):<19}{'127.0.0.1:' + str(port):<18}serves {', '.join(LOOPBACK_ROUTES)}")
        self.say(f"    (tunnel address)   (tunnel {edge_v4})")
        self.say()
        self.say("  The client sends whole ICMP packets and UDP payloads as QUIC datagrams; the edge")
        self.say("  authenticates it and routes them to the connector that serves the destination; the")
        self.say("  connector proxies them to the real host with ordinary sockets (no root) and sends the")
        self.say("  answers back. The edge and the connector are hops of their own, as traceroute shows.")

    async def ping_step(self, client: Any, problem: str, ping: Any, on_rtt: Callable[[float], None]) -> None:
        self.say()
        self.say("[1/3] fastproxy ping -c 3 -i 0.2 127.0.0.1   (echo requests through the tunnel)")
        if problem:
            self.step("ping through the tunnel", False, "the connector cannot send ICMP here")
            return
        buffer = io.StringIO()
        status = await ping(client, "127.0.0.1", count=3, interval=0.2, timeout=3.0, out=buffer, on_rtt=on_rtt)
        self.say(_indent(buffer.getvalue()).rstrip("\n"))
        self.step("ping through the tunnel", status == 0 and "3 received" in buffer.getvalue())

    async def traceroute_step(self, client: Any, problem: str, traceroute: Any) -> None:
        self.say()
        self.say("[2/3] fastproxy traceroute 127.0.0.1   (each TTL dies one hop further)")
        if problem:
            self.step("traceroute through the tunnel", False, "the connector cannot send ICMP here")
            return
        buffer = io.StringIO()
        status = await traceroute(client, "127.0.0.1", max_hops=8, wait=2.0, out=buffer)
        self.say(_indent(buffer.getvalue()).rstrip("\n"))
        self.say("    hop 1: the edge (its tunnel address); hop 2: the connector (on loopback its own address")
        self.say("    is 127.0.0.1 too); last: the destination. Routers behind a connector show up the same way.")
        self.step("traceroute through the tunnel", status == 0)

    async def udp_step(self, client: Any, port: int, on_rtt: Callable[[float], None]) -> None:
        self.say()
        self.say(f"[3/3] UDP session to an echo server at 127.0.0.1:{port}   (what dig, games, VoIP use)")
        ok = True
        try:
            session = await client.open_udp("127.0.0.1", port, timeout=5.0)
        except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
            self.step("UDP echo through the tunnel", False, f"the session was not opened: {exc}")
            return
        try:
            for message in _UDP_MESSAGES:
                start = self.clock()
                session.send(message)
                try:
                    answer = await session.receive(timeout=3.0)
                except (asyncio.TimeoutError, EOFError):
                    self.say(f"    sent {message.decode()!r:<28} no answer")
                    ok = False
                    continue
                rtt = self.clock() - start
                on_rtt(rtt)
                ok = ok and answer == message
                self.say(f"    sent {message.decode()!r:<28} got back {answer.decode(errors='replace')!r} "
                         f"in {rtt * 1000:.2f} ms")
        finally:
            session.close()
        self.step("UDP echo through the tunnel", ok)

    def metrics_step(self, before: dict[Any, float], after: dict[Any, float]) -> None:
        self.say()
        self.say("Metrics that changed (what `--metrics HOST:PORT` serves at /metrics for Prometheus):")
        changes = _metric_changes(before, after)
        for line in changes:
            self.say("    " + line)
        if not changes:
            self.say("    (none)")

    def summary(self, icmp_problem: str) -> int:
        self.say()
        failed = [name for name, ok in self.results if not ok]
        if icmp_problem:
            self.say("ICMP could not be proxied on this machine:")
            self.say(_indent(icmp_problem).rstrip("\n"))
        if failed:
            self.say(f"Result: {len(failed)} of {len(self.results)} steps failed: {', '.join(failed)}.")
            return 1
        self.say(f"Result: all {len(self.results)} steps worked. Next: `fastproxy --help`, and the README's "
                 "deployment walk-through (edge, connector, client with a TUN device for the system's own tools).")
        return 0


def run_demo(out: TextIO, *, clock: Callable[[], float] = time.perf_counter, user: str | None = None) -> int:
    """Run the demo, printing to ``out``; returns the exit status (0: every step worked).

    ``user`` (a name or a uid; root only): run it as that user, after loading all it needs
    (see the module docstring); :class:`DemoUserError` when that cannot be done.
    """
    import logging

    # The demo reports problems itself (e.g. which sysctl allows ICMP); no log noise.
    logging.getLogger("fastproxy").setLevel(logging.ERROR)
    target = None
    if user is not None:
        if os.geteuid() != 0:
            raise DemoUserError(f"--user {user} needs root (only root can become another user); "
                                "without --user the demo runs as you, which needs no privilege")
        target = _lookup_user(user)
    cert = _prepare(target)
    if target is not None:
        _drop_privileges(*target)
    try:
        return asyncio.run(_Demo(out, clock, cert).run())
    except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
        print(f"fastproxy demo: the tunnel did not come up: {exc or type(exc).__name__}", file=out)
        return 1
    finally:
        shutil.rmtree(os.path.dirname(cert[0]), ignore_errors=True)  # the demo's throwaway certificate
