"""A member away longer than its outbox covers is resynchronised, not silently left behind.

The per-member outbox is bounded; a Resume from a position older than what it still holds used to
replay a truncated outbox, so a server never learned strategies committed meanwhile and their
clients waited for frames forever (bench/concurrency.py under coordinator flaps).
"""

import json
import os
import sys

import pytest

from twisted.internet.task import Clock

from fakes import FakeRaft, RecordingSession
from vod.coordinator import requests as rq
from vod.coordinator.machine import GroupMachine
from vod.coordinator.replica import CoordinatorReplica
from vod.groups import commands as gc
from vod.groups.delivery import DeliveryLog
from vod.groups.events import (
    Delivered, GroupDissolved, RequestChanged, Resynced, StrategyAssigned, ViewChanged, event_from_dict,
)
from vod.strategy.mask import FrameMask

sys.path.insert(0, os.path.dirname(__file__))
from test_groups_member import A, B, C, CS, ME, FakeNetwork, cast_event, joined_member  # noqa: E402

PEERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
N = 1_000
WANTED = rq.mask_to_text(FrameMask.full(N))


def setup(machine):
    for i, server in enumerate(("s1", "s2")):
        machine.apply(gc.join_cmd(server, "server", "d", f"127.0.0.1:{2000 + i}", capacity=1, movies=["m"]))
    machine.apply(gc.join_cmd("cl", "client", "d", "127.0.0.1:3000"))
    machine.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24}))


def admit(machine, i, client="cl"):
    result = machine.apply(dict(rq.admit_cmd(f"r{i}", client, "m", WANTED, rq.placement_settings()), at=1.0))
    return result["events"][0]["ruid"]


def test_a_short_absence_is_replayed_from_the_outbox():
    m = GroupMachine(outbox_limit=50)
    setup(m)
    view = m.outbox("s1")[-1]  # s1 saw the domain view with the client in it
    at = {"domain:d": [view["view_id"], 0]}
    ruid = admit(m, 1)
    owed = m.replay("s1", at)
    assert [e["type"] for e in owed] == ["ViewChanged", "StrategyAssigned"]
    assert owed[1]["ruid"] == ruid


def test_a_long_absence_gets_a_resync_with_every_current_strategy():
    m = GroupMachine(outbox_limit=20)
    setup(m)
    view = m.outbox("s1")[-1]
    at = {"domain:d": [view["view_id"], 0]}
    first = admit(m, 0)  # s1 delivered this one's view and strategy before it went away
    at[f"video:{first}"] = [m.state.groups[f"video:{first}"].view_id, 0]
    ruids = [admit(m, i) for i in range(1, 30)]
    m.apply(dict(rq.cdone_cmd(first, "cl", WANTED), at=2.0))  # ended while s1 was away
    m.apply(dict(rq.cdone_cmd(ruids[0], "cl", WANTED), at=2.0))
    assert not m.outbox_complete("s1")
    assert m.replay("s1", at) is None  # the truncated outbox cannot say what s1 missed

    events = [event_from_dict(e) for e in m.resync("s1", at)]
    series = [e for e in events if isinstance(e, Resynced)]
    active = ruids[1:]
    assert [e.group for e in series] == sorted(["domain:d"] + [f"video:{r}" for r in active])
    assert series[0].first and series[-1].last and not any(e.first for e in series[1:])
    domain = next(e for e in series if e.group == "domain:d")
    assert domain.members == ("cl", "s1", "s2") and domain.view_id == m.state.groups["domain:d"].view_id
    strategies = [e for e in events if isinstance(e, StrategyAssigned)]
    assert [e.ruid for e in strategies] == active
    assert all(e.revision == 1 and e.addresses == {"s1": "127.0.0.1:2000", "s2": "127.0.0.1:2001"} for e in strategies)
    assert not any(isinstance(e, RequestChanged) for e in events)  # s1 is a server: no request states

    # The client, after the same absence, also hears the state of each of its requests concerned:
    # the active ones and the one whose group it held a position in (ended meanwhile).
    client = [event_from_dict(e) for e in m.resync("cl", at)]
    changed = {e.ruid: e.state for e in client if isinstance(e, RequestChanged)}
    assert changed == {first: "done", **{r: "strategized" for r in active}}


def test_a_member_that_resynced_continues_with_the_live_events():
    """The positions the resync gives are the ones the next live events follow on."""
    m = GroupMachine(outbox_limit=10)
    setup(m)
    for i in range(20):
        admit(m, i)
    log = DeliveryLog("s1")
    for data in m.resync("s1", {}):
        event = event_from_dict(data)
        if isinstance(event, Resynced):
            log.resync(event.group, event.view_id, event.casts)
    m.apply(gc.cast_cmd("domain:d", "cl", {"hello": 1}, None))
    m.apply(gc.join_cmd("s3", "server", "d", "127.0.0.1:2003", capacity=1, movies=["m"]))
    for data in m.outbox("s1")[-2:]:
        assert log.receive(event_from_dict(data))  # a cast, then a view: no gap


def test_a_replica_restored_from_a_snapshot_resyncs_every_member():
    m = GroupMachine()
    setup(m)
    admit(m, 0)
    restored = GroupMachine()
    restored.restore(json.loads(json.dumps(m.snapshot())))
    view = m.outbox("s1")[0]
    assert restored.replay("s1", {"domain:d": [view["view_id"], 0]}) is None
    assert any(e["type"] == "StrategyAssigned" for e in restored.resync("s1", {}))
    restored.apply(gc.join_cmd("s9", "server", "d", "127.0.0.1:2009", capacity=1, movies=["m"]))
    assert restored.outbox_complete("s9")


