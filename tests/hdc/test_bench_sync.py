"""Smoke test of benches/bench_sync.py --quick: tiny random BERT, synthetic data, real packets."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[2] / "benches" / "bench_sync.py"


def _load(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("bench_sync", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_sync", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_quick_mode_runs_every_arm_and_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    out = tmp_path / "sync.json"
    result = bench.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert saved["config"]["budget"] == "quick" and saved["summary"] == result["summary"]
    cfg = saved["config"]
    arms = {(r["setting"], r["arm"]) for r in saved["runs"]}
    assert arms == {(s, a) for s in cfg["settings"] for a in ["local", "central"] + [f"sync:{c}" for c in cfg["codecs"]]}
    rounds = -(-cfg["steps"] // cfg["sync_every"])
    by_arm = {r["arm"]: r for r in saved["runs"] if r["setting"] == "iid"}
    for arm, r in by_arm.items():
        assert 0.0 <= r["acc"] <= 1.0
        if arm.startswith("sync:"):
            assert len(r["rounds"]) == rounds
            assert all(rd["bytes_per_node"] > 0 for rd in r["rounds"])
    fp32 = by_arm["sync:fp32"]["bytes_per_round_per_node"]
    # an fp32 packet carries at least 4 bytes per trainable value; ternary far fewer
    assert fp32 > 4 * saved["trainable_values"]
    assert by_arm["sync:ternary-ef"]["bytes_per_round_per_node"] < fp32 / 2
    assert by_arm["sync:ternary-ef"]["rounds"][-1]["residual_norm"] > 0
    assert by_arm["sync:ternary"]["rounds"][-1]["residual_norm"] == 0
    rows = {(r["setting"], r["arm"]): r for r in saved["summary"]}
    assert rows[("iid", "sync:fp32")]["ratio_vs_fp32_packet"] == pytest.approx(1.0)
    assert rows[("iid", "sync:ternary-ef")]["ratio_vs_fp32_packet"] > 2


def test_merge_pools_seeds_and_refuses_duplicates_or_other_settings(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    bench.main(["--quick", "--settings", "skew", "--codecs", "fp32,ternary-ef", "--seeds", "0", "--out", str(a)])
    bench.main(["--quick", "--settings", "skew", "--codecs", "fp32", "--seeds", "1", "--out", str(b)])
    extra = tmp_path / "extra.json"   # more codecs for seed 1, baselines from b
    bench.main(["--quick", "--settings", "skew", "--codecs", "ternary", "--seeds", "1", "--no-baselines",
                "--out", str(extra)])
    assert {r["arm"] for r in json.loads(extra.read_text())["runs"]} == {"sync:ternary"}
    merged = bench.main(["--merge", str(a), str(b), str(extra), "--out", str(tmp_path / "m.json")])
    rows = {r["arm"]: r for r in merged["summary"]}
    assert rows["sync:fp32"]["seeds"] == [0, 1] and rows["sync:ternary-ef"]["seeds"] == [0]
    assert rows["sync:ternary"]["seeds"] == [1] and rows["sync:ternary"]["ratio_vs_fp32_packet"] > 2
    assert rows["sync:fp32"]["acc_ci95"] is not None and merged["config"]["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="in two files"):
        bench.main(["--merge", str(a), str(a), "--out", str(tmp_path / "x.json")])
    c = tmp_path / "c.json"
    bench.main(["--quick", "--settings", "skew", "--codecs", "fp32", "--seeds", "2", "--steps", "3", "--out", str(c)])
    with pytest.raises(SystemExit, match="steps differ"):
        bench.main(["--merge", str(a), str(c), "--out", str(tmp_path / "y.json")])


def test_merge_keeps_the_finished_seeds_of_a_run_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    bench.main(["--quick", "--settings", "skew", "--codecs", "fp32", "--seeds", "0", "--out", str(a)])
    bench.main(["--quick", "--settings", "skew", "--codecs", "fp32", "--seeds", "1", "--out", str(b)])
    cut = json.loads(a.read_text())
    cut["complete"], cut["config"]["seeds"] = False, [0, 1]   # seed 1 stopped after its first arm
    cut["runs"].append(json.loads(b.read_text())["runs"][0])
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    whole = bench.main(["--merge", str(tmp_path / "cut.json"), "--out", str(tmp_path / "w.json")])
    assert whole["complete"] is False
    kept = bench.main(["--merge", str(tmp_path / "cut.json"), "--seeds", "0", "--out", str(tmp_path / "k.json")])
    assert kept["complete"] is True and kept["config"]["seeds"] == [0]
    assert {r["seed"] for r in kept["runs"]} == {0} and any("only seeds 0" in n for n in kept["config"]["notes"])
    # the seed-0 runs of a file missing a seed-0 arm do not count as complete
    cut["runs"] = [r for r in cut["runs"] if not (r["seed"] == 0 and r["arm"] == "central")]
    (tmp_path / "cut2.json").write_text(json.dumps(cut))
    assert bench.main(["--merge", str(tmp_path / "cut2.json"), "--seeds", "0", "--out", str(tmp_path / "k2.json")])[
        "complete"] is False
