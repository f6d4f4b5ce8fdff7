"""Benchmark: vod side by side with aria2 + nginx mirrors (issue 7, peer comparison).

Not a test: it prints a table (and, with --json, one JSON document as the last stdout line; progress goes
to stderr) and asserts nothing about timing. Everything runs on 127.0.0.1 in one run, on this machine:

- the movie: --frames (3,000) synthetic 640x360 JPEG frames at 24 fps, made and stored the way
  bench/playback.py makes its movies (the project's movie store), and exported once (`vod media export`'s
  code) as one MJPEG AVI with exactly the stored frames: that AVI is the file the mirrors serve;
- aria2's side: 4 nginx mirrors of that AVI, each its own process tree (`nginx -p DIR -c DIR/nginx.conf`,
  `daemon off`, master + 1 worker, pid/error/access logs in the run's directory, listening on 127.0.0.1
  only, run as this user), every response capped at C by `limit_rate`; `aria2c -x4 -s4 -k1M
  --disk-cache=0 URI1 URI2 URI3 URI4`;
- vod's side: three `vod-coordinator` replicas and 4 `vod-server --rate-limit C` on the same store
  (bench/playback.py's System), and `vod-client play MOVIE --fast --no-cache --output OUT.avi --json
  --trace T.jsonl`.

Fairness of the cap (the output says it again, with what was measured). Three things, checked in every run:
- per mirror, not per connection: nginx's `limit_rate` caps each response, and `-x4` lets aria2 open up to 4
  connections per server. Every mirror of the main rows also has `limit_conn` 1 keyed by its port
  (`limit_conn_zone $server_port`; a second simultaneous request gets a 503), so it serves one response at a
  time, like a `vod-server`, whose `--rate-limit` is one token bucket over all its streams (burst
  max(C/10, 64 KiB)). What aria2 does with -x4 -s4 and 4 URIs (access logs): one connection per mirror; when
  a mirror dies it asks each survivor for a second connection (503s: without limit_conn it would get 2C
  there) and then fetches the dead mirror's range over the survivors' keep-alive connections as their own
  segments end; the download completes with no error.
- nginx's bursts: `limit_rate` lets a response have sent limit_rate x (whole seconds elapsed + 1) and, with
  nginx's default sendfile_max_chunk (2m), sends that allowance in one go and then waits: each response
  gets a second's worth at once (measured: 1 MiB range requests served in 0 ms), then one burst a second,
  so a download ends on a whole-second boundary (7.1 s where C gives 7.5). In the main rows every mirror
  has `sendfile_max_chunk` C x 40 ms: nginx then sends at most that much per write and waits its time at
  limit_rate (40 ms) after each one, a smooth C with a 40 ms burst (a vod-server's bucket allows C/10).
  The table shows the rate each source carried (nginx access logs, vod traces). An extra row ("bursty")
  runs nginx's defaults (limit_rate = C, sendfile_max_chunk 2m), still one response at a time.
- host names: aria2's -x counts connections per host name; the 4 mirrors are 127.0.0.1 spelled 4 ways
  (127.0.0.1, 127.1, 2130706433, 0x7f000001; each resolves to 127.0.0.1, checked at start), so aria2 sees
  4 servers, as with 4 real mirrors (with one name -x4 would mean 4 connections to all of them together).
An extra row, labelled UNFAIR, runs aria2 -x4 -s16 against the same mirrors on a port with no `limit_conn`
(the smooth limit_rate = C per response only): up to 4 connections, so 4C, per mirror.
`-k1M` (min split size; aria2's default 20M would split this ~48 MB file in 2, not 4) and `--disk-cache=0`
(each received block goes to the file at once, for the first-frame measurement) are the only changes from
aria2's defaults besides file names and logging.

Measured, all from process spawn (`time.time()` just before the Popen):
- complete: spawn -> process exit (aria2c exits when the file is complete; vod-client when every frame
  is in, the AVI finished and renamed, CDONE sent). vod's "last frame" (spawn -> the trace's last frame
  event) is shown too;
- first playable frame: vod: the trace's (epoch times) frame 0 received (checksum verified, ready to
  play); aria2: the first moment (polled every 5 ms) the file being downloaded holds bytes 0 through the
  end of frame 0's '00dc' chunk identical to the source AVI (RIFF and AVI headers, then frame 0): what a
  player reading the file needs to show frame 0;
- one source SIGKILLed at 30%: when the downloader's TCP sockets have received 30% of the bytes
  (`ss -tie` tcp_info bytes_received summed over the sockets in /proc/PID/fd, polled every 20 ms; the same
  for both tools; the table shows the share of the bytes at the kill), SIGKILL the second mirror's whole
  process group (nginx master and worker) or the second server (sorted by id) of the client's strategy
  (from the trace's strategy line). Then: complete, and intact: aria2: SHA-256 of the downloaded file ==
  the source AVI's; vod: every frame of the output AVI has the SHA-256 of the store's frame
  (bench/recovery.py's check_output), in order, none missing;
- the clean rows are checked the same way. Each row runs --runs (3) times, rows interleaved (the order of
  aria2 and vod alternates between runs); the table shows medians (min..max) and ratios vod / aria2 of the
  medians (target: <= 1.0), and, for information, the same ratio of first frame -> complete (the
  downloader's start-up left out: a Python client's interpreter start and imports against a C program's).
  A run that fails (non-zero exit or output not intact) is listed and left out of the "complete" medians.

Usage: .venv/bin/python bench/peer.py [--rate 1.6M] [--frames 3000] [--runs 3] [--no-extra]
       [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from playback import FPS, HOST, SIZE, System, _unlink, median  # noqa: E402
from recovery import check_output, read_trace  # noqa: E402
from benchutil import compile_bytecode, json_safe, log, stored_current, wait_until  # noqa: E402
from vod.media.ingest import export  # noqa: E402
from vod.media.store import MovieStore  # noqa: E402
from vod.media.synthetic import synthetic_jpegs  # noqa: E402
from vod.procs import _die_with_parent, console_script, free_port  # noqa: E402
from vod.server.cli import parse_rate  # noqa: E402

SOURCES = 4
KILL_FRACTION = 0.3
SMOOTH_MS = 40  # nginx's wait after each write in the main rows (sendfile_max_chunk = C x this)
VICTIM = 1  # the second mirror / the second server of the strategy (sorted by id)
DEPS = ("nginx", "aria2:aria2c")
ARIA2_FAIR = ["-x4", "-s4", "-k1M"]
ARIA2_UNFAIR = ["-x4", "-s16", "-k1M"]
CLIENT_TIMEOUT = 180.0
ACCESS_RE = re.compile(r'^(?P<end>\d+\.\d+) (?P<port>\d+) (?P<status>\d+) (?P<bytes>\d+) (?P<rt>\d+\.\d+) '
                       r'"(?P<range>[^"]*)"$')

# Four spellings of 127.0.0.1: aria2's -x (connections per server) counts per host name, so with every mirror
# at "127.0.0.1" -x4 would mean 4 connections to all mirrors together; with these it sees 4 servers, as with
# 4 real mirrors, while every connection still goes to 127.0.0.1 (checked at start).
HOST_SPELLINGS = ("127.0.0.1", "127.1", "2130706433", "0x7f000001")

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format peer '$msec $server_port $status $body_bytes_sent $request_time "$http_range"';
    access_log {dir}/access.log peer;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    types {{ video/x-msvideo avi; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    limit_conn_zone $server_port zone=per_mirror:1m;
    server {{  # main rows: one response at a time, C, smooth (a write of at most C x 40 ms, then 40 ms)
        listen {host}:{ports[fair]};
        root {root};
        limit_rate {rate};
        sendfile_max_chunk {chunk};
        limit_conn per_mirror 1;
        limit_conn_status 503;
    }}
    server {{  # extra row "bursty": one response at a time, limit_rate = C with nginx's default 2m chunks
        listen {host}:{ports[bursty]};
        root {root};
        limit_rate {rate};
        limit_conn per_mirror 1;
        limit_conn_status 503;
    }}
    server {{  # extra row "unfair": C (smooth) per connection, any number of connections
        listen {host}:{ports[unfair]};
        root {root};
        limit_rate {rate};
        sendfile_max_chunk {chunk};
    }}
}}
"""


