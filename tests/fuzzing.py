"""Shared by the tests/test_fuzz_*.py modules (no tests here): CI-bounded Hypothesis settings, byte mutators,
an allocation meter and a log catcher.

Every fuzz test is bounded by `fuzz(n)`: n examples, no per-example deadline (a shared 2-core CI machine
is slow at times; a hang is caught by pytest-timeout instead). The whole fuzz set runs in well under a
minute; raise VOD_FUZZ_SCALE (e.g. 20) for a longer local hunt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tracemalloc
from typing import Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("VOD_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- mutating valid bytes ---------------------------------------------------------------------------

EDIT_KINDS = ("flip", "set", "cut", "insert", "delete", "repeat", "ones")

edits = st.lists(st.tuples(st.sampled_from(EDIT_KINDS), st.integers(0, 2**20), st.integers(0, 255)),
                 min_size=1, max_size=4)


def mutate(data: bytes, changes: list[tuple[str, int, int]]) -> bytes:
    """Apply `changes` (from `edits`): bit flips, byte sets, truncation, insertion, deletion, a repeated
    slice, and runs of 0xff (which turn any length field they hit into a huge one)."""
    out = bytearray(data)
    for kind, pos, value in changes:
        i = pos % (len(out) + 1)
        if kind == "flip" and i < len(out):
            out[i] ^= 1 << (value % 8)
        elif kind == "set" and i < len(out):
            out[i] = value
        elif kind == "cut":
            del out[i:]
        elif kind == "insert":
            out.insert(i, value)
        elif kind == "delete" and i < len(out):
            del out[i]
        elif kind == "repeat":
            out[i:i] = out[i:i + 1 + value % 64] * (1 + value % 3)
        elif kind == "ones":
            out[i:i + 1 + value % 8] = b"\xff" * (1 + value % 8)
    return bytes(out)


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid messages from `valid`, damaged by one to four edits."""
    return st.builds(mutate, valid, edits)


def chunked(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """`data` cut into pieces of the given sizes (cycled), as TCP may deliver it."""
    i = k = 0
    while i < len(data):
        step = sizes[k % len(sizes)] if sizes else len(data)
        yield data[i:i + step]
        i += step
        k += 1


chunk_sizes = st.lists(st.integers(1, 97), max_size=6)


# -- measuring ---------------------------------------------------------------------------------------


class Peak:
    bytes = 0


@contextlib.contextmanager
def allocation_peak() -> Iterator[Peak]:
    """The most memory Python allocated at once inside the block (tracemalloc), in `.bytes`."""
    peak = Peak()
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


class LogCatcher(logging.Handler):
    """Records the messages of one logger (and its children) at WARNING and above, for one example."""

    def __init__(self, name: str):
        super().__init__(logging.WARNING)
        self.logger = logging.getLogger(name)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "LogCatcher":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
