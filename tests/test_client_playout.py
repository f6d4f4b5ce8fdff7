"""The playout buffer as pure code on a fake clock: merging, ordering, pacing, stalls, credit."""

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from vod.client.playout import Arrival, PlayoutBuffer
from vod.errors import UsageError
from vod.strategy.mask import FrameMask

FPS = 10.0  # 100 ms a frame keeps the arithmetic readable


def make(frames=10, held=None, wanted=None, **kw):
    clock = Clock()
    held = held or FrameMask(frames)
    wanted = wanted if wanted is not None else held.missing()
    return clock, PlayoutBuffer(frames, FPS, wanted, held, clock, **kw)


def indices(due):
    return [i for i, _ in due]


def test_out_of_order_frames_come_out_in_order_at_their_deadlines():
    clock, buf = make(5)
    for i in (3, 1, 4):
        assert buf.receive(i, b"f%d" % i, "s2" if i % 2 else "s1") is Arrival.ACCEPTED
    assert not buf.started  # frame 0 is not in yet
    clock.advance(0.25)
    assert buf.receive(0, b"f0", "s1") is Arrival.ACCEPTED
    assert buf.started and buf.stats.startup_ms == pytest.approx(250)
    assert buf.frames_due(clock.seconds()) == [(0, b"f0")]
    buf.receive(2, b"f2", "s1")
    clock.advance(0.1)
    assert buf.frames_due(clock.seconds()) == [(1, b"f1")]
    assert buf.playout_deadline(2) == pytest.approx(0.45)
    clock.advance(0.3)
    assert indices(buf.frames_due(clock.seconds())) == [2, 3, 4]
    assert buf.finished and buf.stats.stalls == 0 and buf.stats.frames_played == 5
    assert buf.stats.per_server == {"s1": 3, "s2": 2}


def test_duplicates_and_unwanted_frames_are_counted_and_dropped():
    held = FrameMask.from_indices(6, [0])
    clock, buf = make(6, held=held, wanted=FrameMask.from_indices(6, [1, 2, 3]))
    assert buf.receive(0, b"x", "s1") is Arrival.DUPLICATE  # held already (the cache)
    assert buf.receive(1, b"x", "s1") is Arrival.ACCEPTED
    assert buf.receive(1, b"y", "s2") is Arrival.DUPLICATE
    assert buf.receive(4, b"x", "s1") is Arrival.UNWANTED  # not asked for
    assert buf.receive(99, b"x", "s1") is Arrival.UNWANTED  # not even in the movie
    assert (buf.stats.duplicates, buf.stats.unwanted, buf.stats.frames_received) == (2, 2, 1)
    assert buf.held == FrameMask.from_indices(6, [0, 1])
    assert buf.missing == FrameMask.from_indices(6, [2, 3])


def test_frames_held_elsewhere_come_out_without_payload_and_frames_outside_the_program_are_skipped():
    held = FrameMask.from_indices(6, [0, 2])
    clock, buf = make(6, held=held, wanted=FrameMask.from_indices(6, [1, 3]))
    assert buf.started  # frame 0 is in the cache
    buf.receive(1, b"one", "s1")
    buf.receive(3, b"three", "s1")
    clock.advance(1.0)
    # frames 4 and 5 are neither held nor wanted: not part of this play
    assert buf.frames_due(clock.seconds()) == [(0, None), (1, b"one"), (2, None), (3, b"three")]
    assert buf.finished and buf.stats.frames_cached == 2


def test_a_missing_frame_stalls_and_its_arrival_shifts_the_schedule():
    clock, buf = make(4)
    buf.receive(0, b"0", "s1")
    buf.receive(2, b"2", "s1")
    buf.receive(3, b"3", "s1")
    assert indices(buf.frames_due(0.0)) == [0]
    clock.advance(0.1)  # frame 1 is due now and missing
    assert buf.frames_due(clock.seconds()) == [] and buf.stalled and buf.stats.stalls == 1
    assert buf.next_wakeup(clock.seconds()) is None  # only the frame can end the stall
    clock.advance(0.35)
    buf.receive(1, b"1", "s2")  # 350 ms late
    assert not buf.stalled and buf.stats.stall_ms == pytest.approx(350)
    assert buf.playout_deadline(1) == pytest.approx(0.45)
    assert indices(buf.frames_due(clock.seconds())) == [1]
    clock.advance(0.09)
    assert buf.frames_due(clock.seconds()) == []  # frame 2 keeps its spacing after the stall
    clock.advance(0.01)
    assert indices(buf.frames_due(clock.seconds())) == [2]
    clock.advance(0.1)
    assert indices(buf.frames_due(clock.seconds())) == [3]
    assert buf.stats.stalls == 1
    # 350 ms stalled against 400 ms played
    assert buf.stats.rebuffer_ratio == pytest.approx(0.35 / 0.75)


