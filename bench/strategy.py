"""Benchmark: how fast strategies are computed, and how fast the replicated coordinator admits requests.

Not a test: it prints tables (and, with --json, one JSON document as the last line) and asserts
nothing about timing.

1. compute (target: < 5 ms each): `make_strategy` and `restripe` for a --frames (200,000) frame
   movie on 16 servers, pure CPU in this process. Every combination of max_servers 16 and 4 (the
   coordinator's default), equal capacities (all 1) and unequal ones (1, 2, 3, 4, 1, 2, ...), and a
   full wanted mask or a random partial one (each frame wanted with probability 1/2, seeded).
   `restripe` fails the middle assigned server while the client holds a prefix-biased ~30% mask
   (frames before 28% of the movie held with probability 0.95, later ones with 0.02).
   --runs (50) timed runs per row after 2 warm-up runs; median and p99 (nearest rank: with 50 runs
   that is the slowest run). A second small table shows what a strategy record costs to encode and
   ship (Strategy.to_dict, JSON, zlib as the AMP `Json` argument does it).

2. admission (targets: >= 1,000 requests/s, p99 <= 20 ms): three real `vod-coordinator` replicas
   (tests/cluster.py), --servers (4) scripted servers in one child process holding one movie per
   --movie-frames size (100,000 and 10,000 frames, RegisterMovies), and --clients (12) in-process
   client members on this process's reactor, each with --window (4) requests outstanding, distinct
   request ids, all wanting the whole movie. Per movie size, in this order:
   - "1 in flight" (--floor-seconds, 2): one client, one cycle (as in "cycle" below) at a time: the
     latency floor of the path with no queueing.
   - "paced" (--paced-seconds, default --seconds; right after "1 in flight", before the overload
     phases, whose lease lapses and reconnections would spill into it): open loop at a fixed offered rate
     (--paced-rate, 1,000 requests/s): OpenRequest number i is due at start + i / rate, round robin
     over the clients, whatever the answers before it, so latency is measured at a given load rather
     than at saturation, where queueing dominates p99 ("open"). Latencies ("answer", "push" = request
     -> strategy at the client) count from when each request was due, so a bench that falls behind
     shows as latency, not as a lower offered rate; the send lag and "push" from the actual send are
     reported beside them (JSON: offered_rate, offered, not_sent, send_lag_p50/p99_ms,
     push_from_send_p50/p99_ms). The rate is the answered requests over the phase (at least
     --paced-seconds, up to the last answer); it meets the target when it is >= 98% of an offered
     rate >= 1,000/s. Afterwards every request is CDone'd ("paced cleanup" row).
   - "open" (--seconds, 6): OpenRequest as fast as possible. "answer" is OpenRequest sent ->
     answered (the primary answers after req_open and req_strategize are both committed); "push"
     is OpenRequest sent -> the StrategyAssigned push arriving at the client. Afterwards every
     admitted request is CDone'd ("cdone cleanup" row) so video groups do not pile up into the next
     phase.
   - "cycle" (--seconds, 6): each slot does OpenRequest -> wait for StrategyAssigned -> CDone, over
     and over; the rate is complete cycles/s, "answer"/"push" as above, and "cdone" is CDone sent ->
     answered.
   "admitted" (JSON only) is OpenRequest sent -> the RequestChanged "pending" push, i.e. req_open
   committed, which splits "answer" into its two commits.
   "book" is the coordinator's last RUID before and after the phase: every request ever admitted
   stays in the replicated request book. "rate 1st s / last s" shows the admission rate in the
   first and the last second of the phase, to show a trend within one run. Each phase starts once
   every client is joined again (overload costs reconnections). The CPU each process used in each
   phase is read from /proc, so what saturates is visible next to the rates, and so is the CPU that
   "other processes" (anything else on the machine) took from the same cores meanwhile.
   --no-overload skips "open" and "cycle" (a short run of the paced latency alone); --paced-times DIR
   keeps each paced request's times, to see whether a tail is one stall or spread over the phase.

Usage: .venv/bin/python bench/strategy.py [--compute-only | --admission-only] [--json]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the Cluster harness lives with the tests

from benchutil import pct, profile_totals  # noqa: E402
from vod.coordinator.cli import tune_gc  # noqa: E402
from vod.strategy.mask import FrameMask  # noqa: E402
from vod.strategy.placement import ServerInfo, Strategy, make_strategy  # noqa: E402
from vod.strategy.restripe import restripe  # noqa: E402

COMPUTE_TARGET_MS = 5.0
ADMIT_TARGET_RATE = 1000.0
ADMIT_TARGET_P99_MS = 20.0
PACED_KEPT_UP = 0.98  # the paced phase meets the rate target if it admits this share of the offered rate
PACED_MAX_OUTSTANDING = 5_000  # the paced phase sends no more while this many requests are unanswered
OTHERS = "other processes"  # in the CPU shares: the machine's busy time not used by the bench's processes
SERVE_FLAG = "--serve-members"  # internal: this file run as the child process holding the scripted servers



def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- part 1: compute -----------------------------------------------------------------------------------


def random_wanted(frames: int, rng: random.Random) -> FrameMask:
    bits = rng.getrandbits(frames)
    text = format(bits, f"0{frames}b")[:frames]
    return FrameMask.from_text(text)


def prefix_biased_held(frames: int, rng: random.Random, cut: float = 0.28, before: float = 0.95,
                       after: float = 0.02) -> FrameMask:
    """About 30% of the movie: mostly a prefix (a client that played a while), a few frames later on."""
    edge = int(frames * cut)
    chars = ["1" if rng.random() < (before if i < edge else after) else "0" for i in range(frames)]
    return FrameMask.from_text("".join(chars))


def time_runs(fn, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    gc.collect()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run_compute(args) -> dict:
    rng = random.Random(args.seed)
    n = args.frames
    full = FrameMask.full(n)
    partial = random_wanted(n, rng)
    held = prefix_biased_held(n, rng)
    capacity_sets = {"equal (all 1)": [1] * args.compute_servers,
                     "unequal (1..4)": [1 + i % 4 for i in range(args.compute_servers)]}
    rows = []
    for max_servers in (16, 4):
        for cap_label, caps in capacity_sets.items():
            servers = [ServerInfo(f"s{i:02d}", c, 0, frozenset({"m"})) for i, c in enumerate(caps)]
            for wanted_label, wanted in (("full", full), (f"random {partial.count() / n:.0%}", partial)):
                def make():
                    return make_strategy(1, "m", "client", n, wanted, servers, max_servers=max_servers)

                strategy = make()
                failed = strategy.servers[len(strategy.servers) // 2]
                live = [s for s in servers if s.server_id != failed]

                def again():
                    return restripe(strategy, {failed}, held, live, max_servers=max_servers)

                moved = again()
                base = {"frames": n, "servers": len(servers), "max_servers": max_servers, "capacities": cap_label,
                        "wanted": wanted_label, "wanted_frames": wanted.count()}
                for fn_name, fn, result in (("make_strategy", make, strategy), ("restripe", again, moved)):
                    times = time_runs(fn, args.runs)
                    row = dict(base, function=fn_name, runs=len(times), median_ms=round(statistics.median(times), 3),
                               p99_ms=round(pct(times, 99), 3), max_ms=round(max(times), 3),
                               assigned=len(result.assignments))
                    if fn_name == "restripe":
                        row["failed"] = failed
                        row["held_frames"] = held.count()
                    row["meets_target"] = row["p99_ms"] < COMPUTE_TARGET_MS
                    rows.append(row)
                    log(f"compute: {fn_name} max_servers={max_servers} {cap_label} wanted={wanted_label}: "
                        f"median {row['median_ms']} ms, p99 {row['p99_ms']} ms")
    return {"rows": rows, "encoding": run_encoding(args)}


def run_encoding(args) -> list[dict]:
    """What one strategy record costs on the way to a member (full wanted mask, 4 equal servers)."""
    out = []
    servers = [ServerInfo(f"s{i}", 1, 0, frozenset({"m"})) for i in range(4)]
    rng = random.Random(args.seed + 1)
    for frames in args.movie_frames:
        for wanted_label, wanted in (("full", FrameMask.full(frames)), ("random 50%", random_wanted(frames, rng))):
            strategy = make_strategy(1, "m", "client", frames, wanted, servers)
            record = strategy.to_dict()
            text = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
            packed = zlib.compress(text, 6)
            timings = {
                "to_dict_ms": time_runs(strategy.to_dict, args.runs // 2),
                "json_zlib_ms": time_runs(lambda: zlib.compress(
                    json.dumps(record, separators=(",", ":"), sort_keys=True).encode(), 6), args.runs // 2),
                "unzlib_json_ms": time_runs(lambda: json.loads(zlib.decompress(packed)), args.runs // 2),
                "from_dict_ms": time_runs(lambda: Strategy.from_dict(record), args.runs // 2),
            }
            row = {"frames": frames, "wanted": wanted_label, "json_bytes": len(text), "zlib_bytes": len(packed),
                   "fits_one_amp_value": len(packed) <= 60_000}
            row.update({k: round(statistics.median(v), 3) for k, v in timings.items()})
            out.append(row)
    return out


def print_compute(doc: dict) -> None:
    rows = doc["rows"]
    if rows:
        r0 = rows[0]
        print(f"\n1. strategy computation: {r0['frames']:,}-frame movie, {r0['servers']} servers, "
              f"{r0['runs']} runs per row (target: < {COMPUTE_TARGET_MS:g} ms each)")
        print(f"  {'function':13} {'max_srv':>7} {'capacities':15} {'wanted':11} {'assigned':>8} "
              f"{'median ms':>10} {'p99 ms':>9}  target")
        for r in rows:
            verdict = ("ok" if r["meets_target"] else
                       "median ok, p99 MISSED" if r["median_ms"] < COMPUTE_TARGET_MS else "MISSED")
            print(f"  {r['function']:13} {r['max_servers']:7} {r['capacities']:15} {r['wanted']:11} "
                  f"{r['assigned']:8} {r['median_ms']:10.2f} {r['p99_ms']:9.2f}  {verdict}")
        held = next((r["held_frames"] for r in rows if "held_frames" in r), None)
        print(f"  (restripe: the middle assigned server failed; the client holds {held:,} frames, "
              f"prefix-biased; load average now {_loadavg()} on {os.cpu_count()} cores)")
    enc = doc["encoding"]
    if enc:
        print("\n   strategy record on the wire (4 equal servers; medians; JSON + zlib level 6, as the AMP Json "
              "argument does it)")
        print(f"  {'frames':>8} {'wanted':11} {'JSON bytes':>10} {'zlib bytes':>10} {'to_dict':>8} "
              f"{'dump+zlib':>9} {'unzlib+load':>11} {'from_dict':>9}  (ms)")
        for r in enc:
            print(f"  {r['frames']:8,} {r['wanted']:11} {r['json_bytes']:10,} {r['zlib_bytes']:10,} "
                  f"{r['to_dict_ms']:8.2f} {r['json_zlib_ms']:9.2f} {r['unzlib_json_ms']:11.2f} "
                  f"{r['from_dict_ms']:9.2f}" + ("" if r["fits_one_amp_value"] else "  > 60,000: too big for AMP"))


# -- part 2: admission through the replicated coordinator ---------------------------------------------


def movie_id(frames: int) -> str:
    return f"bench-{frames}"


def serve_members(argv: list[str]) -> int:
    """Child process: the scripted servers, joined and registered, until stdin closes; then counts on stdout."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the bench
    ap = argparse.ArgumentParser(prog="strategy.py " + SERVE_FLAG)
    ap.add_argument("--coordinators", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--servers", type=int, required=True)
    ap.add_argument("--movie-frames", required=True)
    args = ap.parse_args(argv)

    from twisted.internet import defer, reactor

    from vod.groups import wire
    from vod.groups.events import StrategyAssigned
    from vod.groups.member import GroupMember
    from vod.secrets import read_secret

    secret = read_secret(args.secret_file)
    catalogue = [{"id": movie_id(int(f)), "frame_count": int(f), "fps": 24.0, "width": 64, "height": 48}
                 for f in args.movie_frames.split(",")]
    counts = {"strategies": 0, "events": 0}

    def on_event(event):
        counts["events"] += 1
        if isinstance(event, StrategyAssigned):
            counts["strategies"] += 1

    members = [GroupMember(reactor, args.coordinators.split(","), secret, f"srv{i}", "server", "d",
                           f"127.0.0.1:{20000 + i}", capacity=1, movies=[m["id"] for m in catalogue],
                           on_event=on_event, heartbeat_interval=0.2, request_timeout=10.0, command_timeout=30.0)
               for i in range(args.servers)]

    async def up():
        await defer.gatherResults([m.start() for m in members], consumeErrors=True)
        for m in members:
            await m.call(wire.RegisterMovies, movies=catalogue)
        print("READY", flush=True)

    def failed(failure):
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    def wait_stdin():
        sys.stdin.read()  # until the bench closes our stdin
        reactor.callFromThread(finish)

    def finish():
        print(json.dumps(counts), flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(up()).addErrback(failed))
    threading.Thread(target=wait_stdin, daemon=True).start()
    # As for the clients: left at the defaults, this process's full collections (every strategy it was
    # pushed stays in its members' logs) took 30-90 ms of a core at a time, out of the coordinators' two.
    tune_gc(reactor)
    reactor.run()
    return 0


class ServerProcess:
    def __init__(self, cluster, servers: int, movie_frames: list[int], workdir: str):
        self.out_path = os.path.join(workdir, "servers.err")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), SERVE_FLAG, "--coordinators", ",".join(cluster.coordinators),
             "--secret-file", str(cluster.secret_file), "--servers", str(servers),
             "--movie-frames", ",".join(str(f) for f in movie_frames)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.out_path, "wb"), text=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line.strip() == "READY":
                    return
                raise RuntimeError(f"scripted servers: {line.strip() or 'exited'} (see {self.out_path})")
            if self.proc.poll() is not None:
                raise RuntimeError(f"scripted servers exited with {self.proc.returncode} (see {self.out_path})")
        raise RuntimeError(f"scripted servers not registered within {timeout:g} s (see {self.out_path})")

    def finish(self) -> dict:
        """Ask for the counts and end the process (killed if it does not answer)."""
        counts = {}
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                ready, _, _ = select.select([self.proc.stdout], [], [], 5)
                if ready:
                    counts = json.loads(self.proc.stdout.readline() or "{}")
                self.proc.wait(5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        return counts


class BenchClient:
    """One in-process client member; remembers when each StrategyAssigned push arrived."""

    def __init__(self, reactor, cluster, secret: bytes, index: int):
        from vod.groups.member import GroupMember

        self.reactor = reactor
        self.id = f"bc{index:02d}"
        self.pushed: dict[int, float] = {}  # RUID -> perf_counter at arrival
        self.admitted: dict[int, float] = {}  # RUID -> arrival of its RequestChanged "pending" (req_open applied)
        self.waiters: dict[int, object] = {}
        self.disconnects = 0
        self.member = GroupMember(reactor, cluster.coordinators, secret, self.id, "client", "d",
                                  f"127.0.0.1:{30000 + index}", on_event=self.on_event, on_state=self.on_state,
                                  heartbeat_interval=0.2, request_timeout=10.0, command_timeout=30.0)

    def on_state(self, state: str) -> None:
        if state == "disconnected":
            self.disconnects += 1

    def on_event(self, event) -> None:
        from vod.groups.events import RequestChanged, StrategyAssigned

        if isinstance(event, RequestChanged) and event.state == "pending":
            self.admitted.setdefault(event.ruid, time.perf_counter())
        if isinstance(event, StrategyAssigned):
            self.pushed.setdefault(event.ruid, time.perf_counter())
            waiter = self.waiters.pop(event.ruid, None)
            if waiter is not None:
                waiter.callback(None)

    def push_of(self, ruid: int, timeout: float):
        """A Deferred that fires once the strategy of `ruid` arrived (at once if it did)."""
        from twisted.internet import defer

        if ruid in self.pushed:
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiters[ruid] = d
        return d.addTimeout(timeout, self.reactor)


async def _push_latencies(reactor, calls: list[dict], since: str) -> None:
    """Give late pushes two seconds, then time each call's push and admission from `since` (ms; None if
    missing). Pushes normally arrive before the answer: the push is sent as the strategy is applied."""
    late = time.perf_counter() + 2.0
    while time.perf_counter() < late and any(c["ruid"] not in c["client"].pushed for c in calls):
        await sleep(reactor, 0.02)
    for c in calls:
        for key, when in (("push_ms", c["client"].pushed.get(c["ruid"])),
                          ("admitted_ms", c["client"].admitted.get(c["ruid"]))):
            c[key] = (when - c[since]) * 1000 if when is not None else None


def _summary(label: str, frames: int, calls: list[dict], elapsed: float, book: tuple[int, int],
             errors: list[str], bucket_rates: list[float], extra: dict | None = None) -> dict:
    answer = [c["answer_ms"] for c in calls if c.get("answer_ms") is not None]
    push = [c["push_ms"] for c in calls if c.get("push_ms") is not None]
    cdone = [c["cdone_ms"] for c in calls if c.get("cdone_ms") is not None]
    row = {"phase": label, "frames": frames, "done": len(calls), "seconds": round(elapsed, 3),
           "rate": round(len(calls) / elapsed, 1) if elapsed > 0 else 0.0,
           "answer_p50_ms": round(pct(answer, 50), 2), "answer_p99_ms": round(pct(answer, 99), 2),
           "push_p50_ms": round(pct(push, 50), 2), "push_p99_ms": round(pct(push, 99), 2),
           "cdone_p50_ms": round(pct(cdone, 50), 2), "cdone_p99_ms": round(pct(cdone, 99), 2),
           "missing_push": sum(1 for c in calls if c.get("answer_ms") is not None and c.get("push_ms") is None),
           "book_before": book[0], "book_after": book[1], "errors": len(errors), "first_errors": errors[:3],
           "rate_first_s": bucket_rates[0] if bucket_rates else None,
           "rate_last_s": bucket_rates[-1] if bucket_rates else None}
    admitted = [c["admitted_ms"] for c in calls if c.get("admitted_ms") is not None]
    row["admitted_p50_ms"] = round(pct(admitted, 50), 2)
    row["admitted_p99_ms"] = round(pct(admitted, 99), 2)
    if extra:
        row.update(extra)
    return row


def _buckets(times: list[float], start: float, elapsed: float) -> list[float]:
    """Completions per whole second of the phase."""
    seconds = max(1, int(elapsed))
    counts = [0] * seconds
    for t in times:
        i = int(t - start)
        if 0 <= i < seconds:
            counts[i] += 1
    return [float(c) for c in counts]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """user + system CPU seconds so far of each process (all its threads), from /proc; absent ones left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for label, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[label] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    try:
        with open("/proc/stat") as f:
            # The machine's busy time (all but idle and iowait): what is left after the bench's own
            # processes is other work on the same cores, which the latencies suffer from too.
            ticks = [int(x) for x in f.readline().split()[1:9]]
        out[OTHERS] = (sum(ticks) - ticks[3] - ticks[4]) / tick
    except (OSError, ValueError):
        pass
    return out


def cpu_share(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, float]:
    """Percent of one core each process used over `elapsed` seconds; OTHERS: the rest of the machine."""
    share = {k: round((after[k] - before[k]) / elapsed * 100) for k in after if k in before and elapsed > 0}
    if OTHERS in share:
        share[OTHERS] = max(0, share[OTHERS] - sum(v for k, v in share.items() if k != OTHERS))
    return share


async def admission(reactor, cluster, args, progress, pids: dict[str, int]) -> dict:
    from twisted.internet import defer

    from vod.groups import wire
    from vod.secrets import read_secret

    secret = read_secret(str(cluster.secret_file))
    clients = [BenchClient(reactor, cluster, secret, i) for i in range(args.clients)]
    await defer.gatherResults([c.member.start() for c in clients], consumeErrors=True)
    progress(f"admission: {len(clients)} clients joined")

    async def book() -> int:
        status = await clients[0].member.status()
        return status["last_ruid"]

    phases = []

    async def settle() -> None:
        """Start each phase with every client joined (a previous phase may have cost reconnections)."""
        limit = time.perf_counter() + 15
        while time.perf_counter() < limit and not all(c.member.connected for c in clients):
            await sleep(reactor, 0.05)
        await sleep(reactor, 0.3)

    async def cycle_phase(label, frames, movie, wanted, counter, slots, window, seconds) -> None:
        """OpenRequest -> StrategyAssigned -> CDone, over and over, `window` loops per client in `slots`."""
        await settle()
        calls: list[dict] = []
        errors: list[str] = []
        before = await book()
        cpu0 = cpu_seconds(pids)
        start = time.perf_counter()
        deadline = start + seconds

        async def cycler(client: BenchClient) -> None:
            while time.perf_counter() < deadline:
                rid = f"{client.id}-{frames}-{next(counter)}"
                t0 = time.perf_counter()
                try:
                    answer = await client.member.call(wire.OpenRequest, request_id=rid, movie=movie, wanted=wanted)
                    t1 = time.perf_counter()
                    ruid = answer["ruid"]
                    await client.push_of(ruid, 10.0)
                    t2 = client.pushed[ruid]
                    await client.member.call(wire.CDone, ruid=ruid, held=wanted)
                    t3 = time.perf_counter()
                except Exception as err:  # recorded, not fatal: the bench reports what went wrong
                    errors.append(f"{label}: {type(err).__name__}: {err}")
                    continue
                admitted = client.admitted.get(ruid)
                calls.append({"t1": t3, "answer_ms": (t1 - t0) * 1000, "push_ms": (t2 - t0) * 1000,
                              "cdone_ms": (t3 - max(t1, t2)) * 1000,
                              "admitted_ms": None if admitted is None else (admitted - t0) * 1000})

        await defer.gatherResults([defer.ensureDeferred(cycler(c)) for c in slots for _ in range(window)],
                                  consumeErrors=True)
        elapsed = time.perf_counter() - start
        cpu = cpu_share(cpu0, cpu_seconds(pids), elapsed)
        after = await book()
        phases.append(_summary(label, frames, calls, elapsed, (before, after), errors,
                               _buckets([c["t1"] for c in calls], start, elapsed),
                               {"cpu": cpu, "clients": len(slots), "window": window}))
        progress(f"admission: {label} {frames} frames: {phases[-1]['rate']} cycles/s, answer p50 "
                 f"{phases[-1]['answer_p50_ms']} ms, p99 {phases[-1]['answer_p99_ms']} ms")

    async def cdone_cleanup(label, frames, wanted, calls, after) -> None:
        """CDone every request admitted in `calls`, --window per client in flight (no video groups pile up)."""
        done_calls: list[dict] = []
        done_errors: list[str] = []
        todo = {c.id: [x["ruid"] for x in calls if x["client"] is c] for c in clients}
        cpu0 = cpu_seconds(pids)
        start = time.perf_counter()

        async def closer(client: BenchClient) -> None:
            queue = todo[client.id]
            while queue:
                ruid = queue.pop()
                t0 = time.perf_counter()
                try:
                    await client.member.call(wire.CDone, ruid=ruid, held=wanted)
                except Exception as err:
                    done_errors.append(f"CDone: {err}")
                    continue
                done_calls.append({"cdone_ms": (time.perf_counter() - t0) * 1000, "t1": time.perf_counter()})

        await defer.gatherResults([defer.ensureDeferred(closer(c)) for c in clients for _ in range(args.window)],
                                  consumeErrors=True)
        elapsed = time.perf_counter() - start
        phases.append(_summary(label, frames, done_calls, elapsed, (after, after), done_errors,
                               _buckets([c["t1"] for c in done_calls], start, elapsed),
                               {"cpu": cpu_share(cpu0, cpu_seconds(pids), elapsed)}))
        progress(f"admission: {label} {frames} frames: {phases[-1]['rate']} /s")

    async def paced_phase(frames, movie, wanted, counter) -> tuple[list[dict], int]:
        """Open loop: OpenRequest number i is due at start + i / --paced-rate, whatever the answers before it.

        Round robin over the clients. Latencies count from when a request was due, not when the bench got
        round to sending it, so a late bench (or a coordinator that cannot keep up) shows up as latency
        rather than as a lower offered rate (no coordinated omission). At most PACED_MAX_OUTSTANDING
        requests are unanswered at once; a request due beyond that is not sent, and counted."""
        await settle()
        rate, seconds = args.paced_rate, args.paced_seconds or args.seconds
        total = max(1, int(rate * seconds))
        calls: list[dict] = []
        errors: list[str] = []
        before = await book()
        cpu0 = cpu_seconds(pids)
        start = time.perf_counter() + 0.02
        state = {"due": 0, "outstanding": 0, "skipped": 0, "last_answer": start}
        lags: list[float] = []
        finished = defer.Deferred()

        def answered(answer, call):
            call["t1"] = time.perf_counter()
            call["ruid"] = answer["ruid"]
            call["answer_ms"] = (call["t1"] - call["t_due"]) * 1000
            calls.append(call)
            state["last_answer"] = max(state["last_answer"], call["t1"])

        def failed(failure):
            errors.append(f"paced OpenRequest: {failure.getErrorMessage()}")

        def settled(_):
            state["outstanding"] -= 1
            if state["due"] >= total and not state["outstanding"] and not finished.called:
                finished.callback(None)

        def tick():
            now = time.perf_counter()
            while state["due"] < total and start + state["due"] / rate <= now:
                t_due = start + state["due"] / rate
                client = clients[state["due"] % len(clients)]
                state["due"] += 1
                if state["outstanding"] >= PACED_MAX_OUTSTANDING:
                    state["skipped"] += 1
                    continue
                t0 = time.perf_counter()
                lags.append((t0 - t_due) * 1000)
                call = {"client": client, "t_due": t_due, "t0": t0}
                state["outstanding"] += 1
                rid = f"{client.id}-{frames}-p{next(counter)}"
                client.member.call(wire.OpenRequest, request_id=rid, movie=movie, wanted=wanted) \
                    .addCallbacks(answered, failed, callbackArgs=(call,)).addBoth(settled)
            if state["due"] < total:
                reactor.callLater(max(0.0, start + state["due"] / rate - time.perf_counter()), tick)
            elif not state["outstanding"] and not finished.called:
                finished.callback(None)

        reactor.callLater(max(0.0, start - time.perf_counter()), tick)
        await finished.addTimeout(seconds + 60, reactor)
        elapsed = max(seconds, state["last_answer"] - start)
        cpu = cpu_share(cpu0, cpu_seconds(pids), elapsed)
        await _push_latencies(reactor, calls, "t_due")
        after = await book()
        push_from_send = [(c["client"].pushed[c["ruid"]] - c["t0"]) * 1000 for c in calls
                          if c["ruid"] in c["client"].pushed]
        row = _summary("paced", frames, calls, elapsed, (before, after), errors,
                       _buckets([c["t1"] for c in calls], start, elapsed),
                       {"cpu": cpu, "offered_rate": rate, "offered": total, "sent": total - state["skipped"],
                        "not_sent": state["skipped"], "send_lag_p50_ms": round(pct(lags, 50), 2),
                        "send_lag_p99_ms": round(pct(lags, 99), 2),
                        "push_from_send_p50_ms": round(pct(push_from_send, 50), 2),
                        "push_from_send_p99_ms": round(pct(push_from_send, 99), 2)})
        phases.append(row)
        if args.paced_times:
            # Epoch times, to line up with the replicas' logs: where a tail comes from (one stall, or
            # spread over the phase) shows in the series, not in the percentiles.
            off = time.time() - time.perf_counter()
            with open(os.path.join(args.paced_times, f"paced-{frames}.json"), "w") as f:
                json.dump([{"client": c["client"].id, "ruid": c["ruid"], "due": c["t_due"] + off,
                            "sent": c["t0"] + off, "answered": c["t1"] + off,
                            "pushed": (c["client"].pushed[c["ruid"]] + off) if c["ruid"] in c["client"].pushed
                            else None} for c in calls], f)
        progress(f"admission: paced {frames} frames at {rate:g}/s offered: {row['rate']} req/s achieved, "
                 f"push p50 {row['push_p50_ms']} ms, p99 {row['push_p99_ms']} ms (bench send lag p99 "
                 f"{row['send_lag_p99_ms']} ms)")
        return calls, after

    for frames in args.movie_frames:
        movie = movie_id(frames)
        wanted = base64.b64encode(FrameMask.full(frames).to_bytes()).decode()
        counter = iter(range(10 ** 9))

        # ---- phase "1 in flight": the latency floor, one client, one cycle at a time ----
        await cycle_phase("1 in flight", frames, movie, wanted, counter, clients[:1], 1, args.floor_seconds)

        # ---- phase "paced": open loop at a fixed offered rate, before the overload phases can leave the
        # cluster electing or its members reconnecting; CDone everything afterwards ----
        if args.paced_rate > 0:
            calls, after = await paced_phase(frames, movie, wanted, counter)
            await cdone_cleanup("paced cleanup", frames, wanted, calls, after)
        if args.no_overload:
            continue

        # ---- phase "open": OpenRequest only; CDone everything afterwards ----
        await settle()
        calls: list[dict] = []
        errors: list[str] = []
        before = await book()
        cpu0 = cpu_seconds(pids)
        start = time.perf_counter()
        deadline = start + args.seconds

        async def opener(client: BenchClient) -> None:
            while time.perf_counter() < deadline:
                rid = f"{client.id}-{frames}-{next(counter)}"
                t0 = time.perf_counter()
                try:
                    answer = await client.member.call(wire.OpenRequest, request_id=rid, movie=movie, wanted=wanted)
                except Exception as err:  # recorded, not fatal: the bench reports what went wrong
                    errors.append(f"OpenRequest: {err}")
                    continue
                t1 = time.perf_counter()
                calls.append({"client": client, "ruid": answer["ruid"], "t0": t0, "t1": t1,
                              "answer_ms": (t1 - t0) * 1000})

        await defer.gatherResults([defer.ensureDeferred(opener(c)) for c in clients for _ in range(args.window)],
                                  consumeErrors=True)
        elapsed = time.perf_counter() - start
        cpu = cpu_share(cpu0, cpu_seconds(pids), elapsed)
        await _push_latencies(reactor, calls, "t0")
        after = await book()
        rates = _buckets([c["t1"] for c in calls], start, elapsed)
        phases.append(_summary("open", frames, calls, elapsed, (before, after), errors, rates, {"cpu": cpu}))
        progress(f"admission: open {frames} frames: {phases[-1]['rate']} req/s, answer p99 "
                 f"{phases[-1]['answer_p99_ms']} ms, push p99 {phases[-1]['push_p99_ms']} ms")

        await cdone_cleanup("cdone cleanup", frames, wanted, calls, after)

        # ---- phase "cycle": OpenRequest -> StrategyAssigned -> CDone, by every slot ----
        await cycle_phase("cycle", frames, movie, wanted, counter, clients, args.window, args.seconds)


    disconnects = sum(c.disconnects for c in clients)
    await defer.DeferredList([c.member.stop().addTimeout(5, reactor) for c in clients], consumeErrors=True)
    return {"phases": phases, "client_disconnects": disconnects}


def sleep(reactor, seconds: float):
    from twisted.internet import defer

    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def run_admission(args, workdir: str) -> dict:
    from cluster import Cluster

    started = time.monotonic()
    loadavg_start = _loadavg()
    cluster = Cluster(os.path.join(workdir, "cluster"), failure_timeout=args.failure_timeout)
    servers = profiler = None
    try:
        cluster.start()
        primary = cluster.wait_primary()
        log(f"admission: cluster up, primary {primary} (pid {cluster.pid(primary)}); logs in {workdir}")
        servers = ServerProcess(cluster, args.servers, args.movie_frames, workdir)
        servers.wait_ready(30)
        log(f"admission: {args.servers} scripted servers registered {', '.join(map(movie_id, args.movie_frames))}")
        if args.profile_primary:
            profiler = start_profiler(args.profile_primary, cluster.pid(primary), workdir)

        from twisted.internet import defer, reactor

        outcome: dict = {}

        def run():
            # A wall-clock guard: whatever happens, the reactor stops and the finally below cleans up.
            paced = (args.paced_seconds or args.seconds) * 3 if args.paced_rate > 0 else 0
            per_movie = args.seconds * 6 + paced
            guard = reactor.callLater(per_movie * len(args.movie_frames) + 120, reactor.stop)
            pids = {f"{rid} (primary)" if rid == primary else rid: cluster.pid(rid) for rid in cluster.ids}
            pids.update({"servers": servers.proc.pid, "bench+clients": os.getpid()})
            d = defer.ensureDeferred(admission(reactor, cluster, args, log, pids))

            def done(result):
                outcome["result"] = result
                if guard.active():
                    guard.cancel()
                reactor.stop()

            d.addBoth(done)

        reactor.callWhenRunning(run)
        # The clients live in this process: their garbage collector's pauses would count as admission
        # latency. Tuned as the coordinator tunes its own (a real client process is small and short-lived).
        tune_gc(reactor)
        reactor.run()
        result = outcome.get("result")
        if result is None:
            raise RuntimeError("the admission run did not finish within its time guard")
        if not isinstance(result, dict):
            result.raiseException()
        primary_after = cluster.wait_primary()
        roles = cluster.role_lines()
        result.update(loadavg_start=loadavg_start, loadavg_end=_loadavg(), primary=primary,
                      primary_after=primary_after, servers=args.servers, clients=args.clients,
                      window=args.window, seconds_per_phase=args.seconds,
                      server_counts=servers.finish(), wall_seconds=round(time.monotonic() - started, 1),
                      role_changes=[[round(r.time, 3), r.replica, r.role, r.term] for r in roles])
        return result
    except BaseException:
        log(cluster.describe(tail=10))
        raise
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        if servers is not None:
            servers.finish()
        cluster.stop_all()


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_profiler(spec: str, pid: int, workdir: str):
    """--profile-primary PYSPY: sample the primary with py-spy (all threads) while the bench runs."""
    out = os.path.join(workdir, "primary-profile.txt")
    proc = subprocess.Popen([spec, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                             "--threads", "--output", out], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(workdir, "py-spy.err"), "wb"))
    log(f"admission: py-spy sampling the primary into {out}")
    return proc


def print_profile(path: str, top: int = 25) -> None:
    """The primary's hottest frames from py-spy's raw (collapsed stack) output: self and inclusive shares."""
    with open(path) as f:
        total, own, inclusive = profile_totals(f, ("PollPoller.poll", "EPollReactor.doPoll"))  # socket waits
    if not total:
        print(f"\n  (no samples in {path})")
        return
    print(f"\n  primary profile (py-spy, {total} busy samples over both threads; poll waits left out): {path}")
    print("    self                                                    inclusive (vod code and the big library calls)")
    by_own = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    outer = ("vod/cliutil.py", "vod/coordinator/cli.py")  # the process's main(): everything on the reactor thread
    ours = [kv for kv in sorted(inclusive.items(), key=lambda kv: -kv[1])
            if ("vod/" in kv[0] or "json" in kv[0] or "deepcopy" in kv[0] or "pysyncobj" in kv[0])
            and not any(o in kv[0] for o in outer)][:top]
    for i in range(max(len(by_own), len(ours))):
        left = f"{by_own[i][1] / total:6.1%} {by_own[i][0][:48]:48}" if i < len(by_own) else " " * 55
        right = f"{ours[i][1] / total:6.1%} {ours[i][0][:70]}" if i < len(ours) else ""
        print(f"    {left}  {right}")


def stop_profiler(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def print_admission(doc: dict) -> None:
    print(f"\n2. admission through the replicated coordinator: 3 replicas, {doc['servers']} servers, "
          f"{doc['clients']} clients x {doc['window']} in flight, {doc['seconds_per_phase']:g} s per phase "
          f"(targets: >= {ADMIT_TARGET_RATE:,.0f} requests/s, p99 <= {ADMIT_TARGET_P99_MS:g} ms)")
    print(f"  {'phase':14} {'frames':>7} {'done':>6} {'rate/s':>8} {'1st s':>6} {'last s':>6} "
          f"{'answer p50':>10} {'p99':>7} {'push p50':>8} {'p99':>7} {'cdone p50':>9} {'p99':>7} "
          f"{'book':>11} {'err':>4}  targets")
    for r in doc["phases"]:
        def ms(v):
            return "-" if v != v else f"{v:.1f}"  # NaN: not measured in this phase

        verdict = ""
        if r["phase"] == "paced":
            p99 = r["push_p99_ms"]
            kept_up = r["offered_rate"] >= ADMIT_TARGET_RATE and r["rate"] >= PACED_KEPT_UP * r["offered_rate"]
            verdict = (f"rate {'ok' if kept_up else 'MISSED'}, push p99 "
                       f"{'ok' if p99 == p99 and p99 <= ADMIT_TARGET_P99_MS else 'MISSED'}")
        elif r["phase"] in ("open", "cycle", "1 in flight"):
            p99 = r["answer_p99_ms"]
            verdict = f"p99 {'ok' if p99 == p99 and p99 <= ADMIT_TARGET_P99_MS else 'MISSED'}"
            if r["phase"] != "1 in flight":  # one at a time is a latency floor, not a throughput test
                verdict = f"rate {'ok' if r['rate'] >= ADMIT_TARGET_RATE else 'MISSED'}, " + verdict
        book = f"{r['book_before']}->{r['book_after']}"
        print(f"  {r['phase']:14} {r['frames']:7,} {r['done']:6} {r['rate']:8.1f} {r['rate_first_s'] or 0:6.0f} "
              f"{r['rate_last_s'] or 0:6.0f} {ms(r['answer_p50_ms']):>10} {ms(r['answer_p99_ms']):>7} "
              f"{ms(r['push_p50_ms']):>8} {ms(r['push_p99_ms']):>7} {ms(r['cdone_p50_ms']):>9} "
              f"{ms(r['cdone_p99_ms']):>7} {book:>11} {r['errors']:4}  {verdict}")
        if r["phase"] == "paced":
            print(f"    offered {r['offered_rate']:,.0f}/s ({r['offered']} requests, {r['not_sent']} not sent: over "
                  f"{PACED_MAX_OUTSTANDING} unanswered), achieved {r['rate']:,.1f}/s; latencies from when each was "
                  f"due; bench send lag p50 {r['send_lag_p50_ms']} / p99 {r['send_lag_p99_ms']} ms; push from the "
                  f"actual send p50 {r['push_from_send_p50_ms']} / p99 {r['push_from_send_p99_ms']} ms")
        if r["missing_push"]:
            print(f"    {r['missing_push']} answered requests got no StrategyAssigned push within 2 s")
        for e in r["first_errors"]:
            print(f"    error: {e}")
    print("  (latencies in ms: answer = OpenRequest sent -> answered; push = OpenRequest sent -> StrategyAssigned at"
          " the client;\n   cdone = CDone sent -> answered; rate is requests admitted per second, or whole cycles"
          " per second for \"cycle\")")
    print(f"  CPU per process during each phase, % of one core ({os.cpu_count()} cores; load average at the "
          f"start {doc['loadavg_start']}, at the end {doc['loadavg_end']}):")
    for r in doc["phases"]:
        print(f"    {r['phase']:14} {r['frames']:7,}  " + "  ".join(f"{k} {v}%" for k, v in r.get("cpu", {}).items()))
    print(f"  client reconnections during the run: {doc['client_disconnects']}; strategies received by the "
          f"servers: {doc['server_counts'].get('strategies', '?')}; primary {doc['primary']} before, "
          f"{doc['primary_after']} after")
    changes = doc.get("role_changes", [])
    lost = [c for c in changes if c[2] == "not-primary"]
    if lost:
        print(f"  the acting primary lost its role {len(lost)} times during the run (ROLE lines: "
              + ", ".join(f"{c[1]} {c[2]} term {c[3]}" for c in changes[:8]) + (", ..." if len(changes) > 8 else "")
              + ")")


# -- main ------------------------------------------------------------------------------------------------


def _no_nan(value):
    """NaN (a percentile of nothing) as null, so the document is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == SERVE_FLAG:
        return serve_members(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--compute-only", action="store_true", help="run part 1 only (strategy computation)")
    which.add_argument("--admission-only", action="store_true", help="run part 2 only (admission)")
    ap.add_argument("--json", action="store_true", help="also print all results as one JSON document (last line)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per compute row")
    ap.add_argument("--frames", type=int, default=200_000, help="movie length for the compute part")
    ap.add_argument("--compute-servers", type=int, default=16, help="servers holding the movie (compute part)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--movie-frames", default="100000,10000",
                    help="comma-separated movie lengths for the admission part (one movie each)")
    ap.add_argument("--servers", type=int, default=4, help="scripted servers (admission part)")
    ap.add_argument("--clients", type=int, default=12, help="in-process client members (admission part)")
    ap.add_argument("--window", type=int, default=4, help="requests in flight per client")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per admission phase")
    ap.add_argument("--paced-rate", type=float, default=1000.0,
                    help="offered rate of the paced (open-loop) admission phase, requests/s (0: no paced phase)")
    ap.add_argument("--paced-seconds", type=float, default=None,
                    help="seconds of the paced phase (default: --seconds)")
    ap.add_argument("--paced-times", metavar="DIR", default=None,
                    help="write each paced request's times (due, sent, answered, strategy pushed; epoch "
                         "seconds) to DIR/paced-FRAMES.json")
    ap.add_argument("--no-overload", action="store_true",
                    help="skip the overload phases (\"open\", \"cycle\"): only \"1 in flight\" and \"paced\"")
    ap.add_argument("--floor-seconds", type=float, default=2.0,
                    help="seconds of the one-request-at-a-time phase (the latency floor)")
    ap.add_argument("--failure-timeout", type=float, default=1.0, help="the replicas' member failure timeout")
    ap.add_argument("--profile-primary", metavar="PY_SPY", default=None,
                    help="path of a py-spy executable: sample the primary during the admission part "
                         "(raw output left in --workdir)")
    ap.add_argument("--workdir", default=None, help="keep logs and data here (default: a temporary directory)")
    args = ap.parse_args()
    try:
        args.movie_frames = [int(f) for f in args.movie_frames.split(",") if f.strip()]
    except ValueError:
        ap.error("--movie-frames is a comma-separated list of frame counts")
    if (args.runs < 1 or args.frames < 1 or args.compute_servers < 1 or not args.movie_frames
            or min(args.movie_frames) < 1 or args.servers < 1 or args.clients < 1 or args.window < 1
            or args.seconds <= 0 or args.paced_rate < 0
            or (args.paced_seconds is not None and args.paced_seconds <= 0)):
        ap.error("counts must be >= 1, --seconds and --paced-seconds > 0, --paced-rate >= 0")
    if args.profile_primary and not args.workdir:
        ap.error("--profile-primary needs --workdir (its output is kept there)")
    started = time.monotonic()
    doc: dict = {"v": 1}
    if not args.admission_only:
        doc["compute"] = run_compute(args)
        print_compute(doc["compute"])
        sys.stdout.flush()
    if not args.compute_only:
        workdir = args.workdir or tempfile.mkdtemp(prefix="vod-bench-strategy-")
        try:
            doc["admission"] = run_admission(args, workdir)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        print_admission(doc["admission"])
        if args.profile_primary and os.path.exists(os.path.join(workdir, "primary-profile.txt")):
            print_profile(os.path.join(workdir, "primary-profile.txt"))
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    print(f"\n({doc['wall_seconds']} s in all)")
    if args.json:
        print(json.dumps(_no_nan(doc), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
