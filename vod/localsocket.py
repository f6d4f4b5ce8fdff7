"""The coordinator's local admin socket: where it lives, and the checks that keep its directory private.

Layout (SmartFlow's: one directory per application and user, mode 700):

    $XDG_RUNTIME_DIR/vod/<user>/coordinator-<ID>.sock   when XDG_RUNTIME_DIR names a directory
    /tmp/vod-<uid>/coordinator-<ID>.sock                  otherwise

`vod-coordinator --admin-socket PATH` puts it elsewhere (its directory gets the
same checks), `--no-admin-socket` turns it off. The socket file is mode 600.
The directory is the wall that matters: the socket exists, with looser bits,
for a moment between bind() and chmod(), and only a private directory keeps
other users from reaching it then. In a shared /tmp anybody may create
`/tmp/vod-<uid>` first, so an existing directory is used only if it belongs to
us, is a real directory (no symbolic link) and is closed to group and others.

The domain-secret challenge-response still runs over the socket: file
permissions are a second wall, not the only one.

Filesystem work happens once, at start-up (before the reactor serves anyone);
nothing here blocks on the network: a stale socket is recognised by a
non-blocking connect, which a listening socket accepts or a dead one refuses at once.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import socket
import stat
from typing import Callable, Mapping

from vod.errors import UsageError

SOCKET_PREFIX = "coordinator-"
SOCKET_SUFFIX = ".sock"
UNIX_SCHEME = "unix:"  # an address of this form names a socket path instead of HOST:PORT
MAX_PATH_BYTES = 107  # sun_path is 108 bytes on Linux, NUL included
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class UnsafeDirectory(UsageError):
    """A socket directory somebody else owns or can enter: using it would expose the socket."""


class SocketInUse(UsageError):
    """Another live process answers on the socket path."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (containers): the uid names the user well enough
        return str(uid)


def socket_dir(env: Mapping[str, str] | None = None, uid: int | None = None,
               isdir: Callable[[str], bool] = os.path.isdir) -> str:
    """This user's directory for vod's local sockets (the layout in the module docstring)."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and isdir(runtime):
        return os.path.join(runtime, "vod", user_name(uid))
    return f"/tmp/vod-{uid}"


def default_socket_path(replica_id: str, env: Mapping[str, str] | None = None, uid: int | None = None,
                        isdir: Callable[[str], bool] = os.path.isdir) -> str:
    # The id becomes a file name: one with a slash could put the socket outside the private directory.
    if not _SAFE_ID.match(replica_id):
        raise UsageError(f"replica id {replica_id!r} cannot name an admin socket file (letters, digits, . _ - "
                         f"only); give --admin-socket PATH or --no-admin-socket")
    return os.path.join(socket_dir(env, uid, isdir), f"{SOCKET_PREFIX}{replica_id}{SOCKET_SUFFIX}")


def unix_address(path: str) -> str:
    return UNIX_SCHEME + os.path.abspath(path)


def unix_path(address: str) -> str | None:
    """The socket path of a `unix:/path` address, None for anything else (HOST:PORT)."""
    return address[len(UNIX_SCHEME):] if address.startswith(UNIX_SCHEME) else None


# -- the directory ---------------------------------------------------------------------------------


def check_private_dir(path: str, uid: int | None = None, flag: str = "--admin-socket") -> None:
    """UnsafeDirectory unless `path` is a real directory owned by `uid` with no group or other bits."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"socket directory {path} does not exist") from None
    except OSError as err:
        raise UsageError(f"socket directory {path}: {err.strerror}") from None
    elsewhere = f"or choose another path with {flag}"
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(f"socket directory {path} is a symbolic link; it must be a real directory: "
                              f"remove the link, {elsewhere}")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"socket directory {path} exists and is not a directory: remove it, {elsewhere}")
    if st.st_uid != uid:
        raise UnsafeDirectory(f"socket directory {path} belongs to uid {st.st_uid}, not to you (uid {uid}): "
                              f"another user could read or replace the socket; have it removed, {elsewhere}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise UnsafeDirectory(f"socket directory {path} has mode {mode:03o}; it must be closed to group and "
                              f"others: run `chmod 700 {path}`, {elsewhere}")


def ensure_private_dir(path: str, uid: int | None = None, flag: str = "--admin-socket") -> None:
    """Create `path` and any missing parents with mode 700, then check it (an existing one included)."""
    missing = []
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        missing.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # made meanwhile by somebody: the check below judges it
        except OSError as err:
            raise UsageError(f"cannot create socket directory {directory}: {err.strerror}; "
                             f"choose another path with {flag}") from None
    check_private_dir(path, uid, flag)


# -- the socket file -------------------------------------------------------------------------------


def socket_alive(path: str) -> bool:
    """Whether a process listens on the UNIX socket `path` (answered without waiting: see the module doc)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
        return True
    except BlockingIOError:
        return True  # listening, its backlog full
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise UsageError(f"cannot check socket {path}: {err.strerror}") from None
    finally:
        probe.close()


def prepare_socket(path: str, uid: int | None = None, flag: str = "--admin-socket") -> bool:
    """Make `path` ready to bind: private directory, short enough, no live owner. True if a stale file went."""
    path = os.path.abspath(path)
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise UsageError(f"{flag} {path}: {size} bytes, longer than a UNIX socket path may be "
                         f"({MAX_PATH_BYTES}); choose a shorter path")
    ensure_private_dir(os.path.dirname(path), uid, flag)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{path} exists and is not a socket; remove it, or choose another path with {flag}")
    if socket_alive(path):
        raise SocketInUse(f"another process already answers on {path} (a coordinator with the same id?); "
                          f"stop it, or choose another path with {flag}")
    os.unlink(path)  # left by a process that died without closing it (SIGKILL)
    return True


def find_sockets(directory: str, uid: int | None = None, flag: str = "--socket") -> list[str]:
    """The coordinator sockets in `directory` (checked private first), sorted; [] if it does not exist."""
    if not os.path.lexists(directory):
        return []
    check_private_dir(directory, uid, flag)
    found = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(SOCKET_PREFIX) and name.endswith(SOCKET_SUFFIX)):
            continue
        path = os.path.join(directory, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
        except FileNotFoundError:
            pass  # its coordinator stopped meanwhile
    return found
