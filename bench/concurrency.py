"""Benchmark: concurrent real-time clients (issue 7, point 5).

How many real-time clients can four `vod-server`s on this machine carry with ZERO stalls, and what does each
server and each client stream cost in CPU and memory? Not a test: it prints tables (and, with --json, one JSON
document as the last stdout line; progress goes to stderr) and asserts nothing about timing.

Everything runs as real processes on 127.0.0.1, started as bench/playback.py starts them (its `System`):
three `vod-coordinator` replicas, --servers (4) `vod-server`s on one movie store, and per step K real
`vod-client play MOVIE --no-cache --json` processes (no output file, no --http: the client paces the frames
at the movie's fps into no sink; --lead is the client's default). The movie, "rt-WxH-FPS-N", is --seconds (36)
of synthetic --size (640x360) frames at --fps (24), built once and kept under --workdir.

Steps: K = --steps (10,20,30,40,50,60) clients, started --stagger (0.4) s apart. A client's interpreter start
and imports cost ~0.4 CPU s, more than 30 s of its streaming; 0.2 s apart they alone take both cores of this
machine, the coordinators' Raft tick thread starves, the primary's role flaps and healthy servers are excluded
as silent (every client then stalls for the restripe). With a 36 s movie, 40 clients all play at once for
about 20 s ("all play": from the last client's spawn + 1 s to the first client's exit). A step is clean when
every client exits 0 with all its frames and no stall; the run stops after the first step that is not clean
(--all runs every step). Each client is killed if it runs over --seconds + 30 s.

Measured per step:
- clients: the JSON summary of each (frames_received/frames_total, stalls, stall_ms); CPU seconds (user +
  system) and peak RSS from os.wait4's rusage when it exits (whole process: start-up and imports included),
  and the CPU % of one core each used while all K were playing (from /proc/PID/stat samples every --sample s).
- servers and coordinators: CPU seconds over the step (/proc/PID/stat deltas, first spawn to last exit)
  as a % of one core, and peak RSS (VmHWM in /proc/PID/status: the peak of the whole process life so far).
- the control plane: ROLE changes, stalled Raft tick threads, members excluded as silent and restripes, from
  the coordinators' logs during the step (what explains stalls when the data path is idle).
- the machine: the load average, and the busy share of all cores (/proc/stat) next to the share our
  processes took, since other work may share the cores (results are noisy when it does).

Usage: .venv/bin/python bench/concurrency.py [--steps 10,20,30,40,50,60] [--all] [--seconds 36] [--servers 4]
       [--size 640x360] [--fps 24] [--stagger 0.4] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from benchutil import compile_bytecode, log, pct, print_closing, stored_current  # noqa: E402
from playback import CLK_TCK, System, proc_cpu  # noqa: E402
from vod.media.store import MovieStore  # noqa: E402
from vod.media.synthetic import synthetic_jpegs  # noqa: E402
from vod.procs import _die_with_parent, console_script  # noqa: E402

TARGET_CLIENTS = 40
DOMAIN = "conc"
NAN = float("nan")
CONTENDED_PCT = 25.0  # other processes' share of all cores above which a step's result is flagged
LOG_LINE = re.compile(r"^(?P<t>\d+\.\d+) (?P<level>[A-Z]+) (?P<logger>\S+): (?P<msg>.*)$")


# -- /proc readings ------------------------------------------------------------------------------------------


def proc_hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process so far, in MB; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return NAN


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def control_plane_events(system: System, t0: float, t1: float) -> dict:
    """What the coordinator replicas logged between epoch times t0 and t1: role changes, stalled tick threads,
    members excluded as silent (servers and clients apart) and restripes."""
    servers = set(system.servers.get(DOMAIN, []))
    events = {"role_changes": 0, "tick_stalls": 0, "servers_excluded": [], "clients_excluded": 0, "restripes": 0}
    for name in system._coordinator_names:
        try:
            f = open(system.group.children[name].log_path, encoding="utf-8", errors="replace")
        except OSError:
            continue
        with f:
            for line in f:
                m = LOG_LINE.match(line)
                if not m or not t0 <= float(m["t"]) <= t1 or m["level"] not in ("WARNING", "ERROR"):
                    continue
                msg = m["msg"]
                if msg.startswith("ROLE "):
                    events["role_changes"] += 1
                elif msg.startswith("tick thread was stalled"):
                    events["tick_stalls"] += 1
                elif msg.startswith("excluding silent members "):
                    for member in msg[len("excluding silent members "):].split(", "):
                        if member in servers:
                            events["servers_excluded"].append(member)
                        else:
                            events["clients_excluded"] += 1
                elif msg.startswith("restriping RUID"):
                    events["restripes"] += 1
    return events


def wait_quiet(system: System, limit: float) -> None:
    """Wait up to `limit` s until processes other than ours take under CONTENDED_PCT of the cores (2 s windows)."""
    deadline = time.monotonic() + limit
    pids = system.pids(DOMAIN) + system.coordinator_pids()
    while True:
        busy0, total0 = machine_jiffies()
        ours0 = sum(proc_cpu(p) for p in pids)
        time.sleep(2.0)
        busy1, total1 = machine_jiffies()
        ours = (sum(proc_cpu(p) for p in pids) - ours0) * CLK_TCK
        others = 100.0 * max(0.0, busy1 - busy0 - ours) / max(1, total1 - total0)
        if others < CONTENDED_PCT or time.monotonic() >= deadline:
            log(f"other processes take {others:.0f}% of the cores{'' if others < CONTENDED_PCT else ' (waited enough)'}")
            return


# -- the movie -------------------------------------------------------------------------------------------------


def build_movie(store: MovieStore, args) -> tuple[str, int]:
    frames = max(1, int(round(args.seconds * args.fps)))
    movie_id = f"rt-{args.width}x{args.height}-{args.fps:g}-{frames}"
    if not stored_current(store, movie_id):
        t0 = time.monotonic()
        store.add(movie_id, synthetic_jpegs(frames, (args.width, args.height), args.fps), fps=args.fps,
                  width=args.width, height=args.height, source="synthetic", source_codec="MJPG",
                  keeps_source_jpeg=True, jpeg_quality=85)
        log(f"built movie {movie_id}: {frames} frames in {time.monotonic() - t0:.1f} s")
    return movie_id, frames


# -- one step: K clients ----------------------------------------------------------------------------------------


class Client:
    def __init__(self, tag: str, argv: list[str], rundir: str, env: dict):
        self.tag = tag
        self.stdout_path = os.path.join(rundir, f"{tag}.out")
        self.stderr_path = os.path.join(rundir, f"{tag}.err")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.t_spawn = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.exit: int | None = None
        self.t_exit: float | None = None
        self.cpu_s = NAN
        self.maxrss_mb = NAN
        self.samples: list[tuple[float, float]] = []  # (monotonic, CPU s so far)
        self.summary: dict = {}
        self.error: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def reap(self) -> bool:
        """True once the client has exited (and was reaped here, with its rusage)."""
        if self.exit is not None:
            return True
        pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        if not pid:
            return False
        self.t_exit = time.monotonic()
        self.exit = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit
        self.cpu_s = rusage.ru_utime + rusage.ru_stime
        self.maxrss_mb = rusage.ru_maxrss / 1024.0  # KB on Linux
        return True

    def kill(self) -> None:
        if self.exit is None and self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(10)
            if self.exit is None:
                self.exit = self.proc.returncode
                self.t_exit = time.monotonic()

    def read_summary(self) -> None:
        try:
            lines = open(self.stdout_path, encoding="utf-8", errors="replace").read().strip().splitlines()
            self.summary = json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            self.summary = {}
        if not self.summary and self.error is None:
            self.error = f"exit {self.exit}, no JSON summary; see {self.stderr_path}"

    def last_warning(self) -> str | None:
        """The last WARNING/ERROR line (or traceback line) the client logged: why it stalled or failed."""
        last = None
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = LOG_LINE.match(line)
                    if (m and m["level"] in ("WARNING", "ERROR", "CRITICAL")) or (not m and line.strip()):
                        last = (m["msg"] if m else line).strip()
        except OSError:
            pass
        return last

    def cpu_rate(self, t0: float, t1: float) -> float:
        """CPU % of one core over [t0, t1] from the samples nearest inside it; NaN without two of them."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
            return NAN
        (ta, ca), (tb, cb) = inside[0], inside[-1]
        return 100.0 * (cb - ca) / (tb - ta)

    def ok(self, frames: int) -> bool:
        s = self.summary
        return (self.exit == 0 and s.get("frames_received") == frames and s.get("frames_total") == frames
                and s.get("stalls") == 0)


