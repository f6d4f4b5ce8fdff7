"""GroupState: commands in, events out; refusals leave the state untouched."""

import json
import math

import pytest

from vod.errors import VodError
from vod.groups.commands import (
    BadCommand, StaleView, cast_cmd, create_group_cmd, delete_cmd, dissolve_group_cmd,
    exclude_cmd, join_cmd, leave_cmd, next_ruid_cmd, put_cmd,
)
from vod.groups.events import (
    Delivered, GroupDissolved, MemberExcluded, RuidAssigned, TableDeleted, TablePut,
    ViewChanged, event_from_dict, event_to_dict,
)
from vod.groups.state import BadSnapshot, GroupState, Member, domain_group, video_group

CS = domain_group("cs")


def join(member_id, domain="cs", kind="server", port=None, **details):
    address = f"host-{member_id}:{port or 7000}"
    return join_cmd(member_id, kind, domain, address, **details)


def state_with(*member_ids, domain="cs"):
    state = GroupState()
    for member_id in member_ids:
        state.apply(join(member_id, domain))
    return state


def refused(state, command, match=None):
    """Apply `command`, expect BadCommand, and check nothing changed."""
    before = state.snapshot()
    with pytest.raises(BadCommand, match=match) as caught:
        state.apply(command)
    assert state.snapshot() == before
    return caught.value


# -- joins and domain groups ---------------------------------------------------


def test_first_join_creates_the_domain_group_at_view_1():
    state = GroupState()
    events = state.apply(join_cmd("s1", "server", "cs", "10.0.0.1:7000", capacity=4, movies=["m1", "m2"]))
    assert events == [ViewChanged(CS, 1, ("s1",), joined=("s1",), left=(), previous_casts=0)]
    assert state.members["s1"] == Member("s1", "server", "cs", "10.0.0.1:7000", "", 4, ("m1", "m2"), incarnation=1)
    assert state.groups[CS].view_id == 1


def test_each_join_is_a_new_view_with_members_sorted():
    state = state_with("s2")
    [view] = state.apply(join("c1", kind="client"))
    assert view == ViewChanged(CS, 2, ("c1", "s2"), joined=("c1",), left=(), previous_casts=0)


def test_domains_have_separate_groups():
    state = state_with("s1")
    [view] = state.apply(join("s2", domain="ece"))
    assert view.group == domain_group("ece") and view.view_id == 2  # the log index that made it
    assert state.groups[CS].members == ("s1",)


def test_join_of_a_live_id_from_another_address_is_refused():
    state = state_with("s1")
    refused(state, join("s1", port=7001), match="member id s1 already in use")


def test_join_of_a_live_id_with_other_details_is_refused():
    state = state_with("s1")
    refused(state, join("s1", capacity=9), match="member id s1 already in use")


def test_the_same_join_again_is_a_harmless_retry():
    state = state_with("s1")
    members, groups = dict(state.members), dict(state.groups)
    assert state.apply(join("s1")) == []
    assert (dict(state.members), dict(state.groups)) == (members, groups)


def test_a_rejoin_after_exclusion_is_a_new_incarnation():
    state = state_with("s1")
    old = state.members["s1"].incarnation
    state.apply(exclude_cmd(["s1"], "silent"))
    state.apply(join("s1", port=7001))
    assert state.members["s1"].incarnation > old
    assert state.groups[CS].view_id == 3


# -- leave and exclude -----------------------------------------------------------


def test_leave_gives_a_new_view_in_every_group_of_the_member():
    state = state_with("s1", "s2", "c1")
    state.apply(create_group_cmd("video:1", ["s1", "c1"]))
    events = state.apply(leave_cmd("c1"))
    assert events == [
        ViewChanged(CS, 4, ("s1", "s2"), joined=(), left=("c1",), previous_casts=0),
        ViewChanged("video:1", 5, ("s1",), joined=(), left=("c1",), previous_casts=0),
    ]
    assert "c1" not in state.members


def test_leave_of_an_unknown_member_is_refused():
    refused(state_with("s1"), leave_cmd("nobody"), match="no member nobody")


