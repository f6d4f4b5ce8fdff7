"""One play of one movie: the client's state machine, from the cache and the coordinator to the last frame shown.

    IDLE --start--> OPENING_CACHE
    OPENING_CACHE --cache_complete--> DRAINING                 (every frame cached: no coordinator, no server)
    OPENING_CACHE --cache_partial--> JOINING --joined--> LOOKING_UP (the catalogue: frame count, fps)
    LOOKING_UP --found--> REQUESTING (OpenRequest, wanted = the frames not cached) --opened--> AWAITING_STRATEGY
    LOOKING_UP --found_complete--> DRAINING                   (the cache turned out complete after all)
    AWAITING_STRATEGY --strategy--> STREAMING                 (one feed per server; Started on the first frame)
    AWAITING_STRATEGY --no_strategy--> REQUESTING              (OpenRequest again, same request id: same RUID)
    STREAMING --strategy--> STREAMING                          (restripe: fence, add, drop feeds)
    STREAMING --complete--> DRAINING                           (every wanted frame in: CDone, feeds stopped)
    STREAMING --settled--> STREAMING                           (frames missing, none can come: ask once more)
    STREAMING --give_up--> DRAINING                            (still missing: CDone with what is held)
    DRAINING --played_out--> CLOSING --closed--> DONE          (sinks finished, the AVI renamed into place)
    AWAITING_STRATEGY/STREAMING --dissolved/request_ended--> FAILED  (the coordinator ended the request)
    any live state --fail--> FAILED, --cancel--> CANCELLED

All transitions are in `PlaybackSession._TRANSITIONS`. Inputs come from the
group member (events, command answers), the feeds, the worker and timers;
each is queued and applied whole, as in `GroupMember`.

Pause is not a state: a play can be paused while it streams or while it
drains, so it is a flag of the playout buffer and the feeds (`pause()`,
`resume()`: the hook for a later terminal or window control).
"""

from __future__ import annotations

import base64
import enum
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from vod.statemachine import SerialInputs
from vod.client.cache import FrameCache, MovieMeta
from vod.client.feed import Connector, FeedState, ServerFeed
from vod.client.playout import DEFAULT_LEAD, Arrival, PlayoutBuffer
from vod.client.sinks import Player
from vod.errors import UsageError, VodError
from vod.groups import wire
from vod.groups.events import GroupDissolved, RequestChanged, StrategyAssigned
from vod.groups.member import CoordinatorRefused, GroupUnavailable
from vod.groups.state import video_group
from vod.strategy.mask import FrameMask
from vod.strategy.placement import Strategy, StrategyError
from vod.stream.protocol import FrameMessage

log = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between Progress reports (the coordinator restripes from the latest)
TICK = 0.1  # seconds between credit grants and end-of-stream checks
SETTLE_GRACE = 2.0  # seconds to wait, once every feed is done with frames still missing, for a restripe
# seconds to wait, when only the feeds that owe the next missing frame are done, for a restripe; longer than
# any restripe takes (failure timeout + a new primary's grace), so it only ends what would otherwise hang
BLOCKED_GRACE = 5.0
REFETCH_ROUNDS = 1  # reconnections to servers that still owe frames before giving the frames up
STRATEGY_PATIENCE = 5.0  # seconds to wait for the strategy before asking again
OPEN_ATTEMPTS = 3
JOIN_TIMEOUT = 10.0
MAX_IN_FLIGHT = 32  # frames handed to the sinks but not written yet (bounds memory)
# In a download, a quarter of the credit window: the worker then writes the AVI or the cache in batches of
# hundreds of frames, not 32 (each batch is a thread round trip and a wakeup of the reactor).
FAST_IN_FLIGHT_SHARE = 4
# The credit window of a download (--fast): frames the servers may send beyond the playhead. The play-mode
# default, twice the lead (96 frames at 24 fps, 1.5 MB of 640x360 JPEGs), costs a credit round trip every
# 0.4 MB on loopback, where the servers then wait for it. Credit moves by a quarter of the window; each move
# is a CREDIT to every server and a wakeup of each on this machine's two cores, so a wide window pays:
# 2,048 frames (36 MB of 640x360 JPEGs) sends a quarter as many CREDITs as 512 did. Memory stays bounded for
# big pictures too: at most FAST_BUFFER_BYTES of JPEGs at an (ample) bit per pixel.
FAST_BUFFER_FRAMES = 2048
FAST_BUFFER_BYTES = 64 * 1024 * 1024
CLOSE_PATIENCE = 5.0  # seconds the last coordinator calls (CDone, Cancel, Leave) may take


