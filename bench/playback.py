"""Benchmark: playback end to end (issue 5): start-up, stalls, download speed, scaling with servers.

Not a test: it prints tables (and, with --json, one JSON document as the last line) and asserts
nothing about timing. Everything runs as real processes on 127.0.0.1, as `vod demo` starts them:
three `vod-coordinator` replicas, `vod-server`s on one movie store, and one `vod-client play` per row.
Everything started is stopped in a `finally`.

Movies (built once, kept under --workdir): "short-N", --short-frames (72) synthetic 640x360 frames at
24 fps (3 s); "big-N", --big-frames (5,000) of them; and for scaling, "loop-K" movies of K frames
made of the big movie's JPEGs over again (no encoding), K chosen per server count so that a run
lasts about --scale-seconds at the target rate.

1-2. realtime (targets: start-up p95 <= 300 ms, 0 stalls): --plays (20) real-time plays of "short"
   from --servers (4) servers, `--no-cache --output OUT.avi --http 127.0.0.1:PORT --json`, each in a
   fresh process. A viewer thread of this bench connects to the client's /stream.mjpg as soon as it
   listens (the client then plays from frame 0, as for any first viewer) and notes when each JPEG
   arrives. Per play: `startup_ms` from the client's JSON (its buffer being armed, after the join and
   the catalogue look-up, to the first frame due), "spawn -> first frame" (process start to the first
   JPEG at the viewer: imports, join, look-up, request, strategy and the first frame), "reactor
   running -> first frame" (the same without the interpreter's start and the imports), the stages
   from the client's DEBUG log (epoch timestamps), `stalls`/`stall_ms` from the JSON, and the largest
   gap between two JPEGs at the viewer (1/fps = 41.7 ms when smooth). Percentiles are nearest rank
   (p95 of 20 is the 19th).

3. download (target: ours >= 50% of the pump): the "big" movie (--big-frames, 20,000 frames, 350 MB)
   with `--fast` from the same 4 servers, three ways: to nothing (`--no-cache`, no output: transport,
   checksum and merge, what the plain pump does too), to an AVI with no cache (`--no-cache
   --output`), and into a fresh cache only (the download a later play uses). "transfer" is the
   client's own DEBUG log from the strategy's arrival to every frame being in (streaming --complete-->
   draining); "process" is spawn to exit. Next to them, in the same run, a plain TCP pump
   (bench/_playback_pump.py) of the same JPEG bytes over loopback: 4 (and 1) blocking-socket sender
   processes, one `sendall` per frame, into one bare Twisted receiver that counts bytes, and the same
   4-sender pump whose receiver also writes every read to a file; --download-runs (5) and --pump-runs (5)
   runs each, median, interleaved round by round (each round: vod's three rows, then the three pumps),
   after one download that is not counted (the pump's senders read their frames out of the store before
   the clock starts: the warm-up maps the servers' movie pages likewise).
   The target is read on the like-for-like row: the download to nothing against the plain pump
   (neither keeps the bytes); the AVI and cache rows are also shown against the pump that writes a
   file ("like pump"), since writing 350 MB into the page cache is work the plain pump does not do.
   CPU seconds of the client (rusage) and of the servers (/proc) say what was busy.

4. scaling (target: delivered >= 0.9 N C): N = --scale-servers (1,2,4,8) fresh servers, each with
   `--rate-limit` C (--rate, 2M = 2,000,000 B/s), in a fresh domain per N; one `--fast --no-cache`
   download of a loop movie sized for --scale-seconds (4) at N C. Delivered = movie bytes over the
   transfer window above. The servers' token buckets start full (burst max(C/10, 64 KiB) each), so a
   short run may show slightly more than N C. The coordinator gives a strategy at most 4 servers
   (`CoordinatorReplica(max_servers=4)`, not settable from `vod-coordinator`): with N > 4 an extra
   row runs coordinators that this bench starts with max_servers = N (a wrapper script; the vod
   code is unchanged) to show what the data path does with all N.

Usage: .venv/bin/python bench/playback.py [--parts realtime,download,scaling] [--json]
       [--profile /tmp/pyspy-venv/bin/py-spy]   (sample the client and a server during the downloads;
                                                 keeps the run's directory, where the profiles are)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vod.groups.probe import Probe  # noqa: E402
from vod.media.store import MovieStore  # noqa: E402
from vod.media.synthetic import synthetic_jpegs  # noqa: E402
from vod.procs import ProcessGroup, console_script, free_port  # noqa: E402
from benchutil import (compile_bytecode, domain_secret, log, pct, print_closing, profile_totals,  # noqa: E402
                       stored_current, wait_until)
from vod.server.cli import parse_rate  # noqa: E402

HOST = "127.0.0.1"
STARTUP_TARGET_MS = 300.0
PUMP_FRACTION_TARGET = 0.5
NO_OUTPUT = "no cache, no output"  # the download row compared with the plain pump (neither keeps the bytes)
SCALE_TARGET = 0.9
PUMP = os.path.join(ROOT, "bench", "_playback_pump.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIZE = (640, 360)
FPS = 24.0

# Coordinators with another max_servers: the replica class's default is all that changes.
SESSION_LINE = re.compile(r"^(?P<t>\d+\.\d+) DEBUG vod\.client\.session: play \S+: (?P<old>\S+) --(?P<input>\S+)--> "
                          r"(?P<new>\S+)\s*$")






def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


# -- movies --------------------------------------------------------------------------------------------


def build_movies(store: MovieStore, args) -> None:
    for movie_id, frames in ((short_id(args), args.short_frames), (big_id(args), args.big_frames)):
        if stored_current(store, movie_id):
            continue
        t0 = time.monotonic()
        store.add(movie_id, synthetic_jpegs(frames, SIZE, FPS), fps=FPS, width=SIZE[0], height=SIZE[1],
                  source="synthetic", source_codec="MJPG", keeps_source_jpeg=True, jpeg_quality=85)
        log(f"built movie {movie_id}: {frames} frames in {time.monotonic() - t0:.1f} s")


def short_id(args) -> str:
    return f"short-{args.short_frames}"


def big_id(args) -> str:
    return f"big-{args.big_frames}"


def movie_bytes(store: MovieStore, movie_id: str) -> tuple[int, int]:
    with store.open(movie_id) as movie:
        return len(movie), movie.info.frames_bytes


def loop_movie(store: MovieStore, big: str, frames: int) -> str:
    """A movie of `frames` frames: the big movie's JPEGs over and over (no encoding)."""
    movie_id = f"loop-{frames}"
    if stored_current(store, movie_id):
        return movie_id
    with store.open(big) as source:
        jpegs = (source.frame(i % len(source)) for i in range(frames))
        store.add(movie_id, jpegs, fps=FPS, width=SIZE[0], height=SIZE[1], source=f"{big} (looped)",
                  source_codec="MJPG", keeps_source_jpeg=True, jpeg_quality=85)
    log(f"built movie {movie_id}")
    return movie_id


