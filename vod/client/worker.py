"""Where the client's file work runs: one thread, jobs in the order they were given, never on the reactor.

One thread is enough (a cache append costs ~0.05 ms, an AVI write ~0.08 ms, measured in
../shared/notes) and keeps the order of cache writes, cache reads and AVI writes
obvious: a frame is read back only after it was written, the AVI gets frames
in the order they were handed over.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool


class ThreadWorker:
    def __init__(self, reactor, name: str = "vod-client-io"):
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pool.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return threads.deferToThreadPool(self._reactor, self._pool, fn, *args)

    def stop(self) -> None:
        """Wait for the queued jobs, then end the thread (blocks: call once the play is over)."""
        self._pool.stop()


class InlineWorker:
    """Runs each job at once on the caller's thread: for tests on a fake clock, and for tiny jobs."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return defer.maybeDeferred(fn, *args)

    def stop(self) -> None:
        pass
