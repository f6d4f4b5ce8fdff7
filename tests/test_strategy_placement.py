"""Placement: dealing frames by weight, choosing servers, the Strategy record."""

import base64
import doctest
import json
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vod.strategy.placement as placement
from vod.errors import VodError
from vod.strategy.mask import FrameMask
from vod.strategy.placement import (
    POLICIES, Assignment, NoServers, ServerInfo, Strategy, StrategyError, deal, make_strategy, rank_servers,
)

MOVIE = "m"


# -- generators and oracles -----------------------------------------------------


def masks_of(n):
    """Masks of length n: dense random bits, runs, and full."""
    bits = st.lists(st.booleans(), min_size=n, max_size=n).map(
        lambda bs: FrameMask.from_text("".join("1" if b else "0" for b in bs))
    )
    runs = st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=4).map(
        lambda rs: FrameMask.from_ranges(n, [(min(r), max(r)) for r in rs])
    )
    return st.one_of(bits, runs, st.just(FrameMask.full(n)))


masks = st.integers(0, 300).flatmap(masks_of)
# Small weights make periods shorter than the movie (the schedule repeats);
# large ones make them longer (it never does).  Both paths must keep the promise.
weight_lists = st.one_of(
    st.lists(st.integers(1, 6), min_size=1, max_size=7),
    st.lists(st.integers(1, 10**6), min_size=1, max_size=7),
)


@st.composite
def server_lists(draw, min_size=0, max_size=8):
    ids = draw(st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=min_size, max_size=max_size, unique=True))
    return [
        ServerInfo(
            server_id,
            capacity=draw(st.one_of(st.integers(1, 5), st.integers(1, 1000))),
            load=draw(st.integers(0, 40)),
            # Most servers hold the movie; some hold only another one.
            movies=frozenset(draw(st.sampled_from([{MOVIE}, {MOVIE, "x"}, {MOVIE}, {"x"}]))),
        )
        for server_id in ids
    ]


def choice_key(rule):
    """The documented choice rules, restated independently of the implementation."""
    if rule == "capacity":
        return lambda s: (-s.capacity, s.server_id)
    return lambda s: (Fraction(s.load, s.capacity), s.server_id)


def assert_within_quota(frames, owners, weights):
    """After every prefix of `frames` (in order), taker i holds floor or ceil of t*w_i/W."""
    total = sum(weights)
    counts = [0] * len(weights)
    for t, frame in enumerate(frames, 1):
        counts[owners[frame]] += 1
        for i, w in enumerate(weights):
            assert abs(counts[i] * total - t * w) < total, (t, i, counts, weights)


def owners_of(masks_by_taker):
    return {frame: i for i, mask in enumerate(masks_by_taker) for frame in mask}


def servers(*specs):
    """ServerInfo from (id, capacity, load) triples, all holding MOVIE."""
    return [ServerInfo(server_id, capacity, load, frozenset({MOVIE})) for server_id, capacity, load in specs]


# -- deal -------------------------------------------------------------------------


@given(masks, weight_lists)
def test_deal_partitions_the_frames(frames, weights):
    dealt = deal(frames, weights)
    assert len(dealt) == len(weights)
    union = FrameMask(len(frames))
    for mask in dealt:
        assert len(mask) == len(frames)
        assert mask.isdisjoint(union)
        union |= mask
    assert union == frames


@given(masks, weight_lists)
def test_every_prefix_of_the_frames_is_dealt_within_one_frame_of_each_share(frames, weights):
    dealt = deal(frames, weights)
    assert_within_quota(list(frames), owners_of(dealt), weights)


@given(masks, st.integers(1, 9), st.integers(1, 50))
def test_equal_weights_deal_round_robin_like_stripe(frames, k, weight):
    assert deal(frames, [weight] * k) == frames.stripe(k)


