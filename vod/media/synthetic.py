"""Synthetic movies: the frame number drawn large on every frame, so a person sees order and gaps."""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from vod.errors import UsageError
from vod.media.video import DEFAULT_JPEG_QUALITY, bounded_map, encode_jpeg, write_mjpeg_avi


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 640x360, got {text!r}") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320) or w % 2 or h % 2:
        raise UsageError(f"--size {text}: width and height must be even, 16..7680 x 16..4320")
    return w, h


def draw_frame(index: int, total: int, size: tuple[int, int], fps: float) -> np.ndarray:
    w, h = size
    # A hue that walks with the frame number makes a dropped or repeated frame visible as a colour jump.
    hue = np.uint8((index * 7) % 180)
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = hue
    hsv[..., 1] = 90
    hsv[..., 2] = np.linspace(60, 200, w, dtype=np.uint8)[None, :]
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    # A bar that sweeps once per second shows smoothness of playback.
    x = int((index % max(1, round(fps))) / max(1, round(fps)) * w)
    cv2.rectangle(img, (x, h - h // 12), (min(w, x + w // 16), h - 1), (255, 255, 255), -1)
    text = str(index)
    scale = h / 60
    thick = max(2, h // 60)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    if tw > w * 0.9:
        scale *= w * 0.9 / tw
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    org = ((w - tw) // 2, (h + th) // 2)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 4, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    caption = f"frame {index}/{total}  t={index / fps:.2f}s"
    cv2.putText(img, caption, (8, max(14, h // 14)), cv2.FONT_HERSHEY_SIMPLEX, max(0.35, h / 900),
                (255, 255, 255), 1, cv2.LINE_AA)
    return img


def synthetic_jpegs(frames: int, size: tuple[int, int], fps: float, quality: int = DEFAULT_JPEG_QUALITY,
                    workers: int = 2) -> Iterator[bytes]:
    return bounded_map(lambda i: encode_jpeg(draw_frame(i, frames, size, fps), quality), range(frames), workers)


def make_movie(out: str, frames: int, size: tuple[int, int], fps: float,
               quality: int = DEFAULT_JPEG_QUALITY) -> int:
    if frames < 1:
        raise UsageError(f"--frames must be at least 1, got {frames}")
    if not (0 < fps <= 1000):
        raise UsageError(f"--fps must be in (0, 1000], got {fps}")
    return write_mjpeg_avi(out, synthetic_jpegs(frames, size, fps, quality), fps, size)
