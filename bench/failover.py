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
3. VIEW delivery after a member crash, once per --view-timeouts value (0.5 and 1.0 s), each on a fresh
   three-replica cluster whose coordinators run with that --failure-timeout: --view-members (5) member
   processes (bench/_view_member.py: join, heartbeat every timeout/5 s unless --view-heartbeat says
   otherwise, log every delivered event with its epoch time, never cast) in one domain. Each of
   --view-rounds rounds SIGKILLs one member (t_kill = time.time() just before the signal) and waits until
   every survivor has delivered a view of the domain group without it (--view-fault stop: SIGSTOP
   instead, a hung member whose connection stays open; it is SIGKILLed once the view is delivered).
   The round's VIEW latency is the max over survivors of (delivery time - t_kill); the first and
   median survivor are kept too, and the "detector" time is when the primary logged that it proposes
   the exclusion. A fresh member (new id) then joins, and the next round starts once every member has
   delivered the view that holds it.

Usage: .venv/bin/python bench/failover.py [--rounds 20] [--view-rounds 20] [--view-timeouts 0.5,1.0]
                                          [--view-fault kill|stop] [--only coordinator|views] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the Cluster harness lives with the tests

from benchutil import pct  # noqa: E402
from cluster import Cluster, wait_for  # noqa: E402
from vod.groups.probe import BlockingClient, Ruid  # noqa: E402
from vod.groups.wire import NextRuid  # noqa: E402



def wait_settled_primary(cluster: Cluster, hold: float = 1.0, timeout: float = 30.0) -> str:
    """One acting primary and no ROLE line for `hold` seconds: the start-up elections are over.

    Right after start the first primary's lease can lapse while its peers are still importing on a busy
    machine; phases 1-2 measure a settled cluster, not that.
    """
    def settled():
        last = max((line.time for line in cluster.role_lines()), default=None)
        if last is None or time.time() - last < hold:
            return None
        acting = cluster.acting_primaries()
        return acting[0] if len(acting) == 1 else None

    return wait_for(settled, timeout, f"one primary and no role change for {hold:g} s", interval=0.1,
                    describe=cluster.describe)


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


# -- VIEW delivery after a member crash -----------------------------------------------------------------

VIEW_MEMBER = os.path.join(ROOT, "bench", "_view_member.py")
VIEW_DOMAIN = "views"
VIEW_GROUP = f"domain:{VIEW_DOMAIN}"
EXCLUDING_RE = re.compile(r"^(?P<t>\d+\.\d+) WARNING vod\.coordinator: excluding silent members (?P<ids>.*)$")


