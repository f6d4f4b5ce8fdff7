"""Shared helpers of the tests/test_crash_*.py modules (no tests here): a real local system to crash.

`CrashSystem` runs three real coordinator replicas (tests/cluster.py; standbys
too if asked), real `vod-server` processes and real `vod-client play`s, all on
127.0.0.1, each logging to its own file with epoch timestamps (`vod.logsetup`),
so the lines of several processes can be lined up. Every process it starts
dies with the test process (PR_SET_PDEATHSIG) and is SIGKILLed and reaped by
`stop_all`, which the fixture always calls; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from cluster import Cluster, _all_threads_stopped, free_ports, wait_for
from vod.media.store import MovieStore
from vod.media.synthetic import synthetic_jpegs

FPS = 24.0
FRAMES = 240  # ten seconds
SIZE = (96, 64)

_LAUNCHER = """\
import sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the test
from {module} import main
sys.exit(main())
"""

# For plays that assert no stall at all: hold half a second of movie before playing. With the default (play
# on the first frame) one server's first frame may come tens of milliseconds after another's on a loaded
# two-core machine (seen: 9-76 ms), a stall at the very start that says nothing about the crash under test.
STARTUP = ("--startup", "0.5")

STREAM_END = re.compile(r"^(?P<t>\d+\.\d+) \w+ vod\.server\.stream: stream end: RUID (?P<ruid>\d+), .*?: "
                        r"(?P<frames>\d+) frames .* revision (?P<revision>\d+); (?P<reason>.*)$")
STREAM_START = re.compile(r"^(?P<t>\d+\.\d+) \w+ vod\.server\.stream: stream start: RUID (?P<ruid>\d+), .* "
                          r"revision (?P<revision>\d+),")


def launcher(module: str) -> list[str]:
    return [sys.executable, "-c", _LAUNCHER.format(module=module)]


def make_movie_store(root: Path, frames: int = FRAMES) -> MovieStore:
    store = MovieStore(str(root))
    store.add("m", synthetic_jpegs(frames, SIZE, FPS), fps=FPS, width=SIZE[0], height=SIZE[1], source="test",
              source_codec="mjpeg", keeps_source_jpeg=True, jpeg_quality=None)
    return store


def log_lines(path: Path) -> list[tuple[float, str]]:
    """(time, line) of every timestamped line of a process's log."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append((float(line.split(" ", 1)[0]), line))
        except ValueError:
            continue
    return out


# (server id, its listen address) -> the data address it should tell clients instead, or None for its own.
Advertise = Callable[[str, str], "str | None"]


