"""What a learner should train on, and how fast: arms of one SmolLM2 learner on one fixed teacher.

A learner (a trainer with no labels, docs/WORKERS.md "The knowledge loop") trains LoRA on the anchors
with what its student hands it. This bench fixes the teacher and varies only the learner:

  teacher  MiniLM-L6 + LoRA trained by the trainer worker's own code (`LoraModel`) on both demo shards
           (2000 SST-2 train sentences), the demo's trainer settings with batches of 2 x 16 for 8 rounds x
           8 steps: about the demo's two synced trainers. Its class probabilities on the demo's 300
           anchors are what every arm is taught (one fixed version: the mesh's early, less sure
           versions are not modelled).
  arms     the demo's learner (SmolLM2-135M, LoRA r 8 on q/v, batch 8, 40 tokens, 10 rounds x 8 steps)
           taught the teacher's scores (`soft`) or its predicted class (`hard`), at the old rate (1e-3
           constant) or a warmup + linear decay (2 warmup rounds) at 3e-3 / 5e-3, with and without
           `group_by_length`.

Selection data: 300 SST-2 *train* sentences in neither shard nor the anchors (3+ words, seeded): the
defaults (learner_targets, the rate) are read off these, never off dev. SST-2's train split holds
phrases of its sentences, so some of these overlap anchor or shard texts in part (every arm alike).
Dev (872) is reported beside them. One seed: a check of a recipe, not an interval. `train_s` is each arm's training time on this machine (threads as given), in the same run.

    .venv/bin/python benches/bench_learner_recipe.py            # benches/results/learner_recipe.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "benches" / "results"
DATA = ROOT / "meshnode" / "demo" / "data" / "sst2"
ARMS = (  # name, targets, lr, schedule, warmup rounds, group_by_length
    ("soft-1e-3-constant", "soft", 1e-3, "constant", 0, False),   # the learner before this bench
    ("hard-1e-3-constant", "hard", 1e-3, "constant", 0, False),
    ("soft-3e-3-linear", "soft", 3e-3, "linear", 2, False),
    ("hard-3e-3-linear", "hard", 3e-3, "linear", 2, False),
    ("hard-5e-3-linear", "hard", 5e-3, "linear", 2, False),
    ("hard-3e-3-linear-grouped", "hard", 3e-3, "linear", 2, True),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def heldout(shared: Path, out: Path, n: int = 300) -> Path:
    """`n` SST-2 train sentences that are in neither demo shard nor the anchors, as an eval directory."""
    norm = lambda t: " ".join(t.split())  # noqa: E731
    used = {norm(json.loads(line)["text"]) for s in ("shard-0", "shard-1")
            for line in (DATA / s / "train.jsonl").read_text().splitlines()}
    used |= {norm(t) for t in (DATA / "anchors.txt").read_text().splitlines() if t.strip()}
    rows = [json.loads(line) for line in gzip.open(shared / "sst2" / "train.jsonl.gz", "rt")]
    order = np.random.default_rng(1234).permutation(len(rows))
    picked = [rows[i] for i in order if norm(rows[i]["text"]) not in used and len(rows[i]["text"].split()) >= 3][:n]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picked))
    (out / "labels.json").write_text((DATA / "eval" / "labels.json").read_text())
    return out


def settings(**over: Any) -> Any:
    from meshnode.workers.trainer_settings import parse_settings

    return parse_settings("bench", over, base_dir=ROOT)


def accuracy(model: Any, eval_dir: Path) -> float:
    from meshnode.data import load_split

    data = load_split(eval_dir, "dev")
    probs = model.predict(list(data.texts))
    return float((probs.argmax(1) == data.labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "learner_recipe.json")
    args = ap.parse_args()

    from meshnode.demo.plan import DEFAULT
    from meshnode.workers.trainer_model import LoraModel

    z = DEFAULT
    anchors = tuple(t for t in (DATA / "anchors.txt").read_text().splitlines() if t.strip())[:z.anchors]
    with tempfile.TemporaryDirectory(prefix="recipe-") as tmp:
        tmp_dir = Path(tmp)
        hold = heldout(args.shared, tmp_dir / "heldout")
        union = tmp_dir / "union"
        union.mkdir()
        (union / "train.jsonl").write_text("".join((DATA / s / "train.jsonl").read_text() for s in ("shard-0", "shard-1")))
        (union / "labels.json").write_text((DATA / "eval" / "labels.json").read_text())
        common = {"task": "sst2", "eval_data": str(DATA / "eval"), "max_eval": 100_000, "lora_rank": z.lora_rank,
                  "max_length": z.max_length, "threads": args.threads, "device": "cpu"}
        t0 = time.perf_counter()
        # The demo's two synced trainers average their two batches each step: about one model taking
        # the same number of steps on batches twice as large, drawn from both shards.
        teacher = LoraModel(settings(**common, model="minilm", train_data=str(union), batch_size=2 * z.trainer_batch,
                                     lr=z.trainer_lr, steps_per_round=z.trainer_steps), node_id=b"teacher".ljust(32, b"\0"))
        steps = z.trainer_rounds * z.trainer_steps
        teacher.train(steps)
        probs = teacher.predict(list(anchors))
        record: dict[str, Any] = {
            "teacher": {"model": "minilm", "steps": steps, "train_rows": teacher.labelled_rows,
                        "dev": accuracy(teacher, DATA / "eval"), "heldout": accuracy(teacher, hold),
                        "anchor_mean_max_prob": float(probs.max(1).mean()),
                        "anchor_class_share": (np.bincount(probs.argmax(1), minlength=probs.shape[1])
                                               / len(probs)).tolist(),
                        "seconds": round(time.perf_counter() - t0, 1)},
            "learner": {"model": "smollm2", "rounds": args.rounds, "steps_per_round": z.learner_steps,
                        "batch_size": z.learner_batch, "max_length": z.max_length, "anchors": len(anchors)},
            "selection": "heldout: 300 SST-2 train sentences in neither shard nor the anchors (never dev)",
            "arms": {},
        }
        log(f"teacher: dev {record['teacher']['dev']:.3f}, held-out {record['teacher']['heldout']:.3f}, "
            f"mean max prob on the anchors {record['teacher']['anchor_mean_max_prob']:.3f}")
        del teacher
        for name, targets, lr, schedule, warmup, grouped in ARMS:
            cfg = settings(**common, model="smollm2", classes=["negative", "positive"], batch_size=z.learner_batch,
                           lr=lr, lr_schedule=schedule, warmup_rounds=min(warmup, args.rounds - 1),
                           steps_per_round=z.learner_steps,
                           rounds=args.rounds, group_by_length=grouped, lora_targets=["q_proj", "v_proj"])
            model = LoraModel(cfg, node_id=b"learner".ljust(32, b"\0"))
            taught = probs if targets == "soft" else np.eye(probs.shape[1], dtype=np.float32)[probs.argmax(1)]
            model.set_targets(anchors, taught.astype(np.float32))
            t1 = time.perf_counter()
            losses = [model.train(cfg.steps_per_round, first_step=r * cfg.steps_per_round) for r in range(args.rounds)]
            train_s = time.perf_counter() - t1
            arm = {"targets": targets, "lr": lr, "lr_schedule": schedule, "warmup_rounds": warmup,
                   "group_by_length": grouped, "loss_by_round": [round(x, 4) for x in losses],
                   "train_s": round(train_s, 1), "heldout": accuracy(model, hold), "dev": accuracy(model, DATA / "eval")}
            record["arms"][name] = arm
            log(f"{name}: held-out {arm['heldout']:.3f}, dev {arm['dev']:.3f}, train {arm['train_s']} s, "
                f"last loss {arm['loss_by_round'][-1]}")
            del model
    record["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                         "python": platform.python_version(), "loadavg": os.getloadavg()}
    record["seeds"] = "one (seed 0 everywhere): a recipe check, not an interval"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