class MemberLog:
    """The views one member delivered (of the domain group), read incrementally from its JSON-lines log."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0
        self._partial = ""
        self.views: list[dict] = []  # each: the ViewChanged dict plus "t", the epoch time it was delivered
        self.errors: list[str] = []

    def poll(self) -> "MemberLog":
        try:
            with open(self.path) as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return self
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            event = record.get("event") or {}
            if event.get("type") == "ViewChanged" and event.get("group") == VIEW_GROUP:
                self.views.append(dict(event, t=record["t"]))
            elif "error" in record:
                self.errors.append(record["error"])
        if self.errors:
            raise RuntimeError(f"{self.path}: member failed: {self.errors[0]}")
        return self

    def last_members(self) -> set[str] | None:
        return set(self.views[-1]["members"]) if self.views else None

    def first_view_without(self, member_id: str, since: float) -> dict | None:
        return next((v for v in self.views if v["t"] >= since and member_id not in v["members"]), None)


class ViewPhase:
    """N members of one domain on a fresh three-replica cluster whose failure timeout is `timeout`."""

    def __init__(self, workdir: str, timeout: float, heartbeat: float, members: int, log, fault: str = "kill"):
        self.workdir = workdir
        self.fault = fault
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.size = members
        self.log = log
        self.cluster = Cluster(os.path.join(workdir, "cluster"), failure_timeout=timeout)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, MemberLog] = {}
        self.next_id = 1
        self.killed: set[str] = set()

    def start_member(self) -> str:
        member_id = f"m{self.next_id}"
        self.next_id += 1
        path = os.path.join(self.workdir, f"{member_id}.jsonl")
        with open(os.path.join(self.workdir, f"{member_id}.out"), "wb") as out:
            self.procs[member_id] = subprocess.Popen(
                [sys.executable, VIEW_MEMBER, "--coordinators", ",".join(self.cluster.coordinators),
                 "--secret-file", str(self.cluster.secret_file), "--member-id", member_id, "--domain", VIEW_DOMAIN,
                 "--log", path, "--heartbeat-interval", str(self.heartbeat)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.logs[member_id] = MemberLog(path)
        return member_id

    def alive(self) -> list[str]:
        return [m for m in self.procs if m not in self.killed]

    def settled(self) -> bool:
        """Every live member's last view is exactly the live members (and the process still runs)."""
        alive = set(self.alive())
        for m in alive:
            if self.procs[m].poll() is not None:
                raise RuntimeError(f"member {m} exited with status {self.procs[m].returncode}")
            if self.logs[m].poll().last_members() != alive:
                return False
        return True

    def wait_settled(self, what: str) -> None:
        wait_for(self.settled, 30, what, interval=0.02, describe=self.describe)

    def excluding_at(self, victim: str, since: float) -> float | None:
        """When a replica logged that it proposes to exclude `victim` (the failure detector's verdict)."""
        found = []
        for rid in self.cluster.ids:
            path = self.cluster.replicas[rid].log_path
            if not os.path.exists(path):
                continue
            with open(path, errors="replace") as f:
                for line in f:
                    m = EXCLUDING_RE.match(line.rstrip("\n"))
                    if m and float(m["t"]) >= since and victim in m["ids"].split(", "):
                        found.append(float(m["t"]))
        return min(found, default=None)

    def late_checks(self, since: float) -> int:
        """Stalls (role check > 0.5 s late: the detector then grants grace) the replicas logged since `since`."""
        count = 0
        for rid in self.cluster.ids:
            with open(self.cluster.replicas[rid].log_path, errors="replace") as f:
                for line in f:
                    head, _, rest = line.partition(" ")
                    if "role check ran" in rest:
                        try:
                            count += float(head) >= since
                        except ValueError:
                            pass
        return count

    def round(self, number: int, rng: random.Random) -> dict:
        time.sleep(rng.uniform(0.2, 0.2 + self.heartbeat))  # any phase against the heartbeats
        victim = rng.choice(self.alive())
        survivors = [m for m in self.alive() if m != victim]
        killed_at = time.time()
        if self.fault == "kill":
            self.procs[victim].kill()
            self.procs[victim].wait(10)
        else:  # a hung member: its connection stays open, only its heartbeats stop
            self.procs[victim].send_signal(signal.SIGSTOP)
        self.killed.add(victim)

        def delivered():
            views = {m: self.logs[m].poll().first_view_without(victim, killed_at) for m in survivors}
            return views if all(views.values()) else None

        views = wait_for(delivered, max(15.0, 10 * self.timeout), f"round {number}: a view without {victim} "
                         f"at every survivor", interval=0.005, describe=self.describe)
        latency = sorted((v["t"] - killed_at) * 1000 for v in views.values())
        view_ids = {v["view_id"] for v in views.values()}
        if self.fault == "stop":
            self.procs[victim].kill()  # a stopped process dies of SIGKILL too
            self.procs[victim].wait(10)
        excluding = self.excluding_at(victim, killed_at)
        result = {"round": number, "killed": victim, "survivors": len(survivors),
                  "view_ms": round(latency[-1], 1), "min_ms": round(latency[0], 1),
                  "median_ms": round(statistics.median(latency), 1),
                  "detected_ms": None if excluding is None else round((excluding - killed_at) * 1000, 1),
                  "same_view": len(view_ids) == 1 and all(set(v["members"]) == set(survivors)
                                                          for v in views.values()),
                  "view_id": min(view_ids)}
        replacement = self.start_member()
        self.wait_settled(f"round {number}: {replacement}'s join view at every member")
        self.log(f"  round {number:2}: {'killed' if self.fault == 'kill' else 'stopped'} {victim}; view {result['view_id']} without it at all "
                 f"{len(survivors)} survivors after {result['view_ms']:7.1f} ms (first {result['min_ms']:.1f}, "
                 f"detector {result['detected_ms']} ms){'' if result['same_view'] else '  VIEWS DIFFER'}; "
                 f"{replacement} joined")
        return result

    def run(self, rounds: int, seed: int) -> dict:
        rng = random.Random(seed)
        try:
            self.cluster.start()
            up = time.monotonic()
            for _ in range(self.size):
                self.start_member()
            self.wait_settled(f"{self.size} members in one view")
            # A new primary excludes nobody during its grace period: start the rounds after it.
            time.sleep(max(0.0, self.cluster.grace + 0.5 - (time.monotonic() - up)))
            started = time.time()
            results = [self.round(i + 1, rng) for i in range(rounds)]
            late = self.late_checks(started)
            spurious = sorted({m for log in self.logs.values() for v in log.views
                               for m in v.get("left", []) if m not in self.killed})
        except BaseException:
            self.log(self.describe())
            raise
        finally:
            self.stop()
        times = [r["view_ms"] for r in results]
        detected = [r["detected_ms"] for r in results if r["detected_ms"] is not None]
        after = [r["view_ms"] - r["detected_ms"] for r in results if r["detected_ms"] is not None]
        return {"fault": self.fault, "failure_timeout_s": self.timeout, "heartbeat_interval_s": self.heartbeat,
                "members": self.size,
                "rounds": len(results), "p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "max_ms": max(times),
                "min_ms": min(times),
                "first_survivor_p50_ms": pct([r["min_ms"] for r in results], 50),
                "median_survivor_p50_ms": pct([r["median_ms"] for r in results], 50),
                "detector_p50_ms": pct(detected, 50), "detector_p99_ms": pct(detected, 99),
                "after_detector_p50_ms": round(pct(after, 50), 1), "after_detector_p99_ms": round(pct(after, 99), 1),
                "rounds_views_differ": sum(1 for r in results if not r["same_view"]),
                "spurious_exclusions": spurious, "late_role_checks": late, "rounds_detail": results}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self.log(f"member pid {proc.pid} survived SIGKILL for 10 s")
        self.cluster.stop_all()

    def describe(self) -> str:
        tails = []
        for m, log in self.logs.items():
            last = log.views[-1] if log.views else None
            tails.append(f"  {m}: {'killed' if m in self.killed else 'alive'}, last view "
                         f"{last and (last['view_id'], last['members'])}")
        return "members:\n" + "\n".join(tails) + "\n" + self.cluster.describe()


