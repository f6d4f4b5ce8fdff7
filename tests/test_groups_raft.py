"""The part of RaftLog that needs no cluster: group-commit entries. (Replication itself is exercised by the
real-process tests.)"""

import json
import threading

import pytest

from vod.errors import VodError
from vod.groups.raft import BATCH_OP, RaftLog, _Replicated


class Counter:
    def __init__(self):
        self.n = 0

    def apply(self, command):
        if command["op"] == "refuse":
            raise VodError("no")
        self.n += command["by"]
        return {"n": self.n}

    def snapshot(self):
        return {"n": self.n}

    def restore(self, snapshot):
        self.n = snapshot["n"]


@pytest.fixture
def consumer():
    c = _Replicated(Counter(), threading.Lock())
    c.applied = []
    c._on_applied = lambda command, result: c.applied.append((command, result))
    return c


def test_a_batch_entry_applies_each_command_in_order_and_answers_each(consumer):
    batch = {"v": 1, "op": BATCH_OP, "commands": [{"op": "add", "by": 2}, {"op": "refuse"}, {"op": "add", "by": 3}]}
    # `_doApply` is how pysyncobj applies a committed entry on a replica.
    results = consumer.apply_json(json.dumps(batch), _doApply=True)
    assert results == [{"n": 2}, {"error": "VodError", "message": "no"}, {"n": 5}]
    assert [c["op"] for c, _ in consumer.applied] == ["add", "refuse", "add"]
    # A single command is its own entry, answered alone.
    assert consumer.apply_json(json.dumps({"op": "add", "by": 1}), _doApply=True) == {"n": 6}


class ThreadCalls:
    """A reactor that only queues callFromThread calls, run when the test says so."""

    def __init__(self):
        self.queued = []

    def callFromThread(self, fn, *args):
        self.queued.append((fn, args))

    def run(self):
        queued, self.queued = self.queued, []
        for fn, args in queued:
            fn(*args)


class Node:
    def __init__(self, leader):
        self.leader = leader

    def _isLeader(self):
        return self.leader


def raft_log(reactor):
    return RaftLog(reactor, "127.0.0.1:1", ["127.0.0.1:1"], b"secret", Counter())


def test_hand_overs_to_the_reactor_share_one_wake_up_and_keep_their_order():
    reactor = ThreadCalls()
    log, seen = raft_log(reactor), []

    def boom():
        raise RuntimeError("one failing call")

    for call in [(seen.append, 1), (boom,), (seen.append, 2)]:
        log._to_reactor(*call)
    assert len(reactor.queued) == 1  # one wake-up for the batch
    reactor.run()
    assert seen == [1, 2]  # in order, and a failing call does not lose the ones behind it
    log._to_reactor(seen.append, 3)  # drained: the next hand-over wakes the reactor again
    assert len(reactor.queued) == 1
    reactor.run()
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("leader, sessions, handed", [(True, False, True), (False, True, True),
                                                      (False, False, False)])
def test_a_follower_with_nobody_to_push_to_is_not_woken_for_applied_entries(leader, sessions, handed):
    reactor = ThreadCalls()
    log, applied = raft_log(reactor), []
    log.on_applied_entry = applied.append
    log.applied_wanted = lambda: sessions
    log._node = Node(leader)
    log._applied_on_tick_thread([({"op": "add", "by": 1}, {"n": 1})])
    reactor.run()
    assert applied == ([[({"op": "add", "by": 1}, {"n": 1})]] if handed else [])
