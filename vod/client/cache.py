"""The client's frame cache: the frames of a movie received earlier, so a later play asks only for the rest.

Layout of `CACHE/MOVIE_ID/` (format version 2)::

    movie.json   {"format": "vod-client-cache", "version": 2, "id", "frame_count", "fps", "width", "height"}
    frames.log   8-byte header b"VODC" | u16 version=2 | u16 record header size=32,
                 then records, appended as frames arrive, in any order:
                 b"VCFR" | u32 index | u32 length | 16-byte XXH3-128 of the payload (as on the wire) |
                 u32 CRC-32 of the previous 28 bytes | payload (the JPEG bytes, unchanged)

A cache of another version (version 1 kept SHA-256) is started afresh: its
frames are fetched again, nothing else is lost.

Crash safety: a frame counts as held only once its whole record is on disk
and checks out. Opening the cache reads every record and verifies the CRC of
its header and the XXH3-128 of its payload; the first record that does not
(a write torn by a crash, zeros left by a power loss) and everything after it
is cut off. So a half-written frame is never counted, and appends continue on
a clean tail. A lock (flock) keeps two clients from appending to one cache.

Every method does file IO: call them from the client's worker thread, never
from the reactor.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass

from bitarray import bitarray
from xxhash import xxh3_128_digest

from vod.client.playout import mask_from_bits
from vod.errors import StoreError, UsageError
from vod.media.ids import check_movie_id
from vod.stream.protocol import DIGEST_SIZE
from vod.strategy.mask import FrameMask

FORMAT_NAME = "vod-client-cache"
FORMAT_VERSION = 2
LOG_HEADER = struct.Struct(">4sHH")
LOG_MAGIC = b"VODC"
RECORD = struct.Struct(">4sII16sI")
RECORD_HEAD, RECORD_CRC = struct.Struct(">4sII16s"), struct.Struct(">I")  # RECORD in the two parts written
RECORD_MAGIC = b"VCFR"
# Unsynced bytes that make `append_many` fsync by itself. A crash of the process loses nothing written (the
# kernel has it); a crash of the machine loses at most these bytes' frames, never a wrong one (they fail their
# check on the next open and are fetched again). The session also syncs with every Progress report (1 s).
# Syncing every 256 frames (4 MB) stalled a download's writes on the disk for a third of their time.
SYNC_BYTES = 64 * 1024 * 1024
WRITE_BATCH = 256  # records per pwritev: three buffers each, under the system's IOV_MAX (1024 on Linux)


def default_cache_root() -> str:
    """$XDG_CACHE_HOME/vod, else ~/.cache/vod (the XDG base directory rule)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vod")


