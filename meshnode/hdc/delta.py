"""Delta compression for LoRA sync: codecs between a named dict of float tensors and wire records.

A *codec* turns one float tensor into a `DeltaTensor` record (the entries of a `delta` packet,
protocol/SPEC.md §4) and back. A *compressor* wraps a codec for one sender and, with error
feedback, keeps per tensor name what the codec did not transmit and adds it to the next round
(so the running sum of what receivers decode tracks the running sum of true deltas).

Record layouts (`shape` is always the tensor's logical shape; "blocks" means the tensor flattened
in C order and cut into nblocks rows of B values, the last row zero-padded):

| wire codec    | values                | trits                             | scales              |
|---------------|-----------------------|-----------------------------------|---------------------|
| `fp32`/`fp16` | f32/f16 of `shape`    | -                                 | -                   |
| `int8`        | i8 (nblocks, B)       | -                                 | f32 (nblocks,)      |
| `ternary`     | -                     | VectorBlock count=nblocks, dim=B  | f32/f16 (nblocks,)  |
| `ternary-rht` | -                     | as `ternary`, of rotated blocks   | f32/f16 (nblocks,)  |

Decoding gives x = q * scale per block (int8), x = t * scale (ternary), or for `ternary-rht` the
inverse rotation (meshnode.hdc.rotation) of t * scale with the signs drawn from the Delta's
`meta["rht_seed"]` and the tensor name. The block size travels implicitly as the second dimension,
so a receiver needs no codec parameters except the rotation seed. The sender-side parameters
(threshold, density, error feedback) do not change the layout.

Received records are hostile input: every shape and count is checked against the logical shape and
the limits before anything is allocated, and any mismatch raises `PacketError` (a `WireError`) with
a stable reason code. Non-finite values and scales are refused, because one NaN would poison the
mean that every node applies.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from meshnode.wire.errors import PacketError, Reason
from meshnode.wire.limits import DEFAULT_LIMITS, Limits
from meshnode.wire.packet import Delta, DeltaTensor, Tensor, VectorBlock

from . import rotation

__all__ = [
    "Codec", "Float32Codec", "Float16Codec", "Int8Codec", "TernaryCodec", "DeltaCompressor",
    "Layout", "FUSED_NAME", "DELTA_SPACE", "MAX_BLOCK", "codec_by_name", "decoder_for", "delta_body", "decode_delta", "as_float32",
]

DELTA_SPACE = b"delta"  # the `space` of trit blocks that carry deltas (not an HDC space; short: sent per record)
_F16_MAX = float(np.finfo(np.float16).max)
MAX_BLOCK = 1 << 16              # largest block a receiver accepts: bounds the padding it allocates


# ------------------------------------------------------------------------------------------ helpers


def as_float32(x: Any) -> np.ndarray:
    """A numpy float32 copy of a numpy array or a torch tensor (torch is not imported here)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    return np.array(x, dtype=np.float32, copy=True)


def _bad(name: str, message: str, reason: Reason = Reason.BAD_BODY) -> PacketError:
    return PacketError(reason, f"delta tensor {name[:80]!r}: {message}")


def _numel(name: str, shape: tuple[int, ...], limits: Limits) -> int:
    if len(shape) > 8:
        raise _bad(name, f"{len(shape)} dimensions, at most 8", Reason.BAD_DIMENSION)
    n = 1
    for s in shape:
        if type(s) is not int or s < 0:
            raise _bad(name, f"shape entry {s!r} is not an int >= 0", Reason.BAD_DIMENSION)
        n *= s
    if n > limits.max_trits:
        raise _bad(name, f"{n} elements exceed max_trits {limits.max_trits}", Reason.TOO_LARGE)
    return n


