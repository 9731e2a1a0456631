"""Label-skewed shards of a labelled dataset, an unlabelled anchor set and an eval split: the files a
mixed fleet's scenario (or a demo, or a bench) hands its nodes.

Node i of k "owns" the classes i, i + k, i + 2k, ...; `skew` of its rows come from its own classes
and the rest from the others (SST-2 with two nodes at skew 0.9: one shard 90% negative, the other
90% positive). Shards, anchors and the eval rows are disjoint, drawn with one seed, so the same
arguments write the same bytes.

    meshnode data fleet ../shared/data/sst2 meshnode/demo/data/sst2 --nodes 2 --skew 0.9 --pool 0
    (or python -m meshnode.shards with the same arguments)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import LabeledTexts, load_split

__all__ = ["FleetData", "make_anchors", "make_fleet_data"]


@dataclass(frozen=True)
class FleetData:
    shards: tuple[Path, ...]     # dataset directories (labels.json + train.jsonl), one per labelled node
    anchors: Path                # anchors.txt: unlabelled texts, one per line
    eval: Path                   # dataset directory with the eval split ("dev")
    pool: Path | None            # pool.txt: more unlabelled texts (for a student's map to pseudo-label); None: pool=0


def _pick(data: LabeledTexts, wanted: dict[int, int], free: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Indices of `wanted[c]` unused rows of each class c (fewer if the class runs out), marked used."""
    out: list[int] = []
    for c, n in wanted.items():
        idx = np.flatnonzero((data.labels == c) & free)
        take = rng.permutation(idx)[:n]
        free[take] = False
        out.extend(int(i) for i in take)
    return out


def _write(directory: Path, split: str, data: LabeledTexts, index: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "labels.json").write_text(json.dumps({str(i): c for i, c in enumerate(data.classes)}, indent=1)
                                           + "\n")
    with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for i in sorted(index):
            f.write(json.dumps({"text": data.texts[i], "label": int(data.labels[i])}, ensure_ascii=False) + "\n")
    return directory


def _one_line(text: str) -> str:
    return " ".join(text.split())


def make_fleet_data(source: Path, out: Path, *, nodes: int = 2, skew: float = 0.9, per_node: int = 1000,
                    anchors: int = 500, pool: int = 1500, eval_rows: int | None = None, seed: int = 0,
                    train_split: str = "train", eval_split: str = "dev") -> FleetData:
    """Write `nodes` skewed shards of `per_node` rows, `anchors` and `pool` unlabelled texts from the
    rest of `train_split`, and `eval_rows` of `eval_split` (all of it when None) under `out`."""
    if not 0 < skew <= 1 or nodes < 1 or per_node < 1 or anchors < 2 or pool < 0:
        raise ValueError("need 0 < skew <= 1, nodes >= 1, per_node >= 1, anchors >= 2, pool >= 0")
    train = load_split(source, train_split)
    rng = np.random.default_rng(seed)
    c = len(train.classes)
    free = np.ones(len(train), dtype=bool)
    shards = []
    for i in range(nodes):
        own = [k for k in range(c) if k % nodes == i % c] or [i % c]
        other = [k for k in range(c) if k not in own]
        n_own = round(per_node * skew) if other else per_node
        wanted = {k: n_own // len(own) + (j < n_own % len(own)) for j, k in enumerate(own)}
        n_other = per_node - n_own
        for j, k in enumerate(other):
            wanted[k] = n_other // len(other) + (j < n_other % len(other))
        shards.append(_write(out / f"shard-{i}", "train", train, _pick(train, wanted, free, rng)))
    rest = rng.permutation(np.flatnonzero(free))
    if len(rest) < anchors + pool:
        raise ValueError(f"{source}: {len(rest)} rows left for {anchors} anchors and a pool of {pool}")
    out.mkdir(parents=True, exist_ok=True)
    anchor_path, pool_path = out / "anchors.txt", out / "pool.txt"
    anchor_path.write_text("".join(_one_line(train.texts[i]) + "\n" for i in rest[:anchors]), encoding="utf-8")
    if pool:
        pool_path.write_text("".join(_one_line(train.texts[i]) + "\n" for i in rest[anchors:anchors + pool]),
                             encoding="utf-8")
    ev = load_split(source, eval_split)
    idx = list(range(len(ev))) if eval_rows is None or eval_rows >= len(ev) else \
        sorted(int(i) for i in rng.permutation(len(ev))[:eval_rows])
    eval_dir = _write(out / "eval", "dev", ev, idx)
    return FleetData(tuple(shards), anchor_path, eval_dir, pool_path if pool else None)


def make_anchors(source: Path, out: Path, *, count: int = 500, split: str = "train", seed: int = 0,
                 exclude: tuple[Path, ...] = ()) -> int:
    """Write `count` texts of `source`'s `split`, drawn with `seed`, one per line, to `out`; none of
    them is a text of a dataset in `exclude` (a teacher's labelled data: an anchor the teacher was
    trained on hands the student its gold label, and the student's accuracy then means nothing).
    Duplicates are dropped. Returns how many were written (fewer than `count` if the split runs out)."""
    from .data import read_jsonl

    if count < 2:
        raise ValueError("need count >= 2")
    data = load_split(source, split)
    banned: set[str] = set()
    for path in exclude:
        files = sorted(path.glob("*.jsonl*")) if path.is_dir() else [path]
        for f in files:
            banned.update(_one_line(t) for t in read_jsonl(f)[0])
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    seen: set[str] = set()
    for i in rng.permutation(len(data)):
        text = _one_line(data.texts[int(i)])
        if text and text not in banned and text not in seen:
            seen.add(text)
            chosen.append(text)
            if len(chosen) == count:
                break
    if len(chosen) < 2:
        raise ValueError(f"{source}: fewer than 2 texts of {split!r} are left outside the excluded data")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(t + "\n" for t in chosen), encoding="utf-8")
    return len(chosen)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="dataset directory (labels.json + <split>.jsonl[.gz])")
    ap.add_argument("out", type=Path)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--skew", type=float, default=0.9)
    ap.add_argument("--per-node", type=int, default=1000)
    ap.add_argument("--anchors", type=int, default=500)
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--eval-rows", type=int, default=None)
    ap.add_argument("--eval-split", default="dev")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    fd = make_fleet_data(a.source, a.out, nodes=a.nodes, skew=a.skew, per_node=a.per_node, anchors=a.anchors,
                         pool=a.pool, eval_rows=a.eval_rows, eval_split=a.eval_split, seed=a.seed)
    print(f"wrote {len(fd.shards)} shard(s), {fd.anchors}, {fd.pool}, {fd.eval}")


if __name__ == "__main__":
    main()
