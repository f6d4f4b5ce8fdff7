"""Child processes that never outlive their parent: for `vod demo` (and anything that runs a local system).

Each child is started in its own session with PR_SET_PDEATHSIG (Linux), so it
is killed even if the parent dies without cleaning up; `stop_all` sends
SIGTERM, waits a bounded time, then SIGKILLs and reaps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

_PDEATHSIG = 1  # PR_SET_PDEATHSIG


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PDEATHSIG, signal.SIGKILL)


class WaitTimedOut(Exception):
    """A bounded wait for a local system to reach some state ran out."""


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1, error: type[Exception] = WaitTimedOut):
    """Poll `predicate` until it returns something true (returned), or raise `error` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise error(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def console_script(name: str) -> list[str]:
    """How to run one of our console scripts from this interpreter's environment."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(path):
        return [path]
    module = {"vod": "vod", "vod-coordinator": "vod.coordinator.cli", "vod-server": "vod.server.cli",
              "vod-client": "vod.client.cli", "vod-admin": "vod.admin"}[name]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: str | None = None
    log_file: IO | None = field(default=None, repr=False)


class ProcessGroup:
    def __init__(self) -> None:
        self.children: dict[str, Child] = {}

    def start(self, name: str, argv: list[str], log_path: str | None = None, env: dict | None = None,
              stdout=None) -> Child:
        log_file = open(log_path, "ab") if log_path else None
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or log_file or subprocess.DEVNULL,
                                stderr=log_file or subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                start_new_session=True, env=env)
        child = Child(name, proc, log_path, log_file)
        self.children[name] = child
        return child

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        child = self.children[name]
        if child.proc.poll() is None:
            child.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            child.proc.wait(timeout=10)

    def stop_all(self, grace: float = 3.0) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)
            if child.log_file:
                child.log_file.close()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def admin(coordinators: str, secret_file: str, *args: str) -> subprocess.CompletedProcess:
    """Run `vod-admin` against a local coordinator group."""
    return subprocess.run(console_script("vod-admin") + ["--coordinators", coordinators, "--secret-file", secret_file,
                                                         *args], capture_output=True, text=True, timeout=30)


def admin_status(coordinators: str, secret_file: str) -> dict:
    """`vod-admin status --json`, or {} while nobody answers."""
    r = admin(coordinators, secret_file, "status", "--json")
    return json.loads(r.stdout) if r.returncode == 0 else {}


def start_coordinator_group(group: ProcessGroup, workdir: str, env: dict, host: str = "127.0.0.1",
                            replicas: int = 3) -> str:
    """Start `replicas` coordinator replicas on free ports (logs and data under `workdir`); their listen list."""
    raft = [f"{host}:{free_port()}" for _ in range(replicas)]
    listen = [f"{host}:{free_port()}" for _ in range(replicas)]
    for i in range(replicas):
        rid = f"c{i + 1}"
        group.start(rid, console_script("vod-coordinator") + [
            "--id", rid, "--raft", raft[i], "--peers", ",".join(raft), "--listen", listen[i],
            "--data", os.path.join(workdir, f"coordinator-{rid}-{os.getpid()}")],
            os.path.join(workdir, f"{rid}.log"), env)
    return ",".join(listen)
