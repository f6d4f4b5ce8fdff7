"""Fuzzing the data plane (issue 8): the frame and control decoders of vod/stream/protocol.py, and a server's
StreamConnection behind them.

Whatever bytes come in, a decoder returns messages or raises its ProtocolError, never another exception;
a length field is checked against its limit before anything of that size is kept; and a server
connection fed garbage closes itself with at most one log line, leaving no timer that would blow up later.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from fuzzing import LogCatcher, allocation_peak, chunk_sizes, chunked, fuzz, mutated
from vod.server.stream import StreamConnection
from vod.stream import protocol as p
from vod.stream.tokens import StreamTokens

# What a decoder may hold besides the bytes it was given: a header, a few list cells.
SLACK = 64 * 1024
TOKENS = StreamTokens(b"s" * 16)


def decode_all(decoder, pieces) -> tuple[list, p.ProtocolError | None]:
    """Feed every piece; the messages decoded, and the ProtocolError that ended it (None if none did)."""
    out = []
    for piece in pieces:
        try:
            out += decoder.feed(piece)
        except p.ProtocolError as err:
            assert str(err), "a ProtocolError carries its reason"
            return out, err
    return out, None


def check_frames(messages: list[p.FrameMessage]) -> None:
    for m in messages:
        assert m.type in (p.FRAME, p.END, p.ERROR)
        assert len(m.payload) <= p.MAX_FRAME_BYTES and len(m.digest) in (16, 32)


def check_controls(messages: list[p.ControlMessage]) -> None:
    for m in messages:
        assert m.type in p.CONTROL_NAMES and isinstance(m.body, dict)


# -- valid streams, to be damaged ---------------------------------------------------------------------

payloads = st.binary(max_size=600)
frame_messages = st.one_of(
    st.builds(lambda r, v, i, data: p.encode_frame(r, v, i, i * 41_666, data, p.frame_digest(data)),
              st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), payloads),
    st.builds(p.encode_end, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(p.encode_error, st.integers(0, 2**64 - 1), st.text(max_size=80)),
)
frame_streams = st.lists(frame_messages, min_size=1, max_size=4).map(b"".join)

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=12)


def hello(ruid: int, client: str, held: str, mode: str, token: bool) -> bytes:
    """A HELLO, with the stream token a coordinator would issue (when it could) or without one."""
    body = {"ruid": ruid, "client": client, "held": held, "mode": mode}
    if token and 0 <= ruid < 2**64:
        body["token"] = TOKENS.mint(ruid, client)
    return p.encode_control(p.HELLO, body)


control_messages = st.one_of(
    st.builds(hello, st.integers(-5, 2**70), st.text(max_size=12), st.sampled_from(["", "AQAQ", "AQEQAA==", "%%"]),
              st.sampled_from(["play", "fast", "rewind"]), st.booleans()),
    st.builds(lambda n: p.encode_control(p.CREDIT, {"until": n}), st.integers(-5, 2**70)),
    st.builds(lambda frames: p.encode_control(p.RESEND, {"frames": frames}), st.lists(st.integers(-5, 2**70),
                                                                                       max_size=5)),
    st.builds(p.encode_control, st.sampled_from(sorted(p.CONTROL_NAMES)),
              st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
)
control_streams = st.lists(control_messages, min_size=1, max_size=4).map(b"".join)


# -- the decoders ---------------------------------------------------------------------------------------


@given(st.binary(max_size=400), chunk_sizes)
@fuzz(300)
def test_arbitrary_bytes_decode_or_raise_protocol_error(data, sizes):
    frames, _ = decode_all(p.FrameDecoder(), chunked(data, sizes))
    check_frames(frames)
    controls, _ = decode_all(p.ControlDecoder(), chunked(data, sizes))
    check_controls(controls)


@given(mutated(frame_streams), chunk_sizes)
@fuzz(300)
def test_mutated_frame_streams(data, sizes):
    messages, _ = decode_all(p.FrameDecoder(), chunked(data, sizes))
    check_frames(messages)


@given(mutated(control_streams), chunk_sizes)
@fuzz(300)
def test_mutated_control_streams(data, sizes):
    messages, _ = decode_all(p.ControlDecoder(), chunked(data, sizes))
    check_controls(messages)


@given(frame_streams, control_streams)
@fuzz(50)
def test_valid_streams_decode_whole(frames, controls):
    """The other side of the fuzzing: what the encoders write always decodes, nothing left over."""
    messages, err = decode_all(p.FrameDecoder(), [frames])
    assert err is None and messages and sum(p.FRAME_HEADER.size + len(m.payload) for m in messages) == len(frames)
    messages, err = decode_all(p.ControlDecoder(), [controls])
    assert err is None and messages


@given(st.integers(0, 2**32 - 1), st.binary(max_size=64))
@fuzz(100)
def test_announced_frame_length_is_checked_before_anything_is_kept(length, tail):
    """A header announcing up to 4 GB: refused at once over the limit; under it, the decoder keeps only
    what really arrived."""
    header = p.FRAME_HEADER.pack(b"VF", 1, p.FRAME, 1, 1, 0, 0, length, bytes(32))
    decoder = p.FrameDecoder()
    with allocation_peak() as peak:
        try:
            messages = decoder.feed(header + tail)
        except p.ProtocolError:
            assert length > p.MAX_FRAME_BYTES
            messages = None
    assert peak.bytes < SLACK + 4 * len(tail)
    if messages is not None:
        assert length <= p.MAX_FRAME_BYTES
        assert len(messages) == (length <= len(tail))


@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(p.CONTROL_NAMES)), st.binary(max_size=64))
@fuzz(100)
def test_announced_control_length_is_checked_before_anything_is_kept(length, type_, tail):
    header = p.CONTROL_HEADER.pack(b"VC", 1, type_, length)
    with allocation_peak() as peak:
        try:
            p.ControlDecoder().feed(header + tail)
        except p.ProtocolError:
            pass
        else:
            assert length <= p.MAX_CONTROL_BYTES
    assert peak.bytes < SLACK + 4 * len(tail)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 1000 + b"]" * 1000 + b"x"])
def test_deeply_nested_control_body_is_a_protocol_error(body):
    """Found by this fuzzing: json.loads raises RecursionError, not ValueError, on deep nesting."""
    with pytest.raises(p.ProtocolError, match="not JSON"):
        p.ControlDecoder().feed(p.CONTROL_HEADER.pack(b"VC", 1, p.HELLO, len(body)) + body)


# -- a server connection fed garbage ----------------------------------------------------------------------

WAIT = 5.0


class NoMovies:
    """A server that knows no RUID: every connection waits for a strategy that never comes."""

    server_id = "s1"
    tokens = TOKENS

    def movie(self, movie_id):
        return None

    def opened(self, connection):
        pass

    def greeted(self, connection):
        pass

    def closed(self, connection):
        pass


@given(st.one_of(st.binary(max_size=300), mutated(control_streams), control_streams), chunk_sizes)
@fuzz(200)
def test_a_server_connection_fed_garbage_closes_with_one_log_line(data, sizes):
    clock = Clock()
    connection = StreamConnection(NoMovies(), clock, clock, None, WAIT)
    transport = StringTransport()
    with LogCatcher("vod.server") as caught:
        connection.makeConnection(transport)
        for piece in chunked(data, sizes):
            connection.dataReceived(piece)  # nothing may escape
        clock.advance(WAIT + 0.1)  # no strategy ever comes: every connection ends by itself
        if transport.disconnecting:
            clock.advance(2.0)  # the abort of a client that reads nothing
        connection.connectionLost(None)
    assert transport.disconnecting
    assert not clock.getDelayedCalls()
    assert len(caught.messages) <= 1, caught.messages
    written, err = decode_all(p.FrameDecoder(), [transport.value()])
    assert err is None and all(m.type in (p.END, p.ERROR) for m in written)


def test_hello_with_a_ruid_over_64_bits_is_refused(caplog):
    """Found by this fuzzing: the ERROR answering such a HELLO could not encode its RUID (struct.error in a
    timer, the connection left open); the stream-token check now refuses it first."""
    caplog.set_level(logging.INFO, logger="vod.server")
    clock = Clock()
    connection = StreamConnection(NoMovies(), clock, clock, None, WAIT)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(p.encode_control(p.HELLO, {"ruid": 2**64, "client": "c", "mode": "play",
                                                        "token": TOKENS.mint(2**64 - 1, "c")}))
    clock.advance(WAIT + 0.1)
    (answer,) = p.FrameDecoder().feed(transport.value())
    assert answer.type == p.ERROR and transport.disconnecting