def run_step(system: System, movie: str, frames: int, k: int, args, rundir: str) -> dict:
    stepdir = os.path.join(rundir, f"k{k}")
    os.makedirs(stepdir, exist_ok=True)
    server_pids = system.pids(DOMAIN)
    coord_pids = system.coordinator_pids()
    watched = server_pids + coord_pids
    cpu0 = {pid: proc_cpu(pid) for pid in watched}
    busy0, total0 = machine_jiffies()
    load0 = os.getloadavg()
    base = console_script("vod-client") + ["play", movie, "--domain", DOMAIN, "--coordinators", system.coordinators,
                                           "--no-cache", "--json", "--log-level", args.client_log_level]
    clients: list[Client] = []
    limit = args.seconds + 30.0  # per client, from its spawn
    epoch0 = time.time()
    t_first = time.monotonic()
    next_sample = t_first
    try:
        while len(clients) < k or not all(c.reap() for c in clients):
            now = time.monotonic()
            while len(clients) < k and now >= t_first + len(clients) * args.stagger:
                i = len(clients) + 1
                tag = f"k{k}-c{i:02d}"
                clients.append(Client(tag, base + ["--id", f"bench-{tag}-{os.getpid()}"], stepdir, system.env))
                now = time.monotonic()
            if now >= next_sample:
                next_sample = now + args.sample
                for c in clients:
                    if c.exit is None:
                        cpu = proc_cpu(c.pid)
                        if cpu == cpu:  # not NaN: still there
                            c.samples.append((time.monotonic(), cpu))
            for c in clients:
                if not c.reap() and now - c.t_spawn > limit:
                    c.error = f"ran over {limit:.0f} s; killed"
                    c.kill()
            time.sleep(0.05)
    finally:
        for c in clients:
            c.kill()
    t_end = time.monotonic()
    wall = t_end - t_first
    control = control_plane_events(system, epoch0 - 1.0, time.time() + 1.0)
    busy1, total1 = machine_jiffies()
    load1 = os.getloadavg()
    cpu_s = {pid: proc_cpu(pid) - cpu0[pid] for pid in watched}
    for c in clients:
        c.read_summary()

    # The window in which all K played at once: after the last spawn (+1 s of its start-up) until the first exit
    # of a client that played to the end.
    win0 = clients[-1].t_spawn + 1.0
    finished = [c for c in clients if c.exit == 0] or clients  # a client that failed early ends no window
    win1 = min(c.t_exit for c in finished)
    window = max(0.0, win1 - win0)
    rates = [c.cpu_rate(win0, win1) for c in clients] if window >= 2.0 else []
    ok = [c.ok(frames) for c in clients]
    stalls = [c.summary.get("stalls", 0) or 0 for c in clients]
    stall_ms = [c.summary.get("stall_ms", 0.0) or 0.0 for c in clients]
    ours = sum(cpu_s.values()) + sum(c.cpu_s for c in clients if c.cpu_s == c.cpu_s)
    cores = os.cpu_count() or 1
    step = {
        "k": k, "clients": k, "wall_s": wall, "all_playing_s": window, "clean": all(ok), "clients_ok": sum(ok),
        "stalls": sum(stalls), "stall_ms": sum(stall_ms), "worst_stall_ms": max(stall_ms, default=0.0),
        "clients_stalled": sum(s > 0 for s in stalls),
        "frames_received": sum(c.summary.get("frames_received", 0) or 0 for c in clients), "frames_expected": k * frames,
        "exits": sorted({c.exit for c in clients}, key=lambda e: (e is None, e)),
        "errors": {c.tag: c.error for c in clients if c.error},
        "startup_ms_p50": pct([c.summary.get("startup_ms") for c in clients], 50),
        "startup_ms_max": pct([c.summary.get("startup_ms") for c in clients], 100),
        "client_cpu_s": [c.cpu_s for c in clients],
        "client_cpu_pct_playing": rates,
        "client_peak_mb": [c.maxrss_mb for c in clients],
        "servers": [{"pid": pid, "cpu_s": cpu_s[pid], "cpu_pct": 100.0 * cpu_s[pid] / wall,
                     "peak_mb": proc_hwm_mb(pid)} for pid in server_pids],
        "coordinators": [{"pid": pid, "cpu_s": cpu_s[pid], "cpu_pct": 100.0 * cpu_s[pid] / wall,
                          "peak_mb": proc_hwm_mb(pid)} for pid in coord_pids],
        "loadavg_before": load0, "loadavg_after": load1,
        "machine_busy_pct": 100.0 * (busy1 - busy0) / max(1, total1 - total0),
        "ours_pct": 100.0 * ours / wall / cores,
        "stepdir": stepdir,
        "cores": cores,
        "control_plane": control,
        "stalled_clients": [{"tag": c.tag, "stalls": c.summary.get("stalls"), "stall_ms": c.summary.get("stall_ms"),
                             "frames_received": c.summary.get("frames_received"), "exit": c.exit,
                             "spawn_s": c.t_spawn - t_first, "last_warning": c.last_warning()}
                            for c in clients if not c.ok(frames)],
    }
    step["others_pct"] = max(0.0, step["machine_busy_pct"] - step["ours_pct"])
    step["contended"] = step["others_pct"] > CONTENDED_PCT
    step["client_cpu_s_p50"], step["client_cpu_s_max"] = pct(step["client_cpu_s"], 50), pct(step["client_cpu_s"], 100)
    step["client_peak_mb_p50"], step["client_peak_mb_max"] = (pct(step["client_peak_mb"], 50),
                                                              pct(step["client_peak_mb"], 100))
    step["client_cpu_pct_p50"], step["client_cpu_pct_max"] = pct(rates, 50), pct(rates, 100)
    srv = [s["cpu_pct"] for s in step["servers"]]
    step["server_cpu_pct_p50"], step["server_cpu_pct_max"] = pct(srv, 50), pct(srv, 100)
    # All servers' CPU per client stream: CPU seconds per second of movie streamed, % of one core.
    step["servers_cpu_pct_per_stream"] = 100.0 * sum(s["cpu_s"] for s in step["servers"]) / (k * frames / args.fps)
    step["server_peak_mb_max"] = pct([s["peak_mb"] for s in step["servers"]], 100)
    step["coordinator_cpu_pct_max"] = pct([s["cpu_pct"] for s in step["coordinators"]], 100)
    step["coordinator_peak_mb_max"] = pct([s["peak_mb"] for s in step["coordinators"]], 100)
    return step