def test_exclude_makes_one_view_per_affected_group():
    state = state_with("s1", "s2", "s3", "c1")
    state.apply(create_group_cmd("video:1", ["s1", "s2", "c1"]))
    state.apply(create_group_cmd("video:2", ["s3"]))
    events = state.apply(exclude_cmd(["s2", "s1"], "no heartbeat for 3s"))
    assert events == [
        MemberExcluded("s1", "no heartbeat for 3s"),
        MemberExcluded("s2", "no heartbeat for 3s"),
        ViewChanged(CS, 5, ("c1", "s3"), joined=(), left=("s1", "s2"), previous_casts=0),
        ViewChanged("video:1", 6, ("c1",), joined=(), left=("s1", "s2"), previous_casts=0),
    ]
    assert sorted(state.members) == ["c1", "s3"]


def test_exclude_skips_members_already_gone():
    state = state_with("s1", "s2")
    state.apply(leave_cmd("s2"))
    events = state.apply(exclude_cmd(["s1", "s2", "ghost"], "silent"))
    assert [e for e in events if isinstance(e, MemberExcluded)] == [MemberExcluded("s1", "silent")]
    assert state.apply(exclude_cmd(["s1"], "silent")) == []


def test_exclude_of_an_old_incarnation_spares_the_rejoined_member():
    state = state_with("s1")
    first = state.members["s1"].incarnation
    state.apply(leave_cmd("s1"))
    state.apply(join("s1"))
    assert state.apply(exclude_cmd(["s1"], "silent", incarnations={"s1": first})) == []
    assert "s1" in state.members
    current = state.members["s1"].incarnation
    assert state.apply(exclude_cmd(["s1"], "silent", incarnations={"s1": current}))[0] == MemberExcluded("s1", "silent")


def test_exclude_incarnations_must_match_the_ids():
    refused(state_with("s1", "s2"), exclude_cmd(["s1", "s2"], "x", incarnations={"s1": 1}), match="incarnations")


# -- video groups ---------------------------------------------------------------


def test_create_group_starts_at_its_log_index_with_everyone_joined():
    state = state_with("s1", "c1")
    assert state.apply(create_group_cmd("video:7", ["s1", "c1"]), index=10) == [
        ViewChanged("video:7", 10, ("c1", "s1"), joined=("c1", "s1"), left=(), previous_casts=0)
    ]


def test_a_name_used_again_never_repeats_a_view_id():
    state = state_with("s1", "s2")
    state.apply(create_group_cmd("video:1", ["s1"]))
    state.apply(join("s3"))
    [old] = state.apply(leave_cmd("s1"))[1:]
    state.apply(dissolve_group_cmd("video:1"))
    [new] = state.apply(create_group_cmd("video:1", ["s2"]))
    assert new.view_id > old.view_id


@pytest.mark.parametrize("name, members, match", [
    ("video:1", ["s1", "ghost"], "no member"),
    ("video:1", ["s1", "s1"], "twice"),
    ("domain:cs2", ["s1"], "domain groups"),
    ("video:old", ["s1"], "already exists"),
])
def test_create_group_refusals(name, members, match):
    state = state_with("s1")
    state.apply(create_group_cmd("video:old", ["s1"]))
    refused(state, {"v": 1, "op": "create_group", "name": name, "members": members}, match=match)


def test_dissolve_reports_the_last_view():
    state = state_with("s1", "c1")
    state.apply(create_group_cmd("video:1", ["s1", "c1"]))
    state.apply(cast_cmd("video:1", "s1", {"frame": 1}))
    assert state.apply(dissolve_group_cmd("video:1")) == [GroupDissolved("video:1", 3, 1, ("c1", "s1"))]
    assert "video:1" not in state.groups


def test_dissolve_refusals():
    state = state_with("s1")
    refused(state, dissolve_group_cmd("video:none"), match="no group")
    refused(state, dissolve_group_cmd(CS), match="domain groups")


# -- casts ----------------------------------------------------------------------


def test_casts_are_numbered_from_1_in_each_view():
    state = state_with("s1", "s2")
    assert state.apply(cast_cmd(CS, "s1", {"n": 1})) == [Delivered(CS, 2, 1, "s1", {"n": 1})]
    assert state.apply(cast_cmd(CS, "s2", {"n": 2})) == [Delivered(CS, 2, 2, "s2", {"n": 2})]
    [view] = state.apply(join("s3"))
    assert view.previous_casts == 2
    assert state.apply(cast_cmd(CS, "s3", {"n": 3})) == [Delivered(CS, 3, 1, "s3", {"n": 3})]


