"""Packets: round trips of every kind, signatures, header and body checks (SPEC §2-4)."""

from __future__ import annotations

import hashlib
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.wire.errors import PacketError, Reason, WireError
from meshnode.wire.limits import DEFAULT_LIMITS, Limits
from meshnode.wire.packet import (
    HEADER_LEN, MAGIC, PROTOCOL_VERSION, SIGNATURE_DOMAIN, SIGNATURE_LEN, Ack, Bye, Delta, DeltaTensor, Encoding,
    Flags, Fragment, Hello, Kind, Knowledge, Nack, Packet, Ping, Pong, Signer, Tensor, VectorBlock, Vectors,
    body_to_wire, decode_packet, encode_packet, node_id_of, set_hop_limit, signature_input, verify_packet,
)

from ._support import A, B, FEW, SPACE, WIRE, random_trits, sample_bodies

PID = bytes(range(16))
TS = 1_764_000_000_000_000


# ---------------------------------------------------------------------------------------------------
# strategies

u64 = st.integers(0, 2**64 - 1)
anyint = st.integers(-(2**63), 2**64 - 1)
names = st.text(max_size=12)
topics = st.text(min_size=1, max_size=40)
scalars = st.none() | st.booleans() | anyint | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8) | st.binary(max_size=8)


def nested(depth: int) -> st.SearchStrategy:
    if depth == 0:
        return scalars
    inner = nested(depth - 1)
    return scalars | st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


metas = st.dictionaries(st.text(max_size=8), nested(3), max_size=4)


