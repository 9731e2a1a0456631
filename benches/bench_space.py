"""What do the shared HDC space's ternary vectors lose? (issue 17; docs/RESULTS.md has the reading)

The same ridge probe (+-1 targets; penalty by GCV as the v1 worker chose it, by GCV over distinct rows
as v2 does, by PRESS, or the best one on test as a diagnostic) on centred float embeddings and on the
space's vectors, per task (SST-2, AG News, SICK as a pair task), train size n and model (MiniLM,
SmolLM2, MPNet), varying one factor at a time around encoder version 1 (D, tau, projection,
per-dimension scaling, centring, no quantisation).

Stages (each resumes from benches/results/space_partial/, so a cut-off run keeps its cells):
  embed     each model embeds a seeded train pool and the eval split once, through `Embedder` and its
            on-disk cache (bench_transfer.py's cache dir); arrays saved as .npz so later stages load no model
  run       the cells: v1 space at n = 500 / 2000 / 4000 x 3 seeds, the one-factor sweeps (seed 0), and
            `--new JSON` for a candidate space (`--only-new --no-sweeps` for just that)
  select    v2's whitening form, chosen on validation rows of the train pools only (test never read)
  logistic  L2 logistic regression (fit_linear) on float vs v1 vectors, n = --n, seed 0
  report    benches/results/space.json (+ .png) from every cells file; `--markdown FILE` prints the tables
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# One BLAS thread: the machine is shared (see bench_transfer.py for why threaded LAPACK hurts here).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benches" / "results"
PARTIAL = RESULTS / "space_partial"
CACHE = ROOT / ".cache" / "meshnode"          # the Embedder cache bench_transfer.py uses
ARRAYS = CACHE / "bench_space"
DATA_SEED = 1234
POOL = {"sst2": 4000, "ag_news": 2000, "sick": 4000}   # train texts embedded per task (CPU budget: AG News
# texts are ~3x longer, and SmolLM2 / MPNet embed ~10 texts/s on one shared core)
TEST_SPLIT = {"sst2": "dev", "ag_news": "test", "sick": "test"}
TEST_CAP = {"sst2": None, "ag_news": 1000, "sick": 1000}
CHUNK = 256   # texts per Embedder call: its cache is written per call, so a cut-off run keeps its work


def load_task(name: str) -> tuple[Any, Any]:
    from meshnode.data import load_split

    root = DATA / name
    train = load_split(root, "train").sample(POOL[name], seed=DATA_SEED)
    test = load_split(root, TEST_SPLIT[name])
    if TEST_CAP[name]:
        test = test.sample(TEST_CAP[name], seed=DATA_SEED)
    return train, test


def array_path(task: str, model: str) -> Path:
    return ARRAYS / f"{task}-{model}-p{POOL[task]}-t{TEST_CAP[task]}.npz"


def embed_stage(tasks: list[str], models: list[str], batch_size: int) -> None:
    import torch

    from meshnode.models import Embedder

    torch.set_num_threads(1)
    ARRAYS.mkdir(parents=True, exist_ok=True)
    for model in models:
        emb = None
        for task in tasks:
            out = array_path(task, model)
            if out.exists():
                continue
            if emb is None:
                emb = Embedder.from_spec(model, cache_dir=CACHE, batch_size=batch_size)
            train, test = load_task(task)
            parts = {}
            for split, data in (("test", test), ("train", train)):
                vecs = []
                t0 = time.perf_counter()
                for s in range(0, len(data.texts), CHUNK):
                    vecs.append(emb.embed(data.texts[s:s + CHUNK]))
                    print(f"{model} {task} {split} {s + CHUNK}/{len(data.texts)} "
                          f"{time.perf_counter() - t0:.0f}s", flush=True)
                parts[split] = np.concatenate(vecs)
            np.savez(out, train=parts["train"], train_labels=train.labels, test=parts["test"],
                     test_labels=test.labels, classes=np.array(train.classes), fingerprint=emb.fingerprint)


# ------------------------------------------------------------------------------------------ encoders


def _pcg_gaussians(seed: int, width: int, dim: int, tag: bytes) -> np.ndarray:
    """(width, dim) float64 Gaussians for the projection variants that are not the space's own."""
    import hashlib

    from meshnode.hdc.space import _gaussians

    material = b"bench_space/" + tag + b"\x00" + f"{seed}/{width}/{dim}".encode()
    gen = np.random.PCG64(int.from_bytes(hashlib.sha256(material).digest(), "little"))
    return _gaussians(gen, width * dim).reshape(dim, width).T


