"""`vod-admin request RUID`: a request's log as pure code, from the record the coordinator keeps."""

from vod import adminviews as views
from vod.coordinator import requests as rq
from vod.coordinator.machine import GroupMachine
from vod.groups import commands as gc
from vod.strategy.mask import FrameMask

N = 12


def plan(ruid, **masks):
    return {"v": 1, "ruid": ruid, "movie": "m", "client": "tv", "backups": [],
            "assignments": [{"server": s, "mask": rq.mask_to_text(FrameMask.from_text(t))} for s, t in masks.items()]}


def test_each_revision_says_which_servers_frames_arrived_and_the_restripe_why():
    machine = GroupMachine()
    for member_id in "abcd":
        machine.apply(gc.join_cmd(member_id, "server", "d", f"127.0.0.1:{4000 + ord(member_id)}"))
    machine.apply(gc.join_cmd("tv", "client", "d", "127.0.0.1:5000", user="alice"))
    machine.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24}))
    result = machine.apply(dict(rq.open_cmd("r1", "tv", "m", FrameMask.full(N)), at=100.0))
    ruid = next(e["ruid"] for e in result["events"] if e["type"] == "RequestChanged")
    machine.apply(dict(rq.strategize_cmd(ruid, plan(ruid, a="100100100100", b="010010010010", c="001001001001")),
                       at=100.5))
    machine.apply(gc.exclude_cmd(["c"], "crashed"))
    # c died once the client held frames 0-2: only the frames still missing moved (vod/strategy/restripe.py).
    machine.apply(dict(rq.restripe_cmd(ruid, plan(ruid, a="000101100100", b="000010011010", d="000000000001"),
                                       ["c"]), at=101.0))
    machine.apply(dict(rq.cdone_cmd(ruid, "tv", FrameMask.full(N)), at=102.0))

    doc = views.request_log(machine.requests.request(ruid))
    assert doc["user"] == "alice" and doc["state"] == "done" and doc["held"] == N
    first, second = doc["revisions"]
    assert (first["reason"], first["at"], second["reason"], second["failed"]) == ("initial", 100.5, "restripe", ["c"])
    assert {a["server"]: (a["frames"], a["arrived"]) for a in first["assignments"]} == \
        {"a": (4, 1), "b": (4, 1), "c": (4, 1)}
    assert {a["server"]: (a["frames"], a["arrived"]) for a in second["assignments"]} == \
        {"a": (4, 4), "b": (4, 4), "d": (1, 1)}
    assert doc["sources"] == {"a": 5, "b": 5, "c": 1, "d": 1} and sum(doc["sources"].values()) == N
    text = views.request_log_text(doc)
    assert "for tv (user alice), done" in text and "restripe after c failed" in text
    assert "frames by server, as far as the coordinator knows: a 5, b 5, c 1, d 1" in text


def test_an_unfinished_request_does_not_guess_what_arrived():
    machine = GroupMachine()
    machine.apply(gc.join_cmd("a", "server", "d", "127.0.0.1:4001"))
    machine.apply(gc.join_cmd("tv", "client", "d", "127.0.0.1:5000"))
    machine.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24}))
    machine.apply(rq.open_cmd("r1", "tv", "m", FrameMask.full(N)))
    machine.apply(rq.strategize_cmd(1, plan(1, a="1" * N)))
    doc = views.request_log(machine.requests.request(1))
    assert doc["revisions"][0]["assignments"] == [{"server": "a", "frames": N, "arrived": None, "first": 0}]
    assert doc["sources"] == {} and doc["held"] is None
    assert "(user" not in views.request_log_text(doc)  # a client of the domain secret has no user
