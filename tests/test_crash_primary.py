"""Issue 6, the primary coordinator crashes mid-movie: frames keep flowing, and the new primary carries on.

3 coordinators and a standby (tests/cluster.py), 3 `vod-server`s. Client A plays a ten-second movie in real
time. Once every server streams to it, client B starts a second play whose coordinator connection goes
through a loopback proxy (tests/tcpproxy.py) to the acting primary, set to hold back every reply once B has
sent OpenRequest: the primary commits B's request (RUID and strategy) and answers, B gets nothing. The test
reads that answer from the proxy (the RUID the old primary gave B), then SIGKILLs the primary and cuts B's
connection: B's request was made during the failover and its answer lost in it.

Then, with real processes throughout:
- a new primary acts; B, reconnected, retries OpenRequest with the same request id and gets the RUID the
  old primary had committed (its log shows the call outstanding across the lost connection); `vod-admin
  requests` lists exactly one request per client, two RUIDs for two requests (the RUID counter says 2:
  the retry burnt none), B's with B's own request id;
- once the new primary's grace period is over, s2 (in A's strategy) is SIGKILLed: the new primary
  excludes it and restripes A (revision 2 and more, its own log says so), and B too;
- A exits 0 with its output frame by frame equal (SHA-256) to the store and no stall: neither the
  failover nor the restripe after it cost a frame its deadline; B's output is frame-exact too, with no
  stall either (both hold half a second of movie before they play, `STARTUP`: the start of a play is not
  what this test is about);
- the new primary recruits the standby as a voter in the dead primary's place.

Why s2 dies only after the grace period: a new primary excludes nobody for `--grace` (2 s), and a dead
server's frames run out `--lead` (2 s) after its death, so a server that died at the failover would be
excluded about when the client needs its frames. Out of grace, exclusion takes at most the failure timeout
(1 s; `--reconnect-grace`, 0.5 s, when the dead server's control connection closes, as a SIGKILLed
process's does), and the restripe lands a second or more before the first missing frame is due.
"""

from __future__ import annotations

import json
import time

import pytest

from cluster import wait_for
from tcpproxy import CutProxy
from test_crash_support import STARTUP, running_system

VICTIM = "s2"


def amp_boxes(data: bytes) -> list[dict[bytes, bytes]]:
    """The complete AMP boxes in `data` (key and value each prefixed by a 2-byte length; an empty key ends a
    box)."""
    boxes, box, i = [], {}, 0
    while i + 2 <= len(data):
        n = int.from_bytes(data[i:i + 2], "big")
        i += 2
        if n == 0:
            boxes.append(box)
            box = {}
            continue
        if i + n + 2 > len(data):
            break
        key = data[i:i + n]
        i += n
        m = int.from_bytes(data[i:i + 2], "big")
        i += 2
        if i + m > len(data):
            break
        box[key] = data[i:i + m]
        i += m
    return boxes


def held_open_answer(proxy: CutProxy) -> dict[bytes, bytes] | None:
    """The OpenRequest answer ({_answer, ruid, state}) the proxy kept from B, once it is there."""
    return next((box for box in amp_boxes(proxy.held()) if b"_answer" in box and b"ruid" in box), None)


@pytest.fixture
def system(tmp_path):
    with running_system(tmp_path, servers=3, standbys=1) as s:
        yield s


def first_time(system, name: str, text: str, after: float = 0.0) -> float | None:
    return next((t for t, line in system.log(name) if t >= after and text in line), None)


