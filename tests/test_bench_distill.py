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


def test_quick_run_with_a_teacher_the_trainer_worker_trained(tmp_path: Path) -> None:
    from meshnode.models import resolve

    try:
        resolve("minilm")
    except FileNotFoundError:
        pytest.skip("offline MiniLM package (its tokenizer) not installed")
    import bench_distill

    out = tmp_path / "distill.json"
    assert bench_distill.main(["--quick", "--teacher-source", "mesh", "--aligned-epochs", "2", "--threads", "1",
                               "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["teacher_source"] == "mesh"
    arms = {r["arm"]: r for r in res["arms"]}
    teachers = [f for f in res["fits"] if f["role"] == "teacher"]
    assert len(teachers) == 2
    for t in teachers:
        # trained over the mesh: every round merged both nodes, and both nodes checkpointed the same adapter
        assert t["all_merged_every_round"] and t["identical_adapters_every_round"] and t["checkpoints_identical"]
        assert 0 < t["bytes_per_round_per_node"]
        # the teacher rebuilt from the checkpoint is the model the worker evaluated after its last round
        assert t["rebuilt_dev_sample_accuracy"] == pytest.approx(t["worker_dev_sample_accuracy_by_round"][-1])
    # the worker's teacher learned the synthetic task, and its labels carry that into the student's probe
    assert arms["teacher-lora"]["acc"] > res["chance"] + 0.2
    assert arms["frozen-anchors-teacher@40"]["acc"] > res["chance"] + 0.1
    # plus the aligned knowledge: the map carries the teacher's HDC probe to the student's other 40 pool texts
    assert {"frozen-aligned@40", "student-lora-aligned@40"} <= set(arms)
    assert arms["frozen-aligned@40"]["acc"] > res["chance"] + 0.1
    aligned = [f for f in res["fits"] if f["role"] == "student-aligned"]
    assert len(aligned) == 2 and all(f["pseudo_labelled"] == 40 and f["steps"] > 0 for f in aligned)
    # ternary anchor vectors and the probe travel on top of the soft labels
    assert res["wire_bytes"]["aligned-40"] > res["wire_bytes"]["soft-40"] + 40 * 512 // 5


def test_student_epochs_parse() -> None:
    import bench_distill

    assert bench_distill.parse_epochs("3") == (3, ())
    assert bench_distill.parse_epochs("100:15,500:3") == (3, ((100, 15), (500, 3)))
    for bad in ("0", "x", "100:0", "100:"):
        with pytest.raises(ValueError):
            bench_distill.parse_epochs(bad)