class CrashSystem:
    def __init__(self, base: Path, servers: int, frames: int = FRAMES, standbys: int = 0):
        self.base = base
        self.store = make_movie_store(base / "store", frames)
        self.frames = frames
        self.cluster = Cluster(base / "cluster", standbys=standbys)
        self.server_ids = [f"s{i + 1}" for i in range(servers)]
        self.procs: dict[str, subprocess.Popen] = {}
        self._files = []
        self.client_out = base / "client.out"

    # -- life ----------------------------------------------------------------------------------------

    def start(self, server_args: tuple[str, ...] = (), advertise: Advertise | None = None) -> "CrashSystem":
        """The cluster, then the servers (each with `server_args`; `advertise` may give a server another data
        address to tell clients, e.g. a proxy's), until every server is a member."""
        self.cluster.start()
        for sid, port in zip(self.server_ids, free_ports(len(self.server_ids))):
            listen = f"127.0.0.1:{port}"
            other = advertise(sid, listen) if advertise else None
            self._spawn(sid, launcher("vod.server.cli") + [
                "--domain", "d", "--coordinators", ",".join(self.cluster.coordinators), "--media", self.store.root,
                "--listen", listen, "--id", sid, "--secret-file", str(self.cluster.secret_file),
                "--log-level", "INFO", *(["--advertise", other] if other else []), *server_args],
                self.base / f"{sid}.log")
        wait_for(lambda: self.live_servers() == set(self.server_ids), 30, "every server joined", interval=0.3,
                 describe=self.describe)
        return self

    def _spawn(self, name: str, argv: list[str], log_path: Path, stdout=None) -> subprocess.Popen:
        log_file = open(log_path, "ab")
        self._files.append(log_file)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or log_file, stderr=log_file,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def play(self, *args: str, name: str = "client", credential: Path | None = None) -> subprocess.Popen:
        """A real-time `vod-client play m` (no cache) as client id "viewer" (or NAME), its stderr in NAME.log,
        its JSON summary in NAME.out, the movie in NAME.avi; with the domain secret, or as the user of
        `credential` (a file from `vod-admin user add`)."""
        out = open(self.base / f"{name}.out", "wb")
        self._files.append(out)
        client_id = "viewer" if name == "client" else name
        key = ["--credential-file", str(credential)] if credential else ["--secret-file", str(self.cluster.secret_file)]
        return self._spawn(name, launcher("vod.client.cli") + [
            "play", "m", "--domain", "d", "--coordinators", ",".join(self.cluster.coordinators), *key,
            "--id", client_id, "--no-cache", "--output", str(self.base / f"{name}.avi"),
            "--json", "--log-level", "INFO", *args], self.base / f"{name}.log", stdout=out)

    def expected_frames(self) -> list[bytes]:
        with self.store.open("m") as movie:
            return [movie.frame_sha256(i) for i in range(len(movie))]

    def played_frames(self, name: str = "client") -> list[bytes]:
        from vod.media.video import read_jpeg_frames
        return [hashlib.sha256(f).digest() for f in read_jpeg_frames(str(self.base / f"{name}.avi")).frames]

    def kill(self, name: str) -> float:
        """SIGKILL and reap; the time by which it was certainly dead."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return time.time()

    def pause(self, name: str) -> float:
        """SIGSTOP; the time by which every thread of it was seen stopped."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: _all_threads_stopped(proc.pid), 5, f"{name} to stop", interval=0.001)
        return time.time()

    def resume(self, name: str) -> float:
        now = time.time()
        self.procs[name].send_signal(signal.SIGCONT)
        return now

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # a stopped process dies from SIGKILL too
        for proc in self.procs.values():
            proc.wait(timeout=10)
        for f in self._files:
            f.close()
        self.cluster.stop_all()

    # -- observing -----------------------------------------------------------------------------------

    def admin(self, command: str, timeout: float = 20.0):
        """`vod-admin COMMAND --json`, parsed; None when it failed (e.g. no primary for a moment)."""
        run = subprocess.run(launcher("vod.admin") + ["--coordinators", ",".join(self.cluster.coordinators),
                                                      "--secret-file", str(self.cluster.secret_file),
                                                      "--timeout", "1", command, "--json"],
                             capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return json.loads(run.stdout) if run.returncode == 0 else None

    def wait_streaming(self, client: str = "viewer") -> dict:
        """`client`'s request, once it is streaming from every server of the system (asserted: all of them)."""
        request = wait_for(lambda: (r := self.request_of(client)) and r["state"] == "streaming" and r, 30,
                           f"{client}'s request streaming", interval=0.2, describe=self.describe)
        assert sorted(request["servers"]) == self.server_ids, request
        wait_for(lambda: all(self.stream_starts(sid, request["ruid"]) for sid in self.server_ids), 10,
                 f"every server streaming to {client}", interval=0.1, describe=self.describe)
        return request

    def finished_whole(self, client, ruid: int) -> dict:
        """Wait for the client process to exit 0 with every frame, frame-exact; its JSON summary."""
        client.wait(timeout=60)
        assert client.returncode == 0, self.describe()
        summary = json.loads(self.client_out.read_text())
        assert summary["state"] == "done" and summary["ruid"] == ruid
        assert summary["frames_received"] == self.frames and summary["frames_missing"] == 0
        assert self.played_frames() == self.expected_frames()
        return summary

    def live_servers(self) -> set[str]:
        doc = self.admin("status")
        return {m["id"] for m in doc["members"] if m["kind"] == "server"} if doc else set()

    def request_of(self, client: str = "viewer") -> dict | None:
        requests = self.admin("requests") or []
        mine = [r for r in requests if r["client"] == client]
        return mine[-1] if mine else None

    def groups(self) -> list[str] | None:
        doc = self.admin("groups")
        return None if doc is None else [g["name"] for g in doc]

    def log(self, name: str) -> list[tuple[float, str]]:
        return log_lines(self.base / f"{name}.log")

    def stream_ends(self, sid: str, ruid: int) -> list[dict]:
        out = []
        for t, line in self.log(sid):
            m = STREAM_END.match(line)
            if m and int(m["ruid"]) == ruid:
                out.append({"time": t, "frames": int(m["frames"]), "revision": int(m["revision"]),
                            "reason": m["reason"]})
        return out

    def stream_starts(self, sid: str, ruid: int) -> list[dict]:
        out = []
        for t, line in self.log(sid):
            m = STREAM_START.match(line)
            if m and int(m["ruid"]) == ruid:
                out.append({"time": t, "revision": int(m["revision"])})
        return out

    def first_line(self, name: str, text: str) -> float | None:
        return next((t for t, line in self.log(name) if text in line), None)

    def describe(self) -> str:
        parts = [self.cluster.describe(tail=10)]
        for name in [*self.server_ids, *sorted(set(self.procs) - set(self.server_ids))]:
            lines = [line for _, line in self.log(name)][-15:]
            parts.append(f"--- {name}:\n" + "\n".join(lines))
        return "\n".join(parts)


@contextlib.contextmanager
def running_system(tmp_path: Path, servers: int, server_args: tuple = (), standbys: int = 0,
                   advertise: Advertise | None = None):
    """A started CrashSystem that is always stopped (for the tests' `system` fixtures)."""
    system = CrashSystem(tmp_path, servers=servers, standbys=standbys)
    try:
        system.start(server_args=server_args, advertise=advertise)
        yield system
    finally:
        system.stop_all()


def assert_cleaned_up_after_crash(system: CrashSystem, ruid: int, killed_at: float) -> None:
    """The client is dead: its request fails, its video group dissolves, every server's stream of it ends."""
    bound = system.cluster.failure_timeout + 10.0  # the exclusion, a commit, vod-admin's own start-up
    request = wait_for(lambda: (r := system.request_of()) and r["state"] == "failed" and r, bound,
                       "the request to fail", interval=0.2, describe=system.describe)
    assert request["ruid"] == ruid and "client left or crashed" in request["reason"], request
    assert time.time() - killed_at < bound
    group = f"video:{ruid}"
    wait_for(lambda: (g := system.groups()) is not None and group not in g, 10, f"{group} dissolved",
             interval=0.2, describe=system.describe)
    for sid in system.server_ids:
        # Each server heard of the dissolution (SDONE) and logs it with its time...
        dissolved = wait_for(lambda: system.first_line(sid, f"RUID {ruid}: dissolved"), 10,
                             f"{sid} to hear of the dissolution", interval=0.1, describe=system.describe)
        # ... and its stream of that RUID is over by then, or within a second.
        ends = wait_for(lambda: system.stream_ends(sid, ruid), 10, f"{sid}'s stream of RUID {ruid} to end",
                        interval=0.1, describe=system.describe)
        assert len(system.stream_starts(sid, ruid)) == len(ends), (sid, system.describe())
        for end in ends:
            assert end["time"] <= dissolved + 1.0, (sid, end, dissolved)
