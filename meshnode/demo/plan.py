"""What `meshnode demo` runs: the nodes, their workers and the sizes, as data (no I/O but `write_data`).

The mesh is the knowledge loop of deploy/scenarios/heterogeneous.toml, sized for a laptop CPU:

    m1, m2   MiniLM-L6 `trainer`s on label-skewed SST-2 shards (90% negative / 90% positive), synced
             with ternary deltas; each runs a `transfer` teacher that teaches what the shared adapter
             predicts on the anchors.
    s1, s2   SmolLM2-135M nodes with no labels: a `transfer` student hands the teacher's predicted class
             on each anchor to a `trainer` (the learner); the two learners sync with each other.
    alone    not linked to anyone: the same two MiniLM trainers, each on its own shard only, for
             "what m1 / m2 would have reached alone". It sends nothing, so it changes no byte count.

The loopback path (meshnode.demo.loopback) writes these as node.toml files for real daemons; the
simulator path (meshnode.demo.simulated) as a scenario. Both take the same `DemoPlan`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["ALL_NODES", "ALONE_NODE", "DEFAULT", "FULL", "MESH_NODES", "DemoPlan", "Sizes", "packaged_data", "write_data"]

MESH_NODES = ("m1", "m2", "s1", "s2")
ALONE_NODE = "alone"
ALL_NODES = (*MESH_NODES, ALONE_NODE)
TASK = "sst2"


@dataclass(frozen=True)
class Sizes:
    """Everything that sets how long the demo runs. `describe` says it in a sentence."""

    name: str
    labelled_rows: int        # per trainer, from its shard (max_train)
    anchors: int              # unlabelled texts the teachers label and the learners train on
    eval_rows: int            # SST-2 dev rows every trainer evaluates on (a seeded sample, the same everywhere)
    trainer_rounds: int
    trainer_steps: int        # optimizer steps per round (batch trainer_batch)
    trainer_batch: int
    trainer_lr: float
    learner_rounds: int
    learner_steps: int
    learner_batch: int
    learner_lr: float
    max_length: int           # tokens per text
    eval_every: int           # trainer rounds between evals
    publish_every: int        # trainer rounds between two teacher versions
    learner_eval_every: int = 4   # a SmolLM2 eval costs as much as ~60 of its training rows: less often
    learner_lr_schedule: str = "constant"
    learner_warmup_rounds: int = 0
    group_by_length: bool = False   # batches of like-length texts (SST-2's short phrases pad to far less)
    lora_rank: int = 8
    # timing of the protocol (seconds): short on one machine, where every message arrives at once
    hello_interval: float = 1.0
    join_wait: float | None = None
    announce_interval: float = 2.0
    min_republish_gap: float = 5.0
    publish_margin: float = 0.01
    round_deadline: float = 600.0
    dim: int | None = None    # HDC space dimension (None: the transfer worker's default)

    def describe(self) -> str:
        return (f"{self.name} size: 2 MiniLM-L6 trainers x {self.labelled_rows} labelled SST-2 rows (90% one class), "
                f"{self.trainer_rounds} rounds x {self.trainer_steps} steps; 2 SmolLM2-135M learners with no labels, "
                f"{self.learner_rounds} rounds x {self.learner_steps} steps on {self.anchors} anchors the trainers "
                f"label; accuracy on {self.eval_rows} SST-2 dev sentences")


# Sized so that the whole demo ends in about 4 minutes on a 2-core laptop CPU once the models are
# installed (docs/QUICKSTART.md has the measured figures); FULL is the knowledge-loop scenario's size.
# The learners' rate (lr 3e-3 times a 2-round warmup ramp and a linear decay: it peaks at 2.4e-3) was
# read off 300 held-out SST-2 *train* sentences with a fixed teacher, against 1e-3 and 5e-3, never off the
# dev rows the demo reports (benches/bench_learner_recipe.py; docs/RESULTS.md "What a learner trains on").
DEFAULT = Sizes(name="default", labelled_rows=1000, anchors=300, eval_rows=200,
                trainer_rounds=8, trainer_steps=8, trainer_batch=16, trainer_lr=2e-3,
                learner_rounds=10, learner_steps=8, learner_batch=8, learner_lr=3e-3,
                max_length=40, eval_every=4, publish_every=2, learner_eval_every=5,
                learner_lr_schedule="linear", learner_warmup_rounds=2, group_by_length=True)
FULL = Sizes(name="full", labelled_rows=1000, anchors=500, eval_rows=300,
             trainer_rounds=10, trainer_steps=10, trainer_batch=16, trainer_lr=1e-3,
             learner_rounds=12, learner_steps=8, learner_batch=8, learner_lr=3e-3,
             max_length=64, eval_every=2, publish_every=2, learner_eval_every=3,
             learner_lr_schedule="linear", learner_warmup_rounds=2)


def packaged_data() -> Path:
    """The SST-2 fleet shipped with meshnode (meshnode/demo/data/sst2; `meshnode data fleet` wrote it)."""
    return Path(__file__).resolve().parent / "data" / TASK


@dataclass(frozen=True)
class DemoPlan:
    """The demo's mesh. `models` maps "trainer"/"learner" to a model spec; `settings` adds or replaces
    worker settings by kind ("trainer", "teacher", "learner", "student"; e.g. a cache_dir, or tiny
    models' sizes in tests). `data` holds shard-0/, shard-1/, eval/ and anchors.txt."""

    sizes: Sizes = DEFAULT
    models: Mapping[str, str] = field(default_factory=lambda: {"trainer": "minilm", "learner": "smollm2"})
    data: Path = field(default_factory=packaged_data)
    task: str = TASK
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    threads: int = 1          # torch threads per worker: four daemons share the machine's cores

    def with_sizes(self, sizes: Sizes) -> DemoPlan:
        return replace(self, sizes=sizes)

    # ------------------------------------------------------------------------------ workers

    def _trainer(self, shard: int) -> dict[str, Any]:
        z = self.sizes
        return {
            "task": self.task, "model": self.models["trainer"], "train_data": f"data/shard-{shard}",
            "max_train": z.labelled_rows, "eval_data": "data/eval", "max_eval": z.eval_rows,
            "eval_every": z.eval_every, "balance": "logit-adjust", "lora_rank": z.lora_rank,
            "max_length": z.max_length, "group_by_length": z.group_by_length, "batch_size": z.trainer_batch,
            "lr": z.trainer_lr,
            "steps_per_round": z.trainer_steps, "rounds": z.trainer_rounds, "min_peers": 1,
            "round_deadline": z.round_deadline, "hello_interval": z.hello_interval,
            "member_timeout": 2 * z.round_deadline, "threads": self.threads,
            **({"join_wait": z.join_wait} if z.join_wait is not None else {}),
            **self.settings.get("trainer", {}),
        }

    def _learner(self) -> dict[str, Any]:
        z = self.sizes
        return {
            "task": self.task, "model": self.models["learner"], "eval_data": "data/eval", "max_eval": z.eval_rows,
            "eval_every": z.learner_eval_every, "lora_rank": z.lora_rank, "max_length": z.max_length,
            "group_by_length": z.group_by_length,
            "batch_size": z.learner_batch, "lr": z.learner_lr, "lr_schedule": z.learner_lr_schedule,
            "warmup_rounds": z.learner_warmup_rounds, "steps_per_round": z.learner_steps,
            "rounds": z.learner_rounds, "min_peers": 1, "round_deadline": z.round_deadline,
            "hello_interval": z.hello_interval, "member_timeout": 2 * z.round_deadline, "threads": self.threads,
            **({"join_wait": z.join_wait} if z.join_wait is not None else {}),
            **self.settings.get("learner", {}),
        }

    def _transfer(self, role: str, model: str) -> dict[str, Any]:
        z = self.sizes
        out: dict[str, Any] = {"role": role, "task": self.task, "model": model, "anchors": "data/anchors.txt",
                               "threads": self.threads}
        if z.dim is not None:
            out["dim"] = z.dim
        if role == "teacher":
            out.update(trainer="lora", knowledge=["predictions"], publish_every=z.publish_every,
                       publish_margin=z.publish_margin, min_republish_gap=z.min_republish_gap,
                       republish_interval=600)
        else:
            out.update(learner="lora", announce_interval=z.announce_interval)
        return {**out, **self.settings.get(role, {})}

    def workers(self) -> dict[str, list[dict[str, Any]]]:
        """node -> its [[workers]] tables (name, type, settings); paths relative to the node's data."""
        out: dict[str, list[dict[str, Any]]] = {}
        for i, name in enumerate(("m1", "m2")):
            out[name] = [{"name": "lora", "type": "trainer", "settings": self._trainer(i)},
                         {"name": "teach", "type": "transfer",
                          "settings": self._transfer("teacher", self.models["trainer"])}]
        for name in ("s1", "s2"):
            out[name] = [{"name": "lora", "type": "trainer", "settings": self._learner()},
                         {"name": "learn", "type": "transfer",
                          "settings": self._transfer("student", self.models["learner"])}]
        # Each alone trainer has a task of its own, so the two never sync with each other or with m1/m2.
        out[ALONE_NODE] = [{"name": name, "type": "trainer",
                            "settings": {**self._trainer(i), "task": f"{self.task}-{name}-alone", "min_peers": 0}}
                           for i, name in enumerate(("m1", "m2"))]
        return out

    def roles(self) -> dict[str, str]:
        """What each node is, in words for the tables."""
        return {"m1": "trainer, labels 90% negative", "m2": "trainer, labels 90% positive",
                "s1": "learner, no labels", "s2": "learner, no labels", ALONE_NODE: "baselines, not linked"}

    def model_of(self, node: str) -> str:
        return self.models["learner"] if node.startswith("s") else self.models["trainer"]


def write_data(plan: DemoPlan, node_dir: Path) -> None:
    """Copy the plan's data into `node_dir`/data (the paths the workers' settings name), the anchor
    file cut to the plan's size: each node has its own copy, as on separate machines."""
    src, dst = plan.data, node_dir / "data"
    dst.mkdir(parents=True, exist_ok=True)
    for part in ("shard-0", "shard-1", "eval"):
        if not (src / part).is_dir():
            raise FileNotFoundError(f"{src / part}: missing from the demo data")
        shutil.copytree(src / part, dst / part, dirs_exist_ok=True)
    lines = [t for t in (src / "anchors.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
    if len(lines) < plan.sizes.anchors:
        raise ValueError(f"{src / 'anchors.txt'}: {len(lines)} texts, the {plan.sizes.name} size needs "
                         f"{plan.sizes.anchors}")
    (dst / "anchors.txt").write_text("\n".join(lines[:plan.sizes.anchors]) + "\n", encoding="utf-8")
