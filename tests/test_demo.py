"""`vod demo` as users run it: the whole local system, and with --chaos a server and the primary killed mid-movie."""

import re

from conftest import run_cli


def test_demo_with_chaos_arrives_whole(tmp_path):
    r = run_cli("demo", "--workdir", str(tmp_path), "--chaos", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "SIGKILL server s2" in out and "SIGKILL primary coordinator" in out
    played = re.search(r"played RUID \d+: (\d+)/(\d+) frames received.*?(\d+) stalls", out)
    assert played and played.group(1) == played.group(2)
    assert "all 240 frames identical to the store" in out
    assert "restripes: revision 2 after s2 failed" in out
    print(played.group(0))  # the stall count, for the log
