"""Rules of SPEC draft 2 that decide whether two implementations accept the same bytes (issue 16):
repeated map keys, UTF-8, non-finite floats, the normative limits, and the byte offset of every error.
Each test here failed against draft 1's implementation (or pins a boundary it left unstated)."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from meshnode.wire import capture
from meshnode.wire.errors import FrameError, PacketError, Reason
from meshnode.wire.limits import Limits
from meshnode.wire.packet import (
    HEADER_LEN,
    Delta,
    DeltaTensor,
    Kind,
    Knowledge,
    Ping,
    Tensor,
    VectorBlock,
    Vectors,
    decode_packet,
    encode_packet,
    signature_input,
    verify_packet,
)

from ._support import SPACE, A

T0 = 1_700_000_000_000_000


def _signed(kind: Kind, body: bytes) -> bytes:
    """A packet with `body` as raw msgpack bytes, signed by A (the encoder never makes such bodies)."""
    raw = encode_packet(Ping(seq=0), A, packet_id=bytes(16), timestamp_us=T0)
    header = bytearray(raw[:HEADER_LEN])
    header[6] = int(kind)
    struct.pack_into("<I", header, 12, len(body))
    return bytes(header) + body + A.sign(signature_input(bytes(header), body))


def _refused(raw: bytes, **kw: object) -> PacketError:
    with pytest.raises(PacketError) as e:
        decode_packet(raw, **kw)  # type: ignore[arg-type]
    return e.value


def _map(*pairs: tuple[bytes, bytes]) -> bytes:
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def mp(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# ---------------------------------------------------------------------------------- repeated keys


def test_a_repeated_top_level_key_is_refused_not_last_wins():
    raw = _signed(Kind.PING, _map((mp("seq"), mp(7)), (mp("seq"), mp(8))))
    e = _refused(raw)
    assert (e.reason, e.offset) == (Reason.BAD_BODY, 72) and "seq" in str(e)


@pytest.mark.parametrize("inner", [
    _map((mp("a"), mp(1)), (mp("a"), mp(1))),                # equal values too
    _map((mp("a"), mp(1)), (mp("b"), _map((mp("x"), mp(1)), (mp("x"), mp(2))))),
])
def test_a_repeated_key_at_any_depth_is_refused(inner: bytes):
    raw = _signed(Kind.PING, _map((mp("seq"), mp(7)), (mp("meta"), inner)))
    assert _refused(raw).reason is Reason.BAD_BODY


def test_distinct_keys_still_decode():
    raw = _signed(Kind.PING, _map((mp("seq"), mp(7)), (mp("x"), _map((mp("a"), mp(1)), (mp("b"), mp(1))))))
    assert decode_packet(raw).body == Ping(seq=7)


# ------------------------------------------------------------------------------------------ UTF-8


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"])
def test_str_values_and_keys_must_be_utf8(bad: bytes):
    s = bytes([0xa0 | len(bad)]) + bad
    assert _refused(_signed(Kind.PING, _map((mp("seq"), mp(7)), (mp("note"), s)))).reason is Reason.BAD_BODY
    assert _refused(_signed(Kind.PING, _map((mp("seq"), mp(7)), (s, mp(1))))).reason is Reason.BAD_BODY


def test_the_str_limit_holds_for_keys():
    lim = Limits(max_str=8)
    assert decode_packet(_signed(Kind.PING, mp({"seq": 1, "k" * 8: 1})), limits=lim).body == Ping(seq=1)
    assert _refused(_signed(Kind.PING, mp({"seq": 1, "k" * 9: 1})), limits=lim).reason is Reason.BAD_BODY


def test_encoding_a_lone_surrogate_is_a_packet_error():
    with pytest.raises(PacketError) as e:
        encode_packet(Vectors(topic="t", vectors=VectorBlock.from_trits(np.zeros((1, 4), np.int8), SPACE),
                              meta={"k": "\ud800"}), A)
    assert e.value.reason is Reason.BAD_BODY


# ------------------------------------------------------------------------------------- NaN, inf


@pytest.mark.parametrize("value", [b"\xcb" + struct.pack(">d", float("nan")), b"\xca" + struct.pack(">f", float("inf")),
                                   b"\xcb" + struct.pack(">d", float("-inf")), b"\xca" + struct.pack(">f", float("nan"))])
def test_non_finite_floats_are_refused_anywhere(value: bytes):
    top = _signed(Kind.PING, _map((mp("seq"), mp(7)), (mp("x"), value)))
    nested = _signed(Kind.PING, _map((mp("seq"), mp(7)), (mp("x"), b"\x91" + _map((mp("y"), value)))))
    for raw in (top, nested):
        e = _refused(raw)
        assert (e.reason, e.offset) == (Reason.BAD_BODY, 72)


def test_the_sender_refuses_non_finite_floats_with_the_receivers_reason():
    block = VectorBlock.from_trits(np.zeros((1, 4), np.int8), SPACE)
    for value in (float("nan"), float("inf"), [1.0, float("-inf")]):
        with pytest.raises(PacketError) as e:
            encode_packet(Vectors(topic="t", vectors=block, meta={"x": value}), A)
        assert e.value.reason is Reason.BAD_BODY


def test_finite_floats_and_nan_inside_tensor_data_are_fine():
    body = Knowledge(topic="t", task="x", form="linear", classes=("a",),
                     weight=Tensor.from_array(np.array([[np.nan, np.inf]], np.float32)),
                     meta={"loss": 0.25, "big": 1e308, "tiny": -5e-324})
    assert decode_packet(encode_packet(body, A)).body == body


# ---------------------------------------------------------------------------------- int widths


def test_any_int_width_is_valid_but_nil_bool_and_float_are_not():
    for seq in (b"\x07", b"\xcc\x07", b"\xcd\x00\x07", b"\xce\x00\x00\x00\x07", b"\xcf" + (7).to_bytes(8, "big"),
                b"\xd0\x07", b"\xd3" + (7).to_bytes(8, "big")):
        assert decode_packet(_signed(Kind.PING, _map((mp("seq"), seq)))).body == Ping(seq=7)
    for seq in (b"\xc0", b"\xc3", mp(7.0), b"\xca" + struct.pack(">f", 7.0), mp(-1)):
        assert _refused(_signed(Kind.PING, _map((mp("seq"), seq)))).reason is Reason.BAD_BODY


def test_labels_and_ids_span_the_whole_msgpack_int_range():
    block = VectorBlock.from_trits(np.zeros((2, 4), np.int8), SPACE)
    body = Vectors(topic="t", vectors=block, labels=(-(2**63), 2**64 - 1), ids=(2**64 - 1, -(2**63)))
    assert decode_packet(encode_packet(body, A)).body == body


# ----------------------------------------------------------------------------------- the limits


def test_the_total_entry_bound_is_16_times_max_collection_inclusive():
    lim = Limits(max_collection=16)                                # 256 entries in all
    # body map {"seq", "a"}: 3; "a" holds 15 arrays: 16; 14 of 15 entries (16 each) + one of n
    def body(n: int) -> dict[str, object]:
        return {"seq": 1, "a": [[0] * 15 for _ in range(14)] + [[0] * n]}
    assert 3 + 16 + 14 * 16 + 13 == 256
    assert decode_packet(_signed(Kind.PING, mp(body(12))), limits=lim).body == Ping(seq=1)
    assert _refused(_signed(Kind.PING, mp(body(13))), limits=lim).reason is Reason.BAD_BODY


def test_tensor_element_count_is_the_exact_product():
    empty = Tensor(dtype="f32", shape=(2**64 - 1, 0, 2**64 - 1), data=b"")
    body = Delta(topic="t", group=b"g", round=0, chunk=0, chunks=1, codec="raw",
                 tensors=(DeltaTensor(name="x", shape=(0,), values=empty),))
    assert decode_packet(encode_packet(body, A)).body == body
    for shape in ((2**32, 2**32), (2**63, 2, 1), (16384, 16385)):     # 2**64, 2**64, > max_trits
        wire = {"topic": "t", "task": "x", "form": "linear", "classes": ["a"],
                "weight": {"dtype": "u8", "shape": list(shape), "data": b""}}
        assert _refused(_signed(Kind.KNOWLEDGE, mp(wire))).reason is Reason.BAD_DIMENSION


def test_n_times_d_is_not_computed_in_32_bits():
    wire = {"topic": "t", "vectors": {"space": SPACE, "dim": 65537, "count": 65536, "encoding": 0, "data": b""}}
    assert _refused(_signed(Kind.VECTORS, mp(wire))).reason is Reason.TOO_LARGE


# -------------------------------------------------------------------------------------- offsets


def _block(data: bytes, dim: int = 4, encoding: int = 0, count: int = 1) -> bytes:
    return _map((mp("space"), mp(SPACE)), (mp("dim"), mp(dim)), (mp("count"), mp(count)),
                (mp("encoding"), mp(encoding)), (mp("data"), data))


@pytest.mark.parametrize("header", [b"\xc4\x01", b"\xc5\x00\x01", b"\xc6\x00\x00\x00\x01"])
def test_a_data_error_is_where_the_parser_found_the_byte_whatever_the_bin_header(header: bytes):
    """Draft 1 searched the body for data's shortest encoding (c4 01 02): with a longer bin header it
    found the copy in meta instead and reported a byte of another field."""
    body = _map((mp("topic"), mp("t")), (mp("meta"), _map((mp("copy"), mp(b"\x02")))),
                (mp("vectors"), _block(header + b"\x02")))
    raw = _signed(Kind.VECTORS, body)
    e = _refused(raw)
    assert e.reason is Reason.BAD_TRIT
    assert raw[e.offset - len(header):e.offset + 1] == header + b"\x02"


def test_a_data_error_inside_a_delta_tensor_is_located_through_the_array():
    good = VectorBlock.from_trits(np.zeros((1, 5), np.int8), b"s", "base3")
    wire = {"topic": "t", "group": b"g", "round": 0, "chunk": 0, "chunks": 1, "codec": "raw",
            "tensors": [{"name": "a", "shape": [5], "trits": {"space": b"s", "dim": 5, "count": 1, "encoding": 1,
                                                                "data": good.data}},
                        {"name": "b", "shape": [5], "trits": {"space": b"s", "dim": 5, "count": 1, "encoding": 1,
                                                                "data": good.data}}]}
    wire["tensors"][1]["trits"]["data"] = b"\xf4"
    raw = _signed(Kind.DELTA, mp(wire))
    e = _refused(raw)
    assert e.reason is Reason.BAD_TRIT and raw[e.offset] == 0xF4
    assert raw.index(b"\xc4\x01\xf4") + 2 == e.offset


def test_sparse_checks_are_two_passes_positions_below_d_first():
    data = bytes.fromhex("02000000 01000000 0500 0300 0c00 00")    # vector 0: 5, 3; vector 1: 12 >= D
    raw = _signed(Kind.VECTORS, _map((mp("topic"), mp("t")), (mp("vectors"), _block(mp(data), dim=10, encoding=2,
                                                                                     count=2))))
    e = _refused(raw)
    assert e.reason is Reason.BAD_TRIT and "below dim" in str(e)
    assert raw[e.offset:e.offset + 2] == b"\x0c\x00"


def test_unsigned_is_reported_at_the_flags_byte():
    raw = encode_packet(Ping(seq=1), None, origin=A.node_id)
    with pytest.raises(PacketError) as e:
        verify_packet(decode_packet(raw), A.public_key_bytes)
    assert (e.value.reason, e.value.offset) == (Reason.UNSIGNED, 7)


@pytest.mark.parametrize("cut", [1, 20, 41, 43, 45, 50, 100])
def test_a_capture_record_cut_anywhere_is_truncated_at_the_records_first_byte(cut: int):
    ping = encode_packet(Ping(seq=1), A)
    record = capture.encode_record(capture.CaptureRecord(T0, capture.Direction.IN, A.node_id, "x:1", ping))
    data = capture.CAPTURE_MAGIC + record + record[:cut]
    records = capture.iter_records(data)
    assert next(records).packet == ping
    with pytest.raises(FrameError) as e:
        next(records)
    assert (e.value.reason, e.value.offset) == (Reason.TRUNCATED, len(capture.CAPTURE_MAGIC) + len(record))