def test_only_members_of_the_current_view_may_cast():
    state = state_with("s1", "s2", "s3")
    state.apply(create_group_cmd("video:1", ["s1"]))
    refused(state, cast_cmd("video:1", "s2", {}), match="s2 is not a member of view 4 of video:1")
    state.apply(exclude_cmd(["s3"], "silent"))
    refused(state, cast_cmd(CS, "s3", {}), match="not a member")
    refused(state, cast_cmd("video:none", "s1", {}), match="no group")


def test_a_cast_for_an_old_view_is_stale():
    state = state_with("s1")
    assert state.apply(cast_cmd(CS, "s1", {}, view_id=1))
    state.apply(join("s2"))
    error = refused(state, cast_cmd(CS, "s1", {}, view_id=1), match="now in view 2")
    assert isinstance(error, StaleView)


def test_payloads_are_canonical_copies():
    state = state_with("s1")
    payload = {"frames": (1, 2), "meta": {"fps": 25.0}}
    [delivered] = state.apply(cast_cmd(CS, "s1", payload))
    assert delivered.payload == {"frames": [1, 2], "meta": {"fps": 25.0}}
    raw = {"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": payload}
    [delivered] = state.apply(raw)
    payload["meta"]["fps"] = 30.0
    assert delivered.payload["meta"]["fps"] == 25.0


# -- RUIDs and tables -----------------------------------------------------------


def test_ruids_strictly_increase():
    state = GroupState()
    ruids = [state.apply(next_ruid_cmd())[0].ruid for _ in range(5)]
    assert ruids == [1, 2, 3, 4, 5]
    assert video_group(ruids[0]) == "video:1"
    restored = GroupState.from_snapshot(state.snapshot())
    assert restored.apply(next_ruid_cmd()) == [RuidAssigned(6)]


def test_tables_put_and_delete():
    state = GroupState()
    value = {"clients": ["c1"], "strategy": "round-robin"}
    assert state.apply(put_cmd("requests", "r1", value)) == [TablePut("requests", "r1", value)]
    value["clients"].append("c2")  # the state kept its own copy
    assert state.table("requests") == {"r1": {"clients": ["c1"], "strategy": "round-robin"}}
    state.table("requests")["r1"]["clients"].clear()  # and hands out copies
    assert state.table("requests")["r1"]["clients"] == ["c1"]
    assert state.apply(delete_cmd("requests", "r1")) == [TableDeleted("requests", "r1")]
    assert state.apply(delete_cmd("requests", "r1")) == []
    assert state.table("requests") == {} and state.snapshot()["tables"] == {}


# -- malformed commands ----------------------------------------------------------

GOOD_JOIN = join("s9")


def with_fields(base, **changes):
    command = dict(base)
    for field, value in changes.items():
        if value is ...:
            del command[field]
        else:
            command[field] = value
    return command


@pytest.mark.parametrize("command, match", [
    ("join", "a command is a dict"),
    (with_fields(GOOD_JOIN, v=...), "unknown command version"),
    (with_fields(GOOD_JOIN, v=2), "unknown command version 2"),
    (with_fields(GOOD_JOIN, v=True), "unknown command version"),
    (with_fields(GOOD_JOIN, op="merge"), "unknown command op 'merge'"),
    (with_fields(GOOD_JOIN, op=["join"]), "unknown command op"),
    (with_fields(GOOD_JOIN, domain=...), "missing field 'domain'"),
    (with_fields(GOOD_JOIN, colour="red"), "unknown field"),
    (with_fields(GOOD_JOIN, member_id=""), "member_id must be a non-empty string"),
    (with_fields(GOOD_JOIN, kind="robot"), "kind must be one of"),
    (with_fields(GOOD_JOIN, address="nohost"), "host:port"),
    (with_fields(GOOD_JOIN, address="h:0"), "host:port"),
    (with_fields(GOOD_JOIN, address="h:99999"), "host:port"),
    (with_fields(GOOD_JOIN, address=":80"), "host:port"),
    (with_fields(GOOD_JOIN, capacity=-1), "capacity"),
    (with_fields(GOOD_JOIN, capacity=True), "capacity"),
    (with_fields(GOOD_JOIN, capacity=2.0), "capacity"),
    (with_fields(GOOD_JOIN, movies="m1"), "movies must be a list"),
    (with_fields(GOOD_JOIN, movies=["m1", 3]), r"movies\[1\]"),
    (with_fields(GOOD_JOIN, movies=["m1", "m1"]), "twice"),
    ({"v": 1, "op": "exclude", "member_ids": [], "reason": "x"}, "at least one"),
    ({"v": 1, "op": "exclude", "member_ids": ["s1"], "reason": "x", "incarnations": [1]}, "incarnations"),
    ({"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": "hi"}, "payload must be a dict"),
    ({"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": {"x": math.nan}}, "finite"),
    ({"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": {"x": {1, 2}}}, "not JSON data: set"),
    ({"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": {1: "x"}}, "not a string"),
    ({"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": {}, "view_id": "2"}, "view_id"),
    ({"v": 1, "op": "put", "table": "t", "key": "k", "value": b"bytes"}, "not JSON data: bytes"),
    ({"v": 1, "op": "next_ruid", "count": 2}, "unknown field"),
])
def test_malformed_commands_are_refused_without_a_trace(command, match):
    state = state_with("s1")
    error = refused(state, command, match=match)
    assert isinstance(error, VodError)


