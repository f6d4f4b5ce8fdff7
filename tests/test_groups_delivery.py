"""DeliveryLog: each group event exactly once, in order, whatever the coordinator resends."""

import pytest
from hypothesis import given, settings, strategies as st

from vod.groups.commands import (
    cast_cmd, create_group_cmd, dissolve_group_cmd, join_cmd, leave_cmd, next_ruid_cmd,
)
from vod.groups.delivery import DeliveryGap, DeliveryLog
from vod.groups.events import Delivered, GroupDissolved, RuidAssigned, ViewChanged
from vod.groups.state import GroupState, domain_group, video_group

CS = domain_group("cs")


def stream_for(member_id="a"):
    """What the coordinator pushes to `member_id` over a busy stretch, taken from a real GroupState."""
    state = GroupState()
    commands = [join_cmd(m, "server", "cs", f"{m}:7000") for m in "abc"]
    commands += [cast_cmd(CS, "b", {"n": n}) for n in range(3)]
    commands += [join_cmd("d", "client", "cs", "d:7000"), cast_cmd(CS, "d", {"n": 3})]
    commands += [create_group_cmd(video_group(1), ["a", "d"]), cast_cmd(video_group(1), "d", {"play": 1})]
    commands += [leave_cmd("c"), cast_cmd(video_group(1), "a", {"frame": 1}), dissolve_group_cmd(video_group(1))]
    commands += [create_group_cmd(video_group(1), ["a", "b"]), cast_cmd(video_group(1), "b", {"again": True})]
    commands += [cast_cmd(CS, "a", {"n": 4})]
    stream = []
    for command in commands:
        for event in state.apply(command):
            if member_id in state.recipients(event):
                stream.append(event)
    return stream


STREAM = stream_for()


def deliver_all(log, events):
    return [event for event in events if log.receive(event)]


def test_a_stream_in_order_is_delivered_whole():
    log = DeliveryLog("a")
    assert deliver_all(log, STREAM) == STREAM
    assert log.positions() == {CS: (5, 1), video_group(1): (14, 1)}


def test_every_resent_event_is_dropped():
    log = DeliveryLog("a")
    deliver_all(log, STREAM)
    positions = log.positions()
    assert deliver_all(log, STREAM) == []
    assert log.positions() == positions


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_replays_from_any_earlier_point_deliver_each_event_once_in_order(data):
    # A failover coordinator resends from some point the member already passed.
    log, delivered, sent = DeliveryLog("a"), [], 0
    while sent < len(STREAM):
        start = data.draw(st.integers(0, sent), label="replay from")
        end = data.draw(st.integers(sent + 1, len(STREAM)), label="send up to")
        delivered += deliver_all(log, STREAM[start:end])
        sent = end
    assert delivered == STREAM


@settings(deadline=None, max_examples=200)
@given(st.sets(st.integers(0, len(STREAM) - 1), max_size=4))
def test_lost_events_are_noticed_and_a_replay_heals_them(lost):
    log = DeliveryLog("a")
    delivered = set()  # indexes into STREAM
    pending = [i for i in range(len(STREAM)) if i not in lost]
    for _ in range(10 * len(STREAM)):
        if not pending:
            break
        i = pending.pop(0)
        try:
            if log.receive(STREAM[i]):
                delivered.add(i)
        except DeliveryGap:
            # Order is per group, so other groups may have moved on: the
            # coordinator resends from the first event not yet delivered.
            first = min(set(range(len(STREAM))) - delivered)
            pending = list(range(first, len(STREAM)))
    for incarnation in incarnations(STREAM):
        got = [i for i in incarnation if i in delivered]
        assert got == incarnation[:len(got)], "out of order within a group"
        # A loss is noticed at the group's next event; only a lost tail goes unseen. (A group whose whole
        # life was lost is a lost tail too: a later group of the same name starts afresh. On a real link
        # that cannot happen alone: TCP loses nothing mid-connection, and Resume replays everything after
        # the member's last position, whatever the group.)
        assert set(incarnation[len(got):]) <= lost


