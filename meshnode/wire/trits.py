"""Packing ternary vectors into bytes: the dense2, base3 and sparse codecs of protocol/SPEC.md §3.1.

A batch is an (N, D) array of trits in {-1, 0, +1}. `pack` turns it into the `data` bytes of a vector
block, `unpack` turns such bytes back into an (N, D) int8 array, and `validate` runs every check of
`unpack` without building the result (packet decoding calls it on every vector block it reads).

Hostile input is normal input: every size is checked against `Limits` before anything is allocated,
and every malformed input raises `CodecError` with a stable reason code. Nothing else escapes.

Speed comes from whole-array numpy passes only, with word-level ("SWAR") arithmetic or table
lookups instead of per-trit work; the tricks are explained where they are used. The bench (benches/bench_wire.py)
measures each codec against `numpy.copyto` of the same number of int8 elements.
"""

from __future__ import annotations

import functools
import operator
from enum import IntEnum

import numpy as np

from .errors import CodecError, Reason
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["Encoding", "EncodingLike", "AUTO", "pack", "unpack", "validate", "packed_size", "choose_encoding"]


class Encoding(IntEnum):
    """Wire values of the `encoding` field of a vector block."""

    DENSE2 = 0
    BASE3 = 1
    SPARSE = 2


# Names a caller may use instead of an Encoding member or its wire value (any letter case).
_BY_NAME: dict[str, Encoding] = {e.name.lower(): e for e in Encoding}
AUTO = "auto"  # not a wire value: `pack` picks the smallest encoding (SPEC §3.1)

EncodingLike = Encoding | int | str
"""An `Encoding`, its wire value (0, 1, 2) or its name ("dense2", "base3", "sparse")."""


_SPARSE_U16_MAX_DIM = 1 << 16  # positions fit in a u16 while D <= 65536, else they take a u32
_DENSE_NONZERO_SHARE = 0.1  # above this share of non-zeros, one flat nonzero pass is the fastest
# dense2 works through the rows in blocks of about this many trits, so that its u32 temporaries
# (4 bytes per 4 trits) stay in the L2 cache: large fresh temporaries cost page faults and memory trips.
_BLOCK_TRITS = 1 << 19

# Explicit little-endian word types: the layouts are defined on bytes, and '<' keeps the word
# tricks right on any host (on a big-endian one numpy byte-swaps, slower but still correct).
_U16 = np.dtype("<u2")
_U32 = np.dtype("<u4")
_U64 = np.dtype("<u8")

# dense2 pack. Four int8 trits read as one little-endian u32 hold trit k in byte k. Masking each
# byte with 3 maps -1 (0xFF) -> 0b11, +1 -> 0b01, 0 -> 0b00: exactly the dense2 codes. Multiplying
# by 2**24 + 2**18 + 2**12 + 2**6 moves code k (at bit 8k) to bit 24 + 2k; every other partial
# product lands on its own 2-bit slot below bit 24 or overflows past bit 31, so there are no carries
# and bits 24..31 are the packed byte.
_D2_MASK = np.uint32(0x03030303)
_D2_GATHER = np.uint32(0x01041040)

# dense2 unpack. The packed byte is copied to all four bytes of a u32 (x 0x01010101), each byte keeps
# only its own code (mask 0xC0300C03: code k sits at bits 8k + 2k), and x 0x55 shifts code k left by
# 6 - 2k so that it becomes the top two bits of byte k (again no carries: each partial product has its
# own slot). An arithmetic shift right by 6 of each int8 then gives 00 -> 0, 01 -> +1, 11 -> -1 and the
# invalid 10 -> -2, which a min() finds.
_D2_SPREAD = np.uint32(0x01010101)
_D2_SELECT = np.uint32(0xC0300C03)
_D2_ALIGN = np.uint32(0x55)

# base3 pack. A group of 5 digits (t + 1, in 5 consecutive bytes) read as a u64 holds digit k at bit
# 8k. Multiplying by sum_j 3**j * 2**(56 - 8j) puts sum_k d_k 3**k (<= 242) at bits 56..63; the other
# partial products are byte sums <= 240 below bit 56 (no carries) or overflow past bit 63, and so do
# the 3 bytes of the next group that the 8-byte read also picks up.
_B3_GATHER = np.uint64(sum(3**j << (56 - 8 * j) for j in range(5)))

