"""The movie store, through the `vod media` commands and the library, with real files and ffmpeg."""

import hashlib
import os
import shutil

import pytest

from conftest import ffmpeg, ffprobe_frames, framemd5, needs_ffmpeg, run_cli, shared_fixture
from vod.errors import StoreError
from vod.media.store import MovieStore
from vod.media.synthetic import make_movie
from vod.media.video import read_jpeg_frames


@pytest.fixture(scope="module")
def mjpeg_source(tmp_path_factory):
    """The acceptance source: ffmpeg's testsrc2, 640x360, 24 fps, 10 s, Motion-JPEG in AVI."""
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed (CI installs it: apt-get install ffmpeg)")
    path = str(tmp_path_factory.mktemp("src") / "testsrc2.avi")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=24", "-t", "10", "-c:v", "mjpeg", "-q:v", "4", path)
    return path


def md5s(frames):
    return [hashlib.md5(f).hexdigest() for f in frames]


@needs_ffmpeg
def test_mjpeg_round_trip_is_byte_exact(mjpeg_source, tmp_path):
    store = str(tmp_path / "store")
    out = str(tmp_path / "exported.avi")
    r = run_cli("media", "ingest", mjpeg_source, "--id", "testsrc", "--store", store)
    assert r.returncode == 0, r.stderr
    assert "240 frames 640x360 @ 24 fps" in r.stdout
    r = run_cli("media", "export", "testsrc", out, "--store", store)
    assert r.returncode == 0, r.stderr

    source_packets = framemd5(mjpeg_source, copy=True)
    assert len(source_packets) == 240
    with MovieStore(store).open("testsrc") as movie:
        stored = md5s(movie.frame(i) for i in range(len(movie)))
    assert stored == source_packets  # stored JPEG bytes are the source's packets
    assert framemd5(out, copy=True) == source_packets  # export muxes them unchanged
    assert framemd5(out, copy=False) == framemd5(mjpeg_source, copy=False)  # identical decoded pictures
    decode = ffmpeg("-i", out, "-f", "null", "-")
    assert decode == ""


@needs_ffmpeg
def test_h264_mp4_ingests_with_ffprobe_frame_count(tmp_path):
    src = str(tmp_path / "clip.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24", "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", src)
    store = str(tmp_path / "store")
    r = run_cli("media", "ingest", src, "--id", "clip", "--store", store, "--quality", "80")
    assert r.returncode == 0, r.stderr
    assert "re-encoded at quality 80" in r.stdout
    with MovieStore(store).open("clip") as movie:
        assert len(movie) == ffprobe_frames(src) == 72
        assert (movie.info.width, movie.info.height, movie.info.fps) == (320, 240, 24.0)
        assert movie.frame(0).startswith(b"\xff\xd8")


@needs_ffmpeg
def test_raw_mjpeg_stream_needs_and_takes_fps(tmp_path):
    src = str(tmp_path / "clip.mjpeg")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-t", "2", "-c:v", "mjpeg", "-f", "mjpeg", src)
    store = str(tmp_path / "store")
    r = run_cli("media", "ingest", src, "--id", "raw", "--store", store, "--fps", "10")
    assert r.returncode == 0, r.stderr
    with MovieStore(store).open("raw") as movie:
        assert len(movie) == 20
        assert movie.info.fps == 10.0
        assert movie.info.keeps_source_jpeg


@pytest.mark.parametrize("name,keeps", [("stub_mjpeg.avi", True), ("stub_h264.mp4", False), ("stub_mp4v.mp4", False)])
def test_foreign_fixtures(name, keeps, tmp_path):
    src = shared_fixture(name)
    store = MovieStore(str(tmp_path / "store"))
    from vod.media.ingest import ingest
    info = ingest(store, src, "fixture")
    assert info.keeps_source_jpeg is keeps
    if keeps:
        source_frames = list(read_jpeg_frames(src).frames)
        with store.open("fixture") as movie:
            assert [movie.frame(i) for i in range(len(movie))] == source_frames
            assert len(movie) == 3


