"""Every console script answers --help; unknown flags fail with usage text, not a traceback."""

import subprocess
import sys
import sysconfig
import os

import pytest

SCRIPTS = ["vod", "vod-coordinator", "vod-server", "vod-client", "vod-admin"]


def script(name):
    path = os.path.join(sysconfig.get_path("scripts"), name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed in this environment ({path})")
    return path


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    r = subprocess.run([script(name), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {name}")


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_flag(name):
    r = subprocess.run([script(name), "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