def scale_frames(n: int, rate: float, seconds: float, avg_frame: float) -> int:
    return max(n * 24, int(math.ceil(n * rate * seconds / avg_frame / 100.0)) * 100)


# -- the system: coordinators, servers -------------------------------------------------------------------


class System:
    def __init__(self, workdir: str, store_root: str):
        self.workdir = workdir
        self.store_root = store_root
        self.secret_file, self.secret, self.env = domain_secret(workdir)
        self.group = ProcessGroup()
        self.coordinators = ""
        self.servers: dict[str, list[str]] = {}  # domain -> server names
        self._n = 0

    def probe(self) -> Probe:
        return Probe(self.coordinators.split(","), self.secret, call_timeout=1.0)

    def status(self) -> dict | None:
        try:
            return self.probe().merged_status()
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def start_coordinators(self, tag: str, max_servers: int | None = None) -> None:
        raft = [f"{HOST}:{free_port()}" for _ in range(3)]
        listen = [f"{HOST}:{free_port()}" for _ in range(3)]
        cmd = console_script("vod-coordinator")
        if max_servers is not None:
            cmd = cmd + ["--max-servers", str(int(max_servers))]
        for i in range(3):
            rid = f"c{i + 1}"
            name = f"{tag}-{rid}"
            self.group.start(name, cmd + ["--id", rid, "--raft", raft[i], "--peers", ",".join(raft), "--listen",
                                          listen[i], "--data", os.path.join(self.workdir, name)],
                             os.path.join(self.workdir, f"{name}.log"), self.env)
        self.coordinators = ",".join(listen)
        self._coordinator_names = [f"{tag}-c{i + 1}" for i in range(3)]
        wait_until(lambda: (self.status() or {}).get("primary"), 30, "a primary coordinator")

    def stop_coordinators(self) -> None:
        for name in self._coordinator_names:
            self._stop(name)

    def start_servers(self, domain: str, n: int, movie: str, rate: str | None = None) -> list[str]:
        names = []
        for _ in range(n):
            self._n += 1
            name = f"s{self._n}"
            argv = console_script("vod-server") + [
                "--id", name, "--domain", domain, "--coordinators", self.coordinators, "--media", self.store_root,
                "--listen", f"{HOST}:0", "--capacity", "1", "--log-level", "WARNING"]  # 0: the port bound is advertised
            if rate:
                argv += ["--rate-limit", rate]
            self.group.start(name, argv, os.path.join(self.workdir, f"{name}.log"), self.env)
            names.append(name)
        self.servers[domain] = names

        def joined():
            members = (self.status() or {}).get("members", [])
            return sum(m["kind"] == "server" and m["domain"] == domain and movie in m.get("movies", [])
                       for m in members) >= n
        try:
            wait_until(joined, 60, f"{n} servers to join domain {domain}")
        except RuntimeError as err:
            members = {m["id"] for m in (self.status() or {}).get("members", []) if m["domain"] == domain}
            lines = [str(err)]
            for name in names:
                child = self.group.children[name]
                state = "running" if child.proc.poll() is None else f"exited {child.proc.returncode}"
                try:
                    tail = open(child.log_path, errors="replace").read().splitlines()[-8:]
                except OSError:
                    tail = []
                lines.append(f"  {name}: {state}, {'a member' if name in members else 'NOT a member'}; log tail:")
                lines += [f"    {line}" for line in tail]
            raise RuntimeError("\n".join(lines)) from None
        return names

    def stop_servers(self, domain: str) -> None:
        for name in self.servers.pop(domain, []):
            self._stop(name)

    def _stop(self, name: str) -> None:
        child = self.group.children.get(name)
        if child is None or child.proc.poll() is not None:
            return
        child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=10)

    def pids(self, domain: str) -> list[int]:
        return [self.group.children[n].proc.pid for n in self.servers.get(domain, [])]

    def coordinator_pids(self) -> list[int]:
        return [self.group.children[n].proc.pid for n in self._coordinator_names]

    def stop_all(self) -> None:
        for domain in list(self.servers):  # servers first: they would only log the coordinators' exit
            self.stop_servers(domain)
        self.group.stop_all()




