"""Motion-JPEG AVI files written by hand: the JPEG bytes, unchanged, in RIFF chunks, with OpenDML indexes.

Why not OpenCV's FFmpeg writer (which this replaced): it cost ~46 us a frame
(numpy wrapping, FFmpeg's packet path, small buffered writes), so writing an
AVI ran at ~350 MB/s and held a `--fast` download to a fifth of a TCP pump.
Here a batch of frames is one `os.writev` of chunk headers and the JPEGs.

The layout is the one FFmpeg's AVI muxer writes (and every player reads):

    RIFF 'AVI '
      LIST 'hdrl'
        'avih'  MainAVIHeader (56 bytes)
        LIST 'strl'
          'strh'  AVIStreamHeader (56 bytes): 'vids' 'MJPG', rate/scale = fps
          'strf'  BITMAPINFOHEADER (40 bytes): width, height, 'MJPG'
          'indx'  OpenDML super index: one 16-byte entry per segment, room for MAX_SEGMENTS
        LIST 'odml'
          'dmlh'  total frames (248 bytes)
      LIST 'movi'
        '00dc' JPEG (a pad byte after an odd length), ...
        'ix00'  OpenDML standard index of this segment's frames
      'idx1'  AVI 1.0 index of the first segment's frames (for old players)
    RIFF 'AVIX'                                   (a new segment every `segment_bytes`, 1 GiB:
      LIST 'movi'  '00dc' ... 'ix00'               RIFF sizes are 32-bit and old readers stop at 1 GiB)
    ...

Sizes and counts that are only known at the end (RIFF and LIST sizes, total
frames, the largest frame) are written as placeholders and patched in place
when a segment closes and at `close`. All integers little-endian.
Blocking: call from the client's worker thread.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction

MAX_SEGMENTS = 256  # super index entries reserved in the header, as FFmpeg does: 256 GiB at 1 GiB a segment
SEGMENT_BYTES = 1 << 30
AVIF_HASINDEX, AVIF_ISINTERLEAVED, AVIF_TRUSTCKTYPE = 0x10, 0x100, 0x800
AVIIF_KEYFRAME = 0x10
AVI_INDEX_OF_INDEXES, AVI_INDEX_OF_CHUNKS = 0, 1
FRAME_CHUNK = b"00dc"
WRITEV_MAX = 512  # buffers per writev, under IOV_MAX (1024): two or three per frame

CHUNK = struct.Struct("<4sI")
MAIN_HEADER = struct.Struct("<10I16x")  # avih
STREAM_HEADER = struct.Struct("<4s4sIHHIIIIIIII4h")  # strh
BITMAP_INFO = struct.Struct("<IiiHH4sIiiII")  # strf
SUPER_INDEX_HEAD = struct.Struct("<HBBI4s12x")  # indx: longs per entry, subtype, type, entries, chunk id
SUPER_INDEX_ENTRY = struct.Struct("<QII")  # offset of an ix00 chunk, its size, frames in it
STD_INDEX_HEAD = struct.Struct("<HBBI4sQ4x")  # ix00: longs per entry, subtype, type, entries, chunk id, base
STD_INDEX_ENTRY = struct.Struct("<II")  # offset of a frame's data from the base, its length
OLD_INDEX_ENTRY = struct.Struct("<4sIII")  # idx1: chunk id, flags, offset from 'movi', length
DMLH_SIZE = 248


def frame_rate(fps: float) -> tuple[int, int]:
    """(rate, scale) with rate / scale = fps: 24 -> (24, 1), 29.97 -> (2997, 100), 30000/1001 stays exact."""
    ratio = Fraction(fps).limit_denominator(1001)
    if abs(float(ratio) - fps) > 1e-9 * fps:
        ratio = Fraction(fps).limit_denominator(1_000_000)
    return ratio.numerator, ratio.denominator


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are other tables
_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: markers without a length


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (SOFn), without decoding; None if there is none."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header came first
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return (width, height) if width and height else None
        pos += 2 + length
    return None


def _chunk(fourcc: bytes, body: bytes) -> bytes:
    return CHUNK.pack(fourcc, len(body)) + body + (b"\0" if len(body) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return CHUNK.pack(b"LIST", 4 + len(body)) + kind + body


class HeaderLayout:
    """Where the patchable fields of the header sit, and the header's bytes for given totals (pure)."""

    def __init__(self, width: int, height: int, fps: float):
        self.width, self.height = width, height
        self.rate, self.scale = frame_rate(fps)
        self.usec_per_frame = round(1_000_000 * self.scale / self.rate)

    def build(self, *, first_frames: int, total_frames: int, max_frame: int, segments: list[tuple[int, int, int]]
              ) -> bytes:
        """The bytes from the start of the file to the 'movi' LIST (exclusive), all fields filled.

        `segments`: (offset of its ix00 chunk, size of that chunk, frames) for every closed segment."""
        w, h = self.width, self.height
        avih = MAIN_HEADER.pack(self.usec_per_frame, 0, 0, AVIF_HASINDEX | AVIF_ISINTERLEAVED | AVIF_TRUSTCKTYPE,
                                first_frames, 0, 1, max_frame + 8, w, h)
        strh = STREAM_HEADER.pack(b"vids", b"MJPG", 0, 0, 0, 0, self.scale, self.rate, 0, total_frames,
                                  max_frame + 8, 0xFFFFFFFF, 0, 0, 0, w, h)
        strf = BITMAP_INFO.pack(BITMAP_INFO.size, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
        entries = b"".join(SUPER_INDEX_ENTRY.pack(*s) for s in segments)
        entries += bytes(SUPER_INDEX_ENTRY.size * (MAX_SEGMENTS - len(segments)))
        indx = SUPER_INDEX_HEAD.pack(4, 0, AVI_INDEX_OF_INDEXES, len(segments), FRAME_CHUNK) + entries
        strl = _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf) + _chunk(b"indx", indx))
        odml = _list(b"odml", _chunk(b"dmlh", struct.pack("<I", total_frames) + bytes(DMLH_SIZE - 4)))
        hdrl = _list(b"hdrl", _chunk(b"avih", avih) + strl + odml)
        return CHUNK.pack(b"RIFF", 0) + b"AVI " + hdrl  # the RIFF size is patched on the first segment's close


