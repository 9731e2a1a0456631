"""Labeled jsonl(.gz) loading, including hostile and malformed files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from meshnode import data
from meshnode.data import DataError, load_split, read_jsonl


def _write(path: Path, rows: list, gz: bool = True) -> None:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    (tmp_path / "labels.json").write_text(json.dumps({"0": "neg", "1": "pos"}))
    _write(tmp_path / "train.jsonl.gz", [{"text": f"t{i}", "label": i % 2} for i in range(10)])
    _write(tmp_path / "dev.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": 0}], gz=False)
    return tmp_path


def test_loads_splits_with_classes(dataset: Path) -> None:
    train = load_split(dataset, "train")
    assert len(train) == 10 and train.classes == ("neg", "pos")
    assert train.texts[3] == "t3" and train.labels.dtype == np.int64 and list(train.labels[:3]) == [0, 1, 0]
    dev = load_split(dataset, "dev")
    assert dev.texts == ("x", "y")


def test_sample_is_seeded_and_without_replacement(dataset: Path) -> None:
    train = load_split(dataset, "train")
    a, b = train.sample(6, seed=3), train.sample(6, seed=3)
    assert a.texts == b.texts and len(set(a.texts)) == 6
    assert train.sample(6, seed=4).texts != a.texts
    assert len(train.sample(100, seed=0)) == 10


def test_nli_rows_join_premise_and_hypothesis(tmp_path: Path) -> None:
    _write(tmp_path / "x.jsonl.gz", [{"premise": "a dog", "hypothesis": "an animal", "label": 0}])
    texts, labels = read_jsonl(tmp_path / "x.jsonl.gz")
    assert texts == ["a dog" + data.NLI_SEPARATOR + "an animal"] and labels == [0]


@pytest.mark.parametrize("row", ['{"text": "a"}', '{"text": 3, "label": 0}', '{"text": "a", "label": "0"}',
                                 '{"text": "a", "label": true}', "[1, 2]", "not json"])
def test_malformed_rows_name_file_and_line(tmp_path: Path, row: str) -> None:
    _write(tmp_path / "bad.jsonl.gz", [{"text": "ok", "label": 0}, row])
    with pytest.raises(DataError, match=r"bad.jsonl.gz:2"):
        read_jsonl(tmp_path / "bad.jsonl.gz")


def test_bounds_lines_rows_and_labels(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 64)
    _write(dataset / "long.jsonl.gz", [{"text": "x" * 200, "label": 0}])
    with pytest.raises(DataError, match="longer than"):
        load_split(dataset, "long")
    with pytest.raises(DataError, match="more than 3 rows"):
        read_jsonl(dataset / "train.jsonl.gz", max_rows=3)
    _write(dataset / "odd.jsonl.gz", [{"text": "x", "label": 2}])
    with pytest.raises(DataError, match="outside"):
        load_split(dataset, "odd")
    with pytest.raises(DataError, match="no split"):
        load_split(dataset, "test")


def test_labels_json_must_be_dense_ids(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"0": "a", "2": "b"}))
    with pytest.raises(DataError):
        load_split(tmp_path, "train")


def test_shared_sst2_dev_when_present() -> None:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
    if not root.exists():
        pytest.skip("shared data not on this machine")
    dev = load_split(root, "dev")
    assert len(dev) == 872 and dev.classes == ("negative", "positive")
    assert np.bincount(dev.labels).tolist() == [428, 444]
