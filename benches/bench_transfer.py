"""Cross-architecture transfer (SEP): does a teacher's HDC knowledge help a student of another model?

Real models (offline packages): MiniLM-L6 (BERT encoder, 384-d) and SmolLM2-135M (LLaMA decoder,
576-d), frozen, mean-pooled. Real data: SST-2 (test: the 872 GLUE dev sentences) and AG News (test: a
seeded sample of the official test split). Each model embeds each text once (meshnode.models cache).

Per task, a seeded pool of train texts is drawn once (SST-2: 4000, AG News: 2500). For every seed
the pool is permuted:
  anchors  = perm[:A]     (A = 2000 for SST-2, 1000 for AG News; the first N are the anchor set, for
                           N in 100/500/2000 up to A; unlabeled)
  labeled  = perm[A:]     (the teacher's gold-labeled training set; also the student's ceilings)
so anchors, training texts and test texts are disjoint, and nothing of the test split is ever fitted.
The HDC space (seed, D) is shared; each node centres its embeddings with its own pool mean (a local
unlabeled statistic) and encodes them as ternary vectors (tau = 0.3).

Stage 1 (ceilings): for each model and D in {1024, 4096, 10000}: probe accuracy on the raw float
embedding, the float HDC projection and the ternary HDC vectors, trained on the labeled set.

Stage 2 (transfer, D = 10000 unless --dim): for every ordered pair (teacher, student) and N:
- the teacher trains a linear probe on its ternary vectors of the labeled set (gold labels) and
  sends: its ternary anchor vectors (a `vectors` packet) + the probe (a `knowledge` packet, f16), or
  only its predictions on the anchors (a `knowledge` packet: N hard labels or N x C soft scores);
- wire-honest methods: the student fits an aligner (procrustes | ridge | cca | contrastive, and
  procrustes from its own HDC projection: `procrustes-hdc`) from its anchor embeddings to the
  teacher's *ternary* anchor vectors, maps test texts, ternarises and applies the teacher's probe;
- `ridge-float` (not wire-honest, for reference: what the paper's setup gets): the same ridge map
  fitted to the teacher's float HDC projections (N x D float32 on the wire);
- baselines: `anchors-gold` (student probe on its own HDC vectors of the N anchors with gold labels:
  no transfer, N human labels), `anchors-teacher` (the same with the teacher's hard predictions:
  4N bytes), `anchors-soft` (student ridge regression onto the teacher's softmaxed scores);
- `combo`: student probe on the anchors labelled by the teacher plus the rest of its local
  unlabeled anchor pool (perm[N:2000]) pseudo-labelled by the aligned teacher probe (ridge map).
Reported per cell: mean accuracy over seeds with a 95% bootstrap CI over test items, seed sd,
efficiency vs the student's HDC and float ceilings, gap closure (acc - chance)/(ceiling - chance)
with chance = the majority-class rate of the test set, and the encoded packet bytes on the wire.

Probes are ridge classifiers (+-1 targets, penalty by GCV on the training rows only) everywhere, so
every arm gets the same probe; `--probe logistic` uses L2 logistic regression with 3-fold CV instead.

    .venv/bin/python benches/bench_transfer.py                    # SST-2 + AG News, both pairs, 3 seeds
    .venv/bin/python benches/bench_transfer.py --tasks sst2       # SST-2 only
    .venv/bin/python benches/bench_transfer.py --quick            # synthetic embeddings: a smoke test
    .venv/bin/python benches/bench_transfer.py --tasks sst2 --models minilm,smollm2,mpnet --pairs-with mpnet \
        --out benches/results/transfer_mpnet.json                 # the four MPNet pairs

A run split in pieces (one per task, as transfer.json was) writes each piece under
benches/results/transfer_partial/ and --merge pools them into the file docs/RESULTS.md cites:

    .venv/bin/python benches/bench_transfer.py --tasks sst2 --out benches/results/transfer_partial/transfer_sst2.json
    .venv/bin/python benches/bench_transfer.py --merge PIECE.json [PIECE.json ...] --out benches/results/transfer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One BLAS/LAPACK thread: on a shared 2-core machine, threaded LAPACK spin-waits (an N = 2000 eigh
# took 20 s with 2 threads under load and 3.5 s with one). Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshnode.hdc.align import fit_wire_honest, gcv_ridge, make_aligner
from meshnode.hdc.knowledge import (
    LinearKnowledge,
    PredictionKnowledge,
    anchor_hash,
    fit_linear,
    fit_ridge_classifier,
    softmax,
)
from meshnode.hdc.space import Space, ternarize, zero_fraction
from meshnode.wire.packet import Signer, VectorBlock, Vectors, encode_packet

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benches" / "results"
CACHE = ROOT / ".cache" / "meshnode"
# train texts per task, and how many of each seed's permutation form the anchor pool (the rest is the
# labelled set). AG News texts are ~3x longer, so its pool is smaller to fit the CPU budget.
POOL = {"sst2": 4000, "ag_news": 2500}
ANCHOR_POOL = {"sst2": 2000, "ag_news": 1000}
TEST_CAP = {"sst2": None, "ag_news": 1000}
TEST_SPLIT = {"sst2": "dev", "ag_news": "test"}
DATA_SEED = 1234
TAU = 0.3
BOOT = 2000

# What the SEP paper claims (read next to our figures in docs/RESULTS.md; never tuned to).
CLAIMS = {
    "contrastive_efficiency": 0.96, "procrustes_efficiency": 0.79, "cca_efficiency": 0.83,
    "pair_efficiency": "94-99% (DistilBERT<->GPT-2/RoBERTa)", "task_efficiency": "95-100% (SST-2, AG News)",
    "anchors": 500, "efficiency_definition": "transfer acc / student's own frozen HDC-probe acc",
}

WIRE_HONEST = ("procrustes", "procrustes-hdc", "ridge", "cca", "contrastive")


# ------------------------------------------------------------------------------------------ data


@dataclass
class TaskData:
    name: str
    classes: tuple[str, ...]
    pool_texts: list[str]
    pool_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray


def load_task(name: str, pool: int | None = None) -> TaskData:
    from meshnode.data import load_split

    root = DATA / name
    train = load_split(root, "train").sample(pool or POOL[name], seed=DATA_SEED)
    test = load_split(root, TEST_SPLIT[name])
    if TEST_CAP[name]:
        test = test.sample(TEST_CAP[name], seed=DATA_SEED)
    return TaskData(name, train.classes, list(train.texts), train.labels, list(test.texts), test.labels)


def embed_task(model: str, task: TaskData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from meshnode.models import Embedder

    t0 = time.perf_counter()
    emb = Embedder.from_spec(model, cache_dir=CACHE, batch_size=64)
    test = emb.embed(task.test_texts)
    pool = emb.embed(task.pool_texts)
    info = {"model": model, "dim": emb.dim, "fingerprint": emb.fingerprint[:16], "computed": emb.computed,
            "seconds": round(time.perf_counter() - t0, 1)}
    return pool, test, info


def synthetic_task(n_pool: int, n_test: int, seed: int = 0) -> tuple[TaskData, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Quick mode: two 'models' that see one latent through different nonlinear maps."""
    rng = np.random.default_rng(seed)
    n = n_pool + n_test
    labels = rng.integers(0, 2, n)
    latent = rng.standard_normal((n, 16)) + 1.2 * np.eye(16)[labels]
    views = {}
    for name, width in (("enc", 24), ("dec", 32)):
        m = rng.standard_normal((16, width))
        x = np.tanh(latent @ m / 4) + 0.05 * rng.standard_normal((n, width))
        views[name] = (x[:n_pool].astype(np.float32), x[n_pool:].astype(np.float32))
    texts = [f"text {i}" for i in range(n)]
    task = TaskData("synthetic", ("a", "b"), texts[:n_pool], labels[:n_pool], texts[n_pool:], labels[n_pool:])
    return task, views


