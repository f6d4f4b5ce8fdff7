"""The part of RaftLog that needs no cluster: group-commit entries. (Replication itself is exercised by the
real-process tests.)"""

import json
import threading

import pytest

from vod.errors import VodError
from vod.groups.raft import BATCH_OP, _Replicated


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