LEGEND = """\
   ok = clients that exited 0 with every frame and no stall; stall ms = summed over the K clients; worst = the worst
   client's; all play = seconds all K were playing at once; server cpu % = each server's CPU over the step, % of one
   core (p50/max of the servers); /stream = all servers' CPU per client stream (CPU s per s of movie sent, % of one
   core); client cpu s = each client's whole process (rusage: start-up and imports included), p50/max; client % =
   each client's CPU while all K played, % of one core, p50/max; client MB = peak RSS (ru_maxrss), p50/max; srv MB =
   largest server peak RSS (VmHWM, process life); coord % = busiest coordinator replica, % of one core; flaps = ROLE
   changes the replicas logged; srv out = servers the primary excluded as silent; busy/ours % = all cores' busy share
   (/proc/stat) / our processes' share; load 1m = before>after"""

# -- output ------------------------------------------------------------------------------------------------------


def print_table(doc: dict, args) -> None:
    steps = doc["steps"]
    print(f"\nconcurrency: real-time clients of '{doc['movie']}' ({doc['frames']} frames {args.width}x{args.height} "
          f"@ {args.fps:g} fps = {doc['frames'] / args.fps:.0f} s), {args.servers} servers, --no-cache, no output; "
          f"clients started {args.stagger:g} s apart; {doc['cores']} cores")
    print(f"   {'K':>3} {'ok':>5} {'stalls':>6} {'stall ms':>8} {'worst':>6} {'frames':>13} {'all play':>8} "
          f"{'server cpu %':>12} {'/stream':>7} {'client cpu s':>12} {'client %':>9} {'client MB':>9} {'srv MB':>6} "
          f"{'coord %':>7} {'flaps':>5} {'srv out':>7} {'busy/ours %':>11} {'load 1m':>9}")
    contended = False
    for s in steps:
        print(f"   {s['k']:3d} {s['clients_ok']:2d}/{s['k']:<2d} {s['stalls']:6d} {s['stall_ms']:8.0f} "
              f"{s['worst_stall_ms']:6.0f} {s['frames_received']:6d}/{s['frames_expected']:<6d} "
              f"{s['all_playing_s']:7.1f}s "
              f"{s['server_cpu_pct_p50']:5.1f}/{s['server_cpu_pct_max']:<6.1f} "
              f"{s['servers_cpu_pct_per_stream']:7.2f} "
              f"{s['client_cpu_s_p50']:5.2f}/{s['client_cpu_s_max']:<6.2f} "
              f"{s['client_cpu_pct_p50']:4.1f}/{s['client_cpu_pct_max']:<4.1f} "
              f"{s['client_peak_mb_p50']:4.0f}/{s['client_peak_mb_max']:<4.0f} {s['server_peak_mb_max']:6.0f} "
              f"{s['coordinator_cpu_pct_max']:7.1f} {s['control_plane']['role_changes']:5d} "
              f"{len(s['control_plane']['servers_excluded']):7d} {s['machine_busy_pct']:5.0f}/{s['ours_pct']:<5.0f} "
              f"{s['loadavg_before'][0]:4.1f}>{s['loadavg_after'][0]:<4.1f}{' *' if s['contended'] else ''}")
        contended = contended or s["contended"]
    print(LEGEND)
    if contended:
        print(f"   * = contended: other processes took over {CONTENDED_PCT:g}% of all cores during the step")
    for s in steps:
        if s["stalled_clients"]:
            worst = sorted(s["stalled_clients"], key=lambda c: -(c["stall_ms"] or 0))[:8]
            print(f"   K={s['k']}: not clean ({len(s['stalled_clients'])} clients; the worst): " + ", ".join(
                f"{c['tag']} (spawned +{c['spawn_s']:.1f}s, exit {c['exit']}, {c['frames_received']} frames, "
                f"{c['stalls']} stalls {c['stall_ms'] or 0:.0f} ms)" for c in worst))
            for c in worst[:3]:
                if c["last_warning"]:
                    print(f"   K={s['k']}: {c['tag']} last logged: {c['last_warning'][:160]}")
            print(f"   K={s['k']}: client logs in {s['stepdir']}")
        for tag, err in list(s["errors"].items())[:5]:
            print(f"   K={s['k']}: {tag}: {err}")
        if len(s["errors"]) > 5:
            print(f"   K={s['k']}: ... and {len(s['errors']) - 5} more clients with errors")
        if s["contended"]:
            print(f"   K={s['k']}: CONTENDED: other processes took {s['others_pct']:.0f}% of all cores during the step "
                  f"(ours {s['ours_pct']:.0f}%); the result says more about the machine than about vod")
        c = s["control_plane"]
        if c["role_changes"] or c["tick_stalls"] or c["servers_excluded"] or c["clients_excluded"]:
            print(f"   K={s['k']}: coordinators logged {c['role_changes']} ROLE changes, {c['tick_stalls']} stalled Raft "
                  f"tick threads, servers excluded as silent: {', '.join(c['servers_excluded']) or 'none'}, "
                  f"{c['clients_excluded']} clients excluded, {c['restripes']} restripes")
    best = doc["largest_clean"]
    verdict = "met" if best is not None and best >= TARGET_CLIENTS else "MISSED"
    print(f"\nlargest K with zero stalls: {best if best is not None else 0} (target >= {TARGET_CLIENTS}: {verdict})")


