"""Benchmark: recovery from crashes during real-time playback (issue 6).

Not a test: it prints a table (and, with --json, one JSON document as the last line) and asserts nothing
about timing. Everything runs as real processes on 127.0.0.1: three `vod-coordinator` replicas, three
`vod-server`s holding one synthetic movie (--frames, 240: 10 s of 160x90 JPEGs at 24 fps, ~3 KB each, so
the CPU is not what is measured), and per run one real-time `vod-client play --no-cache --output RUN.avi
--json --trace RUN.jsonl --lead 2`. Every process started is stopped in a `finally`; every wait is bounded.

Each run: wait until the system is healthy (three replicas answering and level, the acting primary in
office for longer than the new-primary grace period, every server connected to it and heartbeating); start
the client; read its trace until the strategy (revision 1) is applied; at a random moment 2-3 s later (the
movie has then played 2-3 s) SIGKILL one server of that strategy (the servers take turns), and in the
"primary" phase, just before it, the acting primary coordinator. t0 is taken just before the first SIGKILL.
The client plays the movie to its end; its output is checked frame-exact (SHA-256 of every frame against
the store); then the killed processes are restarted (same id, ports and data directory) and the next run
waits for them. The processes that were not killed are reused across runs.

Definitions (all times from t0; percentiles nearest rank: p95 of 20 is the 19th value):

- first replacement frame: the first frame the client received (its trace, `vod-client play --trace`),
  after t0, from a surviving server, whose index was in the killed server's assignment in the strategy the
  client held at t0, and that the client did not hold yet (not a duplicate);
- restripe at the client: the trace's first strategy line with a revision above the one held at t0;
- exclusion: the coordinator log line `excluding silent members ...` naming the killed server (the acting
  primary's failure detector: no heartbeat within --failure-timeout, 1 s; the exclude is then committed);
- new primary: the first `ROLE acting-primary` line of a surviving replica after t0 (its log);
- stalls: the client's own count (`stalls` in its JSON summary: the frame at the playhead missing at its
  deadline; a 2 s lead window, --lead 2, the default);
- duplicates: the trace's frames marked duplicate (a frame received when already held), as a % of the
  movie's frames; the client's summary counts the same ("duplicates"). Frames fenced as stale (sent under
  an older revision; dropped before the play) are listed apart ("stale").
- slack: the playout deadline of the first frame the killed server still owed minus t0: how long the
  buffered frames could cover the loss (about the lead window).

Usage: .venv/bin/python bench/recovery.py [--runs 20] [--phases server,primary] [--quick] [--json]
       [--workdir DIR] [--keep] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vod.groups.probe import Probe  # noqa: E402
from vod.media.store import MovieStore  # noqa: E402
from vod.media.synthetic import synthetic_jpegs  # noqa: E402
from vod.media.video import read_jpeg_frames  # noqa: E402
from vod.procs import ProcessGroup, console_script, free_port  # noqa: E402
from benchutil import domain_secret, json_safe, log, pct, stored_current, wait_until  # noqa: E402

HOST = "127.0.0.1"
DOMAIN = "bench"
MOVIE = "m"
SIZE = (160, 90)
FPS = 24.0
GRACE = 2.0  # vod-coordinator --grace (its default): a new primary judges no member before it is over
FAILURE_TIMEOUT = 1.0  # vod-coordinator --failure-timeout (its default)
REPLACEMENT_TARGET_S = 1.0
DUPLICATE_TARGET = 0.02
KILL_AFTER = (2.0, 3.0)  # seconds of movie played before the kill, uniformly at random

ROLE_RE = re.compile(r"^(?P<t>\d+\.\d+) WARNING vod\.coordinator: ROLE (?P<role>acting-primary|not-primary) "
                     r"term=(?P<term>\d+) replica=(?P<replica>\S+)\s*$")
EXCLUDE_RE = re.compile(r"^(?P<t>\d+\.\d+) WARNING \S+: excluding silent members (?P<members>.*?)\s*$")








def log_lines(path: str, pattern: re.Pattern) -> list[re.Match]:
    try:
        with open(path, errors="replace") as f:
            return [m for m in map(pattern.match, f) if m]
    except FileNotFoundError:
        return []


def read_trace(path: str) -> list[dict]:
    """The complete lines of a trace (the last one may be half-written while the client runs)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    events = []
    for line in text.split("\n")[:-1]:  # what follows the last newline is not a whole line yet
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


