"""deploy/scenarios/heterogeneous.toml under `meshnode sim`, with tiny random models in place of MiniLM
and SmolLM2 and a synthetic keyword task in place of SST-2: the file's own structure (who trains,
who teaches, who learns from whom) runs, and every node's accuracy is in the report."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from meshnode.sim.report import plot_report  # noqa: E402
from meshnode.sim.runner import run_scenario  # noqa: E402
from meshnode.sim.scenario import parse_scenario  # noqa: E402

from ..workers._text import synthetic, tokenizer, write_dataset  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SCENARIO = Path(__file__).resolve().parents[2] / "deploy" / "scenarios" / "heterogeneous.toml"


def _tiny_models(root: Path) -> dict[str, str]:
    torch.manual_seed(0)
    bert = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64)
    transformers.AutoModel.from_config(bert).save_pretrained(root / "bert")
    tokenizer("bert").save_pretrained(root / "bert")
    torch.manual_seed(1)
    llama = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64,
                                     bos_token_id=1, eos_token_id=1)
    transformers.AutoModel.from_config(llama).save_pretrained(root / "llama")
    tokenizer("llama").save_pretrained(root / "llama")
    return {"minilm": str(root / "bert"), "smollm2": str(root / "llama")}


def tiny_version(tmp: Path) -> dict[str, Any]:
    """The scenario file with its models, data and sizes swapped for tiny ones; structure untouched."""
    data = tomllib.loads(SCENARIO.read_text())
    models = _tiny_models(tmp / "models")
    shards = [write_dataset(tmp / f"shard-{i}", "train", *synthetic(200, 10 + i)) for i in range(2)]
    evaluation = write_dataset(tmp / "eval", "dev", *synthetic(120, 3))
    anchors, _ = synthetic(160, 2)
    (tmp / "anchors.txt").write_text("\n".join(anchors) + "\n")
    for node in data["nodes"]:
        for w in node.get("workers", []):
            s = w["settings"]
            s["model"] = models[s["model"]]
            s["cache_dir"] = str(tmp / "cache")
            s["device"] = "cpu"
            if "anchors" in s:
                s["anchors"] = str(tmp / "anchors.txt")
                s["dim"] = 1024
            if "eval_data" in s:
                s["eval_data"] = str(evaluation)
            if "train_data" in s:
                s["train_data"] = str(shards[int(s["train_data"].rstrip("/")[-1])])
            if w["type"] == "trainer":
                # round_deadline is simulated time, which advances by the real compute time: on a loaded
                # machine a short one ends rounds before the peer's delta is in, and the run (and its
                # accuracy) then depends on the load. Long: every round merges every member's delta.
                learner = "train_data" not in s
                # A constant rate: at these sizes a learner's linear decay halves what 12 short rounds learn.
                s.update(steps_per_round=8, rounds=12 if learner else 6, max_length=16, batch_size=16,
                         lr=1e-2 if learner else 3e-2, lr_schedule="constant", warmup_rounds=0,
                         lora_rank=4, eval_every=1, max_eval=120,
                         hello_interval=0.5, join_wait=0.5, round_deadline=300, member_timeout=600)
            elif s["role"] == "student":
                s.update(announce_interval=0.5)
            else:
                # One version, at the trainers' last round: what the learners learn then does not depend
                # on how the versions' arrival interleaves with their rounds (real compute time, so load)
                s.update(min_republish_gap=0.5, publish_every=6, publish_margin=1.0)
    data["stop"] = {"time": 900, "when": "workers_done", "settle": 2}
    return data


def test_the_heterogeneous_scenario_runs_and_reports_every_nodes_accuracy(tmp_path) -> None:
    scenario = parse_scenario(tiny_version(tmp_path), name="heterogeneous-tiny")
    report = run_scenario(scenario, workdir=tmp_path / "run")
    assert report["stopped_by"] == "workers_done"
    nodes = report["nodes"]
    assert set(nodes) == {"m1", "m2", "s1", "s2"}
    for name, node in nodes.items():
        states = {w["name"]: w["state"] for w in node["workers"]}
        assert states == {"lora": "running", "teach" if name.startswith("m") else "learn": "running"}, states
        curve = node["accuracy"]["lora"]
        assert curve["type"] == "trainer" and curve["final"] is not None and len(curve["over_time"]) >= 2
    for name in ("s1", "s2"):
        lora = nodes[name]["accuracy"]["lora"]
        assert lora["model"].endswith("llama")
        # the student has no eval set: it keeps no frozen route, so the learner's curve is the node's only one
        assert set(nodes[name]["accuracy"]) == {"lora"}
        # the learners learnt from the MiniLM group's adapter, with no label of their own
        assert lora["final"] >= 0.75 and lora["final"] > lora["over_time"][0][1] + 0.15, lora
        metrics = next(w for w in nodes[name]["workers"] if w["name"] == "lora")["metrics"]
        assert metrics["taught_versions"] >= 1 and metrics["rounds"] == 12
    teacher = next(w for w in nodes["m1"]["workers"] if w["name"] == "teach")["metrics"]
    assert teacher["versions"] == 1
    plot_report(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_workers_done_needs_a_trainer_with_rounds() -> None:
    from meshnode.sim.scenario import ScenarioError

    data = {"nodes": [{"name": "a"}, {"name": "b"}], "topology": {"kind": "line", "profile": "lan"},
            "stop": {"time": 10, "when": "workers_done"}}
    with pytest.raises(ScenarioError, match="stop.when: \"workers_done\" needs a trainer worker"):
        parse_scenario(data)