def figures(doc: dict, args) -> list[dict]:
    """The headline rows for a results page: {what, measured, target, met}."""
    steps = doc["steps"]
    if not steps:
        return []
    best = doc["largest_clean"]
    at = next((s for s in steps if s["k"] == best), None) or steps[-1]
    what = (f"{args.servers} servers, {args.width}x{args.height} {args.fps:g} fps, {doc['frames'] / args.fps:.0f} s "
            f"movie, clients {args.stagger:g} s apart")
    contended = any(s["contended"] for s in steps)
    return [
        {"what": f"largest number of concurrent real-time clients with zero stalls ({what})",
         "measured": f"{best or 0}" + (f" (first not clean: {doc['first_unclean']})" if doc["first_unclean"]
                                       else " (every step clean; more not tried)")
                     + (" [contended machine]" if contended else ""),
         "target": f"≥ {TARGET_CLIENTS}", "met": (best or 0) >= TARGET_CLIENTS},
        {"what": f"per server at K={at['k']}: CPU over the step / peak RSS",
         "measured": f"{at['server_cpu_pct_max']:.1f}% of one core / {at['server_peak_mb_max']:.0f} MB"},
        {"what": f"per client stream at K={at['k']}: servers' CPU / client CPU while playing",
         "measured": f"{at['servers_cpu_pct_per_stream']:.2f}% / {at['client_cpu_pct_p50']:.1f}% of one core"},
        {"what": f"per client process at K={at['k']}: CPU s (start-up included) / peak RSS, p50",
         "measured": f"{at['client_cpu_s_p50']:.2f} s / {at['client_peak_mb_p50']:.0f} MB"},
    ]


