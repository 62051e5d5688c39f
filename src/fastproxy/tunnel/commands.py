"""The ``fastproxy edge`` and ``fastproxy connector`` commands.

Secrets stay out of ``ps``: a token argument of the form ``env:NAME`` is read from the
environment variable NAME, and ``@PATH`` from a file (one token per line; blank lines
and lines starting with ``#`` are skipped).

SIGHUP reloads the configuration without dropping connections: the ``--config`` file
(and every ``@FILE`` / ``env:NAME`` token source) is read again and merged under the
flags of the command line, as at start. The edge applies client tokens, their policies,
connector tokens, ``max_connections_per_token`` and the log level; the connector its
routes and the log level. What changed is logged (never a token itself); settings that
need a restart (the listening address, certificates, pools, the edge to dial...) are
named and keep their old value. A configuration that fails to load is logged and the
old one stays in force.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import ipaddress
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from ..config import ConfigError, add_config_argument, apply_config, host_port_arg, network_arg, setting_origin
from ..logs import add_logging_arguments, configure_logging, format_address
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
    tokens: list[str], policies: list[str], token_origin: str | None = None, policy_origin: str | None = None,
    *, role: str = "client",
) -> dict[str, tuple[Network, ...] | None]:
    """The edge's token table for ``role`` (``client`` or ``connector``): each
    ``--client-token`` (None: it reaches ``client_allow``; for connectors: it announces
    anything) and each ``--client-policy TOKEN=CIDR[,CIDR...]`` (only those prefixes; for
    connectors, ``--connector-policy``). ValueError says what is wrong, naming the flag or
    config key (``*_origin``; default: the role's flags)."""
    token_origin = token_origin or f"--{role}-token"
    policy_origin = policy_origin or f"--{role}-policy"
    table: dict[str, tuple[Network, ...] | None] = {token: None for token in resolve_tokens(tokens, token_origin)}
    for policy in policies:
        reference, sep, cidrs = policy.rpartition("=")
        if not sep or not reference or not cidrs:
            raise ValueError(f"{role} policy must be TOKEN=CIDR[,CIDR...], got {policy!r}")
        try:
            networks = tuple(ipaddress.ip_network(c.strip(), strict=True) for c in cidrs.split(","))
        except ValueError as exc:
            raise ValueError(f"{role} policy {reference}=...: {exc}") from None
        for token in resolve_tokens([reference], policy_origin):
            if token in table:
                raise ValueError(f"{role} policy {reference}: the token is given twice")
            table[token] = networks
    if not table:
        raise ValueError(f"no {role} token: give --{role}-token or --{role}-policy")
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
    edge.add_argument("--connector-policy", action="append", metavar="TOKEN=CIDR[,CIDR...]",
                      help="a connector token that may announce only prefixes inside these; repeatable")
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


def _configured(args: argparse.Namespace, section: str) -> argparse.Namespace:
    """Merge --config under the flags and set up logging; exit with the config error's text.
    Returns a copy of the command line as given, for reloads (``_reloaded``)."""
    command_line = copy.copy(args)
    try:
        apply_config(args, section)
    except ConfigError as exc:
        raise SystemExit(f"fastproxy {section}: {exc}") from None
    configure_logging(args.log_format, args.verbose)
    return command_line


def _reloaded(command_line: argparse.Namespace, section: str) -> argparse.Namespace:
    """The settings as a start now would make them: the config file read again and merged
    under the same flags. Raises ConfigError."""
    return apply_config(copy.copy(command_line), section)


def _reload_logging(old: argparse.Namespace, new: argparse.Namespace, changes: list[str]) -> None:
    if (old.log_format, bool(old.verbose)) != (new.log_format, bool(new.verbose)):
        configure_logging(new.log_format, new.verbose)
        changes.append(f"log level {'debug' if new.verbose else 'info'}, format {new.log_format}")


def _needs_restart(old: argparse.Namespace, new: argparse.Namespace, keys: tuple[str, ...]) -> None:
    """Warn about each setting in ``keys`` that changed but applies only at start."""
    for key in keys:
        if getattr(old, key) != getattr(new, key):
            log.warning("SIGHUP: %s changed, which needs a restart; the running value stays", key)


def _serve_forever(main: object, role: str, on_hangup: Callable[[], None] | None = None) -> int:
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

        handlers: list[tuple[Any, Callable[[], None]]] = [
            (signal.SIGINT, lambda: stopping(signal.SIGINT)), (signal.SIGTERM, lambda: stopping(signal.SIGTERM))]
        if on_hangup is not None and hasattr(signal, "SIGHUP"):
            handlers.append((signal.SIGHUP, on_hangup))
        for sig, handler in handlers:
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):
                pass
        await main(stop)  # type: ignore[operator]

    asyncio.run(runner())
    return 0


# Tokens are secrets compared as given: shorter than this is guessable (`openssl rand -hex 16`).
MIN_TOKEN_BYTES = 16


