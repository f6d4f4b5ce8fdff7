"""One client data connection as a pure state machine: what to send next, and when to stop.

No sockets, no reactor (the h11 habit): `vod.server.stream` feeds a
`StreamSession` the client's control messages and the coordinator's news, asks
`next_output()` what to write, and reports each write back with `sent()`.
Asking is free of side effects, so a sender that must wait (a full socket
buffer, the rate limit) simply asks again later and may get a different
answer: after a restripe, the next frame due is a different one.

    AWAITING_HELLO --hello--> WAITING_STRATEGY            (no strategy naming this server yet)
    WAITING_STRATEGY --assigned--> STREAMING              (or PAUSED, if the client paused meanwhile)
    WAITING_STRATEGY --unassigned--> WAITING_STRATEGY     (a revision that gives us nothing: a newer may)
    STREAMING --pause--> PAUSED --resume--> STREAMING
    STREAMING --drained--> COMPLETE                       (every frame of the mask sent: END)
    COMPLETE --assigned/unassigned/resend--> STREAMING    (a restripe or a RESEND may bring frames)
    AWAITING_HELLO, WAITING_STRATEGY --expired--> ENDED   (bounded waits: ERROR)
    any live state --stop/dissolved/gone/replaced/refuse--> ENDED

A HELLO counts only with the coordinator's stream token for its RUID and
client (`vod.stream.tokens`); without one `receive` raises TokenRefused and the
session stays AWAITING_HELLO, knowing no RUID, so the connection can end it
without touching the streams of the client it claimed to be.

What is still to send is always "the frames of the current mask the client
did not hold at HELLO and this session has not sent, plus the frames it asked
again for", in index order and only below the client's credit. A new mask
(a restripe) replaces the old one in that rule. Every frame and END carries
the revision of the strategy it is sent under: the client fences on it.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from bitarray import bitarray
from bitarray.util import zeros

from vod.errors import MaskError
from vod.strategy.mask import FrameMask
from vod.strategy.placement import Strategy
from vod.stream.protocol import CONTROL_NAMES, CREDIT, HELLO, PAUSE, RESEND, RESUME, STOP, ControlMessage, ProtocolError
from vod.stream.tokens import StreamTokens

MODES = ("play", "fast")
DEFAULT_WAIT = 5.0  # seconds to wait for a HELLO, then for a strategy that names this server


class State(enum.StrEnum):
    AWAITING_HELLO = "awaiting_hello"
    WAITING_STRATEGY = "waiting_strategy"
    STREAMING = "streaming"
    PAUSED = "paused"
    COMPLETE = "complete"  # END said; open for a restripe or a RESEND until the client or the group ends it
    ENDED = "ended"


ACTIVE = (State.STREAMING, State.PAUSED, State.COMPLETE)  # a strategy names this server: frames may flow
_OPEN = (State.WAITING_STRATEGY, *ACTIVE)  # HELLO said, not ended
_LIVE = (State.AWAITING_HELLO, *_OPEN)


@dataclass(frozen=True)
class Stripe:
    """What this server sends for request `ruid` under strategy `revision`: `mask` (empty: nothing)."""

    ruid: int
    revision: int
    client: str
    movie_id: str
    frame_count: int
    mask: FrameMask

    @classmethod
    def of(cls, strategy: Strategy, revision: int, server_id: str) -> "Stripe":
        try:
            mask = strategy.mask_of(server_id)
        except KeyError:
            mask = FrameMask(strategy.frame_count)
        return cls(strategy.ruid, revision, strategy.client_id, strategy.movie_id, strategy.frame_count, mask)


@dataclass(frozen=True)
class SendFrame:
    index: int
    revision: int


@dataclass(frozen=True)
class SendEnd:
    """Every frame of `revision`'s mask is sent; `sent` counts the FRAME messages of this connection."""

    revision: int
    sent: int


@dataclass(frozen=True)
class SendError:
    reason: str


Output = SendFrame | SendEnd | SendError


# -- control message bodies -------------------------------------------------------------------------


def _count(body: dict[str, Any], key: str, what: str) -> int:
    value = body.get(key)
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{what}: {key!r} must be a non-negative integer, not {value!r}")
    return value


