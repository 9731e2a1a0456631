"""Delta codecs and error feedback (meshnode.hdc.delta): round trips through real packets, error
bounds, error feedback, determinism, and hostile records."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from meshnode.hdc import rotation
from meshnode.hdc.delta import (
    FUSED_NAME, MAX_BLOCK, DeltaCompressor, Float16Codec, Float32Codec, Int8Codec, Layout, TernaryCodec,
    decode_delta, delta_body,
)
from meshnode.wire.errors import PacketError, Reason, WireError
from meshnode.wire.packet import Delta, DeltaTensor, Encoding, Signer, Tensor, VectorBlock, decode_packet, encode_packet

SIGNER = Signer.from_seed(bytes(range(32)))


def lora_delta(seed: int = 0, scale: float = 1e-3) -> dict[str, np.ndarray]:
    """Shapes of a small LoRA adapter plus a classifier head (odd sizes on purpose)."""
    rng = np.random.default_rng(seed)
    d = {}
    for layer in range(2):
        d[f"layer.{layer}.q.lora_A"] = (rng.standard_normal((4, 100)) * scale).astype(np.float32)
        d[f"layer.{layer}.q.lora_B"] = (rng.standard_normal((100, 4)) * scale).astype(np.float32)
    d["classifier.weight"] = (rng.standard_normal((2, 100)) * 10 * scale).astype(np.float32)
    d["classifier.bias"] = (rng.standard_normal(2) * 10 * scale).astype(np.float32)
    return d


def through_wire(comp: DeltaCompressor, delta: dict[str, np.ndarray], **kw) -> tuple[bytes, dict[str, np.ndarray],
                                                                                       dict[str, np.ndarray]]:
    """compress -> encode_packet -> decode_packet -> decode_delta. Returns (packet, sent, received)."""
    records, sent = comp.compress(delta)
    raw = encode_packet(delta_body(records, comp.codec, topic="t", group=b"g", round=0, layout=comp.layout), SIGNER,
                        packet_id=bytes(16), timestamp_us=1)
    expected = None if comp.layout else {k: v.shape for k, v in delta.items()}
    got = decode_delta(decode_packet(raw).body, expected=expected, layout=comp.layout, **kw)
    return raw, sent, got


def blocks_of(x: np.ndarray, b: int) -> np.ndarray:
    flat = x.reshape(-1)
    nb = -(-flat.size // b)
    out = np.zeros(nb * b, np.float32)
    out[: flat.size] = flat
    return out.reshape(nb, b)


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fused", [False, True])
def test_fp32_round_trip_is_exact(fused: bool) -> None:
    d = lora_delta()
    comp = DeltaCompressor(Float32Codec(), layout=Layout.of(d) if fused else None)
    _, sent, got = through_wire(comp, d)
    assert set(got) == set(d)
    for k in d:
        assert got[k].dtype == np.float32 and got[k].shape == d[k].shape
        assert np.array_equal(got[k], d[k]) and np.array_equal(sent[k], d[k])


def test_fp16_error_is_within_half_precision() -> None:
    d = lora_delta()
    _, _, got = through_wire(DeltaCompressor(Float16Codec()), d)
    for k in d:
        # f16: 11 significant bits (relative 2**-11); below 2**-14 subnormals have absolute step 2**-24
        assert np.all(np.abs(got[k] - d[k]) <= np.abs(d[k]) * 2.0**-11 + 2.0**-25)


def test_int8_error_is_at_most_half_a_step_per_block() -> None:
    d = lora_delta()
    _, _, got = through_wire(DeltaCompressor(Int8Codec(block=64)), d)
    for k in d:
        b = min(64, d[k].size)
        step = np.abs(blocks_of(d[k], b)).max(axis=1) / 127
        err = blocks_of(got[k] - d[k], b)
        assert np.all(np.abs(err) <= step[:, None] * 0.5 * (1 + 1e-5) + 1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_ternary_values_and_error_bound_relative_to_block_scale(fused: bool) -> None:
    d = lora_delta(1)
    codec = TernaryCodec(block=64, threshold=0.7, scale_dtype="f32")
    layout = Layout.of(d, align=64) if fused else None
    _, _, got = through_wire(DeltaCompressor(codec, layout=layout), d)
    tensors = {FUSED_NAME: layout.fuse(d)} if fused else d
    decoded = {FUSED_NAME: layout.fuse(got)} if fused else got
    for k, x in tensors.items():
        b = min(64, x.size)
        xb, yb = blocks_of(x, b), blocks_of(decoded[k], b)
        for xr, yr in zip(xb, yb):
            s = np.abs(yr).max()
            assert set(np.unique(np.abs(yr))) <= {0.0, s}  # each block decodes to {-s, 0, +s}
            kept = yr != 0
            assert np.all(np.sign(yr[kept]) == np.sign(xr[kept]))
            nz = xr != 0
            thr = 0.7 * np.abs(xr[nz]).mean() if nz.any() else 0.0
            assert np.all(np.abs(xr[~kept]) <= thr * (1 + 1e-6))  # what was dropped was small
            # every element is off by at most max(threshold, distance of a kept entry to the scale)
            bound = max(thr, float(np.abs(np.abs(xr[kept]) - s).max()) if kept.any() else 0.0)
            assert np.all(np.abs(yr - xr) <= bound * (1 + 1e-5) + 1e-12)
    # and it is a useful approximation: for Gaussian data the relative L2 error is far below 1
    err = sum(float(((got[k] - d[k]) ** 2).sum()) for k in d) / sum(float((d[k] ** 2).sum()) for k in d)
    assert np.sqrt(err) < 0.6


def test_ternary_picks_the_smallest_trit_encoding() -> None:
    x = {"w": np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)}
    dense, _ = DeltaCompressor(TernaryCodec(block=256)).compress(x)
    sparse, _ = DeltaCompressor(TernaryCodec(block=1024, density=0.02)).compress(x)
    assert dense[0].trits.encoding == Encoding.BASE3
    assert sparse[0].trits.encoding == Encoding.SPARSE
    t = sparse[0].trits.to_trits()
    assert np.all(np.count_nonzero(t, axis=1) == round(0.02 * 1024))  # top-k keeps k per block


def test_rotation_is_orthonormal_and_invertible() -> None:
    h = rotation.hadamard(64)
    assert np.allclose(h @ h, np.eye(64), atol=1e-5)
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    s = rotation.random_signs(7, "w", 5, 64)
    y = rotation.rotate(x, s)
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    assert np.allclose(rotation.unrotate(y, s), x, atol=1e-5)
    assert np.array_equal(s, rotation.random_signs(7, "w", 5, 64))
    assert not np.array_equal(s, rotation.random_signs(8, "w", 5, 64))


def test_rotated_ternary_round_trip() -> None:
    d = lora_delta(4)
    _, sent, got = through_wire(DeltaCompressor(TernaryCodec(block=64, rotate=True, seed=9)), d)
    for k in d:
        assert np.array_equal(sent[k], got[k])  # the sender predicts exactly what receivers decode
        # an orthogonal rotation keeps the error below the signal
        assert np.linalg.norm(got[k] - d[k]) < np.linalg.norm(d[k])


def test_torch_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    d = {k: torch.from_numpy(v) for k, v in lora_delta().items()}
    _, _, got = through_wire(DeltaCompressor(Float32Codec()), d)
    assert all(np.array_equal(got[k], d[k].numpy()) for k in d)


# ------------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("codec", [TernaryCodec(block=64), TernaryCodec(block=256, density=0.05),
                                   TernaryCodec(block=64, rotate=True, seed=1)], ids=["ternary", "topk", "rht"])
def test_error_feedback_running_sum_tracks_the_true_sum(codec: TernaryCodec) -> None:
    rng = np.random.default_rng(5)
    ef, plain = DeltaCompressor(codec, error_feedback=True), DeltaCompressor(codec)
    drift = rng.standard_normal((32, 48)).astype(np.float32) * 1e-3  # a consistent direction, as in training
    true_sum = np.zeros((32, 48), np.float32)
    sums = {"ef": np.zeros_like(true_sum), "plain": np.zeros_like(true_sum)}
    residuals = []
    for _ in range(200):
        delta = drift + rng.standard_normal((32, 48)).astype(np.float32) * 5e-4
        true_sum += delta
        sums["ef"] += ef.compress({"w": delta})[1]["w"]
        sums["plain"] += plain.compress({"w": delta})[1]["w"]
        residuals.append(ef.residual_norm())
        # what is not transmitted is exactly what is carried: true sum - sent sum = residual
        assert np.allclose(true_sum - sums["ef"], ef.residual["w"], atol=1e-5)
    # bounded: it plateaus (measured: ~3x one round's drift for ternary, ~8x for 5% top-k) instead of
    # growing with the rounds as the error of the plain sum does (~200x here)
    delta_norm = float(np.linalg.norm(drift))
    assert max(residuals) < 12 * delta_norm
    assert max(residuals[150:]) < 1.2 * max(residuals[50:100])
    err_ef = np.linalg.norm(true_sum - sums["ef"])
    err_plain = np.linalg.norm(true_sum - sums["plain"])
    assert err_ef < 0.1 * err_plain
    assert plain.residual == {}


def test_compression_is_deterministic() -> None:
    d = lora_delta(6)
    for codec in (Int8Codec(), TernaryCodec(), TernaryCodec(rotate=True, seed=3), TernaryCodec(density=0.1)):
        a, _, _ = through_wire(DeltaCompressor(codec, error_feedback=True), d)
        b, _, _ = through_wire(DeltaCompressor(codec, error_feedback=True), d)
        assert a == b
    r1, _ = DeltaCompressor(TernaryCodec(rotate=True, seed=3)).compress(d)
    r2, _ = DeltaCompressor(TernaryCodec(rotate=True, seed=4)).compress(d)
    assert [r.trits for r in r1] != [r.trits for r in r2]


def test_ternary_is_at_least_16x_smaller_than_fp32_on_the_wire() -> None:
    rng = np.random.default_rng(7)
    d = {f"l{i}.{m}": rng.standard_normal((8, 384)).astype(np.float32) for i in range(6) for m in "AB"}
    layout = Layout.of(d, align=256)
    fp32, _, _ = through_wire(DeltaCompressor(Float32Codec(), layout=layout), d)
    tern, _, _ = through_wire(DeltaCompressor(TernaryCodec(block=256), layout=layout), d)
    assert len(fp32) / len(tern) >= 16


# ------------------------------------------------------------------------------------- hostile


def body(records: list[DeltaTensor], codec: str = "ternary", meta: dict | None = None) -> Delta:
    return Delta(topic="t", group=b"g", round=0, chunk=0, chunks=1, codec=codec, tensors=tuple(records), meta=meta)


def good_record(codec=None, name: str = "w", shape=(10, 30)) -> DeltaTensor:
    codec = codec or TernaryCodec(block=64)
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    return codec.encode_tensor(name, x)


def refused(b: Delta, reason: Reason | None = None, **kw) -> PacketError:
    with pytest.raises(PacketError) as e:
        decode_delta(b, **kw)
    assert isinstance(e.value, WireError)
    if reason is not None:
        assert e.value.reason == reason, str(e.value)
    return e.value


def test_wrong_shape_or_unknown_name_against_the_group() -> None:
    rec = good_record()
    assert decode_delta(body([rec]), expected={"w": (10, 30)})["w"].shape == (10, 30)
    refused(body([rec]), Reason.BAD_DIMENSION, expected={"w": (30, 10)})
    refused(body([rec]), Reason.BAD_BODY, expected={"v": (10, 30)})
    refused(body([rec, rec]), Reason.BAD_BODY)  # a name twice


def test_logical_shape_that_disagrees_with_the_payload() -> None:
    rec = good_record()
    for shape in [(10, 40), (4, 50), (3,), (640,), (11, 30)]:  # not 5 blocks of 64
        refused(body([dataclasses.replace(rec, shape=shape)]))
    fp = good_record(Float32Codec())
    refused(body([dataclasses.replace(fp, shape=(30, 10))], "fp32"), Reason.BAD_LENGTH)


def test_oversized_shape_is_refused_before_allocation() -> None:
    rec = good_record()
    e = refused(body([dataclasses.replace(rec, shape=(1 << 20, 1 << 20))]), Reason.TOO_LARGE)
    assert "max_trits" in str(e)
    refused(body([dataclasses.replace(rec, shape=(1,) * 9)]), Reason.BAD_DIMENSION)
    refused(body([dataclasses.replace(rec, shape=(-1, 300))]), Reason.BAD_DIMENSION)


def test_block_count_and_scales_must_be_consistent() -> None:
    rec = good_record()  # 300 values, blocks of 64 -> 5 blocks
    t = rec.trits.to_trits()
    four = VectorBlock.from_trits(t[:4], b"delta")
    refused(body([dataclasses.replace(rec, trits=four)]), Reason.BAD_LENGTH)  # 4 x 64 < 300
    six = VectorBlock.from_trits(np.vstack([t, np.zeros((1, 64), np.int8)]), b"delta")
    refused(body([dataclasses.replace(rec, trits=six)]), Reason.BAD_LENGTH)   # one block too many
    huge = VectorBlock.from_trits(np.zeros((1, MAX_BLOCK + 1), np.int8), b"delta")
    refused(body([dataclasses.replace(rec, shape=(300,), trits=huge)]), Reason.BAD_DIMENSION)
    refused(body([dataclasses.replace(rec, scales=Tensor.from_array(np.ones(4, np.float32)))]), Reason.BAD_LENGTH)
    refused(body([dataclasses.replace(rec, scales=None)]), Reason.BAD_BODY)
    refused(body([dataclasses.replace(rec, scales=Tensor.from_array(np.ones(5, np.int32)))]), Reason.BAD_BODY)
    padded = t.copy()
    padded[-1, -1] = 1  # 300 = 4 * 64 + 44: trits past the end must be 0
    refused(body([dataclasses.replace(rec, trits=VectorBlock.from_trits(padded, b"delta"))]), Reason.BAD_PADDING)


def test_non_finite_or_negative_numbers_are_refused() -> None:
    rec = good_record()
    for bad in (np.nan, np.inf, -1.0):
        s = rec.scales.to_array().copy()
        s[2] = bad
        refused(body([dataclasses.replace(rec, scales=Tensor.from_array(s))]), Reason.BAD_BODY)
    fp = good_record(Float32Codec())
    v = fp.values.to_array().copy()
    v[0, 0] = np.nan
    refused(body([dataclasses.replace(fp, values=Tensor.from_array(v))], "fp32"), Reason.BAD_BODY)


def test_fields_that_do_not_belong_to_the_codec() -> None:
    rec = good_record()
    extra = Tensor.from_array(np.zeros((10, 30), np.float32))
    refused(body([dataclasses.replace(rec, values=extra)]), Reason.BAD_BODY)
    refused(body([rec], "fp32"), Reason.BAD_BODY)        # a ternary record announced as fp32
    refused(body([good_record(Float16Codec())], "fp32"))  # f16 values announced as fp32
    i8 = good_record(Int8Codec(block=64))
    q = i8.values.to_array().copy()
    q[-1, -1] = 5  # past the tensor's end
    refused(body([dataclasses.replace(i8, values=Tensor.from_array(q))], "int8"), Reason.BAD_PADDING)


def test_unknown_codec_and_missing_rotation_seed() -> None:
    refused(body([good_record()], "zstd"), Reason.BAD_BODY)
    rot = good_record(TernaryCodec(block=64, rotate=True, seed=5))
    refused(body([rot], "ternary-rht"), Reason.BAD_BODY)
    refused(body([rot], "ternary-rht", {"rht_seed": "5"}), Reason.BAD_BODY)
    got = decode_delta(body([rot], "ternary-rht", {"rht_seed": 5}))
    assert got["w"].shape == (10, 30)
    not_pow2 = VectorBlock.from_trits(np.zeros((5, 60), np.int8), b"delta")
    refused(body([dataclasses.replace(rot, trits=not_pow2)], "ternary-rht", {"rht_seed": 5}), Reason.BAD_DIMENSION)


def test_fused_delta_needs_the_same_layout() -> None:
    d = lora_delta()
    layout = Layout.of(d, align=64)
    records, _ = DeltaCompressor(TernaryCodec(block=64), layout=layout).compress(d)
    b = delta_body(records, TernaryCodec(block=64), topic="t", group=b"g", round=0, layout=layout)
    assert set(decode_delta(b, layout=layout)) == set(d)
    other = Layout.of({**d, "extra": np.zeros(3, np.float32)}, align=64)
    refused(b, Reason.BAD_BODY, layout=other)
    refused(b, Reason.BAD_BODY)  # a fused body without a layout to split it
    refused(dataclasses.replace(b, tensors=b.tensors * 2), Reason.BAD_BODY, layout=layout)


def test_semantically_bad_records_that_pass_the_packet_layer_are_refused_after_it() -> None:
    rec = dataclasses.replace(good_record(), shape=(20, 30))
    raw = encode_packet(body([rec]), SIGNER)  # the wire checks types and trit data, not the codec's layout
    refused(decode_packet(raw).body, Reason.BAD_LENGTH)
