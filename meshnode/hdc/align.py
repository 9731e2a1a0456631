"""Alignment: a map from a student's embedding space into a target space, fitted on N anchor pairs.

Every aligner is fitted on rows that describe the same anchor texts: `x` (N, d_s) from the student,
`y` (N, d_t) from the target side. The target is whatever the student really has. In the
*wire-honest* setting that is the teacher's ternary anchor vectors as received (int8 -1/0/+1, D
columns), never the teacher's floats or texts; `fit_wire_honest` names that case. The student then
applies the teacher's knowledge (which lives in the teacher's HDC space) to `transform(x)`.

Methods (`ALIGNERS`):
- `none`        identity; only when both widths agree (e.g. two nodes running the same model).
- `procrustes`  orthogonal map after centring and scaling both sides to unit Frobenius norm, the
                narrower side zero-padded to the wider width.
- `ridge`       linear least squares with an L2 penalty; the penalty is picked by generalised
                cross-validation over a log grid from the SVD of the centred student anchors.
- `cca`         regularised canonical correlation analysis: both sides reduced by SVD, whitened,
                correlated; predictions go through the k canonical pairs, scaled by their
                correlations, and back into the target coordinates.
- `contrastive` an MLP from the student to the target with an in-batch InfoNCE loss over cosine
                similarities (the other anchors are the negatives) plus a cosine term; full batch
                Adam, 10% of the anchors held out for early stopping; `steps_` reports where it
                stopped. The target side has its own small MLP only as a training head
                (`target_head`), because the output must stay in the teacher's space, where its
                classifier lives.

High-dimensional targets (D = 10000) are first reduced to their top principal directions over the
anchors (at most N of them carry anything); aligners fit into those coordinates and map back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = [
    "ALIGNERS",
    "Aligner",
    "CCAAligner",
    "ContrastiveAligner",
    "IdentityAligner",
    "ProcrustesAligner",
    "RidgeAligner",
    "fit_wire_honest",
    "gcv_ridge",
    "make_aligner",
    "thin_svd",
]


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, width), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def thin_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD a = u @ diag(s) @ vt of a (N, d) float64 array through its smaller Gram matrix.

    For an N x 10000 HDC block this costs an N x N eigendecomposition instead of a full SVD.
    Directions with singular value below 1e-6 of the largest are dropped (they carry rounding only)."""
    n, d = a.shape
    gram = a @ a.T if d > n else a.T @ a
    vals, vecs = np.linalg.eigh(gram)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    top = vals[0] if vals.size and vals[0] > 0 else 0.0
    keep = vals > top * 1e-12 if top > 0 else np.zeros(vals.shape, dtype=bool)
    s = np.sqrt(vals[keep])
    vecs = vecs[:, keep]
    if d > n:
        u = vecs
        vt = (u.T @ a) / s[:, None]
    else:
        vt = vecs.T
        u = (a @ vecs) / s
    return u, s, vt


def _check_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = _as_2d(x, "x"), _as_2d(y, "y")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x has {xs.shape[0]} anchors, y has {ys.shape[0]}")
    if xs.shape[0] < 2:
        raise ValueError("need at least 2 anchors to fit an alignment")
    return xs, ys


