"""Movie ids: what a valid one looks like. Apart from the store, so that a client checks an id without
loading the store's machinery (tempfile, shutil, mmap: ~10 ms of a client's start-up)."""

from __future__ import annotations

import re

from vod.errors import UsageError

MOVIE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_movie_id(movie_id: str) -> str:
    if not MOVIE_ID_RE.match(movie_id or ""):
        raise UsageError(f"movie id {movie_id!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return movie_id
