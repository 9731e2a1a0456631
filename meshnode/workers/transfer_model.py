"""The transfer worker's learning, as plain blocking functions (the worker runs them off the event loop).

Teacher: embed anchors and its labeled set, centre with the mean of its own anchor embeddings (a
local, unlabeled statistic), encode both as ternary vectors of the shared space, train a probe on the
labeled vectors, and derive every knowledge form from it: the linear probe itself, class prototypes,
and its (soft or hard) predictions on the anchors.

Student, one of two routes (`alignment`):
- "anchor-labels": no map at all. The student encodes the anchors in the shared space with its own
  model and fits its own ridge probe onto the teacher's predictions for them (soft scores by
  regression, hard labels by a ridge classifier). Needs only the predictions (N x C numbers).
- a map ("ridge", "cca", "procrustes", "contrastive", "none"): fitted from the student's anchor
  embeddings to the teacher's *ternary* anchor vectors as received (wire-honest); a new text is
  mapped, ternarised and scored by the teacher's linear probe (or prototypes).
This mirrors benches/bench_transfer.py (arms "anchors-soft" / "anchors-teacher" and the map methods).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hdc.align import Aligner, fit_wire_honest, gcv_ridge
from ..hdc.knowledge import (
    LinearKnowledge,
    PredictionKnowledge,
    PrototypeKnowledge,
    fit_ridge_classifier,
    softmax,
)
from ..hdc.space import Space, anchor_whitening, cosine, ternarize

__all__ = [
    "ALIGNMENTS",
    "ANCHOR_LABELS",
    "MAP_METHODS",
    "StudentFit",
    "TeacherFit",
    "accuracy_against",
    "fit_student",
    "fit_teacher",
    "fit_teacher_from_predictions",
    "space_encoder",
    "taught_targets",
]

ANCHOR_LABELS = "anchor-labels"
MAP_METHODS = ("ridge", "cca", "procrustes", "contrastive", "none")
ALIGNMENTS = (ANCHOR_LABELS, *MAP_METHODS)


def space_encoder(space: Space, anchor_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(center, whitening) with which this node encodes its embeddings in `space`, from its own anchor
    embeddings (local, unlabeled statistics that never travel): the anchor mean, and for encoder
    version 2 the partial whitening of hdc.space.anchor_whitening (None for version 1)."""
    if space.version >= 2:
        return anchor_whitening(anchor_emb)
    return np.asarray(anchor_emb).mean(axis=0), None


@dataclass(frozen=True)
class TeacherFit:
    center: np.ndarray                 # (d,) mean of the teacher's anchor embeddings
    anchor_trits: np.ndarray           # (N, D) int8
    linear: LinearKnowledge
    forms: dict[str, Any]              # form name -> knowledge object to publish
    train_accuracy: float
    whiten: np.ndarray | None = None   # (d, d) encoder version 2's anchor whitening

    def scores(self, space: Space, emb: np.ndarray, tau: float) -> np.ndarray:
        return self.linear.logits(space.encode(emb, center=self.center, tau=tau, whiten=self.whiten))


def fit_teacher(space: Space, tau: float, anchor_emb: np.ndarray, anchor_hash: bytes, train_emb: np.ndarray,
                labels: np.ndarray, classes: Sequence[str], *, probe: str, forms: Sequence[str],
                predictions: str, seed: int = 0) -> TeacherFit:
    center, whiten = space_encoder(space, anchor_emb)
    anchors = space.encode(anchor_emb, center=center, tau=tau, whiten=whiten)
    train = space.encode(train_emb, center=center, tau=tau, whiten=whiten)
    linear = LinearKnowledge.fit(train, labels, classes, labels_kind="gold", probe=probe, seed=seed)
    out: dict[str, Any] = {}
    for form in forms:
        if form == "linear":
            out[form] = linear
        elif form == "prototypes":
            out[form] = PrototypeKnowledge.fit(train, labels, classes, labels_kind="gold")
        elif form == "predictions":
            logits = linear.logits(anchors)
            preds = softmax(logits) if predictions == "soft" else logits.argmax(axis=1).astype(np.int32)
            # the labels behind these are the teacher's own predictions, whatever trained the probe
            out[form] = PredictionKnowledge(tuple(classes), preds, anchor_hash, labels="teacher")
        else:
            raise ValueError(f"unknown knowledge form {form!r}")
    acc = float((linear.predict(train) == labels).mean()) if len(labels) else float("nan")
    return TeacherFit(center, anchors, linear, out, acc, whiten)


