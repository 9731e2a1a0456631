"""The trainer worker's settings (`[workers.settings]` of a worker with type "trainer"), checked up front.

One table lists every key: its type, default (REQUIRED when there is none) and meaning; the parser
and docs/WORKERS.md follow it. Relative paths resolve against the directory of node.toml.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..hdc.delta import MAX_BLOCK
from .base import WorkerSettingsError

__all__ = ["CODECS", "SETTINGS", "TrainerSettings", "parse_settings"]

REQUIRED = object()
MAX_CHUNK_BYTES = 4 << 20
# Arm names as in benches/bench_sync.py: a wire codec, "-ef" for error feedback.
CODECS = ("fp32", "fp16", "int8", "ternary", "ternary-ef", "ternary-rht", "ternary-rht-ef")


class _Key(NamedTuple):
    types: tuple[type, ...]
    default: Any
    doc: str


# Default codec ternary-ef with block 256: 18.5x fewer bytes per round than fp32 in
# benches/results/sync.json, keeping 87% of fp32 sync's gain on skewed shards (one seed; docs/WORKERS.md
# "Which codec"); error feedback keeps the decoded sum tracking the true sum over many rounds.
SETTINGS: dict[str, _Key] = {
    "task": _Key((str,), REQUIRED, "Task name; nodes sync only with nodes of the same task, base model and adapter "
                 "schema (topic `trainer/<task>`)."),
    "model": _Key((str,), REQUIRED, "Base model: hub id, local checkpoint directory or offline package (minilm)."),
    "train_data": _Key((str,), None, "This node's labeled training data: dataset directory or jsonl(.gz) file. "
                       "Optional: a learner without labels trains on what a local transfer student hands it "
                       "(then `classes` or `eval_data` names the classes)."),
    "train_split": _Key((str,), "train", "Split of train_data when it is a directory."),
    "eval_data": _Key((str,), None, "Labeled eval set (directory or jsonl) for the accuracy reported each round."),
    "eval_split": _Key((str,), "dev", "Split of eval_data when it is a directory (the transfer worker's default "
                       "too, and the split `meshnode data fleet` writes)."),
    "classes": _Key((list,), None, "Class names for data files without labels.json (id order)."),
    "max_train": _Key((int,), 100000, "Use at most this many training rows (a seeded sample)."),
    "max_eval": _Key((int,), 2000, "Evaluate on at most this many rows (a seeded sample)."),
    "lora_rank": _Key((int,), 8, "LoRA rank r."),
    "lora_alpha": _Key((int, float), 16, "LoRA alpha (scaling alpha / r)."),
    "lora_targets": _Key((list,), None, "Module names LoRA adapts (default: peft's choice for the architecture, "
                         "e.g. query/value for BERT)."),
    "lr": _Key((int, float), 1e-3, "AdamW learning rate (with a schedule, the scale that the schedule multiplies)."),
    "lr_schedule": _Key((str,), "constant", '"constant" or "linear": lr times a factor falling linearly to zero at '
                        "the end of round `rounds` (which must then be set). The step count is the group's round "
                        "times steps_per_round, so nodes of a group with the same schedule settings train at the "
                        "same rate, across restarts too."),
    "warmup_rounds": _Key((int,), 0, "Rounds over which a ramp from 1 / (warmup steps) to 1 multiplies the rate "
                          "(with \"linear\" the product peaks a little below lr). A learner's first teacher "
                          "versions are its worst: a warmup keeps them from steering it far."),
    "batch_size": _Key((int,), 16, "Training batch size."),
    "max_length": _Key((int,), 128, "Tokens per text (longer texts are truncated)."),
    "group_by_length": _Key((bool,), False, "Batch texts of similar length together (as transformers' "
                            "group_by_length): each epoch's shuffled order is cut in windows of 16 batches, each "
                            "sorted by length, and the batches shuffled; a batch then pads to far less. Worth it "
                            "when lengths vary a lot (short anchors beside long sentences)."),
    "steps_per_round": _Key((int,), 10, "Local optimizer steps between two syncs (K)."),
    "anchor_weight": _Key((int, float), 1.0, "Weight of a teacher-labelled anchor row in the loss, against 1 for "
                          "a row of train_data (rows come from a local transfer student's `learner` link)."),
    "balance": _Key((str,), "none", '"none" or "logit-adjust": train on logits plus the log of this node\'s own '
                    "class frequencies (Menon et al. 2021; FedLC), so a node whose labels are skewed learns "
                    "balanced scores instead of its own prior."),
    "eval_every": _Key((int,), 1, "Evaluate on eval_data every this many merged rounds (and after the last)."),
    "rounds": _Key((int,), 0, "Stop training after this many merged rounds (0: train until stopped)."),
    "codec": _Key((str,), "ternary-ef", f"Delta codec: {', '.join(CODECS)}."),
    "block": _Key((int,), 256, "Block size of the int8 and ternary codecs (a power of two for ternary-rht)."),
    "threshold": _Key((int, float), 0.7, "Ternary threshold, times the block's mean |x|."),
    "density": _Key((int, float), None, "Ternary top-k: keep this fraction of each block instead of thresholding."),
    "round_deadline": _Key((int, float), 60.0, "Seconds a node waits for the group's deltas after sending its own; "
                           "then it merges what it has."),
    "min_peers": _Key((int,), 0, "Peers of the group to wait for before the first round."),
    "hello_interval": _Key((int, float), 5.0, "Seconds between announcements of this node's round to the group."),
    "member_timeout": _Key((int, float), 30.0, "A peer not heard for this long no longer counts as a member."),
    "join_wait": _Key((int, float), None, "Seconds to listen for the group at start before training "
                      "(default: 2 x hello_interval)."),
    "chunk_bytes": _Key((int,), 1 << 20, "Largest payload of one delta packet; bigger adapters go in several."),
    "seed": _Key((int,), 0, "Seed of the adapter's initial weights (the same on every node) and of data order "
                 "(mixed with the node id)."),
    "device": _Key((str,), None, '"cpu" or "cuda" (default: CUDA when present).'),
    "threads": _Key((int,), None, "torch CPU threads (default: torch's choice)."),
    "cache_dir": _Key((str,), None, "Model conversion cache (default $MESHNODE_CACHE or ~/.cache/meshnode)."),
}


@dataclass(frozen=True)
class TrainerSettings:
    task: str
    model: str
    train_data: Path | None
    train_split: str
    eval_data: Path | None
    eval_split: str
    classes: tuple[str, ...] | None
    max_train: int
    max_eval: int
    lora_rank: int
    lora_alpha: float
    lora_targets: tuple[str, ...] | None
    lr: float
    lr_schedule: str
    warmup_rounds: int
    batch_size: int
    max_length: int
    group_by_length: bool
    steps_per_round: int
    anchor_weight: float
    balance: str
    eval_every: int
    rounds: int
    codec: str
    block: int
    threshold: float
    density: float | None
    round_deadline: float
    min_peers: int
    hello_interval: float
    member_timeout: float
    join_wait: float
    chunk_bytes: int
    seed: int
    device: str | None
    threads: int | None
    cache_dir: Path | None
    topic: str

    @property
    def error_feedback(self) -> bool:
        return self.codec.endswith("-ef")

    @property
    def wire_codec(self) -> str:
        return self.codec.removesuffix("-ef")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based, counted from round 0 of the group)."""
        factor = 1.0
        warmup = self.warmup_rounds * self.steps_per_round
        if warmup:
            factor = min(1.0, (step + 1) / warmup)
        if self.lr_schedule == "linear":
            total = self.rounds * self.steps_per_round
            factor *= max(0.0, (total - step) / total)
        return self.lr * factor


