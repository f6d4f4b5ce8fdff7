"""Restriping: only missing frames move, spread across survivors and backups, earliest first."""

import doctest
import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vod.strategy.mask import FrameMask
from vod.strategy.placement import POLICIES, NoServers, ServerInfo, StrategyError, make_strategy, rank_servers
from vod.strategy.restripe import restripe, without_held

MOVIE = "m"
CHOICES = ["capacity", "least_loaded"]


def pool_of(specs):
    return [ServerInfo(server_id, capacity, load, frozenset({MOVIE})) for server_id, capacity, load in specs]


@st.composite
def scenarios(draw):
    """A strategy, then a crash: which servers failed, what the client holds, who is still live."""
    n = draw(st.integers(0, 200))
    ids = draw(st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=8, unique=True))
    pool = [
        ServerInfo(i, draw(st.integers(1, 9)), draw(st.integers(0, 20)),
                   frozenset(draw(st.sampled_from([{MOVIE}, {MOVIE}, {MOVIE}, {"x"}]))))
        for i in ids
    ]
    if not any(MOVIE in s.movies for s in pool):
        pool[0] = ServerInfo(pool[0].server_id, 1, 0, frozenset({MOVIE}))
    # Random bits from a drawn seed: far cheaper to generate than drawing each frame.
    rng = draw(st.randoms(use_true_random=False))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    wanted = FrameMask.from_indices(n, (i for i in range(n) if rng.random() < density))
    policy = draw(st.sampled_from(sorted(POLICIES)))
    choice = draw(st.sampled_from(CHOICES))
    strategy = make_strategy(11, MOVIE, "cl", n, wanted, pool, policy, draw(st.integers(1, 5)), choice,
                             draw(st.integers(0, 3)))
    failed = set(draw(st.lists(st.sampled_from(ids))))
    # Playback reaches some point; a few frames after it may have arrived early.
    upto = draw(st.integers(0, n))
    early = draw(st.sets(st.integers(0, n - 1), max_size=5)) if n else set()
    held = FrameMask.from_ranges(n, [(0, upto)]) | FrameMask.from_indices(n, early)
    # Some servers vanish without being named as failed: they are simply not live any more.
    live = [s for s in pool if s.server_id not in failed or draw(st.booleans())]
    live = [s for s in live if draw(st.integers(0, 9)) > 0]
    return strategy, failed, held, live


def takers_of(old, failed, held, live, max_servers):
    """Who may take moved frames, restated from the documented rule: survivors that still
    send something, then the best other live holders, up to max_servers."""
    ranked = [s for s in rank_servers(live, MOVIE, old.server_choice) if s.server_id not in failed]
    live_ids = {s.server_id for s in ranked}
    survivors = [a.server_id for a in old.assignments if a.server_id in live_ids and a.mask - held]
    others = [s.server_id for s in ranked if s.server_id not in survivors]
    by_id = {s.server_id: s for s in ranked}
    return [by_id[i] for i in survivors + others[: max(0, max_servers - len(survivors))]]


def gone(old, failed, live):
    live_ids = {s.server_id for s in live if MOVIE in s.movies}
    return {a.server_id for a in old.assignments if a.server_id in failed or a.server_id not in live_ids}


@settings(max_examples=150)
@given(scenarios(), st.integers(1, 8))
def test_restripe_invariants(scenario, max_servers):
    old, failed, held, live = scenario
    lost = gone(old, failed, live)
    moved = FrameMask(old.frame_count)
    for a in old.assignments:
        if a.server_id in lost:
            moved |= a.mask - held
    takers = takers_of(old, failed, held, live, max_servers)
    if moved and not takers:
        with pytest.raises(NoServers):
            restripe(old, failed, held, live, max_servers)
        return
    new = restripe(old, failed, held, live, max_servers)

    assert (new.ruid, new.movie_id, new.client_id, new.frame_count, new.policy, new.server_choice) == (
        old.ruid, old.movie_id, old.client_id, old.frame_count, old.policy, old.server_choice)
    assert new.wanted == old.wanted - held
    union = FrameMask(new.frame_count)
    for a in new.assignments:
        assert a.mask.isdisjoint(union)
        union |= a.mask
    assert not (set(new.servers) | set(new.backups)) & (failed | lost)
    assert set(new.servers) <= {t.server_id for t in takers}
    survivors = [a for a in old.assignments if a.server_id not in lost and a.mask - held]
    assert len(new.assignments) <= max(max_servers, len(survivors))

    for a in old.assignments:
        if a.server_id not in lost and a.mask - held:
            # A survivor keeps every frame of its own still missing, and gains only moved ones.
            mine = new.mask_of(a.server_id)
            assert (a.mask - held).issubset(mine)
            assert (mine - (a.mask - held)).issubset(moved)

    # The moved frames, in order, are dealt within one frame of each taker's share at every prefix.
    weights = POLICIES[old.policy](takers)
    total = sum(weights)
    index = {t.server_id: i for i, t in enumerate(takers)}
    owner = {f: index[a.server_id] for a in new.assignments for f in a.mask & moved}
    counts = [0] * len(takers)
    for t, frame in enumerate(moved, 1):
        counts[owner[frame]] += 1
        for i, w in enumerate(weights):
            assert abs(counts[i] * total - t * w) < total

    ranked_idle = [s.server_id for s in rank_servers(live, MOVIE, old.server_choice)
                   if s.server_id not in failed and s.server_id not in new.servers]
    assert list(new.backups) == ranked_idle[: len(old.backups)]


