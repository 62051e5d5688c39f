"""TOML configuration for the long-running commands, with flags that override it.

A config file has one table per role; a command reads its own (``[edge]``,
``[connector]``, or ``[client]`` for ``client``, ``ping``, ``traceroute`` and
``forward-udp``), so one file can configure a whole host::

    [edge]
    listen = "0.0.0.0:4433"
    client_token = ["env:FP_CLIENT_TOKEN"]
    connector_token = ["@/etc/fastproxy/connector.tokens"]

    [connector]
    edge = "edge.example.net:4433"
    token = "env:FP_CONNECTOR_TOKEN"
    route = ["10.0.0.0/8", "fd12::/48"]
    pin = "3f2a..."

Keys are the long flag names with ``_`` for ``-``. Values from the file come first, then
any flag given on the command line replaces them, then defaults fill the rest. Every
error names the file, the table, the key and what is wrong (unknown keys get a
did-you-mean).

Commands use it in three steps: ``add_config_argument(parser)``; flags with
``default=None`` (and ``required`` left to the schema); then
``apply_config(parser, args, SECTION)`` after ``parse_args``.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "SCHEMAS",
    "ConfigError",
    "Schema",
    "Setting",
    "add_config_argument",
    "apply_config",
    "load_config_file",
    "host_port_arg",
    "network_arg",
    "parse_host_port",
    "setting_origin",
]


class ConfigError(ValueError):
    """A config file (or the flags merged with it) is wrong; the message says where and why."""


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range (0-65535) in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def host_port_arg(text: str) -> tuple[str, int]:
    """argparse ``type=`` for HOST:PORT flags."""
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def network_arg(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """argparse ``type=`` for CIDR flags (host bits must be zero)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _expect(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"expected {what}, got boolean {value!r}")
    if not isinstance(value, kind):
        raise ValueError(f"expected {what}, got {_type_name(value)} {value!r}")
    return value


def _string(value: object) -> str:
    return _expect(value, str, "a string")  # type: ignore[no-any-return]


def _host_port(value: object) -> tuple[str, int]:
    return parse_host_port(_expect(value, str, 'a "HOST:PORT" string'))


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _expect(value, str, 'a CIDR string such as "10.0.0.0/8"')
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid network: {exc}") from None


_CONVERTERS: dict[str, Callable[[object], Any]] = {
    "str": _string,
    "path": _string,
    "bool": lambda v: _expect(v, bool, "true or false"),
    "int": lambda v: _expect(v, int, "an integer"),
    "float": lambda v: float(_expect(v, (int, float), "a number")),
    "host_port": _host_port,
    "cidr": _network,
}


@dataclass(frozen=True)
class Setting:
    """One key: ``kind`` is str, path, bool, int, float, host_port or cidr, and
    ``many`` makes it an array of those. ``key`` is also the argparse dest."""

    key: str
    kind: str
    help: str
    default: Any = None
    many: bool = False
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None

    def convert(self, value: object) -> Any:
        """The file's value as the flag would give it; ValueError says what is wrong."""
        convert = _CONVERTERS[self.kind]
        if self.many:
            items = _expect(value, list, f"an array of {self.kind} values")
            converted = []
            for index, item in enumerate(items):
                try:
                    converted.append(convert(item))
                except ValueError as exc:
                    raise ValueError(f"item {index}: {exc}") from None
            return converted
        result = convert(value)
        if self.choices and result not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {result!r}")
        self.check_minimum(result)
        return result

    def check_minimum(self, value: Any) -> None:
        """ValueError when ``value`` is below ``minimum`` (a negative limit, say)."""
        if self.minimum is not None and value is not None and value < self.minimum:
            raise ValueError(f"must be {self.minimum} or more, got {value}")


@dataclass(frozen=True)
class Schema:
    """The keys of one config table, and groups of which exactly one must be set."""

    section: str
    settings: tuple[Setting, ...]
    exactly_one_of: tuple[tuple[str, ...], ...] = ()
    by_key: dict[str, Setting] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", {s.key: s for s in self.settings})


_LOGGING = (
    Setting("log_format", "str", "log format", default="human", choices=("human", "json")),
    Setting("verbose", "bool", "debug logging", default=False),
)
_METRICS = Setting("metrics", "host_port", "serve Prometheus metrics at HOST:PORT (/metrics)")
_TRUST = (
    Setting("ca", "path", "verify the edge with this CA bundle (PEM)"),
    Setting("pin", "str", "verify the edge by its certificate's SHA-256 fingerprint"),
    Setting("insecure", "bool", "do not verify the edge (tests only)", default=False),
)

