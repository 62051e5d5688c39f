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
from typing import Any

from ..config import ConfigError, add_config_argument, apply_config, host_port_arg, network_arg, setting_origin
from ..logs import add_logging_arguments, configure_logging
from .edge import Network

__all__ = ["add_tunnel_commands", "client_policies", "resolve_tokens", "trust_from_args"]

log = logging.getLogger("fastproxy")


def resolve_tokens(values: list[str], origin: str = "token") -> list[str]:
    """Expand ``env:NAME`` and ``@PATH`` token arguments. ConfigError (a ValueError) if one
    is empty, unset or unreadable, naming ``origin``: the flag or the config file's key."""
    tokens: list[str] = []
    for value in values:
        if value.startswith("env:"):
            token = os.environ.get(value[4:], "")
            if not token:
                raise ConfigError(f"{origin} {value}: environment variable {value[4:]} is not set or empty")
            tokens.append(token)
        elif value.startswith("@"):
            try:
                with open(value[1:], encoding="utf-8") as f:
                    found = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{origin} {value}: cannot read the token file: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
            if not found:
                raise ConfigError(f"{origin} {value}: no token in {value[1:]}")
            tokens.extend(found)
        elif value:
            tokens.append(value)
        else:
            raise ConfigError(f"{origin}: empty token")
    return tokens


def trust_from_args(args: argparse.Namespace) -> Any:
    """The quic.Trust that ``--pin`` / ``--ca`` / ``--insecure`` (or their config keys)
    ask for; ConfigError naming the flag or key when the pin is malformed or the CA bundle
    cannot be read or holds no PEM certificate."""
    from .certs import load_ca_bundle
    from .quic import Trust

    if args.pin:
        try:
            return Trust(pin=args.pin)
        except ValueError as exc:
            raise ConfigError(f"{setting_origin(args, 'pin')}: {exc}") from None
    if args.ca:
        try:
            load_ca_bundle(args.ca)
        except ValueError as exc:
            raise ConfigError(f"{setting_origin(args, 'ca')} {args.ca}: {exc}") from None
        return Trust(cafile=args.ca)
    return Trust(insecure=True)


def client_policies(
    tokens: list[str], policies: list[str], token_origin: str = "--client-token",
    policy_origin: str = "--client-policy",
) -> dict[str, tuple[Network, ...] | None]:
    """The edge's client table: each ``--client-token`` (None: it reaches ``client_allow``) and each
    ``--client-policy TOKEN=CIDR[,CIDR...]`` (only those prefixes). ValueError says what is wrong,
    naming the flag or config key (``*_origin``)."""
    table: dict[str, tuple[Network, ...] | None] = {token: None for token in resolve_tokens(tokens, token_origin)}
    for policy in policies:
        reference, sep, cidrs = policy.rpartition("=")
        if not sep or not reference or not cidrs:
            raise ValueError(f"client policy must be TOKEN=CIDR[,CIDR...], got {policy!r}")
        try:
            networks = tuple(ipaddress.ip_network(c.strip(), strict=True) for c in cidrs.split(","))
        except ValueError as exc:
            raise ValueError(f"client policy {reference}=...: {exc}") from None
        for token in resolve_tokens([reference], policy_origin):
            if token in table:
                raise ValueError(f"client policy {reference}: the token is given twice")
            table[token] = networks
    if not table:
        raise ValueError("no client token: give --client-token or --client-policy")
    return table


_EXAMPLES_EDGE = """examples:
  fastproxy edge --listen 0.0.0.0:4433 --connector-token env:FP_CONNECTOR_TOKEN \\
                 --client-token @/etc/fastproxy/clients --client-allow 10.0.0.0/8
  fastproxy edge --config /etc/fastproxy.toml --client-policy env:ALICE=10.0.1.0/24,fd12::/64
"""
_EXAMPLES_CONNECTOR = """examples:
  fastproxy connector --edge edge.example.net:4433 --token env:FP_CONNECTOR_TOKEN \\
                      --route 10.0.0.0/8 --pin 3f2a...c9
  fastproxy connector --config /etc/fastproxy.toml --backend raw --metrics 127.0.0.1:9101
"""


