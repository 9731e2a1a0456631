"""The ridge probe's penalty near n ~ D, and a space of another encoder version on the wire (issue 17)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from meshnode.hdc.align import gcv_ridge
from meshnode.hdc.knowledge import LinearKnowledge, anchor_hash, fit_ridge_classifier
from meshnode.hdc.space import ENCODER_VERSION, Space, ternarize
from meshnode.workers.transfer_protocol import (
    Expectation,
    TransferRefused,
    check_knowledge,
    knowledge_bodies,
    with_digest,
)


def _ternary_task(n: int = 400, d: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ternary HDC-like features with n < D (the regime of a probe on D = 10000 vectors), 2 classes."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 16))
    labels = (z[:, 0] + 0.7 * rng.standard_normal(n) > 0).astype(np.int64)
    t = ternarize(z @ rng.standard_normal((16, d)), 0.3).astype(np.float64)
    return t, np.where(labels[:, None] == np.arange(2), 1.0, -1.0), labels


def _grid_scale(x: np.ndarray) -> float:
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return float((s[s > s[0] * 1e-6] ** 2).mean())


def test_one_duplicate_row_does_not_send_the_penalty_to_the_grid_floor() -> None:
    # v1 counted both copies in GCV: the fit interpolates, RSS -> 0 while n - 1 - df stays 1, so GCV
    # picked the smallest penalty (1e-4 x scale) and the probe lost 7 points on SST-2 at n = 4000
    x, y, _ = _ternary_task()
    _, _, _, alone = gcv_ridge(x, y)
    x2, y2 = np.vstack([x, x[:1]]), np.vstack([y, y[:1]])
    _, _, _, with_dup = gcv_ridge(x2, y2)
    assert with_dup > 1e-2 * _grid_scale(x2)
    assert 0.5 < with_dup / alone < 2.0


def test_merging_duplicates_keeps_the_ridge_solution_of_all_rows() -> None:
    x, y, _ = _ternary_task(n=120, d=200, seed=1)
    x = np.vstack([x, x[:5], x[:2]])
    y = np.vstack([y, -y[:5], y[:2]])        # copies with the other label too: their targets average
    alpha = 3.0
    w, x_mean, y_mean, chosen = gcv_ridge(x, y, alpha)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    direct = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    assert chosen == alpha
    np.testing.assert_allclose(w, direct, atol=1e-8)
    np.testing.assert_allclose(x_mean, x.mean(axis=0))
    np.testing.assert_allclose(y_mean, y.mean(axis=0))


def test_ridge_probe_with_repeated_texts_classifies_like_without() -> None:
    x, _, labels = _ternary_task(n=600, d=600, seed=2)
    train, test = np.arange(400), np.arange(400, 600)
    dup = np.r_[train, train[:10]]                       # 10 texts twice, as in a real train set
    w, b, _ = fit_ridge_classifier(x[dup], labels[dup], 2)
    w0, b0, _ = fit_ridge_classifier(x[train], labels[train], 2)
    acc = float(((x[test] @ w.T + b).argmax(axis=1) == labels[test]).mean())
    acc0 = float(((x[test] @ w0.T + b0).argmax(axis=1) == labels[test]).mean())
    assert acc0 > 0.7 and acc >= acc0 - 0.02


def _exp() -> Expectation:
    texts = [f"text {i}" for i in range(50)]
    return Expectation("keywords", Space(seed=7, dim=256), "a", len(texts), anchor_hash(texts))


def test_knowledge_from_a_space_of_another_encoder_version_is_refused_naming_both() -> None:
    exp = _exp()
    rng = np.random.default_rng(1)
    linear = LinearKnowledge(("a", "b"), rng.normal(size=(2, 256)).astype(np.float32), np.zeros(2, np.float32))
    body = with_digest(knowledge_bodies("transfer/keywords", exp, {"linear": linear}, half=False, info={}),
                       bytes(16))[0]
    assert check_knowledge(body, exp).form == "linear"      # the same space is accepted
    # what a node on encoder version 2 sends for the same seed and D: its version and its space id
    v2 = Space(seed=7, dim=256, version=2)
    claimed = {**body.meta["space"], "version": 2, "id": v2.space_id}
    foreign = dataclasses.replace(body, meta={**body.meta, "space": claimed})
    with pytest.raises(TransferRefused) as e:
        check_knowledge(foreign, exp)
    # the code is what the worker counts (refused.space_mismatch); the detail names both versions
    assert e.value.code == "space_mismatch"
    assert "version 2" in e.value.detail and "version 1" in e.value.detail
    # and the other way round: a version-2 receiver refuses a version-1 sender
    exp2 = Expectation(exp.task, v2, exp.anchor_set, exp.anchor_count, exp.anchor_hash)
    with pytest.raises(TransferRefused) as e:
        check_knowledge(body, exp2)
    assert e.value.code == "space_mismatch" and "version 1" in e.value.detail and "version 2" in e.value.detail


def test_settings_refuse_an_encoder_version_this_node_lacks(tmp_path) -> None:
    from meshnode.workers.base import WorkerSettingsError
    from meshnode.workers.transfer_settings import parse_settings

    raw = {"role": "student", "task": "keywords", "model": "m", "anchors": "a.txt"}
    assert parse_settings("t", raw, base_dir=tmp_path).space_version == ENCODER_VERSION == 2
    assert parse_settings("t", {**raw, "space_version": 1}, base_dir=tmp_path).space_version == 1
    for version in (ENCODER_VERSION + 1, 0):
        with pytest.raises(WorkerSettingsError, match="space_version"):
            parse_settings("t", {**raw, "space_version": version}, base_dir=tmp_path)

