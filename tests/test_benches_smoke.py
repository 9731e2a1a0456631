"""The benches must not rot: each runs in its --quick mode (a smoke run, not a measurement) and writes
its JSON. Speed is never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_wire_quick(tmp_path):
    out = tmp_path / "wire.json"
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_wire.py"), "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    encodings = {(r["encoding"], r["op"]) for r in result["codecs"] if r["case"] != "copy"}
    assert encodings == {(e, op) for e in ("dense2", "base3", "sparse") for op in ("pack", "unpack")}
    assert {r["dim"] for r in result["codecs"]} == {4096, 10000}
    assert any(r["op"] == "decode + verify signed" and "met" in r for r in result["packets"])
    assert all(r["median_s"] > 0 for r in result["codecs"] + result["packets"])
