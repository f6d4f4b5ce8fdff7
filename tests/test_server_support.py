"""Shared helpers of the tests/test_server_*.py modules (no tests here): a small store, a data-plane client."""

from __future__ import annotations

import base64

from twisted.internet.protocol import Protocol

from vod.media.store import MovieStore
from vod.strategy.mask import FrameMask
from vod.strategy.placement import Assignment, Strategy
from vod.stream import protocol as p
from vod.stream.tokens import StreamTokens

FPS = 25.0
SECRET = b"s" * 16  # the domain secret of the servers these tests build
TOKENS = StreamTokens(SECRET)
MINT = object()  # hello()'s default: the token the coordinator would have issued


def jpeg(i: int) -> bytes:
    """A distinct, variably sized stand-in for frame i (the store keeps bytes as they are)."""
    return b"\xff\xd8" + f"frame {i} ".encode() * (1 + i % 4) + b"\xff\xd9"


def make_store(root, movies: dict[str, int]) -> MovieStore:
    store = MovieStore(str(root))
    for movie_id, count in movies.items():
        store.add(movie_id, (jpeg(i) for i in range(count)), fps=FPS, width=8, height=8, source="test",
                  source_codec="mjpeg", keeps_source_jpeg=True, jpeg_quality=None)
    return store


def mask_text(mask: FrameMask) -> str:
    return base64.b64encode(mask.to_bytes()).decode()


def strategy(ruid: int, movie: str, frames: int, masks: dict[str, str], client: str = "c1") -> Strategy:
    """A strategy from '0'/'1' texts per server (they must be disjoint)."""
    return Strategy(ruid, movie, client, frames,
                    tuple(Assignment(server, FrameMask.from_text(text)) for server, text in masks.items()), ())


def hello(ruid: int, client: str = "c1", held: FrameMask | None = None, mode: str = "play",
          token: str | None | object = MINT) -> bytes:
    """A HELLO; with the right stream token unless `token` is given (None: no token field at all)."""
    body = {"ruid": ruid, "client": client, "mode": mode}
    if token is MINT:
        token = TOKENS.mint(ruid, client)
    if token is not None:
        body["token"] = token
    if held is not None:
        body["held"] = mask_text(held)
    return p.encode_control(p.HELLO, body)


def credit(until: int) -> bytes:
    return p.encode_control(p.CREDIT, {"until": until})


class DataClient(Protocol):
    """The client end of a data connection: decodes everything the server sends."""

    def __init__(self):
        self.decoder = p.FrameDecoder()
        self.messages: list[p.FrameMessage] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.messages.extend(self.decoder.feed(data))

    def connectionLost(self, reason) -> None:
        self.lost = True

    def send(self, *chunks: bytes) -> None:
        self.transport.write(b"".join(chunks))

    def frames(self) -> list[p.FrameMessage]:
        return [m for m in self.messages if m.type == p.FRAME]

    def indices(self) -> list[int]:
        return [m.index for m in self.frames()]

    def kinds(self) -> list[str]:
        names = {p.FRAME: "F", p.END: "END", p.ERROR: "ERROR"}
        return [f"F{m.index}@{m.revision}" if m.type == p.FRAME else f"{names[m.type]}@{m.revision}"
                for m in self.messages]

    def errors(self) -> list[str]:
        return [m.payload.decode() for m in self.messages if m.type == p.ERROR]


def check_frames(messages, movie) -> None:
    """Each FRAME carries exactly the stored bytes of its index, their SHA-256 and its presentation time."""
    for m in messages:
        if m.type == p.FRAME:
            assert m.payload == movie.frame(m.index)
            assert m.checksum_ok() and m.digest == p.frame_digest(m.payload)
            assert m.pts_us == round(m.index * 1_000_000 / movie.info.fps)
