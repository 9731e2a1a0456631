"""The synchronised adapter out of the mesh: a trainer's checkpoint as a peft adapter directory that
anyone loads with `PeftModel.from_pretrained(AutoModelForSequenceClassification..., directory)`.

The checkpoint names tensors as every node agrees on them (`adapter/<name>`, trainer_model.wire_name);
peft's own `save_pretrained` writes them in its format (adapter_config.json + adapter_model.safetensors),
so the layout is peft's, not a copy of it. The tokenizer and a meshnode.json (round, digest, classes,
base model) go beside them. Blocking: loads the base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .trainer_settings import TrainerSettings

__all__ = ["export_adapter"]


def export_adapter(cfg: TrainerSettings, checkpoint: Path, out: Path) -> dict[str, Any]:
    """Write `checkpoint` (a trainer's adapter.safetensors) under `out` as a peft adapter directory;
    returns what meshnode.json says."""
    from safetensors import safe_open

    from .trainer_model import LoraModel

    with safe_open(str(checkpoint), framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {k.removeprefix("adapter/"): f.get_tensor(k) for k in f.keys() if k.startswith("adapter/")}
    model = LoraModel(cfg, node_id=bytes(32))
    model.load(tensors)   # raises when the checkpoint is not this model's adapter
    out.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(str(out))
    model.tokenizer.save_pretrained(str(out))
    info = {"format": 1, "task": cfg.task, "base_model": cfg.model, "base_source": str(model.source.name),
            "classes": list(model.classes), "round": int(meta.get("round", 0)), "adapter_digest": meta.get("base"),
            "group": meta.get("group"), "max_length": cfg.max_length,
            "load_with": "AutoModelForSequenceClassification.from_pretrained(<base>, num_labels=len(classes)); "
                         "PeftModel.from_pretrained(model, <this directory>)"}
    (out / "meshnode.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
