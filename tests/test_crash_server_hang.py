"""Issue 6, a server that hangs (SIGSTOP) past the failure timeout, then wakes: excluded, restriped, fenced.

3 coordinators, 3 `vod-server`s, a real-time `vod-client play` of a ten-second movie. Once every server
streams, s2 is SIGSTOPped. The coordinator excludes it and restripes its missing frames to s1 and s3
(revision 2). Only then is s2 SIGCONTed: what it still had to send for revision 1 must not count (the client
fenced it: it dropped s2's connection at the restripe, and frames stamped revision 1 are ignored), and s2,
whose membership is void, must rejoin as a new incarnation, dropping its strategies, before it gets any new
work. The movie completes frame-exact with s2 back in the domain; a second play then uses s2 again.
"""

from __future__ import annotations

import json
import time

import pytest

from cluster import wait_for
from test_crash_support import running_system

REJOINED = "rejoined as a new incarnation"


@pytest.fixture
def system(tmp_path):
    with running_system(tmp_path, servers=3) as s:
        yield s


def test_a_hung_server_is_restriped_fenced_and_rejoins_before_new_work(system):
    client = system.play()
    request = system.wait_streaming()
    ruid = request["ruid"]
    time.sleep(1.0)  # a second into the ten-second movie

    stopped_at = system.pause("s2")
    restriped = wait_for(lambda: (r := system.request_of()) and r["revision"] >= 2 and r,
                         system.cluster.failure_timeout + 10, "the restripe", interval=0.2,
                         describe=system.describe)
    assert "s2" not in restriped["servers"] and restriped["state"] == "streaming", restriped
    assert client.poll() is None, "the movie should still be playing when s2 wakes"
    woken_at = system.resume("s2")

    summary = system.finished_whole(client, ruid)
    assert summary["state"] == "done" and summary["revision"] >= 2
    assert summary["frames_received"] == system.frames and summary["frames_missing"] == 0
    assert system.played_frames() == system.expected_frames()
    assert summary["stall_ms"] < 10_000  # the hang cost at most the failure timeout and a restripe

    # s2 sent nothing after it hung that the client took: its count is what it sent before the SIGSTOP.
    s2_ends = wait_for(lambda: system.stream_ends("s2", ruid), 15, "s2's stream to end", interval=0.1,
                       describe=system.describe)
    assert all(end["revision"] == 1 for end in s2_ends), s2_ends
    assert summary["per_server"].get("s2", 0) <= sum(end["frames"] for end in s2_ends)
    assert summary["servers"]["s2"]["state"] == "closed"  # dropped at the restripe, never reopened

    # s2 woke excluded: it rejoined as a new incarnation, its strategies void, and got no work before that.
    rejoined = wait_for(lambda: system.first_line("s2", REJOINED), 15, "s2 to rejoin", interval=0.1,
                        describe=system.describe)
    assert rejoined >= woken_at  # the same clock: time.time() here, the log's epoch stamps there
    assert all(start["time"] < stopped_at for start in system.stream_starts("s2", ruid))
    wait_for(lambda: "s2" in system.live_servers(), 15, "s2 back in the domain", interval=0.2,
             describe=system.describe)

    # New work goes to s2 only now that it is back: a second client's strategy includes it.
    second = system.play("--fast", name="second")
    second.wait(timeout=60)
    assert second.returncode == 0, system.describe()
    again = json.loads((system.base / "second.out").read_text())
    assert sorted(again["per_server"]) == system.server_ids and again["frames_missing"] == 0
    assert system.played_frames("second") == system.expected_frames()
    later = [start for start in system.stream_starts("s2", again["ruid"])]
    assert later and all(start["time"] > rejoined for start in later)
