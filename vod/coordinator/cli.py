"""`vod-coordinator`: one replica of the Raft-replicated coordinator."""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
from functools import partial
from typing import Sequence

from vod import localsocket
from vod.addr import parse_addr, parse_addr_list
from vod.cliutil import ArgumentParser, run
from vod.errors import UsageError
from vod.logsetup import setup_logging
from vod.clock import MonotonicClock
from vod.coordinator import limits
from vod.secrets import add_secret_argument, read_secret

log = logging.getLogger("vod.coordinator")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="vod-coordinator", description=(
        "Run one coordinator replica. Three replicas (--peers lists all three Raft addresses) make a "
        "coordinator group: the Raft leader is the primary, one follower the backup and one the witness; "
        "any may become primary. Members (servers, clients, vod-admin) connect to --listen."))
    p.add_argument("--id", required=True, dest="replica_id", help="this replica's name, e.g. c1")
    p.add_argument("--raft", required=True, metavar="HOST:PORT", help="this replica's Raft address")
    p.add_argument("--peers", metavar="HOST:PORT,...",
                   help="Raft addresses of all voters (this one may be included); not for --standby")
    p.add_argument("--standby", action="store_true",
                   help="start as a standby: register with the primary and become a voter when a replica dies")
    p.add_argument("--coordinators", metavar="HOST:PORT,...",
                   help="with --standby: listen addresses of the running replicas")
    p.add_argument("--replace-after", type=float, default=1.0,
                   help="seconds a voter may be unreachable before the primary replaces it with a standby")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address members connect to (AMP)")
    p.add_argument("--data", required=True, metavar="DIR", help="directory for the Raft journal and snapshots")
    add_secret_argument(p)
    p.add_argument("--failure-timeout", type=float, default=1.0,
                   help="seconds without a heartbeat after which a member is excluded")
    p.add_argument("--reconnect-grace", type=float, default=0.5, metavar="SECONDS",
                   help="a member whose connection closes (a crashed process's does at once) is excluded after "
                        "this many seconds unless it reconnects first; at most --failure-timeout")
    p.add_argument("--knock", action="store_true",
                   help="experimental, off by default: knock at a server's stream address when its control "
                        "connection closes; a server whose address accepted a connection when it joined, and now "
                        "refuses one, is taken for crashed and excluded at once instead of after "
                        "--reconnect-grace (a chaos seed still hangs a client with it; see docs/BENCHMARK-NOTES.md)")
    p.add_argument("--grace", type=float, default=2.0,
                   help="seconds a new primary waits before excluding anyone")
    p.add_argument("--max-servers", type=int, default=4,
                   help="the most servers one strategy stripes a movie across")
    p.add_argument("--policy", default="weighted", choices=["weighted", "interleave"],
                   help="shares by declared capacity (weighted) or equal shares (interleave)")
    local = p.add_mutually_exclusive_group()
    local.add_argument("--admin-socket", metavar="PATH",
                       help="also listen on this UNIX socket (mode 600, in a directory of mode 700 that is yours) "
                            "for local administration (vod-admin --socket PATH); default: "
                            "$XDG_RUNTIME_DIR/vod/USER/coordinator-ID.sock, or /tmp/vod-UID/coordinator-ID.sock "
                            "without XDG_RUNTIME_DIR")
    local.add_argument("--no-admin-socket", action="store_true", help="listen on TCP only")
    p.add_argument("--command-rate", type=float, default=limits.COMMAND_RATE, metavar="PER_SECOND",
                   help="commands one connection may send per second (bursts of twice that); over it they are "
                        "refused, and a connection that keeps on is closed; 0: no limit")
    p.add_argument("--connection-rate", type=float, default=limits.CONNECTION_RATE, metavar="PER_SECOND",
                   help="connections one peer host may open per second (bursts of twice that); 0: no limit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def admin_socket(args) -> tuple[str | None, bool]:
    """(path or None, whether failing to listen there is fatal), its directory made and checked private.

    A path given with --admin-socket must work. The default one may be held by another coordinator
    with the same id (two groups on one host): that replica then does without, with a warning."""
    if args.no_admin_socket:
        return None, False
    path = args.admin_socket or localsocket.default_socket_path(args.replica_id)
    try:
        if localsocket.prepare_socket(path):
            log.info("removed the stale admin socket %s", path)
    except localsocket.SocketInUse as err:
        if args.admin_socket:
            raise
        log.warning("no admin socket: %s", err)
        return None, False
    return path, bool(args.admin_socket)


def resolve_raft_address(address: str, flag: str) -> str:
    """HOST:PORT with HOST as an IP address, resolved once now: pysyncobj would otherwise look names up on
    its tick thread, where a slow resolver stalls heartbeats and costs the primary its lease."""
    host, port = parse_addr(address, flag)
    try:
        ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as err:
        raise UsageError(f"{flag} {address}: cannot resolve {host}: {err}") from None
    if ip != host:
        log.info("%s %s resolved to %s:%s", flag, address, ip, port)
    return f"{ip}:{port}"


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    args.raft = resolve_raft_address(args.raft, "--raft")
    parse_addr(args.listen, "--listen")
    if args.standby:
        if not args.coordinators:
            raise UsageError("--standby needs --coordinators (where the running replicas listen)")
        coordinators, peers = parse_addr_list(args.coordinators, "--coordinators"), []
    else:
        if not args.peers:
            raise UsageError("--peers is required (the Raft addresses of all three voters)")
        coordinators, peers = [], [resolve_raft_address(a, "--peers") for a in parse_addr_list(args.peers, "--peers")]
    secret = read_secret(args.secret_file)
    if not 1 <= args.max_servers <= 255:
        raise UsageError("--max-servers must be 1..255")
    if args.failure_timeout <= 0 or args.grace < 0:
        raise UsageError("--failure-timeout must be > 0 and --grace >= 0")
    if not 0 < args.reconnect_grace <= args.failure_timeout:
        raise UsageError("--reconnect-grace must be > 0 and at most --failure-timeout")
    if args.command_rate < 0 or args.connection_rate < 0:
        raise UsageError("--command-rate and --connection-rate must be >= 0 (0: no limit)")
    try:
        os.makedirs(args.data, mode=0o700, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--data {args.data}: {err.strerror}") from None
    setup_logging(args.log_level)
    socket_path, socket_required = admin_socket(args)
    # The reactor and pysyncobj's tick thread hand every commit to each other: with the default 5 ms
    # GIL switch interval a waiting thread can sit out a whole interval, which shows in the p99.
    sys.setswitchinterval(0.0005)

    from twisted.internet import reactor

    from vod.coordinator.knock import knock
    from vod.coordinator.replica import CoordinatorReplica

    replica = CoordinatorReplica(reactor, replica_id=args.replica_id, raft_addr=args.raft, peers=peers,
                                 listen=args.listen, secret=secret, data_dir=args.data,
                                 failure_timeout=args.failure_timeout, grace=args.grace, standby=args.standby,
                                 reconnect_grace=args.reconnect_grace,
                                 coordinators=coordinators, replace_after=args.replace_after,
                                 clock=MonotonicClock(), policy=args.policy, max_servers=args.max_servers,
                                 admin_socket=socket_path, admin_socket_required=socket_required,
                                 command_rate=args.command_rate, connection_rate=args.connection_rate,
                                 knock=partial(knock, reactor) if args.knock else None)
    failed = []

    def start():
        d = replica.start()

        def cannot(failure):
            failed.append(failure)
            log.error("cannot start: %s", failure.getErrorMessage())
            reactor.stop()

        d.addErrback(cannot)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", replica.stop)
    tune_gc(reactor)
    reactor.run()
    if failed:
        raise UsageError(f"replica {args.replica_id} could not start: {failed[0].getErrorMessage()}")
    return 0


# Young collections this often (allocations) take 1-5 ms; at 50,000 they took 15-45 ms, and the followers,
# which apply the same log, collected at the same moment and stalled commits together.
GC_YOUNG_THRESHOLD = 5_000
GC_FREEZE_INTERVAL = 0.5  # seconds between moving what survived into the permanent generation
# Seconds between full collections of everything, frozen or not: a cycle that died after being frozen is
# freed within this, so a long-running replica cannot leak it for good. One pause (tens of ms with a large
# request book) every ten minutes is one request in 600,000 at 1,000/s: invisible at p99.
GC_FULL_INTERVAL = 600.0


def tune_gc(reactor=None) -> None:
    """Keep the cyclic garbage collector's pauses out of admission latency.

    With the defaults a young collection comes every 700 allocations and the older generations, walked
    often, hold all of Twisted, pysyncobj and the request book: at 1,000 admissions/s those pauses made
    the p99 of request -> strategy 48 ms against a 20 ms target (bench/strategy.py, paced phase). What
    exists at start-up lives as long as the process, so it is frozen out of every collection. So, with
    `reactor`, is whatever survives afterwards, every GC_FREEZE_INTERVAL (gc.freeze() only relinks the
    collector's lists): the request book keeps every request, and each collection of the older
    generations would walk all of it again. Young cycles are still collected, every GC_YOUNG_THRESHOLD
    allocations, in pauses of a few ms. A cycle that lives across a freeze and dies later waits for the
    full collection every GC_FULL_INTERVAL (in the admission bench no young collection found any cyclic
    garbage at all)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 1_000, 100)
    if reactor is not None:
        from twisted.internet.task import LoopingCall

        for interval, work in ((GC_FREEZE_INTERVAL, gc.freeze), (GC_FULL_INTERVAL, _collect_everything)):
            loop = LoopingCall(work)
            loop.clock = reactor
            loop.start(interval, now=False)


def _collect_everything() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def main() -> int:
    return run(entry, prog="vod-coordinator")


if __name__ == "__main__":
    raise SystemExit(main())
