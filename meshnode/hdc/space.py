"""HDC spaces: a seeded random projection into D dimensions, ternary quantisation, similarity, bundling.

A *space* is (seed, dimension D, encoder version). Every node derives the projection for an input
width d from those three numbers alone, so two nodes that name the same space get the same matrix
without sending it. The derivation uses only operations whose results numpy fixes across platforms:
the raw 64-bit output of PCG64 (an exactly specified integer generator) seeded from a SHA-256 of
(version, seed, d, D), turned into Gaussians by Box-Muller in float64 and rounded to float32.
numpy's own `standard_normal` is not used because numpy does not promise its stream across
releases; the raw PCG64 stream is fixed by the algorithm.

Encoder versions (protocol/SPEC.md §3.1.1): version 1 projects the centred embedding. Version 2 (issue
17) first applies a partial whitening from the node's own anchor statistics (`anchor_whitening`:
(anchor covariance + WHITEN_EPS x its mean eigenvalue)^(-1/4), a symmetric matrix), then projects with
a version-2 matrix. A decoder's mean-pooled states are very anisotropic (SmolLM2's top covariance
eigenvalue is ~1300x the median, MiniLM's ~110x): the per-vector sign threshold then spends nearly every
trit on a few directions, and a ridge probe on SICK lost ~5 points against float embeddings at
D = 10000. Full whitening (power 1/2) fixed that but cost 2-4 points on the well-conditioned models
(MPNet on SST-2, SmolLM2 on AG News); the quarter power was chosen among four forms on validation rows
of the train sets (benches/bench_space.py --stage select), never on test data. Whitening is node-local
(each node whitens its own model's embeddings with its own anchors), so what travels, and the
projection every node derives, stay defined by (seed, D, version) alone.

Ternary quantisation keeps the sign of the entries whose magnitude is above a per-vector threshold:
either tau x std of the vector (the paper's rule, tau = 0.3) or the magnitude quantile that gives a
target fraction of zeros (the research log's "70% sparse" mode). Which one was used, and the zero
fraction it really gave, is what a caller should report.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "ENCODER_VERSION",
    "ENCODER_VERSIONS",
    "MAX_DIM",
    "MAX_WIDTH",
    "WHITEN_EPS",
    "WHITEN_POWER",
    "Space",
    "anchor_whitening",
    "bundle",
    "cosine",
    "dot",
    "projection",
    "ternarize",
    "zero_fraction",
]

ENCODER_VERSION = 2              # the newest encoder this node has
ENCODER_VERSIONS = (1, 2)        # every version it can still encode and decode
WHITEN_EPS = 0.1                 # version 2's whitening ridge, relative to the mean eigenvalue
WHITEN_POWER = 0.25              # version 2 scales direction i by (l_i + eps * mean(l)) ** -WHITEN_POWER
MAX_DIM = 1 << 20          # the wire's default max_dim: a space no receiver could accept is refused here
MAX_WIDTH = 1 << 16        # embedding widths beyond this are not models we know; bounds the projection size
_MAX_PROJECTION_FLOATS = 1 << 28   # 1 GiB of float32: refuse before allocating


def _derive_seed(seed: int, width: int, dim: int, version: int) -> int:
    material = b"meshnode/hdc/projection\x00" + struct.pack("<IQII", version, seed, width, dim)
    return int.from_bytes(hashlib.sha256(material).digest(), "little")


def _gaussians(generator: np.random.PCG64, count: int) -> np.ndarray:
    """`count` standard normals from the raw PCG64 stream by Box-Muller (float64)."""
    pairs = (count + 1) // 2
    raw = generator.random_raw(2 * pairs).astype(np.uint64)
    # 53-bit uniforms in (0, 1]: never 0, so the log is finite
    u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)
    u1, u2 = u[:pairs], u[pairs:]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    out = np.empty(2 * pairs, dtype=np.float64)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    return out[:count]


@lru_cache(maxsize=8)
def projection(seed: int, width: int, dim: int, version: int = ENCODER_VERSION) -> np.ndarray:
    """The (width, dim) float32 projection of a space: Gaussian entries, every column of unit norm.

    Read-only and cached (a D = 10000 projection of a 768-d model is 30 MB)."""
    if version not in ENCODER_VERSIONS:
        raise ValueError(f"encoder version {version} is not supported (this node has {_versions()})")
    for name, value, limit in (("seed", seed, (1 << 64) - 1), ("width", width, MAX_WIDTH), ("dim", dim, MAX_DIM)):
        if type(value) is not int or not 0 <= value <= limit:
            raise ValueError(f"{name} must be an int in 0..{limit}, got {value!r}")
    if width < 1 or dim < 1:
        raise ValueError(f"width and dim must be >= 1, got {width} and {dim}")
    if width * dim > _MAX_PROJECTION_FLOATS:
        raise ValueError(f"a {width} x {dim} projection exceeds {_MAX_PROJECTION_FLOATS} floats")
    generator = np.random.PCG64(_derive_seed(seed, width, dim, version))
    # generated column by column (dim rows of width values) so a column's values do not depend on D
    cols = _gaussians(generator, width * dim).reshape(dim, width)
    cols /= np.sqrt(np.einsum("ij,ij->i", cols, cols))[:, None]
    out = np.ascontiguousarray(cols.T, dtype=np.float32)
    out.flags.writeable = False
    return out


def _versions() -> str:
    return ", ".join(str(v) for v in ENCODER_VERSIONS)


def anchor_whitening(anchor_emb: np.ndarray, eps: float = WHITEN_EPS) -> tuple[np.ndarray, np.ndarray]:
    """(center, whitening) of version 2 from a node's own anchor embeddings (N, width).

    whitening = V (L + eps * mean(L))^(-WHITEN_POWER) V^T with V, L the eigenvectors and -values of the
    anchor covariance: symmetric, so it does not depend on the sign eigh gives each eigenvector, and
    partial (power 1/4, regularised) so directions the anchors barely span are not blown up to noise."""
    x = np.asarray(anchor_emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N >= 2, width) anchor embeddings, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("anchor embeddings have non-finite values")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    center = x.mean(axis=0)
    xc = x - center
    vals, vecs = np.linalg.eigh(xc.T @ xc / (x.shape[0] - 1))
    vals = np.clip(vals, 0.0, None)
    floor = eps * float(vals.mean()) if vals.mean() > 0 else 1.0
    whiten = (vecs * (vals + floor) ** -WHITEN_POWER) @ vecs.T
    return center.astype(np.float32), whiten.astype(np.float32)


def ternarize(x: np.ndarray, tau: float = 0.3, *, sparsity: float | None = None) -> np.ndarray:
    """Quantise each row of `x` to -1/0/+1 (int8).

    Default: zero where |x| <= tau * std(row). With `sparsity` (fraction of zeros wanted, 0..1), the
    threshold is instead the row's |x| quantile at that fraction, so about that many entries are 0
    (ties at the threshold can make it slightly more). Use `zero_fraction` to report what you got.
    """
    arr = np.asarray(x, dtype=np.float32)
    squeeze = arr.ndim == 1
    rows = np.atleast_2d(arr)
    if rows.ndim != 2:
        raise ValueError(f"expected a (D,) or (N, D) array, got shape {arr.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError("cannot ternarize non-finite values")
    mag = np.abs(rows)
    if sparsity is None:
        if not tau >= 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        thresh = tau * rows.std(axis=1, keepdims=True)
    else:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        k = int(np.floor(sparsity * rows.shape[1]))
        if k == 0:
            thresh = np.full((rows.shape[0], 1), -1.0, dtype=np.float32)
        else:
            thresh = np.partition(mag, k - 1, axis=1)[:, k - 1:k]
    out = (np.sign(rows) * (mag > thresh)).astype(np.int8)
    return out[0] if squeeze else out


def zero_fraction(trits: np.ndarray) -> float:
    t = np.asarray(trits)
    return 0.0 if t.size == 0 else 1.0 - np.count_nonzero(t) / t.size


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise dot products of rows of `a` (N, D) and `b` (M, D) as float32 (N, M).

    Ternary inputs go through float32 BLAS: exact for D < 2**24, and far faster than int8 loops."""
    return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity (N, M); a zero row has similarity 0 to everything."""
    fa = np.atleast_2d(np.asarray(a, dtype=np.float32))
    fb = np.atleast_2d(np.asarray(b, dtype=np.float32))
    na = np.sqrt(np.einsum("ij,ij->i", fa, fa))
    nb = np.sqrt(np.einsum("ij,ij->i", fb, fb))
    na[na == 0] = 1.0
    nb[nb == 0] = 1.0
    return (fa @ fb.T) / na[:, None] / nb[None, :]


def bundle(vectors: np.ndarray, weights: Sequence[float] | np.ndarray | None = None, *,
           sparsity: float | None = None) -> np.ndarray:
    """Bundle (superpose) rows into one ternary vector: the sign of their (weighted) sum.

    Positions where the sum is exactly 0 stay 0. With `sparsity`, the sum is re-thresholded to that
    zero fraction instead (a bundle of many vectors is otherwise nearly dense)."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    total = v.sum(axis=0) if weights is None else np.asarray(weights, dtype=np.float32) @ v
    if sparsity is not None:
        return ternarize(total, sparsity=sparsity)
    return np.sign(total).astype(np.int8)