def test_deeply_nested_payload_is_refused():
    payload = {}
    for _ in range(5000):
        payload = {"x": payload}
    refused(state_with("s1"), {"v": 1, "op": "cast", "group": CS, "sender": "s1", "payload": payload},
            match="nested too deeply")


def test_constructors_refuse_at_the_caller():
    with pytest.raises(BadCommand, match="kind"):
        join_cmd("s1", "robot", "cs", "h:1")
    with pytest.raises(BadCommand, match="payload"):
        cast_cmd(CS, "s1", {"x": object()})


def test_constructors_make_plain_json():
    commands = [
        join("s1", movies=("m1",)), leave_cmd("s1"), exclude_cmd(("s1",), "x", {"s1": 3}),
        create_group_cmd("video:1", ("s1",)), dissolve_group_cmd("video:1"),
        cast_cmd(CS, "s1", {"t": (1, 2)}, view_id=4), cast_cmd(CS, "s1", {}), next_ruid_cmd(),
        put_cmd("t", "k", None), delete_cmd("t", "k"),
    ]
    for command in commands:
        assert command["v"] == 1
        assert json.loads(json.dumps(command)) == command
    assert "view_id" not in cast_cmd(CS, "s1", {})


# -- log positions -------------------------------------------------------------


def test_last_applied_counts_or_follows_the_log_index():
    state = GroupState()
    state.apply(join("s1"))
    assert state.last_applied == 1
    state.apply(join("s2"), index=5)  # Raft entries that are not ours leave holes
    assert state.last_applied == 5
    with pytest.raises(BadCommand, match="log index 5 already applied"):
        state.apply(join("s3"), index=5)
    assert "s3" not in state.members


def test_a_refused_command_does_not_advance_last_applied():
    state = state_with("s1")
    refused(state, leave_cmd("ghost"))
    assert state.last_applied == 1


# -- recipients ----------------------------------------------------------------


def test_recipients_are_the_view_the_event_belongs_to():
    state = state_with("s1", "s2", "c1")
    [cast] = state.apply(cast_cmd(CS, "c1", {}))
    assert state.recipients(cast) == ("c1", "s1", "s2")
    excluded, view = state.apply(exclude_cmd(["s2"], "silent"))
    assert state.recipients(excluded) == ()
    assert state.recipients(view) == ("c1", "s1")
    with pytest.raises(ValueError, match="current view"):
        state.recipients(cast)
    assert state.recipients(state.apply(next_ruid_cmd())[0]) == ()


# -- snapshots and the wire -------------------------------------------------------


def busy_state():
    state = state_with("s1", "s2", "c1")
    state.apply(join("e1", domain="ece"))
    state.apply(next_ruid_cmd())
    state.apply(create_group_cmd(video_group(1), ["s1", "c1"]))
    state.apply(cast_cmd(video_group(1), "c1", {"play": "m1", "at": 1.5}))
    state.apply(exclude_cmd(["s2"], "silent"))
    state.apply(put_cmd("strategies", "m1", {"mask": [1, 0, 1]}))
    return state


