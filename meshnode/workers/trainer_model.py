"""The learning side of the trainer worker: a base model with a LoRA adapter (peft) for sequence
classification, trained on this node's data. Everything here blocks; the worker calls it through
`run_blocking`, one call at a time.

The *adapter* is every trainable tensor (LoRA A/B matrices and the classifier head, which peft keeps
trainable as `modules_to_save`), named relative to the adapter so that every node agrees on the
names. Its initial values come from `seed` alone, so nodes with the same settings start equal.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data import DataError, LabeledTexts, load_labeled
from .trainer_settings import TrainerSettings

__all__ = ["HEAD_MODULES", "LoraModel", "wire_name"]

# The classification heads transformers puts on encoders ("classifier") and decoders ("score"):
# trained and synced with the adapter, left out of the base model's fingerprint.
HEAD_MODULES = ("classifier", "score")
GROUP_WINDOW = 16   # batches sorted together under group_by_length (transformers uses 50)


def wire_name(peft_name: str) -> str:
    """peft's parameter name relative to the adapter (what every node agrees on)."""
    n = peft_name.removeprefix("base_model.model.")
    return n.replace(".modules_to_save.default", "").replace(".default", "")


def _load(path: Any, split: str, cfg: TrainerSettings, limit: int, what: str) -> LabeledTexts:
    try:
        return load_labeled(path, split, classes=cfg.classes, limit=limit, seed=cfg.seed)
    except (OSError, DataError) as e:
        raise ValueError(f"cannot load the {what} data {path}: {e}") from None


def base_fingerprint(model: Any, tokenizer: Any, max_length: int) -> str:
    """Hex SHA-256 of the frozen part of the model: config, weights (heads excluded), tokenizer."""
    h = hashlib.sha256(b"meshnode/trainer/base/v1\x00")
    config = model.config.to_dict()
    for k in ("id2label", "label2id", "num_labels", "_name_or_path", "transformers_version", "architectures",
              "problem_type", "pad_token_id"):
        config.pop(k, None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.split(".")[0] in HEAD_MODULES:
            continue
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(max_length).encode())
    return h.hexdigest()


