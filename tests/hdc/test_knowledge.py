"""Knowledge forms: fitting, prediction, and the wire round trip (including hostile bodies)."""

from __future__ import annotations

import numpy as np
import pytest

from meshnode.hdc.knowledge import (
    KnowledgeError,
    LabeledVectors,
    LinearKnowledge,
    PredictionKnowledge,
    PrototypeKnowledge,
    anchor_hash,
    fit_linear,
    from_body,
)
from meshnode.hdc.space import Space
from meshnode.wire.errors import WireError
from meshnode.wire.packet import Knowledge, Signer, Tensor, decode_packet, encode_packet

CLASSES = ("neg", "pos", "mixed")
SPACE = Space(seed=5, dim=512)


def _task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ternary vectors of three separable classes."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 20)) * 2
    labels = rng.integers(0, 3, n)
    x = centers[labels] + rng.standard_normal((n, 20))
    return SPACE.encode(x), labels


def _round_trip(body):
    signer = Signer.generate()
    return decode_packet(encode_packet(body, signer)).body


def test_linear_knowledge_classifies_and_survives_the_wire() -> None:
    x, y = _task(400, 0)
    k = LinearKnowledge.fit(x[:300], y[:300], CLASSES)
    assert (k.predict(x[300:]) == y[300:]).mean() > 0.9
    got = from_body(_round_trip(k.to_body("t", "sst2")), space=SPACE)
    assert isinstance(got, LinearKnowledge)
    np.testing.assert_array_equal(got.predict(x[300:]), k.predict(x[300:]))
    half = from_body(_round_trip(k.to_body("t", "sst2", half=True)), space=SPACE)
    assert (half.predict(x[300:]) == k.predict(x[300:])).mean() > 0.98


def test_fit_linear_in_the_span_equals_the_full_fit() -> None:
    # D > N takes the representer-theorem shortcut; compare with sklearn on the raw features
    from sklearn.linear_model import LogisticRegression

    x, y = _task(60, 1)
    w, b, _ = fit_linear(x, y, 3, c=1.0)
    xs = x / np.sqrt(x.shape[1])
    ref = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit(xs, y)
    # equal up to the solvers' tolerance (logits are O(1))
    np.testing.assert_allclose(x @ w.T + b, xs @ ref.coef_.T + ref.intercept_, atol=1e-2)


def test_prototypes_classify_and_round_trip() -> None:
    x, y = _task(400, 2)
    k = PrototypeKnowledge.fit(x[:300], y[:300], CLASSES)
    assert (k.predict(x[300:]) == y[300:]).mean() > 0.9
    got = from_body(_round_trip(k.to_body("t", "sst2", SPACE)), space=SPACE)
    np.testing.assert_array_equal(got.prototypes, k.prototypes)
    with pytest.raises(KnowledgeError, match="space"):
        from_body(k.to_body("t", "sst2", SPACE), space=Space(seed=6, dim=512))


def test_predictions_hard_and_soft_bound_to_the_anchor_set() -> None:
    anchors = ["a", "b", "c", "d"]
    h = anchor_hash(anchors)
    assert h != anchor_hash(["ab", "c", "d"]) and len(h) == 32
    soft = PredictionKnowledge(CLASSES, np.full((4, 3), 1 / 3, np.float32), h)
    hard = PredictionKnowledge(CLASSES, np.array([0, 2, 1, 0], np.int32), h)
    for k in (soft, hard):
        got = from_body(_round_trip(k.to_body("t", "sst2")), space=SPACE, expected_anchor_hash=h, anchor_count=4)
        np.testing.assert_array_equal(got.predictions, k.predictions)
        with pytest.raises(KnowledgeError, match="anchor hash"):
            from_body(k.to_body("t", "sst2"), space=SPACE, expected_anchor_hash=anchor_hash(["x"]))
        with pytest.raises(KnowledgeError, match="anchors"):
            from_body(k.to_body("t", "sst2"), space=SPACE, anchor_count=5)
    assert list(hard.hard_labels()) == [0, 2, 1, 0]


@pytest.mark.parametrize("body", [
    Knowledge("t", "x", "linear", CLASSES, weight=Tensor.from_array(np.zeros((3, 100), np.float32))),
    Knowledge("t", "x", "linear", CLASSES, weight=Tensor.from_array(np.full((3, 512), np.nan, np.float32))),
    Knowledge("t", "x", "predictions", CLASSES, predictions=Tensor.from_array(np.array([0, 3], np.int32))),
    Knowledge("t", "x", "predictions", CLASSES, predictions=Tensor.from_array(np.ones((2, 2), np.float32))),
    Knowledge("t", "x", "linear", ("a", "a", "b"), weight=Tensor.from_array(np.zeros((3, 512), np.float32))),
    Knowledge("t", "x", "linear", CLASSES, weight=Tensor.from_array(np.zeros((3, 512), np.float32)),
              meta={"labels": "oracle"}),
    Knowledge("t", "x", "guess", CLASSES),
])
def test_hostile_knowledge_is_refused_with_a_wire_error(body: Knowledge) -> None:
    with pytest.raises(WireError):
        from_body(body, space=SPACE)


def test_labeled_vectors_travel_as_a_vectors_body() -> None:
    x, y = _task(20, 3)
    body = LabeledVectors(CLASSES, x, y, "teacher").to_body("t", SPACE)
    got = _round_trip(body)
    np.testing.assert_array_equal(got.vectors.to_trits(), x)
    assert list(got.labels) == list(y) and got.meta["labels"] == "teacher"


def test_ridge_classifier_probe_separates_classes() -> None:
    x, y = _task(400, 4)
    k = LinearKnowledge.fit(x[:300], y[:300], CLASSES, probe="ridge")
    assert (k.predict(x[300:]) == y[300:]).mean() > 0.9
    assert k.weight.shape == (3, SPACE.dim) and k.bias.shape == (3,)
