"""Real processes: three coordinators that also listen on local admin sockets, and vod-admin through them.

The sockets live in a fresh short tmp dir laid out as the default ($XDG_RUNTIME_DIR/vod/USER), so
discovery is tested too without touching the user's own runtime directory.
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster import Cluster, wait_for
from vod.groups.probe import BlockingClient, ConnectionClosed, ProbeTimeout
from vod.groups.wire import AuthFailed, Status
from vod.localsocket import unix_address, user_name
from vod.procs import console_script


@pytest.fixture
def local_cluster():
    runtime = Path(tempfile.mkdtemp(prefix="vodrt-"))  # short: a socket path has at most 107 bytes
    sockets = runtime / "vod" / user_name(os.getuid())
    c = Cluster(runtime / "cluster", admin_sockets=sockets)
    try:
        c.start()
        yield c, runtime, sockets
    finally:
        c.stop_all()
        shutil.rmtree(runtime, ignore_errors=True)


def admin(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(console_script("vod-admin") + ["--timeout", "2", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env=env)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_vod_admin_works_through_the_local_sockets_only(local_cluster):
    cluster, runtime, sockets = local_cluster
    paths = [cluster.replicas[rid].admin_socket for rid in cluster.ids]
    assert mode(sockets) == 0o700 and mode(sockets.parent) == 0o700
    for path in paths:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode(path) == 0o600, path

    primary = cluster.wait_primary()
    secret = ["--secret-file", str(cluster.secret_file)]
    one = admin("--socket", str(cluster.replicas[primary].admin_socket), *secret, "status", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["primary"] == primary

    # No address at all: the sockets of this host's coordinators are found in the per-user directory.
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    env.pop("VOD_SECRET_FILE", None)
    found = admin(*secret, "status", "--json", env=env)
    assert found.returncode == 0, found.stderr
    doc = json.loads(found.stdout)
    assert doc["primary"] == primary
    assert sorted(r["role"] for r in doc["replicas"]) == ["backup", "primary", "witness"]
    # A command that reads from the primary after Status goes on through its socket, not over TCP.
    requests = admin(*secret, "requests", "--json", env=env)
    assert requests.returncode == 0 and json.loads(requests.stdout) == [], requests.stderr


def test_the_domain_secret_is_still_checked_on_the_local_socket(local_cluster):
    cluster, runtime, _ = local_cluster
    wrong = runtime / "wrong-secret"
    wrong.write_text("0" * 64)
    wrong.chmod(0o600)
    path = cluster.replicas["c1"].admin_socket
    refused = admin("--socket", str(path), "--secret-file", str(wrong), "status")
    assert refused.returncode != 0 and "authentication failed" in refused.stderr, refused.stderr
    with BlockingClient(unix_address(str(path)), timeout=2) as client:
        with pytest.raises(AuthFailed):
            client.call(Status)  # nothing before authentication, on the local socket as over TCP
    with BlockingClient(unix_address(str(path)), timeout=2) as client:
        client.authenticate(cluster.secret)
        assert client.call(Status)["status"]["replica"]["id"] == "c1"


def test_a_killed_coordinator_leaves_a_stale_socket_that_its_restart_replaces(local_cluster):
    cluster, _, _ = local_cluster
    path = cluster.replicas["c2"].admin_socket
    cluster.kill("c2")
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # SIGKILL: nobody removed it
    with pytest.raises(ConnectionRefusedError):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
    cluster.start_replica("c2")
    wait_for(lambda: "removed the stale admin socket" in cluster.log("c2"), 10, "c2 to clear its stale socket",
             describe=cluster.describe)

    def answers():
        try:
            with BlockingClient(unix_address(str(path)), timeout=1) as client:
                client.authenticate(cluster.secret)
                return client.call(Status)["status"]["replica"]["id"]
        except (OSError, ConnectionClosed, ProbeTimeout):
            return None

    assert wait_for(answers, 10, "c2 to answer on its socket again", describe=cluster.describe) == "c2"
    assert mode(path) == 0o600


def test_a_socket_directory_open_to_others_stops_the_coordinator_with_the_fix(tmp_path):
    loose = Path(tempfile.mkdtemp(prefix="vodrt-"))
    try:
        loose.chmod(0o755)
        out = subprocess.run(console_script("vod-coordinator") + [
            "--id", "c1", "--raft", "127.0.0.1:1", "--peers", "127.0.0.1:1", "--listen", "127.0.0.1:2",
            "--data", str(tmp_path / "data"), "--secret-file", str(_secret(tmp_path)),
            "--admin-socket", str(loose / "c1.sock")], capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
        assert out.returncode == 2
        assert f"socket directory {loose} has mode 755" in out.stderr and f"chmod 700 {loose}" in out.stderr
    finally:
        shutil.rmtree(loose, ignore_errors=True)


def _secret(tmp_path: Path) -> Path:
    from vod.secrets import write_secret

    path = tmp_path / "secret"
    write_secret(str(path))
    return path
