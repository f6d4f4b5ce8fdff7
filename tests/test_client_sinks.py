"""Sinks: the AVI is byte-exact and fails loudly on a full disk; the HTTP stream is what ffmpeg's mpjpeg reads;
the window refuses a headless OpenCV; the player keeps the order."""

import hashlib
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from twisted.internet import defer

from conftest import have_ffmpeg, needs_ffmpeg
from vod.client.sinks import AviSink, HttpSink, MjpegAviWriter, Player, WindowSink, gui_backend
from vod.client.worker import InlineWorker
from vod.errors import MediaError, UsageError
from vod.media.synthetic import synthetic_jpegs
from vod.media.video import read_jpeg_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def jpegs():
    return list(synthetic_jpegs(24, (96, 64), 24.0))


def test_avi_frames_read_back_byte_exact(tmp_path, jpegs):
    out = tmp_path / "out.avi"
    writer = MjpegAviWriter(str(out), 24.0)
    assert not out.exists() and os.path.exists(writer.partial)  # checked writable before any frame
    for jpeg in jpegs:
        writer.write(jpeg)
    assert writer.close() == len(jpegs)
    assert not os.path.exists(writer.partial)
    source = read_jpeg_frames(str(out))
    assert (source.info.width, source.info.height) == (96, 64) and source.info.fps == pytest.approx(24.0)
    assert [hashlib.sha256(f).digest() for f in source.frames] == [hashlib.sha256(f).digest() for f in jpegs]


def test_avi_sink_aborted_leaves_nothing(tmp_path, jpegs):
    sink = AviSink(str(tmp_path / "out.avi"), 24.0)
    sink.open()
    sink.write(0, jpegs[0])
    sink.abort()
    assert os.listdir(tmp_path) == []


def test_avi_with_no_frame_is_an_error_and_leaves_nothing(tmp_path):
    writer = MjpegAviWriter(str(tmp_path / "out.avi"), 24.0)
    with pytest.raises(MediaError, match="no frame"):
        writer.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, message", [("out.mp4", "must be an .avi"), ("nodir/out.avi", "does not exist")])
