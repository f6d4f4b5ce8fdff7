"""Real vod-server processes on three real coordinator replicas, read by a plain blocking-socket client.

Two servers join with a store, a scripted client opens a request, and the test connects to each server the
strategy names (at the address the StrategyAssigned event gives): HELLO + CREDIT bring exactly that
server's stripe, stored bytes unchanged, then END. After the client's CDONE the servers close the data
connections within a second (SDONE).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cluster import HOST, Cluster, free_ports, wait_for
from vod.strategy.placement import Strategy
from vod.stream import protocol as p

from test_server_support import check_frames, credit, hello, make_store

HERE = os.path.dirname(os.path.abspath(__file__))
FRAMES = 100

# As tests/cluster.py does for replicas: the server dies with the test process (Linux).
_LAUNCHER = """\
import sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
from vod.server.cli import main
sys.exit(main())
"""


class Processes:
    def __init__(self, base):
        self.base, self.procs = base, {}

    def start(self, name, argv):
        out = open(self.base / f"{name}.log", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("VOD_SECRET_FILE", None)
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env)

    def log(self, name) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def jsonl(self, name):
        path = self.base / f"{name}.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def read_until_end(sock, timeout=10.0) -> list[p.FrameMessage]:
    decoder, out = p.FrameDecoder(), []
    sock.settimeout(timeout)
    while not out or out[-1].type == p.FRAME:
        data = sock.recv(65536)
        assert data, "the server closed before END"
        out += decoder.feed(data)
    return out


@pytest.fixture
def system(tmp_path):
    store = make_store(tmp_path / "store", {"m": FRAMES})
    with Cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        procs = Processes(tmp_path)
        try:
            ports = free_ports(2)
            for sid, port in zip(("s1", "s2"), ports):
                procs.start(sid, [sys.executable, "-c", _LAUNCHER, "--domain", "d",
                                  "--coordinators", ",".join(cluster.coordinators), "--media", store.root,
                                  "--listen", f"{HOST}:{port}", "--id", sid, "--secret-file", str(cluster.secret_file),
                                  "--rate-limit", "20M"])
            for sid in ("s1", "s2"):
                wait_for(lambda: "serving 1 movies" in procs.log(sid), 30, f"{sid} registered",
                         describe=lambda: procs.log(sid))
            yield cluster, procs, store
        finally:
            procs.stop()


def test_stripes_over_tcp_then_sdone_closes(system, tmp_path):
    cluster, procs, store = system
    go = tmp_path / "go"
    procs.start("c1", [sys.executable, os.path.join(HERE, "scripted_member.py"), "client", "--id", "c1",
                       "--coordinators", ",".join(cluster.coordinators), "--secret-file", str(cluster.secret_file),
                       "--domain", "d", "--log", str(tmp_path / "c1.jsonl"), "--movie", "m", "--frames", str(FRAMES),
                       "--request-id", "r1", "--go-file", str(go)])
    assigned = wait_for(lambda: [r["event"] for r in procs.jsonl("c1")
                                 if r.get("event", {}).get("type") == "StrategyAssigned"], 30, "the strategy",
                        describe=lambda: procs.log("c1"))[0]
    strategy = Strategy.from_dict(assigned["strategy"])
    assert sorted(strategy.servers) == ["s1", "s2"]

    sockets, movie = {}, store.open("m")
    try:
        for sid in strategy.servers:
            host, port = assigned["addresses"][sid].rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=10)
            sockets[sid] = sock
            # The token the coordinator pushed to c1 with the strategy: a server takes no HELLO without it.
            sock.sendall(hello(assigned["ruid"], "c1", token=assigned["token"]) + credit(FRAMES))
            messages = read_until_end(sock)
            *frames, end = messages
            assert end.type == p.END and end.revision == assigned["revision"] and end.index == len(frames)
            assert [m.index for m in frames] == list(strategy.mask_of(sid))
            assert {m.revision for m in frames} == {assigned["revision"]}
            check_frames(frames, movie)

        go.write_text("go")  # the client reports CDONE: the video group is dissolved
        cdone = wait_for(lambda: next((r for r in procs.jsonl("c1") if r.get("step") == "cdone"), None), 30,
                         "CDONE", describe=lambda: procs.log("c1"))
        for sid, sock in sockets.items():
            sock.settimeout(5)
            assert sock.recv(1) == b"", f"{sid} sent more after END"
            assert time.time() - cdone["t"] < 1.0, f"{sid} closed too late after SDONE"
    finally:
        for sock in sockets.values():
            sock.close()
        movie.close()
    for sid in strategy.servers:
        log = wait_for(lambda: "stream end" in procs.log(sid) and procs.log(sid), 10, f"{sid} logged the end")
        assert f"stream start: RUID {assigned['ruid']}, client c1" in log
        assert f"{strategy.mask_of(sid).count()} frames" in log and "video group dissolved (SDONE)" in log
