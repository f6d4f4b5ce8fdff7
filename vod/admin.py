"""`vod-admin`: inspect a coordinator group.

`status` asks every coordinator given for its own view (any replica answers
Status, primary or not) and merges them: replicas with their roles, members
with heartbeat ages, groups with their views. `--json` prints a stable
document, keys documented in the README.

With `--credential-file` it acts as that user: a viewer sees only its own
requests (`requests`, `request`, `strategy`, `strategies`, `caches`); the
cluster-wide views need an admin credential or the domain secret.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any, Sequence

from twisted.internet import defer, task

from vod.addr import parse_addr_list
from vod.cliutil import ArgumentParser, run
from vod import adminusers
from vod import localsocket
from vod import adminviews as views
from vod.credentials import VIEWER, UserCredential, add_credential_argument, read_credential
from vod.errors import UsageError, VodError
from vod.groups.control import call_once, with_connection
from vod.groups.wire import AuthFailed, GetRequest, Groups, Refused, Requests, Status
from vod.strategy.mask import FrameMask
from vod.strategy.placement import ServerInfo, make_strategy
from twisted.protocols.amp import RemoteAmpError
from vod.secrets import add_secret_argument, read_secret

ADMIN_ID = "vod-admin"
GET_RATE = 500.0  # GetRequest calls per second at most on one connection (a replica refuses over 1,000/s)
GET_BLOCK = 250
STATUS_DOC_VERSION = 2  # v2: bounded member and group lists with counts (member_count, groups_more, ...)


class CoordinatorUnreachable(VodError):
    exit_code = 6


class AccessRefused(VodError):
    """The coordinator would not let us in, or not do this for us."""

    exit_code = 7


# What a viewer credential may ask for: its own requests. Everything else is cluster-wide (admin).
VIEWER_COMMANDS = ("requests", "request", "strategy", "strategies", "caches")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="vod-admin", description="Inspect and administer a coordinator group.")
    p.add_argument("--coordinators", metavar="HOST:PORT,...",
                   help="listen addresses of the coordinator replicas (every command but user add); without "
                        "it (and --socket), the local admin sockets of the coordinators running on this host")
    p.add_argument("--socket", action="append", metavar="PATH",
                   help="a coordinator's local admin socket (vod-coordinator --admin-socket); may be repeated")
    add_secret_argument(p)
    add_credential_argument(p)
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
    c = command("request", "one request's log: its state changes, each strategy revision (restripes, failed "
                           "servers) and which server's frames arrived, as far as the coordinator knows")
    c.add_argument("ruid", type=int, help="the request's RUID")
    command("groups", "groups (domains and video groups) with their views")
    command("servers", "servers: movies, capacity, active streams, health")
    command("caches", "which client holds which frames of which movie (from CDONE)")
    adminusers.add_user_command(sub)
    return p


async def ask_status(reactor, addr: str, secret: bytes, timeout: float) -> dict:
    return (await call_once(reactor, addr, secret, ADMIN_ID, Status, timeout=timeout))["status"]


async def gather_answers(reactor, coordinators: list[str], secret: bytes,
                         timeout: float) -> list[tuple[str, dict | None, str | None]]:
    """(address, status or None, error or None) from every coordinator, as `merge_status` takes them."""
    async def one(addr):
        try:
            return addr, await defer.ensureDeferred(ask_status(reactor, addr, secret, timeout)), None
        except Exception as err:  # each unreachable replica is reported, not fatal
            return addr, None, f"{type(err).__name__}: {err}"

    return await defer.gatherResults([defer.ensureDeferred(one(a)) for a in coordinators])


def route(answers: list[tuple[str, dict | None, str | None]], listen: str) -> str:
    """The address we asked that reached the replica listening on `listen`: a local socket stays the way in."""
    return next((addr for addr, status, _ in answers if status and status["replica"]["listen"] == listen), listen)


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
    groups = best["groups"]
    # A v1 answer (an older replica) listed every group and member; v2 lists a bounded part, with counts.
    counts = {"member_count": best.get("member_count", len(best["members"])),
              "members_more": best.get("members_more", 0),
              "group_count": best.get("group_count", len(groups)),
              "video_groups": best.get("video_groups", sum(1 for g in groups if g["name"].startswith("video:"))),
              "groups_more": best.get("groups_more", 0),
              "requests_active": best.get("requests_active")}
    return {"v": STATUS_DOC_VERSION, "primary": primary["replica"]["id"] if primary else None, "replicas": replicas,
            "answered_by": answering["replica"]["listen"],
            "members": members, "groups": groups, "last_ruid": best["last_ruid"], **counts}


def print_status(doc: dict, out=sys.stdout) -> None:
    print(f"primary: {doc['primary'] or 'none (election in progress or no majority)'}", file=out)
    print(f"{'replica':10} {'role':8} {'term':>5} {'commit':>7}  raft / listen", file=out)
    for r in doc["replicas"]:
        print(f"{str(r['id']):10} {r['role']:8} {str(r['term']):>5} {str(r['commit_index']):>7}  "
              f"{r['raft']} / {r['listen']}", file=out)
    print(f"\nmembers ({doc.get('member_count', len(doc['members']))}):", file=out)
    for m in doc["members"]:
        age = "-" if m["heartbeat_age"] is None else f"{m['heartbeat_age']:.2f}s"
        print(f"  {m['id']:20} {m['kind']:7} {m['domain']:12} {m['address']:22} heartbeat {age:>7}  {m['health']}",
              file=out)
    if doc.get("members_more"):
        print(f"  ... and {doc['members_more']} more", file=out)
    active = doc.get("requests_active")
    print(f"\ngroups ({doc.get('group_count', len(doc['groups']))}, of which {doc.get('video_groups', 0)} video "
          f"groups{'' if active is None else f'; {active} active requests'}):", file=out)
    for g in doc["groups"]:
        more = g.get("member_count", len(g["members"])) - len(g["members"])
        print(f"  {g['name']:24} view {g['view_id']:<4} {', '.join(g['members'])}"
              + (f" and {more} more" if more > 0 else ""), file=out)
    if doc.get("groups_more"):
        print(f"  ... and {doc['groups_more']} more (the most recent video groups are listed; "
              "vod-admin groups lists them all)", file=out)


async def first_answer(reactor, coordinators: list[str], key, use, timeout: float) -> tuple[str, Any]:
    """(address, what `use(call)` returned) on the first coordinator that answers; a refusal is final."""
    errors = []
    for addr in coordinators:
        try:
            return addr, await with_connection(reactor, addr, key, ADMIN_ID, use, timeout=timeout)
        except (Refused, AuthFailed):
            raise
        except Exception as err:  # down or unreachable: the next one may answer
            errors.append(f"{addr}: {type(err).__name__}: {err}")
    raise CoordinatorUnreachable("no coordinator answered: " + "; ".join(errors))


async def paged(call, command, unpack, **arguments) -> tuple[list, dict]:
    """Every item of a paged listing (`Requests`, `Groups`), page after page: (items, the first answer).

    `unpack(answer)` gives a page's (items, next); `next` is the next page's `after`, None after the last."""
    items: list = []
    first = None
    after = None
    while True:
        answer = await call(command, **arguments, **({} if after is None else {"after": after}))
        first = answer if first is None else first
        page_items, following = unpack(answer)
        items += page_items
        if following is None or following == after:
            return items, first
        after = following


async def all_requests(call, active: bool = False) -> dict:
    """The whole request listing (every page of `Requests`), with the caches and catalogue of the first page."""
    requests, first = await paged(call, Requests, lambda a: (a["requests"], (a.get("page") or {}).get("next")),
                                  **({"active": True} if active else {}))
    return {"requests": requests, "caches": first["caches"], "movies": first["movies"], "page": first.get("page")}


async def all_groups(call) -> list[dict]:
    groups, _ = await paged(call, Groups, lambda a: (a["groups"]["groups"], a["groups"]["next"]))
    return groups


async def collect(reactor, args, coordinators: list[str], secret: bytes | UserCredential) -> dict:
    """Status from every replica, then what the command needs from the best one (the primary if any).

    A viewer may not ask for Status: it reads its own requests from the first replica that answers.
    Long listings (requests, groups) are read page by page on one connection."""
    active_only = args.command == "servers"  # server load: the active requests are enough
    if isinstance(secret, UserCredential) and secret.role == VIEWER:
        target, listing = await first_answer(reactor, coordinators, secret,
                                             lambda call: all_requests(call, active_only), args.timeout)
        data = {"status": None, **listing}
    else:
        answers = await gather_answers(reactor, coordinators, secret, args.timeout)
        doc = merge_status(answers)
        data = {"status": doc}
        if args.command == "status":
            return data
        target = route(answers, doc["answered_by"])
        if args.command == "groups":
            data["groups"] = await with_connection(reactor, target, secret, ADMIN_ID, all_groups, timeout=args.timeout)
            return data
        if args.command == "user":
            data["message"] = await adminusers.set_access(reactor, args, target, secret, ADMIN_ID)
            return data
        listing = await with_connection(reactor, target, secret, ADMIN_ID,
                                        lambda call: all_requests(call, active_only), timeout=args.timeout)
        data.update(listing)
    if args.command == "strategies" or (args.command in ("strategy", "request") and args.ruid is not None):
        ruids = [args.ruid] if args.command != "strategies" else [r["ruid"] for r in data["requests"]]

        async def records(call):
            # One connection for all of them, kept under the replica's per-connection command rate.
            out, block = [], reactor.seconds()
            for i, ruid in enumerate(ruids):
                if i and i % GET_BLOCK == 0:
                    wait = block + GET_BLOCK / GET_RATE - reactor.seconds()
                    if wait > 0:
                        await task.deferLater(reactor, wait, lambda: None)
                    block = reactor.seconds()
                out.append((await call(GetRequest, ruid=ruid))["request"])
            return out

        data["records"] = await with_connection(reactor, target, secret, ADMIN_ID, records, timeout=args.timeout)
    return data


def render(args, data: dict) -> tuple[Any, str]:
    """(JSON document, text) for the command."""
    status = data["status"]
    if args.command == "status":
        return status, status_text(status)
    if args.command == "groups":
        return data["groups"], views.groups_table(data["groups"])
    if args.command == "requests":
        return data["requests"], views.requests_table(data["requests"])
    if args.command == "caches":
        return data["caches"], views.caches_table(data["caches"])
    if args.command == "request":
        doc = views.request_log(data["records"][0])
        return doc, views.request_log_text(doc)
    if args.command == "user":
        return {"message": data["message"]}, data["message"]
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


def read_key(args) -> bytes | UserCredential:
    """The domain secret, or the user credential given instead; a viewer asking for more is told at once."""
    if not args.credential_file:
        return read_secret(args.secret_file)
    if args.secret_file:
        raise UsageError("give --secret-file or --credential-file, not both")
    credential = read_credential(args.credential_file)
    wanted = args.command + (" --dry-run" if getattr(args, "dry_run", None) else "")
    if credential.role == VIEWER and (args.command not in VIEWER_COMMANDS or wanted.endswith("--dry-run")):
        raise UsageError(f"vod-admin {wanted} needs the admin role; {args.credential_file} is user "
                         f"{credential.user} ({VIEWER}), which sees only its own requests "
                         f"({', '.join(VIEWER_COMMANDS)}): use an admin credential or --secret-file")
    return credential


def coordinator_addresses(args, env=None) -> list[str]:
    """--coordinators; else --socket paths; else the admin sockets of this host's coordinators (unix:PATH)."""
    if args.coordinators and args.socket:
        raise UsageError("give --coordinators or --socket, not both")
    if args.coordinators:
        return parse_addr_list(args.coordinators, "--coordinators")
    if args.socket:
        for path in args.socket:  # the directory is the wall against a socket planted by somebody else
            localsocket.check_private_dir(os.path.dirname(os.path.abspath(path)), flag="--socket")
        return [localsocket.unix_address(path) for path in args.socket]
    directory = localsocket.socket_dir(env)
    found = localsocket.find_sockets(directory, flag="--socket")
    if not found:
        raise UsageError(f"vod-admin {args.command} asks the coordinators: give --coordinators HOST:PORT,... or "
                         f"--socket PATH (no coordinator socket in {directory} on this host)")
    return [localsocket.unix_address(path) for path in found]


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "strategy" and (args.ruid is None) == (args.dry_run is None):
        raise UsageError("strategy: give a RUID, or --dry-run MOVIE")
    secret = read_key(args)
    if args.command == "user" and args.action == "add":
        print(adminusers.issue(args, adminusers.check_issuer(secret)))
        return 0
    coordinators = coordinator_addresses(args)
    from twisted.internet.task import react

    result = {}

    async def main(reactor):
        try:
            result["data"] = await collect(reactor, args, coordinators, secret)
        except VodError as err:
            result["error"] = err
        except AuthFailed as err:
            result["error"] = AccessRefused(
                f"the coordinator refused to authenticate us ({err}): the --secret-file or --credential-file is "
                "not this domain's, the secret was rotated since the credential was issued, or the user is revoked")
        except Refused as err:
            result["error"] = AccessRefused(f"the coordinator refused: {err}")
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
    print(json.dumps(doc, indent=2, sort_keys=True) if getattr(args, "json", False) else text)
    return 0


def main() -> int:
    return run(entry, prog="vod-admin")


if __name__ == "__main__":
    raise SystemExit(main())
