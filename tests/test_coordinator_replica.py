"""The coordinator replica's logic on a fake Raft log and a Clock: joins, failure detection, grace, recruiting."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from fakes import FakeRaft, RecordingSession
from vod.coordinator.knock import Knock
from vod.coordinator.replica import KNOCKS_AFTER_CLOSE, CoordinatorReplica
from vod.strategy.mask import FrameMask

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


def test_a_member_whose_connection_closes_is_excluded_after_the_reconnect_grace(replica):
    clock = replica.reactor
    a, _ = join(replica, "a")
    join(replica, "b")
    join(replica, "c")
    for _ in range(21):  # past the new primary's grace, everyone heard
        clock.advance(0.1)
        for member in "abc":
            replica.detector.heartbeat(member)
        replica._check()
    replica.member_disconnected("b")  # crashed: its socket closed at once
    replica.member_disconnected("c")  # dropped, but comes back in time
    for _ in range(4):
        clock.advance(0.1)
        replica.detector.heartbeat("a")
        replica._check()
    replica.detector.heartbeat("c")
    assert {"b", "c"} <= set(replica.raft.read(lambda m: m.state.members))
    for _ in range(2):
        clock.advance(0.1)
        replica.detector.heartbeat("a")
        replica._check()
    members = set(replica.raft.read(lambda m: m.state.members))
    assert "b" not in members and "c" in members  # 0.6 s after the close, not the 1 s failure timeout


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


def test_excluded_server_is_restriped_to_survivors_and_backups(replica):
    from vod.coordinator import requests as rq
    from vod.strategy.mask import FrameMask
    clock = replica.reactor
    servers = {}
    for sid in ("s1", "s2", "s3"):
        servers[sid] = RecordingSession(sid)
        replica.join(servers[sid], "server", "d", f"127.0.0.1:{300 + len(servers)}", "", 1, ["m"])
    client = RecordingSession("cl")
    replica.join(client, "client", "d", "127.0.0.1:400", "", 0, [])
    replica.register_movies("s1", [{"id": "m", "frame_count": 12, "fps": 24.0, "width": 8, "height": 8}])
    replica.max_servers = 2
    opened = []
    replica.open_request("cl", "r1", "m", rq.mask_to_text(FrameMask.full(12))).addCallback(opened.append)
    ruid, state = opened[0]
    assert state == "strategized"
    first = replica.raft.read(lambda m: m.requests.request(ruid))["strategy"]
    victim = first["assignments"][0]["server"]
    replica.report_progress(ruid, rq.mask_to_text(FrameMask.from_ranges(12, [(0, 4)])))
    for _ in range(40):  # 4 s: past the grace period and the failure timeout
        clock.advance(0.1)
        for sid in servers:
            if sid != victim:
                replica.detector.heartbeat(sid)
        replica.detector.heartbeat("cl")
        replica._check()
    record = replica.raft.read(lambda m: m.requests.request(ruid))
    assert record["revision"] == 2 and record["history"][0]["failed"] == [victim]
    servers_now = [a["server"] for a in record["strategy"]["assignments"]]
    assert victim not in servers_now and len(servers_now) == 2
    pushed = [e["type"] for e in client.delivered]
    assert pushed.count("StrategyAssigned") == 2


def test_resume_replays_only_what_came_after_the_members_position():
    from vod.coordinator.replica import unseen
    outbox = [{"type": "ViewChanged", "group": "domain:d", "view_id": 3, "members": ["a"]},
              {"type": "StrategyAssigned", "group": "video:1", "ruid": 1},
              {"type": "Delivered", "group": "domain:d", "view_id": 3, "seq": 1},
              {"type": "RequestChanged", "ruid": 1},
              {"type": "Delivered", "group": "domain:d", "view_id": 3, "seq": 2}]
    assert unseen(outbox, {"domain:d": [3, 1]}) == outbox[3:]
    assert unseen(outbox, {}) == outbox
    assert unseen(outbox, {"domain:d": [3, 2]}) == []
    assert unseen(outbox, {"domain:d": "junk"}) == outbox


class FakeKnocks:
    """Answers knocks from a table (address -> Knock); an address set to None answers only when told."""

    def __init__(self):
        self.answers: dict[str, Knock | None] = {}
        self.pending: list[tuple[str, defer.Deferred]] = []
        self.asked: list[str] = []

    def __call__(self, address):
        self.asked.append(address)
        answer = self.answers.get(address, Knock.NO_ANSWER)
        if answer is None:
            d = defer.Deferred()
            self.pending.append((address, d))
            return d
        return defer.succeed(answer)


def past_grace(replica, members):
    for _ in range(21):  # past the new primary's 2 s grace, everyone heard
        replica.reactor.advance(0.1)
        for member in members:
            replica.detector.heartbeat(member)
        replica._check()


def crash(replica, member_id):
    del replica.sessions[member_id]  # as its session's connectionLost does
    replica.member_disconnected(member_id)


def members_of(replica):
    return set(replica.raft.read(lambda m: m.state.members))


@pytest.fixture
def knocking(replica):
    replica.knock = FakeKnocks()
    return replica


def two_listening_servers(replica):
    """Servers a and b joined, their addresses accepting knocks, everyone heard past the grace; b's session."""
    replica.knock.answers = {"127.0.0.1:100": Knock.LISTENING, "127.0.0.1:101": Knock.LISTENING}
    join(replica, "a")
    b, _ = join(replica, "b")
    past_grace(replica, "ab")
    return b