@given(st.integers(0, 400), weight_lists)
def test_dealing_is_the_same_wherever_the_frames_are(count, weights):
    # Which taker gets the i-th wanted frame depends only on i, not on the frame's number.
    full = deal(FrameMask.full(count), weights)
    spread = deal(FrameMask.from_indices(3 * count, range(1, 3 * count, 3)), weights)
    assert [{3 * f + 1 for f in m} for m in full] == [set(m) for m in spread]


def test_deal_gives_a_heavier_taker_its_frames_early_and_evenly():
    assert [m.to_text() for m in deal(FrameMask.full(12), [2, 1])] == ["101101101101", "010010010010"]


def test_a_long_movie_with_coprime_weights_is_dealt_within_quota():
    # A period far longer than the movie: every frame is scheduled, none repeated.
    weights = [100003, 99991, 7919, 104729]
    frames = FrameMask.full(100_000)
    dealt = deal(frames, weights)
    total = sum(weights)
    assert sum(m.count() for m in dealt) == 100_000
    for mask, w in zip(dealt, weights):
        assert abs(mask.count() * total - 100_000 * w) < total
    # Spot-check prefixes rather than all 100,000 (the property tests do every prefix on short movies).
    for t in range(1, 100_001, 997):
        for mask, w in zip(dealt, weights):
            assert abs(mask.bits.count(1, 0, t) * total - t * w) < total


@pytest.mark.parametrize("weights", [[], [0], [1, -1], [1.5], [True], [1] * 256])
def test_deal_rejects_weights_it_cannot_use(weights):
    with pytest.raises(StrategyError):
        deal(FrameMask.full(5), weights)


# -- choosing servers ---------------------------------------------------------------


def test_default_choice_prefers_capacity_then_id():
    pool = servers(("b", 2, 0), ("a", 2, 9), ("c", 5, 50), ("d", 1, 0))
    assert [s.server_id for s in rank_servers(pool, MOVIE)] == ["c", "a", "b", "d"]


def test_least_loaded_compares_load_per_capacity_then_id():
    pool = servers(("big", 10, 10), ("small", 1, 2), ("idle", 1, 0), ("also", 2, 2))
    # ratios: big 1, small 2, idle 0, also 1
    assert [s.server_id for s in rank_servers(pool, MOVIE, "least_loaded")] == ["idle", "also", "big", "small"]


def test_only_servers_holding_the_movie_are_ranked():
    pool = servers(("a", 1, 0)) + [ServerInfo("z", 9, 0, frozenset({"other"}))]
    assert [s.server_id for s in rank_servers(pool, MOVIE)] == ["a"]


def test_duplicate_server_ids_are_refused():
    with pytest.raises(StrategyError, match="distinct"):
        rank_servers(servers(("a", 1, 0), ("a", 2, 0)), MOVIE)


def test_unknown_choice_or_policy_names_the_known_ones():
    with pytest.raises(StrategyError, match="least_loaded"):
        make_strategy(1, MOVIE, "c", 4, FrameMask.full(4), servers(("a", 1, 0)), server_choice="random")
    with pytest.raises(StrategyError, match="interleave"):
        make_strategy(1, MOVIE, "c", 4, FrameMask.full(4), servers(("a", 1, 0)), policy="fastest")


# -- make_strategy --------------------------------------------------------------------


