"""Beyond frozen probes: LoRA distillation across architectures on the teacher's soft labels (SST-2).

Issue 5, last part. A teacher whose LoRA adapter was fine-tuned on gold labels sends only its
temperature-softened class probabilities on N shared anchor texts (N x C floats, f16 on the wire); a
student of another architecture fine-tunes its *own* LoRA adapter + classification head on those soft
labels alone (no labels of its own). Compared on the SST-2 dev set (872 GLUE dev sentences):

- teacher      : MiniLM-L6 + LoRA (r=8, query/value) + linear head, cross-entropy on gold labels of the
                 labelled shard (the teacher's knowledge);
- student-lora : SmolLM2-135M + LoRA (r=8, q_proj/v_proj) + linear head, KL to the teacher's
                 softened probabilities on the N anchors, nothing else;
- frozen probes of the student (E's bench, same HDC space / ridge probe / split): `ceiling` (gold
  labels on the 2000-text labelled shard), `anchors-teacher` and `anchors-soft` (its probe on the N
  anchors labelled by *this* LoRA teacher: hard labels / ridge onto the soft probabilities).
- with `--aligned-epochs E`, the teacher's *aligned knowledge* too (bench_transfer's wire-honest ridge
  arm: its ternary anchor vectors and a ridge probe on its frozen HDC vectors of its gold shard):
  `frozen-aligned` (that map + probe on the student's test vectors) and `student-lora-aligned` (the
  student's LoRA on the anchors' soft labels plus the rest of the anchor pool, texts it holds
  unlabelled, pseudo-labelled through the map; E epochs).

With `--teacher-source mesh` the teacher is not trained by this bench: the `trainer` worker trains it
on real daemons (bench_trainer's harness: in-process nodes, TLS on loopback, the labelled shard split
across the nodes, compressed deltas, fixed rounds), and the teacher is rebuilt from a node's
checkpoint (safetensors) exactly as the worker left it — the issue's "teacher whose LoRA adapter was
fine-tuned by the trainer worker". That teacher is the worker's model (transformers'
sequence-classification head, peft LoRA), not this bench's mean-pooled `Classifier`.

Split: exactly bench_transfer's: a seeded pool of 4000 train sentences (DATA_SEED), per seed
perm = default_rng(seed).permutation(4000); anchors = perm[:N] (unlabelled), labelled shard =
perm[2000:] (the teacher's gold-labelled training set and the student's ceiling set). Anchors,
labelled shard and dev are disjoint; nothing is selected on dev (fixed schedules, no early stopping).

    .venv/bin/python benches/bench_distill.py                 # SST-2, MiniLM -> SmolLM2, N=500, 2 seeds
    .venv/bin/python benches/bench_distill.py --quick         # tiny random models, synthetic texts
    .venv/bin/python benches/bench_distill.py --teacher-source mesh --student-epochs 100:15,500:3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benches"))

import bench_transfer as bt  # noqa: E402  (E's split, probes, stats and wire-byte helpers)
from meshnode.hdc.align import gcv_ridge  # noqa: E402
from meshnode.hdc.knowledge import PredictionKnowledge, anchor_hash  # noqa: E402
from meshnode.hdc.space import Space, ternarize  # noqa: E402

RESULTS = ROOT / "benches" / "results"
LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}


@dataclass(frozen=True)
class Schedule:
    """One fine-tuning run: fixed, never tuned on dev."""

    epochs: int
    batch_size: int
    lr_lora: float
    lr_head: float
    max_len: int = 64
    rank: int = 8
    alpha: int = 16


@dataclass(frozen=True)
class MeshSchedule:
    """How the trainer worker trains a mesh teacher: fixed in advance, never tuned on dev."""

    nodes: int = 2
    rounds: int = 10
    steps_per_round: int = 10
    batch_size: int = 16
    lr: float = 1e-3           # the worker's default
    max_len: int = 64
    codec: str = "ternary-ef"  # the worker's default
    eval: int = 200            # dev texts the worker evaluates after each round (its log only)


@dataclass(frozen=True)
class Settings:
    teacher: str
    student: str
    anchors: tuple[int, ...]
    seeds: tuple[int, ...]
    temperature: float
    teacher_schedule: Schedule
    student_schedule: Schedule
    dim: int
    labelled_cap: int | None   # how many of the labelled shard the teacher trains on (None: all)
    teacher_source: str = "bench"          # "bench": Classifier.fit here; "mesh": the trainer worker
    mesh: MeshSchedule | None = None
    student_epochs_by_n: tuple[tuple[int, int], ...] = ()   # (N, epochs) overriding student_schedule
    aligned_epochs: int = 0    # > 0: also the student LoRA on anchors + aligned pseudo-labels (that many epochs)

    def student_schedule_for(self, n: int) -> Schedule:
        epochs = dict(self.student_epochs_by_n).get(n, self.student_schedule.epochs)
        return replace(self.student_schedule, epochs=epochs)


# ------------------------------------------------------------------------------------------ models


class Classifier:
    """A frozen base model with a LoRA adapter, attention-masked mean pooling and a linear head."""

    def __init__(self, base: Any, tokenizer: Any, n_classes: int, sched: Schedule, seed: int) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        self.sched = sched
        targets = LORA_TARGETS[base.config.model_type] if base.config.model_type in LORA_TARGETS else None
        cfg = LoraConfig(r=sched.rank, lora_alpha=sched.alpha, lora_dropout=0.0, target_modules=targets)
        self.model = get_peft_model(base, cfg)
        self.head = torch.nn.Linear(int(base.config.hidden_size), n_classes)
        self.model.train()

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad) + \
            sum(p.numel() for p in self.head.parameters())

    def logits(self, texts: Sequence[str]) -> Any:
        from meshnode.models import mean_pool

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.sched.max_len,
                             return_tensors="pt")
        hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return self.head(mean_pool(hidden, enc["attention_mask"]))

    def fit(self, texts: Sequence[str], targets: np.ndarray, *, soft: bool, temperature: float, seed: int,
            log: Callable[[str], None]) -> dict[str, Any]:
        """Cross-entropy on class ids (soft=False) or KL to soft probabilities at `temperature`."""
        import torch
        import torch.nn.functional as F

        s = self.sched
        lora = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": lora, "lr": s.lr_lora}, {"params": self.head.parameters(), "lr": s.lr_head}],
                                weight_decay=0.0)
        steps = s.epochs * ((len(texts) + s.batch_size - 1) // s.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, steps // 10))
                                                  * max(0.0, (steps - i) / steps))
        rng = np.random.default_rng(seed)
        y = torch.as_tensor(targets)
        t0, losses, step = time.perf_counter(), [], 0
        self.model.train()
        for epoch in range(s.epochs):
            order = rng.permutation(len(texts))
            for start in range(0, len(order), s.batch_size):
                idx = order[start:start + s.batch_size]
                z = self.logits([texts[i] for i in idx])
                if soft:
                    # Hinton KD: KL(p_T || q_T) scaled by T^2 so gradients keep their size across T
                    loss = F.kl_div(F.log_softmax(z / temperature, -1), y[idx].float(), reduction="batchmean") \
                        * temperature ** 2
                else:
                    loss = F.cross_entropy(z, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss))
                step += 1
            log(f"    epoch {epoch + 1}/{s.epochs}: loss {np.mean(losses[-max(1, len(order) // s.batch_size):]):.4f}")
        return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "loss_first": losses[0],
                "loss_last_epoch": float(np.mean(losses[-max(1, len(texts) // s.batch_size):]))}

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.head.out_features), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                out[idx] = self.logits([texts[i] for i in idx]).float().numpy()
        self.model.train()
        return out


def softened(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class MeshTeacher:
    """A teacher the trainer worker fine-tuned: its model rebuilt from the settings the worker ran with,
    the adapter read from a node's checkpoint (safetensors, nothing unpickled)."""

    def __init__(self, worker_settings: dict[str, Any], checkpoint: Path) -> None:
        from meshnode.workers.trainer_model import LoraModel
        from meshnode.workers.trainer_settings import parse_settings

        self.model = LoraModel(parse_settings("teacher", worker_settings), node_id=b"teacher!")
        self.model.load(adapter_of(checkpoint))

    def trainable(self) -> int:
        return self.model.numel

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        # log-probabilities are logits up to a per-row constant, which softmax at any T ignores
        return np.log(np.clip(self.model.predict(list(texts)), 1e-12, None)).astype(np.float32)


