"""Smoke test of benches/bench_distill.py --quick: tiny random models, synthetic texts, a few seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

pytest.importorskip("peft")
pytest.importorskip("transformers")


def test_quick_run_writes_every_arm(tmp_path: Path) -> None:
    from meshnode.models import resolve

    try:
        resolve("minilm")
    except FileNotFoundError:
        pytest.skip("offline MiniLM package (its tokenizer) not installed")
    import bench_distill

    out = tmp_path / "distill.json"
    assert bench_distill.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    arms = {r["arm"]: r for r in res["arms"]}
    assert set(arms) == {"teacher-lora", "student-frozen-ceiling", "frozen-anchors-teacher@40",
                         "frozen-anchors-soft@40", "frozen-anchors-gold@40", "student-lora-distilled@40"}
    for r in arms.values():
        assert 0.0 <= r["ci95"][0] <= r["acc"] <= r["ci95"][1] <= 1.0
        assert len(r["per_seed"]) == 2
    # the wire payload is N x C soft probabilities (f16) in a signed packet: at least 2 bytes per float
    assert res["wire_bytes"]["soft-40"] >= 40 * 2 * 2
    students = [f for f in res["fits"] if f["role"] == "student"]
    assert len(students) == 2 and all(f["steps"] > 0 for f in students)
    # only the adapter and the head train: far fewer parameters than the tiny model has
    assert all(0 < f["trainable_params"] < 20_000 for f in res["fits"])
    # the frozen gold probe on the synthetic sentiment words must beat chance (the pipeline carries signal)
    assert arms["student-frozen-ceiling"]["acc"] > res["chance"] + 0.1
