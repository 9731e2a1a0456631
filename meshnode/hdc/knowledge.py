"""Task knowledge a teacher sends besides its anchor vectors, and how a student uses it.

Forms (the wire's `knowledge` body, protocol/SPEC.md §4, plus labeled vectors, which travel as a
`vectors` body with `labels`):
- `LinearKnowledge`      a linear classifier (C x D weight, C bias) over vectors of one HDC space.
- `PrototypeKnowledge`   one bundled ternary vector per class; classify by cosine similarity.
- `PredictionKnowledge`  the teacher's predictions on the anchor set, hard (N class ids) or soft
                         (N x C probabilities), bound to the anchor set by its hash.
- `LabeledVectors`       ternary vectors with class ids: the student trains its own probe on them.

Labels behind any form are either gold labels or the teacher's own predictions; `meta["labels"]`
says which ("gold" | "teacher"), so a receiver never mistakes one for the other.

`from_body` is for hostile input: beyond what the wire decoder checks (types, shapes against the
class count) it checks the space, the dimension and the anchor hash the receiver expects, and that
every number is finite, raising `KnowledgeError` (a `WireError`, reason `bad_body`) otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshnode.wire.errors import PacketError, Reason
from meshnode.wire.packet import Knowledge, Tensor, VectorBlock, Vectors

from .space import Space, bundle, cosine

__all__ = [
    "KnowledgeError",
    "LabeledVectors",
    "LinearKnowledge",
    "PredictionKnowledge",
    "PrototypeKnowledge",
    "anchor_hash",
    "fit_linear",
    "fit_ridge_classifier",
    "from_body",
    "softmax",
]

MAX_CLASSES = 4096


class KnowledgeError(PacketError):
    """Knowledge that decodes but does not fit what this receiver expects."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.BAD_BODY, message)


