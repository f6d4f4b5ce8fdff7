"""The domain secret file: read from --secret-file or $VOD_SECRET_FILE; a file others can read is refused."""

import os
import subprocess
import sys

import pytest

from vod.errors import UsageError
from vod.secrets import ENV_VAR, read_secret, write_secret


def test_a_new_secret_is_mode_600_and_reads_back(tmp_path):
    path = str(tmp_path / "secret")
    secret = write_secret(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_secret(path) == secret


def test_the_environment_names_the_file_when_the_flag_is_absent(tmp_path, monkeypatch):
    path = str(tmp_path / "secret")
    secret = write_secret(path)
    monkeypatch.setenv(ENV_VAR, path)
    assert read_secret(None) == secret
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(UsageError, match="--secret-file"):
        read_secret(None)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_readable_by_group_or_others_is_refused_with_the_fix(tmp_path, mode):
    path = str(tmp_path / "secret")
    write_secret(path)
    os.chmod(path, mode)
    with pytest.raises(UsageError, match=f"readable by group or others .*chmod 600 {path}"):
        read_secret(path)


def test_a_short_or_missing_secret_is_refused(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    short.chmod(0o600)
    with pytest.raises(UsageError, match="at least 16"):
        read_secret(str(short))
    with pytest.raises(UsageError, match="No such file"):
        read_secret(str(tmp_path / "absent"))


@pytest.mark.parametrize("command", [["vod.coordinator.cli", "--id", "c1", "--raft", "127.0.0.1:1", "--peers",
                                      "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--listen", "127.0.0.1:4", "--data"],
                                     ["vod.server.cli", "--domain", "d", "--coordinators", "127.0.0.1:1", "--listen",
                                      "127.0.0.1:2", "--media"]])
def test_every_daemon_exits_2_naming_a_world_readable_secret(tmp_path, command):
    path = tmp_path / "secret"
    write_secret(str(path))
    path.chmod(0o644)
    run = subprocess.run([sys.executable, "-m", command[0], *command[1:], str(tmp_path), "--secret-file", str(path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 2, run.stderr
    assert f"fix it with: chmod 600 {path}" in run.stderr