def adapter_of(checkpoint: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k.removeprefix("adapter/"): v for k, v in load_file(str(checkpoint)).items() if k.startswith("adapter/")}


def train_on_mesh(spec: str, texts: Sequence[str], labels: np.ndarray, classes: Sequence[str], dev: bt.TaskData,
                  ms: MeshSchedule, seed: int, threads: int, workdir: Path, log: Callable[[str], None]
                  ) -> tuple[MeshTeacher, dict[str, Any]]:
    """The trainer worker on `ms.nodes` real daemons, the labelled shard dealt round-robin (IID) to the
    nodes; returns the teacher as node 0's last checkpoint left it, and what the worker reported."""
    import asyncio

    import bench_trainer

    rows = [{"text": t, "label": int(y)} for t, y in zip(texts, labels)]
    shards = [rows[i::ms.nodes] for i in range(ms.nodes)]
    pick = np.random.default_rng(seed).permutation(len(dev.test_texts))[: ms.eval]
    dev_rows = [{"text": dev.test_texts[i], "label": int(dev.test_labels[i])} for i in sorted(pick)]
    model_type = _model_type(spec)
    targets = LORA_TARGETS.get(model_type, ["query", "value"])
    ns = argparse.Namespace(lr=ms.lr, batch=ms.batch_size, max_len=ms.max_len, steps=ms.steps_per_round,
                           rounds=ms.rounds, threads=threads, timeout=3600.0, seed=seed, lora_targets=",".join(targets))
    t0 = time.perf_counter()
    extra = {"cache_dir": str(bt.CACHE)}
    arm = asyncio.run(bench_trainer.run_arm(ns, ms.codec, spec, shards, dev_rows, workdir, classes=classes,
                                            extra=extra))
    checkpoints = [workdir / f"n{i}" / "data" / "workers" / "lora" / "adapter.safetensors" for i in range(ms.nodes)]
    adapters = [adapter_of(c) for c in checkpoints]
    identical = all(set(a) == set(adapters[0]) and all(np.array_equal(a[k], adapters[0][k]) for k in a)
                    for a in adapters)
    # node 0's own settings (run_arm's layout), so the teacher is rebuilt exactly as the worker built it
    settings = bench_trainer.worker_settings(ns, ms.codec, spec, workdir / "shard0" / "train.jsonl",
                                             workdir / "dev" / "dev.jsonl", ms.nodes, extra)
    teacher = MeshTeacher(settings, checkpoints[0])
    # the rebuilt teacher must be the worker's model: same accuracy on the sample the worker evaluated last
    rebuilt = float((teacher.predict_logits([r["text"] for r in dev_rows]).argmax(1)
                     == np.array([r["label"] for r in dev_rows])).mean())
    info = {"mesh_nodes": ms.nodes, "mesh_rounds": ms.rounds, "mesh_steps_per_round": ms.steps_per_round,
            "codec": ms.codec, "bytes_per_round_per_node": arm["bytes_per_round_per_node"],
            "all_merged_every_round": arm["all_merged_every_round"],
            "identical_adapters_every_round": arm["identical_adapters_every_round"],
            "checkpoints_identical": identical, "worker_dev_sample_accuracy_by_round": arm["accuracy_by_round"],
            "rebuilt_dev_sample_accuracy": rebuilt,
            "loss_by_round": [r["loss"] for r in arm["rounds"]], "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  mesh teacher: {ms.rounds} rounds x {ms.steps_per_round} steps on {ms.nodes} daemons, "
        f"{arm['bytes_per_round_per_node']:.0f} B/round/node ({ms.codec}), checkpoints identical: {identical}")
    return teacher, info