def parse_held(text: Any) -> FrameMask | None:
    """HELLO's `held`: base64 of `FrameMask.to_bytes()`; absent or "" means nothing held."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ProtocolError(f"HELLO: 'held' must be a base64 frame mask, not {type(text).__name__}")
    try:
        return FrameMask.from_bytes(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError, MaskError) as err:
        raise ProtocolError(f"HELLO: 'held' is not a frame mask ({err})") from None


def parse_frames(body: dict[str, Any]) -> list[int]:
    frames = body.get("frames")
    if not isinstance(frames, list) or any(type(i) is not int or i < 0 for i in frames):
        raise ProtocolError("RESEND: 'frames' must be a list of frame indices")
    return frames


# -- the session ------------------------------------------------------------------------------------


class StreamSession:
    """The sending side of one (client, server, RUID) connection."""

    def __init__(self, server_id: str, clock, wait: float = DEFAULT_WAIT, *, tokens: StreamTokens):
        if not wait > 0:
            raise ValueError(f"wait must be > 0 seconds, not {wait!r}")
        self.server_id = server_id
        self._tokens = tokens
        self._clock = clock
        self._wait = wait
        self.state = State.AWAITING_HELLO
        self.deadline: float | None = clock.seconds() + wait  # while waiting for HELLO or a strategy
        self.ruid: int | None = None
        self.client: str | None = None
        self.mode: str | None = None
        self.until = 0  # the credit: frames with index < until may go
        self.frames_sent = 0  # FRAME messages on this connection, resends included
        self.end_reason: str | None = None
        self.error: str | None = None  # the ERROR this session ended with, if it did
        self.stripe: Stripe | None = None  # the newest stripe adopted
        self._revision_seen = 0  # newest revision heard, adopted or not
        self._held: FrameMask | None = None
        self._start_paused = False
        self._pending = bitarray()  # frames still to send under the current stripe
        self._sent = bitarray()
        self._resend = bitarray()  # asked again and not yet re-sent
        self._low = 0  # no pending frame below this index
        self._end_owed = False
        self._owed: SendEnd | SendError | None = None
        self._inputs: deque[tuple[str, dict[str, Any]]] = deque()
        self._firing = False

    # -- queries -----------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self.stripe.revision if self.stripe else 0

    @property
    def to_send(self) -> int:
        """Frames still to send under the current stripe (whatever the credit)."""
        return self._pending.count(1) if self.stripe else 0

    def next_output(self) -> Output | None:
        """What to write next, or None for nothing now. No side effect: report the write with `sent`."""
        if self._owed is not None:
            return self._owed
        if self.state is State.STREAMING:
            i = self._pending.find(1, self._low)
            if 0 <= i < self.until:
                return SendFrame(i, self.stripe.revision)
        return None

    def sent(self, output: Output) -> None:
        """`output`, the answer of `next_output`, is written."""
        if output != self.next_output():
            raise ValueError(f"{output} is not what this session had to send")
        if isinstance(output, SendFrame):
            self._pending[output.index] = 0
            self._resend[output.index] = 0
            self._sent[output.index] = 1
            self._low = output.index + 1
            self.frames_sent += 1
            self._settle()
        else:
            self._owed = None

    def take_frames(self, limit: int) -> list[int]:
        """Up to `limit` frames to write now, counted as written: what `next_output` and `sent` would give
        and take one at a time while only frames are due (a download's turn: one settle for all of them).
        Empty when something else is owed first or nothing may go."""
        if self._owed is not None or self.state is not State.STREAMING:
            return []
        pending, until = self._pending, self.until
        out: list[int] = []
        i = self._low
        while len(out) < limit:
            i = pending.find(1, i, until) if i < until else -1
            if i < 0:
                break
            out.append(i)
            i += 1
        if out:
            for index in out:
                pending[index] = 0
                self._resend[index] = 0
                self._sent[index] = 1
            self._low = out[-1] + 1
            self.frames_sent += len(out)
            self._settle()
        return out

    # -- inputs ------------------------------------------------------------------------------------

    def receive(self, message: ControlMessage) -> None:
        """A control message from the client; ProtocolError if it is malformed or out of order,
        TokenRefused for a HELLO without the coordinator's token for its RUID and client."""
        if self.state is State.ENDED:
            return  # the connection is closing; what the client still says changes nothing
        body = message.body
        if message.type == HELLO:
            if self.state is not State.AWAITING_HELLO:
                raise ProtocolError("a second HELLO on one connection")
            ruid, client, mode = body.get("ruid"), body.get("client"), body.get("mode", "play")
            if type(ruid) is not int or ruid < 0:
                raise ProtocolError(f"HELLO: 'ruid' must be a non-negative integer, not {ruid!r}")
            if not isinstance(client, str) or not client:
                raise ProtocolError(f"HELLO: 'client' must be a non-empty string, not {client!r}")
            if mode not in MODES:
                raise ProtocolError(f"HELLO: 'mode' must be one of {', '.join(MODES)}, not {mode!r}")
            # Before the held mask: a peer without a token does not get us to decode a megabyte for it.
            self._tokens.check(ruid, client, body.get("token"))
            self.hello(ruid, client, parse_held(body.get("held")), mode)
            return
        if self.state is State.AWAITING_HELLO:
            raise ProtocolError(f"{CONTROL_NAMES[message.type]} before HELLO")
        if message.type == CREDIT:
            self.credit(_count(body, "until", "CREDIT"))
        elif message.type == RESEND:
            self.resend(parse_frames(body))
        else:
            {PAUSE: self.pause, RESUME: self.resume, STOP: self.stop}[message.type]()

    def hello(self, ruid: int, client: str, held: FrameMask | None, mode: str = "play") -> None:
        self._input("hello", ruid=ruid, client=client, held=held, mode=mode)

    def credit(self, until: int) -> None:
        self._input("credit", until=until)

    def pause(self) -> None:
        self._input("pause")

    def resume(self) -> None:
        self._input("resume")

    def stop(self) -> None:
        self._input("stop")

    def resend(self, frames: list[int]) -> None:
        self._input("resend", frames=frames)

    def strategy(self, stripe: Stripe) -> None:
        """The newest strategy revision for this RUID known here; older ones than the last are ignored."""
        if self.state not in _OPEN or stripe.ruid != self.ruid or stripe.revision <= self._revision_seen:
            return
        self._revision_seen = stripe.revision
        problem = self._misfit(stripe)
        if problem:
            self._input("refuse", reason=problem)
        else:
            self._input("assigned" if stripe.mask else "unassigned", stripe=stripe)

    def dissolved(self) -> None:
        """The video group is gone (SDONE), or this server left it."""
        self._input("dissolved")

    def gone(self) -> None:
        """The connection dropped."""
        self._input("gone")

    def replaced(self) -> None:
        """The same client opened a newer connection for this RUID."""
        self._input("replaced")

    def refuse(self, reason: str) -> None:
        """End with an ERROR saying `reason`."""
        self._input("refuse", reason=reason)

    def expire(self) -> None:
        """Time may be up for the HELLO or the strategy; nothing happens before the deadline."""
        if self.deadline is not None and self._clock.seconds() >= self.deadline:
            self._input("expired")

    # -- the state machine ---------------------------------------------------------------------------

    def _input(self, name: str, **data: Any) -> None:
        self._fire(name, **data)
        self._settle()

    def _settle(self) -> None:
        # "Everything sent" is not a message from anyone: it is noticed after each input and each write.
        if self.state is State.STREAMING and not self._pending.any():
            self._fire("drained")

    def _fire(self, name: str, **data: Any) -> None:
        # Actions may queue follow-up inputs (a pause remembered while waiting); queueing keeps each
        # transition whole.
        self._inputs.append((name, data))
        if self._firing:
            return
        self._firing = True
        try:
            while self._inputs:
                name, data = self._inputs.popleft()
                transition = self._TRANSITIONS.get((self.state, name))
                if transition is None:
                    continue  # e.g. RESUME while streaming, a STOP after the end: nothing to do
                self.state, action = transition
                if action is not None:
                    action(self, **data)
        finally:
            self._firing = False

    def _misfit(self, stripe: Stripe) -> str | None:
        if stripe.client != self.client:
            return f"RUID {stripe.ruid} is a request of client {stripe.client}, not of {self.client}"
        length = len(self._held) if self._held is not None else (self.stripe.frame_count if self.stripe else None)
        if length is not None and length != stripe.frame_count:
            return f"the held mask covers {length} frames; movie {stripe.movie_id} has {stripe.frame_count}"
        return None

    # -- actions: each takes the input's data as keywords ----------------------------------------------

    def _greet(self, ruid: int, client: str, held: FrameMask | None, mode: str) -> None:
        self.ruid, self.client, self._held, self.mode = ruid, client, held, mode
        self.deadline = self._clock.seconds() + self._wait

    def _set_credit(self, until: int) -> None:
        self.until = until

    def _note_start_paused(self) -> None:
        self._start_paused = True

    def _note_start_resumed(self) -> None:
        self._start_paused = False

    def _adopt(self, stripe: Stripe) -> None:
        if self.stripe is None:
            n = stripe.frame_count
            self._sent, self._resend = zeros(n, "big"), zeros(n, "big")
            self.deadline = None
            if self._start_paused:
                self._fire("pause")
        self.stripe = stripe
        mask = bitarray(stripe.mask.bits)
        held = self._held.bits if self._held is not None else zeros(stripe.frame_count, "big")
        self._resend &= mask  # frames moved to another server are theirs to send now
        self._pending = (mask & ~held & ~self._sent) | self._resend
        self._low = 0
        self._end_owed = True  # an END under every new revision: "all of revision r is sent"
        if isinstance(self._owed, SendEnd):
            self._owed = None  # not written yet, and no longer true of the newest revision

    def _add_resends(self, frames: list[int]) -> None:
        mask = self.stripe.mask
        for i in frames:
            # Only frames of our current mask: the others are another server's since a restripe.
            if i in mask:
                self._resend[i] = self._pending[i] = 1
                self._low = min(self._low, i)
                self._end_owed = True

    def _say_end(self) -> None:
        if self._end_owed:
            self._end_owed = False
            self._owed = SendEnd(self.stripe.revision, self.frames_sent)

    def _finish(self, reason: str) -> None:
        self.end_reason = reason
        self.deadline = None

    def _fail(self, reason: str) -> None:
        self._finish(reason)
        self.error = reason
        self._owed = SendError(reason)

    def _stopped(self) -> None:
        self._finish("stopped by the client")

    def _gone(self) -> None:
        self._finish("client connection lost")
        self._owed = None  # nobody to tell

    def _replaced(self) -> None:
        self._finish("replaced by a newer connection of the client for this RUID")

    def _sdone(self) -> None:
        self._finish("video group dissolved (SDONE)")

    def _over(self) -> None:
        self._fail(f"request {self.ruid} is over: its video group was dissolved")

    def _expired(self) -> None:
        if self.ruid is None:
            self._fail(f"no HELLO within {self._wait:g} s")
        elif self._revision_seen:
            self._fail(f"strategy revision {self._revision_seen} of RUID {self.ruid} gives server "
                       f"{self.server_id} no frames (waited {self._wait:g} s for a newer one)")
        else:
            self._fail(f"no strategy of RUID {self.ruid} known to server {self.server_id} "
                       f"(waited {self._wait:g} s)")

    _TRANSITIONS: dict[tuple[State, str], tuple[State, Callable[..., None] | None]] = {
        (State.AWAITING_HELLO, "hello"): (State.WAITING_STRATEGY, _greet),
        (State.WAITING_STRATEGY, "assigned"): (State.STREAMING, _adopt),
        (State.WAITING_STRATEGY, "unassigned"): (State.WAITING_STRATEGY, None),
        (State.WAITING_STRATEGY, "pause"): (State.WAITING_STRATEGY, _note_start_paused),
        (State.WAITING_STRATEGY, "resume"): (State.WAITING_STRATEGY, _note_start_resumed),
        (State.STREAMING, "pause"): (State.PAUSED, None),
        (State.COMPLETE, "pause"): (State.PAUSED, None),
        (State.PAUSED, "resume"): (State.STREAMING, None),
        (State.STREAMING, "drained"): (State.COMPLETE, _say_end),
        (State.STREAMING, "resend"): (State.STREAMING, _add_resends),
        (State.PAUSED, "resend"): (State.PAUSED, _add_resends),
        (State.COMPLETE, "resend"): (State.STREAMING, _add_resends),
        (State.STREAMING, "assigned"): (State.STREAMING, _adopt),
        (State.STREAMING, "unassigned"): (State.STREAMING, _adopt),
        (State.PAUSED, "assigned"): (State.PAUSED, _adopt),
        (State.PAUSED, "unassigned"): (State.PAUSED, _adopt),
        (State.COMPLETE, "assigned"): (State.STREAMING, _adopt),
        (State.COMPLETE, "unassigned"): (State.STREAMING, _adopt),
        (State.WAITING_STRATEGY, "credit"): (State.WAITING_STRATEGY, _set_credit),
        (State.STREAMING, "credit"): (State.STREAMING, _set_credit),
        (State.PAUSED, "credit"): (State.PAUSED, _set_credit),
        (State.COMPLETE, "credit"): (State.COMPLETE, _set_credit),
        # Comprehensions cannot see the class body's names; dict.fromkeys can take them.
        **dict.fromkeys([(state, "stop") for state in _OPEN], (State.ENDED, _stopped)),
        **dict.fromkeys([(state, "replaced") for state in _OPEN], (State.ENDED, _replaced)),
        (State.WAITING_STRATEGY, "dissolved"): (State.ENDED, _over),
        **dict.fromkeys([(state, "dissolved") for state in ACTIVE], (State.ENDED, _sdone)),
        **dict.fromkeys([(state, "gone") for state in _LIVE], (State.ENDED, _gone)),
        **dict.fromkeys([(state, "refuse") for state in _LIVE], (State.ENDED, _fail)),
        (State.AWAITING_HELLO, "expired"): (State.ENDED, _expired),
        (State.WAITING_STRATEGY, "expired"): (State.ENDED, _expired),
    }