@dataclass(frozen=True, slots=True)
class Space:
    """An HDC space: everything a node needs to encode into it, and a short id to name it on the wire."""

    seed: int
    dim: int
    version: int = 1     # version 2 needs each node's anchor whitening: opt in with `version=2`

    def __post_init__(self) -> None:
        if type(self.seed) is not int or not 0 <= self.seed < 1 << 64:
            raise ValueError(f"seed must be an int in 0..2**64-1, got {self.seed!r}")
        if type(self.dim) is not int or not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"dim must be an int in 1..{MAX_DIM}, got {self.dim!r}")
        if self.version not in ENCODER_VERSIONS:
            raise ValueError(f"encoder version {self.version} is not supported (this node has {_versions()})")

    @property
    def space_id(self) -> bytes:
        """16 bytes naming this space in vector blocks (SPEC §3.1 allows 1..32)."""
        material = b"meshnode/hdc/space\x00" + struct.pack("<IQI", self.version, self.seed, self.dim)
        return hashlib.sha256(material).digest()[:16]

    def projection(self, width: int) -> np.ndarray:
        return projection(self.seed, width, self.dim, self.version)

    def project(self, x: np.ndarray, *, center: np.ndarray | None = None,
                whiten: np.ndarray | None = None) -> np.ndarray:
        """Float HDC coordinates (N, D) of embeddings `x` (N, width), after subtracting `center`.

        Centering with the node's own mean embedding (an unlabeled local statistic) matters: mean
        pooled decoder states share a large common direction that would otherwise dominate the sign.
        Version 2 also needs `whiten` (width x width, from `anchor_whitening` on the node's anchors);
        version 1 refuses it, so a v1 vector is always the v1 encoding."""
        arr = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if center is not None:
            arr = arr - np.asarray(center, dtype=np.float32)
        if self.version >= 2:
            if whiten is None:
                raise ValueError("encoder version 2 whitens with the node's anchor statistics: pass whiten= "
                                 "(see anchor_whitening)")
            w = np.asarray(whiten, dtype=np.float32)
            if w.shape != (arr.shape[1], arr.shape[1]):
                raise ValueError(f"whiten is {w.shape}, expected ({arr.shape[1]}, {arr.shape[1]})")
            arr = arr @ w
        elif whiten is not None:
            raise ValueError("encoder version 1 does not whiten")
        return arr @ self.projection(arr.shape[1])

    def encode(self, x: np.ndarray, *, center: np.ndarray | None = None, tau: float = 0.3,
               sparsity: float | None = None, whiten: np.ndarray | None = None) -> np.ndarray:
        """Ternary HDC vectors (N, D) int8 of embeddings `x`."""
        return ternarize(self.project(x, center=center, whiten=whiten), tau, sparsity=sparsity)
