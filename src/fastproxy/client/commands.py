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
from typing import Any, TypeVar

from ..config import ConfigError, add_config_argument, apply_config, host_port_arg, setting_origin
from ..logs import add_logging_arguments, configure_logging, format_address

__all__ = ["add_client_commands"]

log = logging.getLogger("fastproxy.client")

_FORMATTER = argparse.RawDescriptionHelpFormatter
T = TypeVar("T")


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


_NAMES = ("Host names are resolved on this machine, by its own resolver (/etc/hosts, its DNS servers), not in "
          "the private network; --resolver IP asks a DNS server inside the private network instead, through the "
          "tunnel.")


def _wrap(text: str) -> str:
    """Paragraphs (blank-line separated) filled to 88 columns: the formatter keeps the
    epilog's example lines as written, so descriptions are filled here."""
    import textwrap

    return "\n\n".join(textwrap.fill(paragraph, 88) for paragraph in text.split("\n\n"))


def _resolver_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolver", metavar="IP",
                        help="resolve HOST with the DNS server at IP inside the private network (UDP port 53), "
                        "asked through the tunnel (default: this machine's resolver)")


def _numbers_are_arguments(parser: argparse.ArgumentParser) -> None:
    """Let ``-c -1`` reach our checks: with options named -4/-6, argparse would take any
    negative number for an option and say only 'expected one argument'."""
    parser._has_negative_number_optionals.clear()


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
        description=_wrap("Send ICMP echo requests through the tunnel and print the answers as iputils ping does, "
        "with its flags, checks and messages. Exit status: 0 when replies came, 1 when none did (or, with -w "
        "and -c, fewer than COUNT), 2 on errors. Ctrl-C stops it and prints the summary.\n\n" + _NAMES),
        epilog="examples:\n"
        "  fastproxy ping --edge gw.example.net:4433 --token env:FP_TOKEN --pin 3f2a... 10.0.0.8\n"
        "  fastproxy ping --config fastproxy.toml -c 5 -i 0.2 -s 1000 10.0.0.8\n"
        "  fastproxy ping --config fastproxy.toml -t 2 10.0.0.8      # see which hop answers at TTL 2\n"
        "  fastproxy ping --config fastproxy.toml '[fd12::8]'        # IPv6 literals with or without brackets\n"
        "  fastproxy ping --config fastproxy.toml --resolver 10.0.0.53 db.internal.example\n"
        "  sudo fastproxy ping --config fastproxy.toml -f -c 1000 10.0.0.8   # flood: root or CAP_NET_RAW",
    )
    _connection_arguments(ping)
    ping.add_argument("host", metavar="HOST", help="an IP address ([v6] brackets allowed) or a name (see above)")
    # The numbers are taken as text and checked as iputils checks them, with its messages.
    ping.add_argument("-c", dest="count", metavar="COUNT", help="stop after COUNT requests (with -w: COUNT replies)")
    ping.add_argument("-i", dest="interval", metavar="INTERVAL",
                      help="seconds between requests (default 1; below 0.002 only for root or CAP_NET_RAW)")
    ping.add_argument("-t", dest="ttl", metavar="TTL", help="IP time to live, 1-255 (default 64)")
    ping.add_argument("-s", dest="size", metavar="SIZE",
                      help="data bytes (default 56; at most 1252 over IPv4, 1232 over IPv6: the tunnel's MTU)")
    ping.add_argument("-W", dest="timeout", metavar="TIMEOUT",
                      help="seconds to wait for the last reply (default 10)")
    ping.add_argument("-w", dest="deadline", metavar="DEADLINE",
                      help="stop after DEADLINE seconds however many requests went out (with -c: once COUNT "
                      "replies came)")
    ping.add_argument("-p", dest="pattern", metavar="PATTERN",
                      help="fill the data with these bytes, in hex (up to 16 bytes, e.g. -p ff00)")
    ping.add_argument("-f", dest="flood", action="store_true",
                      help="flood: the next request as soon as the reply is in (or 100 a second); prints a dot "
                      "per request and erases it per reply; root or CAP_NET_RAW only, as with iputils")
    ping.add_argument("-D", dest="timestamps", action="store_true",
                      help="start each line with the Unix time [seconds.microseconds]")
    ping.add_argument("-q", dest="quiet", action="store_true", help="quiet: only the first line and the summary")
    ping.add_argument("-n", dest="numeric", action="store_true",
                      help="numeric output (always so: fastproxy does no reverse lookups; accepted as in iputils)")
    ping.add_argument("-O", dest="outstanding", action="store_true",
                      help="say 'no answer yet for icmp_seq=N' when a request is unanswered as the next one goes")
    ping.add_argument("-4", dest="v4", action="store_true", help="IPv4 only (resolve HOST to an IPv4 address)")
    ping.add_argument("-6", dest="v6", action="store_true", help="IPv6 only (resolve HOST to an IPv6 address)")
    _resolver_argument(ping)
    _numbers_are_arguments(ping)
    ping.set_defaults(run=_run_ping, config_section="client")

    trace = commands.add_parser(
        "traceroute", formatter_class=_FORMATTER,
        help="trace the path to a private host through the tunnel (no root, no TUN)",
        description=_wrap("Send ICMP echo requests with growing TTL and print each hop as traceroute -I -n does: the "
        "edge, the connector and every router behind it. Probes go out in parallel (-N at once, 16 by default, "
        "as traceroute), so silent hops cost one wait per batch, and each hop's row is printed as soon as it is "
        "complete. --report prints an mtr-style table instead, --json the same as mtr --json does. Ctrl-C stops "
        "it at once and prints what it has (exit status 130). Exit status: 0 when the target answered, 1 when "
        "not, 2 on errors.\n\n" + _NAMES),
        epilog="examples:\n"
        "  fastproxy traceroute --edge gw.example.net:4433 --token env:FP_TOKEN --pin 3f2a... 10.0.0.8\n"
        "  fastproxy traceroute --config fastproxy.toml -q 1 -w 1 -m 15 10.0.0.8\n"
        "  fastproxy traceroute --config fastproxy.toml --report -c 10 10.0.0.8\n"
        "  fastproxy traceroute --config fastproxy.toml --json -c 5 10.0.0.8 | jq '.report.hubs[].host'",
    )
    _connection_arguments(trace)
    trace.add_argument("host", metavar="HOST", help="an IP address ([v6] brackets allowed) or a name (see above)")
    trace.add_argument("-n", dest="numeric", action="store_true",
                       help="print hop addresses numerically, as traceroute -n does (always so: fastproxy does no "
                       "reverse lookups)")
    trace.add_argument("-I", dest="icmp", action="store_true",
                       help="use ICMP echo probes, as traceroute -I does (always so: fastproxy's probes are ICMP)")
    trace.add_argument("-f", dest="first_ttl", type=int, default=1, metavar="FIRST_TTL",
                       help="start from this TTL (hop) instead of 1")
    trace.add_argument("-m", dest="max_hops", type=int, default=30, metavar="MAX_TTL",
                       help="the most hops (largest TTL) to probe before giving up, 1-255 (default 30)")
    trace.add_argument("-q", dest="queries", type=int, default=3, metavar="NQUERIES",
                       help="probes per hop, 1-10 (default 3)")
    trace.add_argument("-w", dest="wait", type=float, default=3.0, metavar="WAIT",
                       help="seconds to wait for a probe's answer (default 3)")
    trace.add_argument("-N", dest="in_flight", type=int, default=16, metavar="SQUERIES",
                       help="probes in flight at once (default 16, as traceroute)")
    trace.add_argument("-p", dest="port", type=int, metavar="PORT",
                       help="accepted and ignored: ICMP echo probes have no port (traceroute's -p is for UDP/TCP)")
    trace.add_argument("-4", dest="v4", action="store_true", help="IPv4 only (resolve HOST to an IPv4 address)")
    trace.add_argument("-6", dest="v6", action="store_true", help="IPv6 only (resolve HOST to an IPv6 address)")
    trace.add_argument("--report", action="store_true",
                       help="mtr-style table after -c rounds: Loss%%, Snt, Last, Avg, Best, Wrst, StDev")
    trace.add_argument("--json", dest="json_output", action="store_true",
                       help="the --report table as JSON, with mtr --json's layout and key names (report.mtr, "
                       "report.hubs[]: count, host, Loss%%, Snt, Last, Avg, Best, Wrst, StDev)")
    trace.add_argument("-c", dest="cycles", type=int, metavar="COUNT",
                       help="rounds of probes with --report or --json (default 10); an error without them")
    _resolver_argument(trace)
    _numbers_are_arguments(trace)
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
        epilog="examples:\n  fastproxy demo\n  sudo fastproxy demo --user nobody   # the unprivileged case, run by root",
    )
    demo.add_argument("--user", metavar="NAME|UID",
                      help="(as root) load everything, then run the demo as this user, with no groups and no "
                      "capabilities: what an unprivileged user sees")
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
async def _connect_unless_stopped(args: argparse.Namespace, stop: asyncio.Event) -> AsyncIterator[Any]:
    """As :func:`_connect`, but Ctrl-C while still dialling gives up the dial at once and
    yields None (the tools stop at once, as traceroute and mtr do, even before the edge answered)."""
    connection = _connect(args)
    entering = asyncio.ensure_future(connection.__aenter__())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({entering, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not entering.done():
        entering.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError, asyncio.TimeoutError):
            await entering
        yield None
        return
    client = entering.result()
    try:
        yield client
    except BaseException as exc:
        if not await connection.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await connection.__aexit__(None, None, None)


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
    log.info("metrics at http://%s/metrics", format_address(args.metrics))
    try:
        yield rtt.observe_rtt
    finally:
        server.close()


_LONG_RUNNING = ("client", "forward-udp")


def _run(args: argparse.Namespace, main: Callable[[asyncio.Event], Awaitable[int]],
         on_hangup: Callable[[], None] | None = None) -> int:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop`` (and SIGHUP calling
    ``on_hangup``, when given); connection problems exit 2."""

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
        if on_hangup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, on_hangup)
        return await main(stop)

    try:
        # uvloop when installed, as the edge and connector run (tunnel/commands.py): its
        # readers and timers cost less per wakeup, which is most of what a ping through
        # an idle tunnel costs the client.
        import uvloop

        uvloop.install()
    except ImportError:
        pass
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


def _checked(command: str, check: Callable[[], T]) -> T:
    """``check()``, or exit 2 with its ToolError as ``fastproxy COMMAND: message`` (before dialling the edge)."""
    from .tools import ToolError

    try:
        return check()
    except ToolError as exc:
        print(f"fastproxy {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _resolver(command: str, text: str | None) -> Any:
    """``--resolver IP`` as an address (brackets allowed), or exit 2 saying what is wrong."""
    from .tools import ToolError, literal_address

    if text is None:
        return None

    def check() -> Any:
        address = literal_address(text)
        if address is None:
            raise ToolError(f"--resolver {text}: not an IP address (give the DNS server's address in the private "
                            "network, e.g. --resolver 10.0.0.53)")
        return address

    return _checked(command, check)


def _run_ping(args: argparse.Namespace) -> int:
    import dataclasses

    from .tools import EXIT_INTERRUPTED, check_ping_flags, ping

    _settings(args)
    options = _checked("ping", lambda: check_ping_flags(
        args.host, count=args.count, interval=args.interval, ttl=args.ttl, size=args.size, timeout=args.timeout,
        deadline=args.deadline, pattern=args.pattern, flood=args.flood, quiet=args.quiet,
        timestamps=args.timestamps, outstanding=args.outstanding, v4=args.v4, v6=args.v6))
    resolver = _resolver("ping", args.resolver)

    async def main(stop: asyncio.Event) -> int:
        async with _connect_unless_stopped(args, stop) as client:
            if client is None:
                return EXIT_INTERRUPTED
            async with _metrics(args, client) as on_rtt:
                return await ping(client, args.host, **dataclasses.asdict(options), resolver=resolver,
                                  out=sys.stdout, err=sys.stderr, stop=stop, on_rtt=on_rtt)

    return _run(args, main)


def _run_traceroute(args: argparse.Namespace) -> int:
    import dataclasses

    from .tools import EXIT_INTERRUPTED, check_traceroute_flags, traceroute

    _settings(args)
    options = _checked("traceroute", lambda: check_traceroute_flags(
        args.host, first_ttl=args.first_ttl, max_hops=args.max_hops, queries=args.queries, wait=args.wait,
        in_flight=args.in_flight, report=args.report, json_output=args.json_output, cycles=args.cycles,
        v4=args.v4, v6=args.v6))
    resolver = _resolver("traceroute", args.resolver)

    async def main(stop: asyncio.Event) -> int:
        async with _connect_unless_stopped(args, stop) as client:
            if client is None:
                return EXIT_INTERRUPTED
            async with _metrics(args, client):
                return await traceroute(client, args.host, **dataclasses.asdict(options), resolver=resolver,
                                        out=sys.stdout, err=sys.stderr, stop=stop)

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
                    log.info("forwarding udp %s -> %s through the tunnel", format_address(bound),
                             format_address(forward.remote))
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


def _warn_no_prefixes(client: Any) -> None:
    if client.control_version >= 2:
        log.warning("the edge allows this client no prefixes yet; their routes are added as soon as a "
                    "connector announces prefixes this client may reach")
    else:
        log.warning("the edge allows this client no prefixes (has a connector announced any?); this edge "
                    "speaks control protocol version 1 and sends no route updates: restart the client "
                    "after a connector is up, or upgrade the edge")


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
                    _warn_no_prefixes(client)
                bridge = TunBridge(tun, client)
                client.on_packets = bridge.from_tunnel

                def on_routes(_previous: Any, current: Any) -> None:
                    # The edge's route updates (connectors come and go) and a reconnect's welcome.
                    try:
                        added, removed = tun.set_routes(_tun_routes(current, client.edge_host))
                    except TunError as exc:
                        log.error("cannot update the routes of %s: %s", tun.name, exc)
                        return
                    if added:
                        log.info("routes added: %s", ", ".join(map(str, added)))
                    if removed:
                        log.info("routes removed: %s", ", ".join(map(str, removed)))
                    if not tun.routes:
                        _warn_no_prefixes(client)

                def on_reconnect(_: Any) -> None:
                    # The edge normally gives the same addresses back; if it could not (the old
                    # connection was not yet timed out), the device must carry the new ones, or
                    # the edge would drop every packet as spoofed.
                    addresses = _tun_addresses(client)
                    if set(map(str, tun.addresses)) != set(addresses):
                        tun.set_addresses(addresses)
                        log.warning("the edge assigned new addresses after a reconnect: %s", ", ".join(addresses))

                client.on_routes = on_routes
                client.on_reconnect = on_reconnect
                bridge.start()
                log.info("tunnel up on %s: addresses %s; routes %s", tun.name,
                         ", ".join(map(str, tun.addresses)) or "none", ", ".join(map(str, routes)) or "none")
                try:
                    await stop.wait()
                finally:
                    client.on_packets = None
                    client.on_routes = None
                    bridge.close()
                log.info("removed %s and its routes", tun.name)
        return 0

    def on_hangup() -> None:
        # A daemon's SIGHUP (a closed terminal, a reload by a service manager) must not
        # take the tunnel down; routes follow the edge by themselves.
        log.info("SIGHUP: fastproxy client keeps running; it reloads nothing (its routes follow the edge; "
                 "restart it to apply a changed configuration)")

    return _run(args, main, on_hangup)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import DemoUserError, run_demo

    try:
        return run_demo(sys.stdout, user=args.user)
    except DemoUserError as exc:
        print(f"fastproxy demo: {exc}", file=sys.stderr)
        return 2