def _fail(worker: str, key: str, message: str) -> WorkerSettingsError:
    return WorkerSettingsError(f"workers.{worker}.settings.{key}: {message}")


def _names(worker: str, key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(worker, key, "expected a non-empty list of non-empty strings")
    return tuple(value)


def parse_settings(worker: str, raw: Mapping[str, Any], *, base_dir: Path | None = None) -> TrainerSettings:
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise WorkerSettingsError(f"workers.{worker}.settings: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(SETTINGS)})")
    values: dict[str, Any] = {}
    for key, spec in SETTINGS.items():
        if key not in raw:
            if spec.default is REQUIRED:
                raise _fail(worker, key, "required")
            values[key] = spec.default
            continue
        v = raw[key]
        if (isinstance(v, bool) and bool not in spec.types) or not isinstance(v, spec.types):
            names = " or ".join(t.__name__ for t in spec.types)
            raise _fail(worker, key, f"expected {names}, got {type(v).__name__}")
        values[key] = v
    task = values["task"]
    if not 1 <= len(task.encode()) <= 128 or any(c.isspace() or c == "/" for c in task):
        raise _fail(worker, "task", "1..128 bytes, no whitespace or '/'")
    for key in ("max_train", "max_eval", "lora_rank", "batch_size", "max_length", "steps_per_round", "block",
                "eval_every"):
        if values[key] < 1:
            raise _fail(worker, key, f"must be >= 1, got {values[key]}")
    if values["threads"] is not None and values["threads"] < 1:
        raise _fail(worker, "threads", "must be >= 1")
    for key in ("rounds", "min_peers", "warmup_rounds"):
        if values[key] < 0:
            raise _fail(worker, key, f"must be >= 0, got {values[key]}")
    for key in ("lr", "lora_alpha", "round_deadline", "hello_interval", "member_timeout", "anchor_weight"):
        if not values[key] > 0:
            raise _fail(worker, key, f"must be > 0, got {values[key]}")
    if values["join_wait"] is None:
        values["join_wait"] = 2.0 * values["hello_interval"]
    elif not values["join_wait"] >= 0:
        raise _fail(worker, "join_wait", "must be >= 0")
    if values["lr_schedule"] not in ("constant", "linear"):
        raise _fail(worker, "lr_schedule", f'expected "constant" or "linear", got {values["lr_schedule"]!r}')
    if values["lr_schedule"] == "linear" and values["rounds"] == 0:
        raise _fail(worker, "lr_schedule", '"linear" decays to zero at the last round: set rounds')
    if values["rounds"] and values["warmup_rounds"] >= values["rounds"]:
        raise _fail(worker, "warmup_rounds", f"must be below rounds ({values['rounds']})")
    if values["balance"] not in ("none", "logit-adjust"):
        raise _fail(worker, "balance", f'expected "none" or "logit-adjust", got {values["balance"]!r}')
    if values["codec"] not in CODECS:
        raise _fail(worker, "codec", f"expected one of {', '.join(CODECS)}, got {values['codec']!r}")
    if values["block"] > MAX_BLOCK:
        raise _fail(worker, "block", f"must be <= {MAX_BLOCK}")
    if values["codec"].startswith("ternary-rht") and values["block"] & (values["block"] - 1):
        raise _fail(worker, "block", "ternary-rht needs a power of two")
    if values["density"] is not None:
        if not values["codec"].startswith("ternary"):
            raise _fail(worker, "density", "only for the ternary codecs")
        if not 0 < values["density"] <= 1:
            raise _fail(worker, "density", "must be in (0, 1]")
        values["density"] = float(values["density"])
    if not values["threshold"] >= 0:
        raise _fail(worker, "threshold", "must be >= 0")
    if not 1024 <= values["chunk_bytes"] <= MAX_CHUNK_BYTES:
        raise _fail(worker, "chunk_bytes", f"must be in 1024..{MAX_CHUNK_BYTES}")
    if values["device"] not in (None, "cpu", "cuda") and not str(values["device"]).startswith("cuda:"):
        raise _fail(worker, "device", f'expected "cpu" or "cuda", got {values["device"]!r}')
    values["classes"] = _names(worker, "classes", values["classes"])
    values["lora_targets"] = _names(worker, "lora_targets", values["lora_targets"])
    if values["train_data"] is None and values["classes"] is None and values["eval_data"] is None:
        raise _fail(worker, "train_data", "a trainer without train_data (a learner) needs classes or eval_data "
                                          "to know its classes")
    for key in ("lora_alpha", "lr", "anchor_weight", "threshold", "round_deadline", "hello_interval",
                "member_timeout", "join_wait"):
        values[key] = float(values[key])
    for key in ("train_data", "eval_data", "cache_dir"):
        if values[key] is not None:
            values[key] = ((base_dir or Path.cwd()) / Path(values[key]).expanduser()).absolute()
    values["topic"] = f"trainer/{task}"
    names = {f.name for f in dataclasses.fields(TrainerSettings)}
    assert names == set(values), names ^ set(values)
    return TrainerSettings(**values)
