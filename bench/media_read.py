"""Benchmark: random frame reads from the movie store (a server reads thousands of frames a second).

Builds a 5,000-frame store of synthetic 640x360 JPEGs (once, cached under
--workdir), then reads 10,000 random frames three ways and prints a table:
plain reads, reads + SHA-256 (what a server pays to checksum on the fly), and
reads of frames a server would send in order (sequential stripe).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vod.media.store import MovieStore  # noqa: E402
from vod.media.synthetic import synthetic_jpegs  # noqa: E402

MOVIE_ID = "bench-5000"


def build(store: MovieStore, frames: int, size: tuple[int, int]) -> None:
    if store.exists(MOVIE_ID):
        return
    t0 = time.monotonic()
    store.add(MOVIE_ID, synthetic_jpegs(frames, size, 24.0), fps=24.0, width=size[0], height=size[1],
              source="synthetic", source_codec="MJPG", keeps_source_jpeg=True, jpeg_quality=85)
    print(f"built {frames}-frame store in {time.monotonic() - t0:.1f}s", file=sys.stderr)


def timed(label: str, fn) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    nbytes = fn()
    dt = time.perf_counter() - t0
    return label, nbytes, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vod-bench-media"))
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--reads", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON document (last line)")
    args = ap.parse_args()
    store = MovieStore(os.path.join(args.workdir, "store"))
    build(store, args.frames, (640, 360))
    rng = random.Random(args.seed)
    with store.open(MOVIE_ID) as movie:
        order = [rng.randrange(len(movie)) for _ in range(args.reads)]
        stripe = [i for i in range(0, len(movie), 4)] * (args.reads * 4 // len(movie) + 1)
        stripe = stripe[: args.reads]

        def plain():
            return sum(len(movie.frame(i)) for i in order)

        def hashed():
            total = 0
            for i in order:
                data = movie.frame(i)
                assert hashlib.sha256(data).digest() == movie.frame_sha256(i)
                total += len(data)
            return total

        def sequential():
            return sum(len(movie.frame(i)) for i in stripe)

        plain()  # warm the page cache so every row measures the same thing
        rows = [timed("random read", plain), timed("random read + sha256 check", hashed),
                timed("stripe read (every 4th frame)", sequential)]
    print(f"movie store frame reads: {args.frames}-frame store, 640x360 JPEG, {args.reads} reads each")
    print(f"{'mode':32} {'frames/s':>12} {'MB/s':>9} {'us/frame':>9}")
    for label, nbytes, dt in rows:
        print(f"{label:32} {args.reads / dt:12,.0f} {nbytes / dt / 1e6:9,.0f} {dt / args.reads * 1e6:9.1f}")
    if args.json:
        print(json.dumps({"frames": args.frames, "reads": args.reads, "rows": [
            {"mode": label, "frames_per_s": args.reads / dt, "mb_per_s": nbytes / dt / 1e6,
             "us_per_frame": dt / args.reads * 1e6} for label, nbytes, dt in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
