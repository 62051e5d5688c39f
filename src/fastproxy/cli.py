"""The ``fastproxy`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .client.commands import add_client_commands
from .tunnel.commands import add_tunnel_commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``fastproxy`` command."""
    parser = argparse.ArgumentParser(
        prog="fastproxy",
        description="ICMP and UDP through a QUIC datagram tunnel into private networks.",
    )
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "selfcheck",
        help="exercise the packet core on this machine and print what it did",
        description="Build, parse, NAT and checksum packets with the compiled core and its "
        "pure-Python twin, check that both agree, and print each step. Exits 0 only if all agree.",
    )
    add_tunnel_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastproxy`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "selfcheck":
        from .selfcheck import run_selfcheck

        return run_selfcheck(sys.stdout)
    if hasattr(args, "run"):
        return int(args.run(args))
    raise AssertionError(args.command)
