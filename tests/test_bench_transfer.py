"""bench_transfer must not rot: its --quick mode (synthetic embeddings, not a measurement) runs and
writes a JSON with every arm, the ceilings, the paired tests and the target verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_transfer_quick(tmp_path: Path) -> None:
    out = tmp_path / "transfer.json"
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_transfer.py"), "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    methods = {r["method"] for r in result["transfer"]}
    assert {"anchors-gold", "anchors-teacher", "anchors-soft", "procrustes", "ridge", "cca", "contrastive",
            "combo", "ceiling:student-hdc", "ceiling:student-float"} <= methods
    arms = [r for r in result["transfer"] if r["anchors"]]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] for r in arms)
    # bytes: the gold baseline sends nothing, predictions are far smaller than anchor vectors
    by = {(r["method"], r["anchors"]): r["wire_bytes"] for r in arms if r["teacher"] == "enc"}
    assert by[("anchors-gold", 60)] == 0 < by[("anchors-teacher", 60)] < by[("ridge", 60)] < by[("ridge-float", 60)]
    assert {"a", "b", "c"} <= set(result["targets"])
    assert all(isinstance(v["met"], bool) for v in result["targets"]["a"] + result["targets"]["b"])
    assert out.with_suffix(".png").exists()


def test_bench_transfer_refuses_a_pool_without_a_labelled_set(tmp_path: Path) -> None:
    for bad, why in ((["--pool", "ag_news=1000", "--anchor-pool", "ag_news=1000"], "must leave a labelled set"),
                     (["--pool", "imdb=10"], "expected TASK=N"), (["--anchor-pool", "sst2=x"], "expected TASK=N")):
        run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_transfer.py"), *bad,
                              "--out", str(tmp_path / "t.json")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 2 and why in run.stderr, run.stderr[-2000:]
        assert not (tmp_path / "t.json").exists()
