"""A real three-replica coordinator group on 127.0.0.1, with fault injection as the main feature.

In the spirit of Tahoe-LAFS's `no_network` harness, but with real processes:
`Cluster` starts `vod-coordinator` processes (fresh mode-600 secret, one data
directory and one log file per replica under a base directory), and kills
(SIGKILL), pauses (SIGSTOP), resumes (SIGCONT) and restarts them (same data
directory, same ports). Every fault is recorded with its wall-clock time in
`events`, on the same clock (`time.time()`) as the `ROLE` lines the replicas log,
so a test can line the two up.

With `standbys=N` it also starts N `vod-coordinator --standby` replicas (ids
after the voters', e.g. c4), once the voters have a primary; they register with
the primary and wait to be recruited as voters. Kill, pause, resume and restart
take their ids as they take the voters'.

Every wait has a deadline. `stop_all()` SIGKILLs whatever is still running and
reaps it; the `cluster` fixture always calls it. As a second line of defence
each replica is started with PR_SET_PDEATHSIG=SIGKILL (Linux), so it dies even
when the test process itself is killed without running finalizers.

Used by tests/test_coordinator_integration.py and bench/failover.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import pytest

from vod.groups.probe import Probe
from vod.secrets import write_secret

HOST = "127.0.0.1"

# Started with `python -c` rather than the console script so that, on Linux, the
# replica asks to be SIGKILLed when its parent dies (and exits at once if the
# parent is already gone), before it does anything else.
_LAUNCHER = """\
import os, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != int(os.environ.get("VOD_CLUSTER_PARENT", os.getppid())):
        sys.exit(70)
