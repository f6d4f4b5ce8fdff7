"""Placement: which live servers send which frames of a movie to one client.

A `Strategy` answers one request (RUID): up to `max_servers` assignments
`(server, FrameMask)` whose masks are pairwise disjoint and together are the
frames the client wants, plus backup servers that can take over frames later.
Everything here is a pure, deterministic function of its arguments: no IO, no
clock, no randomness, ties broken by server id.

Two independent choices make a strategy, each a small registry:

- *which servers* (`SERVER_CHOICES`): only servers holding the movie; "capacity"
  prefers the highest declared capacity, "least_loaded" the lowest
  load / capacity.  The first `max_servers` take part, the next ones are backups.
- *how much each sends* (`POLICIES`): "interleave" gives equal shares (server 0
  of 4 sends frames 0, 4, 8, ...: the design's `1000100010001...`),
  "weighted" gives shares proportional to capacity.

The frames are dealt by `deal`, a weighted interleave over the wanted frames in
order.  Its guarantee, for every prefix of the wanted frames (every window
that starts at the first frame a client still needs), is that each server has
sent strictly within one frame of its exact share: after `t` frames a server of
weight `w` out of `W` has sent `floor(t*w/W)` or `ceil(t*w/W)` frames, never
more, never fewer.  So every server is busy from the first frame on, and a
crash at any moment leaves each survivor at most one frame ahead of or behind
its share.  The totals are the t = count case of the same promise.

How: with share p = w/W, a server's k-th frame may not be dealt before
position floor((k-1)/p) + 1 (its count would pass ceil(t*p)) and must be dealt
by ceil(k/p) (or its count would fall below floor(t*p)).  These are unit jobs
with release times and deadlines on one machine.  A schedule meeting every
window exists (Balinski and Young's quota method, 1975; Hall's condition: the
windows inside positions [a, b] number sum(max(0, floor(b*p_i) -
ceil((a-1)*p_i))) <= b - a + 1), some job is always ready (sum(ceil(t*p_i)) >=
t), and earliest deadline first meets every deadline whenever any order does.
Ties go to the job released first, then to the server dealt first, which makes
equal weights plain round-robin (`FrameMask.stripe`).  After one period (the
weights over their gcd, summed) every server has exactly its share, so the
schedule repeats and costs min(frames, period) steps.

Why not largest-remainder (Hamilton) totals: Hamilton's rounding is not
monotone in the number of frames (the Alabama paradox), and sometimes no
dealing order that stays within one frame at every prefix ends on it (weights
3, 1, 669, 1, 433, 17 over 492 frames).  The totals here are still within one
frame of the exact share, which is what Hamilton's method promises.

Example: two servers, one with twice the capacity of the other, nine frames.

>>> a = ServerInfo("a", capacity=2, load=0, movies=frozenset({"m"}))
>>> b = ServerInfo("b", capacity=1, load=0, movies=frozenset({"m"}))
>>> s = make_strategy(7, "m", "client-1", 9, FrameMask.full(9), [b, a])
>>> [(x.server_id, x.mask.to_text()) for x in s.assignments]
[('a', '101101101'), ('b', '010010010')]
>>> make_strategy(7, "m", "client-1", 9, FrameMask.full(9), [a, b], policy="interleave").mask_of("a").to_text()
'101010101'
"""

from __future__ import annotations

import base64
import binascii
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any


from vod.errors import MaskError, VodError
from vod.strategy.mask import MAX_FRAMES, FrameMask

__all__ = [
    "STRATEGY_VERSION", "MAX_TAKERS", "POLICIES", "SERVER_CHOICES",
    "ServerInfo", "Assignment", "Strategy", "StrategyError", "NoServers",
    "deal", "rank_servers", "make_strategy",
]

STRATEGY_VERSION = 1
# `deal` labels each frame with its taker's index in one byte, 0xff meaning "not dealt".
MAX_TAKERS = 255


