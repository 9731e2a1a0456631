"""`meshnode data fleet` and `meshnode anchors make`: seeded, disjoint, skewed as asked, and anchors
that are never texts of the data a teacher was trained on."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from meshnode.cli import main
from meshnode.data import load_split
from meshnode.shards import make_anchors, make_fleet_data


def _dataset(root: Path, n: int = 400) -> Path:
    root.mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"0": "neg", "1": "pos"}))
    with open(root / "train.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"text number {i}", "label": i % 2}) + "\n")
    with open(root / "dev.jsonl", "w") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"dev text {i}", "label": i % 2}) + "\n")
    return root


def test_fleet_shards_are_skewed_disjoint_and_seeded(tmp_path) -> None:
    src = _dataset(tmp_path / "src")
    fd = make_fleet_data(src, tmp_path / "a", nodes=2, skew=0.9, per_node=100, anchors=40, pool=0)
    assert fd.pool is None and not (tmp_path / "a" / "pool.txt").exists()
    shards = [load_split(p, "train") for p in fd.shards]
    assert [int((s.labels == i).sum()) for i, s in enumerate(shards)] == [90, 90]
    anchors = fd.anchors.read_text().splitlines()
    texts = [set(s.texts) for s in shards]
    assert len(anchors) == 40 and not (texts[0] & texts[1]) and not (set(anchors) & (texts[0] | texts[1]))
    again = make_fleet_data(src, tmp_path / "b", nodes=2, skew=0.9, per_node=100, anchors=40, pool=0)
    assert again.anchors.read_bytes() == fd.anchors.read_bytes()


def test_anchors_leave_out_the_teachers_data(tmp_path) -> None:
    src = _dataset(tmp_path / "src")
    fd = make_fleet_data(src, tmp_path / "fleet", nodes=2, per_node=150, anchors=10, pool=0)
    out = tmp_path / "anchors.txt"
    n = make_anchors(src, out, count=80, exclude=fd.shards, seed=3)
    chosen = out.read_text().splitlines()
    taught = set(load_split(fd.shards[0], "train").texts) | set(load_split(fd.shards[1], "train").texts)
    assert n == 80 and len(set(chosen)) == 80 and not set(chosen) & taught
    make_anchors(src, tmp_path / "again.txt", count=80, exclude=fd.shards, seed=3)
    assert (tmp_path / "again.txt").read_bytes() == out.read_bytes()
    # more than what is left: what is left, said by the count
    assert make_anchors(src, tmp_path / "all.txt", count=1000, exclude=fd.shards) == 100


def test_the_anchors_command_says_what_it_wrote_and_fails_in_one_line(tmp_path) -> None:
    src = _dataset(tmp_path / "src", n=20)
    r = CliRunner().invoke(main, ["anchors", "make", str(src), str(tmp_path / "a.txt"), "--count", "5"])
    assert r.exit_code == 0 and "wrote 5 anchors" in r.output
    r = CliRunner().invoke(main, ["anchors", "make", str(src), str(tmp_path / "b.txt"), "--exclude",
                                  str(src / "train.jsonl")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "fewer than 2 texts" in r.output
    r = CliRunner().invoke(main, ["anchors", "make", str(src), str(tmp_path / "c.txt"), "--split", "test"])
    assert r.exit_code == 2 and "has no split 'test'" in r.output and "'dev', 'train'" in r.output
