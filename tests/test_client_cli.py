"""`vod-client` as a user runs it: bad input exits non-zero with advice; a cached movie plays with no coordinator
into a byte-exact AVI and over HTTP; the live line and the summary."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import needs_ffmpeg
from vod.client.cache import FrameCache, MovieMeta
from vod.client.cli import status_line, summary_text
from vod.client.sinks import gui_backend
from vod.media.synthetic import synthetic_jpegs
from vod.media.video import read_jpeg_frames
from vod.secrets import write_secret

FRAMES, FPS = 20, 50.0
NOWHERE = "127.0.0.1:9"  # the discard port: nothing listens there


def vod_client(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-c", "from vod.client.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def jpegs():
    return list(synthetic_jpegs(FRAMES, (96, 64), FPS))


@pytest.fixture
def full_cache(tmp_path, jpegs):
    root = tmp_path / "cache"
    cache = FrameCache(str(root), "m").open()
    cache.adopt(MovieMeta("m", FRAMES, FPS, 96, 64))
    for i, jpeg in enumerate(jpegs):
        cache.append(i, jpeg)
    cache.close()
    return root


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    write_secret(str(path))
    return path


def common(*extra):
    return ["play", "m", "--domain", "d", "--coordinators", NOWHERE, *extra]


def test_a_cached_movie_plays_with_no_coordinator_into_a_byte_exact_avi(tmp_path, full_cache, jpegs):
    out = tmp_path / "out.avi"
    run = vod_client(*common("--cache", str(full_cache), "--output", str(out), "--json"))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["local"] and summary["ruid"] is None and summary["output"] == str(out)
    assert summary["frames_total"] == FRAMES and summary["frames_played"] == FRAMES
    assert summary["stalls"] == 0 and summary["frames_received"] == 0
    for key in ("startup_ms", "stall_ms", "rebuffer_ratio", "duplicates", "per_server"):
        assert key in summary
    frames = list(read_jpeg_frames(str(out)).frames)
    assert [hashlib.sha256(f).digest() for f in frames] == [hashlib.sha256(f).digest() for f in jpegs]


def test_the_text_summary(tmp_path, full_cache):
    run = vod_client(*common("--cache", str(full_cache)))
    assert run.returncode == 0, run.stderr
    assert f"played {FRAMES} frames of m from the cache; no server was asked" in run.stdout


@needs_ffmpeg
def test_a_cached_movie_over_http_is_read_by_ffmpeg(tmp_path, full_cache, jpegs):
    proc = subprocess.Popen([sys.executable, "-c", "from vod.client.cli import main; raise SystemExit(main())",
                             *common("--cache", str(full_cache), "--http", "127.0.0.1:0")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "playback starts when the first viewer connects" in line, line
        url = line.split(" at ")[1].split()[0]
        read = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "mpjpeg", "-i", url + "stream.mjpg",
                               "-map", "0:v:0", "-c", "copy", "-f", "framemd5", "-"],
                              capture_output=True, text=True, timeout=60)
        assert read.returncode == 0 and read.stderr == "", read.stderr
        got = [line.rsplit(",", 1)[1].strip() for line in read.stdout.splitlines() if line and line[0] != "#"]
        assert got == [hashlib.md5(f).hexdigest() for f in jpegs]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_unreachable_coordinator_says_what_to_check(tmp_path, secret):
    run = vod_client(*common("--cache", str(tmp_path / "c"), "--secret-file", str(secret), "--timeout", "1"))
    assert run.returncode == 1
    assert "no coordinator answered within 1 s at 127.0.0.1:9: check --coordinators" in run.stderr


def test_no_secret_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VOD_SECRET_FILE"}
    run = vod_client(*common("--cache", str(tmp_path / "c")), env=env)
    assert run.returncode == 2 and "--secret-file" in run.stderr


@pytest.mark.parametrize("args, message", [
    (["play", "bad id", "--domain", "d", "--coordinators", NOWHERE], "movie id 'bad id' is not valid"),
    (common("--fast", "--http", "127.0.0.1:0"), "drop --fast"),
    (common("--coordinators", "nowhere"), "--coordinators"),
    (common("--output", "/nonexistent/dir/out.avi"), "directory /nonexistent/dir does not exist"),
    (common("--output", "out.mp4"), "must be an .avi file"),
    (common("--trace", "/nonexistent/dir/t.jsonl"), "--trace /nonexistent/dir/t.jsonl: cannot write the trace"),
])
def test_bad_input_exits_2_with_advice(args, message):
    run = vod_client(*args)  # all refused before any coordinator is asked (127.0.0.1:9 would not answer)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_window_on_a_headless_opencv_exits_2(tmp_path):
    if gui_backend() is not None:
        pytest.skip("this OpenCV has a GUI")
    run = vod_client(*common("--window", "--cache", str(tmp_path / "c")))
    assert run.returncode == 2 and "--window needs OpenCV with a GUI" in run.stderr


def test_status_line_and_summary_text():
    line = status_line({"state": "streaming", "paused": False, "held": 120, "total": 480, "buffered": 1.96,
                        "stalls": 1, "stall_ms": 83.0,
                        "per_server": {"s1": {"received": 60, "assigned": 240, "state": "streaming"},
                                       "s2": {"received": 60, "assigned": 240, "state": "waiting"}}})
    assert line == "streaming  held 120/480  s1 60/240  s2 60/240 waiting  buffer 2.0 s  stalls 1 (83 ms)"
    text = summary_text({"movie": "m", "ruid": 7, "cdone": True, "local": False, "frames_total": 10,
                         "frames_cached": 2, "frames_received": 8, "frames_played": 10, "per_server": {"s1": 8},
                         "startup_ms": 12.3, "stalls": 0, "stall_ms": 0.0, "rebuffer_ratio": 0.0, "duplicates": 1,
                         "frames_missing": 0, "output": "out.avi"})
    assert text.splitlines()[0] == "CDONE ruid=7 held=10/10"
    assert "8 received from 1 server(s), 2 from the cache" in text and "output: out.avi" in text