def fast_buffer_frames(meta: MovieMeta, lead: float) -> int:
    """The credit window of a download: FAST_BUFFER_FRAMES, fewer for big pictures, never less than the
    play-mode window (twice the lead); just that when the catalogue does not give the picture size."""
    play_window = 2 * math.ceil(lead * meta.fps)
    if not (meta.width and meta.height):
        return play_window
    return max(play_window, min(FAST_BUFFER_FRAMES, FAST_BUFFER_BYTES * 8 // (meta.width * meta.height)))


class PlayState(enum.StrEnum):
    IDLE = "idle"
    OPENING_CACHE = "opening-cache"
    JOINING = "joining"
    LOOKING_UP = "looking-up"
    REQUESTING = "requesting"
    AWAITING_STRATEGY = "awaiting-strategy"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSING = "closing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (PlayState.DONE, PlayState.FAILED, PlayState.CANCELLED)


class PlayFailed(VodError):
    """The play could not finish: the message says why and what to do."""


@dataclass
class PlayOptions:
    fast: bool = False
    lead: float = DEFAULT_LEAD
    buffer_frames: int | None = None
    startup_seconds: float = 0.0  # 0: start on the first frame
    join_timeout: float = JOIN_TIMEOUT
    feed_retries: int = 5


@dataclass
class PlayResult:
    state: PlayState
    error: VodError | None
    summary: dict[str, Any] = field(default_factory=dict)


class PlaybackSession(SerialInputs):
    """Play `movie_id` as member `client_id`: `start()` returns a Deferred that fires with a `PlayResult`.

    `member_factory(on_event)` makes the GroupMember (called only if the cache
    cannot play the movie alone); `cache` may be None (nothing kept); `sinks`
    are built by `make_sinks(meta)` once the movie's frame rate is known.
    """

    def __init__(self, reactor, movie_id: str, client_id: str, *, member_factory: Callable[[Callable], Any],
                 cache: FrameCache | None, worker, make_sinks: Callable[[MovieMeta], list],
                 options: PlayOptions | None = None, connector: Connector | None = None, clock=None,
                 trace=None):
        self._reactor = reactor
        self._clock = clock or reactor
        self.movie_id = movie_id
        self.client_id = client_id
        self.request_id = uuid.uuid4().hex  # fresh per play; retries of the same OpenRequest reuse it
        self._member_factory = member_factory
        self._cache = cache
        self._worker = worker
        self._make_sinks = make_sinks
        self.options = options or PlayOptions()
        self._connector = connector
        self._trace = trace  # a vod.client.trace.TraceWriter (--trace), or None

        self.state = PlayState.IDLE
        self.meta: MovieMeta | None = None
        self.member = None
        self.ruid: int | None = None
        self.revision = 0
        self.buffer: PlayoutBuffer | None = None
        self.sinks: list = []
        self.feeds: dict[str, ServerFeed] = {}
        self.error: VodError | None = None
        self.request_state = ""
        self.request_reason = ""
        self.cdone_sent = False
        self.local = False
        self._player: Player | None = None
        self._max_in_flight = MAX_IN_FLIGHT
        self._early: dict[int, StrategyAssigned] = {}  # strategies that came before the OpenRequest answer
        self._open_attempts = 0
        self._refetches = 0
        self._started_sent = False
        self._calls: list[Deferred] = []  # coordinator calls to wait for before leaving
        self._timers: dict[str, Any] = {}
        self._loops: dict[str, LoopingCall] = {}
        self._credit_granted = 0
        self._pumping = False
        self._pump_again = False
        self._settle_since: float | None = None
        self._finished: Deferred | None = None
        self._finish_waiters: list[Deferred] = []
        self._pause_wanted = False  # pause() came before the buffer: applied by _prepare_play

    # -- public API ----------------------------------------------------------------------------------

    def start(self) -> Deferred:
        if self.state is not PlayState.IDLE:
            raise RuntimeError("a PlaybackSession plays once")
        self._finished = Deferred()
        self._fire("start")
        return self._finished

    def when_finished(self) -> Deferred:
        """A Deferred that fires (with None) once the play is over and cleaned up."""
        d = Deferred()
        if self._finished is not None and self._finished.called:
            d.callback(None)
        else:
            self._finish_waiters.append(d)
        return d

    def cancel(self) -> None:
        """Give up the play (Ctrl-C): Cancel at the coordinator, discard the outputs."""
        self._fire("cancel")

    def pause(self) -> None:
        """Hold the playhead (no stall counted) and tell every server to stop sending (PAUSE).

        Before the buffer exists the wish is kept and applied once it does; feeds opened while paused (a
        restripe) start paused."""
        if self.paused or self.state in FINAL:
            return
        self._pause_wanted = True
        if self.buffer is not None:
            self.buffer.pause()
            for feed in self.feeds.values():
                feed.pause()
            self._cancel_timer("pump")
        log.info("paused at frame %s: %s", self.buffer.playhead if self.buffer else "-", self._counts())

    def resume(self) -> None:
        """Move the playhead again and tell the servers to go on (RESUME)."""
        if not self.paused:
            return
        self._pause_wanted = False
        if self.buffer is not None:
            self.buffer.resume()
            for feed in self.feeds.values():
                feed.resume()
        log.info("resumed at frame %s: %s", self.buffer.playhead if self.buffer else "-", self._counts())
        self._pump()

    def toggle_pause(self) -> None:
        """The terminal's p or space, and SIGUSR1."""
        if self.paused:
            self.resume()
        else:
            self.pause()

    @property
    def paused(self) -> bool:
        return self._pause_wanted if self.buffer is None else self.buffer.paused

    def _counts(self) -> str:
        if self.buffer is None:
            return "received 0"
        return f"received {self.buffer.stats.frames_received}, played {self.buffer.stats.frames_played}"

    def on_event(self, event) -> None:
        """The GroupMember's `on_event`."""
        if isinstance(event, StrategyAssigned):
            if self.ruid is None:
                if event.revision > getattr(self._early.get(event.ruid), "revision", 0):
                    self._early[event.ruid] = event
            elif event.ruid == self.ruid:
                self._fire("strategy", event=event)
        elif isinstance(event, RequestChanged):
            if event.request_id == self.request_id:
                self.request_state, self.request_reason = event.state, event.reason
                if event.state in ("failed", "cancelled"):
                    self._fire("request_ended")
        elif isinstance(event, GroupDissolved):
            if self.ruid is not None and event.group == video_group(self.ruid):
                # The RequestChanged that says why comes right after, from the same commit: let it in first.
                self._reactor.callLater(0, self._fire, "dissolved")

    # -- the state machine ---------------------------------------------------------------------------

    def _transition(self, input: str, attempt: int | None, data: dict[str, Any]) -> None:
        transition = self._TRANSITIONS.get((self.state, input))
        if transition is None:
            log.debug("play %s: %s ignored in state %s", self.request_id, input, self.state)
            return
        new_state, outputs = transition
        log.debug("play %s: %s --%s--> %s", self.request_id, self.state, input, new_state)
        self.state = new_state
        for output in outputs:
            try:
                output(self, **data)
            except VodError as err:
                self._fire("fail", error=err)
                break
            except Exception as err:  # a bug of ours: end the play cleanly rather than leave it hanging
                log.exception("play %s: %s failed", self.request_id, output.__name__)
                self._fire("fail", error=PlayFailed(f"internal error: {err}"))
                break

    def _later(self, d: Deferred, then: str, **data: Any) -> None:
        """When `d` fires, feed `then` with its result as `result`; its failure feeds `fail`."""
        d.addCallbacks(lambda result: self._fire(then, result=result, **data), self._failure)

    def _failure(self, failure) -> None:
        err = failure.value
        if isinstance(err, VodError):
            self._fire("fail", error=err)
        else:
            log.error("play %s: unexpected failure: %s", self.request_id, failure.getTraceback())
            self._fire("fail", error=PlayFailed(f"internal error: {failure.getErrorMessage()}"))

    # -- outputs: setting up -------------------------------------------------------------------------

    def _open_cache(self, **_: Any) -> None:
        if self._cache is None:
            self._fire("cache_partial")
            return
        self._later(self._worker.submit(lambda: (self._cache.open(), self._cache.held())[1]), "cache_opened")

    def _cache_opened(self, result: FrameMask, **_: Any) -> None:
        meta = self._cache.meta
        if self._cache.discarded_bytes:
            log.warning("cache %s: dropped %d bytes of frames torn by an earlier crash", self._cache.path,
                        self._cache.discarded_bytes)
        if meta is not None and result.count() == meta.frame_count:
            self._fire("cache_complete", meta=meta, held=result)
        else:
            self._fire("cache_partial")

    def _join(self, **_: Any) -> None:
        self.member = self._member_factory(self.on_event)
        d = self.member.start()
        d.addTimeout(self.options.join_timeout, self._reactor)
        d.addErrback(self._explain_join_failure)
        self._later(d, "joined")

    def _explain_join_failure(self, failure):
        if failure.check(defer.TimeoutError, GroupUnavailable):
            raise PlayFailed(f"no coordinator answered within {self.options.join_timeout:g} s at "
                             f"{', '.join(self.member.coordinators)}: check --coordinators and that "
                             "vod-coordinator runs there")
        if failure.check(CoordinatorRefused):
            raise PlayFailed(f"the coordinator refused us: {failure.getErrorMessage()} (is the --secret-file or "
                             "--credential-file the domain's and current, and the --id not in use by another "
                             "client?)")
        return failure

    def _look_up(self, **_: Any) -> None:
        d = self.member.call(wire.Requests).addCallback(self._catalogue_entry)
        if self._cache is not None:
            d.addCallback(lambda meta: self._worker.submit(self._adopt, meta))
        else:
            d.addCallback(lambda meta: (meta, FrameMask(meta.frame_count)))
        d.addErrback(self._explain_refusal)
        self._later(d, "looked_up")

    def _catalogue_entry(self, answer: dict) -> MovieMeta:
        movies = answer.get("movies") or {}
        entry = movies.get(self.movie_id)
        if entry is None:
            known = ", ".join(sorted(movies)) or "none"
            raise UsageError(f"unknown movie {self.movie_id!r}: the domain's servers hold {known} "
                             "(see vod-admin servers)")
        return MovieMeta.from_catalogue(self.movie_id, entry)

    def _adopt(self, meta: MovieMeta) -> tuple[MovieMeta, FrameMask]:
        dropped = self._cache.adopt(meta)
        if dropped:
            log.warning("cache %s held %d frames of another movie %s; dropped them", self._cache.path, dropped,
                        self.movie_id)
        return meta, self._cache.held()

    def _looked_up(self, result: tuple[MovieMeta, FrameMask], **_: Any) -> None:
        meta, held = result
        if held.count() == meta.frame_count:
            self._fire("found_complete", meta=meta, held=held)
        else:
            self._fire("found", meta=meta, held=held)

    def _prepare_play(self, meta: MovieMeta, held: FrameMask, **_: Any) -> None:
        """The buffer and the sinks, once the frame rate and what is held are known."""
        self.meta = meta
        wanted = held.missing()
        self.sinks = self._make_sinks(meta)
        startup = max(1, round(self.options.startup_seconds * meta.fps))
        gated = any(not s.ready.called for s in self.sinks)
        buffer_frames = self.options.buffer_frames
        if buffer_frames is None and self.options.fast:
            buffer_frames = fast_buffer_frames(meta, self.options.lead)
        self.buffer = PlayoutBuffer(meta.frame_count, meta.fps, wanted, held, self._clock, lead=self.options.lead,
                                    buffer_frames=buffer_frames, startup_frames=startup,
                                    fast=self.options.fast, gated=gated)
        if self.options.fast:
            self._max_in_flight = max(MAX_IN_FLIGHT, self.buffer.buffer_frames // FAST_IN_FLIGHT_SHARE)
        if self._pause_wanted:
            self.buffer.pause()
        read = self._cache.read if self._cache is not None else None
        self._player = Player(self._worker, self.sinks, read, lambda err: self._fire("fail", error=err),
                              self._pump)
        for sink in self.sinks:
            if sink.threaded:
                self._worker.submit(sink.open).addErrback(self._failure)
            else:
                sink.open()
            sink.ready.addCallback(lambda _: self._sink_ready())
        self._loops["tick"] = self._loop(self._tick, TICK)

    def _sink_ready(self) -> None:
        if self.buffer is not None and all(s.ready.called for s in self.sinks):
            self.buffer.open_gate()
            self._pump()

    def _play_local(self, **_: Any) -> None:
        self.local = True
        self.buffer.finish_input()
        self._pump()

    def _open_request(self, **_: Any) -> None:
        self._open_attempts += 1
        if self._open_attempts > OPEN_ATTEMPTS:
            raise PlayFailed(f"the coordinator gave no strategy for {self.movie_id} after {OPEN_ATTEMPTS} "
                             "requests; check the servers with vod-admin servers")
        wanted = base64.b64encode(self.buffer.missing.to_bytes()).decode("ascii")
        d = self.member.call(wire.OpenRequest, request_id=self.request_id, movie=self.movie_id, wanted=wanted)
        d.addErrback(self._explain_refusal)
        self._later(d, "opened")

    def _explain_refusal(self, failure):
        if failure.check(CoordinatorRefused):
            raise self._refused(failure.getErrorMessage())
        if failure.check(GroupUnavailable):
            raise PlayFailed(f"lost the coordinators: {failure.getErrorMessage()}")
        return failure

    def _refused(self, reason: str) -> PlayFailed:
        """The error for a request the coordinator refused or ended, with what the user can do about it."""
        kept = ("; the frames received so far are cached, so playing again fetches only the rest"
                if self._cache is not None and self.buffer is not None and self.buffer.stats.frames_received
                else "")
        if "no live server" in reason:
            return PlayFailed(f"no live server holds movie {self.movie_id}: start a vod-server with it, or wait "
                              f"for one to rejoin ({reason}){kept}")
        if self.ruid is None:
            return PlayFailed(f"the coordinator refused the request: {reason}")
        return PlayFailed(f"the coordinator ended request {self.ruid}: {reason}{kept}")

    def _await_strategy(self, result: dict, **_: Any) -> None:
        self.ruid = int(result["ruid"])
        if result.get("state") in ("failed", "cancelled", "done"):
            # A retried OpenRequest (after a failover) answers with the request as it is now.
            raise self._refused(self.request_reason or f"the request is {result['state']}")
        self._timers["strategy"] = self._reactor.callLater(STRATEGY_PATIENCE, self._fire, "no_strategy")
        early = self._early.pop(self.ruid, None)
        self._early.clear()
        if early is not None:
            self._fire("strategy", event=early)

    # -- outputs: streaming --------------------------------------------------------------------------

    def _apply_strategy(self, event: StrategyAssigned, **_: Any) -> None:
        if event.revision <= self.revision:
            return  # an older revision, or one seen already: act on the newest only
        try:
            strategy = Strategy.from_dict(event.strategy)
        except StrategyError as err:
            raise PlayFailed(f"the coordinator sent a strategy this client cannot read: {err}") from None
        self._cancel_timer("strategy")
        self.revision = event.revision
        log.info("RUID %d revision %d (%s): %s", self.ruid, event.revision, event.reason,
                 ", ".join(f"{a.server_id} {a.mask.count()} frames" for a in strategy.assignments))
        assigned = {a.server_id: a.mask for a in strategy.assignments}
        if self._trace is not None:
            self._trace.strategy(self.ruid, event.revision, event.reason, assigned)
        for server, feed in self.feeds.items():
            if server not in assigned and feed.state is not FeedState.CLOSED:
                feed.stop()  # failed or replaced: its frames went to others
        for server, mask in assigned.items():
            address = event.addresses.get(server)
            if address is None:
                log.warning("RUID %d: no data address for server %s; its frames will wait for a restripe",
                            self.ruid, server)
                continue
            feed = self.feeds.get(server)
            if feed is None or feed.state is FeedState.CLOSED:
                feed = ServerFeed(self._reactor, server, address, self.ruid, self.client_id, self,
                                  revision=event.revision, mask=mask, token=event.token, fast=self.options.fast,
                                  connector=self._connector, max_retries=self.options.feed_retries)
                self.feeds[server] = feed
                if self.paused:
                    feed.pause()  # remembered: its HELLO is followed by PAUSE
                feed.start()
            else:
                feed.update(event.revision, mask, address)
        if "progress" not in self._loops:
            self._loops["progress"] = self._loop(self._report_progress, PROGRESS_EVERY, now=False)

    # FeedListener, for the feeds
    def held_mask(self) -> FrameMask:
        return self.buffer.held

    def credit(self) -> int:
        return self.buffer.credit_until(self._clock.seconds())

    def frame_received(self, feed: ServerFeed, message: FrameMessage) -> None:
        self.frames_received(feed, [message])

    def frames_received(self, feed: ServerFeed, messages: list[FrameMessage]) -> None:
        """A feed's verified frames, one read's worth: merged one by one, then cached in one job and played in
        one round (per batch, not per frame: a download brings dozens of frames per read)."""
        if self.state is not PlayState.STREAMING:
            if self._trace is not None and self.buffer is not None:
                for message in messages:
                    self._trace.frame(message.index, feed.server_id, message.revision,
                                      self.buffer.holds(message.index), "ignored")
            return
        server = feed.server_id
        arrivals = self.buffer.receive_many([(m.index, m.payload) for m in messages], server)
        if self._trace is not None:
            for message, arrival in zip(messages, arrivals):
                self._trace.frame(message.index, server, message.revision, arrival is Arrival.DUPLICATE,
                                  arrival.value)
        accepted = Arrival.ACCEPTED in arrivals
        to_cache = [(m.index, m.payload, m.digest) for m, arrival in zip(messages, arrivals)
                    if arrival is Arrival.ACCEPTED or arrival is Arrival.LATE] if self._cache is not None else []
        if to_cache and self._cache is not None:
            self._worker.submit(self._cache.append_many, to_cache).addErrback(self._cache_failed)
        if accepted and not self._started_sent:
            self._started_sent = True
            self._call_quietly(wire.Started, ruid=self.ruid)
        if self.buffer.complete:
            self._fire("complete")
        self._pump()

    def feed_changed(self, feed: ServerFeed) -> None:
        self._settle_since = None  # re-checked on the next tick
        if feed.state is FeedState.WAITING:
            # A server's stream broke. If the server crashed, the coordinator restripes its frames within
            # milliseconds from our latest report: the periodic one can be a second old, and every frame
            # of that server we got since would be sent again by another.
            self._send_progress()

    def _cache_failed(self, failure) -> None:
        # The play can go on without the cache; only the next play loses.
        log.warning("%s; the play goes on without caching", failure.getErrorMessage())
        self._cache = None

    def _report_progress(self) -> None:
        if self.state is PlayState.STREAMING:
            self._send_progress()
            if self._cache is not None:
                self._worker.submit(self._cache.sync).addErrback(self._cache_failed)

    def _send_progress(self) -> None:
        if self.state is PlayState.STREAMING:
            held = base64.b64encode(self.buffer.held.to_bytes()).decode("ascii")
            self._call_quietly(wire.Progress, ruid=self.ruid, held=held)

    def _call_quietly(self, command, **arguments: Any) -> Deferred:
        """A coordinator call whose failure only costs a log line (Started, Progress)."""
        d = self.member.call(command, **arguments)
        d.addErrback(lambda f: log.info("%s for RUID %s not taken: %s", command.__name__, self.ruid,
                                        f.getErrorMessage()))
        return d

    def _tick(self) -> None:
        self._grant_credit(force=True)
        if self.state is PlayState.STREAMING:
            self._check_settled()

    def _check_settled(self) -> None:
        """Nothing that the play needs next can come: wait a little for a restripe, then ask again, then give
        up on the missing frames."""
        grace = self._blocked_grace()
        if grace is None:
            self._settle_since = None
            return
        now = self._clock.seconds()
        if self._settle_since is None:
            self._settle_since = now
        elif now - self._settle_since >= grace:
            self._settle_since = None
            self._fire("settled" if self._refetches < REFETCH_ROUNDS else "give_up")

    def _blocked_grace(self) -> float | None:
        """How long to wait for a restripe before asking again, or None while frames may still come.

        Every feed done with frames missing: SETTLE_GRACE. Also blocked, with a longer wait: the earliest
        missing frame is owed only by feeds that are done (one gave up reconnecting, say to a server that never
        learned its assignment) while the others are held back by the credit window behind that frame; the
        coordinator, which still thinks that server fine, would never restripe, and the play would hang."""
        if not self.feeds or self.buffer.complete:
            return None
        if all(f.done for f in self.feeds.values()):
            return SETTLE_GRACE
        first = self.buffer.missing.first()
        owners = [f for f in self.feeds.values() if first is not None and first in f.mask]
        return BLOCKED_GRACE if owners and all(f.done for f in owners) else None

    def _refetch(self, **_: Any) -> None:
        self._refetches += 1
        missing = self.buffer.missing
        owing = [f for f in self.feeds.values() if f.state is not FeedState.CLOSED and f.mask & missing]
        log.warning("RUID %d: %d frames still missing after every server finished; asking %s again",
                    self.ruid, missing.count(), ", ".join(f.server_id for f in owing) or "nobody")
        for feed in owing:
            feed.refetch()

    # -- outputs: ending -----------------------------------------------------------------------------

    def _send_cdone(self, **_: Any) -> None:
        self.cdone_sent = True
        held = self.buffer.held
        d = self.member.call(wire.CDone, ruid=self.ruid, held=base64.b64encode(held.to_bytes()).decode("ascii"))
        d.addErrback(lambda f: log.warning("CDone for RUID %d not taken: %s", self.ruid, f.getErrorMessage()))
        self._calls.append(d)

    def _stop_feeds(self, **_: Any) -> None:
        for feed in self.feeds.values():
            feed.stop()
        self._stop_loop("progress")

    def _finish_input(self, **_: Any) -> None:
        self.buffer.finish_input()
        self._pump()

    def _close_sinks(self, **_: Any) -> None:
        self._stop_timers()
        closing = [self._worker.submit(s.close) if s.threaded else defer.maybeDeferred(s.close) for s in self.sinks]
        closing += self._pending_calls()
        d = defer.gatherResults(closing, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        self._later(d, "closed")

    def _pending_calls(self) -> list[Deferred]:
        calls, self._calls = self._calls, []
        return [c.addTimeout(CLOSE_PATIENCE, self._reactor).addErrback(lambda _: None) for c in calls]

    def _record_error(self, error: VodError | None = None, **_: Any) -> None:
        if error is not None and self.error is None:
            self.error = error

    def _explain_ended(self, **_: Any) -> None:
        if self.error is None:
            self.error = self._refused(self.request_reason or "its video group was dissolved")

    def _abandon(self, **_: Any) -> None:
        """Stop everything; Cancel the request if the coordinator still thinks it is live."""
        self._stop_timers()
        for feed in self.feeds.values():
            feed.stop()
        aborting = [self._worker.submit(s.abort) if s.threaded else defer.maybeDeferred(s.abort)
                    for s in self.sinks]
        if self.ruid is not None and not self.cdone_sent and self.request_state not in ("done", "failed",
                                                                                          "cancelled"):
            d = self.member.call(wire.Cancel, ruid=self.ruid)
            d.addErrback(lambda f: log.info("Cancel of RUID %d not taken: %s", self.ruid, f.getErrorMessage()))
            self._calls.append(d)
        d = defer.DeferredList(aborting + self._pending_calls(), consumeErrors=True)
        d.addBoth(lambda _: self._leave())

    def _leave(self, **_: Any) -> Deferred:
        d = defer.succeed(None)
        if self.member is not None:
            d = self.member.stop().addTimeout(CLOSE_PATIENCE, self._reactor).addErrback(lambda _: None)
        if self._cache is not None:
            cache = self._cache
            d.addBoth(lambda _: self._worker.submit(cache.close)).addErrback(
                lambda f: log.warning("closing the cache: %s", f.getErrorMessage()))
        d.addBoth(lambda _: self._resolve())
        return d

    def _resolve(self) -> None:
        if self._finished is not None and not self._finished.called:
            self._finished.callback(PlayResult(self.state, self.error, self.summary()))
        waiters, self._finish_waiters = self._finish_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- pacing ----------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand the due frames to the sinks and wake up again at the next deadline.

        Not re-entrant: a frame the worker finishes at once calls back here while the frames due with it
        are still being handed over; that call only asks for another round.
        """
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        if self.buffer is None or self._player is None or self.state in FINAL or self.state is PlayState.CLOSING:
            return
        now = self._clock.seconds()
        room = self._max_in_flight - self._player.in_flight
        if room > 0:
            self._player.play_many(self.buffer.frames_due(now, limit=room))
        self._grant_credit()
        self._cancel_timer("pump")
        wakeup = self.buffer.next_wakeup(now)
        if wakeup is not None:
            self._timers["pump"] = self._reactor.callLater(max(0.0, wakeup - now), self._pump)
        if self.buffer.finished and self._player.in_flight == 0 and self.state is PlayState.DRAINING:
            self._fire("played_out")

    def _grant_credit(self, force: bool = False) -> None:
        """Move the servers' credit: at once when it jumped a quarter of the buffer, else every tick."""
        if self.buffer is None or not self.feeds:
            return
        until = self.buffer.credit_until(self._clock.seconds())
        step = max(1, self.buffer.buffer_frames // 4)
        # The last stretch of the movie is granted at once: waiting for the next tick idles the end.
        at_end = until >= self.buffer.frame_count
        if until > self._credit_granted and (force or at_end or until - self._credit_granted >= step):
            self._credit_granted = until
            for feed in self.feeds.values():
                feed.grant(until)

    # -- timers --------------------------------------------------------------------------------------

    def _loop(self, fn: Callable[[], None], interval: float, now: bool = True) -> LoopingCall:
        loop = LoopingCall(fn)
        loop.clock = self._reactor
        loop.start(interval, now=now).addErrback(lambda f: log.error("timer failed: %s", f.getTraceback()))
        return loop

    def _stop_loop(self, name: str) -> None:
        loop = self._loops.pop(name, None)
        if loop is not None and loop.running:
            loop.stop()

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _stop_timers(self, **_: Any) -> None:
        for name in list(self._timers):
            self._cancel_timer(name)
        for name in list(self._loops):
            self._stop_loop(name)

    # -- the table -----------------------------------------------------------------------------------

    _LIVE = (PlayState.IDLE, PlayState.OPENING_CACHE, PlayState.JOINING, PlayState.LOOKING_UP,
             PlayState.REQUESTING, PlayState.AWAITING_STRATEGY, PlayState.STREAMING, PlayState.DRAINING,
             PlayState.CLOSING)
    _TRANSITIONS: dict[tuple[PlayState, str], tuple[PlayState, tuple[Callable[..., None], ...]]] = {
        (PlayState.IDLE, "start"): (PlayState.OPENING_CACHE, (_open_cache,)),
        (PlayState.OPENING_CACHE, "cache_opened"): (PlayState.OPENING_CACHE, (_cache_opened,)),
        (PlayState.OPENING_CACHE, "cache_complete"): (PlayState.DRAINING, (_prepare_play, _play_local)),
        (PlayState.OPENING_CACHE, "cache_partial"): (PlayState.JOINING, (_join,)),
        (PlayState.JOINING, "joined"): (PlayState.LOOKING_UP, (_look_up,)),
        (PlayState.LOOKING_UP, "looked_up"): (PlayState.LOOKING_UP, (_looked_up,)),
        (PlayState.LOOKING_UP, "found_complete"): (PlayState.DRAINING, (_prepare_play, _play_local)),
        (PlayState.LOOKING_UP, "found"): (PlayState.REQUESTING, (_prepare_play, _open_request)),
        (PlayState.REQUESTING, "opened"): (PlayState.AWAITING_STRATEGY, (_await_strategy,)),
        (PlayState.AWAITING_STRATEGY, "no_strategy"): (PlayState.REQUESTING, (_open_request,)),
        (PlayState.AWAITING_STRATEGY, "strategy"): (PlayState.STREAMING, (_apply_strategy,)),
        (PlayState.STREAMING, "strategy"): (PlayState.STREAMING, (_apply_strategy,)),
        (PlayState.STREAMING, "complete"): (PlayState.DRAINING, (_send_cdone, _stop_feeds, _finish_input)),
        (PlayState.STREAMING, "settled"): (PlayState.STREAMING, (_refetch,)),
        (PlayState.STREAMING, "give_up"): (PlayState.DRAINING, (_send_cdone, _stop_feeds, _finish_input)),
        (PlayState.DRAINING, "played_out"): (PlayState.CLOSING, (_close_sinks,)),
        (PlayState.CLOSING, "closed"): (PlayState.DONE, (_leave,)),
        # dict.fromkeys, not comprehensions: a comprehension in a class body cannot see the outputs above.
        **dict.fromkeys([(state, input) for state in (PlayState.AWAITING_STRATEGY, PlayState.STREAMING)
                         for input in ("dissolved", "request_ended")], (PlayState.FAILED, (_explain_ended, _abandon))),
        **dict.fromkeys([(state, "fail") for state in _LIVE], (PlayState.FAILED, (_record_error, _abandon))),
        **dict.fromkeys([(state, "cancel") for state in _LIVE], (PlayState.CANCELLED, (_abandon,))),
    }

    # -- reporting -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A snapshot for the live terminal line."""
        out: dict[str, Any] = {"state": self.state.value, "ruid": self.ruid, "paused": self.paused}
        if self.buffer is not None:
            out.update(held=self.buffer.held.count(), total=self.buffer.frame_count,
                       buffered=self.buffer.buffered_seconds(), playhead=self.buffer.playhead,
                       stalls=self.buffer.stats.stalls, stall_ms=self.buffer.stats.stall_ms,
                       per_server={s: {"received": self.buffer.stats.per_server.get(s, 0),
                                       "assigned": f.assigned.count(), "state": f.state.value}
                                   for s, f in sorted(self.feeds.items())})
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"movie": self.movie_id, "client": self.client_id, "ruid": self.ruid,
                               "request_id": self.request_id, "state": self.state.value,
                               "revision": self.revision, "local": self.local, "cdone": self.cdone_sent}
        if self.buffer is not None:
            out.update(self.buffer.stats.to_dict())
        else:
            out.update(startup_ms=None, frames_total=self.meta.frame_count if self.meta else None,
                       frames_received=0, stalls=0, stall_ms=0.0, rebuffer_ratio=0.0, duplicates=0, per_server={})
        feeds = {s: f.summary() for s, f in sorted(self.feeds.items())}
        out["servers"] = feeds
        out["bad_frames"] = sum(f.bad_frames for f in self.feeds.values())
        out["stale_frames"] = sum(f.stale_frames for f in self.feeds.values())
        out["reconnects"] = sum(f.reconnects for f in self.feeds.values())
        out["output"] = None
        for sink in self.sinks:
            out.update(sink.describe())
        if self.error is not None:
            out["error"] = str(self.error)
        return out
