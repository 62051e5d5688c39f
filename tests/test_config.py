"""The TOML config: file values, flag overrides, defaults, and errors that name the
file, the key and the problem."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, add_config_argument, apply_config, load_config_file, SCHEMAS


def connector_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_argument(parser)
    parser.add_argument("--edge")
    parser.add_argument("--token")
    parser.add_argument("--route", action="append")
    parser.add_argument("--ca")
    parser.add_argument("--pin")
    parser.add_argument("--insecure", action="store_true", default=None)
    parser.add_argument("--backend")
    parser.add_argument("--metrics")
    parser.add_argument("--log-format")
    parser.add_argument("--verbose", "-v", action="store_true", default=None)
    return parser


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fastproxy.toml"
    path.write_text(text)
    return str(path)


GOOD = """
[edge]
listen = "0.0.0.0:4433"
client_token = ["a"]
connector_token = ["b"]

[connector]
edge = "edge.example.net:4433"
token = "env:FP_TOKEN"
route = ["10.0.0.0/8", "fd12::/48"]
pin = "ab12"
backend = "ping"
"""


def test_file_values_then_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    args = apply_config(connector_parser().parse_args(["--config", path]), "connector")
    assert args.edge == ("edge.example.net", 4433)
    assert args.token == "env:FP_TOKEN"
    assert args.route == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd12::/48")]
    assert args.pin == "ab12" and args.ca is None and args.insecure is False
    assert args.backend == "ping"
    assert args.log_format == "human" and args.verbose is False and args.metrics is None


def test_flags_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    argv = ["--config", path, "--backend", "raw", "--insecure", "--route", "192.0.2.0/24", "-v"]
    args = apply_config(connector_parser().parse_args(argv), "connector")
    assert args.backend == "raw"
    assert args.insecure is True and args.pin is None  # the flag replaced the file's trust choice
    assert args.route == ["192.0.2.0/24"]  # flags keep argparse's own conversion
    assert args.verbose is True


def test_flags_alone_without_file() -> None:
    args = apply_config(connector_parser().parse_args(["--edge", "e:1", "--token", "t", "--route", "10.0.0.0/8",
                                                       "--insecure"]), "connector")
    assert args.backend == "auto"


@pytest.mark.parametrize(("text", "message"), [
    ('[connector]\nedg = "e:1"\n', "[connector] unknown key 'edg' (did you mean 'edge'?)"),
    ('[connector]\nroute-x = []\n', "[connector] unknown key 'route-x' (did you mean 'route'?)"),
    ('[conector]\n', "unknown top-level key 'conector' (did you mean 'connector'?)"),
    ('edge = "x"\n', "unknown top-level key 'edge'"),
    ('[connector]\nedge = 4433\n', '[connector] edge: expected a "HOST:PORT" string, got integer 4433'),
    ('[connector]\nedge = "nohost"\n', "[connector] edge: expected HOST:PORT, got 'nohost'"),
    ('[connector]\nroute = "10.0.0.0/8"\n', "[connector] route: expected an array of cidr values, got string"),
    ('[connector]\nroute = ["10.0.0.1/8"]\n', "[connector] route: item 0: '10.0.0.1/8' is not a valid network: "
                                              "10.0.0.1/8 has host bits set"),
    ('[connector]\nroute = ["bogus"]\n', "is not a valid network"),
    ('[connector]\ninsecure = "yes"\n', "[connector] insecure: expected true or false, got string 'yes'"),
    ('[connector]\nbackend = "fast"\n', "[connector] backend: expected one of auto, ping, raw, got 'fast'"),
    ('[connector\n', "not valid TOML"),
])
def test_errors_name_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path, SCHEMAS["connector"])
    assert str(info.value).startswith(path + ": ")
    assert message in str(info.value)


def test_file_not_utf8(tmp_path: Path) -> None:
    """Found by fuzzing (tests/fuzz, target config): tomllib lets UnicodeDecodeError out."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('[connector]\ntoken = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path), SCHEMAS["connector"])
    assert str(info.value).startswith(f"{path}: not valid TOML: not UTF-8")
    assert "byte 0xe9 at position 24" in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="/nonexistent.toml: cannot read"):
        load_config_file("/nonexistent.toml", SCHEMAS["edge"])


def test_required_and_exactly_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[connector]\nedge = "e:1"\nroute = ["10.0.0.0/8"]\ninsecure = true\n')
    with pytest.raises(ConfigError, match=r"--token is required or set it in \[connector\] of "):
        apply_config(connector_parser().parse_args(["--config", path]), "connector")
    with pytest.raises(ConfigError, match=r"exactly one of --ca, --pin, --insecure is needed \(none is given\)"):
        apply_config(connector_parser().parse_args(["--edge", "e:1", "--token", "t", "--route", "10.0.0.0/8"]),
                     "connector")
    path = write(tmp_path, '[connector]\nedge = "e:1"\ntoken = "t"\nroute = ["10.0.0.0/8"]\nca = "x"\npin = "y"\n')
    with pytest.raises(ConfigError, match="got --ca and --pin"):
        apply_config(connector_parser().parse_args(["--config", path]), "connector")


def test_other_sections_are_not_read(tmp_path: Path) -> None:
    """One file serves a whole host: the edge's table is not checked by the connector."""
    path = write(tmp_path, GOOD + '\n[client]\nedge = "e:1"\ntoken = "t"\ninsecure = true\ntun = "fp0"\n')
    assert load_config_file(path, SCHEMAS["client"])["tun"] == "fp0"
    assert "listen" in load_config_file(path, SCHEMAS["edge"])