class MjpegAviFile:
    """Frames in, an AVI out: `write_many([jpeg, ...])`, then `close()`. A file descriptor, nothing more.

    A failed write (a full disk) raises the OSError; the caller names the file.
    """

    def __init__(self, fd: int, width: int, height: int, fps: float, *, segment_bytes: int = SEGMENT_BYTES):
        self._fd = fd
        self._layout = HeaderLayout(width, height, fps)
        self._segment_bytes = segment_bytes
        self.frames = 0
        self.bytes = 0  # JPEG bytes written
        self._max_frame = 0
        self._first_frames = 0  # frames in the first segment (avih and idx1 count only those)
        self._closed_segments: list[tuple[int, int, int]] = []
        self._idx1: list[bytes] = []
        header = self._header()
        self._pos = 0
        self._write([header])
        self._riff_start = 0
        self._start_movi()

    def _header(self) -> bytes:
        return self._layout.build(first_frames=self._first_frames, total_frames=self.frames,
                                  max_frame=self._max_frame, segments=self._closed_segments)

    def _write(self, buffers: list[bytes]) -> None:
        for start in range(0, len(buffers), WRITEV_MAX):
            part = buffers[start:start + WRITEV_MAX]
            want = sum(len(b) for b in part)
            done = os.writev(self._fd, part)
            if done != want:  # a short write: the disk is full (the next write would say ENOSPC)
                raise OSError(28, "No space left on device (short write)")
            self._pos += done

    def _start_movi(self) -> None:
        self._movi_list = self._pos  # the 'LIST' of this segment's movi
        self._movi_base = self._pos + 8  # the 'movi' fourcc: what idx1 and ix00 offsets count from
        self._segment_entries: list[bytes] = []
        self._write([CHUNK.pack(b"LIST", 0) + b"movi"])

    def write_many(self, jpegs: list[bytes]) -> None:
        buffers: list[bytes] = []
        at = self._pos  # where the next chunk goes: self._pos plus what `buffers` holds
        for jpeg in jpegs:
            size = len(jpeg)
            if at + 8 + size - self._riff_start > self._segment_bytes and self._segment_entries:
                self._write(buffers)
                buffers = []
                self._next_segment()
                at = self._pos
            buffers.append(CHUNK.pack(FRAME_CHUNK, size))
            buffers.append(jpeg)
            if size % 2:
                buffers.append(b"\0")
            self._segment_entries.append(STD_INDEX_ENTRY.pack(at + 8 - self._movi_base, size))
            if not self._closed_segments:
                self._idx1.append(OLD_INDEX_ENTRY.pack(FRAME_CHUNK, AVIIF_KEYFRAME, at - self._movi_base, size))
                self._first_frames += 1
            at += 8 + size + size % 2
            self.frames += 1
            self.bytes += size
            if size > self._max_frame:
                self._max_frame = size
        self._write(buffers)

    def _close_segment(self) -> None:
        entries = self._segment_entries
        ix = STD_INDEX_HEAD.pack(2, 0, AVI_INDEX_OF_CHUNKS, len(entries), FRAME_CHUNK, self._movi_base) \
            + b"".join(entries)
        ix_at = self._pos
        self._write([_chunk(b"ix00", ix)])
        if len(self._closed_segments) >= MAX_SEGMENTS:
            raise OSError(27, f"more than {MAX_SEGMENTS} AVI segments")
        self._closed_segments.append((ix_at, 8 + len(ix), len(entries)))
        self._patch(self._movi_list + 4, self._pos - self._movi_list - 8)
        if len(self._closed_segments) == 1:
            self._write([_chunk(b"idx1", b"".join(self._idx1))])
            self._idx1 = []
        self._patch(self._riff_start + 4, self._pos - self._riff_start - 8)

    def _next_segment(self) -> None:
        self._close_segment()
        self._riff_start = self._pos
        self._write([CHUNK.pack(b"RIFF", 0) + b"AVIX"])
        self._start_movi()

    def _patch(self, at: int, value: int) -> None:
        os.pwrite(self._fd, struct.pack("<I", value), at)

    def close(self) -> None:
        """Index the last segment and fill in the header's totals. The caller closes the descriptor."""
        self._close_segment()
        # The first RIFF's size (bytes 4..8) is patched already; the rest of the header has the same length
        # whatever the totals (the super index has room reserved), so it is rewritten in place.
        header = self._header()
        if os.pwrite(self._fd, header[8:], 8) != len(header) - 8:
            raise OSError(28, "No space left on device (short write)")
