"""The worker plugin interface.

A worker never touches sockets: the daemon hands it a `WorkerContext` (publish, subscribe, identity,
storage, logger, metrics, clock, an executor for heavy work) and starts and stops it with itself.
Which class a `type` names is the registry's business (registry.py), not this module's: the
built-in workers import this one, so this one imports none of them.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ..clock import Clock
from ..metrics import Metrics
from ..wire.packet import Packet

T = TypeVar("T")
PacketHandler = Callable[[Packet], Awaitable[None] | None]


class WorkerSettingsError(ValueError):
    """A worker's settings in the config file are wrong; the message names the setting."""


class Subscription(Protocol):
    def cancel(self) -> None: ...


class Publisher(Protocol):
    """What the daemon provides for a worker's traffic."""

    async def publish(self, body: Any, *, hop_limit: int | None = None) -> bytes:
        """Sign `body` as this node, send it to the mesh, return its packet id."""

    def subscribe(self, topic: str, handler: PacketHandler) -> Subscription:
        """Call `handler` with every verified packet on `topic` (the worker's own excluded)."""


@dataclass(frozen=True)
class WorkerContext:
    node_id: bytes
    node_name: str
    storage: Path                # this worker's own directory under the node's data directory
    logger: logging.Logger
    metrics: Metrics             # this worker's metrics, served by the control API
    clock: Clock
    bus: Publisher
    run_blocking: Callable[..., Awaitable[Any]]   # run_blocking(fn, *args): off the event loop
    # Another worker of this daemon by name (None if there is none): how workers compose, e.g. a
    # transfer teacher that teaches what a trainer on the same node trained.
    local_worker: Callable[[str], Worker | None] = lambda name: None

    async def publish(self, body: Any, *, hop_limit: int | None = None) -> bytes:
        return await self.bus.publish(body, hop_limit=hop_limit)

    def subscribe(self, topic: str, handler: PacketHandler) -> Subscription:
        return self.bus.subscribe(topic, handler)


class Worker(abc.ABC):
    """Base class of every worker. Subclasses validate their settings in `__init__` (raising
    WorkerSettingsError naming the setting), do their work in tasks started by `start`, and
    release everything in `stop`."""

    type_name: ClassVar[str]
    # Modules the worker imports when it starts (not when it is configured): checked before a daemon
    # starts, so that a missing extra is one line and exit 2, not a traceback in a running daemon.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, settings: Mapping[str, Any], *, base_dir: Path | None = None) -> None:
        self.name = name
        self.settings = dict(settings)
        # Relative paths in settings mean "next to node.toml", as every other path in that file does;
        # subclasses that override __init__ accept `base_dir` and pass it on.
        self.base_dir = (base_dir if base_dir is not None else Path.cwd()).resolve()

    @abc.abstractmethod
    async def start(self, ctx: WorkerContext) -> None:
        """Begin work; return promptly (long work belongs in tasks the worker owns)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop all tasks and flush state; called once, on daemon shutdown."""

    def status(self) -> dict[str, Any]:
        """What `meshnode status` shows for this worker."""
        return {}

    def check_links(self, others: Mapping[str, Worker]) -> None:
        """Raise WorkerSettingsError if a setting names another worker of this node (`others`, by name)
        that is missing or of the wrong kind. Called before the daemon starts."""


class TaskWorker(Worker):
    """A worker whose work runs in asyncio tasks it owns: `_spawn` starts one, a task that fails
    marks the worker "failed" (with the error in `_error`, counted and logged), `stop` cancels all.
    Subclasses keep `_state` for their status."""

    def __init__(self, name: str, settings: Mapping[str, Any], *, base_dir: Path | None = None) -> None:
        super().__init__(name, settings, base_dir=base_dir)
        self._ctx: WorkerContext | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = "new"
        self._error: str | None = None

    @property
    def ctx(self) -> WorkerContext:
        assert self._ctx is not None, "worker not started"
        return self._ctx

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
        if self._ctx is not None:
            self._ctx.metrics.inc("errors")
            self._ctx.logger.error("%s worker %s failed: %s", self.type_name, self.name, self._error, exc_info=exc)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def sleep_or_wake(self, seconds: float, wake: asyncio.Event) -> None:
        """Sleep on the context's clock; `wake.set()` ends it early (and is cleared here)."""
        sleeper = asyncio.ensure_future(self.ctx.clock.sleep(max(0.0, seconds)))
        waker = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                t.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)
        wake.clear()
