"""The coordinator replica's logic on a fake Raft log and a Clock: joins, failure detection, grace, recruiting."""

import pytest
from twisted.internet.task import Clock

from fakes import FakeRaft, RecordingSession
from vod.coordinator.replica import CoordinatorReplica

PEERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


@pytest.fixture
def replica():
    clock = Clock()
    r = CoordinatorReplica(clock, replica_id="c1", raft_addr=PEERS[0], peers=PEERS, listen="127.0.0.1:11",
                           secret=b"s" * 32, data_dir=None, failure_timeout=1.0, grace=2.0, raft_factory=FakeRaft)
    r.raft.set_leader(term=3)
    r._check()
    return r


def join(replica, member_id, domain="d"):
    session = RecordingSession(member_id)
    result = []
    replica.join(session, "server", domain, f"127.0.0.1:{len(replica.sessions) + 100}", "", 1, ["m"]) \
        .addCallback(result.append)
    return session, result[0]


def test_join_gives_views_in_order_to_every_member(replica):
    a, view_a = join(replica, "a")
    b, view_b = join(replica, "b")
    assert view_a["group"] == "domain:d" and view_a["members"] == ["a"]
    assert view_b["members"] == ["a", "b"] and view_b["view_id"] > view_a["view_id"]
    assert [e["view_id"] for e in a.delivered if e["type"] == "ViewChanged"] == [view_a["view_id"], view_b["view_id"]]
    assert [e["view_id"] for e in b.delivered if e["type"] == "ViewChanged"] == [view_b["view_id"]]


def test_silent_member_is_excluded_after_grace_and_timeout(replica):
    clock = replica.reactor
    a, _ = join(replica, "a")
    b, _ = join(replica, "b")
    for _ in range(15):  # 1.5 s: inside the new primary's 2 s grace, nobody is judged
        clock.advance(0.1)
        replica.detector.heartbeat("a")
        replica._check()
    assert "b" in replica.raft.read(lambda m: m.state.members)
    for _ in range(10):
        clock.advance(0.1)
        replica.detector.heartbeat("a")
        replica._check()
    assert "b" not in replica.raft.read(lambda m: m.state.members)
    last_view = [e for e in a.delivered if e["type"] == "ViewChanged"][-1]
    assert last_view["members"] == ["a"] and last_view["left"] == ["b"]
    assert not b.transport.connected  # the excluded member is cut off and must join again


def test_not_acting_replica_pushes_nothing(replica):
    a, _ = join(replica, "a")
    replica.raft.acting = False
    replica._check()
    before = len(a.delivered)
    replica.propose({"v": 1, "op": "next_ruid"})
    join(replica, "b")
    assert len(a.delivered) == before


def test_dead_voter_is_replaced_by_a_fresh_standby_remove_first(replica):
    clock = replica.reactor
    replica.raft.set_leader(term=3, connected=[PEERS[1]])  # PEERS[2] is unreachable
    replica.register_standby({"id": "c4", "raft": "127.0.0.1:4", "listen": "127.0.0.1:14", "standby": True})
    replica._check()
    assert replica.raft.membership_calls == []  # not yet: down for less than replace_after
    for _ in range(11):
        clock.advance(0.1)
        replica.recruiter.standby_seen({"id": "c4", "raft": "127.0.0.1:4", "listen": "127.0.0.1:14"})
        replica._check()
    assert replica.raft.membership_calls == [("remove", PEERS[2]), ("add", "127.0.0.1:4")]
    table = replica.raft.read(lambda m: m.state.table("replicas"))
    assert table["127.0.0.1:4"]["standby"] is False


def test_stale_standby_is_not_recruited(replica):
    clock = replica.reactor
    replica.raft.set_leader(term=3, connected=[PEERS[1]])
    replica.register_standby({"id": "c4", "raft": "127.0.0.1:4", "listen": "127.0.0.1:14", "standby": True})
    clock.advance(2.5)  # the standby never registers again: it is presumed gone
    for _ in range(20):
        clock.advance(0.1)
        replica._check()
    assert replica.raft.membership_calls == []