def add_tunnel_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``edge`` and ``connector`` to the ``fastproxy`` command parser.

    Flags default to None so that ``apply_config`` can tell a given flag from an unset one:
    required settings are checked there, after the config file is merged in."""
    token_help = "(env:NAME reads an environment variable, @FILE a file of tokens)"
    edge = commands.add_parser(
        "edge",
        help="run the edge: the QUIC server that clients and connectors dial",
        description="Accept clients and connectors over QUIC, authenticate them by token, give each client "
        "a tunnel address, and route its datagrams to the connector that serves the destination. Without "
        "--cert/--key a self-signed certificate is made and its SHA-256 pin is logged.",
        epilog=_EXAMPLES_EDGE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(edge)
    edge.add_argument("--listen", type=host_port_arg, metavar="HOST:PORT", help="UDP address to listen on")
    edge.add_argument("--cert", metavar="FILE", help="PEM certificate (with --key)")
    edge.add_argument("--key", metavar="FILE", help="PEM private key (with --cert)")
    edge.add_argument("--state-dir", metavar="DIR",
                      help="without --cert/--key: keep the self-signed certificate the edge makes here, so its "
                      "pin survives restarts (default /var/lib/fastproxy for root, else "
                      "$XDG_STATE_HOME/fastproxy or ~/.local/state/fastproxy)")
    edge.add_argument("--connector-token", action="append", metavar="TOKEN",
                      help=f"a token connectors may present; repeatable {token_help}")
    edge.add_argument("--client-token", action="append", metavar="TOKEN",
                      help=f"a token clients may present (they reach --client-allow); repeatable {token_help}")
    edge.add_argument("--client-policy", action="append", metavar="TOKEN=CIDR[,CIDR...]",
                      help="a client token that may reach only these prefixes; repeatable")
    edge.add_argument("--client-pool", action="append", type=network_arg, metavar="CIDR",
                      help="where client addresses come from (one IPv4, one IPv6); the first address is the "
                      "edge's own (default 100.96.0.0/16 and fd00:fa57::/64)")
    edge.add_argument("--client-allow", action="append", type=network_arg, metavar="CIDR",
                      help="what clients may reach (default: every announced route)")
    edge.add_argument("--max-connections-per-token", type=int, metavar="N",
                      help="clients one token may have connected at once (default 64; 0: no limit)")
    edge.add_argument("--metrics", type=host_port_arg, metavar="HOST:PORT",
                      help="serve Prometheus metrics at http://HOST:PORT/metrics")
    add_logging_arguments(edge)
    edge.set_defaults(run=_run_edge)

    connector = commands.add_parser(
        "connector",
        help="run a connector: dial the edge and serve private prefixes",
        description="Dial out to the edge (no inbound port needed), announce the routes this connector "
        "serves, and proxy the ICMP and UDP that clients send to them. Reconnects with backoff.",
        epilog=_EXAMPLES_CONNECTOR, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(connector)
    connector.add_argument("--edge", type=host_port_arg, metavar="HOST:PORT")
    connector.add_argument("--token", metavar="TOKEN", help=f"this connector's token {token_help}")
    connector.add_argument("--route", action="append", type=network_arg, metavar="CIDR",
                           help="a prefix this connector serves; repeatable")
    connector.add_argument("--ca", metavar="FILE", help="verify the edge with this CA bundle")
    connector.add_argument("--pin", metavar="SHA256", help="verify the edge by its certificate's SHA-256 fingerprint")
    connector.add_argument("--insecure", action="store_true", default=None,
                           help="do not verify the edge (tests only)")
    connector.add_argument("--backend", choices=("auto", "ping", "raw"),
                           help="ICMP backend: ping sockets (no privilege; needs net.ipv4.ping_group_range), "
                           "raw sockets (CAP_NET_RAW), or auto (the first that works; default)")
    connector.add_argument("--metrics", type=host_port_arg, metavar="HOST:PORT",
                           help="serve Prometheus metrics at http://HOST:PORT/metrics")
    add_logging_arguments(connector)
    connector.set_defaults(run=_run_connector)


def _configured(args: argparse.Namespace, section: str) -> None:
    """Merge --config under the flags and set up logging; exit with the config error's text."""
    try:
        apply_config(args, section)
    except ConfigError as exc:
        raise SystemExit(f"fastproxy {section}: {exc}") from None
    configure_logging(args.log_format, args.verbose)


def _serve_forever(main: object, role: str) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(sig: signal.Signals) -> None:
            if not stop.is_set():
                log.info("%s stopping (%s)", role, sig.name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stopping, sig)
            except (NotImplementedError, RuntimeError):
                pass
        await main(stop)  # type: ignore[operator]

    asyncio.run(runner())
    return 0


# Tokens are secrets compared as given: shorter than this is guessable (`openssl rand -hex 16`).
MIN_TOKEN_BYTES = 16


