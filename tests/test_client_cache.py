"""The client's frame cache: round trips, torn writes never counted, another movie's frames dropped, one user."""

from vod.stream.protocol import frame_digest
import os

import pytest

from vod.client.cache import LOG_HEADER, RECORD, FrameCache, MovieMeta, default_cache_root
from vod.errors import UsageError
from vod.strategy.mask import FrameMask

META = MovieMeta("m", 6, 24.0, 64, 48)


def jpeg(i):
    return b"\xff\xd8" + bytes([i]) * (100 + i) + b"\xff\xd9"


def fill(root, indices, meta=META):
    cache = FrameCache(str(root), meta.movie_id).open()
    cache.adopt(meta)
    for i in indices:
        cache.append(i, jpeg(i), frame_digest(jpeg(i)))
    cache.close()


def test_frames_survive_a_reopen(tmp_path):
    fill(tmp_path, [3, 0, 5])
    cache = FrameCache(str(tmp_path), "m").open()
    assert cache.meta == META
    assert cache.held() == FrameMask.from_indices(6, [0, 3, 5])
    assert [cache.read(i) for i in (0, 3, 5)] == [jpeg(0), jpeg(3), jpeg(5)]
    cache.append(3, b"other", frame_digest(b"other"))  # held already: kept as it was
    assert cache.read(3) == jpeg(3)
    cache.close()


def test_a_torn_last_record_is_not_held_and_is_cut_off(tmp_path):
    fill(tmp_path, [0, 1])
    log = tmp_path / "m" / "frames.log"
    whole = log.stat().st_size
    record = RECORD.pack(b"VCFR", 2, len(jpeg(2)), frame_digest(jpeg(2)), 0)
    with open(log, "ab") as f:
        f.write(record[:-4] + b"\0\0\0\0" + jpeg(2)[:50])  # a crash in the middle of an append
    cache = FrameCache(str(tmp_path), "m").open()
    assert cache.held() == FrameMask.from_indices(6, [0, 1])
    assert cache.discarded_bytes > 0 and log.stat().st_size == whole
    cache.append(2, jpeg(2), frame_digest(jpeg(2)))  # and appending goes on cleanly
    cache.close()
    assert FrameCache(str(tmp_path), "m").open().held() == FrameMask.from_indices(6, [0, 1, 2])


@pytest.mark.parametrize("damage", ["payload", "header", "zeros"])
def test_damage_cuts_the_log_at_the_first_bad_record(tmp_path, damage):
    fill(tmp_path, [0, 1, 2])
    log = tmp_path / "m" / "frames.log"
    data = bytearray(log.read_bytes())
    second = LOG_HEADER.size + RECORD.size + len(jpeg(0))
    if damage == "payload":
        data[second + RECORD.size + 5] ^= 0xFF
    elif damage == "header":
        data[second + 5] ^= 0x01  # the frame index: caught by the header CRC
    else:
        data[second:] = bytes(len(data) - second)  # what a power loss can leave
    log.write_bytes(bytes(data))
    cache = FrameCache(str(tmp_path), "m").open()
    assert cache.held() == FrameMask.from_indices(6, [0])
    cache.close()


def test_frames_of_another_movie_under_the_same_id_are_dropped(tmp_path):
    fill(tmp_path, [0, 1])
    cache = FrameCache(str(tmp_path), "m").open()
    assert cache.adopt(MovieMeta("m", 8, 24.0)) == 2
    assert cache.held() == FrameMask(8)
    cache.close()
    again = FrameCache(str(tmp_path), "m").open()
    assert again.meta.frame_count == 8 and again.held().count() == 0
    assert again.adopt(MovieMeta("m", 8, 24.0)) == 0
    again.close()


def test_frames_without_metadata_are_not_trusted(tmp_path):
    fill(tmp_path, [0, 1])
    os.unlink(tmp_path / "m" / "movie.json")
    cache = FrameCache(str(tmp_path), "m").open()
    assert cache.meta is None and not cache.held()
    cache.close()


def test_one_client_at_a_time(tmp_path):
    first = FrameCache(str(tmp_path), "m").open()
    with pytest.raises(UsageError, match="in use by another vod-client"):
        FrameCache(str(tmp_path), "m").open()
    first.close()
    FrameCache(str(tmp_path), "m").open().close()


def test_an_unwritable_cache_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match="--cache"):
        FrameCache(str(blocker), "m").open()


def test_the_default_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_root() == str(tmp_path / "vod")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == str(tmp_path / "home" / ".cache" / "vod")


def test_many_frames_go_in_one_append_and_held_ones_are_skipped(tmp_path):
    fill(tmp_path, [1])
    cache = FrameCache(str(tmp_path), "m").open()
    frames = [(i, jpeg(i), frame_digest(jpeg(i))) for i in (4, 1, 2, 4)]  # 1 held, 4 twice
    cache.append_many(frames)
    assert [cache.read(i) for i in (1, 2, 4)] == [jpeg(1), jpeg(2), jpeg(4)]
    cache.close()
    reopened = FrameCache(str(tmp_path), "m").open()
    assert reopened.held() == FrameMask.from_indices(6, [1, 2, 4]) and reopened.discarded_bytes == 0
    reopened.close()
