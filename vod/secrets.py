"""The domain secret: read from `--secret-file FILE`, else from the file named by `VOD_SECRET_FILE`."""

from __future__ import annotations

import os
import stat

from vod.errors import UsageError

ENV_VAR = "VOD_SECRET_FILE"
MIN_BYTES = 16


def add_secret_argument(parser) -> None:
    parser.add_argument("--secret-file", metavar="FILE", default=None,
                        help=f"file holding the domain secret (default: the file named by ${ENV_VAR})")


def read_secret(path: str | None) -> bytes:
    path = path or os.environ.get(ENV_VAR)
    if not path:
        raise UsageError(f"no domain secret: give --secret-file FILE or set {ENV_VAR}")
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as err:
        raise UsageError(f"secret file {path}: {err.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"secret file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"fix it with: chmod 600 {path}")
    if len(secret) < MIN_BYTES:
        raise UsageError(f"secret file {path} holds {len(secret)} bytes; a secret needs at least {MIN_BYTES}")
    return secret


def write_secret(path: str) -> bytes:
    """Create a new random secret file with mode 600 (for `vod demo` and tests)."""
    secret = os.urandom(32).hex().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret
