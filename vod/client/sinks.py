"""Where played frames go: an MJPEG AVI file, an HTTP MJPEG stream, an OpenCV window.

Every sink gets the stored JPEG bytes of each frame, in order, at its playout
time (`Player` fans them out). Sinks that touch files or decode JPEGs are
`threaded`: their `write` runs on the client's worker thread. The HTTP sink
only writes to sockets and runs on the reactor.

Sink interface: `open()` (may return a Deferred; `ready` is a Deferred that
fires when playback may start, e.g. once the first viewer is connected),
`write(index, jpeg)`, `close()` (finish cleanly), `abort()` (discard).
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any, Callable

from twisted.internet import defer, error as net_error
from twisted.internet.defer import Deferred

from vod.client import avi
from vod.client.httpview import BOUNDARY, ViewerFactory, ViewerProtocol
from vod.errors import MediaError, UsageError, VodError

log = logging.getLogger(__name__)



# -- the MJPEG AVI file -----------------------------------------------------------------------------


def check_output_path(path: str) -> None:
    """What can be said of an output path before anything is written (the CLI asks at once)."""
    if not path.lower().endswith(".avi"):
        raise UsageError(f"--output {path}: must be an .avi file (Motion-JPEG in AVI)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--output {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--output {path}: is a directory")


class MjpegAviWriter:
    """JPEG frames, unchanged, into an MJPEG AVI (`vod.client.avi`); atomic: the real name appears only on `close`.

    Blocking: run it on the worker thread.
    """

    def __init__(self, path: str, fps: float, size: tuple[int, int] | None = None, *,
                 segment_bytes: int = avi.SEGMENT_BYTES):
        check_output_path(path)
        self.path = path
        self.partial = path[:-4] + f".{os.getpid()}.partial.avi"
        self.fps = fps
        self._size = size if size and all(size) else None
        self._segment_bytes = segment_bytes
        self._file: avi.MjpegAviFile | None = None
        self.frames = 0
        self.bytes = 0
        try:  # fail now, not after the movie has been fetched
            self._fd: int | None = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as err:
            raise UsageError(f"--output {path}: cannot create a file in {os.path.dirname(os.path.abspath(path))} "
                             f"({err.strerror})") from None

    def write(self, jpeg: bytes) -> None:
        self.write_many([jpeg])

    def write_many(self, jpegs: list[bytes]) -> None:
        if not jpegs:
            return
        try:
            if self._file is None:
                size = self._size or avi.jpeg_dimensions(jpegs[0])
                if size is None:
                    raise MediaError(f"{self.path}: the first frame is not a JPEG with a frame header")
                self._file = avi.MjpegAviFile(self._fd, size[0], size[1], self.fps,
                                              segment_bytes=self._segment_bytes)
            self._file.write_many(jpegs)
        except OSError as err:
            raise self._write_failed(err) from None
        finally:
            if self._file is not None:
                self.frames, self.bytes = self._file.frames, self._file.bytes

    def _write_failed(self, err: OSError) -> MediaError:
        return MediaError(f"--output {self.path}: writing failed after {self.frames} frames ({err.strerror}): "
                          "is the disk full? Free some space or write elsewhere")

    def close(self) -> int:
        """Finish the file and give it its real name; returns the frame count."""
        if self._file is None:
            self.abort()
            raise MediaError(f"--output {self.path}: no frame was played, so no file was written")
        try:
            self._file.close()
            os.fsync(self._fd)
        except OSError as err:
            self.abort()
            raise self._write_failed(err) from None
        os.close(self._fd)
        self._fd = None
        os.replace(self.partial, self.path)
        return self.frames

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass


class AviSink:
    threaded = True
    name = "avi"

    def __init__(self, path: str, fps: float, size: tuple[int, int] | None = None):
        self.path, self._fps, self._size = path, fps, size
        self._writer: MjpegAviWriter | None = None
        self.ready: Deferred = defer.succeed(None)

    def open(self) -> None:
        self._writer = MjpegAviWriter(self.path, self._fps, self._size)

    def write(self, index: int, jpeg: bytes) -> None:
        self._writer.write(jpeg)

    def write_many(self, frames: list[tuple[int, bytes]]) -> None:
        self._writer.write_many([jpeg for _, jpeg in frames])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()

    def describe(self) -> dict[str, Any]:
        return {"output": self.path, "frames_written": self._writer.frames if self._writer else 0}


# -- the HTTP MJPEG stream --------------------------------------------------------------------------


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{background:#111;color:#ddd;font-family:sans-serif;text-align:center}}
img{{max-width:100%;margin-top:1em}}</style></head>
<body><h1>{title}</h1><img src="/stream.mjpg" alt="{title}">
<p>The stream plays at the movie's frame rate; reload to see it again from now.</p></body></html>
"""


