"""Labeled text: jsonl / jsonl.gz files as in ../shared/data, and hub datasets when online.

A dataset directory holds `<split>.jsonl.gz` (or `.jsonl`) files of `{"text": str, "label": int}`
rows (NLI sets: `premise` + `hypothesis`, joined with a separator) and a `labels.json` mapping label
id -> name. Files are local but still bounded: a line longer than `max_line_bytes`, more than
`max_rows` rows, a label outside the class list or a missing field raises `DataError` naming the
file and line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NLI_SEPARATOR", "DataError", "LabeledTexts", "load_hub", "load_labeled", "load_split", "read_jsonl"]

NLI_SEPARATOR = " [SEP] "
MAX_LINE_BYTES = 1 << 20
MAX_ROWS = 10_000_000


class DataError(ValueError):
    """A data file that does not have the promised shape."""


@dataclass(frozen=True)
class LabeledTexts:
    texts: tuple[str, ...]
    labels: np.ndarray            # (N,) int64 class ids
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabeledTexts:
        idx = np.asarray(index, dtype=np.int64)
        return LabeledTexts(tuple(self.texts[i] for i in idx), self.labels[idx], self.classes)

    def sample(self, n: int, seed: int) -> LabeledTexts:
        """`n` rows drawn without replacement (all rows if n >= len), order given by the seed."""
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(self))[: min(n, len(self))]
        return self.subset(idx)


def _open_lines(path: Path) -> Iterator[bytes]:
    # readline with a size cap: a file with no newlines cannot make us buffer all of it
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            yield line


def read_jsonl(path: str | Path, *, text_keys: Sequence[str] | None = None, label_key: str = "label",
               max_rows: int = MAX_ROWS) -> tuple[list[str], list[int]]:
    """Texts and integer labels of a jsonl(.gz) file. `text_keys` None: "text", or premise+hypothesis."""
    p = Path(path)
    texts: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(_open_lines(p), 1):
        if len(line) > MAX_LINE_BYTES:
            raise DataError(f"{p}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
        if not line.strip():
            continue
        if len(texts) >= max_rows:
            raise DataError(f"{p}: more than {max_rows} rows")
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{p}:{lineno}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}:{lineno}: a row must be a JSON object")
        keys = text_keys or (("text",) if "text" in row else ("premise", "hypothesis"))
        parts = [row.get(k) for k in keys]
        if not all(isinstance(v, str) for v in parts):
            raise DataError(f"{p}:{lineno}: fields {list(keys)} must all be strings")
        label = row.get(label_key)
        if type(label) is not int:
            raise DataError(f"{p}:{lineno}: {label_key!r} must be an int, got {label!r}")
        texts.append(NLI_SEPARATOR.join(parts))  # type: ignore[arg-type]
        labels.append(label)
    return texts, labels


def _classes(root: Path) -> tuple[str, ...]:
    path = root / "labels.json"
    if not path.exists():
        raise DataError(f"{root} has no labels.json")
    mapping = json.loads(path.read_text())
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: expected a non-empty object label id -> name")
    try:
        ids = sorted(int(k) for k in mapping)
    except ValueError:
        raise DataError(f"{path}: label ids must be integers") from None
    if ids != list(range(len(ids))):
        raise DataError(f"{path}: label ids must be 0..{len(ids) - 1}")
    return tuple(str(mapping[str(i)]) for i in ids)


def load_split(root: str | Path, split: str, *, max_rows: int = MAX_ROWS) -> LabeledTexts:
    """One split of a dataset directory, e.g. load_split("../shared/data/sst2", "dev")."""
    base = Path(root)
    classes = _classes(base)
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        path = base / name
        if path.exists():
            texts, labels = read_jsonl(path, max_rows=max_rows)
            arr = np.asarray(labels, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
                raise DataError(f"{path}: labels outside 0..{len(classes) - 1}")
            return LabeledTexts(tuple(texts), arr, classes)
    have = sorted({p.name.split(".")[0] for p in base.glob("*.jsonl*")}) if base.is_dir() else []
    raise DataError(f"{base} has no split {split!r} (.jsonl.gz or .jsonl)"
                    + (f"; it has {', '.join(repr(h) for h in have)}: set the eval_split / train_split setting"
                       if have else ""))


def load_labeled(path: str | Path, split: str, *, classes: Sequence[str] | None = None, limit: int = MAX_ROWS,
                 seed: int = 0) -> LabeledTexts:
    """A worker's labeled data: a dataset directory (its `split`, class names from labels.json, which
    must equal `classes` when both are given) or a single jsonl(.gz) file (class names from
    `classes`, else "0", "1", ...). More than `limit` rows: a sample drawn with `seed`."""
    p = Path(path)
    if p.is_dir():
        data = load_split(p, split)
        if classes is not None and tuple(classes) != data.classes:
            raise DataError(f"{p}: labels.json names {list(data.classes)}, settings.classes {list(classes)}")
    else:
        texts, labels = read_jsonl(p)
        arr = np.asarray(labels, dtype=np.int64)
        names = tuple(classes) if classes is not None else tuple(str(i) for i in range(int(arr.max()) + 1 if arr.size else 0))
        if arr.size and (arr.min() < 0 or arr.max() >= len(names)):
            raise DataError(f"{p}: labels outside 0..{len(names) - 1}")
        data = LabeledTexts(tuple(texts), arr, names)
    return data.sample(limit, seed) if len(data) > limit else data


def load_hub(name: str, split: str, *, text_key: str = "text", label_key: str = "label",
             config: str | None = None) -> LabeledTexts:
    """A split of a hub dataset via the `datasets` package (needs it installed and a network)."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError("hub datasets need the 'datasets' package (pip install datasets)") from None
    ds = datasets.load_dataset(name, config, split=split)
    feature = ds.features[label_key]
    classes = tuple(feature.names) if hasattr(feature, "names") else tuple(str(i) for i in sorted(set(ds[label_key])))
    return LabeledTexts(tuple(ds[text_key]), np.asarray(ds[label_key], dtype=np.int64), classes)
