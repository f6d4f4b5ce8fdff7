"""`vod`: the umbrella command (media store tools, the local demo)."""

from __future__ import annotations

from typing import Sequence

from vod import __version__
from vod.cliutil import ArgumentParser, run
from vod.media import cli as media_cli


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vod", description="Fault-tolerant video on demand. "
                            "See also vod-coordinator, vod-server, vod-client and vod-admin.")
    parser.add_argument("--version", action="version", version=f"vod {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    media_cli.add_parsers(sub)
    from vod import demo
    demo.add_parser(sub)
    return parser


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main() -> int:
    return run(entry, prog="vod")
