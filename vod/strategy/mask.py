"""`FrameMask`: the set of frames of one movie, as a fixed-length bitmask.

Frame `i` of a movie with `n` frames is bit `i` of a length-`n` mask; a set bit
means the frame is present (held by a server, received by a client).  Text form
is one character per frame, '1' = present, e.g. "1000100010001" for every 4th
frame starting at 0.

Wire format, version 1 (`FrameMask.to_bytes` / `FrameMask.from_bytes`)
----------------------------------------------------------------------

    byte 0     format version: 1
    byte 1     encoding kind: 0 RAW, 1 SPARSE, 2 SPARSE_COMPLEMENT
    bytes 2..  payload, which must end exactly at the end of the data

    RAW (0)    `bitarray.util.serialize` of the mask in big-endian bit order:
               a head byte 0x10 | p, then ceil(n / 8) bytes holding frame 0 in
               the most significant bit of the first byte.  p (0..7) is the
               number of unused pad bits in the last byte, which must be zero,
               so n = 8 * (len(payload) - 1) - p.
    SPARSE (1) `bitarray.util.sc_encode` of the mask in big-endian bit order:
               a head byte 0x10 | m, then n as m little-endian bytes, then
               bitarray's sparse-compression blocks ending with the stop byte
               0x00 (see bitarray's doc/sparse_compression.rst).
    SPARSE_COMPLEMENT (2)
               as SPARSE, but encodes the complement: a mostly-full mask is
               sent as its few missing frames.
    PERIODIC (3)
               n as 4 little-endian bytes (1 <= n), then the first p frames
               (the period, 1 <= p <= n) as RAW's payload (`serialize`, big
               endian, zero pad bits); frame i is frame i mod p of that
               pattern. A strategy's masks for a whole movie are periodic
               (server 0 of 4 sends `1000` over and over), so this sends a
               100,000-frame interleave in 8 bytes instead of 12,500.

`to_bytes()` emits whichever of RAW, SPARSE and SPARSE_COMPLEMENT is shortest
(the lowest kind on a tie), so a mask never costs more than RAW's n / 8 + 3
bytes; `to_bytes(periodic=True)` (what strategies use) also looks for a period
and emits PERIODIC when its payload is at most 24 bytes (without computing the
other kinds) or strictly shortest. The decoder accepts any kind.
The decoder raises `MaskError` on an unknown version or kind, a truncated
payload, trailing bytes, a non-big-endian or malformed bitarray header, nonzero
pad bits, a period of 0 or longer than the mask, or a length above
`max_length` or `MAX_FRAMES`; the length is checked before anything of that
size is allocated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from bitarray import bitarray, frozenbitarray
from bitarray.util import any_and, deserialize, intervals, sc_decode, sc_encode, serialize, subset, zeros

from vod.errors import MaskError

__all__ = ["FrameMask", "MaskTooLong", "MAX_FRAMES", "WIRE_VERSION", "RAW", "SPARSE", "SPARSE_COMPLEMENT", "PERIODIC"]

# About 92 hours at 30 fps; bounds what a peer's 10-byte message can make us allocate.
MAX_FRAMES = 10_000_000
WIRE_VERSION = 1
RAW, SPARSE, SPARSE_COMPLEMENT, PERIODIC = 0, 1, 2, 3
# The encoder looks for a period only in masks at least this long (shorter ones gain too little), and
# tries at most this many candidate periods.
_PERIODIC_MIN_FRAMES = 512
_PERIOD_TRIES = 32
_PERIODIC_SHORT = 24  # a PERIODIC payload this short is emitted without computing the other kinds

_ENDIAN = "big"  # explicit, so the wire form never depends on bitarray's default
_BIG_ENDIAN_HEAD = 0x10  # bit 4 of bitarray's serialize / sc_encode head byte


class MaskTooLong(MaskError):
    """A mask longer than the caller allows (the movie's frame count, or `MAX_FRAMES`)."""

    def __init__(self, frames: int, limit: int):
        super().__init__(f"mask of {frames} frames exceeds the limit of {limit}")
        self.frames = frames
        self.limit = limit


def _check_length(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise MaskError(f"mask length must be an integer, not {type(n).__name__}")
    if not 0 <= n <= MAX_FRAMES:
        raise MaskError(f"mask length {n} is outside 0..{MAX_FRAMES}")
    return n


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise MaskError(f"number of stripes must be a positive integer, got {k!r}")
    return k


class FrameMask:
    """An immutable set of frame indices in `range(length)`.

    `len(mask)` is the movie's frame count, not the number of frames held
    (that is `mask.count()`); `bool(mask)` is true when any frame is held,
    as for a set.
    """

    __slots__ = ("_bits",)

    def __init__(self, length: int = 0) -> None:
        self._bits = frozenbitarray(zeros(_check_length(length), _ENDIAN))

    @classmethod
    def _wrap(cls, bits) -> FrameMask:
        mask = cls.__new__(cls)
        mask._bits = frozenbitarray(bits)
        return mask

    # -- construction -----------------------------------------------------

    @classmethod
    def from_packed(cls, length: int, packed: bytes) -> FrameMask:
        """Frames from big-endian packed bits (frame 0 = the first byte's high bit), as numpy.packbits gives."""
        _check_length(length)
        if len(packed) != (length + 7) // 8:
            raise MaskError(f"{len(packed)} packed bytes cannot hold exactly {length} frames")
        bits = bitarray(endian=_ENDIAN)
        bits.frombytes(bytes(packed))
        del bits[length:]
        return cls._wrap(bits)

    @classmethod
    def full(cls, length: int) -> FrameMask:
        return cls._wrap(~zeros(_check_length(length), _ENDIAN))

    @classmethod
    def from_ranges(cls, length: int, ranges: Iterable[tuple[int, int]]) -> FrameMask:
        """Frames in the half-open ranges `[start, stop)`; ranges may overlap."""
        bits = zeros(_check_length(length), _ENDIAN)
        for start, stop in ranges:
            if not 0 <= start <= stop <= length:
                raise MaskError(f"frame range [{start}, {stop}) is outside 0..{length}")
            bits[start:stop] = 1
        return cls._wrap(bits)

    @classmethod
    def from_indices(cls, length: int, indices: Iterable[int]) -> FrameMask:
        bits = zeros(_check_length(length), _ENDIAN)
        for i in indices:
            # Negative indices would silently wrap around in a bitarray.
            if not 0 <= i < length:
                raise MaskError(f"frame {i} is outside 0..{length - 1}")
            bits[i] = 1
        return cls._wrap(bits)

    @classmethod
    def from_text(cls, text: str) -> FrameMask:
        """Parse the display form; whitespace and '_' may group the digits."""
        try:
            bits = frozenbitarray(text, _ENDIAN)
        except (TypeError, ValueError) as err:
            raise MaskError(f"bad mask text: {err}") from None
        _check_length(len(bits))
        return cls._wrap(bits)

    @classmethod
    def interleave(cls, length: int, k: int) -> list[FrameMask]:
        """k masks; stripe s holds frames s, s+k, s+2k, ... of a full movie."""
        _check_length(length)
        stripes = []
        for s in range(_check_k(k)):
            bits = zeros(length, _ENDIAN)
            bits[s::k] = 1
            stripes.append(cls._wrap(bits))
        return stripes

    def stripe(self, k: int) -> list[FrameMask]:
        """Deal this mask's frames round-robin into k masks.

        Dealing by rank among the held frames rather than by frame index keeps
        the stripes of a partial mask within one frame of each other in size.
        """
        stripes = [zeros(len(self), _ENDIAN) for _ in range(_check_k(k))]
        for rank, frame in enumerate(self._bits.search(1)):
            stripes[rank % k][frame] = 1
        return [self._wrap(bits) for bits in stripes]

    # -- queries ----------------------------------------------------------

    @property
    def length(self) -> int:
        return len(self._bits)

    @property
    def bits(self) -> frozenbitarray:
        """The underlying big-endian frozenbitarray, for bulk bitarray operations."""
        return self._bits

    def __len__(self) -> int:
        return len(self._bits)

    def count(self) -> int:
        return self._bits.count(1)

    def __bool__(self) -> bool:
        return self._bits.any()

    def __contains__(self, frame: object) -> bool:
        # Not delegated: `1 in bitarray` asks whether any bit is 1.
        return isinstance(frame, int) and 0 <= frame < len(self._bits) and bool(self._bits[frame])

    def __iter__(self) -> Iterator[int]:
        return self._bits.search(1)

    def first(self) -> int | None:
        i = self._bits.find(1)
        return None if i < 0 else i

    def first_missing(self) -> int | None:
        i = self._bits.find(0)
        return None if i < 0 else i

    def ranges(self) -> Iterator[tuple[int, int]]:
        """Runs of held frames as half-open `(start, stop)`, in order."""
        return ((start, stop) for value, start, stop in intervals(self._bits) if value)

    def missing(self) -> FrameMask:
        return self._wrap(~self._bits)

    # -- algebra ----------------------------------------------------------

    def _peer(self, other: object):
        """The other operand's bits, or None if it is not a mask."""
        if not isinstance(other, FrameMask):
            return None
        if len(other._bits) != len(self._bits):
            raise MaskError(f"cannot combine masks of {len(self._bits)} and {len(other._bits)} frames")
        return other._bits

    def _require(self, other: object):
        bits = self._peer(other)
        if bits is None:
            raise TypeError(f"expected a FrameMask, got {type(other).__name__}")
        return bits

    def __or__(self, other: FrameMask) -> FrameMask:
        bits = self._peer(other)
        return NotImplemented if bits is None else self._wrap(self._bits | bits)

    def __and__(self, other: FrameMask) -> FrameMask:
        bits = self._peer(other)
        return NotImplemented if bits is None else self._wrap(self._bits & bits)

    def __sub__(self, other: FrameMask) -> FrameMask:
        bits = self._peer(other)
        return NotImplemented if bits is None else self._wrap(self._bits & ~bits)

    def __xor__(self, other: FrameMask) -> FrameMask:
        bits = self._peer(other)
        return NotImplemented if bits is None else self._wrap(self._bits ^ bits)

    def __invert__(self) -> FrameMask:
        return self._wrap(~self._bits)

    def issubset(self, other: FrameMask) -> bool:
        return subset(self._bits, self._require(other))

    def issuperset(self, other: FrameMask) -> bool:
        return subset(self._require(other), self._bits)

    def isdisjoint(self, other: FrameMask) -> bool:
        return not any_and(self._bits, self._require(other))

    def __eq__(self, other: object) -> bool:
        # Unequal lengths are simply unequal, not an error: masks of different
        # movies may meet as dict keys.
        if not isinstance(other, FrameMask):
            return NotImplemented
        return self._bits == other._bits

    def __hash__(self) -> int:
        return hash(self._bits)

    # -- text -------------------------------------------------------------

    def to_text(self) -> str:
        return self._bits.to01()

    def short_text(self, width: int = 64) -> str:
        """The full text if it fits in `width`; otherwise `width` characters,
        one per bucket of frames ('1' all held, '0' none, '~' some), then
        "(count/length)"."""
        n = len(self._bits)
        if n <= width:
            return self.to_text()
        chars = []
        for b in range(width):
            start, stop = b * n // width, (b + 1) * n // width
            held = self._bits.count(1, start, stop)
            chars.append("1" if held == stop - start else "0" if held == 0 else "~")
        return f"{''.join(chars)} ({self.count()}/{n})"

    def __repr__(self) -> str:
        if len(self._bits) <= 64:
            return f"FrameMask.from_text({self.to_text()!r})"
        return f"<FrameMask {self.short_text()}>"

    # -- wire -------------------------------------------------------------

    def to_bytes(self, periodic: bool = False) -> bytes:
        """The shortest version-1 encoding (see the module docstring); PERIODIC only if `periodic`."""
        candidates = []
        if periodic:
            p = self.period()
            if p is not None:
                payload = len(self._bits).to_bytes(4, "little") + serialize(self._bits[:p])
                if len(payload) <= _PERIODIC_SHORT:
                    return bytes((WIRE_VERSION, PERIODIC)) + payload  # short enough: the others are not tried
                candidates.append((PERIODIC, payload))
        candidates += [
            (RAW, serialize(self._bits)),
            (SPARSE, sc_encode(self._bits)),
            (SPARSE_COMPLEMENT, sc_encode(~self._bits)),
        ]
        kind, payload = min(candidates, key=lambda c: (len(c[1]), c[0] == PERIODIC))
        return bytes((WIRE_VERSION, kind)) + payload

    def period(self) -> int | None:
        """The smallest p <= length / 2 with frame i == frame i + p throughout, if one is found cheaply.

        Only masks of at least 512 frames are examined, and a period is looked for among the
        distances from the first frame of the rarer value (held or missing) to its next few, so a
        None does not prove there is no period; a found one is checked against the whole mask.
        """
        bits = self._bits
        n = len(bits)
        if n < _PERIODIC_MIN_FRAMES:
            return None
        window = min(n, 4096)
        rare = 1 if 2 * bits.count(1, 0, window) <= window else 0
        places = bits.search(rare)
        first = next(places, None)
        if first is None:
            return None
        head = bits[:64]
        for _, place in zip(range(_PERIOD_TRIES), places):
            p = place - first
            if p > n // 2:
                return None
            if bits[p:p + 64] == head and bits[p:] == bits[:n - p]:
                return p
        return None

    @classmethod
    def from_bytes(cls, data: bytes, max_length: int | None = None, *, length: int | None = None) -> FrameMask:
        """Decode `to_bytes` output; anything else raises `MaskError`.

        `max_length` caps the frame count a peer may make us allocate;
        `length`, if given, is the exact frame count expected.
        """
        try:
            data = memoryview(data).cast("B")
        except (TypeError, ValueError) as err:
            raise MaskError(f"mask data must be bytes: {err}") from None
        limit = MAX_FRAMES if max_length is None else min(max_length, MAX_FRAMES)
        if len(data) < 3:
            raise MaskError("mask data truncated")
        if data[0] != WIRE_VERSION:
            raise MaskError(f"unsupported mask format version {data[0]}")
        kind, payload = data[1], bytes(data[2:])
        if kind == RAW:
            bits = _decode_raw(payload, limit)
        elif kind in (SPARSE, SPARSE_COMPLEMENT):
            bits = _decode_sparse(payload, limit)
            if kind == SPARSE_COMPLEMENT:
                bits = ~bits
        elif kind == PERIODIC:
            bits = _decode_periodic(payload, limit)
        else:
            raise MaskError(f"unknown mask encoding kind {kind}")
        if length is not None and len(bits) != length:
            raise MaskError(f"mask has {len(bits)} frames, expected {length}")
        return cls._wrap(bits)


def _decode_raw(payload: bytes, limit: int):
    head, pad = payload[0] & 0xF8, payload[0] & 0x07
    if head != _BIG_ENDIAN_HEAD:
        raise MaskError(f"bad raw mask header 0x{payload[0]:02x}")
    n = 8 * (len(payload) - 1) - pad
    if n < 0:
        raise MaskError("raw mask payload truncated")
    if n > limit:
        raise MaskTooLong(n, limit)
    # Zero pad bits keep each mask's raw encoding unique.
    if pad and payload[-1] & ((1 << pad) - 1):
        raise MaskError("raw mask has nonzero pad bits")
    try:
        return deserialize(payload)
    except Exception as err:  # bitarray's exception types are not a documented contract
        raise MaskError(f"bad raw mask: {err}") from None


def _decode_periodic(payload: bytes, limit: int):
    if len(payload) < 5:
        raise MaskError("periodic mask truncated")
    n = int.from_bytes(payload[:4], "little")
    if n > limit:
        raise MaskTooLong(n, limit)
    pattern = _decode_raw(payload[4:], limit)
    p = len(pattern)
    if not 1 <= p <= n:
        raise MaskError(f"periodic mask: a period of {p} frames for a mask of {n}")
    bits = pattern * -(-n // p)
    del bits[n:]
    return bits


def _decode_sparse(payload: bytes, limit: int):
    # sc_decode allocates the declared length up front, so read it first.
    head, m = payload[0] & 0xF0, payload[0] & 0x0F
    if head != _BIG_ENDIAN_HEAD or m > 8:
        raise MaskError(f"bad sparse mask header 0x{payload[0]:02x}")
    if len(payload) < 1 + m:
        raise MaskError("sparse mask header truncated")
    n = int.from_bytes(payload[1 : 1 + m], "little")
    if n > limit:
        raise MaskTooLong(n, limit)
    # An iterator, because sc_decode stops at the stop byte and ignores the rest.
    stream = iter(payload)
    try:
        bits = sc_decode(stream)
    except Exception as err:  # garbage blocks raise assorted types; StopIteration when truncated
        raise MaskError(f"bad sparse mask: {str(err) or type(err).__name__}") from None
    if next(stream, None) is not None:
        raise MaskError("trailing bytes after sparse mask")
    if len(bits) != n or bits.endian != _ENDIAN:
        raise MaskError("sparse mask does not match its header")
    return bits
