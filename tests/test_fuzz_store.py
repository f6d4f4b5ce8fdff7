"""Fuzzing the movie store's readers (issue 8): a movie directory whose movie.json or index.bin is random,
truncated or damaged must open and verify, or fail with the store's own error naming the file.

Each example copies a small stored movie into a fresh temporary directory, damages one file (or both), and
runs what `vod media verify` and a server do with a movie: open it, re-hash every frame, read each frame
and its presentation time. The only exception allowed out is a StoreError (CorruptMovie included) whose
text names the damaged movie's file; a movie that opens has metadata a server can use.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from fuzzing import fuzz, mutated
from vod.errors import StoreError
from vod.media.cli import cmd_verify
from vod.media.store import INDEX_HEADER, INDEX_RECORD, MovieStore
from vod.server.stream import presentation_us

FRAMES = 6
FILES = ("movie.json", "index.bin", "frames.bin")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    store = MovieStore(str(tmp_path_factory.mktemp("template")))
    store.add("m", (b"\xff\xd8frame %d\xff\xd9" % i * (i + 1) for i in range(FRAMES)), fps=24.0, width=8, height=8,
              source="test", source_codec="mjpeg", keeps_source_jpeg=True, jpeg_quality=None)
    return Path(store.root)


def read_movie(root: str) -> None:
    """What `vod media verify` and a serving server do with movie m: open, re-hash, read every frame."""
    cmd_verify(Namespace(store=root, movie_id="m"))
    with MovieStore(root).open("m") as movie:
        info = movie.info
        assert math.isfinite(info.fps) and info.fps > 0, info
        assert info.width > 0 and info.height > 0 and info.frame_count == len(movie) > 0, info
        for i in range(len(movie)):
            assert len(movie.frame(i)) == movie.entry(i)[1] and len(movie.frame_sha256(i)) == 32
            assert movie.wire_entry(i)[0] == movie.entry(i)[1] and len(movie.wire_entry(i)[1]) == 16
            presentation_us(i, info.fps)


def damaged(template: Path, changes: dict[str, bytes]) -> None:
    """Movie m with `changes` (file name -> new content) reads, or fails with a StoreError naming a file."""
    with tempfile.TemporaryDirectory() as root:
        shutil.copytree(template, Path(root), dirs_exist_ok=True)
        for name, data in changes.items():
            (Path(root) / "m" / name).write_bytes(data)
        try:
            read_movie(root)
        except StoreError as err:
            message = str(err)
            assert any(f"m/{name}" in message for name in FILES) or "movie m: frame" in message, message


def original(template: Path, name: str) -> bytes:
    return (template / "m" / name).read_bytes()


def test_the_undamaged_movie_reads(template):
    damaged(template, {})


@given(st.sampled_from(["movie.json", "index.bin"]), st.binary(max_size=400))
@fuzz(150)
def test_random_bytes(template, name, data):
    damaged(template, {name: data})


@given(st.sampled_from(["movie.json", "index.bin"]), st.data())
@fuzz(250)
def test_truncated_and_mutated(template, name, data):
    damaged(template, {name: data.draw(mutated(st.just(original(template, name))))})


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3),
                           max_leaves=6)


@given(st.data())
@fuzz(250)
def test_metadata_fields_replaced_or_removed(template, data):
    """Well-formed JSON with wrong values: each field (index_sha256 too) replaced by any JSON value
    (NaN, Infinity and 2**70 included) or removed."""
    meta = json.loads(original(template, "movie.json"))
    for key in data.draw(st.lists(st.sampled_from(sorted(meta)), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()):
            meta[key] = data.draw(json_values)
        else:
            del meta[key]
    damaged(template, {"movie.json": json.dumps(meta).encode()})


@given(st.integers(0, 2**64 - 1), st.integers(0, FRAMES - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
       st.binary(min_size=48, max_size=48), st.booleans())
@fuzz(150)
def test_index_records_that_lie(template, count, frame, offset, length, digests, keep_checksum):
    """An index whose header or records lie, with movie.json's checksum of the index kept or removed (so
    that the records themselves are read)."""
    index = bytearray(original(template, "index.bin"))
    magic, version, record, _ = INDEX_HEADER.unpack_from(index)
    INDEX_RECORD.pack_into(index, INDEX_HEADER.size + frame * INDEX_RECORD.size, offset, length, digests[:32],
                           digests[32:])
    if count % 3 == 0:
        INDEX_HEADER.pack_into(index, 0, magic, version, record, count)
    meta = json.loads(original(template, "movie.json"))
    if not keep_checksum:
        del meta["index_sha256"]
    damaged(template, {"index.bin": bytes(index), "movie.json": json.dumps(meta).encode()})


@pytest.mark.parametrize("text", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff\xfe{}", b"",
                                  b'{"format": "vod-movie", "version": 1e999}'])
def test_hostile_metadata_text(template, text):
    damaged(template, {"movie.json": text})


@pytest.mark.parametrize("field,value", [("fps", 0), ("fps", -24.0), ("fps", float("nan")), ("fps", float("inf")),
                                         ("frame_count", float("inf")), ("width", float("-inf")), ("height", 0),
                                         ("frames_bytes", float("nan")), ("frame_count", "6")])
def test_metadata_a_server_could_not_use(template, field, value):
    """Found by this fuzzing: Infinity in an integer field raised OverflowError; fps 0 or NaN opened and then
    broke a server's presentation times."""
    meta = dict(json.loads(original(template, "movie.json")), **{field: value})
    damaged(template, {"movie.json": json.dumps(meta).encode()})


def test_missing_files_are_named(template):
    for name in FILES:
        with tempfile.TemporaryDirectory() as root:
            shutil.copytree(template, Path(root), dirs_exist_ok=True)
            (Path(root) / "m" / name).unlink()
            with pytest.raises(StoreError, match=name):
                read_movie(root)
