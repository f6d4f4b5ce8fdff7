"""`make bench`: run every benchmark once, keep what each printed, and regenerate docs/BENCHMARKS.md.

Not a test: a benchmark that fails or times out is recorded as such and the suite goes on; the
report says which figures are missing and why. Each benchmark runs alone (one after the other) so
that none of them measures another's load.

For each benchmark the suite keeps, in --results (default bench/results/): NAME.json, holding the
command, the start and end times, the load average around it, its exit status, the JSON document it
printed (its --json output) and its printed tables. `bench/report.py` turns that directory into
docs/BENCHMARKS.md and the PNG plots in docs/bench/; `--report-only` re-renders without running.

Usage: .venv/bin/python bench/suite.py [--only NAME,...] [--skip NAME,...] [--quick] [--report-only]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchutil import log  # noqa: E402
from report import machine_summary, render  # noqa: E402


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    budget_s: float                      # the suite kills a benchmark that runs past this
    keeps_workdir: bool = False          # the benchmark takes --workdir/--keep (traces for the plots)
    keep: tuple[str, ...] = ()           # files (globs) of its workdir the report reads, copied to NAME-FILE
    needs: tuple[str, ...] = field(default_factory=tuple)   # commands it needs on PATH


# The suite's sizes: enough rounds for a p95 that means something, all of it under 30 minutes.
BENCHES = (
    Bench("media_read", ("--json",), ("--frames", "500", "--reads", "1000", "--json"), 120),
    Bench("strategy", ("--runs", "30", "--seconds", "4", "--json"),
          ("--runs", "5", "--seconds", "2", "--floor-seconds", "1", "--json"), 300),
    Bench("failover", ("--rounds", "20", "--view-rounds", "10", "--seconds", "4", "--json"),
          ("--rounds", "3", "--view-rounds", "3", "--seconds", "2", "--json"), 420),
    Bench("playback", ("--json",),
          ("--plays", "3", "--big-frames", "800", "--download-runs", "1", "--pump-runs", "1",
           "--scale-servers", "1,2", "--scale-seconds", "2", "--json"), 600),
    Bench("recovery", ("--runs", "10", "--json"), ("--quick", "--json"), 480, keeps_workdir=True,
          keep=("server-0[1-3].jsonl",)),   # traces of server crashes: the recovery timeline plot
    Bench("peer", ("--json",), ("--runs", "1", "--json"), 360, needs=("nginx", "aria2c")),
    Bench("concurrency", ("--json",), ("--steps", "5,10", "--seconds", "10", "--json"), 480),
    Bench("soak", ("--seconds", "60", "--json"), ("--seconds", "15", "--rate", "30", "--json"), 150),
)


def last_json(stdout: str):
    """A benchmark's JSON document: its last line, or (failover prints only JSON, indented) all of it."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    start = stdout.find("\n{")
    for text in (stdout, stdout[start + 1:] if start >= 0 else ""):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def printed_tables(stdout: str) -> str:
    """What the benchmark printed for people: its stdout without the JSON document."""
    lines = stdout.rstrip("\n").splitlines()
    if lines and lines[-1].lstrip().startswith("{"):
        lines = lines[:-1]
    text = "\n".join(lines)
    return "" if text.lstrip().startswith("{") else text


def run_bench(bench: Bench, quick: bool, results: str, budget_s: float) -> dict:
    args = list(bench.quick_args if quick else bench.args)
    workdir = os.path.join(results, "work", bench.name)
    if bench.keeps_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        args += ["--workdir", workdir, "--keep"]
    command = [sys.executable, os.path.join("bench", f"{bench.name}.py"), *args]
    shown = " ".join([".venv/bin/python", *command[1:]]).replace(results + "/", "")
    record = {"version": 1, "name": bench.name, "command": shown, "started": time.time(),
              "load_before": os.getloadavg()[0], "quick": quick}
    missing = [cmd for cmd in bench.needs if shutil.which(cmd) is None]
    if missing:
        record.update(rc=None, error=f"not run: {', '.join(missing)} not installed "
                                     f"(make bench installs them with scripts/ensure-system-deps)")
        return record
    if budget_s < 30:
        record.update(rc=None, error="not run: the suite's time was up")
        return record
    log(f"== {bench.name}: {shown} (up to {budget_s:.0f} s)")
    stderr_path = os.path.join(results, f"{bench.name}.stderr")
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=budget_s)
            record["rc"] = proc.returncode
        except subprocess.TimeoutExpired:
            # SIGINT first: the benchmark's `finally` blocks stop the processes it started in their own sessions
            os.killpg(proc.pid, signal.SIGINT)
            try:
                stdout, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate(timeout=30)
            record.update(rc=None, error=f"stopped after its budget of {budget_s:.0f} s")
    record.update(finished=time.time(), load_after=os.getloadavg()[0], doc=last_json(stdout),
                  tables=printed_tables(stdout))
    record["wall_s"] = record["finished"] - record["started"]
    for pattern in bench.keep:
        for path in glob.glob(os.path.join(workdir, pattern)):
            shutil.copy(path, os.path.join(results, f"{bench.name}-{os.path.basename(path)}"))
    if record["rc"] not in (0, None) and "error" not in record:
        with open(stderr_path) as f:
            tail = f.read().strip().splitlines()[-3:]
        record["error"] = f"exit status {record['rc']}: " + " | ".join(tail)
    if record["doc"] is None and "error" not in record:
        record["error"] = "printed no JSON document"
    log(f"   {bench.name}: {record.get('error') or 'ok'} in {record['wall_s']:.0f} s")
    return record


def main() -> int:
    names = [b.name for b in BENCHES]
    ap = argparse.ArgumentParser(description="Run every benchmark and regenerate docs/BENCHMARKS.md and "
                                             "its plots (docs/bench/*.png).")
    ap.add_argument("--only", default="", help=f"comma-separated benchmarks to run (of {', '.join(names)})")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks not to run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite runs, figures mean little")
    ap.add_argument("--results", default=os.path.join(HERE, "results"),
                    help="where each benchmark's record goes (default: bench/results)")
    ap.add_argument("--minutes", type=float, default=27.0,
                    help="the whole suite's time limit: a benchmark still running then is stopped (default: 27, "
                         "so that `make bench` with its installs stays under 30)")
    ap.add_argument("--report-only", action="store_true", help="do not run anything; re-render the report")
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"), help="the report to write")
    args = ap.parse_args()
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - set(names)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    results = os.path.abspath(args.results)
    os.makedirs(results, exist_ok=True)
    if not args.report_only:
        t0 = time.monotonic()
        with open(os.path.join(results, "machine.json"), "w") as f:
            json.dump(machine_summary(), f, indent=1)
        chosen = [b for b in BENCHES if (not only or b.name in only) and b.name not in skip]
        for i, bench in enumerate(chosen, 1):
            log(f"[{i}/{len(chosen)}] {time.monotonic() - t0:.0f} s into the suite")
            left = args.minutes * 60 - (time.monotonic() - t0)
            record = run_bench(bench, args.quick, results, min(bench.budget_s, left))
            with open(os.path.join(results, f"{bench.name}.json"), "w") as f:
                json.dump(record, f, indent=1)
        log(f"suite done in {(time.monotonic() - t0) / 60:.1f} min")
    render(results, args.doc, os.path.join(os.path.dirname(args.doc), "bench"))
    log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
