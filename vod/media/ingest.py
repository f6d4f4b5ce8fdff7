"""Ingest and export: the glue between video files (`video`) and the movie store (`store`)."""

from __future__ import annotations

import os

from vod.errors import StoreError
from vod.media.store import MovieInfo, MovieStore, Progress, iter_frames
from vod.media.video import DEFAULT_JPEG_QUALITY, read_jpeg_frames, write_mjpeg_avi


def ingest(store: MovieStore, source_path: str, movie_id: str, *, quality: int = DEFAULT_JPEG_QUALITY,
           fps: float | None = None, progress: Progress | None = None) -> MovieInfo:
    """Store the frames of `source_path` as movie `movie_id`; all or nothing."""
    # Refuse an existing id before spending time decoding the source.
    store.movie_path(movie_id)
    if store.exists(movie_id):
        raise StoreError(f"movie {movie_id!r} already exists in store {store.root}")
    source = read_jpeg_frames(source_path, quality=quality, fps=fps)
    info = source.info
    return store.add(movie_id, source.frames, fps=info.fps, width=info.width, height=info.height,
                     source=os.path.basename(source_path), source_codec=info.codec,
                     keeps_source_jpeg=info.keeps_source_jpeg,
                     jpeg_quality=None if info.keeps_source_jpeg else quality, progress=progress)


def export(store: MovieStore, movie_id: str, out_path: str) -> int:
    """Write movie `movie_id` as an MJPEG AVI holding exactly the stored JPEG frames."""
    with store.open(movie_id) as movie:
        info = movie.info
        return write_mjpeg_avi(out_path, iter_frames(movie), info.fps, (info.width, info.height))
