"""Benchmark: coordinator failover and commit latency, on three real replicas on 127.0.0.1.

Not a test: it prints a table (or JSON with --json) and asserts nothing about timing.

1. Commit latency at the primary: NextRuid over AMP from one probe connection
   (`vod.groups.probe.BlockingClient.pipeline`), each load for --seconds:
   - paced at --rate (1,000/s) open loop: a call is due at start + i/rate whether or not
     earlier ones were answered, and its latency counts from when it was due (so time spent
     queued behind a slow answer is not hidden: no coordinated omission);
   - unpaced, one call in flight (pure round trip);
   - unpaced, --window calls in flight (throughput).
2. --rounds rounds of failover: a probe client commits NextRuid continuously (each one
   acknowledged before the next is asked); SIGKILL the primary; the failover time is from
   just before the SIGKILL to the acknowledgement of the first RUID the new primary
   committed, as that client saw it (reconnecting and re-authenticating included). The
   killed replica is restarted (same data directory, same ports) and caught up before the
   next round. A round "needed more than one election" when the Raft term went up by more
   than one across it. Every round also checks that the RUIDs stayed strictly increasing.

Usage: .venv/bin/python bench/failover.py [--rounds 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the Cluster harness lives with the tests

from cluster import Cluster, wait_for  # noqa: E402
from vod.groups.probe import BlockingClient, Ruid  # noqa: E402
from vod.groups.wire import NextRuid  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


# -- commit latency ----------------------------------------------------------------------------------


def measure_load(cluster: Cluster, label: str, seconds: float, window: int, rate: float | None) -> dict:
    primary = cluster.wait_primary()
    with BlockingClient(cluster.listen(primary), timeout=10) as client:
        client.authenticate(cluster.secret, "bench-load")
        client.pipeline(NextRuid, 200, window)  # warm up
        started = time.perf_counter()
        calls = client.pipeline(NextRuid, 10 ** 9, window, duration=seconds, rate=rate)
        elapsed = time.perf_counter() - started
    ruids = [c.answer["ruid"] for c in calls]
    assert ruids == sorted(set(ruids)), "RUIDs on one connection must be strictly increasing"
    latency = [(c.answered - c.due) * 1000 for c in calls]
    return {"load": label, "window": window, "rate": rate, "ops": len(calls), "seconds": round(elapsed, 3),
            "ops_per_s": round(len(calls) / elapsed, 1), "p50_ms": round(pct(latency, 50), 3),
            "p99_ms": round(pct(latency, 99), 3), "max_ms": round(max(latency), 3), "primary": primary}


# -- failover ------------------------------------------------------------------------------------------


class Committer(threading.Thread):
    """One probe client asking for RUIDs back to back until stopped."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.probe = cluster.probe(retry_delay=0.002, give_up_after=30)
        self.acked: list[Ruid] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.acked.append(self.probe.next_ruid())
        except BaseException as err:
            self.error = err
        finally:
            self.probe.close()

    def first(self, predicate) -> Ruid | None:
        if self.error is not None:
            raise RuntimeError(f"the committing client failed: {self.error!r}")
        return next((r for r in list(self.acked) if predicate(r)), None)

    def finish(self) -> list[Ruid]:
        self.halt.set()
        self.join(40)
        if self.is_alive():
            raise RuntimeError("the committing client did not stop")
        if self.error is not None:
            raise RuntimeError(f"the committing client failed: {self.error!r}")
        return self.acked


def term_of(cluster: Cluster, rid: str) -> int:
    status = cluster.statuses([rid])[rid]
    if status is None:
        raise RuntimeError(f"{rid} did not answer Status")
    return status["replica"]["term"]


def failover_round(cluster: Cluster, number: int, log) -> dict:
    old = cluster.wait_primary(20)
    term_before = term_of(cluster, old)
    committer = Committer(cluster)
    committer.start()
    try:
        wait_for(lambda: sum(1 for r in list(committer.acked) if r.replica == old) >= 20, 20,
                 f"round {number}: RUIDs from {old}")
        killed_at = time.time()
        cluster.kill(old)
        first_new = wait_for(lambda: committer.first(lambda r: r.replica != old and r.acked > killed_at), 30,
                             f"round {number}: a RUID from a new primary", interval=0.005)
    finally:
        acked = committer.finish()
    new = first_new.replica
    term_after = term_of(cluster, new)
    values = [r.ruid for r in acked]
    before = [r.ruid for r in acked if r.acked <= killed_at]
    result = {"round": number, "killed": old, "new_primary": new,
              "failover_ms": round((first_new.acked - killed_at) * 1000, 1),
              "attempts": first_new.attempts, "term_before": term_before, "term_after": term_after,
              "elections": term_after - term_before,
              "increasing": values == sorted(set(values)) and first_new.ruid > max(before, default=0)}
    restart_at = time.monotonic()
    cluster.start_replica(old)
    cluster.wait_caught_up(old, 20)
    result["rejoin_s"] = round(time.monotonic() - restart_at, 2)
    result["term_after_rejoin"] = term_of(cluster, cluster.wait_primary(20))
    log(f"round {number:2}: killed {old}, {new} committed after {result['failover_ms']:7.1f} ms "
        f"(term {term_before} -> {term_after}), {old} back in {result['rejoin_s']:.2f}s")
    return result


