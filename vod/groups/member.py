"""The member's side of the group service: stay joined to a domain through coordinator failovers.

Every server, client and admin holds one `GroupMember`. It keeps one AMP
connection to the acting primary coordinator, follows `NotPrimary` redirects,
heartbeats, and after any break reconnects and `Resume`s from its
`DeliveryLog` positions, so the application sees each group event once and in
order (`on_event`) whatever happened to the connection in between.

The connection life is one state machine, all of whose transitions are in
`GroupMember._TRANSITIONS`:

    IDLE --start--> CONNECTING --connected--> AUTHENTICATING
    AUTHENTICATING --authenticated--> JOINING --joined--> JOINED
    AUTHENTICATING --reauthenticated--> RESUMING --resumed--> JOINED
    RESUMING --refused--> JOINING              (excluded meanwhile: new incarnation)
    any connection state --failed--> DISCONNECTED --retry--> CONNECTING
    JOINED --stop--> LEAVING --left--> STOPPED; everything else --stop--> STOPPED
    a refusal before the first join --rejected--> STOPPED

Inputs that come from a connection carry the number of the connection
attempt they belong to; once the member has moved on to another attempt,
late news from the old one is dropped in one place (`_fire`).
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Callable, Iterable

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.protocols import amp
from twisted.python.failure import Failure

from vod.statemachine import SerialInputs
from vod.errors import UsageError, VodError
from vod.groups import wire
from vod.groups.delivery import DeliveryGap, DeliveryLog
from vod.groups.events import GROUP_EVENTS, Event, GroupDissolved, Resynced, ViewChanged, event_from_dict

log = logging.getLogger(__name__)

KINDS = ("server", "client", "admin")
HEARTBEAT_PATIENCE = 3  # unanswered heartbeat intervals before the link counts as dead
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 0.5


class GroupUnavailable(VodError):
    """No acting primary answered in time (or the member is not running)."""


class MemberStopped(GroupUnavailable):
    """The member was stopped (or never started) before the request could be served."""


class CoordinatorRefused(VodError):
    """The coordinator refused: wrong secret, a join it will not take, a stale view..."""


class NotInGroup(VodError):
    """A cast to a group this member has no view of."""


class State(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    JOINING = "joining"
    RESUMING = "resuming"
    JOINED = "joined"
    DISCONNECTED = "disconnected"
    LEAVING = "leaving"
    STOPPED = "stopped"


# States in which the coordinator may push events: it commits a join or
# replays owed events before it answers Join or Resume.
_RECEIVING = (State.JOINING, State.RESUMING, State.JOINED)


# -- pure helpers -------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """"host:port" -> (host, port); ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port)


class Backoff:
    """Reconnect delays: short at first so a failover costs little, capped so a dead cluster is not hammered."""

    def __init__(self, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF):
        self._first = first
        self._cap = cap
        self._delay = first

    @property
    def fresh(self) -> bool:
        """No failure since the last reset: the next one is news."""
        return self._delay == self._first

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._cap, delay * 2)
        return delay

    def reset(self) -> None:
        self._delay = self._first


class CoordinatorList:
    """Where to connect next: round-robin over the known replicas, or straight to a named primary."""

    def __init__(self, addresses: Iterable[str]):
        self._addresses = list(dict.fromkeys(addresses))
        if not self._addresses:
            raise ValueError("at least one coordinator address is needed")
        for address in self._addresses:
            parse_address(address)
        self._index = 0

    @property
    def current(self) -> str:
        return self._addresses[self._index]

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self._addresses)

    def advance(self) -> str:
        self._index = (self._index + 1) % len(self._addresses)
        return self.current

    def point_at(self, address: str) -> str:
        """Make `address` current, learning it if new (a primary we were not told about at start)."""
        if address not in self._addresses:
            parse_address(address)
            self._addresses.append(address)
        self._index = self._addresses.index(address)
        return self.current


def decode_events(events: Any) -> list[Event]:
    """A Deliver batch, all or nothing; ValueError if any of it is not an event."""
    if not isinstance(events, list):
        raise ValueError(f"Deliver events must be a list, not {type(events).__name__}")
    try:
        return [event_from_dict(event) for event in events]
    except TypeError as err:  # a field of the wrong JSON type that slipped past the record check
        raise ValueError(str(err)) from err


