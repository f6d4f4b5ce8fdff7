"""The token bucket on a Clock: bursts, delays, debts and the long-run rate."""

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from vod.server.pacing import TokenBucket


def test_a_full_bucket_lets_a_burst_go_then_says_how_long_to_wait():
    clock = Clock()
    bucket = TokenBucket(1000, 500, clock)
    assert bucket.take(300) == 0.0
    assert bucket.take(200) == 0.0
    assert bucket.take(100) == pytest.approx(0.1)
    assert bucket.take(100) == pytest.approx(0.1)  # nothing was taken by the refusals
    clock.advance(0.1)
    assert bucket.take(100) == 0.0


def test_waiting_exactly_the_delay_is_enough():
    clock = Clock()
    bucket = TokenBucket(3000, 700, clock)
    bucket.take(700)
    for size in (1, 7, 333, 699, 700):
        delay = bucket.take(size)
        assert delay > 0
        clock.advance(delay)
        assert bucket.take(size) == 0.0


def test_refill_stops_at_the_burst():
    clock = Clock()
    bucket = TokenBucket(1000, 500, clock)
    bucket.take(500)
    clock.advance(60)
    assert bucket.tokens == 500
    assert bucket.take(500) == 0.0 and bucket.take(1) > 0


def test_a_frame_larger_than_the_burst_goes_when_full_and_leaves_a_debt():
    clock = Clock()
    bucket = TokenBucket(1000, 500, clock)
    bucket.take(100)
    assert bucket.take(2000) == pytest.approx(0.1)  # waits for a full bucket, not for 2000 bytes
    clock.advance(0.1)
    assert bucket.take(2000) == 0.0
    assert bucket.tokens == pytest.approx(-1500)
    assert bucket.take(10) == pytest.approx(1.51)


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=60), st.integers(100, 100_000), st.integers(1, 8000))
@settings(max_examples=200, deadline=None)
def test_the_long_run_rate_holds(sizes, rate, burst):
    """Whatever the frame sizes, the last frame goes once the bytes before it, plus what it needs, have flowed.

    It needs min(size, burst) tokens; the burst is the slack the bucket starts with.
    """
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock)
    for size in sizes:
        while (delay := bucket.take(size)) > 0:
            clock.advance(delay)
    owed = sum(sizes[:-1]) + min(sizes[-1], burst)
    assert (owed - burst) / rate - 1e-6 <= clock.seconds() <= max(0, owed - burst) / rate + 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError):
        TokenBucket(0, 10, Clock())
    with pytest.raises(ValueError):
        TokenBucket(10, 0, Clock())
    with pytest.raises(ValueError):
        TokenBucket(10, 10, Clock()).take(-1)
