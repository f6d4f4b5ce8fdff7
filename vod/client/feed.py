"""One server's stream of frames to this client: a TCP connection that says HELLO, grants credit, checks every
frame, and comes back after a drop.

The protocol (`vod.stream.protocol`): the client speaks first, HELLO {ruid,
client, held, mode, token}, then CREDIT {until} as its playhead moves; the server
sends FRAME messages and END when it has sent all its frames. Here:

- every frame's checksum (XXH3-128) is checked; a bad one is dropped and asked for again
  with RESEND (at most `MAX_RESENDS` times per frame, so a frame damaged at
  the source cannot loop forever);
- fencing: frames and END stamped with a revision older than the newest this
  client knows for the server are ignored. The frames so ignored that are
  still the server's and still missing are asked for again (RESEND) once the
  server shows it knows the new revision, so fencing never loses a frame;
- a dropped connection (or a server ERROR) reconnects with a fresh HELLO whose
  held mask is what the client holds now, so the server resumes where it
  left off; after `max_retries` failures in a row without a good frame the
  feed gives up (FAILED) and the coordinator's restripe has to help.

The connection life is one state machine; its transitions are all in
`ServerFeed._TRANSITIONS`:

    IDLE --start--> CONNECTING --connected--> STREAMING --end--> ENDED
    CONNECTING/STREAMING --lost--> WAITING --retry--> CONNECTING
    CONNECTING/STREAMING --gave_up--> FAILED
    ENDED --more--> STREAMING                         (the server sends again on the same connection:
                                                       a restripe gave it frames, or we asked with RESEND)
    ENDED/FAILED/WAITING --reopen--> CONNECTING       (the server owes frames and the connection is gone)
    ENDED --lost--> ENDED                             (the server may close once it is done)
    any but CLOSED --stop--> CLOSED

As in `GroupMember`, news from a connection carries its attempt number and is
dropped once the feed has moved on to another attempt.
"""

from __future__ import annotations

import base64
import enum
import logging
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure

from vod.statemachine import SerialInputs
from vod.groups.member import Backoff, parse_address
from vod.stream import protocol as wire
from vod.strategy.mask import FrameMask

log = logging.getLogger(__name__)

MAX_RESENDS = 3
# Bytes per socket read (Twisted's default is 64 KB, four frames of 640x360): a download's frames then come
# a dozen or more to a read, and everything per read (a merge, a cache write, a round of playout) is paid per
# dozen. 256 KB rather than 1 MB: as fast in the download bench, and a read's bytes are still in the CPU's
# cache when its frames are checked (each read is a fresh buffer, kept while its frames are).
READ_SIZE = 1 << 18
DEFAULT_RETRIES = 5
FIRST_RETRY = 0.1
MAX_RETRY = 1.0


class FeedState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    WAITING = "waiting"
    ENDED = "ended"
    FAILED = "failed"
    CLOSED = "closed"


class FeedListener(Protocol):
    """What a feed needs from its play (the session)."""

    def held_mask(self) -> FrameMask: ...

    def credit(self) -> int: ...

    def frames_received(self, feed: "ServerFeed", messages: list[wire.FrameMessage]) -> None:
        """Verified frames, in the order the server sent them: all those one read brought, at once."""

    def feed_changed(self, feed: "ServerFeed") -> None: ...


Connector = Callable[[str, int, Factory], Deferred]


def tcp_connector(reactor, timeout: float = 2.0) -> Connector:
    def connect(host: str, port: int, factory: Factory) -> Deferred:
        # An address needs no resolver: HostnameEndpoint would still hand it to getaddrinfo on a thread,
        # a few milliseconds per server before the first frame.
        if isIPAddress(host):
            return TCP4ClientEndpoint(reactor, host, port, timeout=timeout).connect(factory)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(reactor, host, port, timeout=timeout).connect(factory)
        return HostnameEndpoint(reactor, host, port, timeout=timeout).connect(factory)
    return connect