# -- the connection -----------------------------------------------------------------------------------


class _CoordinatorLink(amp.AMP):
    """One AMP connection to a coordinator, on behalf of a member, for one connection attempt."""

    def __init__(self, member: "GroupMember", attempt: int):
        super().__init__()
        self.member = member
        self.attempt = attempt

    def connectionMade(self):
        super().connectionMade()
        # Heartbeats and commands are small: without this, Nagle holds each ~40 ms.
        self.transport.setTcpNoDelay(True)

    @wire.Deliver.responder
    def deliver(self, events, term):
        self.member._received(self, events, term)
        return {}

    def unhandledError(self, failure: Failure) -> None:
        # A Deliver whose JSON does not even parse fails inside AMP, before
        # our responder; it is the coordinator's fault, not worth a traceback.
        if failure.check(ValueError):
            self.member._link_broken(self, f"malformed box: {failure.getErrorMessage()}")
        else:
            super().unhandledError(failure)

    def connectionLost(self, reason: Failure) -> None:
        # The member first: super() fails the outstanding calls, and the
        # requests that retry must already find this link gone.
        self.member._link_broken(self, f"connection lost: {reason.getErrorMessage()}")
        super().connectionLost(reason)


def _is_link_trouble(failure: Failure) -> bool:
    """Failures that say nothing against the request, only against the connection it used."""
    return bool(failure.check(wire.NotPrimary, error.ConnectionClosed, defer.TimeoutError))


# -- the member ---------------------------------------------------------------------------------------


