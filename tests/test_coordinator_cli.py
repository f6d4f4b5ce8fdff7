"""vod-coordinator's Raft addresses are resolved before the reactor runs (Raft runs on the reactor thread)."""

import gc

import pytest
from twisted.internet.task import Clock

from vod.coordinator.cli import GC_FREEZE_INTERVAL, GC_FULL_INTERVAL, resolve_raft_address, tune_gc
from vod.errors import UsageError


def test_names_become_ip_addresses_and_ips_stay():
    assert resolve_raft_address("localhost:7001", "--raft") == "127.0.0.1:7001"
    assert resolve_raft_address("127.0.0.1:7002", "--peers") == "127.0.0.1:7002"


@pytest.mark.parametrize("address, message", [("nosuch.invalid:7001", "cannot resolve nosuch.invalid"),
                                              ("127.0.0.1", "is not HOST:PORT")])
def test_a_bad_raft_address_names_the_flag_and_the_problem(address, message):
    with pytest.raises(UsageError, match=message) as err:
        resolve_raft_address(address, "--peers")
    assert "--peers" in str(err.value)


def test_tune_gc_freezes_what_survives_every_interval():
    thresholds = gc.get_threshold()
    clock = Clock()
    try:
        tune_gc(clock)
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(1000)]  # tracked containers made after start-up, still alive
        clock.advance(GC_FREEZE_INTERVAL)
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        for call in clock.getDelayedCalls():
            call.cancel()


def test_tune_gc_collects_frozen_cycles_at_the_full_interval():
    """A cycle frozen while alive and dropped afterwards is freed by the periodic full collection."""
    import weakref

    class Node:
        pass

    thresholds = gc.get_threshold()
    clock = Clock()
    try:
        tune_gc(clock)
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        clock.advance(GC_FREEZE_INTERVAL)  # frozen while alive
        del a, b
        gc.collect()
        assert gone() is not None  # a frozen cycle escapes ordinary collections
        clock.advance(GC_FULL_INTERVAL)
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        for call in clock.getDelayedCalls():
            call.cancel()
