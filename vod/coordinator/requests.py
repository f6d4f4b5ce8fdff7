"""The request life cycle: one replicated state machine per request, transitions in one table.

    pending --strategize--> strategized --start--> streaming
       |                        |   \\--restripe--/    |  \\--restripe
       +--cancel/fail-->  cancelled / failed  <--cancel/fail--+
                                \\--cdone--> done <--cdone--/

Applied on every replica in log order (through `GroupMachine`), so a backup
that takes over holds every request exactly where it was. A request is keyed
by its RUID and, for retries, by the client's own request id: opening the same
(client, request id) again answers with the same RUID and changes nothing.

Each request belongs to the user its client joined as (`user`, "" for a client
holding the domain secret): only that user's clients act on it. Its `log` keeps
every state change, and each restripe keeps the assignments it replaced, so
the user can read where each frame came from (`vod-admin request RUID`).

Admission is one log entry (`req_admit`): it opens the request and, in the same
apply, every replica computes its strategy from the replicated inputs (the
wanted mask, the live servers of the client's domain with their capacities,
and the placement settings the primary stamped into the command). Placement is
a pure function (`vod.strategy.placement`), so every replica derives the same
strategy, and the log carries the small request, not the strategy's masks.
`req_open` and `req_strategize` (the strategy computed by the primary and
carried in the log) stay: older logs hold them, and the primary still
strategizes that way a request left pending by such a log.

Each step that touches the video group does so in the same log entry:
`strategize` creates `video:RUID` with the client and the strategy's servers
(their VIEW is the seed's "join the video group"), and `cdone`, `cancel` and
`fail` dissolve it (the seed's VDONE to the client and SDONE to the servers).
A step is validated completely before anything changes.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Mapping  # not typing's alias: isinstance is slower through it
from typing import Any

from vod.groups import commands as group_cmds
from vod.groups.commands import BadCommand
from vod.groups.events import Event, RequestChanged, StrategyAssigned
from vod.groups.state import GroupState, video_group
from vod.strategy.mask import FrameMask, MaskTooLong
from vod.strategy.placement import (
    MAX_TAKERS, POLICIES, SERVER_CHOICES, NoServers, ServerInfo, StrategyError, make_strategy,
)

REQUEST_VERSION = 1
PENDING, STRATEGIZED, STREAMING = "pending", "strategized", "streaming"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
ACTIVE = (PENDING, STRATEGIZED, STREAMING)
MOVIES_TABLE = "movies"

# (state, action) -> next state. Everything not listed is refused.
TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, "strategize"): STRATEGIZED,
    (STRATEGIZED, "start"): STREAMING,
    (STRATEGIZED, "restripe"): STRATEGIZED,
    (STREAMING, "restripe"): STREAMING,
    (STRATEGIZED, "cdone"): DONE,
    (STREAMING, "cdone"): DONE,
    **{(state, "cancel"): CANCELLED for state in ACTIVE},
    **{(state, "fail"): FAILED for state in ACTIVE},
}

Pushed = tuple[Event, tuple[str, ...] | None]  # recipients None: ask GroupState.recipients

RETRY_REASON = "retry of an open request"
PLACEMENT_VERSION = 1
MAX_BACKUPS = 16
# Strategies of requests whose wanted mask is this short as text (a whole movie, a range) are kept,
# per movie and server set, so the next such request costs a dict lookup, not a deal and an encoding.
CACHE_WANTED_CHARS = 256
CACHE_ENTRIES = 256
REQUESTS_PAGE = 500  # requests per Requests page at most (fewer if they do not fit one AMP value)


def mask_to_text(mask: FrameMask) -> str:
    return base64.b64encode(mask.to_bytes()).decode("ascii")


def mask_from_text(text: Any, frame_count: int, what: str) -> FrameMask:
    if not isinstance(text, str):
        raise BadCommand(f"{what} must be a base64 mask, not {type(text).__name__}")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
        mask = FrameMask.from_bytes(data, max_length=frame_count)
    except MaskTooLong as err:  # decoding stopped at the movie's length: nothing that size was allocated
        raise BadCommand(f"{what} covers {err.frames} frames; the movie has {frame_count}") from None
    except Exception as err:
        raise BadCommand(f"{what}: not a valid frame mask ({err})") from None
    if len(mask) != frame_count:
        raise BadCommand(f"{what} covers {len(mask)} frames; the movie has {frame_count}")
    return mask


def _command(op: str, **fields: Any) -> dict[str, Any]:
    return {"v": REQUEST_VERSION, "op": op, **fields}


def _mask_field(mask: FrameMask | str) -> str:
    """A mask for a command: a FrameMask, or already its base64 wire text (as a client sends it)."""
    return mask if isinstance(mask, str) else mask_to_text(mask)


def open_cmd(request_id: str, client: str, movie: str, wanted: FrameMask | str) -> dict:
    return _command("req_open", request_id=request_id, client=client, movie=movie, wanted=_mask_field(wanted))


def placement_settings(policy: str = "weighted", max_servers: int = 4, server_choice: str = "capacity",
                       backups: int = 2) -> dict:
    """How `req_admit` places a request (`make_strategy`'s arguments), as versioned plain data."""
    return {"v": PLACEMENT_VERSION, "policy": policy, "max_servers": max_servers, "server_choice": server_choice,
            "backups": backups}


def admit_cmd(request_id: str, client: str, movie: str, wanted: FrameMask | str, placement: dict) -> dict:
    """Open a request and strategize it in one log entry (every replica computes the same strategy)."""
    return _command("req_admit", request_id=request_id, client=client, movie=movie, wanted=_mask_field(wanted),
                    placement=placement)


def strategize_cmd(ruid: int, strategy: dict) -> dict:
    return _command("req_strategize", ruid=ruid, strategy=strategy)


def start_cmd(ruid: int, client: str) -> dict:
    return _command("req_start", ruid=ruid, client=client)


def restripe_cmd(ruid: int, strategy: dict, failed: list[str]) -> dict:
    return _command("req_restripe", ruid=ruid, strategy=strategy, failed=sorted(failed))


def cdone_cmd(ruid: int, client: str, held: FrameMask | str) -> dict:
    return _command("req_cdone", ruid=ruid, client=client, held=_mask_field(held))


def cancel_cmd(ruid: int, client: str) -> dict:
    return _command("req_cancel", ruid=ruid, client=client)


def fail_cmd(ruid: int, reason: str) -> dict:
    return _command("req_fail", ruid=ruid, reason=reason)


def is_request_command(command: Mapping) -> bool:
    return isinstance(command, Mapping) and str(command.get("op", "")).startswith("req_")


def strategy_servers(strategy: Any) -> list[str]:
    """The servers a strategy dict assigns frames to, in its order; BadCommand if it is malformed."""
    if not isinstance(strategy, Mapping) or not isinstance(strategy.get("assignments"), list):
        raise BadCommand("a strategy is an object with an assignments list")
    servers = []
    for item in strategy["assignments"]:
        server = item.get("server") if isinstance(item, Mapping) else None
        if not isinstance(server, str) or not server or server in servers:
            raise BadCommand(f"strategy assignment {item!r} has no server or repeats one")
        servers.append(server)
    return servers


def _copied(value: Any) -> Any:
    """A copy of plain JSON data (what records hold): copy.deepcopy without its memo, several times faster."""
    if type(value) is dict:
        return {key: _copied(item) for key, item in value.items()}
    if type(value) is list:
        return [_copied(item) for item in value]
    return value  # str, int, float, bool, None: immutable


def _placement(data: Any) -> dict[str, Any]:
    """`placement_settings` data, checked; BadCommand otherwise."""
    if not isinstance(data, Mapping) or data.get("v") != PLACEMENT_VERSION:
        raise BadCommand(f"placement settings must be a v{PLACEMENT_VERSION} object, not {data!r:.100}")
    settings = {k: data.get(k) for k in ("policy", "max_servers", "server_choice", "backups")}
    if settings["policy"] not in POLICIES or settings["server_choice"] not in SERVER_CHOICES:
        raise BadCommand(f"unknown placement policy or server choice in {data!r:.200}")
    for name, high in (("max_servers", MAX_TAKERS), ("backups", MAX_BACKUPS)):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or not (name == "backups" or value >= 1) \
                or not 0 <= value <= high:
            raise BadCommand(f"placement {name} must be an integer up to {high}, not {value!r:.50}")
    return settings


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A request without its masks: what `vod-admin requests/strategies` lists."""
    strategy = record.get("strategy") or {}
    return {"ruid": record["ruid"], "request_id": record["request_id"], "client": record["client"],
            "user": record.get("user", ""), "movie": record["movie"], "state": record["state"], "reason": record["reason"],
            "revision": record["revision"], "frame_count": record["frame_count"],
            "servers": [a["server"] for a in strategy.get("assignments", [])],
            "backups": list(strategy.get("backups", [])),
            "opened_at": record["opened_at"], "changed_at": record["changed_at"]}


class RequestBook:
    """Every request and every client's cached mask, as plain JSON-able records."""

    def __init__(self) -> None:
        self._requests: dict[int, dict[str, Any]] = {}
        self._by_request_id: dict[str, int] = {}  # "client|request id" -> RUID
        self._caches: dict[str, dict[str, Any]] = {}  # "client|movie" -> {"client", "movie", "mask", "frames"}
        self._now: float | None = None  # the "at" stamp of the command being applied
        self._active: set[int] = set()  # RUIDs in ACTIVE states: what the primary scans on hot paths
        # (movie, wanted, placement, servers) -> the strategy dict without RUID and client (derived data:
        # a pure function's results, not part of the snapshot).
        self._placed: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._wanted_ok: set[tuple[str, int]] = set()  # (short wanted mask, frame count) found valid (derived)

    # -- reading ----------------------------------------------------------------------------------

    def request(self, ruid: int) -> dict[str, Any] | None:
        record = self._requests.get(ruid)
        return _copied(record) if record else None

    def requests(self) -> list[dict[str, Any]]:
        return [_copied(self._requests[r]) for r in sorted(self._requests)]

    def caches(self) -> list[dict[str, Any]]:
        return [_copied(self._caches[k]) for k in sorted(self._caches)]

    def summaries(self, after: int = 0, limit: int = 100, keep=None,
                  active: bool = False) -> tuple[list[dict[str, Any]], dict[str, int], bool]:
        """One page of request summaries, in RUID order: those after RUID `after` that `keep(record)`
        accepts (None: all), at most `limit`; with the counts per state of every accepted request and
        whether more follow. Only the listed records are summarised (the book can be long)."""
        out: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        more = False
        for ruid in sorted(self._active if active else self._requests):
            record = self._requests[ruid]
            if keep is not None and not keep(record):
                continue
            counts[record["state"]] = counts.get(record["state"], 0) + 1
            if ruid > after:
                if len(out) < limit:
                    out.append(summary(record))
                else:
                    more = True
        return out, counts, more

    def active_count(self) -> int:
        return len(self._active)

    def active_for_client(self, client: str) -> list[int]:
        return sorted(r for r in self._active if self._requests[r]["client"] == client)

    def server_load(self) -> dict[str, int]:
        """Active requests per server (no copies: this runs on every admission, under the apply lock)."""
        load: dict[str, int] = {}
        for ruid in self._active:
            strategy = self._requests[ruid]["strategy"]
            for item in (strategy or {}).get("assignments", ()):
                load[item["server"]] = load.get(item["server"], 0) + 1
        return load

    def orphaned(self, live: set[str]) -> list[dict[str, Any]]:
        """Copies of the active requests whose strategy names a server that is gone."""
        out = []
        for ruid in sorted(self._active):
            record = self._requests[ruid]
            servers = [a["server"] for a in (record["strategy"] or {}).get("assignments", ())]
            if any(server not in live for server in servers):
                out.append(_copied(record))
        return out

    def present(self, member_id: str, now: set[int], gone: set[int], groups: GroupState) -> list[Event]:
        """For a resync (`GroupMachine.resync`): the current strategy of each active request of `now` (the
        video groups `member_id` is in), and, to the request's client, its current state, for `now` and
        `gone` (video groups it was in and is not any more: its requests ended meanwhile)."""
        out: list[Event] = []
        for ruid in sorted(now):
            record = self._requests.get(ruid)
            if record is None or record["state"] not in ACTIVE or not record["strategy"]:
                continue
            strategy = record["strategy"]
            addresses = {server: groups.members[server].address for server in strategy_servers(strategy)
                         if server in groups.members}
            out.append(StrategyAssigned(ruid, video_group(ruid), record["revision"],
                                        "restripe" if record["history"] else "initial", _copied(strategy), addresses))
        for ruid in sorted(now | gone):
            record = self._requests.get(ruid)
            if record is not None and record["client"] == member_id:
                out.append(self._changed(record, record["reason"]))
        return out

    # -- applying -----------------------------------------------------------------------------------

    def apply(self, command: Mapping[str, Any], groups: GroupState) -> list[Pushed]:
        if command.get("v") != REQUEST_VERSION:
            raise BadCommand(f"unknown request command version {command.get('v')!r}")
        handler = self._HANDLERS.get(command.get("op"))
        if handler is None:
            raise BadCommand(f"unknown request op {command.get('op')!r}")
        fields = {k: v for k, v in command.items() if k not in ("v", "op", "at")}
        # Wall-clock times come stamped in the command by the primary: replicas never read their own clock.
        at = command.get("at")
        self._now = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
        try:
            return handler(self, groups, **fields)
        except TypeError as err:
            raise BadCommand(f"{command.get('op')}: wrong fields ({err})") from None

    def _open(self, groups: GroupState, request_id, client, movie, wanted) -> list[Pushed]:
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            raise BadCommand("a request id is a string of 1-128 characters")
        member = groups.members.get(client)
        if member is None or member.kind != "client":
            raise BadCommand(f"{client} is not a client of any domain")
        key = f"{client}|{request_id}"
        if key in self._by_request_id:
            record = self._requests[self._by_request_id[key]]
            if record.get("user", "") != member.user:  # the client id was another user's before
                raise BadCommand(f"request id {request_id} of client {client} belongs to another user; "
                                 "use another request id or client id")
            return [(self._changed(record, RETRY_REASON), (client,))]
        info = groups.row(MOVIES_TABLE, movie)  # one row: copying the whole catalogue cost more than the rest
        if info is None:
            raise BadCommand(f"unknown movie {movie!r}: no server of this coordinator group holds it")
        self._check_wanted(wanted, int(info["frame_count"]))
        ruid = next(e.ruid for e in groups.apply_step("next_ruid") if hasattr(e, "ruid"))
        record = {"v": REQUEST_VERSION, "ruid": ruid, "request_id": request_id, "client": client,
                  "user": member.user, "domain": member.domain, "movie": movie,
                  "frame_count": int(info["frame_count"]), "wanted": wanted, "state": PENDING, "strategy": None,
                  "revision": 0, "history": [], "reason": "", "opened_at": self._now, "changed_at": self._now,
                  "log": [{"at": self._now, "state": PENDING, "reason": "admitted", "revision": 0}]}
        self._requests[ruid] = record
        self._by_request_id[key] = ruid
        self._active.add(ruid)
        return [(self._changed(record, "admitted"), (client,))]

    def _admit(self, groups: GroupState, request_id, client, movie, wanted, placement) -> list[Pushed]:
        settings = _placement(placement)  # checked before anything changes
        pushed = self._open(groups, request_id, client, movie, wanted)
        record = self._requests[self._by_request_id[f"{client}|{request_id}"]]
        if record["state"] != PENDING:
            return pushed  # a retry: the request already has its strategy (or has ended)
        try:
            strategy = self._place(groups, record, settings)
        except (NoServers, StrategyError) as err:
            return pushed + self._end(groups, record, FAILED, str(err))
        return pushed + self._strategize(groups, record["ruid"], strategy)

    def _place(self, groups: GroupState, record: dict, settings: dict) -> dict[str, Any]:
        """The strategy of a pending request, from replicated data only: the same on every replica."""
        movie, domain = record["movie"], record["domain"]
        uses_load = settings["server_choice"] == "least_loaded"
        load = self.server_load() if uses_load else {}
        servers = sorted((m.member_id, max(1, m.capacity), load.get(m.member_id, 0))
                         for m in groups.members.values()
                         if m.kind == "server" and m.domain == domain and movie in m.movies)
        key = None
        if len(record["wanted"]) <= CACHE_WANTED_CHARS:
            key = (movie, record["frame_count"], record["wanted"], tuple(sorted(settings.items())), tuple(servers))
            placed = self._placed.get(key)
            if placed is not None:
                self._placed.move_to_end(key)
                return dict(placed, ruid=record["ruid"], client=record["client"])
        wanted = mask_from_text(record["wanted"], record["frame_count"], "wanted mask")
        infos = [ServerInfo(server, capacity, used, frozenset((movie,))) for server, capacity, used in servers]
        strategy = make_strategy(record["ruid"], movie, record["client"], record["frame_count"], wanted, infos,
                                 policy=settings["policy"], max_servers=settings["max_servers"],
                                 server_choice=settings["server_choice"], backups=settings["backups"]).to_dict()
        if key is not None:
            self._placed[key] = {k: v for k, v in strategy.items() if k not in ("ruid", "client")}
            while len(self._placed) > CACHE_ENTRIES:
                self._placed.popitem(last=False)
        return strategy

    def _strategize(self, groups: GroupState, ruid, strategy) -> list[Pushed]:
        record = self._step(ruid, "strategize")
        servers = strategy_servers(strategy)
        group = video_group(ruid)
        members = (record["client"], *sorted(servers))
        if len(set(members)) != len(members) or not all(isinstance(m, str) and m for m in members):
            raise BadCommand(f"video group {group}: members {list(members)!r} are not distinct names")
        # (the checks create_group_cmd's parse made; the transition checks that each is a member)
        pushed: list[Pushed] = [(e, None) for e in groups.apply_step("create_group", name=group, members=members)]
        return pushed + self._assign(groups, record, strategy, "initial", STRATEGIZED)

    def _restripe(self, groups: GroupState, ruid, strategy, failed) -> list[Pushed]:
        record = self._step(ruid, "restripe")
        servers = strategy_servers(strategy)
        group = video_group(ruid)
        # Backups that take frames over join the video group in the same entry (their VIEW), so the
        # new strategy reaches them; failed servers are already out of it.
        pushed: list[Pushed] = [(e, None) for e in groups.apply(
            group_cmds.regroup_cmd(group, [record["client"], *servers]))]
        # The replaced assignments stay: the frames they covered that the new strategy drops had arrived.
        record["history"].append({"at": self._now, "failed": list(failed), "revision": record["revision"] + 1,
                                  "replaced": _copied(record["strategy"]["assignments"])})
        return pushed + self._assign(groups, record, strategy, "restripe", record["state"])

    def _assign(self, groups: GroupState, record: dict, strategy: dict, reason: str, state: str) -> list[Pushed]:
        # One copy, shared by the record and its event: neither is changed in place afterwards (a
        # restripe replaces the record's strategy whole), and copying it twice cost as much as placing it.
        record["strategy"] = strategy = _copied(strategy)
        record["revision"] += 1
        self._move(record, state, groups, reason)
        group = video_group(record["ruid"])
        addresses = {server: groups.members[server].address for server in strategy_servers(strategy)
                     if server in groups.members}
        event = StrategyAssigned(record["ruid"], group, record["revision"], reason, strategy, addresses)
        members = groups.groups[group].members if group in groups.groups else ()
        return [(event, tuple(members)), (self._changed(record, reason), (record["client"],))]

    def _start(self, groups: GroupState, ruid, client) -> list[Pushed]:
        record = self._owned(ruid, client, groups)
        self._step(ruid, "start")
        self._move(record, STREAMING, groups, "first frames arrived")
        return [(self._changed(record, "streaming"), (client,))]

    def _cdone(self, groups: GroupState, ruid, client, held) -> list[Pushed]:
        record = self._owned(ruid, client, groups)
        if record["state"] == DONE:
            return []  # a retry after a lost answer: already done, nothing changes
        self._step(ruid, "cdone")
        held_mask = mask_from_text(held, record["frame_count"], "held mask")
        self._caches[f"{client}|{record['movie']}"] = {"client": client, "user": record.get("user", ""),
                                                       "movie": record["movie"], "mask": held,
                                                       "frames": held_mask.count(),
                                                       "frame_count": record["frame_count"]}
        record["held"] = held
        return self._end(groups, record, DONE, f"CDONE with {held_mask.count()} of {record['frame_count']} frames")

    def _cancel(self, groups: GroupState, ruid, client) -> list[Pushed]:
        record = self._owned(ruid, client, groups)
        if record["state"] == CANCELLED:
            return []  # a retry after a lost answer
        self._step(ruid, "cancel")
        return self._end(groups, record, CANCELLED, "cancelled by the client")

    def _fail(self, groups: GroupState, ruid, reason) -> list[Pushed]:
        record = self._step(ruid, "fail")
        return self._end(groups, record, FAILED, str(reason))

    _HANDLERS = {"req_admit": _admit, "req_open": _open, "req_strategize": _strategize, "req_restripe": _restripe,
                 "req_start": _start, "req_cdone": _cdone, "req_cancel": _cancel, "req_fail": _fail}

    def clients_gone(self, member_ids: list[str], groups: GroupState) -> list[Pushed]:
        """Clients that left or were excluded: their active requests fail and their video groups dissolve."""
        self._now = None  # membership commands carry no time stamp
        pushed: list[Pushed] = []
        if not member_ids:
            return pushed
        gone = set(member_ids)
        for ruid in sorted(r for r in self._active if self._requests[r]["client"] in gone):
            pushed += self._end(groups, self._requests[ruid], FAILED, "the client left or crashed")
        return pushed

    # -- helpers ----------------------------------------------------------------------------------

    def _step(self, ruid: Any, action: str) -> dict:
        record = self._requests.get(ruid) if isinstance(ruid, int) else None
        if record is None:
            raise BadCommand(f"no request with RUID {ruid!r}")
        if (record["state"], action) not in TRANSITIONS:
            raise BadCommand(f"request {ruid} is {record['state']}: cannot {action}")
        return record

    def _owned(self, ruid: Any, client: Any, groups: GroupState) -> dict:
        record = self._requests.get(ruid) if isinstance(ruid, int) else None
        if record is None:
            raise BadCommand(f"no request with RUID {ruid!r}")
        if record["client"] != client:
            raise BadCommand(f"request {ruid} belongs to another client")
        member = groups.members.get(client)
        if member is not None and member.user != record.get("user", ""):
            raise BadCommand(f"request {ruid} belongs to another user")  # the client id changed hands
        return record

    def _move(self, record: dict, state: str, groups: GroupState, reason: str) -> None:
        if state in ACTIVE:
            self._active.add(record["ruid"])
        else:
            self._active.discard(record["ruid"])
        record["state"] = state
        record["reason"] = reason
        record["changed_at"] = self._now
        record.setdefault("log", []).append({"at": self._now, "state": state, "reason": reason,
                                             "revision": record["revision"]})

    def _end(self, groups: GroupState, record: dict, state: str, reason: str) -> list[Pushed]:
        group = video_group(record["ruid"])
        pushed: list[Pushed] = []
        if group in groups.groups:
            pushed = [(e, None) for e in groups.apply_step("dissolve_group", name=group)]
        self._move(record, state, groups, reason)
        return pushed + [(self._changed(record, reason), (record["client"],))]

    def _check_wanted(self, wanted: Any, frame_count: int) -> None:
        """BadCommand unless `wanted` is a valid, non-empty mask of `frame_count` frames.

        Short masks (a whole movie, a range) that passed are remembered: the same few come with most
        requests, and decoding each again was a tenth of an admission's apply on every replica."""
        key = (wanted, frame_count)
        if isinstance(wanted, str) and key in self._wanted_ok:
            return
        if not mask_from_text(wanted, frame_count, "wanted mask").count():
            raise BadCommand("the wanted mask is empty: nothing to send")
        if len(wanted) <= CACHE_WANTED_CHARS:
            if len(self._wanted_ok) >= CACHE_ENTRIES:
                self._wanted_ok.clear()
            self._wanted_ok.add(key)

    @staticmethod
    def _changed(record: dict, reason: str) -> RequestChanged:
        return RequestChanged(record["ruid"], record["request_id"], record["client"], record["state"], reason)

    # -- snapshot -------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"v": REQUEST_VERSION, "requests": self.requests(), "caches": self.caches()}

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> "RequestBook":
        if data.get("v") != REQUEST_VERSION:
            raise BadCommand(f"unknown request book snapshot version {data.get('v')!r}")
        book = cls()
        for record in data["requests"]:
            book._requests[record["ruid"]] = _copied(record)
            if record["state"] in ACTIVE:
                book._active.add(record["ruid"])
            book._by_request_id[f"{record['client']}|{record['request_id']}"] = record["ruid"]
        for cache in data["caches"]:
            book._caches[f"{cache['client']}|{cache['movie']}"] = _copied(cache)
        return book