class LoraModel:
    """Base model + LoRA adapter, local data, optimizer. Not thread-safe: one caller at a time."""

    def __init__(self, cfg: TrainerSettings, *, node_id: bytes) -> None:
        from ..models import LOAD_LOCK, checkpoint_path, default_cache_dir

        # Set on shutdown: train and predict stop at the next batch instead of finishing minutes of CPU
        # work that nobody will use (a daemon asked to stop must stop).
        self.interrupt = threading.Event()

        with LOAD_LOCK:
            import torch
            from peft import LoraConfig, TaskType, get_peft_model
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.train_data: LabeledTexts | None = None
        if cfg.train_data is not None:
            self.train_data = _load(cfg.train_data, cfg.train_split, cfg, cfg.max_train, "training")
            if len(self.train_data) == 0:
                raise ValueError(f"{cfg.train_data}: no training rows")
        self.eval_data: LabeledTexts | None = None
        if cfg.eval_data is not None:
            self.eval_data = _load(cfg.eval_data, cfg.eval_split, cfg, cfg.max_eval, "eval")
        named = self.train_data or self.eval_data
        self.classes: tuple[str, ...] = named.classes if named is not None else tuple(cfg.classes or ())
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {list(self.classes)}")
        if self.eval_data is not None and self.eval_data.classes != self.classes:
            raise ValueError(f"eval classes {list(self.eval_data.classes)} differ from the training classes "
                             f"{list(self.classes)}")
        # Logit adjustment (settings.balance): the log of this node's own class frequencies, added to the
        # logits of its labelled rows while training, so that what the model learns is the class-balanced
        # score and not this node's prior (which, on a label-skewed shard, is most of what plain
        # cross-entropy learns). Counts are smoothed by one so that an absent class stays finite.
        self.log_prior: np.ndarray | None = None
        if cfg.balance == "logit-adjust" and self.train_data is not None:
            counts = np.bincount(self.train_data.labels, minlength=len(self.classes)).astype(np.float64) + 1.0
            self.log_prior = np.log(counts / counts.sum()).astype(np.float32)
        # Rows taught by a teacher through a local transfer student: texts and soft targets (set_targets).
        self.taught_texts: tuple[str, ...] = ()
        self.taught_targets = np.zeros((0, len(self.classes)), np.float32)
        self.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        with LOAD_LOCK:
            path, self.source = checkpoint_path(cfg.model, cache_dir=cfg.cache_dir or default_cache_dir())
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            torch.manual_seed(cfg.seed)   # weights missing from the checkpoint: the same on every node
            base = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(self.classes), dtype=torch.float32,
                id2label=dict(enumerate(self.classes)), label2id={c: i for i, c in enumerate(self.classes)})
        if self.tokenizer.pad_token is None:   # decoders: pad with EOS, and tell the head where sequences end
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if base.config.pad_token_id is None:
            base.config.pad_token_id = self.tokenizer.pad_token_id
        self.fingerprint = base_fingerprint(base, self.tokenizer, cfg.max_length)
        self.lora_config = {"r": cfg.lora_rank, "alpha": cfg.lora_alpha,
                            "targets": ",".join(cfg.lora_targets) if cfg.lora_targets else "default",
                            "classes": len(self.classes)}
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules=list(cfg.lora_targets) if cfg.lora_targets else None)
        try:
            self.model = get_peft_model(base, lora)
        except ValueError as e:   # e.g. target modules that this architecture does not have
            raise ValueError(f"cannot put a LoRA adapter on {cfg.model}: {e}") from None
        self.params = {wire_name(n): p for n, p in self.model.named_parameters() if p.requires_grad}
        self._initialise(cfg.seed)
        self.model.to(self.device).train()
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, weight_decay=0.0)
        self.rng = np.random.default_rng([cfg.seed, *node_id[:8]])
        self.order: list[int] = []
        self.steps = 0
        self.rows_seen = 0          # rows drawn since the last change of data, for the epoch count

    def _initialise(self, seed: int) -> None:
        """Every trainable tensor from `seed` alone, as peft and transformers would initialise them
        (LoRA A Kaiming-uniform, LoRA B and biases zero, head weights N(0, 0.02)), drawn from a
        private generator: the global RNG is shared with other threads (other workers in the same
        daemon), so seeding it would not make nodes start equal."""
        torch = self.torch
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in sorted(self.params):
                p = self.params[name]
                if "lora_B" in name or name.endswith("bias"):
                    p.zero_()
                elif "lora_A" in name:
                    torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5, generator=gen)
                else:
                    p.normal_(0.0, 0.02, generator=gen)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def _batch(self, texts: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.cfg.max_length, padding=True,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @property
    def labelled_rows(self) -> int:
        return len(self.train_data) if self.train_data is not None else 0

    @property
    def rows(self) -> int:
        """Rows one epoch draws: this node's labelled rows, then the taught ones."""
        return self.labelled_rows + len(self.taught_texts)

    @property
    def epoch(self) -> float:
        return self.rows_seen / self.rows if self.rows else 0.0

    def set_targets(self, texts: tuple[str, ...], targets: np.ndarray) -> None:
        """Replace the taught rows (a newer teacher version replaces the older one; the adapter and the
        optimizer go on from where they are: a warm start). `targets` are (N, C) probabilities in this
        model's class order, checked by the caller."""
        if targets.shape != (len(texts), len(self.classes)):
            raise ValueError(f"targets are {targets.shape}, expected ({len(texts)}, {len(self.classes)})")
        self.taught_texts = tuple(texts)
        self.taught_targets = np.ascontiguousarray(targets, dtype=np.float32)
        self.order, self.rows_seen = [], 0

    def _row(self, i: int) -> tuple[str, int | None, np.ndarray | None]:
        """Row i of the epoch: a labelled row (text, label, None) or a taught one (text, None, target)."""
        n = self.labelled_rows
        if i < n:
            assert self.train_data is not None
            return self.train_data.texts[i], int(self.train_data.labels[i]), None
        return self.taught_texts[i - n], None, self.taught_targets[i - n]

    def _epoch_order(self, total: int) -> list[int]:
        """One epoch's row order; consecutive runs of batch_size rows are the batches. With
        group_by_length, windows of GROUP_WINDOW batches of the shuffled order are sorted by text
        length and cut into batches whose order is shuffled again; the epoch's remainder (fewer rows
        than a batch, dropped as always) stays a random draw and goes last."""
        order = [int(i) for i in self.rng.permutation(total)]
        bs = self.cfg.batch_size
        if not self.cfg.group_by_length or total <= bs:
            return order
        # The remainder that an epoch drops is taken off the shuffled order first, so the rows dropped
        # are a random few, not always the longest texts of the last window.
        cut = total - total % bs
        order, rest = order[:cut], order[cut:]
        window = bs * GROUP_WINDOW
        batches: list[list[int]] = []
        for start in range(0, cut, window):
            chunk = sorted(order[start:start + window], key=lambda i: len(self._row(i)[0]))
            batches += [chunk[j:j + bs] for j in range(0, len(chunk), bs)]
        return [i for k in self.rng.permutation(len(batches)) for i in batches[int(k)]] + rest

    def train(self, steps: int, first_step: int = 0) -> float:
        """`steps` AdamW steps on shuffled batches of every row this node has; the mean training loss.
        A batch of labelled rows only is plain cross-entropy (as transformers computes it); a batch
        with taught rows is cross-entropy against soft targets, a taught row weighted `anchor_weight`.
        `first_step` is the group's step count (round x steps_per_round), which sets the rate under
        `lr_schedule` / `warmup_rounds`."""
        torch, bs = self.torch, self.cfg.batch_size
        total = self.rows
        if total == 0:
            raise ValueError("no rows to train on: no train_data and nothing taught yet")
        losses = []
        for i in range(steps):
            if self.interrupt.is_set():
                break
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr_at(first_step + i)
            if len(self.order) < min(bs, total):
                self.order = self._epoch_order(total)
            take, self.order = self.order[:bs], self.order[bs:]
            rows = [self._row(i) for i in take]
            batch = self._batch([r[0] for r in rows])
            if all(r[2] is None for r in rows) and self.log_prior is None:
                labels = torch.as_tensor([r[1] for r in rows], device=self.device)
                loss = self.model(**batch, labels=labels).loss
            else:
                c = len(self.classes)
                target = np.stack([np.eye(c, dtype=np.float32)[r[1]] if r[2] is None else r[2] for r in rows])
                weight = np.array([1.0 if r[2] is None else self.cfg.anchor_weight for r in rows], np.float32)
                logits = self.model(**batch).logits.float()
                if self.log_prior is not None:   # labelled rows only: taught rows carry a teacher's scores
                    shift = np.stack([self.log_prior if r[2] is None else np.zeros(c, np.float32) for r in rows])
                    logits = logits + torch.as_tensor(shift, device=self.device)
                per_row = -(torch.as_tensor(target, device=self.device) * torch.log_softmax(logits, dim=-1)).sum(-1)
                w = torch.as_tensor(weight, device=self.device)
                loss = (per_row * w).sum() / w.sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
            self.steps += 1
            self.rows_seen += len(take)
        return float(np.mean(losses)) if losses else float("nan")

    def adapter(self) -> dict[str, np.ndarray]:
        """The adapter's tensors as float32 numpy copies."""
        return {n: p.detach().float().cpu().numpy().copy() for n, p in self.params.items()}

    def load(self, tensors: Mapping[str, np.ndarray]) -> None:
        torch = self.torch
        if set(tensors) != set(self.params):
            raise ValueError("the tensors are not this adapter's")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(torch.from_numpy(np.ascontiguousarray(tensors[n])).to(p.device, p.dtype))

    def predict(self, texts: list[str], batch: int = 16) -> np.ndarray:
        """Class probabilities of `texts` (eval mode, no gradients)."""
        torch = self.torch
        self.model.eval()
        out = []
        try:
            with torch.inference_mode():
                for i in range(0, len(texts), batch):
                    if self.interrupt.is_set():
                        raise InterruptedError("the trainer is stopping")
                    logits = self.model(**self._batch(texts[i: i + batch])).logits
                    out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        finally:
            self.model.train()
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def evaluate(self) -> float | None:
        if self.eval_data is None or len(self.eval_data) == 0:
            return None
        order = sorted(range(len(self.eval_data)), key=lambda i: len(self.eval_data.texts[i]))  # less padding
        probs = self.predict([self.eval_data.texts[i] for i in order])
        return float((probs.argmax(axis=1) == self.eval_data.labels[order]).mean())
