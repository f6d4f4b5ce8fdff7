"""FrameMask: construction, set algebra, striping, text and wire forms."""

import itertools
import random

import pytest
from bitarray.util import int2ba
from hypothesis import given, settings
from hypothesis import strategies as st

from vod.errors import MaskError
from vod.strategy.mask import MAX_FRAMES, RAW, SPARSE, SPARSE_COMPLEMENT, FrameMask

BIG = 100_000
KIB64 = 64 * 1024


# -- strategies ------------------------------------------------------------


def masks_of(n):
    """Masks of length n: random bits, plus sparse and mostly-full ones so
    every wire kind gets exercised."""
    dense = st.lists(st.booleans(), min_size=n, max_size=n).map(
        lambda bs: FrameMask.from_text("".join("1" if b else "0" for b in bs))
    )
    if n == 0:
        return dense
    sparse = st.sets(st.integers(0, n - 1), max_size=12).map(lambda s: FrameMask.from_indices(n, s))
    runs = st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=5).map(
        lambda rs: FrameMask.from_ranges(n, [(min(r), max(r)) for r in rs])
    )
    return st.one_of(dense, sparse, sparse.map(lambda m: ~m), runs)


lengths = st.integers(0, 300)
masks = lengths.flatmap(masks_of)
pairs = lengths.flatmap(lambda n: st.tuples(masks_of(n), masks_of(n)))
triples = lengths.flatmap(lambda n: st.tuples(masks_of(n), masks_of(n), masks_of(n)))


def big_mask(kind, seed):
    rng = random.Random(seed)
    if kind == "random":
        return FrameMask.from_text(int2ba(rng.getrandbits(BIG), BIG, "big").to01())
    if kind == "sparse":
        return FrameMask.from_indices(BIG, rng.sample(range(BIG), 500))
    if kind == "dense":
        return ~FrameMask.from_indices(BIG, rng.sample(range(BIG), 500))
    if kind == "fragmented":
        return FrameMask.interleave(BIG, 2)[seed % 2]
    if kind == "runs":
        cuts = sorted(rng.sample(range(BIG + 1), 200))
        return FrameMask.from_ranges(BIG, zip(cuts[::2], cuts[1::2]))
    raise AssertionError(kind)


def valid_or_mask_error(data, **kw):
    """Decoding garbage may yield a mask, but then a fully consistent one."""
    try:
        mask = FrameMask.from_bytes(data, **kw)
    except MaskError:
        return None
    assert isinstance(mask, FrameMask)
    assert 0 <= mask.count() <= len(mask) <= MAX_FRAMES
    assert FrameMask.from_bytes(mask.to_bytes()) == mask
    return mask


# -- construction ----------------------------------------------------------


def test_constructors_agree():
    every4 = FrameMask.from_text("1000100010001")
    assert every4 == FrameMask.interleave(13, 4)[0]
    assert every4 == FrameMask.from_indices(13, [0, 4, 8, 12])
    assert every4 == FrameMask.from_ranges(13, [(0, 1), (4, 5), (8, 9), (12, 13)])
    assert every4.to_text() == "1000100010001"
    assert FrameMask(5).to_text() == "00000" and FrameMask.full(5).to_text() == "11111"
    assert FrameMask.from_ranges(10, [(2, 5), (4, 7), (9, 9)]).to_text() == "0011111000"
    assert FrameMask.from_text("1000 1000_1") == FrameMask.from_text("100010001")
    assert len(FrameMask()) == 0 and FrameMask.from_text("") == FrameMask(0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: FrameMask(-1),
        lambda: FrameMask(MAX_FRAMES + 1),
        lambda: FrameMask(2.0),
        lambda: FrameMask.full(-3),
        lambda: FrameMask.from_indices(5, [5]),
        lambda: FrameMask.from_indices(5, [-1]),
        lambda: FrameMask.from_ranges(5, [(3, 2)]),
        lambda: FrameMask.from_ranges(5, [(-1, 2)]),
        lambda: FrameMask.from_ranges(5, [(0, 6)]),
        lambda: FrameMask.from_text("10a1"),
        lambda: FrameMask.interleave(10, 0),
        lambda: FrameMask(10).stripe(0),
    ],
)
def test_bad_construction_raises_mask_error(build):
    with pytest.raises(MaskError):
        build()


