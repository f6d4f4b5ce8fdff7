"""The request life cycle as pure code: commands in, records and pushed events out."""

import pytest

from vod.coordinator import requests as rq
from vod.coordinator.machine import GroupMachine
from vod.groups import commands as gc
from vod.groups.commands import BadCommand
from vod.strategy.mask import FrameMask

N = 40


def strategy(ruid, servers, client="cl"):
    stripes = FrameMask.interleave(N, len(servers))
    return {"v": 1, "ruid": ruid, "movie": "m", "client": client,
            "assignments": [{"server": s, "mask": rq.mask_to_text(m)} for s, m in zip(servers, stripes)],
            "backups": []}


@pytest.fixture
def machine():
    m = GroupMachine()
    for member_id, kind in [("s1", "server"), ("s2", "server"), ("s3", "server"), ("cl", "client"),
                            ("other", "client")]:
        m.apply(gc.join_cmd(member_id, kind, "d", f"127.0.0.1:{len(member_id) + hash(member_id) % 1000 + 2000}"))
    m.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24}))
    return m


def pushed_to(result, member_id):
    return [e["type"] for e, recipients in result["pushes"] if member_id in recipients]


def open_request(machine, request_id="r1", client="cl", wanted=None):
    result = machine.apply(rq.open_cmd(request_id, client, "m", wanted or FrameMask.full(N)))
    changed = next(e for e in result["events"] if e["type"] == "RequestChanged")
    return changed["ruid"], result


def test_full_life_cycle_and_video_group(machine):
    ruid, opened = open_request(machine)
    assert pushed_to(opened, "cl") == ["RequestChanged"]
    assert machine.requests.request(ruid)["state"] == rq.PENDING

    result = machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1", "s2"])))
    assert pushed_to(result, "s1") == ["ViewChanged", "StrategyAssigned"]
    assert pushed_to(result, "cl") == ["ViewChanged", "StrategyAssigned", "RequestChanged"]
    assert pushed_to(result, "s3") == []  # only the strategy's servers hear of it
    assert machine.state.groups[f"video:{ruid}"].members == ("cl", "s1", "s2")

    machine.apply(rq.start_cmd(ruid, "cl"))
    assert machine.requests.request(ruid)["state"] == rq.STREAMING
    held = FrameMask.full(N)
    result = machine.apply(rq.cdone_cmd(ruid, "cl", held))
    assert pushed_to(result, "s2") == ["GroupDissolved"]  # SDONE
    assert pushed_to(result, "cl") == ["GroupDissolved", "RequestChanged"]  # VDONE
    assert f"video:{ruid}" not in machine.state.groups
    assert machine.requests.request(ruid)["state"] == rq.DONE
    assert machine.requests.caches() == [{"client": "cl", "user": "", "movie": "m", "mask": rq.mask_to_text(held),
                                          "frames": N, "frame_count": N}]


def test_retry_with_the_same_request_id_gets_the_same_ruid(machine):
    first, _ = open_request(machine, "same")
    again, result = open_request(machine, "same")
    assert again == first
    assert len(machine.requests.requests()) == 1
    other, _ = open_request(machine, "different")
    assert other > first


@pytest.mark.parametrize("make, words", [
    (lambda: rq.open_cmd("r", "cl", "nope", FrameMask.full(N)), "unknown movie"),
    (lambda: rq.open_cmd("r", "cl", "m", FrameMask(N)), "empty"),
    (lambda: rq.open_cmd("r", "cl", "m", FrameMask.full(N + 5)), f"covers {N + 5} frames; the movie has {N}"),
    (lambda: rq.open_cmd("r", "s1", "m", FrameMask.full(N)), "not a client"),
    (lambda: dict(rq.open_cmd("r", "cl", "m", FrameMask.full(N)), wanted="!!notbase64"), "not a valid"),
])
def test_bad_requests_are_refused_and_change_nothing(machine, make, words):
    before = machine.snapshot()
    with pytest.raises(BadCommand, match=words):
        machine.apply(make())
    assert machine.snapshot() == before


def test_cdone_for_a_ruid_the_client_does_not_own(machine):
    ruid, _ = open_request(machine)
    machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1"])))
    before = machine.snapshot()
    with pytest.raises(BadCommand, match="another client"):
        machine.apply(rq.cdone_cmd(ruid, "other", FrameMask.full(N)))
    with pytest.raises(BadCommand, match="no request"):
        machine.apply(rq.cdone_cmd(ruid + 100, "cl", FrameMask.full(N)))
    assert machine.snapshot() == before