def _part(jpeg: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
    return head + jpeg + b"\r\n"


class HttpSink:
    """`multipart/x-mixed-replace` MJPEG at /stream.mjpg (what browsers and `ffmpeg -f mpjpeg` read) and a page
    at / that shows it. Frames go out as the playout releases them, so at the movie's frame rate.

    Playback waits for the first viewer (`ready`), so whoever opens the URL sees the movie from its start.
    """

    threaded = False
    name = "http"

    def __init__(self, reactor, host: str, port: int, title: str, wait_for_viewer: bool = True):
        self._reactor = reactor
        self.host, self.port = host, port
        self.page = PAGE.format(title=html.escape(title)).encode("utf-8")
        self._listening = None
        self._viewers: list[ViewerProtocol] = []
        # Waiting lets whoever opens the URL see the movie from frame 0; a demo plays at once instead.
        self.ready: Deferred = Deferred() if wait_for_viewer else defer.succeed(None)
        self.closed = False
        self.viewers_total = 0
        self.frames_sent = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def open(self) -> None:
        """Listen (once: the CLI opens it early, to print the URL and fail fast on a busy port)."""
        if self._listening is not None:
            return
        try:
            self._listening = self._reactor.listenTCP(self.port, ViewerFactory(self), interface=self.host)
        except net_error.CannotListenError as err:
            raise UsageError(f"--http {self.host}:{self.port}: cannot listen ({err.socketError}); "
                             "choose another port (0 picks a free one)") from None
        self.port = self._listening.getHost().port

    def viewer_came(self, viewer: ViewerProtocol) -> None:
        self._viewers.append(viewer)
        self.viewers_total += 1
        if not self.ready.called:
            self.ready.callback(None)

    def viewer_gone(self, viewer: ViewerProtocol) -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)

    def write(self, index: int, jpeg: bytes) -> None:
        if not self._viewers:
            return
        part = _part(jpeg)
        for viewer in list(self._viewers):
            viewer.send(part)
        self.frames_sent += 1

    def close(self) -> Deferred:
        """End every viewer's stream and stop listening.

        No closing delimiter ("--vodframe--"): ffmpeg's mpjpeg demuxer reads it as a part with no headers
        and reports "Invalid data found" (ffmpeg 5.1, tested); the end of the response is enough for
        browsers too.
        """
        self.closed = True
        for viewer in list(self._viewers):
            viewer.finish()
        self._viewers.clear()
        return self._stop_listening()

    abort = close  # a viewer's stream ends the same way whether the movie finished or not

    def _stop_listening(self) -> Deferred:
        if self._listening is None:
            return defer.succeed(None)
        listening, self._listening = self._listening, None
        return defer.maybeDeferred(listening.stopListening)

    def describe(self) -> dict[str, Any]:
        return {"http": self.url, "viewers": self.viewers_total, "frames_sent": self.frames_sent}


# -- the window -------------------------------------------------------------------------------------


