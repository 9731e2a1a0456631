"""Each aligner recovers a known map between synthetic spaces, from anchors only."""

from __future__ import annotations

import numpy as np
import pytest

from meshnode.hdc.align import ALIGNERS, CCAAligner, ContrastiveAligner, fit_wire_honest, make_aligner
from meshnode.hdc.space import Space, cosine


def _pairs(n: int, d_s: int, d_t: int, seed: int, noise: float = 0.0,
           orthogonal: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Student points x, a hidden map m, and y = x @ m + offset (+ noise). Low-rank latent so CCA has structure."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 12)) @ rng.standard_normal((12, d_s)) + 0.1 * rng.standard_normal((n, d_s))
    if orthogonal:
        q, _ = np.linalg.qr(rng.standard_normal((max(d_s, d_t), max(d_s, d_t))))
        m = q[:d_s, :d_t]
    else:
        m = rng.standard_normal((d_s, d_t)) / np.sqrt(d_s)
    y = latent @ m + 3.0 + noise * rng.standard_normal((n, d_t))
    return latent, y, m


def _recovery(method: str, x: np.ndarray, y: np.ndarray, x_new: np.ndarray, y_new: np.ndarray, **kw) -> float:
    aligner = make_aligner(method, **kw).fit(x, y)
    pred = aligner.transform(x_new)
    return float(np.diag(cosine(pred - y.mean(0), y_new - y.mean(0))).mean())


@pytest.mark.parametrize("method", ["ridge", "cca", "procrustes"])
def test_linear_aligners_recover_a_known_map(method: str) -> None:
    x, y, _ = _pairs(600, 24, 40, seed=0, noise=0.01, orthogonal=(method == "procrustes"))
    x_new, y_new = x[500:], y[500:]
    assert _recovery(method, x[:500], y[:500], x_new, y_new) > 0.98


def test_procrustes_recovers_rotation_exactly_up_to_scale() -> None:
    x, y, m = _pairs(300, 16, 16, seed=1, orthogonal=True)
    a = make_aligner("procrustes").fit(x, y)
    np.testing.assert_allclose(a.transform(x[:5]), y[:5], atol=1e-4)
    np.testing.assert_allclose(a.rotation, m, atol=1e-6)


def test_ridge_picks_a_penalty_by_gcv_and_fits() -> None:
    x, y, m = _pairs(500, 20, 30, seed=2, noise=0.5)
    a = make_aligner("ridge").fit(x[:400], y[:400])
    assert a.alpha_ > 0
    clean = x[400:] @ m + 3.0                      # the noise-free truth on new points
    err = np.linalg.norm(a.transform(x[400:]) - clean) / np.linalg.norm(clean - clean.mean(0))
    assert err < 0.15


def test_cca_reports_correlations_for_a_shared_latent() -> None:
    x, y, _ = _pairs(500, 20, 30, seed=3, noise=0.01)
    a = CCAAligner(components=12, reg=1e-3).fit(x, y)
    assert a.correlations is not None and a.correlations.min() > 0.9
    # regularisation shrinks the correlations of low-variance directions, never raises them
    shrunk = CCAAligner(components=12, reg=1.0).fit(x, y).correlations
    assert shrunk is not None and np.all(shrunk <= a.correlations + 1e-9)


def test_contrastive_recovers_map_and_reports_steps() -> None:
    x, y, _ = _pairs(300, 16, 24, seed=4, noise=0.01)
    a = ContrastiveAligner(hidden=32, max_steps=400, patience=30, seed=0)
    a.fit(x[:200], y[:200])
    assert 0 < a.steps_ <= 400
    pred = a.transform(x[200:])
    assert float(np.diag(cosine(pred - y.mean(0), y[200:] - y.mean(0))).mean()) > 0.9


def test_none_requires_equal_widths() -> None:
    x, y, _ = _pairs(50, 8, 8, seed=5)
    assert make_aligner("none").fit(x, y).transform(x).shape == x.shape
    with pytest.raises(ValueError):
        make_aligner("none").fit(x, np.zeros((50, 9)))


def test_wire_honest_fit_from_ternary_targets_finds_the_teacher_vectors() -> None:
    # teacher: t = x @ m (another width), encoded into a shared space as ternary; the student only
    # has its own x and those trits, and must land near the teacher's encoding of new texts
    x, t, _ = _pairs(700, 32, 48, seed=6)
    space = Space(seed=11, dim=2048)
    trits = space.encode(t, center=t[:500].mean(0))
    for method in ("ridge", "cca", "procrustes"):
        a = fit_wire_honest(method, x[:500], trits[:500])
        pred = a.transform(x[500:])
        sims = cosine(pred, trits[500:])
        # nearest teacher vector is the right one for nearly every new text
        assert (sims.argmax(axis=1) == np.arange(200)).mean() > 0.9, method


def test_wire_honest_refuses_non_ternary_targets() -> None:
    with pytest.raises(ValueError):
        fit_wire_honest("ridge", np.zeros((4, 3)), np.full((4, 5), 0.5))


def test_aligners_refuse_bad_input() -> None:
    with pytest.raises(ValueError):
        make_aligner("nope")
    for method in ALIGNERS:
        with pytest.raises(ValueError):
            make_aligner(method).fit(np.zeros((5, 3)), np.zeros((4, 3)))
        with pytest.raises(ValueError):
            make_aligner(method).fit(np.full((5, 3), np.nan), np.zeros((5, 3)))


def test_procrustes_factored_form_matches_the_direct_solution() -> None:
    # two wide sides (the HDC-to-HDC case) take the low-rank route; same map on the data as the
    # direct SVD of the cross matrix
    from meshnode.hdc.align import ProcrustesAligner

    rng = np.random.default_rng(8)
    x = rng.standard_normal((60, 300))
    y = x @ rng.standard_normal((300, 400)) + 0.1 * rng.standard_normal((60, 400))
    wide = ProcrustesAligner(direct_max_entries=0).fit(x, y)
    assert wide.left.shape[1] <= 60
    xc = (x - x.mean(0)) / np.linalg.norm(x - x.mean(0))
    yc = (y - y.mean(0)) / np.linalg.norm(y - y.mean(0))
    u, _, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
    direct = xc @ (u @ vt)
    np.testing.assert_allclose(xc @ wide.left @ wide.right, direct, atol=1e-8)
