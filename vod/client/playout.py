"""The playout buffer: frames from several servers in, in any order; frames out in order, on time. Pure code.

Servers send disjoint stripes of the movie, each at its own pace, so frames
arrive out of order. The buffer keeps what arrived, and releases frames in
index order at their playout deadlines:

    playout_deadline(i) = start + (i - first) / fps + stall time so far + pause time so far

`start` is when playback began: once the first `startup_frames` frames of the
program are in (the program is the frames to play: the wanted ones the servers
send plus the ones already held, e.g. from the cache). If the frame at the
playhead is missing at its deadline, a stall begins; when the frame arrives,
the stall ends and the whole schedule shifts by its length (rebuffering), so
later frames keep their spacing instead of rushing to catch up.

Fast mode has no schedule: frames are released as soon as they are contiguous.

The buffer also says how far servers may send (`credit_until`): the playhead
plus the lead window, never past the buffer's room, so memory stays bounded
whatever the servers do.

Everything takes its time from the injected clock (`seconds()`); nothing here
does IO or schedules anything: the session polls `frames_due(now)`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from bitarray import bitarray
from bitarray.util import serialize

from vod.errors import UsageError
from vod.strategy.mask import WIRE_VERSION, RAW, FrameMask

DEFAULT_LEAD = 2.0
# Deadlines are sums of float seconds: a frame due "now" must not miss by a rounding error.
EPSILON = 1e-6


class Clock(Protocol):
    def seconds(self) -> float: ...


class Arrival(enum.Enum):
    ACCEPTED = "accepted"  # new, held, will be played
    LATE = "late"  # new and now held (worth caching), but the playhead already skipped it
    DUPLICATE = "duplicate"  # held already: dropped
    UNWANTED = "unwanted"  # outside the wanted frames (or the movie): dropped


@dataclass
class PlayoutStats:
    frames_total: int
    frames_cached: int
    startup_ms: float | None = None
    frames_received: int = 0
    frames_played: int = 0
    frames_missing: int = 0  # skipped because they never came (after `finish_input`)
    late: int = 0
    duplicates: int = 0
    unwanted: int = 0
    stalls: int = 0
    stall_ms: float = 0.0
    played_ms: float = 0.0  # the played frames' duration at the movie's rate
    per_server: dict[str, int] = field(default_factory=dict)

    @property
    def rebuffer_ratio(self) -> float:
        """Time stalled over time stalled plus time playing: 0 for a smooth play."""
        return 0.0 if not self.stall_ms else self.stall_ms / (self.stall_ms + self.played_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"startup_ms": None if self.startup_ms is None else round(self.startup_ms, 1),
                "frames_total": self.frames_total, "frames_cached": self.frames_cached,
                "frames_received": self.frames_received, "frames_played": self.frames_played,
                "frames_missing": self.frames_missing, "late": self.late, "duplicates": self.duplicates,
                "unwanted": self.unwanted, "stalls": self.stalls, "stall_ms": round(self.stall_ms, 1),
                "rebuffer_ratio": round(self.rebuffer_ratio, 4), "per_server": dict(sorted(self.per_server.items()))}


def mask_from_bits(bits: bitarray) -> FrameMask:
    """A FrameMask of a bitarray, through the mask's documented RAW wire form (FrameMask has no public
    constructor from bits, and from_indices would cost a Python loop per frame)."""
    return FrameMask.from_bytes(bytes((WIRE_VERSION, RAW)) + serialize(bitarray(bits, "big")))


class PlayoutBuffer:
    """Merge, order and pace the frames of one play.

    `wanted`: frames the servers are to send; `held`: frames already held (their
    payload lives elsewhere, e.g. in the cache: `frames_due` hands them out with
    payload None). `buffer_frames` bounds the frames between the playhead and
    the credit, hence the payloads kept in memory. `gated=True` keeps playback
    from starting before `open_gate` (a sink waiting for its viewer).
    """

    def __init__(self, frame_count: int, fps: float, wanted: FrameMask, held: FrameMask, clock: Clock, *,
                 lead: float = DEFAULT_LEAD, buffer_frames: int | None = None, startup_frames: int = 1,
                 fast: bool = False, gated: bool = False):
        if not isinstance(frame_count, int) or frame_count < 1:
            raise UsageError(f"a movie has at least one frame, not {frame_count!r}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise UsageError(f"frame rate must be > 0, not {fps!r}")
        if len(wanted) != frame_count or len(held) != frame_count:
            raise UsageError(f"wanted and held masks must cover the movie's {frame_count} frames")
        if lead <= 0:
            raise UsageError(f"the lead window must be > 0 seconds, not {lead!r}")
        self.frame_count = frame_count
        self.fps = float(fps)
        self.fast = fast
        self._clock = clock
        self._lead_frames = max(1, math.ceil(lead * self.fps))
        # Room for twice the lead by default: the lead window plus the frames a stall piles up behind it.
        self.buffer_frames = max(1, buffer_frames if buffer_frames is not None else 2 * self._lead_frames)
        self._startup_frames = max(1, startup_frames)

        self._wanted = bitarray(wanted.bits, "big")
        self._held = bitarray(held.bits, "big")
        self._program = self._wanted | self._held  # the frames this play shows, in order
        self._payloads: dict[int, bytes] = {}
        self._first = _find(self._program, 1, 0, frame_count)
        self._playhead = self._first  # the next frame to hand out (frame_count when finished)
        self._credit = 0
        self._input_finished = False

        self._armed_at = clock.seconds()
        self._gate_open = not gated
        self._start: float | None = None
        self._stall_total = 0.0
        self._stall_began: float | None = None  # the deadline of the frame we stall on
        self._pause_total = 0.0
        self._paused_at: float | None = None
        self.stats = PlayoutStats(frames_total=frame_count, frames_cached=(self._held & self._program).count())
        self._maybe_start(self._armed_at)

    # -- reading -------------------------------------------------------------------------------------

    @property
    def held(self) -> FrameMask:
        """Every frame held: the ones held at the start and those received since."""
        return mask_from_bits(self._held)

    @property
    def missing(self) -> FrameMask:
        """Wanted frames not received yet."""
        return mask_from_bits(self._wanted & ~self._held)

    @property
    def complete(self) -> bool:
        """Every wanted frame has arrived."""
        return not (self._wanted & ~self._held).any()

    def holds(self, index: int) -> bool:
        """Frame `index` is held (cheap: no mask is built)."""
        return isinstance(index, int) and 0 <= index < self.frame_count and bool(self._held[index])

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def finished(self) -> bool:
        """Every frame of the program was handed out (or skipped as missing)."""
        return self._playhead >= self.frame_count

    @property
    def playhead(self) -> int:
        return self._playhead

    @property
    def stalled(self) -> bool:
        return self._stall_began is not None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def playout_deadline(self, index: int) -> float | None:
        """When frame `index` is due on the current schedule; None before playback starts or in fast mode."""
        if self._start is None or self.fast:
            return None
        return self._start + (index - self._first) / self.fps + self._stall_total + self._pause_total

    def buffered_seconds(self) -> float:
        """How much can play from the playhead before a frame is missing."""
        playable = self._held | ~self._program
        gap = _find(playable, 0, self._playhead, self.frame_count)
        return (gap - self._playhead) / self.fps

    def credit_until(self, now: float) -> int:
        """Servers may send frames with index below this: the lead window (play mode) within the buffer's room.

        Never decreases: a server may already have sent up to the last bound.
        """
        window = self.buffer_frames if self.fast else min(self._lead_frames, self.buffer_frames)
        self._credit = max(self._credit, min(self.frame_count, self._playhead + window))
        return self._credit

    # -- arrivals ------------------------------------------------------------------------------------

    def receive(self, index: int, payload: bytes, source: str) -> Arrival:
        """A verified frame from `source`; duplicates and unwanted frames are counted and dropped."""
        return self.receive_many([(index, payload)], source)[0]

    def receive_many(self, frames: list[tuple[int, bytes]], source: str) -> list[Arrival]:
        """`receive` of each of one read's frames from `source`, in order; the same outcomes, at one time
        (a download brings dozens of frames a read: one clock reading and one start check for all)."""
        out: list[Arrival] = []
        held, wanted, payloads, count = self._held, self._wanted, self._payloads, self.frame_count
        now: float | None = None
        taken = 0
        for index, payload in frames:
            if not (isinstance(index, int) and 0 <= index < count) or not wanted[index] or held[index]:
                out.append(self._reject(index))
                continue
            held[index] = 1
            taken += 1
            if index < self._playhead:
                self.stats.late += 1
                out.append(Arrival.LATE)
                continue
            payloads[index] = payload
            if index == self._playhead and self._start is not None and not self.fast:
                now = self._clock.seconds() if now is None else now
                self._late_at_playhead(now)
            out.append(Arrival.ACCEPTED)
        if taken:
            self.stats.frames_received += taken
            self.stats.per_server[source] = self.stats.per_server.get(source, 0) + taken
            self._maybe_start(self._clock.seconds() if now is None else now)
        return out

    def _reject(self, index: int) -> Arrival:
        if isinstance(index, int) and 0 <= index < self.frame_count and self._held[index]:
            self.stats.duplicates += 1
            return Arrival.DUPLICATE
        self.stats.unwanted += 1
        return Arrival.UNWANTED

    def _late_at_playhead(self, now: float) -> None:
        """The playhead's frame is in: if that is after its deadline, it cost a stall, and the schedule shifts."""
        until = now if self._paused_at is None else min(now, self._paused_at)
        if self._stall_began is None:
            deadline = self.playout_deadline(self._playhead)
            if until <= deadline + EPSILON:
                return
            # Late, but nobody polled in between: the stall began at the deadline all the same.
            self.stats.stalls += 1
            self._stall_began = deadline
        self._end_stall(until)

    def _end_stall(self, at: float) -> None:
        self._stall_total += at - self._stall_began
        self.stats.stall_ms = self._stall_total * 1000.0
        self._stall_began = None

    def finish_input(self) -> None:
        """No more frames will come: missing frames are skipped when the playhead reaches them."""
        self._input_finished = True

    # -- playback control ----------------------------------------------------------------------------

    def open_gate(self) -> None:
        """Playback may start (the sinks are ready); startup is timed from here."""
        if not self._gate_open:
            self._gate_open = True
            self._armed_at = self._clock.seconds()
            self._maybe_start(self._armed_at)

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock.seconds()

    def resume(self) -> None:
        if self._paused_at is None:
            return
        pause = self._clock.seconds() - self._paused_at
        self._paused_at = None
        if self._start is None:
            # Paused before playback began: the schedule starts from now, nothing to shift.
            self._maybe_start(self._clock.seconds())
            return
        self._pause_total += pause
        if self._stall_began is not None:
            self._stall_began += pause  # a pause is not stall time

    def _maybe_start(self, now: float) -> None:
        if self._start is not None or not self._gate_open or self._paused_at is not None:
            return
        if not self._startup_ready():
            return
        self._start = now
        self.stats.startup_ms = (now - self._armed_at) * 1000.0

    def _startup_ready(self) -> bool:
        """The first `startup_frames` frames to play (or all that remain) are in, or no more will come."""
        if self._input_finished:
            return True  # play what there is (perhaps nothing): waiting longer cannot help
        index, needed = self._playhead, self._startup_frames
        while needed and index < self.frame_count:
            if not self._held[index]:
                return False
            needed -= 1
            index = _find(self._program, 1, index + 1, self.frame_count)
        return True

    # -- departures ----------------------------------------------------------------------------------

    def frames_due(self, now: float, limit: int | None = None) -> list[tuple[int, bytes | None]]:
        """The frames to show by `now`, in order: (index, payload), payload None for frames held elsewhere.

        At most `limit` frames (the sinks' room): the rest stay due for the next call.
        """
        if self._paused_at is not None:
            return []
        self._maybe_start(now)
        out: list[tuple[int, bytes | None]] = []
        if self.fast and self._start is not None:
            self._hand_out_runs(out, limit)
        while self._start is not None and self._playhead < self.frame_count and (limit is None or len(out) < limit):
            index = self._playhead
            if not self._held[index]:
                if self._input_finished:
                    if self._stall_began is not None:
                        self._end_stall(now)
                    self.stats.frames_missing += 1
                    self._advance()
                    continue
                if self.fast:
                    break
                deadline = self.playout_deadline(index)
                if deadline > now + EPSILON:
                    break
                if self._stall_began is None:
                    self.stats.stalls += 1
                    self._stall_began = deadline
                break
            if not self.fast and self.playout_deadline(index) > now + EPSILON:
                break
            out.append((index, self._payloads.pop(index, None)))
            self.stats.frames_played += 1
            self._advance()
        self.stats.played_ms = self.stats.frames_played * 1000.0 / self.fps
        return out

    def _hand_out_runs(self, out: list[tuple[int, bytes | None]], limit: int | None) -> None:
        """Fast mode: what the loop of `frames_due` does frame by frame, for runs of held frames of the program
        at once (no deadlines to check); stops where that loop has something to decide."""
        count, pop = self.frame_count, self._payloads.pop
        while self._playhead < count and (limit is None or len(out) < limit):
            start = self._playhead
            stop = count if limit is None else min(count, start + limit - len(out))
            end = min(_find(self._held, 0, start, stop), _find(self._program, 0, start, stop))
            if end == start:
                return
            out += [(index, pop(index, None)) for index in range(start, end)]
            self.stats.frames_played += end - start
            self._playhead = _find(self._program, 1, end, count)

    def _advance(self) -> None:
        self._playhead = _find(self._program, 1, self._playhead + 1, self.frame_count)

    def next_wakeup(self, now: float) -> float | None:
        """When `frames_due` may next have something (None: only an arrival can change that)."""
        if self._paused_at is not None or self._start is None or self.finished or self.fast:
            return None
        if not self._held[self._playhead] and not self._input_finished:
            return None if self._stall_began is not None else self.playout_deadline(self._playhead)
        return self.playout_deadline(self._playhead)


def _find(bits: bitarray, value: int, start: int, end: int) -> int:
    """The first index in [start, end) whose bit is `value`; `end` if none."""
    if start >= end:
        return end
    i = bits.find(value, start, end)
    return end if i < 0 else i
