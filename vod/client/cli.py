"""`vod-client`: request a movie, receive it from several servers at once, play it, cache it."""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sys
from typing import Any, Sequence, TextIO

from vod.addr import parse_addr, parse_addr_list
from vod.client.cache import default_cache_root
from vod.cliutil import ArgumentParser, run
from vod.errors import UsageError, VodError
from vod.logsetup import setup_logging
from vod.media.ids import check_movie_id
from vod.credentials import add_credential_argument, read_credential
from vod.secrets import add_secret_argument, read_secret

log = logging.getLogger("vod.client")

# Six frames at 24 fps: the first frame of up to six striped servers is in before the first is shown.
DEFAULT_STARTUP = 0.25
STATUS_EVERY = 0.25
EXIT_INCOMPLETE = 1
EXIT_CANCELLED = 130


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vod-client", description=(
        "Request a movie from a domain, receive its frames from several servers at once, play and cache them."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("play", formatter_class=parser.formatter_class, help="play a movie", description=(
        "Play MOVIE_ID: ask the coordinator for the frames not in the cache, take them from the servers of the "
        "strategy it assigns, play them at the movie's frame rate into the chosen outputs, keep them in the "
        "cache, and report CDONE. A movie wholly in the cache plays without any server. With --http, playback "
        "starts when the first viewer opens the URL, so the viewer sees the movie from its start. On a "
        "terminal, p or space pauses and resumes (the servers stop sending meanwhile); SIGUSR1 does the same."))
    p.add_argument("movie", metavar="MOVIE_ID", help="the movie's id in the domain's catalogue")
    p.add_argument("--domain", required=True, help="the domain (group of servers and clients) to join")
    p.add_argument("--coordinators", required=True, metavar="HOST:PORT,...",
                   help="listen addresses of the coordinator replicas")
    p.add_argument("--id", dest="client_id", default=default_client_id(), help="this client's member id")
    p.add_argument("--output", metavar="OUT.avi", help="write the movie, frames unchanged, to this MJPEG AVI")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve the movie as an MJPEG stream (and a page showing it) here; port 0 picks one")
    p.add_argument("--no-wait-viewer", action="store_true",
                   help="with --http: start playing at once, not when the first viewer connects")
    p.add_argument("--window", action="store_true", help="show the movie in an OpenCV window (needs a GUI build)")
    p.add_argument("--fast", action="store_true",
                   help="take frames as fast as the servers send them (no real-time pacing); not with --http "
                        "or --window")
    p.add_argument("--cache", metavar="DIR", default=default_cache_root(),
                   help="where frames are kept between plays ($XDG_CACHE_HOME/vod, else ~/.cache/vod)")
    p.add_argument("--no-cache", action="store_true", help="keep nothing, use nothing cached")
    p.add_argument("--lead", type=float, default=2.0, metavar="SECONDS",
                   help="how far ahead of the playhead servers may send")
    p.add_argument("--startup", type=float, default=DEFAULT_STARTUP, metavar="SECONDS",
                   help="movie time to hold before playback starts, so every server of the strategy has "
                        "delivered its first frames (they arrive in a burst, within milliseconds, when all is "
                        "well); 0 starts on the first frame and stalls when another server is a moment late")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for a coordinator to answer the join")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--trace", metavar="FILE", default=None,
                   help="write what the play applies and receives to FILE as JSON Lines (format version 1, in "
                        "the header line): each strategy or restripe with every server's frames, and each frame "
                        "received with its server, revision and whether it was a duplicate, all with epoch "
                        "times (the logs' clock); see vod/client/trace.py. Off by default")
    add_secret_argument(p)
    add_credential_argument(p)
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def client_key(args):
    """A viewer's own credential (--credential-file), else the domain secret; the coordinator records the
    request under the credential's user, and shows it to that user only."""
    if args.credential_file:
        if args.secret_file:
            raise UsageError("give --secret-file or --credential-file, not both")
        return read_credential(args.credential_file)
    return read_secret(args.secret_file)


def parse_listen(text: str, flag: str) -> tuple[str, int]:
    """HOST:PORT to listen on; port 0 asks the system for a free one."""
    host, sep, port = text.rpartition(":")
    if sep and host and port == "0":
        return host.strip("[]"), 0
    return parse_addr(text, flag)


def default_client_id() -> str:
    return f"client-{socket.gethostname().split('.')[0]}-{os.getpid()}"


def member_address(http: str | None) -> str:
    """The address the member joins with. A client listens nowhere (but for --http); the coordinator wants
    host:port, so the pid stands in for the port: unique on this host, stable for this process."""
    return http or f"{socket.gethostname()}:{1 + os.getpid() % 65535}"


# -- the live line and the summary ------------------------------------------------------------------


