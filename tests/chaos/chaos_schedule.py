"""A chaos schedule as a pure function of a seed: which fault hits which process when.

`make_schedule(seed, shape)` gives the same list of `Fault`s for the same seed
and shape, so a failing run is replayed by its seed alone. The schedule keeps
the system inside what it promises to survive, and no further:

- coordinators: at most one replica is hit per run (SIGKILL, or SIGSTOP that
  may outlast an election), so a Raft majority always remains. The target is
  a role ("primary" or "follower"), resolved when the fault fires.
- servers: at most `servers - 1` are taken out (SIGKILL, or SIGSTOP long
  enough to be excluded, then SIGCONT), so every movie keeps a live holder.
  Short stops (below the failure timeout) may hit any server.
- clients: SIGKILL, or SIGSTOP below the failure timeout (a client stopped
  longer is excluded by design and its play ends; that is the kill case).

Each stop carries its duration; the runner sends SIGCONT after it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KILL = "kill"
STOP = "stop"


@dataclass(frozen=True)
class Shape:
    """What a run looks like: its processes, the time window faults fall in, the failure timeout."""

    servers: int = 3
    clients: int = 3
    window: tuple[float, float] = (0.5, 4.0)  # seconds after the first client starts
    client_stagger: float = 1.0  # clients start within this many seconds of each other
    failure_timeout: float = 1.0
    faults: tuple[int, int] = (2, 5)  # how many faults per run, inclusive bounds


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the first client starts
    action: str  # KILL or STOP
    kind: str  # "coordinator", "server" or "client"
    target: str  # "primary"/"follower" for a coordinator, else the process name
    duration: float = 0.0  # for STOP: seconds until SIGCONT

    def describe(self) -> str:
        held = f" for {self.duration:.2f}s" if self.action == STOP else ""
        return f"t={self.at:.2f}s {self.action} {self.kind} {self.target}{held}"


def server_names(shape: Shape) -> list[str]:
    return [f"s{i + 1}" for i in range(shape.servers)]


def client_names(shape: Shape) -> list[str]:
    return [f"viewer{i + 1}" for i in range(shape.clients)]


def client_starts(seed: int, shape: Shape) -> dict[str, float]:
    """When each client starts, seconds after the first; the first at 0."""
    rng = random.Random(f"starts-{seed}")
    names = client_names(shape)
    return {name: 0.0 if i == 0 else round(rng.uniform(0, shape.client_stagger), 3) for i, name in enumerate(names)}


def make_schedule(seed: int, shape: Shape = Shape()) -> list[Fault]:
    rng = random.Random(seed)
    lo, hi = shape.window
    timeout = shape.failure_timeout
    faults: list[Fault] = []
    coordinator_hit = False
    servers_out: set[str] = set()
    clients_hit: set[str] = set()
    for _ in range(rng.randint(*shape.faults)):
        at = round(rng.uniform(lo, hi), 3)
        kind = rng.choice(["coordinator", "server", "server", "client"])
        if kind == "coordinator" and not coordinator_hit:
            coordinator_hit = True
            target = rng.choice(["primary", "follower"])
            if rng.random() < 0.5:
                faults.append(Fault(at, KILL, kind, target))
            else:
                faults.append(Fault(at, STOP, kind, target, round(rng.uniform(0.2, 3.0), 3)))
        elif kind == "server":
            name = rng.choice(server_names(shape))
            if name in servers_out:
                continue
            can_take_out = len(servers_out) < shape.servers - 1
            roll = rng.random()
            if can_take_out and roll < 0.4:
                servers_out.add(name)
                faults.append(Fault(at, KILL, kind, name))
            elif can_take_out and roll < 0.7:
                servers_out.add(name)  # it comes back, but late for this run's movies: count it out
                faults.append(Fault(at, STOP, kind, name, round(rng.uniform(timeout + 0.5, timeout + 3.0), 3)))
            else:
                faults.append(Fault(at, STOP, kind, name, round(rng.uniform(0.05, timeout * 0.5), 3)))
        elif kind == "client":
            name = rng.choice(client_names(shape))
            if name in clients_hit:
                continue
            clients_hit.add(name)
            at = max(at, shape.client_stagger + 0.3)  # after every client has started
            if rng.random() < 0.5:
                faults.append(Fault(at, KILL, kind, name))
            else:
                faults.append(Fault(at, STOP, kind, name, round(rng.uniform(0.05, timeout * 0.5), 3)))
    return sorted(faults, key=lambda f: f.at)


def killed_clients(faults: list[Fault]) -> set[str]:
    return {f.target for f in faults if f.kind == "client" and f.action == KILL}


def killed_servers(faults: list[Fault]) -> set[str]:
    return {f.target for f in faults if f.kind == "server" and f.action == KILL}


def chaos_seeds(text: str | None) -> list[int]:
    """ "0-19" or "3,7,11" (or a mix) as a list of seeds."""
    seeds: list[int] = []
    for part in (text or "0-19").split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds
