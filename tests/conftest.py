import os
import shutil
import subprocess
import sys

import pytest

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
SHARED_FIXTURES = os.path.normpath(os.path.join(SHARED, "fixtures"))


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


needs_ffmpeg = pytest.mark.skipif(not have_ffmpeg(), reason="ffmpeg/ffprobe not installed (CI installs them: apt-get install ffmpeg)")


def shared_fixture(name: str) -> str:
    path = os.path.join(SHARED_FIXTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"shared fixture {name} absent ({SHARED_FIXTURES} is not beside the project)")
    return path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m vod ARGS` (the `vod` console script) with a bounded wait."""
    return subprocess.run([sys.executable, "-m", "vod", *args], capture_output=True, text=True, timeout=timeout)


def ffmpeg(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def framemd5(path: str, copy: bool) -> list[str]:
    """MD5 of each frame: of the stored packets with copy=True, of the decoded pictures otherwise."""
    codec = ["-c", "copy"] if copy else []
    text = ffmpeg("-i", path, "-map", "0:v:0", *codec, "-f", "framemd5", "-")
    return [line.rsplit(",", 1)[1].strip() for line in text.splitlines() if line and not line.startswith("#")]


def ffprobe_frames(path: str) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", path], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().strip(","))


def pytest_terminal_summary(terminalreporter):
    """The chaos suite reports the seeds it ran and how each ended (tests/chaos/test_chaos.py)."""
    outcomes = {}
    for status in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(status, []):
            if "test_chaos_run[seed=" in getattr(report, "nodeid", "") and report.when == "call":
                outcomes[int(report.nodeid.rsplit("seed=", 1)[1].rstrip("]"))] = status
    if outcomes:
        failed = sorted(s for s, o in outcomes.items() if o != "passed")
        terminalreporter.write_line(f"chaos seeds run: {' '.join(map(str, sorted(outcomes)))}; "
                                    f"failed: {' '.join(map(str, failed)) or 'none'}")


@pytest.fixture
def proxy():
    """A loopback TCP proxy that can cut its connections (tests/tcpproxy.py), always stopped."""
    from tcpproxy import CutProxy
    p = CutProxy()
    try:
        yield p
    finally:
        p.stop()
