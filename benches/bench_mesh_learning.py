"""The knowledge loop on real models: does a mixed fleet learn from itself, with no coordinator?

The mesh is deploy/scenarios/heterogeneous.toml (SST-2) or heterogeneous-ag_news.toml, run by
`meshnode sim` (real Node objects and workers over simulated Wi-Fi links, virtual time that advances
by the real compute time): two MiniLM-L6 trainers on label-skewed shards (90% of one side each)
whose transfer teachers teach what their synchronised adapter predicts on 500 anchors, and two
SmolLM2-135M learners with no labels whose transfer students hand those labels (the predicted class,
`learner_targets = "hard"`) to their own trainer (LoRA), the two learners syncing with each other. Per seed (the scenario seed, and every
trainer's `seed`), the same run also measures the baselines a reviewer would ask for:

  (i)   student_frozen_soft       today's default student: a frozen SmolLM2 probe (anchor-labels) on a
                                  *frozen* MiniLM teacher's soft anchor labels, that teacher a ridge
                                  probe on the union of both shards' gold labels (what the transfer
                                  worker's teacher did before trainers could teach);
  (ii)  student_ceiling           SmolLM2's frozen-probe ceiling: the same probe on all the mesh's
                                  gold labels (both shards, 2000 texts) in the same HDC space;
  (iii) student_lora_gold_anchors a SmolLM2 LoRA trained by the trainer's own code on the 500 anchors
                                  with their *gold* labels, for as many rows as the two learners drew;
  (iv)  trainers_alone            the two MiniLM trainers as in the mesh, with no learners present.

Final accuracies are on the whole eval set (SST-2 dev, 872; AG News: 1000 test rows), from each
group's last checkpoint (both nodes of a group hold bit-identical adapters: checked); the curves
(`accuracy_over_time`, simulated seconds) are the workers' own evals on a seeded sample of 300 rows (max_eval), every
2nd round for a trainer and every 3rd for a learner. Paired 95% CIs: over seeds when there are 3 or more, else a bootstrap over eval items
(pooled over the seeds run), said in `ci_kind`.

    .venv/bin/python benches/bench_mesh_learning.py --task sst2 --seeds 0,1,2
    .venv/bin/python benches/bench_mesh_learning.py --task ag_news --seeds 0,1,2
    .venv/bin/python benches/bench_mesh_learning.py --merge --task sst2      # summary of the seeds done
    .venv/bin/python benches/bench_mesh_learning.py --quick --out /tmp/q.json  # tiny random models: a smoke run

Every seed writes benches/results/mesh_learning/<task>-seed<k>.json as it finishes; the summary
(benches/results/mesh_learning.json for SST-2, mesh_learning_ag_news.json) is rebuilt from those.
Needs `make bench-models` and ../shared/data (the scenario's shards were written from it by
`python -m meshnode.shards`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "benches" / "results"
PARTIAL = RESULTS / "mesh_learning"
SCENARIOS = {"sst2": ROOT / "deploy" / "scenarios" / "heterogeneous.toml",
             "ag_news": ROOT / "deploy" / "scenarios" / "heterogeneous-ag_news.toml"}
SOURCES = {"sst2": ("sst2", "train"), "ag_news": ("ag_news", "train")}
BOOT = 2000
TRAINERS, LEARNERS = ("m1", "m2"), ("s1", "s2")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Fleet:
    """What one run measures: the scenario (as data, and the file its relative paths resolve from),
    the models behind the scenario's model names, and the labelled dataset the shards came from."""

    task: str
    data: dict[str, Any]
    path: Path
    source: Path                                     # dataset dir of the shards' train split (gold lookup)
    models: dict[str, str] = field(default_factory=lambda: {"minilm": "minilm", "smollm2": "smollm2"})
    embed_batch: int = 32


def real_fleet(task: str, shared: Path) -> Fleet:
    path = SCENARIOS[task]
    return Fleet(task, tomllib.loads(path.read_text()), path, shared / SOURCES[task][0])