# -- report --------------------------------------------------------------------------------------------


def summarize(loads: list[dict], rounds: list[dict]) -> dict:
    times = [r["failover_ms"] for r in rounds]
    return {
        "failover": {"rounds": len(rounds), "p50_ms": pct(times, 50), "p99_ms": pct(times, 99),
                     "max_ms": max(times) if times else None, "min_ms": min(times) if times else None,
                     "rounds_with_more_than_one_election": sum(1 for r in rounds if r["elections"] > 1),
                     "election_counts": {str(k): sum(1 for r in rounds if r["elections"] == k)
                                         for k in sorted({r["elections"] for r in rounds})},
                     "rounds_ruids_not_increasing": sum(1 for r in rounds if not r["increasing"]),
                     "restarts_that_changed_the_term": sum(1 for r in rounds
                                                           if r["term_after_rejoin"] != r["term_after"])},
        "commit_latency": loads,
        "rounds": rounds,
    }


def print_table(doc: dict, out=sys.stdout) -> None:
    f = doc["failover"]
    print(f"\nfailover: SIGKILL of the primary -> first RUID committed by the new primary ({f['rounds']} rounds)",
          file=out)
    print(f"  {'p50':>8} {'p99':>8} {'max':>8} {'min':>8}   (ms)", file=out)
    print(f"  {f['p50_ms']:8.1f} {f['p99_ms']:8.1f} {f['max_ms']:8.1f} {f['min_ms']:8.1f}", file=out)
    print(f"  rounds needing more than one election (term jump > 1): {f['rounds_with_more_than_one_election']}"
          f" of {f['rounds']}   (term jumps: {f['election_counts']})", file=out)
    print(f"  rounds whose RUIDs were not strictly increasing: {f['rounds_ruids_not_increasing']}", file=out)
    print(f"  restarts of the killed replica that changed the term: {f['restarts_that_changed_the_term']}",
          file=out)
    print("\ncommit latency at the primary (NextRuid over AMP, one connection):", file=out)
    print(f"  {'load':34} {'ops':>7} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}", file=out)
    for row in doc["commit_latency"]:
        print(f"  {row['load']:34} {row['ops']:7} {row['ops_per_s']:8.1f} {row['p50_ms']:8.2f} "
              f"{row['p99_ms']:8.2f} {row['max_ms']:8.2f}", file=out)
    print("  (paced: latency from when each call was due, open loop)", file=out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="failover rounds (at least 1)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per commit-latency load")
    ap.add_argument("--rate", type=float, default=1000.0, help="ops/s of the paced load")
    ap.add_argument("--window", type=int, default=16, help="calls in flight for the unpaced throughput load")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--workdir", default=None, help="keep logs and data here (default: a temporary directory)")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.rate <= 0 or args.window < 1:
        ap.error("--rounds >= 1, --seconds > 0, --rate > 0, --window >= 1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="vod-bench-failover-")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    cluster = Cluster(os.path.join(workdir, "cluster"))
    try:
        cluster.start()
        log(f"cluster up: {', '.join(f'{r}={cluster.listen(r)}' for r in cluster.ids)}; logs in {workdir}")
        loads = [
            measure_load(cluster, f"paced {args.rate:g}/s (open loop)", args.seconds, 1000, args.rate),
            measure_load(cluster, "unpaced, 1 in flight", args.seconds, 1, None),
            measure_load(cluster, f"unpaced, {args.window} in flight", args.seconds, args.window, None),
        ]
        for row in loads:
            log(f"{row['load']}: {row['ops_per_s']} ops/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
        rounds = [failover_round(cluster, i + 1, log) for i in range(args.rounds)]
    except BaseException:
        log(cluster.describe())
        raise
    finally:
        cluster.stop_all()
    doc = summarize(loads, rounds)
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print_table(doc)
        print(f"\n({doc['wall_seconds']}s in all)")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