def test_primary_killed_mid_movie_the_new_primary_continues_answers_restripes_and_recruits(system, proxy):
    cluster = system.cluster
    [standby] = cluster.standby_ids
    primary = cluster.wait_primary()

    a = system.play(*STARTUP)
    request = system.wait_streaming()
    ruid_a = request["ruid"]
    assert VICTIM in request["servers"]
    time.sleep(1.0)  # a second into the ten-second movie
    assert a.poll() is None

    # B opens its request through the proxy; the primary commits it, its answer stays in the proxy. Asked
    # again here: under load an election may have moved the primary since the cluster started.
    primary = cluster.wait_primary()
    proxy.forward_to(cluster.listen(primary))
    proxy.hold_replies_after(b"OpenRequest")
    b = system.play(*STARTUP, "--log-level", "DEBUG", "--coordinators",
                    ",".join([proxy.address, *cluster.coordinators]), name="b")
    answer = wait_for(lambda: held_open_answer(proxy), 30, "the primary's answer to B's OpenRequest",
                      interval=0.002, describe=system.describe)
    assert answer[b"state"] == b"strategized", answer
    ruid_b = int(answer[b"ruid"])
    assert ruid_b == ruid_a + 1

    cluster.kill(primary)
    proxy.cut()
    killed_at = time.time()
    assert a.poll() is None and b.poll() is None

    new = cluster.wait_primary(timeout=10, exclude=[primary])
    acting_at = max(line.time for line in cluster.role_lines()
                    if line.replica == new and line.role == "acting-primary")
    assert acting_at >= killed_at - 1.0  # a new acting period (the ROLE line and our clock: the same epoch)
    wait_for(lambda: (r := system.request_of("b")) and r["state"] == "streaming" and r, 30, "B's request streaming",
             interval=0.2, describe=system.describe)

    # Out of the new primary's grace period, a server of A's strategy dies.
    time.sleep(max(0.0, acting_at + cluster.grace + 0.2 - time.time()))
    assert a.poll() is None, "A should still be playing when the server dies"
    kill_sent_at = time.time()  # the coordinator may exclude it before the kill's reaping returns here
    server_killed_at = system.kill(VICTIM)
    restriped = wait_for(lambda: (r := system.request_of()) and r["revision"] >= 2 and r,
                         cluster.failure_timeout + 10, "A restriped", interval=0.2, describe=system.describe)
    assert VICTIM not in restriped["servers"], restriped

    a.wait(timeout=60)
    b.wait(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, system.describe()
    summary_a = json.loads(system.client_out.read_text())
    summary_b = json.loads((system.base / "b.out").read_text())
    restripe_logged = first_time(system, "client", f"RUID {ruid_a} revision 2")
    excluded = cluster.log_lines(new)
    excluded_at = next((t for t, line in excluded if "excluding silent members" in line and VICTIM in line), None)
    timing = {"primary killed": killed_at, "new primary acting": acting_at, "server killed": server_killed_at,
              "excluded": excluded_at, "A got revision 2": restripe_logged}
    timing = {k: None if v is None else round(v - killed_at, 3) for k, v in timing.items()}

    # A: every frame, in time, the strategy restriped after the failover.
    assert summary_a["ruid"] == ruid_a and summary_a["state"] == "done" and summary_a["revision"] >= 2
    assert summary_a["frames_received"] == system.frames and summary_a["frames_missing"] == 0
    assert system.played_frames() == system.expected_frames()
    assert summary_a["stalls"] == 0, (summary_a["stalls"], summary_a["stall_ms"], timing)
    # B: the RUID the old primary committed, got by a retry at the new one; every frame.
    assert summary_b["ruid"] == ruid_b and summary_b["state"] == "done"
    assert summary_b["frames_received"] == system.frames and summary_b["frames_missing"] == 0
    assert system.played_frames("b") == system.expected_frames()
    assert summary_b["stalls"] == 0, (summary_b["stalls"], summary_b["stall_ms"], timing)

    # B's one OpenRequest crossed the failover: sent, then the link lost, then answered.
    requested = [t for t, line in system.log("b") if "looking-up --found--> requesting" in line]
    opened = [t for t, line in system.log("b") if "requesting --opened--> awaiting-strategy" in line]
    assert len(requested) == 1 and len(opened) == 1, system.describe()
    lost = first_time(system, "b", "reconnecting to", after=requested[0])
    assert lost is not None and requested[0] < lost < opened[0], system.describe()
    assert not [line for _, line in system.log("b") if "--no_strategy-->" in line]

    # The lists the new primary holds: one request per client, one RUID per request, none burnt.
    requests = wait_for(lambda: (rs := system.admin("requests")) and all(r["state"] == "done" for r in rs) and rs,
                        15, "both requests done", interval=0.2, describe=system.describe)
    assert sorted(r["ruid"] for r in requests) == [ruid_a, ruid_b], requests
    [mine_b] = [r for r in requests if r["client"] == "b"]
    [mine_a] = [r for r in requests if r["client"] == "viewer"]
    assert mine_b["ruid"] == ruid_b and mine_b["request_id"] == summary_b["request_id"]
    assert mine_a["ruid"] == ruid_a and mine_a["request_id"] == summary_a["request_id"]
    assert mine_a["revision"] == summary_a["revision"] and mine_b["revision"] >= 2
    status = wait_for(lambda: system.admin("status"), 15, "vod-admin status", interval=0.2, describe=system.describe)
    assert status["last_ruid"] == ruid_b

    # The new primary restriped A (the old one was dead by then), and recruited the standby.
    assert excluded_at is not None and excluded_at > kill_sent_at, timing
    assert any(f"restriping RUID {ruid_a}: {VICTIM} failed" in line for t, line in excluded if t > kill_sent_at)
    strategies = wait_for(lambda: system.admin("strategies"), 15, "vod-admin strategies", interval=0.2,
                          describe=system.describe)
    strategy = next(doc for doc in strategies if doc["ruid"] == ruid_a)
    assert [h["failed"] for h in strategy["history"]] == [[VICTIM]], strategy["history"]
    roles = wait_for(lambda: (r := cluster.roles()) and r.get(standby) in ("backup", "witness") and r, 15,
                     "the standby recruited as a voter", interval=0.2, describe=system.describe)
    assert roles.get(new) == "primary", roles
    assert f"RECRUITED {standby} as voter" in cluster.log(new)
    assert system.live_servers() == set(system.server_ids) - {VICTIM}
