"""Status, Groups and Requests stay within one AMP value however many requests the book holds."""

import io
import json
import random
import string

import pytest
from twisted.internet.task import Clock

from fakes import FakeRaft
from vod import admin
from vod.coordinator import access
from vod.coordinator import requests as rq
from vod.coordinator.replica import STATUS_GROUPS, CoordinatorReplica
from vod.coordinator.session import AUTHENTICATED, MemberSession
from vod.credentials import VIEWER
from vod.groups import commands as gc
from vod.groups.wire import MAX_JSON, Json, Status, encoded_size
from vod.strategy.mask import FrameMask

PEERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
N = 1_000
ACTIVE = 9_600  # more open video groups than made the v1 Status overflow (~9,500)
DONE = 2_400


def new_replica():
    clock = Clock()
    r = CoordinatorReplica(clock, replica_id="c1", raft_addr=PEERS[0], peers=PEERS, listen="127.0.0.1:11",
                           secret=b"s" * 32, data_dir=None, raft_factory=FakeRaft)
    r.raft.set_leader(term=3)
    r._check()
    return r


@pytest.fixture(scope="module")
def big():
    """A replica whose book holds ACTIVE open requests (one video group each) and DONE finished ones."""
    r = new_replica()
    m = r.machine
    for i in range(4):
        m.apply(gc.join_cmd(f"srv{i}", "server", "d", f"127.0.0.1:{2000 + i}", capacity=1, movies=["m"]))
    for i in range(12):
        m.apply(gc.join_cmd(f"bc{i:02d}", "client", "d", f"127.0.0.1:{3000 + i}", user="alice" if i == 0 else ""))
    m.apply(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24}))
    wanted = rq.mask_to_text(FrameMask.full(N))
    placement = rq.placement_settings()
    for i in range(ACTIVE + DONE):
        client = f"bc{i % 12:02d}"
        result = m.apply(dict(rq.admit_cmd(f"r{i}", client, "m", wanted, placement), at=1.0))
        if i >= ACTIVE:
            ruid = result["events"][0]["ruid"]
            m.apply(dict(rq.cdone_cmd(ruid, client, wanted), at=2.0))
    return r


def session(replica, principal=access.SECRET_HOLDER):
    s = MemberSession(replica)
    s.phase, s.principal, s.member_id = AUTHENTICATED, principal, "vod-admin"
    return s


def sent(value):
    """What AMP would send: raises if the value does not fit one AMP value."""
    return Json().toString(value)


def test_status_is_bounded_with_counts(big):
    doc = session(big).status()["status"]
    sent(doc)
    assert doc["v"] == 2
    assert doc["group_count"] == ACTIVE + 1 and doc["video_groups"] == ACTIVE
    assert len(doc["groups"]) == STATUS_GROUPS and doc["groups_more"] == ACTIVE + 1 - STATUS_GROUPS
    assert doc["groups"][0]["name"] == "domain:d" and doc["groups"][0]["member_count"] == 16
    # The most recent video groups: the last RUIDs admitted and still open.
    listed = [int(g["name"].split(":")[1]) for g in doc["groups"][1:]]
    assert listed == list(range(ACTIVE, ACTIVE - STATUS_GROUPS + 1, -1))
    assert doc["requests_active"] == ACTIVE and doc["last_ruid"] == ACTIVE + DONE
    assert doc["member_count"] == 16 and doc["members_more"] == 0
    assert [m["kind"] for m in doc["members"]][:4] == ["server"] * 4  # servers first


def test_the_v1_status_would_not_have_fitted(big):
    """The point of it: every group listed, as v1 did, is over the limit at this size."""
    groups = big.raft.read(lambda m: [{"name": g.name, "view_id": g.view_id, "members": list(g.members)}
                                      for _, g in sorted(m.state.groups.items())])
    assert encoded_size(groups) > MAX_JSON


def test_groups_pages_list_every_group_once(big):
    s = session(big)
    names, after, pages = [], None, 0
    while True:
        answer = s.groups(**({} if after is None else {"after": after}))["groups"]
        sent(answer)
        pages += 1
        assert answer["total"] == ACTIVE + 1
        names += [g["name"] for g in answer["groups"]]
        after = answer["next"]
        if after is None:
            break
    assert pages > 1 and len(names) == len(set(names)) == ACTIVE + 1
    assert names == sorted(names)
    assert s.groups(limit=3)["groups"]["next"] == names[2]