def incarnations(stream):
    """Indexes into `stream` per group, split where a group is dissolved (its name may be reused)."""
    current, done = {}, []
    for i, event in enumerate(stream):
        current.setdefault(event.group, []).append(i)
        if isinstance(event, GroupDissolved):
            done.append(current.pop(event.group))
    return done + list(current.values())


def first_view():
    return ViewChanged(CS, 1, ("a",), ("a",), (), 0)


def test_a_skipped_cast_is_a_gap_and_leaves_the_log_alone():
    log = DeliveryLog("a")
    log.receive(first_view())
    log.receive(Delivered(CS, 1, 1, "a", {}))
    with pytest.raises(DeliveryGap) as gap:
        log.receive(Delivered(CS, 1, 3, "a", {}))
    assert (gap.value.group, gap.value.position) == (CS, (1, 1))
    assert log.position(CS) == (1, 1)
    assert log.receive(Delivered(CS, 1, 2, "a", {}))


def test_a_view_change_tells_of_casts_missed_at_the_end_of_a_view():
    log = DeliveryLog("a")
    log.receive(first_view())
    log.receive(Delivered(CS, 1, 1, "a", {}))
    with pytest.raises(DeliveryGap, match="after view 1 cast 1"):
        log.receive(ViewChanged(CS, 2, ("a", "b"), ("b",), (), previous_casts=2))


def test_a_skipped_view_is_a_gap():
    log = DeliveryLog("a")
    log.receive(first_view())
    with pytest.raises(DeliveryGap):
        log.receive(ViewChanged(CS, 3, ("a",), (), ("b",), previous_casts=0))


def test_a_group_starts_with_a_view():
    with pytest.raises(DeliveryGap, match="nothing yet") as gap:
        DeliveryLog("a").receive(Delivered(CS, 1, 1, "a", {}))
    assert gap.value.position is None


def test_a_dissolve_with_casts_missing_is_a_gap():
    log = DeliveryLog("a")
    log.receive(ViewChanged("video:1", 4, ("a",), ("a",), (), 0))
    with pytest.raises(DeliveryGap):
        log.receive(GroupDissolved("video:1", 4, 1, ("a",)))


def test_after_a_dissolve_old_events_are_replays_and_a_new_group_starts_fresh():
    log = DeliveryLog("a")
    old_view = ViewChanged("video:1", 4, ("a",), ("a",), (), 0)
    deliver_all(log, [old_view, GroupDissolved("video:1", 4, 0, ("a",))])
    assert log.position("video:1") is None and "video:1" not in log.positions()
    assert not log.receive(old_view)
    assert not log.receive(GroupDissolved("video:1", 4, 0, ("a",)))
    assert log.receive(ViewChanged("video:1", 9, ("a",), ("a",), (), 0))


def test_a_log_resumes_from_saved_positions():
    log = DeliveryLog("a", {CS: (2, 1)})
    assert not log.receive(Delivered(CS, 2, 1, "a", {}))
    assert log.receive(Delivered(CS, 2, 2, "a", {}))


def test_groups_are_ordered_independently():
    log = DeliveryLog("a")
    other = domain_group("ece")
    assert log.receive(ViewChanged(other, 1, ("a",), ("a",), (), 0))
    assert log.receive(first_view())
    assert log.receive(Delivered(other, 1, 1, "a", {}))
    assert log.receive(Delivered(CS, 1, 1, "a", {}))


def test_only_group_events_are_ordered():
    with pytest.raises(TypeError):
        DeliveryLog("a").receive(RuidAssigned(1))


def test_a_first_view_that_is_not_the_members_join_means_the_join_was_lost():
    log = DeliveryLog("b")
    with pytest.raises(DeliveryGap, match="nothing yet"):
        log.receive(ViewChanged(CS, 3, ("a", "b", "c"), ("c",), (), 0))
    assert log.receive(ViewChanged(CS, 2, ("a", "b"), ("b",), (), 0))


def test_the_sample_stream_covers_every_kind_of_step():
    assert {type(event) for event in STREAM} == {ViewChanged, Delivered, GroupDissolved}