# -- system packages ------------------------------------------------------------------------------------------


def ensure_tools() -> str | None:
    """nginx and aria2c on PATH (installed from Debian where missing); None, or what went wrong."""
    script = os.path.join(ROOT, "scripts", "ensure-system-deps")
    try:
        r = subprocess.run([script, *DEPS], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{script} {' '.join(DEPS)} failed: {err}"
    missing = [d.split(":")[-1] for d in DEPS if shutil.which(d.split(":")[-1]) is None]
    if r.returncode != 0 or missing:
        return (f"{script} {' '.join(DEPS)} exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}; "
                f"missing: {', '.join(missing) or 'none'}")
    return None


# -- the movie --------------------------------------------------------------------------------------------------


class Movie:
    """The store's movie, its AVI for the mirrors, and what the checks compare against."""

    def __init__(self, workdir: str, frames: int):
        self.id = f"peer-{frames}"
        self.store = MovieStore(os.path.join(workdir, "store"))
        if not stored_current(self.store, self.id):
            t0 = time.monotonic()
            self.store.add(self.id, synthetic_jpegs(frames, SIZE, FPS), fps=FPS, width=SIZE[0], height=SIZE[1],
                           source="synthetic", source_codec="MJPG", keeps_source_jpeg=True, jpeg_quality=85)
            log(f"built movie {self.id}: {frames} frames in {time.monotonic() - t0:.1f} s")
        self.www = os.path.join(workdir, "www")
        self.avi = os.path.join(self.www, f"{self.id}.avi")
        with self.store.open(self.id) as movie:
            self.frames = len(movie)
            self.frame_bytes = movie.info.frames_bytes
            self.sizes = [movie.entry(i)[1] for i in range(self.frames)]
            self.sha256 = [movie.frame_sha256(i) for i in range(self.frames)]
            frame0 = movie.frame(0)
        if not os.path.exists(self.avi):
            os.makedirs(self.www, exist_ok=True)
            export(self.store, self.id, self.avi)
            log(f"exported {self.avi}")
        self.avi_bytes = os.path.getsize(self.avi)
        with open(self.avi, "rb") as f:
            self.avi_sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        self.first_frame_end = first_chunk_end(self.avi, frame0)
        with open(self.avi, "rb") as f:
            self.prefix = f.read(self.first_frame_end)


def first_chunk_end(path: str, frame0: bytes) -> int:
    """The file offset just past frame 0's bytes: the first chunk of the AVI's 'movi' list (checked to hold
    exactly the store's frame 0)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    movi = head.find(b"movi")
    if movi < 0:
        raise RuntimeError(f"{path}: no 'movi' list in the first MiB")
    pos = movi + 4
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid[2:] in (b"dc", b"db"):
            if size < len(frame0) or not head[pos + 8:pos + 8 + size].startswith(frame0):
                raise RuntimeError(f"{path}: the first video chunk is not the store's frame 0")
            return pos + 8 + len(frame0)
        pos += 8 + size + (size & 1)
    raise RuntimeError(f"{path}: no video chunk in the first MiB")


# -- nginx mirrors --------------------------------------------------------------------------------------------


class Mirror:
    """One nginx process tree (master + worker, its own process group) serving the movie's directory."""

    def __init__(self, rundir: str, index: int, root: str, rate: int):
        self.name = f"mirror{index + 1}"
        self.host = HOST_SPELLINGS[index % len(HOST_SPELLINGS)]
        self.dir = os.path.join(rundir, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.ports = {variant: free_port() for variant in ("fair", "bursty", "unfair")}
        self.port = self.ports["fair"]
        user = ""
        if os.geteuid() == 0:  # a root master would hand the worker to 'nobody': keep it this user's
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(user=user, dir=self.dir, host=HOST, ports=self.ports, root=root,
                                      rate=rate, chunk=smooth_chunk(rate)))
        self.proc: subprocess.Popen | None = None
        self.access_log = os.path.join(self.dir, "access.log")
        self.access_seen = 0  # bytes of the access log already read

    def start(self) -> None:
        out = open(os.path.join(self.dir, "nginx.out"), "ab")
        argv = ["nginx", "-p", self.dir, "-c", self.conf, "-e", os.path.join(self.dir, "error.log")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                     preexec_fn=_die_with_parent)  # the master; stop() and kill() take its group
        out.close()

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: nginx exited {self.proc.returncode}; see {self.dir}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(listening, 10, f"{self.name} (nginx) to listen on {HOST}:{self.port}", interval=0.02)

    def uri(self, name: str, variant: str) -> str:
        return f"http://{self.host}:{self.ports[variant]}/{name}"

    def kill(self) -> None:
        """SIGKILL the whole tree (the master and its worker share the process group it leads)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # nginx: fast shutdown of master and workers
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:  # a worker outliving its master would keep serving: make sure the group is gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)

    def new_requests(self) -> list[dict]:
        """Access-log lines written since the last call (a killed mirror never logs its open response)."""
        try:
            with open(self.access_log, "rb") as f:
                f.seek(self.access_seen)
                data = f.read()
        except OSError:
            return []
        self.access_seen += len(data)
        out = []
        for line in data.decode("latin-1").splitlines():
            m = ACCESS_RE.match(line.strip())
            if m:
                out.append({"mirror": self.name, "end": float(m["end"]), "port": int(m["port"]),
                            "status": int(m["status"]), "bytes": int(m["bytes"]), "seconds": float(m["rt"]),
                            "range": m["range"]})
        return out


def mirror_fairness(requests: list[dict]) -> dict:
    """From access logs: the most concurrent data-carrying responses of any one mirror, the 503s, rates."""
    data = [r for r in requests if r["status"] in (200, 206) and r["bytes"] > 0]
    most = 0
    for name in {r["mirror"] for r in data}:
        # $msec and $request_time have millisecond resolution: a response starting in the millisecond the
        # previous one ended (keep-alive) does not overlap it
        events = sorted([(r["end"] - r["seconds"] + 0.0015, 1) for r in data if r["mirror"] == name] +
                        [(r["end"], -1) for r in data if r["mirror"] == name], key=lambda e: (e[0], e[1]))
        level = 0
        for _, step in events:
            level += step
            most = max(most, level)
    big = [r["bytes"] / r["seconds"] for r in data if r["bytes"] >= (1 << 20) and r["seconds"] > 0]
    carried = []  # per mirror: all it sent / from its first response's start to its last one's end
    for name in {r["mirror"] for r in data}:
        mine = [r for r in data if r["mirror"] == name]
        span = max(r["end"] for r in mine) - min(r["end"] - r["seconds"] for r in mine)
        if span > 1.0:
            carried.append(sum(r["bytes"] for r in mine) / span)
    return {"responses": len(data), "refused_503": sum(r["status"] == 503 for r in requests),
            "max_concurrent_per_mirror": most, "response_rate_median": median(big),
            "response_rate_max": max(big, default=float("nan")), "mirror_rate_median": median(carried),
            "mirror_rate_max": max(carried, default=float("nan"))}


# -- watching a download -----------------------------------------------------------------------------------------


def socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def bytes_received(pid: int) -> int:
    """tcp_info bytes_received summed over the process's established TCP sockets (`ss -tie`)."""
    inodes = socket_inodes(pid)
    if not inodes:
        return 0
    try:
        text = subprocess.run(["ss", "-tinHe", "state", "established"], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    total, mine = 0, False
    for line in text.splitlines():
        if line and not line[0].isspace():
            m = re.search(r"\bino:(\d+)", line)
            mine = bool(m and m.group(1) in inodes)
        elif mine:
            m = re.search(r"\bbytes_received:(\d+)", line)
            if m:
                total += int(m.group(1))
            mine = False
    return total


class Watch:
    """Polls a downloader until it exits (bounded): its first frame, and a kill at a fraction of the bytes."""

    def __init__(self, proc: subprocess.Popen, t_spawn: float, tag: str, rundir: str, *,
                 first_frame=None, kill_bytes: int | None = None, kill=None, timeout: float = CLIENT_TIMEOUT):
        self.proc, self.t_spawn, self.tag, self.rundir = proc, t_spawn, tag, rundir
        self.first_frame, self.kill_bytes, self.kill = first_frame, kill_bytes, kill
        self.timeout = timeout
        self.t_first: float | None = None
        self.t_kill: float | None = None
        self.bytes_at_kill: int | None = None
        self.victim: str | None = None

    def run(self) -> float:
        deadline = time.monotonic() + self.timeout
        next_bytes = 0.0
        try:
            while self.proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.tag} ran over {self.timeout:.0f} s; see {self.rundir}")
                if self.first_frame is not None and self.t_first is None and self.first_frame():
                    self.t_first = time.time()
                if self.kill is not None and self.t_kill is None and time.monotonic() >= next_bytes:
                    next_bytes = time.monotonic() + 0.02
                    got = bytes_received(self.proc.pid)
                    if got >= self.kill_bytes:
                        victim = self.kill()
                        if victim is not None:
                            self.t_kill, self.bytes_at_kill, self.victim = time.time(), got, victim
                time.sleep(0.005)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        return time.time()


# -- one aria2 download ----------------------------------------------------------------------------------------


def run_aria2(mirrors: list[Mirror], movie: Movie, rundir: str, tag: str, *, variant: str = "fair",
              kill: bool = False) -> dict:
    out_dir = os.path.join(rundir, tag)
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.basename(movie.avi)
    path = os.path.join(out_dir, name)
    argv = ["aria2c", "--no-conf", *(ARIA2_UNFAIR if variant == "unfair" else ARIA2_FAIR), "--disk-cache=0",
            "-d", out_dir, "-o", name, "--allow-overwrite=true", "--auto-file-renaming=false", "--summary-interval=0",
            "--console-log-level=warn", "--log", os.path.join(out_dir, "aria2.log"), "--log-level=info",
            *(m.uri(name, variant) for m in mirrors)]
    for m in mirrors:
        m.new_requests()  # skip what earlier runs logged

    def first_frame() -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(movie.first_frame_end) == movie.prefix
        except OSError:
            return False

    def kill_mirror() -> str:
        mirrors[VICTIM].kill()
        return mirrors[VICTIM].name

    with open(os.path.join(out_dir, "stdout"), "wb") as out:
        t_spawn = time.time()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    watch = Watch(proc, t_spawn, tag, out_dir, first_frame=first_frame,
                  kill_bytes=int(KILL_FRACTION * movie.avi_bytes) if kill else None,
                  kill=kill_mirror if kill else None)
    t_exit = watch.run()
    intact = False
    if proc.returncode == 0 and os.path.exists(path):
        with open(path, "rb") as f:
            intact = hashlib.file_digest(f, "sha256").hexdigest() == movie.avi_sha256
    requests = [r for m in mirrors for r in m.new_requests()]
    run = {"tool": "aria2", "tag": tag, "exit": proc.returncode, "complete_s": t_exit - t_spawn,
           "first_frame_s": None if watch.t_first is None else watch.t_first - t_spawn,
           "killed": watch.victim, "kill_s": None if watch.t_kill is None else watch.t_kill - t_spawn,
           "bytes_at_kill": watch.bytes_at_kill, "intact": intact,
           "check": "SHA-256 of the file == the source AVI's" if intact else "file missing or SHA-256 differs",
           "fairness": mirror_fairness(requests), "requests": requests, "dir": out_dir}
    if kill:
        mirrors[VICTIM].stop()
        mirrors[VICTIM].start()  # for the next run
    _unlink(path)
    return run


# -- one vod download ------------------------------------------------------------------------------------------


def run_vod(system: System, domain: str, movie: Movie, rundir: str, tag: str, *, kill: bool = False) -> dict:
    out_dir = os.path.join(rundir, tag)
    os.makedirs(out_dir, exist_ok=True)
    output, trace = os.path.join(out_dir, "out.avi"), os.path.join(out_dir, "trace.jsonl")
    argv = console_script("vod-client") + ["play", movie.id, "--domain", domain, "--coordinators",
                                           system.coordinators, "--id", f"peer-{tag}", "--fast", "--no-cache",
                                           "--output", output, "--json", "--trace", trace, "--log-level", "WARNING"]

    def kill_server() -> str | None:
        strategies = [e for e in read_trace(trace) if e.get("event") == "strategy"]
        if not strategies:
            return None  # bytes from the coordinators only: no strategy yet
        victim = sorted(strategies[0]["assignments"])[VICTIM]
        system.group.kill(victim)
        return victim

    stdout_path = os.path.join(out_dir, "stdout")
    with open(stdout_path, "wb") as out, open(os.path.join(out_dir, "stderr"), "wb") as err:
        t_spawn = time.time()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=system.env,
                                start_new_session=True)
    watch = Watch(proc, t_spawn, tag, out_dir, kill_bytes=int(KILL_FRACTION * movie.frame_bytes) if kill else None,
                  kill=kill_server if kill else None)
    t_exit = watch.run()
    try:
        summary = json.loads(open(stdout_path, encoding="utf-8").read().strip().splitlines()[-1])
    except (IndexError, ValueError):
        summary = {}
    events = read_trace(trace)
    frames = [e for e in events if e.get("event") == "frame"]
    first = next((e["t"] for e in frames if e["index"] == 0), None)
    header = next((e["t"] for e in events if e.get("event") == "header"), None)
    per_server: dict[str, list] = {}
    for e in frames:
        s = per_server.setdefault(e["server"], [e["t"], e["t"], 0])
        s[1], s[2] = e["t"], s[2] + movie.sizes[e["index"]]
    rates = [b / (t1 - t0) for t0, t1, b in per_server.values() if t1 > t0 and b >= (1 << 20)]
    intact, check = (False, f"no output: {summary.get('frames_received')}/{movie.frames} frames received, state "
                            f"{summary.get('state')}; see {out_dir}/stderr")
    if proc.returncode == 0 and os.path.exists(output):
        intact, check = check_output(output, movie.sha256)
    run = {"tool": "vod", "tag": tag, "exit": proc.returncode, "complete_s": t_exit - t_spawn,
           "first_frame_s": None if first is None else first - t_spawn,
           "start_to_first_frame_s": None if first is None or header is None else first - header,
           "last_frame_s": frames[-1]["t"] - t_spawn if frames else None,
           "killed": watch.victim, "kill_s": None if watch.t_kill is None else watch.t_kill - t_spawn,
           "bytes_at_kill": watch.bytes_at_kill, "intact": intact, "check": check,
           "frames_received": summary.get("frames_received"), "duplicates": summary.get("duplicates"),
           "per_server": summary.get("per_server"), "revisions": max((e.get("revision", 1) for e in events
                                                                       if e.get("event") == "strategy"), default=0),
           "server_rate_median": median(rates), "server_rate_max": max(rates, default=float("nan")),
           "dir": out_dir}
    _unlink(output)
    return run