def test_make_info_verify_list(tmp_path):
    avi = str(tmp_path / "syn.avi")
    store = str(tmp_path / "store")
    r = run_cli("media", "make", avi, "--frames", "30", "--size", "160x96", "--fps", "12")
    assert r.returncode == 0, r.stderr
    assert run_cli("media", "ingest", avi, "--id", "syn", "--store", store).returncode == 0
    r = run_cli("media", "info", "syn", "--store", store, "--json")
    assert r.returncode == 0 and '"frame_count": 30' in r.stdout and '"version": 2' in r.stdout
    r = run_cli("media", "verify", "syn", "--store", store)
    assert r.returncode == 0 and "all 30 frames" in r.stdout
    r = run_cli("media", "list", "--store", store)
    assert r.stdout.startswith("syn ")


def test_verify_reports_first_bad_frame(tmp_path):
    avi = str(tmp_path / "syn.avi")
    store = str(tmp_path / "store")
    make_movie(avi, 20, (160, 96), 10)
    from vod.media.ingest import ingest
    ingest(MovieStore(store), avi, "syn")
    with MovieStore(store).open("syn") as movie:
        offset, length, _ = movie.entry(13)
    with open(os.path.join(store, "syn", "frames.bin"), "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = run_cli("media", "verify", "syn", "--store", store)
    assert r.returncode == 5
    assert "frame 13" in r.stderr


def _assert_store_clean(store):
    if os.path.isdir(store):
        assert os.listdir(store) == [], f"leftovers in store: {os.listdir(store)}"


def test_bad_inputs_exit_nonzero_naming_the_file(tmp_path):
    store = str(tmp_path / "store")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n" * 100)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.avi"
    noise.write_bytes(os.urandom(200_000))
    cases = [(str(tmp_path / "missing.avi"), "no such file"), (str(text), "not a video"),
             (str(empty), "empty"), (str(tmp_path), "directory"), (str(noise), "not a video")]
    for path, words in cases:
        r = run_cli("media", "ingest", path, "--id", "x", "--store", store)
        assert r.returncode != 0, path
        assert path in r.stderr and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    _assert_store_clean(store)


@needs_ffmpeg
def test_truncated_avi_is_refused_and_leaves_nothing(mjpeg_source, tmp_path):
    truncated = tmp_path / "truncated.avi"
    data = open(mjpeg_source, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    store = str(tmp_path / "store")
    r = run_cli("media", "ingest", str(truncated), "--id", "cut", "--store", store)
    assert r.returncode != 0
    assert str(truncated) in r.stderr and "truncated" in r.stderr
    _assert_store_clean(store)


def test_existing_id_and_bad_id_and_unwritable_store(tmp_path):
    avi = str(tmp_path / "syn.avi")
    make_movie(avi, 5, (64, 48), 5)
    store = str(tmp_path / "store")
    assert run_cli("media", "ingest", avi, "--id", "one", "--store", store).returncode == 0
    r = run_cli("media", "ingest", avi, "--id", "one", "--store", store)
    assert r.returncode == 4 and "already exists" in r.stderr
    r = run_cli("media", "ingest", avi, "--id", "../evil", "--store", store)
    assert r.returncode == 2 and "not valid" in r.stderr
    assert sorted(os.listdir(store)) == ["one"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = run_cli("media", "ingest", avi, "--id", "two", "--store", str(blocker / "store"))
    assert r.returncode == 4 and str(blocker / "store") in r.stderr and "cannot write" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_store(tmp_path):
    avi = str(tmp_path / "syn.avi")
    make_movie(avi, 5, (64, 48), 5)
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(0o500)
    try:
        r = run_cli("media", "ingest", avi, "--id", "x", "--store", str(store))
        assert r.returncode == 4 and str(store) in r.stderr
    finally:
        store.chmod(0o700)


def test_failure_mid_ingest_leaves_no_movie(tmp_path):
    store = MovieStore(str(tmp_path / "store"))

    def frames():
        yield b"\xff\xd8 one \xff\xd9"
        yield b"\xff\xd8 two \xff\xd9"
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        store.add("half", frames(), fps=1, width=1, height=1, source="s", source_codec="MJPG",
                  keeps_source_jpeg=True, jpeg_quality=None)
    assert os.listdir(store.root) == []
    with pytest.raises(StoreError):
        store.open("half")


def test_interrupted_ingest_leftover_is_not_a_movie(tmp_path):
    store = MovieStore(str(tmp_path / "store"))
    os.makedirs(os.path.join(store.root, ".ingest-crashed-abc"))
    assert store.movie_ids() == []
    assert store.stale_partials() == [".ingest-crashed-abc"]


def test_frame_reads_are_exact_and_bounded(tmp_path):
    store = MovieStore(str(tmp_path / "store"))
    frames = [b"\xff\xd8" + bytes([i]) * (i + 1) + b"\xff\xd9" for i in range(50)]
    store.add("m", iter(frames), fps=5, width=2, height=2, source="s", source_codec="MJPG",
              keeps_source_jpeg=True, jpeg_quality=None)
    with store.open("m") as movie:
        assert [movie.frame(i) for i in range(50)] == frames
        assert movie.frame_sha256(7) == hashlib.sha256(frames[7]).digest()
        with pytest.raises(IndexError):
            movie.frame(50)
        with pytest.raises(IndexError):
            movie.frame(-1)


def test_export_needs_avi_suffix(tmp_path):
    avi = str(tmp_path / "syn.avi")
    make_movie(avi, 3, (64, 48), 5)
    store = str(tmp_path / "store")
    assert run_cli("media", "ingest", avi, "--id", "m", "--store", store).returncode == 0
    r = run_cli("media", "export", "m", str(tmp_path / "out.mp4"), "--store", store)
    assert r.returncode == 2 and ".avi" in r.stderr
    r = run_cli("media", "export", "nope", str(tmp_path / "out.avi"), "--store", store)
    assert r.returncode == 4 and "no movie 'nope'" in r.stderr


def _downgrade_to_version_1(movie_dir) -> None:
    """Rewrite a stored movie as vod before format 2 wrote it: 44-byte index records without XXH3-128."""
    import json
    import struct

    from vod.media.store import INDEX_HEADER, INDEX_RECORD

    index = open(os.path.join(movie_dir, "index.bin"), "rb").read()
    _, _, _, count = INDEX_HEADER.unpack_from(index)
    records = [INDEX_RECORD.unpack_from(index, INDEX_HEADER.size + i * INDEX_RECORD.size)[:3] for i in range(count)]
    old = INDEX_HEADER.pack(b"VODX", 1, 44, count) + b"".join(struct.pack(">QI32s", *r) for r in records)
    open(os.path.join(movie_dir, "index.bin"), "wb").write(old)
    meta_path = os.path.join(movie_dir, "movie.json")
    meta = json.load(open(meta_path))
    meta.update(version=1, index_sha256=hashlib.sha256(old).hexdigest())
    open(meta_path, "w").write(json.dumps(meta))


def test_version_1_movies_are_served_with_checked_digests(tmp_path):
    """A store written before format 2 still plays: its frames get their wire checksum (XXH3-128) when read,
    after their SHA-256 is checked, so a frame damaged on disk still reaches the client as a bad frame."""
    from vod.media.store import BAD_DIGEST
    from vod.stream.protocol import frame_digest

    store = MovieStore(str(tmp_path / "store"))
    make_movie_frames = [b"\xff\xd8frame %d\xff\xd9" % i * 50 for i in range(6)]
    store.add("old", make_movie_frames, fps=24.0, width=8, height=8, source="t", source_codec="mjpeg",
              keeps_source_jpeg=True, jpeg_quality=None)
    with store.open("old") as movie:
        fresh = [movie.wire_entry(i) for i in range(6)]
    assert fresh == [(len(f), frame_digest(f)) for f in make_movie_frames]
    _downgrade_to_version_1(store.movie_path("old"))
    with store.open("old") as movie:
        assert [movie.wire_entry(i) for i in range(6)] == fresh
        offset = movie.entry(3)[0]
    frames_path = os.path.join(store.movie_path("old"), "frames.bin")
    data = bytearray(open(frames_path, "rb").read())
    data[offset + 4] ^= 0xFF
    open(frames_path, "wb").write(bytes(data))
    with store.open("old") as movie:
        assert movie.wire_entry(3) == (len(make_movie_frames[3]), BAD_DIGEST)
        assert movie.wire_entry(2) == fresh[2]
        assert movie.first_bad_frame() == 3