class StrategyError(VodError, ValueError):
    """Arguments a strategy cannot be built from, or a strategy record that does not decode."""

    exit_code = 2


class NoServers(VodError):
    """No live server holds the movie, so nobody can send the frames."""


@dataclass(frozen=True)
class ServerInfo:
    """What the coordinator knows of one live server.

    `capacity` is the relative bandwidth share the server declared; `load` is
    what it is already sending (frames or streams, as long as all servers use
    the same unit), used only by the "least_loaded" choice.
    """

    server_id: str
    capacity: int
    load: int
    movies: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.server_id, str) or not self.server_id:
            raise StrategyError(f"a server id must be a non-empty string, not {self.server_id!r}")
        if not _is_int(self.capacity) or self.capacity <= 0:
            raise StrategyError(f"server {self.server_id}: capacity must be a positive integer, not {self.capacity!r}")
        if not _is_int(self.load) or self.load < 0:
            raise StrategyError(f"server {self.server_id}: load must be a non-negative integer, not {self.load!r}")
        if isinstance(self.movies, str):  # frozenset("abc") would be three one-letter movies
            raise StrategyError(f"server {self.server_id}: movies must be a set of ids, not the string {self.movies!r}")
        object.__setattr__(self, "movies", frozenset(self.movies))


@dataclass(frozen=True)
class Assignment:
    """`server_id` sends the frames of `mask`."""

    server_id: str
    mask: FrameMask


