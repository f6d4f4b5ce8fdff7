"""Restriping: who takes a crashed server's frames.

The design's answer: only the frames the client still lacks move.  When
servers fail, the coordinator takes the client's latest held mask and

1. drops every frame the client already holds from every assignment (nobody
   re-sends what arrived, whoever sent it);
2. lets each surviving server keep its own missing frames unchanged, so
   streams that are flowing are not disturbed;
3. deals the failed servers' missing frames, earliest first, across the
   survivors and backups together by the strategy's own policy (`deal`), so
   the next frames due come from every taker at once instead of piling on
   one server while the client's playout buffer drains.

Takers are the survivors (assigned servers that are live and still have
frames to send, in their order) and then other live servers holding the
movie, best first by the strategy's server choice, up to `max_servers` in all;
survivors are never dropped to make room.  A taker whose share of the moved
frames rounds to nothing and that has nothing of its own stays out of the
assignments (it may be a backup).  The result is a strategy for the
same RUID whose masks are disjoint and cover exactly the frames the strategy
delivered minus those held.

>>> from vod.strategy.mask import FrameMask
>>> from vod.strategy.placement import ServerInfo, make_strategy
>>> live = [ServerInfo(s, 1, 0, {"m"}) for s in ("a", "b", "c", "d")]
>>> old = make_strategy(9, "m", "cl", 12, FrameMask.full(12), live, policy="interleave", max_servers=3)
>>> [(x.server_id, x.mask.to_text()) for x in old.assignments], old.backups
([('a', '100100100100'), ('b', '010010010010'), ('c', '001001001001')], ('d',))
>>> held = FrameMask.from_text("111000000000")   # "c" dies after 3 frames arrived
>>> new = restripe(old, {"c"}, held, live)
>>> [(x.server_id, x.mask.to_text()) for x in new.assignments]
[('a', '000101100100'), ('b', '000010011010'), ('d', '000000000001')]
>>> new.ruid, new.backups
(9, ())
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from vod.strategy.mask import FrameMask
# The underscored helpers are shared within vod.strategy, not part of its API.
from vod.strategy.placement import (
    MAX_TAKERS, POLICIES, Assignment, NoServers, ServerInfo, Strategy, StrategyError,
    _backups, _check_count, _union, deal, rank_servers,
)

__all__ = ["restripe", "without_held"]


def without_held(strategy: Strategy, held: FrameMask) -> Strategy:
    """`strategy` with the frames the client holds taken out; servers left with nothing drop out.

    What a restarted or reconnecting client needs: the same senders, minus
    what already arrived.

    >>> from vod.strategy.placement import ServerInfo, make_strategy
    >>> s = make_strategy(1, "m", "c", 4, FrameMask.full(4), [ServerInfo(x, 1, 0, {"m"}) for x in "ab"])
    >>> [(a.server_id, a.mask.to_text()) for a in without_held(s, FrameMask.from_text("1110")).assignments]
    [('b', '0001')]
    """
    _check_held(strategy, held)
    kept = (Assignment(a.server_id, a.mask - held) for a in strategy.assignments)
    return replace(strategy, assignments=tuple(a for a in kept if a.mask))


def restripe(
    strategy: Strategy,
    failed: Collection[str],
    held: FrameMask,
    live_servers: Sequence[ServerInfo],
    max_servers: int = 4,
    backups: int | None = None,
) -> Strategy:
    """A new strategy for `strategy.ruid` after `failed` servers crashed and the client holds `held`.

    An assigned server missing from `live_servers`, or no longer holding the
    movie, counts as failed too: it cannot send.  `backups` is how many
    backups to name afterwards (default: as many as before).  Raises
    `NoServers` when frames must move and no live server holding the movie is
    left to take them.
    """
    _check_held(strategy, held)
    if isinstance(failed, str):  # "s1" would otherwise fail servers "s" and "1"
        raise StrategyError(f"failed must be a collection of server ids, not the string {failed!r}")
    _check_count("max_servers", max_servers, 1, MAX_TAKERS)
    backups = len(strategy.backups) if backups is None else backups
    _check_count("backups", backups, 0, None)
    ranked = [s for s in rank_servers(live_servers, strategy.movie_id, strategy.server_choice)
              if s.server_id not in failed]
    live = {s.server_id: s for s in ranked}
    remaining = without_held(strategy, held)
    survivors = [a for a in remaining.assignments if a.server_id in live]
    orphaned = _union(strategy.frame_count, (a.mask for a in remaining.assignments if a.server_id not in live))

    kept = {a.server_id for a in survivors}
    newcomers = [s for s in ranked if s.server_id not in kept][: max(0, max_servers - len(survivors))]
    takers = [live[a.server_id] for a in survivors] + newcomers
    if orphaned and not takers:
        raise NoServers(f"no live server holding movie {strategy.movie_id!r} can take the "
                        f"{orphaned.count()} frames request {strategy.ruid} still needs")
    shares = deal(orphaned, POLICIES[strategy.policy](takers)) if takers else []
    own = [a.mask for a in survivors] + [FrameMask(strategy.frame_count)] * len(newcomers)
    assignments = tuple(
        Assignment(server.server_id, mine | extra) for server, mine, extra in zip(takers, own, shares) if mine or extra
    )
    return replace(strategy, assignments=assignments, backups=_backups(ranked, assignments, backups))


def _check_held(strategy: Strategy, held: FrameMask) -> None:
    if not isinstance(held, FrameMask) or len(held) != strategy.frame_count:
        raise StrategyError(f"the held mask must cover the movie's {strategy.frame_count} frames, not {held!r}")
