"""Carry out a chaos schedule against a real local system, then check what must hold after any schedule.

`run_chaos(seed, base, shape)` starts three coordinator replicas, the
schedule's servers and, staggered, its real-time clients (all real processes
on 127.0.0.1, through `CrashSystem`), fires the schedule's faults on time,
waits (bounded) for every client to end, checks the invariants and always
tears everything down. It returns a `ChaosReport`; its `violations` list is
empty when the run passed. The invariants (issue 6):

1. every client that was not killed exits 0 and its output is frame-exact;
2. no RUID was issued twice, and each client got exactly one;
3. every request ends (done for a finished client, failed for a dead one) and
   every video group is dissolved;
4. no surviving server keeps streaming to nobody: each stream it started ends;
5. no process is left behind once the run is torn down.

Used by tests/chaos/test_chaos.py (a CI-sized set of seeds) and bench/chaos.py (longer runs).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos_schedule import KILL, STOP, Fault, Shape, client_names, client_starts, make_schedule
from cluster import ClusterError, wait_for
from test_crash_support import STREAM_END, STREAM_START, CrashSystem

FPS = 24.0
ACTIVE = {"pending", "strategized", "streaming"}
CONNECTION = re.compile(r" client \S+ at (\S+): ")


@dataclass
class ChaosReport:
    seed: int
    faults: list[str] = field(default_factory=list)  # as fired, with the resolved target
    clients_done: int = 0
    clients_killed: int = 0
    stalls: int = 0
    frames_checked: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def text(self) -> str:
        head = (f"chaos seed {self.seed}: {'PASS' if self.passed else 'FAIL'} in {self.seconds:.1f}s; "
                f"{self.clients_done} clients whole ({self.frames_checked} frames checked, {self.stalls} stalls), "
                f"{self.clients_killed} killed")
        lines = [head] + [f"  fault: {f}" for f in self.faults] + [f"  VIOLATION: {v}" for v in self.violations]
        if not self.passed:
            lines.append(f"  replay: VOD_CHAOS_SEEDS={self.seed} python -m pytest tests/chaos -k chaos_run")
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, seed: int, base: Path, shape: Shape, frames: int):
        self.seed = seed
        self.shape = shape
        self.faults = make_schedule(seed, shape)
        self.starts = client_starts(seed, shape)
        self.system = CrashSystem(base, servers=shape.servers, frames=frames)
        self.base = base
        self.report = ChaosReport(seed)
        self.killed: set[str] = set()  # client and server names SIGKILLed while still running

    # -- carrying out -----------------------------------------------------------------------------------

    def timeline(self) -> list[tuple[float, str, object]]:
        events: list[tuple[float, str, object]] = [(at, "play", name) for name, at in self.starts.items()]
        for fault in self.faults:
            events.append((fault.at, "fault", fault))
        return sorted(events, key=lambda e: (e[0], e[1] != "play"))

    def carry_out(self) -> None:
        t0 = time.monotonic()
        resumes: list[tuple[float, str, str]] = []  # (at, kind, name)
        for at, what, item in self.timeline():
            self._resume_due(resumes, t0, until=at)
            _sleep_until(t0 + at)
            if what == "play":
                self.system.play(name=item)
            else:
                resumes.extend(self._fire(item, at))
        self._resume_due(resumes, t0, until=float("inf"))

    def _resume_due(self, resumes: list[tuple[float, str, str]], t0: float, until: float) -> None:
        for entry in sorted(r for r in resumes if r[0] <= until):
            resumes.remove(entry)
            at, kind, name = entry
            _sleep_until(t0 + at)
            if kind == "coordinator":
                self.system.cluster.resume(name)
            else:
                self.system.resume(name)

    def _fire(self, fault: Fault, at: float) -> list[tuple[float, str, str]]:
        name = self._resolve(fault)
        if name is None:
            self.report.faults.append(f"{fault.describe()}: no such process running, skipped")
            return []
        self.report.faults.append(f"{fault.describe()} -> {name}")
        if fault.kind == "coordinator":
            (self.system.cluster.kill if fault.action == KILL else self.system.cluster.pause)(name)
        elif fault.action == KILL:
            if self.system.procs[name].poll() is None:
                self.killed.add(name)
            self.system.kill(name)
        else:
            if self.system.procs[name].poll() is not None:
                return []
            self.system.pause(name)
        return [(at + fault.duration, fault.kind, name)] if fault.action == STOP else []

    def _resolve(self, fault: Fault) -> str | None:
        if fault.kind != "coordinator":
            return fault.target if fault.target in self.system.procs else None
        cluster = self.system.cluster
        acting = cluster.acting_primaries()
        live = cluster.live()
        if fault.target == "primary":
            return acting[0] if acting else (live[0] if live else None)
        followers = [rid for rid in live if rid not in acting]
        return followers[0] if followers else None

    # -- checking ---------------------------------------------------------------------------------------

    def check(self) -> None:
        movie_seconds = self.system.frames / FPS
        expected = self.system.expected_frames()
        clients = client_names(self.shape)
        for name in clients:
            proc = self.system.procs[name]
            try:
                proc.wait(timeout=movie_seconds + 60)
            except Exception:
                self._violate(f"{name} still running {movie_seconds + 60:.0f}s after the movie's length")
        for name in clients:
            if name in self.killed:
                self.report.clients_killed += 1
                continue
            self._check_client(name, expected)
        try:
            self.system.cluster.wait_primary(timeout=20)
        except ClusterError as e:
            self._violate(f"no single acting primary after the run: {e}".splitlines()[0])
            return
        self._check_requests(clients)
        self._check_groups()
        self._check_streams()

    def _check_client(self, name: str, expected: list[bytes]) -> None:
        proc = self.system.procs[name]
        if proc.returncode != 0:
            tail = " | ".join(line for _, line in self.system.log(name)[-3:])
            self._violate(f"{name} exited {proc.returncode}: {tail}")
            return
        try:
            summary = json.loads((self.base / f"{name}.out").read_text())
        except (OSError, ValueError) as e:
            self._violate(f"{name}: no JSON summary ({e})")
            return
        self.report.stalls += summary.get("stalls", 0)
        played = self.system.played_frames(name)
        if played != expected:
            wrong = [i for i, (a, b) in enumerate(zip(played, expected)) if a != b]
            self._violate(f"{name}: output not frame-exact ({len(played)}/{len(expected)} frames, "
                          f"first differing {wrong[:5]})")
            return
        self.report.clients_done += 1
        self.report.frames_checked += len(played)

    def _check_requests(self, clients: list[str]) -> None:
        def settled():
            requests = self.system.admin("requests")
            return requests if requests is not None and not any(r["state"] in ACTIVE for r in requests) else None

        try:
            requests = wait_for(settled, 20, "every request to end", interval=0.5)
        except ClusterError:
            requests = self.system.admin("requests") or []
            active = [(r["ruid"], r["client"], r["state"]) for r in requests if r["state"] in ACTIVE]
            self._violate(f"requests never ended: {active}")
        ruids = [r["ruid"] for r in requests]
        if len(ruids) != len(set(ruids)):
            self._violate(f"a RUID was issued twice: {sorted(ruids)}")
        for name in clients:
            mine = [r for r in requests if r["client"] == name]
            if len(mine) > 1:
                self._violate(f"{name} got {len(mine)} RUIDs: {[r['ruid'] for r in mine]}")
            if name not in self.killed and len(mine) != 1:
                self._violate(f"{name} finished but has {len(mine)} requests in the lists")
            # A client killed after its CDONE (it holds the whole movie ahead of the playhead) is done.
            want = {"failed", "done"} if name in self.killed else {"done"}
            for r in mine:
                if r["state"] not in want:
                    self._violate(f"{name}'s request RUID {r['ruid']} is {r['state']}, not {'/'.join(sorted(want))}")

    def _check_groups(self) -> None:
        def dissolved():
            groups = self.system.groups()
            return groups is not None and not [g for g in groups if g.startswith("video:")]

        try:
            wait_for(dissolved, 15, "every video group to dissolve", interval=0.5)
        except ClusterError:
            self._violate(f"video groups left: {[g for g in self.system.groups() or [] if g.startswith('video:')]}")

    def _check_streams(self) -> None:
        survivors = [s for s in self.system.server_ids if s not in self.killed]

        def open_streams():
            out = []
            for sid in survivors:
                started, ended = set(), set()
                for _, line in self.system.log(sid):
                    # A stream is one client connection: (RUID, client address). A HELLO that never got a
                    # strategy logs an end without a start; what matters is that no start lacks its end.
                    for pattern, seen in ((STREAM_START, started), (STREAM_END, ended)):
                        m = pattern.match(line)
                        if m:
                            seen.add((m["ruid"], CONNECTION.search(line)[1]))
                out += [f"{sid} RUID {ruid} to {peer}" for ruid, peer in sorted(started - ended)]
            return out

        try:
            wait_for(lambda: not open_streams(), 10, "every stream to end", interval=0.25)
        except ClusterError:
            self._violate(f"servers still streaming to nobody: {open_streams()}")

    def _violate(self, text: str) -> None:
        self.report.violations.append(text)

    # -- teardown ---------------------------------------------------------------------------------------

    def tear_down(self) -> None:
        self.system.stop_all()
        left = _processes_mentioning(str(self.base))
        if left:
            self._violate(f"processes left behind: {left}")


def run_chaos(seed: int, base: Path, shape: Shape = Shape(), frames: int = 120) -> ChaosReport:
    started = time.monotonic()
    run = ChaosRun(seed, base, shape, frames)
    try:
        run.system.start()
        run.carry_out()
        run.check()
    except Exception as e:  # a harness error is a failed run with its reason, never a lost report
        run.report.violations.append(f"run aborted: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        run.tear_down()
        run.report.seconds = time.monotonic() - started
    return run.report


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (this run's directory)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if text in cmdline and not zombie:
            out.append(int(entry))
    return out
