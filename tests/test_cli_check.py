"""`meshnode check` and the worker checks `meshnode run` makes before it starts: an unknown worker type,
bad settings, a missing extra or a link to a worker that is not there is one line and exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshnode.cli import main

from .test_cli_daemon import enrolled_node

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def node_dir(tmp_path: Path) -> Path:
    directory = enrolled_node(tmp_path)
    (directory / "anchors.txt").write_text("one text\nanother text\n")
    return directory


TRAINER = '''
[[workers]]
name = "lora"
type = "trainer"
[workers.settings]
task = "sst2"
model = "minilm"
classes = ["negative", "positive"]
'''
TEACHER = '''
[[workers]]
name = "teach"
type = "transfer"
[workers.settings]
role = "teacher"
task = "sst2"
model = "minilm"
anchors = "anchors.txt"
trainer = "{trainer}"
'''


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_check_says_what_would_run(node_dir: Path) -> None:
    toml = node_dir / "node.toml"
    toml.write_text(toml.read_text() + TRAINER + TEACHER.format(trainer="lora"))
    r = CliRunner().invoke(main, ["check", "--config", str(toml)])
    assert r.exit_code == 0, r.output
    assert "ok: node a" in r.output and "lora (trainer), teach (transfer)" in r.output


@pytest.mark.parametrize("workers, expect", [
    ('\n[[workers]]\nname = "beat"\ntype = "heartbeat"\n', "workers.beat.type: unknown worker type 'heartbeat'"),
    (TRAINER.replace('model = "minilm"', 'model = "minilm"\nlr = -1'), "workers.lora.settings.lr: must be > 0"),
    (TRAINER + TEACHER.format(trainer="lra"), "workers.teach.settings.trainer: no trainer worker named 'lra'"),
])
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_worker_that_cannot_run_stops_the_start_with_one_line(node_dir: Path, workers, expect, command) -> None:
    toml = node_dir / "node.toml"
    toml.write_text(toml.read_text() + workers)
    r = CliRunner().invoke(main, [command, "--config", str(toml)])
    assert r.exit_code == 2 and expect in one_line(r)


def test_a_missing_extra_names_the_install(node_dir: Path, monkeypatch) -> None:
    toml = node_dir / "node.toml"
    toml.write_text(toml.read_text() + TRAINER)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    r = CliRunner().invoke(main, ["run", "--config", str(toml)])
    line = one_line(r)
    assert r.exit_code == 2 and "workers.lora: worker type 'trainer' needs peft" in line
    assert "install the ml extra" in line


def test_node_init_no_mdns_writes_a_config_without_mdns(tmp_path: Path) -> None:
    import tomllib

    runner = CliRunner()
    assert runner.invoke(main, ["mesh", "init", str(tmp_path / "mesh")]).exit_code == 0
    r = runner.invoke(main, ["node", "init", str(tmp_path / "n"), "--mesh", str(tmp_path / "mesh"), "--name", "n",
                             "--no-mdns", "--static-peer", "127.0.0.1:7400"])
    assert r.exit_code == 0, r.output
    cfg = tomllib.loads((tmp_path / "n" / "node.toml").read_text())
    assert cfg["discovery"]["mdns"] is False and cfg["discovery"]["static_peers"] == ["127.0.0.1:7400"]


def test_data_fleet_writes_disjoint_skewed_shards_anchors_and_eval(tmp_path: Path) -> None:
    import json

    src = tmp_path / "src"
    src.mkdir()
    (src / "labels.json").write_text(json.dumps({"0": "neg", "1": "pos"}))
    rows = [{"text": f"text number {i}", "label": i % 2} for i in range(400)]
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "dev.jsonl").write_text("".join(json.dumps({"text": f"dev {i}", "label": i % 2}) + "\n" for i in range(20)))
    r = CliRunner().invoke(main, ["data", "fleet", str(src), str(tmp_path / "out"), "--per-node", "100",
                                  "--anchors", "50", "--pool", "40"])
    assert r.exit_code == 0, r.output
    shards = [[json.loads(x) for x in (tmp_path / "out" / f"shard-{i}" / "train.jsonl").read_text().splitlines()]
              for i in (0, 1)]
    assert [sum(1 for x in s if x["label"] == i) for i, s in enumerate(shards)] == [90, 90]
    anchors = (tmp_path / "out" / "anchors.txt").read_text().splitlines()
    pool = (tmp_path / "out" / "pool.txt").read_text().splitlines()
    texts = [x["text"] for s in shards for x in s]
    assert len(anchors) == 50 and len(pool) == 40 and len(set(texts + anchors + pool)) == 200 + 50 + 40
    bad = CliRunner().invoke(main, ["data", "fleet", str(src), str(tmp_path / "o2"), "--per-node", "100",
                                    "--anchors", "500"])
    assert bad.exit_code == 2 and "rows left" in bad.output


def test_check_warns_about_a_loopback_listen_host_with_mdns(node_dir: Path) -> None:
    toml = node_dir / "node.toml"
    toml.write_text(toml.read_text().replace("mdns = false", "mdns = true"))   # listen_host is 127.0.0.1
    r = CliRunner().invoke(main, ["check", "--config", str(toml)])
    assert r.exit_code == 0 and "ok: node a" in r.stdout
    (warning,) = r.stderr.strip().splitlines()
    assert warning.startswith("warning: node.listen_host 127.0.0.1 is a loopback address")
    # saying that a one-machine mesh is meant silences it
    toml.write_text(toml.read_text().replace("[discovery]", '[discovery]\nmdns_interfaces = ["127.0.0.1"]', 1))
    r = CliRunner().invoke(main, ["check", "--config", str(toml)])
    assert r.exit_code == 0 and r.stderr == ""