def test_the_replica_resumes_with_a_resync_and_tokens_for_the_client(caplog):
    clock = Clock()
    r = CoordinatorReplica(clock, replica_id="c1", raft_addr=PEERS[0], peers=PEERS, listen="127.0.0.1:11",
                           secret=b"s" * 32, data_dir=None, raft_factory=FakeRaft)
    r.raft.set_leader(term=3)
    r._check()
    r.machine._outbox_limit = 10
    setup(r.machine)
    for i in range(8):
        admit(r.machine, i)
    server = RecordingSession("s1")
    owed = r.resume(server, {"domain:d": [1, 0]})
    assert sum(e["type"] == "StrategyAssigned" for e in owed) == 8
    assert "resync with the current views of its 9 groups and 8 current strategies" in caplog.text
    client = RecordingSession("cl")
    owed = r.resume(client, {})
    tokens = [e for e in owed if e["type"] == "StrategyAssigned"]
    assert len(tokens) == 8  # the session adds the client's stream token as it pushes (issue_in)
    assert r.resume(RecordingSession("nobody"), {}) is None


# -- the member's side ----------------------------------------------------------------------------------


@pytest.fixture
def network():
    return FakeNetwork(A, B, C)


def test_the_member_adopts_a_resync_and_tells_the_application(network):
    member, seen = joined_member(network)
    old_video = ViewChanged("video:7", 11, (ME,), (ME,), (), 0)
    network[A].push(old_video, cast_event(1))
    network.settle()
    network[A].cut()
    # B holds only the present: view 14 of the domain (cast 2 in it), video:9 new, video:7 ended.
    network[B].replay = [Resynced(CS, 14, ("other", ME), 2, True, False),
                         Resynced("video:9", 13, ("c", ME), 0, False, True),
                         StrategyAssigned(9, "video:9", 1, "initial", {"v": 1}, {})]
    network.run(0.1)

    new_events = seen.events[3:]
    assert new_events == [ViewChanged(CS, 14, ("other", ME), (), (), 0),
                          ViewChanged("video:9", 13, ("c", ME), (ME,), (), 0),
                          GroupDissolved("video:7", 11, 0, (ME,)),
                          StrategyAssigned(9, "video:9", 1, "initial", {"v": 1}, {})]
    assert set(member.views) == {CS, "video:9"}
    # Live events follow on the resync's positions; replays of older ones are dropped.
    network[B].push(Delivered(CS, 14, 3, "other", {}), cast_event(1), Delivered("video:7", 11, 1, "x", {}))
    network.settle()
    assert seen.events[-1] == Delivered(CS, 14, 3, "other", {})
    assert member.primary == B


def test_delivery_log_resync_and_forget():
    log = DeliveryLog("me")
    assert log.receive(ViewChanged("g", 3, ("me",), ("me",), (), 0))
    log.resync("g", 9, 4)
    assert log.position("g") == (9, 4)
    assert not log.receive(Delivered("g", 9, 4, "x", {}))
    assert log.receive(Delivered("g", 9, 5, "x", {}))
    assert log.forget("g") == (9, 5) and log.position("g") is None
    assert not log.receive(Delivered("g", 9, 6, "x", {}))  # gone: late events of it are dropped
    assert log.forget("never") is None


def test_a_member_that_last_saw_dissolves_is_replayed_precisely():
    """A server whose last deliveries were dissolves (CDONEs) names them; its replay starts right after."""
    from vod.coordinator.machine import last_seen
    m = GroupMachine(outbox_limit=30)
    setup(m)
    ruids = [admit(m, i) for i in range(12)]
    log = DeliveryLog("s1")
    for data in m.resync("s1", {}):  # a starting point: s1's position in every group now
        event = event_from_dict(data)
        if isinstance(event, Resynced):
            log.resync(event.group, event.view_id, event.casts)
    for ruid in ruids:
        m.apply(dict(rq.cdone_cmd(ruid, "cl", WANTED), at=2.0))
    delivered = m.outbox("s1")[-len(ruids):]
    for data in delivered[:8]:  # s1 got 8 of the 12 dissolves, then lost its connection
        assert log.receive(event_from_dict(data))
    positions = json.loads(json.dumps(log.resume_positions()))
    assert positions[f"video:{ruids[7]}"][2] == 1  # a group it saw dissolved
    more = admit(m, 99)
    assert not m.outbox_complete("s1")
    owed = m.replay("s1", positions)
    assert owed is not None and [e["type"] for e in owed] == ["GroupDissolved"] * 4 + ["ViewChanged", "StrategyAssigned"]
    assert owed[-1]["ruid"] == more
    assert last_seen(m.outbox("s1"), {"video:1": ["x", 0]}) == -1  # junk positions are ignored


def test_resume_positions_are_bounded_and_name_the_latest_first():
    from vod.groups import delivery
    log = DeliveryLog("me")
    for i in range(delivery.RESUME_POSITIONS + 500):
        log.receive(ViewChanged(f"video:{i}", 10 + i, ("me",), ("me",), (), 0))
    positions = log.resume_positions()
    assert len(positions) == delivery.RESUME_POSITIONS
    newest = f"video:{delivery.RESUME_POSITIONS + 499}"
    assert next(iter(positions)) == newest and positions[newest] == [10 + delivery.RESUME_POSITIONS + 499, 0]