def projection_matrix(kind: str, seed: int, width: int, dim: int) -> np.ndarray:
    """(width, dim) float32: "gauss" (the space's v1 projection), "sparse" (Achlioptas-style: a
    fraction 1/sqrt(width) of entries is +-1, the rest 0) or "orth" (the Gaussian one with its
    width rows orthogonalised)."""
    from meshnode.hdc.space import projection

    if kind == "gauss":
        return np.asarray(projection(seed, width, dim, 1))
    if kind == "sparse":
        g = _pcg_gaussians(seed, width, dim, b"sparse")
        keep = np.abs(g) > _normal_quantile(1 - 0.5 / np.sqrt(width))
        p = np.sign(g) * keep
    elif kind == "orth":
        g = _pcg_gaussians(seed, width, dim, b"orth")
        q, r = np.linalg.qr(g.T)                   # (dim, width) orthonormal columns
        p = (q * np.sign(np.diag(r))).T * np.sqrt(dim / width)
    else:
        raise ValueError(kind)
    norms = np.sqrt((p ** 2).sum(axis=0))
    norms[norms == 0] = 1.0
    return (p / norms).astype(np.float32)


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def running_means(x: np.ndarray, warmup: int = 32) -> np.ndarray:
    """The mean a node that sees `x` one row at a time has before encoding each row (the first
    `warmup` rows are encoded with the mean of the first `warmup`: a node buffers a little first)."""
    csum = np.cumsum(x.astype(np.float64), axis=0)
    counts = np.arange(1, len(x) + 1)[:, None]
    means = np.empty_like(csum)
    means[1:] = csum[:-1] / counts[:-1]
    means[:warmup] = csum[warmup - 1] / warmup
    return means.astype(np.float32)


