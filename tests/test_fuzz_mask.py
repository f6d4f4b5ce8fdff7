"""Fuzzing the frame-mask decoders (issue 8): the wire encoding, its base64 form as the coordinator and the
servers read it from peers, and the text form.

tests/test_mask.py already throws arbitrary and mutated bytes at `FrameMask.from_bytes`; this adds every
encoding kind built by hand (not only the shortest, which the encoder picks), the base64 entry points a peer
reaches, the text form, and the allocation bound: a header announcing a huge mask costs nothing.
"""

from __future__ import annotations

import base64

from bitarray import bitarray
from bitarray.util import sc_encode, serialize
from hypothesis import given, strategies as st

from fuzzing import allocation_peak, fuzz, mutated
from vod.coordinator.requests import mask_from_text
from vod.errors import MaskError
from vod.groups.commands import BadCommand
from vod.server.session import parse_held
from vod.strategy.mask import MAX_FRAMES, RAW, SPARSE, SPARSE_COMPLEMENT, WIRE_VERSION, FrameMask
from vod.stream.protocol import ProtocolError

masks = st.integers(0, 300).flatmap(
    lambda n: st.one_of(st.lists(st.booleans(), min_size=n, max_size=n).map(lambda b: FrameMask.from_text(
        "".join("1" if x else "0" for x in b))),
        st.sets(st.integers(0, max(n - 1, 0)), max_size=6 if n else 0).map(lambda s: FrameMask.from_indices(n, s)),
        st.sets(st.integers(0, max(n - 1, 0)), max_size=6 if n else 0).map(lambda s: ~FrameMask.from_indices(n, s))))


def encodings(mask: FrameMask) -> dict[int, bytes]:
    """The mask in each of the three kinds, whichever is shortest."""
    bits = bitarray(mask.bits, "big")
    return {RAW: bytes((WIRE_VERSION, RAW)) + serialize(bits),
            SPARSE: bytes((WIRE_VERSION, SPARSE)) + sc_encode(bits),
            SPARSE_COMPLEMENT: bytes((WIRE_VERSION, SPARSE_COMPLEMENT)) + sc_encode(~bits)}


any_encoding = masks.flatmap(lambda m: st.sampled_from(sorted(encodings(m).values())))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@given(masks)
@fuzz(200)
def test_every_kind_round_trips(mask):
    for kind, data in encodings(mask).items():
        assert FrameMask.from_bytes(data) == mask, kind
        assert FrameMask.from_bytes(data, max_length=len(mask), length=len(mask)) == mask
    assert FrameMask.from_bytes(mask.to_bytes()) == mask
    assert mask_from_text(b64(mask.to_bytes()), len(mask), "held mask") == mask
    assert parse_held(b64(mask.to_bytes())) == mask


@given(st.one_of(mutated(any_encoding), st.binary(max_size=80)), st.integers(0, 400))
@fuzz(400)
def test_what_peers_send_decodes_or_is_refused_in_the_documented_way(data, frame_count):
    """The coordinator reads masks with `mask_from_text` (BadCommand), a server with `parse_held`
    (ProtocolError); both sit on `FrameMask.from_bytes` (MaskError)."""
    text = b64(data)
    try:
        mask = FrameMask.from_bytes(data)
    except MaskError as err:
        assert str(err)
        mask = None
    try:
        held = parse_held(text)
    except ProtocolError as err:
        assert mask is None and "held" in str(err)
    else:
        assert held == mask
    try:
        wanted = mask_from_text(text, frame_count, "wanted mask")
    except BadCommand as err:
        assert "wanted mask" in str(err)
    else:
        assert mask is not None and wanted == mask and len(wanted) == frame_count


@given(st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                 st.integers(), st.none(), st.lists(st.integers(), max_size=3)))
@fuzz(300)
def test_base64_entry_points_refuse_anything_else(value):
    try:
        parse_held(value)
    except ProtocolError:
        pass
    try:
        mask_from_text(value, 10, "held mask")
    except BadCommand:
        pass


@given(st.text(alphabet=st.sampled_from("01_ \t\n2a-\u00e9\x00"), max_size=60) | st.text(max_size=30))
@fuzz(300)
def test_text_form_parses_or_raises_mask_error(text):
    try:
        mask = FrameMask.from_text(text)
    except MaskError as err:
        assert str(err)
        return
    digits = [c for c in text if c in "01"]
    assert mask.to_text() == "".join(digits)
    assert FrameMask.from_text(mask.to_text()) == mask


@given(masks, st.integers(1, 9))
@fuzz(100)
def test_grouped_text_round_trips(mask, width):
    text = mask.to_text()
    grouped = "_".join(text[i:i + width] for i in range(0, len(text), width))
    assert FrameMask.from_text(grouped) == mask == FrameMask.from_text(" ".join(grouped.split("_")))


@given(st.integers(0, 2**64 - 1), st.sampled_from([SPARSE, SPARSE_COMPLEMENT]), st.binary(max_size=16))
@fuzz(200)
def test_an_announced_length_is_checked_before_it_is_allocated(n, kind, tail):
    """A 20-byte sparse header may announce 2**64 frames: over the caller's limit it costs nothing."""
    m = max(1, (n.bit_length() + 7) // 8)
    data = bytes((WIRE_VERSION, kind, 0x10 | m)) + n.to_bytes(m, "little") + tail
    limit = 1000
    with allocation_peak() as peak:
        try:
            mask = FrameMask.from_bytes(data, max_length=limit)
        except MaskError:
            mask = None
    assert peak.bytes < 64 * 1024
    assert mask is None or len(mask) <= limit
    if n > MAX_FRAMES:
        with allocation_peak() as peak:
            try:
                FrameMask.from_bytes(data)
            except MaskError:
                pass
            else:
                raise AssertionError("a mask over MAX_FRAMES decoded")
        assert peak.bytes < 64 * 1024