def status_line(status: dict[str, Any]) -> str:
    parts = [status["state"] + (" (paused)" if status.get("paused") else "")]
    if "total" in status:
        parts.append(f"held {status['held']}/{status['total']}")
        for server, s in status.get("per_server", {}).items():
            parts.append(f"{server} {s['received']}/{s['assigned']}" + ("" if s["state"] in ("streaming", "ended")
                                                                        else f" {s['state']}"))
        parts.append(f"buffer {status['buffered']:.1f} s")
        parts.append(f"stalls {status['stalls']} ({status['stall_ms']:.0f} ms)")
    return "  ".join(parts)


def summary_text(summary: dict[str, Any]) -> str:
    lines = []
    total = summary.get("frames_total")
    if summary.get("cdone"):
        lines.append(f"CDONE ruid={summary['ruid']} held={summary.get('frames_cached', 0) + summary['frames_received']}"
                     f"/{total}")
    if summary.get("local"):
        lines.append(f"played {summary.get('frames_played', 0)} frames of {summary['movie']} from the cache; "
                     "no server was asked")
    else:
        servers = summary.get("per_server", {})
        lines.append(f"played {summary.get('frames_played', 0)}/{total} frames of {summary['movie']}: "
                     f"{summary['frames_received']} received from {len(servers)} server(s), "
                     f"{summary.get('frames_cached', 0)} from the cache")
        if servers:
            lines.append("per server: " + ", ".join(f"{s} {n}" for s, n in servers.items()))
    startup = summary.get("startup_ms")
    lines.append(f"startup {'-' if startup is None else f'{startup:.0f} ms'}, stalls {summary['stalls']} "
                 f"({summary['stall_ms']:.0f} ms), rebuffer ratio {summary['rebuffer_ratio']:.4f}, duplicates "
                 f"{summary['duplicates']}, bad frames {summary.get('bad_frames', 0)}, reconnects "
                 f"{summary.get('reconnects', 0)}")
    if summary.get("frames_missing"):
        lines.append(f"incomplete: {summary['frames_missing']} frames never arrived; play again to fetch them")
    if summary.get("output"):
        lines.append(f"output: {summary['output']}")
    return "\n".join(lines)