# -- the table -----------------------------------------------------------------------------------------------


ROWS = [("clean", "aria2", "4 mirrors, aria2c -x4 -s4 (fair)"),
        ("clean", "vod", "4 vod-servers, vod-client --fast"),
        ("kill", "aria2", "the same, mirror 2 SIGKILLed at 30%"),
        ("kill", "vod", "the same, server 2 SIGKILLed at 30%"),
        ("bursty", "aria2", "extra: clean, nginx's bursty default chunks"),
        ("unfair", "aria2", "extra, UNFAIR: -x4 -s16, no limit_conn")]


def stat(runs: list[dict], key: str) -> dict:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return {"median": median(vals), "min": min(vals, default=float("nan")), "max": max(vals, default=float("nan")),
            "n": len(vals)}


def summarize(runs: list[dict], movie: Movie) -> dict:
    at_kill = [r["bytes_at_kill"] / (movie.avi_bytes if r["tool"] == "aria2" else movie.frame_bytes)
               for r in runs if r.get("bytes_at_kill")]
    whole = [r for r in runs if r["intact"] and r["exit"] == 0]  # a failed download completed nothing
    for r in whole:
        if r.get("first_frame_s") is not None:
            r["after_first_frame_s"] = r["complete_s"] - r["first_frame_s"]
    return {"runs": len(runs), "complete_s": stat(whole, "complete_s"), "last_frame_s": stat(whole, "last_frame_s"),
            "after_first_frame_s": stat(whole, "after_first_frame_s"),
            **{k: stat(runs, k) for k in ("first_frame_s", "start_to_first_frame_s", "kill_s")},
            "failed": [f"{r['tag']}: exit {r['exit']}, {r['check']}" for r in runs if r not in whole],
            "fraction_at_kill": median(at_kill), "intact": sum(bool(r["intact"]) for r in runs),
            "exit_ok": sum(r["exit"] == 0 for r in runs)}