def _blocks_for(numel: int, block: int) -> tuple[int, int]:
    """(nblocks, B) for a tensor of `numel` values cut into blocks of at most `block`."""
    b = max(1, min(block, numel))
    return -(-numel // b), b


def _to_blocks(flat: np.ndarray, nblocks: int, b: int) -> np.ndarray:
    out = np.zeros(nblocks * b, np.float32)
    out[: flat.size] = flat
    return out.reshape(nblocks, b)


def _check_blocks(name: str, numel: int, nblocks: int, b: int) -> None:
    """The block grid of a received record must be the one its logical shape implies."""
    if not 1 <= b <= MAX_BLOCK:
        raise _bad(name, f"block size {b} is not in 1..{MAX_BLOCK}", Reason.BAD_DIMENSION)
    if nblocks != -(-numel // b):
        raise _bad(name, f"{nblocks} blocks of {b} do not hold {numel} values", Reason.BAD_LENGTH)


def _scales(name: str, rec: DeltaTensor, nblocks: int, dtypes: tuple[str, ...]) -> np.ndarray:
    s = rec.scales
    if s is None:
        raise _bad(name, "scales are missing")
    if s.dtype not in dtypes or s.shape != (nblocks,):
        raise _bad(name, f"scales must be {'/'.join(dtypes)} of shape ({nblocks},), got {s.dtype} {list(s.shape)}",
                   Reason.BAD_LENGTH if s.dtype in dtypes else Reason.BAD_BODY)
    out = s.to_array().astype(np.float32)
    if not np.all(np.isfinite(out)) or (out.size and float(out.min()) < 0):
        raise _bad(name, "scales must be finite and >= 0")
    return out


def _only(name: str, rec: DeltaTensor, *present: str) -> None:
    for key in ("values", "trits", "scales"):
        has = getattr(rec, key) is not None
        if has != (key in present):
            raise _bad(name, f"'{key}' is {'unexpected' if has else 'missing'} for this codec")


# ------------------------------------------------------------------------------------------- codecs


class Codec(Protocol):
    """Turns one float32 tensor into a record and back. `name` is the arm name used in benches;
    `wire_name` goes into the Delta's `codec` field; `meta()` into its `meta` map."""

    name: str
    wire_name: str

    def encode_tensor(self, name: str, x: np.ndarray) -> DeltaTensor: ...

    def decode_tensor(self, rec: DeltaTensor, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray: ...

    def meta(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _FloatCodec:
    dtype: str = "f32"

    @property
    def name(self) -> str:
        return "fp32" if self.dtype == "f32" else "fp16"

    @property
    def wire_name(self) -> str:
        return self.name

    def meta(self) -> dict[str, Any]:
        return {}

    def encode_tensor(self, name: str, x: np.ndarray) -> DeltaTensor:
        arr = np.ascontiguousarray(x, dtype=np.float32 if self.dtype == "f32" else np.float16)
        return DeltaTensor(name=name, shape=tuple(arr.shape), values=Tensor.from_array(arr))

    def decode_tensor(self, rec: DeltaTensor, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        _numel(rec.name, tuple(rec.shape), limits)
        _only(rec.name, rec, "values")
        v = rec.values
        assert v is not None
        if v.dtype != self.dtype or tuple(v.shape) != tuple(rec.shape):
            raise _bad(rec.name, f"values must be {self.dtype} of shape {list(rec.shape)}, got {v.dtype} "
                       f"{list(v.shape)}", Reason.BAD_LENGTH)
        out = v.to_array().astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise _bad(rec.name, "values must be finite")
        return out


def Float32Codec() -> _FloatCodec:  # noqa: N802 - reads like a class at call sites
    """Raw float32 values: the exact baseline every ratio is measured against."""
    return _FloatCodec("f32")


def Float16Codec() -> _FloatCodec:  # noqa: N802
    return _FloatCodec("f16")


@dataclass(frozen=True)
class Int8Codec:
    """Symmetric int8 per block: scale = max|x| / 127, q = round(x / scale)."""

    block: int = 256
    name: str = "int8"
    wire_name: str = "int8"

    def meta(self) -> dict[str, Any]:
        return {}

    def encode_tensor(self, name: str, x: np.ndarray) -> DeltaTensor:
        x = np.asarray(x, np.float32)
        nb, b = _blocks_for(x.size, self.block)
        blocks = _to_blocks(x.reshape(-1), nb, b)
        scale = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float32) if nb else np.zeros(0, np.float32)
        safe = np.where(scale > 0, scale, 1.0)[:, None]
        q = np.clip(np.rint(blocks / safe), -127, 127).astype(np.int8)
        return DeltaTensor(name=name, shape=tuple(x.shape), values=Tensor.from_array(q),
                           scales=Tensor.from_array(scale))

    def decode_tensor(self, rec: DeltaTensor, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        shape = tuple(rec.shape)
        n = _numel(rec.name, shape, limits)
        _only(rec.name, rec, "values", "scales")
        v = rec.values
        assert v is not None
        if v.dtype != "i8" or len(v.shape) != 2:
            raise _bad(rec.name, f"values must be i8 (nblocks, B), got {v.dtype} {list(v.shape)}")
        nb, b = v.shape
        _check_blocks(rec.name, n, nb, b)
        scale = _scales(rec.name, rec, nb, ("f32",))
        q = v.to_array()
        if nb and int(np.abs(q.reshape(-1)[n:].astype(np.int16)).sum()):
            raise _bad(rec.name, "padding values past the tensor's end are not 0", Reason.BAD_PADDING)
        return (q.astype(np.float32) * scale[:, None]).reshape(-1)[:n].reshape(shape)


@dataclass(frozen=True)
class TernaryCodec:
    """Ternary per block: t in {-1, 0, +1}, x ~ t * scale, no entropy coding beyond trits.pack "auto".

    The threshold is `threshold * mean|x|` over the block's non-zero entries (TWN's 0.7 by default) or, when `density`
    is set, the magnitude that keeps that fraction of each block non-zero (top-k). The scale is the
    mean |x| over the kept entries, the least-squares best for that mask. With `rotate`, blocks
    (B rounded up to a power of two) are first rotated by a seeded randomized Hadamard transform.
    """

    block: int = 256
    threshold: float = 0.7
    density: float | None = None
    rotate: bool = False
    seed: int = 0
    scale_dtype: str = "f16"  # a tensor whose scales overflow f16 is sent with f32 scales
    label: str | None = None  # the arm name in benches; derived from the settings when None

    def __post_init__(self) -> None:
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.scale_dtype not in ("f32", "f16"):
            raise ValueError("scale_dtype is f32 or f16")
        if self.rotate and not rotation.is_power_of_two(self.block):
            raise ValueError("a rotated codec needs a power-of-two block")

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base = "ternary-rht" if self.rotate else "ternary"
        return base if self.density is None else f"{base}-top{self.density:g}"

    @property
    def wire_name(self) -> str:
        return "ternary-rht" if self.rotate else "ternary"

    def meta(self) -> dict[str, Any]:
        return {"rht_seed": int(self.seed)} if self.rotate else {}

    def _grid(self, numel: int) -> tuple[int, int]:
        if self.rotate:
            b = min(self.block, rotation.next_power_of_two(max(numel, 1)))
            return -(-numel // b), b
        return _blocks_for(numel, self.block)

    def _mask(self, a: np.ndarray) -> np.ndarray:
        if self.density is None:
            # mean over non-zero entries, so that the zero padding of a short tensor does not drag it down
            nonzero = np.maximum((a > 0).sum(axis=1, keepdims=True), 1)
            return a > self.threshold * a.sum(axis=1, keepdims=True) / nonzero
        b = a.shape[1]
        k = max(1, min(b, round(self.density * b)))
        kth = np.partition(a, b - k, axis=1)[:, b - k : b - k + 1]
        return (a >= kth) & (a > 0)

    def encode_tensor(self, name: str, x: np.ndarray) -> DeltaTensor:
        x = np.asarray(x, np.float32)
        nb, b = self._grid(x.size)
        blocks = _to_blocks(x.reshape(-1), nb, b)
        if self.rotate and nb:
            blocks = rotation.rotate(blocks, rotation.random_signs(self.seed, name, nb, b))
        a = np.abs(blocks)
        mask = self._mask(a) if nb else np.zeros((0, b), bool)
        kept = mask.sum(axis=1)
        scale = np.where(kept > 0, (a * mask).sum(axis=1) / np.maximum(kept, 1), 0.0)
        trits = (np.sign(blocks) * mask).astype(np.int8)
        use_f16 = self.scale_dtype == "f16" and (not nb or float(scale.max()) <= _F16_MAX)
        sdt = np.float16 if use_f16 else np.float32
        return DeltaTensor(name=name, shape=tuple(x.shape),
                           trits=VectorBlock.from_trits(trits.reshape(nb, b), DELTA_SPACE),
                           scales=Tensor.from_array(scale.astype(sdt)))

    def decode_tensor(self, rec: DeltaTensor, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        return _decode_ternary(rec, rotate=self.rotate, seed=self.seed, limits=limits)


def _decode_ternary(rec: DeltaTensor, *, rotate: bool, seed: int, limits: Limits) -> np.ndarray:
    shape = tuple(rec.shape)
    n = _numel(rec.name, shape, limits)
    _only(rec.name, rec, "trits", "scales")
    blk = rec.trits
    assert blk is not None
    nb, b = blk.count, blk.dim
    _check_blocks(rec.name, n, nb, b)
    if rotate and (not rotation.is_power_of_two(b) or b > rotation.MAX_ORDER):
        raise _bad(rec.name, f"a rotated block must be a power of two <= {rotation.MAX_ORDER}, got {b}",
                   Reason.BAD_DIMENSION)
    scale = _scales(rec.name, rec, nb, ("f32", "f16"))
    t = blk.to_trits(limits=limits)  # validates the packed data
    if not rotate and nb and np.any(t.reshape(-1)[n:]):
        raise _bad(rec.name, "padding trits past the tensor's end are not 0", Reason.BAD_PADDING)
    blocks = t.astype(np.float32) * scale[:, None]
    if rotate and nb:
        blocks = rotation.unrotate(blocks, rotation.random_signs(seed, rec.name, nb, b))
    return blocks.reshape(-1)[:n].reshape(shape)


_CODECS_BY_NAME: dict[str, Any] = {
    "fp32": Float32Codec,
    "fp16": Float16Codec,
    "int8": Int8Codec,
    "ternary": TernaryCodec,
    "ternary-rht": lambda **kw: TernaryCodec(rotate=True, **kw),
}


def codec_by_name(name: str, **params: Any) -> Codec:
    """A codec from its wire name, with sender-side parameters (e.g. block=256, density=0.05)."""
    try:
        factory = _CODECS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown delta codec {name!r}; known: {', '.join(_CODECS_BY_NAME)}") from None
    return factory(**params)


def decoder_for(wire_name: str, meta: Mapping[str, Any] | None) -> Codec:
    """The codec a receiver uses for a Delta's `codec` and `meta` (only the rotation seed matters)."""
    if wire_name in ("fp32", "fp16", "int8", "ternary"):
        return codec_by_name(wire_name)
    if wire_name == "ternary-rht":
        seed = (meta or {}).get("rht_seed")
        if type(seed) is not int or not 0 <= seed < 1 << 64:
            raise PacketError(Reason.BAD_BODY, "codec 'ternary-rht' needs meta.rht_seed, an int in 0..2**64-1")
        return TernaryCodec(rotate=True, seed=seed)
    raise PacketError(Reason.BAD_BODY, f"unknown delta codec {wire_name[:40]!r}")


# ------------------------------------------------------------------------------------------ layout

FUSED_NAME = "*"


@dataclass(frozen=True)
class Layout:
    """The tensors a sync group agreed on: sorted (name, shape) pairs, and an alignment.

    A fused delta sends all of them as one flat record named FUSED_NAME (concatenated in this
    order, each zero-padded to a multiple of `align` so that no codec block mixes two tensors of
    different scales), so the names and the per-record framing (~100 bytes each) do not travel
    every round. The body's meta["layout"] carries `digest`, so a receiver with another layout
    refuses it.
    """

    entries: tuple[tuple[str, tuple[int, ...]], ...]
    align: int = 1

    def __post_init__(self) -> None:
        if self.align < 1:
            raise ValueError("align must be >= 1")

    @classmethod
    def of(cls, tensors: Mapping[str, Any], *, align: int = 1) -> Layout:
        entries = tuple((name, tuple(int(s) for s in np.shape(tensors[name]))) for name in sorted(tensors))
        return cls(entries, align)

    def _padded(self, n: int) -> int:
        return -(-n // self.align) * self.align

    @property
    def numel(self) -> int:
        """Values in a fused record (padding included)."""
        return sum(self._padded(math.prod(shape)) for _, shape in self.entries)

    @property
    def digest(self) -> bytes:
        text = "\n".join([f"align={self.align}"] + [f"{n}:{','.join(map(str, s))}" for n, s in self.entries])
        return hashlib.sha256(text.encode("utf-8")).digest()[:16]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.entries)

    def fuse(self, tensors: Mapping[str, Any]) -> np.ndarray:
        if set(tensors) != {name for name, _ in self.entries}:
            raise ValueError("the tensors are not the ones of this layout")
        out = np.zeros(self.numel, np.float32)
        at = 0
        for name, shape in self.entries:
            x = as_float32(tensors[name])
            if x.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {x.shape}, the layout says {shape}")
            out[at : at + x.size] = x.reshape(-1)
            at += self._padded(x.size)
        return out

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, at = {}, 0
        for name, shape in self.entries:
            n = math.prod(shape)
            out[name] = flat[at : at + n].reshape(shape)
            at += self._padded(n)
        return out


# -------------------------------------------------------------------------------------- compressor


@dataclass
class DeltaCompressor:
    """One sender's codec plus, with error feedback, the per-name residual of what was not sent.

    compress(delta) encodes delta + residual and sets residual = (delta + residual) - decoded, where
    decoded is what every receiver will compute from the records (the sender runs the same decoder).
    """

    codec: Codec
    error_feedback: bool = False
    layout: Layout | None = None  # when set, send one fused record (see Layout)
    residual: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.codec.name}-ef" if self.error_feedback else self.codec.name

    def compress(self, delta: Mapping[str, Any]) -> tuple[list[DeltaTensor], dict[str, np.ndarray]]:
        """Records for every tensor (sorted by name) and what receivers decode from them."""
        if self.layout is not None:
            records, decoded = self._compress({FUSED_NAME: self.layout.fuse(delta)})
            return records, self.layout.split(decoded[FUSED_NAME])
        return self._compress(delta)

    def _compress(self, delta: Mapping[str, Any]) -> tuple[list[DeltaTensor], dict[str, np.ndarray]]:
        records: list[DeltaTensor] = []
        decoded: dict[str, np.ndarray] = {}
        for name in sorted(delta):
            x = as_float32(delta[name])
            if self.error_feedback and name in self.residual:
                if self.residual[name].shape != x.shape:
                    raise ValueError(f"tensor {name!r} changed shape since the last round")
                x = x + self.residual[name]
            rec = self.codec.encode_tensor(name, x)
            y = self.codec.decode_tensor(rec)
            if self.error_feedback:
                self.residual[name] = x - y
            records.append(rec)
            decoded[name] = y
        return records, decoded

    def residual_norm(self) -> float:
        return math.sqrt(sum(float(np.dot(r.reshape(-1), r.reshape(-1))) for r in self.residual.values()))

    def reset(self) -> None:
        self.residual.clear()


# ------------------------------------------------------------------------------------------ packets


def delta_body(records: Iterable[DeltaTensor], codec: Codec, *, topic: str, group: bytes, round: int,
               chunk: int = 0, chunks: int = 1, layout: Layout | None = None,
               meta: Mapping[str, Any] | None = None) -> Delta:
    """The body of one `delta` packet carrying `records` (encode it with wire.packet.encode_packet).
    Pass the compressor's `layout` when its records are fused."""
    full = dict(meta or {})
    full.update(codec.meta())
    if layout is not None:
        full["layout"] = layout.digest
    return Delta(topic=topic, group=bytes(group), round=int(round), chunk=chunk, chunks=chunks,
                 codec=codec.wire_name, tensors=tuple(records), meta=full or None)


def decode_delta(body: Delta, *, expected: Mapping[str, tuple[int, ...]] | None = None,
                 layout: Layout | None = None, limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """The float32 tensors of a received delta body, each checked against its record's shape and,
    when `expected` (name -> shape) is given, against the shapes this node agreed to sync: an
    unknown name or another shape is refused. A name twice, or more elements in all than
    limits.max_trits, is refused too. A fused body (meta["layout"] present) needs `layout`, must
    match its digest and hold exactly one record of layout.numel values; it is split back into the
    layout's tensors. Raises PacketError; nothing is applied on error."""
    codec = decoder_for(body.codec, body.meta)
    sent_layout = (body.meta or {}).get("layout")
    if sent_layout is not None or layout is not None:
        if layout is None or sent_layout != layout.digest:
            raise PacketError(Reason.BAD_BODY, "fused delta of another layout (meta.layout differs from ours)")
        if len(body.tensors) != 1 or body.tensors[0].name != FUSED_NAME:
            raise PacketError(Reason.BAD_BODY, f"a fused delta holds exactly one record named {FUSED_NAME!r}")
        flat = decode_delta(Delta(body.topic, body.group, body.round, body.chunk, body.chunks, body.codec,
                                  body.tensors, {k: v for k, v in body.meta.items() if k != "layout"}),
                            expected={FUSED_NAME: (layout.numel,)}, limits=limits)[FUSED_NAME]
        return layout.split(flat)
    out: dict[str, np.ndarray] = {}
    total = 0
    for rec in body.tensors:
        name = rec.name
        if name in out:
            raise _bad(name, "appears twice in one delta")
        if expected is not None:
            want = expected.get(name)
            if want is None:
                raise _bad(name, "is not a tensor of this sync group")
            if tuple(rec.shape) != tuple(want):
                raise _bad(name, f"shape {list(rec.shape)} differs from the group's {list(want)}",
                           Reason.BAD_DIMENSION)
        total += _numel(name, tuple(rec.shape), limits)
        if total > limits.max_trits:
            raise _bad(name, f"the delta holds more than max_trits {limits.max_trits} elements", Reason.TOO_LARGE)
        out[name] = codec.decode_tensor(rec, limits=limits)
    return out
