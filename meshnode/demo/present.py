"""How the demo shows itself: the live table while it runs, the table at the end, the verdict (did
every learner learn?), result.json and the PNG of accuracy against time and bytes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ..sim.report import size_text
from .plan import ALL_NODES, ALONE_NODE, MESH_NODES, DemoPlan
from .watch import History, NodeView, Snapshot, WorkerView

__all__ = ["LEARN_MARGIN", "LiveView", "Outcome", "final_table", "outcome", "plot", "write_result"]

# A learner "learnt" when its accuracy rose by at least this much over where it started: on the
# default 200 eval rows one standard error of an accuracy near 0.6 is 3.5 points, so 5 points is
# more than noise, and far less than what the loop gives when it works (docs/RESULTS.md).
LEARN_MARGIN = 0.05


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _model_name(spec: str | None) -> str:
    return "-" if not spec else escape(Path(spec).name if "/" in spec else spec)


def _state(w: WorkerView) -> str:
    text = f"{escape(w.name)} [bold]{escape(w.state)}[/]"
    if w.doing:
        text += f" [dim]({escape(w.doing)})[/]"
    elif w.error:
        text += f" [red]{escape(w.error[:60])}[/]"
    return text


class LiveView:
    """A rich Live table of the mesh, redrawn from each snapshot (at most every `every` s of wall time)."""

    def __init__(self, console: Console, plan: DemoPlan, title: str, every: float = 0.5) -> None:
        self.console, self.plan, self.title, self.every = console, plan, title, every
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._last = 0.0

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, snap: Snapshot, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        self._live.update(self.render(snap), refresh=True)

    def render(self, snap: Snapshot) -> Group:
        roles = self.plan.roles()
        t = Table("node", "model", "role", "peers", "workers", "round", "accuracy (start -> now)", "sent",
                  "received", header_style="bold", box=None)
        for name in ALL_NODES:
            node = snap.nodes.get(name)
            if node is None:
                continue
            if not node.up:
                t.add_row(name, _model_name(self.plan.model_of(name)), roles[name], "-", "[dim]starting[/]", "", "", "", "")
                continue
            trainers = [w for w in node.workers if w.type == "trainer"]
            rnd = " ".join(f"{w.round}/{w.rounds_target}" if w.round is not None and w.rounds_target else "-"
                           for w in trainers)
            acc = " ".join(f"{_acc(w.initial_accuracy)} -> {_acc(w.accuracy)}" for w in trainers)
            style = "dim" if name == ALONE_NODE else ""
            t.add_row(name, _model_name(self.plan.model_of(name)), roles[name], str(node.peers),
                      "  ".join(_state(w) for w in node.workers) or "-", rnd, acc, size_text(node.bytes_sent),
                      size_text(node.bytes_received), style=style)
        return Group(f"[bold]{escape(self.title)}[/]  {snap.time:,.0f} s", t)


@dataclass(frozen=True)
class NodeOutcome:
    name: str
    model: str
    role: str
    before: float | None
    after: float | None
    alone: float | None
    bytes_sent: int
    bytes_received: int
    delta_bytes: int
    fp32_bytes: int


@dataclass(frozen=True)
class Outcome:
    nodes: dict[str, NodeOutcome]
    problems: tuple[str, ...]     # each a sentence; empty when every learner learnt and every trainer finished

    @property
    def ok(self) -> bool:
        return not self.problems


def _lora(node: NodeView | None, name: str = "lora") -> WorkerView | None:
    return node.worker(name) if node is not None else None


def outcome(snap: Snapshot, plan: DemoPlan) -> Outcome:
    roles = plan.roles()
    alone = snap.nodes.get(ALONE_NODE)
    nodes: dict[str, NodeOutcome] = {}
    problems: list[str] = []
    for name in MESH_NODES:
        node = snap.nodes.get(name)
        w = _lora(node)
        if node is None or w is None:
            problems.append(f"{name}: no answer at the end")
            continue
        failed = [x for x in node.workers if x.state == "failed" or x.error]
        problems += [f"{name}: worker {x.name} {x.state}: {x.error or ''}".rstrip(": ") for x in failed]
        if not w.finished:
            problems.append(f"{name}: its trainer stopped at round {w.round} of {w.rounds_target} ({w.state})")
        a = _lora(alone, name)
        nodes[name] = NodeOutcome(name, plan.model_of(name), roles[name], w.initial_accuracy, w.accuracy,
                                  a.accuracy if a is not None else None, node.bytes_sent, node.bytes_received,
                                  w.delta_bytes, w.fp32_bytes)
        if name.startswith("s"):
            if w.accuracy is None or w.initial_accuracy is None:
                problems.append(f"{name}: no accuracy to judge (no eval finished)")
            elif w.accuracy < w.initial_accuracy + LEARN_MARGIN:
                problems.append(f"{name}: the learner did not learn: {w.initial_accuracy:.3f} -> {w.accuracy:.3f} "
                                f"(needs +{LEARN_MARGIN:.2f})")
    return Outcome(nodes, tuple(problems))


def final_table(result: Outcome) -> Table:
    t = Table("node", "model", "role", "accuracy before", "after", "alone", "wire sent", "wire received",
              "deltas sent (fp32 would be)", title="what each node learnt, and what it cost", header_style="bold")
    for n in result.nodes.values():
        gain = "" if n.before is None or n.after is None else f" ({(n.after - n.before) * 100:+.1f})"
        alone = _acc(n.alone) if n.alone is not None else "[dim]no labels[/]"
        ratio = f"{n.delta_bytes and n.fp32_bytes / n.delta_bytes:.1f}x smaller" if n.delta_bytes else "-"
        deltas = f"{size_text(n.delta_bytes)} ({size_text(n.fp32_bytes)}, {ratio})" if n.delta_bytes else "-"
        t.add_row(n.name, _model_name(n.model), n.role, _acc(n.before), f"[bold]{_acc(n.after)}[/]{gain}", alone,
                  size_text(n.bytes_sent), size_text(n.bytes_received), deltas)
    return t


def write_result(path: Path, result: Outcome, history: History, plan: DemoPlan, *, mode: str,
                 elapsed_s: float, time_unit: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "mode": mode, "sizes": plan.sizes.describe(), "elapsed_s": round(elapsed_s, 1), "time_unit": time_unit,
        "learn_margin": LEARN_MARGIN, "ok": result.ok, "problems": list(result.problems),
        "nodes": {n.name: {"model": n.model, "role": n.role, "accuracy_before": n.before, "accuracy_after": n.after,
                           "alone": n.alone, "bytes_sent": n.bytes_sent, "bytes_received": n.bytes_received,
                           "delta_bytes": n.delta_bytes, "fp32_delta_bytes": n.fp32_bytes}
                  for n in result.nodes.values()},
        "accuracy_over_time": {k: [[t, a, b] for t, a, b in v] for k, v in history.curves().items()},
    }
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


def plot(history: History, path: Path, *, title: str, time_unit: str) -> None:
    """Accuracy against time and against the node's wire bytes (sent + received); matplotlib from the
    ml extra, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"m1": "tab:blue", "m2": "tab:cyan", "s1": "tab:red", "s2": "tab:orange"}
    styles = {"m2": ":", "s2": ":"}   # m1 and m2 (s1 and s2) end every round with one adapter: both lines show
    for key, points in history.curves().items():
        node, worker = key.split("/", 1)
        if not points:
            continue
        ts, accs, wire = zip(*points)
        if node == ALONE_NODE:
            ax_t.step(ts, accs, where="post", linestyle="--", color=colours.get(worker, "grey"), alpha=0.7,
                      label=f"{worker} alone (own shard only)")
            continue
        style = {"color": colours.get(node), "label": node, "marker": "o", "markersize": 3,
                 "linestyle": styles.get(node, "-"), "linewidth": 2.5 if node in styles else 1.5}
        ax_t.step(ts, accs, where="post", **style)
        ax_b.step([b / 1e6 for b in wire], accs, where="post", **style)
    ax_t.set_xlabel(time_unit)
    ax_b.set_xlabel("the node's wire bytes so far, sent + received (MB)")
    for ax in (ax_t, ax_b):
        ax.set_ylabel("eval accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