def test_avi_bad_paths_are_usage_errors(tmp_path, name, message):
    with pytest.raises(UsageError, match=message):
        MjpegAviWriter(str(tmp_path / name), 24.0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_avi_in_a_read_only_directory_is_a_usage_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(UsageError, match="cannot create"):
        MjpegAviWriter(str(ro / "out.avi"), 24.0)


def test_avi_on_a_full_disk_fails_with_a_clear_message(tmp_path):
    # RLIMIT_FSIZE makes writes past 300 KB fail with EFBIG, as a full disk fails them with ENOSPC.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {ROOT!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from vod.client.sinks import MjpegAviWriter
        from vod.errors import MediaError
        from vod.media.synthetic import synthetic_jpegs
        frames = list(synthetic_jpegs(400, (320, 240), 24.0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        writer = MjpegAviWriter(sys.argv[1], 24.0)
        try:
            for jpeg in frames:
                writer.write(jpeg)
            writer.close()
        except MediaError as err:
            print(err)
            sys.exit(3)
    """)
    out = tmp_path / "out.avi"
    run = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "is the disk full?" in run.stdout
    assert not out.exists() or out.stat().st_size == 0


def test_window_needs_a_gui_build():
    if gui_backend() is not None:
        pytest.skip(f"this OpenCV has a GUI ({gui_backend()})")
    with pytest.raises(UsageError, match="headless") as info:
        WindowSink("t")
    assert info.value.exit_code == 2


class Recorder:
    def __init__(self, threaded):
        self.threaded = threaded
        self.got = []

    def write(self, index, jpeg):
        self.got.append((index, jpeg))


def test_player_reads_cached_frames_and_keeps_the_order():
    threaded, on_reactor = Recorder(True), Recorder(False)
    errors, played = [], []
    player = Player(InlineWorker(), [threaded, on_reactor], lambda i: b"cached%d" % i, errors.append,
                    lambda: played.append(1))
    player.play(0, b"zero")
    player.play(1, None)
    assert threaded.got == on_reactor.got == [(0, b"zero"), (1, b"cached1")]
    assert player.in_flight == 0 and len(played) == 2 and not errors


def test_player_reports_a_sink_failure_once_and_stops():
    class Broken(Recorder):
        def write(self, index, jpeg):
            raise MediaError("disk full")

    errors = []
    player = Player(InlineWorker(), [Broken(True)], None, errors.append, lambda: None)
    player.play(0, b"a")
    player.play(1, b"b")
    assert [str(e) for e in errors] == ["disk full"] and player.failed


HTTP_SERVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from twisted.internet import reactor
    from vod.client.sinks import HttpSink
    from vod.media.synthetic import synthetic_jpegs

    frames = list(synthetic_jpegs(int(sys.argv[2]), (96, 64), 50.0))
    sink = HttpSink(reactor, "127.0.0.1", 0, "test movie")
    sink.open()
    print(sink.port, flush=True)

    def play(_):
        def step(i):
            if i < len(frames):
                sink.write(i, frames[i])
                reactor.callLater(0.02, step, i + 1)  # 50 fps, as the playout would pace it
            else:
                sink.close().addBoth(lambda _: reactor.callLater(0.2, reactor.stop))
        step(0)

    sink.ready.addCallback(play)
    reactor.callLater(60, reactor.stop)
    reactor.run()
""")


@needs_ffmpeg
def test_http_stream_is_read_by_ffmpeg_mpjpeg_frame_for_frame(tmp_path):
    count = 40
    server = subprocess.Popen([sys.executable, "-c", HTTP_SERVER, ROOT, str(count)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert 'src="/stream.mjpg"' in page
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
        # -c copy: the packets ffmpeg reads are our JPEG bytes; decoding: every frame decodes without error
        read = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "mpjpeg", "-i",
                               f"http://127.0.0.1:{port}/stream.mjpg", "-map", "0:v:0", "-c", "copy", "-f",
                               "framemd5", "-"], capture_output=True, text=True, timeout=60)
        assert read.returncode == 0 and read.stderr == "", read.stderr
        got = [line.rsplit(",", 1)[1].strip() for line in read.stdout.splitlines() if line and line[0] != "#"]
        expected = [hashlib.md5(f).hexdigest() for f in synthetic_jpegs(count, (96, 64), 50.0)]
        assert got == expected
        server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@needs_ffmpeg
def test_http_stream_decodes_without_errors(tmp_path):
    count = 25
    server = subprocess.Popen([sys.executable, "-c", HTTP_SERVER, ROOT, str(count)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        decode = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "mpjpeg", "-i",
                                 f"http://127.0.0.1:{port}/stream.mjpg", "-f", "framemd5", "-"],
                                capture_output=True, text=True, timeout=60)
        assert decode.returncode == 0 and decode.stderr == "", decode.stderr
        assert len([line for line in decode.stdout.splitlines() if line and line[0] != "#"]) == count
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_player_gives_reactor_sinks_frames_in_hand_at_once_and_keeps_the_order_behind_a_read():
    class Later:
        """A worker whose jobs run when the test says."""

        def __init__(self):
            self.jobs = []

        def submit(self, fn, *args):
            d = defer.Deferred()
            self.jobs.append((fn, args, d))
            return d

        def run_all(self):
            while self.jobs:
                fn, args, d = self.jobs.pop(0)
                d.callback(fn(*args))

    worker, threaded, on_reactor = Later(), Recorder(True), Recorder(False)
    player = Player(worker, [threaded, on_reactor], lambda i: b"cached%d" % i, lambda e: None, lambda: None)
    player.play_many([(0, b"zero"), (1, b"one")])
    assert on_reactor.got == [(0, b"zero"), (1, b"one")] and threaded.got == []  # the viewer does not wait
    player.play(2, None)  # read from the cache on the worker
    player.play(3, b"three")  # in hand, but behind the read: the reactor sinks get it after frame 2
    assert len(on_reactor.got) == 2 and player.in_flight == 4
    worker.run_all()
    expected = [(0, b"zero"), (1, b"one"), (2, b"cached2"), (3, b"three")]
    assert on_reactor.got == threaded.got == expected and player.in_flight == 0