@st.composite
def blocks(draw, max_dim: int = 300, max_count: int = 5, count: int | None = None) -> VectorBlock:
    n = draw(st.integers(0, max_count)) if count is None else count
    d = draw(st.integers(0, max_dim))
    zeros = draw(st.sampled_from([0.0, 0.3, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    enc = draw(st.sampled_from(["auto", "dense2", "base3", "sparse"]))
    space = draw(st.binary(min_size=1, max_size=32))
    return VectorBlock.from_trits(random_trits(seed, n, d, zeros), space, enc)


_NP = {"f32": np.float32, "f16": np.float16, "i8": np.int8, "u8": np.uint8, "i32": np.int32}


@st.composite
def tensors(draw, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> Tensor:
    dt = draw(st.sampled_from(sorted(_NP))) if dtype is None else dtype
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = (rng.standard_normal(shape) * 50).astype(_NP[dt])
    return Tensor.from_array(arr)


def opt(s: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | s


@st.composite
def hellos(draw) -> Hello:
    return Hello(name=draw(names), public_key=draw(st.binary(min_size=32, max_size=32)),
                 caps=draw(st.lists(names, max_size=4)), topics=draw(st.lists(topics, max_size=4)),
                 max_frame=draw(st.integers(1024, 2**32)), cert=draw(opt(st.binary(max_size=64))),
                 mesh=draw(opt(st.binary(max_size=32))), listen_port=draw(opt(st.integers(0, 65535))))


@st.composite
def vectors_bodies(draw) -> Vectors:
    block = draw(blocks())
    n = block.count
    return Vectors(topic=draw(topics), vectors=block,
                   labels=draw(opt(st.lists(anyint, min_size=n, max_size=n))),
                   ids=draw(opt(st.lists(st.text(max_size=5) | anyint, min_size=n, max_size=n))),
                   meta=draw(opt(metas)))


@st.composite
def knowledge_bodies(draw) -> Knowledge:
    classes = draw(st.lists(names, min_size=1, max_size=4))
    c = len(classes)
    form = draw(st.sampled_from(["prototypes", "linear", "predictions"]))
    kw: dict = {}
    d = draw(st.integers(1, 40))
    if form == "prototypes" or draw(st.booleans()):
        kw["vectors"] = draw(blocks(count=c)) if form == "prototypes" else draw(blocks())
    if form == "linear":
        kw["weight"] = draw(tensors(draw(st.sampled_from(["f32", "f16"])), (c, d)))
        if draw(st.booleans()):
            kw["bias"] = draw(tensors("f32", (c,)))
    if form == "predictions":
        n = draw(st.integers(0, 6))
        kw["predictions"] = draw(st.sampled_from([tensors("f16", (n, c)), tensors("i32", (n,))]) .flatmap(lambda s: s))
    return Knowledge(topic=draw(topics), task=draw(names), form=form, classes=classes,
                     anchor_hash=draw(opt(st.binary(max_size=32))), meta=draw(opt(metas)), **kw)


@st.composite
def delta_bodies(draw) -> Delta:
    ts = []
    for _ in range(draw(st.integers(0, 3))):
        ts.append(DeltaTensor(name=draw(names), shape=draw(st.lists(st.integers(0, 1000), max_size=3)),
                              values=draw(opt(tensors())), trits=draw(opt(blocks())), scales=draw(opt(tensors("f32")))))
    chunks = draw(st.integers(1, 10))
    return Delta(topic=draw(topics), group=draw(st.binary(max_size=16)), round=draw(u64),
                 chunk=draw(st.integers(0, chunks - 1)), chunks=chunks, codec=draw(names), tensors=ts,
                 meta=draw(opt(metas)))


bodies = st.one_of(
    hellos(),
    st.builds(Ping, seq=u64, sent_us=opt(u64)),
    st.builds(Pong, seq=u64, echo_us=opt(u64)),
    vectors_bodies(),
    knowledge_bodies(),
    delta_bodies(),
    st.builds(Ack, ref=st.binary(min_size=16, max_size=16), meta=opt(metas)),
    st.builds(Nack, ref=st.binary(min_size=16, max_size=16), reason=names, detail=opt(names)),
    st.builds(Fragment, whole=st.binary(min_size=16, max_size=16), index=st.just(0), count=st.just(1),
              total=st.just(5), data=st.binary(min_size=1, max_size=5)),
    st.builds(Bye, reason=names, detail=opt(names)),
)


# ---------------------------------------------------------------------------------------------------
# round trips


@WIRE
@given(body=bodies, hop=st.integers(0, 255), minor=st.integers(0, 255), ts=u64,
       pid=st.binary(min_size=16, max_size=16), signed=st.booleans())
def test_round_trip_every_kind(body, hop, minor, ts, pid, signed):
    signer = A if signed else None
    raw = encode_packet(body, signer, origin=None if signed else B.node_id, packet_id=pid, timestamp_us=ts,
                        hop_limit=hop, minor=minor)
    p = decode_packet(raw)
    assert p.body == body
    h = p.header
    assert (h.major, h.minor, h.kind, h.hop_limit, h.timestamp_us, h.packet_id) == (1, minor, body.KIND, hop, ts, pid)
    assert h.body_length == len(raw) - HEADER_LEN - (SIGNATURE_LEN if signed else 0)
    assert p.raw == raw
    if signed:
        assert h.origin == A.node_id and h.flags == Flags.SIGNED and h.signed
        verify_packet(p, A.public_key_bytes)
        verify_packet(p, A.public_key)
    else:
        assert h.origin == B.node_id and p.signature is None and not h.signed
    # decoding then re-encoding the same header gives the same bytes (deterministic encoding)
    again = encode_packet(p.body, signer, origin=None if signed else B.node_id, packet_id=pid, timestamp_us=ts,
                          hop_limit=hop, minor=minor)
    assert again == raw


def test_sample_bodies_round_trip_and_are_deterministic():
    for body in sample_bodies(A):
        raw = encode_packet(body, A, packet_id=PID, timestamp_us=TS)
        assert raw == encode_packet(body, A, packet_id=PID, timestamp_us=TS)  # Ed25519 is deterministic
        p = decode_packet(raw)
        assert p.body == body
        verify_packet(p, A.public_key_bytes)


def test_optional_fields_absent_are_not_on_the_wire():
    wire = body_to_wire(Hello(name="x", public_key=bytes(32)))
    assert set(wire) == {"name", "public_key", "caps", "topics", "max_frame"}
    assert set(body_to_wire(Ping(seq=3))) == {"seq"}


def test_lists_are_normalised_to_tuples():
    h = Hello(name="x", public_key=bytes(32), caps=["a"], topics=["t"])
    assert h.caps == ("a",) and h.topics == ("t",)
    d = DeltaTensor(name="w", shape=[2, 3])
    assert d.shape == (2, 3)
    assert Tensor("f32", [2], bytes(8)).shape == (2,)


@pytest.mark.parametrize("count,dim", [(0, 0), (0, 64), (3, 0), (1, 1)])
@pytest.mark.parametrize("enc", ["dense2", "base3", "sparse", "auto"])
def test_empty_and_tiny_vector_blocks(count, dim, enc):
    block = VectorBlock.from_trits(np.zeros((count, dim), np.int8), SPACE, enc)
    p = decode_packet(encode_packet(Vectors(topic="t", vectors=block), A))
    assert p.body.vectors == block
    assert p.body.vectors.to_trits().shape == (count, dim)


def test_vector_dimension_at_the_limits():
    lim = Limits(max_dim=2048, max_count=4, max_trits=2048 * 4)
    for enc in ("dense2", "base3", "sparse"):
        t = random_trits(7, 4, 2048)
        block = VectorBlock.from_trits(t, SPACE, enc, limits=lim)
        p = decode_packet(encode_packet(Vectors(topic="t", vectors=block), A, limits=lim), limits=lim)
        assert np.array_equal(p.body.vectors.to_trits(limits=lim), t)
    big = VectorBlock.from_trits(random_trits(8, 1, 2049), SPACE, "dense2")
    raw = encode_packet(Vectors(topic="t", vectors=big), A)
    with pytest.raises(PacketError) as e:
        decode_packet(raw, limits=lim)
    assert e.value.reason is Reason.TOO_LARGE
    many = VectorBlock.from_trits(random_trits(9, 5, 16), SPACE, "dense2")
    with pytest.raises(PacketError) as e:
        decode_packet(encode_packet(Vectors(topic="t", vectors=many), A), limits=lim)
    assert e.value.reason is Reason.TOO_LARGE


def test_default_max_dim_vector():
    t = np.zeros((1, DEFAULT_LIMITS.max_dim), np.int8)
    t[0, [0, 12345, DEFAULT_LIMITS.max_dim - 1]] = [1, -1, 1]
    block = VectorBlock.from_trits(t, SPACE)
    assert block.encoding == Encoding.SPARSE
    p = decode_packet(encode_packet(Vectors(topic="t", vectors=block), A))
    assert np.array_equal(p.body.vectors.to_trits(), t)
    assert p.body.vectors.zero_fraction() == pytest.approx(1 - 3 / DEFAULT_LIMITS.max_dim)


@pytest.mark.parametrize("enc", ["dense2", "base3", "sparse"])
def test_vector_block_helpers(enc):
    t = random_trits(3, 2, 100, zeros=0.5)
    block = VectorBlock.from_trits(t, SPACE, enc)
    assert block.encoding == Encoding[enc.upper()] and block.dim == 100 and block.count == 2
    assert block.nbytes == len(block.data)
    assert block.zero_fraction() == pytest.approx(float(np.mean(t == 0)))
    one = VectorBlock.from_trits(t[0], SPACE, enc)
    assert one.count == 1 and np.array_equal(one.to_trits()[0], t[0])
    assert VectorBlock.from_trits(np.zeros((0, 5), np.int8), SPACE).zero_fraction() == 0.0


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8", "u8", "i32"])
def test_tensor_round_trip(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(_NP[dtype])
    t = Tensor.from_array(arr)
    assert t.dtype == dtype and t.shape == (2, 3, 4) and t.nbytes == arr.nbytes
    assert np.array_equal(t.to_array(), arr)
    big_endian = arr.astype(arr.dtype.newbyteorder(">"))
    assert Tensor.from_array(big_endian).data == t.data   # always little-endian on the wire
    with pytest.raises(PacketError):
        Tensor.from_array(np.zeros(2, np.float64))


def test_signer_and_node_id():
    s = Signer.from_seed(bytes(32))
    assert s.node_id == node_id_of(s.public_key_bytes) and len(s.node_id) == 32
    assert Signer.from_seed(bytes(32)).public_key_bytes == s.public_key_bytes
    assert Signer.generate().node_id != s.node_id
    with pytest.raises(ValueError):
        Signer.from_seed(b"short")


# ---------------------------------------------------------------------------------------------------
# signatures


def _ping(**kw) -> bytes:
    return encode_packet(Ping(seq=7, sent_us=99), A, packet_id=PID, timestamp_us=TS, **kw)


def test_signed_message_is_domain_header_with_hop_zero_and_body_digest():
    raw = _ping(hop_limit=5)
    p = decode_packet(raw)
    body_end = HEADER_LEN + p.header.body_length
    # SPEC §2, written out: 19-byte domain, header with byte 8 zeroed, SHA-256 of the body
    expected = b"meshnode/packet/v1\x00" + raw[:8] + b"\x00" + raw[9:HEADER_LEN] + hashlib.sha256(raw[HEADER_LEN:body_end]).digest()
    assert SIGNATURE_DOMAIN == b"meshnode/packet/v1\x00" and len(expected) == 123
    assert p.signed_message == expected == signature_input(raw[:HEADER_LEN], raw[HEADER_LEN:body_end])
    A.public_key.verify(p.signature, expected)
    with pytest.raises(ValueError):
        signature_input(raw[:HEADER_LEN - 1], b"")


def test_signature_covers_a_large_body_through_its_digest():
    block = VectorBlock.from_trits(random_trits(5, 64, 4096, 0.3), SPACE, "dense2")
    raw = encode_packet(Vectors(topic="t", vectors=block), A)
    p = decode_packet(raw)
    verify_packet(p, A.public_key)
    body_end = HEADER_LEN + p.header.body_length
    bad = bytearray(raw)
    bad[body_end - 1] ^= 0x40            # a trit code in the last data byte: 01 (+1) <-> 00 (0) or 11 <-> 10
    try:
        q = decode_packet(bytes(bad))
    except PacketError:
        bad[body_end - 1] ^= 0x40 | 0x80  # the other bit of that trit instead
        q = decode_packet(bytes(bad))
    with pytest.raises(PacketError) as e:
        verify_packet(q, A.public_key)
    assert e.value.reason is Reason.BAD_SIGNATURE


def test_every_bit_flip_in_header_or_body_breaks_the_signature_except_hop_limit():
    raw = _ping()
    body_end = len(raw) - SIGNATURE_LEN
    for byte in range(len(raw)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[byte] ^= 1 << bit
            try:
                p = decode_packet(bytes(bad))
            except WireError:
                assert byte != 8
                continue
            if byte == 8:
                verify_packet(p, A.public_key_bytes)       # the hop limit is not signed
                continue
            with pytest.raises(PacketError) as e:
                verify_packet(p, A.public_key_bytes)
            assert e.value.reason is Reason.BAD_SIGNATURE, (byte, bit)
    assert body_end > HEADER_LEN


def test_hop_limit_change_keeps_signature():
    raw = _ping(hop_limit=8)
    for hop in (0, 1, 7, 255):
        fwd = set_hop_limit(raw, hop)
        p = decode_packet(fwd)
        assert p.header.hop_limit == hop
        verify_packet(p, A.public_key)
    with pytest.raises(PacketError):
        set_hop_limit(raw, 256)
    with pytest.raises(PacketError):
        set_hop_limit(b"XXXX" + raw[4:], 1)


def test_wrong_key_unsigned_and_garbage_key():
    p = decode_packet(_ping())
    with pytest.raises(PacketError) as e:
        verify_packet(p, B.public_key_bytes)
    assert e.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(PacketError) as e:
        verify_packet(p, b"\x01" * 5)
    assert e.value.reason is Reason.BAD_SIGNATURE
    unsigned = decode_packet(encode_packet(Ping(seq=1), None, origin=A.node_id))
    with pytest.raises(PacketError) as e:
        verify_packet(unsigned, A.public_key)
    assert e.value.reason is Reason.UNSIGNED


def test_encode_argument_checks():
    with pytest.raises(PacketError):
        encode_packet(Ping(seq=1), None)                      # unsigned needs an origin
    with pytest.raises(PacketError):
        encode_packet(Ping(seq=1), A, origin=B.node_id)       # origin must be the signer's
    with pytest.raises(PacketError):
        encode_packet(Ping(seq=1), A, packet_id=b"short")
    with pytest.raises(PacketError):
        encode_packet(Ping(seq=1), A, hop_limit=300)
    with pytest.raises(PacketError):
        encode_packet(Ping(seq=-1), A)                        # the encoder checks bodies like the decoder
    with pytest.raises(PacketError):
        encode_packet(Hello(name="x", public_key=bytes(31)), A)
    raw = encode_packet(Ping(seq=1), A)
    assert decode_packet(raw).header.packet_id != decode_packet(encode_packet(Ping(seq=1), A)).header.packet_id


def test_encode_refuses_invalid_vector_block_unless_told_not_to():
    bad = VectorBlock(space=SPACE, dim=8, count=1, encoding=Encoding.DENSE2, data=b"\x02\x00")
    with pytest.raises(WireError) as e:
        encode_packet(Vectors(topic="x", vectors=bad), A)
    assert e.value.reason is Reason.BAD_TRIT
    raw = encode_packet(Vectors(topic="x", vectors=bad), A, _validate=False)
    with pytest.raises(PacketError) as e:
        decode_packet(raw)
    assert e.value.reason is Reason.BAD_TRIT
    # the offset points at the bad byte inside the packet
    assert e.value.offset is not None and raw[e.value.offset] == 0x02
    assert "vectors" in str(e.value)


# ---------------------------------------------------------------------------------------------------
# header checks, in SPEC order


def _header(raw: bytes, **fields) -> bytes:
    names = ["magic", "major", "minor", "kind", "flags", "hop", "reserved", "body_length", "ts", "pid", "origin"]
    values = dict(zip(names, struct.unpack_from("<4sBBBBB3sIQ16s32s", raw)))
    values.update(fields)
    return struct.pack("<4sBBBBB3sIQ16s32s", *values.values()) + raw[HEADER_LEN:]


@pytest.mark.parametrize("mutation,reason,offset", [
    (dict(magic=b"XNPK"), Reason.BAD_MAGIC, 0),
    (dict(major=2), Reason.UNSUPPORTED_VERSION, 4),
    (dict(major=0), Reason.UNSUPPORTED_VERSION, 4),
    (dict(kind=0), Reason.UNKNOWN_KIND, 6),
    (dict(kind=255), Reason.UNKNOWN_KIND, 6),
    (dict(flags=0x03), Reason.BAD_HEADER, 7),
    (dict(flags=0x09), Reason.BAD_HEADER, 7),
    (dict(reserved=b"\x00\x01\x00"), Reason.BAD_HEADER, 9),
    (dict(body_length=DEFAULT_LIMITS.max_body + 1), Reason.TOO_LARGE, 12),
    (dict(body_length=0xFFFFFFFF), Reason.TOO_LARGE, 12),
])
def test_header_errors(mutation, reason, offset):
    with pytest.raises(PacketError) as e:
        decode_packet(_header(_ping(), **mutation))
    assert e.value.reason is reason and e.value.offset == offset


def test_hint_flags_and_any_minor_are_accepted():
    p = decode_packet(_header(_ping(), flags=0xF1, minor=200))
    assert p.header.minor == 200 and p.header.flags & Flags.SIGNED


def test_wrong_major_names_both_versions():
    for raw in (_header(_ping(), major=2, minor=3), b"MNPK\x02\x03", b"MNPK\x02"):
        with pytest.raises(PacketError) as e:
            decode_packet(raw)
        assert e.value.reason is Reason.UNSUPPORTED_VERSION
        assert "2." in str(e.value) and f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}" in str(e.value)


def test_length_errors():
    raw = _ping()
    with pytest.raises(PacketError) as e:
        decode_packet(raw + b"\x00")
    assert e.value.reason is Reason.TRAILING_DATA and e.value.offset == len(raw)
    with pytest.raises(PacketError) as e:
        decode_packet(raw[:-1])
    assert e.value.reason is Reason.TRUNCATED and e.value.offset == len(raw) - 1
    with pytest.raises(PacketError) as e:
        decode_packet(b"MN")
    assert e.value.reason is Reason.TRUNCATED
    with pytest.raises(PacketError) as e:
        decode_packet(b"")
    assert e.value.reason is Reason.TRUNCATED
    with pytest.raises(PacketError) as e:
        decode_packet(b"GET / HTTP/1.1")
    assert e.value.reason is Reason.BAD_MAGIC


def test_decode_accepts_bytearray_and_memoryview():
    raw = _ping()
    assert decode_packet(bytearray(raw)).body == Ping(seq=7, sent_us=99)
    assert decode_packet(memoryview(raw)).raw == raw


# ---------------------------------------------------------------------------------------------------
# body checks


def _with_body(obj, kind=Kind.PING, *, raw_body: bytes | None = None) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True) if raw_body is None else raw_body
    header = struct.pack("<4sBBBBB3sIQ16s32s", MAGIC, 1, 0, kind, 0, 0, b"\0\0\0", len(body), TS, PID, A.node_id)
    return header + body


def _body_reason(obj, kind=Kind.PING, *, raw_body: bytes | None = None, limits: Limits = DEFAULT_LIMITS) -> Reason:
    with pytest.raises(PacketError) as e:
        decode_packet(_with_body(obj, kind, raw_body=raw_body), limits=limits)
    return e.value.reason


def _vec(**over):
    block = {"space": SPACE, "dim": 8, "count": 1, "encoding": 0, "data": b"\x00\x00"}
    block.update(over)
    return {"topic": "t", "vectors": block}


@pytest.mark.parametrize("obj,kind,reason", [
    ({}, Kind.PING, Reason.BAD_BODY),                                  # missing key
    ({"seq": "1"}, Kind.PING, Reason.BAD_BODY),                        # wrong type
    ({"seq": True}, Kind.PING, Reason.BAD_BODY),                       # bool is not int
    ({"seq": -1}, Kind.PING, Reason.BAD_BODY),                         # negative
    ({"seq": 1.0}, Kind.PING, Reason.BAD_BODY),
    ({"seq": 1, "sent_us": None}, Kind.PING, Reason.BAD_BODY),         # nil is not "absent"
    ([1], Kind.PING, Reason.BAD_BODY),                                 # not a map
    ({"seq": 1, 5: 1}, Kind.PING, Reason.BAD_BODY),                    # non-str key (strict_map_key)
    ({"seq": 1, b"k": 1}, Kind.PING, Reason.BAD_BODY),                 # bin key
    ({"seq": 1, "x": {b"k": 1}}, Kind.PING, Reason.BAD_BODY),          # bin key deeper
    ({"ref": bytes(15)}, Kind.ACK, Reason.BAD_BODY),
    ({"reason": 5}, Kind.BYE, Reason.BAD_BODY),
    ({"topic": "", "vectors": {}}, Kind.VECTORS, Reason.BAD_BODY),     # empty topic
    ({"topic": "x" * 257, "vectors": {}}, Kind.VECTORS, Reason.BAD_BODY),
    (_vec(space=b""), Kind.VECTORS, Reason.BAD_BODY),
    (_vec(space=bytes(33)), Kind.VECTORS, Reason.BAD_BODY),
    (_vec(encoding=3), Kind.VECTORS, Reason.BAD_ENCODING),
    (_vec(encoding=-1), Kind.VECTORS, Reason.BAD_ENCODING),
    (_vec(dim=-1), Kind.VECTORS, Reason.BAD_DIMENSION),
    (_vec(count=-1), Kind.VECTORS, Reason.BAD_DIMENSION),
    (_vec(data=b"\x00"), Kind.VECTORS, Reason.BAD_LENGTH),
    (_vec(data=b"\x02\x00"), Kind.VECTORS, Reason.BAD_TRIT),
    (_vec(data=b"\x00\x40", dim=5), Kind.VECTORS, Reason.BAD_PADDING),
    (_vec(dim=2**40, count=2**40, data=b""), Kind.VECTORS, None),      # huge claims: refused, no allocation
    ({**_vec(), "labels": [1, 2]}, Kind.VECTORS, Reason.BAD_BODY),     # labels length != N
    ({**_vec(), "ids": [1.5]}, Kind.VECTORS, Reason.BAD_BODY),
    ({**_vec(), "meta": []}, Kind.VECTORS, Reason.BAD_BODY),
    ({"name": "x", "public_key": bytes(32), "caps": [], "topics": [], "max_frame": 100}, Kind.HELLO, Reason.BAD_BODY),
    ({"name": "x", "public_key": bytes(32), "caps": [1], "topics": [], "max_frame": 4096}, Kind.HELLO,
     Reason.BAD_BODY),
    ({"name": "x", "public_key": bytes(32), "caps": [], "topics": [], "max_frame": 4096, "listen_port": 70000},
     Kind.HELLO, Reason.BAD_BODY),
    ({"whole": bytes(16), "index": 2, "count": 2, "total": 10, "data": b"x"}, Kind.FRAGMENT, Reason.BAD_FRAGMENT),
    ({"whole": bytes(16), "index": 0, "count": 2**20, "total": 10, "data": b"x"}, Kind.FRAGMENT,
     Reason.BAD_FRAGMENT),
    ({"whole": bytes(16), "index": 0, "count": 1, "total": 2**40, "data": b"x"}, Kind.FRAGMENT,
     Reason.BAD_FRAGMENT),
    ({"whole": bytes(16), "index": 0, "count": 1, "total": 1, "data": b"xy"}, Kind.FRAGMENT, Reason.BAD_FRAGMENT),
    ({"whole": bytes(16), "index": 0, "count": 0, "total": 1, "data": b"x"}, Kind.FRAGMENT, Reason.BAD_FRAGMENT),
    ({"whole": bytes(16), "index": 0, "count": 1, "total": 0, "data": b""}, Kind.FRAGMENT, Reason.BAD_FRAGMENT),
    ({"whole": bytes(16), "index": "0", "count": 1, "total": 1, "data": b"x"}, Kind.FRAGMENT, Reason.BAD_BODY),
    ({"topic": "t", "group": b"", "round": 0, "chunk": 1, "chunks": 1, "codec": "c", "tensors": []}, Kind.DELTA,
     Reason.BAD_BODY),
    ({"topic": "t", "group": b"", "round": 0, "chunk": 0, "chunks": 1, "codec": "c", "tensors": [{"name": "x"}]},
     Kind.DELTA, Reason.BAD_BODY),
])
def test_body_errors(obj, kind, reason):
    got = _body_reason(obj, kind)
    if reason is None:
        assert got is Reason.TOO_LARGE
    else:
        assert got is reason


def _know(form, **kw):
    return {"topic": "t", "task": "x", "form": form, "classes": ["a", "b"], **kw}


def _tensor(dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    return {"dtype": dtype, "shape": list(shape), "data": bytes(n * np.dtype(_NP[dtype]).itemsize)}


@pytest.mark.parametrize("obj,reason", [
    (_know("other"), Reason.BAD_BODY),
    (_know("prototypes"), Reason.BAD_BODY),                                        # needs vectors
    (_know("prototypes", vectors=_vec()["vectors"]), Reason.BAD_BODY),            # 1 prototype, 2 classes
    (_know("linear"), Reason.BAD_BODY),
    (_know("linear", weight=_tensor("i8", (2, 4))), Reason.BAD_BODY),
    (_know("linear", weight=_tensor("f32", (3, 4))), Reason.BAD_BODY),
    (_know("linear", weight=_tensor("f32", (2, 4)), bias=_tensor("f32", (3,))), Reason.BAD_BODY),
    (_know("predictions", predictions=_tensor("f32", (5, 3))), Reason.BAD_BODY),
    (_know("predictions", predictions=_tensor("i8", (5,))), Reason.BAD_BODY),
    (_know("linear", weight={"dtype": "f64", "shape": [2, 4], "data": bytes(64)}), Reason.BAD_BODY),
    (_know("linear", weight={"dtype": "f32", "shape": [2, -4], "data": b""}), Reason.BAD_BODY),
    (_know("linear", weight={"dtype": "f32", "shape": [1] * 9, "data": bytes(4)}), Reason.BAD_DIMENSION),
    (_know("linear", weight={"dtype": "f32", "shape": [2**20, 2**20], "data": b""}), Reason.BAD_DIMENSION),
    (_know("linear", weight={"dtype": "f32", "shape": [2, 4], "data": bytes(31)}), Reason.BAD_LENGTH),
])
def test_knowledge_and_tensor_errors(obj, reason):
    assert _body_reason(obj, Kind.KNOWLEDGE) is reason


def test_knowledge_forms_accepted():
    for obj in (_know("linear", weight=_tensor("f16", (2, 4)), bias=_tensor("f32", (2,))),
                _know("predictions", predictions=_tensor("f32", (5, 2))),
                _know("predictions", predictions=_tensor("i32", (5,)))):
        assert decode_packet(_with_body(obj, Kind.KNOWLEDGE)).header.kind is Kind.KNOWLEDGE


def test_unknown_keys_are_ignored():
    p = decode_packet(_with_body({"seq": 3, "future_field": {"a": [1, 2]}, "x": b"y"}))
    assert p.body == Ping(seq=3)


def test_msgpack_level_refusals():
    ext = msgpack.packb({"seq": 1, "e": msgpack.ExtType(5, b"abc")})
    assert _body_reason(None, raw_body=ext) is Reason.BAD_BODY
    ts = msgpack.packb({"seq": 1, "t": msgpack.Timestamp(1, 0)})
    assert _body_reason(None, raw_body=ts) is Reason.BAD_BODY
    assert _body_reason(None, raw_body=b"\xc1") is Reason.BAD_BODY                 # never-used byte
    assert _body_reason(None, raw_body=msgpack.packb({"seq": 1}) + b"\x00") is Reason.BAD_BODY  # extra data
    assert _body_reason(None, raw_body=b"") is Reason.BAD_BODY
    assert _body_reason(None, raw_body=b"\x81\xa3seq\xa3\xff\xfe\xfd") is Reason.BAD_BODY  # invalid UTF-8
    deep: object = 1
    for _ in range(8):
        deep = [deep]
    assert _body_reason({"seq": 1, "d": deep}) is Reason.BAD_BODY                  # depth 9
    ok: object = 1
    for _ in range(7):
        ok = [ok]
    assert decode_packet(_with_body({"seq": 1, "d": ok})).body == Ping(seq=1)      # depth 8
    very_deep = b"\x81\xa3seq\x01" + b"\x91" * 5000 + b"\x01"
    assert _body_reason(None, raw_body=very_deep) is Reason.BAD_BODY
    lim = Limits(max_str=8, max_collection=4)
    assert _body_reason({"seq": 1, "s": "x" * 9}, limits=lim) is Reason.BAD_BODY
    assert _body_reason({"seq": 1, "a": [0] * 5}, limits=lim) is Reason.BAD_BODY


def test_entry_budget_bounds_memory():
    lim = Limits(max_collection=16)                    # budget: 16 * 16 entries in one body
    fine = {"seq": 1, "a": [[0] * 14 for _ in range(14)]}
    assert decode_packet(_with_body(fine), limits=lim).body == Ping(seq=1)
    too_many = {"seq": 1, "a": [[0] * 16 for _ in range(16)], "b": [[0] * 16 for _ in range(2)]}
    assert _body_reason(too_many, limits=lim) is Reason.BAD_BODY


def test_body_error_names_the_path():
    obj = {"topic": "t", "group": b"", "round": 0, "chunk": 0, "chunks": 1, "codec": "c",
           "tensors": [{"name": "x", "shape": [1]}, {"name": "y", "shape": [1], "values": {"dtype": "zz"}}]}
    with pytest.raises(PacketError) as e:
        decode_packet(_with_body(obj, Kind.DELTA))
    assert "tensors[1].values" in str(e.value)


def test_packet_is_frozen():
    p = decode_packet(_ping())
    assert isinstance(p, Packet)
    with pytest.raises(AttributeError):
        p.raw = b""  # type: ignore[misc]


@FEW
@given(st.data())
def test_vectors_block_contents_survive(data):
    block = data.draw(blocks(max_dim=2000, max_count=3))
    p = decode_packet(encode_packet(Vectors(topic="t", vectors=block), A))
    assert np.array_equal(p.body.vectors.to_trits(), block.to_trits())