def measure_views(workdir: str, rounds: int, timeouts: list[float], heartbeat: float | None, members: int,
                  seed: int, log, fault: str = "kill") -> list[dict]:
    phases = []
    for i, timeout in enumerate(timeouts):
        beat = heartbeat if heartbeat is not None else round(timeout / 5, 3)
        log(f"VIEW delivery: failure timeout {timeout:g} s, members heartbeat every {beat:g} s, {members} members, "
            f"{rounds} rounds")
        phase = ViewPhase(os.path.join(workdir, f"views-{i}"), timeout, beat, members, log, fault)
        phases.append(phase.run(rounds, seed + i))
    return phases


# -- report --------------------------------------------------------------------------------------------


def summarize(loads: list[dict], rounds: list[dict]) -> dict:
    if not rounds:
        return {"failover": None, "commit_latency": loads, "rounds": rounds}
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


def print_views(phases: list[dict], out=sys.stdout) -> None:
    if not phases:
        return
    fault = "SIGKILL" if phases[0]["fault"] == "kill" else "SIGSTOP"
    print(f"\nVIEW delivery: {fault} of a member -> a view without it delivered at every survivor "
          f"({phases[0]['members']} members, {phases[0]['members'] - 1} survivors a round)", file=out)
    print(f"  {'timeout':>7} {'beat':>5} {'rounds':>6} {'p50':>8} {'p99':>8} {'max':>8} {'min':>8}   "
          f"{'1st p50':>8} {'med p50':>8}   {'detect p50':>10} {'p99':>6}   {'after p50':>9} {'p99':>6}", file=out)
    for p in phases:
        print(f"  {p['failure_timeout_s']:6g}s {p['heartbeat_interval_s']:4g}s {p['rounds']:6} {p['p50_ms']:8.1f} "
              f"{p['p99_ms']:8.1f} {p['max_ms']:8.1f} {p['min_ms']:8.1f}   {p['first_survivor_p50_ms']:8.1f} "
              f"{p['median_survivor_p50_ms']:8.1f}   {p['detector_p50_ms']:10.1f} {p['detector_p99_ms']:6.1f}   "
              f"{p['after_detector_p50_ms']:9.1f} {p['after_detector_p99_ms']:6.1f}", file=out)
    print("  (ms; p50/p99/max/min of the round's latency = the last survivor's; 1st/med = first and median "
          "survivor;\n   detect = until the primary proposed the exclusion; after = from then to the last "
          "survivor's delivery)", file=out)
    for p in phases:
        print(f"  timeout {p['failure_timeout_s']:g}s: rounds whose survivors delivered different views: "
              f"{p['rounds_views_differ']}; live members excluded: {p['spurious_exclusions'] or 'none'}; "
              f"late role checks (stalls > 0.5 s): {p['late_role_checks']}", file=out)


