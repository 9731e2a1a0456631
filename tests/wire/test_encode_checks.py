"""The sender's body check (encode_packet) agrees with the receiver's decode, reason for reason.

encode_packet no longer decodes what it just encoded: it checks the typed body with the schema's
`check_typed` when the wire form is plain msgpack data, and vector blocks built by from_trits skip the
trit scan. These tests hold it to the contract that matters: whatever encode accepts, decode accepts;
whatever decode refuses, encode refuses first, with the same reason and message.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshnode.wire import packet as packet_mod
from meshnode.wire.errors import PacketError, Reason
from meshnode.wire.limits import DEFAULT_LIMITS, Limits
from meshnode.wire.packet import (
    Ack,
    Delta,
    DeltaTensor,
    Encoding,
    Fragment,
    Hello,
    Knowledge,
    Ping,
    Tensor,
    VectorBlock,
    Vectors,
    decode_packet,
    encode_packet,
)

from ._support import SPACE, WIRE, A, random_trits
from .test_packet import blocks, bodies, metas, tensors

SMALL = Limits(max_str=40, max_collection=8, max_depth=4, max_dim=400, max_count=6, max_trits=1500,
               max_body=1 << 16, max_frame=1 << 17, fragment_size=1 << 16)
PROPERTY = settings(WIRE, max_examples=400)


def _message(e: PacketError) -> str:
    text = str(e)
    return text.removesuffix(f" at offset {e.offset}") if e.offset is not None else text


def _outcomes(body: object, lim: Limits) -> tuple[object, object]:
    """(what encode_packet does, what the receiver's decode does with the unchecked encoding)."""
    try:
        raw = encode_packet(body, A, limits=lim, _validate=False)   # type: ignore[arg-type]
    except Exception:            # noqa: BLE001 - not even packable (int > 64 bits...): not this test's business
        assume(False)
    try:
        encode_packet(body, A, limits=lim)                           # type: ignore[arg-type]
        sent: object = "ok"
    except PacketError as e:
        sent = (e.reason, _message(e))
    try:
        decode_packet(raw, limits=lim)
        received: object = "ok"
    except PacketError as e:
        received = (e.reason, _message(e))
    if sent != "ok" and received != "ok" and sent[0] is Reason.TOO_LARGE:   # type: ignore[index]
        return sent[0], received[0]            # max_body: same check, worded for each side  # type: ignore[index]
    return sent, received


# ---- invalid typed bodies: a valid body with one defect


ints = st.integers(-3, 3) | st.sampled_from([True, False, 1 << 40, 2**64 - 1, -(2**63)])
texts = st.sampled_from(["", "t", "x" * 41, "é" * 21, "x" * 257, "é" * 129])
hostile_values = st.sampled_from([
    (1, 2), {"t": (1, "x")}, np.float64(0.5), {1: 2}, {b"k": 1}, OrderedDict(a=1), [[[[[1]]]]], {"a": {"b": {"c": {}}}},
    "y" * 41, "é" * 21, list(range(9)), {str(i): i for i in range(9)}, [[0] * 8] * 8, [[0] * 8] * 20,
])


@st.composite
def hostile_blocks(draw) -> VectorBlock:
    """Blocks with one thing off: hand-built (so unchecked) with data of about the right length,
    from_trits then one byte or the dim replaced, or from_trits over SMALL's limits."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        dim, count = draw(st.integers(-1, 40)), draw(st.integers(-1, 4))
        enc = draw(st.sampled_from([0, 1, 2, 2, 3, -1]))
        per = {0: -(-dim // 4), 1: -(-dim // 5)}.get(enc, 4 + 2 * max(dim, 0) // 3)
        size = max(0, count * per + draw(st.sampled_from([0, 0, 0, -1, 1])))
        space = draw(st.sampled_from([SPACE, SPACE, b"", b"s" * 33]))
        return VectorBlock(space=space, dim=dim, count=count, encoding=enc,  # type: ignore[arg-type]
                           data=draw(st.binary(min_size=size, max_size=size)))
    good = draw(blocks(max_dim=500, max_count=8))
    if choice == 1:
        return good                                    # may exceed SMALL's max_dim / max_count / max_trits
    if choice == 2 and good.data:
        data = bytearray(good.data)
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return dataclasses.replace(good, data=bytes(data))
    return dataclasses.replace(good, dim=good.dim + draw(st.sampled_from([-1, 1])))


def _replace(body: object, **kw: object) -> object:
    return dataclasses.replace(body, **kw)  # type: ignore[type-var]


@st.composite
def invalid_bodies(draw) -> object:
    body = draw(bodies)
    fields = {f.name for f in dataclasses.fields(body)}
    options = []
    if "topic" in fields:
        options.append(lambda: _replace(body, topic=draw(texts | st.integers(0, 3))))
    if "meta" in fields:
        options.append(lambda: _replace(body, meta={"k": draw(hostile_values), **(draw(metas))}))
    if "vectors" in fields and isinstance(body, Vectors):
        options += [
            lambda: _replace(body, vectors=draw(hostile_blocks())),
            lambda: _replace(body, labels=tuple(draw(st.lists(ints, max_size=6)))),
            lambda: _replace(body, ids=tuple(draw(st.lists(st.text(max_size=3) | ints | st.floats(), max_size=6)))),
        ]
    if isinstance(body, Knowledge):
        options += [
            lambda: _replace(body, form=draw(st.sampled_from(["prototypes", "linear", "predictions", "x"]))),
            lambda: _replace(body, classes=tuple(draw(st.lists(st.text(max_size=3), max_size=5)))),
            lambda: _replace(body, bias=draw(tensors())),
            lambda: _replace(body, vectors=draw(hostile_blocks())),
        ]
    if isinstance(body, Delta):
        options += [
            lambda: _replace(body, chunk=body.chunks + draw(st.integers(0, 2))),
            lambda: _replace(body, tensors=(DeltaTensor(name="w", shape=draw(st.lists(ints, max_size=3)),
                                                        trits=draw(st.none() | hostile_blocks())),)),
        ]
    if isinstance(body, Hello):
        options += [
            lambda: _replace(body, max_frame=draw(st.integers(0, 2048))),
            lambda: _replace(body, public_key=draw(st.binary(min_size=30, max_size=33))),
            lambda: _replace(body, listen_port=draw(st.integers(65530, 65540) | st.just(-1))),
            lambda: _replace(body, topics=tuple(draw(st.lists(texts, max_size=3)))),
        ]
    if isinstance(body, Ping):
        options.append(lambda: _replace(body, seq=draw(ints)))
    if isinstance(body, Ack):
        options.append(lambda: _replace(body, ref=draw(st.binary(min_size=14, max_size=18))))
    if isinstance(body, Fragment):
        options.append(lambda: Fragment(whole=body.whole, index=draw(st.integers(0, 3)), count=draw(st.integers(0, 3)),
                                        total=draw(st.integers(0, 5) | st.just(1 << 40)),
                                        data=draw(st.binary(max_size=6))))
    options.append(lambda: hostile_tensor_body(draw))
    if draw(st.integers(0, 2)) == 0:               # one in three: a bad vector block, the costly check
        return Vectors(topic="t", vectors=draw(hostile_blocks()))
    return draw(st.sampled_from(options))()


def hostile_tensor_body(draw) -> Knowledge:
    dtype = draw(st.sampled_from(["f32", "f16", "i32", "f64", 7]))
    shape = tuple(draw(st.lists(st.integers(-1, 3), max_size=10)))
    data = draw(st.binary(max_size=40))
    return Knowledge(topic="t", task="x", form="linear", classes=("a",),
                     weight=Tensor(dtype=dtype, shape=shape, data=data))  # type: ignore[arg-type]


@PROPERTY
@given(body=invalid_bodies(), small=st.booleans())
def test_encode_refuses_exactly_what_decode_refuses(body, small):
    sent, received = _outcomes(body, SMALL if small else DEFAULT_LIMITS)
    assert sent == received


@WIRE
@given(body=bodies, small=st.booleans())
def test_valid_bodies_round_trip_and_small_limits_agree(body, small):
    p = decode_packet(encode_packet(body, A))
    assert p.body == body
    sent, received = _outcomes(body, SMALL if small else DEFAULT_LIMITS)
    assert sent == received


# ---- the fast path is taken, and only where it is safe


def _vectors_body(block: VectorBlock) -> Vectors:
    return Vectors(topic="t", vectors=block, labels=tuple(range(block.count)), ids=tuple(map(str, range(block.count))),
                   meta={"loss": 0.5, "tags": ["a", None, True], "m": {"n": b"x"}})


def test_encoding_a_from_trits_block_neither_decodes_nor_scans_the_trits(monkeypatch):
    block = VectorBlock.from_trits(random_trits(3, 6, 1000), SPACE, "dense2")
    calls = []

    def refuse(*args, **kw):
        raise AssertionError("the fast path decoded the body")

    monkeypatch.setattr(packet_mod, "_decode_body", refuse)
    monkeypatch.setattr(packet_mod._trits, "validate", lambda *a, **kw: calls.append(a))
    encode_packet(_vectors_body(block), A)
    assert calls == []
    hand_built = VectorBlock(block.space, block.dim, block.count, block.encoding, block.data)
    encode_packet(_vectors_body(hand_built), A)
    assert len(calls) == 1                      # a block not known to be valid is scanned


def test_meta_values_msgpack_converts_take_the_full_decode(monkeypatch):
    block = VectorBlock.from_trits(random_trits(4, 2, 64), SPACE)
    seen = []
    real = packet_mod._decode_body
    monkeypatch.setattr(packet_mod, "_decode_body", lambda *a: seen.append(1) or real(*a))
    body = Vectors(topic="t", vectors=block, meta={"pair": (1, 2), "x": np.float64(0.25)})
    raw = encode_packet(body, A)
    assert seen == [1]
    assert decode_packet(raw).body.meta == {"pair": [1, 2], "x": 0.25}


def test_the_checked_flag_does_not_survive_a_replace_and_is_set_by_decode():
    block = VectorBlock.from_trits(random_trits(5, 2, 64), SPACE, "dense2")
    assert block._data_checked
    bad = dataclasses.replace(block, data=b"\x02" + block.data[1:])        # trit code 10
    assert not bad._data_checked and bad == VectorBlock(*dataclasses.astuple(bad)[:5])
    with pytest.raises(PacketError) as e:
        encode_packet(Vectors(topic="t", vectors=bad), A)
    assert e.value.reason is Reason.BAD_TRIT
    decoded = decode_packet(encode_packet(Vectors(topic="t", vectors=block), A)).body.vectors
    assert decoded._data_checked and decoded == block
    assert not VectorBlock(SPACE, 4, 1, Encoding.DENSE2, bytearray(1))._data_checked


def test_a_checked_block_is_still_held_to_the_encoders_limits():
    block = VectorBlock.from_trits(random_trits(6, 2, 600), SPACE)           # fine by DEFAULT_LIMITS
    with pytest.raises(PacketError) as e:
        encode_packet(Vectors(topic="t", vectors=block), A, limits=SMALL)
    assert e.value.reason is Reason.TOO_LARGE and "max_dim" in str(e.value)
