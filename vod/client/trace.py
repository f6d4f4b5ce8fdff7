"""`vod-client play --trace FILE`: what the client applied and received, and when, as JSON Lines.

For benchmarks (bench/recovery.py times a server crash from it) and post-mortems. Off by default.

Format, version 1: one JSON object per line, UTF-8.

    {"v": 1, "event": "header", "t": T, "format": "vod-client-trace", "movie": ID, "client": ID, "pid": N}
        always the first line; a reader checks "v" here (the other lines carry none)
    {"event": "strategy", "t": T, "ruid": R, "revision": N, "reason": TEXT,
     "assignments": {SERVER: MASK_TEXT, ...}}
        a strategy (revision 1) or a restripe (revision > 1) was applied; MASK_TEXT is
        `FrameMask.to_text()`: one character per frame of the movie, "1" = that server sends that frame
    {"event": "frame", "t": T, "index": I, "server": SERVER, "revision": N, "duplicate": BOOL, "arrival": KIND}
        a frame passed its checksum and reached the play; "revision" is the strategy revision the server sent
        it under; KIND is the playout buffer's verdict: "accepted", "late" (new, after the playhead passed it),
        "duplicate" (held already: received twice), "unwanted", or "ignored" (reached the play after every
        wanted frame was in, which the feeds, stopped at that moment, normally prevent; "duplicate" then says
        whether it was held). Frames fenced as stale (an older revision) or
        failing their checksum never reach the play and are not listed.
    {"event": "end", "t": T, "state": STATE}
        the play is over (done, failed, cancelled); absent if the process was killed

T is epoch seconds (`time.time()`), the clock of every log line's timestamp (`vod.logsetup`), so a trace
lines up with the coordinators' and servers' logs.

Cost: one short line per frame into a 64 KiB buffer (a write system call every few hundred frames); the
buffer is flushed after the header and each strategy line, so a reader sees those at once, and at the end.
A write that fails (disk full) stops the trace with one warning; the play goes on.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Mapping

from vod.errors import UsageError
from vod.strategy.mask import FrameMask

log = logging.getLogger(__name__)

TRACE_VERSION = 1
TRACE_FORMAT = "vod-client-trace"
BUFFER_BYTES = 1 << 16


class TraceWriter:
    """JSON Lines of one play's events to a text stream; `now()` gives each event's time (epoch seconds)."""

    def __init__(self, stream, now: Callable[[], float], name: str = "trace"):
        self._stream = stream
        self._now = now
        self.name = name
        self._servers: dict[str, str] = {}  # server id -> its JSON text, encoded once
        self.lines = 0
        self.closed = False

    @classmethod
    def open(cls, path: str, now: Callable[[], float]) -> "TraceWriter":
        """A writer to a new (or truncated) file at `path`; a path that cannot be written is a UsageError."""
        if os.path.isdir(path):
            raise UsageError(f"--trace {path}: is a directory")
        try:
            stream = open(path, "w", encoding="utf-8", buffering=BUFFER_BYTES)
        except OSError as err:
            raise UsageError(f"--trace {path}: cannot write the trace: {err.strerror or err}") from None
        return cls(stream, now, name=path)

    # -- events --------------------------------------------------------------------------------------

    def header(self, movie: str, client: str, pid: int | None = None) -> None:
        self._write({"v": TRACE_VERSION, "event": "header", "t": round(self._now(), 6), "format": TRACE_FORMAT,
                     "movie": movie, "client": client, "pid": os.getpid() if pid is None else pid}, flush=True)

    def strategy(self, ruid: int | None, revision: int, reason: str, assignments: Mapping[str, FrameMask]) -> None:
        self._write({"event": "strategy", "t": round(self._now(), 6), "ruid": ruid, "revision": revision,
                     "reason": reason, "assignments": {s: m.to_text() for s, m in assignments.items()}}, flush=True)

    def frame(self, index: int, server: str, revision: int, duplicate: bool, arrival: str) -> None:
        """One line per frame: formatted by hand (json.dumps costs several times more), same JSON."""
        if self.closed:
            return
        quoted = self._servers.get(server)
        if quoted is None:
            quoted = self._servers[server] = json.dumps(server)
        self._put(f'{{"event":"frame","t":{self._now():.6f},"index":{int(index)},"server":{quoted},'
                  f'"revision":{int(revision)},"duplicate":{"true" if duplicate else "false"},'
                  f'"arrival":"{arrival}"}}\n')

    def end(self, state: str) -> None:
        self._write({"event": "end", "t": round(self._now(), 6), "state": state}, flush=True)

    def close(self) -> None:
        """Flush and close; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        try:
            self._stream.close()
        except OSError as err:
            log.warning("--trace %s: the last lines were not written: %s", self.name, err)

    # -- writing -------------------------------------------------------------------------------------

    def _write(self, obj: dict, flush: bool = False) -> None:
        if self.closed:
            return
        self._put(json.dumps(obj, separators=(",", ":")) + "\n", flush)

    def _put(self, line: str, flush: bool = False) -> None:
        try:
            self._stream.write(line)
            if flush:
                self._stream.flush()
        except (OSError, ValueError) as err:
            log.warning("--trace %s: writing failed (%s); the trace stops here, the play goes on", self.name, err)
            self.closed = True
            try:
                self._stream.close()
            except (OSError, ValueError):
                pass
            return
        self.lines += 1
