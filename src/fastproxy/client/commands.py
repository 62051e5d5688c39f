"""The user-side commands: ``client``, ``ping``, ``traceroute``, ``forward-udp`` and
``demo``. Settings come from flags and the ``[client]`` table of ``--config``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..config import ConfigError, add_config_argument, apply_config, host_port_arg, setting_origin
from ..logs import add_logging_arguments, configure_logging

__all__ = ["add_client_commands"]

log = logging.getLogger("fastproxy.client")

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--edge", type=host_port_arg, metavar="HOST:PORT", help="the edge to connect to")
    parser.add_argument("--token", metavar="TOKEN",
                        help="this client's token (env:NAME reads an environment variable, @FILE a file)")
    parser.add_argument("--ca", metavar="FILE", help="verify the edge with this CA bundle (PEM)")
    parser.add_argument("--pin", metavar="SHA256", help="verify the edge by its certificate's SHA-256 fingerprint")
    parser.add_argument("--insecure", action="store_true", default=None, help="do not verify the edge (tests only)")
    parser.add_argument("--metrics", type=host_port_arg, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics")
    add_logging_arguments(parser)


def add_client_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``client``, ``ping``, ``traceroute``, ``forward-udp`` and ``demo``."""
    client = commands.add_parser(
        "client", formatter_class=_FORMATTER,
        help="make a TUN device so the system's ping, traceroute, mtr and UDP programs use the tunnel",
        description="Connect to the edge, create a TUN device with the tunnel address the edge assigns, route "
        "the prefixes the edge allows into it, and carry ICMP echo and UDP through the tunnel. Needs root (or "
        "CAP_NET_ADMIN). The device and its routes are removed on exit (Ctrl-C, SIGTERM).",
        epilog="examples:\n"
        "  sudo fastproxy client --edge gw.example.net:4433 --token env:FP_TOKEN --pin 3f2a... --tun fp0\n"
        "  ping 10.0.0.8; traceroute -I 10.0.0.8; mtr 10.0.0.8; dig @10.0.0.53 internal.example\n"
        "  sudo fastproxy client --config /etc/fastproxy.toml        # settings from its [client] table",
    )
    _connection_arguments(client)
    client.add_argument("--tun", metavar="NAME", help="TUN device name (default fastproxy%%d: the kernel numbers it)")
    client.set_defaults(run=_run_client, config_section="client")

    ping = commands.add_parser(
        "ping", formatter_class=_FORMATTER,
        help="ping a private host through the tunnel (no root, no TUN)",
        description="Send ICMP echo requests through the tunnel and print the answers as iputils ping does. "
        "Exit status: 0 when replies came, 1 when none did, 2 on errors.",
        epilog="examples:\n"
        "  fastproxy ping --edge gw.example.net:4433 --token env:FP_TOKEN --pin 3f2a... 10.0.0.8\n"
        "  fastproxy ping --config fastproxy.toml -c 5 -i 0.2 -s 1000 10.0.0.8\n"
        "  fastproxy ping --config fastproxy.toml -t 2 10.0.0.8      # see which hop answers at TTL 2",
    )
    _connection_arguments(ping)
    ping.add_argument("host", metavar="HOST")
    ping.add_argument("-c", dest="count", type=int, metavar="COUNT", help="stop after COUNT requests")
    ping.add_argument("-i", dest="interval", type=float, default=1.0, metavar="INTERVAL",
                      help="seconds between requests (default 1)")
    ping.add_argument("-t", dest="ttl", type=int, default=64, metavar="TTL", help="IP time to live (default 64)")
    ping.add_argument("-s", dest="size", type=int, default=56, metavar="SIZE", help="data bytes (default 56)")
    ping.add_argument("-W", dest="timeout", type=float, default=10.0, metavar="TIMEOUT",
                      help="seconds to wait for the last replies (default 10)")
    ping.set_defaults(run=_run_ping, config_section="client")

    trace = commands.add_parser(
        "traceroute", formatter_class=_FORMATTER,
        help="trace the path to a private host through the tunnel (no root, no TUN)",
        description="Send ICMP echo requests with growing TTL and print each hop as traceroute -n does: the "
        "edge, the connector and every router behind it. --report prints an mtr-style table instead.",
        epilog="examples:\n"
        "  fastproxy traceroute --edge gw.example.net:4433 --token env:FP_TOKEN --pin 3f2a... 10.0.0.8\n"
        "  fastproxy traceroute --config fastproxy.toml --report -c 10 10.0.0.8",
    )
    _connection_arguments(trace)
    trace.add_argument("host", metavar="HOST")
    trace.add_argument("-m", dest="max_hops", type=int, default=30, metavar="MAX_HOPS", help="default 30")
    trace.add_argument("-q", dest="queries", type=int, default=3, metavar="QUERIES", help="probes per hop (default 3)")
    trace.add_argument("-w", dest="wait", type=float, default=3.0, metavar="WAIT",
                       help="seconds to wait for a probe's answer (default 3)")
    trace.add_argument("--report", action="store_true", help="mtr-style table: Loss%%, Snt, Last, Avg, Best, Wrst, StDev")
    trace.add_argument("-c", dest="cycles", type=int, default=10, metavar="COUNT",
                       help="rounds of probes with --report (default 10)")
    trace.set_defaults(run=_run_traceroute, config_section="client")

    forward = commands.add_parser(
        "forward-udp", formatter_class=_FORMATTER,
        help="a local UDP port that reaches a private UDP service through the tunnel",
        description="Listen on LOCAL_ADDR:PORT; each local peer gets its own UDP session to REMOTE_ADDR:PORT "
        "through the tunnel, so answers go back to whoever asked. Repeat the mapping for several ports.",
        epilog="examples:\n"
        "  fastproxy forward-udp --config fastproxy.toml 127.0.0.1:5353=10.0.0.53:53\n"
        "  dig -p 5353 @127.0.0.1 internal.example\n"
        "  fastproxy forward-udp --edge gw.example.net:4433 --token env:FP_TOKEN --pin 3f2a... \\\n"
        "      127.0.0.1:5353=10.0.0.53:53 '[::1]:5060=[fd12::20]:5060'",
    )
    _connection_arguments(forward)
    forward.add_argument("mappings", nargs="+", metavar="LOCAL_ADDR:PORT=REMOTE_ADDR:PORT")
    forward.set_defaults(run=_run_forward, config_section="client")

    demo = commands.add_parser(
        "demo", formatter_class=_FORMATTER,
        help="see fastproxy work: edge, connector and client in one process on 127.0.0.1",
        description="Start an edge, a connector (serving 127.0.0.0/8 and ::1) and a client in this process, "
        "then ping, traceroute and exchange UDP through the tunnel, and show the metrics that changed. Needs "
        "no root and no arguments. Exits 0 only if every step worked.",
        epilog="example:\n  fastproxy demo",
    )
    demo.set_defaults(run=_run_demo)