# base3 unpack: byte value -> its 5 trits as int8 (digit k of the value, minus 1). Rows 243..255 stay
# 0 and are never used: validation rejects those bytes first.
_B3_LUT5 = np.zeros((256, 5), np.int8)
for _k in range(5):
    _B3_LUT5[:243, _k] = np.arange(243) // 3**_k % 3 - 1
del _k


# --------------------------------------------------------------------------------------- sizes


def _dims(dim: object, count: object) -> tuple[int, int]:
    """Both as non-negative Python ints (numpy integers accepted), else BAD_DIMENSION."""
    try:
        if isinstance(dim, (bool, np.bool_)) or isinstance(count, (bool, np.bool_)):
            raise TypeError  # operator.index accepts True as 1: a bool here is a caller's mistake
        d = operator.index(dim)  # type: ignore[arg-type]
        n = operator.index(count)  # type: ignore[arg-type]
    except TypeError:
        raise CodecError(
            Reason.BAD_DIMENSION, f"dim and count must be integers, got {dim!r}, {count!r}"
        ) from None
    if d < 0 or n < 0:
        raise CodecError(Reason.BAD_DIMENSION, f"dim and count must be >= 0, got dim={d}, count={n}")
    return d, n


def _check_limits(d: int, n: int, limits: Limits) -> None:
    # Called before anything of size d or n is allocated.
    if d > limits.max_dim:
        raise CodecError(Reason.TOO_LARGE, f"dim {d} exceeds max_dim {limits.max_dim}")
    if n > limits.max_count:
        raise CodecError(Reason.TOO_LARGE, f"count {n} exceeds max_count {limits.max_count}")
    if n * d > limits.max_trits:
        raise CodecError(Reason.TOO_LARGE, f"count*dim {n * d} exceeds max_trits {limits.max_trits}")


def _encoding(encoding: object) -> Encoding:
    if isinstance(encoding, Encoding):
        return encoding
    if isinstance(encoding, (int, np.integer)) and not isinstance(encoding, (bool, np.bool_)):
        try:
            return Encoding(int(encoding))
        except ValueError:
            pass
    elif isinstance(encoding, str) and encoding.lower() in _BY_NAME:
        return _BY_NAME[encoding.lower()]
    raise CodecError(Reason.BAD_ENCODING, f"unknown encoding {encoding!r} (expected one of "
                     f"{', '.join(_BY_NAME)}, their wire values 0..2, or 'auto' when packing)")


def _sparse_width(d: int) -> int:
    return 2 if d <= _SPARSE_U16_MAX_DIM else 4


