"""One coordinator replica: the Raft log, the group state, the failure detector and the member sessions.

Roles: the acting primary is the Raft leader whose majority answered within
its lease (`RaftLog.is_acting_primary`). Only the acting primary answers
member commands, watches heartbeats and pushes committed events; the other
replicas apply the same log (so they hold the same lists) and answer members
with `NotPrimary` and the primary's listen address.

Every role change is logged as `ROLE acting-primary term=T` / `ROLE
not-primary term=T` with a timestamp: the integration tests read these lines
to check that no two replicas ever act as primary at once.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import time
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.task import LoopingCall

from vod.groups import commands as cmds
from vod.groups.events import RuidAssigned, event_from_dict
from vod.groups.liveness import FailureDetector
from vod.coordinator.machine import GroupMachine, last_seen
from vod.groups.raft import LEADER, NotCommitted, RaftLog, RaftSettings, RaftView
from vod.groups.state import DOMAIN_PREFIX, domain_group
from vod.groups.wire import Refused, fits
from vod.strategy.mask import MAX_FRAMES, FrameMask
from vod.strategy.placement import NoServers, ServerInfo, Strategy, make_strategy
from vod.strategy.restripe import restripe
from vod.stream.tokens import StreamTokens
from vod.coordinator import access
from vod.coordinator import limits
from vod.coordinator import requests as rq
from vod.coordinator.knock import Knock
from vod.coordinator.recruit import REPLICAS_TABLE, Recruiter, StandbyWaiter
from vod.coordinator.session import MemberSession

log = logging.getLogger("vod.coordinator")

# Seconds between a server's knocks after its control connection closed, while its address still accepts:
# about 0.2 s in all, well inside the reconnect grace that decides when the knocks give no verdict.
KNOCKS_AFTER_CLOSE = (0.01, 0.03, 0.06, 0.1)
# Seconds a restripe waits for the client's held mask when this replica has none (it took over since the
# last report, or the play is younger than one report): without it every frame the failed server already
# delivered is sent again. A client whose server's stream broke reports at once, on resuming if need be.
HELD_WAIT = 1.0
STALL_GRACE_AFTER = 0.5  # seconds between two role checks (normally 0.02) that count as a stall
STASH_LIMIT = 50_000  # events kept for members while the acting lease lapses; beyond that they are dropped
STATUS_VERSION = 2  # v2: bounded lists with counts (groups_more, members_more); v1 listed every group
STATUS_GROUPS = 100  # groups a Status lists: the domain groups, then the most recent video groups
STATUS_MEMBERS = 1_000  # members a Status lists (servers first), fewer if they do not fit one AMP value
GROUP_MEMBERS_LISTED = 200  # members listed per group in Status and Groups (member_count has them all)
GROUPS_PAGE = 500  # groups per Groups page at most (fewer if they do not fit one AMP value)


class CoordinatorReplica:
    def __init__(self, reactor, *, replica_id: str, raft_addr: str, peers: list[str], listen: str, secret: bytes,
                 data_dir: str | None, settings: RaftSettings = RaftSettings(), failure_timeout: float = 1.0,
                 grace: float = 2.0, check_interval: float = 0.02, standby: bool = False,
                 reconnect_grace: float = 0.5,
                 coordinators: list[str] = (), replace_after: float = 1.0, raft_factory=RaftLog, clock=None,
                 policy: str = "weighted", max_servers: int = 4, admin_socket: str | None = None,
                 admin_socket_required: bool = True, command_rate: float = limits.COMMAND_RATE,
                 connection_rate: float = limits.CONNECTION_RATE, knock=None):
        self.reactor = reactor
        self.replica_id = replica_id
        self.raft_addr = raft_addr
        self.listen = listen
        self.secret = secret
        self.stream_tokens = StreamTokens(secret)  # what a client shows servers for its request's frames
        self.standby = standby
        self.grace = grace
        self.reconnect_grace = reconnect_grace
        # knock(address) -> Deferred[Knock] (vod.coordinator.knock): tells a crashed server from a dropped link
        # at once. None: every closed connection waits out the reconnect grace.
        self.knock = knock
        self._knockable: dict[str, str] = {}  # server id -> its stream address, which accepted a knock
        self.policy = policy
        self.max_servers = max_servers
        self._held: dict[int, str] = {}  # RUID -> latest held mask a client reported (base64)
        self._restriping: set[int] = set()
        self._held_waits: dict[int, Any] = {}  # RUID -> IDelayedCall: a restripe waiting for a held mask
        self._last_check: float | None = None
        self._strategizing: dict[int, list[defer.Deferred]] = {}  # RUID -> callers waiting for its strategy
        self._check_interval = check_interval
        self.push_encoded: dict | None = None  # see _push
        self._stashed: list[dict[str, list[dict]]] = []  # pushes owed while the lease lapsed (see _push)
        self._stashed_term: int | None = None
        self._stashed_events = 0
        self.machine = GroupMachine()
        self.raft = raft_factory(reactor, raft_addr, peers, secret, self.machine, data_dir, settings,
                                 on_view=self._on_raft_view, on_applied=self._on_applied)
        if hasattr(self.raft, "on_applied_entry"):
            self.raft.on_applied_entry = self._on_applied_entry  # one call per log entry, not per command
        if hasattr(self.raft, "applied_wanted"):
            # A follower has no member sessions (members are told NotPrimary) and nothing to push; what it
            # would note from applied entries (who joined, who is gone) `_become_primary` reads from the
            # state itself. So while not the Raft leader, it is not woken for them at all.
            self.raft.applied_wanted = lambda: bool(self.sessions)
        # Timeouts are judged on `clock` (a monotonic one in production: a wall-clock jump must not
        # expire everybody at once); tests pass a twisted Clock as both reactor and clock.
        self.clock = clock or reactor
        self.detector = FailureDetector(self.clock, failure_timeout)
        self.sessions: dict[str, MemberSession] = {}
        self.admin_socket = admin_socket  # its directory was checked private by the caller (vod.localsocket)
        self._admin_socket_required = admin_socket_required
        self.command_rate = command_rate  # per connection; 0: no limit
        self.connections = limits.ConnectionLimit(connection_rate, self.clock) if connection_rate > 0 else None
        self.acting = False
        self.raft_view: RaftView | None = None
        self._excluding: set[str] = set()
        self._registered = False
        self.recruiter = Recruiter(self, replace_after=replace_after)
        self.standby_waiter = StandbyWaiter(self, list(coordinators)) if standby else None
        self._checker = LoopingCall(self._check)
        self._checker.clock = reactor
        self._port = None
        self._local_port = None

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        factory = limits.LimitedFactory(lambda: MemberSession(self), self.connections, self._refusing_host)
        host, port = self.listen.rsplit(":", 1)
        d = TCP4ServerEndpoint(self.reactor, int(port), interface=host).listen(factory)

        def listening(port):
            self._port = port
            return self._listen_locally(factory)

        def started(_):
            if not self.standby:
                self.raft.start()
            self._checker.start(self._check_interval, now=False)
            log.info("replica %s listening on %s, raft %s", self.replica_id, self.listen, self.raft_addr)
            return self

        return d.addCallback(listening).addCallback(started)

    def _listen_locally(self, factory) -> defer.Deferred:
        """The local admin socket: same protocol, same authentication, file mode 600."""
        if not self.admin_socket:
            return defer.succeed(None)
        d = UNIXServerEndpoint(self.reactor, self.admin_socket, mode=0o600).listen(factory)

        def listening(port):
            self._local_port = port
            log.info("replica %s admin socket %s", self.replica_id, self.admin_socket)

        def cannot(failure):
            if self._admin_socket_required:
                return failure
            # The default path, taken by another coordinator meanwhile: members still reach us over TCP.
            log.warning("no admin socket at %s: %s", self.admin_socket, failure.getErrorMessage())

        return d.addCallbacks(listening, cannot)

    def _refusing_host(self, host: str) -> None:
        log.warning("refusing connections from %s: more than %g attempts per second", host, self.connections.rate)

    def command_limit(self) -> limits.CommandLimit | None:
        """A new connection's command rate limit (None when the limit is off)."""
        return limits.CommandLimit(self.command_rate, self.clock) if self.command_rate > 0 else None

    def stop(self) -> defer.Deferred:
        if self._checker.running:
            self._checker.stop()
        self.raft.stop()
        for session in list(self.sessions.values()):
            session.transport.loseConnection()
        ports = [p for p in (self._port, self._local_port) if p is not None]
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    # -- role --------------------------------------------------------------------------------------

    def _on_raft_view(self, view: RaftView) -> None:
        self.raft_view = view

    def promote(self, voters: list[str]) -> None:
        """A standby that the primary made a voter starts its Raft node with the full voter list."""
        self.standby = False
        self.raft.start(peers=voters)

    def _check(self) -> None:
        if self.standby:
            self.standby_waiter.tick()
            return
        now = self.clock.seconds()
        if self._last_check is not None and now - self._last_check > STALL_GRACE_AFTER:
            # We were not running (a stall, a pause): the heartbeats that queued meanwhile are not
            # read yet, so judging members now would exclude everyone. Judge them later.
            log.warning("role check ran %.2f s late: granting members %.1f s of grace", now - self._last_check,
                        self.grace)
            self.detector.grant_grace(self.grace)
        self._last_check = now
        acting = self.raft.is_acting_primary()
        term = self.raft_view.term if self.raft_view else 0
        if acting != self.acting:
            self.acting = acting
            log.warning("ROLE %s term=%d replica=%s", "acting-primary" if acting else "not-primary", term,
                        self.replica_id)
            if acting:
                self._become_primary()
            else:
                self._excluding.clear()
                for waiting in self._held_waits.values():
                    waiting.cancel()
                self._held_waits.clear()
        if not self._registered:
            self._register()
        if self.acting:
            self._exclude_silent()
            self.recruiter.tick()

    def _become_primary(self) -> None:
        self._push_stashed()
        # Nobody has heartbeated to us yet: judge nobody before the grace period is over.
        self.detector.grant_grace(self.grace)
        for member_id in self.raft.read(lambda m: list(m.state.members)):
            self.detector.heartbeat(member_id)
        # Servers excluded just before the failover may have left strategies that were never restriped.
        self._restripe_orphans()

    def _still_incarnation(self, member_id: str, incarnation: int) -> bool:
        """`member_id` is still a member, as the same incarnation (a rejoin is somebody new)."""
        current = self.raft.read(lambda m: m.state.members.get(member_id))
        return current is not None and current.incarnation == incarnation

    def member_disconnected(self, member_id: str) -> None:
        """A member's control connection closed: a crash shows this way at once (see FailureDetector.suspect).

        It is excluded after the reconnect grace unless it comes back; a server whose stream address
        refuses connections now (it accepted them before) has no process left to come back, and is
        excluded at once, so its clients' frames move half a second sooner."""
        if not self.acting:
            return
        self.detector.suspect(member_id, self.reconnect_grace)
        address = self._knockable.get(member_id)
        if address is not None:
            self._knock_after_close(member_id, address, KNOCKS_AFTER_CLOSE)

    def _knock_after_close(self, member_id: str, address: str, later: tuple[float, ...]) -> None:
        self.knock(address).addCallback(self._knocked_after_close, member_id, address, later)

    def _knocked_after_close(self, knock, member_id: str, address: str, later: tuple[float, ...]) -> None:
        if member_id in self.sessions or not self.acting or self._knockable.get(member_id) != address:
            return  # back already, no longer acting, or dropped meanwhile: the grace decides, if anything
        if knock is Knock.LISTENING and later:
            # A dying process's sockets do not all close in the same instant: its listener may still
            # accept a moment after its control connection closed. Knock again a little later.
            self.reactor.callLater(later[0], self._knock_after_close, member_id, address, later[1:])
            return
        if knock is not Knock.REFUSED:
            return  # alive, or no verdict: the grace decides
        del self._knockable[member_id]
        log.warning("%s: control connection closed and nothing listens at %s any more: excluding it now",
                    member_id, address)
        self._exclude([member_id], "its control connection closed and its stream address refuses connections")

    def _learn_knockable(self, member_id: str) -> None:
        """Knock once at a server's stream address as it joins or resumes: only an address that accepted
        may later be read as a crash when it refuses."""
        if self.knock is None:
            return
        member = self.raft.read(lambda m: m.state.members.get(member_id))
        if member is None or member.kind != "server":
            return

        def answered(knock):
            if knock is Knock.LISTENING and self._still_incarnation(member_id, member.incarnation):
                self._knockable[member_id] = member.address
            else:
                self._knockable.pop(member_id, None)

        self.knock(member.address).addCallback(answered)

    def _register(self) -> None:
        """Put this replica's id and addresses in the replicated `replicas` table (retried until it sticks)."""
        self._registered = True
        record = {"id": self.replica_id, "raft": self.raft_addr, "listen": self.listen, "standby": self.standby}
        current = self.raft.read(lambda m: m.state.table(REPLICAS_TABLE).get(self.raft_addr))
        if current == record:
            return
        d = self.raft.propose(cmds.put_cmd(REPLICAS_TABLE, self.raft_addr, record))

        def failed(_):
            self._registered = False  # no leader yet: the next check tries again

        d.addErrback(failed)

    def _exclude_silent(self) -> None:
        self._exclude(self.detector.expired(), "no heartbeat within the failure timeout")

    def _exclude(self, member_ids: list[str], reason: str) -> None:
        chosen = [m for m in member_ids if m not in self._excluding]
        if not chosen:
            return
        incarnations = self.raft.read(lambda m: {i: m.state.members[i].incarnation for i in chosen
                                                 if i in m.state.members})
        for member_id in chosen:
            if member_id not in incarnations:
                self.detector.forget(member_id)
        chosen = sorted(incarnations)
        if not chosen:
            return
        self._excluding.update(chosen)
        log.warning("excluding silent members %s", ", ".join(chosen))  # tests and benches read this line
        d = self.raft.propose(cmds.exclude_cmd(chosen, reason, incarnations=incarnations))

        def done(result):
            self._excluding.difference_update(chosen)

        d.addBoth(done)

    def is_primary_now(self) -> bool:
        """Checked live on every member command: the 20 ms role check may lag a pause or a step-down."""
        acting = self.raft.is_acting_primary()
        if acting != self.acting:
            self._check()  # log the role change now, with its real time, before acting on it
        return acting

    def primary_listen(self) -> str:
        """Where the primary listens, as far as this replica knows ("" when unknown)."""
        if self.acting:
            return self.listen
        view = self.raft.view
        leader = view.leader if view else None
        if not leader or leader == self.raft_addr:
            return ""  # just stepped down: pysyncobj may still name us as leader
        record = self.raft.read(lambda m: m.state.table(REPLICAS_TABLE).get(leader))
        return record["listen"] if record else ""

    @property
    def term(self) -> int:
        return self.raft_view.term if self.raft_view else 0

    # -- committed events ---------------------------------------------------------------------------

    def _on_applied(self, command: dict, result: Any) -> None:
        self._on_applied_entry([(command, result)])

    def _on_applied_entry(self, applied: list[tuple[dict, Any]]) -> None:
        """The commands of one log entry, applied: bookkeeping, then the pushes, one Deliver per member.

        A group commit puts many admissions in one entry; their pushes to the same server go out
        together instead of one AMP box per command."""
        owed: dict[str, list[dict]] = {}
        for command, result in applied:
            if not isinstance(result, dict) or "events" not in result:
                continue
            op = command.get("op")
            if op == "join":
                self.detector.heartbeat(command["member_id"])
            gone = [event["member_id"] for event in result["events"] if event.get("type") == "MemberExcluded"]
            if op == "leave":
                gone.append(command["member_id"])
            if gone:
                self._push(owed)  # what earlier commands owe members reaches them before they are dropped
                owed = {}
                for member_id in gone:
                    self._drop_member(member_id)
            if self.acting and op in ("exclude", "leave"):
                self._restripe_orphans()
            if not self.sessions:
                continue  # a follower: members are connected to the primary
            for event, recipients in result["pushes"]:
                for member_id in recipients:
                    owed.setdefault(member_id, []).append(event)
        self._push(owed)

    def _push(self, owed: dict[str, list[dict]]) -> None:
        """Committed events to the members connected here, if this replica acts as primary.

        A primary whose acting lease lapsed for a moment (overload) pushes nothing meanwhile, but
        keeps what it owes: if it acts again in the same term, that goes out first
        (`_push_stashed`). Dropping it lost those strategies for good: a client and servers that
        stayed connected never heard of their request's strategy."""
        if not owed:
            return
        if not self.acting:
            if self.raft_view is not None and self.raft_view.role == LEADER:
                if self._stashed_term != self.term:
                    self._stashed, self._stashed_term = [], self.term
                self._stashed.append(owed)
                self._stashed_events += sum(len(events) for events in owed.values())
                if self._stashed_events > STASH_LIMIT:
                    self._drop_stashed()
            return
        # id(event) -> its JSON text, for the sessions' pushes (the caller keeps the events alive
        # meanwhile): an event pushed to several members is encoded once.
        self.push_encoded = {}
        try:
            for member_id, events in owed.items():
                session = self.sessions.get(member_id)
                if session is not None:
                    session.deliver(events)
        finally:
            self.push_encoded = None

    def _push_stashed(self) -> None:
        """Acting again: first what was committed while the lease had lapsed, if still in the same term."""
        stashed, term = self._stashed, self._stashed_term
        self._drop_stashed()
        if term != self.term:
            return  # another primary came between: members resume there, from its outboxes
        for owed in stashed:
            self._push(owed)

    def _drop_stashed(self) -> None:
        self._stashed, self._stashed_term, self._stashed_events = [], None, 0

    def _drop_member(self, member_id: str) -> None:
        self.detector.forget(member_id)
        self._knockable.pop(member_id, None)
        session = self.sessions.pop(member_id, None)
        if session is not None:
            # An excluded member gets nothing more here; it must join again as a new incarnation.
            session.transport.loseConnection()

    # -- what member sessions ask for -------------------------------------------------------------

    def propose(self, command: dict) -> defer.Deferred:
        if rq.is_request_command(command):
            command = dict(command, at=round(time.time(), 3))  # request ages for vod-admin
        return self.raft.propose(command)

    def join(self, session: MemberSession, kind: str, domain: str, address: str, user: str, capacity: int,
             movies: list[str]) -> defer.Deferred:
        # Registered before the commit: the join's own view is pushed as it is applied, before this answer.
        previous = self.sessions.get(session.member_id)
        self.sessions[session.member_id] = session
        d = self.propose(cmds.join_cmd(session.member_id, kind, domain, address, user=user, capacity=capacity,
                                       movies=movies))

        def joined(result):
            _raise_refusal(result)
            if previous is not None and previous is not session:
                previous.transport.loseConnection()  # the same member, reconnected: its old link is dead
            self.detector.heartbeat(session.member_id)
            self._learn_knockable(session.member_id)
            view = self.raft.read(lambda m: m.state.groups.get(domain_group(domain)))
            return {"group": view.name, "view_id": view.view_id, "members": list(view.members)}

        def refused(failure):
            if self.sessions.get(session.member_id) is session:
                if previous is None:
                    del self.sessions[session.member_id]
                else:
                    self.sessions[session.member_id] = previous
            return failure

        return d.addCallback(joined).addErrback(refused)

    def resume(self, session: MemberSession, positions: dict) -> list[dict] | None:
        """Register a reconnected member and return what it may have missed (it drops duplicates).

        That is the rest of its outbox after its position; or, when its outbox lost events and holds
        nothing it says it saw (it was away longer than the outbox covers), a resync: the current views
        of its groups and the current strategies of its requests (`GroupMachine.resync`)."""
        member_id = session.member_id

        def read(machine):
            if member_id not in machine.state.members:
                return None
            owed = machine.replay(member_id, positions)
            return (machine.resync(member_id, positions), True) if owed is None else (owed, False)

        found = self.raft.read(read)
        if found is None:
            return None
        owed, resynced = found
        if resynced:
            views = sum(1 for event in owed if event["type"] == "Resynced")
            strategies = sum(1 for event in owed if event["type"] == "StrategyAssigned")
            log.warning("%s resumes from further back than its outbox keeps: resync with the current views of "
                        "its %d groups and %d current strategies", member_id, views, strategies)
        self.sessions[member_id] = session
        self.detector.heartbeat(member_id)
        self._learn_knockable(member_id)
        return owed

    # -- requests (the strategist) ----------------------------------------------------------------------

    def register_movies(self, server_id: str, movies: list) -> defer.Deferred:
        """Record the catalogue entries a server reports (frame counts let requests be checked)."""
        known = self.raft.read(lambda m: m.state.table(rq.MOVIES_TABLE))
        proposals = []
        for entry in movies:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise Refused(f"a movie entry is an object with an id, not {entry!r}")
            info = {"frame_count": entry.get("frame_count"), "fps": entry.get("fps"),
                    "width": entry.get("width"), "height": entry.get("height")}
            if not isinstance(info["frame_count"], int) or not 0 < info["frame_count"] <= MAX_FRAMES:
                raise Refused(f"movie {entry['id']}: frame_count must be an integer in 1..{MAX_FRAMES}")
            if known.get(entry["id"]) not in (None, info):
                raise Refused(f"movie {entry['id']}: {server_id} reports {info}, the catalogue has "
                              f"{known[entry['id']]}; one of the copies is not the same movie")
            if known.get(entry["id"]) is None:
                proposals.append(self.propose(cmds.put_cmd(rq.MOVIES_TABLE, entry["id"], info)))
        return defer.gatherResults(proposals, consumeErrors=True)

    def open_request(self, client_id: str, request_id: str, movie: str, wanted: str) -> defer.Deferred:
        """Admit (or find again) a request and make sure it has a strategy; fires with (ruid, state).

        One log entry (`req_admit`): it opens the request and every replica computes its strategy."""
        d = self.propose(rq.admit_cmd(request_id, client_id, movie, wanted, self.placement))

        def admitted(result):
            _raise_refusal(result)
            changes = [e for e in result["events"] if e["type"] == "RequestChanged"]
            ruid, last = changes[0]["ruid"], changes[-1]
            if last["state"] == rq.FAILED and last["reason"] != rq.RETRY_REASON:
                raise Refused(last["reason"])  # no server holds the movie: failed in this very entry
            if last["state"] != rq.PENDING:
                return ruid, last["state"]
            record = self.raft.read(lambda m: m.requests.request(ruid))
            if record["state"] != rq.PENDING:
                return ruid, record["state"]
            # Pending: new, or admitted by a primary that died before strategizing it. A retry that
            # comes while the first strategize is in flight waits for that one instead of racing it.
            waiter = defer.Deferred()
            if ruid in self._strategizing:
                self._strategizing[ruid].append(waiter)
            else:
                self._strategizing[ruid] = [waiter]
                self._strategize(record).addBoth(self._strategized, ruid)
            return waiter.addCallback(lambda state: (ruid, state))

        return d.addCallback(admitted)

    @property
    def placement(self) -> dict:
        """How this primary places requests, stamped into each req_admit (replicas have no say of their own)."""
        return rq.placement_settings(policy=self.policy, max_servers=self.max_servers)

    def _strategized(self, result, ruid: int) -> None:
        for waiter in self._strategizing.pop(ruid, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def live_servers(self, domain: str) -> list[ServerInfo]:
        def read(machine):
            load = machine.requests.server_load()
            return [ServerInfo(m.member_id, max(1, m.capacity), load.get(m.member_id, 0), frozenset(m.movies))
                    for m in machine.state.members.values() if m.kind == "server" and m.domain == domain]
        return self.raft.read(read)

    def _strategize(self, record: dict) -> defer.Deferred:
        wanted = rq.mask_from_text(record["wanted"], record["frame_count"], "wanted mask")
        try:
            strategy = make_strategy(record["ruid"], record["movie"], record["client"], record["frame_count"],
                                     wanted, self.live_servers(record["domain"]), policy=self.policy,
                                     max_servers=self.max_servers)
        except NoServers as err:
            reason = str(err)  # `err` is unbound once the except block ends, before the callback runs
            return self.propose(rq.fail_cmd(record["ruid"], reason)).addCallback(lambda _: _refuse(reason))
        d = self.propose(rq.strategize_cmd(record["ruid"], strategy.to_dict()))

        def done(result):
            if isinstance(result, dict) and "error" in result:
                # Strategized meanwhile by a req_admit retry of the same request: that strategy stands.
                now = self.raft.read(lambda m: m.requests.request(record["ruid"]))
                if now is not None and now["state"] in (rq.STRATEGIZED, rq.STREAMING):
                    return now["state"]
            _raise_refusal(result)
            return rq.STRATEGIZED

        return d.addCallback(done)

    def report_progress(self, ruid: int, held: str) -> None:
        """A client's latest held mask (kept here only: a stale one costs duplicate frames, never lost ones)."""
        self._held[ruid] = held
        waiting = self._held_waits.pop(ruid, None)
        if waiting is not None:
            waiting.cancel()
            self._restripe_orphans()

    def _restripe_orphans(self, waited: int | None = None) -> None:
        """Hand the missing frames of every server that left a strategy to survivors and backups."""
        for record in self.raft.read(lambda m: m.requests.orphaned(set(m.state.members))):
            ruid = record["ruid"]
            if ruid in self._restriping or ruid in self._held_waits:
                continue
            if ruid not in self._held and ruid != waited:
                log.info("restripe of RUID %d waits up to %.1f s for its client's held mask", ruid, HELD_WAIT)
                self._held_waits[ruid] = self.reactor.callLater(HELD_WAIT, self._held_wait_over, ruid)
                continue
            self._restripe(record)

    def _held_wait_over(self, ruid: int) -> None:
        del self._held_waits[ruid]
        if self.acting:
            self._restripe_orphans(waited=ruid)  # with no held mask: every frame the failed server owed

    def _restripe(self, record: dict) -> None:
        ruid = record["ruid"]
        old = Strategy.from_dict(record["strategy"])
        live = self.live_servers(record["domain"])
        failed = set(old.servers) - {s.server_id for s in live}
        held = FrameMask(record["frame_count"])
        if ruid in self._held:
            held = rq.mask_from_text(self._held[ruid], record["frame_count"], "held mask")
        try:
            new = restripe(old, failed, held, live, max_servers=self.max_servers)
            command = rq.restripe_cmd(ruid, new.to_dict(), sorted(failed))
            moved = sum((old.mask_of(f) - held).count() for f in failed)
            log.warning("restriping RUID %d: %s failed; %d missing frames move to %s", ruid,
                        ", ".join(sorted(failed)), moved, ", ".join(new.servers))
        except NoServers as err:
            command = rq.fail_cmd(ruid, str(err))
            log.warning("RUID %d cannot continue: %s", ruid, err)
        self._restriping.add(ruid)
        d = self.propose(command)
        d.addErrback(lambda f: log.info("restripe of RUID %d not committed: %s", ruid, f.getErrorMessage()))
        d.addBoth(lambda _: self._restriping.discard(ruid))

    def request_step(self, command: dict) -> defer.Deferred:
        return self.propose(command).addCallback(_raise_refusal)

    def revoke_user(self, user: str, revoke: bool, by: str) -> defer.Deferred:
        """Put `user` on the replicated revoked list (or take it off); once committed, close its connections."""
        if revoke:
            command = cmds.put_cmd(access.REVOKED_TABLE, user, {"at": round(time.time(), 3), "by": by})
        elif self.raft.read(lambda m: user in m.state.table(access.REVOKED_TABLE)):
            command = cmds.delete_cmd(access.REVOKED_TABLE, user)
        else:
            return defer.succeed(None)  # not revoked: nothing to restore

        def committed(result):
            _raise_refusal(result)
            for session in list(self.sessions.values()):
                principal = getattr(session, "principal", None)
                if revoke and principal is not None and principal.user == user:
                    session.transport.loseConnection()  # its member is excluded unless it can come back
            return None

        return self.propose(command).addCallback(committed)

    def register_standby(self, record: dict) -> list[str]:
        """A standby offered itself: remember it, record it once, and tell it the current voters."""
        self.recruiter.standby_seen(record)
        known = self.raft.read(lambda m: m.state.table(REPLICAS_TABLE).get(record["raft"]))
        if known is None:
            self.raft.propose(cmds.put_cmd(REPLICAS_TABLE, record["raft"], dict(record, standby=True))) \
                .addErrback(lambda f: log.info("recording standby %s: %s", record["id"], f.getErrorMessage()))
        view = self.raft.view
        return list(view.voters) if view else []

    def next_ruid(self) -> defer.Deferred:
        def assigned(result):
            _raise_refusal(result)
            for event in result["events"]:
                parsed = event_from_dict(event)
                if isinstance(parsed, RuidAssigned):
                    return parsed.ruid
            raise NotCommitted("no RUID in the result")

        return self.propose(cmds.next_ruid_cmd()).addCallback(assigned)

    def status(self, groups_listed: int | None = None, members_listed: int | None = None) -> dict:
        """This replica's view (the Status answer, v2): bounded whatever the number of requests.

        Counts of members, groups and requests; the members (servers first); the domain groups and the
        most recent video groups, at most `STATUS_GROUPS` (`groups_more` says how many are left out:
        `Groups` pages through them all); each listed group with at most `GROUP_MEMBERS_LISTED`
        members (`member_count` has them all). If that still does not fit one AMP value (very many
        members, very long ids), fewer are listed, and `members_more` / `groups_more` say so."""
        groups_listed = STATUS_GROUPS if groups_listed is None else groups_listed
        members_listed = STATUS_MEMBERS if members_listed is None else members_listed
        view = self.raft.view  # the latest, commit index included (raft_view changes only with roles)
        state_role = {LEADER: "leader", 1: "candidate", 0: "follower"}.get(view.role if view else 0, "follower")

        def read(machine):
            state = machine.state
            members = sorted(state.members.values(), key=lambda m: (m.kind != "server", m.member_id))
            domains = [g for name, g in state.groups.items() if name.startswith(DOMAIN_PREFIX)]
            videos = [g for name, g in state.groups.items() if not name.startswith(DOMAIN_PREFIX)]
            return {
                "replicas_table": state.table(REPLICAS_TABLE),
                "members": [{"id": m.member_id, "kind": m.kind, "domain": m.domain, "address": m.address,
                             "user": m.user, "capacity": m.capacity, "movies": list(m.movies),
                             "incarnation": m.incarnation} for m in members[:members_listed]],
                "member_count": len(members),
                "groups": domains, "videos": videos,
                "requests_active": machine.requests.active_count(),
                "last_ruid": state.last_ruid,
                "last_applied": state.last_applied,
            }

        data = self.raft.read(read)
        domains, videos = data.pop("groups"), data.pop("videos")
        # The most recent video groups: a group's view id is the log index of its latest view.
        recent = heapq.nlargest(max(0, groups_listed - len(domains)), videos, key=lambda g: (g.view_id, g.name))
        listed = sorted(domains, key=lambda g: g.name)[:groups_listed] + recent
        data["groups"] = [group_summary(g) for g in listed]
        data["group_count"] = len(domains) + len(videos)
        data["video_groups"] = len(videos)
        data["groups_more"] = data["group_count"] - len(listed)
        data["members_more"] = data["member_count"] - len(data["members"])
        for member in data["members"]:
            age = self.detector.age(member["id"]) if self.acting else None
            member["heartbeat_age"] = None if age is None else round(age, 3)
            member["connected"] = member["id"] in self.sessions if self.acting else None
        doc = {
            "v": STATUS_VERSION,
            "replica": {"id": self.replica_id, "raft": self.raft_addr, "listen": self.listen,
                        "raft_state": state_role, "acting_primary": self.acting, "term": self.term,
                        "commit_index": view.commit_index if view else 0, "leader_raft": view.leader if view else None,
                        "voters": list(view.voters) if view else [], "standby": self.standby},
            **data,
        }
        if not fits(doc) and (groups_listed > 0 or members_listed > 0):
            # Very many members, or very long ids: list half as many, until it fits.
            return self.status(groups_listed // 2, members_listed // 2)
        return doc

    def groups_page(self, after: str | None, limit: int | None) -> dict:
        """One page of the full group list (the `Groups` answer), in name order, fitting one AMP value."""
        limit = GROUPS_PAGE if limit is None else max(1, min(int(limit), GROUPS_PAGE))

        def read(machine):
            names = sorted(machine.state.groups)
            start = bisect.bisect_right(names, after) if after is not None else 0
            chosen = [machine.state.groups[n] for n in names[start:start + limit]]
            return chosen, len(names), start + len(chosen) < len(names)

        chosen, total, more = self.raft.read(read)
        while True:
            page = {"v": 1, "groups": [group_summary(g) for g in chosen], "total": total,
                    "next": chosen[-1].name if chosen and more else None}
            if fits(page) or len(chosen) <= 1:
                return page
            chosen, more = chosen[:len(chosen) // 2], True


def _raise_refusal(result: Any) -> Any:
    if isinstance(result, dict) and "error" in result:
        raise Refused(result["message"])
    return result


def group_summary(group, members_listed: int = GROUP_MEMBERS_LISTED) -> dict:
    """A group as Status and Groups list it: its view, at most `members_listed` of its members, their count."""
    return {"name": group.name, "view_id": group.view_id, "members": list(group.members[:members_listed]),
            "member_count": len(group.members)}


def unseen(outbox: list[dict], positions: dict) -> list[dict]:
    """What of a member's outbox came after the last group event it says it delivered (`last_seen`)."""
    return outbox[last_seen(outbox, positions) + 1:]


def _refuse(message: str):
    raise Refused(message)
