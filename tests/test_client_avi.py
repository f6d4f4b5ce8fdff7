"""The hand-written MJPEG AVI: FFmpeg and OpenCV read back every JPEG unchanged, across OpenDML segments too."""

import hashlib
import subprocess

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ffprobe_frames, framemd5, needs_ffmpeg
from vod.client import avi
from vod.client.sinks import MjpegAviWriter
from vod.media.synthetic import synthetic_jpegs
from vod.media.video import read_jpeg_frames


@pytest.fixture(scope="module")
def jpegs():
    frames = list(synthetic_jpegs(60, (96, 64), 24.0))
    # Odd and even lengths both: an odd chunk is followed by a pad byte that must not reach the reader.
    frames[7] = frames[7] + b"\0" if len(frames[7]) % 2 == 0 else frames[7]
    assert {len(f) % 2 for f in frames} == {0, 1}
    return frames


def write_avi(path, frames, fps=24.0, batch=7, **kw) -> int:
    writer = MjpegAviWriter(str(path), fps, **kw)
    for start in range(0, len(frames), batch):
        writer.write_many(frames[start:start + batch])
    return writer.close()


def ffmpeg_errors(path) -> str:
    run = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=120)
    return run.stderr.strip() + ("" if run.returncode == 0 else f" (exit {run.returncode})")


@needs_ffmpeg
@pytest.mark.parametrize("segment_bytes", [avi.SEGMENT_BYTES, 20_000], ids=["one-segment", "opendml-segments"])
def test_ffmpeg_reads_every_frame_unchanged(tmp_path, jpegs, segment_bytes):
    out = tmp_path / "out.avi"
    assert write_avi(out, jpegs, segment_bytes=segment_bytes) == len(jpegs)
    if segment_bytes < avi.SEGMENT_BYTES:
        assert out.read_bytes().count(b"AVIX") >= 3  # really several RIFF segments
    assert ffmpeg_errors(out) == ""
    assert ffprobe_frames(str(out)) == len(jpegs)
    assert framemd5(str(out), copy=True) == [hashlib.md5(f).hexdigest() for f in jpegs]
    source = read_jpeg_frames(str(out))  # OpenCV's reader, as the tests' frame-exact checks use
    assert (source.info.width, source.info.height) == (96, 64) and source.info.fps == pytest.approx(24.0)
    assert [hashlib.sha256(f).digest() for f in source.frames] == [hashlib.sha256(f).digest() for f in jpegs]


@needs_ffmpeg
@pytest.mark.parametrize("fps, expected", [(24.0, "24/1"), (25.0, "25/1"), (30000 / 1001, "30000/1001"),
                                           (12.5, "25/2")])
def test_frame_rate_is_exact(tmp_path, jpegs, fps, expected):
    out = tmp_path / "out.avi"
    write_avi(out, jpegs[:5], fps=fps)
    run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate",
                          "-of", "csv=p=0", str(out)], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == expected


def test_frame_rate_fraction():
    assert avi.frame_rate(24.0) == (24, 1)
    assert avi.frame_rate(30000 / 1001) == (30000, 1001)
    assert avi.frame_rate(29.97) == (2997, 100)


@settings(max_examples=25, deadline=None)
@given(width=st.integers(1, 2000), height=st.integers(1, 2000), quality=st.integers(10, 95))
def test_jpeg_dimensions_agree_with_a_decoder(width, height, quality):
    image = np.zeros((height, width, 3), np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    assert avi.jpeg_dimensions(data.tobytes()) == (width, height)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"not a jpeg", b"\xff\xd8\xff\xda\x00\x02", b"\xff\xd8\x00\x01",
                                  b"\xff\xd8\xff\xc0\x00\x11\x08"])
def test_jpeg_dimensions_of_garbage_is_none(data):
    assert avi.jpeg_dimensions(data) is None