def _model_type(spec: str) -> str:
    from transformers import AutoConfig

    from meshnode.models import checkpoint_path

    path, _ = checkpoint_path(spec, cache_dir=bt.CACHE)
    return str(AutoConfig.from_pretrained(path).model_type)


# ------------------------------------------------------------------------------------------ tasks


@dataclass
class Models:
    """How to get a fresh base model (+ tokenizer) per fit, and each model's frozen embeddings."""

    load: Callable[[str], tuple[Any, Any]]
    frozen: dict[str, tuple[np.ndarray, np.ndarray]]   # model -> (pool, test) frozen embeddings
    spec: Callable[[str, Path], str]   # what the trainer worker loads (hub id, package or a directory under Path)


def real_models(task: bt.TaskData, names: Sequence[str], log: Callable[[str], None]) -> Models:
    from meshnode.models import load_model

    def load(name: str) -> tuple[Any, Any]:
        model, tok, _ = load_model(name, cache_dir=bt.CACHE, device="cpu")
        return model, tok

    frozen = {}
    for name in names:
        # E's cached frozen embeddings (max 128 tokens): the same vectors as bench_transfer
        pool, test, info = bt.embed_task(name, task)
        frozen[name] = (pool, test)
        log(f"frozen embeddings {name}: {info}")
    return Models(load, frozen, lambda name, _workdir: name)