SCHEMAS: dict[str, Schema] = {
    "edge": Schema("edge", (
        Setting("listen", "host_port", "address and UDP port to listen on", required=True),
        Setting("cert", "path", "PEM certificate (with key); default: a self-signed one, pin logged"),
        Setting("key", "path", "PEM private key (with cert)"),
        Setting("connector_token", "str", "tokens connectors may present (env:NAME, @FILE)", many=True),
        Setting("connector_policy", "str", "per-connector policy: TOKEN=CIDR[,CIDR...] (TOKEN as in "
                "connector_token); that connector may announce only prefixes inside these", many=True),
        Setting("client_token", "str", "tokens clients may present (env:NAME, @FILE); they reach client_allow",
                many=True),
        Setting("client_policy", "str", "per-client policy: TOKEN=CIDR[,CIDR...] (TOKEN as in client_token); "
                "that client may reach only these prefixes", many=True),
        Setting("client_pool", "cidr", "client address pools (one IPv4, one IPv6)", many=True),
        Setting("client_allow", "cidr", "what clients may reach (default: every announced route)", many=True),
        Setting("max_connections_per_token", "int", "clients one token may have connected at once (0: no limit)",
                default=64, minimum=0),
        Setting("state_dir", "path", "where the edge keeps the certificate it makes (default: /var/lib/fastproxy "
                "for root, else $XDG_STATE_HOME/fastproxy)"),
        _METRICS,
        *_LOGGING,
    )),
    "connector": Schema("connector", (
        Setting("edge", "host_port", "the edge's HOST:PORT", required=True),
        Setting("token", "str", "this connector's token (env:NAME, @FILE)", required=True),
        Setting("route", "cidr", "prefixes this connector serves", many=True, required=True),
        *_TRUST,
        Setting("backend", "str", "ICMP backend", default="auto", choices=("auto", "ping", "raw")),
        _METRICS,
        *_LOGGING,
    ), exactly_one_of=(("ca", "pin", "insecure"),)),
    "client": Schema("client", (
        Setting("edge", "host_port", "the edge's HOST:PORT", required=True),
        Setting("token", "str", "this client's token (env:NAME, @FILE)", required=True),
        *_TRUST,
        Setting("tun", "str", "TUN device name (%d: the kernel picks a number)", default="fastproxy%d"),
        _METRICS,
        *_LOGGING,
    ), exactly_one_of=(("ca", "pin", "insecure"),)),
}


def load_config_file(path: str, schema: Schema) -> dict[str, Any]:
    """The ``[section]`` table of the TOML file at ``path``, checked and converted.

    Raises ConfigError naming the file, key and problem."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file before it parses
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at position "
                          f"{exc.start}); save the file as UTF-8") from None
    for name, value in document.items():
        if name not in SCHEMAS or not isinstance(value, dict):
            hint = _did_you_mean(name, SCHEMAS)
            raise ConfigError(f"{path}: unknown top-level key {name!r}{hint}; settings go in a table: "
                              + ", ".join(f"[{s}]" for s in SCHEMAS))
    table = document.get(schema.section, {})
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = schema.by_key.get(key)
        if setting is None:
            hint = _did_you_mean(key, schema.by_key) or _did_you_mean(key.replace("-", "_"), schema.by_key)
            raise ConfigError(f"{path}: [{schema.section}] unknown key {key!r}{hint}")
        try:
            values[key] = setting.convert(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: [{schema.section}] {key}: {exc}") from None
    return values


def _did_you_mean(name: str, known: Sequence[str] | dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` to a command's parser."""
    parser.add_argument("--config", metavar="FILE",
                        help="read settings from this TOML file (its table for this command); flags override it")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def apply_config(args: argparse.Namespace, section: str) -> argparse.Namespace:
    """Merge the config file named by ``args.config`` (if any) under the flags in ``args``,
    fill defaults and check required keys; returns ``args``. Flags must default to None
    so an unset flag can be told from one given. Raises ConfigError."""
    schema = SCHEMAS[section]
    path = getattr(args, "config", None)
    from_file = load_config_file(path, schema) if path else {}
    given = {s.key for s in schema.settings if getattr(args, s.key, None) is not None}
    for key in given:
        try:
            schema.by_key[key].check_minimum(getattr(args, key))
        except ValueError as exc:
            raise ConfigError(f"{_flag(key)} {exc}") from None
    for group in schema.exactly_one_of:
        if given.intersection(group):  # a flag replaces the file's whole choice
            for key in group:
                from_file.pop(key, None)
    origins: dict[str, str] = {}
    for setting in schema.settings:
        if setting.key not in given:
            setattr(args, setting.key, from_file.get(setting.key, setting.default))
            if setting.key in from_file:
                origins[setting.key] = f"{path}: [{section}] {setting.key}"
    args.config_origins = origins
    where = f" or set it in [{section}] of {path}" if path else " (or --config FILE)"
    for setting in schema.settings:
        if setting.required and getattr(args, setting.key) in (None, []):
            raise ConfigError(f"{_flag(setting.key)} is required{where}")
    for group in schema.exactly_one_of:
        given = [key for key in group if getattr(args, key) not in (None, False)]
        if len(given) != 1:
            options = ", ".join(_flag(key) for key in group)
            problem = "none is given" if not given else "got " + " and ".join(_flag(k) for k in given)
            raise ConfigError(f"exactly one of {options} is needed ({problem}){where if not given else ''}")
    return args


def setting_origin(args: argparse.Namespace, key: str) -> str:
    """Where the value of ``key`` came from, for error messages: ``FILE: [table] key`` when
    apply_config took it from the config file, else the flag (``--key-name``)."""
    return getattr(args, "config_origins", {}).get(key) or _flag(key)
