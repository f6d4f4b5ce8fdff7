"""The garbage soak (issue 8), shared by tests/test_soak_garbage.py and bench/soak.py (no tests here).

A real domain on 127.0.0.1 (tests/test_crash_support.py `CrashSystem`: three coordinator replicas, servers,
one movie) plays a real-time movie to a real `vod-client play` while `GarbageThrower`, a thread, opens
garbage connections against every port: each coordinator's listen port (AMP), each coordinator's Raft port
(pysyncobj, which must drop anything not encrypted with the domain secret), each server's data port. Kinds
of garbage: random bytes; half-open connections that send nothing or half a message and wait; connections
reset instead of closed; and valid-looking prefixes with garbage after them (an AMP Challenge, a command
before authentication carrying a zip bomb, a key over 255 bytes, a HELLO without a stream token or with a
body nested 100,000 deep, a pysyncobj frame announcing 2 GB).

After the movie: the client exited 0 and its output is frame-exact against the store; every coordinator
and server is alive; each one's RSS (VmRSS in /proc/PID/status) grew by less than a bound; and the logs
say how many connections were closed with a line, and that nothing escaped as a traceback.

Every socket has a timeout, every wait a deadline, and `CrashSystem.stop_all` ends every process.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from twisted.protocols import amp

from cluster import wait_for
from test_crash_support import FPS, CrashSystem
from vod.groups import wire
from vod.stream import protocol as p

COORDINATOR, RAFT, DATA = "coordinator", "raft", "data"
MAX_OPEN = 256  # connections held open at once; the oldest is closed first
LINGER = 2.0  # seconds each connection is held after its garbage, to see whether the process closes it
PLAY_SLACK = 60.0  # seconds past the movie's length the client may take (start-up, joins, a slow machine)

# What each process logs for a connection it refused (counted, not required to match exactly).
CLOSED_LINES = {COORDINATOR: re.compile(r"closing connection from 127\.0\.0\.1|refusing connections from"),
                DATA: re.compile(r"WARNING vod\.server\.stream: .*(malformed|stream token|no HELLO|RUIDs are 64-bit)")}
ESCAPED = re.compile(r"Traceback|Unhandled|Unknown Error")


# -- garbage ---------------------------------------------------------------------------------------------

@dataclass
class Throw:
    kind: str
    data: bytes = b""
    hold: float = LINGER  # seconds to keep the connection open after sending (longer: half-open)
    reset: bool = False  # close with RST rather than FIN


def _box(**fields: bytes) -> bytes:
    return amp.AmpBox(**fields).serialize()


_BOMB = wire.ZLIB_MARKER + zlib.compress(b"[" + b"{}," * 5_000_000 + b"{}]", 9)  # 15 MB of JSON in ~15 KB


def _common(rng: random.Random) -> list[Throw]:
    return [Throw("random", os.urandom(rng.randint(1, 2048))),
            Throw("half-open", b"", hold=rng.uniform(1.0, 12.0)),
            Throw("reset", os.urandom(rng.randint(1, 64)), reset=True)]


def coordinator_garbage(rng: random.Random) -> list[Throw]:
    challenge = _box(_command=b"Challenge", _ask=b"1", protocol=b"1")
    join = _box(_command=b"Join", _ask=b"2", kind=b"client", domain=b"d", address=b"x", user=b"", capacity=b"1",
                movies=_BOMB)
    return _common(rng) + [
        Throw("amp-challenge+garbage", challenge + os.urandom(rng.randint(1, 512))),
        Throw("amp-join-before-auth-zip-bomb", challenge + join),
        Throw("amp-key-over-255", b"\x01\x00" + b"k" * 256),
        Throw("amp-no-question", _box(_answer=b"77") + _box(nonsense=b"1")),
        Throw("amp-bad-argument", _box(_command=b"Challenge", _ask=b"1", protocol=b"one")),
        Throw("amp-half-value", b"\x00\x08_command\xff\xff" + os.urandom(1000), hold=rng.uniform(1.0, 12.0)),
    ]


def data_garbage(rng: random.Random) -> list[Throw]:
    def control(type_: int, body: bytes) -> bytes:
        return p.CONTROL_HEADER.pack(p.CONTROL_MAGIC, p.VERSION, type_, len(body)) + body

    hello = json.dumps({"ruid": rng.randint(0, 5), "client": rng.choice(["viewer", "intruder"]), "held": "",
                        "mode": "play"}).encode()
    return _common(rng) + [
        Throw("hello-without-token", control(p.HELLO, hello)),
        Throw("hello-garbage-body", control(p.HELLO, os.urandom(rng.randint(1, 256)))),
        Throw("hello-nested-deep", control(p.HELLO, b"[" * 100_000)),
        Throw("control-over-limit", p.CONTROL_HEADER.pack(p.CONTROL_MAGIC, p.VERSION, p.HELLO, 2**32 - 1)),
        Throw("hello-half-sent", p.CONTROL_HEADER.pack(p.CONTROL_MAGIC, p.VERSION, p.HELLO, 100_000) + b"{" * 999,
              hold=rng.uniform(1.0, 12.0)),
        Throw("credit-before-hello", control(p.CREDIT, b'{"until": 99}')),
    ]


def raft_garbage(rng: random.Random) -> list[Throw]:
    blob = os.urandom(rng.randint(1, 1024))
    return _common(rng) + [
        Throw("raft-frame-not-encrypted", struct.pack("i", len(blob)) + blob),
        Throw("raft-frame-of-2GB", struct.pack("i", 2**31 - 1) + blob, hold=rng.uniform(1.0, 12.0)),
        Throw("raft-negative-length", struct.pack("i", -5) + blob),
    ]


GARBAGE: dict[str, Callable[[random.Random], list[Throw]]] = {
    COORDINATOR: coordinator_garbage, DATA: data_garbage, RAFT: raft_garbage}


@dataclass(frozen=True)
class Target:
    name: str  # e.g. "c1 listen", "s2 data"
    kind: str  # COORDINATOR, RAFT or DATA
    host: str
    port: int


@dataclass
class PortStats:
    thrown: int = 0
    peer_closed: int = 0  # the process closed it before we did (we hold each LINGER s, half-open ones longer)
    connect_failed: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


class GarbageThrower(threading.Thread):
    """Opens `rate` garbage connections per second, round-robin over `targets`, until `stop()`."""

    def __init__(self, targets: list[Target], rate: float, seed: int = 8):
        super().__init__(name="garbage-thrower", daemon=True)
        self.targets = targets
        self.rate = rate
        self.rng = random.Random(seed)
        self.stats = {t.name: PortStats() for t in targets}
        self._stop_event = threading.Event()
        self._open: list[tuple[float, socket.socket, Target]] = []  # (deadline, socket, target)
        self.error: BaseException | None = None

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "the garbage thrower did not stop"
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            n = 0
            start = time.monotonic()
            while not self._stop_event.is_set():
                target = self.targets[n % len(self.targets)]
                self._throw(target, self.rng.choice(GARBAGE[target.kind](self.rng)))
                n += 1
                self._poll_open()
                # Paced to the rate on average, so a slow throw is made up for by shorter waits.
                self._stop_event.wait(max(0.0, start + n / self.rate - time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - reported by stop()
            self.error = err
        finally:
            for _, sock, _ in self._open:
                sock.close()
            self._open.clear()

    def _throw(self, target: Target, throw: Throw) -> None:
        stats = self.stats[target.name]
        stats.thrown += 1
        stats.kinds[throw.kind] = stats.kinds.get(throw.kind, 0) + 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect((target.host, target.port))
            if throw.data:
                sock.sendall(throw.data)
        except (ConnectionError, socket.timeout):
            stats.peer_closed += 1
            sock.close()
            return
        except OSError:
            stats.connect_failed += 1
            sock.close()
            return
        if throw.reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        if len(self._open) >= MAX_OPEN:
            _, oldest, _ = self._open.pop(0)
            oldest.close()
        self._open.append((time.monotonic() + throw.hold, sock, target))

    def _poll_open(self) -> None:
        if not self._open:
            return
        readable, _, _ = select.select([s for _, s, _ in self._open], [], [], 0)
        now = time.monotonic()
        keep = []
        for deadline, sock, target in self._open:
            if sock in readable:
                try:
                    closed = sock.recv(65536) == b""
                except OSError:
                    closed = True
                if closed:
                    self.stats[target.name].peer_closed += 1
                    sock.close()
                    continue
            if now >= deadline:
                sock.close()
                continue
            keep.append((deadline, sock, target))
        self._open = keep


# -- the run ----------------------------------------------------------------------------------------------

def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of a live process, in MB. RssAnon leaves out file pages: a server's RSS also grows
    by the movie's frames.bin pages it maps and touches, which is not memory the garbage took."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"]


@dataclass
class SoakResult:
    seconds: float = 0.0
    rate: float = 0.0
    frames: int = 0
    client_exit: int | None = None
    exact: bool = False
    summary: dict = field(default_factory=dict)  # the client's JSON summary
    alive: dict[str, bool] = field(default_factory=dict)
    rss_before: dict[str, float] = field(default_factory=dict)  # VmRSS, MB
    rss_after: dict[str, float] = field(default_factory=dict)
    anon_before: dict[str, float] = field(default_factory=dict)  # RssAnon, MB
    anon_after: dict[str, float] = field(default_factory=dict)
    movie_mb: float = 0.0  # frames.bin, which a server maps
    ports: dict[str, PortStats] = field(default_factory=dict)
    port_kind: dict[str, str] = field(default_factory=dict)
    closed_lines: dict[str, int] = field(default_factory=dict)  # per process
    escaped: dict[str, list[str]] = field(default_factory=dict)  # traceback-ish lines per process

    def growth(self, name: str) -> float:
        return self.rss_after[name] - self.rss_before[name]


def soak(base: Path, frames: int, rate: float, servers: int = 2, seed: int = 8,
         say: Callable[[str], None] = lambda line: None) -> SoakResult:
    """Start a domain, play `frames` frames in real time under `rate` garbage connections/s; the findings."""
    result = SoakResult(rate=rate, frames=frames)
    system = CrashSystem(base, servers=servers, frames=frames)
    try:
        system.start()
        say(f"domain up: {', '.join(system.cluster.ids)} and {', '.join(system.server_ids)}")
        procs = {rid: system.cluster.replicas[rid].proc for rid in system.cluster.ids}
        procs.update({sid: system.procs[sid] for sid in system.server_ids})
        targets = _targets(system)
        result.port_kind = {t.name: t.kind for t in targets}
        with system.store.open("m") as movie:
            result.movie_mb = movie.info.frames_bytes / 2**20
        before = {name: memory_mb(proc.pid) for name, proc in procs.items()}
        result.rss_before = {name: m[0] for name, m in before.items()}
        result.anon_before = {name: m[1] for name, m in before.items()}
        thrower = GarbageThrower(targets, rate, seed)
        started = time.monotonic()
        thrower.start()
        client = system.play()
        try:
            client.wait(timeout=frames / FPS + PLAY_SLACK)
        finally:
            thrower.stop()
            result.seconds = time.monotonic() - started
        result.ports = thrower.stats
        say(f"movie over after {result.seconds:.1f} s; {sum(s.thrown for s in thrower.stats.values())} "
            "garbage connections thrown")
        result.client_exit = client.returncode
        result.exact = client.returncode == 0 and system.played_frames() == system.expected_frames()
        result.summary = _client_summary(system)
        # The half-open ones the thrower closed are being noticed; servers end waits of 5 s (no HELLO).
        time.sleep(1.0)
        result.alive = {name: proc.poll() is None for name, proc in procs.items()}
        after = {name: memory_mb(proc.pid) for name, proc in procs.items() if result.alive[name]}
        result.rss_after = {name: m[0] for name, m in after.items()}
        result.anon_after = {name: m[1] for name, m in after.items()}
        for name in procs:
            lines = [line for _, line in system.log(name)] if name in system.procs else \
                system.cluster.replicas[name].log_path.read_text(errors="replace").splitlines()
            kind = COORDINATOR if name in system.cluster.replicas else DATA
            result.closed_lines[name] = sum(1 for line in lines if CLOSED_LINES[kind].search(line))
            result.escaped[name] = [line for line in lines if ESCAPED.search(line)]
        return result
    finally:
        system.stop_all()


def _targets(system: CrashSystem) -> list[Target]:
    targets = []
    for rid, replica in system.cluster.replicas.items():
        for kind, address in ((COORDINATOR, replica.listen), (RAFT, replica.raft)):
            host, port = address.rsplit(":", 1)
            targets.append(Target(f"{rid} {'listen' if kind == COORDINATOR else 'raft'}", kind, host, int(port)))
    status = wait_for(lambda: system.admin("status"), 20, "vod-admin status")
    for member in status["members"]:
        if member["kind"] == "server":
            host, port = member["address"].rsplit(":", 1)
            targets.append(Target(f"{member['id']} data", DATA, host, int(port)))
    return targets


def _client_summary(system: CrashSystem) -> dict:
    try:
        return json.loads(system.client_out.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}


def table(result: SoakResult) -> str:
    """The soak's findings as Markdown tables: per port, then per process."""
    lines = ["| port | kind | connections thrown | closed by the process | connect failed | most thrown kinds |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for name, stats in result.ports.items():
        top = ", ".join(f"{k} {n}" for k, n in Counter(stats.kinds).most_common(3))
        lines.append(f"| {name} | {result.port_kind[name]} | {stats.thrown:,} | {stats.peer_closed:,} | "
                     f"{stats.connect_failed} | {top} |")
    lines += ["", "| process | alive after | RSS before (MB) | RSS after (MB) | RSS growth (MB) | "
                  "of which anonymous (MB) | refusals logged | tracebacks logged |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, alive in result.alive.items():
        if name in result.rss_after:
            after, growth = f"{result.rss_after[name]:.1f}", f"{result.growth(name):+.1f}"
            anon = f"{result.anon_after[name] - result.anon_before[name]:+.1f}"
        else:
            after = growth = anon = "-"
        lines.append(f"| {name} | {'yes' if alive else '**no**'} | {result.rss_before[name]:.1f} | {after} | "
                     f"{growth} | {anon} | {result.closed_lines[name]:,} | {len(result.escaped[name])} |")
    total = sum(s.thrown for s in result.ports.values())
    lines += ["", f"{total:,} garbage connections in {result.seconds:.1f} s ({total / max(result.seconds, 1e-9):.0f}/s "
                  f"asked {result.rate:g}/s); movie of {result.frames} frames ({result.movie_mb:.1f} MB, mapped by "
                  f"each server): client exit {result.client_exit}, "
                  f"frame-exact {'yes' if result.exact else '**no**'}, stalls {result.summary.get('stalls', '?')}"]
    return "\n".join(lines)