def quick_task(seed: int = 0) -> bt.TaskData:
    """Synthetic two-class texts: sentiment words in filler, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    pos, neg = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "movie", "was", "a", "plot", "and", "it", "film"]

    def make(n: int) -> tuple[list[str], np.ndarray]:
        y = rng.integers(0, 2, n)
        texts = [" ".join(list(rng.choice(filler, 4)) + [str(rng.choice(pos if c else neg))] + list(rng.choice(filler, 2)))
                 for c in y]
        return texts, y.astype(np.int64)

    pool, y_pool = make(160)
    test, y_test = make(80)
    return bt.TaskData("synthetic", ("negative", "positive"), pool, y_pool, test, y_test)


def quick_models(task: bt.TaskData, tokenizer_dir: Path) -> Models:
    """Tiny random BERT and LLaMA (built from configs) sharing one WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    def load(name: str) -> tuple[Any, Any]:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0 if name == "tiny-bert" else 1)
        if name == "tiny-bert":
            cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=128,
                             # no dropout: dropout draws from torch's global RNG, which the two in-process
                             # daemons share, so a smoke run would depend on thread timing
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            return BertModel(cfg).eval(), tok
        cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128,
                          pad_token_id=tok.pad_token_id)
        return LlamaModel(cfg).eval(), tok

    from meshnode.models import Embedder

    frozen = {}
    for name in ("tiny-bert", "tiny-llama"):
        model, tok = load(name)
        emb = Embedder(model, tok, name=name, max_length=64)
        frozen[name] = (emb.embed(task.pool_texts), emb.embed(task.test_texts))
    def spec(name: str, workdir: Path) -> str:
        # the worker loads models by path: save the tiny model (and its tokenizer) where it can find them
        model, tok = load(name)
        model.save_pretrained(workdir / name)
        tok.save_pretrained(workdir / name)
        return str(workdir / name)

    return Models(load, frozen, spec)


# ------------------------------------------------------------------------------------------ run