def test_queries():
    m = FrameMask.from_text("0011010")
    assert len(m) == m.length == 7 and m.count() == 3
    assert list(m) == [2, 3, 5]
    assert 2 in m and 0 not in m and 7 not in m and -1 not in m and "2" not in m
    assert m.first() == 2 and m.first_missing() == 0
    assert list(m.ranges()) == [(2, 4), (5, 6)]
    assert m.missing().to_text() == "1100101"
    assert FrameMask(4).first() is None and FrameMask.full(4).first_missing() is None
    assert bool(m) and not FrameMask(7) and not FrameMask(0)


def test_immutable_and_hashable():
    m = FrameMask.from_text("0110")
    with pytest.raises(TypeError):
        m.bits[0] = 1
    assert {m, FrameMask.from_indices(4, [1, 2])} == {m}
    assert m != FrameMask.from_text("01100") and m != "0110"


def test_mixing_lengths_raises():
    a, b = FrameMask(8), FrameMask(9)
    for op in (a.__or__, a.__and__, a.__sub__, a.__xor__, a.issubset, a.issuperset, a.isdisjoint):
        with pytest.raises(MaskError):
            op(b)
    assert a != b


def test_text_forms():
    assert repr(FrameMask.from_text("101")) == "FrameMask.from_text('101')"
    m = FrameMask.from_ranges(1000, [(0, 500), (760, 770)])
    assert m.short_text(4) == "110~ (510/1000)"
    assert m.short_text(10) == "1111100~00 (510/1000)"
    assert FrameMask.from_text("101").short_text(4) == "101"
    assert "(510/1000)" in repr(m)


# -- properties ------------------------------------------------------------


@given(triples)
def test_algebra_laws(abc):
    a, b, c = abc
    full, empty = FrameMask.full(len(a)), FrameMask(len(a))
    assert ~(a | b) == ~a & ~b
    assert ~(a & b) == ~a | ~b
    assert a - b == a & ~b
    assert a ^ b == (a - b) | (b - a)
    assert ~~a == a and a.missing() == ~a
    assert a | ~a == full and a & ~a == empty
    assert (a | b) & c == (a & c) | (b & c)
    assert a | b == b | a and a & b == b & a
    assert a.issubset(a | b) and (a & b).issubset(a) and (a | b).issuperset(b)
    assert (a - b).isdisjoint(b)
    assert a.issubset(b) == (a - b == empty)
    assert a.isdisjoint(b) == (a & b == empty)
    assert (a == b) == (a.to_text() == b.to_text())
    if a == b:
        assert hash(a) == hash(b)


@given(pairs)
def test_matches_python_sets(ab):
    a, b = ab
    sa, sb = set(a), set(b)
    n = len(a)
    assert set(a | b) == sa | sb and set(a & b) == sa & sb
    assert set(a - b) == sa - sb and set(a ^ b) == sa ^ sb
    assert set(~a) == set(range(n)) - sa
    assert a.issubset(b) == (sa <= sb) and a.isdisjoint(b) == sa.isdisjoint(sb)


@given(masks)
def test_iteration_and_queries(m):
    text = m.to_text()
    indices = [i for i, ch in enumerate(text) if ch == "1"]
    assert list(m) == indices
    assert m.count() == len(indices) and len(m) == len(text)
    assert all(i in m for i in indices) and sum(i in m for i in range(len(m))) == len(indices)
    assert m.first() == (indices[0] if indices else None)
    assert m.first_missing() == (text.index("0") if "0" in text else None)
    runs = list(m.ranges())
    assert FrameMask.from_ranges(len(m), runs) == m
    # Runs are maximal: non-empty, in order, and separated by a gap.
    assert all(start < stop for start, stop in runs)
    assert all(prev_stop < start for (_, prev_stop), (start, _) in zip(runs, runs[1:]))