# -- the system ----------------------------------------------------------------------------------------------


class System:
    """Three coordinators and three servers on fixed ports, each restartable as it was first started."""

    def __init__(self, workdir: str, store: MovieStore, servers: int):
        self.workdir = workdir
        self.store = store
        self.secret_file, self.secret, self.env = domain_secret(workdir)
        self.group = ProcessGroup()
        self.argv: dict[str, list[str]] = {}
        raft = [f"{HOST}:{free_port()}" for _ in range(3)]
        listen = [f"{HOST}:{free_port()}" for _ in range(3)]
        self.coordinators = ",".join(listen)
        self.coordinator_ids = [f"c{i + 1}" for i in range(3)]
        for i, rid in enumerate(self.coordinator_ids):
            self.argv[rid] = console_script("vod-coordinator") + [
                "--id", rid, "--raft", raft[i], "--peers", ",".join(raft), "--listen", listen[i],
                "--data", os.path.join(workdir, f"data-{rid}"), "--grace", str(GRACE),
                "--failure-timeout", str(FAILURE_TIMEOUT)]
        self.server_ids = [f"s{i + 1}" for i in range(servers)]
        for sid in self.server_ids:
            self.argv[sid] = console_script("vod-server") + [
                "--id", sid, "--domain", DOMAIN, "--coordinators", self.coordinators, "--media", store.root,
                "--listen", f"{HOST}:{free_port()}", "--capacity", "1", "--log-level", "INFO"]

    def log_path(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def start(self, name: str) -> None:
        old = self.group.children.get(name)
        if old is not None:
            if old.proc.poll() is None:
                raise RuntimeError(f"{name} is still running")
            if old.log_file:
                old.log_file.close()
        self.group.start(name, self.argv[name], self.log_path(name), self.env)

    def kill(self, name: str) -> None:
        self.group.kill(name, signal.SIGKILL)

    def restart_dead(self) -> None:
        for name in self.coordinator_ids + self.server_ids:
            child = self.group.children.get(name)
            if child is not None and child.proc.poll() is not None:
                self.start(name)

    def start_all(self) -> None:
        for rid in self.coordinator_ids:
            self.start(rid)
        wait_until(lambda: self.primary(), 30, "a primary coordinator")
        for sid in self.server_ids:
            self.start(sid)

    def statuses(self) -> dict[str, dict | None]:
        with Probe(self.coordinators.split(","), self.secret, call_timeout=1.0) as probe:
            return {addr: status for addr, status, _ in probe.status_all()}

    def primary(self) -> str | None:
        for status in self.statuses().values():
            if status and status["replica"]["acting_primary"]:
                return status["replica"]["id"]
        return None

    def role_lines(self) -> list[tuple[float, str, str, int]]:
        out = []
        for rid in self.coordinator_ids:
            out += [(float(m["t"]), m["replica"], m["role"], int(m["term"]))
                    for m in log_lines(self.log_path(rid), ROLE_RE)]
        return sorted(out)

    def health(self) -> str | None:
        """None when ready for a run; else what is not ready yet."""
        statuses = [s for s in self.statuses().values() if s]
        if len(statuses) < len(self.coordinator_ids):
            return f"{len(statuses)} of {len(self.coordinator_ids)} coordinators answer"
        primaries = [s for s in statuses if s["replica"]["acting_primary"]]
        if len(primaries) != 1:
            return f"{len(primaries)} acting primaries"
        primary = primaries[0]
        lagging = [s["replica"]["id"] for s in statuses if s["last_applied"] < primary["last_applied"] - 2]
        if lagging:
            return f"{', '.join(lagging)} not caught up"
        acting = [t for t, rid, role, _ in self.role_lines() if role == "acting-primary"]
        if acting and time.time() - acting[-1] < GRACE + 0.5:
            return "the primary's grace period is not over"
        members = {m["id"]: m for m in primary["members"]}
        for sid in self.server_ids:
            m = members.get(sid)
            if m is None or not m.get("connected") or m.get("heartbeat_age") is None or m["heartbeat_age"] > 0.5:
                return f"server {sid} not connected and heartbeating"
        return None

    def wait_healthy(self, timeout: float = 60.0) -> None:
        last = ["not asked"]

        def ready():
            try:
                last[0] = self.health()
            except Exception as err:  # noqa: BLE001 - a coordinator restarting
                last[0] = f"{type(err).__name__}: {err}"
            return last[0] is None

        try:
            wait_until(ready, timeout, "a healthy system", interval=0.2)
        except RuntimeError as err:
            raise RuntimeError(f"{err}: {last[0]}") from None

    def stop_all(self) -> None:
        self.group.stop_all()


# -- one run -------------------------------------------------------------------------------------------------


def run_once(system: System, phase: str, number: int, args, rng: random.Random, expected: list[bytes]) -> dict:
    system.wait_healthy()
    load = os.getloadavg()[0]
    tag = f"{phase}-{number:02d}"
    out_avi = os.path.join(system.workdir, f"{tag}.avi")
    trace_path = os.path.join(system.workdir, f"{tag}.jsonl")
    stdout = open(os.path.join(system.workdir, f"{tag}.out"), "wb")
    client_name = f"client-{tag}"
    argv = console_script("vod-client") + [
        "play", MOVIE, "--domain", DOMAIN, "--coordinators", system.coordinators, "--id", f"viewer-{tag}",
        "--no-cache", "--output", out_avi, "--json", "--trace", trace_path, "--lead", str(args.lead),
        "--log-level", "INFO"]
    killed: list[str] = []
    try:
        client = system.group.start(client_name, argv, system.log_path(client_name), system.env, stdout=stdout)

        def first_strategy():
            if client.proc.poll() is not None:
                raise RuntimeError(f"{tag}: the client exited {client.proc.returncode} before its strategy")
            return next((e for e in read_trace(trace_path) if e.get("event") == "strategy"), None)

        strategy = wait_until(first_strategy, 30, f"{tag}: the client's strategy", interval=0.02)
        servers = sorted(strategy["assignments"])
        victim = servers[number % len(servers)]
        primary = system.primary() if phase == "primary" else None
        if phase == "primary" and primary is None:
            raise RuntimeError(f"{tag}: no acting primary to kill")
        kill_at = strategy["t"] + rng.uniform(*KILL_AFTER)
        time.sleep(max(0.0, kill_at - time.time()))
        t0 = time.time()
        if primary:
            system.kill(primary)
            killed.append(primary)
        t_server = time.time()
        system.kill(victim)
        killed.append(victim)
        log_kill = f"killed {victim}" + (f" and primary {primary}" if primary else "")
        try:
            client.proc.wait(timeout=len(expected) / FPS + 60)
        except subprocess.TimeoutExpired:
            log(f"{tag}: the client did not finish the movie in time; SIGKILLed (exit -9 in the table)")
            client.proc.kill()
            client.proc.wait(10)
    finally:
        stdout.close()
        child = system.group.children.get(client_name)
        if child is not None and child.log_file:
            child.log_file.close()
            child.log_file = None
    result = analyse(system, tag, phase, number, t0, t_server, victim, primary, trace_path, out_avi, expected,
                     client.proc.returncode)
    result["load1"] = load
    result["kill_after_start_s"] = t0 - strategy["t"]
    for name in killed:
        system.start(name)
    if not args.keep:
        for path in (out_avi, trace_path):
            try:
                os.unlink(path)
            except OSError:
                pass
    log(f"{tag}: {log_kill} {result['kill_after_start_s']:.2f} s into the movie; " + describe(result))
    return result


def analyse(system: System, tag: str, phase: str, number: int, t0: float, t_server: float, victim: str,
            primary: str | None, trace_path: str, out_avi: str, expected: list[bytes], exit_code: int) -> dict:
    summary_text = open(os.path.join(system.workdir, f"{tag}.out"), errors="replace").read().strip()
    summary = json.loads(summary_text.splitlines()[-1]) if summary_text else {}
    events = read_trace(trace_path)
    strategies = [e for e in events if e.get("event") == "strategy"]
    frames = [e for e in events if e.get("event") == "frame"]
    held_at_kill = [s for s in strategies if s["t"] <= t0]
    current = held_at_kill[-1] if held_at_kill else strategies[0]
    victim_mask = current["assignments"].get(victim, "")
    owed = {i for i, c in enumerate(victim_mask) if c == "1"}
    received_before = {f["index"] for f in frames if f["t"] <= t0 and not f["duplicate"]}
    replacement = next((f for f in frames if f["t"] > t0 and f["server"] != victim and f["index"] in owed
                        and not f["duplicate"]), None)
    restripe = next((s for s in strategies if s["revision"] > current["revision"]), None)
    exclusions = [float(m["t"]) for rid in system.coordinator_ids
                  for m in log_lines(system.log_path(rid), EXCLUDE_RE)
                  if float(m["t"]) > t0 and victim in [x.strip() for x in m["members"].split(",")]]
    roles = [t for t, rid, role, _ in system.role_lines() if role == "acting-primary" and t > t0 and rid != primary]
    # Slack: when the first frame the killed server still owed was due on the client's schedule.
    first = next((f for f in frames if f["index"] == 0 and not f["duplicate"]), None)
    missing_owed = sorted(owed - received_before - {f["index"] for f in frames if f["t"] <= t0})
    slack = (first["t"] + missing_owed[0] / FPS - t0) if first and missing_owed else float("nan")
    duplicates = sum(1 for f in frames if f["duplicate"])
    exact, detail = check_output(out_avi, expected)

    def since(t):
        return None if t is None else round(t - t0, 4)

    return {
        "run": tag, "phase": phase, "victim": victim, "primary_killed": primary, "exit": exit_code,
        "t0": t0, "server_killed_after_s": round(t_server - t0, 4),
        "revision_at_kill": current["revision"], "owed_at_kill": len(missing_owed),
        "replacement_s": since(replacement["t"] if replacement else None),
        "replacement_from": replacement["server"] if replacement else None,
        "restripe_s": since(restripe["t"] if restripe else None),
        "restripe_revision": restripe["revision"] if restripe else None,
        "exclusion_s": since(min(exclusions) if exclusions else None),
        "new_primary_s": since(min(roles) if roles else None),
        "slack_s": None if math.isnan(slack) else round(slack, 4),
        "stalls": summary.get("stalls"), "stall_ms": summary.get("stall_ms"),
        "duplicates": duplicates, "summary_duplicates": summary.get("duplicates"),
        "stale": summary.get("stale_frames"), "frames_total": summary.get("frames_total") or len(expected),
        "frames_received": summary.get("frames_received"), "frame_events": len(frames),
        "exact": exact, "exact_detail": detail,
    }


def check_output(path: str, expected: list[bytes]) -> tuple[bool, str]:
    try:
        got = [hashlib.sha256(f).digest() for f in read_jpeg_frames(path).frames]
    except Exception as err:  # noqa: BLE001 - reported in the table
        return False, f"unreadable: {err}"
    bad = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    if len(got) != len(expected) or bad:
        return False, f"{len(got)}/{len(expected)} frames, first bad {bad[0] if bad else min(len(got), len(expected))}"
    return True, f"{len(got)} frames identical"


def describe(r: dict) -> str:
    def s(key):
        v = r.get(key)
        return "-" if v is None else f"+{v:.2f}s"

    parts = []
    if r["phase"] == "primary":
        parts.append(f"new primary {s('new_primary_s')}")
    parts += [f"exclusion {s('exclusion_s')}", f"restripe {s('restripe_s')}",
              f"first replacement {s('replacement_s')} ({r['replacement_from'] or '-'})",
              f"slack {s('slack_s')}", f"stalls {r['stalls']} ({r['stall_ms'] or 0:.0f} ms)",
              f"duplicates {r['duplicates']} ({r['duplicates'] / r['frames_total']:.1%})",
              "exact" if r["exact"] else f"NOT EXACT ({r['exact_detail']})", f"exit {r['exit']}",
              f"load {r['load1']:.1f}"]
    return ", ".join(parts)


# -- report --------------------------------------------------------------------------------------------------


def stats(values: list) -> dict:
    vals = [v for v in values if v is not None]
    return {"n": len(vals), "missing": len(values) - len(vals), "p50": pct(vals, 50), "p95": pct(vals, 95),
            "max": max(vals) if vals else float("nan"), "min": min(vals) if vals else float("nan")}


def summarize(runs: list[dict]) -> dict:
    total_frames = sum(r["frames_total"] for r in runs)
    dups = sum(r["duplicates"] for r in runs)
    return {
        "runs": len(runs),
        "replacement_s": stats([r["replacement_s"] for r in runs]),
        "restripe_s": stats([r["restripe_s"] for r in runs]),
        "exclusion_s": stats([r["exclusion_s"] for r in runs]),
        "new_primary_s": stats([r["new_primary_s"] for r in runs]),
        "slack_s": stats([r["slack_s"] for r in runs]),
        "runs_with_stalls": sum(1 for r in runs if r["stalls"]),
        "stalls": sum(r["stalls"] or 0 for r in runs),
        "stall_ms": stats([r["stall_ms"] for r in runs if r["stalls"]]),
        "duplicates": dups, "frames": total_frames,
        "duplicate_fraction": dups / total_frames if total_frames else float("nan"),
        "max_run_duplicate_fraction": max((r["duplicates"] / r["frames_total"] for r in runs), default=float("nan")),
        "stale": sum(r["stale"] or 0 for r in runs),
        "exact": sum(1 for r in runs if r["exact"]),
        "clean_exits": sum(1 for r in runs if r["exit"] == 0),
        "duplicates_agree": all(r["duplicates"] == r["summary_duplicates"] for r in runs),
        "load1": stats([r["load1"] for r in runs]),
    }


def row(label: str, st: dict, target: str = "") -> str:
    def ms(v):
        return "      -" if v is None or math.isnan(v) else f"{v * 1000:7.0f}"
    miss = f"  ({st['missing']} runs without one)" if st["missing"] else ""
    return f"  {label:58} {ms(st['p50'])} {ms(st['p95'])} {ms(st['max'])}   {target}{miss}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_phase(title: str, s: dict, phase: str) -> None:
    n = s["runs"]
    print(f"\n{title} ({n} runs)")
    print(f"  {'time from the SIGKILL (t0) to ...':58} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}   target")
    if phase == "primary":
        print(row("the new primary's ROLE acting-primary line", s["new_primary_s"]))
    print(row("exclusion of the killed server (coordinator log)", s["exclusion_s"]))
    print(row("the restriped strategy (revision 2) at the client", s["restripe_s"]))
    rep = s["replacement_s"]
    target = (f"p95 <= {REPLACEMENT_TARGET_S:g} s: {verdict(rep['p95'] <= REPLACEMENT_TARGET_S and not rep['missing'])}"
              if phase == "server" else "")
    print(row("the first replacement frame at the client", rep, target))
    print(row("(slack: the killed server's first owed frame due)", s["slack_s"]))
    stall_note = "" if not s["runs_with_stalls"] else (
        f"; stall p50 {s['stall_ms']['p50']:.0f} ms, max {s['stall_ms']['max']:.0f} ms")
    print(f"  stalls (--lead 2): {s['stalls']} in {s['runs_with_stalls']} of {n} runs{stall_note}"
          + (f"   target 0 in {n}/{n}: {verdict(s['runs_with_stalls'] == 0)}" if phase == "server" else ""))
    print(f"  duplicates: {s['duplicates']} of {s['frames']} frames = {s['duplicate_fraction']:.2%} "
          f"(worst run {s['max_run_duplicate_fraction']:.2%})"
          + (f"   target <= {DUPLICATE_TARGET:.0%}: {verdict(s['duplicate_fraction'] <= DUPLICATE_TARGET)}"
             if phase == "server" else "")
          + f"; stale (fenced) frames: {s['stale']}")
    print(f"  output frame-exact (SHA-256 of every frame): {s['exact']}/{n}; clean exits: {s['clean_exits']}/{n}; "
          f"load average (1 min) at the runs' start: {s['load1']['min']:.1f}..{s['load1']['max']:.1f}")




# -- main ----------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs per phase")
    ap.add_argument("--phases", default="server,primary",
                    help="server: SIGKILL one server; primary: SIGKILL the acting primary and one server")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 runs per phase")
    ap.add_argument("--frames", type=int, default=240, help="frames of the movie (24 fps)")
    ap.add_argument("--servers", type=int, default=3, help="vod-servers holding the movie")
    ap.add_argument("--lead", type=float, default=2.0, help="the client's --lead (seconds)")
    ap.add_argument("--seed", type=int, default=6, help="seed of the kill times and nothing else")
    ap.add_argument("--json", action="store_true", help="also print every run as one JSON document (last line)")
    ap.add_argument("--workdir", default=None, help="logs, traces and outputs go here (default: a temporary "
                                                    "directory, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the logs, traces and outputs")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - {"server", "primary"}:
        ap.error("--phases takes server, primary (comma-separated)")
    if args.quick:
        args.runs = min(args.runs, 2)
    if args.runs < 1 or args.servers < 2 or args.lead <= 0 or args.frames < FPS * (KILL_AFTER[1] + 5):
        ap.error(f"--runs >= 1, --servers >= 2, --lead > 0, --frames >= {int(FPS * (KILL_AFTER[1] + 5))}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="vod-bench-recovery-")
    os.makedirs(workdir, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    rng = random.Random(args.seed)

    store = MovieStore(os.path.join(workdir, "store"))
    if not stored_current(store, MOVIE):
        store.add(MOVIE, synthetic_jpegs(args.frames, SIZE, FPS), fps=FPS, width=SIZE[0], height=SIZE[1],
                  source="synthetic", source_codec="MJPG", keeps_source_jpeg=True, jpeg_quality=85)
    with store.open(MOVIE) as movie:
        expected = [movie.frame_sha256(i) for i in range(len(movie))]
        frame_bytes = movie.info.frames_bytes
    system = System(workdir, store, args.servers)
    runs: dict[str, list[dict]] = {p: [] for p in phases}
    errors: list[dict] = []
    try:
        system.start_all()
        log(f"{len(system.coordinator_ids)} coordinators ({system.coordinators}) and {args.servers} servers up; "
            f"logs in {workdir}")
        for phase in phases:
            for i in range(args.runs):
                try:
                    runs[phase].append(run_once(system, phase, i + 1, args, rng, expected))
                except RuntimeError as err:  # one run gone wrong: say so, bring the system back, go on
                    log(f"{phase}-{i + 1:02d}: FAILED: {err}")
                    errors.append({"phase": phase, "run": i + 1, "error": str(err)})
                    args.keep = True
                    system.restart_dead()
    except BaseException:
        log(f"failed; logs kept in {workdir}")
        args.keep = True
        raise
    finally:
        system.stop_all()
    doc = {"v": 1, "frames": len(expected), "fps": FPS, "size": list(SIZE), "frame_bytes": frame_bytes,
           "servers": args.servers, "lead": args.lead, "seed": args.seed, "loadavg_before": load_before,
           "phases": {p: summarize(r) for p, r in runs.items() if r}, "runs": runs, "errors": errors}
    print(f"recovery: movie {len(expected)} frames {SIZE[0]}x{SIZE[1]} @ {FPS:g} fps ({len(expected) / FPS:.0f} s, "
          f"{frame_bytes / len(expected) / 1e3:.1f} KB/frame); 3 coordinators (--failure-timeout "
          f"{FAILURE_TIMEOUT:g}, --grace {GRACE:g}), {args.servers} servers, one real-time client --lead "
          f"{args.lead:g}; kill {KILL_AFTER[0]:g}-{KILL_AFTER[1]:g} s into the movie")
    titles = {"server": "(a)-(c) SIGKILL of one server of the client's strategy",
              "primary": "(d) SIGKILL of the acting primary coordinator, then at once of one server of the strategy"}
    for phase in phases:
        if phase in doc["phases"]:
            print_phase(titles[phase], doc["phases"][phase], phase)
    for e in errors:
        print(f"  run {e['phase']}-{e['run']:02d} FAILED (not in the figures): {e['error']}")
    doc["loadavg_after"] = os.getloadavg()
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    print(f"\n({doc['wall_seconds']} s in all; load average before {load_before[0]:.2f}, after "
          f"{doc['loadavg_after'][0]:.2f} on {os.cpu_count()} cores"
          f"{f'; logs kept in {workdir}' if args.keep else ''})")
    if args.json:
        print(json.dumps(json_safe(doc), sort_keys=True))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