def print_table(doc: dict) -> None:
    m, rate = doc["movie"], doc["rate"]
    print(f"\npeer comparison: movie '{m['id']}', {m['frames']} frames 640x360 @ {FPS:g} fps: AVI "
          f"{m['avi_bytes'] / 1e6:.1f} MB (frames {m['frame_bytes'] / 1e6:.1f} MB); {SOURCES} sources, each capped at "
          f"C = {rate / 1e6:g} MB/s (4C = {SOURCES * rate / 1e6:g} MB/s); medians of {doc['runs']} interleaved runs")
    print(f"   ideal at 4C: clean {m['avi_bytes'] / (SOURCES * rate):.2f} s; one source lost at 30% (the rest at 3C) "
          f"{m['avi_bytes'] * (KILL_FRACTION / (SOURCES * rate) + (1 - KILL_FRACTION) / ((SOURCES - 1) * rate)):.2f} s")
    print(f"   {'tool: row':50} {'first frame s':>13} {'complete s':>10} {'(min..max)':>12} {'MB/s':>5} "
          f"{'killed at':>15} {'intact':>6}")
    for row in doc["rows"]:
        s = row["summary"]
        c, f = s["complete_s"], s["first_frame_s"]
        kill = f"{s['kill_s']['median']:5.2f} s ({s['fraction_at_kill']:3.0%})" if s["kill_s"]["n"] else ""
        spread = f"{c['min']:.2f}..{c['max']:.2f}"
        print(f"   {row['tool'] + ': ' + row['label']:50} {f['median']:13.3f} {c['median']:10.2f} {spread:>12} "
              f"{m['avi_bytes'] / c['median'] / 1e6:5.2f} {kill:>15} {s['intact']}/{s['runs']}")
        if row["tool"] == "vod" and s["last_frame_s"]["n"]:
            print(f"   {'':5}(vod: spawn -> last frame received {s['last_frame_s']['median']:.2f} s; client started "
                  f"(trace header) -> frame 0 {s['start_to_first_frame_s']['median']:.3f} s)")
    failed = [f for row in doc["rows"] for f in row["summary"]["failed"]]
    if failed:
        print(f"   FAILED runs (left out of the 'complete' medians): {'; '.join(failed)}")
    print("   ratios vod / aria2 (medians; target <= 1.0; the lines with start-up left out are for information):")
    for r in doc["ratios"]:
        verdict = "" if r["measure"] == "after_first_frame_s" else "met" if r["ratio"] <= 1.0 else "MISSED"
        print(f"     {r['what']:58} {r['ratio']:6.2f}  ({r['vod']:.3f} s / {r['aria2']:.3f} s)  {verdict}")
    fair = doc["fairness"]
    print(f"   how the cap is made fair: each nginx mirror serves one response at a time (limit_conn 1 keyed by its "
          f"port: a second simultaneous request\n   gets 503) at limit_rate {doc['nginx_limit_rate']:,} B/s with "
          f"sendfile_max_chunk {doc['nginx_sendfile_max_chunk']:,} (a write, then {SMOOTH_MS} ms: smooth; nginx's "
          f"default 2m chunks\n   send a second's allowance per burst, a head start per response: the 'bursty' row). "
          f"vod-server --rate-limit C is one token bucket\n   for all its streams (burst max(C/10, 64 KiB)). "
          f"aria2's -x "
          f"counts connections per host name: the 4 mirrors are 127.0.0.1 spelled 4 ways\n   "
          f"({', '.join(HOST_SPELLINGS)}), so it sees 4 servers; -s4 then opens one connection per mirror.")
    print("   measured (nginx access logs / vod traces): rate a source carried = its bytes over its busy span, "
          "median (max); concurrent = most simultaneous responses of one mirror")
    for key, label in (("fair", "main aria2 rows"), ("bursty", "extra: bursty nginx"), ("unfair", "extra: UNFAIR")):
        if key in fair:
            f = fair[key]
            print(f"     {label:24} {f['mirror_rate_median'] / 1e6:5.2f} MB/s ({f['mirror_rate_max'] / 1e6:.2f}) "
                  f"per mirror; "
                  f"concurrent <= {f['max_concurrent']}; {f['refused_503']} requests refused (503) by limit_conn")
    print(f"     {'vod rows':24} {fair['vod_server_rate_median'] / 1e6:5.2f} MB/s "
          f"({fair['vod_server_rate_max'] / 1e6:.2f}) "
          f"per server (frame bytes from its first to its last frame at the client)")
    print("   first frame: vod = the trace's frame 0 received (checksum verified); aria2 = the file holds bytes 0 "
          "through the end of frame 0 (polled every 5 ms);\n   complete = spawn -> exit; killed at = spawn -> SIGKILL, "
          "when the downloader's sockets had received >= 30% of the bytes (ss; in % the bytes then);\n   "
          "intact: aria2 = SHA-256 "
          "of the file, vod = SHA-256 of every frame of the output AVI, against the source")


