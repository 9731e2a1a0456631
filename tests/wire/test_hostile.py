"""Hostile input: whatever the bytes, decoding returns a Packet or raises WireError, never anything else,
and nothing is allocated for a size the input merely claims."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.wire.errors import PacketError, Reason, WireError
from meshnode.wire.frames import FrameDecoder, Reassembler, encode_frame
from meshnode.wire.limits import DEFAULT_LIMITS, Limits
from meshnode.wire.packet import (
    MAGIC, Fragment, Hello, Kind, Packet, Ping, VectorBlock, Vectors, decode_packet, encode_packet, verify_packet,
)
from meshnode.wire.session import PacketDropped, PacketReceived, Session, SessionFailed

from ._support import A, B, FEW, SPACE, WIRE, random_trits

SMALL = Limits(max_frame=1 << 16, max_body=1 << 16, fragment_size=1 << 12, reassembly_cap=1 << 18)


def decode_or_wire_error(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Packet | WireError:
    try:
        p = decode_packet(data, limits=limits)
    except WireError as e:          # anything else propagates and fails the test
        assert isinstance(e, PacketError)
        assert e.offset is None or 0 <= e.offset <= len(data)
        return e
    assert isinstance(p, Packet)
    return p


def _header(kind: int, body: bytes, *, flags: int = 0, body_length: int | None = None) -> bytes:
    n = len(body) if body_length is None else body_length
    return struct.pack("<4sBBBBB3sIQ16s32s", MAGIC, 1, 0, kind, flags, 0, b"\0\0\0", n, 0, bytes(16), bytes(32))


def small_packets() -> list[bytes]:
    block = VectorBlock.from_trits(random_trits(5, 2, 13), SPACE, "base3")
    sparse = VectorBlock.from_trits(random_trits(6, 2, 40, zeros=0.8), SPACE, "sparse")
    dense = VectorBlock.from_trits(random_trits(7, 1, 9), SPACE, "dense2")
    return [
        encode_packet(Ping(seq=1), A, packet_id=bytes(16), timestamp_us=1),
        encode_packet(Vectors(topic="t", vectors=block, labels=(1, 2)), A, packet_id=bytes(16), timestamp_us=1),
        encode_packet(Vectors(topic="t", vectors=sparse), A, packet_id=bytes(16), timestamp_us=1),
        encode_packet(Vectors(topic="t", vectors=dense), None, origin=B.node_id, packet_id=bytes(16), timestamp_us=1),
    ]


@WIRE
@given(st.binary(max_size=300))
def test_random_bytes(data):
    decode_or_wire_error(data)


@WIRE
@given(kind=st.integers(0, 12), flags=st.sampled_from([0, 1, 0xF0, 2]), body=st.binary(max_size=200),
       extra=st.integers(-3, 3))
def test_random_bodies_behind_a_valid_header(kind, flags, body, extra):
    """Random msgpack-ish bytes reach the body parser (the header is right apart from `extra`)."""
    sig = bytes(64) if flags & 1 else b""
    data = _header(kind, body, flags=flags) + body + sig
    decode_or_wire_error(data[:len(data) + extra] if extra < 0 else data + bytes(extra))


objects = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6) | st.integers(0, 3), ch, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["seq", "topic", "vectors", "space", "dim", "count", "encoding", "data", "name", "public_key",
                        "caps", "topics", "max_frame", "ref", "reason", "tensors", "shape", "dtype", "whole",
                        "index", "total", "form", "classes", "weight", "labels", "ids", "meta", "chunk", "chunks"])


@WIRE
@given(kind=st.integers(1, 10), obj=st.dictionaries(keys, objects, max_size=8))
def test_structured_random_bodies(kind, obj):
    body = msgpack.packb(obj, use_bin_type=True)
    decode_or_wire_error(_header(kind, body) + body)


@FEW
@given(kind=st.integers(1, 10), obj=st.dictionaries(keys, objects, max_size=8), seed=st.integers(0, 2**16))
def test_random_vector_blocks(kind, obj, seed):
    rng = np.random.default_rng(seed)
    obj["topic"] = "t"
    obj["vectors"] = {"space": b"s", "dim": int(rng.integers(0, 70000)), "count": int(rng.integers(0, 4)),
                      "encoding": int(rng.integers(0, 4)), "data": rng.bytes(int(rng.integers(0, 64)))}
    body = msgpack.packb(obj, use_bin_type=True)
    decode_or_wire_error(_header(Kind.VECTORS, body) + body)


@pytest.mark.parametrize("index", range(4))
def test_every_bit_flip_of_small_packets(index):
    raw = small_packets()[index]
    signed = index < 3
    for byte in range(len(raw)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[byte] ^= 1 << bit
            result = decode_or_wire_error(bytes(bad))
            if isinstance(result, Packet) and signed and byte != 8:
                with pytest.raises(WireError):
                    verify_packet(result, A.public_key)


@pytest.mark.parametrize("index", range(4))
def test_truncation_at_every_offset(index):
    raw = small_packets()[index]
    for cut in range(len(raw)):
        result = decode_or_wire_error(raw[:cut])
        assert isinstance(result, WireError) and result.reason is Reason.TRUNCATED


def test_oversized_length_fields_are_refused_before_allocation():
    # body length at the u32 maximum: too_large, from the header alone
    e = decode_or_wire_error(_header(Kind.PING, b"", body_length=0xFFFFFFFF))
    assert e.reason is Reason.TOO_LARGE
    # msgpack containers / bins that claim 4 GiB inside a tiny body
    for body in (b"\x81\xa3seq\xdd\xff\xff\xff\xff",        # array32 of 2**32-1 entries
                 b"\x81\xa3seq\xdf\xff\xff\xff\xff",        # map32
                 b"\x81\xa3seq\xc6\xff\xff\xff\xff",        # bin32
                 b"\x81\xa3seq\xdb\xff\xff\xff\xff"):       # str32
        e = decode_or_wire_error(_header(Kind.PING, body) + body)
        assert e.reason is Reason.BAD_BODY
    # a vector block claiming a huge dimension / count with no data
    for dim, count in ((2**63, 1), (1, 2**63), (2**31, 2**31), (DEFAULT_LIMITS.max_dim + 1, 1)):
        body = msgpack.packb({"topic": "t", "vectors": {"space": b"s", "dim": dim, "count": count, "encoding": 2,
                                                        "data": b""}})
        e = decode_or_wire_error(_header(Kind.VECTORS, body) + body)
        assert e.reason is Reason.TOO_LARGE
    # sparse counts far beyond the data
    data = struct.pack("<I", 0xFFFFFFFF)
    body = msgpack.packb({"topic": "t", "vectors": {"space": b"s", "dim": 100, "count": 1, "encoding": 2, "data": data}})
    assert decode_or_wire_error(_header(Kind.VECTORS, body) + body).reason is Reason.BAD_LENGTH


def test_wrong_major_in_many_shapes():
    raw = small_packets()[0]
    for major in (0, 2, 3, 255):
        for data in (raw[:4] + bytes([major]) + raw[5:], raw[:4] + bytes([major]), raw[:4] + bytes([major]) + b"\x07"):
            e = decode_or_wire_error(data)
            assert e.reason is Reason.UNSUPPORTED_VERSION and f"{major}." in str(e) and "1.0" in str(e)


@WIRE
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=20))
def test_frame_decoder_on_random_streams(data, cuts):
    decoder = FrameDecoder(1000)
    pos = 0
    try:
        for c in [*cuts, len(data)]:
            for frame in decoder.feed(data[pos:pos + c]):
                assert 1 <= len(frame) <= 1000
                decode_or_wire_error(frame)
            pos += c
    except WireError as e:
        assert e.reason in (Reason.TOO_LARGE, Reason.BAD_HEADER)


@FEW
@given(st.lists(st.binary(max_size=120), max_size=8), st.integers(0, 2**16))
def test_open_session_survives_garbage_frames(garbage, seed):
    """Any frames (random, or mutated valid packets) give events; never an exception."""
    a = Session(A, Hello(name="a", public_key=A.public_key_bytes), limits=SMALL)
    b = Session(B, Hello(name="b", public_key=B.public_key_bytes), limits=SMALL)
    b.receive_data(a.start(), 0.0)
    a.receive_data(b.start(), 0.0)
    rng = np.random.default_rng(seed)
    frames = [g for g in garbage if g]
    for raw in small_packets():
        bad = bytearray(raw)
        bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
        frames.append(bytes(bad))
    stream = b"".join(encode_frame(f) for f in frames)
    events = b.receive_data(stream, 1.0)
    assert all(isinstance(e, (PacketDropped, PacketReceived, SessionFailed)) for e in events)
    assert isinstance(b.data_to_send(), bytes)


def test_fragments_claiming_huge_totals_do_not_allocate():
    r = Reassembler(SMALL)
    # 2-byte pieces of a 64 KiB packet: within the cap by data, but not once per-piece costs are counted
    p = decode_packet(encode_packet(Fragment(whole=bytes(16), index=0, count=32818, total=SMALL.max_body + 100,
                                             data=b"x" * 2), None, origin=A.node_id, limits=SMALL), limits=SMALL)
    with pytest.raises(WireError) as e:
        r.add(p, 0.0)
    assert e.value.reason is Reason.REASSEMBLY_FULL
    assert r.bytes_held == 0 and len(r) == 0