def test_requests_pages_list_every_request_once(big):
    s = session(big)
    ruids, after = [], None
    while True:
        answer = s.requests(**({} if after is None else {"after": after}))
        for key in ("requests", "caches", "movies", "page"):
            sent(answer[key])
        page = answer["page"]
        assert page["total"] == ACTIVE + DONE and page["counts"] == {"strategized": ACTIVE, "done": DONE}
        assert page["listed"] == len(answer["requests"]) <= rq.REQUESTS_PAGE
        ruids += [r["ruid"] for r in answer["requests"]]
        after = page["next"]
        if after is None:
            break
    assert ruids == list(range(1, ACTIVE + DONE + 1))
    active = s.requests(active=True, after=ACTIVE - 5)
    assert [r["ruid"] for r in active["requests"]] == list(range(ACTIVE - 4, ACTIVE + 1))
    assert active["page"]["next"] is None and active["page"]["counts"] == {"strategized": ACTIVE}


def test_a_client_asking_for_the_catalogue_gets_one_bounded_page(big):
    answer = session(big).requests()  # no arguments: as vod-client looks a movie up
    assert answer["movies"] == {"m": {"frame_count": N, "fps": 24}}
    assert len(answer["requests"]) == rq.REQUESTS_PAGE and answer["page"]["next"] == rq.REQUESTS_PAGE


def test_a_viewer_pages_through_its_own_requests_only(big):
    s = session(big, access.Principal("alice", VIEWER))
    answer = s.requests(limit=10)
    assert {r["client"] for r in answer["requests"]} == {"bc00"}
    assert answer["page"]["total"] == (ACTIVE + DONE) // 12
    assert answer["page"]["next"] == answer["requests"][-1]["ruid"]


def test_status_fits_with_very_many_members_and_long_ids():
    r = new_replica()
    rng = random.Random(4)

    def noise(k):
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(k))

    for i in range(800):
        r.machine.apply(gc.join_cmd(f"c{i}-{noise(180)}", "client", "d", f"{noise(40).lower()}.example:{1000 + i}",
                                    user=noise(20)))
    doc = r.status()
    sent(doc)
    assert doc["member_count"] == 800 and 0 < len(doc["members"]) < 800
    assert doc["members_more"] == 800 - len(doc["members"])
    assert doc["groups"][0]["member_count"] == 800
    page = r.groups_page(None, None)
    sent(page)
    assert [g["name"] for g in page["groups"]] == ["domain:d"]


def test_vod_admin_renders_counts_and_reads_every_page(big):
    status = session(big).status()["status"]
    doc = admin.merge_status([("127.0.0.1:11", status, None)])
    assert doc["v"] == 2 and doc["groups_more"] == ACTIVE + 1 - STATUS_GROUPS
    text = admin.status_text(doc)
    assert f"groups ({ACTIVE + 1}, of which {ACTIVE} video groups; {ACTIVE} active requests)" in text
    assert f"... and {ACTIVE + 1 - STATUS_GROUPS} more" in text

    s = session(big)

    async def call(command, **arguments):
        answer = getattr(s, {"Requests": "requests", "Groups": "groups"}[command.__name__])(**arguments)
        return json.loads(json.dumps(answer))

    def run(coroutine):
        from twisted.internet import defer
        out = []
        defer.ensureDeferred(coroutine).addBoth(out.append)
        return out[0]

    listing = run(admin.all_requests(call))
    assert [r["ruid"] for r in listing["requests"]] == list(range(1, ACTIVE + DONE + 1))
    assert len(run(admin.all_requests(call, active=True))["requests"]) == ACTIVE
    assert len(run(admin.all_groups(call))) == ACTIVE + 1


def test_a_v1_status_answer_still_merges():
    v1 = {"v": 1, "replica": {"id": "c1", "raft": "h:1", "listen": "h:11", "acting_primary": True, "standby": False,
                              "term": 2, "commit_index": 9},
          "replicas_table": {}, "members": [], "groups": [{"name": "video:3", "view_id": 4, "members": ["a"]}],
          "last_ruid": 4, "last_applied": 9}
    doc = admin.merge_status([("h:11", v1, None)])
    assert doc["group_count"] == 1 and doc["video_groups"] == 1 and doc["groups_more"] == 0
    out = io.StringIO()
    admin.print_status(doc, out)
    assert "video:3" in out.getvalue()


def test_status_command_is_unchanged_on_the_wire():
    assert Status.arguments == [] and [k for k, _ in Status.response] == [b"status"]
