"""FailureDetector on a fake clock: advance time, never sleep."""

import pytest
from twisted.internet.task import Clock

from vod.groups.liveness import FailureDetector


@pytest.fixture
def clock():
    return Clock()


def test_a_member_expires_only_after_being_silent_longer_than_the_timeout(clock):
    detector = FailureDetector(clock, timeout=3)
    detector.heartbeat("s1")
    clock.advance(3)
    assert detector.expired() == []
    clock.advance(0.5)
    assert detector.expired() == ["s1"]


def test_heartbeats_keep_a_member_alive(clock):
    detector = FailureDetector(clock, timeout=3)
    detector.heartbeat("s1")
    detector.heartbeat("s2")
    for _ in range(10):
        clock.advance(2)
        detector.heartbeat("s1")
    assert detector.expired() == ["s2"]


def test_expired_is_sorted_and_repeats_until_forgotten(clock):
    detector = FailureDetector(clock, timeout=1)
    for member_id in ["c9", "a1", "s3"]:
        detector.heartbeat(member_id)
    clock.advance(2)
    assert detector.expired() == ["a1", "c9", "s3"]
    assert detector.expired() == ["a1", "c9", "s3"]
    detector.forget("c9")
    detector.forget("never-seen")
    assert detector.expired() == ["a1", "s3"]
    assert detector.watched() == ["a1", "s3"]


def test_grace_holds_off_expiry_for_old_heartbeats(clock):
    detector = FailureDetector(clock, timeout=3)
    detector.heartbeat("s1")
    clock.advance(10)
    detector.grant_grace(5)  # a new primary takes over
    clock.advance(5)
    assert detector.expired() == []
    clock.advance(0.1)
    assert detector.expired() == ["s1"]


def test_grace_never_shortens_the_timeout(clock):
    detector = FailureDetector(clock, timeout=3)
    detector.grant_grace(1)
    detector.heartbeat("s1")
    clock.advance(2)
    assert detector.expired() == []
    clock.advance(1.5)
    assert detector.expired() == ["s1"]


def test_a_shorter_grace_does_not_cut_a_longer_one(clock):
    detector = FailureDetector(clock, timeout=1)
    detector.heartbeat("s1")
    detector.grant_grace(10)
    detector.grant_grace(2)
    clock.advance(9)
    assert detector.expired() == []


def test_age_for_status_displays(clock):
    detector = FailureDetector(clock, timeout=3)
    detector.heartbeat("s1")
    clock.advance(1.25)
    assert detector.age("s1") == 1.25
    assert detector.age("unknown") is None


@pytest.mark.parametrize("timeout", [0, -1])
def test_the_timeout_must_be_positive(clock, timeout):
    with pytest.raises(ValueError):
        FailureDetector(clock, timeout)


def test_the_grace_period_must_not_be_negative(clock):
    with pytest.raises(ValueError):
        FailureDetector(clock, 1).grant_grace(-1)


def test_a_closed_connection_expires_a_member_after_the_reconnect_grace(clock):
    detector = FailureDetector(clock, timeout=1.0)
    detector.heartbeat("s1")
    detector.heartbeat("s2")
    clock.advance(0.1)
    detector.suspect("s1", within=0.3)
    clock.advance(0.3)
    assert detector.expired() == []
    clock.advance(0.01)
    assert detector.expired() == ["s1"]


def test_a_member_that_reconnects_in_time_is_not_suspected_any_more(clock):
    detector = FailureDetector(clock, timeout=1.0)
    detector.heartbeat("s1")
    detector.suspect("s1", within=0.3)
    clock.advance(0.2)
    detector.heartbeat("s1")  # reconnected
    clock.advance(0.9)
    assert detector.expired() == []


def test_suspicion_never_lengthens_a_deadline_nor_beats_the_grace(clock):
    detector = FailureDetector(clock, timeout=1.0)
    detector.heartbeat("s1")
    clock.advance(0.9)
    detector.suspect("s1", within=0.5)  # the timeout runs out first
    detector.suspect("ghost", within=0.5)  # not watched: nothing happens
    clock.advance(0.11)
    assert detector.expired() == ["s1"]
    detector.heartbeat("s2")
    detector.grant_grace(2.0)
    detector.suspect("s2", within=0.1)
    clock.advance(1.0)
    assert "s2" not in detector.expired()
