"""The Twisted side of a client data connection: bytes in to the session, frames out of the store.

`StreamConnection` only moves bytes: control bytes go through
`ControlDecoder` into the `StreamSession`, and what the session says is due
goes out as a 64-byte header and the stored JPEG bytes (`GatherWriter`: a
turn's frames in one `sendmsg` from the memory map). It never lets the transport's buffer grow with the
movie: it is the transport's streaming producer, so a slow client pauses it
(`pauseProducing`) and a drained buffer resumes it. The server's rate limit
(a shared `TokenBucket`) and the session's deadlines are waited out with
`callLater`, never by blocking.

A malformed control message ends the connection: an ERROR to the client
with the reason, one log line, close. So does a HELLO without the
coordinator's stream token for its RUID and client (`vod.stream.tokens`); such
a connection never counts as that client's, so the client's real stream is
not replaced or otherwise touched.
"""

from __future__ import annotations

import logging
from typing import Protocol as Interface

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from vod.media.store import Movie
from vod.server.gather import GatherWriter
from vod.server.pacing import TokenBucket
from vod.server.session import ACTIVE, DEFAULT_WAIT, SendEnd, SendFrame, State, Stripe, StreamSession
from vod.stream.protocol import FRAME_HEADER, ControlDecoder, ProtocolError, encode_end, encode_error, frame_header
from vod.stream.tokens import StreamTokens, TokenRefused

log = logging.getLogger(__name__)

# Frames written per reactor turn before yielding to other connections and timers.
FRAMES_PER_TURN = 16
# A download (mode "fast") goes in bigger turns: Twisted's transport pauses its producer past 64 KB buffered
# and sends at most 128 KB a write, four to eight frames of 640x360 per reactor turn, so the turns' fixed
# costs, not the bytes, set the pace. The client's credit still bounds what may be sent.
FAST_FRAMES_PER_TURN = 64
FAST_SEND_BUFFER = 1 << 20
# After we close, how long a client that reads nothing may keep the socket before it is aborted.
CLOSE_GRACE = 1.0


class StreamHost(Interface):
    """What a connection needs from its server (`vod.server.node.VideoServer`)."""

    server_id: str
    tokens: StreamTokens  # checks each HELLO's stream token

    def movie(self, movie_id: str) -> Movie | None: ...

    def opened(self, connection: "StreamConnection") -> None: ...

    def greeted(self, connection: "StreamConnection") -> None:
        """The HELLO is in (`connection.session.ruid`): push what is known of that RUID."""

    def closed(self, connection: "StreamConnection") -> None: ...