def print_table(doc: dict, out=sys.stdout) -> None:
    f = doc["failover"]
    if f is None:
        print_views(doc.get("views") or [], out)
        return
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
    print_views(doc.get("views") or [], out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="failover rounds (at least 1)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per commit-latency load")
    ap.add_argument("--rate", type=float, default=1000.0, help="ops/s of the paced load")
    ap.add_argument("--window", type=int, default=16, help="calls in flight for the unpaced throughput load")
    ap.add_argument("--view-rounds", type=int, default=20,
                    help="member crashes per failure timeout in the VIEW delivery phase (0: skip the phase)")
    ap.add_argument("--view-timeouts", default="0.5,1.0", metavar="S,...",
                    help="coordinator --failure-timeout values, one VIEW delivery phase (and cluster) each")
    ap.add_argument("--view-heartbeat", type=float, default=None, metavar="S",
                    help="members' heartbeat interval (default: each failure timeout / 5, the production ratio)")
    ap.add_argument("--view-members", type=int, default=5, help="members in the domain (at least 2)")
    ap.add_argument("--view-fault", choices=["kill", "stop"], default="kill",
                    help="SIGKILL the member (a crash: its connection closes) or SIGSTOP it (a hang: the "
                         "connection stays open, only the heartbeats stop; it is killed once excluded)")
    ap.add_argument("--seed", type=int, default=20261123, help="which member each VIEW round kills")
    ap.add_argument("--only", choices=["coordinator", "views"], default=None,
                    help="run only the coordinator phases (1, 2) or only the VIEW delivery phase (3)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--workdir", default=None, help="keep logs and data here (default: a temporary directory)")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.rate <= 0 or args.window < 1:
        ap.error("--rounds >= 1, --seconds > 0, --rate > 0, --window >= 1")
    try:
        view_timeouts = [float(t) for t in args.view_timeouts.split(",") if t.strip()]
    except ValueError:
        ap.error("--view-timeouts: seconds, comma-separated")
    if args.view_rounds < 0 or args.view_members < 2 or not all(t > 0 for t in view_timeouts) or \
            (args.view_heartbeat is not None and args.view_heartbeat <= 0):
        ap.error("--view-rounds >= 0, --view-members >= 2, --view-timeouts and --view-heartbeat > 0")
    workdir = args.workdir or tempfile.mkdtemp(prefix="vod-bench-failover-")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    loads, rounds, views = [], [], []
    if args.only != "views":
        # One connection drives the group as fast as Raft commits (~2,500/s here): past the per-connection
        # command limit meant for members, so the limit is off for this measurement.
        cluster = Cluster(os.path.join(workdir, "cluster"), extra_args=["--command-rate", "0"])
        try:
            cluster.start()
            wait_settled_primary(cluster)
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
    if args.only != "coordinator" and args.view_rounds:
        views = measure_views(workdir, args.view_rounds, view_timeouts, args.view_heartbeat, args.view_members,
                              args.seed, log, args.view_fault)
    doc = summarize(loads, rounds)
    doc["views"] = views
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
