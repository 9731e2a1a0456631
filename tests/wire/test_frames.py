"""Stream framing and fragment reassembly (SPEC §1, §5)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.wire.errors import FrameError, Reason, WireError
from meshnode.wire.frames import (
    PIECE_OVERHEAD, SET_OVERHEAD, FrameDecoder, Reassembler, encode_frame, fragment_packet,
)
from meshnode.wire.limits import Limits
from meshnode.wire.packet import (
    HEADER_LEN, Fragment, Kind, Packet, Ping, VectorBlock, Vectors, decode_packet, encode_packet, verify_packet,
)

from ._support import A, B, SPACE, WIRE, random_trits

# ---------------------------------------------------------------------------------------------------
# framing


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    out, pos = [], 0
    for c in cuts:
        out.append(data[pos:pos + c])
        pos += c
    out.append(data[pos:])
    return out


@WIRE
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=10), st.lists(st.integers(0, 200), max_size=30))
def test_frames_survive_any_chunking(payloads, cuts):
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(300)
    got = []
    for chunk in chunked(stream, cuts):
        got += decoder.feed(chunk)
    assert got == payloads
    assert decoder.pending == 0


def test_byte_by_byte_and_pending():
    payloads = [b"a", b"bc" * 500, b"d"]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(2000)
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i:i + 1])
        if i == 2:
            assert decoder.pending == 3
    assert got == payloads and decoder.pending == 0
    assert decoder.feed(b"") == []


def test_feed_accepts_bytearray_and_memoryview():
    decoder = FrameDecoder(100)
    frame = encode_frame(b"hello")
    assert decoder.feed(bytearray(frame[:3])) == []
    assert decoder.feed(memoryview(frame[3:] + frame)) == [b"hello", b"hello"]


def test_too_large_is_refused_from_the_prefix_alone():
    decoder = FrameDecoder(1000)
    assert decoder.feed(encode_frame(b"ok")) == [b"ok"]
    with pytest.raises(FrameError) as e:
        decoder.feed(struct.pack("<I", 1001))          # nothing of the frame has arrived yet
    assert e.value.reason is Reason.TOO_LARGE and e.value.offset == 6
    with pytest.raises(FrameError):                     # the stream stays failed
        decoder.feed(b"more")
    big = FrameDecoder(1 << 20)
    with pytest.raises(FrameError) as e:
        big.feed(b"\xff\xff\xff\xff")
    assert e.value.reason is Reason.TOO_LARGE


def test_zero_length_frame_is_bad_header_and_earlier_frames_are_kept():
    decoder = FrameDecoder(100)
    with pytest.raises(FrameError) as e:
        decoder.feed(encode_frame(b"a") + encode_frame(b"b") + b"\x00\x00\x00\x00")
    assert e.value.reason is Reason.BAD_HEADER and e.value.offset == 10
    assert e.value.frames == [b"a", b"b"]


def test_encode_frame_refuses_empty():
    with pytest.raises(FrameError):
        encode_frame(b"")
    assert encode_frame(b"xyz") == b"\x03\x00\x00\x00xyz"


# ---------------------------------------------------------------------------------------------------
# fragmentation

LIM = Limits(max_frame=1 << 14, fragment_size=1 << 12, reassembly_cap=1 << 17, reassembly_timeout=10.0)


def big_packet(seed: int = 0, count: int = 8) -> bytes:
    block = VectorBlock.from_trits(random_trits(seed, count, 4096), SPACE, "base3")
    return encode_packet(Vectors(topic="t", vectors=block), A)


def pieces_of(raw: bytes, size: int = 1000, **kw) -> list[Packet]:
    return [decode_packet(f, limits=LIM) for f in fragment_packet(raw, A, fragment_size=size, limits=LIM, **kw)]


def test_fragment_packet_layout():
    raw = big_packet()
    frags = fragment_packet(raw, A, fragment_size=1000, first_packet_id=(2**128 - 2).to_bytes(16, "big"),
                            timestamp_us=5, limits=LIM)
    count = -(-len(raw) // 1000)
    assert len(frags) == count
    for i, f in enumerate(frags):
        p = decode_packet(f, limits=LIM)
        assert p.header.kind is Kind.FRAGMENT and p.signature is None and p.header.hop_limit == 0
        assert p.header.origin == A.node_id and p.header.timestamp_us == 5
        assert p.header.packet_id == ((2**128 - 2 + i) % 2**128).to_bytes(16, "big")
        body: Fragment = p.body
        assert (body.index, body.count, body.total, body.whole) == (i, count, len(raw), raw[24:40])
        assert body.data == raw[i * 1000:(i + 1) * 1000]
        assert len(f) <= 1000 + 256
    assert fragment_packet(raw, B.node_id, fragment_size=len(raw), limits=LIM)[0] != raw
    with pytest.raises(FrameError):
        fragment_packet(b"not a packet" * 10, A, fragment_size=10)
    with pytest.raises(FrameError):
        fragment_packet(raw, A, fragment_size=1, limits=Limits(max_fragments=100))


@WIRE
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(200, 5000), dup=st.floats(0, 1))
def test_reassembly_in_any_order_with_duplicates(seed, size, dup):
    raw = big_packet(seed % 7, count=2)
    pieces = pieces_of(raw, size)
    rng = random.Random(seed)
    stream = pieces + [p for p in pieces if rng.random() < dup]
    rng.shuffle(stream)
    r = Reassembler(LIM)
    done = [w for p in stream if (w := r.add(p, 1.0)) is not None]
    assert done == [raw]
    assert r.bytes_held == 0 and len(r) == 0
    verify_packet(decode_packet(done[0], limits=LIM), A.public_key)


def test_last_piece_first_infers_the_size():
    raw = big_packet()
    pieces = pieces_of(raw, 999)
    r = Reassembler(LIM)
    assert r.add(pieces[-1], 0) is None
    for p in pieces[:-2]:
        assert r.add(p, 0) is None
    assert r.add(pieces[-2], 0) == raw


def test_single_piece_and_late_duplicates():
    raw = big_packet(count=1)
    (only,) = pieces_of(raw, len(raw))
    r = Reassembler(LIM)
    assert r.add(only, 0) == raw
    assert r.add(only, 0) is None               # a completed set is remembered
    pieces = pieces_of(big_packet(1), 1000)
    for p in pieces[:-1]:
        r.add(p, 0)
    assert r.add(pieces[-1], 0) is not None
    assert r.add(pieces[0], 0) is None and len(r) == 0 and r.bytes_held == 0


def test_loss_then_expiry():
    raw = big_packet()
    pieces = pieces_of(raw, 1000)
    r = Reassembler(LIM)
    for p in pieces[1:]:
        assert r.add(p, 100.0) is None
    assert len(r) == 1
    assert r.bytes_held == SET_OVERHEAD + sum(len(p.body.data) + PIECE_OVERHEAD for p in pieces[1:])
    assert r.expire(109.9) == 0
    assert r.expire(110.0) == 1 and r.bytes_held == 0 and r.expired == 1
    # pieces arriving after expiry start a new set; add() expires as it goes
    assert r.add(pieces[0], 111.0) is None
    assert r.add(pieces[1], 125.0) is None and len(r) == 1   # the set of t=111 expired at 121; a new one began


def _frag(whole: bytes, index: int, count: int, total: int, data: bytes, origin: bytes = A.node_id) -> Packet:
    return decode_packet(encode_packet(Fragment(whole=whole, index=index, count=count, total=total, data=data), None,
                                       origin=origin), limits=LIM)


@pytest.mark.parametrize("second", [
    dict(index=1, count=4, total=35, data=b"y" * 10),      # count differs
    dict(index=1, count=3, total=29, data=b"y" * 10),      # total differs
    dict(index=1, count=3, total=30, data=b"y" * 9),       # a middle piece of the wrong size
    dict(index=2, count=3, total=30, data=b"y" * 9),       # last piece of the wrong size
    dict(index=0, count=3, total=30, data=b"z" * 10),      # duplicate with other content
])
def test_inconsistent_pieces_are_bad_fragment_and_drop_the_set(second):
    w = bytes(16)
    r = Reassembler(LIM)
    assert r.add(_frag(w, 0, 3, 30, b"x" * 10), 0) is None
    with pytest.raises(FrameError) as e:
        r.add(_frag(w, **second), 0)
    assert e.value.reason is Reason.BAD_FRAGMENT
    assert len(r) == 0 and r.bytes_held == 0


@pytest.mark.parametrize("first", [
    dict(index=2, count=3, total=30, data=b"x" * 11),      # last piece: (30-11)/2 is not whole
    dict(index=0, count=3, total=30, data=b"x" * 9),       # 3 pieces of 9 cannot make 30
    dict(index=0, count=3, total=30, data=b"x" * 15),      # 2 pieces of 15 would do
    dict(index=0, count=1, total=30, data=b"x" * 29),      # a single piece must be the whole
])
def test_impossible_first_pieces(first):
    with pytest.raises(FrameError) as e:
        Reassembler(LIM).add(_frag(bytes(16), **first), 0)
    assert e.value.reason is Reason.BAD_FRAGMENT


def test_sets_are_keyed_by_origin_and_whole():
    r = Reassembler(LIM)
    assert r.add(_frag(bytes(16), 0, 2, 20, b"a" * 10), 0) is None
    assert r.add(_frag(bytes(16), 0, 2, 20, b"b" * 10, origin=B.node_id), 0) is None
    assert r.add(_frag(b"\x01" * 16, 0, 2, 20, b"c" * 10), 0) is None
    assert len(r) == 3
    assert r.add(_frag(bytes(16), 1, 2, 20, b"A" * 10, origin=B.node_id), 0) == b"b" * 10 + b"A" * 10


def test_cap_evicts_oldest_incomplete_sets():
    cap = 3 * (1000 + SET_OVERHEAD + 2 * PIECE_OVERHEAD) + 10
    r = Reassembler(Limits(max_frame=1 << 14, fragment_size=1 << 12, reassembly_cap=cap))
    for i in range(3):          # three sets, one piece of 1000 each, held
        assert r.add(_frag(bytes([i]) * 16, 0, 2, 2000, b"x" * 1000), float(i)) is None
    assert len(r) == 3
    held = r.bytes_held
    assert r.add(_frag(bytes([9]) * 16, 0, 2, 2000, b"y" * 1000), 3.0) is None
    assert r.evicted >= 1 and len(r) <= 3 and r.bytes_held <= cap
    # the oldest set (whole 00..) was evicted: its second piece starts a new set instead of completing it
    assert r.add(_frag(bytes([0]) * 16, 1, 2, 2000, b"z" * 1000), 4.0) is None
    assert r.bytes_held <= cap and held <= cap
    # the newest sets survive and complete
    assert r.add(_frag(bytes([9]) * 16, 1, 2, 2000, b"w" * 1000), 5.0) == b"y" * 1000 + b"w" * 1000


def test_bytes_held_never_exceed_cap_under_many_sets():
    lim = Limits(max_frame=1 << 14, fragment_size=1 << 12, reassembly_cap=20_000)
    r = Reassembler(lim)
    rng = random.Random(3)
    for i in range(500):
        whole = rng.randbytes(16)
        r.add(_frag(whole, 0, 4, 400, b"p" * 100), float(i) / 100)
        assert r.bytes_held <= lim.reassembly_cap
    assert r.evicted > 0


def test_reassembly_full_when_one_set_exceeds_the_cap():
    r = Reassembler(Limits(max_frame=1 << 14, fragment_size=1 << 12, reassembly_cap=5000))
    with pytest.raises(FrameError) as e:
        r.add(_frag(bytes(16), 0, 2, 6000, b"x" * 3000), 0)
    assert e.value.reason is Reason.REASSEMBLY_FULL and r.bytes_held == 0


def test_add_refuses_non_fragments():
    p = decode_packet(encode_packet(Ping(seq=1), A))
    with pytest.raises(WireError) as e:
        Reassembler(LIM).add(p, 0)
    assert e.value.reason is Reason.BAD_FRAGMENT


def test_reassembled_packet_decodes_and_verifies():
    raw = big_packet(3)
    r = Reassembler(LIM)
    whole = None
    for p in reversed(pieces_of(raw, 4000)):
        whole = r.add(p, 0) or whole
    p = decode_packet(whole, limits=LIM)
    assert len(whole) > HEADER_LEN and p.body.vectors.count == 8
    verify_packet(p, A.public_key_bytes)