def run(task: bt.TaskData, models: Models, st: Settings, anchor_pool: int, log: Callable[[str], None],
        threads: int = 1) -> dict[str, Any]:
    c = len(task.classes)
    y_test = task.test_labels
    chance = float(np.bincount(y_test, minlength=c).max() / len(y_test))
    sp, s_test = models.frozen[st.student]
    s_center = sp.mean(0)
    correct: dict[str, list[np.ndarray]] = {}
    fits: list[dict[str, Any]] = []
    wire: dict[str, int] = {}

    def record(arm: str, pred: np.ndarray) -> None:
        correct.setdefault(arm, []).append(pred == y_test)

    for seed in st.seeds:
        perm = np.random.default_rng(seed).permutation(len(task.pool_texts))
        lab = perm[anchor_pool:]
        if st.labelled_cap:
            lab = lab[:st.labelled_cap]
        lab_texts = [task.pool_texts[i] for i in lab]
        # ---- teacher: LoRA + head on gold labels of the labelled shard
        log(f"seed {seed}: teacher {st.teacher} on {len(lab)} gold-labelled texts ({st.teacher_source})")
        teacher: Classifier | MeshTeacher
        if st.teacher_source == "mesh":
            assert st.mesh is not None
            with tempfile.TemporaryDirectory(prefix="distill-mesh-") as tmp:
                spec = models.spec(st.teacher, Path(tmp))
                teacher, fit_t = train_on_mesh(spec, lab_texts, task.pool_labels[lab], task.classes, task, st.mesh,
                                               seed, threads, Path(tmp) / "mesh", log)
        else:
            base, tok = models.load(st.teacher)
            teacher = Classifier(base, tok, c, st.teacher_schedule, seed)
            fit_t = teacher.fit(lab_texts, task.pool_labels[lab], soft=False, temperature=1.0, seed=seed, log=log)
        record("teacher-lora", teacher.predict_logits(task.test_texts).argmax(1))
        fits.append({"seed": seed, "role": "teacher", "trainable_params": teacher.trainable(), **fit_t})
        log(f"  teacher dev acc {correct['teacher-lora'][-1].mean():.3f} ({fit_t['seconds']} s)")
        # ---- the student's frozen-probe ceiling (E's: ternary HDC, ridge probe, gold labelled shard)
        space = Space(seed=1000 + seed, dim=st.dim)
        s_tern = ternarize(space.project(sp, center=s_center), bt.TAU)
        st_tern = ternarize(space.project(s_test, center=s_center), bt.TAU)
        w, b = bt.fit_probe("ridge", s_tern[lab], task.pool_labels[lab], c, seed)
        record("student-frozen-ceiling", bt.scores(w, b, st_tern).argmax(1))
        if st.aligned_epochs:
            # the teacher's aligned knowledge, as bench_transfer's wire-honest arms send it: a ridge probe on
            # its ternary HDC vectors of its gold-labelled shard, plus its ternary anchor vectors
            tp, _ = models.frozen[st.teacher]
            t_tern = ternarize(space.project(tp, center=tp.mean(0)), bt.TAU)
            tw, tb = bt.fit_probe("ridge", t_tern[lab], task.pool_labels[lab], c, seed)
            teacher_k = bt.LinearKnowledge(task.classes, tw, tb, "gold")
            knowledge_bytes = bt.packet_bytes(teacher_k.to_body("transfer", task.name, half=True))
        for n in st.anchors:
            a = perm[:n]
            a_texts = [task.pool_texts[i] for i in a]
            t_logits = teacher.predict_logits(a_texts)
            t_soft = softened(t_logits, st.temperature)
            t_hard = t_logits.argmax(1)
            # what travels: N x C soft probabilities, f16, in a signed `knowledge` packet
            wire[f"soft-{n}"] = bt.packet_bytes(PredictionKnowledge(task.classes, t_soft, anchor_hash(a_texts))
                                                .to_body("distill", task.name, half=True))
            wire[f"hard-{n}"] = bt.packet_bytes(PredictionKnowledge(task.classes, t_hard.astype(np.int32),
                                                                    anchor_hash(a_texts)).to_body("distill", task.name))
            agree = float((t_hard == task.pool_labels[a]).mean())
            # ---- E's baselines with this teacher's labels: the student's frozen HDC probe on the anchors
            w, b = bt.fit_probe("ridge", s_tern[a], t_hard, c, seed)
            record(f"frozen-anchors-teacher@{n}", bt.scores(w, b, st_tern).argmax(1))
            sw, sx, sy, _ = gcv_ridge(s_tern[a].astype(np.float64), t_soft)
            record(f"frozen-anchors-soft@{n}", ((st_tern - sx) @ sw + sy).argmax(1))
            w, b = bt.fit_probe("ridge", s_tern[a], task.pool_labels[a], c, seed)
            record(f"frozen-anchors-gold@{n}", bt.scores(w, b, st_tern).argmax(1))
            # ---- the student: its own LoRA + head, only the teacher's soft labels on the anchors
            log(f"seed {seed}: student {st.student} LoRA on {n} anchors (teacher agrees with gold on {agree:.3f})")
            base, tok = models.load(st.student)
            student = Classifier(base, tok, c, st.student_schedule_for(n), seed + 100)
            fit_s = student.fit(a_texts, t_soft.astype(np.float32), soft=True, temperature=st.temperature,
                                seed=seed + 100, log=log)
            record(f"student-lora-distilled@{n}", student.predict_logits(task.test_texts).argmax(1))
            fits.append({"seed": seed, "role": "student", "n": n, "trainable_params": student.trainable(),
                         "teacher_anchor_agreement_with_gold": agree, **fit_s})
            log(f"  student dev acc {correct[f'student-lora-distilled@{n}'][-1].mean():.3f} ({fit_s['seconds']} s)")
            del student
            if st.aligned_epochs:
                # ---- plus the aligned knowledge: a ridge map (student frozen vectors -> the teacher's ternary
                # anchor vectors) carries the teacher's probe to the student's other local, unlabelled
                # texts (the rest of the anchor pool); the student's LoRA learns the teacher's soft labels
                # on the anchors and those pseudo-labels (one-hot) together
                rest = perm[n:anchor_pool]
                aligner = bt.fit_wire_honest("ridge", sp[a], t_tern[a])
                record(f"frozen-aligned@{n}", teacher_k.predict(ternarize(aligner.transform(s_test), bt.TAU)))
                pseudo = teacher_k.predict(ternarize(aligner.transform(sp[rest]), bt.TAU))
                wire[f"aligned-{n}"] = wire[f"soft-{n}"] + knowledge_bytes + bt.packet_bytes(
                    bt.Vectors("distill", bt.VectorBlock.from_trits(t_tern[a], space.space_id)))
                texts = a_texts + [task.pool_texts[i] for i in rest]
                targets = np.vstack([t_soft, np.eye(c)[pseudo]]).astype(np.float32)
                log(f"seed {seed}: student {st.student} LoRA on {n} anchors + {len(rest)} aligned pseudo-labels "
                    f"(pseudo-labels agree with gold on {float((pseudo == task.pool_labels[rest]).mean()):.3f})")
                base, tok = models.load(st.student)
                student = Classifier(base, tok, c, replace(st.student_schedule, epochs=st.aligned_epochs), seed + 200)
                fit_s = student.fit(texts, targets, soft=True, temperature=st.temperature, seed=seed + 200, log=log)
                record(f"student-lora-aligned@{n}", student.predict_logits(task.test_texts).argmax(1))
                fits.append({"seed": seed, "role": "student-aligned", "n": n, "pseudo_labelled": len(rest),
                             "pseudo_agreement_with_gold": float((pseudo == task.pool_labels[rest]).mean()),
                             "trainable_params": student.trainable(), **fit_s})
                log(f"  aligned student dev acc {correct[f'student-lora-aligned@{n}'][-1].mean():.3f} "
                    f"({fit_s['seconds']} s)")
                del student
        del teacher

    rng = np.random.default_rng(0)
    ceiling = np.array(correct["student-frozen-ceiling"])
    teacher_c = np.array(correct["teacher-lora"])
    arms = []
    for arm, rows in correct.items():
        m = np.array(rows)
        acc, lo, hi, sd = bt.mean_ci(m, rng)
        row: dict[str, Any] = {"arm": arm, "acc": acc, "ci95": [lo, hi], "seed_sd": sd,
                               "per_seed": [float(r.mean()) for r in m]}
        if arm.startswith(("student-lora", "frozen-anchors", "frozen-aligned")):
            d, dlo, dhi = bt.paired_diff_ci(m, ceiling, rng)
            row["minus_student_ceiling"] = {"diff": d, "ci95": [dlo, dhi]}
            d, dlo, dhi = bt.paired_diff_ci(m, teacher_c, rng)
            row["minus_teacher"] = {"diff": d, "ci95": [dlo, dhi]}
            row["gap_closure_vs_teacher"] = (acc - chance) / (teacher_c.mean() - chance)
        arms.append(row)
    for n in st.anchors:
        for key, base_arms in ((f"student-lora-distilled@{n}", (f"frozen-anchors-soft@{n}", f"frozen-anchors-teacher@{n}")),
                               (f"student-lora-aligned@{n}", (f"student-lora-distilled@{n}", f"frozen-aligned@{n}",
                                                              f"frozen-anchors-soft@{n}"))):
            if key not in correct:
                continue
            for base_arm in base_arms:
                d, dlo, dhi = bt.paired_diff_ci(np.array(correct[key]), np.array(correct[base_arm]), rng)
                next(r for r in arms if r["arm"] == key)[f"minus_{base_arm}"] = {"diff": d, "ci95": [dlo, dhi]}
    return {"chance": chance, "arms": arms, "fits": fits, "wire_bytes": wire}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| arm | acc | 95% CI | seed sd | per seed | - student ceiling [CI] | - teacher [CI] |",
             "|---|---:|---|---:|---|---|---|"]
    for r in result["arms"]:
        def fmt(k: str) -> str:
            v = r.get(k)
            return f"{v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" if v else ""
        lines.append(f"| {r['arm']} | {r['acc']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['seed_sd']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in r['per_seed'])} | {fmt('minus_student_ceiling')} | {fmt('minus_teacher')} |")
    return "\n".join(lines)


