"""The transfer worker's settings (`[workers.settings]` of a worker with type "transfer"), checked up front.

One table lists every key: its type, default (REQUIRED when there is none), which role may use it
and what it means; the parser and docs/WORKERS.md follow it. Relative paths are resolved against
the directory of the node.toml (`base_dir`), like every other path in that file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..hdc.space import ENCODER_VERSION, ENCODER_VERSIONS, MAX_DIM
from .anchors import MAX_ANCHORS
from .base import WorkerSettingsError
from .transfer_model import ALIGNMENTS, ANCHOR_LABELS
from .transfer_protocol import FORMS, MAX_CHUNK_BYTES, check_task_name, topic_for

__all__ = ["SETTINGS", "TransferSettings", "parse_settings"]

REQUIRED = object()
BOTH, TEACHER, STUDENT = "both", "teacher", "student"


class _Key(NamedTuple):
    types: tuple[type, ...]
    default: Any
    role: str
    doc: str


# The default alignment is "anchor-labels" with soft predictions: in benches/results/transfer.json
# (SST-2 and AG News, MiniLM <-> SmolLM2, 3 seeds, D = 10000) the teacher's soft predictions on the
# anchors are within 1 point of the best method in 7 of 10 cells at ~2.3 kB for N = 500, against
# ~1 MB of ternary anchors for any map. The exceptions need a map: SST-2 at N = 100 (CCA / Procrustes,
# 1.2-1.4 points better) and SST-2 N = 2000 MiniLM -> SmolLM2 (ridge, 1.5 better). docs/WORKERS.md.
SETTINGS: dict[str, _Key] = {
    "role": _Key((str,), REQUIRED, BOTH, '"teacher" or "student".'),
    "task": _Key((str,), REQUIRED, BOTH, "Task name; teachers and students of one task find each other by it "
                 "(topic `transfer/<task>`)."),
    "model": _Key((str,), REQUIRED, BOTH, "Hub id, local checkpoint directory, .gguf file or offline package "
                  "(minilm, smollm2, mpnet)."),
    "anchors": _Key((str,), REQUIRED, BOTH, "Anchor file: unlabeled texts, one per line (.txt) or jsonl with "
                    '"text"; identical on every participant (only its hash travels).'),
    "anchor_set": _Key((str,), None, BOTH, "Name of the anchor set (default: the file's stem)."),
    "max_anchors": _Key((int,), 20000, BOTH, "Refuse anchor files with more texts."),
    "space_seed": _Key((int,), 0, BOTH, "Seed of the shared HDC space."),
    "dim": _Key((int,), 10000, BOTH, "Dimension D of the shared HDC space."),
    # 1, not ENCODER_VERSION: version 2 whitens with the anchor statistics, which this worker does not
    # pass to Space.encode yet (issue 17; docs/WORKERS.md)
    "space_version": _Key((int,), ENCODER_VERSION, BOTH, "Encoder version of the space: 2 (projection of the "
                          "centred embedding after a partial whitening from this node's own anchors) or 1 (no "
                          "whitening; what nodes before version 2 speak)."),
    "tau": _Key((int, float), 0.3, BOTH, "Ternary threshold: zero where |x| <= tau * std of the vector."),
    "topic": _Key((str,), None, BOTH, "Topic instead of transfer/<task>."),
    "classes": _Key((list,), None, BOTH, "Class names for data files without labels.json (id order)."),
    "eval_data": _Key((str,), None, BOTH, "Labeled eval set (dataset directory or jsonl file) to report accuracy."),
    "eval_split": _Key((str,), "dev", BOTH, "Split of eval_data when it is a directory (the trainer's default "
                       "too, and the split `meshnode data fleet` writes)."),
    "max_eval": _Key((int,), 5000, BOTH, "Evaluate on at most this many rows (a seeded sample)."),
    "device": _Key((str,), None, BOTH, '"cpu" or "cuda" (default: CUDA when present).'),
    "cache_dir": _Key((str,), None, BOTH, "Model conversion and embedding cache (default $MESHNODE_CACHE "
                      "or ~/.cache/meshnode)."),
    "batch_size": _Key((int,), 32, BOTH, "Texts per forward pass."),
    "max_length": _Key((int,), 128, BOTH, "Tokens per text (longer texts are truncated)."),
    "seed": _Key((int,), 0, BOTH, "Seed for sampling and the contrastive aligner."),
    "threads": _Key((int,), None, BOTH, "torch CPU threads (default: torch's choice; torch has one setting per "
                    "process, so the last worker to set it wins)."),
    # teacher
    "train_data": _Key((str,), REQUIRED, TEACHER, "Labeled training set (dataset directory or jsonl file); "
                       "not with `trainer`, whose model already learnt from its own data."),
    "trainer": _Key((str,), None, TEACHER, "Name of a trainer worker on this node: teach what its synchronised "
                    "adapter predicts on the anchors instead of a frozen probe, and publish a new version as it "
                    "advances."),
    "publish_every": _Key((int,), 5, TEACHER, "With `trainer`: a new version after this many merged rounds."),
    "publish_margin": _Key((int, float), 0.01, TEACHER, "With `trainer`: a new version as soon as the trainer's eval "
                           "accuracy rose this much over the last version's."),
    "train_split": _Key((str,), "train", TEACHER, "Split of train_data when it is a directory."),
    "max_train": _Key((int,), 20000, TEACHER, "Train on at most this many rows (a seeded sample)."),
    "knowledge": _Key((list,), ["linear", "predictions"], TEACHER, "Knowledge forms to publish: linear, "
                      "prototypes, predictions."),
    "predictions": _Key((str,), "soft", TEACHER, '"soft" (N x C scores) or "hard" (N labels).'),
    "probe": _Key((str,), "ridge", TEACHER, '"ridge" (closed form) or "logistic" (cross-validated).'),
    "half": _Key((bool,), True, TEACHER, "Send float knowledge as f16 (else f32)."),
    "send_anchors": _Key((str,), "on_request", TEACHER, '"on_request" (when a student asks for them), "always" '
                         'or "never".'),
    "republish_interval": _Key((int, float), 300.0, TEACHER, "Seconds between periodic republishing."),
    "min_republish_gap": _Key((int, float), 5.0, TEACHER, "At least this many seconds between two rounds."),
    "chunk_bytes": _Key((int,), 512 << 10, TEACHER, "Packed anchor bytes per packet (at most 3 MiB)."),
    "chunk_interval": _Key((int, float), 0.02, TEACHER, "Seconds between two anchor chunks of a round."),
    # student
    "alignment": _Key((str,), ANCHOR_LABELS, STUDENT, "anchor-labels (no map; uses the teacher's predictions) "
                      "or a map: ridge, cca, procrustes, contrastive, none."),
    "teacher": _Key((str,), None, STUDENT, "Accept only the teacher whose node id starts with this hex."),
    "announce_interval": _Key((int, float), 10.0, STUDENT, "Seconds between hellos until a teacher is adopted."),
    "max_teachers": _Key((int,), 8, STUDENT, "Teacher versions assembled at once (memory: N x D bytes each)."),
    "learner": _Key((str,), None, STUDENT, "Name of a trainer worker on this node (same task, any train_data or "
                    "none) that trains its LoRA adapter on the anchors with the teacher's labels (`learner_targets`)."),
    "learner_targets": _Key((str,), "hard", STUDENT, 'What the learner trains on: "hard" (the teacher\'s '
                            'predicted class, one-hot) or "soft" (its scores). A teacher a few rounds into '
                            "training scores every anchor near 1/C; its argmax still carries what it knows "
                            "(docs/WORKERS.md \"The knowledge loop\")."),
    "pool": _Key((str,), None, STUDENT, "With `learner` and a map: more unlabeled texts (file like `anchors`) that "
                 "the map pseudo-labels for the learner too."),
}


@dataclass(frozen=True)
class TransferSettings:
    role: str
    task: str
    model: str
    anchors: Path
    anchor_set: str | None
    max_anchors: int
    space_seed: int
    dim: int
    space_version: int
    tau: float
    topic: str
    classes: tuple[str, ...] | None
    eval_data: Path | None
    eval_split: str
    max_eval: int
    device: str | None
    cache_dir: Path | None
    batch_size: int
    max_length: int
    seed: int
    threads: int | None
    train_data: Path | None
    train_split: str
    max_train: int
    knowledge: tuple[str, ...]
    predictions: str
    probe: str
    half: bool
    send_anchors: str
    republish_interval: float
    min_republish_gap: float
    chunk_bytes: int
    chunk_interval: float
    alignment: str
    teacher: str | None
    announce_interval: float
    max_teachers: int
    trainer: str | None
    publish_every: int
    publish_margin: float
    learner: str | None
    learner_targets: str
    pool: Path | None

    @property
    def needs_anchors(self) -> bool:
        return self.alignment != ANCHOR_LABELS


def _fail(worker: str, key: str, problem: str) -> WorkerSettingsError:
    return WorkerSettingsError(f"workers.{worker}.settings.{key}: {problem}")


def _choice(worker: str, key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(worker, key, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def parse_settings(worker: str, raw: Mapping[str, Any], *, base_dir: Path | None = None) -> TransferSettings:
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise WorkerSettingsError(f"workers.{worker}.settings: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(SETTINGS)})")
    role = raw.get("role")
    if role not in (TEACHER, STUDENT):
        raise _fail(worker, "role", f'expected "teacher" or "student", got {role!r}')
    values: dict[str, Any] = {}
    for key, spec in SETTINGS.items():
        if spec.role not in (BOTH, role):
            if key in raw:
                raise _fail(worker, key, f"only for role {spec.role!r} (this worker is a {role})")
            values[key] = None if spec.default is REQUIRED else spec.default
            continue
        if key not in raw:
            if spec.default is REQUIRED and not (key == "train_data" and raw.get("trainer") is not None):
                raise _fail(worker, key, "required")
            values[key] = None if spec.default is REQUIRED else spec.default
            continue
        v = raw[key]
        if isinstance(v, bool) and bool not in spec.types or not isinstance(v, spec.types):
            names = " or ".join(t.__name__ for t in spec.types)
            raise _fail(worker, key, f"expected {names}, got {type(v).__name__}")
        values[key] = v
    try:
        check_task_name(values["task"])
    except ValueError as e:
        raise _fail(worker, "task", str(e)) from None
    if values["trainer"] is not None and values["train_data"] is not None:
        raise _fail(worker, "train_data", "not used with trainer: the teacher teaches what that trainer's model "
                                          "learnt from its own train_data")
    for key in ("trainer", "learner"):
        if values[key] is not None and not values[key]:
            raise _fail(worker, key, "expected the name of a trainer worker on this node")
    if values["pool"] is not None and (values["learner"] is None or values["alignment"] == ANCHOR_LABELS):
        raise _fail(worker, "pool", "only with learner and a map alignment (ridge, cca, procrustes, contrastive, "
                                    "none): the map pseudo-labels the pool")
    for key in ("dim", "batch_size", "max_length", "max_anchors", "max_eval", "max_train", "max_teachers",
                "publish_every", "threads"):
        if values[key] is not None and values[key] < 1:
            raise _fail(worker, key, f"must be >= 1, got {values[key]}")
    if not values["dim"] <= MAX_DIM:
        raise _fail(worker, "dim", f"must be <= {MAX_DIM}")
    if not 2 <= values["max_anchors"] <= MAX_ANCHORS:
        raise _fail(worker, "max_anchors", f"must be in 2..{MAX_ANCHORS}")
    if not 0 <= values["space_seed"] < 1 << 64:
        raise _fail(worker, "space_seed", "must be in 0..2**64-1")
    if values["space_version"] not in ENCODER_VERSIONS:
        raise _fail(worker, "space_version", f"this node has encoder versions {', '.join(map(str, ENCODER_VERSIONS))}, "
                                             f"got {values['space_version']}")
    if not values["tau"] >= 0:
        raise _fail(worker, "tau", "must be >= 0")
    for key in ("republish_interval", "announce_interval"):
        if values[key] is not None and not values[key] > 0:
            raise _fail(worker, key, f"must be > 0, got {values[key]}")
    for key in ("min_republish_gap", "chunk_interval", "publish_margin"):
        if values[key] is not None and not values[key] >= 0:
            raise _fail(worker, key, f"must be >= 0, got {values[key]}")
    if values["chunk_bytes"] is not None and not 1024 <= values["chunk_bytes"] <= MAX_CHUNK_BYTES:
        raise _fail(worker, "chunk_bytes", f"must be in 1024..{MAX_CHUNK_BYTES}")
    _choice(worker, "alignment", values["alignment"], ALIGNMENTS)
    _choice(worker, "predictions", values["predictions"], ("soft", "hard"))
    _choice(worker, "learner_targets", values["learner_targets"], ("soft", "hard"))
    _choice(worker, "probe", values["probe"], ("ridge", "logistic"))
    _choice(worker, "send_anchors", values["send_anchors"], ("on_request", "always", "never"))
    forms = values["knowledge"]
    if not forms or not all(isinstance(f, str) and f in FORMS for f in forms) or len(set(forms)) != len(forms):
        raise _fail(worker, "knowledge", f"expected a non-empty list of distinct forms from {', '.join(FORMS)}, "
                                         f"got {forms!r}")
    classes = values["classes"]
    if classes is not None and (not classes or not all(isinstance(c, str) and c for c in classes)):
        raise _fail(worker, "classes", "expected a non-empty list of class names")
    if values["teacher"] is not None:
        t = values["teacher"].lower()
        if not t or len(t) > 64 or any(ch not in "0123456789abcdef" for ch in t):
            raise _fail(worker, "teacher", "expected a hex prefix of the teacher's node id")
        values["teacher"] = t
    topic = values["topic"] if values["topic"] is not None else topic_for(values["task"])
    if not 1 <= len(topic.encode()) <= 256:
        raise _fail(worker, "topic", "must be 1..256 bytes")
    values["topic"] = topic
    values["knowledge"] = tuple(forms)
    values["classes"] = tuple(classes) if classes is not None else None
    values["tau"] = float(values["tau"])
    if values["publish_margin"] is not None:
        values["publish_margin"] = float(values["publish_margin"])
    for key in ("anchors", "eval_data", "cache_dir", "train_data", "pool"):
        if values[key] is not None:
            values[key] = ((base_dir or Path.cwd()) / Path(values[key]).expanduser()).absolute()
    names = {f.name for f in dataclasses.fields(TransferSettings)}
    assert names == set(values), names ^ set(values)
    return TransferSettings(**values)