def build_doc(runs: list[dict], movie: Movie, args, rate: float) -> dict:
    rows = []
    for kind, tool, label in ROWS:
        these = [r for r in runs if r["kind"] == kind and r["tool"] == tool]
        if these:
            rows.append({"kind": kind, "tool": tool, "label": label, "summary": summarize(these, movie)})
    by = {(r["kind"], r["tool"]): r["summary"] for r in rows}
    ratios = []
    for kind, aria2_kind, key, what in (
            ("clean", "clean", "complete_s", "clean: complete"),
            ("clean", "clean", "first_frame_s", "clean: first frame"),
            ("kill", "kill", "complete_s", "source killed at 30%: complete"),
            ("clean", "clean", "after_first_frame_s", "clean: first frame -> complete (start-up left out)"),
            ("kill", "kill", "after_first_frame_s", "killed at 30%: first frame -> complete (start-up left out)"),
            ("clean", "bursty", "complete_s", "clean: complete vs bursty nginx (extra)")):
        if (kind, "vod") in by and (aria2_kind, "aria2") in by:
            v, a = by[(kind, "vod")][key]["median"], by[(aria2_kind, "aria2")][key]["median"]
            ratios.append({"what": what, "kind": kind, "aria2_kind": aria2_kind, "measure": key, "vod": v, "aria2": a,
                           "ratio": v / a})

    def fairness(kinds):
        fs = [r["fairness"] for r in runs if r["tool"] == "aria2" and r["kind"] in kinds]
        return {"max_concurrent": max((f["max_concurrent_per_mirror"] for f in fs), default=0),
                "refused_503": sum(f["refused_503"] for f in fs),
                "mirror_rate_median": median([f["mirror_rate_median"] for f in fs]),
                "mirror_rate_max": max((f["mirror_rate_max"] for f in fs), default=float("nan")),
                "response_rate_median": median([f["response_rate_median"] for f in fs])}
    vod_rates = [r["server_rate_median"] for r in runs if r["tool"] == "vod"]
    fair = {"fair": fairness(("clean", "kill")), "vod_server_rate_median": median(vod_rates),
            "vod_server_rate_max": max((r["server_rate_max"] for r in runs if r["tool"] == "vod"),
                                       default=float("nan"))}
    for kind in ("bursty", "unfair"):
        if any(r["kind"] == kind for r in runs):
            fair[kind] = fairness((kind,))
    return {"v": 1, "bench": "peer", "rate": rate, "runs": args.runs, "sources": SOURCES,
            "kill_fraction": KILL_FRACTION, "aria2_args": ARIA2_FAIR + ["--disk-cache=0"],
            "aria2_unfair_args": ARIA2_UNFAIR + ["--disk-cache=0"], "host_spellings": list(HOST_SPELLINGS),
            "nginx_limit_rate": int(rate), "nginx_sendfile_max_chunk": smooth_chunk(rate),
            "movie": {"id": movie.id, "frames": movie.frames, "avi_bytes": movie.avi_bytes,
                      "frame_bytes": movie.frame_bytes, "first_frame_end": movie.first_frame_end},
            "rows": rows, "ratios": ratios, "fairness": fair,
            "all_runs": [{k: v for k, v in r.items() if k != "requests"} for r in runs]}


