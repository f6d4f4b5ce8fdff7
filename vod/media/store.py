"""The movie store: one directory per movie, frames kept as the exact JPEG bytes a server sends.

Layout of `STORE/MOVIE_ID/` (format version 2; version 1 is still read)::

    movie.json   metadata, JSON: {"format": "vod-movie", "version": 2, "id", "fps", "width",
                 "height", "frame_count", "frames_bytes", "source", "source_codec",
                 "keeps_source_jpeg", "jpeg_quality", "index_sha256", "created"}
    frames.bin   the JPEG frames, concatenated, nothing between them
    index.bin    16-byte header  b"VODX" | u16 version=2 | u16 record size=60 | u64 frame count
                 then one record per frame, big-endian: u64 offset | u32 length | 32-byte SHA-256 |
                 16-byte XXH3-128 (canonical big-endian, seed 0)
                 (version 1: record size 44, no XXH3-128)

SHA-256 is the frame's identity (`vod-media verify`, the tests' frame-exact
checks); XXH3-128 is the checksum a server puts on the wire, read from here so
a frame damaged on disk is caught by the client, not re-hashed into looking
fine. A version-1 movie has no XXH3: its server checks the SHA-256 of each
frame it sends and hashes it then (slower; re-ingest to upgrade).

Reading frame i is one fixed-offset lookup in the index and one slice of the
memory-mapped `frames.bin`. A movie is built in `STORE/.ingest-ID-*` and
renamed into place only when complete and fsynced, so a crash mid-ingest
leaves no directory that looks like a movie.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from xxhash import xxh3_128_digest

from vod.errors import CorruptMovie, StoreError
from vod.media.ids import check_movie_id  # noqa: F401 (re-exported: callers import it from here)

FORMAT_NAME = "vod-movie"
FORMAT_VERSION = 2
FORMAT_VERSIONS_READ = (1, 2)
INDEX_MAGIC = b"VODX"
INDEX_HEADER = struct.Struct(">4sHHQ")
INDEX_RECORD = struct.Struct(">QI32s16s")
INDEX_RECORDS = {1: struct.Struct(">QI32s"), 2: INDEX_RECORD}
BAD_DIGEST = bytes(16)  # what a version-1 frame whose SHA-256 fails gets on the wire: the client rejects it
TEMP_PREFIX = ".ingest-"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class MovieInfo:
    movie_id: str
    fps: float
    width: int
    height: int
    frame_count: int
    frames_bytes: int
    source: str
    source_codec: str
    keeps_source_jpeg: bool
    jpeg_quality: int | None
    created: str

    def to_json(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "id": self.movie_id, "fps": self.fps,
                "width": self.width, "height": self.height, "frame_count": self.frame_count,
                "frames_bytes": self.frames_bytes, "source": self.source, "source_codec": self.source_codec,
                "keeps_source_jpeg": self.keeps_source_jpeg, "jpeg_quality": self.jpeg_quality,
                "created": self.created}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "MovieInfo":
        if data.get("format") != FORMAT_NAME:
            raise CorruptMovie(f"{where}: not a vod movie (format {data.get('format')!r})")
        if data.get("version") not in FORMAT_VERSIONS_READ:
            raise CorruptMovie(f"{where}: movie format version {data.get('version')!r} is not supported "
                               f"(this vod reads versions {', '.join(map(str, FORMAT_VERSIONS_READ))})")
        try:
            info = cls(movie_id=str(data["id"]), fps=float(data["fps"]), width=int(data["width"]),
                       height=int(data["height"]), frame_count=int(data["frame_count"]),
                       frames_bytes=int(data["frames_bytes"]), source=str(data["source"]),
                       source_codec=str(data["source_codec"]), keeps_source_jpeg=bool(data["keeps_source_jpeg"]),
                       jpeg_quality=data["jpeg_quality"], created=str(data["created"]))
        except (KeyError, TypeError, ValueError, OverflowError) as err:  # OverflowError: int(Infinity)
            raise CorruptMovie(f"{where}: metadata is incomplete or malformed ({err})") from None
        # A server divides by fps and a player sizes its window: values that open must be usable.
        if not (math.isfinite(info.fps) and info.fps > 0 and min(info.width, info.height, info.frame_count) > 0
                and info.frames_bytes >= 0):
            raise CorruptMovie(f"{where}: fps, width, height, frame_count or frames_bytes is out of range "
                               f"({info.fps}, {info.width}, {info.height}, {info.frame_count}, {info.frames_bytes})")
        return info


class Movie:
    """A stored movie, opened for reading. Frame reads are O(1) and thread-safe."""

    def __init__(self, path: str):
        self.path = path
        meta_path = os.path.join(path, "movie.json")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise StoreError(f"{path}: not a movie (no movie.json)") from None
        except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested too deeply
            raise CorruptMovie(f"{meta_path}: unreadable metadata ({err})") from None
        if not isinstance(meta, dict):
            raise CorruptMovie(f"{meta_path}: metadata is not a JSON object")
        self.info = MovieInfo.from_json(meta, meta_path)
        self._index_sha256 = meta.get("index_sha256")
        self._index = self._read_index()
        frames_path = os.path.join(path, "frames.bin")
        try:
            self._frames_file = open(frames_path, "rb")
        except OSError as err:
            raise CorruptMovie(f"{frames_path}: unreadable ({err.strerror})") from None
        try:
            size = os.fstat(self._frames_file.fileno()).st_size
            if size != self.info.frames_bytes:
                raise CorruptMovie(f"{frames_path}: {size} bytes, metadata says {self.info.frames_bytes}")
            self._frames = mmap.mmap(self._frames_file.fileno(), 0, access=mmap.ACCESS_READ)
            self._view = memoryview(self._frames)
        except (OSError, ValueError) as err:  # ValueError: an empty file cannot be mapped
            self._frames_file.close()
            raise CorruptMovie(f"{frames_path}: cannot be mapped ({err})") from None
        except CorruptMovie:
            self._frames_file.close()
            raise

    def _read_index(self) -> bytes:
        index_path = os.path.join(self.path, "index.bin")
        try:
            with open(index_path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise CorruptMovie(f"{index_path}: unreadable ({err.strerror})") from None
        if len(data) < INDEX_HEADER.size:
            raise CorruptMovie(f"{index_path}: too short for an index header")
        magic, version, record, count = INDEX_HEADER.unpack_from(data)
        if magic != INDEX_MAGIC or version not in INDEX_RECORDS or record != INDEX_RECORDS[version].size:
            raise CorruptMovie(f"{index_path}: not a vod index of version 1 or 2")
        self._record = INDEX_RECORDS[version]
        self.index_version = version
        self._has_xxh3 = version >= 2
        if count != self.info.frame_count or len(data) != INDEX_HEADER.size + count * record:
            raise CorruptMovie(f"{index_path}: holds {len(data)} bytes for {count} frames; "
                               f"metadata says {self.info.frame_count} frames")
        if self._index_sha256 and hashlib.sha256(data).hexdigest() != self._index_sha256:
            raise CorruptMovie(f"{index_path}: checksum does not match the one in movie.json")
        return data

    def __len__(self) -> int:
        return self.info.frame_count

    def _record_of(self, index: int) -> tuple:
        if not 0 <= index < self.info.frame_count:
            raise IndexError(f"frame {index} is outside movie {self.info.movie_id} (0..{self.info.frame_count - 1})")
        return self._record.unpack_from(self._index, INDEX_HEADER.size + index * self._record.size)

    def entry(self, index: int) -> tuple[int, int, bytes]:
        """(offset, length, sha256 digest) of frame `index`."""
        return self._record_of(index)[:3]

    def wire_entry(self, index: int) -> tuple[int, bytes]:
        """(length, XXH3-128 digest) of frame `index`: what a frame header carries."""
        digest, frame = self.wire_frame(index)
        return len(frame), digest

    def wire_frame(self, index: int) -> tuple[bytes, memoryview]:
        """(XXH3-128 digest, the bytes without a copy) of frame `index`: what a server sends."""
        offset, length, sha256, *xxh3 = self._record_of(index)
        frame = self._view[offset:offset + length]
        if xxh3:
            return xxh3[0], frame
        return xxh3_128_digest(frame) if hashlib.sha256(frame).digest() == sha256 else BAD_DIGEST, frame

    def frame(self, index: int) -> bytes:
        offset, length, _ = self.entry(index)
        return self._frames[offset:offset + length]


    def frame_sha256(self, index: int) -> bytes:
        return self.entry(index)[2]

    def first_bad_frame(self, progress: Progress | None = None) -> int | None:
        """Re-hash every frame; the index of the first that does not match, or None when all do."""
        expected_offset = 0
        for i in range(self.info.frame_count):
            offset, length, digest, *xxh3 = self._record_of(i)
            frame = self._frames[offset:offset + length]
            if offset != expected_offset or hashlib.sha256(frame).digest() != digest or \
                    (xxh3 and xxh3_128_digest(frame) != xxh3[0]):
                return i
            expected_offset = offset + length
            if progress and i % 500 == 499:
                progress(i + 1)
        return None

    def close(self) -> None:
        self._view.release()
        try:
            self._frames.close()
        except BufferError:
            pass  # a wire_frame is still held (a send in progress): the map goes when the last view does
        self._frames_file.close()

    def __enter__(self) -> "Movie":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MovieStore:
    """A directory of movies. Creating a movie is atomic; reading goes through `open`."""

    def __init__(self, root: str):
        self.root = root

    def movie_path(self, movie_id: str) -> str:
        return os.path.join(self.root, check_movie_id(movie_id))

    def exists(self, movie_id: str) -> bool:
        return os.path.isfile(os.path.join(self.movie_path(movie_id), "movie.json"))

    def open(self, movie_id: str) -> Movie:
        path = self.movie_path(movie_id)
        if not os.path.isdir(path):
            raise StoreError(f"no movie {movie_id!r} in store {self.root}")
        return Movie(path)

    def movie_ids(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(name for name in os.listdir(self.root)
                      if not name.startswith(".") and os.path.isfile(os.path.join(self.root, name, "movie.json")))

    def _prepare(self, movie_id: str) -> str:
        """Make sure the store exists and is writable; return a fresh temporary movie directory."""
        if os.path.exists(self.movie_path(movie_id)):
            raise StoreError(f"movie {movie_id!r} already exists in store {self.root}")
        try:
            os.makedirs(self.root, exist_ok=True)
            return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{movie_id}-", dir=self.root)
        except OSError as err:
            raise StoreError(f"store {self.root}: cannot write ({err.strerror})") from None

    def add(self, movie_id: str, frames: Iterable[bytes], *, fps: float, width: int, height: int,
            source: str, source_codec: str, keeps_source_jpeg: bool, jpeg_quality: int | None,
            progress: Progress | None = None) -> MovieInfo:
        """Write a new movie from an iterable of JPEG frames; all or nothing.

        Any exception from `frames` (a truncated source, say) removes the
        partial movie and propagates unchanged.
        """
        check_movie_id(movie_id)
        tmp = self._prepare(movie_id)
        try:
            count, total, index_digest = _write_frames(tmp, frames, progress)
            if count == 0:
                raise StoreError(f"{source}: no frames to store")
            info = MovieInfo(movie_id, float(fps), int(width), int(height), count, total, source, source_codec,
                             keeps_source_jpeg, jpeg_quality,
                             datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            meta = dict(info.to_json(), index_sha256=index_digest)
            _write_durable(os.path.join(tmp, "movie.json"), json.dumps(meta, indent=2).encode() + b"\n")
            _fsync_dir(tmp)
            try:
                os.rename(tmp, self.movie_path(movie_id))
            except OSError as err:
                # ENOTEMPTY/EEXIST: somebody else stored the same id meanwhile.
                raise StoreError(f"movie {movie_id!r}: cannot move into place in {self.root} ({err.strerror})") from None
            _fsync_dir(self.root)
            return info
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def stale_partials(self) -> list[str]:
        """Leftovers of ingests that crashed; never mistaken for movies, safe to delete."""
        if not os.path.isdir(self.root):
            return []
        return sorted(n for n in os.listdir(self.root) if n.startswith(TEMP_PREFIX))


def _write_frames(directory: str, frames: Iterable[bytes], progress: Progress | None) -> tuple[int, int, str]:
    records = bytearray()
    offset = count = 0
    try:
        with open(os.path.join(directory, "frames.bin"), "wb") as out:
            for jpeg in frames:
                out.write(jpeg)
                records += INDEX_RECORD.pack(offset, len(jpeg), hashlib.sha256(jpeg).digest(), xxh3_128_digest(jpeg))
                offset += len(jpeg)
                count += 1
                if progress and count % 100 == 0:
                    progress(count)
            out.flush()
            os.fsync(out.fileno())
        index = INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, INDEX_RECORD.size, count) + bytes(records)
        _write_durable(os.path.join(directory, "index.bin"), index)
    except OSError as err:
        raise StoreError(f"{directory}: write failed ({err.strerror})") from None
    return count, offset, hashlib.sha256(index).hexdigest()


def _write_durable(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_frames(movie: Movie) -> Iterator[bytes]:
    for i in range(len(movie)):
        yield movie.frame(i)
