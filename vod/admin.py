"""`vod-admin`: inspect a coordinator group.

`status` asks every coordinator given for its own view (any replica answers
Status, primary or not) and merges them: replicas with their roles, members
with heartbeat ages, groups with their views. `--json` prints a stable
document, keys documented in the README.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any, Sequence

from twisted.internet import defer

from vod.addr import parse_addr_list
from vod.cliutil import ArgumentParser, run
from vod import adminviews as views
from vod.errors import UsageError, VodError
from vod.groups.control import call_once
from vod.groups.wire import GetRequest, Requests, Status
from vod.strategy.mask import FrameMask
from vod.strategy.placement import ServerInfo, make_strategy
from twisted.protocols.amp import RemoteAmpError
from vod.secrets import add_secret_argument, read_secret

ADMIN_ID = "vod-admin"


class CoordinatorUnreachable(VodError):
    exit_code = 6


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="vod-admin", description="Inspect and administer a coordinator group.")
    p.add_argument("--coordinators", required=True, metavar="HOST:PORT,...",
                   help="listen addresses of the coordinator replicas")
    add_secret_argument(p)
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each coordinator")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    def command(name, help):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", help="print JSON (keys documented in the README)")
        return c

    command("status", "replicas and their roles, members and their health, groups and their views")
    command("strategies", "every request's strategy: RUID, movie, client, servers and frames each, state")
    c = command("strategy", "one strategy in full: each server's mask, frames and share; backups; restripes")
    c.add_argument("ruid", nargs="?", type=int, help="the request's RUID")
    c.add_argument("--dry-run", metavar="MOVIE", help="preview the strategy a request for MOVIE would get")
    c.add_argument("--servers", type=int, default=4, help="with --dry-run: how many servers may send")
    c.add_argument("--policy", default="weighted", choices=["weighted", "interleave"], help="with --dry-run")
    command("requests", "requests by state (pending, active, done...) with their ages")
    command("groups", "groups (domains and video groups) with their views")
    command("servers", "servers: movies, capacity, active streams, health")
    command("caches", "which client holds which frames of which movie (from CDONE)")
    return p


async def ask_status(reactor, addr: str, secret: bytes, timeout: float) -> dict:
    return (await call_once(reactor, addr, secret, ADMIN_ID, Status, timeout=timeout))["status"]


async def gather_status(reactor, coordinators: list[str], secret: bytes, timeout: float) -> dict:
    async def one(addr):
        try:
            return addr, await defer.ensureDeferred(ask_status(reactor, addr, secret, timeout)), None
        except Exception as err:  # each unreachable replica is reported, not fatal
            return addr, None, f"{type(err).__name__}: {err}"

    answers = await defer.gatherResults([defer.ensureDeferred(one(a)) for a in coordinators])
    return merge_status(answers)


def merge_status(answers: list[tuple[str, dict | None, str | None]]) -> dict:
    """Pure: the per-replica answers merged into the status document."""
    reached = [s for _, s, _ in answers if s]
    if not reached:
        raise CoordinatorUnreachable("no coordinator answered: " +
                                     "; ".join(f"{a}: {e}" for a, _, e in answers))
    primary = next((s for s in reached if s["replica"]["acting_primary"]), None)
    best = primary or max(reached, key=lambda s: s["last_applied"])
    known = {}
    for s in reached:
        for raft_addr, rec in s["replicas_table"].items():
            known[raft_addr] = rec
    replicas = []
    followers = sorted((s["replica"] for s in reached if not s["replica"]["acting_primary"]
                        and not s["replica"]["standby"]), key=lambda r: r["id"])
    backup_id = followers[0]["id"] if followers and primary else None
    by_raft = {s["replica"]["raft"]: s["replica"] for s in reached}
    listed = {rec["listen"] for rec in known.values()}
    for raft_addr in sorted(set(known) | set(by_raft)):
        mine = by_raft.get(raft_addr)
        rec = known.get(raft_addr, {})
        if mine is None:
            asked = rec.get("listen") in {addr for addr, _, _ in answers}
            replicas.append({"id": rec.get("id"), "role": "down" if asked else "unreached", "raft": raft_addr, "listen": rec.get("listen"),
                             "term": None, "commit_index": None})
            continue
        if mine["acting_primary"]:
            role = "primary"
        elif mine["standby"]:
            role = "standby"
        else:
            role = "backup" if mine["id"] == backup_id else "witness"
        replicas.append({"id": mine["id"], "role": role, "raft": raft_addr, "listen": mine["listen"],
                         "term": mine["term"], "commit_index": mine["commit_index"]})
    for addr, status, error in answers:
        if status is None and addr not in listed:
            replicas.append({"id": None, "role": "down", "raft": None, "listen": addr, "term": None,
                             "commit_index": None, "error": error})
    members = []
    for m in best["members"]:
        age = m.get("heartbeat_age")
        health = "unknown" if age is None else ("ok" if m.get("connected") else "disconnected")
        members.append({"id": m["id"], "kind": m["kind"], "domain": m["domain"], "address": m["address"],
                        "user": m.get("user", ""), "capacity": m.get("capacity", 0),
                        "movies": m.get("movies", []), "heartbeat_age": age, "health": health})
    answering = primary or best
    return {"v": 1, "primary": primary["replica"]["id"] if primary else None, "replicas": replicas,
            "answered_by": answering["replica"]["listen"],
            "members": members, "groups": best["groups"], "last_ruid": best["last_ruid"]}


def print_status(doc: dict, out=sys.stdout) -> None:
    print(f"primary: {doc['primary'] or 'none (election in progress or no majority)'}", file=out)
    print(f"{'replica':10} {'role':8} {'term':>5} {'commit':>7}  raft / listen", file=out)
    for r in doc["replicas"]:
        print(f"{str(r['id']):10} {r['role']:8} {str(r['term']):>5} {str(r['commit_index']):>7}  "
              f"{r['raft']} / {r['listen']}", file=out)
    print(f"\nmembers ({len(doc['members'])}):", file=out)
    for m in doc["members"]:
        age = "-" if m["heartbeat_age"] is None else f"{m['heartbeat_age']:.2f}s"
        print(f"  {m['id']:20} {m['kind']:7} {m['domain']:12} {m['address']:22} heartbeat {age:>7}  {m['health']}",
              file=out)
    print(f"\ngroups ({len(doc['groups'])}):", file=out)
    for g in doc["groups"]:
        print(f"  {g['name']:24} view {g['view_id']:<4} {', '.join(g['members'])}", file=out)


async def collect(reactor, args, coordinators: list[str], secret: bytes) -> dict:
    """Status from every replica, then what the command needs from the best one (the primary if any)."""
    doc = await gather_status(reactor, coordinators, secret, args.timeout)
    data = {"status": doc}
    if args.command == "status" or args.command == "groups":
        return data
    target = doc["answered_by"]
    listing = await call_once(reactor, target, secret, ADMIN_ID, Requests, timeout=args.timeout)
    data.update(listing)
    if args.command == "strategies" or (args.command == "strategy" and args.ruid is not None):
        ruids = [args.ruid] if args.command == "strategy" else [r["ruid"] for r in listing["requests"]]
        records = []
        for ruid in ruids:
            answer = await call_once(reactor, target, secret, ADMIN_ID, GetRequest, timeout=args.timeout, ruid=ruid)
            records.append(answer["request"])
        data["records"] = records
    return data


def render(args, data: dict) -> tuple[Any, str]:
    """(JSON document, text) for the command."""
    status = data["status"]
    if args.command == "status":
        return status, status_text(status)
    if args.command == "groups":
        return status["groups"], views.groups_table(status["groups"])
    if args.command == "requests":
        return data["requests"], views.requests_table(data["requests"])
    if args.command == "caches":
        return data["caches"], views.caches_table(data["caches"])
    if args.command == "servers":
        servers = views.servers_doc(status, data["requests"])
        return servers, views.servers_table(servers)
    if args.command == "strategies":
        docs = [views.strategy_doc(r) for r in data["records"]]
        return docs, views.strategies_table(docs)
    if args.dry_run:
        doc = dry_run(status, data["movies"], args.dry_run, args.servers, args.policy)
        return doc, views.strategy_text(doc)
    doc = views.strategy_doc(data["records"][0])
    return doc, views.strategy_text(doc)


def dry_run(status: dict, movies: dict, movie: str, servers: int, policy: str) -> dict:
    info = movies.get(movie)
    if info is None:
        raise UsageError(f"unknown movie {movie!r}; known: {', '.join(sorted(movies)) or 'none'}")
    live = [ServerInfo(m["id"], max(1, m["capacity"]), 0, frozenset(m["movies"]))
            for m in status["members"] if m["kind"] == "server"]
    if servers < 1:
        raise UsageError("--servers must be at least 1")
    strategy = make_strategy(0, movie, "(dry run)", info["frame_count"], FrameMask.full(info["frame_count"]), live,
                             policy=policy, max_servers=servers)
    return views.strategy_doc({"ruid": 0, "movie": movie, "client": "(dry run)", "state": "preview",
                               "frame_count": info["frame_count"], "strategy": strategy.to_dict()})


def status_text(doc: dict) -> str:
    out = io.StringIO()
    print_status(doc, out)
    return out.getvalue().rstrip("\n")


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "strategy" and (args.ruid is None) == (args.dry_run is None):
        raise UsageError("strategy: give a RUID, or --dry-run MOVIE")
    coordinators = parse_addr_list(args.coordinators, "--coordinators")
    secret = read_secret(args.secret_file)
    from twisted.internet.task import react

    result = {}

    async def main(reactor):
        try:
            result["data"] = await collect(reactor, args, coordinators, secret)
        except VodError as err:
            result["error"] = err
        except RemoteAmpError as err:
            result["error"] = VodError(f"the coordinator refused: {err}")
        except Exception as err:  # a refusal (Refused, AuthFailed...) from the coordinator
            result["error"] = CoordinatorUnreachable(f"{type(err).__name__}: {err}")

    try:
        react(lambda r: defer.ensureDeferred(main(r)))
    except SystemExit:
        pass  # react always exits; the outcome is in `result`
    if "error" in result:
        raise result["error"]
    doc, text = render(args, result["data"])
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else text)
    return 0


def main() -> int:
    return run(entry, prog="vod-admin")


if __name__ == "__main__":
    raise SystemExit(main())