@settings(max_examples=150)
@given(
    st.integers(0, 200).flatmap(masks_of),
    server_lists(),
    st.sampled_from(sorted(POLICIES)),
    st.sampled_from(["capacity", "least_loaded"]),
    st.integers(1, 6),
    st.integers(0, 3),
)
def test_strategy_invariants(wanted, pool, policy, choice, max_servers, backups):
    n = len(wanted)
    holders = sorted((s for s in pool if MOVIE in s.movies), key=choice_key(choice))
    if wanted and not holders:
        with pytest.raises(NoServers):
            make_strategy(5, MOVIE, "cl", n, wanted, pool, policy, max_servers, choice, backups)
        return
    s = make_strategy(5, MOVIE, "cl", n, wanted, pool, policy, max_servers, choice, backups)
    assert (s.ruid, s.movie_id, s.client_id, s.frame_count, s.policy, s.server_choice) == (
        5, MOVIE, "cl", n, policy, choice)

    chosen = holders[:max_servers]
    assert len(s.assignments) <= max_servers
    # Assignments follow the choice order; servers dropped only because their share rounded to nothing.
    assert list(s.servers) == [c.server_id for c in chosen if c.server_id in s.servers]
    union = FrameMask(n)
    for a in s.assignments:
        assert a.mask and a.mask.isdisjoint(union)
        union |= a.mask
    assert union == wanted == s.wanted

    weights = POLICIES[policy](chosen)
    owners = {f: [c.server_id for c in chosen].index(a.server_id) for a in s.assignments for f in a.mask}
    if wanted:
        assert_within_quota(list(wanted), owners, weights)

    idle = [h.server_id for h in holders if h.server_id not in s.servers]
    assert list(s.backups) == idle[:backups]


@given(st.integers(0, 200).flatmap(masks_of), st.lists(st.integers(1, 9), min_size=1, max_size=6),
       st.integers(1, 6))
def test_equal_capacities_give_shares_differing_by_at_most_one(wanted, loads, max_servers):
    pool = servers(*((f"s{i}", 7, load) for i, load in enumerate(loads)))
    for policy in POLICIES:
        s = make_strategy(1, MOVIE, "c", len(wanted), wanted, pool, policy, max_servers)
        counts = [a.mask.count() for a in s.assignments]
        assert not counts or max(counts) - min(counts) <= 1
        k = min(max_servers, len(pool))
        assert [a.mask for a in s.assignments] == [m for m in wanted.stripe(k) if m]


@settings(max_examples=50)
@given(st.integers(0, 150).flatmap(masks_of), server_lists(min_size=1), st.randoms(use_true_random=False))
def test_server_order_in_the_request_does_not_matter(wanted, pool, rng):
    if not any(MOVIE in s.movies for s in pool):
        return
    shuffled = list(pool)
    rng.shuffle(shuffled)
    for choice in ("capacity", "least_loaded"):
        args = (3, MOVIE, "c", len(wanted), wanted)
        assert make_strategy(*args, pool, server_choice=choice) == make_strategy(*args, shuffled, server_choice=choice)


def test_the_designs_interleave_example():
    pool = servers(*((f"s{i}", 1, 0) for i in range(4)))
    s = make_strategy(1, MOVIE, "c", 13, FrameMask.full(13), pool, policy="interleave")
    assert [a.mask.to_text() for a in s.assignments] == [
        "1000100010001", "0100010001000", "0010001000100", "0001000100010"]


def test_weighted_shares_follow_capacity_and_interleave_ignores_it():
    pool = servers(("fast", 3, 0), ("slow", 1, 0))
    weighted = make_strategy(1, MOVIE, "c", 8, FrameMask.full(8), pool)
    assert [(a.server_id, a.mask.to_text()) for a in weighted.assignments] == [
        ("fast", "11011101"), ("slow", "00100010")]
    interleaved = make_strategy(1, MOVIE, "c", 8, FrameMask.full(8), pool, policy="interleave")
    assert [a.mask.count() for a in interleaved.assignments] == [4, 4]


def test_least_loaded_choice_picks_the_servers_with_room():
    pool = servers(("busy", 10, 100), ("a", 1, 1), ("b", 1, 0), ("c", 2, 1))
    s = make_strategy(1, MOVIE, "c", 6, FrameMask.full(6), pool, max_servers=2, server_choice="least_loaded",
                      backups=5)
    assert s.servers == ("b", "c")
    assert s.backups == ("a", "busy")


