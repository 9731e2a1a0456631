"""Anchor sets: a named list of unlabeled texts that every participant of a transfer holds locally.

Only the set's name, size and hash ever travel; the texts never do. A node reads its copy from a
file: plain text (one text per line, blank lines skipped), or jsonl / jsonl.gz with a "text" field
per row (labels, if present, are ignored: anchors are unlabeled by definition). Files are local but
still bounded (line length, number of texts), so a wrong path to a huge file fails with a clear
message instead of filling memory.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..hdc.knowledge import anchor_hash

__all__ = ["MAX_ANCHORS", "MAX_ANCHOR_BYTES", "AnchorSet", "AnchorSetError", "load_anchor_set"]

MAX_ANCHORS = 100_000
MAX_ANCHOR_BYTES = 64 << 10     # one text; far above any sentence a model would see whole
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AnchorSetError(ValueError):
    """An anchor file that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class AnchorSet:
    name: str
    texts: tuple[str, ...]
    hash: bytes          # hdc.knowledge.anchor_hash(texts): order matters

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, name: str, texts: tuple[str, ...] | list[str]) -> AnchorSet:
        if not _NAME.match(name):
            raise AnchorSetError(f"anchor set name {name!r} must be 1-64 of A-Z a-z 0-9 . _ - (letter or digit first)")
        t = tuple(texts)
        if len(t) < 2:
            raise AnchorSetError(f"anchor set {name!r} has {len(t)} texts; an alignment needs at least 2")
        return cls(name, t, anchor_hash(t))


def _lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[bytes] = []
    with opener(path, "rb") as f:
        while True:
            line = f.readline(MAX_ANCHOR_BYTES + 2)
            if not line:
                return out
            if len(line) > MAX_ANCHOR_BYTES + 1:
                raise AnchorSetError(f"{path}:{len(out) + 1}: line longer than {MAX_ANCHOR_BYTES} bytes")
            out.append(line)
            if len(out) > 4 * MAX_ANCHORS:   # blank lines included; the text bound is checked below
                raise AnchorSetError(f"{path}: more than {4 * MAX_ANCHORS} lines")


def load_anchor_set(path: str | Path, *, name: str | None = None, max_texts: int = MAX_ANCHORS) -> AnchorSet:
    """Read an anchor file (.txt, .jsonl, .jsonl.gz, .txt.gz). `name` defaults to the file's stem."""
    p = Path(path)
    if not p.is_file():
        raise AnchorSetError(f"anchor file not found: {p}")
    jsonl = ".jsonl" in p.suffixes
    texts: list[str] = []
    try:
        lines = _lines(p)
    except (OSError, EOFError) as e:
        raise AnchorSetError(f"cannot read anchor file {p}: {e}") from None
    for lineno, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise AnchorSetError(f"{p}:{lineno}: not UTF-8") from None
        if not line.strip():
            continue
        if jsonl:
            try:
                row = json.loads(line)
            except ValueError as e:
                raise AnchorSetError(f"{p}:{lineno}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise AnchorSetError(f"{p}:{lineno}: a row must be an object with a string \"text\"")
            line = row["text"]
        texts.append(line)
        if len(texts) > max_texts:
            raise AnchorSetError(f"{p}: more than {max_texts} anchor texts (raise max_anchors if this is intended)")
    stem = p.name.split(".")[0]
    return AnchorSet.of(name if name is not None else stem, texts)