def _edge_tokens(args: argparse.Namespace) -> tuple[dict[str, tuple[Network, ...] | None], list[str]]:
    """The client table and the connector tokens, checked: one token for both roles is
    refused (a connector token would let a client announce routes, and back), short
    tokens are warned about."""
    client_tokens = client_policies(args.client_token or [], args.client_policy or [],
                                    setting_origin(args, "client_token"), setting_origin(args, "client_policy"))
    connector_tokens = resolve_tokens(args.connector_token, setting_origin(args, "connector_token"))
    if set(client_tokens).intersection(connector_tokens):
        raise ConfigError("the same token is given for connectors (connector_token) and clients (client_token / "
                          "client_policy): give each role its own")
    short = [t for t in (*client_tokens, *connector_tokens) if len(t.encode()) < MIN_TOKEN_BYTES]
    if short:
        log.warning("%d token(s) shorter than %d bytes: easy to guess; make tokens with `openssl rand -hex 16`",
                    len(short), MIN_TOKEN_BYTES)
    return client_tokens, connector_tokens


def _run_edge(args: argparse.Namespace) -> int:
    from ..errors import CertificateFileError
    from .certs import check_key_pair, default_state_dir
    from .edge import DEFAULT_CLIENT_POOLS, Edge, EdgeConfig

    _configured(args, "edge")
    if (args.cert is None) != (args.key is None):
        raise SystemExit("fastproxy edge: --cert and --key go together")
    try:
        client_tokens, connector_tokens = _edge_tokens(args)
    except ValueError as exc:
        raise SystemExit(f"fastproxy edge: {exc}") from None
    config = EdgeConfig(
        client_tokens=client_tokens,
        connector_tokens=tuple(connector_tokens),
        client_pools=tuple(str(n) for n in args.client_pool or ()) or DEFAULT_CLIENT_POOLS,
        client_allow=tuple(args.client_allow or ()),
        max_connections_per_token=args.max_connections_per_token,
    )

    state_dir = None if args.cert is not None else (args.state_dir or default_state_dir())
    # Checked before the loop starts, so a wrong file is one line naming it and the fix,
    # not a traceback from the TLS stack or an edge whose every handshake fails.
    try:
        if args.cert is not None:  # here first, for messages that name the flags or config keys
            check_key_pair(args.cert, args.key, (setting_origin(args, "cert"), setting_origin(args, "key")))
        edge = Edge(config, cert_file=args.cert, key_file=args.key, state_dir=state_dir)
    except CertificateFileError as exc:
        raise SystemExit(f"fastproxy edge: {exc}") from None
    if state_dir is None:
        log.info("certificate SHA-256 pin: %s", edge.fingerprint)
    else:
        made = "made a new" if edge.identity_created else "reusing the"
        log.info("%s self-signed certificate kept in %s; connectors and clients pin it with --pin %s",
                 made, state_dir, edge.fingerprint)

    async def main(stop: asyncio.Event) -> None:
        try:
            await edge.start(*args.listen)
        except OSError as exc:
            raise SystemExit(f"fastproxy edge: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}") from None
        try:
            metrics = await _start_metrics(args.metrics, "edge", edge=edge)
        except BaseException:
            edge.close()
            raise
        log.info("edge listening on %s:%d", args.listen[0], edge.port)
        await stop.wait()
        if metrics is not None:
            metrics.close()
        edge.close()

    return _serve_forever(main, "edge")


def _run_connector(args: argparse.Namespace) -> int:
    from .connector import Connector

    _configured(args, "connector")
    try:
        (token,) = resolve_tokens([args.token], setting_origin(args, "token"))
        trust = trust_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"fastproxy connector: {exc}") from None
    from ..icmp import BackendUnavailable

    try:
        connector = Connector(args.edge[0], args.edge[1], token=token, routes=args.route, trust=trust,
                              icmp_backend=args.backend)
    except BackendUnavailable as exc:
        raise SystemExit(f"fastproxy connector: ICMP backend {args.backend!r} unavailable: {exc}") from None
    log.info("ICMP backend: %s", connector.icmp.proxy.backend.name)  # type: ignore[union-attr]

    async def main(stop: asyncio.Event) -> None:
        metrics = await _start_metrics(args.metrics, "connector", connector=connector)
        await connector.start()
        await stop.wait()
        if metrics is not None:
            metrics.close()
        await connector.close()

    return _serve_forever(main, "connector")


async def _start_metrics(address: tuple[str, int] | None, role: str, **objects: object) -> asyncio.Server | None:
    """The metrics endpoint, or exit with one line when its port cannot be had."""
    if address is None:
        return None
    from ..metrics import create_registry, serve_metrics

    try:
        server = await serve_metrics(create_registry(**objects), *address)  # type: ignore[arg-type]
    except OSError as exc:
        raise SystemExit(f"fastproxy {role}: --metrics {address[0]}:{address[1]}: cannot listen: "
                         f"{os.strerror(exc.errno) if exc.errno else exc} (another process on that port? choose another)") from None
    log.info("metrics at http://%s:%d/metrics", address[0], server.sockets[0].getsockname()[1])
    return server
