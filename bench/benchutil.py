"""What several benchmarks share: nearest-rank percentiles, JSON without NaN, a bounded wait, progress lines."""

from __future__ import annotations

import json
import math
import os
import sys
import time

from vod.procs import wait_until as procs_wait_until
from vod.secrets import read_secret, write_secret


def compile_bytecode() -> None:
    """Write vod's bytecode as an installed package has it (`make bench` does too): a benchmark run alone after
    an edit, with PYTHONDONTWRITEBYTECODE set, would otherwise time every process compiling vod's modules from
    source at start (~35 ms of a client's start-up), which no installed copy does."""
    import compileall

    import vod
    if not compileall.compile_dir(os.path.dirname(vod.__file__), quiet=1):
        raise SystemExit("compiling vod's modules failed (see above)")


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds only the table (or the JSON)."""
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def json_safe(obj):
    """NaN/inf (no value measured) become null; floats are rounded to microseconds' worth of digits."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def print_closing(doc: dict, started: float, load_before, kept: str | None, as_json: bool) -> None:
    """A benchmark's last lines: wall time and load (kept in `doc` too), where its files are, and the JSON."""
    doc["loadavg_after"] = os.getloadavg()
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    print(f"\n({doc['wall_seconds']} s in all; load average before {load_before[0]:.2f}, after "
          f"{doc['loadavg_after'][0]:.2f} on {os.cpu_count()} cores{f'; logs kept in {kept}' if kept else ''})")
    if as_json:
        print(json.dumps(json_safe(doc), sort_keys=True))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    return procs_wait_until(predicate, timeout, what, interval, error=RuntimeError)


def profile_totals(lines, waits: tuple[str, ...]) -> tuple[int, dict[str, int], dict[str, int]]:
    """py-spy raw (collapsed stacks) lines -> (busy samples, self samples per frame, inclusive per frame).

    The first entry of each stack names the thread; stacks whose innermost frame starts with one of
    `waits` are time spent waiting, not working, and are left out."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";")[1:], int(count)
        if not frames or frames[-1].startswith(waits):
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    return total, own, inclusive


def domain_secret(workdir: str) -> tuple[str, bytes, dict[str, str]]:
    """A fresh secret file in `workdir`: (its path, the secret, an environment naming it for child processes)."""
    path = os.path.join(workdir, "secret")
    write_secret(path)
    return path, read_secret(path), dict(os.environ, VOD_SECRET_FILE=path)


def stored_current(store, movie_id: str) -> bool:
    """Whether `movie_id` is in `store` in the current format; a movie of an older format (kept in a bench's
    workdir from an earlier vod) is removed, to be built again: an old format is served more slowly."""
    import shutil

    from vod.media.store import FORMAT_VERSION

    if not store.exists(movie_id):
        return False
    with store.open(movie_id) as movie:
        if movie.index_version == FORMAT_VERSION:
            return True
    shutil.rmtree(store.movie_path(movie_id))
    return False
