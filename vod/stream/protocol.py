"""The data plane's wire format: frames from a server to a client, control from the client back.

Pure code (the h11 habit): encoders return bytes; `MessageDecoder.feed(bytes)`
returns whole messages. A Twisted protocol only moves bytes in and out.

One TCP connection per (client, server, RUID). The client speaks first
(HELLO), then both sides send messages at will. All integers big-endian.

Server -> client: a 64-byte header, then `length` payload bytes.

    offset size field
    0      2    magic b"VF"
    2      1    version = 2 (1 is still read)
    3      1    type: 1 FRAME, 2 END (no more frames for this RUID), 3 ERROR (payload: UTF-8 reason)
    4      8    RUID
    12     4    revision of the strategy the frame was sent under (fencing: older revisions are stale)
    16     4    frame index
    20     8    presentation time in microseconds (index / fps)
    28     4    payload length (at most MAX_FRAME_BYTES)
    32     32   checksum of the payload (zero for END/ERROR):
                version 2: XXH3-128 (seed 0, canonical big-endian) in 16 bytes, then 16 zero bytes
                version 1: SHA-256
    64     -    payload: the stored JPEG bytes, unchanged

Why XXH3-128 and not SHA-256: the checksum catches damage (a bad disk, a
buggy sender), not forgery (the stream is opened with the coordinator's
token, and a forger could recompute any unkeyed digest). SHA-256 costs
~10 us per 16 KB frame here, as much as the whole rest of a download's
per-frame work; XXH3-128 costs ~0.5 us (measured in bench/playback.py's
download rows). The movie store keeps both (vod/media/store.py).

Client -> server: an 8-byte header, then a JSON object (at most MAX_CONTROL_BYTES).

    0      2    magic b"VC"
    2      1    version = 1
    3      1    type: 1 HELLO, 2 CREDIT, 3 PAUSE, 4 RESUME, 5 STOP, 6 RESEND
    4      4    JSON length

    HELLO  {"ruid", "client", "held": base64 FrameMask (frames not to send), "mode": "play"|"fast",
            "token": the stream token the coordinator pushed with the strategy ("v1." + 64 hex digits,
            see vod/stream/tokens.py)}: a server answers a HELLO without the token for its RUID and
            client with ERROR and closes (the token has its own version prefix, so the header's
            version stays 1)
    CREDIT {"until": n}: the server may send frames with index < n (pacing and flow control in one:
           the client moves it with its playhead plus the lead window, and with its free buffer)
    PAUSE / RESUME / STOP {}
    RESEND {"frames": [i, ...]}: send these again (a frame failed its checksum)

A malformed message raises `ProtocolError`; the connection that sent it is closed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from xxhash import xxh3_128_digest

from vod.errors import VodError

VERSION = 1  # of the control messages
FRAME_VERSION = 2  # of the frame header: 2 carries XXH3-128, 1 carried SHA-256
FRAME_VERSIONS_READ = (1, 2)
FRAME_MAGIC = b"VF"
CONTROL_MAGIC = b"VC"
FRAME_HEADER = struct.Struct(">2sBBQIIQI32s")
CONTROL_HEADER = struct.Struct(">2sBBI")
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_CONTROL_BYTES = 1024 * 1024  # a HELLO carries a held mask: n/8 bytes, base64

FRAME, END, ERROR = 1, 2, 3
HELLO, CREDIT, PAUSE, RESUME, STOP, RESEND = 1, 2, 3, 4, 5, 6
CONTROL_NAMES = {HELLO: "HELLO", CREDIT: "CREDIT", PAUSE: "PAUSE", RESUME: "RESUME", STOP: "STOP", RESEND: "RESEND"}
NO_DIGEST = bytes(32)
DIGEST_SIZE = 16  # XXH3-128
_DIGEST_PAD = bytes(32 - DIGEST_SIZE)


class ProtocolError(VodError):
    """Bytes that are not a valid message of this protocol."""


class FrameMessage(NamedTuple):
    # A NamedTuple, not a frozen dataclass: a download makes thousands a second and a tuple is built at C speed.
    type: int
    ruid: int
    revision: int
    index: int
    pts_us: int
    digest: bytes  # XXH3-128 (16 bytes) from a version-2 header, SHA-256 (32) from a version-1 one
    payload: bytes | memoryview  # a FRAME's JPEG, often a slice of the read it came in (FrameDecoder)

    def checksum_ok(self) -> bool:
        return _checksum(self.digest)(self.payload) == self.digest


def frame_digest(payload: bytes) -> bytes:
    """The checksum a version-2 frame header carries: XXH3-128 of the payload."""
    return xxh3_128_digest(payload)


def _checksum(digest: bytes):
    return xxh3_128_digest if len(digest) == DIGEST_SIZE else _sha256_digest


def _sha256_digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def checksums_ok(messages: list[FrameMessage]) -> list[bool]:
    """`checksum_ok` of each FRAME (True for END and ERROR: they carry no digest), in one pass."""
    xxh, size, frame = xxh3_128_digest, DIGEST_SIZE, FRAME
    return [m.type != frame or (xxh(m.payload) if len(m.digest) == size else _sha256_digest(m.payload)) == m.digest
            for m in messages]


@dataclass(frozen=True)
class ControlMessage:
    type: int
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return CONTROL_NAMES[self.type]


def encode_frame(ruid: int, revision: int, index: int, pts_us: int, payload: bytes, digest: bytes) -> bytes:
    """Header + payload. `digest` comes from the movie index: no hashing on the send path."""
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame {index} is {len(payload)} bytes, over {MAX_FRAME_BYTES}")
    return frame_header(ruid, revision, index, pts_us, len(payload), digest) + payload


def frame_header(ruid: int, revision: int, index: int, pts_us: int, length: int, digest: bytes) -> bytes:
    """Just the header, for senders that write the payload separately (no copy of a large frame).

    A 16-byte `digest` (XXH3-128) makes a version-2 header; a 32-byte one (SHA-256) a version-1 header,
    as servers before version 2 sent (tests use it to check that clients still read them)."""
    if len(digest) == DIGEST_SIZE:
        return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, FRAME, ruid, revision, index, pts_us, length,
                                 digest + _DIGEST_PAD)
    if len(digest) != 32:
        raise ProtocolError(f"frame {index}: a checksum of {len(digest)} bytes (XXH3-128 is 16, SHA-256 32)")
    return FRAME_HEADER.pack(FRAME_MAGIC, 1, FRAME, ruid, revision, index, pts_us, length, digest)


def encode_end(ruid: int, revision: int, sent: int) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, END, ruid, revision, sent, 0, 0, NO_DIGEST)


def encode_error(ruid: int, reason: str) -> bytes:
    data = reason.encode("utf-8")[:4096]
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, ERROR, ruid, 0, 0, 0, len(data), NO_DIGEST) + data


def encode_control(type_: int, body: dict[str, Any] | None = None) -> bytes:
    if type_ not in CONTROL_NAMES:
        raise ProtocolError(f"unknown control message type {type_}")
    data = json.dumps(body or {}, separators=(",", ":")).encode()
    if len(data) > MAX_CONTROL_BYTES:
        raise ProtocolError(f"control message of {len(data)} bytes, over {MAX_CONTROL_BYTES}")
    return CONTROL_HEADER.pack(CONTROL_MAGIC, VERSION, type_, len(data)) + data


class _Chunks:
    """Received bytes kept as a list of chunks: no re-copy of the whole buffer on every read.

    (Twisted's Int32StringReceiver re-copies, and silently drops frames over 99,999 bytes.)
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def __len__(self) -> int:
        return self._size

    def peek(self, n: int) -> bytes:
        if len(self._chunks[0]) < n:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0][:n]

    def take(self, n: int) -> bytes:
        first = self._chunks[0]
        if len(first) >= n:
            out = first[:n]
            rest = first[n:]
            if rest:
                self._chunks[0] = rest
            else:
                self._chunks.pop(0)
        else:
            parts, got = [], 0
            while got < n:
                chunk = self._chunks.pop(0)
                if got + len(chunk) > n:
                    keep = n - got
                    parts.append(chunk[:keep])
                    self._chunks.insert(0, chunk[keep:])
                    got = n
                else:
                    parts.append(chunk)
                    got += len(chunk)
            out = b"".join(parts)
        self._size -= n
        return out


