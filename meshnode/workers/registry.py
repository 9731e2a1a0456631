"""Which worker class a `[[workers]] type` names: a built-in, or a third-party class registered under
the entry-point group `meshnode.workers`:

    [project.entry-points."meshnode.workers"]
    my-worker = "my_package.module:MyWorker"

It lives apart from base.py so that the built-in workers (which import base.py) and the interface
form no import circle; the daemon imports this module, and the built-ins load only when asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from .base import Worker, WorkerSettingsError

__all__ = ["ENTRY_POINT_GROUP", "ML_EXTRA_HINT", "builtin_workers", "check_workers", "load_worker_class"]

ML_EXTRA_HINT = "install the ml extra: pip install 'meshnode[ml]' torch==2.13.0 (or `make venv` in a checkout)"


class _WorkerConfig(Protocol):
    name: str
    type: str
    settings: Mapping[str, Any]

ENTRY_POINT_GROUP = "meshnode.workers"


def builtin_workers() -> dict[str, type[Worker]]:
    from .heartbeat import HeartbeatWorker  # local imports: the built-ins load only when asked for
    from .trainer import TrainerWorker
    from .transfer import TransferWorker

    return {cls.type_name: cls for cls in (HeartbeatWorker, TrainerWorker, TransferWorker)}


def load_worker_class(type_name: str) -> type[Worker]:
    """A built-in worker, or one registered under the `meshnode.workers` entry-point group."""
    builtins = builtin_workers()
    if type_name in builtins:
        return builtins[type_name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == type_name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Worker)):
                raise WorkerSettingsError(f"entry point {ep.value} for worker {type_name!r} is not a Worker subclass")
            return cls
    known = sorted(set(builtins) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise WorkerSettingsError(f"unknown worker type {type_name!r} (known: {', '.join(known)})")


def check_workers(workers: Sequence[_WorkerConfig], *, base_dir: Path) -> list[Worker]:
    """Everything a daemon's start would find wrong with its `[[workers]]`, without starting anything:
    the type exists, the settings parse, the modules the worker needs are installed, and settings
    that name another worker of the node name one of the right kind. Raises WorkerSettingsError (one
    line naming the worker) at the first problem; returns the configured (not started) workers."""
    made: dict[str, Worker] = {}
    for w in workers:
        try:
            cls = load_worker_class(w.type)
        except WorkerSettingsError as e:
            raise WorkerSettingsError(f"workers.{w.name}.type: {e}") from None
        except ImportError as e:   # a built-in's own import failed: what is missing is the fix
            raise WorkerSettingsError(f"workers.{w.name}: worker type {w.type!r} cannot load ({e}); "
                                      f"{ML_EXTRA_HINT}") from None
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise WorkerSettingsError(f"workers.{w.name}: worker type {w.type!r} needs {', '.join(missing)}, "
                                      f"which is not installed; {ML_EXTRA_HINT}")
        made[w.name] = cls(w.name, w.settings, base_dir=base_dir)
    for worker in made.values():
        worker.check_links(made)
    return list(made.values())
