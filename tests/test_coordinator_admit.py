"""Admission in one log entry (`req_admit`), periodic strategy masks, and pushes kept over a lease lapse."""

import json

import pytest
from twisted.internet.task import Clock

from fakes import FakeRaft, RecordingSession
from vod.coordinator import requests as rq
from vod.coordinator.machine import GroupMachine
from vod.coordinator.replica import CoordinatorReplica
from vod.groups import commands as gc
from vod.groups.commands import BadCommand
from vod.strategy.mask import PERIODIC, WIRE_VERSION, FrameMask, MaskError
from vod.strategy.placement import ServerInfo, Strategy, make_strategy

N = 5_000


def new_machine(servers=("s1", "s2", "s3"), capacity=1):
    m = GroupMachine()
    for server in servers:
        m.apply(gc.join_cmd(server, "server", "d", f"127.0.0.1:{2000 + len(m.state.members)}", capacity=capacity,
                            movies=["m"]))
    for client in ("cl", "other"):
        m.apply(gc.join_cmd(client, "client", "d", f"127.0.0.1:{3000 + len(m.state.members)}"))
    m.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24}))
    return m


def as_logged(command):
    """What a replica applies: the command after its trip through the log as JSON text."""
    return json.loads(json.dumps(command, separators=(",", ":"), sort_keys=True))


def admit(machine, request_id="r1", client="cl", wanted=None, **placement):
    command = dict(rq.admit_cmd(request_id, client, "m", wanted or FrameMask.full(N),
                                rq.placement_settings(**placement)), at=5.0)
    return machine.apply(as_logged(command))


def pushed_to(result, member_id):
    return [e["type"] for e, recipients in result["pushes"] if member_id in recipients]


# -- periodic masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [512, 999, 10_000, 100_000])
@pytest.mark.parametrize("k", [2, 3, 4, 7, 16])
def test_interleaved_masks_encode_as_their_period(n, k):
    for mask in FrameMask.interleave(n, k) + [~m for m in FrameMask.interleave(n, k)]:
        data = mask.to_bytes(periodic=True)
        assert data[:2] == bytes((WIRE_VERSION, PERIODIC)) and len(data) <= 2 + 4 + 1 + 3
        assert FrameMask.from_bytes(data, max_length=n, length=n) == mask
        assert mask.to_bytes()[1] != PERIODIC  # only on request


def test_weighted_strategy_masks_are_periodic_and_round_trip():
    servers = [ServerInfo(f"s{i:02d}", 1 + i % 4, 0, frozenset({"m"})) for i in range(16)]
    strategy = make_strategy(1, "m", "c", 100_000, FrameMask.full(100_000), servers, max_servers=16)
    record = strategy.to_dict()
    assert len(json.dumps(record)) < 2_000  # 16 masks of 100,000 frames
    assert Strategy.from_dict(record) == strategy


def test_aperiodic_masks_keep_the_other_kinds():
    mask = FrameMask.from_indices(10_000, [1, 2, 3, 500, 7_777])
    assert mask.to_bytes(periodic=True) == mask.to_bytes()
    assert FrameMask.full(10_000).to_bytes(periodic=True) == FrameMask.full(10_000).to_bytes()


@pytest.mark.parametrize("payload, why", [
    ((100).to_bytes(4, "little") + bytes((0x10,)), "period of 0"),  # an empty pattern
    ((3).to_bytes(4, "little") + bytes((0x14, 0xF0)), "period of 4 frames for a mask of 3"),
    ((0).to_bytes(4, "little") + bytes((0x17, 0x80)), "period of 1 frames for a mask of 0"),
    ((7).to_bytes(4, "little"), "truncated"),
])
def test_malformed_periodic_masks_are_refused(payload, why):
    with pytest.raises(MaskError, match=why):
        FrameMask.from_bytes(bytes((WIRE_VERSION, PERIODIC)) + payload)


def test_periodic_length_is_checked_before_allocating():
    data = bytes((WIRE_VERSION, PERIODIC)) + (1_000_000).to_bytes(4, "little") + bytes((0x17, 0x80))
    with pytest.raises(MaskError, match="exceeds the limit"):
        FrameMask.from_bytes(data, max_length=999_999)


# -- req_admit -----------------------------------------------------------------------------------------