class Aligner(Protocol):
    name: ClassVar[str]

    def fit(self, x: np.ndarray, y: np.ndarray) -> Aligner: ...

    def transform(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class _TargetBasis:
    """The target's anchor mean and top right-singular directions: y ~ mean + z @ basis."""

    mean: np.ndarray
    basis: np.ndarray  # (r, d_t)

    @classmethod
    def fit(cls, y: np.ndarray, max_rank: int) -> _TargetBasis:
        mean = y.mean(axis=0)
        yc = y - mean
        # the Gram route: N x N instead of d_t x d_t, since N << D for HDC targets
        gram = yc @ yc.T
        vals, vecs = np.linalg.eigh(gram)
        order = np.argsort(vals)[::-1]
        vals, vecs = vals[order], vecs[:, order]
        keep = vals > vals[0] * 1e-10 if vals[0] > 0 else np.zeros_like(vals, dtype=bool)
        r = int(min(max_rank, keep.sum()))
        sv = np.sqrt(vals[:r])
        basis = (vecs[:, :r].T @ yc) / sv[:, None]   # orthonormal rows
        return cls(mean=mean, basis=basis)

    def coords(self, y: np.ndarray) -> np.ndarray:
        return (y - self.mean) @ self.basis.T

    def back(self, z: np.ndarray) -> np.ndarray:
        return z @ self.basis + self.mean


@dataclass
class IdentityAligner:
    name: ClassVar[str] = "none"
    width: int | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> IdentityAligner:
        xs, ys = _check_pairs(x, y)
        if xs.shape[1] != ys.shape[1]:
            raise ValueError(f"'none' alignment needs equal widths, got {xs.shape[1]} and {ys.shape[1]}")
        self.width = xs.shape[1]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)


@dataclass
class ProcrustesAligner:
    """Orthogonal Procrustes. The (d_s, d_t) map is kept as two factors, left (d_s, r) @ right (r, d_t):
    with two 10000-wide HDC sides the full matrix alone would be 800 MB, while the data span at
    most N directions on each side."""

    name: ClassVar[str] = "procrustes"
    x_mean: np.ndarray | None = None
    x_scale: float = 1.0
    y_mean: np.ndarray | None = None
    y_scale: float = 1.0
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    direct_max_entries: int = 1 << 22   # above this d_s * d_t, factor through the data spans

    def fit(self, x: np.ndarray, y: np.ndarray) -> ProcrustesAligner:
        xs, ys = _check_pairs(x, y)
        self.x_mean, self.y_mean = xs.mean(axis=0), ys.mean(axis=0)
        xc, yc = xs - self.x_mean, ys - self.y_mean
        self.x_scale = float(np.linalg.norm(xc)) or 1.0
        self.y_scale = float(np.linalg.norm(yc)) or 1.0
        xn, yn = xc / self.x_scale, yc / self.y_scale
        # Zero-padding the narrower side to the wider width adds zero rows/columns to the cross
        # matrix M = Xn^T Yn, which leave its singular vectors on the real block unchanged, so the
        # padded problem's solution restricted to (d_s, d_t) is U V^T of the unpadded M.
        if xs.shape[1] * ys.shape[1] <= self.direct_max_entries:
            u, _, vt = np.linalg.svd(xn.T @ yn, full_matrices=False)
            self.left, self.right = u, vt
        else:
            # M = Vx (Sx Ux^T Uy Sy) Vy^T: the SVD of the small core gives M's singular vectors
            ux, sx, vtx = thin_svd(xn)
            uy, sy, vty = thin_svd(yn)
            p, _, qt = np.linalg.svd((sx[:, None] * (ux.T @ uy)) * sy[None, :], full_matrices=False)
            self.left, self.right = vtx.T @ p, qt @ vty
        return self

    @property
    def rotation(self) -> np.ndarray:
        if self.left is None or self.right is None:
            raise RuntimeError("fit the aligner first")
        return self.left @ self.right

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.left is None or self.right is None or self.x_mean is None or self.y_mean is None:
            raise RuntimeError("fit the aligner first")
        xs = np.asarray(x, dtype=np.float64)
        out = (((xs - self.x_mean) / self.x_scale) @ self.left) @ self.right * self.y_scale + self.y_mean
        return out.astype(np.float32)


_RIDGE_GRID = np.logspace(-4, 4, 33)


