"""Virtual synchrony, end to end, under crashes (seeded, reproducible schedule).

Four real member processes cast to their domain group while the test SIGKILLs
the primary coordinator and SIGSTOPs one member past the failure timeout (so
it is excluded, then wakes up). From every member's delivery log we check the
guarantees of the group service:

1. per member and group: casts of a view arrive as seq 1, 2, 3... with no gap and
   no duplicate, and each new view's `previous_casts` matches what was delivered;
2. members that survive from view v into the next view delivered exactly the same
   casts in v;
3. a member delivers casts only in views it belongs to (an excluded member gets
   nothing more in the views that exclude it);
4. every acknowledged cast was delivered, in its (view, seq) slot, to every member
   that survived that view.

Set VOD_VS_SEED to replay another schedule.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from cluster import Cluster, wait_for  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = int(os.environ.get("VOD_VS_SEED", "20261123"))
GROUP = "domain:vs"


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def members(tmp_path):
    procs = {}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_member(procs, cluster, tmp_path, member_id, seed, casts):
    log = tmp_path / f"{member_id}.jsonl"
    procs[member_id] = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "vs_member.py"), "--coordinators", ",".join(cluster.coordinators),
         "--secret-file", str(cluster.secret_file), "--member-id", member_id, "--log", str(log), "--seed", str(seed),
         "--casts", str(casts), "--interval", "0.1", "--linger", "4"],
        stdout=open(tmp_path / f"{member_id}.out", "wb"), stderr=subprocess.STDOUT)
    return log


def group_events(records):
    return [r["event"] for r in records if "event" in r and r["event"].get("group") == GROUP]


def test_virtual_synchrony_under_primary_crash_and_member_exclusion(tmp_path, members):
    rng = random.Random(SEED)
    with Cluster(tmp_path / "cluster", failure_timeout=1.0, grace=1.5) as cluster:
        cluster.start()
        ids = ["m1", "m2", "m3", "m4"]
        logs = {m: start_member(members, cluster, tmp_path, m, rng.randrange(1 << 30), casts=40) for m in ids}
        wait_for(lambda: all(group_events(read_log(logs[m])) for m in ids), 30, "every member joined")

        time.sleep(rng.uniform(0.5, 1.5))
        primary = cluster.wait_primary(10)
        cluster.kill(primary)
        cluster.wait_primary(10, exclude=[primary])

        time.sleep(rng.uniform(2.0, 3.0))  # past the new primary's grace period
        victim = rng.choice(ids)
        members[victim].send_signal(signal.SIGSTOP)
        wait_for(lambda: any(victim in e.get("left", []) for e in group_events(read_log(logs[rng_other(ids, victim)])
                                                                              ) if e["type"] == "ViewChanged"),
                 15, f"{victim} excluded")
        members[victim].send_signal(signal.SIGCONT)

        for m, proc in members.items():
            proc.wait(timeout=90)

    records = {m: read_log(logs[m]) for m in ids}
    for m, recs in records.items():
        assert not [r for r in recs if "error" in r], f"{m} failed: {recs[-1]}"
    check_virtual_synchrony(records, victim)


def rng_other(ids, victim):
    return next(m for m in ids if m != victim)


def check_virtual_synchrony(records, victim):
    views = {}  # view_id -> members, from anyone's log
    delivered_in = defaultdict(dict)  # member -> view_id -> [(seq, sender, payload)]
    next_view_of = defaultdict(dict)  # member -> view_id -> the view it moved into next
    for m, recs in records.items():
        events = group_events(recs)
        view = None
        for e in events:
            if e["type"] == "ViewChanged":
                views[e["view_id"]] = tuple(e["members"])
                assert m in e["members"], f"{m} delivered view {e['view_id']} without being in it"
                rejoined = m in e["joined"]  # a new incarnation: it was not in the view before this one
                if view is not None and e["view_id"] > view and not rejoined:
                    # 1. the new view says how many casts the old one had: we saw them all
                    if m in views.get(view, ()) and view in delivered_in[m]:
                        assert e["previous_casts"] == len(delivered_in[m][view]), \
                            f"{m}: view {view} had {e['previous_casts']} casts, delivered {len(delivered_in[m][view])}"
                    next_view_of[m][view] = e["view_id"]
                view = e["view_id"]
                delivered_in[m].setdefault(view, [])
            elif e["type"] == "Delivered":
                assert e["view_id"] == view, f"{m}: cast of view {e['view_id']} delivered in view {view}"
                casts = delivered_in[m][view]
                assert e["seq"] == len(casts) + 1, f"{m}: view {view} seq {e['seq']} after {len(casts)} (gap/dup)"
                casts.append((e["seq"], e["sender"], json.dumps(e["payload"], sort_keys=True)))
    # 3. casts only in views that hold the member
    for m, per_view in delivered_in.items():
        for view_id, casts in per_view.items():
            if casts:
                assert m in views[view_id], f"{m} delivered casts in view {view_id}, which excludes it"
    # 2. survivors of a view into the same next view delivered the same casts in it
    by_transition = defaultdict(dict)
    for m, moves in next_view_of.items():
        for old, new in moves.items():
            by_transition[(old, new)][m] = delivered_in[m].get(old, [])
    checked = 0
    for (old, new), per_member in by_transition.items():
        sets = {m: casts for m, casts in per_member.items()}
        first = next(iter(sets.values()))
        for m, casts in sets.items():
            assert casts == first, f"view {old}->{new}: {m} delivered {len(casts)} casts, others {len(first)}"
        checked += 1
    assert checked >= 3, f"too few view changes observed ({checked}) for the test to mean anything"
    # 4. acknowledged casts were delivered in their slot to every member that survived the view
    acked = [(m, r["cast_ok"], r["n"]) for m, recs in records.items() for r in recs if "cast_ok" in r]
    assert len(acked) > 50
    for sender, (view_id, seq), n in acked:
        for m, moves in next_view_of.items():
            if view_id in moves:
                casts = delivered_in[m][view_id]
                assert len(casts) >= seq and casts[seq - 1][1] == sender, \
                    f"{m} survived view {view_id} but missed acknowledged cast {seq} of {sender}"
    assert any(victim in (e.get("left") or []) for recs in records.values() for e in group_events(recs)
               if e["type"] == "ViewChanged"), f"{victim} was never excluded"