# ------------------------------------------------------------------------------------------ probes


def fit_probe(kind: str, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(np.unique(y)) < 2:   # a tiny anchor set can be one class: predict it
        w = np.zeros((n_classes, x.shape[1]), np.float32)
        b = np.full(n_classes, -1.0, np.float32)
        b[int(y[0])] = 1.0
        return w, b
    if kind == "logistic":
        w, b, _ = fit_linear(x, y, n_classes, seed=seed)
    else:
        w, b, _ = fit_ridge_classifier(x, y, n_classes)
    return w, b


def scores(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) @ w.T + b


# ------------------------------------------------------------------------------------------ stats


def mean_ci(correct: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """correct: (seeds, items) 0/1. Mean over seeds and items, 95% bootstrap CI over items, seed sd."""
    per_item = correct.mean(axis=0)
    idx = rng.integers(0, per_item.size, (BOOT, per_item.size))
    boots = per_item[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(per_item.mean()), float(lo), float(hi), float(correct.mean(axis=1).std(ddof=1)) if correct.shape[0] > 1 else 0.0


def paired_diff_ci(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean of a - b (both (seeds, items) 0/1) with a paired bootstrap 95% CI over test items."""
    d = (a.astype(np.float64) - b).mean(axis=0)
    idx = rng.integers(0, d.size, (BOOT, d.size))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


# ------------------------------------------------------------------------------------------ wire bytes


_SIGNER = Signer.generate()


def packet_bytes(body: Any) -> int:
    return len(encode_packet(body, _SIGNER))


def float_vectors_bytes(n: int, d: int) -> int:
    """A float anchor block is not a `vectors` packet (trits only): count it as a raw f32 tensor
    in a vectors-sized packet (header + signature + the tensor), which is a lower bound."""
    return 72 + 64 + 64 + 4 * n * d


# ------------------------------------------------------------------------------------------ stages


def stage_ceilings(task: TaskData, emb: dict[str, tuple[np.ndarray, np.ndarray]], dims: Sequence[int],
                   seeds: Sequence[int], probe: str, anchor_pool: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    c = len(task.classes)
    for model, (pool, test) in emb.items():
        center = pool.mean(axis=0)
        for dim in dims:
            acc: dict[str, list[float]] = {"float": [], "hdc-float": [], "hdc-ternary": []}
            zeros = []
            for seed in seeds:
                perm = np.random.default_rng(seed).permutation(len(pool))
                lab = perm[anchor_pool:]
                y = task.pool_labels[lab]
                space = Space(seed=1000 + seed, dim=dim)
                reps = {
                    "float": (pool - center, test - center),
                    "hdc-float": (space.project(pool, center=center), space.project(test, center=center)),
                }
                reps["hdc-ternary"] = (ternarize(reps["hdc-float"][0], TAU), ternarize(reps["hdc-float"][1], TAU))
                zeros.append(zero_fraction(reps["hdc-ternary"][1]))
                for name, (xp, xt) in reps.items():
                    if name == "float" and dim != dims[0]:
                        continue   # independent of D
                    w, b = fit_probe(probe, xp[lab], y, c, seed)
                    acc[name].append(float((scores(w, b, xt).argmax(1) == task.test_labels).mean()))
            for name, vals in acc.items():
                if vals:
                    rows.append({"task": task.name, "model": model, "dim": dim if name != "float" else None,
                                 "representation": name, "accuracy_mean": float(np.mean(vals)),
                                 "accuracy_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                 "per_seed": vals, "zero_fraction": float(np.mean(zeros)) if name == "hdc-ternary" else None})
            log(f"  ceilings {task.name} {model} D={dim}: " + ", ".join(
                f"{k} {np.mean(v):.3f}" for k, v in acc.items() if v) + f" (zeros {np.mean(zeros):.3f})")
    return rows


@dataclass
class Arm:
    correct: list[np.ndarray]
    bytes: int | None = None
    note: str = ""
    extra: list[dict[str, Any]] | None = None


def stage_transfer(task: TaskData, emb: dict[str, tuple[np.ndarray, np.ndarray]], pairs: Sequence[tuple[str, str]],
                   anchors: Sequence[int], seeds: Sequence[int], dim: int, methods: Sequence[str], probe: str,
                   contrastive_steps: int, anchor_pool: int, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    c = len(task.classes)
    y_test = task.test_labels
    chance = float(np.bincount(y_test, minlength=c).max() / len(y_test))
    rows: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for teacher, student in pairs:
        tp, _ = emb[teacher]
        sp, st = emb[student]
        t_center, s_center = tp.mean(0), sp.mean(0)
        arms: dict[tuple[str, int], Arm] = {}
        ceil: dict[str, list[np.ndarray]] = {"student-hdc": [], "student-float": [], "teacher-hdc": []}
        t0 = time.perf_counter()
        for seed in seeds:
            perm = np.random.default_rng(seed).permutation(len(tp))
            lab = perm[anchor_pool:]
            y_lab = task.pool_labels[lab]
            space = Space(seed=1000 + seed, dim=dim)
            t_float = space.project(tp, center=t_center)
            t_tern = ternarize(t_float, TAU)
            s_float = space.project(sp, center=s_center)
            s_tern = ternarize(s_float, TAU)
            st_float = space.project(st, center=s_center)
            st_tern = ternarize(st_float, TAU)
            # the teacher: a probe on its ternary vectors of its gold-labelled set
            tw, tb = fit_probe(probe, t_tern[lab], y_lab, c, seed)
            teacher_k = LinearKnowledge(task.classes, tw, tb, "gold")
            knowledge_bytes = packet_bytes(teacher_k.to_body("transfer", task.name, half=True))
            # ceilings of the student (gold labels on the same labelled set) and, for reference, the
            # teacher on its own test embeddings
            w, b = fit_probe(probe, s_tern[lab], y_lab, c, seed)
            ceil["student-hdc"].append(scores(w, b, st_tern).argmax(1) == y_test)
            w, b = fit_probe(probe, sp[lab] - s_center, y_lab, c, seed)
            ceil["student-float"].append(scores(w, b, st - s_center).argmax(1) == y_test)
            tt = emb[teacher][1]
            ceil["teacher-hdc"].append(scores(tw, tb, ternarize(space.project(tt, center=t_center), TAU)).argmax(1) == y_test)
            for n in anchors:
                a = perm[:n]
                rest = perm[n:anchor_pool]
                a_texts = [task.pool_texts[i] for i in a]
                t_scores = scores(tw, tb, t_tern[a])
                t_hard = t_scores.argmax(1)
                t_soft = softmax(t_scores)
                vec_bytes = packet_bytes(Vectors("transfer", VectorBlock.from_trits(t_tern[a], space.space_id)))
                hard_k = PredictionKnowledge(task.classes, t_hard.astype(np.int32), anchor_hash(a_texts))
                soft_k = PredictionKnowledge(task.classes, t_soft, anchor_hash(a_texts))
                hard_bytes = packet_bytes(hard_k.to_body("transfer", task.name))
                soft_bytes = packet_bytes(soft_k.to_body("transfer", task.name, half=True))

                def record(name: str, pred: np.ndarray, nbytes: int | None, note: str = "",
                           extra: dict[str, Any] | None = None, n: int = n,
                           arms: dict[tuple[str, int], Arm] = arms) -> None:
                    arm = arms.setdefault((name, n), Arm([], nbytes, note, []))
                    arm.correct.append(pred == y_test)
                    if extra:
                        assert arm.extra is not None
                        arm.extra.append(extra)

                # baselines: the student's own probe on the N anchors
                w, b = fit_probe(probe, s_tern[a], task.pool_labels[a], c, seed)
                record("anchors-gold", scores(w, b, st_tern).argmax(1), 0, "N gold labels, no transfer")
                w, b = fit_probe(probe, s_tern[a], t_hard, c, seed)
                record("anchors-teacher", scores(w, b, st_tern).argmax(1), hard_bytes, "teacher's hard labels on the anchors")
                sw, sx, sy, _ = gcv_ridge(s_tern[a].astype(np.float64), t_soft)
                record("anchors-soft", ((st_tern - sx) @ sw + sy).argmax(1), soft_bytes,
                       "ridge onto the teacher's soft scores (f16) on the anchors")
                # alignment methods: student anchors -> teacher's ternary anchor vectors
                for method in methods:
                    t1 = time.perf_counter()
                    base = "procrustes" if method == "procrustes-hdc" else method
                    if method == "ridge-float":
                        aligner = make_aligner("ridge").fit(sp[a], t_float[a])
                        x_in_test, nbytes, note = st, float_vectors_bytes(n, dim) + knowledge_bytes, "not wire-honest: float anchors"
                    else:
                        params = {"max_steps": contrastive_steps, "seed": seed} if base == "contrastive" else {}
                        x_anchor = s_float[a] if method == "procrustes-hdc" else sp[a]
                        aligner = fit_wire_honest(base, x_anchor, t_tern[a], **params)
                        x_in_test = st_float if method == "procrustes-hdc" else st
                        nbytes, note = vec_bytes + knowledge_bytes, "ternary anchors + f16 probe"
                    mapped = ternarize(aligner.transform(x_in_test), TAU)
                    extra = {"fit_s": round(time.perf_counter() - t1, 2)}
                    if base == "contrastive":
                        extra.update(steps=aligner.steps_, converged=aligner.converged_)
                    record(method, teacher_k.predict(mapped), nbytes, note, extra)
                    if method == "ridge" and len(rest):
                        # combo: pseudo-label the student's other local texts with the aligned teacher
                        # probe, add the teacher-labelled anchors, train the student's own probe
                        pseudo = teacher_k.predict(ternarize(aligner.transform(sp[rest]), TAU))
                        w, b = fit_probe(probe, np.vstack([s_tern[a], s_tern[rest]]),
                                         np.concatenate([t_hard, pseudo]), c, seed)
                        record("combo", scores(w, b, st_tern).argmax(1), vec_bytes + knowledge_bytes + hard_bytes,
                               "ridge map labels the student's other unlabeled texts + teacher labels on anchors")
            log(f"  {task.name} {teacher}->{student} seed {seed} done ({time.perf_counter() - t0:.0f}s)")
        ceilings = {k: np.vstack(v) for k, v in ceil.items()}
        c_hdc = ceilings["student-hdc"].mean()
        c_float = ceilings["student-float"].mean()
        for key, arr in ceilings.items():
            m, lo, hi, sd = mean_ci(arr, rng)
            rows.append({"task": task.name, "teacher": teacher, "student": student, "method": f"ceiling:{key}",
                         "anchors": None, "accuracy": m, "ci95": [lo, hi], "seed_sd": sd})
        by_n: dict[int, dict[str, np.ndarray]] = {}
        for (name, n), arm in arms.items():
            arr = np.vstack(arm.correct)
            by_n.setdefault(n, {})[name] = arr
            m, lo, hi, sd = mean_ci(arr, rng)
            row = {"task": task.name, "teacher": teacher, "student": student, "method": name, "anchors": n,
                   "accuracy": m, "ci95": [lo, hi], "seed_sd": sd, "per_seed": arr.mean(axis=1).tolist(),
                   "efficiency_hdc": m / c_hdc, "efficiency_float": m / c_float,
                   "gap_closure": (m - chance) / (c_hdc - chance), "chance": chance,
                   "wire_bytes": arm.bytes, "wire_honest": name in WIRE_HONEST or name == "combo",
                   "note": arm.note}
            if arm.extra:
                row["fits"] = arm.extra
            rows.append(row)
        for n, named in by_n.items():
            honest = {k: v for k, v in named.items() if k in WIRE_HONEST}
            if not honest:
                continue
            best = max(honest, key=lambda k: honest[k].mean())
            best_any = max((k for k in named if k not in ("anchors-gold",)), key=lambda k: named[k].mean())
            for base in ("anchors-gold", "anchors-teacher", "anchors-soft"):
                for cand, label in ((best, "best wire-honest map"), (best_any, "best method (any, combos included)")):
                    d, lo, hi = paired_diff_ci(named[cand], named[base], rng)
                    tests.append({"task": task.name, "teacher": teacher, "student": student, "anchors": n,
                                  "candidate": cand, "candidate_kind": label, "baseline": base,
                                  "diff": d, "ci95": [lo, hi], "above_zero": lo > 0})
    return rows, tests


# ------------------------------------------------------------------------------------------ report


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets (a), (b), (c), judged from the rows (verdicts, never asserted)."""
    rows = [r for r in result["transfer"] if r["anchors"] is not None]
    tests = result["tests"]
    out: dict[str, Any] = {"a": [], "b": [], "c": []}
    cells = sorted({(r["task"], r["teacher"], r["student"]) for r in rows})
    anchors = sorted({r["anchors"] for r in rows})
    n_small = min(anchors) if anchors else None
    n_mid = 500 if 500 in anchors else (anchors[len(anchors) // 2] if anchors else None)
    for task, teacher, student in cells:
        sel = [r for r in rows if (r["task"], r["teacher"], r["student"]) == (task, teacher, student)]
        ceil = next(r["accuracy"] for r in result["transfer"] if (r["task"], r["teacher"], r["student"]) ==
                    (task, teacher, student) and r["method"] == "ceiling:student-hdc")
        # (a) at the smallest N, the best wire-honest map against both anchor baselines
        t_small = [t for t in tests if (t["task"], t["teacher"], t["student"], t["anchors"]) ==
                   (task, teacher, student, n_small) and t["candidate_kind"] == "best wire-honest map"
                   and t["baseline"] in ("anchors-gold", "anchors-teacher")]
        if t_small:
            out["a"].append({"task": task, "pair": f"{teacher}->{student}", "anchors": n_small,
                             "method": t_small[0]["candidate"],
                             "margins": {t["baseline"]: {"diff": t["diff"], "ci95": t["ci95"]} for t in t_small},
                             "met": all(t["diff"] >= 0.03 and t["above_zero"] for t in t_small)})
        # (b) at N = 500: any method >= 95% of the student's HDC ceiling and above the teacher-label baseline
        mid = {r["method"]: r for r in sel if r["anchors"] == n_mid}
        if mid:
            teacher_lab = mid.get("anchors-teacher", {}).get("accuracy", float("nan"))
            cands = {k: v for k, v in mid.items() if k not in ("anchors-gold", "anchors-teacher")}
            best = max(cands, key=lambda k: cands[k]["accuracy"])
            eff = cands[best]["accuracy"] / ceil
            test = next((t for t in tests if (t["task"], t["teacher"], t["student"], t["anchors"], t["candidate"],
                                              t["baseline"]) == (task, teacher, student, n_mid, best, "anchors-teacher")), None)
            out["b"].append({"task": task, "pair": f"{teacher}->{student}", "anchors": n_mid, "best": best,
                             "efficiency_hdc": eff, "minus_teacher_label_baseline": cands[best]["accuracy"] - teacher_lab,
                             "paired_ci95": test["ci95"] if test else None,
                             "met": bool(eff >= 0.95 and cands[best]["accuracy"] > teacher_lab
                                         and (test is None or test["above_zero"]))})
        # (c) the cheapest method within 1 point of the best (transfer methods, gold baseline excluded)
        for n in anchors:
            cand = [r for r in sel if r["anchors"] == n and r["method"] != "anchors-gold" and r["wire_bytes"] is not None]
            if not cand:
                continue
            top = max(r["accuracy"] for r in cand)
            near = [r for r in cand if r["accuracy"] >= top - 0.01]
            pick = min(near, key=lambda r: r["wire_bytes"])
            out["c"].append({"task": task, "pair": f"{teacher}->{student}", "anchors": n, "default": pick["method"],
                             "accuracy": pick["accuracy"], "best_accuracy": top, "bytes": pick["wire_bytes"],
                             "bytes_by_method": {r["method"]: r["wire_bytes"] for r in cand}})
    return out


def table(rows: list[dict[str, Any]], task: str, teacher: str, student: str) -> str:
    sel = [r for r in rows if r["task"] == task and r["teacher"] == teacher and r["student"] == student]
    lines = [f"{task}: {teacher} -> {student}",
             f"{'method':22} {'N':>5} {'acc':>6} {'95% CI':>13} {'sd':>5} {'eff.hdc':>7} {'eff.flt':>7} {'gap':>6} {'bytes':>10}"]
    for r in sorted(sel, key=lambda r: (r["anchors"] or 0, -r["accuracy"])):
        lo, hi = r["ci95"]
        lines.append(f"{r['method']:22} {r['anchors'] or '-':>5} {r['accuracy']:6.3f} [{lo:.3f},{hi:.3f}] "
                     f"{r['seed_sd']:5.3f} {r.get('efficiency_hdc', float('nan')):7.3f} "
                     f"{r.get('efficiency_float', float('nan')):7.3f} {r.get('gap_closure', float('nan')):6.3f} "
                     f"{r.get('wire_bytes') if r.get('wire_bytes') is not None else '-':>10}")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    out = ["| task | model | D | float | HDC float | HDC ternary | zeros |", "|---|---|---:|---:|---:|---:|---:|"]
    ceil = result["ceilings"]
    for task in sorted({r["task"] for r in ceil}):
        for model in sorted({r["model"] for r in ceil if r["task"] == task}):
            flt = next(r for r in ceil if (r["task"], r["model"], r["representation"]) == (task, model, "float"))
            for dim in sorted({r["dim"] for r in ceil if r["dim"]}):
                get = {r["representation"]: r for r in ceil if (r["task"], r["model"], r["dim"]) == (task, model, dim)}
                out.append(f"| {task} | {model} | {dim} | {flt['accuracy_mean']:.3f} | "
                           f"{get['hdc-float']['accuracy_mean']:.3f} ± {get['hdc-float']['accuracy_sd']:.3f} | "
                           f"{get['hdc-ternary']['accuracy_mean']:.3f} ± {get['hdc-ternary']['accuracy_sd']:.3f} | "
                           f"{get['hdc-ternary']['zero_fraction']:.3f} |")
    rows = result["transfer"]
    for task, teacher, student in sorted({(r["task"], r["teacher"], r["student"]) for r in rows}):
        sel = [r for r in rows if (r["task"], r["teacher"], r["student"]) == (task, teacher, student)]
        ceils = {r["method"]: r for r in sel if r["anchors"] is None}
        title = (f"**{task}, teacher {teacher} -> student {student}** (student HDC ceiling "
                 f"{ceils['ceiling:student-hdc']['accuracy']:.3f}, float ceiling "
                 f"{ceils['ceiling:student-float']['accuracy']:.3f}, teacher {ceils['ceiling:teacher-hdc']['accuracy']:.3f}, "
                 f"chance {sel[-1].get('chance', float('nan')):.3f})")
        out += ["", title, "",
                "| N | method | acc | 95% CI | seed sd | eff. HDC | eff. float | gap closure | bytes |",
                "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in sorted((r for r in sel if r["anchors"]), key=lambda r: (r["anchors"], -r["accuracy"])):
            out.append(f"| {r['anchors']} | {r['method']} | {r['accuracy']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
                       f"{r['seed_sd']:.3f} | {r['efficiency_hdc']:.3f} | {r['efficiency_float']:.3f} | "
                       f"{r['gap_closure']:.3f} | {r['wire_bytes']:,} |")
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["transfer"]
    cells = sorted({(r["task"], r["teacher"], r["student"]) for r in rows})
    ncols = min(2, max(1, len(cells)))
    nrows = max(1, -(-len(cells) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.6 * nrows), squeeze=False)
    for ax, (task, teacher, student) in zip(axes.flat, cells):
        sel = [r for r in rows if (r["task"], r["teacher"], r["student"]) == (task, teacher, student)]
        methods = sorted({r["method"] for r in sel if r["anchors"]})
        for m in methods:
            pts = sorted((r["anchors"], r["accuracy"], *r["ci95"]) for r in sel if r["method"] == m)
            ns, acc, lo, hi = map(np.array, zip(*pts))
            style = "--" if m.startswith("anchors") else "-"
            ax.errorbar(ns, acc, yerr=[acc - lo, hi - acc], fmt=style + "o", ms=3, capsize=2, label=m)
        for r in sel:
            if r["method"] == "ceiling:student-hdc":
                ax.axhline(r["accuracy"], color="k", lw=0.8, label="student HDC ceiling")
        ax.set_xscale("log")
        ax.set_title(f"{task}: {teacher} -> {student}", fontsize=9)
        ax.set_xlabel("anchors N")
        ax.set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main


def merge(paths: Sequence[Path], out: Path) -> int:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = dict(parts[0])
    result["merged_from"] = [{"file": str(p), "settings": part["settings"], "seconds": part["seconds"],
                              "machine": part["machine"]} for p, part in zip(paths, parts)]
    for key in ("embeddings", "ceilings", "transfer", "tests"):
        result[key] = [row for part in parts for row in part[key]]
    result["seconds"] = sum(part["seconds"] for part in parts)
    result["targets"] = targets(result)
    out.write_text(json.dumps(result, indent=1, default=float))
    plot(result, out.with_suffix(".png"))
    print(json.dumps(result["targets"], indent=1, default=float))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="synthetic embeddings, small grid: a smoke test")
    ap.add_argument("--tasks", default="sst2,ag_news")
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--pairs-with", metavar="MODEL",
                    help="stage 2: only the ordered pairs that include MODEL (e.g. a model added to an earlier run)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dims", default="1024,4096,10000", help="stage 1 dimensions")
    ap.add_argument("--dim", type=int, default=10000, help="stage 2 dimension")
    ap.add_argument("--anchors", default="100,500,2000")
    ap.add_argument("--methods", default="procrustes,procrustes-hdc,ridge,cca,contrastive,ridge-float")
    ap.add_argument("--probe", choices=("ridge", "logistic"), default="ridge")
    ap.add_argument("--contrastive-steps", type=int, default=1000)
    ap.add_argument("--pool", action="append", default=[], metavar="TASK=N",
                    help="train texts sampled for TASK (default %s); a different pool is a different split, "
                         "so its rows do not pair with a default run's" % POOL)
    ap.add_argument("--anchor-pool", action="append", default=[], metavar="TASK=N",
                    help="how many of each seed's permutation of the pool form the anchor pool (default %s); "
                         "the rest is the labelled set" % ANCHOR_POOL)
    ap.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    ap.add_argument("--markdown", type=Path, metavar="JSON", help="print the tables of a result file as markdown")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="combine results of earlier runs (e.g. one per task) into --out, recomputing the targets")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.pairs_with is not None and not args.quick and args.pairs_with not in args.models.split(","):
        ap.error(f"--pairs-with {args.pairs_with!r} is not one of --models {args.models!r}")
    pool_n, anchor_pool = dict(POOL), dict(ANCHOR_POOL)
    for opt, items, into in (("--pool", args.pool, pool_n), ("--anchor-pool", args.anchor_pool, anchor_pool)):
        for item in items:
            name, _, value = item.partition("=")
            if name not in POOL or not value.isdigit() or int(value) < 1:
                ap.error(f"{opt} {item!r}: expected TASK=N with TASK one of {', '.join(POOL)} and N >= 1")
            into[name] = int(value)
    for name in POOL:
        if anchor_pool[name] >= pool_n[name]:
            ap.error(f"{name}: the anchor pool ({anchor_pool[name]}) must leave a labelled set in the pool "
                     f"({pool_n[name]})")

    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    seeds = list(range(args.seeds))
    anchors = [int(v) for v in args.anchors.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    dims = [int(v) for v in args.dims.split(",")]
    result: dict[str, Any] = {
        "bench": "transfer", "mode": "quick" if args.quick else "full",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()},
        "settings": {"seeds": seeds, "stage1_dims": dims, "stage2_dim": args.dim, "anchors": anchors,
                     "methods": methods, "probe": args.probe, "pairs_with": args.pairs_with, "tau": TAU, "pool": pool_n,
                     "anchor_pool": anchor_pool,
                     "test_cap": TEST_CAP, "data_seed": DATA_SEED, "contrastive_max_steps": args.contrastive_steps,
                     "bootstrap": BOOT, "space_seed": "1000 + seed"},
        "claims": CLAIMS, "embeddings": [], "ceilings": [], "transfer": [], "tests": [],
    }
    if args.quick:
        anchor_pool = {"synthetic": 120}
        task, views = synthetic_task(240, 200)
        tasks = [(task, views)]
        anchors, dims, seeds = [20, 60], [256], [0, 1]
        args.dim, args.contrastive_steps = 512, 100
        result["settings"].update(anchor_pool=anchor_pool, anchors=anchors, pool=240, stage1_dims=dims,
                                  stage2_dim=args.dim, seeds=seeds, contrastive_max_steps=100)
    else:
        tasks = []
        for name in args.tasks.split(","):
            task = load_task(name, pool_n[name])
            views = {}
            for model in args.models.split(","):
                pool, test, info = embed_task(model, task)
                info["task"] = name
                result["embeddings"].append(info)
                views[model] = (pool, test)
                log(f"embedded {name} with {model}: {info}")
            tasks.append((task, views))
    for task, views in tasks:
        models = list(views)
        pairs = [(a, b) for a in models for b in models if a != b and args.pairs_with in (None, a, b)]
        ap_n = anchor_pool[task.name]
        task_anchors = [n for n in anchors if n <= ap_n]
        result["ceilings"] += stage_ceilings(task, views, dims, seeds, args.probe, ap_n, log)
        rows, tests = stage_transfer(task, views, pairs, task_anchors, seeds, args.dim, methods, args.probe,
                                     args.contrastive_steps, ap_n, log)
        result["transfer"] += rows
        result["tests"] += tests
        for a, b in pairs:
            print(table(rows, task.name, a, b), flush=True)
    result["targets"] = targets(result)
    print(json.dumps(result["targets"], indent=1, default=float), flush=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    try:
        plot(result, args.out.with_suffix(".png"))
    except (ImportError, RuntimeError, ValueError, OSError) as e:  # a plot is a convenience; the JSON is the result
        print(f"plot failed: {e}", file=sys.stderr)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