def _distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the first occurrence of each distinct row, group id of every row), rows compared bytewise."""
    xs = np.ascontiguousarray(x)
    keys = xs.view(np.dtype((np.void, xs.dtype.itemsize * xs.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def gcv_ridge(x: np.ndarray, y: np.ndarray, alpha: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge regression of y on x with intercepts: (weight, x_mean, y_mean, alpha).

    With `alpha` None the penalty is chosen by generalised cross-validation over a log grid scaled
    by the mean squared singular value of the centred x; every grid point costs O(r) after one SVD.

    Exact duplicate rows of x (a text that occurs twice: its HDC vectors are identical) are merged
    into one row weighted by its count before the SVD: ridge on the weighted distinct rows has the same
    solution as on all rows, and GCV counts observations as distinct rows. Counting every copy breaks
    GCV when the rows span x's whole row space (n near or below D, as for ternary HDC vectors): the fit
    interpolates, the residual sum of squares goes to 0 while n - 1 - df stays >= 1 per duplicate, so
    GCV -> 0 at the smallest penalty and picks a near-ridgeless probe (issue 17: 1 duplicate in 4000
    SST-2 texts took the probe on D = 10000 vectors from 78% to 71%)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    n = xs.shape[0]
    x_mean, y_mean = xs.mean(axis=0), ys.mean(axis=0)
    first, group = _distinct_rows(xs) if n else (np.arange(0), np.arange(0))
    counts = np.bincount(group, minlength=len(first)).astype(np.float64)
    y_groups = np.zeros((len(first), ys.shape[1]))
    np.add.at(y_groups, group, ys)
    y_groups /= counts[:, None]
    root = np.sqrt(counts)[:, None]
    xc, yc = (xs[first] - x_mean) * root, (y_groups - y_mean) * root
    n_obs = len(first)
    u, s, vt = thin_svd(xc)
    uty = u.T @ yc                       # (r, d_t)
    uty_sq = np.einsum("ij,ij->i", uty, uty)
    total = float(np.einsum("ij,ij->", yc, yc))
    s2 = s ** 2
    scale = float(s2.mean()) if s2.size else 1.0
    grid = [alpha] if alpha is not None else list(_RIDGE_GRID * scale)
    best = (np.inf, grid[0])
    for a in grid:
        f = s2 / (s2 + a)
        rss = total - float(uty_sq.sum()) + float(((1 - f) ** 2 * uty_sq).sum())
        gcv = rss / max(n_obs - 1 - float(f.sum()), 1e-9) ** 2   # the intercept costs one degree of freedom
        if gcv < best[0]:
            best = (gcv, a)
    chosen = float(best[1])
    weight = vt.T @ ((s / (s2 + chosen))[:, None] * uty)    # (d_s, d_t)
    return weight, x_mean, y_mean, chosen


@dataclass
class RidgeAligner:
    """Ridge regression; `alpha` None means: pick it by GCV (alpha relative to the mean squared singular value)."""

    name: ClassVar[str] = "ridge"
    alpha: float | None = None
    alpha_: float = 0.0
    x_mean: np.ndarray | None = None
    y_mean: np.ndarray | None = None
    weight: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeAligner:
        xs, ys = _check_pairs(x, y)
        self.weight, self.x_mean, self.y_mean, self.alpha_ = gcv_ridge(xs, ys, self.alpha)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.weight is None or self.x_mean is None or self.y_mean is None:
            raise RuntimeError("fit the aligner first")
        xs = np.asarray(x, dtype=np.float64)
        return ((xs - self.x_mean) @ self.weight + self.y_mean).astype(np.float32)


@dataclass
class CCAAligner:
    """Regularised CCA; `reg` is relative to each side's mean variance, `components` None = all."""

    name: ClassVar[str] = "cca"
    components: int | None = None
    reg: float = 0.1
    x_mean: np.ndarray | None = None
    y_mean: np.ndarray | None = None
    x_map: np.ndarray | None = None      # (d_s, k): student -> canonical variates
    y_back: np.ndarray | None = None     # (k, d_t): predicted target variates -> target coordinates
    correlations: np.ndarray | None = None

    @staticmethod
    def _reduce(a: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centred a = U S Vt; returns (whitened scores A, V, sqrt of regularised variances)."""
        n = a.shape[0]
        _, s, vt = thin_svd(a)
        var = s ** 2 / n
        sd = np.sqrt(var + reg * float(var.mean()))
        return (a @ vt.T) / sd, vt.T, sd

    def fit(self, x: np.ndarray, y: np.ndarray) -> CCAAligner:
        xs, ys = _check_pairs(x, y)
        n = xs.shape[0]
        self.x_mean, self.y_mean = xs.mean(axis=0), ys.mean(axis=0)
        xa, vx, sdx = self._reduce(xs - self.x_mean, self.reg)
        ya, vy, sdy = self._reduce(ys - self.y_mean, self.reg)
        p, rho, qt = np.linalg.svd(xa.T @ ya / n, full_matrices=False)
        k = len(rho) if self.components is None else min(self.components, len(rho))
        self.correlations = rho[:k]
        self.x_map = (vx / sdx) @ p[:, :k] * rho[:k]           # canonical x-variates times their correlation
        self.y_back = qt[:k] * sdy @ vy.T                       # y-variates back to target coordinates
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.x_map is None or self.y_back is None or self.x_mean is None or self.y_mean is None:
            raise RuntimeError("fit the aligner first")
        xs = np.asarray(x, dtype=np.float64)
        return ((xs - self.x_mean) @ self.x_map @ self.y_back + self.y_mean).astype(np.float32)


@dataclass
class ContrastiveAligner:
    """MLP student -> target trained with InfoNCE over cosine similarity (in-batch negatives).

    `max_steps` bounds training; it stops earlier when the held-out loss has not improved by
    `tol` (relative) for `patience` steps, and keeps the best held-out weights. `steps_` is where it
    stopped, `converged_` whether the patience rule (not the step cap) ended it."""

    name: ClassVar[str] = "contrastive"
    hidden: int = 256
    temperature: float = 0.05
    cosine_weight: float = 1.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_steps: int = 2000
    patience: int = 100
    tol: float = 1e-3
    seed: int = 0
    max_rank: int = 256
    threads: int | None = 1
    steps_: int = 0
    converged_: bool = False
    _basis: _TargetBasis | None = None
    _x_mean: np.ndarray | None = None
    _x_scale: float = 1.0
    _z_scale: float = 1.0
    _net: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fit(self, x: np.ndarray, y: np.ndarray) -> ContrastiveAligner:
        import torch  # optional dependency: only this aligner needs it

        xs, ys = _check_pairs(x, y)
        # near convergence Adam's state underflows into denormals, which slow CPU math ~100x
        flush = torch.set_flush_denormal(True)
        # a full-batch step on a few hundred rows is microseconds of math: extra threads only add
        # spin-waiting, which turns into seconds on a shared, busy CPU
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._fit(torch, xs, ys)
        finally:
            torch.set_num_threads(threads)
            if flush:
                torch.set_flush_denormal(False)

    def _fit(self, torch: Any, xs: np.ndarray, ys: np.ndarray) -> ContrastiveAligner:
        n = xs.shape[0]
        self._basis = _TargetBasis.fit(ys, min(self.max_rank, n - 1))
        z = self._basis.coords(ys)
        self._z_scale = float(z.std()) or 1.0
        self._x_mean = xs.mean(axis=0)
        self._x_scale = float((xs - self._x_mean).std()) or 1.0
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        xt = torch.tensor((xs - self._x_mean) / self._x_scale, dtype=torch.float32)
        zt = torch.tensor(z / self._z_scale, dtype=torch.float32)
        perm = torch.randperm(n, generator=gen)
        n_val = max(2, n // 10) if n >= 20 else 0
        val, tr = perm[:n_val], perm[n_val:]
        d_in, d_out = xt.shape[1], zt.shape[1]
        student = torch.nn.Sequential(torch.nn.Linear(d_in, self.hidden), torch.nn.GELU(),
                                      torch.nn.Linear(self.hidden, d_out))
        skip = torch.nn.Linear(d_in, d_out, bias=False)
        target_head = torch.nn.Sequential(torch.nn.Linear(d_out, self.hidden), torch.nn.GELU(),
                                          torch.nn.Linear(self.hidden, d_out))
        params = [*student.parameters(), *skip.parameters(), *target_head.parameters()]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

        def forward(inp: torch.Tensor) -> torch.Tensor:
            return student(inp) + skip(inp)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            pred = torch.nn.functional.normalize(forward(xt[idx]), dim=1)
            tgt = zt[idx]
            # the head sees the target only through a residual, so the map stays anchored to it
            head = torch.nn.functional.normalize(tgt + target_head(tgt), dim=1)
            logits = pred @ head.T / self.temperature
            labels = torch.arange(len(idx))
            nce = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                         + torch.nn.functional.cross_entropy(logits.T, labels))
            cos = 1 - (pred * torch.nn.functional.normalize(tgt, dim=1)).sum(dim=1).mean()
            return nce + self.cosine_weight * cos

        best_loss, best_state, since = np.inf, None, 0
        step = 0
        for step in range(1, self.max_steps + 1):
            opt.zero_grad()
            loss = loss_fn(tr)
            loss.backward()
            opt.step()
            with torch.no_grad():
                monitor = float(loss_fn(val)) if n_val else float(loss)
            if monitor < best_loss * (1 - self.tol) or best_state is None:
                best_loss, since = monitor, 0
                best_state = ({k: v.clone() for k, v in student.state_dict().items()},
                              {k: v.clone() for k, v in skip.state_dict().items()})
            else:
                since += 1
                if since >= self.patience:
                    self.converged_ = True
                    break
        self.steps_ = step
        assert best_state is not None
        student.load_state_dict(best_state[0])
        skip.load_state_dict(best_state[1])
        self._net = (student, skip)
        self.extra = {"best_heldout_loss": best_loss, "heldout": int(n_val)}
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        import torch

        if self._net is None or self._basis is None or self._x_mean is None:
            raise RuntimeError("fit the aligner first")
        student, skip = self._net
        xt = torch.tensor((np.asarray(x, dtype=np.float64) - self._x_mean) / self._x_scale, dtype=torch.float32)
        with torch.no_grad():
            z = (student(xt) + skip(xt)).numpy().astype(np.float64)
        # cosine training fixes directions, not lengths: rescale to the target's typical norm
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        z = z / norms * np.sqrt(z.shape[1]) * self._z_scale
        return self._basis.back(z).astype(np.float32)


ALIGNERS: dict[str, type] = {
    cls.name: cls for cls in (IdentityAligner, ProcrustesAligner, RidgeAligner, CCAAligner, ContrastiveAligner)
}


def make_aligner(method: str, **params: Any) -> Aligner:
    try:
        cls = ALIGNERS[method]
    except KeyError:
        raise ValueError(f"unknown alignment method {method!r}; known: {', '.join(ALIGNERS)}") from None
    return cls(**params)


def fit_wire_honest(method: str, student_anchors: np.ndarray, teacher_anchor_trits: np.ndarray,
                    **params: Any) -> Aligner:
    """Fit `method` from the student's anchor embeddings to the teacher's *ternary* anchor vectors,
    exactly what a student receives on the wire (values must be -1/0/+1)."""
    trits = np.asarray(teacher_anchor_trits)
    if trits.ndim != 2 or not np.isin(trits, (-1, 0, 1)).all():
        raise ValueError("teacher anchor vectors must be an (N, D) array of -1/0/+1")
    return make_aligner(method, **params).fit(student_anchors, trits.astype(np.float32))
