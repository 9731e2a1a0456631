"""Learning curves in the simulator: the runner samples every node's workers' accuracy over simulated
time and the report, the summary and the plot show it. A fake worker (no torch) plays a fixed
accuracy sequence on the virtual clock, so the expected curve is known."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console

import meshnode.node
from meshnode.sim.report import plot_report, print_summary, write_report
from meshnode.sim.runner import ACCURACY_SAMPLE_S, AccuracySeries, run_scenario
from meshnode.sim.scenario import parse_scenario
from meshnode.workers.base import TaskWorker, Worker, WorkerContext

pytestmark = pytest.mark.timeout(60)

FAKE_TYPE = "fake-learner"


class FakeLearner(TaskWorker):
    """Reports `values[i]` as its accuracy from `start + i * step` simulated seconds on (None before),
    holding the last one; role and model come from its settings. Each incarnation starts over."""

    type_name: ClassVar[str] = FAKE_TYPE

    def __init__(self, name: str, settings: Mapping[str, Any], *, base_dir: Path | None = None) -> None:
        super().__init__(name, settings, base_dir=base_dir)
        self.values: list[float | None] = list(self.settings["values"])
        self.accuracy: float | None = None

    async def start(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._state = "running"
        self._spawn(self._learn(), name=f"worker:{self.name}")

    async def _learn(self) -> None:
        await self.ctx.clock.sleep(self.settings.get("start", 0.0))
        for value in self.values:
            self.accuracy = value
            self.ctx.metrics.inc("rounds")
            self.ctx.metrics.inc("bytes_sent", 1000)
            await self.ctx.clock.sleep(self.settings["step"])

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self._state, "accuracy": self.accuracy,
                               "model": self.settings.get("model")}
        if "role" in self.settings:
            out["role"] = self.settings["role"]
        return out


@pytest.fixture(autouse=True)
def fake_worker_type(monkeypatch: pytest.MonkeyPatch) -> None:
    # Patch the name node.py looks workers up with, so this keeps working wherever the registry lives.
    real = meshnode.node.load_worker_class

    def load(type_name: str) -> type[Worker]:
        return FakeLearner if type_name == FAKE_TYPE else real(type_name)

    monkeypatch.setattr(meshnode.node, "load_worker_class", load)


# Changes every 2.5 s (not a multiple of the 1 s sampling), with a repeated value that must not make a
# point of its own.
A_VALUES = [None, 0.25, 0.25, 0.5, 0.625, 0.625, 0.75]


def scenario(**over: Any):
    data: dict[str, Any] = {
        "name": "learn", "seed": 5,
        "nodes": [
            {"name": "a", "workers": [
                {"name": "tr", "type": FAKE_TYPE,
                 "settings": {"values": A_VALUES, "step": 2.5, "model": "tiny-bert"}},
                {"name": "beat", "type": "heartbeat-vectors", "settings": {"interval": 2.0}}]},
            {"name": "b", "workers": [
                {"name": "st", "type": FAKE_TYPE,
                 "settings": {"values": [0.1, 0.4, 0.8], "step": 3.0, "start": 1.5, "role": "student",
                              "model": "tiny-gpt2"}}]},
        ],
        "topology": {"kind": "full_mesh", "profile": "lan"},
        "stop": {"time": 20},
    }
    data.update(over)
    return parse_scenario(data)


def values(series: dict[str, Any]) -> list[float]:
    return [p[1] for p in series["over_time"]]


def test_each_workers_accuracy_is_recorded_when_it_changes() -> None:
    report = run_scenario(scenario())
    a, b = report["nodes"]["a"]["accuracy"], report["nodes"]["b"]["accuracy"]
    assert set(a) == {"tr"}                              # the heartbeat worker never reports an accuracy
    tr = a["tr"]
    assert values(tr) == [0.25, 0.5, 0.625, 0.75]        # the first value, then each change once
    assert tr["final"] == 0.75
    assert tr["type"] == FAKE_TYPE and tr["model"] == "tiny-bert"
    assert tr["role"] == FAKE_TYPE                       # no role in its status: the worker type
    times = [p[0] for p in tr["over_time"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    # each change is seen by the next sample: at or after it, within one sampling interval
    for (t, _), changed_at in zip(tr["over_time"], (2.5, 7.5, 10.0, 15.0), strict=True):
        assert changed_at <= t <= changed_at + ACCURACY_SAMPLE_S
    st = b["st"]
    assert values(st) == [0.1, 0.4, 0.8] and st["final"] == 0.8
    assert st["role"] == "student" and st["model"] == "tiny-gpt2"


def test_no_workers_no_accuracy() -> None:
    report = run_scenario(scenario(nodes=[{"name": "a"}, {"name": "b"}], stop={"time": 3}))
    assert all(n["accuracy"] == {} for n in report["nodes"].values())


def test_a_restarted_node_appends_to_its_series() -> None:
    sc = scenario(events=[{"at": 8.2, "action": "kill", "node": "b"},
                          {"at": 11, "action": "restart", "node": "b"}],
                  stop={"time": 20})
    report = run_scenario(sc)
    assert report["nodes"]["b"]["incarnations"] == 2
    st = report["nodes"]["b"]["accuracy"]["st"]
    # first incarnation: 0.1 (1.5 s), 0.4 (4.5 s), 0.8 (7.5 s); the second starts over at 11 + 1.5 s
    assert values(st) == [0.1, 0.4, 0.8, 0.1, 0.4, 0.8]
    assert [p[0] for p in st["over_time"]][3] >= 12.5


def test_same_seed_gives_the_same_accuracy_series() -> None:
    one, two = (run_scenario(scenario()) for _ in range(2))
    acc = {n: r["accuracy"] for n, r in one["nodes"].items()}
    assert acc == {n: r["accuracy"] for n, r in two["nodes"].items()}
    assert json.dumps(one, indent=1) == json.dumps(two, indent=1)


def test_summary_table_and_plot_panel(tmp_path: Path) -> None:
    report = run_scenario(scenario())
    out = io.StringIO()
    print_summary(report, Console(file=out, width=160, color_system=None))
    text = out.getvalue()
    assert "workers" in text and "accuracy first" in text
    # node, worker, type, model, state (the worker's own), rounds, bytes sent, received, first, final
    row = [c.strip() for c in next(line for line in text.splitlines() if "tiny-bert" in line).split("│")[1:-1]]
    assert row == ["a", "tr", FAKE_TYPE, "tiny-bert", "running", "7", "7.0 KB", "-", "0.2500", "0.7500"]
    student = [c.strip() for c in next(line for line in text.splitlines() if "tiny-gpt2" in line).split("│")[1:-1]]
    assert student[:4] == ["b", "st", f"{FAKE_TYPE} (student)", "tiny-gpt2"] and student[-1] == "0.8000"
    beat = [c.strip() for c in next(line for line in text.splitlines() if " beat " in line and "heartbeat" in line)
            .split("│")[1:-1]]
    assert beat[2] == "heartbeat-vectors" and beat[-2:] == ["-", "-"]     # no accuracy, none made up
    write_report(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["nodes"]["b"]["accuracy"]["st"]["final"] == 0.8
    plot_report(report, tmp_path / "p.png")
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the accuracy panel (3 in at 100 dpi) below the two links' panels
    plot_report({**report, "nodes": {n: {**v, "accuracy": {}} for n, v in report["nodes"].items()}},
                tmp_path / "without.png")
    without = int.from_bytes((tmp_path / "without.png").read_bytes()[20:24], "big")
    assert int.from_bytes(png[20:24], "big") == without + 300


def test_summary_and_plot_without_accuracy_are_as_before(tmp_path: Path) -> None:
    report = run_scenario(scenario(nodes=[{"name": "a"}, {"name": "b"}], stop={"time": 3}))
    out = io.StringIO()
    print_summary(report, Console(file=out, width=160, color_system=None))
    assert "accuracy" not in out.getvalue()                  # no workers table, no accuracy columns
    plot_report(report, tmp_path / "p.png")
    # a title and legend band (0.6 in) and one row of 2.2 in: the two directions of the one link
    assert int.from_bytes((tmp_path / "p.png").read_bytes()[20:24], "big") == 280


def test_a_full_series_halves_its_resolution_and_keeps_the_newest_value() -> None:
    s = AccuracySeries(type="t", max_points=10)
    for i in range(100):
        s.add(float(i), i / 100)
        assert len(s.points) < 10
    assert s.points[0] == [0.0, 0.0]                     # the start of the curve survives
    assert s.points[-1] == [99.0, 0.99]                  # and so does the value in force now
    assert [p[0] for p in s.points] == sorted(p[0] for p in s.points)
    assert s.add(100.0, 0.99) is False                   # unchanged: no point
    assert s.to_dict()["final"] == 0.99 and s.to_dict()["role"] == "t"


def test_unusable_accuracy_values_are_skipped() -> None:
    from meshnode.sim.runner import _accuracy_of
    statuses = ({"accuracy": 0.5}, {"accuracy": 1}, {}, {"accuracy": None}, {"accuracy": float("nan")},
                {"accuracy": True}, {"accuracy": "0.9"}, None)
    assert [_accuracy_of(x) for x in statuses] == [0.5, 1.0, None, None, None, None, None, None]



def test_accuracy_expectations_judge_the_final_accuracy() -> None:
    report = run_scenario(scenario(expect={"accuracy_min": {"a/tr": 0.7, "b/st": 0.9}}))
    got = {e["key"]: (e["measured"], e["met"]) for e in report["expectations"]}
    assert got == {"accuracy_min.a/tr": (0.75, True), "accuracy_min.b/st": (0.8, False)}
    assert report["verdict"] == {"expectations_stated": True, "passed": False,
                                 "reason": "1 of 2 expectations NOT met: accuracy_min.b/st"}
    out = io.StringIO()
    print_summary(report, Console(file=out, width=160, color_system=None))
    assert "1 of 2 expectations NOT met: accuracy_min.b/st: exit 1" in out.getvalue()
