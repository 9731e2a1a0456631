"""The shared space is fixed by (seed, D, encoder version) alone: golden values every machine must give.

The values below were computed once (issue 17) and are hard-coded on purpose: a change to the
projection's derivation (generator, seeding, Box-Muller, column normalisation, float32 rounding) or
to ternarisation makes these fail, and such a change needs a new encoder version (protocol/SPEC.md,
"HDC spaces"), never a silent edit of version 1.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from meshnode.hdc.space import ENCODER_VERSION, WHITEN_EPS, WHITEN_POWER, Space, anchor_whitening, projection

# projection(seed=0, width=48, D=1000, version=1): the first two rows' first five entries, and the
# last row's last three (small, so the test stays fast; the derivation is the same for any size)
_ROWS = [[0.15434570610523224, 0.07465853542089462, -0.10205147415399551, -0.20336098968982697,
          0.033615048974752426],
         [-0.15157149732112885, -0.23248149454593658, 0.11516601592302322, -0.07398476451635361,
          -0.11489991098642349]]
_LAST = [-0.17192389070987701, -0.3813153803348541, 0.11367805302143097]
# Space(0, 1000).encode(cos(0.37 * arange(48)), tau 0.3): first trits, count, sum, SHA-256 of the int8 bytes
_TRITS_HEAD = [-1, 1, -1, 1, 1, -1, 1, -1, -1, 1, 0, 1, 1, -1, 0, -1, 1, -1, -1, -1, 1, 0, 0, -1, 1, 0, -1, -1,
               -1, 0, -1, 0]
_TRITS_NONZERO, _TRITS_SUM = 763, -11
_TRITS_SHA = "15997257a0408a7d3459314cee9de9034d7e836a95f67c1fcdc6cb7aa16daf9a"
_SPACE_ID = "846ac7004acb793c3fcd85b6a0d47184"


def test_version_1_projection_matches_the_golden_rows() -> None:
    p = projection(0, 48, 1000, 1)
    # exact float32 equality: the derivation promises the same bits everywhere, not "close"
    np.testing.assert_array_equal(p[:2, :5], np.array(_ROWS, dtype=np.float32))
    np.testing.assert_array_equal(p[47, -3:], np.array(_LAST, dtype=np.float32))


def test_version_1_encoding_of_one_embedding_matches_the_golden_vector() -> None:
    x = np.cos(np.arange(48, dtype=np.float32) * 0.37)
    t = Space(0, 1000, 1).encode(x, tau=0.3)[0]
    assert t[:32].tolist() == _TRITS_HEAD
    assert int(np.count_nonzero(t)) == _TRITS_NONZERO and int(t.sum()) == _TRITS_SUM
    assert hashlib.sha256(t.astype(np.int8).tobytes()).hexdigest() == _TRITS_SHA


def test_the_space_id_names_seed_dim_and_version() -> None:
    assert Space(0, 1000, 1).space_id.hex() == _SPACE_ID


def test_an_unknown_encoder_version_is_refused_naming_both_versions() -> None:
    other = ENCODER_VERSION + 1
    with pytest.raises(ValueError, match=rf"encoder version {other}.*{ENCODER_VERSION}"):
        Space(0, 10000, other)
    with pytest.raises(ValueError, match=rf"encoder version {other}"):
        projection(0, 8, 16, other)


# version 2: projection(0, 48, 1000, 2) rows, and the encoding of the same embedding after whitening
# with deterministic anchors (see _anchors)
_V2_ROWS = [[0.0014328192919492722, -0.1665946990251541, 0.3536088466644287, -0.10508288443088531,
             -0.0728006511926651],
            [-0.15060512721538544, 0.1617404669523239, -0.23577743768692017, -0.08297840505838394,
             -0.0613914392888546]]
_V2_LAST = [-0.19514751434326172, 0.27715378999710083, -0.08674328029155731]
_V2_TRITS_HEAD = [-1, 1, -1, 1, 1, 0, 1, 1, -1, 0, -1, 1, -1, -1, -1, 1, 0, -1, 1, -1, 0, 0, -1, -1, 1, 0, 0,
                  -1, 0, 0, -1, 0]
_V2_TRITS_NONZERO, _V2_TRITS_SUM = 754, 36
_V2_TRITS_SHA = "6805f76ca0638dd29a42466d31c86fd1ba1fb23bdcece04d58eaed61753f3c61"
_V2_SPACE_ID = "8de6e4a18369dd5cedea3697faa08935"


def _anchors() -> np.ndarray:
    i = np.arange(64, dtype=np.float64)[:, None]
    j = np.arange(48, dtype=np.float64)[None, :]
    return (np.cos(0.37 * i * (j + 1)) + 0.1 * j).astype(np.float32)


def test_version_2_projection_matches_the_golden_rows_and_differs_from_version_1() -> None:
    p = projection(0, 48, 1000, 2)
    np.testing.assert_array_equal(p[:2, :5], np.array(_V2_ROWS, dtype=np.float32))
    np.testing.assert_array_equal(p[47, -3:], np.array(_V2_LAST, dtype=np.float32))
    assert not np.array_equal(p, projection(0, 48, 1000, 1))


def test_version_2_encoding_of_one_embedding_matches_the_golden_vector() -> None:
    center, whiten = anchor_whitening(_anchors())
    x = np.cos(np.arange(48, dtype=np.float32) * 0.37)
    t = Space(0, 1000, 2).encode(x, center=center, whiten=whiten, tau=0.3)[0]
    assert t[:32].tolist() == _V2_TRITS_HEAD
    assert int(np.count_nonzero(t)) == _V2_TRITS_NONZERO and int(t.sum()) == _V2_TRITS_SUM
    assert hashlib.sha256(t.astype(np.int8).tobytes()).hexdigest() == _V2_TRITS_SHA
    assert Space(0, 1000, 2).space_id.hex() == _V2_SPACE_ID != Space(0, 1000, 1).space_id.hex()


def test_anchor_whitening_is_symmetric_and_shrinks_the_anchor_spectrum() -> None:
    rng = np.random.default_rng(0)
    # anisotropic anchors, like a decoder's mean-pooled states: one direction 100x the others
    x = rng.standard_normal((500, 8)) * np.array([100.0, 1, 1, 1, 1, 1, 1, 1])
    center, whiten = anchor_whitening(x)
    np.testing.assert_allclose(center, x.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whiten, whiten.T, atol=1e-6)      # ZCA: no eigenvector sign choice left in it
    cov = np.cov(((x - center) @ whiten).T)
    vals = np.linalg.eigvalsh(cov)
    lam = np.linalg.eigvalsh(np.cov(x.T))
    floor = WHITEN_EPS * lam.mean()
    np.testing.assert_allclose(np.sort(vals), np.sort(lam * (lam + floor) ** (-2 * WHITEN_POWER)), rtol=1e-3)
    assert vals.max() / vals.min() < lam.max() / lam.min() / 2   # partial whitening: flatter, not flat


def test_version_2_needs_the_whitening_and_version_1_refuses_it() -> None:
    x = np.ones((2, 48), np.float32)
    center, whiten = anchor_whitening(_anchors())
    with pytest.raises(ValueError, match="whiten"):
        Space(0, 1000, 2).encode(x, center=center)
    with pytest.raises(ValueError, match="version 1 does not whiten"):
        Space(0, 1000, 1).encode(x, center=center, whiten=whiten)
    with pytest.raises(ValueError, match="expected"):
        Space(0, 1000, 2).encode(x, center=center, whiten=whiten[:8, :8])
