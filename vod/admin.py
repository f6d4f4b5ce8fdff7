"""`vod-admin`: inspect a coordinator group.

`status` asks every coordinator given for its own view (any replica answers
Status, primary or not) and merges them: replicas with their roles, members
with heartbeat ages, groups with their views. `--json` prints a stable
document, keys documented in the README.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from twisted.internet import defer

from vod.addr import parse_addr_list
from vod.cliutil import ArgumentParser, run
from vod.errors import VodError
from vod.groups.control import call_once
from vod.groups.wire import Status
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
    s = sub.add_parser("status", help="replicas and their roles, members and their health, groups and their views")
    s.add_argument("--json", action="store_true", help="print JSON (keys documented in the README)")
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
                        "heartbeat_age": age, "health": health})
    return {"v": 1, "primary": primary["replica"]["id"] if primary else None, "replicas": replicas,
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


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    coordinators = parse_addr_list(args.coordinators, "--coordinators")
    secret = read_secret(args.secret_file)
    from twisted.internet.task import react

    result = {}

    async def main(reactor):
        try:
            result["doc"] = await gather_status(reactor, coordinators, secret, args.timeout)
        except VodError as err:
            result["error"] = err

    try:
        react(lambda r: defer.ensureDeferred(main(r)))
    except SystemExit:
        pass  # react always exits; the outcome is in `result`
    if "error" in result:
        raise result["error"]
    doc = result["doc"]
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print_status(doc)
    return 0


def main() -> int:
    return run(entry, prog="vod-admin")