def test_one_entry_admits_and_strategizes_the_same_on_every_replica():
    a, b = new_machine(), new_machine()
    result = admit(a)
    assert admit(b) == result
    assert a.snapshot() == b.snapshot()
    ruid = result["events"][0]["ruid"]
    record = a.requests.request(ruid)
    assert record["state"] == rq.STRATEGIZED and record["revision"] == 1
    expected = make_strategy(ruid, "m", "cl", N, FrameMask.full(N),
                             [ServerInfo(s, 1, 0, frozenset({"m"})) for s in ("s1", "s2", "s3")])
    assert Strategy.from_dict(record["strategy"]) == expected
    # The client hears it was admitted and gets the strategy in the same push; only its servers hear of it.
    assert pushed_to(result, "cl") == ["RequestChanged", "ViewChanged", "StrategyAssigned", "RequestChanged"]
    assert pushed_to(result, "s1") == ["ViewChanged", "StrategyAssigned"]
    assert pushed_to(result, "other") == []
    assert [e["state"] for e in result["events"] if e["type"] == "RequestChanged"] == [rq.PENDING, rq.STRATEGIZED]


def test_a_cached_placement_gets_the_request_s_own_ruid_and_client():
    m = new_machine()
    first = admit(m, "r1", "cl")["events"][0]["ruid"]
    second = admit(m, "r2", "other")["events"][0]["ruid"]
    one, two = Strategy.from_dict(m.requests.request(first)["strategy"]), \
        Strategy.from_dict(m.requests.request(second)["strategy"])
    assert (two.ruid, two.client_id) == (second, "other")
    assert two.assignments == one.assignments
    # A server set that changes is a new placement.
    m.apply(gc.leave_cmd("s3"))
    third = admit(m, "r3", "cl")["events"][0]["ruid"]
    assert Strategy.from_dict(m.requests.request(third)["strategy"]).servers == ("s1", "s2")


def test_placement_settings_come_from_the_command():
    m = new_machine(servers=("s1", "s2", "s3", "s4", "s5"))
    ruid = admit(m, max_servers=2, policy="interleave")["events"][0]["ruid"]
    strategy = Strategy.from_dict(m.requests.request(ruid)["strategy"])
    assert strategy.servers == ("s1", "s2") and strategy.policy == "interleave"
    assert strategy.backups == ("s3", "s4")


def test_a_wanted_mask_found_valid_once_is_still_checked_against_each_movie():
    m = new_machine()
    m.apply(gc.put_cmd(rq.MOVIES_TABLE, "short", {"frame_count": N // 2, "fps": 24}))
    whole = rq.mask_to_text(FrameMask.full(N))
    admit(m, "r1", wanted=whole)  # valid for "m", remembered
    before = m.snapshot()
    command = dict(rq.admit_cmd("r2", "cl", "short", whole, rq.placement_settings()), at=5.0)
    with pytest.raises(BadCommand, match="wanted mask covers"):
        m.apply(as_logged(command))
    assert m.snapshot() == before
    for request_id in ("r3", "r4"):  # an empty mask is refused every time, not remembered
        with pytest.raises(BadCommand, match="empty"):
            admit(m, request_id, wanted=rq.mask_to_text(FrameMask(N)))


def test_a_retry_gets_the_same_ruid_and_no_second_strategy():
    m = new_machine()
    ruid = admit(m)["events"][0]["ruid"]
    again = admit(m)
    assert [(e["type"], e.get("reason")) for e in again["events"]] == [("RequestChanged", rq.RETRY_REASON)]
    assert again["events"][0]["ruid"] == ruid and again["events"][0]["state"] == rq.STRATEGIZED
    assert m.requests.request(ruid)["revision"] == 1


def test_a_request_left_pending_by_an_older_log_is_strategized_by_its_retry():
    m = new_machine()
    opened = m.apply(rq.open_cmd("r1", "cl", "m", FrameMask.full(N)))
    ruid = opened["events"][0]["ruid"]
    again = admit(m)
    assert again["events"][0]["ruid"] == ruid
    assert m.requests.request(ruid)["state"] == rq.STRATEGIZED


def test_no_server_for_the_movie_fails_the_request_in_the_same_entry():
    m = new_machine(servers=())
    result = admit(m)
    states = [(e["state"], e["reason"]) for e in result["events"] if e["type"] == "RequestChanged"]
    assert states[0][0] == rq.PENDING and states[-1][0] == rq.FAILED
    assert "no live server holds movie" in states[-1][1]


@pytest.mark.parametrize("placement", [None, {"v": 2}, dict(rq.placement_settings(), policy="nope"),
                                       dict(rq.placement_settings(), max_servers=0),
                                       dict(rq.placement_settings(), backups=True)])
def test_bad_placement_settings_are_refused_before_anything_changes(placement):
    m = new_machine()
    before = m.snapshot()
    command = dict(rq.admit_cmd("r1", "cl", "m", FrameMask.full(N), rq.placement_settings()), placement=placement)
    with pytest.raises(BadCommand, match="placement"):
        m.apply(command)
    assert m.snapshot() == before


# -- the replica ------------------------------------------------------------------------------------------


@pytest.fixture
def replica():
    clock = Clock()
    r = CoordinatorReplica(clock, replica_id="c1", raft_addr="127.0.0.1:1", peers=["127.0.0.1:1", "127.0.0.1:2"],
                           listen="127.0.0.1:11", secret=b"s" * 32, data_dir=None, raft_factory=FakeRaft)
    r.raft.set_leader(term=3)
    r._check()
    return r


def join(replica, member_id, kind="server"):
    session = RecordingSession(member_id)
    replica.join(session, kind, "d", f"127.0.0.1:{len(replica.sessions) + 100}", "", 1, ["m"])
    return session


def test_open_request_answers_after_one_proposal_with_the_strategy_pushed(replica):
    servers = [join(replica, s) for s in ("s1", "s2")]
    client = join(replica, "cl", kind="client")
    replica.raft.machine.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N}))
    proposed = []
    propose = replica.raft.propose
    replica.raft.propose = lambda command: proposed.append(command["op"]) or propose(command)
    answers = []
    replica.open_request("cl", "r1", "m", rq.mask_to_text(FrameMask.full(N))).addCallback(answers.append)
    assert proposed == ["req_admit"]
    ruid, state = answers[0]
    assert state == rq.STRATEGIZED
    for member in (*servers, client):
        assert [e["ruid"] for e in member.delivered if e["type"] == "StrategyAssigned"] == [ruid]