def presentation_us(index: int, fps: float) -> int:
    return round(index * 1_000_000 / fps)


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@implementer(IPushProducer)
class StreamConnection(Protocol):
    def __init__(self, host: StreamHost, reactor, clock, bucket: TokenBucket | None = None,
                 wait: float = DEFAULT_WAIT):
        self.host = host
        self._reactor = reactor
        self._clock = clock
        self._bucket = bucket
        self.session = StreamSession(host.server_id, clock, wait, tokens=host.tokens)
        self._decoder = ControlDecoder()
        self._movie: Movie | None = None
        self._peer = "?"
        self._transport_full = False  # the transport asked us to pause: its buffer is full
        self._pumping = False
        self._closing = False
        self._timer = None  # the next look at the session: rate limit or deadline
        self._frames_per_turn = FRAMES_PER_TURN
        self._abort = None
        self._started_at: float | None = None
        self._greeted = False  # the host knows our RUID
        self._ended_logged = False
        self.bytes_sent = 0
        self._out: GatherWriter | None = None

    # -- the transport's side ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.transport.registerProducer(self, True)
        self._out = GatherWriter(self.transport)
        self.host.opened(self)
        self._pump()

    def dataReceived(self, data: bytes) -> None:
        if self.session.state is State.ENDED:
            return  # closing: a broken or finished stream has nothing more to learn
        try:
            for message in self._decoder.feed(data):
                self._feed(self.session.receive, message)
                if self.session.ruid is not None and not self._greeted:
                    self._greeted = True
                    self.host.greeted(self)
        except ProtocolError as err:
            self._feed(self.session.refuse, f"malformed control message: {err}")
        except TokenRefused as err:
            self._feed(self.session.refuse, str(err))

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timers()
        self._closing = True
        self.session.gone()
        self._log_end()
        self.host.closed(self)

    def pauseProducing(self) -> None:
        self._transport_full = True

    def resumeProducing(self) -> None:
        self._transport_full = False
        self._pump()

    def stopProducing(self) -> None:
        # The transport is going away; connectionLost follows and does the rest.
        self._transport_full = True

    # -- the server's side -------------------------------------------------------------------------

    def strategy(self, stripe: Stripe) -> None:
        """The newest strategy revision of this connection's RUID."""
        movie = self.host.movie(stripe.movie_id)
        if movie is None:
            self._feed(self.session.refuse, f"server {self.host.server_id} does not hold movie {stripe.movie_id}")
        elif len(movie) != stripe.frame_count:
            self._feed(self.session.refuse, f"the strategy gives movie {stripe.movie_id} {stripe.frame_count} "
                                            f"frames; server {self.host.server_id} holds {len(movie)}")
        else:
            self._movie = movie
            self._feed(self.session.strategy, stripe)

    def dissolved(self) -> None:
        self._feed(self.session.dissolved)

    def replaced(self) -> None:
        self._feed(self.session.replaced)

    def refuse(self, reason: str) -> None:
        self._feed(self.session.refuse, reason)

    # -- moving the session along ------------------------------------------------------------------

    def _feed(self, session_input, *args) -> None:
        if self._closing:
            return
        session_input(*args)
        if self._started_at is None and self.session.state in ACTIVE:
            self._started_at = self._clock.seconds()
            stripe = self.session.stripe
            log.info("stream start: RUID %d, client %s at %s: movie %s, revision %d, %d of %d frames to send "
                     "(mode %s)", stripe.ruid, stripe.client, self._peer, stripe.movie_id, stripe.revision,
                     self.session.to_send, stripe.mask.count(), self.session.mode)
            if self.session.mode == "fast":
                self._frames_per_turn = FAST_FRAMES_PER_TURN
                for knob, value in (("bufferSize", FAST_SEND_BUFFER), ("SEND_LIMIT", FAST_SEND_BUFFER)):
                    if hasattr(self.transport, knob):  # a real TCP transport (tests use StringTransport)
                        setattr(self.transport, knob, value)
        self._pump()

    def _pump(self) -> None:
        if self._closing or self._pumping:
            return
        self._pumping = True
        try:
            retry_in = self._write_due()
        finally:
            self._pumping = False
        if self.session.state is State.ENDED and self.session.next_output() is None:
            self._close()
            return
        if self.session.deadline is not None:
            until_deadline = max(0.0, self.session.deadline - self._clock.seconds())
            retry_in = until_deadline if retry_in is None else min(retry_in, until_deadline)
        self._schedule(retry_in)

    def _write_due(self) -> float | None:
        """Write what is due now; the seconds after which to look again, None if some input must come first.

        The turn's frames go out together at its end (one `sendmsg` from the memory map, `GatherWriter`)."""
        if self._out is None:
            self._out = GatherWriter(self.transport)
        buffers: list[bytes | memoryview] = []
        try:
            return self._collect_due(buffers)
        finally:
            if self._out.write(buffers) and self.session.mode == "fast":
                # The socket refused part of a download's turn and the transport holds it: wait until the
                # transport has sent it all (it resumes a paused producer then) and go direct again, rather
                # than copying turn after turn into its buffer. (Its bufferSize cannot say "pause at any
                # byte": Twisted also reads that many bytes at a time, and a read of 0 is a closed socket.)
                self._transport_full = True
                self.transport.producerPaused = True

    def _collect_due(self, buffers: list[bytes | memoryview]) -> float | None:
        budget = self._frames_per_turn
        while (out := self.session.next_output()) is not None:
            if isinstance(out, SendFrame):
                if self._transport_full:
                    return None  # resumeProducing brings us back
                if budget == 0:
                    return 0.0
                if self._bucket is None and self._out.direct:
                    # No rate limit to ask frame by frame: take the turn's frames from the session at once.
                    revision = out.revision
                    for index in self.session.take_frames(budget):
                        self._add_frame(index, revision, buffers)
                        budget -= 1
                    continue
                if self._bucket is not None:
                    delay = self._bucket.take(FRAME_HEADER.size + self._movie.entry(out.index)[1])
                    if delay > 0:
                        return delay
                self._add_frame(out.index, out.revision, buffers)
                budget -= 1
                if not self._out.direct:
                    # Through the transport frame by frame, so that its pauseProducing stops us a frame past
                    # its limit (a direct send leaves the transport at most a turn's frames the socket refused).
                    self._out.write(buffers)
                    buffers.clear()
            else:
                # END and ERROR are a few bytes, once per input at most: they do not wait for the buffer.
                ruid = self.session.ruid or 0
                data = (encode_end(ruid, out.revision, out.sent) if isinstance(out, SendEnd)
                        else encode_error(ruid, out.reason))
                buffers.append(data)
                self.bytes_sent += len(data)
            self.session.sent(out)
        return None

    def _add_frame(self, index: int, revision: int, buffers: list[bytes | memoryview]) -> None:
        movie = self._movie
        digest, frame = movie.wire_frame(index)
        header = frame_header(self.session.ruid, revision, index, presentation_us(index, movie.info.fps),
                              len(frame), digest)
        buffers += (header, frame)
        self.bytes_sent += len(header) + len(frame)

    def _schedule(self, delay: float | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None if delay is None else self._reactor.callLater(delay, self._look_again)

    def _look_again(self) -> None:
        self._timer = None
        self._feed(self.session.expire)

    def _close(self) -> None:
        self._closing = True
        self._cancel_timers()
        self._log_end()
        # A registered producer keeps loseConnection waiting forever: unregister first.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abort = self._reactor.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def _cancel_timers(self) -> None:
        for call in (self._timer, self._abort):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._abort = None

    def _log_end(self) -> None:
        if self._ended_logged:
            return
        self._ended_logged = True
        session = self.session
        if session.ruid is None:
            # No HELLO taken: no stream to report, only a peer that never got one (and why, if we ended it).
            if session.error is None:
                log.debug("connection from %s closed before HELLO", self._peer)
            else:
                log.warning("connection from %s closed before any stream: %s", self._peer, session.error)
            return
        took = self._clock.seconds() - self._started_at if self._started_at is not None else 0.0
        direct = self._out.direct_bytes if self._out is not None else 0
        log.log(logging.WARNING if session.error else logging.INFO,
                "stream end: RUID %s, client %s at %s: %d frames (%s, %d%% sent without a copy) sent in %.2f s, "
                "revision %d; %s", "-" if session.ruid is None else session.ruid, session.client or "-",
                self._peer, session.frames_sent, _human_bytes(self.bytes_sent),
                round(100 * direct / self.bytes_sent) if self.bytes_sent else 0, took, session.revision,
                session.end_reason or "closed")


class StreamFactory(Factory):
    """Builds a `StreamConnection` per accepted client connection."""

    noisy = False  # the stream start/end lines say what matters; "Starting factory" says nothing

    def __init__(self, host: StreamHost, reactor, clock, bucket: TokenBucket | None = None,
                 wait: float = DEFAULT_WAIT):
        self.host = host
        self.reactor = reactor
        self.clock = clock
        self.bucket = bucket
        self.wait = wait

    def buildProtocol(self, addr) -> StreamConnection:
        connection = StreamConnection(self.host, self.reactor, self.clock, self.bucket, self.wait)
        connection.factory = self
        return connection