@given(masks)
def test_text_round_trip(m):
    assert FrameMask.from_text(m.to_text()) == m
    assert len(m.short_text(16)) <= max(16, 16 + len(f" ({m.count()}/{len(m)})"))


@given(st.integers(0, 500), st.integers(1, 20))
def test_interleave_partitions_the_movie(n, k):
    stripes = FrameMask.interleave(n, k)
    assert len(stripes) == k
    union = FrameMask(n)
    for s, stripe in enumerate(stripes):
        assert list(stripe) == list(range(s, n, k))
        union |= stripe
    assert union == FrameMask.full(n)
    for x, y in itertools.combinations(stripes, 2):
        assert x.isdisjoint(y)


@given(masks, st.integers(1, 12))
def test_stripe_deals_held_frames_evenly(m, k):
    stripes = m.stripe(k)
    assert len(stripes) == k
    union = FrameMask(len(m))
    for stripe in stripes:
        union |= stripe
    assert union == m
    for x, y in itertools.combinations(stripes, 2):
        assert x.isdisjoint(y)
    sizes = [s.count() for s in stripes]
    assert max(sizes) - min(sizes) <= 1
    held = list(m)
    assert [list(s) for s in stripes] == [held[i::k] for i in range(k)]
    if m == FrameMask.full(len(m)):
        assert stripes == FrameMask.interleave(len(m), k)


# -- wire encoding ---------------------------------------------------------


def test_every_small_mask_round_trips():
    for n in range(10):
        for value in range(2**n):
            m = FrameMask.from_text(format(value, f"0{n}b") if n else "")
            data = m.to_bytes()
            assert data[0] == 1 and data[1] in (RAW, SPARSE, SPARSE_COMPLEMENT)
            assert len(data) <= 3 + (n + 7) // 8
            assert FrameMask.from_bytes(data) == m
            assert FrameMask.from_bytes(bytearray(data), max_length=n, length=n) == m


@given(masks)
def test_bytes_round_trip(m):
    data = m.to_bytes()
    assert FrameMask.from_bytes(data) == m
    assert FrameMask.from_bytes(memoryview(data), max_length=len(m)) == m
    assert len(data) <= 3 + (len(m) + 7) // 8


def test_encoder_picks_compact_kind():
    n = 10_000
    sparse = FrameMask.from_indices(n, [3, 5000, 9999])
    assert sparse.to_bytes()[1] == SPARSE
    assert (~sparse).to_bytes()[1] == SPARSE_COMPLEMENT
    assert FrameMask.interleave(n, 2)[0].to_bytes()[1] == RAW
    assert len(FrameMask(n).to_bytes()) < 10 and len(FrameMask.full(n).to_bytes()) < 10


@pytest.mark.parametrize("kind", ["random", "sparse", "dense", "fragmented", "runs"])
def test_big_masks_encode_small(kind):
    for seed in range(2):
        m = big_mask(kind, seed)
        data = m.to_bytes()
        assert len(data) < KIB64
        assert len(data) <= BIG // 8 + 3
        assert FrameMask.from_bytes(data, max_length=BIG) == m
    for m in (FrameMask(BIG), FrameMask.full(BIG), *FrameMask.interleave(BIG, 4)):
        assert len(m.to_bytes()) < KIB64 and FrameMask.from_bytes(m.to_bytes()) == m


@settings(max_examples=15, deadline=None)
@given(st.integers(1, BIG), st.floats(0, 1), st.integers(0, 2**32))
def test_big_random_density_masks_encode_small(n, p, seed):
    rng = random.Random(seed)
    m = FrameMask.from_indices(n, (i for i in range(n) if rng.random() < p))
    data = m.to_bytes()
    assert len(data) <= n // 8 + 4 and len(data) < KIB64
    assert FrameMask.from_bytes(data) == m