def test_no_server_refuses_the_open_request(replica):
    join(replica, "cl", kind="client")
    replica.raft.machine.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N}))
    failures = []
    replica.open_request("cl", "r1", "m", rq.mask_to_text(FrameMask.full(N))).addErrback(failures.append)
    assert "no live server holds movie" in failures[0].getErrorMessage()


def test_pushes_committed_during_a_lease_lapse_go_out_when_acting_again_in_the_same_term(replica):
    a = join(replica, "a")
    replica.raft.acting = False  # the lease lapsed; still the Raft leader of term 3
    replica._check()
    before = len(a.delivered)
    join(replica, "b")
    assert len(a.delivered) == before  # nothing is pushed while not acting
    replica.raft.acting = True
    replica._check()
    assert [e["members"] for e in a.delivered[before:] if e["type"] == "ViewChanged"] == [["a", "b"]]


def test_pushes_of_a_lapse_are_dropped_if_another_term_came_between(replica):
    a = join(replica, "a")
    replica.raft.acting = False
    replica._check()
    before = len(a.delivered)
    join(replica, "b")
    replica.raft.set_leader(term=4)  # elected again: members resume from the outboxes instead
    replica._check()
    assert len(a.delivered) == before


def test_each_client_gets_its_own_strategy_and_token_when_one_entry_pushes_several(replica):
    """Events are encoded once per entry and shared, but a client's copy (with its token) never is."""
    from vod.coordinator.session import MemberSession

    for server in ("s1", "s2"):
        join(replica, server)
    sent: dict[str, list] = {}
    for client in ("c1", "c2", "c3"):
        join(replica, client, kind="client")
        session = MemberSession(replica)
        session.member_id = client
        session.callRemote = lambda command, events, term, _c=client: sent.setdefault(_c, []).append(events)
        replica.sessions[client] = session
    # A freed copy's id is often the next copy's (CPython reuses the memory): make it always so here.
    issue_in, reused = replica.stream_tokens.issue_in, {}

    def issue_in_one_dict(events, member_id):
        out = []
        for event in issue_in(events, member_id):
            if event not in events:  # a copy, with the client's token
                reused.clear()
                reused.update(event)
                event = reused
            out.append(event)
        return out

    replica.stream_tokens.issue_in = issue_in_one_dict
    machine = replica.raft.machine
    machine.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N}))
    applied = []
    for i, client in enumerate(("c1", "c2", "c3")):
        command = rq.admit_cmd(f"r{i}", client, "m", FrameMask.full(N), rq.placement_settings())
        applied.append((command, machine.apply(command)))
    replica._on_applied_entry(applied)  # one log entry, three admissions
    for client in ("c1", "c2", "c3"):
        strategies = [e for box in sent[client] for e in json.loads(bytes(box)) if e["type"] == "StrategyAssigned"]
        assert [s["strategy"]["client"] for s in strategies] == [client]
        ruid = strategies[0]["ruid"]
        assert strategies[0]["token"] == replica.stream_tokens.mint(ruid, client)
