"""Which worker class a `[[workers]] type` names: a built-in, or a third-party class registered under
the entry-point group `meshnode.workers`:

    [project.entry-points."meshnode.workers"]
    my-worker = "my_package.module:MyWorker"

It lives apart from base.py so that the built-in workers (which import base.py) and the interface
form no import circle; the daemon imports this module, and the built-ins load only when asked for.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Worker, WorkerSettingsError

__all__ = ["ENTRY_POINT_GROUP", "builtin_workers", "load_worker_class"]

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