def parse_epochs(text: str) -> tuple[int, tuple[tuple[int, int], ...]]:
    """"3" -> (3, ()); "100:15,500:3" -> (3, ((100, 15), (500, 3))): the default is the last N's epochs."""
    if ":" not in text:
        return _positive(text), ()
    pairs = []
    for part in text.split(","):
        n, _, e = part.partition(":")
        pairs.append((_positive(n), _positive(e)))
    return pairs[-1][1], tuple(pairs)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise ValueError(f"{v} must be at least 1")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random models on synthetic texts: a smoke test")
    ap.add_argument("--teacher", default="minilm")
    ap.add_argument("--student", default="smollm2")
    ap.add_argument("--anchors", default="500")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--student-epochs", default="3",
                    help="student epochs: one number, or N:epochs per anchor count (e.g. 100:15,500:3)")
    ap.add_argument("--aligned-epochs", type=int, default=0,
                    help="> 0: add a student LoRA trained on the anchors' soft labels plus the rest of the anchor "
                         "pool pseudo-labelled by the aligned teacher probe, for that many epochs")
    ap.add_argument("--teacher-source", choices=("bench", "mesh"), default="bench",
                    help="bench: the teacher is fine-tuned here; mesh: by the trainer worker on real daemons")
    ap.add_argument("--mesh-nodes", type=int, default=MeshSchedule.nodes)
    ap.add_argument("--mesh-rounds", type=int, default=MeshSchedule.rounds)
    ap.add_argument("--mesh-steps", type=int, default=MeshSchedule.steps_per_round, help="local steps per round")
    ap.add_argument("--mesh-codec", default=MeshSchedule.codec)
    ap.add_argument("--labelled-cap", type=int, default=0, help="teacher trains on the first K of the labelled shard")
    ap.add_argument("--dim", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    try:
        default_epochs, by_n = parse_epochs(args.student_epochs)
    except ValueError as e:
        ap.error(f"--student-epochs: {e}")
    t_sched = Schedule(epochs=args.teacher_epochs, batch_size=32, lr_lora=5e-4, lr_head=2e-3)
    s_sched = Schedule(epochs=default_epochs, batch_size=16, lr_lora=5e-4, lr_head=2e-3)
    mesh = MeshSchedule(nodes=args.mesh_nodes, rounds=args.mesh_rounds, steps_per_round=args.mesh_steps,
                        codec=args.mesh_codec) if args.teacher_source == "mesh" else None
    if args.quick:
        from meshnode.models import resolve

        task = quick_task()
        models = quick_models(task, resolve("minilm").path)
        st = Settings("tiny-bert", "tiny-llama", (40,), (0, 1), args.temperature,
                      Schedule(epochs=4, batch_size=16, lr_lora=3e-3, lr_head=1e-2),
                      Schedule(epochs=6, batch_size=8, lr_lora=3e-3, lr_head=1e-2), 512, None,
                      args.teacher_source, mesh and MeshSchedule(rounds=8, steps_per_round=10, batch_size=8,
                                                                 lr=1e-2, max_len=16, codec=mesh.codec, eval=40),
                      by_n, args.aligned_epochs)
        anchor_pool = 80
    else:
        task = bt.load_task("sst2")
        models = real_models(task, [args.student] + ([args.teacher] if args.aligned_epochs else []), log)
        st = Settings(args.teacher, args.student, tuple(int(v) for v in args.anchors.split(",")),
                      tuple(int(v) for v in args.seeds.split(",")), args.temperature, t_sched, s_sched, args.dim,
                      args.labelled_cap or None, args.teacher_source, mesh, by_n, args.aligned_epochs)
        anchor_pool = bt.ANCHOR_POOL["sst2"]
    log(f"settings: {st}")
    res = run(task, models, st, anchor_pool, log, threads=args.threads)
    result = {"bench": "distill", "mode": "quick" if args.quick else "full", "task": task.name,
              "settings": {**asdict(st), "anchor_pool": anchor_pool, "pool": len(task.pool_texts),
                           "test": len(task.test_texts), "data_seed": bt.DATA_SEED, "bootstrap": bt.BOOT,
                           "torch_threads": args.threads, "frozen_embeddings_max_len": 64 if args.quick else 128},
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
              **res}
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["machine"]["loadavg_end"] = os.getloadavg()
    print(markdown(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