# -- main ----------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="10,20,30,40,50,60", help="comma-separated client counts K, in order")
    ap.add_argument("--all", action="store_true", help="run every step, not only up to the first with stalls")
    ap.add_argument("--seconds", type=float, default=36.0, help="length of the movie in seconds")
    ap.add_argument("--servers", type=int, default=4, help="vod-servers (each --capacity 1)")
    ap.add_argument("--size", default="640x360", help="frame size WxH of the synthetic movie")
    ap.add_argument("--fps", type=float, default=24.0, help="frame rate of the movie (the clients play at it)")
    ap.add_argument("--stagger", type=float, default=0.4, help="seconds between two client starts")
    ap.add_argument("--sample", type=float, default=1.0, help="seconds between /proc samples of the clients' CPU")
    ap.add_argument("--client-log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                    help="the clients' --log-level (their stderr is kept with --keep or when a step is not clean)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds of rest between steps")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vod-bench-concurrency"),
                    help="the movie store is built once and kept here; each run's logs go in a fresh subdirectory")
    ap.add_argument("--keep", action="store_true",
                    help="keep this run's logs (default: removed, unless a step was not clean)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each step, wait up to this long for other processes to leave the cores mostly idle "
                         f"(their share under {CONTENDED_PCT:g}%% over 2 s); 0: do not wait")
    ap.add_argument("--json", action="store_true", help="also print all results as one JSON document (last line)")
    args = ap.parse_args()
    compile_bytecode()
    try:
        args.steps = [int(v) for v in args.steps.split(",") if v.strip()]
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error("--steps is a comma-separated list of counts; --size is WxH")
    if not args.steps or min(args.steps) < 1 or args.servers < 1 or args.width < 16 or args.height < 16:
        ap.error("counts must be >= 1 and the size at least 16x16")
    if args.seconds <= 0 or args.fps <= 0 or args.stagger < 0 or args.sample <= 0:
        ap.error("--seconds, --fps, --sample must be > 0 and --stagger >= 0")

    started = time.monotonic()
    os.makedirs(args.workdir, exist_ok=True)
    store = MovieStore(os.path.join(args.workdir, "store"))
    movie, frames = build_movie(store, args)
    rundir = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    doc: dict = {"v": 1, "movie": movie, "frames": frames, "fps": args.fps, "size": [args.width, args.height],
                 "servers": args.servers, "stagger_s": args.stagger, "cores": os.cpu_count(),
                 "loadavg_before": os.getloadavg(), "steps": [], "target": TARGET_CLIENTS}
    system = System(rundir, store.root)
    try:
        system.start_coordinators("conc")
        log(f"coordinators up: {system.coordinators} (logs in {rundir})")
        system.start_servers(DOMAIN, args.servers, movie)
        log(f"{args.servers} servers joined domain {DOMAIN}")
        for k in args.steps:
            if args.wait_quiet > 0:
                wait_quiet(system, args.wait_quiet)
            log(f"step K={k}: starting {k} clients {args.stagger:g} s apart (load average "
                f"{os.getloadavg()[0]:.2f})")
            step = run_step(system, movie, frames, k, args, rundir)
            doc["steps"].append(step)
            log(f"step K={k}: {step['clients_ok']}/{k} clean, {step['stalls']} stalls ({step['stall_ms']:.0f} ms, "
                f"worst {step['worst_stall_ms']:.0f} ms), all playing {step['all_playing_s']:.1f} s, server CPU "
                f"max {step['server_cpu_pct_max']:.0f}%, client CPU p50 {step['client_cpu_s_p50']:.2f} s, machine "
                f"busy {step['machine_busy_pct']:.0f}% (ours {step['ours_pct']:.0f}%), {step['wall_s']:.0f} s")
            dead = [name for name in system.servers.get(DOMAIN, []) if system.group.children[name].proc.poll() is not None]
            if dead:
                log(f"servers gone: {', '.join(dead)}; stopping")
                doc["servers_died"] = dead
                break
            if not step["clean"] and not args.all:
                break
            time.sleep(args.pause)
    finally:
        system.stop_all()
        args.keep = args.keep or not all(s["clean"] for s in doc["steps"])
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    clean = [s["k"] for s in doc["steps"] if s["clean"]]
    first_bad = next((s["k"] for s in doc["steps"] if not s["clean"]), None)
    doc["largest_clean"] = max(clean) if clean else None
    doc["first_unclean"] = first_bad
    doc["figures"] = figures(doc, args)
    if doc["steps"]:
        print_table(doc, args)
    print_closing(doc, started, doc["loadavg_before"], rundir if args.keep else None, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
