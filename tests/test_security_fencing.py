"""Issue 8, fencing: a primary coordinator paused past an election wakes up to find itself deposed, and
nothing it says with its old term counts.

3 coordinators, 2 `vod-server`s and a real-time `vod-client play` of a ten-second movie, all real processes
on 127.0.0.1. Once both servers stream, the acting primary is SIGSTOPped with a connection of ours to it open
(authenticated with the domain secret, as a server's is). A new primary is elected in a later term and every
member follows it: each one logs the new term, the one from which it ignores any older-term push. While the
old primary is frozen we send it, on our old connection, a Join of a server that does not exist and a
NextRuid: commands it cannot read before it wakes. Then it is SIGCONTed. Checked:

- it refuses both commands with NOT_PRIMARY (not naming itself), logs ROLE not-primary, and does no
  primary work (no exclusion, no proposal, no acting-primary line) between waking and stepping down;
- no member acts on it: each member's coordinator term only ever rises and ends at or above the new
  primary's; any push of an older term a member received is logged as ignored (the count is reported);
- the cluster stays consistent: the play completes frame-exact with no reconnection to any server; the
  non-existent server never became a member; once caught up, every replica, the woken one included,
  holds the same members, groups, RUID counter, applied index and the same record of the request (done).

Why members never actually receive an old-term push here: the old primary's lease (checked on every
command and every 20 ms) keeps it from acting on waking, and a member that left it ignores everything on
that connection (its connection attempt counter), so the term check in `GroupMember` is the third fence,
not the first; tests/test_groups_member.py (test_a_deliver_from_an_older_term_is_fenced_off) drives it
directly with a fake primary.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from cluster import wait_for
from test_coordinator_integration import pause_acting_primary
from test_crash_support import STARTUP, running_system
from vod.groups.probe import BlockingClient
from vod.groups.wire import GetRequest, Join, NextRuid, NotPrimary

FAILOVER_BOUND = 10.0  # seconds; a failover takes tenths of a second, this only catches "never"
PAUSE = 2.5  # seconds the old primary stays frozen: an election, and members moving to the new primary
GHOST = "ghost-server"
TERM_LINE = re.compile(r"(?P<member>\S+): coordinator term (?P<term>\d+) \(was (?P<was>\d+)\)")
STALE_LINE = re.compile(r"(?P<member>\S+): ignoring a Deliver with stale term (?P<term>\d+)")
PRIMARY_WORK = re.compile(r"not committed|excluding silent|restriping|ROLE acting-primary")


@pytest.fixture
def system(tmp_path):
    with running_system(tmp_path, servers=2) as s:
        yield s


def member_terms(system, name: str) -> list[int]:
    """The coordinator terms member process `name` logged, in order."""
    return [int(m["term"]) for _, line in system.log(name) if (m := TERM_LINE.search(line))]


def replica_view(cluster, rid: str, ruid: int) -> dict | None:
    """What replica `rid` holds of the domain and of request `ruid` (None if it does not answer now)."""
    status = cluster.statuses([rid]).get(rid)
    if status is None:
        return None
    with BlockingClient(cluster.listen(rid), timeout=2.0) as admin:
        admin.authenticate(cluster.secret, f"fencing-check-{rid}")
        request = admin.call(GetRequest, ruid=ruid)["request"]
    return {"members": sorted((m["id"], m["incarnation"]) for m in status["members"]),
            "groups": sorted((g["name"], g["view_id"], tuple(g["members"])) for g in status["groups"]),
            "last_ruid": status["last_ruid"], "last_applied": status["last_applied"],
            "request": json.dumps(request, sort_keys=True)}


def test_a_woken_old_primary_is_fenced_off_and_the_cluster_stays_consistent(system):
    cluster = system.cluster
    members = ["s1", "s2", "client"]  # the member processes (the client's member id is "viewer")
    client = system.play(*STARTUP)
    request = system.wait_streaming()
    ruid = request["ruid"]

    def open_connection(old):
        stale = BlockingClient(cluster.listen(old), timeout=FAILOVER_BOUND)
        stale.authenticate(cluster.secret, GHOST)
        return [stale]

    old, stopped_at, (stale,) = pause_acting_primary(cluster, open_connection)
    try:
        new = cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        new_term = cluster.statuses([new])[new]["replica"]["term"]
        # Read by the frozen process only once it wakes.
        join = stale.ask(Join, kind="server", domain="d", address="127.0.0.1:9", user="", capacity=1, movies=["m"])
        next_ruid = stale.ask(NextRuid)
        for name in members:
            wait_for(lambda: max(member_terms(system, name), default=0) >= new_term, FAILOVER_BOUND,
                     f"{name} to follow the new primary's term {new_term}", interval=0.1, describe=system.describe)
        time.sleep(max(0.0, stopped_at + PAUSE - time.time()))
        assert client.poll() is None, "the movie should still be playing when the old primary wakes"
        resumed_at = cluster.resume(old)
        for command, tag in ((Join, join), (NextRuid, next_ruid)):
            with pytest.raises(NotPrimary) as refused:
                got = stale.answer(command, tag)
                pytest.fail(f"the woken old primary {old} answered {command.__name__} with {got}")
            assert str(refused.value) != cluster.listen(old), "a deposed primary named itself as primary"
    finally:
        stale.close()

    stepped_down = wait_for(lambda: [t for t, line in cluster.log_lines(old)
                                     if t >= resumed_at and "ROLE not-primary" in line], 5,
                            f"{old} to log ROLE not-primary after SIGCONT", describe=cluster.describe)[0]
    woke_lines = [line for t, line in cluster.log_lines(old) if resumed_at <= t <= stepped_down]
    assert not [line for line in woke_lines if PRIMARY_WORK.search(line)], woke_lines

    summary = system.finished_whole(client, ruid)
    assert summary["state"] == "done" and summary["frames_missing"] == 0 and summary["reconnects"] == 0, summary
    assert system.played_frames() == system.expected_frames()

    # No member followed the old primary back: terms only rise, and end at or above the new one.
    # Any older-term push that reached one was ignored, and says so.
    for name in members:
        terms = member_terms(system, name)
        assert terms == sorted(set(terms)) and terms[-1] >= new_term, (name, terms)
        ignored = [int(m["term"]) for _, line in system.log(name) if (m := STALE_LINE.search(line))]
        assert all(term < new_term for term in ignored), (name, ignored)

    # One history everywhere: every replica, the woken one too, converges on the same state.
    def converged():
        views = {rid: replica_view(cluster, rid, ruid) for rid in cluster.ids}
        if any(v is None for v in views.values()):
            return None
        first = next(iter(views.values()))
        return first if all(v == first for v in views.values()) else None

    agreed = wait_for(converged, 15, "every replica to hold the same state", interval=0.2,
                      describe=system.describe)
    assert GHOST not in {member for member, _ in agreed["members"]}, agreed["members"]
    assert json.loads(agreed["request"])["state"] == "done"