def anchor_hash(texts: Sequence[str]) -> bytes:
    """SHA-256 of an anchor set: each text UTF-8 encoded and length-prefixed, in order."""
    h = hashlib.sha256(b"meshnode/anchors/v1\x00")
    for t in texts:
        raw = t.encode("utf-8")
        h.update(len(raw).to_bytes(4, "little"))
        h.update(raw)
    return h.digest()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_linear(x: np.ndarray, labels: np.ndarray, n_classes: int, *, c: float | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Multinomial L2 logistic regression; returns (weight C x D, bias C, the C used).

    With `c` None the inverse penalty is picked by 3-fold cross-validation on the given rows only
    (from a small grid), so a probe never sees labels its owner would not have. Classes absent from
    `labels` get a weight row of zeros and a very low bias."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    xs = np.asarray(x, dtype=np.float32)
    ys = np.asarray(labels, dtype=np.int64)
    present = np.unique(ys)
    weight = np.zeros((n_classes, xs.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -30.0, dtype=np.float32)
    if len(present) == 1:
        bias[present[0]] = 0.0
        return weight, bias, float("nan")
    # features are ternary or float HDC coordinates of similar scale; normalise per row so one C
    # grid suits every D
    xs = xs / np.sqrt(xs.shape[1])
    # An L2-penalised linear model's weight lies in the span of its training rows (representer
    # theorem), so with D > N we fit in the N-dim coordinates of that span: same optimum, far cheaper.
    basis = None
    if xs.shape[1] > xs.shape[0]:
        gram = xs.astype(np.float64) @ xs.T.astype(np.float64)
        vals, vecs = np.linalg.eigh(gram)
        keep = vals > max(vals.max(), 1e-30) * 1e-9
        vals, vecs = vals[keep], vecs[:, keep]
        basis = ((vecs.T @ xs) / np.sqrt(vals)[:, None]).astype(np.float32)   # orthonormal rows (r, D)
        xs = (vecs * np.sqrt(vals)).astype(np.float32)                          # = xs @ basis.T
    if c is None:
        grid = (0.1, 1.0, 10.0, 100.0)
        counts = np.bincount(ys)
        folds = int(min(3, counts[counts > 0].min()))
        if folds < 2:
            c = 1.0
        else:
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            scores = []
            for cand in grid:
                acc = []
                for tr, te in cv.split(xs, ys):
                    if len(np.unique(ys[tr])) < 2:
                        continue
                    m = LogisticRegression(C=cand, max_iter=300).fit(xs[tr], ys[tr])
                    acc.append(float((m.predict(xs[te]) == ys[te]).mean()))
                scores.append(np.mean(acc) if acc else 0.0)
            c = grid[int(np.argmax(scores))]
    model = LogisticRegression(C=c, max_iter=500).fit(xs, ys)
    coef = model.coef_ if basis is None else model.coef_ @ basis
    coef = coef / np.sqrt(np.asarray(x).shape[1])
    if len(present) == 2 and coef.shape[0] == 1:  # sklearn's binary form: one row for class 1
        coef = np.vstack([-coef / 2, coef / 2])
        inter = np.array([-model.intercept_[0] / 2, model.intercept_[0] / 2])
    else:
        inter = model.intercept_
    for row, cls in enumerate(model.classes_):
        weight[cls] = coef[row]
        bias[cls] = inter[row]
    return weight, bias, float(c)


def fit_ridge_classifier(x: np.ndarray, labels: np.ndarray, n_classes: int, *, alpha: float | None = None
                         ) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares classifier on +-1 class indicators, penalty by GCV: (weight C x D, bias C, alpha).

    Closed form (one SVD of the rows), so it is cheap enough to run for every cell of a benchmark;
    its scores are not probabilities (softmax them for "soft" predictions). GCV counts distinct rows
    (see `gcv_ridge`): on ternary vectors with n below D, counting a repeated text twice made GCV pick
    a near-interpolating penalty and cost up to 7 points (issue 17, benches/results/space.json)."""
    from .align import gcv_ridge

    ys = np.asarray(labels, dtype=np.int64)
    target = -np.ones((len(ys), n_classes))
    target[np.arange(len(ys)), ys] = 1.0
    w, x_mean, y_mean, chosen = gcv_ridge(np.asarray(x, dtype=np.float64), target, alpha)
    bias = y_mean - x_mean @ w
    return w.T.astype(np.float32), bias.astype(np.float32), chosen


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise KnowledgeError(f"{name} has non-finite values")
    return arr


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    cls = tuple(classes)
    if not 1 <= len(cls) <= MAX_CLASSES:
        raise KnowledgeError(f"{len(cls)} classes, expected 1..{MAX_CLASSES}")
    if len(set(cls)) != len(cls):
        raise KnowledgeError("class names repeat")
    return cls


@dataclass(frozen=True)
class LinearKnowledge:
    classes: tuple[str, ...]
    weight: np.ndarray   # (C, D) float32
    bias: np.ndarray     # (C,) float32
    labels: str = "gold"

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, labels_kind: str = "gold",
            c: float | None = None, seed: int = 0, probe: str = "logistic") -> LinearKnowledge:
        """`probe` "logistic" (fit_linear) or "ridge" (fit_ridge_classifier)."""
        if probe == "ridge":
            w, b, _ = fit_ridge_classifier(vectors, labels, len(classes))
        else:
            w, b, _ = fit_linear(vectors, labels, len(classes), c=c, seed=seed)
        return cls(tuple(classes), w, b, labels_kind)

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float32) @ self.weight.T + self.bias

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        return self.logits(vectors).argmax(axis=1)

    def to_body(self, topic: str, task: str, *, half: bool = False) -> Knowledge:
        dt = np.float16 if half else np.float32
        return Knowledge(topic=topic, task=task, form="linear", classes=self.classes,
                         weight=Tensor.from_array(self.weight.astype(dt)),
                         bias=Tensor.from_array(self.bias.astype(dt)), meta={"labels": self.labels})


@dataclass(frozen=True)
class PrototypeKnowledge:
    classes: tuple[str, ...]
    prototypes: np.ndarray   # (C, D) int8 ternary
    labels: str = "gold"

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, labels_kind: str = "gold",
            sparsity: float | None = None) -> PrototypeKnowledge:
        v = np.asarray(vectors)
        y = np.asarray(labels)
        protos = np.zeros((len(classes), v.shape[1]), dtype=np.int8)
        for k in range(len(classes)):
            if np.any(y == k):
                # subtract the grand mean so the bundle keeps what is specific to the class
                protos[k] = bundle(v[y == k].astype(np.float32) - v.mean(axis=0), sparsity=sparsity)
        return cls(tuple(classes), protos, labels_kind)

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        return cosine(vectors, self.prototypes).argmax(axis=1)

    def to_body(self, topic: str, task: str, space: Space) -> Knowledge:
        block = VectorBlock.from_trits(self.prototypes, space.space_id)
        return Knowledge(topic=topic, task=task, form="prototypes", classes=self.classes, vectors=block,
                         meta={"labels": self.labels})


@dataclass(frozen=True)
class PredictionKnowledge:
    classes: tuple[str, ...]
    predictions: np.ndarray   # (N,) int32 hard, or (N, C) float32 soft
    anchor_hash: bytes
    labels: str = "teacher"

    @property
    def soft(self) -> bool:
        return self.predictions.ndim == 2

    def hard_labels(self) -> np.ndarray:
        return self.predictions.argmax(axis=1) if self.soft else self.predictions.astype(np.int64)

    def to_body(self, topic: str, task: str, *, half: bool = False) -> Knowledge:
        p = self.predictions
        arr = p.astype(np.float16 if half else np.float32) if self.soft else p.astype(np.int32)
        return Knowledge(topic=topic, task=task, form="predictions", classes=self.classes,
                         predictions=Tensor.from_array(arr), anchor_hash=self.anchor_hash,
                         meta={"labels": self.labels})


@dataclass(frozen=True)
class LabeledVectors:
    classes: tuple[str, ...]
    vectors: np.ndarray   # (N, D) int8 ternary
    labels: np.ndarray    # (N,) class ids
    labels_kind: str = "gold"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_body(self, topic: str, space: Space) -> Vectors:
        block = VectorBlock.from_trits(self.vectors, space.space_id)
        return Vectors(topic=topic, vectors=block, labels=tuple(int(v) for v in self.labels),
                       meta={"classes": list(self.classes), "labels": self.labels_kind})


KnowledgeForm = LinearKnowledge | PrototypeKnowledge | PredictionKnowledge


def from_body(body: Knowledge, *, space: Space, expected_anchor_hash: bytes | None = None,
              anchor_count: int | None = None) -> KnowledgeForm:
    """Turn a received `knowledge` body into a usable form, refusing what does not fit this receiver."""
    classes = _check_classes(body.classes)
    c = len(classes)
    meta = body.meta if isinstance(body.meta, dict) else {}
    labels_kind = meta.get("labels", "gold")
    if labels_kind not in ("gold", "teacher"):
        raise KnowledgeError(f"meta.labels must be 'gold' or 'teacher', got {labels_kind!r}")
    if body.form == "linear":
        if body.weight is None:
            raise KnowledgeError("linear knowledge without a weight")
        w = _finite("weight", body.weight.to_array().astype(np.float32))
        if w.shape != (c, space.dim):
            raise KnowledgeError(f"weight shape {w.shape} does not fit {c} classes in a {space.dim}-d space")
        b = np.zeros(c, np.float32) if body.bias is None else _finite("bias", body.bias.to_array().astype(np.float32))
        if b.shape != (c,):
            raise KnowledgeError(f"bias shape {b.shape}, expected ({c},)")
        return LinearKnowledge(classes, w, b, labels_kind)
    if body.form == "prototypes":
        if body.vectors is None:
            raise KnowledgeError("prototype knowledge without vectors")
        if body.vectors.space != space.space_id:
            raise KnowledgeError(f"prototypes live in space {body.vectors.space.hex()}, expected {space.space_id.hex()}")
        if body.vectors.dim != space.dim or body.vectors.count != c:
            raise KnowledgeError(f"prototypes are {body.vectors.count} x {body.vectors.dim}, expected {c} x {space.dim}")
        return PrototypeKnowledge(classes, body.vectors.to_trits(), labels_kind)
    if body.form == "predictions":
        if body.predictions is None:
            raise KnowledgeError("prediction knowledge without predictions")
        if expected_anchor_hash is not None and body.anchor_hash != expected_anchor_hash:
            raise KnowledgeError("anchor hash mismatch: the predictions are for another anchor set")
        p = body.predictions.to_array()
        if anchor_count is not None and p.shape[0] != anchor_count:
            raise KnowledgeError(f"{p.shape[0]} predictions for {anchor_count} anchors")
        if p.ndim == 1:
            hard = p.astype(np.int64)
            if hard.size and (hard.min() < 0 or hard.max() >= c):
                raise KnowledgeError(f"hard predictions outside 0..{c - 1}")
            preds: np.ndarray = hard.astype(np.int32)
        else:
            preds = _finite("predictions", p.astype(np.float32))
            if preds.shape[1] != c:
                raise KnowledgeError(f"soft predictions have {preds.shape[1]} columns for {c} classes")
        return PredictionKnowledge(classes, preds, body.anchor_hash or b"", labels_kind)
    raise KnowledgeError(f"unknown knowledge form {body.form!r}")
