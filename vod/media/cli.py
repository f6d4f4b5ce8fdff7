"""`vod media ...`: ingest, inspect, verify, export and make movies."""

from __future__ import annotations

import json
import sys
import time

from vod.errors import CorruptMovie
from vod.media.ingest import export, ingest
from vod.media.store import MovieStore
from vod.media.synthetic import make_movie, parse_size
from vod.media.video import DEFAULT_JPEG_QUALITY

DEFAULT_STORE = "store"


class ProgressLine:
    """At most one progress line a second on stderr, so long ingests show they are alive."""

    def __init__(self, label: str, total: int | None = None, quiet: bool = False):
        self.label, self.total, self.quiet = label, total, quiet
        self.start = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < 1.0:
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        rate = done / max(now - self.start, 1e-9)
        print(f"{self.label}: {done}{of} frames ({rate:,.0f} frames/s)", file=sys.stderr)


def add_parsers(sub) -> None:
    media = sub.add_parser("media", help="movie store: ingest, info, verify, export, make, list",
                           description="Manage the movie store: a directory of movies whose frames "
                                       "are kept as the exact JPEG bytes servers send.")
    msub = media.add_subparsers(dest="media_command", required=True, metavar="COMMAND")

    def with_store(p):
        p.add_argument("--store", default=DEFAULT_STORE, metavar="DIR", help="movie store directory")
        return p

    p = with_store(msub.add_parser("ingest", help="store a video file as a movie",
                                   description="Read any video OpenCV/FFmpeg can open (MJPEG AVI, H.264 MP4, "
                                               "raw .mjpeg...). Motion-JPEG frames are kept byte for byte; "
                                               "other codecs are decoded and encoded to JPEG at --quality. "
                                               "All or nothing: a failure leaves no partial movie."))
    p.add_argument("input", metavar="INPUT", help="video file")
    p.add_argument("--id", required=True, dest="movie_id", metavar="MOVIE_ID", help="id of the new movie")
    p.add_argument("--quality", type=int, default=DEFAULT_JPEG_QUALITY,
                   help="JPEG quality (1-100) for sources that are not Motion-JPEG")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate, overriding the file's (raw .mjpeg streams do not carry one)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_ingest)

    p = with_store(msub.add_parser("info", help="show a movie's metadata"))
    p.add_argument("movie_id", metavar="MOVIE_ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = with_store(msub.add_parser("verify", help="re-hash every frame; report the first bad one",
                                   description="Exit 0 when every frame matches its SHA-256, 5 otherwise."))
    p.add_argument("movie_id", metavar="MOVIE_ID")
    p.set_defaults(func=cmd_verify)

    p = with_store(msub.add_parser("export", help="write a movie as an MJPEG AVI with the stored frames unchanged"))
    p.add_argument("movie_id", metavar="MOVIE_ID")
    p.add_argument("output", metavar="OUT.avi")
    p.set_defaults(func=cmd_export)

    p = with_store(msub.add_parser("list", help="list the movies in a store"))
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("make", help="make a synthetic MJPEG AVI with the frame number drawn on each frame")
    p.add_argument("output", metavar="OUT.avi")
    p.add_argument("--frames", type=int, default=240, help="number of frames")
    p.add_argument("--size", default="640x360", metavar="WxH", help="frame size")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate")
    p.add_argument("--quality", type=int, default=DEFAULT_JPEG_QUALITY, help="JPEG quality (1-100)")
    p.set_defaults(func=cmd_make)


def cmd_ingest(args) -> int:
    store = MovieStore(args.store)
    info = ingest(store, args.input, args.movie_id, quality=args.quality, fps=args.fps,
                  progress=ProgressLine(f"ingest {args.movie_id}", quiet=args.quiet))
    how = "JPEG bytes kept unchanged" if info.keeps_source_jpeg else f"re-encoded at quality {info.jpeg_quality}"
    print(f"stored {info.movie_id}: {info.frame_count} frames {info.width}x{info.height} @ {info.fps:g} fps "
          f"from {info.source} ({info.source_codec}, {how}) in {store.root}")
    return 0


def cmd_info(args) -> int:
    with MovieStore(args.store).open(args.movie_id) as movie:
        info = movie.info.to_json()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:18} {value}")
    return 0


def cmd_verify(args) -> int:
    with MovieStore(args.store).open(args.movie_id) as movie:
        bad = movie.first_bad_frame(ProgressLine(f"verify {args.movie_id}", len(movie)))
        if bad is not None:
            raise CorruptMovie(f"movie {args.movie_id}: frame {bad} does not match its SHA-256 "
                               f"(first bad frame of {len(movie)})")
        print(f"movie {args.movie_id}: all {len(movie)} frames match their SHA-256")
    return 0


def cmd_export(args) -> int:
    count = export(MovieStore(args.store), args.movie_id, args.output)
    print(f"wrote {args.output}: {count} frames")
    return 0


def cmd_list(args) -> int:
    store = MovieStore(args.store)
    for movie_id in store.movie_ids():
        with store.open(movie_id) as movie:
            i = movie.info
            print(f"{movie_id:24} {i.frame_count:7} frames {i.width}x{i.height} @ {i.fps:g} fps")
    for partial in store.stale_partials():
        print(f"(leftover of an interrupted ingest, safe to delete: {partial})", file=sys.stderr)
    return 0


def cmd_make(args) -> int:
    count = make_movie(args.output, args.frames, parse_size(args.size), args.fps, args.quality)
    print(f"wrote {args.output}: {count} frames {args.size} @ {args.fps:g} fps")
    return 0
