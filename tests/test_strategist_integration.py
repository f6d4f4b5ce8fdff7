"""Requests end to end on three real coordinator replicas, with scripted servers and a scripted client.

request -> RUID -> strategy pushed to the client and the chosen servers only -> CDONE -> group dissolved;
and the same with the primary SIGKILLed between the request and CDONE: the request continues, same RUID.
"""

import json
import os
import subprocess
import sys

import pytest

from cluster import Cluster, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


class Members:
    def __init__(self, tmp_path, cluster):
        self.tmp_path, self.cluster, self.procs = tmp_path, cluster, {}

    def start(self, role, member_id, *extra):
        log = self.tmp_path / f"{member_id}.jsonl"
        self.procs[member_id] = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "scripted_member.py"), role, "--id", member_id,
             "--coordinators", ",".join(self.cluster.coordinators), "--secret-file", str(self.cluster.secret_file),
             "--log", str(log), *extra],
            stdout=open(self.tmp_path / f"{member_id}.out", "wb"), stderr=subprocess.STDOUT)
        return member_id

    def log(self, member_id):
        path = self.tmp_path / f"{member_id}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def events(self, member_id, type_=None):
        return [r["event"] for r in self.log(member_id) if "event" in r and (type_ is None or r["event"]["type"] == type_)]

    def step(self, member_id, name):
        return next((r for r in self.log(member_id) if r.get("step") == name), None)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def system(tmp_path):
    with Cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        members = Members(tmp_path, cluster)
        try:
            for sid, movies in [("s1", "m:100"), ("s2", "m:100"), ("s3", "m:100,other:50"), ("s4", "other:50")]:
                members.start("server", sid, "--movies", movies, "--capacity", "1")
            wait_for(lambda: all(members.step(s, "registered") for s in ("s1", "s2", "s3", "s4")), 30,
                     "servers registered")
            yield cluster, members
        finally:
            members.stop()


@pytest.mark.parametrize("kill_primary", [False, True], ids=["steady", "primary-killed-before-cdone"])
def test_request_strategy_cdone_dissolve(system, tmp_path, kill_primary):
    cluster, members = system
    go = tmp_path / "go"
    members.start("client", "c1", "--movie", "m", "--frames", "100", "--request-id", "req-1", "--go-file", str(go))
    wait_for(lambda: members.step("c1", "opened") and members.events("c1", "StrategyAssigned"), 30, "strategy")
    ruid = members.step("c1", "opened")["ruid"]
    strategy = members.events("c1", "StrategyAssigned")[0]["strategy"]
    servers = sorted(a["server"] for a in strategy["assignments"])
    assert servers == ["s1", "s2", "s3"]  # the holders of m, and only them
    group = f"video:{ruid}"
    for sid in servers:
        wait_for(lambda: members.events(sid, "StrategyAssigned"), 10, f"{sid} got the strategy")
        views = [e for e in members.events(sid, "ViewChanged") if e["group"] == group]
        assert views and sorted(views[0]["members"]) == ["c1", *servers]
    assert not [e for e in members.events("s4") if e.get("group") == group or e["type"] == "StrategyAssigned"]

    if kill_primary:
        primary = cluster.wait_primary(10)
        cluster.kill(primary)
        cluster.wait_primary(15, exclude=[primary])
    go.write_text("go")
    wait_for(lambda: members.step("c1", "done") or members.step("c1", "error"), 60, "client finished")
    assert members.step("c1", "error") is None, members.step("c1", "error")
    assert members.step("c1", "reopened")["ruid"] == ruid  # a retry gets the same RUID, never a second one
    for sid in servers:
        wait_for(lambda: [e for e in members.events(sid, "GroupDissolved") if e["group"] == group], 10,
                 f"{sid} told to stop (SDONE)")
    assert [e for e in members.events("c1", "GroupDissolved") if e["group"] == group]  # VDONE
    states = [e["state"] for e in members.events("c1", "RequestChanged") if e["ruid"] == ruid]
    assert states[-1] == "done" and "strategized" in states


def admin(cluster, *args):
    exe = os.path.join(os.path.dirname(sys.executable), "vod-admin")
    r = subprocess.run([exe, "--coordinators", ",".join(cluster.coordinators), "--secret-file",
                        str(cluster.secret_file), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_admin_shows_strategies_and_requests(system, tmp_path):
    cluster, members = system
    go = tmp_path / "go"
    members.start("client", "c2", "--movie", "m", "--frames", "100", "--request-id", "req-9", "--go-file", str(go))
    # The strategy is pushed just before the answer that the member writes as "opened": wait for both.
    wait_for(lambda: members.step("c2", "opened") and members.events("c2", "StrategyAssigned"), 30, "strategy")
    ruid = members.step("c2", "opened")["ruid"]
    docs = json.loads(admin(cluster, "strategies", "--json"))
    doc = next(d for d in docs if d["ruid"] == ruid)
    assert {"ruid", "movie", "client", "state", "backups", "assignments"} <= set(doc)
    assert doc["client"] == "c2" and doc["state"] == "strategized"
    masks = [a["mask"] for a in doc["assignments"]]
    assert all(len(m) == 100 for m in masks)
    assert sum(a["frames"] for a in doc["assignments"]) == 100
    assert all(sum(m[i] == "1" for m in masks) == 1 for i in range(100))  # disjoint and complete
    text = admin(cluster, "strategy", str(ruid))
    assert f"RUID {ruid}: movie m (100 frames) for c2" in text
    assert "req-9" in admin(cluster, "requests")
    go.write_text("go")
    wait_for(lambda: members.step("c2", "done"), 60, "client finished")
    caches = json.loads(admin(cluster, "caches", "--json"))
    assert {"client": "c2", "user": "", "movie": "m", "frames": 100, "frame_count": 100} in caches