class GroupMember(SerialInputs):
    """A member of one domain: joined through whichever coordinator is primary, events in order.

    `secret` is the domain secret (bytes) or a user's `UserCredential`, which
    joins as a client only (see vod/coordinator/access.py).

    `start()` fires with the join answer's view once joined. It does not time
    out: coordinators that are not up yet are waited for (callers add their
    own timeout). A refusal before the first join (wrong secret, member id in
    use) fails it for good; after that the member reconnects on its own
    until `stop()`. Commands (`cast`, `next_ruid`, `status`) wait out
    reconnections, up to `command_timeout`.

    Attributes: `views` (group -> the last ViewChanged delivered), `term`
    (highest coordinator term seen), `primary` (the address believed to be
    the acting primary, None when unknown), `connected` (JOINED now).
    """

    def __init__(self, reactor, coordinators: Iterable[str], secret: bytes, member_id: str, kind: str,
                 domain: str, address: str, user: str = "", capacity: int = 0, movies: Iterable[str] = (),
                 heartbeat_interval: float = 0.2, on_event: Callable[[Event], Any] | None = None,
                 on_state: Callable[[str], Any] | None = None, connect_timeout: float = 1.0, *,
                 request_timeout: float = 2.0, command_timeout: float = 5.0):
        if kind not in KINDS:
            raise UsageError(f"member kind must be one of {', '.join(KINDS)}, not {kind!r}")
        for name, value in (("heartbeat interval", heartbeat_interval), ("connect timeout", connect_timeout),
                            ("request timeout", request_timeout), ("command timeout", command_timeout)):
            if not value > 0:
                raise UsageError(f"{name} must be > 0 seconds, not {value!r}")
        try:
            self._coordinators = CoordinatorList(coordinators)
        except ValueError as err:
            raise UsageError(f"coordinators: {err}") from err
        self._reactor = reactor
        self._secret = secret
        self.member_id = member_id
        self._join_details = dict(kind=kind, domain=domain, address=address, user=user, capacity=capacity,
                                  movies=list(movies))
        self._interval = heartbeat_interval
        self._on_event = on_event or (lambda event: None)
        self._on_state = on_state or (lambda state: None)
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._command_timeout = command_timeout

        self.term = 0
        self.primary: str | None = None
        self.views: dict[str, ViewChanged] = {}
        self._deliveries = DeliveryLog(self.member_id)
        self._resync_gone: set[str] = set()  # groups not (yet) named by a resync series in progress
        self._incarnated = False  # a Join went through: the coordinator knows us, Resume is the way back

        self._state = State.IDLE
        self._attempt = 0
        self._connecting: Deferred | None = None
        self._link: _CoordinatorLink | None = None
        self._backoff = Backoff()
        self._retry = None  # IDelayedCall of the next connection attempt
        self._heartbeat: LoopingCall | None = None
        self._heard_at = 0.0
        self._started: Deferred | None = None
        self._stopped: list[Deferred] = []
        self._link_waiters: list[Deferred] = []

    # -- public API --------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def connected(self) -> bool:
        """Joined through a live connection: commands go out now rather than after a reconnection."""
        return self._state is State.JOINED

    @property
    def coordinators(self) -> tuple[str, ...]:
        """Every coordinator address known, including primaries learnt from redirects."""
        return self._coordinators.addresses

    def start(self) -> Deferred:
        """Connect and join; fires with the join answer's `view` (CoordinatorRefused if refused)."""
        if self._state is not State.IDLE:
            raise RuntimeError(f"GroupMember {self.member_id} already started")
        self._started = Deferred()
        self._fire("start")
        return self._started

    def stop(self) -> Deferred:
        """Leave (if joined), close, cancel every timer; fires once stopped."""
        if self._state is State.STOPPED:
            return defer.succeed(None)
        stopped = Deferred()
        self._stopped.append(stopped)
        self._fire("stop")
        return stopped

    def cast(self, group: str, payload: dict) -> Deferred:
        """Send `payload` to `group` in the view last delivered here; fires with its (view_id, seq).

        A cast retried after a lost connection may have been committed by the
        old primary already: delivery to the group is at least once.
        """
        def arguments():
            view = self.views.get(group)
            if view is None:
                raise NotInGroup(f"{self.member_id} has no view of group {group}")
            return dict(group=group, view_id=view.view_id, payload=payload)

        return self._command(wire.Cast, arguments).addCallback(lambda answer: (answer["view_id"], answer["seq"]))

    def next_ruid(self) -> Deferred:
        """A fresh RUID (int) from the coordinator."""
        return self._command(wire.NextRuid, dict).addCallback(lambda answer: answer["ruid"])

    def status(self) -> Deferred:
        """The connected coordinator's view of the cluster (dict)."""
        return self._command(wire.Status, dict).addCallback(lambda answer: answer["status"])

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred:
        """Any other wire command (OpenRequest, CDone, RegisterMovies...), retried through failovers.

        Only for commands that are safe to repeat: the request commands are, by
        their request id or RUID.
        """
        return self._command(command, lambda: dict(arguments))

    # -- the state machine -------------------------------------------------------------------------

    def _transition(self, input: str, attempt: int | None, data: dict[str, Any]) -> None:
        if attempt is not None and attempt != self._attempt:
            log.debug("%s: %s from abandoned connection attempt %d ignored", self.member_id, input, attempt)
            return
        transition = self._TRANSITIONS.get((self._state, input))
        if transition is None:
            log.debug("%s: %s ignored in state %s", self.member_id, input, self._state)
            return
        new_state, outputs = transition
        log.debug("%s: %s --%s--> %s", self.member_id, self._state, input, new_state)
        self._state = new_state
        for output in outputs:
            output(self, **data)
        self._on_state(new_state.value)

    # -- outputs: each takes the input's data as keywords and ignores what it does not need ----------

    def _connect(self, **_: Any) -> None:
        self._retry = None
        self._attempt += 1
        attempt = self._attempt
        host, port = parse_address(self._coordinators.current)
        endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=self._connect_timeout)
        connecting = endpoint.connect(Factory.forProtocol(lambda: _CoordinatorLink(self, attempt)))
        # Endpoints leave the connect timeout to the reactor; this bounds it whatever the reactor does.
        connecting.addTimeout(self._connect_timeout, self._reactor)
        self._connecting = connecting

        def connected(link):
            if attempt != self._attempt:  # given up on meanwhile; nobody else would ever close it
                link.transport.abortConnection()
            else:
                self._fire("connected", attempt, link=link)

        connecting.addCallbacks(
            connected,
            lambda failure: self._fire("failed", attempt, reason=f"cannot connect: {failure.getErrorMessage()}"),
        )

    def _authenticate(self, link: _CoordinatorLink, **_: Any) -> None:
        self._connecting = None
        self._link = link

        def respond(challenge):
            return self._call(link, wire.Authenticate,
                              **wire.authenticate_arguments(self._secret, challenge["nonce"], self.member_id))

        d = self._call(link, wire.Challenge, protocol=wire.PROTOCOL_VERSION).addCallback(respond)
        d.addCallbacks(
            lambda _: self._fire("reauthenticated" if self._incarnated else "authenticated", link.attempt),
            lambda failure: self._link_failed(link, failure),
        )

    def _send_join(self, **_: Any) -> None:
        link = self._link

        def joined(answer):
            self._see_term(answer["term"])
            self._incarnated = True
            self._fire("joined", link.attempt, view=answer["view"])

        self._call(link, wire.Join, **self._join_details).addCallbacks(
            joined, lambda failure: self._link_failed(link, failure))

    def _send_resume(self, **_: Any) -> None:
        link = self._link
        positions = self._deliveries.resume_positions()

        def resumed(answer):
            self._see_term(answer["term"])
            self._fire("resumed", link.attempt)

        def not_resumed(failure):
            if failure.check(wire.Refused):
                log.warning("%s: %s will not resume us (%s); joining again as a new incarnation",
                            self.member_id, self._coordinators.current, failure.getErrorMessage())
                self._fire("refused", link.attempt)
            else:
                self._link_failed(link, failure)

        self._call(link, wire.Resume, positions=positions).addCallbacks(resumed, not_resumed)

    def _forget_deliveries(self, **_: Any) -> None:
        # The coordinator forgot this member, so positions in the old
        # incarnation's groups mean nothing; its new views start afresh.
        self._deliveries = DeliveryLog(self.member_id)
        self.views = {}
        self._incarnated = False

    def _settle_joined(self, view: Any = None, **_: Any) -> None:
        self.primary = self._coordinators.current
        self._backoff.reset()
        self._heard_at = self._reactor.seconds()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(self._interval, now=False).addErrback(
            lambda failure: log.error("%s: heartbeat loop failed: %s", self.member_id, failure))
        if self._started is not None and not self._started.called:
            self._started.callback(view)
        waiters, self._link_waiters = self._link_waiters, []
        for waiter in waiters:
            waiter.callback(self._link)

    def _stop_heartbeats(self, **_: Any) -> None:
        if self._heartbeat is not None:
            heartbeat, self._heartbeat = self._heartbeat, None
            heartbeat.stop()

    def _drop_link(self, **_: Any) -> None:
        # Bump the attempt first: whatever the cancellation and the abort
        # below report about the old connection must find it abandoned.
        self._attempt += 1
        self._stop_heartbeats()
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self._link is not None:
            link, self._link = self._link, None
            if link.transport is not None:
                link.transport.abortConnection()

    def _schedule_reconnect(self, reason: str = "", primary: str | None = None, **_: Any) -> None:
        failed = self._coordinators.current
        self.primary = primary
        if primary is None:
            target = self._coordinators.advance()
        else:
            try:
                target = self._coordinators.point_at(primary)
            except ValueError:
                self.primary = None
                target = self._coordinators.advance()
        # The first failure after a join is news; the retries that follow are routine.
        level = logging.WARNING if self._backoff.fresh else logging.INFO
        # Redirected to a named primary that is not the one that just failed us: go at once.
        delay = 0.0 if self.primary and target != failed and self._backoff.fresh else self._backoff.next()
        log.log(level, "%s: %s (%s); reconnecting to %s in %.2f s",
                self.member_id, reason or "connection failed", failed, target, delay)
        self._retry = self._reactor.callLater(delay, self._fire, "retry")

    def _send_leave(self, **_: Any) -> None:
        link = self._link
        self._call(link, wire.Leave).addBoth(lambda _: self._fire("left", link.attempt))

    def _finish(self, error: Exception | None = None, **_: Any) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._started is not None and not self._started.called:
            self._started.errback(error or MemberStopped(f"{self.member_id} stopped before it joined"))
        waiters, self._link_waiters = self._link_waiters, []
        for waiter in waiters:
            waiter.errback(MemberStopped(f"{self.member_id} stopped"))
        stopped, self._stopped = self._stopped, []
        for d in stopped:
            d.callback(None)

    _RECONNECT = (State.DISCONNECTED, (_drop_link, _schedule_reconnect))
    _HALT = (State.STOPPED, (_drop_link, _finish))
    _TRANSITIONS: dict[tuple[State, str], tuple[State, tuple[Callable[..., None], ...]]] = {
        (State.IDLE, "start"): (State.CONNECTING, (_connect,)),
        (State.CONNECTING, "connected"): (State.AUTHENTICATING, (_authenticate,)),
        (State.AUTHENTICATING, "authenticated"): (State.JOINING, (_send_join,)),
        (State.AUTHENTICATING, "reauthenticated"): (State.RESUMING, (_send_resume,)),
        (State.JOINING, "joined"): (State.JOINED, (_settle_joined,)),
        (State.RESUMING, "resumed"): (State.JOINED, (_settle_joined,)),
        (State.RESUMING, "refused"): (State.JOINING, (_forget_deliveries, _send_join)),
        (State.DISCONNECTED, "retry"): (State.CONNECTING, (_connect,)),
        (State.JOINED, "stop"): (State.LEAVING, (_stop_heartbeats, _send_leave)),
        (State.LEAVING, "left"): _HALT,
        (State.LEAVING, "failed"): _HALT,
        **dict.fromkeys([(state, "failed") for state in (State.CONNECTING, State.AUTHENTICATING, State.JOINING,
                                                           State.RESUMING, State.JOINED)], _RECONNECT),
        # Only before the first join (see _link_failed); afterwards refusals are "failed".
        **dict.fromkeys([(state, "rejected") for state in (State.AUTHENTICATING, State.JOINING)], _HALT),
        **dict.fromkeys([(state, "stop") for state in (State.IDLE, State.CONNECTING, State.AUTHENTICATING,
                                                         State.JOINING, State.RESUMING, State.DISCONNECTED)], _HALT),
    }

    # -- what the connection reports -------------------------------------------------------------

    def _link_broken(self, link: _CoordinatorLink, reason: str) -> None:
        self._fire("failed", link.attempt, reason=reason)

    def _link_failed(self, link: _CoordinatorLink, failure: Failure) -> None:
        """A call on `link` failed: turn the failure into the state machine's input."""
        value = failure.value
        address = self._coordinators.current
        if isinstance(value, wire.NotPrimary):
            primary = str(value) or None
            self._fire("failed", link.attempt, reason=f"not primary, primary {primary or 'unknown'}",
                       primary=primary)
        elif isinstance(value, (wire.AuthFailed, wire.Refused)):
            refusal = f"{address} refused {self.member_id}: {failure.getErrorMessage()}"
            if self._started is not None and not self._started.called:
                # Before the first join a refusal is a mistake to report (wrong
                # secret, member id in use), not an outage to wait out.
                self._fire("rejected", link.attempt, error=CoordinatorRefused(refusal))
            else:
                self._fire("failed", link.attempt, reason=refusal, primary=address)
        else:
            self._fire("failed", link.attempt, reason=failure.getErrorMessage())

    def _received(self, link: _CoordinatorLink, events: Any, term: int) -> None:
        """A Deliver: hand each new event on, drop replays, resume on a gap."""
        if link.attempt != self._attempt or self._state not in _RECEIVING:
            return
        if term < self.term:
            # Fencing: a primary from an older term was deposed; whatever it pushes is void.
            log.warning("%s: ignoring a Deliver with stale term %d (newest seen %d)", self.member_id, term, self.term)
            return
        self._see_term(term)
        try:
            decoded = decode_events(events)
        except ValueError as err:
            self._link_broken(link, f"malformed Deliver: {err}")
            return
        for event in decoded:
            if isinstance(event, Resynced):
                self._resync(event)
                continue
            if isinstance(event, GROUP_EVENTS):
                try:
                    if not self._deliveries.receive(event):
                        continue
                except DeliveryGap as gap:
                    # The primary is fine, it just owes us events: back to it for a replay.
                    self._fire("failed", link.attempt, reason=str(gap), primary=self._coordinators.current)
                    return
                self._track_view(event)
            self._emit(event)

    def _resync(self, event: Resynced) -> None:
        """One group's present after a Resume from too far back: adopt it, and tell the application.

        The application sees what it would have made of the events it missed: a ViewChanged for each
        group whose view is new to it, and, after the last `Resynced`, a GroupDissolved for each group
        it held a position in and is no longer in."""
        if event.first:
            self._resync_gone = set(self._deliveries.positions())
        self._resync_gone.discard(event.group)
        before = self._deliveries.position(event.group)
        self._deliveries.resync(event.group, event.view_id, event.casts)
        if before is None or before[0] != event.view_id:
            view = ViewChanged(event.group, event.view_id, tuple(event.members),
                               joined=(self.member_id,) if before is None else (), left=(), previous_casts=0)
            self._track_view(view)
            self._emit(view)
        if event.last:
            gone, self._resync_gone = sorted(self._resync_gone), set()
            log.warning("%s: resynchronised by the coordinator (%s was away longer than its replay covers): "
                        "%d groups gone meanwhile", self.member_id, self._coordinators.current, len(gone))
            for group in gone:
                position = self._deliveries.forget(group)
                if position is not None:
                    dissolved = GroupDissolved(group, position[0], position[1], (self.member_id,))
                    self._track_view(dissolved)
                    self._emit(dissolved)

    def _track_view(self, event: Event) -> None:
        if isinstance(event, ViewChanged):
            self.views[event.group] = event
        elif isinstance(event, GroupDissolved):
            self.views.pop(event.group, None)

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            # The application's bug must not cost the connection, or every event after it.
            log.exception("%s: on_event failed for %s", self.member_id, event)

    def _see_term(self, term: int) -> None:
        if term > self.term:
            # One line per failover: from here on, a Deliver of an older term (a deposed primary) is void.
            log.info("%s: coordinator term %d (was %d); pushes of older terms are ignored from now on",
                     self.member_id, term, self.term)
            self.term = term

    # -- heartbeats --------------------------------------------------------------------------------

    def _beat(self) -> None:
        link = self._link
        silence = self._reactor.seconds() - self._heard_at
        if silence >= HEARTBEAT_PATIENCE * self._interval:
            self._link_broken(link, f"no heartbeat answer for {silence:.2f} s")
            return

        def heard(answer):
            if link.attempt == self._attempt:
                self._heard_at = self._reactor.seconds()
                self._see_term(answer["term"])

        # No timeout per heartbeat: the silence check above bounds them all.
        link.callRemote(wire.Heartbeat).addCallbacks(heard, lambda failure: self._link_failed(link, failure))

    # -- requests ----------------------------------------------------------------------------------

    def _call(self, link: _CoordinatorLink, command: type[amp.Command], timeout: float | None = None,
              **arguments: Any) -> Deferred:
        d = link.callRemote(command, **arguments)
        return d.addTimeout(self._request_timeout if timeout is None else timeout, self._reactor)

    def _command(self, command: type[amp.Command], arguments: Callable[[], dict]) -> Deferred:
        return Deferred.fromCoroutine(self._retrying(command, arguments))

    async def _retrying(self, command: type[amp.Command], arguments: Callable[[], dict]) -> dict:
        """Send `command` once joined; through failovers, until an answer or `command_timeout`."""
        name = command.__name__
        deadline = self._reactor.seconds() + self._command_timeout
        while True:
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                raise GroupUnavailable(f"{name}: no primary coordinator answered within "
                                       f"{self._command_timeout:g} s (tried {', '.join(self.coordinators)})")
            link = await self._joined_link(remaining)
            # Evaluated per attempt: a cast must carry the view current now, not the one before the failover.
            call = self._call(link, command, min(remaining, self._request_timeout), **arguments())
            try:
                return await call
            except Exception:
                failure = Failure()
            if not _is_link_trouble(failure):
                if failure.check(wire.Refused, wire.AuthFailed, amp.RemoteAmpError):
                    raise CoordinatorRefused(f"{name}: {failure.getErrorMessage()}")
                failure.raiseException()
            if not failure.check(defer.TimeoutError):
                # Also reports the link if its loss did not reach us yet, so
                # the next round waits for a new one rather than spinning on it.
                self._link_failed(link, failure)

    def _joined_link(self, timeout: float) -> Deferred:
        """The link once JOINED (now if already); GroupUnavailable after `timeout`."""
        if self._state is State.JOINED:
            return defer.succeed(self._link)
        if self._state in (State.IDLE, State.STOPPED):
            return defer.fail(MemberStopped(f"{self.member_id} is {self._state}"))
        waiter = Deferred(canceller=self._link_waiters.remove)
        self._link_waiters.append(waiter)
        waiter.addTimeout(timeout, self._reactor)

        def unavailable(failure):
            failure.trap(defer.TimeoutError)
            raise GroupUnavailable(f"{self.member_id}: not joined to a primary coordinator "
                                   f"(still {self._state} after {timeout:.2f} s)")

        return waiter.addErrback(unavailable)