def test_snapshot_round_trips_exactly_through_json():
    state = busy_state()
    text = json.dumps(state.snapshot(), sort_keys=True)
    restored = GroupState.from_snapshot(json.loads(text))
    assert restored == state
    assert json.dumps(restored.snapshot(), sort_keys=True) == text
    command = cast_cmd(video_group(1), "s1", {"frame": 2})
    assert restored.apply(command) == state.apply(command)


def test_snapshot_is_a_copy():
    state = busy_state()
    snapshot = state.snapshot()
    snapshot["tables"]["strategies"]["m1"]["mask"].append(1)
    assert state.table("strategies")["m1"] == {"mask": [1, 0, 1]}


@pytest.mark.parametrize("damage", [
    lambda s: s.update(v=2),
    lambda s: s.pop("groups"),
    lambda s: s["members"][0].pop("incarnation"),
    lambda s: s["groups"][0].update(members="s1"),
])
def test_damaged_snapshots_are_refused(damage):
    snapshot = busy_state().snapshot()
    damage(snapshot)
    with pytest.raises(BadSnapshot):
        GroupState.from_snapshot(snapshot)


def test_events_round_trip_through_json():
    events = [
        ViewChanged(CS, 3, ("a", "b"), ("b",), ("c",), 4),
        Delivered(CS, 3, 1, "a", {"x": [1, {"y": None}]}),
        GroupDissolved("video:1", 2, 0, ("a",)),
        RuidAssigned(7),
        MemberExcluded("c", "silent"),
        TablePut("t", "k", [1, 2]),
        TableDeleted("t", "k"),
    ]
    for event in events:
        wire = json.loads(json.dumps(event_to_dict(event)))
        assert event_from_dict(wire) == event
    with pytest.raises(ValueError):
        event_from_dict({"v": 1, "type": "Explosion"})
    with pytest.raises(ValueError):
        event_from_dict({"v": 1, "type": "RuidAssigned", "ruid": 1, "extra": 2})


# -- randomized: two replicas, one command stream ------------------------------------

IDS = [f"m{i}" for i in range(8)]
DOMAINS = ["cs", "ece"]


def random_command(rng, state):
    """A plausible next command, sometimes one the state must refuse."""
    live = sorted(state.members)
    groups = sorted(state.groups)
    videos = [name for name in groups if name.startswith("video:")]
    op = rng.choices(
        ["join", "leave", "exclude", "cast", "create", "dissolve", "ruid", "put", "delete"],
        weights=[6, 2, 2, 12, 2, 1, 1, 1, 1],
    )[0]
    if op == "join":
        member_id = rng.choice(IDS)
        # Mostly the member's usual address; sometimes a rival for a live id.
        port = 7000 if rng.random() < 0.8 else 7001
        return join(member_id, domain=rng.choice(DOMAINS), port=port, kind=rng.choice(["server", "client"]))
    if op == "leave":
        return leave_cmd(rng.choice(live or IDS))
    if op == "exclude":
        return exclude_cmd(rng.sample(IDS, rng.randint(1, 3)), "silent")
    if op == "cast" and groups:
        name = rng.choice(groups)
        members = state.groups[name].members
        sender = rng.choice(members) if members and rng.random() < 0.9 else rng.choice(IDS)
        # Sometimes the sender's idea of the view is one behind: StaleView.
        view_id = rng.choice([None, None, state.groups[name].view_id, state.groups[name].view_id - 1])
        return cast_cmd(name, sender, {"n": rng.randrange(1000), "tag": [sender, name]}, view_id=view_id)
    if op == "create" and live:
        return create_group_cmd(video_group(state.last_ruid + rng.randint(0, 1)), rng.sample(live, rng.randint(1, len(live))))
    if op == "dissolve" and videos:
        return dissolve_group_cmd(rng.choice(videos))
    if op == "put":
        return put_cmd(rng.choice(["requests", "strategies"]), rng.choice("abc"), {"n": rng.randrange(9)})
    if op == "delete":
        return delete_cmd(rng.choice(["requests", "strategies"]), rng.choice("abc"))
    return next_ruid_cmd()


def outcome(state, command, index):
    before = state.snapshot()
    try:
        return state.apply(command, index=index)
    except BadCommand as error:
        assert state.snapshot() == before, "a refused command changed the state"
        return ("refused", str(error))