@dataclass(frozen=True)
class MovieMeta:
    """What a client must know of a movie to play it: from the coordinator's catalogue or the cache."""

    movie_id: str
    frame_count: int
    fps: float
    width: int = 0
    height: int = 0

    @classmethod
    def from_catalogue(cls, movie_id: str, entry: dict) -> "MovieMeta":
        try:
            frame_count, fps = int(entry["frame_count"]), float(entry["fps"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"the coordinator's catalogue entry for {movie_id} is incomplete: {entry!r}") from None
        if frame_count < 1 or not (math.isfinite(fps) and fps > 0):
            raise StoreError(f"the coordinator's catalogue entry for {movie_id} is not playable: {entry!r}")
        return cls(movie_id, frame_count, fps, int(entry.get("width") or 0), int(entry.get("height") or 0))

    def same_movie(self, other: "MovieMeta") -> bool:
        return (self.movie_id, self.frame_count, self.fps) == (other.movie_id, other.frame_count, other.fps)

    def to_json(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "id": self.movie_id,
                "frame_count": self.frame_count, "fps": self.fps, "width": self.width, "height": self.height}


class FrameCache:
    """One movie's cached frames. `open` first; then `held`, `read`, `append`, `sync`, `close`."""

    def __init__(self, root: str, movie_id: str):
        self.root = root
        self.movie_id = check_movie_id(movie_id)
        self.path = os.path.join(root, movie_id)
        self.meta: MovieMeta | None = None
        self._fd: int | None = None
        self._index: dict[int, tuple[int, int]] = {}  # frame -> (payload offset, length)
        self._end = 0
        self._unsynced = 0  # bytes appended since the last fsync
        self.discarded_bytes = 0  # a torn tail cut off when opening

    # -- opening -------------------------------------------------------------------------------------

    def open(self) -> "FrameCache":
        """Lock the cache, read its metadata (if any) and every sound record."""
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(os.path.join(self.path, "frames.log"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError(f"cache {self.path}: cannot write ({err.strerror}); give another --cache DIR") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"cache {self.path} is in use by another vod-client; wait for it or give "
                             "another --cache DIR") from None
        self._fd = fd
        self.meta = self._read_meta()
        self._scan()
        return self

    def _read_meta(self) -> MovieMeta | None:
        try:
            with open(os.path.join(self.path, "movie.json"), encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
                return None
            meta = MovieMeta(str(data["id"]), int(data["frame_count"]), float(data["fps"]),
                             int(data.get("width") or 0), int(data.get("height") or 0))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # no or unreadable metadata: the frames cannot be trusted to be this movie's
        return meta if meta.movie_id == self.movie_id and meta.frame_count > 0 and meta.fps > 0 else None

    def _scan(self) -> None:
        fd = self._fd
        size = os.fstat(fd).st_size
        header = os.pread(fd, LOG_HEADER.size, 0)
        if self.meta is None or len(header) < LOG_HEADER.size or \
                LOG_HEADER.unpack(header) != (LOG_MAGIC, FORMAT_VERSION, RECORD.size):
            self._reset()
            return
        offset = LOG_HEADER.size
        while offset + RECORD.size <= size:
            magic, index, length, digest, crc = RECORD.unpack(os.pread(fd, RECORD.size, offset))
            if magic != RECORD_MAGIC or crc != zlib.crc32(RECORD.pack(magic, index, length, digest, 0)[:-4]):
                break
            if index >= self.meta.frame_count or offset + RECORD.size + length > size:
                break
            payload = os.pread(fd, length, offset + RECORD.size)
            if xxh3_128_digest(payload) != digest:
                break
            self._index.setdefault(index, (offset + RECORD.size, length))
            offset += RECORD.size + length
        if offset < size:
            self.discarded_bytes = size - offset
            os.ftruncate(fd, offset)
        self._end = offset

    def _reset(self) -> None:
        """Start the log afresh (new cache, or one whose frames cannot be trusted)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, LOG_HEADER.pack(LOG_MAGIC, FORMAT_VERSION, RECORD.size), 0)
        self._index.clear()
        self._end = LOG_HEADER.size

    def adopt(self, meta: MovieMeta) -> int:
        """Use this cache for `meta` (the catalogue's word); returns how many frames were dropped because
        they were of another movie under the same id."""
        dropped = 0
        if self.meta is None or not self.meta.same_movie(meta):
            dropped = len(self._index)
            self._reset()
        if self.meta != meta:
            tmp = os.path.join(self.path, "movie.json.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.path, "movie.json"))
            self.meta = meta
        return dropped

    # -- frames --------------------------------------------------------------------------------------

    def held(self) -> FrameMask:
        bits = bitarray(self.meta.frame_count if self.meta else 0, "big")
        bits.setall(0)
        for index in self._index:
            bits[index] = 1
        return mask_from_bits(bits)

    def __contains__(self, index: int) -> bool:
        return index in self._index

    def read(self, index: int) -> bytes:
        offset, length = self._index[index]
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise StoreError(f"cache {self.path}: frame {index} is cut short; delete the cache and play again")
        return data

    def append(self, index: int, payload: bytes, digest: bytes | None = None) -> None:
        """Add a received (verified) frame; a frame held already is left as it is."""
        self.append_many([(index, payload, digest)])

    def append_many(self, frames: list[tuple[int, bytes, bytes | None]]) -> None:
        """Add received (verified) frames, (index, payload, digest) each, with one write per `WRITE_BATCH`
        frames (a download brings dozens per read); frames held already are left as they are. The digest is
        the frame header's: an XXH3-128 is kept as it is, anything else (None, a version-1 header's SHA-256)
        is replaced by the payload's XXH3-128."""
        if self.meta is None:
            return
        fresh, seen = [], set()
        for frame in frames:
            if frame[0] not in self._index and frame[0] not in seen:
                seen.add(frame[0])
                fresh.append(frame)
        for start in range(0, len(fresh), WRITE_BATCH):
            self._write_records(fresh[start:start + WRITE_BATCH])

    def _write_records(self, frames: list[tuple[int, bytes, bytes]]) -> None:
        buffers, placed, offset = [], [], self._end
        head_of, crc_of, crc32 = RECORD_HEAD.pack, RECORD_CRC.pack, zlib.crc32
        for index, payload, digest in frames:
            if digest is None or len(digest) != DIGEST_SIZE:
                digest = xxh3_128_digest(payload)
            length = len(payload)
            head = head_of(RECORD_MAGIC, index, length, digest)
            buffers += (head, crc_of(crc32(head)), payload)
            placed.append((index, offset + RECORD.size, length))
            offset += RECORD.size + length
        try:
            written = os.pwritev(self._fd, buffers, self._end)
            if written != offset - self._end:
                raise OSError(28, "short write")
        except OSError as err:
            # Cut the torn records now rather than on the next open.
            os.ftruncate(self._fd, self._end)
            raise StoreError(f"cache {self.path}: cannot write frame {frames[0][0]} ({err.strerror}); "
                             "free some space or give another --cache DIR") from None
        for index, at, length in placed:
            self._index[index] = (at, length)
        self._unsynced += offset - self._end
        self._end = offset
        if self._unsynced >= SYNC_BYTES:
            self.sync()

    def sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)  # releases the lock
                self._fd = None
