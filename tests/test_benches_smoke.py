"""The benches must not rot: each runs in its --quick mode (a smoke run, not a measurement) and writes
its JSON. Speed is never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_mesh_quick(tmp_path):
    # Two real daemons over TLS on loopback; --no-pin so the test does not depend on which cores it may use.
    out = tmp_path / "mesh.json"
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_mesh.py"), "--quick", "--no-pin",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    inputs, figures = result["inputs"], result["figures"]
    # The vector phase really moves 1024 x 4096 dense2 trits per packet (2 bits each), signed.
    assert inputs["vector_count"] == 1024 and inputs["vector_dim"] == 4096
    assert 1024 * 4096 // 4 + 64 < inputs["vector_packet_bytes"] < 1024 * 4096 // 4 + 1024
    # Every packet arrived (a lost one would have timed the run out) and nothing was dropped on the way.
    assert result["summary"]["drops"] == {}
    repeats = inputs["repeats"]
    assert len(result["rounds"]) == repeats and figures["c_latency"]["samples"] == repeats * inputs["pings"]
    for key in ("a_raw_tls", "b_vectors"):
        assert figures[key]["bytes_per_s"] > 0
    assert figures["b_vectors"]["ratio_to_raw_tls"] > 0 and figures["c_small"]["packets_per_s"] > 0
    assert 0 < figures["c_latency"]["p50_ms"] <= figures["c_latency"]["max_ms"]
    # Targets are recorded with a verdict, never asserted (speed is judged in the JSON, not here).
    assert all(isinstance(figures[k]["met"], bool) for k in ("b_vectors", "c_small", "c_latency"))


def test_bench_links_quick(tmp_path):
    # Every link preset in simulated time; a smoke run of the workload, not the benchmark.
    out = tmp_path / "links.json"
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_links.py"), "--quick", "--presets", "lan,wifi",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "quick"


def test_bench_trainer_quick(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "trainer.json"
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_trainer.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    arms = {a["codec"]: a for a in result["arms"]}
    assert result["quick"] and set(arms) == {"fp32", "ternary-ef"}
    for a in arms.values():
        assert a["identical_adapters_every_round"] and a["all_merged_every_round"]
        assert len(a["accuracy_by_round"]) == result["config"]["rounds"]
    assert arms["fp32"]["rel_error_median"] == 0.0 and arms["ternary-ef"]["ratio_vs_fp32"] > 2


@pytest.mark.timeout(420)   # about a minute on an idle 2-core machine; the bound is for a loaded one
def test_bench_mesh_learning_quick(tmp_path):
    # The knowledge-loop bench end to end with tiny random models (the scenario file's structure, its
    # baselines, the summary); the figures of a smoke run mean nothing, only the layout is checked.
    pytest.importorskip("peft")
    out = tmp_path / "ml.json"
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "bench_mesh_learning.py"), "--quick", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "quick" and result["task"] == "sst2" and result["seeds"] == [0]
    (r,) = result["runs"]
    assert set(r["nodes"]) == {"m1", "m2", "s1", "s2"}
    for name, node in r["nodes"].items():
        assert node["role"] == ("trainer" if name.startswith("m") else "learner")
        assert 0 <= node["final_accuracy"] <= 1 and node["bytes_sent"] > 0 and node["bytes_received"] > 0
        assert node["accuracy_over_time"] and all(len(p) == 2 for p in node["accuracy_over_time"])
    assert set(r["baselines"]) == {"student_frozen_soft", "student_ceiling", "student_lora_gold_anchors",
                                   "trainers_alone"}
    assert set(result["targets"]) >= {"learners_3_points_over_frozen_soft", "learners_within_2_points_of_trainers",
                                      "trainers_no_worse_with_learners", "no_node_ends_below_its_start"}