# -- one client run ------------------------------------------------------------------------------------------


class Viewer(threading.Thread):
    """Connects to the client's /stream.mjpg as soon as it listens; notes when each JPEG arrives."""

    def __init__(self, port: int, deadline: float):
        super().__init__(daemon=True)
        self.port = port
        self.deadline = deadline
        self.listening: float | None = None  # time.time() of the first successful connect
        self.arrivals: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - reported, not raised in a thread
            self.error = f"{type(err).__name__}: {err}"

    def _run(self) -> None:
        while True:
            try:
                sock = socket.create_connection((HOST, self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > self.deadline:
                    self.error = "the client never listened"
                    return
                time.sleep(0.002)
        self.listening = time.time()
        # HTTP/1.0: no chunked encoding, the stream ends when the client closes it.
        sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: bench\r\n\r\n")
        sock.settimeout(max(1.0, self.deadline - time.monotonic()))
        buf = bytearray()
        header_done = False
        with sock:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    return
                buf += data
                if not header_done:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    del buf[:end + 4]
                    header_done = True
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = bytes(buf[:end]).decode("latin-1")
                    match = re.search(r"Content-Length:\s*(\d+)", head, re.IGNORECASE)
                    if not match:
                        raise ValueError(f"a part without Content-Length: {head!r}")
                    size = int(match.group(1))
                    if len(buf) < end + 4 + size + 2:
                        break
                    self.arrivals.append(time.time())
                    del buf[:end + 4 + size + 2]


def run_client(system: System, movie: str, domain: str, tag: str, *, fast: bool = False,
               cache: str | None = None, output: str | None = None, viewer: bool = False,
               timeout: float = 300.0, profile: str | None = None) -> dict:
    rundir = os.path.join(system.workdir, "runs", tag)
    os.makedirs(rundir, exist_ok=True)
    argv = console_script("vod-client") + ["play", movie, "--domain", domain, "--coordinators", system.coordinators,
                                           "--id", f"bench-{tag}", "--json", "--log-level", "DEBUG"]
    argv += ["--cache", cache] if cache else ["--no-cache"]
    if output:
        argv += ["--output", output]
    if fast:
        argv.append("--fast")
    http_port = None
    if viewer:
        http_port = free_port()
        argv += ["--http", f"{HOST}:{http_port}"]
    server_pids = system.pids(domain)
    watched = {pid: proc_cpu(pid) for pid in server_pids + system.coordinator_pids()}
    stdout_path, stderr_path = os.path.join(rundir, "stdout"), os.path.join(rundir, "stderr")
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t_spawn = time.time()
        m_spawn = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=system.env,
                                start_new_session=True)
    v = None
    if viewer:
        v = Viewer(http_port, m_spawn + timeout)
        v.start()
    profiler = start_profiler(profile, proc.pid, os.path.join(rundir, "profile.txt")) if profile else None
    status = rusage = None
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - m_spawn > timeout:
                proc.kill()
                proc.wait(10)
                raise RuntimeError(f"client {tag} ran over {timeout:.0f} s; see {rundir}")
            time.sleep(0.002)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait(10)
        if profiler is not None:
            stop_profiler(profiler)
    t_exit = time.time()
    if v is not None:
        v.join(5)
    lines = open(stdout_path, encoding="utf-8", errors="replace").read().strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"client {tag} exited {proc.returncode} with no JSON summary; see {rundir}") from None
    stages: dict[str, float] = {}
    with open(stderr_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = SESSION_LINE.match(line)
            if m:
                stages.setdefault(m["input"], float(m["t"]))
    cpu = rusage.ru_utime + rusage.ru_stime if rusage else float("nan")
    run = {"tag": tag, "exit": proc.returncode, "summary": summary, "t_spawn": t_spawn, "t_exit": t_exit,
           "process_s": t_exit - t_spawn, "client_cpu_s": cpu, "stages": {k: v - t_spawn for k, v in stages.items()},
           "servers_cpu_s": sum(proc_cpu(p) - watched[p] for p in server_pids),
           "coordinators_cpu_s": sum(proc_cpu(p) - watched[p] for p in system.coordinator_pids()),
           "rundir": rundir}
    if "strategy" in stages and "complete" in stages:
        run["transfer_s"] = stages["complete"] - stages["strategy"]
    if v is not None:
        run["viewer_error"] = v.error
        run["listen_s"] = None if v.listening is None else v.listening - t_spawn
        run["frames_at_viewer"] = len(v.arrivals)
        if v.arrivals:
            run["first_frame_s"] = v.arrivals[0] - t_spawn
            gaps = [b - a for a, b in zip(v.arrivals, v.arrivals[1:])]
            run["max_gap_ms"] = max(gaps) * 1000 if gaps else 0.0
            run["viewer_play_s"] = v.arrivals[-1] - v.arrivals[0]
    if profiler is not None:
        run["profile"] = os.path.join(rundir, "profile.txt")
    return run


def start_profiler(pyspy: str, pid: int, out: str):
    return subprocess.Popen([pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", os.environ.get("VOD_PYSPY_RATE", "250"), "--threads",
                             "--output", out], stdout=subprocess.DEVNULL,
                            stderr=open(out + ".err", "wb"))


def stop_profiler(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT (it also stops when the pid exits)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


WAITS = ("PollPoller.poll", "EPollReactor.doPoll", "Condition.wait (threading.py", "Queue.get (queue.py",
         "_wait_for_tstate_lock", "Event.wait (threading.py")


def print_profile(title: str, path: str, top: int = 18) -> None:
    """Hottest frames of a py-spy raw (collapsed stacks) file: self share, and inclusive share of vod code."""
    try:
        with open(path) as f:
            total, own, inclusive = profile_totals(f, WAITS)
    except OSError:
        print(f"\n  ({title}: no profile at {path})")
        return
    if not total:
        print(f"\n  ({title}: no busy samples in {path})")
        return
    print(f"\n  {title} (py-spy at 250 Hz, {total} busy samples, all threads; waits left out): {path}")
    print(f"    {'self':55}  inclusive (vod code)")
    by_own = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    ours = [kv for kv in sorted(inclusive.items(), key=lambda kv: -kv[1])
            if "vod/" in kv[0] and "cli.py" not in kv[0] and "cliutil" not in kv[0]][:top]
    for i in range(max(len(by_own), len(ours))):
        left = f"{by_own[i][1] / total:6.1%} {by_own[i][0][:48]:48}" if i < len(by_own) else " " * 55
        right = f"{ours[i][1] / total:6.1%} {ours[i][0][:72]}" if i < len(ours) else ""
        print(f"    {left}  {right}")


# -- part 1+2: real-time plays ----------------------------------------------------------------------------


def run_realtime(system: System, args) -> dict:
    runs = []
    for i in range(args.plays):
        out = None if args.no_output else os.path.join(system.workdir, "runs", f"rt{i + 1:02d}.avi")
        os.makedirs(os.path.join(system.workdir, "runs"), exist_ok=True)
        run = run_client(system, short_id(args), "bench", f"rt{i + 1:02d}", output=out, viewer=True, timeout=60)
        s = run["summary"]
        log(f"realtime {i + 1}/{args.plays}: exit {run['exit']}, startup {s.get('startup_ms')} ms, first frame "
            f"{run.get('first_frame_s', float('nan')) * 1000:.0f} ms after spawn, stalls {s.get('stalls')} "
            f"({s.get('stall_ms')} ms), {run.get('frames_at_viewer')} frames at the viewer")
        runs.append(run)
        if out:
            _unlink(out)
    return {"plays": runs, "output": not args.no_output}


def realtime_rows(doc: dict) -> dict:
    runs = doc["plays"]

    def ms(key, stage=False):
        vals = []
        for r in runs:
            v = r["stages"].get(key) if stage else r.get(key)
            vals.append(float("nan") if v is None else v * 1000)
        return vals

    def gap(a, b):
        out = []
        for r in runs:
            sa, sb = r["stages"].get(a), r["stages"].get(b)
            out.append(float("nan") if sa is None or sb is None else (sb - sa) * 1000)
        return out

    def first_after(stage):
        out = []
        for r in runs:
            s = r["stages"].get(stage)
            out.append(float("nan") if s is None or r.get("first_frame_s") is None else (r["first_frame_s"] - s) * 1000)
        return out

    startup = [float("nan") if r["summary"].get("startup_ms") is None else r["summary"]["startup_ms"] for r in runs]
    rows = [
        ("startup_ms (client JSON: armed -> first frame due)", startup),
        ("spawn -> first frame at the viewer", ms("first_frame_s")),
        ("reactor running -> first frame at the viewer", first_after("start")),
        ("  spawn -> HTTP listening (imports, setup)", ms("listen_s")),
        ("  spawn -> reactor running (start)", ms("start", True)),
        ("  start -> joined (GroupMember join)", gap("start", "joined")),
        ("  joined -> catalogue looked up", gap("joined", "found")),
        ("  found -> OpenRequest answered", gap("found", "opened")),
        ("  opened -> strategy pushed", gap("opened", "strategy")),
        ("  strategy -> first frame at the viewer", first_after("strategy")),
    ]
    return {"rows": [{"what": label, "n": sum(not math.isnan(v) for v in vals), "p50_ms": pct(vals, 50),
                      "p95_ms": pct(vals, 95), "max_ms": pct(vals, 100)} for label, vals in rows]}


def print_realtime(doc: dict, args) -> None:
    runs = doc["plays"]
    table = realtime_rows(doc)
    doc["startup_table"] = table["rows"]
    s0 = runs[0]["summary"]
    print(f"\n1. start-up: {len(runs)} real-time plays of '{s0.get('movie')}' ({s0.get('frames_total')} frames 640x360 @ "
          f"{FPS:g} fps) from {args.servers} servers, --no-cache{'' if doc['output'] else ' (no --output)'} "
          f"{'--output ' if doc['output'] else ''}--http (+ a viewer)")
    print(f"   {'':52} {'n':>3} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for row in table["rows"]:
        print(f"   {row['what']:52} {row['n']:3d} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {row['max_ms']:8.1f}")
    p95, p95_wall, p95_run = (table["rows"][i]["p95_ms"] for i in range(3))

    def verdict(v):
        return "met" if v <= STARTUP_TARGET_MS else "MISSED"
    print(f"   target: start-up p95 <= {STARTUP_TARGET_MS:.0f} ms -> startup_ms p95 {p95:.0f} ms ({verdict(p95)}); "
          f"spawn -> first frame p95 {p95_wall:.0f} ms ({verdict(p95_wall)});\n   reactor running -> first frame "
          f"p95 {p95_run:.0f} ms ({verdict(p95_run)})")

    print(f"\n2. stalls: the same {len(runs)} real-time plays")
    print(f"   {'play':5} {'exit':>4} {'frames':>9} {'stalls':>6} {'stall ms':>9} {'rebuf':>7} {'viewer':>6} "
          f"{'max gap ms':>10} {'played s':>8} {'dup':>4} {'late':>4} {'client cpu s':>12}")
    total_stalls = total_ms = 0
    for r in runs:
        s = r["summary"]
        total_stalls += s.get("stalls") or 0
        total_ms += s.get("stall_ms") or 0.0
        print(f"   {r['tag']:5} {r['exit']:4d} {s.get('frames_played', 0):4d}/{s.get('frames_total', 0):<4d} "
              f"{s.get('stalls', 0):6d} {s.get('stall_ms', 0.0):9.1f} {s.get('rebuffer_ratio', 0.0):7.4f} "
              f"{r.get('frames_at_viewer', 0):6d} {r.get('max_gap_ms', float('nan')):10.1f} "
              f"{r.get('viewer_play_s', float('nan')):8.2f} {s.get('duplicates', 0):4d} {s.get('late', 0):4d} "
              f"{r['client_cpu_s']:12.2f}")
    gaps = [r.get("max_gap_ms", float("nan")) for r in runs]
    print(f"   total: {total_stalls} stalls, {total_ms:.0f} ms stalled over {len(runs)} plays; viewer max gap "
          f"p50 {pct(gaps, 50):.1f} ms, max {pct(gaps, 100):.1f} ms (1/fps = {1000 / FPS:.1f} ms); "
          f"target 0 stalls: {'met' if total_stalls == 0 else 'MISSED'}")
    doc["stalls_total"] = total_stalls
    doc["stall_ms_total"] = total_ms


# -- part 3: download vs a plain TCP pump ---------------------------------------------------------------------


def run_pump(store_root: str, movie: str, senders: int, total: int, output: str | None = None) -> dict:
    recv = subprocess.Popen([sys.executable, PUMP, "receive", "--senders", str(senders), "--bytes", str(total),
                             *(["--output", output] if output else [])],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    procs = []
    try:
        port = int(recv.stdout.readline())
        for i in range(senders):
            procs.append(subprocess.Popen([sys.executable, PUMP, "send", "--port", str(port), "--store", store_root,
                                           "--movie", movie, "--stripe", str(i), "--of", str(senders)],
                                          stdin=subprocess.DEVNULL))
        result = json.loads(recv.stdout.readline())
        recv.wait(30)
        for p in procs:
            p.wait(30)
        return result
    finally:
        for p in procs + [recv]:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def run_download(system: System, args) -> dict:
    """The download rows and the pumps, interleaved round by round (vod's three rows, then the three pumps),
    so that the machine's load at any moment weighs on both sides of each ratio alike."""
    store = MovieStore(system.store_root)
    big = big_id(args)
    frames, nbytes = movie_bytes(store, big)
    doc: dict = {"movie": big, "frames": frames, "bytes": nbytes, "ours": [], "pump": []}
    configs = [(NO_OUTPUT, dict()), ("AVI, no cache", dict(output="avi")),
               ("fresh cache, no output", dict(cache=True))]
    pumps = [(4, False), (4, True), (1, False)]
    pumped_runs: dict[tuple[int, bool], list[dict]] = {p: [] for p in pumps}
    pumped = os.path.join(system.workdir, "runs", "pump.bin")
    os.makedirs(os.path.join(system.workdir, "runs"), exist_ok=True)
    # One download first, not counted: the pump's senders read their frames out of the store before the
    # clock starts; this maps the servers' movie pages (their first stream page-faults them in) the same way.
    download_once(system, args, big, NO_OUTPUT, {}, first=False, tag="dl-warmup")
    for rep in range(max(args.download_runs, args.pump_runs)):
        if rep < args.download_runs:
            for label, cfg in configs:
                doc["ours"].append(download_once(system, args, big, label, cfg, first=rep == 0,
                                                 tag=f"dl-{len(doc['ours']) + 1}"))
        if rep < args.pump_runs:
            for senders, to_file in pumps:
                pumped_runs[(senders, to_file)].append(
                    run_pump(system.store_root, big, senders, nbytes, pumped if to_file else None))
                _unlink(pumped)
    for (senders, to_file), results in pumped_runs.items():
        secs = median([r["seconds"] for r in results])
        doc["pump"].append({"senders": senders, "to_file": to_file, "runs": results, "median_s": secs,
                            "complete": all(r["complete"] for r in results),
                            "receiver_cpu_s": median([r["receiver_cpu_s"] for r in results])})
        log(f"pump {senders} -> 1{' into a file' if to_file else ''}: median {secs * 1000:.1f} ms for "
            f"{nbytes / 1e6:.1f} MB")
    return doc


def download_once(system: System, args, big: str, label: str, cfg: dict, *, first: bool, tag: str) -> dict:
    output = os.path.join(system.workdir, "runs", f"{tag}.avi") if cfg.get("output") else None
    cache = os.path.join(system.workdir, "runs", f"{tag}-cache") if cfg.get("cache") else None
    profile = args.profile if (args.profile and first) else None
    server_profiler = None
    if profile and label == NO_OUTPUT:
        pid = system.pids("bench")[0]
        server_profiler = start_profiler(profile, pid, os.path.join(system.workdir, "server-profile.txt"))
    try:
        run = run_client(system, big, "bench", tag, fast=True, output=output, cache=cache, timeout=300,
                         profile=profile)
    finally:
        if server_profiler is not None:
            stop_profiler(server_profiler)
    if server_profiler is not None:
        run["server_profile"] = os.path.join(system.workdir, "server-profile.txt")
    run["label"] = label
    s = run["summary"]
    log(f"download {label}: exit {run['exit']}, {s.get('frames_received')}/{s.get('frames_total')} frames, "
        f"transfer {run.get('transfer_s', float('nan')):.2f} s, process {run['process_s']:.2f} s")
    for path in (output, cache):
        if path:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
    return run


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def pump_of(doc: dict, senders: int, to_file: bool) -> dict | None:
    # Records from before the pump into a file have no "to_file": they were plain pumps.
    return next((p for p in doc["pump"] if p["senders"] == senders and p.get("to_file", False) == to_file), None)


def print_download(doc: dict, args) -> None:
    frames, nbytes = doc["frames"], doc["bytes"]
    pump_rate = nbytes / pump_of(doc, 4, False)["median_s"]
    to_file = pump_of(doc, 4, True)
    file_rate = nbytes / to_file["median_s"] if to_file else None
    print(f"\n3. download (--fast): movie '{doc['movie']}', {frames} frames 640x360, {nbytes / 1e6:.1f} MB "
          f"({nbytes / frames / 1e3:.1f} KB/frame), {args.servers} servers, no rate limit; medians of "
          f"{args.download_runs} runs (vod) and {args.pump_runs} (pump)")
    print(f"   {'what':36} {'frames':>11} {'transfer s':>10} {'(min..max)':>12} {'frames/s':>9} {'MB/s':>7} "
          f"{'of pump':>7} {'like pump':>9} {'process s':>9} {'client cpu':>10} {'servers cpu':>11}")
    doc["rows"] = []
    for label in dict.fromkeys(r["label"] for r in doc["ours"]):
        runs = [r for r in doc["ours"] if r["label"] == label]
        transfers = [r.get("transfer_s", float("nan")) for r in runs]
        t = median(transfers)
        rate = nbytes / t
        process = median([r["process_s"] for r in runs])
        received = min(r["summary"].get("frames_received", 0) for r in runs)
        writes = label != NO_OUTPUT
        like = rate / (file_rate if writes and file_rate else pump_rate)
        row = {"label": label, "runs": len(runs), "transfer_s": t, "frames_per_s": frames / t, "mb_per_s": rate / 1e6,
               "fraction_of_pump": rate / pump_rate, "fraction_of_like_pump": like,
               "like_pump": "pump into a file" if writes and file_rate else "plain pump", "process_s": process,
               "client_cpu_s": median([r["client_cpu_s"] for r in runs]),
               "servers_cpu_s": median([r["servers_cpu_s"] for r in runs]), "frames_received_min": received}
        doc["rows"].append(row)
        spread = f"{min(transfers):.2f}..{max(transfers):.2f}"
        print(f"   {'vod-client, ' + label:36} {received:5d}/{frames:<5d} {t:10.3f} {spread:>12} {frames / t:9.0f} "
              f"{rate / 1e6:7.1f} {rate / pump_rate:7.1%} {like:9.1%} {process:9.2f} "
              f"{row['client_cpu_s']:9.2f}s {row['servers_cpu_s']:10.2f}s")
    for p in doc["pump"]:
        rate = nbytes / p["median_s"]
        p["mb_per_s"] = rate / 1e6
        secs = [r["seconds"] for r in p["runs"]]
        spread = f"{min(secs) * 1000:.0f}..{max(secs) * 1000:.0f}ms"
        label = f"plain TCP pump{' into a file' if p.get('to_file') else ''}, {p['senders']} -> 1"
        print(f"   {label:36} {frames:5d}/{frames:<5d} {p['median_s']:10.3f} {spread:>12} {frames / p['median_s']:9.0f} "
              f"{rate / 1e6:7.1f} {rate / pump_rate:7.1%} {'':9} {'':9} {p['receiver_cpu_s']:9.2f}s")
    target = next(r for r in doc["rows"] if r["label"] == NO_OUTPUT) if any(
        r["label"] == NO_OUTPUT for r in doc["rows"]) else doc["rows"][0]
    frac = target["fraction_of_pump"]
    print("   transfer = the client's strategy -> every frame in (its DEBUG log); process = spawn -> exit; client cpu = whole process (rusage);\n"
          "   servers cpu = all servers during the run (/proc); 'of pump' = MB/s over the plain 4-sender pump's;\n"
          "   'like pump' = over the pump that does the same with the bytes: the plain one for no output, the one "
          "writing a file for the AVI and the cache")
    print(f"   target: ours >= {PUMP_FRACTION_TARGET:.0%} of the pump of the same bytes -> {target['label']}: "
          f"{frac:.1%} ({'met' if frac >= PUMP_FRACTION_TARGET else 'MISSED'})")
    if args.profile:
        for r in doc["ours"]:
            if r.get("profile"):
                print_profile(f"client profile, {r['label']}", r["profile"])
            if r.get("server_profile"):
                print_profile("server s1 profile", r["server_profile"])


# -- part 4: scaling with rate-limited servers --------------------------------------------------------------


def run_scaling(system: System, args, avg_frame: float) -> dict:
    store = MovieStore(system.store_root)
    rate = parse_rate(args.rate)
    doc: dict = {"rate": rate, "rows": []}
    plan = [(n, None) for n in args.scale_servers]
    if args.wide and any(n > 4 for n in args.scale_servers):
        plan += [(n, n) for n in args.scale_servers if n > 4]
    for n, max_servers in plan:
        movie = f"loop-{scale_frames(n, rate, args.scale_seconds, avg_frame)}"
        if max_servers is not None and system.coordinators_tag != f"max{max_servers}":
            system.stop_coordinators()
            system.start_coordinators(f"max{max_servers}", max_servers=max_servers)
            system.coordinators_tag = f"max{max_servers}"
        domain = f"scale{n}" + (f"-max{max_servers}" if max_servers else "")
        system.start_servers(domain, n, movie, rate=args.rate)
        try:
            run = run_client(system, movie, domain, f"scale-{domain}", fast=True, timeout=120)
        finally:
            system.stop_servers(domain)
        frames, nbytes = movie_bytes(store, movie)
        s = run["summary"]
        t = run.get("transfer_s", float("nan"))
        row = {"servers": n, "max_servers": max_servers or 4, "movie": movie, "frames": frames, "bytes": nbytes,
               "target_rate": n * rate, "transfer_s": t, "delivered": nbytes / t if t else float("nan"),
               "used": len(s.get("per_server", {})), "per_server": s.get("per_server", {}),
               "frames_received": s.get("frames_received"), "exit": run["exit"], "client_cpu_s": run["client_cpu_s"],
               "servers_cpu_s": run["servers_cpu_s"], "process_s": run["process_s"]}
        row["fraction"] = row["delivered"] / row["target_rate"]
        log(f"scaling N={n} (max_servers {row['max_servers']}): {row['delivered'] / 1e6:.2f} MB/s over "
            f"{t:.2f} s = {row['fraction']:.0%} of N*C, {row['used']} servers used")
        doc["rows"].append(row)
    return doc


def print_scaling(doc: dict, args) -> None:
    rate = doc["rate"]
    print(f"\n4. scaling: each server --rate-limit {args.rate} (C = {rate / 1e6:g} MB/s), --fast --no-cache, "
          f"no output; movie sized for ~{args.scale_seconds:g} s at N*C")
    print(f"   {'N':>2} {'max_srv':>7} {'used':>4} {'movie MB':>8} {'transfer s':>10} {'N*C MB/s':>8} "
          f"{'delivered':>9} {'/ N*C':>6} {'per-server frames min..max':>26} {'client cpu':>10} {'target':>7}")
    for r in doc["rows"]:
        per = list(r["per_server"].values()) or [0]
        print(f"   {r['servers']:2d} {r['max_servers']:7d} {r['used']:4d} {r['bytes'] / 1e6:8.1f} "
              f"{r['transfer_s']:10.2f} {r['target_rate'] / 1e6:8.1f} {r['delivered'] / 1e6:9.2f} "
              f"{r['fraction']:6.1%} {f'{min(per)}..{max(per)}':>26} {r['client_cpu_s'] / r['process_s']:9.0%} "
              f"{'met' if r['fraction'] >= SCALE_TARGET else 'MISSED':>7}")
    print(f"   target: delivered >= {SCALE_TARGET:.0%} of N*C. 'client cpu' = the client's CPU over its whole "
          f"process life. max_srv = the coordinators' max_servers (4 as shipped; larger only in the rows whose "
          f"coordinators this bench started with another value)")


# -- main ----------------------------------------------------------------------------------------------------




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="realtime,download,scaling",
                    help="comma-separated parts to run: realtime (start-up and stalls), download, scaling")
    ap.add_argument("--json", action="store_true", help="also print all results as one JSON document (last line)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vod-bench-playback"),
                    help="movies are built once and kept here; each run's logs go in a fresh subdirectory")
    ap.add_argument("--keep", action="store_true", help="keep this run's logs and outputs (default: removed)")
    ap.add_argument("--servers", type=int, default=4, help="servers for the realtime and download parts")
    ap.add_argument("--plays", type=int, default=20, help="real-time plays")
    ap.add_argument("--short-frames", type=int, default=72, help="frames of the real-time movie (24 fps)")
    ap.add_argument("--no-output", action="store_true",
                    help="real-time plays without --output (the viewer is then the only sink)")
    ap.add_argument("--big-frames", type=int, default=20000,
                    help="frames of the download movie (20,000: 350 MB, so the pump runs for a tenth of a second "
                         "or more and a rate is a rate, not a start-up)")
    ap.add_argument("--download-runs", type=int, default=5, help="runs of each download row (median)")
    ap.add_argument("--pump-runs", type=int, default=5, help="runs of the TCP pump (median)")
    ap.add_argument("--rate", default="2M", help="each server's --rate-limit in the scaling part")
    ap.add_argument("--scale-servers", default="1,2,4,8", help="server counts for the scaling part")
    ap.add_argument("--scale-seconds", type=float, default=4.0, help="about how long each scaling download lasts")
    ap.add_argument("--no-wide", dest="wide", action="store_false",
                    help="skip the scaling rows with coordinators started with --max-servers N (N > 4)")
    ap.add_argument("--profile", metavar="PY_SPY", default=None,
                    help="a py-spy executable: sample the client in the first run of each download row, and one "
                         "server during the first")
    args = ap.parse_args()
    compile_bytecode()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"realtime", "download", "scaling"}:
        ap.error("--parts takes realtime, download, scaling (comma-separated)")
    try:
        args.scale_servers = [int(n) for n in args.scale_servers.split(",") if n.strip()]
    except ValueError:
        ap.error("--scale-servers is a comma-separated list of counts")
    if args.plays < 1 or args.servers < 1 or args.short_frames < 1 or args.big_frames < 1 or \
            min(args.scale_servers, default=0) < 1 or args.pump_runs < 1 or args.download_runs < 1:
        ap.error("counts must be >= 1")
    parse_rate(args.rate)
    if args.profile:
        args.keep = True  # the profiles are files in this run's directory

    started = time.monotonic()
    load_before = os.getloadavg()
    store = MovieStore(os.path.join(args.workdir, "store"))
    build_movies(store, args)
    big_frames, big_bytes = movie_bytes(store, big_id(args))
    avg_frame = big_bytes / big_frames
    if "scaling" in parts:
        for n in args.scale_servers:
            loop_movie(store, big_id(args), scale_frames(n, parse_rate(args.rate), args.scale_seconds, avg_frame))
    rundir = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    doc: dict = {"v": 1, "parts": sorted(parts), "loadavg_before": load_before}
    system = System(rundir, store.root)
    system.coordinators_tag = "shipped"
    try:
        system.start_coordinators("shipped")
        log(f"coordinators up: {system.coordinators} (logs in {rundir})")
        if parts & {"realtime", "download"}:
            system.start_servers("bench", args.servers, big_id(args))
            log(f"{args.servers} servers joined domain bench")
        if "realtime" in parts:
            doc["realtime"] = run_realtime(system, args)
            print_realtime(doc["realtime"], args)
            sys.stdout.flush()
        if "download" in parts:
            doc["download"] = run_download(system, args)
            print_download(doc["download"], args)
            sys.stdout.flush()
        if "scaling" in parts:
            system.stop_servers("bench")
            doc["scaling"] = run_scaling(system, args, avg_frame)
            print_scaling(doc["scaling"], args)
    finally:
        system.stop_all()
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    print_closing(doc, started, load_before, rundir if args.keep else None, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