def test_a_server_whose_share_rounds_to_nothing_becomes_a_backup():
    pool = servers(("huge", 1000, 0), ("tiny", 1, 0))
    s = make_strategy(1, MOVIE, "c", 3, FrameMask.full(3), pool)
    assert s.servers == ("huge",)
    assert s.backups == ("tiny",)


def test_only_holders_of_the_movie_take_part():
    pool = servers(("a", 1, 0)) + [ServerInfo("z", 100, 0, frozenset({"other"}))]
    s = make_strategy(1, MOVIE, "c", 4, FrameMask.full(4), pool)
    assert s.servers == ("a",) and s.backups == ()


def test_no_holder_raises_no_servers_naming_the_movie():
    pool = [ServerInfo("z", 1, 0, frozenset({"other"}))]
    with pytest.raises(NoServers, match="'m'") as caught:
        make_strategy(1, MOVIE, "c", 4, FrameMask.full(4), pool)
    assert isinstance(caught.value, VodError)


def test_nothing_wanted_needs_no_server():
    s = make_strategy(1, MOVIE, "c", 4, FrameMask(4), [])
    assert s.assignments == () and s.servers == () and s.wanted == FrameMask(4)
    t = make_strategy(1, MOVIE, "c", 4, FrameMask(4), servers(("a", 1, 0)))
    assert t.assignments == () and t.backups == ("a",)


@pytest.mark.parametrize("kwargs", [{"max_servers": 0}, {"max_servers": 256}, {"backups": -1}, {"max_servers": "4"}])
def test_make_strategy_rejects_bad_limits(kwargs):
    with pytest.raises(StrategyError):
        make_strategy(1, MOVIE, "c", 4, FrameMask.full(4), servers(("a", 1, 0)), **kwargs)


def test_wanted_must_cover_the_movie():
    with pytest.raises(StrategyError, match="5 frames"):
        make_strategy(1, MOVIE, "c", 5, FrameMask.full(4), servers(("a", 1, 0)))


def test_policies_are_pluggable(monkeypatch):
    # A policy maps the chosen servers to weights; registering one is all it takes.
    monkeypatch.setitem(POLICIES, "first_heavy", lambda chosen: [3] + [1] * (len(chosen) - 1))
    pool = servers(("a", 1, 0), ("b", 1, 0))
    s = make_strategy(1, MOVIE, "c", 8, FrameMask.full(8), pool, policy="first_heavy")
    assert [a.mask.count() for a in s.assignments] == [6, 2]
    assert Strategy.from_dict(s.to_dict()) == s


def test_server_info_checks_its_fields():
    assert ServerInfo("a", 1, 0, {"m"}).movies == frozenset({"m"})
    for bad in [("", 1, 0, {"m"}), ("a", 0, 0, {"m"}), ("a", 1, -1, {"m"}), ("a", 1.5, 0, {"m"}), ("a", 1, 0, "m")]:
        with pytest.raises(StrategyError):
            ServerInfo(*bad)


# -- the Strategy record ----------------------------------------------------------------


@settings(max_examples=50)
@given(st.integers(0, 300).flatmap(masks_of), server_lists(min_size=1), st.sampled_from(sorted(POLICIES)),
       st.sampled_from(["capacity", "least_loaded"]))
def test_to_dict_round_trips_through_json(wanted, pool, policy, choice):
    if not any(MOVIE in s.movies for s in pool):
        return
    s = make_strategy(2**40, MOVIE, "client", len(wanted), wanted, pool, policy, server_choice=choice)
    data = s.to_dict()
    assert data["v"] == 1
    assert Strategy.from_dict(json.loads(json.dumps(data))) == s


def test_to_dict_format():
    s = make_strategy(7, MOVIE, "cl", 4, FrameMask.full(4), servers(("a", 1, 0), ("b", 1, 0), ("c", 1, 0)),
                      max_servers=2)
    data = s.to_dict()
    assert data == {
        "v": 1, "ruid": 7, "movie": MOVIE, "client": "cl", "frame_count": 4,
        "policy": "weighted", "server_choice": "capacity",
        "assignments": [{"server": "a", "mask": data["assignments"][0]["mask"]},
                        {"server": "b", "mask": data["assignments"][1]["mask"]}],
        "backups": ["c"],
    }
    assert FrameMask.from_bytes(base64.b64decode(data["assignments"][0]["mask"])).to_text() == "1010"


