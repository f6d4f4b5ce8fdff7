"""Benchmark: the garbage soak (issue 8), long. Not a test: it prints tables (progress on stderr) and asserts nothing;
its exit status is 1 when the movie was not exact, a process died or one logged a traceback.

A real domain on 127.0.0.1 (three `vod-coordinator` replicas, two `vod-server`s, one synthetic movie)
plays the movie to a real-time `vod-client play` while a thread opens garbage connections against every
port: each coordinator's listen port and Raft port, each server's data port. Random bytes, half-open
connections held up to 12 s, resets, and valid-looking prefixes with garbage behind them (see
tests/soak_support.py, shared with the short real-process test tests/test_soak_garbage.py).

Printed: per port, the connections thrown, how many the process closed before we did (we hold each one
2 s after its garbage, half-open ones 1-12 s) and the kinds thrown most; per process, alive or not, RSS
(VmRSS) before the garbage and after the movie, the refusals it logged and any traceback it logged; then
whether the client exited 0 with a frame-exact movie (SHA-256 of every frame against the store).

The rate is kept under the coordinators' connection limit (200 attempts/s per peer host, and here every
peer is 127.0.0.1, the real members included): 150/s over 9 ports is ~17/s on each coordinator.

Usage: .venv/bin/python bench/soak.py [--seconds 180] [--rate 150] [--servers 2] [--seed 8]
       [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the harness lives with the tests

from benchutil import json_safe, log  # noqa: E402
from soak_support import soak, table  # noqa: E402
from test_crash_support import FPS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0, help="length of the movie played (real time)")
    ap.add_argument("--rate", type=float, default=150.0, help="garbage connections per second, all ports")
    ap.add_argument("--servers", type=int, default=2, help="vod-servers holding the movie")
    ap.add_argument("--seed", type=int, default=8, help="seed of the garbage chosen")
    ap.add_argument("--workdir", default=None, help="logs and outputs go here (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the logs and outputs")
    ap.add_argument("--json", action="store_true", help="also print the findings as one JSON document (last line)")
    args = ap.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vod-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(args.seconds * FPS))
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# garbage soak, {started:%Y-%m-%d %H:%M} UTC: {frames} frames ({args.seconds:g} s at {FPS:g} fps), "
          f"{args.rate:g} garbage connections/s, {args.servers} servers, seed {args.seed}; work in {workdir}",
          flush=True)
    t0 = time.monotonic()
    try:
        result = soak(workdir, frames=frames, rate=args.rate, servers=args.servers, seed=args.seed,
                      say=lambda line: log(f"[{time.monotonic() - t0:6.1f} s] {line}"))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(result))
    for name, lines in result.escaped.items():
        for line in lines[:5]:
            print(f"{name}: {line}")
    print(f"\nwall time {time.monotonic() - t0:.0f} s")
    if args.json:
        doc = dataclasses.asdict(result)
        print(json.dumps(json_safe(doc), default=str))
    ok = result.exact and all(result.alive.values()) and not any(result.escaped.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