from vod.coordinator.cli import main
sys.exit(main())
"""

ROLE_RE = re.compile(r"^(?P<t>\d+\.\d+) WARNING vod\.coordinator: ROLE (?P<role>acting-primary|not-primary) "
                     r"term=(?P<term>\d+) replica=(?P<replica>\S+)\s*$")


class RoleLine(NamedTuple):
    time: float
    replica: str
    role: str  # "acting-primary" or "not-primary"
    term: int


class Event(NamedTuple):
    time: float
    action: str  # start, kill, pause, paused, resume
    replica: str


class ClusterError(AssertionError):
    """A wait ran out or a replica misbehaved; the message carries the replicas' log tails."""


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct free ports: all bound to port 0 at once (so no duplicates), then released."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02,
             describe: Callable[[], str] | None = None):
    """Poll `predicate` until it returns something truthy; ClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}" +
                               (f"\n{describe()}" if describe else ""))
        time.sleep(interval)


@dataclass
class Replica:
    id: str
    raft: str
    listen: str
    data: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    paused: bool = False
    starts: int = 0
    standby: bool = False  # started with --standby (it may have been recruited as a voter since)
    admin_socket: Path | None = None  # its local admin socket, when the cluster has them
    _log_file: object = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, base: Path | str, size: int = 3, failure_timeout: float = 1.0, grace: float = 2.0,
                 log_level: str = "INFO", python: str = sys.executable, standbys: int = 0,
                 admin_sockets: Path | str | None = None, extra_args: Iterable[str] = ()):
        """`admin_sockets`: a directory where each replica also listens on coordinator-ID.sock (None:
        --no-admin-socket, so tests never touch the user's own socket directory); `extra_args` go to every
        replica."""
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.failure_timeout = failure_timeout
        self.grace = grace
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.secret_file = self.base / "secret"
        self.secret = write_secret(str(self.secret_file)).strip()
        ports = free_ports(2 * (size + standbys))
        self.replicas: dict[str, Replica] = {}
        for i in range(size + standbys):
            rid = f"c{i + 1}"
            self.replicas[rid] = Replica(rid, f"{HOST}:{ports[2 * i]}", f"{HOST}:{ports[2 * i + 1]}",
                                         self.base / f"data-{rid}", self.base / f"{rid}.log", standby=i >= size,
                                         admin_socket=Path(admin_sockets) / f"coordinator-{rid}.sock"
                                         if admin_sockets else None)
        self.events: list[Event] = []

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return list(self.replicas)

    @property
    def standby_ids(self) -> list[str]:
        """The replicas started as standbys."""
        return [r.id for r in self.replicas.values() if r.standby]

    @property
    def coordinators(self) -> list[str]:
        """Listen addresses of all replicas (standbys last), in id order."""
        return [r.listen for r in self.replicas.values()]

    def listen(self, rid: str) -> str:
        return self.replicas[rid].listen

    def id_of_listen(self, addr: str) -> str | None:
        return next((r.id for r in self.replicas.values() if r.listen == addr), None)

    def pid(self, rid: str) -> int:
        proc = self.replicas[rid].proc
        assert proc is not None, f"{rid} was never started"
        return proc.pid

    def _event(self, action: str, rid: str) -> None:
        self.events.append(Event(time.time(), action, rid))

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, wait: float = 20.0) -> "Cluster":
        """Start every voter; wait until each accepts connections and one acts as primary. Then the standbys,
        until the primary has each on record."""
        voters = [rid for rid in self.replicas if rid not in self.standby_ids]
        try:
            for rid in voters:
                self.start_replica(rid, wait=0)
            for rid in voters:
                self.wait_listening(rid, wait)
            primary = self.wait_primary(wait)
            for rid in self.standby_ids:
                self.start_replica(rid, wait=wait)
            for rid in self.standby_ids:
                raft = self.replicas[rid].raft
                wait_for(lambda: (self.statuses([primary]).get(primary) or {}).get("replicas_table", {})
                         .get(raft, {}).get("standby"), wait, f"standby {rid} to register with {primary}",
                         interval=0.05, describe=self.describe)
        except BaseException:
            self.stop_all()
            raise
        return self

    def _command(self, r: Replica) -> list[str]:
        voters = [x for x in self.replicas.values() if not x.standby]
        if r.standby:  # restarted as a standby again, even if it was recruited as a voter meanwhile
            where = ["--standby", "--coordinators", ",".join(x.listen for x in voters)]
        else:
            where = ["--peers", ",".join(x.raft for x in voters)]
        local = ["--admin-socket", str(r.admin_socket)] if r.admin_socket else ["--no-admin-socket"]
        return [self.python, "-c", _LAUNCHER, "--id", r.id, "--raft", r.raft, *where,
                "--listen", r.listen, "--data", str(r.data), "--secret-file", str(self.secret_file),
                "--failure-timeout", str(self.failure_timeout), "--grace", str(self.grace),
                "--log-level", self.log_level, *local, *self.extra_args]

    def start_replica(self, rid: str, wait: float = 20.0) -> None:
        r = self.replicas[rid]
        assert not r.running, f"{rid} is already running"
        self._close_log(r)
        r._log_file = open(r.log_path, "ab", buffering=0)
        r.starts += 1
        r._log_file.write(f"# cluster: start #{r.starts} of {rid} at {time.time():.6f}\n".encode())
        env = dict(os.environ, VOD_CLUSTER_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
        env.pop("VOD_SECRET_FILE", None)
        r.proc = subprocess.Popen(self._command(r), stdin=subprocess.DEVNULL, stdout=r._log_file,
                                  stderr=subprocess.STDOUT, cwd=self.base, env=env, start_new_session=True)
        r.paused = False
        self._event("start", rid)
        if wait:
            self.wait_listening(rid, wait)

    def wait_listening(self, rid: str, timeout: float = 20.0) -> None:
        r = self.replicas[rid]
        host, port = r.listen.rsplit(":", 1)

        def accepting():
            if not r.running:
                raise ClusterError(f"{rid} exited with status {r.proc.returncode if r.proc else None}\n"
                                   f"{self.describe()}")
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(accepting, timeout, f"{rid} to listen on {r.listen}", interval=0.05, describe=self.describe)

    def kill(self, rid: str, timeout: float = 10.0) -> None:
        """SIGKILL, and reap (a stopped process dies from SIGKILL too)."""
        r = self.replicas[rid]
        if r.proc is None:
            return
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGKILL)
            try:
                r.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise ClusterError(f"{rid} (pid {r.proc.pid}) survived SIGKILL for {timeout:g}s") from None
            # Recorded once reaped: by then it certainly acts no more (an upper bound on its last action).
            self._event("kill", rid)
        r.paused = False
        self._close_log(r)

    def pause(self, rid: str, timeout: float = 5.0) -> float:
        """SIGSTOP; returns the time (time.time()) by which every thread of it was seen stopped."""
        r = self.replicas[rid]
        assert r.running, f"{rid} is not running"
        self._event("pause", rid)
        r.proc.send_signal(signal.SIGSTOP)
        r.paused = True
        wait_for(lambda: _all_threads_stopped(r.proc.pid), timeout, f"{rid} to stop", interval=0.001)
        now = time.time()
        self._event("paused", rid)
        return now

    def resume(self, rid: str) -> float:
        """SIGCONT; returns the time just before the signal was sent."""
        r = self.replicas[rid]
        assert r.proc is not None
        now = time.time()
        self._event("resume", rid)
        r.proc.send_signal(signal.SIGCONT)
        r.paused = False
        return now

    def restart(self, rid: str, wait: float = 20.0) -> None:
        """SIGKILL if running, then start again with the same data directory and ports."""
        self.kill(rid)
        self.start_replica(rid, wait=wait)

    def stop_all(self) -> None:
        """SIGKILL every replica and reap it; never raises for one that is already gone."""
        errors = []
        for rid in self.replicas:
            try:
                self.kill(rid)
            except ClusterError as err:
                errors.append(str(err))
        for r in self.replicas.values():
            self._close_log(r)
        if errors:
            raise ClusterError("; ".join(errors))

    def _close_log(self, r: Replica) -> None:
        if r._log_file is not None:
            r._log_file.close()
            r._log_file = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- observing ---------------------------------------------------------------------------------

    def probe(self, coordinators: Iterable[str] | None = None, **kwargs) -> Probe:
        kwargs.setdefault("call_timeout", 2.0)
        return Probe(list(coordinators) if coordinators is not None else self.coordinators, self.secret, **kwargs)

    def live(self) -> list[str]:
        """Replicas that are running and not paused."""
        return [r.id for r in self.replicas.values() if r.running and not r.paused]

    def statuses(self, ids: Iterable[str] | None = None, timeout: float = 1.0) -> dict[str, dict | None]:
        """Each (live, by default) replica's own Status answer, None where it did not answer."""
        ids = self.live() if ids is None else list(ids)
        probe = self.probe([self.listen(i) for i in ids], call_timeout=timeout)
        return {self.id_of_listen(addr): status for addr, status, _ in probe.status_all()}

    def acting_primaries(self) -> list[str]:
        return sorted(rid for rid, s in self.statuses().items() if s and s["replica"]["acting_primary"])

    def wait_primary(self, timeout: float = 10.0, exclude: Iterable[str] = ()) -> str:
        """Id of the one live replica that says it is acting primary (and is not in `exclude`)."""
        exclude = set(exclude)

        def one():
            acting = self.acting_primaries()
            return acting[0] if len(acting) == 1 and acting[0] not in exclude else None

        return wait_for(one, timeout, "exactly one acting primary" + (f" other than {sorted(exclude)}"
                                                                       if exclude else ""),
                        interval=0.02, describe=self.describe)

    def wait_caught_up(self, rid: str, timeout: float = 10.0) -> None:
        """Until `rid` follows a leader and has applied as far as the primary had when we started waiting."""
        primary = self.wait_primary(timeout)
        target = self.statuses([primary])[primary]["last_applied"]

        def caught_up():
            s = self.statuses([rid]).get(rid)
            return s and s["replica"]["leader_raft"] and s["last_applied"] >= target

        wait_for(caught_up, timeout, f"{rid} to catch up to last_applied {target}", interval=0.05,
                 describe=self.describe)

    def roles(self) -> dict[str, str]:
        """Each replica's role as `vod-admin status` tells it (primary, backup, witness, standby, down...);
        {} when vod-admin failed (no primary for a moment)."""
        try:
            doc = self.admin_status()
        except (ClusterError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return {}
        return {r["id"]: r["role"] for r in doc.get("replicas", []) if r.get("id")}

    def admin_status(self, timeout: float = 20.0) -> dict:
        """`vod-admin status --json` as a real command (the console script next to our interpreter)."""
        script = Path(self.python).parent / "vod-admin"
        cmd = [str(script)] if script.exists() else [self.python, "-c", "import sys; from vod.admin import main; "
                                                                      "sys.exit(main())"]
        out = subprocess.run(cmd + ["--coordinators", ",".join(self.coordinators), "--secret-file",
                                    str(self.secret_file), "--timeout", "1", "status", "--json"],
                             capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ClusterError(f"vod-admin exited {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def log(self, rid: str) -> str:
        try:
            return self.replicas[rid].log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, rid: str) -> list[tuple[float, str]]:
        """(time, line) for every timestamped line of `rid`'s log, in file order."""
        lines = []
        for line in self.log(rid).splitlines():
            head = line.split(" ", 1)[0]
            try:
                lines.append((float(head), line))
            except ValueError:
                continue
        return lines

    def role_lines(self) -> list[RoleLine]:
        """Every ROLE line of every replica, ordered by time."""
        lines = []
        for rid in self.replicas:
            for line in self.log(rid).splitlines():
                m = ROLE_RE.match(line)
                if m:
                    lines.append(RoleLine(float(m["t"]), m["replica"], m["role"], int(m["term"])))
        return sorted(lines)

    def deaths(self) -> list[tuple[float, str]]:
        """(time, replica) of every SIGKILL this cluster sent."""
        return [(e.time, e.replica) for e in self.events if e.action == "kill"]

    def describe(self, tail: int = 25) -> str:
        parts = [f"events: {[(round(e.time, 3), e.action, e.replica) for e in self.events]}"]
        for rid, r in self.replicas.items():
            state = "running" if r.running else f"exited {r.proc.returncode}" if r.proc else "never started"
            lines = self.log(rid).splitlines()[-tail:]
            parts.append(f"--- {rid} ({state}{', paused' if r.paused else ''}) {r.log_path}:\n" + "\n".join(lines))
        return "\n".join(parts)


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` in state T (a group stop reaches each thread on its own), or the process gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    return all(_proc_state(pid, tid) in ("T", "t", None) for tid in tids)


def _proc_state(pid: int, tid: str | None = None) -> str | None:
    """The one-letter state from /proc/PID/stat (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def acting_intervals(lines: Iterable[RoleLine], until: float,
                     deaths: Iterable[tuple[float, str]] = ()) -> dict[str, list[tuple[float, float, int]]]:
    """Per replica, the (start, end, term) intervals in which it acted as primary, from its ROLE lines.

    An interval opens at an `acting-primary` line and closes at the next `not-primary` line of the same
    replica, or at a death `(time, replica)` (a SIGKILLed process acts no more and never logs the line);
    one still open ends at `until`.
    """
    marks = [(line.time, 0 if line.role == "acting-primary" else 1, line.replica, line.term) for line in lines]
    marks += [(t, 2, rid, 0) for t, rid in deaths]
    out: dict[str, list[tuple[float, float, int]]] = {}
    opened: dict[str, tuple[float, int]] = {}
    for t, kind, rid, term in sorted(marks):
        if kind == 0:
            opened.setdefault(rid, (t, term))
        elif rid in opened:
            start, term0 = opened.pop(rid)
            out.setdefault(rid, []).append((start, t, term0))
    for rid, (start, term) in opened.items():
        out.setdefault(rid, []).append((start, until, term))
    return out


def overlaps(intervals: dict[str, list[tuple[float, float, int]]]) -> list[tuple]:
    """Pairs of intervals of different replicas that share an instant (touching ends do not count)."""
    flat = sorted((start, end, rid, term) for rid, ivs in intervals.items() for start, end, term in ivs)
    found = []
    for i, a in enumerate(flat):
        for b in flat[i + 1:]:
            if b[0] >= a[1]:
                break
            if b[2] != a[2]:
                found.append((a, b))
    return found


def acting_at(intervals: dict[str, list[tuple[float, float, int]]], t: float) -> set[str]:
    """Replicas acting at instant `t` (intervals are half-open: [start, end))."""
    return {rid for rid, ivs in intervals.items() if any(start <= t < end for start, end, _ in ivs)}


def acting_alone(intervals: dict[str, list[tuple[float, float, int]]], rid: str, lo: float, hi: float) -> bool:
    """Whether there is an instant in [lo, hi] at which `rid` acts and no other replica does."""
    points = {lo, hi} | {x for ivs in intervals.values() for start, end, _ in ivs for x in (start, end)
                         if lo <= x <= hi}
    ordered = sorted(points)
    candidates = ordered + [(a + b) / 2 for a, b in zip(ordered, ordered[1:])]
    return any(acting_at(intervals, t) == {rid} for t in candidates)


@pytest.fixture
def cluster(tmp_path):
    """A started three-replica group; every replica is SIGKILLed at the end, pass or fail."""
    c = Cluster(tmp_path / "cluster")
    try:
        c.start()
        yield c
    finally:
        c.stop_all()
