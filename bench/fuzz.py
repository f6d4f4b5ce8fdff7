"""The long fuzz run: the Hypothesis fuzz tests of tests/test_fuzz_*.py with --scale times their CI budget.

Not a test: it runs each fuzz module in its own pytest process (VOD_FUZZ_SCALE=SCALE) and prints a table of
module, examples budget, seconds and verdict; exit 1 when a module found a failing input (Hypothesis prints
the smallest one, and replays it first next time from .hypothesis/). For coverage-guided hunts with libFuzzer
see bench/fuzz_atheris.py.

Usage: .venv/bin/python bench/fuzz.py [--scale 20] [--only stream,mask,amp,store]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=20.0, help="times the CI example budget (default: 20)")
    p.add_argument("--only", default="", help="comma-separated module names, e.g. stream,amp (default: all)")
    args = p.parse_args()
    if args.scale <= 0:
        p.error("--scale must be > 0")
    modules = sorted(glob.glob(os.path.join(ROOT, "tests", "test_fuzz_*.py")))
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    if wanted:
        modules = [m for m in modules if os.path.basename(m)[len("test_fuzz_"):-3] in wanted]
    if not modules:
        p.error(f"no fuzz module matches --only {args.only!r}")
    env = dict(os.environ, VOD_FUZZ_SCALE=str(args.scale))
    rows, failed = [], 0
    for module in modules:
        name = os.path.basename(module)
        print(f"fuzzing {name} at {args.scale:g}x ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "3600",
                              module], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
        if run.returncode != 0:
            failed += 1
            print(run.stdout[-4000:], file=sys.stderr)
        rows.append((name, seconds, "pass" if run.returncode == 0 else "FAIL", summary))
    print(f"fuzz: Hypothesis at {args.scale:g}x the CI budget, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'module':<24} {'seconds':>8} {'verdict':>7}  pytest")
    for name, seconds, verdict, summary in rows:
        print(f"{name:<24} {seconds:>8.1f} {verdict:>7}  {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