def packed_size(encoding: EncodingLike, dim: int, count: int, nonzeros: int | None = None) -> int:
    """Bytes of `data` for `count` vectors of `dim` trits (`nonzeros` in all: needed for SPARSE)."""
    enc = _encoding(encoding)
    d, n = _dims(dim, count)
    if enc is Encoding.DENSE2:
        return n * ((d + 3) // 4)
    if enc is Encoding.BASE3:
        return n * ((d + 4) // 5)
    if nonzeros is None:
        raise CodecError(Reason.BAD_LENGTH, "the size of a sparse block depends on its number of non-zeros")
    try:
        k = operator.index(nonzeros)
    except TypeError:
        raise CodecError(Reason.BAD_LENGTH, f"nonzeros must be an integer, got {nonzeros!r}") from None
    if not 0 <= k <= n * d:
        raise CodecError(Reason.BAD_LENGTH, f"nonzeros {k} is outside 0..count*dim = {n * d}")
    return 4 * n + _sparse_width(d) * k + (k + 7) // 8


def choose_encoding(dim: int, count: int, nonzeros: int) -> Encoding:
    """The encoding with the fewest bytes; ties go to DENSE2, then BASE3 (faster to decode)."""
    # min() keeps the first of equal sizes, and Encoding iterates in wire order = tie order.
    return min(Encoding, key=lambda e: packed_size(e, dim, count, nonzeros))


# ---------------------------------------------------------------------------------------- pack


def _trit_matrix(trits: object, limits: Limits) -> np.ndarray:
    """The input as a validated, C-contiguous (N, D) int8 array."""
    if not isinstance(trits, np.ndarray):
        try:
            trits = np.asarray(trits)
        except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot read
            raise CodecError(Reason.BAD_TRIT, f"trits are not an integer array: {exc}") from None
    if trits.dtype.kind not in "iu":  # bool, float, object, str... : not integers
        raise CodecError(Reason.BAD_TRIT, f"trits must have an integer dtype, got {trits.dtype}")
    if trits.ndim == 1:
        x = trits.reshape(1, trits.shape[0])
    elif trits.ndim == 2:
        x = trits
    else:
        raise CodecError(Reason.BAD_DIMENSION, f"trits must be 1-D or 2-D, got shape {trits.shape}")
    n, d = x.shape
    _check_limits(d, n, limits)
    if x.size:
        # Two SIMD reductions that only read: much cheaper than building a mask.
        if int(x.min()) < -1 or int(x.max()) > 1:
            flat = x.reshape(-1)
            bad = int(np.flatnonzero((flat < -1) | (flat > 1))[0])
            raise CodecError(Reason.BAD_TRIT, f"trit {bad} (vector {bad // d}) is {flat[bad]}, not -1, 0 or +1")
    if x.dtype != np.int8:
        return x.astype(np.int8)  # safe now that every value is in {-1, 0, 1}
    return np.ascontiguousarray(x)


def _row_blocks(n: int, d: int) -> range:
    """Starts of row blocks of about _BLOCK_TRITS trits (at least one row each)."""
    return range(0, n, max(1, _BLOCK_TRITS // max(d, 1)))


def _pack_dense2(x: np.ndarray) -> bytes:
    n, d = x.shape
    nb = (d + 3) // 4
    if n * nb == 0:
        return b""
    out = np.empty((n, nb), np.uint8)
    step = _row_blocks(n, d).step
    words = np.empty((min(step, n), nb), _U32)  # scratch, reused by every block
    padded = np.zeros((min(step, n), 4 * nb), np.int8) if d % 4 else None
    for i in _row_blocks(n, d):
        xb = x[i : i + step]
        w = words[: xb.shape[0]]
        if padded is not None:  # the padding trits stay 0 from np.zeros
            padded[: xb.shape[0], :d] = xb
            xb = padded[: xb.shape[0]]
        np.bitwise_and(xb.view(_U32), _D2_MASK, out=w)
        np.multiply(w, _D2_GATHER, out=w)
        np.right_shift(w, 24, out=w)
        np.copyto(out[i : i + step], w, casting="unsafe")  # values < 256: the cast only narrows
    return out.tobytes()


def _pack_base3(x: np.ndarray) -> bytes:
    n, d = x.shape
    nb = (d + 4) // 5
    if n * nb == 0:
        return b""
    dp = nb * 5
    # Digits t + 1, rows padded with digit 1 (trit 0), plus 3 spare bytes so that the 8-byte read of
    # the very last group stays inside the buffer.
    digits = np.empty(n * dp + 3, np.int8)
    digits[n * dp :] = 0
    grid = digits[: n * dp].reshape(n, dp)
    np.add(x, 1, out=grid[:, :d])
    if dp > d:
        grid[:, d:] = 1
    groups = np.ndarray((n * nb,), dtype=_U64, buffer=digits, strides=(5,))  # overlapping u64 reads
    t = np.multiply(groups, _B3_GATHER)
    np.right_shift(t, 56, out=t)
    return t.astype(np.uint8).tobytes()


def _flat_nonzero(flat: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the non-zeros of a contiguous 1-D int8 array holding `k` of them."""
    if k == 0:
        return np.empty(0, np.intp)
    # numpy's nonzero is ~10x faster on bool than on int8, and on bool it switches to a branchy loop
    # below ~10% density that mispredicts badly; for sparse data, find the non-zero 4-trit words
    # first (a quarter of the elements, denser), then the trits inside those words only.
    if k >= _DENSE_NONZERO_SHARE * flat.size or flat.size < 64:
        return np.flatnonzero(flat != 0)
    body = flat.size // 4 * 4
    words = flat[:body].view(_U32)
    wi = np.flatnonzero(words != 0)
    j = np.flatnonzero(words[wi].view(np.int8) != 0)
    f = wi[j >> 2]
    f <<= 2
    f |= j & 3
    if body < flat.size:
        tail = np.flatnonzero(flat[body:] != 0)
        if tail.size:
            f = np.concatenate([f, tail + body])
    return f


def _pack_sparse(x: np.ndarray, k: int | None = None) -> bytes:
    n, d = x.shape
    flat = x.reshape(-1)
    if k is None:
        k = int(np.count_nonzero(flat))
    w = _sparse_width(d)
    head, tail = 4 * n, 4 * n + w * k
    out = np.empty(tail + (k + 7) // 8, np.uint8)
    f = _flat_nonzero(flat, k)
    starts = np.arange(n, dtype=np.intp) * d
    # f is sorted, so each vector's non-zeros are one run: binary search gives the runs' bounds.
    bounds = np.searchsorted(f, np.append(starts, n * d))
    counts = np.diff(bounds)
    out[:head].view(_U32)[:] = counts
    # position = f - row * D, computed modulo 2**(8w) in the narrow type: exact, as it is < D <= 2**(8w),
    # and much cheaper than an intp subtraction followed by a narrowing cast.
    word = _U16 if w == 2 else _U32
    pos = out[head:tail].view(word)
    np.copyto(pos, f, casting="unsafe")
    np.subtract(pos, np.repeat(starts.astype(word), counts), out=pos)
    out[tail:] = np.packbits(np.take(flat, f) < 0, bitorder="little")
    return out.tobytes()


def pack(
    trits: np.ndarray,
    encoding: EncodingLike = AUTO,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Encoding, bytes]:
    """Pack an integer array of trits, shape (D,) for one vector or (N, D), into vector-block data.

    `encoding` is an `Encoding`, its wire value, its name, or "auto" for the smallest one (ties go
    to dense2, then base3). Returns the encoding used and the bytes. Any integer dtype is accepted;
    C-contiguous int8 is the fast path.
    """
    enc = None if isinstance(encoding, str) and encoding.lower() == AUTO else _encoding(encoding)
    x = _trit_matrix(trits, limits)
    n, d = x.shape
    k = None
    if enc is None:
        k = int(np.count_nonzero(x))
        enc = choose_encoding(d, n, k)
    if enc is Encoding.DENSE2:
        return enc, _pack_dense2(x)
    if enc is Encoding.BASE3:
        return enc, _pack_base3(x)
    return enc, _pack_sparse(x, k)


# -------------------------------------------------------------------------------------- unpack


def _byte_array(data: object) -> np.ndarray:
    """The input as a read-only 1-D uint8 array, without copying when it is contiguous."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise CodecError(Reason.BAD_LENGTH, f"data must be bytes-like, not {type(data).__name__}") from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return np.frombuffer(view, np.uint8)


def _expect_length(b: np.ndarray, expected: int, what: str) -> None:
    if b.size != expected:
        raise CodecError(Reason.BAD_LENGTH, f"{what} needs {expected} bytes of data, got {b.size}")


def _dense2_rows(b: np.ndarray, n: int, d: int) -> np.ndarray:
    """Length and padding checks; the bytes as an (N, ceil(D/4)) matrix."""
    nb = (d + 3) // 4
    _expect_length(b, n * nb, f"dense2 with count={n}, dim={d}")
    rows = b.reshape(n, nb)
    r = d % 4
    if r and n:
        # Padding bits are the high bits of each vector's last byte: a byte >= 4**r has one set.
        last = rows[:, -1]
        if int(last.max()) >= 1 << (2 * r):
            row = int(np.flatnonzero(last >= 1 << (2 * r))[0])
            raise CodecError(Reason.BAD_PADDING, f"dense2 padding bits of vector {row} are not 0",
                             offset=row * nb + nb - 1)
    return rows


def _dense2_bad_code(b: np.ndarray) -> CodecError:
    codes = b.reshape(-1)
    bad = (codes >> 1) & ~codes & 0x55  # a lane whose high bit is set and low bit clear: code 10
    at = int(np.flatnonzero(bad)[0])
    return CodecError(Reason.BAD_TRIT, "dense2 code 10 is not a trit", offset=at)


def _validate_dense2(b: np.ndarray, n: int, d: int) -> None:
    rows = _dense2_rows(b, n, d)
    flat = rows.reshape(-1)
    # Same lane test as _dense2_bad_code, on u64 words (8 bytes per element) and in place.
    body = flat.size // 8 * 8
    for part in (flat[:body].view(_U64), flat[body:]):
        if part.size:
            t = np.right_shift(part, 1)
            np.bitwise_or(t, part, out=t)
            np.bitwise_xor(t, part, out=t)  # (x >> 1) & ~x
            np.bitwise_and(t, 0x5555555555555555 if part.dtype == _U64 else 0x55, out=t)
            if t.any():
                raise _dense2_bad_code(b)


def _unpack_dense2(b: np.ndarray, n: int, d: int) -> np.ndarray:
    rows = _dense2_rows(b, n, d)
    nb = rows.shape[1]
    if n * nb == 0:
        return np.zeros((n, d), np.int8)
    out = np.empty((n, d), np.int8)
    step = _row_blocks(n, d).step
    words = np.empty((min(step, n), nb), _U32)  # little-endian, so that byte k of each word is trit k
    for i in _row_blocks(n, d):
        u = words[: rows[i : i + step].shape[0]]
        np.copyto(u, rows[i : i + step])
        np.multiply(u, _D2_SPREAD, out=u)
        np.bitwise_and(u, _D2_SELECT, out=u)
        np.multiply(u, _D2_ALIGN, out=u)
        t = out[i : i + step]
        np.right_shift(u.view(np.int8)[:, :d], 6, out=t)
        if int(t.min()) < -1:
            raise _dense2_bad_code(b)
    return out


def _base3_rows(b: np.ndarray, n: int, d: int) -> np.ndarray:
    """Length and padding checks; the bytes as an (N, ceil(D/5)) matrix."""
    nb = (d + 4) // 5
    _expect_length(b, n * nb, f"base3 with count={n}, dim={d}")
    rows = b.reshape(n, nb)
    r = d % 5
    if r and n:
        # The last byte holds r trits below 5 - r padding digits that must all be 1 (trit 0):
        # value // 3**r == ones, i.e. value in [ones * 3**r, (ones + 1) * 3**r).
        ones = (3 ** (5 - r) - 1) // 2
        lo, hi = ones * 3**r, (ones + 1) * 3**r
        last = rows[:, -1]
        if int(last.min()) < lo or int(last.max()) >= hi:
            row = int(np.flatnonzero((last < lo) | (last >= hi))[0])
            raise CodecError(Reason.BAD_PADDING, f"base3 padding digits of vector {row} are not 1 (trit 0)",
                             offset=row * nb + nb - 1)
    return rows


def _check_base3_bytes(b: np.ndarray) -> None:
    if b.size and int(b.max()) >= 243:
        raise CodecError(Reason.BAD_TRIT, "base3 byte values 243..255 are not 5 trits",
                         offset=int(np.flatnonzero(b >= 243)[0]))


def _validate_base3(b: np.ndarray, n: int, d: int) -> None:
    _base3_rows(b, n, d)
    _check_base3_bytes(b)


def _unpack_base3(b: np.ndarray, n: int, d: int) -> np.ndarray:
    rows = _base3_rows(b, n, d)
    _check_base3_bytes(b)
    nb = rows.shape[1]
    if n * nb == 0:
        return np.zeros((n, d), np.int8)
    # Table lookups of whole rows of trits: numpy's take copies one fixed-size row per index, so a
    # table indexed by byte pairs (10 trits a row) halves the lookups. Vectors follow each other
    # without gaps in both the bytes and the trits, so pairs may straddle two vectors.
    m = n * nb
    flat = np.empty(5 * m, np.int8)
    half = m // 2
    pairs = rows.reshape(-1)[: 2 * half].view(_U16)  # little-endian: first byte is the low one
    np.take(_b3_pair_table(), pairs, axis=0, out=flat[: 10 * half].reshape(half, 10), mode="wrap")
    if m % 2:
        flat[10 * half :] = _B3_LUT5[rows[-1, -1]]
    grid = flat.reshape(n, 5 * nb)
    return grid if d == 5 * nb else np.ascontiguousarray(grid[:, :d])


@functools.cache
def _b3_pair_table() -> np.ndarray:
    """u16 (byte j + 256 * byte j+1) -> the 10 trits of both bytes (640 KiB, built on first use)."""
    return np.concatenate([np.tile(_B3_LUT5, (256, 1)), np.repeat(_B3_LUT5, 256, axis=0)], axis=1)


def _sparse_parts(b: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All sparse checks. Returns the flat index (row * D + position) of every non-zero, the sign
    bytes, and the number of non-zeros K."""
    head = 4 * n
    if b.size < head:
        raise CodecError(Reason.BAD_LENGTH, f"sparse with count={n} needs {head} bytes of counts, got {b.size}")
    counts = b[:head].view(_U32)
    if n and int(counts.max()) > d:
        row = int(np.flatnonzero(counts > d)[0])
        raise CodecError(Reason.BAD_LENGTH, f"sparse vector {row} claims {int(counts[row])} non-zeros > dim {d}",
                         offset=4 * row)
    k = int(counts.sum(dtype=np.uint64))  # <= n * d, itself bounded by the limits
    w = _sparse_width(d)
    tail = head + w * k
    _expect_length(b, tail + (k + 7) // 8, f"sparse with count={n}, dim={d} and {k} non-zeros")
    signs = b[tail:]
    if k % 8 and int(signs[-1]) >> (k % 8):
        raise CodecError(Reason.BAD_PADDING, "sparse sign padding bits are not 0", offset=b.size - 1)
    if k == 0:
        return np.empty(0, np.intp), signs, 0
    pos = b[head:tail].view(_U16 if w == 2 else _U32)
    if int(pos.max()) >= d:
        at = int(np.flatnonzero(pos >= d)[0])
        raise CodecError(Reason.BAD_TRIT, f"sparse position {int(pos[at])} is not below dim {d}",
                         offset=head + w * at)
    f = np.repeat(np.arange(n, dtype=np.intp) * d, counts.astype(np.intp))
    f += pos  # in place: a widened copy of pos would be one more large allocation
    # With every position < D, "strictly increasing inside each vector" is the same as "strictly
    # increasing across the whole batch", which needs no per-vector bookkeeping.
    if k > 1:
        le = np.less_equal(f[1:], f[:-1])
        if le.any():
            at = int(np.flatnonzero(le)[0]) + 1
            raise CodecError(Reason.BAD_TRIT, "sparse positions are not strictly increasing in a vector",
                             offset=head + w * at)
    return f, signs, k


def _unpack_sparse(b: np.ndarray, n: int, d: int) -> np.ndarray:
    f, signs, k = _sparse_parts(b, n, d)
    out = np.zeros(n * d, np.int8)
    if k:
        bits = np.unpackbits(signs, count=k, bitorder="little").view(np.int8)
        np.multiply(bits, -2, out=bits)
        bits += 1  # sign bit 1 -> -1, 0 -> +1
        out[f] = bits
    return out.reshape(n, d)


def _prepare(data: object, dim: object, count: object, encoding: object,
             limits: Limits) -> tuple[np.ndarray, int, int, Encoding]:
    enc = _encoding(encoding)
    d, n = _dims(dim, count)
    _check_limits(d, n, limits)
    return _byte_array(data), n, d, enc


def unpack(
    data: bytes | bytearray | memoryview,
    dim: int,
    count: int,
    encoding: EncodingLike,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode vector-block data into a new (count, dim) int8 array, checking everything."""
    b, n, d, enc = _prepare(data, dim, count, encoding, limits)
    if enc is Encoding.DENSE2:
        return _unpack_dense2(b, n, d)
    if enc is Encoding.BASE3:
        return _unpack_base3(b, n, d)
    return _unpack_sparse(b, n, d)


def validate(
    data: bytes | bytearray | memoryview,
    dim: int,
    count: int,
    encoding: EncodingLike,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Raise CodecError exactly when `unpack` would, without building the trits where avoidable."""
    b, n, d, enc = _prepare(data, dim, count, encoding, limits)
    if enc is Encoding.DENSE2:
        _validate_dense2(b, n, d)
    elif enc is Encoding.BASE3:
        _validate_base3(b, n, d)
    else:
        _sparse_parts(b, n, d)