def test_transitions_outside_the_table_are_refused(machine):
    ruid, _ = open_request(machine)
    with pytest.raises(BadCommand, match="pending: cannot start"):
        machine.apply(rq.start_cmd(ruid, "cl"))
    with pytest.raises(BadCommand, match="pending: cannot cdone"):
        machine.apply(rq.cdone_cmd(ruid, "cl", FrameMask.full(N)))
    machine.apply(rq.cancel_cmd(ruid, "cl"))
    with pytest.raises(BadCommand, match="cancelled: cannot strategize"):
        machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1"])))


def test_strategy_naming_an_unknown_server_is_refused_whole(machine):
    ruid, _ = open_request(machine)
    before = machine.snapshot()
    with pytest.raises(BadCommand):
        machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1", "ghost"])))
    assert machine.snapshot() == before


def test_client_crash_fails_its_requests_and_dissolves_the_group(machine):
    ruid, _ = open_request(machine)
    machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1", "s2"])))
    result = machine.apply(gc.exclude_cmd(["cl"], "silent"))
    assert pushed_to(result, "s1")[-1] == "GroupDissolved"
    record = machine.requests.request(ruid)
    assert record["state"] == rq.FAILED and "crashed" in record["reason"]


def test_restripe_records_history_and_pushes_the_new_revision(machine):
    ruid, _ = open_request(machine)
    machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1", "s2"])))
    result = machine.apply(rq.restripe_cmd(ruid, strategy(ruid, ["s1"]), ["s2"]))
    assigned = next(e for e, _ in result["pushes"] if e["type"] == "StrategyAssigned")
    assert assigned["revision"] == 2 and assigned["reason"] == "restripe"
    assert machine.requests.request(ruid)["history"][0]["failed"] == ["s2"]


def test_snapshot_round_trip_keeps_requests_and_retries(machine):
    ruid, _ = open_request(machine, "keep")
    machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1"])))
    copy = GroupMachine()
    copy.restore(machine.snapshot())
    assert copy.snapshot() == machine.snapshot()
    again, _ = open_request(copy, "keep")
    assert again == ruid


def test_restripe_brings_backups_into_the_video_group(machine):
    ruid, _ = open_request(machine)
    machine.apply(rq.strategize_cmd(ruid, strategy(ruid, ["s1", "s2"])))
    machine.apply(gc.exclude_cmd(["s2"], "crashed"))
    result = machine.apply(rq.restripe_cmd(ruid, strategy(ruid, ["s1", "s3"]), ["s2"]))
    assert pushed_to(result, "s3") == ["ViewChanged", "StrategyAssigned"]
    assert machine.state.groups[f"video:{ruid}"].members == ("cl", "s1", "s3")


def test_a_request_belongs_to_its_clients_user_even_after_the_client_id_changes_hands(machine):
    machine.apply(gc.join_cmd("alice-tv", "client", "d", "127.0.0.1:3001", user="alice"))
    ruid, _ = open_request(machine, "r1", client="alice-tv")
    assert machine.requests.request(ruid)["user"] == "alice"
    assert rq.summary(machine.requests.request(ruid))["user"] == "alice"
    machine.apply(gc.leave_cmd("alice-tv"))  # its request fails; the id is free again
    machine.apply(gc.join_cmd("alice-tv", "client", "d", "127.0.0.1:3002", user="bob"))
    before = machine.snapshot()
    with pytest.raises(BadCommand, match="belongs to another user"):
        machine.apply(rq.cancel_cmd(ruid, "alice-tv"))
    with pytest.raises(BadCommand, match="belongs to another user"):
        open_request(machine, "r1", client="alice-tv")  # a retry would hand bob alice's RUID
    assert machine.snapshot() == before


def test_the_request_log_keeps_each_state_and_the_assignments_a_restripe_replaced(machine):
    ruid, _ = open_request(machine)
    first = strategy(ruid, ["s1", "s2"])
    machine.apply(dict(rq.strategize_cmd(ruid, first), at=10.0))
    machine.apply(dict(rq.start_cmd(ruid, "cl"), at=11.0))
    machine.apply(dict(rq.restripe_cmd(ruid, strategy(ruid, ["s1"]), ["s2"]), at=12.0))
    machine.apply(dict(rq.cdone_cmd(ruid, "cl", FrameMask.full(N)), at=13.0))
    record = machine.requests.request(ruid)
    assert [(e["state"], e["revision"]) for e in record["log"]] == [
        ("pending", 0), ("strategized", 1), ("streaming", 1), ("streaming", 2), ("done", 2)]
    assert record["history"][0]["replaced"] == first["assignments"]
    assert record["held"] == rq.mask_to_text(FrameMask.full(N))