def quick_fleet(tmp: Path) -> Fleet:
    """The SST-2 scenario's structure with tiny random models and a synthetic keyword task (seconds)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from meshnode.shards import make_fleet_data

    rng = np.random.default_rng(0)
    filler = "the a movie film was plot actors scene story it and of to in with this that one two very".split()
    keys = ["good great fun lovely superb".split(), "bad awful boring dull poor".split()]
    src = tmp / "source"
    src.mkdir(parents=True)
    (src / "labels.json").write_text(json.dumps({"0": "negative", "1": "positive"}))
    for split, n in (("train", 1200), ("dev", 120)):
        with open(src / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                y = int(rng.integers(2))
                words = list(rng.choice(filler, size=int(rng.integers(4, 9)))) + [str(rng.choice(keys[1 - y]))]
                f.write(json.dumps({"text": " ".join(rng.permutation(words)), "label": y}) + "\n")
    fd = make_fleet_data(src, tmp / "fleet", per_node=200, anchors=160, pool=100)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"] + filler + keys[0] + keys[1]
    specs = {}
    for name, cfg in (("minilm", transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=4, intermediate_size=64,
                                                          max_position_embeddings=64)),
                      ("smollm2", transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=4, intermediate_size=64,
                                                            num_key_value_heads=2, max_position_embeddings=64,
                                                            bos_token_id=4, eos_token_id=4))):
        torch.manual_seed(len(specs))
        transformers.AutoModel.from_config(cfg).save_pretrained(tmp / name)
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        extra = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"} if name == "minilm" \
            else {"eos_token": "<eos>"}
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **extra).save_pretrained(tmp / name)
        specs[name] = str(tmp / name)
    data = tomllib.loads(SCENARIOS["sst2"].read_text())
    for node in data["nodes"]:
        for w in node["workers"]:
            s = w["settings"]
            s.update(device="cpu", cache_dir=str(tmp / "cache"))
            s["model"] = specs[s["model"]]
            for key, new in (("anchors", fd.anchors), ("eval_data", fd.eval)):
                if key in s:
                    s[key] = str(new)
            if "train_data" in s:
                s["train_data"] = str(fd.shards[int(s["train_data"][-1])])
            if w["type"] == "trainer":
                learner = "train_data" not in s
                s.update(steps_per_round=4, rounds=6 if learner else 4, max_length=16, batch_size=16, lora_rank=4,
                         lr=1e-2 if learner else 3e-2, eval_every=1, max_eval=120, hello_interval=0.5, join_wait=0.5,
                         round_deadline=30, member_timeout=60)
            elif s["role"] == "student":
                s.update(announce_interval=0.5, dim=1024)
            else:
                s.update(min_republish_gap=0.5, publish_every=2, dim=1024)
    data["stop"] = {"time": 600, "when": "workers_done", "settle": 2}
    return Fleet("sst2", data, SCENARIOS["sst2"], src, specs, embed_batch=64)


def worker(data: dict[str, Any], node: str, name: str) -> dict[str, Any]:
    n = next(n for n in data["nodes"] if n["name"] == node)
    return next(w for w in n["workers"] if w["name"] == name)["settings"]


def with_seed(data: dict[str, Any], seed: int, keep: tuple[str, ...] | None = None,
              scale: float = 1.0) -> dict[str, Any]:
    """The scenario with `seed` everywhere it matters (links, identities, adapters, data order), only the
    nodes in `keep`, and rounds scaled by `scale` (for a smoke run)."""
    out = json.loads(json.dumps(data))
    out["seed"] = seed
    if keep is not None:
        out["nodes"] = [n for n in out["nodes"] if n["name"] in keep]
    for n in out["nodes"]:
        for w in n.get("workers", []):
            if w["type"] == "trainer":
                w["settings"]["seed"] = seed
                s = w["settings"]
                s["rounds"] = max(1, round(s["rounds"] * scale))
                if "warmup_rounds" in s:   # scaled too, and kept below the rounds (the parser's rule)
                    s["warmup_rounds"] = min(round(s["warmup_rounds"] * scale), s["rounds"] - 1)
    return out


def run_mesh(fleet: Fleet, seed: int, workdir: Path, keep: tuple[str, ...] | None, scale: float) -> dict[str, Any]:
    import dataclasses

    from meshnode.sim.runner import run_scenario
    from meshnode.sim.scenario import parse_scenario

    sc = parse_scenario(with_seed(fleet.data, seed, keep, scale), name=fleet.path.stem, source=fleet.path)
    sc = dataclasses.replace(sc, source=fleet.path)
    t0 = time.perf_counter()
    report = run_scenario(sc, workdir=workdir)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def resolve(path: str) -> Path:
    return (SCENARIOS["sst2"].parent / path).resolve()


def trainer_cfg(settings: dict[str, Any], **over: Any) -> Any:
    from meshnode.workers.trainer_settings import parse_settings

    return parse_settings("bench", {**settings, **over}, base_dir=SCENARIOS["sst2"].parent)


def final_eval(settings: dict[str, Any], checkpoints: list[Path]) -> tuple[np.ndarray, str]:
    """Per-item correctness (0/1) of a group's last adapter on the whole eval set; the checkpoints of
    every node of the group must hold the same adapter."""
    from safetensors.numpy import load_file

    from meshnode.workers.trainer_model import LoraModel

    tensors = [load_file(str(p)) for p in checkpoints]
    adapters = [{k.removeprefix("adapter/"): v for k, v in t.items() if k.startswith("adapter/")} for t in tensors]
    for other in adapters[1:]:
        if set(other) != set(adapters[0]) or any(not np.array_equal(other[k], adapters[0][k]) for k in other):
            raise AssertionError(f"the group's checkpoints differ: {checkpoints}")
    cfg = trainer_cfg(settings, max_eval=100_000, threads=2)
    model = LoraModel(cfg, node_id=b"final-eval".ljust(32, b"\0"))
    model.load(adapters[0])
    assert model.eval_data is not None
    probs = model.predict(list(model.eval_data.texts))
    return (probs.argmax(1) == model.eval_data.labels).astype(np.int8), model.source.name


def gold_lookup(source: Path) -> dict[str, int]:
    from meshnode.data import load_split

    data = load_split(source, "train")
    return {" ".join(t.split()): int(y) for t, y in zip(data.texts, data.labels)}


def frozen_baselines(fleet: Fleet, seed: int) -> dict[str, Any]:
    """(i) and (ii): frozen MiniLM teacher probe -> SmolLM2 anchor-labels probe; SmolLM2 gold ceiling."""
    from meshnode.data import load_labeled, load_split
    from meshnode.hdc.knowledge import LinearKnowledge, anchor_hash
    from meshnode.hdc.space import Space
    from meshnode.models import Embedder, default_cache_dir
    from meshnode.workers.anchors import load_anchor_set
    from meshnode.workers.transfer_model import fit_student, fit_teacher, space_encoder
    from meshnode.workers.transfer_settings import SETTINGS

    data = fleet.data
    # The student's space; its eval set and sample size are the learner's when it has none of its own
    # (a learner's student keeps no frozen route: docs/WORKERS.md).
    learner = worker(data, "s1", "lora")
    student = {"eval_data": learner["eval_data"], "max_eval": learner.get("max_eval", SETTINGS["max_eval"].default),
               **worker(data, "s1", "learn")}
    setting = lambda key: student.get(key, SETTINGS[key].default)  # noqa: E731  (the student's space)
    tau = setting("tau")
    space = Space(seed=setting("space_seed"), dim=setting("dim"), version=setting("space_version"))
    anchors = load_anchor_set(resolve(student["anchors"]))
    shards = [load_split(resolve(worker(data, m, "lora")["train_data"]), "train") for m in TRAINERS]
    train_texts = [t for s in shards for t in s.texts]
    train_labels = np.concatenate([s.labels for s in shards])
    ev = load_split(resolve(student["eval_data"]), "dev")
    cache = default_cache_dir()
    t_emb = Embedder.from_spec(fleet.models["minilm"], cache_dir=cache, batch_size=2 * fleet.embed_batch)
    s_emb = Embedder.from_spec(fleet.models["smollm2"], cache_dir=cache, batch_size=fleet.embed_batch)
    log("  frozen embeddings: MiniLM anchors + shards, SmolLM2 anchors + shards + eval")
    ta, tt = t_emb.embed(anchors.texts), t_emb.embed(train_texts)
    sa, st, se = s_emb.embed(anchors.texts), s_emb.embed(train_texts), s_emb.embed(ev.texts)
    def student_on(texts_emb: np.ndarray, labels: np.ndarray) -> Any:
        teacher = fit_teacher(space, tau, ta, anchors.hash, texts_emb, labels, shards[0].classes, probe="ridge",
                              forms=["predictions"], predictions="soft", seed=seed)
        return fit_student("anchor-labels", space, tau, sa, knowledge=teacher.forms, teacher_anchors=None, seed=seed)

    # Today's default: each MiniLM node's frozen teacher probes its own (skewed) shard; the student keeps
    # the teacher whose knowledge scores best on an eval set (a frozen student's rule; this one uses the
    # learner's: its first `max_eval` rows drawn with its seed), and is scored on the whole eval set.
    own = [student_on(tt[i * len(shards[0]):(i + 1) * len(shards[0])], shards[i].labels) for i in range(len(shards))]
    sample = load_labeled(resolve(student["eval_data"]), student.get("eval_split", "dev"),
                          limit=student.get("max_eval", SETTINGS["max_eval"].default), seed=student.get("seed", 0))
    index = {t: i for i, t in enumerate(ev.texts)}
    pick = [index[t] for t in sample.texts]
    picked = max(range(len(own)), key=lambda i: (float((own[i].predict(se[pick]) == ev.labels[pick]).mean()), -i))
    frozen_soft = (own[picked].predict(se) == ev.labels).astype(np.int8)
    pooled = (student_on(tt, train_labels).predict(se) == ev.labels).astype(np.int8)
    center, whiten = space_encoder(space, sa)
    ceiling = LinearKnowledge.fit(space.encode(st, center=center, tau=tau, whiten=whiten), train_labels,
                                  shards[0].classes, probe="ridge")
    ceil = (ceiling.predict(space.encode(se, center=center, tau=tau, whiten=whiten)) == ev.labels).astype(np.int8)
    assert anchors.hash == anchor_hash(anchors.texts)
    assert len({len(x) for x in shards}) == 1
    return {"student_frozen_soft": frozen_soft, "student_frozen_soft_pooled": pooled, "student_ceiling": ceil,
            "frozen_teacher_picked": TRAINERS[picked]}


def lora_gold_anchors(fleet: Fleet, data: dict[str, Any], seed: int, workdir: Path) -> np.ndarray:
    """(iii): the learners' trainer code and settings, on the anchors with gold labels, for as many
    rows as the two learners drew in the mesh."""
    from meshnode.workers.trainer_model import LoraModel

    settings = worker(data, "s1", "lora")
    anchors = [line.strip() for line in resolve(worker(data, "s1", "learn")["anchors"]).read_text().splitlines()
               if line.strip()]
    gold = gold_lookup(fleet.source)
    labels = [gold[" ".join(t.split())] for t in anchors]
    classes = json.loads((resolve(settings["eval_data"]) / "labels.json").read_text())
    d = workdir / "gold-anchors"
    d.mkdir(parents=True, exist_ok=True)
    (d / "labels.json").write_text(json.dumps(classes))
    with open(d / "train.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(anchors, labels))
    # One model draws the rows of both learners: their schedule (warmup, decay) stretched to that many steps.
    cfg = trainer_cfg(settings, train_data=str(d), seed=seed, max_eval=100_000, threads=2,
                      rounds=settings["rounds"] * len(LEARNERS),
                      warmup_rounds=settings.get("warmup_rounds", 0) * len(LEARNERS))
    model = LoraModel(cfg, node_id=f"gold-anchors-{seed}".encode().ljust(32, b"\0"))
    steps = cfg.rounds * cfg.steps_per_round
    log(f"  (iii) SmolLM2 LoRA on {len(anchors)} gold-labelled anchors, {steps} steps of {cfg.batch_size} "
        f"({cfg.lr_schedule} rate, {cfg.warmup_rounds} warmup rounds)")
    for done in range(0, steps, 16):
        model.train(min(16, steps - done), first_step=done)
    assert model.eval_data is not None
    probs = model.predict(list(model.eval_data.texts))
    return (probs.argmax(1) == model.eval_data.labels).astype(np.int8)


def node_record(report: dict[str, Any], name: str, role: str, final: float) -> dict[str, Any]:
    node = report["nodes"][name]
    curve = node["accuracy"].get("lora", {})
    rec = {"model": curve.get("model"), "role": role, "final_accuracy": final,
           "accuracy_over_time": curve.get("over_time", []), "bytes_sent": node["bytes_sent"],
           "bytes_received": node["bytes_received"]}
    lora = next((w for w in node["workers"] if w["name"] == "lora"), None)
    if lora is not None:
        rec["trainer_metrics"] = {k: v for k, v in lora["metrics"].items() if not k.startswith("last.")}
    learn = node["accuracy"].get("learn")
    if learn is not None:   # the student's frozen route beside the learner: the same teacher, no training
        rec["frozen_route_final_on_curve_rows"] = learn["final"]
    return rec


def run_seed(fleet: Fleet, seed: int, scale: float, reuse: Path | None = None) -> dict[str, Any]:
    """One seed; `reuse`: the record of another run of the same task and seed whose frozen baselines
    (i) and (ii) are taken instead of recomputed (they depend on neither the trainers' nor the learners'
    settings; (iii) does, and is always trained); when that run is still going, this one waits for its
    record (at most an hour)."""
    data = fleet.data
    out: dict[str, Any] = {"task": fleet.task, "seed": seed, "scale": scale}
    with tempfile.TemporaryDirectory(prefix="mlearn-") as tmp:
        work = Path(tmp)
        log(f"seed {seed}: the mesh (2 MiniLM trainers + 2 SmolLM2 learners)")
        report = run_mesh(fleet, seed, work / "mesh", None, scale)
        out["mesh"] = {"stopped_by": report["stopped_by"], "sim_time_s": report["sim_time_s"],
                       "wall_s": report["wall_s"]}
        ckpt = lambda run, n: work / run / "nodes" / n / "workers" / "lora" / "adapter.safetensors"  # noqa: E731
        log(f"  mesh done in {report['wall_s']} s (simulated {report['sim_time_s']} s, {report['stopped_by']})")
        t_ok, t_model = final_eval(worker(data, "m1", "lora"), [ckpt("mesh", n) for n in TRAINERS])
        s_ok, s_model = final_eval(worker(data, "s1", "lora"), [ckpt("mesh", n) for n in LEARNERS])
        nodes = {n: node_record(report, n, "trainer", float(t_ok.mean())) for n in TRAINERS}
        nodes.update({n: node_record(report, n, "learner", float(s_ok.mean())) for n in LEARNERS})
        log(f"  final: trainers {t_ok.mean():.3f}, learners {s_ok.mean():.3f}")
        log(f"seed {seed}: (iv) the trainers alone")
        alone = run_mesh(fleet, seed, work / "alone", TRAINERS, scale)
        out["alone"] = {"stopped_by": alone["stopped_by"], "sim_time_s": alone["sim_time_s"], "wall_s": alone["wall_s"],
                        "bytes_sent": {n: alone["nodes"][n]["bytes_sent"] for n in TRAINERS}}
        a_ok, _ = final_eval(worker(data, "m1", "lora"), [ckpt("alone", n) for n in TRAINERS])
        log(f"  trainers alone {a_ok.mean():.3f}")
        if reuse is not None:
            log(f"seed {seed}: (i), (ii) taken from {reuse.name}")
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline and not (reuse.exists() and "frozen_teacher_picked" in
                                                       json.loads(reuse.read_text())):
                time.sleep(30)   # that run is still going (or its frozen baselines are being refitted)
            prior = json.loads(reuse.read_text())
            frozen = {k: np.array(prior["correct"][k], dtype=np.int8) for k in
                      ("student_frozen_soft", "student_frozen_soft_pooled", "student_ceiling")}
            frozen["frozen_teacher_picked"] = prior["frozen_teacher_picked"]
            # (iii) trains with the learners' settings (rounds, rate, schedule): never taken from another run
            g_ok = lora_gold_anchors(fleet, with_seed(data, seed, None, scale), seed, work)
        else:
            log(f"seed {seed}: (i), (ii) frozen baselines")
            frozen = frozen_baselines(fleet, seed)
            scaled = with_seed(data, seed, None, scale)
            g_ok = lora_gold_anchors(fleet, scaled, seed, work)
    correct = {"learners": s_ok, "trainers": t_ok, "trainers_alone": a_ok,
               **{k: v for k, v in frozen.items() if isinstance(v, np.ndarray)}, "student_lora_gold_anchors": g_ok}
    out["frozen_teacher_picked"] = frozen["frozen_teacher_picked"]
    out["nodes"] = nodes
    out["baselines"] = {k: float(correct[k].mean()) for k in ("student_frozen_soft", "student_ceiling",
                                                               "student_lora_gold_anchors", "trainers_alone")}
    out["extra_baselines"] = {"student_frozen_soft_pooled": float(correct["student_frozen_soft_pooled"].mean())}
    out["correct"] = {k: v.astype(int).tolist() for k, v in correct.items()}
    out["models"] = {"trainer": t_model, "learner": s_model}
    log(f"  baselines: {json.dumps(out['baselines'])}")
    return out


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """a - b in points: (seeds, items) 0/1 each. Over seeds (t interval) with 3+ seeds, else a paired
    bootstrap over items pooled over the seeds run."""
    per_seed = (a.mean(axis=1) - b.mean(axis=1)) * 100
    if a.shape[0] >= 3:
        from scipy import stats

        sd = per_seed.std(ddof=1)
        half = stats.t.ppf(0.975, a.shape[0] - 1) * sd / np.sqrt(a.shape[0])
        return {"diff": float(per_seed.mean()), "lo": float(per_seed.mean() - half),
                "hi": float(per_seed.mean() + half), "ci_kind": "t over seeds", "per_seed": per_seed.tolist()}
    d = (a.astype(np.float64) - b).mean(axis=0) * 100
    boots = d[rng.integers(0, d.size, (BOOT, d.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi),
            "ci_kind": f"bootstrap over eval items ({a.shape[0]} seed(s))", "per_seed": per_seed.tolist()}


def summarise(fleet: Fleet, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    c = {k: np.array([s["correct"][k] for s in seeds]) for k in seeds[0]["correct"]}
    learner, trainer = c["learners"], c["trainers"]
    comp = {
        "learners_vs_student_frozen_soft": paired(learner, c["student_frozen_soft"], rng),
        "learners_vs_trainers": paired(learner, trainer, rng),
        "trainers_vs_trainers_alone": paired(trainer, c["trainers_alone"], rng),
        "learners_vs_student_ceiling": paired(learner, c["student_ceiling"], rng),
        "learners_vs_student_lora_gold_anchors": paired(learner, c["student_lora_gold_anchors"], rng),
    }
    if "student_frozen_soft_pooled" in c:
        comp["learners_vs_student_frozen_soft_pooled"] = paired(learner, c["student_frozen_soft_pooled"], rng)
    started = {n: [s["nodes"][n]["accuracy_over_time"][0][1] for s in seeds if s["nodes"][n]["accuracy_over_time"]]
               for n in seeds[0]["nodes"]}
    ended = {n: [s["nodes"][n]["accuracy_over_time"][-1][1] for s in seeds if s["nodes"][n]["accuracy_over_time"]]
             for n in seeds[0]["nodes"]}
    v = comp["learners_vs_student_frozen_soft"]
    targets = {
        "learners_3_points_over_frozen_soft": {"met": v["diff"] >= 3 and v["lo"] > 0, **v},
        "learners_within_2_points_of_trainers": {"met": comp["learners_vs_trainers"]["diff"] >= -2,
                                                 **comp["learners_vs_trainers"]},
        "trainers_no_worse_with_learners": {"met": comp["trainers_vs_trainers_alone"]["lo"] > -2 and
                                            comp["trainers_vs_trainers_alone"]["diff"] >= -1,
                                            **comp["trainers_vs_trainers_alone"]},
        "no_node_ends_below_its_start": {"met": all(e >= s for n in started for s, e in zip(started[n], ended[n])),
                                         "start": started, "end": ended,
                                         "note": "on the workers' own 300-row curves"},
        "stretch_learner_above_its_ceiling": {"met": comp["learners_vs_student_ceiling"]["lo"] > 0,
                                              **comp["learners_vs_student_ceiling"]},
    }
    return {
        "task": fleet.task, "seeds": [s["seed"] for s in seeds],
        "runs": [{"seed": s["seed"], "nodes": s["nodes"], "baselines": s["baselines"], "mesh": s["mesh"],
                  "scale": s["scale"], **{k: s[k] for k in ("extra_baselines", "frozen_teacher_picked", "alone",
                                                              "models", "loadavg") if k in s}} for s in seeds],
        "means": {"learners": float(learner.mean()), "trainers": float(trainer.mean()),
                  **{k: float(c[k].mean()) for k in c if k not in ("learners", "trainers")}},
        "comparisons_points": comp, "targets": targets,
        "eval_items": int(learner.shape[1]),
        "scenario": str(fleet.path.relative_to(ROOT)),
        "models": {k: Path(v).name for k, v in fleet.models.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_at_summary": os.getloadavg()},
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Each node's accuracy curve (the workers' own evals) over simulated time, one panel per seed, with
    the final accuracies and the baselines on the whole eval set as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4.5), dpi=100, squeeze=False)
    for ax, run in zip(axes[0], runs):
        for name, node in run["nodes"].items():
            pts = node["accuracy_over_time"]
            if pts:
                style = "-" if node["role"] == "trainer" else "--"
                ax.step([p[0] for p in pts], [p[1] for p in pts], style, where="post",
                        label=f"{name} ({Path(node['model'] or '?').name}, {node['role']})")
        for key, color in (("student_frozen_soft", "grey"), ("student_ceiling", "black"),
                           ("student_lora_gold_anchors", "green")):
            if key in run["baselines"]:
                ax.axhline(run["baselines"][key], color=color, linestyle=":", linewidth=1)
                ax.annotate(key, (0.01, run["baselines"][key]), xycoords=("axes fraction", "data"), fontsize=7,
                            color=color, xytext=(0, 2), textcoords="offset points")
        ax.set_xlabel("simulated time (s; includes the real compute time on a 2-core CPU)")
        ax.set_ylabel("accuracy (workers' eval sample)")
        ax.set_title(f"{summary['task']} seed {run['seed']}: curves; dotted: baselines on the whole eval set",
                     fontsize=9)
        ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(SCENARIOS), default="sst2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--scale", type=float, default=1.0, help="scale every trainer's rounds (a smoke run: 0.25)")
    ap.add_argument("--merge", action="store_true", help="only rebuild the summary from the seeds done")
    ap.add_argument("--quick", action="store_true", help="tiny random models, synthetic task: a smoke run")
    ap.add_argument("--refit-frozen", action="store_true",
                    help="recompute the frozen baselines (i)/(ii) of the seeds done (embeddings are cached)")
    ap.add_argument("--balance", choices=("none", "logit-adjust"), default=None,
                    help="set the labelled trainers' `balance` (default: the scenario's)")
    ap.add_argument("--reuse-baselines", metavar="TAG", default=None,
                    help="take (i) and (ii) from the finished seeds of run TAG ('' for the default run)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the curves (default: beside --out's JSON)")
    args = ap.parse_args()
    if args.quick and args.out is None:
        ap.error("--quick needs --out (a smoke run's figures are not results)")
    with tempfile.TemporaryDirectory(prefix="mlearn-q-") as qtmp:
        if args.quick:
            fleet, partial, tag = quick_fleet(Path(qtmp)), Path(qtmp) / "partial", "-quick"
            args.seeds = args.seeds if args.seeds != "0,1,2" else "0"
        else:
            fleet, partial = real_fleet(args.task, args.shared), PARTIAL
            tag = "" if args.scale == 1.0 else f"-scale{args.scale:g}"
        if args.balance is not None:
            for n in fleet.data["nodes"]:
                for w in n["workers"]:
                    if w["type"] == "trainer" and "train_data" in w["settings"]:
                        w["settings"]["balance"] = args.balance
            tag += f"-{args.balance}"
        partial.mkdir(parents=True, exist_ok=True)
        if args.refit_frozen:
            for p in sorted(partial.glob(f"{fleet.task}{tag}-seed*.json")):
                rec = json.loads(p.read_text())
                frozen = frozen_baselines(fleet, rec["seed"])
                for k, v in frozen.items():
                    if isinstance(v, np.ndarray):
                        rec["correct"][k] = v.astype(int).tolist()
                rec["frozen_teacher_picked"] = frozen["frozen_teacher_picked"]
                rec["baselines"]["student_frozen_soft"] = float(frozen["student_frozen_soft"].mean())
                rec["baselines"]["student_ceiling"] = float(frozen["student_ceiling"].mean())
                rec.setdefault("extra_baselines", {})["student_frozen_soft_pooled"] = \
                    float(frozen["student_frozen_soft_pooled"].mean())
                p.write_text(json.dumps(rec) + "\n")
                log(f"refitted the frozen baselines of {p.name}: {rec['baselines']} {rec['extra_baselines']}")
        elif not args.merge:
            for seed in [int(s) for s in args.seeds.split(",")]:
                reuse = None
                if args.reuse_baselines is not None:
                    reuse = partial / f"{fleet.task}{args.reuse_baselines}-seed{seed}.json"
                rec = run_seed(fleet, seed, args.scale, reuse)
                rec["baselines_from"] = reuse.name if reuse is not None else None
                rec["balance"] = args.balance
                rec["loadavg"] = os.getloadavg()
                (partial / f"{fleet.task}{tag}-seed{seed}.json").write_text(json.dumps(rec) + "\n")
        done = sorted(partial.glob(f"{fleet.task}{tag}-seed*.json"))
        if not done:
            raise SystemExit(f"no finished seed under {partial}")
        summary = summarise(fleet, [json.loads(p.read_text()) for p in done])
        summary["mode"] = "quick" if args.quick else "full"
    out = args.out or RESULTS / ("mesh_learning.json" if args.task == "sst2" else f"mesh_learning_{args.task}.json")
    if tag and args.out is None:
        out = PARTIAL / f"summary-{fleet.task}{tag}.json"
    summary["variant"] = tag or "scenario as shipped"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    if not args.quick:
        plot(summary, args.plot or out.with_suffix(".png"))
    log(f"wrote {out}: {json.dumps(summary['means'])}")
    for k, t in summary["targets"].items():
        diff = f" ({t['diff']:+.1f} points [{t['lo']:+.1f}, {t['hi']:+.1f}])" if "diff" in t else ""
        log(f"  {k}: {'met' if t['met'] else 'MISSED'}{diff}")


if __name__ == "__main__":
    main()