def gui_backend() -> str | None:
    """OpenCV's GUI backend (GTK, QT, WIN32UI...), None for a headless build."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name.strip() == "GUI":
            value = value.strip()
            return None if not value or value.upper() == "NONE" else value
    return None


class WindowSink:
    """An OpenCV window (cv2.imshow). HighGUI wants all its calls on one thread: the worker's."""

    threaded = True
    name = "window"

    def __init__(self, title: str):
        if gui_backend() is None:
            raise UsageError("--window needs OpenCV with a GUI, and this one is headless "
                             "(opencv-python-headless); install opencv-python for windows, or watch with "
                             "--http 127.0.0.1:8080 in a browser")
        self.title = title
        self.ready: Deferred = defer.succeed(None)
        self.on_key: Callable[[int], None] | None = None  # hook for later: pause/resume from the window

    def open(self) -> None:
        pass

    def write(self, index: int, jpeg: bytes) -> None:
        import cv2
        import numpy as np

        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is not None:
            cv2.imshow(self.title, image)
        key = cv2.waitKey(1)
        if key >= 0 and self.on_key is not None:
            self.on_key(key)

    def close(self) -> None:
        import cv2

        cv2.destroyAllWindows()

    abort = close

    def describe(self) -> dict[str, Any]:
        return {"window": self.title}


# -- the fan-out ------------------------------------------------------------------------------------


class Player:
    """Hands each played frame to every sink, in order.

    Frames whose payload is elsewhere (None: held in the cache) are read on the
    worker; threaded sinks write there too, in the same job, so the worker's
    FIFO keeps the order; reactor sinks write when the job comes back, which is
    in the same order. Frames in hand, with no read ahead of them, go to the
    reactor sinks at once, before the worker's job: an HTTP viewer does not
    wait for the AVI (whose first write opens the file, a
    tenth of a second at start-up).
    """

    def __init__(self, worker, sinks: list, read_cached: Callable[[int], bytes] | None,
                 on_error: Callable[[Exception], None], on_played: Callable[[], None]):
        self._worker = worker
        self._threaded = [s for s in sinks if s.threaded]
        self._reactor_sinks = [s for s in sinks if not s.threaded]
        self._read_cached = read_cached
        self._on_error = on_error
        self._on_played = on_played
        self.in_flight = 0
        self.failed = False
        self._reads = 0  # jobs with a cache read whose reactor sinks' writes wait for them

    def play(self, index: int, payload: bytes | None) -> None:
        self.play_many([(index, payload)])

    def play_many(self, frames: list[tuple[int, bytes | None]]) -> None:
        """Frames in order, (index, payload or None) each: one worker job for all of them, not one per frame
        (a download releases dozens at once; each job is a thread round trip)."""
        if self.failed or not frames:
            return
        self.in_flight += len(frames)
        if not self._reads and None not in dict(frames).values():
            d = defer.maybeDeferred(self._on_reactor, frames)
            if self._threaded:
                d.addCallback(lambda _: self._worker.submit(self._in_thread, frames))
        else:
            self._reads += 1
            d = self._worker.submit(self._in_thread, frames)
            d.addCallback(self._on_reactor)
            d.addBoth(self._read_done)
        d.addErrback(self._failed)
        d.addBoth(self._done, len(frames))

    def _in_thread(self, frames: list[tuple[int, bytes | None]]) -> list[tuple[int, bytes]]:
        out = [(index, self._read_cached(index) if payload is None else payload) for index, payload in frames]
        for sink in self._threaded:
            write_many = getattr(sink, "write_many", None)
            if write_many is not None:  # the AVI: one writev for the batch
                write_many(out)
            else:
                for index, payload in out:
                    sink.write(index, payload)
        return out

    def _on_reactor(self, frames: list[tuple[int, bytes]]) -> None:
        for index, payload in frames:
            for sink in self._reactor_sinks:
                sink.write(index, payload)

    def _read_done(self, result):
        self._reads -= 1
        return result

    def _failed(self, failure) -> None:
        if not self.failed:
            self.failed = True
            err = failure.value
            self._on_error(err if isinstance(err, VodError) else MediaError(f"playing a frame failed: {err}"))

    def _done(self, _, count: int) -> None:
        self.in_flight -= count
        self._on_played()