def test_masks_are_compact_in_json():
    pool = servers(*((f"s{i}", 1, 0) for i in range(4)))
    s = make_strategy(1, MOVIE, "c", 100_000, FrameMask.full(100_000), pool)
    # 12,500 bytes of bits per mask, base64: about 16.7 KB, against 100 KB of '0'/'1' text.
    assert len(json.dumps(s.to_dict())) < 4 * 17_000


def good_record():
    return make_strategy(7, MOVIE, "cl", 6, FrameMask.full(6), servers(("a", 1, 0), ("b", 1, 0))).to_dict()


def with_change(change):
    data = good_record()
    change(data)
    return data


@pytest.mark.parametrize("data", [
    None,
    [],
    with_change(lambda d: d.update(v=2)),
    with_change(lambda d: d.update(v=True)),
    with_change(lambda d: d.pop("client")),
    with_change(lambda d: d.update(frame_count="6")),
    with_change(lambda d: d.update(frame_count=7)),  # masks no longer fit
    with_change(lambda d: d.update(ruid=-1)),
    with_change(lambda d: d.update(policy="nope")),
    with_change(lambda d: d.update(backups="b")),
    with_change(lambda d: d.update(backups=["a"])),  # a backup that is also assigned
    with_change(lambda d: d["assignments"].append(d["assignments"][0])),  # same server twice
    with_change(lambda d: d["assignments"][1].update(mask=d["assignments"][0]["mask"])),  # overlapping
    with_change(lambda d: d["assignments"][0].update(mask="not base64!")),
    with_change(lambda d: d["assignments"][0].update(mask=5)),
    with_change(lambda d: d["assignments"][0].pop("server")),
    with_change(lambda d: d["assignments"][0].update(server=5)),
    with_change(lambda d: d.update(assignments=[None])),
])
def test_from_dict_refuses_malformed_records(data):
    with pytest.raises(StrategyError):
        Strategy.from_dict(data)


def test_strategy_refuses_empty_or_misfit_masks():
    with pytest.raises(StrategyError, match="no frames"):
        Strategy(1, MOVIE, "c", 4, (Assignment("a", FrameMask(4)),), ())
    with pytest.raises(StrategyError, match="covers 5"):
        Strategy(1, MOVIE, "c", 4, (Assignment("a", FrameMask.full(5)),), ())


def test_mask_of_and_servers():
    s = make_strategy(1, MOVIE, "c", 4, FrameMask.full(4), servers(("a", 1, 0), ("b", 1, 0)))
    assert s.servers == ("a", "b")
    assert s.mask_of("b").to_text() == "0101"
    with pytest.raises(KeyError):
        s.mask_of("zz")


def test_docstring_examples():
    assert doctest.testmod(placement).failed == 0


def test_random_large_requests_keep_the_invariants():
    # One big, irregular case with a fixed seed, beyond what Hypothesis draws.
    rng = random.Random(4)
    n = 20_000
    wanted = FrameMask.from_indices(n, (i for i in range(n) if rng.random() < 0.7))
    pool = servers(*((f"s{i}", rng.randint(1, 50), rng.randint(0, 9)) for i in range(7)))
    s = make_strategy(1, MOVIE, "c", n, wanted, pool, max_servers=5)
    chosen = rank_servers(pool, MOVIE)[:5]
    owners = {f: [c.server_id for c in chosen].index(a.server_id) for a in s.assignments for f in a.mask}
    assert s.wanted == wanted
    assert_within_quota(list(wanted), owners, [c.capacity for c in chosen])
