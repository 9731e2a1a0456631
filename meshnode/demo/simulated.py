"""The demo's mesh through the link simulator (`meshnode demo --sim wifi`): the same nodes and workers
as the loopback path, in one process over simulated links (lossy, rate-limited), on virtual time that
advances by the real compute time. The scenario is written as a file, so `meshnode sim` reruns it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import toml_value
from ..sim.runner import Progress, run_scenario
from ..sim.scenario import load_scenario
from .plan import ALL_NODES, MESH_NODES, DemoPlan, write_data
from .watch import Snapshot, node_view

__all__ = ["SIM_STOP_S", "run_simulated", "scenario_text"]

SIM_STOP_S = 3 * 3600.0   # simulated seconds: a bound, not a target (the run stops when the trainers are done)


def scenario_text(plan: DemoPlan, profile: str, seed: int = 0) -> str:
    """The plan as a `meshnode sim` scenario: the four mesh nodes fully linked with `profile`, the
    alone node with no link at all."""
    out = ["# Written by `meshnode demo --sim`: rerun it with `meshnode sim scenario.toml --plot r.png`.",
           f"name = \"demo-{profile}\"", f"seed = {seed}"]
    for name, workers in plan.workers().items():
        out += ["", "[[nodes]]", f"name = {toml_value(name)}"]
        for w in workers:
            out += ["[[nodes.workers]]", f"name = {toml_value(w['name'])}", f"type = {toml_value(w['type'])}",
                    "[nodes.workers.settings]"]
            out += [f"{k} = {toml_value(v)}" for k, v in w["settings"].items()]
    out += ["", "[topology]", 'kind = "explicit"', f"profile = {toml_value(profile)}"]
    for i, a in enumerate(MESH_NODES):
        for b in MESH_NODES[i + 1:]:
            out += ["[[topology.links]]", f"a = {toml_value(a)}", f"b = {toml_value(b)}"]
    out += ["", "[stop]", f"time = {SIM_STOP_S!r}", 'when = "workers_done"', "settle = 2", ""]
    return "\n".join(out)


def run_simulated(plan: DemoPlan, directory: Path, profile: str,
                  on_snapshot: Callable[[Snapshot], None]) -> dict[str, Any]:
    """Write DIRECTORY/sim/scenario.toml and its data, run it, call `on_snapshot` about once per
    simulated second; return the simulator's report."""
    sim_dir = directory.absolute() / "sim"
    sim_dir.mkdir(parents=True, exist_ok=True)
    write_data(plan, sim_dir)
    path = sim_dir / "scenario.toml"
    path.write_text(scenario_text(plan, profile), encoding="utf-8")
    scenario = load_scenario(path)   # ScenarioError (an unknown profile, say) names the key
    def progress(p: Progress) -> None:
        on_snapshot(Snapshot(p.time, {n: node_view(n, p.workers.get(n), p.counters.get(n), up=n in p.workers)
                                      for n in ALL_NODES}))

    # Short: the nodes' control sockets live under workdir, and a unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="mdemo-") as work:
        report = run_scenario(scenario, workdir=Path(work), on_progress=progress, progress_interval=1.0)
    return report