def test_a_crashed_server_whose_address_refuses_is_excluded_at_once(knocking):
    knocks = knocking.knock
    two_listening_servers(knocking)
    assert knocks.asked == ["127.0.0.1:100", "127.0.0.1:101"]  # once each, as they joined
    knocks.answers["127.0.0.1:101"] = Knock.REFUSED  # b's process is gone, and its listener with it
    crash(knocking, "b")
    assert members_of(knocking) == {"a"}  # no clock advance: not 0.5 s later


def test_a_server_still_listening_waits_out_the_reconnect_grace(knocking):
    two_listening_servers(knocking)
    crash(knocking, "b")  # or only its control link dropped
    knocking._check()
    assert members_of(knocking) == {"a", "b"}
    for _ in range(30):
        knocking.reactor.advance(0.01)
    assert knocking.knock.asked.count("127.0.0.1:101") == 1 + 1 + len(KNOCKS_AFTER_CLOSE)  # join, close, later
    for _ in range(6):
        knocking.reactor.advance(0.1)
        knocking.detector.heartbeat("a")
        knocking._check()
    assert members_of(knocking) == {"a"}  # it did not come back within the grace


def test_an_address_that_never_accepted_is_not_taken_for_a_crash(knocking):
    # Another network, or a firewall that rejects the coordinator: refused at join already.
    knocking.knock.answers = {"127.0.0.1:100": Knock.LISTENING, "127.0.0.1:101": Knock.REFUSED}
    join(knocking, "a")
    join(knocking, "b")
    past_grace(knocking, "ab")
    crash(knocking, "b")
    knocking._check()
    assert members_of(knocking) == {"a", "b"}
    assert knocking.knock.asked == ["127.0.0.1:100", "127.0.0.1:101"]  # no knock after the close


def test_a_server_back_before_the_knock_answers_stays(knocking):
    knocks = knocking.knock
    b = two_listening_servers(knocking)
    knocks.answers["127.0.0.1:101"] = None  # the knock after the close hangs
    crash(knocking, "b")
    knocking.resume(b, {})  # it reconnected meanwhile
    address, d = knocks.pending[-2]  # the resume knocks too
    assert address == "127.0.0.1:101"
    d.callback(Knock.REFUSED)  # a stale answer (the listener restarting, say)
    assert members_of(knocking) == {"a", "b"}


def test_clients_are_not_knocked(knocking):
    session = RecordingSession("v")
    knocking.join(session, "client", "d", "127.0.0.1:9", "", 0, [])
    assert knocking.knock.asked == []


def test_a_listener_that_outlives_the_control_link_by_a_moment_is_knocked_again(knocking):
    knocks = knocking.knock
    two_listening_servers(knocking)
    crash(knocking, "b")  # the control socket closed first; the listener still accepts
    assert members_of(knocking) == {"a", "b"}
    knocks.answers["127.0.0.1:101"] = Knock.REFUSED  # ... and is gone a moment later
    knocking.reactor.advance(KNOCKS_AFTER_CLOSE[0])
    assert members_of(knocking) == {"a"}


def open_striped_request(replica):
    """Three servers and a client in domain d, one request striped over two of them; returns (ruid, servers)."""
    from vod.coordinator import requests as rq
    servers = {}
    for sid in ("s1", "s2", "s3"):
        servers[sid] = RecordingSession(sid)
        replica.join(servers[sid], "server", "d", f"127.0.0.1:{300 + len(servers)}", "", 1, ["m"])
    replica.join(RecordingSession("cl"), "client", "d", "127.0.0.1:400", "", 0, [])
    replica.register_movies("s1", [{"id": "m", "frame_count": 12, "fps": 24.0, "width": 8, "height": 8}])
    replica.max_servers = 2
    opened = []
    replica.open_request("cl", "r1", "m", rq.mask_to_text(FrameMask.full(12))).addCallback(opened.append)
    past_grace(replica, list(servers) + ["cl"])
    return opened[0][0], servers


def exclude_first_server(replica, ruid):
    victim = replica.raft.read(lambda m: m.requests.request(ruid))["strategy"]["assignments"][0]["server"]
    replica._exclude([victim], "test")
    return victim


def test_a_restripe_with_no_held_mask_here_waits_for_the_clients_report(replica):
    from vod.coordinator import requests as rq
    from vod.coordinator.replica import HELD_WAIT
    ruid, _ = open_striped_request(replica)
    before = replica.raft.read(lambda m: m.requests.request(ruid))["strategy"]
    victim = exclude_first_server(replica, ruid)
    assert replica.raft.read(lambda m: m.requests.request(ruid))["revision"] == 1  # waiting, not restriped
    replica.reactor.advance(HELD_WAIT / 2)
    held = FrameMask.from_ranges(12, [(0, 6)])
    replica.report_progress(ruid, rq.mask_to_text(held))  # the client resumed here and reported
    record = replica.raft.read(lambda m: m.requests.request(ruid))
    assert record["revision"] == 2 and record["history"][0]["failed"] == [victim]
    masks = {a["server"]: rq.mask_from_text(a["mask"], 12, "mask") for a in record["strategy"]["assignments"]}
    victims = next(rq.mask_from_text(a["mask"], 12, "mask") for a in before["assignments"] if a["server"] == victim)
    moved = FrameMask(12)
    for server, mask in masks.items():
        moved |= mask & victims
    assert moved == victims - held  # what it holds of the failed server's frames is not asked for again


def test_a_restripe_waits_for_a_held_mask_only_so_long(replica):
    from vod.coordinator.replica import HELD_WAIT
    ruid, _ = open_striped_request(replica)
    exclude_first_server(replica, ruid)
    replica.reactor.advance(HELD_WAIT - 0.01)
    assert replica.raft.read(lambda m: m.requests.request(ruid))["revision"] == 1
    replica.reactor.advance(0.02)
    assert replica.raft.read(lambda m: m.requests.request(ruid))["revision"] == 2  # without it, then