# -- shared plumbing ---------------------------------------------------------------


def _settings(args: argparse.Namespace) -> argparse.Namespace:
    """Merge the config file, or exit 2 naming the problem."""
    try:
        apply_config(args, args.config_section)
    except ConfigError as exc:
        print(f"fastproxy {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(args.log_format, args.verbose)
    return args


@contextlib.asynccontextmanager
async def _connect(args: argparse.Namespace, **options: Any) -> AsyncIterator[Any]:
    """A connected fastproxy.Client for these settings."""
    from ..tunnel.client import Client
    from ..tunnel.commands import resolve_tokens, trust_from_args

    (token,) = resolve_tokens([args.token], setting_origin(args, "token"))
    trust = trust_from_args(args)
    async with Client(args.edge, token, trust, **options) as client:
        yield client


@contextlib.asynccontextmanager
async def _metrics(args: argparse.Namespace, client: Any) -> AsyncIterator[Callable[[float], None] | None]:
    """With ``--metrics HOST:PORT``: serve the client's counters (and the RTT histogram whose
    observe function this yields) at /metrics; without it, yield None."""
    if not args.metrics:
        yield None
        return
    from ..metrics import ClientMetrics, create_registry, serve_metrics

    registry = create_registry(clients=[client])
    rtt = ClientMetrics(registry)
    try:
        server = await serve_metrics(registry, *args.metrics)
    except OSError as exc:
        raise ConfigError(f"--metrics {args.metrics[0]}:{args.metrics[1]}: cannot listen: {os.strerror(exc.errno) if exc.errno else exc} "
                          "(another process on that port? choose another)") from None
    log.info("metrics at http://%s:%d/metrics", *args.metrics)
    try:
        yield rtt.observe_rtt
    finally:
        server.close()


_LONG_RUNNING = ("client", "forward-udp")


def _run(args: argparse.Namespace, main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop``; connection problems exit 2."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(sig: signal.Signals) -> None:
            # The long-running ones say why they end; ping and traceroute print their summary.
            if args.command in _LONG_RUNNING and not stop.is_set():
                log.info("%s stopping (%s)", args.command, sig.name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopping, sig)
        return await main(stop)

    try:
        return asyncio.run(runner())
    except ConfigError as exc:  # a setting, not the edge: name the flag or config key
        print(f"fastproxy {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, asyncio.TimeoutError, OSError, ValueError) as exc:
        edge = f" {args.edge[0]}:{args.edge[1]}" if getattr(args, "edge", None) else ""
        print(f"fastproxy {args.command}: edge{edge}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


# -- the commands -------------------------------------------------------------------


def _run_ping(args: argparse.Namespace) -> int:
    from .tools import ping

    _settings(args)

    async def main(stop: asyncio.Event) -> int:
        async with _connect(args) as client, _metrics(args, client) as on_rtt:
            return await ping(client, args.host, count=args.count, interval=args.interval, ttl=args.ttl,
                              size=args.size, timeout=args.timeout, out=sys.stdout, stop=stop, on_rtt=on_rtt)

    return _run(args, main)


def _run_traceroute(args: argparse.Namespace) -> int:
    from .tools import traceroute

    _settings(args)

    async def main(stop: asyncio.Event) -> int:
        async with _connect(args) as client, _metrics(args, client):
            return await traceroute(client, args.host, max_hops=args.max_hops, queries=args.queries, wait=args.wait,
                                    report=args.report, cycles=args.cycles, out=sys.stdout)

    return _run(args, main)


async def _resolve(host: str, port: int) -> tuple[str, int]:
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0]), port


def _run_forward(args: argparse.Namespace) -> int:
    from .forward import UdpForward, parse_forward_spec

    _settings(args)
    try:
        mappings = [parse_forward_spec(text) for text in args.mappings]
    except ValueError as exc:
        print(f"fastproxy forward-udp: {exc}", file=sys.stderr)
        return 2

    async def main(stop: asyncio.Event) -> int:
        async with _connect(args) as client, _metrics(args, client):
            forwards = []
            try:
                for local, remote in mappings:
                    forward = UdpForward(client, await _resolve(*remote))
                    forwards.append(forward)
                    bound = await forward.start(*local)
                    log.info("forwarding udp %s:%d -> %s:%d through the tunnel", *bound, *forward.remote)
                await stop.wait()
            finally:
                for forward in forwards:
                    forward.close()
        return 0

    return _run(args, main)


def _tun_routes(prefixes: tuple[Any, ...], edge_host: str) -> list[Any]:
    """The allowed prefixes, minus any that holds the edge's own address (routing the
    tunnel's QUIC packets into the tunnel would cut it)."""
    try:
        edge = ipaddress.ip_address(edge_host)
    except ValueError:
        try:
            edge = ipaddress.ip_address(socket.getaddrinfo(edge_host, None)[0][4][0])
        except (socket.gaierror, IndexError):
            return list(prefixes)
    routes = []
    for prefix in prefixes:
        if edge.version == prefix.version and edge in prefix:
            log.warning("not routing %s into the tunnel: it holds the edge's address %s", prefix, edge)
        else:
            routes.append(prefix)
    return routes


def _tun_addresses(client: Any) -> list[str]:
    """The TUN device's addresses: the client's tunnel addresses as host routes."""
    addresses = [f"{client.address_v4}/32"] if client.address_v4 else []
    return addresses + ([f"{client.address_v6}/128"] if client.address_v6 else [])


def _run_client(args: argparse.Namespace) -> int:
    from .bridge import TunBridge
    from .tun import TunDevice, TunError

    _settings(args)

    async def main(stop: asyncio.Event) -> int:
        async with _connect(args) as client, _metrics(args, client):
            try:
                tun = TunDevice(args.tun)
            except TunError as exc:
                print(f"fastproxy client: {exc}", file=sys.stderr)
                return 2
            with tun:
                routes = _tun_routes(client.prefixes, client.edge_host)
                tun.configure(_tun_addresses(client), routes)
                if not routes:
                    log.warning("the edge allows this client no prefixes (has a connector announced any?)")
                bridge = TunBridge(tun, client)
                client.on_packets = bridge.from_tunnel

                def on_reconnect(_: Any) -> None:
                    # The edge normally gives the same addresses back; if it could not (the old
                    # connection was not yet timed out), the device must carry the new ones, or
                    # the edge would drop every packet as spoofed.
                    addresses = _tun_addresses(client)
                    if set(map(str, tun.addresses)) != set(addresses):
                        tun.set_addresses(addresses)
                        log.warning("the edge assigned new addresses after a reconnect: %s", ", ".join(addresses))
                    # It may also offer other prefixes: route the new ones.
                    new = [p for p in _tun_routes(client.prefixes, client.edge_host) if p not in tun.routes]
                    if new:
                        tun.add_routes(new)
                        log.info("routes added after reconnect: %s", ", ".join(map(str, new)))

                client.on_reconnect = on_reconnect
                bridge.start()
                log.info("tunnel up on %s: addresses %s; routes %s", tun.name,
                         ", ".join(map(str, tun.addresses)) or "none", ", ".join(map(str, routes)) or "none")
                try:
                    await stop.wait()
                finally:
                    client.on_packets = None
                    bridge.close()
                log.info("removed %s and its routes", tun.name)
        return 0

    return _run(args, main)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(sys.stdout)