def test_a_late_frame_counts_as_a_stall_even_when_nobody_polled_in_between():
    clock, buf = make(3)
    buf.receive(0, b"0", "s1")
    buf.frames_due(0.0)
    clock.advance(0.3)  # frame 1 was due at 0.1; nobody looked
    buf.receive(1, b"1", "s1")
    assert buf.stats.stalls == 1 and buf.stats.stall_ms == pytest.approx(200)
    assert indices(buf.frames_due(clock.seconds())) == [1]


def test_a_frame_on_time_is_no_stall():
    clock, buf = make(2)
    buf.receive(0, b"0", "s1")
    clock.advance(0.1)
    buf.receive(1, b"1", "s1")  # exactly at its deadline
    assert indices(buf.frames_due(clock.seconds())) == [0, 1]
    assert buf.stats.stalls == 0 and buf.stats.rebuffer_ratio == 0


def test_after_finish_input_missing_frames_are_skipped_and_late_ones_only_cached():
    clock, buf = make(4)
    buf.receive(0, b"0", "s1")
    buf.receive(3, b"3", "s1")
    clock.advance(0.1)
    assert indices(buf.frames_due(clock.seconds())) == [0]
    assert buf.stalled
    clock.advance(0.2)
    buf.finish_input()
    assert indices(buf.frames_due(clock.seconds())) == []  # 1 and 2 skipped; 3 waits for its deadline
    assert buf.stats.frames_missing == 2 and buf.stats.stall_ms == pytest.approx(200)
    assert buf.receive(1, b"1", "s1") is Arrival.LATE
    assert 1 in buf.held and buf.stats.late == 1
    clock.advance(0.1)
    assert buf.frames_due(clock.seconds()) == []  # the stall moved frame 3 from 0.3 to 0.5
    clock.advance(0.1)
    assert indices(buf.frames_due(clock.seconds())) == [3]
    assert buf.finished


def test_when_input_ends_before_any_frame_came_the_play_still_finishes():
    clock, buf = make(3)
    clock.advance(1)
    buf.finish_input()
    assert buf.frames_due(clock.seconds()) == [] and buf.finished
    assert buf.stats.frames_missing == 3 and buf.stats.stalls == 0


def test_startup_target_waits_for_the_first_frames():
    clock, buf = make(10, startup_frames=3)
    buf.receive(0, b"0", "s1")
    buf.receive(2, b"2", "s1")
    assert not buf.started
    clock.advance(0.5)
    buf.receive(1, b"1", "s2")
    assert buf.started and buf.stats.startup_ms == pytest.approx(500)


def test_gated_playback_starts_when_the_gate_opens_and_times_startup_from_there():
    clock, buf = make(3, gated=True)
    buf.receive(0, b"0", "s1")
    clock.advance(5)
    assert buf.frames_due(clock.seconds()) == [] and not buf.started
    clock.advance(1)
    buf.open_gate()
    assert buf.started and buf.stats.startup_ms == 0
    assert indices(buf.frames_due(clock.seconds())) == [0]


def test_pause_stops_the_playhead_and_shifts_the_schedule_without_counting_a_stall():
    clock, buf = make(3)
    for i in range(3):
        buf.receive(i, b"x", "s1")
    assert indices(buf.frames_due(0.0)) == [0]
    clock.advance(0.05)
    buf.pause()
    clock.advance(10)
    assert buf.frames_due(clock.seconds()) == []
    buf.resume()
    assert buf.playout_deadline(1) == pytest.approx(10.1)
    clock.advance(0.05)
    assert indices(buf.frames_due(clock.seconds())) == [1]
    assert buf.stats.stalls == 0


def test_a_stall_does_not_count_the_pause_inside_it():
    clock, buf = make(2)
    buf.receive(0, b"0", "s1")
    buf.frames_due(0.0)
    clock.advance(0.2)
    buf.frames_due(clock.seconds())  # stalled since 0.1
    buf.pause()
    clock.advance(5)
    buf.receive(1, b"1", "s1")  # during the pause: the stall lasted until the pause
    buf.resume()
    assert buf.stats.stall_ms == pytest.approx(100)
    assert indices(buf.frames_due(clock.seconds())) == [1]