def smooth_chunk(rate: float) -> int:
    """nginx's sendfile_max_chunk for a smooth limit_rate: after each write nginx waits (bytes x 1000 / rate)
    whole milliseconds; C x 40 ms, rounded up, makes that exactly 40 ms."""
    return math.ceil(rate * SMOOTH_MS / 1000)


# -- main ------------------------------------------------------------------------------------------------------


def versions() -> dict:
    out = {}
    for name, argv in (("nginx", ["nginx", "-v"]), ("aria2c", ["aria2c", "--version"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out[name] = (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out[name] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="1.6M", help="C: each source's cap (nginx limit_rate, vod-server --rate-limit)")
    ap.add_argument("--frames", type=int, default=3000, help="frames of the movie (640x360, 24 fps, ~16 KB each)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each row (interleaved); medians are shown")
    ap.add_argument("--no-extra", dest="extra", action="store_false",
                    help="leave out the two extra aria2 rows: nginx's default (bursty) chunks, and the unfair one "
                         "(-s16, C per connection, no per-mirror limit)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vod-bench-peer"),
                    help="the movie (store and AVI) is built once and kept here; each run's files go in a fresh "
                         "subdirectory")
    ap.add_argument("--keep", action="store_true", help="keep this run's logs, traces and nginx configs")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON document (last line)")
    args = ap.parse_args()
    compile_bytecode()
    if args.runs < 1 or args.frames < 24:
        ap.error("--runs must be >= 1 and --frames >= 24")
    try:
        rate = parse_rate(args.rate)
    except Exception as err:  # noqa: BLE001 - UsageError: say it the argparse way
        ap.error(str(err))

    wrong = [h for h in HOST_SPELLINGS if socket.getaddrinfo(h, 80, socket.AF_INET)[0][4][0] != HOST]
    if wrong:
        print(f"bench/peer.py: {', '.join(wrong)} do not resolve to {HOST} here", file=sys.stderr)
        return 1
    problem = ensure_tools()
    if problem:
        print(f"bench/peer.py needs nginx and aria2c and could not get them: {problem}\n"
              f"install them (Debian: apt-get install nginx aria2) and run it again", file=sys.stderr)
        return 3

    started = time.monotonic()
    load_before = os.getloadavg()
    os.makedirs(args.workdir, exist_ok=True)
    movie = Movie(args.workdir, args.frames)
    rundir = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    system = System(rundir, movie.store.root)
    mirrors = [Mirror(rundir, i, movie.www, int(rate)) for i in range(SOURCES)]
    runs: list[dict] = []
    try:
        for m in mirrors:
            m.start()
        log(f"{SOURCES} nginx mirrors up (ports {', '.join(str(m.port) for m in mirrors)}; configs in {rundir})")
        system.start_coordinators("peer")
        system.start_servers("clean", SOURCES, movie.id, rate=args.rate)
        log(f"coordinators {system.coordinators} and {SOURCES} servers up")
        for n in range(args.runs):
            system.start_servers(f"kill{n + 1}", SOURCES, movie.id, rate=args.rate)  # fresh: one will die
            steps = [("clean", "aria2"), ("clean", "vod"), ("kill", "aria2"), ("kill", "vod")]
            if n % 2:
                steps = [("clean", "vod"), ("clean", "aria2"), ("kill", "vod"), ("kill", "aria2")]
            if args.extra:
                steps += [("bursty", "aria2"), ("unfair", "aria2")]
            for kind, tool in steps:
                tag = f"{kind}-{tool}-{n + 1}"
                if tool == "aria2":
                    variant = kind if kind in ("bursty", "unfair") else "fair"
                    run = run_aria2(mirrors, movie, rundir, tag, variant=variant, kill=kind == "kill")
                else:
                    run = run_vod(system, "clean" if kind == "clean" else f"kill{n + 1}", movie, rundir, tag,
                                  kill=kind == "kill")
                run["kind"] = kind
                runs.append(run)
                ff = run["first_frame_s"]
                log(f"run {n + 1}/{args.runs} {kind:7} {tool:5}: exit {run['exit']}, "
                    f"complete {run['complete_s']:.2f} s, first frame {'-' if ff is None else f'{ff * 1000:.0f} ms'}"
                    + (f", killed {run['killed']} at {run['kill_s']:.2f} s" if run.get("killed") else "")
                    + f", intact {run['intact']} ({run['check']})")
            system.stop_servers(f"kill{n + 1}")
    finally:
        for m in mirrors:
            m.stop()
        system.stop_all()
    doc = build_doc(runs, movie, args, rate)
    doc["versions"] = versions()
    print_table(doc)
    doc["loadavg_before"] = load_before
    doc["loadavg_after"] = os.getloadavg()
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    print(f"\n({doc['wall_seconds']} s in all; load average before {load_before[0]:.2f}, after "
          f"{doc['loadavg_after'][0]:.2f} on {os.cpu_count()} cores; {doc['versions'].get('nginx')}, "
          f"{doc['versions'].get('aria2c')}{f'; files kept in {rundir}' if args.keep else ''})")
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    if args.json:
        print(json.dumps(json_safe(doc), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
