"""`vod-server`: a video server of one domain."""

from __future__ import annotations

import argparse
import logging
import re
import socket
from typing import Sequence

from vod.addr import parse_addr, parse_addr_list
from vod.cliutil import ArgumentParser, run
from vod.clock import MonotonicClock
from vod.errors import UsageError, VodError
from vod.logsetup import setup_logging
from vod.secrets import add_secret_argument, read_secret
from vod.server.session import DEFAULT_WAIT

log = logging.getLogger("vod.server")

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmg]i?)?b?(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_rate(text: str) -> float:
    """"500K" -> 500000.0 bytes/s. K, M, G are powers of 1000, Ki, Mi, Gi of 1024; "B" and "/s" may follow."""
    match = _RATE.match(text)
    if not match:
        raise UsageError(f"--rate-limit: {text!r} is not a rate; write bytes per second, e.g. 500K, 2M, 1.5Mi")
    rate = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if rate <= 0:
        raise UsageError(f"--rate-limit must be above zero, not {text!r} (leave it out for no limit)")
    return rate


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except the "None" of required flags and of flags whose help says what absence means."""

    def _get_help_string(self, action):
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="vod-server", formatter_class=_HelpFormatter, description=(
        "Run a video server: join domain --domain through the coordinators with every movie of the store "
        "--media, and stream to clients, over TCP at --listen, the frames the coordinator's strategies assign "
        "to this server. Each client connection says HELLO for one request (RUID) and moves a credit; the "
        "server sends its stripe's frames in order below the credit, then END. Logs one line per stream "
        "start and end."))
    p.add_argument("--domain", required=True, help="the domain to join")
    p.add_argument("--coordinators", required=True, metavar="HOST:PORT,...",
                   help="listen addresses of the coordinator replicas (any of them; the primary is found)")
    p.add_argument("--media", required=True, metavar="STORE", help="movie store directory (vod media ingest --store)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="data address clients connect to; the coordinator tells them this address")
    p.add_argument("--advertise", metavar="HOST:PORT", default=None,
                   help="the data address to tell clients, when it is not --listen (e.g. listening on 0.0.0.0)")
    p.add_argument("--id", dest="server_id", default=None,
                   help="this server's member id, unique in the domain (default: server-HOSTNAME-PORT)")
    p.add_argument("--rate-limit", metavar="BYTES/S", default=None,
                   help="cap on this server's output over all its streams, e.g. 500K, 2M, 1.5Mi "
                        "(K/M/G = 1000s, Ki/Mi/Gi = 1024s; default: no cap)")
    p.add_argument("--capacity", type=int, default=1,
                   help="relative bandwidth share this server declares; strategies give it frames in proportion")
    p.add_argument("--strategy-wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                   help="how long a client's HELLO may wait for a strategy naming this server before an ERROR")
    add_secret_argument(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity")
    return p


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    coordinators = parse_addr_list(args.coordinators, "--coordinators")
    if args.listen.rpartition(":")[2] != "0":
        parse_addr(args.listen, "--listen")
    rate = parse_rate(args.rate_limit) if args.rate_limit is not None else None
    if args.capacity < 1:
        raise UsageError(f"--capacity must be at least 1, not {args.capacity}")
    if not args.strategy_wait > 0:
        raise UsageError(f"--strategy-wait must be > 0 seconds, not {args.strategy_wait}")
    server_id = args.server_id or f"server-{socket.gethostname()}-{args.listen.rpartition(':')[2]}"
    secret = read_secret(args.secret_file)

    from vod.server.node import VideoServer, open_catalogue

    movies = open_catalogue(args.media)
    try:
        setup_logging(args.log_level)
        from twisted.internet import reactor

        server = VideoServer(reactor, MonotonicClock(), movies, server_id=server_id, domain=args.domain,
                             listen=args.listen, advertise=args.advertise, coordinators=coordinators, secret=secret,
                             capacity=args.capacity, rate_limit=rate, strategy_wait=args.strategy_wait)
        failed = []

        def start():
            def cannot(failure):
                failed.append(failure)
                log.error("cannot start: %s", failure.getErrorMessage())
                reactor.stop()

            server.start().addErrback(cannot)

        reactor.callWhenRunning(start)
        reactor.addSystemEventTrigger("before", "shutdown", server.stop)
        reactor.run()
    finally:
        for movie in movies.values():
            movie.close()
    if failed:
        raise VodError(f"server {server_id} could not start: {failed[0].getErrorMessage()}")
    return 0


def main() -> int:
    return run(entry, prog="vod-server")


if __name__ == "__main__":
    raise SystemExit(main())