class StatusLine:
    """One line on a terminal, rewritten in place while the movie plays."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._shown = False

    def show(self, text: str) -> None:
        self._stream.write("\r" + text[:max(20, _columns() - 1)] + "\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def _columns() -> int:
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        columns = 0
    return columns or 100  # 0: a pseudo-terminal that does not say


# -- pause and resume: keys on a terminal, SIGUSR1 ---------------------------------------------------

PAUSE_KEYS = (b"p", b"P", b" ")


class KeyReader:
    """Single keys from a terminal on the reactor (an IReadDescriptor on stdin): p or space toggles pause.

    The terminal goes to cbreak mode (keys come one by one, unechoed, Ctrl-C still interrupts) while the
    reader runs; `stop()` puts the mode back, and is safe to call more than once."""

    def __init__(self, reactor, fd: int, on_toggle):
        import termios
        import tty

        self._reactor = reactor
        self._fd = fd
        self._on_toggle = on_toggle
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
        reactor.addReader(self)

    @classmethod
    def for_stdin(cls, reactor, on_toggle) -> "KeyReader | None":
        """A reader of stdin when it is a terminal (and we run in its foreground); None otherwise."""
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
                return None
            return cls(reactor, fd, on_toggle)
        except (OSError, ValueError, AttributeError, ImportError):
            return None

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "vod-client keys"

    def doRead(self):
        try:
            data = os.read(self._fd, 64)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.stop()  # the terminal went away: no more keys
            return None
        for key in (data[i:i + 1] for i in range(len(data))):
            if key in PAUSE_KEYS:
                self._on_toggle()
        return None

    def connectionLost(self, reason) -> None:
        self.stop()

    def stop(self) -> None:
        if self._saved is None:
            return
        import termios

        saved, self._saved = self._saved, None
        self._reactor.removeReader(self)
        try:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
        except (OSError, termios.error):
            pass


def install_pause_signal(reactor, on_toggle):
    """SIGUSR1 toggles pause (the hook for scripts, tests and `vod demo`); returns a function undoing it."""
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return lambda: None
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(on_toggle))
    return lambda: signal.signal(signal.SIGUSR1, previous)


# -- the command ------------------------------------------------------------------------------------


def check_arguments(args) -> None:
    check_movie_id(args.movie)
    coordinators = parse_addr_list(args.coordinators, "--coordinators")
    if args.output:
        from vod.client.sinks import check_output_path
        check_output_path(args.output)
    if args.http:
        parse_listen(args.http, "--http")
    if args.fast and (args.http or args.window):
        raise UsageError("--fast takes frames as fast as the servers send them, but --http and --window play "
                         "in real time: drop --fast, or use it with --output alone")
    if args.lead <= 0 or args.startup < 0 or args.timeout <= 0:
        raise UsageError("--lead and --timeout must be > 0, --startup >= 0")
    args.coordinator_list = coordinators


def open_trace(args):
    """The --trace writer (its header written), or None; a path that cannot be written is a UsageError."""
    if not args.trace:
        return None
    import time

    from vod.client.trace import TraceWriter
    trace = TraceWriter.open(args.trace, time.time)
    trace.header(args.movie, args.client_id)
    return trace


def cmd_play(args) -> int:
    check_arguments(args)
    trace = open_trace(args)
    try:
        return _play(args, trace)
    finally:
        if trace is not None:
            trace.close()


def _play(args, trace) -> int:
    # The modules imported here are most of a play's start-up (~0.2 s before its first frame can be asked
    # for); they make nothing that is garbage, so the cyclic collector's passes over them are pure delay
    # (~10 ms). Collect nothing while importing, then freeze what they made out of all later collections.
    gc.disable()
    try:
        from twisted.internet import reactor

        from vod.client.cache import FrameCache
        from vod.client.session import PlaybackSession, PlayOptions, PlayState
        from vod.client.sinks import AviSink, HttpSink, WindowSink
        from vod.client.worker import ThreadWorker
        from vod.groups.member import GroupMember
    finally:
        gc.enable()
    gc.freeze()

    setup_logging(args.log_level)
    client_id = args.client_id
    window = WindowSink(f"vod: {args.movie}") if args.window else None  # exits 2 at once when headless
    http = None
    if args.http:
        host, port = parse_listen(args.http, "--http")
        http = HttpSink(reactor, host, port, f"vod: {args.movie}", wait_for_viewer=not args.no_wait_viewer)
        http.open()
        when = "now" if args.no_wait_viewer else "when the first viewer connects"
        print(f"vod-client: watch {args.movie} at {http.url} (stream {http.url}stream.mjpg); "
              f"playback starts {when}", file=sys.stderr, flush=True)
    cache = None if args.no_cache else FrameCache(args.cache, args.movie)

    def member_factory(on_event):
        key = client_key(args)
        return GroupMember(reactor, args.coordinator_list, key, client_id, "client", args.domain,
                           member_address(http and f"{http.host}:{http.port}"), user=getattr(key, "user", ""),
                           on_event=on_event)

    def make_sinks(meta):
        sinks = []
        if args.output:
            sinks.append(AviSink(args.output, meta.fps, (meta.width, meta.height)))
        sinks += [s for s in (http, window) if s is not None]
        return sinks

    worker = ThreadWorker(reactor)
    session = PlaybackSession(reactor, args.movie, client_id, member_factory=member_factory, cache=cache,
                              worker=worker, make_sinks=make_sinks,
                              options=PlayOptions(fast=args.fast, lead=args.lead, startup_seconds=args.startup,
                                                  join_timeout=args.timeout), trace=trace)
    line = StatusLine(sys.stderr) if sys.stderr.isatty() and not args.json else None
    outcome: dict[str, Any] = {}

    def show_status():
        if line is not None and session.state.value not in ("done", "failed", "cancelled"):
            line.show(status_line(session.status()))

    def finished(result):
        outcome["result"] = result
        if reactor.running and not outcome.get("shutting_down"):
            reactor.stop()

    def start():
        outcome["keys"] = KeyReader.for_stdin(reactor, session.toggle_pause)
        if line is not None:
            from twisted.internet.task import LoopingCall
            ticker = LoopingCall(show_status)
            ticker.start(STATUS_EVERY)
            outcome["ticker"] = ticker
        session.start().addBoth(finished)

    def shutting_down():
        # Ctrl-C (or SIGTERM): cancel the request at the coordinator before the reactor goes.
        outcome["shutting_down"] = True
        if "result" in outcome:
            return None
        session.cancel()
        return session.when_finished().addTimeout(6.0, reactor).addErrback(lambda _: None)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    undo_signal = install_pause_signal(reactor, session.toggle_pause)
    try:
        reactor.run()
    finally:
        undo_signal()
        if outcome.get("keys") is not None:
            outcome["keys"].stop()  # the terminal's mode as it was
        if line is not None:
            line.clear()
        worker.stop()
        if trace is not None:
            trace.end(session.state.value)
    result = outcome.get("result")
    if result is None:
        raise VodError("vod-client: stopped before the play finished")
    if not hasattr(result, "state"):  # a Failure nobody expected
        raise VodError(f"vod-client: internal error: {result.getErrorMessage()}")
    if result.state is PlayState.CANCELLED:
        print("vod-client: cancelled", file=sys.stderr)
        if args.json:
            print(json.dumps(result.summary))
        return EXIT_CANCELLED
    if result.state is PlayState.FAILED:
        if args.json:
            print(json.dumps(result.summary))
        raise result.error or VodError("the play failed")
    if args.json:
        print(json.dumps(result.summary))
    else:
        print(summary_text(result.summary))
    return EXIT_INCOMPLETE if result.summary.get("frames_missing") else 0


def entry(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return cmd_play(args)


def main() -> int:
    return run(entry, prog="vod-client")


if __name__ == "__main__":
    raise SystemExit(main())