@dataclass(frozen=True)
class Strategy:
    """Who sends which frames for request `ruid`.

    Invariants, checked on construction: masks cover `frame_count` frames, are
    non-empty and pairwise disjoint, server ids are distinct, and no backup is
    also assigned.  `assignments` are in dealing order (the order of the server
    choice rule); `policy` and `server_choice` are kept so a restripe deals the
    same way.
    """

    ruid: int
    movie_id: str
    client_id: str
    frame_count: int
    assignments: tuple[Assignment, ...]
    backups: tuple[str, ...]
    policy: str = "weighted"
    server_choice: str = "capacity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignments", tuple(self.assignments))
        object.__setattr__(self, "backups", tuple(self.backups))
        if not _is_int(self.ruid) or self.ruid < 0:
            raise StrategyError(f"a RUID is a non-negative integer, not {self.ruid!r}")
        for name in ("movie_id", "client_id"):
            if not isinstance(getattr(self, name), str):
                raise StrategyError(f"{name} must be a string, not {getattr(self, name)!r}")
        if not _is_int(self.frame_count) or not 0 <= self.frame_count <= MAX_FRAMES:
            raise StrategyError(f"frame_count must be an integer in 0..{MAX_FRAMES}, not {self.frame_count!r}")
        _policy(self.policy)
        _choice(self.server_choice)
        covered = FrameMask(self.frame_count)
        seen: set[str] = set()
        for a in self.assignments:
            if not isinstance(a, Assignment) or not isinstance(a.mask, FrameMask) \
                    or not isinstance(a.server_id, str) or not a.server_id:
                raise StrategyError(f"an assignment is Assignment(server_id, FrameMask), not {a!r}")
            if a.server_id in seen:
                raise StrategyError(f"server {a.server_id} is assigned twice")
            if len(a.mask) != self.frame_count:
                raise StrategyError(f"server {a.server_id}'s mask covers {len(a.mask)} frames, "
                                    f"the movie has {self.frame_count}")
            # An empty assignment would put an idle server in the video group.
            if not a.mask:
                raise StrategyError(f"server {a.server_id} is assigned no frames")
            if not a.mask.isdisjoint(covered):
                raise StrategyError(f"server {a.server_id} is assigned frames another server already sends")
            seen.add(a.server_id)
            covered |= a.mask
        for backup in self.backups:
            if not isinstance(backup, str) or not backup:
                raise StrategyError(f"a backup is a server id, not {backup!r}")
        if len(set(self.backups)) != len(self.backups) or seen.intersection(self.backups):
            raise StrategyError("backups must be distinct servers that are not assigned frames")

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers that send frames, in dealing order."""
        return tuple(a.server_id for a in self.assignments)

    @property
    def wanted(self) -> FrameMask:
        """Every frame this strategy delivers: the union of its masks."""
        return _union(self.frame_count, (a.mask for a in self.assignments))

    def mask_of(self, server_id: str) -> FrameMask:
        """The frames `server_id` sends; KeyError if it has no assignment."""
        for a in self.assignments:
            if a.server_id == server_id:
                return a.mask
        raise KeyError(f"server {server_id} has no assignment in strategy {self.ruid}")

    # -- plain JSON data ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Version-1 JSON data; each mask is `FrameMask.to_bytes(periodic=True)` in standard base64.

            {"v": 1, "ruid": 7, "movie": "m", "client": "c1", "frame_count": 9,
             "policy": "weighted", "server_choice": "capacity",
             "assignments": [{"server": "a", "mask": "AQAQ..."}, ...],
             "backups": ["c"]}

        base64 of the wire form, not the '0'/'1' text: the text costs a byte
        per frame, the wire form at most n/8 + 3 bytes (far less for sparse
        masks), so 4/3 of that in base64 (about 17 KB per striped mask of a
        100,000-frame movie against 100 KB); and a whole movie's masks are
        periodic, so they go as their period: 12 bytes each, whatever the length.
        """
        return {
            "v": STRATEGY_VERSION,
            "ruid": self.ruid,
            "movie": self.movie_id,
            "client": self.client_id,
            "frame_count": self.frame_count,
            "policy": self.policy,
            "server_choice": self.server_choice,
            "assignments": [{"server": a.server_id, "mask": _mask_to_text(a.mask)} for a in self.assignments],
            "backups": list(self.backups),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Strategy:
        """Rebuild `to_dict` output; StrategyError for anything else."""
        if not isinstance(data, Mapping):
            raise StrategyError(f"a strategy record is an object, not {type(data).__name__}")
        version = data.get("v")
        if type(version) is not int or version != STRATEGY_VERSION:
            raise StrategyError(f"unsupported strategy record version {version!r}")
        try:
            frame_count = data["frame_count"]
            assignments = data["assignments"]
            if not _is_int(frame_count) or not isinstance(assignments, list):
                raise StrategyError("frame_count must be an integer and assignments a list")
            return cls(
                ruid=data["ruid"],
                movie_id=data["movie"],
                client_id=data["client"],
                frame_count=frame_count,
                assignments=tuple(
                    Assignment(item["server"], _mask_from_text(item["mask"], frame_count)) for item in assignments
                ),
                backups=tuple(_list(data["backups"], "backups")),
                policy=data["policy"],
                server_choice=data["server_choice"],
            )
        except (KeyError, TypeError) as err:
            raise StrategyError(f"malformed strategy record: {type(err).__name__} {err}") from None


# -- registries ---------------------------------------------------------------

# A policy turns the chosen servers (in dealing order) into their relative shares.
Policy = Callable[[Sequence[ServerInfo]], list[int]]
POLICIES: dict[str, Policy] = {
    "interleave": lambda servers: [1] * len(servers),
    "weighted": lambda servers: [s.capacity for s in servers],
}

# A server choice is a sort key: servers earlier in that order are used first.
ServerChoice = Callable[[ServerInfo], Any]
SERVER_CHOICES: dict[str, ServerChoice] = {
    "capacity": lambda s: (-s.capacity, s.server_id),
    # Exact ratios: floats could order two equally loaded servers by rounding noise.
    "least_loaded": lambda s: (Fraction(s.load, s.capacity), s.server_id),
}


def _policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise StrategyError(f"unknown placement policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


def _choice(name: str) -> ServerChoice:
    try:
        return SERVER_CHOICES[name]
    except (KeyError, TypeError):
        raise StrategyError(f"unknown server choice {name!r}; known: {', '.join(sorted(SERVER_CHOICES))}") from None


def rank_servers(servers: Iterable[ServerInfo], movie_id: str, server_choice: str = "capacity") -> list[ServerInfo]:
    """The servers holding `movie_id`, best first by the named choice rule.

    >>> fast = ServerInfo("fast", 4, load=8, movies={"m"})
    >>> idle = ServerInfo("idle", 1, load=0, movies={"m"})
    >>> [s.server_id for s in rank_servers([idle, fast], "m")]
    ['fast', 'idle']
    >>> [s.server_id for s in rank_servers([idle, fast], "m", "least_loaded")]
    ['idle', 'fast']
    """
    key = _choice(server_choice)
    holders = [s for s in servers if movie_id in s.movies]
    ids = [s.server_id for s in holders]
    if len(set(ids)) != len(ids):
        raise StrategyError(f"server ids must be distinct: {sorted(ids)}")
    return sorted(holders, key=key)


# -- dealing ------------------------------------------------------------------


def _quota_sequence(length: int, weights: Sequence[int]) -> bytes:
    """Taker index for each of `length` positions, by earliest deadline first (see the module docstring)."""
    whole = sum(weights)
    out = bytearray(length)
    # Ready jobs as (deadline, release, taker), positions counted from 1: the
    # k-th frame of taker i may go no earlier than k_release and no later than
    # k_deadline.  Each taker has exactly one job pending, ready or later.
    ready = [(-(-whole // w), 1, i) for i, w in enumerate(weights)]
    heapq.heapify(ready)
    later: dict[int, list[tuple[int, int, int]]] = {}
    dealt = [0] * len(weights)
    replace, pop, push = heapq.heapreplace, heapq.heappop, heapq.heappush
    for t in range(1, length + 1):
        if t in later:
            for job in later.pop(t):
                push(ready, job)
        i = ready[0][2]
        out[t - 1] = i
        k = dealt[i] = dealt[i] + 1
        w = weights[i]
        release, deadline = k * whole // w + 1, -(-(k + 1) * whole // w)
        if release <= t + 1:
            replace(ready, (deadline, release, i))
        else:
            pop(ready)
            later.setdefault(release, []).append((deadline, release, i))
    return bytes(out)


def _dealing_order(count: int, weights: Sequence[int]) -> bytes:
    """Taker index for each of `count` frames in order.

    After one period (the weights over their gcd, summed) every taker has
    exactly its share and its next window starts a period later, so the
    schedule repeats: the cost is min(count, period) steps, not count.
    """
    divisor = math.gcd(*weights)
    reduced = [w // divisor for w in weights]
    period = sum(reduced)
    order = _quota_sequence(min(count, period), reduced)
    if count > period:
        periods, rest = divmod(count, period)
        order = order * periods + order[:rest]
    return order


def deal(frames: FrameMask, weights: Sequence[int]) -> list[FrameMask]:
    """Deal the frames of `frames`, in order, to takers with these relative weights.

    The weighted form of `FrameMask.stripe`: one mask per weight, pairwise
    disjoint, union `frames`.  After any number t of the frames, a taker of
    weight w out of W holds floor(t*w/W) or ceil(t*w/W) of them, so strictly
    within one frame of its exact share; that includes the totals.  Equal
    weights give exactly `frames.stripe(len(weights))`.

    >>> [m.to_text() for m in deal(FrameMask.full(10), [3, 1, 1])]
    ['1100111001', '0010000100', '0001000010']
    """
    if not 1 <= len(weights) <= MAX_TAKERS or not all(_is_int(w) and w > 0 for w in weights):
        raise StrategyError(f"deal needs 1..{MAX_TAKERS} positive integer weights, not {list(weights)!r}")
    # imported here, not at the top: clients import this module for `Strategy`, and numpy is ~60 ms of start-up
    import numpy as np

    order = np.frombuffer(_dealing_order(frames.count(), weights), dtype=np.uint8)
    if len(order) == len(frames):
        placed = order  # every frame is dealt: ranks are frame numbers
    else:
        # The i-th label goes to the i-th wanted frame; 0xff marks the frames nobody sends.
        placed = np.full(len(frames), 0xFF, dtype=np.uint8)
        placed[np.frombuffer(frames.bits.unpack(), dtype=np.uint8).nonzero()[0]] = order
    # One vectorised comparison and bit-pack per taker.
    return [FrameMask.from_packed(len(frames), np.packbits(placed == i).tobytes()) for i in range(len(weights))]


# -- strategies ---------------------------------------------------------------


def make_strategy(
    ruid: int,
    movie_id: str,
    client_id: str,
    frame_count: int,
    wanted: FrameMask,
    servers: Sequence[ServerInfo],
    policy: str = "weighted",
    max_servers: int = 4,
    server_choice: str = "capacity",
    backups: int = 2,
) -> Strategy:
    """The strategy for request `ruid`: `wanted` dealt across the best `max_servers` holders of the movie.

    Servers whose share rounds to no frame at all are left out of the
    assignments and may serve as backups instead.  An empty `wanted` needs no
    server and gives a strategy without assignments.  Raises `NoServers` when
    frames are wanted and no server holds the movie.

    >>> servers = [ServerInfo(f"s{i}", 1, 0, {"m"}) for i in range(6)]
    >>> s = make_strategy(1, "m", "c", 13, FrameMask.full(13), servers, policy="interleave")
    >>> s.servers, s.backups
    (('s0', 's1', 's2', 's3'), ('s4', 's5'))
    >>> s.mask_of("s0").to_text()
    '1000100010001'
    """
    weigh = _policy(policy)
    _check_count("max_servers", max_servers, 1, MAX_TAKERS)
    _check_count("backups", backups, 0, None)
    if not isinstance(wanted, FrameMask) or len(wanted) != frame_count:
        raise StrategyError(f"wanted must be a FrameMask of the movie's {frame_count} frames, not {wanted!r}")
    ranked = rank_servers(servers, movie_id, server_choice)
    if wanted and not ranked:
        raise NoServers(f"no live server holds movie {movie_id!r}; cannot serve request {ruid}")
    takers = ranked[:max_servers]
    masks = deal(wanted, weigh(takers)) if wanted else []
    assignments = tuple(Assignment(s.server_id, m) for s, m in zip(takers, masks) if m)
    return Strategy(ruid, movie_id, client_id, frame_count, assignments,
                    _backups(ranked, assignments, backups), policy, server_choice)


def _backups(ranked: Sequence[ServerInfo], assignments: Iterable[Assignment], limit: int) -> tuple[str, ...]:
    """The first `limit` ranked servers that send nothing."""
    busy = {a.server_id for a in assignments}
    return tuple(s.server_id for s in ranked if s.server_id not in busy)[:limit]


# -- helpers ------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(name: str, value: object, low: int, high: int | None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise StrategyError(f"{name} must be an integer {bounds}, not {value!r}")


def _union(frame_count: int, masks: Iterable[FrameMask]) -> FrameMask:
    union = FrameMask(frame_count)
    for mask in masks:
        union |= mask
    return union


def _list(value: object, name: str) -> list:
    if not isinstance(value, list):
        raise StrategyError(f"{name} must be a list, not {type(value).__name__}")
    return value


def _mask_to_text(mask: FrameMask) -> str:
    return base64.b64encode(mask.to_bytes(periodic=True)).decode("ascii")


def _mask_from_text(text: object, frame_count: int) -> FrameMask:
    if not isinstance(text, str):
        raise StrategyError(f"a mask is base64 text, not {type(text).__name__}")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
        return FrameMask.from_bytes(data, max_length=frame_count, length=frame_count)
    except (binascii.Error, UnicodeEncodeError, MaskError) as err:
        raise StrategyError(f"bad mask in strategy record: {err}") from None