def encode(cfg: dict[str, Any], pool: np.ndarray, train: np.ndarray, test: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Ternary (or float, cfg["quant"] == "float") HDC vectors of train and test rows under `cfg`.
    `pool` is the node's unlabeled local set (its anchor pool) that centring and scaling come from."""
    from meshnode.hdc.space import ternarize

    width = pool.shape[1]
    if cfg["center"] == "anchor":
        c_tr = c_te = pool.mean(axis=0)
    else:   # running mean over the stream of train rows; test rows see the final mean
        c_tr = running_means(train)
        c_te = train.mean(axis=0)
    scale = pool.std(axis=0) + 1e-6 if cfg["norm"] == "std" else np.ones(width, np.float32)
    if cfg.get("whiten_power") is not None:   # a candidate form of v2's whitening (stage "select")
        from meshnode.hdc.space import Space

        x0 = pool.astype(np.float64) - pool.mean(axis=0)
        lam, vec = np.linalg.eigh(x0.T @ x0 / (len(pool) - 1))
        lam = np.clip(lam, 0.0, None)
        w = ((vec * (lam + cfg["whiten_eps"] * lam.mean()) ** -cfg["whiten_power"]) @ vec.T).astype(np.float32)
        p2 = np.asarray(Space(cfg["seed"], cfg["D"], 2).projection(width))
        outw = [((x - pool.mean(axis=0)).astype(np.float32) @ w) @ p2 for x in (train, test)]
        return tuple(ternarize(z, cfg["tau"]) for z in outw)  # type: ignore[return-value]
    if cfg.get("version", 1) >= 2:   # encoder version 2: the space's own code path (whitening + v2 matrix)
        from meshnode.hdc.space import Space, anchor_whitening

        center, whiten = anchor_whitening(pool, cfg.get("whiten_eps", 0.1))
        space = Space(cfg["seed"], cfg["D"], 2)
        out2 = [space.project(x, center=center, whiten=whiten) for x in (train, test)]
        return tuple(z if cfg["quant"] == "float" else ternarize(z, cfg["tau"]) for z in out2)  # type: ignore[return-value]
    p = projection_matrix(cfg["proj"], cfg["seed"], width, cfg["D"])
    out = []
    for x, c in ((train, c_tr), (test, c_te)):
        z = ((x - c) / scale).astype(np.float32) @ p
        out.append(z if cfg["quant"] == "float" else ternarize(z, cfg["tau"]))
    return out[0], out[1]


# ------------------------------------------------------------------------------------------ probes

ALPHAS = np.logspace(-6, 6, 49)     # relative to the mean squared singular value (as gcv_ridge's grid)
V1_GRID = (ALPHAS >= 1e-4 * 0.999) & (ALPHAS <= 1e4 * 1.001)   # gcv_ridge's v1 grid: 1e-4..1e4, 4 per decade


def collapse_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact duplicate rows of x merged: (distinct rows, their mean targets, counts, within-group
    scatter of y). Ridge on the distinct rows weighted by their counts has the same solution as on
    all rows; the scatter is the part of every residual sum of squares that no penalty changes."""
    xs = np.ascontiguousarray(x)
    keys = xs.view(np.dtype((np.void, xs.dtype.itemsize * xs.shape[1]))).ravel()
    _, first, inv, cnt = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    ysum = np.zeros((len(first), y.shape[1]))
    np.add.at(ysum, inv, y)
    ymean = ysum / cnt[:, None]
    within = np.zeros(len(first))
    np.add.at(within, inv, ((y - ymean[inv]) ** 2).sum(axis=1))
    return xs[first], ymean, cnt.astype(np.float64), within


def ridge_path(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, n_classes: int
               ) -> dict[str, Any]:
    """Ridge classifiers (+-1 targets, intercept) for a grid of penalties from one eigendecomposition.

    The decomposition is of the distinct rows weighted by their counts (the same ridge solution as
    all rows). Test accuracy at the penalty picked by: "gcv" GCV over all rows on v1's grid (exactly
    the v1 worker's rule), "gcv_distinct" GCV counting distinct rows (the v2 rule), "press" exact
    leave-one-out squared error; and two diagnostics that are not probes: the best penalty on the test
    set ("oracle") and the smallest one ("ridgeless", where an n ~ D peak shows)."""
    import scipy.linalg

    xs = np.asarray(xtr, dtype=np.float32)
    n, p = xs.shape
    y = -np.ones((n, n_classes))
    y[np.arange(n), ytr] = 1.0
    mean, ym = xs.mean(axis=0), y.mean(axis=0)
    xg, yg, cnt, within_g = collapse_rows(xs, y)
    within = float(within_g.sum())
    ng = len(cnt)
    w = np.sqrt(cnt)
    xw = (xg - mean) * w[:, None].astype(np.float32)
    yw = (yg - ym) * w[:, None]
    tc = np.asarray(xte, dtype=np.float32) - mean
    if p > ng:  # dual: an ng x ng Gram matrix
        vals, u = scipy.linalg.eigh(xw @ xw.T, driver="evd")   # float32: ample for penalties >= 1e-6 x mean
        vals, u = vals.astype(np.float64), u.astype(np.float64)
        keep = vals > vals.max() * 1e-10
        vals, u = vals[keep], u[:, keep]
        s = np.sqrt(vals)
        te = ((tc @ xw.T).astype(np.float64) @ u) / s          # = tc V
    else:       # primal: a p x p covariance
        vals, v = scipy.linalg.eigh((xw.T @ xw).astype(np.float64), driver="evd")
        keep = vals > vals.max() * 1e-10
        vals, v = vals[keep], v[:, keep]
        s = np.sqrt(vals)
        u = (xw.astype(np.float64) @ v) / s
        te = tc.astype(np.float64) @ v
    uty = u.T @ yw
    u2 = u ** 2
    scale = float(vals.mean())
    g_all, g_dis, press, accs = [], [], [], []
    for a in ALPHAS * scale:
        f = vals / (vals + a)
        df = float(f.sum())
        resid_w = yw - u @ (f[:, None] * uty)                  # sqrt(count) x (mean target - fit) per row
        rss_w = float((resid_w ** 2).sum())
        g_all.append((rss_w + within) / max(n - 1 - df, 1e-9) ** 2)
        g_dis.append(rss_w / max(ng - 1 - df, 1e-9) ** 2)
        h = (u2 @ f) / cnt + 1.0 / n                           # each raw row's leverage
        # per group: its rows' squared residuals (the mean's part + the scatter around the mean)
        grp_ss = (resid_w ** 2).sum(axis=1)
        press.append(float(((grp_ss + within_g) / np.maximum(1.0 - h, 1e-12) ** 2).sum()))
        pred = te @ ((s / (vals + a))[:, None] * uty) + ym
        accs.append(float((pred.argmax(axis=1) == yte).mean()))
    g1, g2, pr, ac = (np.array(v) for v in (g_all, g_dis, press, accs))
    pick = {"gcv": int(np.argmin(np.where(V1_GRID, g1, np.inf))),
            "gcv_distinct": int(np.argmin(np.where(V1_GRID, g2, np.inf))),
            "press": int(np.argmin(pr)), "oracle": int(np.argmax(ac)), "ridgeless": 0}
    out: dict[str, Any] = {k: float(ac[i]) for k, i in pick.items()}
    out.update({f"alpha_{k}": float(ALPHAS[i]) for k, i in pick.items() if k != "ridgeless"})
    out["rank"] = len(vals)
    out["distinct_rows"] = int(ng)
    out["curve"] = [round(float(a), 4) for a in ac[::2]]
    return out


def logistic_acc(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, n_classes: int,
                 seed: int) -> float:
    from meshnode.hdc.knowledge import fit_linear

    w, b, _ = fit_linear(xtr, ytr, n_classes, seed=seed)
    return float(((np.asarray(xte, np.float32) @ w.T + b).argmax(axis=1) == yte).mean())


def worker_ridge_acc(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, n_classes: int) -> float:
    """The probe exactly as the worker calls it (meshnode.hdc.knowledge.fit_ridge_classifier)."""
    from meshnode.hdc.knowledge import fit_ridge_classifier

    w, b, _ = fit_ridge_classifier(xtr, ytr, n_classes)
    return float(((np.asarray(xte, np.float32) @ w.T + b).argmax(axis=1) == yte).mean())


def bytes_per_vector(trits: np.ndarray) -> float:
    from meshnode.wire.packet import VectorBlock

    block = VectorBlock.from_trits(np.asarray(trits[:256], np.int8), b"\x00" * 16)
    return len(block.data) / block.count


# ------------------------------------------------------------------------------------------ run

V1 = {"D": 10000, "tau": 0.3, "proj": "gauss", "norm": "none", "center": "anchor", "quant": "tern", "seed": 0}
SWEEPS: dict[str, list[Any]] = {   # the cheap n = 2000 factors first, the D sweep (n = 4000) last
    "tau": [0.0, 0.6, 1.0],
    "norm": ["std"],
    "proj": ["sparse", "orth"],
    "center": ["running"],
    "quant": ["float"],
    "D": [1024, 2048, 4096, 8192, 16384],
}
SIZES = [500, 2000, 4000]


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "numpy": np.__version__, "cpus": os.cpu_count(),
                            "loadavg_start": os.getloadavg(),
                            "threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                                      "MKL_NUM_THREADS")}}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return info


def run_pair(task: str, model: str, args: argparse.Namespace, configs: list[tuple[str, Any, dict[str, Any]]]
             ) -> list[dict[str, Any]]:
    z = np.load(array_path(task, model))
    pool, pool_y, test, test_y = z["train"], z["train_labels"], z["test"], z["test_labels"]
    n_classes = len(z["classes"])
    cells = PARTIAL / f"{args.tag}{task}-{model}.cells.json"
    # resume: cells a cut-off run already measured are kept, not recomputed
    out = json.loads(cells.read_text()) if cells.exists() and not args.force else []
    done = {(r["factor"], str(r["level"]), r["n"], r["seed"]) for r in out}
    float_cache: dict[tuple[int, int], dict[str, Any]] = {}
    for factor, level, cfg in configs:
        sizes = (SIZES if factor == "default" else args.new_sizes if factor == "new"
                 else [args.n_dim if factor == "D" else args.n])
        for n in sizes:
            n = min(n, len(pool))
            seeds = range(args.seeds) if factor in ("default", "new") else range(1)
            for seed in seeds:
                if (factor, str(level), n, seed) in done:
                    continue
                t0 = time.perf_counter()
                rng = np.random.default_rng(1000 + seed)
                idx = np.sort(rng.permutation(len(pool))[:n])
                c = dict(cfg, seed=seed)
                # the node's unlabeled pool (for centring / scaling) is its whole local pool
                xtr, xte = encode(c, pool, pool[idx], test)
                row: dict[str, Any] = {"task": task, "model": model, "factor": factor, "level": level, "n": n,
                                       "seed": seed, "cfg": c, "width": int(pool.shape[1]), "classes": n_classes}
                row["space"] = ridge_path(xtr, pool_y[idx], xte, test_y, n_classes)
                key = (n, seed)
                if key not in float_cache:
                    fc = pool - pool.mean(axis=0)
                    float_cache[key] = ridge_path(fc[idx], pool_y[idx], test - pool.mean(axis=0), test_y, n_classes)
                row["float"] = float_cache[key]
                if c["quant"] != "float":
                    row["zero_fraction"] = float(1 - np.count_nonzero(xtr) / xtr.size)
                    row["bytes_per_vector"] = bytes_per_vector(xte)
                if args.logistic and factor in ("default", "new") and seed == 0 and n in args.logistic_n:
                    row["space_logistic"] = logistic_acc(xtr, pool_y[idx], xte, test_y, n_classes, seed)
                    row["float_logistic"] = logistic_acc(pool[idx] - pool.mean(axis=0), pool_y[idx],
                                                         test - pool.mean(axis=0), test_y, n_classes, seed)
                row["seconds"] = round(time.perf_counter() - t0, 1)
                out.append(row)
                done.add((factor, str(level), n, seed))
                cells.write_text(json.dumps(out))
                print(f"{task}/{model} {factor}={level} n={n} s={seed}: float {row['float']['gcv']:.3f} "
                      f"space gcv {row['space']['gcv']:.3f} press {row['space']['press']:.3f} gcv_d {row['space']['gcv_distinct']:.3f} "
                      f"oracle {row['space']['oracle']:.3f} ridgeless {row['space']['ridgeless']:.3f} "
                      f"({row['seconds']}s)", flush=True)
    return out


def logistic_stage(tasks: list[str], models: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """L2 logistic regression (fit_linear: C by 3-fold CV) on float vs v1-space vectors, seed 0, n = --n."""
    rows = []
    for task in tasks:
        for model in models:
            part = PARTIAL / f"logistic-{task}-{model}.json"
            if part.exists() and not args.force:
                rows.append(json.loads(part.read_text()))
                continue
            if not array_path(task, model).exists():
                continue
            z = np.load(array_path(task, model))
            pool, pool_y, test, test_y = z["train"], z["train_labels"], z["test"], z["test_labels"]
            n_classes = len(z["classes"])
            t0 = time.perf_counter()
            idx = np.sort(np.random.default_rng(1000).permutation(len(pool))[:args.n])
            xtr, xte = encode(dict(V1), pool, pool[idx], test)
            mean = pool.mean(axis=0)
            row = {"task": task, "model": model, "n": len(idx), "seed": 0,
                   "space": logistic_acc(xtr, pool_y[idx], xte, test_y, n_classes, 0),
                   "float": logistic_acc(pool[idx] - mean, pool_y[idx], test - mean, test_y, n_classes, 0)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"logistic {task}/{model} n={len(idx)}: float {row['float']:.3f} space {row['space']:.3f} "
                  f"({row['seconds']}s)", flush=True)
            part.write_text(json.dumps(row))
            rows.append(row)
    return rows


def configs_for(args: argparse.Namespace) -> list[tuple[str, Any, dict[str, Any]]]:
    base = dict(V1)
    out: list[tuple[str, Any, dict[str, Any]]] = [] if args.only_new else [("default", "v1", base)]
    if args.new:
        out.append(("new", args.new, dict(base, **json.loads(args.new))))
    if not args.no_sweeps:
        for factor, levels in SWEEPS.items():
            for level in levels:
                out.append((factor, level, dict(base, **{factor: level})))
    return out


def run_stage(tasks: list[str], models: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    PARTIAL.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        for model in models:
            if not array_path(task, model).exists():
                print(f"no embeddings for {task}/{model}; run --stage embed", flush=True)
                continue
            # run_pair resumes from the pair's cells file, so a finished pair costs only its loading
            rows += run_pair(task, model, args, configs_for(args))
    return rows


# ------------------------------------------------------------------------------------------ summary

PROBE_V1, PROBE_V2 = "gcv", "gcv_distinct"   # the worker's ridge penalty rule before and after issue 17


def _ci(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"median": round(float(np.median(v)), 4), "min": round(float(v.min()), 4),
                           "max": round(float(v.max()), 4), "seeds": len(v)}
    if len(v) > 1:   # a t-interval for the mean over seeds (3 seeds: wide, and said so)
        from scipy.stats import t

        half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
        out["mean"], out["ci95"] = round(float(v.mean()), 4), [round(float(v.mean() - half), 4),
                                                               round(float(v.mean() + half), 4)]
    return out


def by_size(rows: list[dict[str, Any]], factor: str) -> dict[str, Any]:
    """Per task/model and train size: float vs space under the v1 and v2 probes, over seeds."""
    by: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["factor"] == factor:
            by.setdefault((r["task"], r["model"], r["n"]), []).append(r)
    sizes: dict[str, Any] = {}
    for (task, model, n), rs in sorted(by.items()):
        cell: dict[str, Any] = {"cfg": {k: v for k, v in rs[0]["cfg"].items() if k != "seed"}}
        for label, probe in (("v1", PROBE_V1), ("v2", PROBE_V2)):
            fl = [r["float"][probe] for r in rs]
            sp = [r["space"][probe] for r in rs]
            cell[label] = {"float": _ci(fl), "space": _ci(sp),
                           "loss_points": _ci([100 * (a - b) for a, b in zip(fl, sp)])}
        cell["oracle_loss_points"] = _ci([100 * (r["float"]["oracle"] - r["space"]["oracle"]) for r in rs])
        cell["ridgeless_space"] = _ci([r["space"]["ridgeless"] for r in rs])
        cell["bytes_per_vector"] = rs[0].get("bytes_per_vector")
        cell["distinct_train_rows"] = [r["space"]["distinct_rows"] for r in rs]
        sizes.setdefault(f"{task}/{model}", {})[str(n)] = cell
    return sizes


def headline(sizes: dict[str, Any], probe_label: str) -> dict[str, Any]:
    """"<task>/<model>" -> {float, space, bytes_per_vector} at the largest n measured (medians over seeds)."""
    out = {}
    for key, cells in sizes.items():
        n = max(cells, key=int)
        c = cells[n]
        out[key] = {"float": c[probe_label]["float"]["median"], "space": c[probe_label]["space"]["median"],
                    "bytes_per_vector": c["bytes_per_vector"], "n": int(n),
                    "loss_points": c[probe_label]["loss_points"]["median"], "space_cfg": c["cfg"],
                    "probe": PROBE_V1 if probe_label == "v1" else PROBE_V2}
    return out


def summarise(rows: list[dict[str, Any]], new_factor: str = "default") -> dict[str, Any]:
    v1 = by_size(rows, "default")
    new = by_size(rows, new_factor)
    return {"default": headline(new, "v2"), "v1_default": headline(v1, "v1"), "by_size": v1,
            "by_size_new": new if new_factor != "default" else None}


def sweeps_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One factor at a time around v1's space: float - space (points) under the v2 probe and the oracle."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["factor"] in ("default", "new", "whiten_full"):
            continue
        key = f"{r['task']}/{r['model']}"
        out.setdefault(r["factor"], {}).setdefault(str(r["level"]), {})[key] = {
            "n": r["n"], "float": r["float"][PROBE_V2], "space": r["space"][PROBE_V2],
            "loss_points": round(100 * (r["float"][PROBE_V2] - r["space"][PROBE_V2]), 2),
            "oracle_loss_points": round(100 * (r["float"]["oracle"] - r["space"]["oracle"]), 2),
            "v1_probe_loss_points": round(100 * (r["float"][PROBE_V1] - r["space"][PROBE_V1]), 2),
            "ridgeless_space": r["space"]["ridgeless"], "bytes_per_vector": r.get("bytes_per_vector"),
            "zero_fraction": r.get("zero_fraction")}
    # the v1 default at the sweep's n, for reference next to each factor
    for r in rows:
        if r["factor"] == "default" and r["seed"] == 0:
            key = f"{r['task']}/{r['model']}"
            out.setdefault("reference_v1_space", {}).setdefault(key, {})[str(r["n"])] = {
                "float": r["float"][PROBE_V2], "space": r["space"][PROBE_V2],
                "loss_points": round(100 * (r["float"][PROBE_V2] - r["space"][PROBE_V2]), 2)}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 5.5))
    ax = axes[0]
    keys = sorted(result["by_size"])
    arms = [("v1 space, v1 probe (GCV all rows)", result["by_size"], "v1"),
            ("v1 space, v2 probe (GCV distinct rows)", result["by_size"], "v2")]
    if result.get("by_size_new"):
        arms.append(("v2 space (whitened), v2 probe", result["by_size_new"], "v2"))
    width = 0.8 / len(arms)
    for i, (label, sizes, probe) in enumerate(arms):
        vals, lo, hi = [], [], []
        for k in keys:
            cells = sizes.get(k, {})
            if not cells:
                vals.append(np.nan); lo.append(0); hi.append(0)
                continue
            c = cells[max(cells, key=int)][probe]["loss_points"]
            vals.append(c["median"]); lo.append(c["median"] - c["min"]); hi.append(c["max"] - c["median"])
        ax.bar(np.arange(len(keys)) + i * width, vals, width, yerr=[lo, hi], label=label, capsize=2)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=45, ha="right", fontsize=7)
    ax.axhline(2, color="k", lw=0.5)
    ax.set(ylabel="float - space (points; median, bars: min-max over 3 seeds)",
           title="D = 10000, tau = 0.3, largest n per task")
    ax.legend(fontsize=7)
    ax = axes[1]
    dims = result["sweeps"].get("D", {})
    ref = result["sweeps"].get("reference_v1_space", {})
    keys = sorted({k for lv in dims.values() for k in lv})
    for key in keys:
        pts = sorted((int(d), lv[key]) for d, lv in dims.items() if key in lv)
        ax.plot([d for d, _ in pts], [c["v1_probe_loss_points"] for _, c in pts], "o--")
        ax.plot([d for d, _ in pts], [c["loss_points"] for _, c in pts], "s-", color=ax.lines[-1].get_color(), label=key)
    ax.set_xscale("log", base=2)
    ax.axhline(2, color="k", lw=0.5)
    ax.set(xlabel="D (n = the task's whole train pool)", ylabel="float - space (points)",
           title="D sweep: v1 probe (dashed), v2 probe (solid)")
    ax.legend(fontsize=6)
    ax = axes[2]
    labels, vals = [], []
    for factor in ("tau", "proj", "norm", "center", "quant"):
        for level, cells in result["sweeps"].get(factor, {}).items():
            labels.append(f"{factor}={level}")
            vals.append([c["loss_points"] for c in cells.values()])
    sweep_n = str(result["settings"]["sweep_n"])
    if ref:
        labels.insert(0, "v1 space")
        vals.insert(0, [c[sweep_n]["loss_points"] for c in ref.values() if sweep_n in c])
    ax.boxplot(vals, tick_labels=labels)
    ax.tick_params(axis="x", rotation=45)
    ax.axhline(2, color="k", lw=0.5)
    ax.set(ylabel="float - space (points, v2 probe)", title=f"one factor at a time (n = {sweep_n}), across task/model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/RESULTS.md's section, from a space.json."""
    out = [("| task/model | n | float (v1 probe) | space (v1 probe) | lost | float (v2 probe) | space (v2 probe) "
            "| lost [95% CI over seeds] | lost, best penalty on test | bytes/vector |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, sizes in result["by_size"].items():
        for n in sorted(sizes, key=int):
            c = sizes[n]
            l2 = c["v2"]["loss_points"]
            ci = f" [{l2['ci95'][0]:+.1f}, {l2['ci95'][1]:+.1f}]" if "ci95" in l2 else ""
            out.append(f"| {key} | {n} | {c['v1']['float']['median']:.3f} | {c['v1']['space']['median']:.3f} | "
                       f"{c['v1']['loss_points']['median']:+.1f} | {c['v2']['float']['median']:.3f} | "
                       f"{c['v2']['space']['median']:.3f} | {l2['median']:+.1f}{ci} | "
                       f"{c['oracle_loss_points']['median']:+.1f} | {c['bytes_per_vector']:.0f} |")
    out += ["", "One factor at a time (seed 0; points lost = float - space, v2 probe; in brackets: v1 probe):", ""]
    sw = result["sweeps"]
    keys = sorted({k for f, lv in sw.items() if f != "reference_v1_space" for cells in lv.values() for k in cells})
    out.append("| factor | " + " | ".join(keys) + " |")
    out.append("|---|" + "---:|" * len(keys))
    ref = sw.get("reference_v1_space", {})
    for factor, levels in sw.items():
        if factor == "reference_v1_space":
            continue
        for level, cells in sorted(levels.items(), key=lambda kv: (len(kv[0]), kv[0])):
            row = []
            for k in keys:
                c = cells.get(k)
                row.append("" if c is None else f"{c['loss_points']:+.1f} ({c['v1_probe_loss_points']:+.1f})")
            n = "the whole pool" if factor == "D" else str(next(iter(cells.values()))["n"])
            out.append(f"| {factor} = {level} (n = {n}) | " + " | ".join(row) + " |")
    sweep_n = str(result["settings"]["sweep_n"])
    out.append(f"| v1 space (n = {sweep_n}) | " + " | ".join(
        f"{ref[k][sweep_n]['loss_points']:+.1f}" if k in ref and sweep_n in ref[k] else "" for k in keys) + " |")
    if result.get("by_size_new"):
        out += ["", ("Encoder version 2 (whitened with the node's anchor statistics; D = 10000, tau = 0.3, v2 probe) "
                     "next to version 1 with the same probe:"), "",
                "| task/model | n | float | v2 space | lost [95% CI over seeds] | v1 space | lost |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for key, sizes in result["by_size_new"].items():
            for n in sorted(sizes, key=int):
                c = sizes[n]["v2"]
                l2 = c["loss_points"]
                ci = f" [{l2['ci95'][0]:+.1f}, {l2['ci95'][1]:+.1f}]" if "ci95" in l2 else ""
                old = result["by_size"].get(key, {}).get(n, {}).get("v2")
                tail = (f"{old['space']['median']:.3f} | {old['loss_points']['median']:+.1f}" if old else " | ")
                out.append(f"| {key} | {n} | {c['float']['median']:.3f} | {c['space']['median']:.3f} | "
                           f"{l2['median']:+.1f}{ci} | {tail} |")
    if result.get("logistic"):
        out += ["", "| task/model | n | float, logistic | space, logistic | lost |", "|---|---:|---:|---:|---:|"]
        for r in result["logistic"]:
            out.append(f"| {r['task']}/{r['model']} | {r['n']} | {r['float']:.3f} | {r['space']:.3f} | "
                       f"{100 * (r['float'] - r['space']):+.1f} |")
    return "\n".join(out)


def write_report(args: argparse.Namespace) -> None:
    """space.json + space.png from every cells file under space_partial/ (runs may be several processes)."""
    rows: list[dict[str, Any]] = []
    side: list[dict[str, Any]] = []
    for f in sorted(PARTIAL.glob("*.cells.json")):
        got = json.loads(f.read_text())
        if f.name.startswith("v2full-"):   # the first v2 candidate (full whitening), kept as a factor
            for r in got:
                r["factor"], r["level"] = "whiten_full", "power 1/2, eps 0.1"
        (side if f.name.startswith("pool4000-") else rows).extend(got)
    # one row per cell: AG News's pool is 2000, so its "n = 4000" cells repeat n = 2000 (identical values)
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for r in rows:
        key = (r["task"], r["model"], r["factor"], str(r["level"]), r["n"], r["seed"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    rows = unique
    result = summarise(rows, args.default_factor)
    result["sweeps"] = sweeps_table(rows)
    result["logistic"] = [json.loads(p.read_text()) for p in sorted(PARTIAL.glob("logistic-*.json"))]
    result["side_ag_news_minilm_pool4000"] = by_size(side, "default") if side else None
    result["by_size_v2_full_whitening"] = by_size(rows, "whiten_full")
    sel = PARTIAL / "select.json"
    result["select_on_validation"] = json.loads(sel.read_text()) if sel.exists() else None
    # what the transfer worker runs today (its space_version is still 1), with the v2 probe
    result["worker_default_now"] = headline(result["by_size"], "v2")
    meta = machine_info()
    meta["note"] = ("cells were measured by several bench processes at nice 10 on a shared 2-core machine "
                    "(load average 5-8 from other work); per-cell seconds in rows[] are wall times under that load")
    meta["argv"] = sys.argv
    result["meta"] = meta
    result["settings"] = {"pool": POOL, "test_split": TEST_SPLIT, "test_cap": TEST_CAP, "data_seed": DATA_SEED,
                          "sizes": SIZES, "sweep_n": args.n, "dim_sweep_n": args.n_dim, "seeds": args.seeds,
                          "v1_space": V1, "sweeps": SWEEPS,
                          "alpha_grid": [float(ALPHAS[0]), float(ALPHAS[-1]), len(ALPHAS)],
                          "probe_v1": PROBE_V1, "probe_v2": PROBE_V2, "default_factor": args.default_factor}
    result["rows"] = rows
    out = args.out or RESULTS / "space.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    plot(result, out.with_suffix(".png"))
    print(json.dumps({"default": result["default"], "v1_default": result["v1_default"]}, indent=1, default=float))


SELECT_VARIANTS: dict[str, dict[str, Any]] = {
    "v1 (no whitening)": {},
    "whiten^1/2, eps 0.1": {"whiten_power": 0.5, "whiten_eps": 0.1},
    "whiten^1/2, eps 1": {"whiten_power": 0.5, "whiten_eps": 1.0},
    "whiten^1/4, eps 0.1": {"whiten_power": 0.25, "whiten_eps": 0.1},
}


def select_stage(tasks: list[str], models: list[str]) -> None:
    """Choose v2's whitening on validation rows only: 75% of each train pool fits, 25% validates; the
    test split is not read. The variant with the smallest worst-pair loss (float - space) wins."""
    out: dict[str, Any] = {}
    for task in tasks:
        for model in models:
            z = np.load(array_path(task, model))
            pool, pool_y = z["train"], z["train_labels"]
            n_classes = len(z["classes"])
            perm = np.random.default_rng(2024).permutation(len(pool))
            cut = int(0.75 * len(pool))
            fit, val = np.sort(perm[:cut]), np.sort(perm[cut:])
            mean = pool.mean(axis=0)
            fl = ridge_path(pool[fit] - mean, pool_y[fit], pool[val] - mean, pool_y[val], n_classes)[PROBE_V2]
            for name, extra in SELECT_VARIANTS.items():
                cfg = dict(V1, **extra)
                xtr, xva = encode(cfg, pool, pool[fit], pool[val])
                sp = ridge_path(xtr, pool_y[fit], xva, pool_y[val], n_classes)[PROBE_V2]
                out.setdefault(name, {})[f"{task}/{model}"] = round(100 * (fl - sp), 2)
                print(f"select {task}/{model} {name}: float {fl:.3f} space {sp:.3f}", flush=True)
            (PARTIAL / "select.json").write_text(json.dumps(out, indent=1))
    for name, losses in out.items():
        print(f"{name}: worst {max(losses.values()):+.1f}, median {np.median(list(losses.values())):+.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("embed", "run", "logistic", "report", "select", "all"), default="all")
    ap.add_argument("--default-factor", default="default",
                    help='report: which cells are the new default ("default": v1 space, "new": the --new space)')
    ap.add_argument("--tasks", default="sst2,ag_news,sick")
    ap.add_argument("--models", default="minilm,smollm2,mpnet")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n", type=int, default=2000, help="train rows for the one-factor sweeps (but D)")
    ap.add_argument("--n-dim", type=int, default=4000, help="train rows for the D sweep (where n ~ D shows)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds (space seed + train draw) for the default cells")
    ap.add_argument("--new", default=None, help='the candidate default as JSON overrides, e.g. {"D": 16384}')
    ap.add_argument("--new-sizes", type=lambda v: [int(x) for x in v.split(",")], default=SIZES)
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument("--only-new", action="store_true", help="only the --new config (with --no-sweeps)")
    ap.add_argument("--logistic", action="store_true", help="also logistic regression (slow) at --logistic-n")
    ap.add_argument("--logistic-n", type=lambda v: [int(x) for x in v.split(",")], default=[2000])
    ap.add_argument("--tag", default="", help="prefix of the partial files")
    ap.add_argument("--force", action="store_true", help="recompute partial files that exist")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="print the tables of a space.json and exit")
    args = ap.parse_args()
    tasks, models = args.tasks.split(","), args.models.split(",")
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    if args.stage in ("embed", "all"):
        embed_stage(tasks, models, args.batch_size)
    if args.stage == "select":
        select_stage(tasks, models)
        return
    if args.stage == "report":
        write_report(args)
        return
    if args.stage == "logistic":
        logistic_stage(tasks, models, args)
    if args.stage in ("run", "all"):
        t0 = time.perf_counter()
        meta = machine_info()
        rows = run_stage(tasks, models, args)
        meta["loadavg_end"] = os.getloadavg()
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        meta["argv"] = sys.argv
        if args.out:
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, default=float))


if __name__ == "__main__":
    main()
