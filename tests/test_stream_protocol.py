"""The data-plane wire format: round trips byte by byte, and garbage refused with ProtocolError."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from vod.stream import protocol as p


def frame_bytes(index, payload):
    return p.encode_frame(7, 2, index, index * 41666, payload, p.frame_digest(payload))


@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 97))
@settings(max_examples=100, deadline=None)
def test_frames_survive_any_chunking(payloads, chunk):
    stream = b"".join(frame_bytes(i, data) for i, data in enumerate(payloads)) + p.encode_end(7, 2, len(payloads))
    decoder = p.FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i:i + chunk])
    assert [m.payload for m in out[:-1]] == payloads
    assert all(m.checksum_ok() and m.ruid == 7 and m.revision == 2 for m in out[:-1])
    assert out[-1].type == p.END and out[-1].index == len(payloads)


def test_large_frames_are_fine():
    payload = os.urandom(300_000)  # Int32StringReceiver would have dropped this silently
    (msg,) = p.FrameDecoder().feed(frame_bytes(3, payload))
    assert msg.payload == payload and msg.index == 3


def test_corrupt_payload_fails_its_checksum():
    data = bytearray(frame_bytes(0, b"\xff\xd8hello\xff\xd9"))
    data[-3] ^= 0xFF
    (msg,) = p.FrameDecoder().feed(bytes(data))
    assert not msg.checksum_ok()


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=300)
def test_frame_decoder_garbage(data):
    try:
        p.FrameDecoder().feed(data)
    except p.ProtocolError:
        pass


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=300)
def test_control_decoder_garbage(data):
    try:
        p.ControlDecoder().feed(data)
    except p.ProtocolError:
        pass


def test_control_round_trip_and_limits():
    stream = p.encode_control(p.HELLO, {"ruid": 1, "client": "c", "held": "", "mode": "play"}) + \
        p.encode_control(p.CREDIT, {"until": 48}) + p.encode_control(p.STOP)
    decoder = p.ControlDecoder()
    msgs = decoder.feed(stream[:5]) + decoder.feed(stream[5:])
    assert [m.name for m in msgs] == ["HELLO", "CREDIT", "STOP"]
    assert msgs[1].body == {"until": 48}
    with pytest.raises(p.ProtocolError, match="over"):
        p.ControlDecoder().feed(b"VC\x01\x02" + (p.MAX_CONTROL_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(p.ProtocolError, match="not JSON"):
        p.ControlDecoder().feed(b"VC\x01\x02\x00\x00\x00\x03abc")
    with pytest.raises(p.ProtocolError, match="over"):
        p.FrameDecoder().feed(p.FRAME_HEADER.pack(b"VF", 1, 1, 0, 0, 0, 0, p.MAX_FRAME_BYTES + 1, bytes(32)))


def test_version_1_frames_with_sha256_are_still_read_and_checked():
    """Servers before frame-header version 2 sent SHA-256; a client reads and checks both kinds."""
    import hashlib

    payload = b"\xff\xd8old server\xff\xd9"
    old = p.encode_frame(7, 1, 3, 0, payload, hashlib.sha256(payload).digest())
    new = p.encode_frame(7, 1, 4, 0, payload, p.frame_digest(payload))
    assert old[2] == 1 and new[2] == 2
    damaged = p.encode_frame(7, 1, 5, 0, payload, hashlib.sha256(b"other").digest())
    messages = p.FrameDecoder().feed(old + new + damaged)
    assert [len(m.digest) for m in messages] == [32, 16, 32]
    assert p.checksums_ok(messages) == [True, True, False]
    assert [m.checksum_ok() for m in messages] == [True, True, False]


def test_version_2_header_reserved_bytes_must_be_zero():
    payload = b"x"
    data = bytearray(p.encode_frame(7, 1, 3, 0, payload, p.frame_digest(payload)))
    data[50] = 1
    with pytest.raises(p.ProtocolError, match="must be zero"):
        p.FrameDecoder().feed(bytes(data))
