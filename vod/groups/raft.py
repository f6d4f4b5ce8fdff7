"""pysyncobj behind our own small interface: `RaftLog`.

The rest of the code sees `propose(command) -> Deferred`, a `RaftView` of
(role, leader, term, quorum) delivered on the reactor thread when it changes,
and committed results delivered on the reactor thread in log order. It never
sees pysyncobj's threads, camelCase, pickle or `sync=True`.

Threading: pysyncobj runs its own tick thread (it wakes on socket activity and
on a pipe when we enqueue a command, so commits are not held to a tick
period). Replicated commands are applied on that thread, under `self.lock`,
to a state machine object; everything handed back to us (applied entries,
outcomes of proposals, views) crosses to the reactor through one queue, in
order, with one `reactor.callFromThread` per batch rather than per item
(`_to_reactor`): each wake-up is a pipe write and a GIL hand-over between the
two threads, and at 1,000 admissions/s the primary made two per log entry.

Commits (the p99 at 1,000 ops/s is what this is tuned for): the proposals of
one reactor turn go out as one log entry (group commit), the tick thread is
woken at once through pysyncobj's pipe, and the entry is sent to the followers
in that same tick (`_tick`). pysyncobj runs in its batched mode, so it no longer
sends a second append round per commit only to tell followers the new commit
index: the next append or heartbeat carries it. Raft on the reactor thread was
tried too (commit p99 about the same); under admission overload its heartbeats
waited behind long reactor turns and the primary lost its lease five times as
often, with one needless election: the tick thread stays.

What goes through pysyncobj's own pickle is only a JSON text per command and a
JSON text per snapshot: the formats are ours (versioned dicts), pysyncobj only
carries them. Raft traffic is always encrypted: pysyncobj unpickles whatever
reaches its port otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
# pysyncobj's clock (CLOCK_MONOTONIC_RAW here, not time.monotonic): its response times are on it.
from pysyncobj.monotonic import monotonic as raft_clock
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from vod.errors import VodError

log = logging.getLogger(__name__)

FOLLOWER, CANDIDATE, LEADER = 0, 1, 2
PROPOSE_TIMEOUT = 2.0
# One log entry carrying the proposals made in one reactor turn (group commit).
BATCH_OP = "batch"


class StateMachine(Protocol):
    """What RaftLog replicates: deterministic, plain-data in and out."""

    def apply(self, command: dict) -> Any: ...

    def snapshot(self) -> dict: ...

    def restore(self, snapshot: dict) -> None: ...


class NotCommitted(VodError):
    """A proposal that Raft did not commit (no leader, lost leadership, queue full)."""


@dataclass(frozen=True)
class RaftSettings:
    """Timings chosen from ../shared/notes/measured-pysyncobj.md (2-core machine, loopback).

    Heartbeat 20 ms and elections at 80-200 ms gave 0.13 s median failover
    there; we take 120-300 ms so the acting lease (0.8 x the shortest election
    timeout, 96 ms) survives the tick delays of a loaded 2-core machine. `connection_timeout` is long on purpose: pysyncobj checks idleness
    only when it sends, so a short timeout closes the quiet follower-follower
    link exactly when the first vote request goes out and costs a second
    election. A killed peer's socket closes at once anyway; a paused one is
    caught by the election timeout, not by this.
    """

    heartbeat: float = 0.025
    election_min: float = 0.12
    election_max: float = 0.3
    connection_timeout: float = 10.0
    connection_retry: float = 0.1
    tick: float = 0.01
    # A leader cut off from its majority steps down after this (pysyncobj's default is 30 s).
    leader_fallback: float = 0.15
    compaction_entries: int = 20000
    compaction_seconds: float = 300.0

    def conf(self, self_addr: str, password: str, data_dir: str | None) -> SyncObjConf:
        # bindAddress: pysyncobj would listen on 0.0.0.0 otherwise.
        kwargs = dict(bindAddress=self_addr, password=password, autoTick=True, autoTickPeriod=self.tick,
                      appendEntriesPeriod=self.heartbeat, raftMinTimeout=self.election_min,
                      raftMaxTimeout=self.election_max, connectionTimeout=self.connection_timeout,
                      connectionRetryTime=self.connection_retry, leaderFallbackTimeout=self.leader_fallback,
                      appendEntriesUseBatch=False, dynamicMembershipChange=True, commandsWaitLeader=False,
                      logCompactionMinEntries=self.compaction_entries, logCompactionMinTime=self.compaction_seconds,
                      useFork=False)
        if data_dir:
            kwargs.update(journalFile=os.path.join(data_dir, "raft.journal"),
                          fullDumpFile=os.path.join(data_dir, "raft.dump"))
        return SyncObjConf(**kwargs)


def raft_password(secret: bytes) -> str:
    # A derived key, so the raw domain secret is never what pysyncobj holds.
    return hmac.new(secret, b"vod raft password v1", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class RaftView:
    role: int  # FOLLOWER / CANDIDATE / LEADER
    leader: str | None  # raft address of the leader as this replica knows it
    term: int
    has_quorum: bool
    commit_index: int
    voters: tuple[str, ...] = field(default_factory=tuple)
    connected: tuple[str, ...] = field(default_factory=tuple)  # peers this replica has a link to

    @property
    def acting_primary(self) -> bool:
        return self.role == LEADER and self.has_quorum


class _Replicated(SyncObjConsumer):
    """The consumer pysyncobj replicates: one method taking our command as JSON text."""

    def __init__(self, machine: StateMachine, lock: threading.Lock):
        super().__init__()
        # Set before any replicated data, so pysyncobj treats them as internals.
        self._machine = machine
        self._lock = lock
        self._on_applied: Callable[[dict, Any], None] | None = None  # per command
        self._on_applied_entry: Callable[[list[tuple[dict, Any]]], None] | None = None  # per entry, first choice

    @replicated
    def apply_json(self, text: str):
        entry = json.loads(text)
        batch = isinstance(entry, dict) and entry.get("op") == BATCH_OP and entry.get("v") == 1
        applied = [(command, self._apply_one(command)) for command in (entry["commands"] if batch else [entry])]
        if self._on_applied_entry is not None:
            self._on_applied_entry(applied)  # one hand-over (one reactor wake-up) per log entry
        elif self._on_applied is not None:
            for command, result in applied:
                self._on_applied(command, result)
        results = [result for _, result in applied]
        return results if batch else results[0]

    def _apply_one(self, command: dict) -> Any:
        with self._lock:
            try:
                result = self._machine.apply(command)
            except VodError as err:
                # A refused command is still an ordered, deterministic outcome on every replica.
                result = {"error": type(err).__name__, "message": str(err)}
            except Exception as err:
                # Never let an exception escape: pysyncobj would not mark the entry applied and stall.
                log.exception("applying a replicated command failed: %.200s", json.dumps(command))
                result = {"error": type(err).__name__, "message": str(err)}
        return result

    def _serialize(self):
        with self._lock:
            return {"vod_state_json": json.dumps(self._machine.snapshot(), separators=(",", ":"))}

    def _deserialize(self, data):
        with self._lock:
            self._machine.restore(json.loads(data["vod_state_json"]))


class _Node(SyncObj):
    def __init__(self, self_addr: str, peers: list[str], conf: SyncObjConf, consumer: _Replicated):
        super().__init__(self_addr, peers, conf, consumers=[consumer])


class RaftLog:
    """One replica's view of the replicated log, for use from the Twisted reactor thread."""

    def __init__(self, reactor, self_addr: str, peers: list[str], secret: bytes, machine: StateMachine,
                 data_dir: str | None = None, settings: RaftSettings = RaftSettings(),
                 on_view: Callable[[RaftView], None] | None = None,
                 on_applied: Callable[[dict, Any], None] | None = None):
        if not secret:
            raise VodError("refusing to start Raft without a secret: its traffic must be encrypted")
        self.reactor = reactor
        self.self_addr = self_addr
        self.lock = threading.Lock()
        self.machine = machine
        self._consumer = _Replicated(machine, self.lock)
        self._on_view = on_view
        self._on_applied = on_applied
        # If set: called instead of `on_applied`, once per log entry with its [(command, result), ...].
        self.on_applied_entry: Callable[[list[tuple[dict, Any]]], None] | None = None
        # If set: asked on the tick thread, while this replica is not the leader, whether applied entries
        # are wanted on the reactor at all. A follower with nobody to push to says no: waking its reactor
        # for every entry cost it more CPU than applying them, on cores the primary shares.
        self.applied_wanted: Callable[[], bool] | None = None
        self._last_view: RaftView | None = None
        self._view_lock = threading.Lock()
        # Shorter than the shortest election timeout: by the time followers may elect someone else,
        # a leader that has not heard from them has already stopped acting.
        self._lease = min(settings.leader_fallback, 0.8 * settings.election_min)
        self._confirmed_at = float("-inf")  # last time a majority answered us as leader
        self._last_tick = float("-inf")
        self._blackout_until = float("-inf")
        self._blackout = 3 * settings.heartbeat
        self._conf = settings.conf(self_addr, raft_password(secret), data_dir)
        self._peers = [p for p in peers if p != self_addr]
        self._node: _Node | None = None
        self._proposals: list[tuple[dict, Deferred]] = []  # proposed in this reactor turn, not sent yet
        self._wake_pending = False  # the tick thread was notified of proposals it has not taken yet
        # Calls owed to the reactor thread, in the order the tick thread made them (see `_to_reactor`).
        self._handoff: list[tuple[Callable[..., Any], tuple]] = []
        self._handoff_lock = threading.Lock()

    def start(self, peers: list[str] | None = None) -> None:
        """Start the node; `peers` replaces the constructor's list (a standby learns it when recruited)."""
        if peers is not None:
            self._peers = [p for p in peers if p != self.self_addr]
        self._consumer._on_applied_entry = self._applied_on_tick_thread
        self._node = _Node(self.self_addr, self._peers, self._conf, self._consumer)
        # Built unbatched (so pysyncobj makes its wake-up pipe), run batched: no second append round per
        # commit just to tell followers the commit index; `_tick` sends new entries at once instead.
        self._conf.appendEntriesUseBatch = True
        self._sent_index = 0
        self._node.addOnTickCallback(self._tick)

    def stop(self) -> None:
        if self._node is not None:
            self._node.destroy()
            self._node = None

    # -- called on pysyncobj's thread -------------------------------------------------------------

    def _to_reactor(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the reactor thread, after everything handed over before it.

        Only the first call of a batch wakes the reactor; the others join the batch it will drain.
        A tick that applies several entries (each with its proposals' outcomes) costs one wake-up."""
        with self._handoff_lock:
            self._handoff.append((fn, args))
            wake = len(self._handoff) == 1
        if wake:
            self.reactor.callFromThread(self._drain_handoff)

    def _drain_handoff(self) -> None:
        with self._handoff_lock:
            calls, self._handoff = self._handoff, []
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:
                # As callFromThread would: one failing call must not lose the ones behind it.
                log.exception("handing %r over to the reactor failed", fn)

    def _applied_on_tick_thread(self, applied: list[tuple[dict, Any]]) -> None:
        if self._on_applied is None and self.on_applied_entry is None:
            return
        wanted, node = self.applied_wanted, self._node
        if wanted is not None and node is not None and not node._isLeader() and not wanted():
            return
        self._to_reactor(self._hand_applied, applied)

    def _hand_applied(self, applied: list[tuple[dict, Any]]) -> None:
        if self.on_applied_entry is not None:
            self.on_applied_entry(applied)
            return
        for command, result in applied:
            self._on_applied(command, result)

    def _tick(self) -> None:
        node = self._node
        if node is None:
            return
        if self._wake_pending:
            # Cleared before taking the queue: a proposal queued after this line notifies again, one
            # queued before it is taken right here (pysyncobj took the queue earlier in this tick).
            self._wake_pending = False
            node._checkCommandsToApply()
        if node._isLeader():
            last = node._SyncObj__getCurrentLogIndex()
            if last > self._sent_index:  # logged this tick: send now, not at the next heartbeat
                self._sent_index = last
                node._SyncObj__sendAppendEntries()
        status = node.getStatus()
        leader = status["leader"]
        others = [str(n) for n in node.otherNodes]
        view = RaftView(role=status["state"], leader=None if leader is None else str(leader),
                        term=status["raft_term"], has_quorum=bool(status["has_quorum"]),
                        commit_index=status["commit_idx"], voters=tuple(sorted([self.self_addr] + others)),
                        connected=tuple(sorted(a for a in others
                                               if status.get("partner_node_status_server_" + a) == 2)))
        now = raft_clock()
        if now - self._last_tick > self._lease and self._last_tick > float("-inf"):
            # This process was stopped (SIGSTOP, a long GC, a swapped-out VM): responses read right now
            # were sent before the pause but get stamped "now" by pysyncobj. Trust none until the
            # first fresh heartbeat round trip is over; by then a newer leader's term has reached us.
            self._blackout_until = now + self._blackout
            log.warning("tick thread was stalled %.3f s: not acting as primary for %.3f s",
                        now - self._last_tick, self._blackout)
        self._last_tick = now
        # Confirmed now when a majority answered within the lease. Anchoring the lease on the answer
        # time itself would be stricter under a network partition (a cut-off leader acts up to one
        # lease longer here, bounded by pysyncobj's own 0.15 s fallback), but it made a loaded primary
        # flap on this 2-core machine; see ARCHITECTURE.md.
        confirmed = (view.role == LEADER and now >= self._blackout_until
                     and now - self._majority_answered_at(node) < self._lease)
        with self._view_lock:
            changed = self._last_view is None or _roles_differ(self._last_view, view)
            self._last_view = view
            if confirmed:
                self._confirmed_at = now
        if changed and self._on_view is not None:
            self._to_reactor(self._on_view, view)

    def _majority_answered_at(self, node: _Node) -> float:
        """When the latest majority (counting ourselves) had answered: the lease runs from then, not from now."""
        # pysyncobj keeps per-peer response times privately; we pin its version (see pyproject.toml).
        last = getattr(node, "_SyncObj__lastResponseTime", {})
        others = node.otherNodes
        times = sorted((last.get(n, float("-inf")) for n in others), reverse=True)
        need = (len(others) + 1) // 2  # answers besides our own that make a majority
        return times[need - 1] if need else raft_clock()

    # -- called on the reactor thread -------------------------------------------------------------

    @property
    def view(self) -> RaftView | None:
        with self._view_lock:
            return self._last_view

    def is_acting_primary(self) -> bool:
        """Leader, and a majority answered within the lease: a paused leader that wakes is not primary.

        pysyncobj alone would let a woken leader believe in itself until its
        next check; this lease is measured on the monotonic clock, which keeps
        running while the process is stopped.
        """
        with self._view_lock:
            view, confirmed_at, last_tick = self._last_view, self._confirmed_at, self._last_tick
        now = raft_clock()
        # The tick thread must be alive too: after a pause this (reactor) thread may run first.
        return (view is not None and view.role == LEADER and now - confirmed_at < self._lease
                and now - last_tick < self._lease / 2)

    def propose(self, command: dict) -> Deferred:
        """Commit `command`; fires with the state machine's result, or fails with NotCommitted."""
        d: Deferred = Deferred()
        if self._node is None:
            d.errback(NotCommitted("raft node is not running"))
            return d
        if not self._proposals:
            self.reactor.callLater(0, self._flush_proposals)
        self._proposals.append((command, d))
        # A leader that steps down with proposals past its commit index truncates them and never calls
        # back; without a bound the member's request would hang for good.
        d.addTimeout(PROPOSE_TIMEOUT, self.reactor,
                     onTimeoutCancel=lambda result, timeout: Failure(NotCommitted(f"no outcome within {timeout:g} s")))
        return d

    def _flush_proposals(self) -> None:
        """Send what this reactor turn proposed: one log entry, a batch when there are several."""
        proposals, self._proposals = self._proposals, []
        if self._node is None or not proposals:
            for _, d in proposals:
                if not d.called:
                    d.errback(NotCommitted("raft node is not running"))
            return
        waiting = [d for _, d in proposals]
        entry = proposals[0][0] if len(proposals) == 1 else {"v": 1, "op": BATCH_OP,
                                                                 "commands": [c for c, _ in proposals]}
        text = json.dumps(entry, separators=(",", ":"), sort_keys=True)

        def settle(outcome: Any, failure: NotCommitted | None) -> None:
            results = [outcome] if len(waiting) == 1 else outcome
            for i, d in enumerate(waiting):
                if d.called:  # a late outcome after the timeout is dropped
                    continue
                if failure is None:
                    d.callback(results[i])
                else:
                    d.errback(failure)

        def done(result, error):
            if error == FAIL_REASON.SUCCESS:
                self._to_reactor(settle, result, None)
            else:
                self._to_reactor(settle, None, NotCommitted(f"not committed: {_fail_reason(error)}"))

        self._consumer.apply_json(text, callback=done)
        # Batched mode does not wake the tick thread itself. One wake-up until the tick thread has taken
        # the queue (`_tick` clears the flag, then takes what came meanwhile): each notify is a pipe write
        # that hands the GIL to the tick thread while the reactor is mid-turn.
        if not self._wake_pending:
            self._wake_pending = True
            self._node._SyncObj__pipeNotifier.notify()

    def read(self, fn: Callable[[StateMachine], Any]) -> Any:
        """Run `fn(machine)` under the apply lock: a consistent read of the replicated state."""
        with self.lock:
            return fn(self.machine)

    def add_voter(self, addr: str) -> Deferred:
        return self._membership(self._node.addNodeToCluster if self._node else None, addr)

    def remove_voter(self, addr: str) -> Deferred:
        return self._membership(self._node.removeNodeFromCluster if self._node else None, addr)

    def _membership(self, change, addr: str) -> Deferred:
        d: Deferred = Deferred()
        if change is None:
            d.errback(NotCommitted("raft node is not running"))
            return d

        def done(result, error):
            if error == FAIL_REASON.SUCCESS:
                self._to_reactor(d.callback, addr)
            else:
                self._to_reactor(d.errback, NotCommitted(f"membership change of {addr}: "
                                                         f"{_fail_reason(error)}"))

        change(addr, callback=done)
        return d


def _roles_differ(a: RaftView, b: RaftView) -> bool:
    return ((a.role, a.leader, a.term, a.has_quorum, a.voters, a.connected)
            != (b.role, b.leader, b.term, b.has_quorum, b.voters, b.connected))


def _fail_reason(code: int) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
    return names.get(code, str(code)).lower().replace("_", " ")
