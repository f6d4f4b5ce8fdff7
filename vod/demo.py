"""`vod demo`: runs what exists of the system locally, one command.

Until the streaming system lands (issues 3-5) the demo is the media round
trip: make a synthetic movie, ingest it, verify it, export it, and check the
exported AVI frame by frame against the store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time

from vod.media.ingest import export, ingest
from vod.media.store import MovieStore
from vod.media.synthetic import make_movie, parse_size
from vod.media.video import read_jpeg_frames


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run a whole local system (today: the media round trip)",
                       description="Run the local demo. Today it makes a synthetic movie, ingests it into a "
                                   "store, verifies and exports it, and checks every exported frame against "
                                   "the store's SHA-256.")
    p.add_argument("--workdir", default=None, help="where to put the movie and store (default: a temp dir)")
    p.add_argument("--frames", type=int, default=240, help="frames in the synthetic movie")
    p.add_argument("--size", default="640x360", metavar="WxH", help="frame size")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    workdir = args.workdir or tempfile.mkdtemp(prefix="vod-demo-")
    os.makedirs(workdir, exist_ok=True)
    source = os.path.join(workdir, "synthetic.avi")
    exported = os.path.join(workdir, "exported.avi")
    store = MovieStore(os.path.join(workdir, "store"))
    movie_id = f"demo-{int(time.time())}"

    t0 = time.monotonic()
    make_movie(source, args.frames, parse_size(args.size), args.fps)
    print(f"[1/4] made {source}: {args.frames} frames {args.size} @ {args.fps:g} fps")
    info = ingest(store, source, movie_id)
    print(f"[2/4] ingested as {movie_id} into {store.root}: {info.frame_count} frames, {info.frames_bytes:,} bytes")
    with store.open(movie_id) as movie:
        bad = movie.first_bad_frame()
        print(f"[3/4] verified: {'all frames match' if bad is None else f'frame {bad} is bad'}")
        export(store, movie_id, exported)
        exported_frames = read_jpeg_frames(exported).frames
        mismatches = sum(1 for i, jpeg in enumerate(exported_frames)
                         if hashlib.sha256(jpeg).digest() != movie.frame_sha256(i))
    print(f"[4/4] exported {exported}: {mismatches} frames differ from the store")
    ok = bad is None and mismatches == 0
    print(f"demo {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.1f}s; play it with: ffplay {exported}")
    return 0 if ok else 1