def test_credit_is_the_lead_window_bounded_by_the_buffer_and_never_goes_back():
    clock, buf = make(100, lead=2.0)  # 20 frames of lead, room for 40
    assert buf.credit_until(0.0) == 20
    for i in range(5):
        buf.receive(i, b"x", "s1")
    clock.advance(0.45)
    buf.frames_due(clock.seconds())
    assert buf.playhead == 5 and buf.credit_until(clock.seconds()) == 25
    _, small = make(100, lead=2.0, buffer_frames=8)
    assert small.credit_until(0.0) == 8
    _, fast = make(100, lead=2.0, fast=True)
    assert fast.credit_until(0.0) == 40  # no lead window in fast mode: only the room
    _, short = make(10, lead=5.0)
    assert short.credit_until(0.0) == 10  # never past the movie


def test_fast_mode_releases_contiguous_frames_at_once():
    clock, buf = make(5, fast=True)
    for i in (1, 0, 3):
        buf.receive(i, b"x", "s1")
    assert indices(buf.frames_due(0.0)) == [0, 1]
    assert buf.playout_deadline(2) is None and buf.next_wakeup(0.0) is None
    buf.receive(2, b"x", "s1")
    buf.receive(4, b"x", "s1")
    assert indices(buf.frames_due(0.0)) == [2, 3, 4]
    assert buf.stats.stalls == 0 and buf.finished


def test_buffered_seconds_counts_the_contiguous_frames_ahead():
    held = FrameMask.from_indices(10, [0, 1])
    clock, buf = make(10, held=held)
    buf.receive(2, b"x", "s1")
    buf.receive(4, b"x", "s1")
    assert buf.buffered_seconds() == pytest.approx(0.3)


def test_bad_arguments_are_usage_errors():
    clock = Clock()
    with pytest.raises(UsageError):
        PlayoutBuffer(0, FPS, FrameMask(0), FrameMask(0), clock)
    with pytest.raises(UsageError):
        PlayoutBuffer(3, 0, FrameMask(3), FrameMask(3), clock)
    with pytest.raises(UsageError):
        PlayoutBuffer(3, FPS, FrameMask(4), FrameMask(3), clock)


@given(st.permutations(range(30)), st.lists(st.integers(0, 29), max_size=10),
       st.lists(st.floats(0, 0.3), min_size=30, max_size=30))
@settings(max_examples=60, deadline=None)
def test_any_arrival_order_plays_every_frame_once_in_order(order, dups, gaps):
    clock, buf = make(30)
    played = []
    for index, gap in zip(order, gaps):
        clock.advance(gap)
        played += indices(buf.frames_due(clock.seconds()))
        buf.receive(index, bytes([index]), "s%d" % (index % 3))
        for d in dups:
            if d == index:
                buf.receive(d, b"dup", "s9")
    clock.advance(10)
    played += indices(buf.frames_due(clock.seconds()))
    assert played == list(range(30))
    assert buf.finished and buf.stats.frames_received == 30
    assert buf.stats.stall_ms >= 0 and 0 <= buf.stats.rebuffer_ratio < 1
    # the schedule never runs ahead: total play time = frames / fps + stalls
    assert buf.playout_deadline(29) == pytest.approx(buf._start + 2.9 + buf.stats.stall_ms / 1000)


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_fast_mode_hands_out_the_program_in_order_whatever_the_batches(data):
    """A download's path (receive_many, runs handed out at once, limits) plays exactly the program, in order,
    once each, held frames as None; and receive_many agrees with receive, frame by frame."""
    n = data.draw(st.integers(1, 60))
    held = FrameMask.from_indices(n, data.draw(st.sets(st.integers(0, n - 1))))
    extra = FrameMask.from_indices(n, data.draw(st.sets(st.integers(0, n - 1))))
    wanted = held.missing() - extra  # frames neither held nor wanted are not in the program
    program = sorted(set(held) | set(wanted))
    order = data.draw(st.permutations(range(n)))  # unwanted and held frames arrive too: dropped
    clock, batch = make(n, held=held, wanted=wanted, fast=True)
    _, single = make(n, held=held, wanted=wanted, fast=True)
    played = []
    pos = 0
    while pos < len(order):
        size = data.draw(st.integers(1, 8))
        frames = [(i, bytes([i % 256])) for i in order[pos:pos + size]]
        pos += size
        assert batch.receive_many(frames, "s1") == [single.receive(i, p, "s1") for i, p in frames]
        played += batch.frames_due(clock.seconds(), limit=data.draw(st.integers(1, 10)))
    while not batch.finished:
        played += batch.frames_due(clock.seconds(), limit=3)
    assert [i for i, _ in played] == program
    assert [i for i, p in played if p is None] == sorted(held)
    assert all(p == bytes([i % 256]) for i, p in played if p is not None)
    assert batch.stats.frames_played == len(program) and batch.stats.frames_received == wanted.count()
    assert (batch.stats.duplicates, batch.stats.unwanted) == (single.stats.duplicates, single.stats.unwanted)