class Observer:
    """Follows the event stream as members would see it, keyed by (member id, incarnation)."""

    def __init__(self):
        self.received = {}  # (id, incarnation) -> [event, ...]
        self.gone = set()  # incarnations that left or were excluded
        self.view_members = {}  # (group, view_id) -> frozenset of (id, incarnation)
        self.delivered = {}  # (group, view_id) -> [Delivered, ...] as the coordinator produced them

    def see(self, state, events, members_before):
        for event in events:
            if isinstance(event, MemberExcluded):
                self.gone.add((event.member_id, members_before[event.member_id].incarnation))
            if isinstance(event, ViewChanged):
                for member_id in event.left:
                    self.gone.add((member_id, members_before[member_id].incarnation))
            recipients = state.recipients(event)
            assert set(recipients) <= set(state.members), f"{event} went to someone no longer a member"
            keys = [(m, state.members[m].incarnation) for m in recipients]
            assert not self.gone.intersection(keys), f"{event} went to a member that had left or was excluded"
            for key in keys:
                self.received.setdefault(key, []).append(event)
            if isinstance(event, ViewChanged):
                self.view_members[event.group, event.view_id] = frozenset(keys)
            if isinstance(event, Delivered):
                self.delivered.setdefault((event.group, event.view_id), []).append(event)

    def check_virtual_synchrony(self):
        seen_in_view = {}
        for key, events in self.received.items():
            for event in events:
                if isinstance(event, Delivered):
                    seen_in_view.setdefault((key, event.group, event.view_id), []).append(event)
        for (group, view_id), members in self.view_members.items():
            survivors = members & self.view_members.get((group, view_id + 1), frozenset())
            everything = self.delivered.get((group, view_id), [])
            for key in survivors:
                assert seen_in_view.get((key, group, view_id), []) == everything

    def check_each_member_stream_is_gapless(self):
        from vod.groups.delivery import DeliveryLog

        for (member_id, _), events in self.received.items():
            log = DeliveryLog(member_id)
            for event in events:
                if isinstance(event, (ViewChanged, Delivered, GroupDissolved)):
                    assert log.receive(event), f"{event} was a duplicate"


@pytest.mark.parametrize("seed", range(25))
def test_replicas_agree_and_views_are_virtually_synchronous(seed):
    import random

    rng = random.Random(seed)
    leader, follower = GroupState(), GroupState()
    observer = Observer()
    index = 0
    for _ in range(400):
        command = random_command(rng, leader)
        index += rng.randint(1, 3)
        members_before = dict(leader.members)
        result = outcome(leader, command, index)
        assert outcome(follower, command, index) == result
        assert follower == leader
        if isinstance(result, list):
            observer.see(leader, result, members_before)
        if rng.random() < 0.05:
            # A follower that restarts from a snapshot must carry on identically.
            follower = GroupState.from_snapshot(json.loads(json.dumps(follower.snapshot())))
    observer.check_virtual_synchrony()
    observer.check_each_member_stream_is_gapless()
    assert observer.delivered, "the random run never delivered a cast"
    assert observer.gone, "the random run never removed a member"


def test_a_checked_step_changes_the_state_as_the_command_would():
    # The request book applies its RUID, video group create and dissolve as steps, without a command dict.
    by_command, by_step = state_with("a", "b"), state_with("a", "b")
    for command, (op, fields) in [(next_ruid_cmd(), ("next_ruid", {})),
                                  (create_group_cmd("video:1", ["b", "a"]), ("create_group", {"name": "video:1",
                                                                                              "members": ("b", "a")})),
                                  (dissolve_group_cmd("video:1"), ("dissolve_group", {"name": "video:1"}))]:
        assert by_step.apply_step(op, **fields) == by_command.apply(command)
        assert by_step.snapshot() == by_command.snapshot()  # last_applied counted the same way too


def test_rows_and_tables_are_handed_out_as_copies():
    state = GroupState()
    state.apply(put_cmd("movies", "m", {"frame_count": 5, "tags": ["a"], "size": {"w": 1}}))
    row = state.row("movies", "m")
    row["tags"].append("b")
    row["size"]["w"] = 2
    assert state.row("movies", "m") == {"frame_count": 5, "tags": ["a"], "size": {"w": 1}}
    assert state.row("movies", "absent") is None and state.row("no table", "m") is None
