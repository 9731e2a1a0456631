"""Shared by worker tests: a synthetic, linearly separable text task and tiny tokenizers for it.

A text is filler words plus one or two keywords of its class, so a model that reads words can learn
it, and a model given shuffled labels cannot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FILLER = "the a movie film was plot actors scene story it and of to in with this that one two very".split()
KEYWORDS = {"pos": "good great fun lovely superb".split(), "neg": "bad awful boring dull poor".split()}
CLASSES = ("pos", "neg")


def synthetic(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 9))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(KEYWORDS[CLASSES[y]])))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def tokenizer(kind: str) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = FILLER + KEYWORDS["pos"] + KEYWORDS["neg"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if kind == "bert" else ["<unk>", "<eos>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token=specials[1]
                                     if kind == "bert" else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def write_dataset(directory: Path, split: str, texts: list[str], labels: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "labels.json").write_text(json.dumps({str(i): c for i, c in enumerate(CLASSES)}))
    with open(directory / f"{split}.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels))
    return directory