class FrameDecoder:
    """Server -> client bytes in, FrameMessages out.

    Built for bulk: each chunk is parsed in place (`unpack_from` at an offset, one slice per payload), so a
    large read holding dozens of frames costs one pass; only the message a chunk ends inside is kept back,
    as parts, and joined once the bytes it needs are in (never the whole buffer again on every read).
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the start of an incomplete message
        self._held = 0  # bytes in _parts
        self._need = FRAME_HEADER.size  # bytes that message needs: the header, then header + payload

    def feed(self, data: bytes) -> list[FrameMessage]:
        out: list[FrameMessage] = []
        pos = 0
        size = FRAME_HEADER.size
        while self._parts:
            # Complete the pending message from the head of `data` (joining only those bytes).
            take = self._need - self._held
            if len(data) - pos < take:
                if pos < len(data):
                    self._parts.append(data[pos:])
                    self._held += len(data) - pos
                return out
            self._parts.append(data[pos:pos + take])
            pos += take
            message = b"".join(self._parts)
            head = _checked_header(message, 0)
            if len(message) < size + head[LENGTH]:
                self._parts, self._held, self._need = [message], len(message), size + head[LENGTH]
                continue
            out.append(_message(head, message, size))
            self._parts, self._held, self._need = [], 0, size
        end = len(data)
        # Payloads are slices of a memoryview of the read: no copy of each frame (a download's frames are most
        # of its bytes; the read's buffer lives while any of its frames does).
        view = memoryview(data)
        unpack, frame, magic, pad, limit = FRAME_HEADER.unpack_from, FRAME, FRAME_MAGIC, _DIGEST_PAD, MAX_FRAME_BYTES
        while end - pos >= size:
            head = unpack(data, pos)
            if head[2] == frame and head[1] == 2 and head[0] == magic and head[7] <= limit and head[8][16:] == pad:
                # A version-2 FRAME, what a download brings thousands of a second: checked and built right
                # here (the general path below does the same in two calls, ~1 us a frame more).
                start = pos + size
                stop = start + head[7]
                if stop > end:
                    break
                out.append(FrameMessage(frame, head[3], head[4], head[5], head[6], head[8][:16], view[start:stop]))
                pos = stop
                continue
            head = _checked_header(data, pos)
            stop = pos + size + head[LENGTH]
            if stop > end:
                break
            out.append(_message(head, view, pos + size))
            pos = stop
        if pos < end:
            rest = data[pos:]
            self._parts, self._held = [rest], len(rest)
            self._need = size + _checked_header(rest, 0)[LENGTH] if len(rest) >= size else size
        return out


LENGTH = 7  # the payload length's place in an unpacked FRAME_HEADER


def _checked_header(data: bytes, pos: int) -> tuple:
    """The unpacked header at `pos`, checked; ProtocolError for anything but a valid header."""
    head = FRAME_HEADER.unpack_from(data, pos)
    magic, version, type_, _, _, _, _, length, digest = head
    if magic != FRAME_MAGIC or version not in FRAME_VERSIONS_READ:
        raise ProtocolError(f"not a vod frame header of version 1 or 2 (magic {magic!r}, version {version})")
    if version == 2 and digest[DIGEST_SIZE:] != _DIGEST_PAD:
        raise ProtocolError("frame header: the 16 bytes after the checksum must be zero")
    if type_ not in (FRAME, END, ERROR):
        raise ProtocolError(f"unknown frame message type {type_}")
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes announced, over {MAX_FRAME_BYTES}")
    return head


def _message(head: tuple, data: bytes | memoryview, start: int) -> FrameMessage:
    """The message of the checked header `head`, whose payload starts at `start` in `data`: a FRAME's payload
    is a slice of `data` (a memoryview slice when `data` is one), an END's or ERROR's is bytes."""
    _, version, type_, ruid, revision, index, pts_us, length, digest = head
    if version == 2:
        digest = digest[:DIGEST_SIZE]
    payload = data[start:start + length] if length else b""
    if type_ != FRAME:
        payload = bytes(payload)
    return FrameMessage(type_, ruid, revision, index, pts_us, digest, payload)


class ControlDecoder:
    """Client -> server bytes in, ControlMessages out."""

    def __init__(self) -> None:
        self._buf = _Chunks()

    def feed(self, data: bytes) -> list[ControlMessage]:
        self._buf.add(data)
        out = []
        while len(self._buf) >= CONTROL_HEADER.size:
            magic, version, type_, length = CONTROL_HEADER.unpack(self._buf.peek(CONTROL_HEADER.size))
            if magic != CONTROL_MAGIC or version != VERSION:
                raise ProtocolError(f"not a version-{VERSION} control message (magic {magic!r}, version {version})")
            if type_ not in CONTROL_NAMES:
                raise ProtocolError(f"unknown control message type {type_}")
            if length > MAX_CONTROL_BYTES:
                raise ProtocolError(f"control message of {length} bytes, over {MAX_CONTROL_BYTES}")
            if len(self._buf) < CONTROL_HEADER.size + length:
                return out
            self._buf.take(CONTROL_HEADER.size)
            raw = self._buf.take(length) if length else b""
            try:
                body = json.loads(raw.decode("utf-8")) if raw else {}
            except (UnicodeDecodeError, ValueError, RecursionError) as err:  # deep nesting: RecursionError
                raise ProtocolError(f"{CONTROL_NAMES[type_]}: body is not JSON ({err})") from None
            if not isinstance(body, dict):
                raise ProtocolError(f"{CONTROL_NAMES[type_]}: body must be a JSON object")
            out.append(ControlMessage(type_, body))
        return out
