"""Issue 5 acceptance, end to end with real processes: 3 coordinators, 4 `vod-server`s, 1 `vod-client`.

The source is made by ffmpeg (Motion-JPEG), ingested, played, and checked: the output AVI is frame-exact
(our SHA-256s and ffmpeg's framemd5 of packets and of decoded pictures agree with the source); each server
sent its quarter within one frame; the CDONE mask is full; a second play sends zero frames.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from cluster import Cluster, free_ports, wait_for
from conftest import ffmpeg, framemd5, needs_ffmpeg
from vod.media.ingest import ingest
from vod.media.store import MovieStore
from vod.media.video import read_jpeg_frames

SERVERS = ("s1", "s2", "s3", "s4")


def run_py(module: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


@pytest.fixture
def domain(tmp_path):
    source = str(tmp_path / "source.avi")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=24", "-t", "5", "-c:v", "mjpeg", "-q:v", "5", source)
    store = MovieStore(str(tmp_path / "store"))
    ingest(store, source, "clip")
    with Cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        procs = []
        try:
            for sid, port in zip(SERVERS, free_ports(len(SERVERS))):
                procs.append(subprocess.Popen(
                    run_py("vod.server.cli") + ["--domain", "d", "--coordinators", ",".join(cluster.coordinators),
                                                "--media", store.root, "--listen", f"127.0.0.1:{port}", "--id", sid,
                                                "--secret-file", str(cluster.secret_file)],
                    stdout=open(tmp_path / f"{sid}.log", "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

            def all_joined():
                doc = cluster.admin_status(timeout=10)
                return sum(m["kind"] == "server" for m in doc["members"]) == len(SERVERS)

            wait_for(all_joined, 30, "four servers joined", interval=0.3)
            yield cluster, store, source
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)


def play(cluster, tmp_path, out, cache):
    r = subprocess.run(run_py("vod.client.cli") + [
        "play", "clip", "--domain", "d", "--coordinators", ",".join(cluster.coordinators), "--secret-file",
        str(cluster.secret_file), "--json", "--cache", str(cache), "--output", str(out), "--id", "viewer"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_ffmpeg
def test_four_servers_one_client_frame_exact(domain, tmp_path):
    cluster, store, source = domain
    out = tmp_path / "played.avi"
    summary = play(cluster, tmp_path, out, tmp_path / "cache")
    with store.open("clip") as movie:
        expected = [movie.frame_sha256(i) for i in range(len(movie))]
        n = len(movie)
    assert n == 120
    assert [hashlib.sha256(f).digest() for f in read_jpeg_frames(str(out)).frames] == expected
    assert framemd5(str(out), copy=True) == framemd5(source, copy=True)
    assert framemd5(str(out), copy=False) == framemd5(source, copy=False)
    assert summary["frames_total"] == n and summary["frames_received"] == n
    assert sorted(summary["per_server"]) == list(SERVERS)
    assert all(abs(count - n / 4) <= 1 for count in summary["per_server"].values()), summary["per_server"]
    assert summary["stalls"] == 0 or summary["stall_ms"] < 1000

    caches = json.loads(subprocess.run(
        run_py("vod.admin") + ["--coordinators", ",".join(cluster.coordinators), "--secret-file",
                               str(cluster.secret_file), "caches", "--json"],
        capture_output=True, text=True, timeout=60).stdout)
    assert {"client": "viewer", "user": "", "movie": "clip", "frames": n, "frame_count": n} in caches  # the CDONE mask is full

    again = play(cluster, tmp_path, tmp_path / "again.avi", tmp_path / "cache")
    assert again["frames_received"] == 0  # the second play comes from the cache: zero frames sent
    assert [hashlib.sha256(f).digest() for f in read_jpeg_frames(str(tmp_path / "again.avi")).frames] == expected