def fit_teacher_from_predictions(probs: np.ndarray, classes: Sequence[str], anchor_hash: bytes,
                                 anchor_trits: np.ndarray | None, center: np.ndarray | None, *,
                                 forms: Sequence[str], predictions: str,
                                 whiten: np.ndarray | None = None) -> TeacherFit:
    """A teacher whose knowledge is a fine-tuned model's class probabilities on the anchors (a trainer
    worker's synchronised adapter), not a probe on labelled data. `predictions` are those
    probabilities; `linear` (for students with a map) is a ridge probe from the teacher's frozen
    ternary anchor vectors onto them, `prototypes` the bundled anchor vectors of each predicted class."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or not np.isfinite(probs).all():
        raise ValueError(f"predictions of shape {probs.shape} for {len(classes)} classes, or not finite")
    hard = probs.argmax(axis=1)
    out: dict[str, Any] = {}
    linear: LinearKnowledge | None = None
    needs_vectors = [f for f in forms if f in ("linear", "prototypes")]
    if needs_vectors and anchor_trits is None:
        raise ValueError(f"forms {needs_vectors} need the teacher's anchor vectors")
    for form in forms:
        if form == "predictions":
            preds = probs.astype(np.float32) if predictions == "soft" else hard.astype(np.int32)
            out[form] = PredictionKnowledge(tuple(classes), preds, anchor_hash, labels="teacher")
        elif form == "linear":
            assert anchor_trits is not None
            w, x_mean, y_mean, _ = gcv_ridge(anchor_trits.astype(np.float64), probs)
            linear = LinearKnowledge(tuple(classes), w.T.astype(np.float32), (y_mean - x_mean @ w).astype(np.float32),
                                     "teacher")
            out[form] = linear
        elif form == "prototypes":
            assert anchor_trits is not None
            out[form] = PrototypeKnowledge.fit(anchor_trits, hard, classes, labels_kind="teacher")
        else:
            raise ValueError(f"unknown knowledge form {form!r}")
    if linear is None:   # TeacherFit wants a probe; without vectors this one is never used to score
        linear = LinearKnowledge(tuple(classes), np.zeros((len(classes), 1), np.float32),
                                 np.zeros(len(classes), np.float32), "teacher")
    trits = anchor_trits if anchor_trits is not None else np.zeros((0, 0), np.int8)
    return TeacherFit(center if center is not None else np.zeros(0, np.float32), trits, linear, out, float("nan"),
                      whiten)


def taught_targets(knowledge: dict[str, Any], fit: StudentFit, anchor_emb: np.ndarray | None,
                   pool_emb: np.ndarray | None, *, hard: bool = True) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """What a student hands its learner: (N, C) targets for the anchors — the teacher's predictions
    (its scores when they are soft and `hard` is False, else one-hot of its predicted class), else the
    student's fitted route's one-hot labels — and, with a map and a pool, one-hot pseudo-labels of the
    pool through that route (bench_distill's aligned arm); and whether the anchors' targets are scores."""
    c = len(fit.classes)
    pk = knowledge.get("predictions")
    if isinstance(pk, PredictionKnowledge) and tuple(pk.classes) == tuple(fit.classes):
        soft = pk.soft and not hard
        anchors = pk.predictions.astype(np.float32) if soft else np.eye(c, dtype=np.float32)[pk.hard_labels()]
    elif anchor_emb is not None:
        soft = False
        anchors = np.eye(c, dtype=np.float32)[fit.predict(anchor_emb)]
    else:
        raise ValueError("no teacher predictions and no anchor embeddings to label the anchors with")
    pool = np.eye(c, dtype=np.float32)[fit.predict(pool_emb)] if pool_emb is not None and len(pool_emb) else None
    return anchors, pool, bool(soft)


@dataclass
class StudentFit:
    """A student's classifier: raw embeddings of its own model in, class scores out."""

    alignment: str
    classes: tuple[str, ...]
    form: str                           # the teacher knowledge it uses
    space: Space
    tau: float
    center: np.ndarray | None = None    # anchor-labels: the student's own anchor mean
    whiten: np.ndarray | None = None    # anchor-labels, encoder version 2: its own anchor whitening
    weight: np.ndarray | None = None    # (C, D): anchor-labels probe, or the teacher's linear probe
    bias: np.ndarray | None = None
    prototypes: np.ndarray | None = None
    aligner: Aligner | None = None

    @property
    def has_route(self) -> bool:
        """False for a learner's student that keeps only the teacher's labels (no frozen model loaded)."""
        return self.prototypes is not None or self.weight is not None

    def scores(self, emb: np.ndarray) -> np.ndarray:
        if not self.has_route:
            raise ValueError("this student keeps no frozen route: its learner answers")
        if self.alignment == ANCHOR_LABELS:
            x = self.space.encode(emb, center=self.center, tau=self.tau, whiten=self.whiten)
        else:
            assert self.aligner is not None
            x = ternarize(self.aligner.transform(emb), self.tau)
        if self.prototypes is not None:
            return cosine(x, self.prototypes)
        assert self.weight is not None and self.bias is not None
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias

    def predict(self, emb: np.ndarray) -> np.ndarray:
        return self.scores(emb).argmax(axis=1)


def fit_student(alignment: str, space: Space, tau: float, anchor_emb: np.ndarray | None, *,
                knowledge: dict[str, Any], teacher_anchors: np.ndarray | None, seed: int = 0) -> StudentFit:
    """Fit the student's classifier from what one teacher sent (`knowledge`: form -> hdc knowledge).
    Without `anchor_emb` (anchor-labels only) the fit keeps the teacher's labels and no route."""
    if alignment == ANCHOR_LABELS:
        pk = knowledge.get("predictions")
        if not isinstance(pk, PredictionKnowledge):
            raise ValueError("anchor-labels needs the teacher's predictions on the anchors")
        if anchor_emb is None:
            return StudentFit(alignment, pk.classes, "predictions", space, tau)
        center, whiten = space_encoder(space, anchor_emb)
        x = space.encode(anchor_emb, center=center, tau=tau, whiten=whiten).astype(np.float64)
        if pk.soft:
            w, x_mean, y_mean, _ = gcv_ridge(x, pk.predictions.astype(np.float64))
            weight = w.T.astype(np.float32)
            bias = (y_mean - x_mean @ w).astype(np.float32)
        else:
            weight, bias, _ = fit_ridge_classifier(x, pk.hard_labels(), len(pk.classes))
        return StudentFit(alignment, pk.classes, "predictions", space, tau, center=center, whiten=whiten,
                          weight=weight, bias=bias)
    if alignment not in MAP_METHODS:
        raise ValueError(f"unknown alignment {alignment!r}; known: {', '.join(ALIGNMENTS)}")
    if teacher_anchors is None or anchor_emb is None:
        raise ValueError(f"alignment {alignment!r} needs the teacher's anchor vectors and this model's")
    params = {"seed": seed} if alignment == "contrastive" else {}
    aligner = fit_wire_honest(alignment, anchor_emb, teacher_anchors, **params)
    lk = knowledge.get("linear")
    if isinstance(lk, LinearKnowledge):
        return StudentFit(alignment, lk.classes, "linear", space, tau, weight=lk.weight, bias=lk.bias, aligner=aligner)
    pr = knowledge.get("prototypes")
    if isinstance(pr, PrototypeKnowledge):
        return StudentFit(alignment, pr.classes, "prototypes", space, tau, prototypes=pr.prototypes, aligner=aligner)
    raise ValueError(f"alignment {alignment!r} needs the teacher's linear probe or prototypes")


def accuracy_against(predicted: np.ndarray, model_classes: Sequence[str], gold: np.ndarray,
                     gold_classes: Sequence[str]) -> float:
    """Accuracy of class ids in `model_classes` order against gold ids in `gold_classes` order (by name)."""
    index = {name: i for i, name in enumerate(gold_classes)}
    mapped = np.array([index.get(model_classes[int(p)], -1) for p in predicted], dtype=np.int64)
    return float((mapped == np.asarray(gold)).mean()) if len(gold) else float("nan")
