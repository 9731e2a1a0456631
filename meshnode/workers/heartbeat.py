"""`heartbeat-vectors`: the smallest useful worker. It publishes a random ternary vector on a topic
every `interval` seconds and counts what it hears from each peer, exercising the whole worker API
(publish, subscribe, storage, metrics, clock) without any ML."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..wire.packet import Packet, VectorBlock, Vectors
from .base import Worker, WorkerContext, WorkerSettingsError

_SPACE = b"heartbeat/v1"


class HeartbeatWorker(Worker):
    type_name: ClassVar[str] = "heartbeat-vectors"
    defaults: ClassVar[dict[str, Any]] = {"interval": 5.0, "dim": 256, "topic": "heartbeat", "seed": 0}

    def __init__(self, name: str, settings: dict[str, Any], *, base_dir: Path | None = None) -> None:
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise WorkerSettingsError(f"workers.{name}: unknown setting(s) {', '.join(sorted(unknown))}")
        merged = {**self.defaults, **settings}
        for key, kind in (("interval", (int, float)), ("dim", int), ("topic", str), ("seed", int)):
            if not isinstance(merged[key], kind) or isinstance(merged[key], bool):
                raise WorkerSettingsError(f"workers.{name}.{key}: expected {kind}, got {type(merged[key]).__name__}")
        if merged["interval"] <= 0 or not 0 < merged["dim"] <= 65536:
            raise WorkerSettingsError(f"workers.{name}: interval must be > 0 and dim in 1..65536")
        super().__init__(name, merged, base_dir=base_dir)
        self._task: asyncio.Task[None] | None = None
        self._heard: Counter[str] = Counter()
        self._sent = 0
        self._ctx: WorkerContext | None = None

    async def start(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        ctx.subscribe(self.settings["topic"], self._on_packet)
        self._task = asyncio.create_task(self._beat(ctx), name=f"worker:{self.name}")

    async def _beat(self, ctx: WorkerContext) -> None:
        rng = np.random.default_rng([self.settings["seed"], *ctx.node_id[:8]])
        while True:
            trits = rng.integers(-1, 2, size=self.settings["dim"], dtype=np.int8)
            block = VectorBlock.from_trits(trits, space=_SPACE)
            await ctx.publish(Vectors(topic=self.settings["topic"], vectors=block, meta={"seq": self._sent}))
            self._sent += 1
            ctx.metrics.inc("sent")
            await ctx.clock.sleep(self.settings["interval"])

    def _on_packet(self, packet: Packet) -> None:
        self._heard[packet.header.origin.hex()] += 1
        if self._ctx is not None:
            self._ctx.metrics.inc("received")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._ctx is not None:
            # Persist what was heard, so an operator can see it after the daemon stopped.
            state = {"sent": self._sent, "heard": dict(self._heard)}
            tmp = self._ctx.storage / "heartbeat.json.tmp"
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(self._ctx.storage / "heartbeat.json")

    def status(self) -> dict[str, Any]:
        return {"sent": self._sent, "heard": dict(self._heard)}