# -- strict decoder --------------------------------------------------------


def _sparse_header(length):
    m = (length.bit_length() + 7) // 8
    return bytes([1, SPARSE, 0x10 | m]) + length.to_bytes(m, "little")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x01\x00",
        b"\x02\x00\x10",  # version 2
        b"\x00\x00\x10",  # version 0
        b"\x01\x03\x10",  # kind 3
        b"\x01\x00\x00\x80",  # raw: little-endian header
        b"\x01\x00\x30\x80",  # raw: unknown header flag
        b"\x01\x00\x13",  # raw: pad bits but no data byte
        b"\x01\x00\x13\xff",  # raw: nonzero pad bits
        b"\x01\x01\x10",  # sparse: no stop byte
        b"\x01\x01\x10\x00\x00",  # sparse: trailing byte
        b"\x01\x01\x01\x03\x01\x05\x00",  # sparse: little-endian
        b"\x01\x01\x1f" + b"\xff" * 15,  # sparse: length field too wide
        b"\x01\x01\x12\x05",  # sparse: truncated length
        b"\x01\x01\x11\x08\xa1\x09\x00",  # sparse: index beyond the length
        _sparse_header(2**60) + b"\x00",  # would allocate 2**57 bytes
        _sparse_header(MAX_FRAMES + 1) + b"\x00",
        "0110",
        12345,
        None,
    ],
)
def test_decoder_rejects(data):
    with pytest.raises(MaskError):
        FrameMask.from_bytes(data)


def test_decoder_limits():
    m = FrameMask.from_indices(100, [1, 50])
    data = m.to_bytes()
    assert FrameMask.from_bytes(data, max_length=100) == m
    with pytest.raises(MaskError):
        FrameMask.from_bytes(data, max_length=99)
    with pytest.raises(MaskError):
        FrameMask.from_bytes(data, length=101)
    raw = FrameMask.interleave(100, 2)[0].to_bytes()
    assert raw[1] == RAW
    with pytest.raises(MaskError):
        FrameMask.from_bytes(raw, max_length=99)
    too_long_raw = bytes([1, RAW, 0x10]) + bytes(MAX_FRAMES // 8 + 1)
    with pytest.raises(MaskError):
        FrameMask.from_bytes(too_long_raw)
    at_cap = _sparse_header(MAX_FRAMES) + b"\x00"
    assert FrameMask.from_bytes(at_cap) == FrameMask(MAX_FRAMES)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_fuzz_arbitrary_bytes(data):
    valid_or_mask_error(data)


@settings(max_examples=500)
@given(st.sampled_from([0, 1, 2, 3, 255]), st.binary(max_size=48))
def test_fuzz_well_formed_prefix(kind, payload):
    valid_or_mask_error(bytes([1, kind]) + payload)
    valid_or_mask_error(bytes([1, kind]) + payload, max_length=20)


mutations = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("xor"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
)


@settings(max_examples=500)
@given(masks, st.lists(mutations, min_size=1, max_size=4))
def test_fuzz_mutated_encodings(m, edits):
    data = bytearray(m.to_bytes())
    for op, pos, value in edits:
        i = pos % (len(data) + 1)
        if op == "set" and i < len(data):
            data[i] = value
        elif op == "xor" and i < len(data):
            data[i] ^= value
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data.insert(i, value)
        elif op == "delete" and i < len(data):
            del data[i]
    valid_or_mask_error(bytes(data))
    valid_or_mask_error(bytes(data), max_length=len(m))


@given(st.lists(st.booleans(), max_size=300))
def test_from_packed_matches_the_flags(flags):
    import numpy as np
    mask = FrameMask.from_packed(len(flags), np.packbits(np.array(flags, dtype=bool)).tobytes())
    assert list(mask) == [i for i, f in enumerate(flags) if f] and len(mask) == len(flags)


def test_from_packed_refuses_a_wrong_size():
    with pytest.raises(MaskError):
        FrameMask.from_packed(9, b"\x00")