class FeedProtocol(TwistedProtocol):
    """Bytes in and out for one connection attempt; all decisions are the feed's.

    The messages of each read are checked (XXH3-128, ~1 us a frame) and handed to the feed as one batch, on
    this thread: a thread of its own for the checks (then SHA-256) was tried and was no faster, even with
    two cores (each hash lets go of the GIL and must wait to get it back from the reactor).
    """

    def __init__(self, feed: "ServerFeed", attempt: int):
        self.feed = feed
        self.attempt = attempt
        self.decoder = wire.FrameDecoder()

    def connectionMade(self) -> None:
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE

    def send(self, type_: int, body: dict[str, Any] | None = None) -> None:
        if self.transport is not None:
            self.transport.write(wire.encode_control(type_, body))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except wire.ProtocolError as err:
            self.feed._fire("lost", self.attempt, reason=f"protocol error: {err}")
            return
        if messages:
            self.feed._messages(self, messages, wire.checksums_ok(messages))

    def connectionLost(self, reason: Failure = None) -> None:
        self.feed._fire("lost", self.attempt, reason=f"connection lost: {reason.getErrorMessage() if reason else ''}")


class ServerFeed(SerialInputs):
    """The frames of one server for one RUID. `revision` and `mask` follow the newest strategy."""

    def __init__(self, reactor, server_id: str, address: str, ruid: int, client_id: str, listener: FeedListener,
                 *, revision: int, mask: FrameMask, token: str, fast: bool = False,
                 connector: Connector | None = None, max_retries: int = DEFAULT_RETRIES):
        self._reactor = reactor
        self.server_id = server_id
        self.address = address
        self.ruid = ruid
        self.client_id = client_id
        self.token = token  # the coordinator's stream token for (ruid, client_id): servers want it in HELLO
        self.revision = revision
        self.mask = mask
        self.assigned = mask  # every frame any revision gave this server (a restripe's mask is only the rest)
        self.mode = "fast" if fast else "play"
        self._listener = listener
        self._connector = connector or tcp_connector(reactor)
        self._max_retries = max_retries

        self.state = FeedState.IDLE
        self.reason = ""
        self._attempt = 0
        self._link: FeedProtocol | None = None
        self._connecting: Deferred | None = None
        self._retry = None
        self._failures = 0  # connection failures since the last good frame
        self._backoff = Backoff(FIRST_RETRY, MAX_RETRY)
        self._credit_sent = -1
        self._paused = False
        self._bad_copies: dict[int, int] = {}
        self._fenced: set[int] = set()  # frames ignored as stale, to ask for again
        # counters for the summary
        self.bad_frames = 0
        self.stale_frames = 0
        self.resends = 0
        self.reconnects = 0

    # -- what the session calls ----------------------------------------------------------------------

    def start(self) -> None:
        self._fire("start")

    def stop(self) -> None:
        """Tell the server to stop (STOP) and close; final."""
        self._fire("stop")

    def update(self, revision: int, mask: FrameMask, address: str) -> None:
        """A newer strategy: fence older frames; reconnect if the server has frames for us again."""
        if revision <= self.revision:
            return
        self.revision, self.mask = revision, mask
        self.assigned = self.assigned | mask
        moved = address != self.address
        self.address = address
        owed = bool(mask - self._listener.held_mask())
        if moved and self.state in (FeedState.CONNECTING, FeedState.STREAMING):
            self._fire("lost", self._attempt, reason=f"server moved to {address}")
        elif owed and (self._link is None or moved):
            # With the connection still open the server sends its new frames on it by itself.
            self._failures = 0
            self._fire("reopen")

    def refetch(self) -> None:
        """Ask the server for what it still owes (its frames not held): with RESEND on the connection it keeps
        open after END, else with a fresh HELLO on a new connection."""
        if self.state is FeedState.ENDED and self._link is not None:
            owed = list(self.mask - self._listener.held_mask())
            if owed:
                self.resends += len(owed)
                self._link.send(wire.RESEND, {"frames": owed})
        elif self.state in (FeedState.ENDED, FeedState.FAILED, FeedState.WAITING):
            self._failures = 0
            self._fire("reopen")

    def grant(self, until: int) -> None:
        """Let the server send frames below `until` (sent only when it moved)."""
        if self._talking and until > self._credit_sent:
            self._credit_sent = until
            self._link.send(wire.CREDIT, {"until": until})

    def pause(self) -> None:
        self._paused = True
        if self._talking:
            self._link.send(wire.PAUSE)

    def resume(self) -> None:
        self._paused = False
        if self._talking:
            self._link.send(wire.RESUME)

    @property
    def _talking(self) -> bool:
        """HELLO said and the connection open; after END too, since a restripe may bring frames on it."""
        return self._link is not None and self.state in (FeedState.STREAMING, FeedState.ENDED)

    @property
    def done(self) -> bool:
        """Nothing more will come from this feed unless a new strategy reopens it."""
        return self.state in (FeedState.ENDED, FeedState.FAILED, FeedState.CLOSED)

    # -- the state machine ---------------------------------------------------------------------------

    def _transition(self, input: str, attempt: int | None, data: dict[str, Any]) -> None:
        if attempt is not None and attempt != self._attempt:
            return
        if input == "lost" and self.state in (FeedState.CONNECTING, FeedState.STREAMING):
            self._failures += 1
            if self._failures > self._max_retries:
                input = "gave_up"
        transition = self._TRANSITIONS.get((self.state, input))
        if transition is None:
            log.debug("%s/%s: %s ignored in state %s", self.ruid, self.server_id, input, self.state)
            return
        new_state, outputs = transition
        log.debug("%s/%s: %s --%s--> %s", self.ruid, self.server_id, self.state, input, new_state)
        old, self.state = self.state, new_state
        for output in outputs:
            output(self, **data)
        if new_state is not old:
            self._listener.feed_changed(self)

    # -- outputs -------------------------------------------------------------------------------------

    def _connect(self, **_: Any) -> None:
        self._retry = None
        self._attempt += 1
        attempt = self._attempt
        host, port = parse_address(self.address)
        connecting = self._connector(host, port, Factory.forProtocol(lambda: FeedProtocol(self, attempt)))
        self._connecting = connecting

        def connected(link: FeedProtocol) -> None:
            if attempt != self._attempt:
                link.transport.abortConnection()
            else:
                self._fire("connected", attempt, link=link)

        connecting.addCallbacks(connected, lambda f: self._fire(
            "lost", attempt, reason=f"cannot connect to {self.address}: {f.getErrorMessage()}"))

    def _hello(self, link: FeedProtocol, **_: Any) -> None:
        self._connecting = None
        self._link = link
        held = self._listener.held_mask()
        link.send(wire.HELLO, {"ruid": self.ruid, "client": self.client_id,
                               "held": base64.b64encode(held.to_bytes()).decode("ascii"), "mode": self.mode,
                               "token": self.token})
        if self._paused:
            link.send(wire.PAUSE)
        self._credit_sent = -1
        self.grant(self._listener.credit())

    def _drop_link(self, **_: Any) -> None:
        self._attempt += 1  # what the abort below reports belongs to an abandoned attempt
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._link is not None:
            link, self._link = self._link, None
            if link.transport is not None:
                link.transport.loseConnection()

    def _schedule_retry(self, reason: str = "", **_: Any) -> None:
        self.reason = reason
        self.reconnects += 1
        delay = self._backoff.next()
        log.info("RUID %d, server %s: %s; reconnecting in %.2f s", self.ruid, self.server_id, reason, delay)
        self._retry = self._reactor.callLater(delay, self._fire, "retry")

    def _cancel_retry(self, **_: Any) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _give_up(self, reason: str = "", **_: Any) -> None:
        self.reason = f"{reason} (gave up after {self._max_retries} reconnections)"
        log.warning("RUID %d, server %s: %s", self.ruid, self.server_id, self.reason)

    def _send_stop(self, **_: Any) -> None:
        if self._link is not None:
            self._link.send(wire.STOP)

    def _ended(self, **_: Any) -> None:
        self.reason = "sent all its frames"

    _RECONNECT = (FeedState.WAITING, (_drop_link, _schedule_retry))
    _TRANSITIONS: dict[tuple[FeedState, str], tuple[FeedState, tuple[Callable[..., None], ...]]] = {
        (FeedState.IDLE, "start"): (FeedState.CONNECTING, (_connect,)),
        (FeedState.CONNECTING, "connected"): (FeedState.STREAMING, (_hello,)),
        (FeedState.STREAMING, "end"): (FeedState.ENDED, (_ended,)),
        (FeedState.CONNECTING, "lost"): _RECONNECT,
        (FeedState.STREAMING, "lost"): _RECONNECT,
        (FeedState.CONNECTING, "gave_up"): (FeedState.FAILED, (_drop_link, _give_up)),
        (FeedState.STREAMING, "gave_up"): (FeedState.FAILED, (_drop_link, _give_up)),
        (FeedState.WAITING, "retry"): (FeedState.CONNECTING, (_connect,)),
        (FeedState.ENDED, "more"): (FeedState.STREAMING, ()),
        (FeedState.ENDED, "lost"): (FeedState.ENDED, (_drop_link,)),
        # dict.fromkeys, not comprehensions: a comprehension in a class body cannot see the outputs above.
        **dict.fromkeys([(state, "reopen") for state in (FeedState.ENDED, FeedState.FAILED, FeedState.WAITING)],
                        (FeedState.CONNECTING, (_cancel_retry, _drop_link, _connect))),
        **dict.fromkeys([(state, "stop") for state in FeedState if state is not FeedState.CLOSED],
                        (FeedState.CLOSED, (_cancel_retry, _send_stop, _drop_link))),
    }

    # -- what the connection reports -----------------------------------------------------------------

    def _messages(self, link: FeedProtocol, messages: list[wire.FrameMessage], oks: list[bool]) -> None:
        """One read's messages, checked: the good frames go to the listener together, in order; before
        anything that may change the feed's state, so that it knows of them."""
        if self._all_current(link, messages, oks):
            self._deliver(list(messages))  # the common case, a download's read: nothing to decide per frame
            return
        good: list[wire.FrameMessage] = []
        try:
            for message, ok in zip(messages, oks):
                if message.type != wire.FRAME or not ok or message.ruid != self.ruid or self._fenced:
                    self._deliver(good)
                if not self._message(link, message, ok, good):
                    return
        finally:
            self._deliver(good)

    def _all_current(self, link: FeedProtocol, messages: list[wire.FrameMessage], oks: list[bool]) -> bool:
        """Every message is a good FRAME of this RUID and revision, on the current connection while streaming
        with nothing fenced: what `_message` would take, each, with no transition."""
        if link.attempt != self._attempt or self.state is not FeedState.STREAMING or self._fenced or not all(oks):
            return False
        current = (wire.FRAME, self.ruid, self.revision)
        return all((m.type, m.ruid, m.revision) == current for m in messages)

    def _deliver(self, good: list[wire.FrameMessage]) -> None:
        if good:
            self._failures = 0
            self._backoff.reset()
            frames = good[:]
            good.clear()
            self._listener.frames_received(self, frames)

    def _message(self, link: FeedProtocol, message: wire.FrameMessage, ok: bool,
                 good: list[wire.FrameMessage]) -> bool:
        """One decoded message whose checksum was checked (`ok`): a good frame is added to `good`; False when
        the connection was given up on (stop reading it)."""
        if link.attempt != self._attempt or self.state not in (FeedState.STREAMING, FeedState.ENDED):
            return False
        if message.ruid != self.ruid and message.type != wire.ERROR:
            self._fire("lost", link.attempt, reason=f"the server sent RUID {message.ruid}, not {self.ruid}")
            return False
        if message.type == wire.ERROR:
            text = message.payload.decode("utf-8", "replace")
            self._fire("lost", link.attempt, reason=f"server error: {text}")
            return False
        if message.revision < self.revision:
            # Fencing: sent under a strategy that has since been replaced.
            if message.type == wire.FRAME:
                self.stale_frames += 1
                self._fenced.add(message.index)
            return True
        if message.revision > self.revision:
            self.revision = message.revision  # the server heard of the new strategy before us
        self._ask_again_for_fenced(link)
        if message.type == wire.END:
            self._fire("end", link.attempt)
            return True
        if self.state is FeedState.ENDED:
            self._fire("more", link.attempt)
        if not ok:
            self._bad_copy(link, message.index)
            return True
        good.append(message)
        return True

    def _bad_copy(self, link: FeedProtocol, index: int) -> None:
        self.bad_frames += 1
        copies = self._bad_copies[index] = self._bad_copies.get(index, 0) + 1
        if copies > MAX_RESENDS:
            log.warning("RUID %d: frame %d from %s failed its checksum %d times; not asking again",
                        self.ruid, index, self.server_id, copies)
            return
        log.info("RUID %d: frame %d from %s failed its checksum; asking again", self.ruid, index, self.server_id)
        self.resends += 1
        link.send(wire.RESEND, {"frames": [index]})

    def _ask_again_for_fenced(self, link: FeedProtocol) -> None:
        if not self._fenced:
            return
        held = self._listener.held_mask()
        again = sorted(i for i in self._fenced if i in self.mask and i not in held)
        self._fenced.clear()
        if again:
            self.resends += len(again)
            link.send(wire.RESEND, {"frames": again})

    def summary(self) -> dict[str, Any]:
        return {"state": self.state.value, "revision": self.revision, "bad_frames": self.bad_frames,
                "stale_frames": self.stale_frames, "resends": self.resends, "reconnects": self.reconnects,
                "reason": self.reason}
