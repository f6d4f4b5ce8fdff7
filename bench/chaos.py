"""Benchmark-sized chaos: the chaos suite's seeded runs (tests/chaos/), longer and busier than CI's.

Not a test: it prints a table, one row per seed, and a total; exit 1 only when a run broke an invariant
(frame-exact output of every surviving client, no RUID twice, every request ended and every video group
dissolved, no stream left open, no process left behind). Each run starts its own real system on
127.0.0.1 (three coordinators, --servers servers, --clients staggered real-time clients of a
--frames-frame 24 fps movie) and fires the seed's schedule of SIGKILL/SIGSTOP/SIGCONT over the first
--window seconds. A seed's schedule is the same in tests/chaos and here for the same shape; a failing seed
is replayed with --seeds N.

Usage: .venv/bin/python bench/chaos.py [--seeds 0-49] [--servers 4] [--clients 4] [--frames 480]
       [--window 12] [--faults 4-9] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the harness lives with the tests
sys.path.insert(0, os.path.join(ROOT, "tests", "chaos"))

from chaos_run import run_chaos  # noqa: E402
from chaos_schedule import Shape, chaos_seeds  # noqa: E402


def span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-49", help="seeds to run: 0-49, or 3,7,11 (default: 0-49)")
    p.add_argument("--servers", type=int, default=4, help="vod-server processes per run (default: 4)")
    p.add_argument("--clients", type=int, default=4, help="concurrent real-time clients per run (default: 4)")
    p.add_argument("--frames", type=int, default=480, help="frames of the 24 fps movie (default: 480, 20 s)")
    p.add_argument("--window", type=float, default=12.0,
                   help="faults fall between 0.5 s and this many seconds after the first client starts (default: 12)")
    p.add_argument("--faults", default="4-9", help="faults per run, as MIN-MAX (default: 4-9)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = p.parse_args()
    shape = Shape(servers=args.servers, clients=args.clients, window=(0.5, args.window), faults=span(args.faults))
    reports = []
    base = Path(tempfile.mkdtemp(prefix="vod-chaos-"))
    for seed in chaos_seeds(args.seeds):
        workdir = base / f"seed-{seed}"
        report = run_chaos(seed, workdir, shape, frames=args.frames)
        reports.append(report)
        if report.passed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # every process's log, for the post-mortem
            report.violations.append(f"logs kept in {workdir}")
        print(report.text(), file=sys.stderr, flush=True)
    if all(r.passed for r in reports):
        shutil.rmtree(base, ignore_errors=True)
    failed = [r.seed for r in reports if not r.passed]
    if args.json:
        print(json.dumps({"shape": asdict(shape), "frames": args.frames, "date": time.strftime("%Y-%m-%d"),
                          "reports": [asdict(r) for r in reports]}, indent=1))
    else:
        print(f"chaos: {len(reports)} seeds, {args.servers} servers, {args.clients} clients, "
              f"{args.frames} frames at 24 fps, faults {args.faults} in 0.5-{args.window:g} s")
        print(f"{'seed':>5} {'verdict':>7} {'faults':>6} {'whole':>5} {'killed':>6} {'frames':>7} {'stalls':>6} "
              f"{'seconds':>7}")
        for r in reports:
            print(f"{r.seed:>5} {'pass' if r.passed else 'FAIL':>7} {len(r.faults):>6} {r.clients_done:>5} "
                  f"{r.clients_killed:>6} {r.frames_checked:>7} {r.stalls:>6} {r.seconds:>7.1f}")
        print(f"total: {len(reports) - len(failed)}/{len(reports)} passed, "
              f"{sum(len(r.faults) for r in reports)} faults, {sum(r.frames_checked for r in reports)} frames "
              f"checked frame-exact, {sum(r.stalls for r in reports)} stalls"
              + (f"; failed seeds: {' '.join(map(str, failed))}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