def _run_edge(args: argparse.Namespace) -> int:
    from ..errors import CertificateFileError
    from .certs import check_key_pair, default_state_dir
    from .edge import Edge

    command_line = _configured(args, "edge")
    if (args.cert is None) != (args.key is None):
        raise SystemExit("fastproxy edge: --cert and --key go together")
    try:
        config = _edge_config(args)
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise SystemExit(f"fastproxy edge: {exc}") from None
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
    running = args

    def reload() -> None:
        nonlocal running
        try:
            fresh = _reloaded(command_line, "edge")
            new_config = _edge_config(fresh)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", exc)
            return
        _needs_restart(running, fresh, ("listen", "cert", "key", "client_pool", "metrics"))
        new_config.client_pools = edge.router.config.client_pools
        changes = _edge_changes(edge.router.config, new_config)
        edge.reconfigure(new_config)
        _reload_logging(running, fresh, changes)
        running = fresh
        log.info("SIGHUP: configuration reloaded%s: %s", f" from {fresh.config}" if fresh.config else "",
                 "; ".join(changes) or "nothing changed")

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
        log.info("edge listening on %s", format_address((args.listen[0], edge.port)))
        await stop.wait()
        if metrics is not None:
            metrics.close()
        edge.close()

    return _serve_forever(main, "edge", reload)


def _edge_config(args: argparse.Namespace) -> Any:
    """The EdgeConfig of these (merged) settings, checked: one token for both roles is
    refused (a connector token would let a client announce routes, and back), short
    tokens are warned about. ValueError (ConfigError naming the flag or config key) /
    OSError say what is wrong."""
    from .edge import DEFAULT_CLIENT_POOLS, EdgeConfig

    clients = client_policies(args.client_token or [], args.client_policy or [],
                              setting_origin(args, "client_token"), setting_origin(args, "client_policy"))
    connectors = client_policies(args.connector_token or [], args.connector_policy or [],
                                 setting_origin(args, "connector_token"), setting_origin(args, "connector_policy"),
                                 role="connector")
    if set(clients).intersection(connectors):
        raise ConfigError("the same token is given for connectors (connector_token / connector_policy) and clients "
                          "(client_token / client_policy): give each role its own")
    short = [t for t in (*clients, *connectors) if len(t.encode()) < MIN_TOKEN_BYTES]
    if short:
        log.warning("%d token(s) shorter than %d bytes: easy to guess; make tokens with `openssl rand -hex 16`",
                    len(short), MIN_TOKEN_BYTES)
    return EdgeConfig(
        client_tokens=clients,
        connector_tokens=tuple(token for token, allowed in connectors.items() if allowed is None),
        connector_policies={token: allowed for token, allowed in connectors.items() if allowed is not None},
        client_pools=tuple(str(n) for n in args.client_pool or ()) or DEFAULT_CLIENT_POOLS,
        client_allow=tuple(args.client_allow or ()),
        max_connections_per_token=args.max_connections_per_token,
    )


def _edge_changes(old: Any, new: Any) -> list[str]:
    """What a reload changes, in words, without naming any token (they are secrets)."""
    changes = []
    added = len(new.client_tokens.keys() - old.client_tokens.keys())
    removed = len(old.client_tokens.keys() - new.client_tokens.keys())
    policies = sum(1 for token in new.client_tokens.keys() & old.client_tokens.keys()
                   if new.client_tokens[token] != old.client_tokens[token])
    if added or removed:
        changes.append(f"client tokens: {added} added, {removed} removed")
    if policies:
        changes.append(f"client policies: {policies} changed")
    if new.client_allow != old.client_allow:
        changes.append("client_allow: " + (", ".join(map(str, new.client_allow)) or "every announced route"))
    old_connectors = dict.fromkeys(old.connector_tokens) | dict(old.connector_policies)
    new_connectors = dict.fromkeys(new.connector_tokens) | dict(new.connector_policies)
    added = len(new_connectors.keys() - old_connectors.keys())
    removed = len(old_connectors.keys() - new_connectors.keys())
    policies = sum(1 for token in new_connectors.keys() & old_connectors.keys()
                   if new_connectors[token] != old_connectors[token])
    if added or removed:
        changes.append(f"connector tokens: {added} added, {removed} removed")
    if policies:
        changes.append(f"connector policies: {policies} changed")
    if new.max_connections_per_token != old.max_connections_per_token:
        changes.append(f"max_connections_per_token {new.max_connections_per_token}")
    return changes


def _run_connector(args: argparse.Namespace) -> int:
    from .connector import Connector

    command_line = _configured(args, "connector")
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
    running = args

    def reload() -> None:
        nonlocal running
        try:
            fresh = _reloaded(command_line, "connector")
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", exc)
            return
        _needs_restart(running, fresh, ("edge", "token", "ca", "pin", "insecure", "backend", "metrics"))
        changes: list[str] = []
        old_routes, new_routes = list(connector.routes), list(dict.fromkeys(fresh.route))
        if new_routes != old_routes:
            added = [str(r) for r in new_routes if r not in old_routes]
            removed = [str(r) for r in old_routes if r not in new_routes]
            changes.append("routes " + ", ".join(map(str, new_routes))
                           + (f" (added {', '.join(added)})" if added else "")
                           + (f" (removed {', '.join(removed)})" if removed else ""))
            connector.update_routes(new_routes)
        _reload_logging(running, fresh, changes)
        running = fresh
        log.info("SIGHUP: configuration reloaded%s: %s", f" from {fresh.config}" if fresh.config else "",
                 "; ".join(changes) or "nothing changed")

    async def main(stop: asyncio.Event) -> None:
        metrics = await _start_metrics(args.metrics, "connector", connector=connector)
        await connector.start()
        await stop.wait()
        if metrics is not None:
            metrics.close()
        await connector.close()

    return _serve_forever(main, "connector", reload)


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
    log.info("metrics at http://%s/metrics", format_address((address[0], server.sockets[0].getsockname()[1])))
    return server
