"""Recruiting a new backup: a killed voter is replaced by a standby within 5 s, and the group then survives
a second kill (of the primary). Real processes on 127.0.0.1."""

import json
import subprocess
import time

from cluster import wait_for
from vod.procs import ProcessGroup, console_script, free_port
from vod.secrets import write_secret


def test_dead_backup_is_replaced_by_a_standby_then_the_primary_can_die(tmp_path):
    secret = str(tmp_path / "secret")
    write_secret(secret)
    raft = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    listen = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    every = ",".join(listen)

    def status():
        r = subprocess.run(console_script("vod-admin") + ["--coordinators", every, "--secret-file", secret,
                                                          "--timeout", "1", "status", "--json"],
                           capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def roles():
        return {r["id"]: r["role"] for r in status().get("replicas", []) if r["id"]}

    with ProcessGroup() as group:
        for i in range(3):
            group.start(f"c{i + 1}", console_script("vod-coordinator") + [
                "--id", f"c{i + 1}", "--raft", raft[i], "--peers", ",".join(raft[:3]), "--listen", listen[i],
                "--data", str(tmp_path / f"c{i + 1}"), "--secret-file", secret], str(tmp_path / f"c{i + 1}.log"))
        group.start("c4", console_script("vod-coordinator") + [
            "--id", "c4", "--standby", "--raft", raft[3], "--coordinators", ",".join(listen[:3]),
            "--listen", listen[3], "--data", str(tmp_path / "c4"), "--secret-file", secret], str(tmp_path / "c4.log"))
        wait_for(lambda: roles().get("c4") == "standby" and "primary" in roles().values(), 30, "primary and standby")
        primary = next(rid for rid, role in roles().items() if role == "primary")
        backup = next(rid for rid in ("c1", "c2", "c3") if rid != primary)
        killed_at = time.monotonic()
        group.kill(backup)
        wait_for(lambda: roles().get("c4") in ("backup", "witness"), 10, "the standby recruited as a voter")
        recruited_after = time.monotonic() - killed_at
        assert recruited_after < 5.0, f"recruited after {recruited_after:.1f} s"

        group.kill(primary)
        wait_for(lambda: status().get("primary") not in (None, primary), 15, "a new primary after the second kill")
        assert status()["primary"] in {"c1", "c2", "c3", "c4"} - {primary, backup}
