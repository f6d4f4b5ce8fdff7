"""The local admin socket's directory rules (vod/localsocket.py), on real directories in a tmp dir."""

import os
import shutil
import socket
import stat
import tempfile

import pytest

from vod import localsocket as ls
from vod.admin import build_parser as admin_parser, coordinator_addresses
from vod.coordinator.cli import admin_socket, build_parser as coordinator_parser
from vod.errors import UsageError


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def short_tmp():
    """A directory whose paths stay under the UNIX socket path limit (pytest's can get long)."""
    base = tempfile.mkdtemp(prefix="vodls-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


# -- where the socket lives --------------------------------------------------------------------------


def test_default_path_is_under_the_runtime_dir_per_user():
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    path = ls.default_socket_path("c1", env, uid=os.getuid(), isdir=lambda p: True)
    assert path == f"/run/user/1000/vod/{ls.user_name(os.getuid())}/coordinator-c1.sock"


@pytest.mark.parametrize("env, isdir", [({}, True), ({"XDG_RUNTIME_DIR": "relative/dir"}, True),
                                        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, False)])
def test_default_path_falls_back_to_a_tmp_directory_per_uid(env, isdir):
    assert ls.default_socket_path("c2", env, uid=1234, isdir=lambda p: isdir) == "/tmp/vod-1234/coordinator-c2.sock"


@pytest.mark.parametrize("replica_id", ["../c1", "a/b", "", "x" * 65])
def test_a_replica_id_that_cannot_be_a_file_name_needs_an_explicit_path(replica_id):
    with pytest.raises(UsageError, match="--admin-socket PATH or --no-admin-socket"):
        ls.default_socket_path(replica_id, {}, uid=1)


def test_unix_addresses():
    assert ls.unix_address("/run/x.sock") == "unix:/run/x.sock"
    assert ls.unix_path("unix:/run/x.sock") == "/run/x.sock"
    assert ls.unix_path("127.0.0.1:7000") is None


# -- the directory -----------------------------------------------------------------------------------


def test_missing_directories_are_created_mode_700(tmp_path):
    old = os.umask(0)  # even with a permissive umask
    try:
        target = tmp_path / "vod" / "alice"
        ls.ensure_private_dir(str(target))
    finally:
        os.umask(old)
    assert mode(target) == 0o700 and mode(tmp_path / "vod") == 0o700


def test_an_existing_private_directory_is_used_as_it_is(tmp_path):
    target = tmp_path / "run"
    target.mkdir(mode=0o700)
    ls.ensure_private_dir(str(target))
    assert mode(target) == 0o700


@pytest.mark.parametrize("bits", [0o755, 0o750, 0o701, 0o777])
def test_a_looser_directory_is_refused_with_the_fix(tmp_path, bits):
    target = tmp_path / "run"
    target.mkdir()
    target.chmod(bits)
    with pytest.raises(ls.UnsafeDirectory) as refused:
        ls.ensure_private_dir(str(target))
    assert f"{target} has mode {bits:03o}" in str(refused.value)
    assert f"chmod 700 {target}" in str(refused.value) and "--admin-socket" in str(refused.value)
    assert mode(target) == bits  # never "fixed" behind the owner's back


def test_a_directory_of_another_user_is_refused(tmp_path):
    target = tmp_path / "run"
    target.mkdir(mode=0o700)
    me = os.getuid()
    with pytest.raises(ls.UnsafeDirectory) as refused:
        ls.check_private_dir(str(target), uid=me + 1, flag="--socket")
    message = str(refused.value)
    assert f"{target} belongs to uid {me}, not to you (uid {me + 1})" in message and "--socket" in message


def test_a_symbolic_link_or_a_file_is_not_a_socket_directory(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ls.UnsafeDirectory, match="symbolic link"):
        ls.ensure_private_dir(str(link))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(ls.UnsafeDirectory, match="not a directory"):
        ls.ensure_private_dir(str(plain))


def test_an_uncreatable_directory_names_the_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: permissions do not stop us")
    with pytest.raises(UsageError, match=f"cannot create socket directory {locked}/sub"):
        ls.ensure_private_dir(str(locked / "sub"))


# -- the socket file ---------------------------------------------------------------------------------


