"""What several benchmarks share: nearest-rank percentiles, JSON without NaN, a bounded wait, progress lines."""

from __future__ import annotations

import math
import sys

from vod.procs import wait_until as procs_wait_until


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


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    return procs_wait_until(predicate, timeout, what, interval, error=RuntimeError)
