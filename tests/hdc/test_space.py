"""HDC space: deterministic projection, ternary quantisation, similarity and bundling."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from meshnode.hdc.space import Space, bundle, cosine, dot, projection, ternarize, zero_fraction

_DIGEST_SNIPPET = (
    "import hashlib; from meshnode.hdc.space import Space; "
    "print(hashlib.sha256(Space(seed=7, dim=1000).projection(48).tobytes()).hexdigest())"
)


def test_projection_is_identical_in_another_process() -> None:
    here = hashlib.sha256(Space(seed=7, dim=1000).projection(48).tobytes()).hexdigest()
    out = subprocess.run([sys.executable, "-c", _DIGEST_SNIPPET], capture_output=True, text=True, check=True,
                         timeout=60)
    assert out.stdout.strip() == here


def test_projection_shape_dtype_and_unit_columns() -> None:
    p = Space(seed=1, dim=512).projection(32)
    assert p.shape == (32, 512) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, rtol=1e-5)
    assert not p.flags.writeable
    # Gaussian-looking: mean ~0, entries ~N(0, 1/width)
    assert abs(float(p.mean())) < 0.01
    assert 0.9 < float(p.std() * np.sqrt(32)) < 1.1


def test_projection_depends_on_seed_width_and_dim() -> None:
    a = projection(1, 16, 64)
    assert not np.array_equal(a, projection(2, 16, 64))
    assert not np.array_equal(a[:8], projection(1, 8, 64))
    np.testing.assert_array_equal(a, projection(1, 16, 64))


def test_space_id_names_the_space() -> None:
    assert Space(1, 1024).space_id == Space(1, 1024).space_id
    ids = {Space(1, 1024).space_id, Space(2, 1024).space_id, Space(1, 4096).space_id}
    assert len(ids) == 3 and all(len(i) == 16 for i in ids)


@pytest.mark.parametrize("bad", [{"seed": -1, "dim": 10}, {"seed": 1, "dim": 0}, {"seed": 1, "dim": 1 << 21},
                                 {"seed": 1, "dim": 10, "version": 99}])
def test_space_refuses_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        Space(**bad)


def test_ternarize_tau_threshold_matches_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 2000)).astype(np.float32)
    t = ternarize(x, tau=0.3)
    assert t.dtype == np.int8 and set(np.unique(t)) <= {-1, 0, 1}
    thresh = 0.3 * x.std(axis=1, keepdims=True)
    np.testing.assert_array_equal(t, np.sign(x) * (np.abs(x) > thresh))
    # for Gaussian rows, P(|x| <= 0.3 sd) = 0.236
    assert abs(zero_fraction(t) - 0.236) < 0.01


@pytest.mark.parametrize("target", [0.0, 0.5, 0.7, 0.9])
def test_ternarize_sparsity_mode_hits_target(target: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 1000))
    t = ternarize(x, sparsity=target)
    per_row = 1 - np.count_nonzero(t, axis=1) / t.shape[1]
    np.testing.assert_allclose(per_row, target, atol=1e-3)


def test_ternarize_refuses_nonfinite_and_bad_sparsity() -> None:
    with pytest.raises(ValueError):
        ternarize(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        ternarize(np.ones(4), sparsity=1.0)


def test_similarity_of_ternary_vectors() -> None:
    a = np.array([[1, -1, 0, 1], [0, 0, 0, 0]], dtype=np.int8)
    b = np.array([[1, -1, 0, 1], [-1, 1, 0, -1], [1, 1, 1, 1]], dtype=np.int8)
    np.testing.assert_array_equal(dot(a, b), [[3, -3, 1], [0, 0, 0]])
    np.testing.assert_allclose(cosine(a, b), [[1, -1, 1 / (2 * np.sqrt(3))], [0, 0, 0]], atol=1e-6)


def test_encoding_preserves_neighbourhoods() -> None:
    # random projection + ternary keeps cosine order well enough that nearest neighbours survive
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    noisy = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    space = Space(seed=3, dim=4096)
    sims = cosine(space.encode(noisy), space.encode(x))
    assert (sims.argmax(axis=1) == np.arange(40)).mean() == 1.0


def test_bundle_is_closer_to_members_than_to_outsiders() -> None:
    rng = np.random.default_rng(3)
    members = ternarize(rng.standard_normal((7, 2000)))
    outsiders = ternarize(rng.standard_normal((7, 2000)))
    proto = bundle(members)
    assert cosine(proto, members).min() > 0.2 > cosine(proto, outsiders).max()
    # integer sums tie at the threshold, so the real fraction is at least the target, never far above
    assert 0.7 <= zero_fraction(bundle(members, sparsity=0.7)) < 0.75