@settings(max_examples=50)
@given(scenarios())
def test_restriping_again_for_the_same_crash_changes_nothing(scenario):
    old, failed, held, live = scenario
    try:
        once = restripe(old, failed, held, live)
    except NoServers:
        return
    assert restripe(once, failed, held, live) == once


@settings(max_examples=50)
@given(scenarios())
def test_without_held_drops_exactly_the_held_frames(scenario):
    old, _, held, _ = scenario
    trimmed = without_held(old, held)
    assert trimmed.wanted == old.wanted - held
    assert all(a.mask == old.mask_of(a.server_id) - held for a in trimmed.assignments)
    assert trimmed.backups == old.backups


def interleaved(n=12, count=4, max_servers=3, **kw):
    pool = pool_of((f"s{i}", 1, 0) for i in range(count))
    return pool, make_strategy(3, MOVIE, "cl", n, FrameMask.full(n), pool, "interleave", max_servers, **kw)


def test_the_next_frames_due_come_from_every_taker_at_once():
    pool, old = interleaved(n=24, count=4, max_servers=3)
    # s1 dies before anything arrived: its frames 1, 4, 7, ... are dealt over s0, s2 and the backup s3.
    new = restripe(old, {"s1"}, FrameMask(24), pool)
    moved = list(old.mask_of("s1"))
    first = [next(a.server_id for a in new.assignments if f in a.mask) for f in moved[:3]]
    assert sorted(first) == ["s0", "s2", "s3"]
    assert [new.mask_of(s).count() for s in ("s0", "s2", "s3")] == [8 + 3, 8 + 3, 2]


def test_only_missing_frames_move():
    pool, old = interleaved()
    held = FrameMask.from_text("111111110000")
    new = restripe(old, {"s2"}, held, pool)
    # s2 had frames 2, 5, 8, 11; 2 and 5 arrived, so only 8 and 11 move.
    assert [(a.server_id, a.mask.to_text()) for a in new.assignments] == [
        ("s0", "000000001100"), ("s1", "000000000011")]
    assert new.backups == ("s3",)


def test_survivors_are_preferred_to_backups_when_room_is_short():
    pool, old = interleaved(count=4, max_servers=3)
    new = restripe(old, {"s0"}, FrameMask(12), pool, max_servers=2)
    assert new.servers == ("s1", "s2")
    assert new.backups == ("s3",)


def test_backups_follow_the_strategy_choice_rule():
    pool = pool_of([("a", 1, 0), ("b", 1, 0), ("busy", 9, 90), ("calm", 1, 0)])
    old = make_strategy(3, MOVIE, "cl", 8, FrameMask.full(8), pool, max_servers=1, server_choice="least_loaded",
                        backups=2)
    assert old.servers == ("a",) and old.backups == ("b", "calm")
    new = restripe(old, {"a"}, FrameMask(8), pool, max_servers=1)
    assert new.servers == ("b",)
    assert new.backups == ("calm", "busy")


def test_failed_servers_leave_the_backups_too():
    pool, old = interleaved(count=5, max_servers=2, backups=3)
    assert old.backups == ("s2", "s3", "s4")
    new = restripe(old, {"s2", "s4"}, FrameMask(12), pool, max_servers=2)
    assert new.servers == ("s0", "s1") and new.backups == ("s3",)


def test_a_server_missing_from_the_live_list_counts_as_failed():
    pool, old = interleaved(count=3)
    assert restripe(old, set(), FrameMask(12), pool[1:]) == restripe(old, {"s0"}, FrameMask(12), pool)


def test_no_live_holder_left_raises_no_servers():
    pool, old = interleaved(count=3)
    with pytest.raises(NoServers, match="'m'"):
        restripe(old, {"s0", "s1", "s2"}, FrameMask(12), pool)
    other_movie = [ServerInfo("z", 1, 0, frozenset({"x"}))]
    with pytest.raises(NoServers):
        restripe(old, {"s0", "s1", "s2"}, FrameMask(12), other_movie)


def test_nothing_to_move_needs_no_server():
    pool, old = interleaved(count=3)
    new = restripe(old, {"s0", "s1", "s2"}, FrameMask.full(12), pool)
    assert new.assignments == () and new.backups == ()


def test_no_failure_only_trims_held_frames():
    pool, old = interleaved(count=3)
    held = FrameMask.from_text("110000000001")
    assert restripe(old, set(), held, pool) == without_held(old, held)


def test_weighted_restripe_uses_capacities():
    pool = pool_of([("big", 3, 0), ("small", 1, 0), ("gone", 4, 0)])
    old = make_strategy(3, MOVIE, "cl", 16, FrameMask.full(16), pool)
    new = restripe(old, {"gone"}, FrameMask(16), pool)
    moved = old.mask_of("gone")
    assert (new.mask_of("big") & moved).count() == 6
    assert (new.mask_of("small") & moved).count() == 2


def test_held_mask_must_fit_the_movie():
    pool, old = interleaved()
    with pytest.raises(StrategyError, match="12 frames"):
        restripe(old, set(), FrameMask(13), pool)
    with pytest.raises(StrategyError):
        without_held(old, FrameMask(3))


def test_docstring_examples():
    # The package exports the function `restripe`, which hides the module of the same name as an attribute.
    assert doctest.testmod(importlib.import_module("vod.strategy.restripe")).failed == 0
