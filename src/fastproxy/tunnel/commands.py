"""The ``fastproxy edge`` and ``fastproxy connector`` commands.

Secrets stay out of ``ps``: a token argument of the form ``env:NAME`` is read from the
environment variable NAME, and ``@PATH`` from a file (one token per line; blank lines
and lines starting with ``#`` are skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal

__all__ = ["add_tunnel_commands", "parse_host_port", "resolve_tokens"]

log = logging.getLogger("fastproxy")


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_tokens(values: list[str]) -> list[str]:
    """Expand ``env:NAME`` and ``@PATH`` token arguments (ValueError if one is empty or missing)."""
    tokens: list[str] = []
    for value in values:
        if value.startswith("env:"):
            token = os.environ.get(value[4:], "")
            if not token:
                raise ValueError(f"environment variable {value[4:]} is not set or empty")
            tokens.append(token)
        elif value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                found = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            if not found:
                raise ValueError(f"no token in {value[1:]}")
            tokens.extend(found)
        elif value:
            tokens.append(value)
        else:
            raise ValueError("empty token")
    return tokens


def add_tunnel_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``edge`` and ``connector`` to the ``fastproxy`` command parser."""
    token_help = "(env:NAME reads an environment variable, @FILE a file of tokens)"
    edge = commands.add_parser(
        "edge",
        help="run the edge: the QUIC server that clients and connectors dial",
        description="Accept clients and connectors over QUIC, authenticate them by token, give each client "
        "a tunnel address, and route its datagrams to the connector that serves the destination. Without "
        "--cert/--key a self-signed certificate is made and its SHA-256 pin is logged.",
    )
    edge.add_argument("--listen", required=True, type=parse_host_port, metavar="HOST:PORT")
    edge.add_argument("--cert", metavar="FILE", help="PEM certificate (with --key)")
    edge.add_argument("--key", metavar="FILE", help="PEM private key (with --cert)")
    edge.add_argument("--connector-token", action="append", default=[], required=True, metavar="TOKEN",
                      help=f"a token connectors may present; repeatable {token_help}")
    edge.add_argument("--client-token", action="append", default=[], required=True, metavar="TOKEN",
                      help=f"a token clients may present; repeatable {token_help}")
    edge.add_argument("--client-pool", action="append", default=[], type=_network, metavar="CIDR",
                      help="where client addresses come from (one IPv4, one IPv6); the first address is the "
                      "edge's own (default 100.96.0.0/16 and fd00:fa57::/64)")
    edge.add_argument("--client-allow", action="append", default=[], type=_network, metavar="CIDR",
                      help="what clients may reach (default: every announced route)")
    edge.add_argument("--metrics", type=parse_host_port, metavar="HOST:PORT",
                      help="serve Prometheus metrics at http://HOST:PORT/metrics")
    edge.set_defaults(run=_run_edge)

    connector = commands.add_parser(
        "connector",
        help="run a connector: dial the edge and serve private prefixes",
        description="Dial out to the edge (no inbound port needed), announce the routes this connector "
        "serves, and proxy the ICMP and UDP that clients send to them. Reconnects with backoff.",
    )
    connector.add_argument("--edge", required=True, type=parse_host_port, metavar="HOST:PORT")
    connector.add_argument("--token", required=True, metavar="TOKEN", help=f"this connector's token {token_help}")
    connector.add_argument("--route", action="append", required=True, type=_network, metavar="CIDR",
                           help="a prefix this connector serves; repeatable")
    trust = connector.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca", metavar="FILE", help="verify the edge with this CA bundle")
    trust.add_argument("--pin", metavar="SHA256", help="verify the edge by its certificate's SHA-256 fingerprint")
    trust.add_argument("--insecure", action="store_true", help="do not verify the edge (tests only)")
    connector.add_argument("--backend", choices=("auto", "ping", "raw"), default="auto",
                           help="ICMP backend: ping sockets (no privilege; needs net.ipv4.ping_group_range), "
                           "raw sockets (CAP_NET_RAW), or auto (the first that works; default)")
    connector.add_argument("--metrics", type=parse_host_port, metavar="HOST:PORT",
                           help="serve Prometheus metrics at http://HOST:PORT/metrics")
    connector.set_defaults(run=_run_connector)


def _serve_forever(main: object) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await main(stop)  # type: ignore[operator]

    asyncio.run(runner())
    return 0


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_edge(args: argparse.Namespace) -> int:
    from .certs import certificate_fingerprint, generate_self_signed
    from .edge import DEFAULT_CLIENT_POOLS, Edge, EdgeConfig

    _configure_logging()
    if (args.cert is None) != (args.key is None):
        raise SystemExit("fastproxy edge: --cert and --key go together")
    try:
        client_tokens = resolve_tokens(args.client_token)
        connector_tokens = resolve_tokens(args.connector_token)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"fastproxy edge: {exc}") from None
    if args.cert is None:
        pair = generate_self_signed()
        cert_file, key_file, fingerprint = pair.cert_file, pair.key_file, pair.fingerprint
        log.info("generated a self-signed certificate; connectors and clients pin it with --pin %s", fingerprint)
    else:
        cert_file, key_file = args.cert, args.key
        with open(cert_file, "rb") as f:
            log.info("certificate SHA-256 pin: %s", certificate_fingerprint(f.read()))
    config = EdgeConfig(
        client_tokens={token: None for token in client_tokens},
        connector_tokens=tuple(connector_tokens),
        client_pools=tuple(str(n) for n in args.client_pool) or DEFAULT_CLIENT_POOLS,
        client_allow=tuple(args.client_allow),
    )

    async def main(stop: asyncio.Event) -> None:
        edge = Edge(config, cert_file=cert_file, key_file=key_file)
        await edge.start(*args.listen)
        log.info("edge listening on %s:%d", args.listen[0], edge.port)
        metrics = await _start_metrics(args.metrics, edge=edge)
        await stop.wait()
        if metrics is not None:
            metrics.close()
        edge.close()

    return _serve_forever(main)


def _run_connector(args: argparse.Namespace) -> int:
    from .connector import Connector
    from .quic import Trust

    _configure_logging()
    try:
        (token,) = resolve_tokens([args.token])
    except (OSError, ValueError) as exc:
        raise SystemExit(f"fastproxy connector: {exc}") from None
    trust = Trust(pin=args.pin) if args.pin else Trust(cafile=args.ca) if args.ca else Trust(insecure=True)
    from ..icmp import BackendUnavailable

    try:
        connector = Connector(args.edge[0], args.edge[1], token=token, routes=args.route, trust=trust,
                              icmp_backend=args.backend)
    except BackendUnavailable as exc:
        raise SystemExit(f"fastproxy connector: ICMP backend {args.backend!r} unavailable: {exc}") from None
    log.info("ICMP backend: %s", connector.icmp.proxy.backend.name)  # type: ignore[union-attr]

    async def main(stop: asyncio.Event) -> None:
        await connector.start()
        metrics = await _start_metrics(args.metrics, connector=connector)
        await stop.wait()
        if metrics is not None:
            metrics.close()
        await connector.close()

    return _serve_forever(main)


async def _start_metrics(address: tuple[str, int] | None, **objects: object) -> asyncio.Server | None:
    if address is None:
        return None
    from ..metrics import create_registry, serve_metrics

    server = await serve_metrics(create_registry(**objects), *address)  # type: ignore[arg-type]
    log.info("metrics at http://%s:%d/metrics", address[0], server.sockets[0].getsockname()[1])
    return server
