"""Optional coverage-guided fuzzing with atheris (libFuzzer for Python), for long local hunts (issue 8).

Not a test and not in `make bench`: CI runs the bounded Hypothesis fuzz tests (tests/test_fuzz_*.py);
this harness drives the same entry points with libFuzzer's coverage feedback, for as long as you like.
atheris is not a dependency of the project; install it into the venv (or anywhere on PYTHONPATH) first:

    .venv/bin/pip install atheris          # a manylinux wheel exists for CPython 3.11 on x86-64

Targets (each must decode or raise its own documented error; anything else is a finding, and libFuzzer
writes the input to crash-*):

    control   vod.stream.protocol.ControlDecoder       -> ProtocolError
    frame     vod.stream.protocol.FrameDecoder         -> ProtocolError
    mask      FrameMask.from_bytes                      -> MaskError
    json      vod.groups.wire.Json().fromString         -> ValueError
    amp       a coordinator MemberSession on a FakeRaft, fed the bytes as one connection: nothing may
              escape, Twisted must log no failure, and a newcomer must still join afterwards

Usage: .venv/bin/python bench/fuzz_atheris.py TARGET [libFuzzer flags, e.g. -max_total_time=300 CORPUS_DIR]
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

try:
    import atheris
except ImportError:
    print("atheris is not installed: .venv/bin/pip install atheris (see this file's docstring)", file=sys.stderr)
    sys.exit(2)

with atheris.instrument_imports():
    from vod.errors import MaskError
    from vod.groups import wire
    from vod.strategy.mask import FrameMask
    from vod.stream import protocol as p

    import test_fuzz_amp as amp_fuzz  # the session harness of the Hypothesis fuzz tests


def decode_control(data: bytes) -> None:
    try:
        p.ControlDecoder().feed(data)
    except p.ProtocolError:
        pass


def decode_frames(data: bytes) -> None:
    try:
        p.FrameDecoder().feed(data)
    except p.ProtocolError:
        pass


def decode_mask(data: bytes) -> None:
    try:
        mask = FrameMask.from_bytes(data)
    except MaskError:
        return
    assert FrameMask.from_bytes(mask.to_bytes()) == mask


def decode_json(data: bytes) -> None:
    try:
        wire.Json().fromString(data)
    except ValueError:
        pass


def feed_session(data: bytes) -> None:
    replica = amp_fuzz.make_replica()
    with amp_fuzz.TwistedFailures() as failures:
        victim = amp_fuzz.Peer(replica)
        victim.send(data)
        victim.close()
    assert not failures.events, [e.get("log_format") for e in failures.events]
    amp_fuzz.Peer(replica).join("newcomer", "client")


TARGETS = {"control": decode_control, "frame": decode_frames, "mask": decode_mask, "json": decode_json,
           "amp": feed_session}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags]", file=sys.stderr)
        sys.exit(2)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