def test_a_stale_socket_is_removed_and_a_live_one_refused(short_tmp):
    path = os.path.join(short_tmp, "run", "coordinator-c1.sock")
    assert ls.prepare_socket(path) is False  # nothing there: nothing removed, directory made
    assert mode(os.path.dirname(path)) == 0o700
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # bound, never listening, closed: what a SIGKILLed process leaves
    dead.close()
    assert ls.prepare_socket(path) is True and not os.path.exists(path)
    live = socket.socket(socket.AF_UNIX)
    try:
        live.bind(path)
        live.listen(1)
        with pytest.raises(ls.SocketInUse, match=f"another process already answers on {path}"):
            ls.prepare_socket(path)
        assert os.path.exists(path)
    finally:
        live.close()


def test_a_file_that_is_not_a_socket_is_never_removed(short_tmp):
    os.mkdir(os.path.join(short_tmp, "run"), 0o700)
    path = os.path.join(short_tmp, "run", "coordinator-c1.sock")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(UsageError, match="exists and is not a socket"):
        ls.prepare_socket(path)
    assert open(path).read() == "precious"


def test_a_socket_path_too_long_for_the_kernel_is_refused(tmp_path):
    with pytest.raises(UsageError, match="longer than a UNIX socket path may be"):
        ls.prepare_socket(str(tmp_path / ("x" * 120) / "c.sock"))


def test_sockets_are_found_in_a_private_directory_only(short_tmp):
    directory = os.path.join(short_tmp, "run")
    assert ls.find_sockets(directory) == []  # no directory: no coordinator here
    os.mkdir(directory, 0o700)
    socks = []
    for name in ("coordinator-c2.sock", "coordinator-c1.sock", "other.sock"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(directory, name))
        socks.append(s)
    open(os.path.join(directory, "coordinator-c3.sock"), "w").close()  # not a socket
    try:
        assert ls.find_sockets(directory) == [os.path.join(directory, "coordinator-c1.sock"),
                                              os.path.join(directory, "coordinator-c2.sock")]
        os.chmod(directory, 0o755)
        with pytest.raises(ls.UnsafeDirectory, match="--socket"):
            ls.find_sockets(directory)
    finally:
        for s in socks:
            s.close()


# -- the command lines that use it -------------------------------------------------------------------


def coordinator_args(*extra):
    return coordinator_parser().parse_args(["--id", "c1", "--raft", "127.0.0.1:1", "--peers", "127.0.0.1:1",
                                      "--listen", "127.0.0.1:2", "--data", "d", *extra])


def listening_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    return s


def test_the_coordinator_does_without_a_busy_default_socket_but_not_without_an_asked_for_one(short_tmp,
                                                                                              monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", short_tmp)
    default = ls.default_socket_path("c1")
    assert admin_socket(coordinator_args()) == (default, False)
    assert mode(os.path.dirname(default)) == 0o700
    assert admin_socket(coordinator_args("--no-admin-socket")) == (None, False)
    busy = listening_socket(default)
    try:
        assert admin_socket(coordinator_args()) == (None, False)  # another group's c1 has it: TCP only
        with pytest.raises(ls.SocketInUse):
            admin_socket(coordinator_args("--admin-socket", default))
    finally:
        busy.close()
    mine = os.path.join(short_tmp, "mine", "c1.sock")
    assert admin_socket(coordinator_args("--admin-socket", mine)) == (mine, True)


def admin_args(*argv):
    return admin_parser().parse_args([*argv, "status"])


def test_vod_admin_finds_the_local_sockets_or_says_where_it_looked(short_tmp):
    env = {"XDG_RUNTIME_DIR": short_tmp}
    where = ls.socket_dir(env)
    with pytest.raises(UsageError, match=f"no coordinator socket in {where}"):
        coordinator_addresses(admin_args(), env)
    ls.ensure_private_dir(where)
    live = [listening_socket(os.path.join(where, f"coordinator-c{i}.sock")) for i in (1, 2)]
    try:
        assert coordinator_addresses(admin_args(), env) == [f"unix:{where}/coordinator-c1.sock",
                                                            f"unix:{where}/coordinator-c2.sock"]
        assert coordinator_addresses(admin_args("--coordinators", "127.0.0.1:5"), env) == ["127.0.0.1:5"]
        with pytest.raises(UsageError, match="not both"):
            coordinator_addresses(admin_args("--coordinators", "127.0.0.1:5", "--socket", "x.sock"), env)
        assert coordinator_addresses(admin_args("--socket", f"{where}/coordinator-c2.sock"), env) == \
            [f"unix:{where}/coordinator-c2.sock"]
        os.chmod(where, 0o711)
        with pytest.raises(ls.UnsafeDirectory, match="--socket"):
            coordinator_addresses(admin_args("--socket", f"{where}/coordinator-c2.sock"), env)
    finally:
        for s in live:
            s.close()
