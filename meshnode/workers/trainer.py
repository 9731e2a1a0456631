"""`trainer`: LoRA fine-tuning on local data, with adapters kept in sync across same-model nodes by
compressed deltas and no coordinator.

Each node trains `steps_per_round` local steps, then publishes its delta (adapter - last synchronised
adapter, compressed with the configured codec, error feedback carried per node) and waits until
every live member of its sync group has sent its delta for that round, or `round_deadline` passes.
It then applies the mean of the deltas it has (its own included, in node-id order, so that every
node that merged the same set computes the same bits), writes a checkpoint, and goes on. A node
that fell behind (restarted, partitioned) or ended up on another lineage (merged a different set)
fetches a snapshot of the winning lineage's adapter from a peer (trainer_protocol.lineage_winner).

Messages and bookkeeping: trainer_protocol.py (sans IO); the model: trainer_model.py; settings:
trainer_settings.py; operator docs: docs/WORKERS.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..atomic import write_atomic
from ..control import ControlError, check_classify_texts
from ..display import safe_text
from ..hdc.delta import FUSED_NAME, Codec, DeltaCompressor, Float32Codec, codec_by_name
from ..wire.packet import Delta, Packet, Signer, encode_packet
from .base import TaskWorker, WorkerContext, WorkerSettingsError
from .trainer_protocol import (
    Assembly,
    DeltaChunk,
    GroupKey,
    Hello,
    NotOurs,
    Position,
    RoundBook,
    SnapshotChunk,
    SnapshotRequest,
    TrainerRefused,
    chunk_bodies,
    digest_of,
    hello_body,
    lineage_winner,
    parse_message,
    partition,
    request_body,
)
from .trainer_settings import TrainerSettings, parse_settings

__all__ = ["CHECKPOINT", "ROUNDS_LOG", "Prediction", "TaughtRows", "TrainerWorker"]

CHECKPOINT = "adapter.safetensors"
ROUNDS_LOG = "rounds.jsonl"
HISTORY = 50                 # rounds kept for status
SNAPSHOT_GAP_S = 2.0         # at most one snapshot per requester this often
POLL_S = 0.25                # how often a waiting round re-checks member liveness
HELLO_ANSWER_GAP_S = 1.0     # a joining peer's hello is answered at once only if our last hello is older:
                             # two joining nodes otherwise answer each other back and forth at link speed


@dataclass(frozen=True)
class TaughtRows:
    """Rows a teacher labelled for this trainer, handed over by a transfer student on the same node:
    texts and their soft targets (N x C probabilities in `classes` order), and where they came from."""

    texts: tuple[str, ...]
    classes: tuple[str, ...]
    targets: np.ndarray
    source: Mapping[str, Any]        # teacher, version digest, teacher round, ... (shown in the status)


@dataclass(frozen=True)
class Prediction:
    """Class probabilities of the synchronised adapter, and which adapter that was."""

    probs: np.ndarray                # (N, C)
    classes: tuple[str, ...]
    position: Position
    accuracy: float | None           # the last eval accuracy of that adapter, if evaluated


def _norm2(tensors: Mapping[str, np.ndarray]) -> float:
    return float(sum(float(np.dot(t.reshape(-1), t.reshape(-1))) for t in tensors.values()))


class TrainerWorker(TaskWorker):
    type_name: ClassVar[str] = "trainer"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "safetensors")

    def __init__(self, name: str, settings: Mapping[str, Any], *, base_dir: Path | None = None) -> None:
        super().__init__(name, settings, base_dir=base_dir)
        self.cfg: TrainerSettings = parse_settings(name, settings, base_dir=self.base_dir)
        self._codec = self._make_codec()
        self._model: Any = None
        self._key: GroupKey | None = None
        self._parts: list[tuple[int, int]] = []
        self._align = getattr(self._codec, "block", 1)
        self._compressors: list[DeltaCompressor] = []
        self._synced: dict[str, np.ndarray] = {}
        self._pos = Position(0, bytes(16), 0)
        self._positions: dict[int, Position] = {}     # our position at each recent round
        self._book: RoundBook | None = None
        self._assemblies: dict[tuple[bytes, str, int, bytes], Assembly] = {}
        self._wake = asyncio.Event()
        self._hello_now = asyncio.Event()
        self._last_hello = -math.inf                   # monotonic time of our last hello
        self._joining = True
        self._awaiting: bytes | None = None           # peer whose snapshot we asked for
        self._snapshot: tuple[bytes, Position, dict[str, np.ndarray]] | None = None
        self._snapshot_sent: dict[bytes, float] = {}
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._refusals: collections.Counter[str] = collections.Counter()
        self._last_refusal: dict[str, Any] | None = None
        self._restored: dict[str, Any] | None = None
        self._catchups = 0
        self._bytes_received_round = 0
        self._encodings: list[str] = []                # trit encodings the last delta used (ternary codecs)
        self._size_signer = Signer.generate()          # sizes of what we publish, signature included
        # The model is used by the round loop and by predict() (a local teacher, the control API), each
        # in an executor thread: one at a time.
        self._model_lock = threading.Lock()
        self._prepared = asyncio.Event()
        self._has_rows = asyncio.Event()
        self._pending_rows: TaughtRows | None = None
        self._taught: dict[str, Any] | None = None
        self._accuracy: float | None = None
        self._initial_accuracy: float | None = None
        self._doing: str | None = None   # what "preparing" is busy with, for status
        self._round_listeners: list[Callable[[], Awaitable[None]]] = []

    def _make_codec(self) -> Codec:
        cfg = self.cfg
        wire = cfg.wire_codec
        if wire in ("fp32", "fp16"):
            return codec_by_name(wire)
        if wire == "int8":
            return codec_by_name(wire, block=cfg.block)
        params: dict[str, Any] = {"block": cfg.block, "threshold": cfg.threshold, "density": cfg.density}
        if wire == "ternary-rht":
            params["seed"] = cfg.seed
        try:
            return codec_by_name(wire, **params)
        except ValueError as e:
            raise WorkerSettingsError(f"workers.{self.name}.settings.codec: {e}") from None

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._state = "preparing"
        self._spawn(self._main(), f"worker:{self.name}")

    async def stop(self) -> None:
        if self._model is not None:
            self._model.interrupt.set()   # a training step or an eval in a thread ends at its next batch
        await super().stop()

    # ------------------------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        """Blocking: model, data, sync group, compressors, and the last checkpoint if it fits."""
        from .trainer_model import LoraModel

        cfg = self.cfg
        self._doing = "loading the model and data"
        self._model = model = LoraModel(cfg, node_id=self.ctx.node_id)
        self._synced = model.adapter()
        self._key = GroupKey.build(cfg.topic, model.fingerprint, cfg.task, model.classes, model.params,
                                   model.lora_config)
        self._parts = partition(self._key, max(1, cfg.chunk_bytes // 4))
        self._compressors = [DeltaCompressor(self._codec, error_feedback=cfg.error_feedback,
                                             layout=self._key.sublayout(p, self._align)) for p in self._parts]
        self._set_position(Position(0, digest_of(self._key.layout, self._synced), 0), reset=True)
        self._book = RoundBook(self.ctx.node_id, cfg.member_timeout)
        try:
            self._restore()
        except Exception as e:  # a damaged checkpoint must not keep the node from training anew
            self.ctx.logger.warning("trainer %s: cannot restore the checkpoint (%s: %s); starting fresh", self.name,
                                    type(e).__name__, e)
            self._restored = None
        # Where this node starts, so that a learner's status (and meshnode sim's curves) show what it learnt.
        if model.eval_data is not None:
            self._doing = f"evaluating the start ({len(model.eval_data)} rows)"
        self._initial_accuracy = self._accuracy = model.evaluate()
        self._doing = None

    def _set_position(self, pos: Position, *, reset: bool = False) -> None:
        self._pos = pos
        if reset:
            self._positions.clear()
        self._positions[pos.round] = pos
        for r in [r for r in self._positions if r < pos.round - 8]:
            del self._positions[r]

    # ------------------------------------------------------------------------------------ checkpoints

    def _checkpoint_meta(self, saved_at_us: int) -> dict[str, str]:
        assert self._key is not None
        return {"format": "1", "round": str(self._pos.round), "weight": str(self._pos.weight),
                "base": self._pos.base.hex(), "schema": self._key.schema.hex(), "group": self._key.group.hex(),
                "arm": self.cfg.codec, "block": str(self.cfg.block), "parts": json.dumps(self._parts),
                "saved_at_us": str(saved_at_us)}

    def _save(self, saved_at_us: int) -> None:
        """Blocking: the synchronised adapter and the error-feedback residuals, written atomically.
        (`saved_at_us` comes from the caller: the context's clock is read on the event loop only,
        since meshnode sim's virtual clock lives there.)"""
        from safetensors.numpy import save as st_save

        arrays = {f"adapter/{n}": np.ascontiguousarray(t) for n, t in self._synced.items()}
        for i, comp in enumerate(self._compressors):
            if FUSED_NAME in comp.residual:
                arrays[f"residual/{i}"] = np.ascontiguousarray(comp.residual[FUSED_NAME])
        write_atomic(self.ctx.storage / CHECKPOINT, st_save(arrays, metadata=self._checkpoint_meta(saved_at_us)))

    def _restore(self) -> None:
        from safetensors import safe_open

        assert self._key is not None
        path = self.ctx.storage / CHECKPOINT
        if not path.exists():
            return
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            stale = [k for k in ("schema", "group") if meta.get(k) != getattr(self._key, k).hex()]
            if stale:
                self.ctx.logger.warning("trainer %s: checkpoint %s is of another %s; starting fresh", self.name, path,
                                        " and ".join(stale))
                return
            synced = {n.removeprefix("adapter/"): f.get_tensor(n) for n in names if n.startswith("adapter/")}
            residuals = {n: f.get_tensor(n) for n in names if n.startswith("residual/")}
        if set(synced) != set(self._synced) or any(synced[n].shape != self._synced[n].shape for n in synced):
            raise ValueError("checkpoint tensors differ from the adapter's")
        base = digest_of(self._key.layout, synced)
        if base.hex() != meta.get("base"):
            raise ValueError("checkpoint values do not match their recorded digest")
        self._synced = {n: synced[n].astype(np.float32) for n in self._synced}
        self._model.load(self._synced)
        same_codec = (meta.get("arm"), meta.get("block"), meta.get("parts")) == (
            self.cfg.codec, str(self.cfg.block), json.dumps(self._parts))
        if same_codec and self.cfg.error_feedback:
            for i, comp in enumerate(self._compressors):
                r = residuals.get(f"residual/{i}")
                if r is not None and comp.layout is not None and r.shape == (comp.layout.numel,):
                    comp.residual[FUSED_NAME] = r.astype(np.float32)
        self._set_position(Position(int(meta["round"]), base, int(meta["weight"])), reset=True)
        self._restored = {"round": self._pos.round, "path": str(path), "residuals": bool(same_codec)}
        self.ctx.logger.info("trainer %s: resumed from %s at round %d", self.name, path, self._pos.round)

    # ------------------------------------------------------------------------------------ main loop

    async def _main(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        await ctx.run_blocking(self._prepare)
        assert self._key is not None
        self._prepared.set()
        ctx.subscribe(cfg.topic, self._on_packet)
        if self._model.labelled_rows:
            self._has_rows.set()
        else:
            # A learner with nothing taught yet stays out of the group (no hellos: no member waits for
            # its deltas) and joins, catching up from its peers, once a teacher's rows arrive.
            self._state = "waiting-teacher"
            ctx.logger.info("trainer %s: no train_data; waiting for rows taught by a local transfer student",
                            self.name)
            await self._has_rows.wait()
        self._spawn(self._hello_loop(), f"worker:{self.name}:hello")
        ctx.logger.info("trainer %s: group %s schema %s, %d trainable values in %d chunk(s), codec %s", self.name,
                        self._key.group.hex()[:16], self._key.schema.hex()[:16], self._model.numel, len(self._parts),
                        cfg.codec)
        await self._join()
        while cfg.rounds == 0 or self._pos.round < cfg.rounds:
            await self._catch_up_if_needed(joining=False)
            if cfg.rounds and self._pos.round >= cfg.rounds:
                break
            await self._one_round()
        self._state = "done"
        ctx.logger.info("trainer %s: done after round %d", self.name, self._pos.round)

    async def _join(self) -> None:
        """Listen for the group before the first round; catch up if the group is ahead of us."""
        ctx, cfg = self.ctx, self.cfg
        assert self._book is not None
        self._state = "joining"
        self._hello_now.set()
        end = ctx.clock.monotonic() + cfg.join_wait
        while True:
            now = ctx.clock.monotonic()
            enough = len(self._book.live(now)) >= cfg.min_peers
            if enough and now >= end:
                break
            await self.sleep_or_wake(POLL_S if not enough else min(POLL_S, end - now), self._wake)
        await self._catch_up_if_needed(joining=True)
        self._joining = False

    async def _catch_up_if_needed(self, *, joining: bool) -> None:
        assert self._book is not None
        peers = [(n, m.position) for n, m in self._book.live(self.ctx.clock.monotonic()).items()]
        if joining:   # coming back: any peer ahead of us is on the lineage we missed
            ahead = [(n, p) for n, p in peers if p.round > self._pos.round]
            winner = max(ahead, key=lambda np_: np_[1].rank(np_[0]))[0] if ahead else None
        else:
            winner = lineage_winner(self.ctx.node_id, self._positions, peers)
        if winner is not None:
            await self._fetch_snapshot(winner)

    async def _fetch_snapshot(self, peer: bytes) -> None:
        ctx, cfg = self.ctx, self.cfg
        assert self._key is not None
        self._state = "catching-up"
        self._awaiting, self._snapshot = peer, None
        ctx.logger.info("trainer %s: at round %d, fetching the adapter of %s", self.name, self._pos.round,
                        peer.hex()[:16])
        await ctx.publish(request_body(self._key, self._pos, peer))
        end = ctx.clock.monotonic() + cfg.round_deadline
        while self._snapshot is None and ctx.clock.monotonic() < end:
            await self.sleep_or_wake(min(POLL_S, max(0.0, end - ctx.clock.monotonic())), self._wake)
        got, self._snapshot, self._awaiting = self._snapshot, None, None
        if got is None:
            ctx.metrics.inc("catchup_timeouts")
            ctx.logger.warning("trainer %s: no snapshot from %s within %.0f s; staying on our adapter", self.name,
                               peer.hex()[:16], cfg.round_deadline)
            return
        _, pos, tensors = got
        await ctx.run_blocking(self._adopt_snapshot, pos, tensors, ctx.clock.wall_us())
        self._catchups += 1
        ctx.metrics.inc("catchups")
        ctx.logger.info("trainer %s: caught up to round %d from %s", self.name, pos.round, peer.hex()[:16])
        if cfg.rounds and pos.round >= cfg.rounds and self._model.eval_data is not None:
            # caught up past the last round: no round of ours will evaluate, so the accuracy shown as
            # this node's result would be one from before the catch-up
            self._state = "evaluating"
            accuracy = await ctx.run_blocking(self._evaluate_locked)
            if accuracy is not None:
                self._accuracy = accuracy

    def _adopt_snapshot(self, pos: Position, tensors: dict[str, np.ndarray], now_us: int) -> None:
        assert self._book is not None
        with self._model_lock:
            self._synced = {n: tensors[n].astype(np.float32) for n in self._synced}
            self._model.load(self._synced)
            self._set_position(pos, reset=True)
        for comp in self._compressors:
            comp.reset()   # the residual belongs to the lineage we left
        self._book.forget_before(pos.round)
        self._save(now_us)

    async def _one_round(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        assert self._key is not None and self._book is not None
        r, base = self._pos.round, self._pos.base
        self._state = "training"
        t0 = time.perf_counter()
        loss = await ctx.run_blocking(self._train, cfg.steps_per_round)
        t_train = time.perf_counter() - t0
        if self._pos.round != r:   # pragma: no cover - only the main loop moves the position
            return
        bodies, own, rel_error = await ctx.run_blocking(self._compress, r, loss)
        sent = 0
        for body in bodies:
            sent += len(encode_packet(body, self._size_signer))
            await ctx.publish(body)
        ctx.metrics.inc("bytes_sent", sent)
        self._state = "waiting"
        t1 = time.perf_counter()
        end = ctx.clock.monotonic() + cfg.round_deadline
        while not self._book.complete(r, ctx.clock.monotonic()):
            left = end - ctx.clock.monotonic()
            if left <= 0:
                break
            await self.sleep_or_wake(min(POLL_S, left), self._wake)
        missing = self._book.missing(r, ctx.clock.monotonic())
        t_wait = time.perf_counter() - t1
        mean, used, other = self._book.merge(r, base, own)
        evaluate = (r + 1) % cfg.eval_every == 0 or (cfg.rounds > 0 and r + 1 >= cfg.rounds)
        self._state = "evaluating" if evaluate else "merging"
        accuracy, t_merge, t_eval = await ctx.run_blocking(self._apply_merge, mean, len(used), ctx.clock.wall_us(),
                                                           evaluate)
        if accuracy is not None:
            self._accuracy = accuracy
        received, self._bytes_received_round = self._bytes_received_round, 0
        record = {
            "round": r, "merged": len(used), "senders": [n.hex()[:16] for n in used],
            "missing": [n.hex()[:16] for n in missing], "other_lineage": [n.hex()[:16] for n in other],
            "codec": cfg.codec, "encodings": self._encodings, "bytes_sent": sent, "bytes_received": received,
            "rel_error": round(rel_error, 6), "loss": round(loss, 6) if math.isfinite(loss) else None,
            "accuracy": accuracy, "epoch": round(self._model.epoch, 3), "step": self._model.steps,
            "train_s": round(t_train, 3), "wait_s": round(t_wait, 3),
            "merge_s": round(t_merge, 3), "eval_s": round(t_eval, 3),
            "base": self._pos.base.hex(), "time_us": ctx.clock.wall_us(),
        }
        self._history.append(record)
        ctx.metrics.inc("rounds")
        for k in ("bytes_sent", "rel_error", "loss", "accuracy", "merged"):
            ctx.metrics.set(f"last.{k}", record[k])
        if missing:
            ctx.metrics.inc("rounds_short")
        await ctx.run_blocking(self._log_round, record)
        for listener in list(self._round_listeners):
            try:
                await listener()
            except Exception as e:  # a local teacher's failure costs its version, not our training
                ctx.metrics.inc("listener_errors")
                ctx.logger.exception("trainer %s: a round listener failed: %s", self.name, e)
        ctx.logger.info("trainer %s: round %d merged %d delta(s)%s, sent %d B (%s, rel. error %.3f), loss %s, "
                        "accuracy %s", self.name, r, len(used), f", missing {len(missing)}" if missing else "", sent,
                        cfg.codec, rel_error, record["loss"], accuracy)

    def _train(self, steps: int) -> float:
        """Blocking: take newly taught rows (between two rounds, so a round trains on one set), then train."""
        with self._model_lock:
            rows, self._pending_rows = self._pending_rows, None
            if rows is not None:
                self._model.set_targets(rows.texts, rows.targets)
            return self._model.train(steps, first_step=self._pos.round * self.cfg.steps_per_round)

    def _compress(self, r: int, loss: float) -> tuple[list[Delta], dict[str, np.ndarray], float]:
        """Blocking: this round's delta bodies, what every receiver decodes from them, and the
        relative error of that against what was to be sent (delta plus carried residual)."""
        assert self._key is not None
        with self._model_lock:
            adapter = self._model.adapter()
        delta = {n: adapter[n] - self._synced[n] for n in self._synced}
        records, decoded = [], {}
        err2 = total2 = 0.0
        for (a, b), comp in zip(self._parts, self._compressors):
            names = [n for n, _ in self._key.entries[a:b]]
            part = {n: delta[n] for n in names}
            carried = dict(part)
            if comp.error_feedback and FUSED_NAME in comp.residual and comp.layout is not None:
                res = comp.layout.split(comp.residual[FUSED_NAME])
                carried = {n: part[n] + res[n] for n in names}
            recs, dec = comp.compress(part)
            records.extend(recs)
            decoded.update(dec)
            err2 += _norm2({n: carried[n] - dec[n] for n in names})
            total2 += _norm2(carried)
        meta = {"steps": self.cfg.steps_per_round, "arm": self.cfg.codec}
        if math.isfinite(loss):
            meta["loss"] = float(loss)
        bodies = chunk_bodies(self._key, "delta", self._pos, records, self._codec.wire_name, self._parts, self._align,
                              self._codec.meta(), **meta)
        self._encodings = sorted({r.trits.encoding.name.lower() for r in records if r.trits is not None})
        return bodies, decoded, math.sqrt(err2 / total2) if total2 > 0 else 0.0

    def _apply_merge(self, mean: dict[str, np.ndarray], merged: int, now_us: int, evaluate: bool = True
                     ) -> tuple[float | None, float, float]:
        """Blocking: apply the mean, checkpoint, evaluate; (accuracy, merge seconds, eval seconds)."""
        assert self._key is not None
        t0 = time.perf_counter()
        with self._model_lock:
            synced = {n: self._synced[n] + mean[n] for n in self._synced}
            self._model.load(synced)
            # adapter and position change together under the lock, so predict() sees a matching pair
            self._synced = synced
            self._set_position(Position(self._pos.round + 1, digest_of(self._key.layout, self._synced),
                                        self._pos.weight + merged))
        assert self._book is not None
        self._book.forget_before(self._pos.round)
        try:
            self._save(now_us)
        except OSError as e:   # a full disk costs the restart point, not the training
            self.ctx.metrics.inc("checkpoint_errors")
            self.ctx.logger.error("trainer %s: cannot write the checkpoint: %s", self.name, e)
        t1 = time.perf_counter()
        if not evaluate:
            return None, t1 - t0, 0.0
        accuracy = self._evaluate_locked()
        return accuracy, t1 - t0, time.perf_counter() - t1

    def _evaluate_locked(self) -> float | None:
        with self._model_lock:
            return self._model.evaluate()

    def _log_round(self, record: dict[str, Any]) -> None:
        try:
            with open(self.ctx.storage / ROUNDS_LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            self.ctx.logger.warning("trainer %s: cannot append to %s: %s", self.name, ROUNDS_LOG, e)

    # ------------------------------------------------------------------------------------ traffic

    async def _hello_loop(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        assert self._key is not None
        while True:
            self._last_hello = ctx.clock.monotonic()
            await ctx.publish(hello_body(self._key, self._pos, joining=self._joining))
            ctx.metrics.inc("hellos")
            await self.sleep_or_wake(cfg.hello_interval, self._hello_now)

    def _refuse(self, err: TrainerRefused, origin: bytes) -> None:
        self._refusals[err.code] += 1
        self.ctx.metrics.inc(f"refused.{err.code}")
        first = self._last_refusal is None or self._last_refusal.get("from") != origin.hex() \
            or self._last_refusal.get("reason") != err.code
        self._last_refusal = {"reason": err.code, "detail": err.detail, "from": origin.hex(),
                              "time_us": self.ctx.clock.wall_us()}
        if first:   # a peer refused every hello would otherwise fill the log
            self.ctx.logger.warning("trainer %s: refused a message from %s: %s: %s", self.name, origin.hex()[:16],
                                    err.code, safe_text(err.detail))

    def _on_packet(self, packet: Packet) -> None:
        body, origin = packet.body, packet.origin
        if not isinstance(body, Delta) or self._key is None or self._book is None:
            return
        ctx = self.ctx
        try:
            msg = parse_message(body, self._key)
        except NotOurs:
            ctx.metrics.inc("ignored.other_group")
            return
        except TrainerRefused as e:
            self._refuse(e, origin)
            return
        now = ctx.clock.monotonic()
        if not isinstance(msg, SnapshotChunk):
            self._book.heard(origin, msg.position, now)
        if isinstance(msg, Hello):
            if msg.joining:
                if now - self._last_hello >= min(HELLO_ANSWER_GAP_S, self.cfg.hello_interval):
                    self._hello_now.set()   # answer a joining node now, not at our next interval
                else:
                    ctx.metrics.inc("hellos_deferred")
            self._wake.set()
        elif isinstance(msg, SnapshotRequest):
            if msg.to == ctx.node_id:
                self._spawn(self._send_snapshot(origin), f"worker:{self.name}:snapshot")
        elif isinstance(msg, DeltaChunk):
            self._on_chunk(origin, "delta", msg, len(packet.raw), now)
        elif msg.to == ctx.node_id and origin == self._awaiting:
            self._on_chunk(origin, "snapshot", msg, len(packet.raw), now)

    def _on_chunk(self, origin: bytes, kind: str, msg: DeltaChunk | SnapshotChunk, nbytes: int, now: float) -> None:
        ctx = self.ctx
        assert self._key is not None and self._book is not None
        ctx.metrics.inc("bytes_received", nbytes)
        if kind == "delta":
            self._bytes_received_round += nbytes
            if msg.position.round < self._pos.round:
                ctx.metrics.inc("late_deltas")
                return
        key = (origin, kind, msg.position.round, msg.position.base)
        asm = self._assemblies.get(key)
        if asm is None:
            if len(self._assemblies) >= 64:
                oldest = min(self._assemblies, key=lambda k: self._assemblies[k].updated)
                del self._assemblies[oldest]
                ctx.metrics.inc("dropped.stale_assembly")
            asm = self._assemblies[key] = Assembly(origin, msg.position, msg.chunks, now)
        try:
            asm.add(msg, nbytes, now)
            if not asm.complete:
                return
            del self._assemblies[key]
            tensors = asm.decode(self._key)
        except TrainerRefused as e:
            self._assemblies.pop(key, None)
            self._refuse(e, origin)
            return
        if kind == "delta":
            if not self._book.add(msg.position.round, origin, msg.position.base, tensors, self._pos.round):
                ctx.metrics.inc("late_deltas")
        else:
            if digest_of(self._key.layout, tensors) != msg.position.base:
                self._refuse(TrainerRefused("bad_snapshot", "snapshot values do not match their digest"), origin)
                return
            self._snapshot = (origin, msg.position, tensors)
        self._wake.set()

    async def _send_snapshot(self, to: bytes) -> None:
        ctx = self.ctx
        assert self._key is not None
        now = ctx.clock.monotonic()
        if now - self._snapshot_sent.get(to, -math.inf) < SNAPSHOT_GAP_S:
            ctx.metrics.inc("snapshots_throttled")
            return
        self._snapshot_sent[to] = now
        # A merge runs in a worker thread and replaces the adapter before the position: take a
        # consistent pair (the digest must match, or the requester refuses the snapshot).
        for _ in range(100):
            synced, pos = self._synced, self._pos
            if digest_of(self._key.layout, synced) == pos.base:
                break
            await ctx.clock.sleep(0.05)
        else:
            ctx.metrics.inc("snapshots_inconsistent")
            return
        codec = Float32Codec()
        records = [codec.encode_tensor(FUSED_NAME, self._key.sublayout(p, 1).fuse(
            {n: synced[n] for n, _ in self._key.entries[p[0]:p[1]]})) for p in self._parts]
        for body in chunk_bodies(self._key, "snapshot", pos, records, "fp32", self._parts, 1, {}, to=to):
            await ctx.publish(body)
        ctx.metrics.inc("snapshots_sent")

    # ------------------------------------------------------------------------------------ local API
    # What other workers of this daemon use (a transfer teacher that teaches this adapter, a transfer
    # student that hands it rows), and the control API's classify.

    @property
    def position(self) -> Position:
        return self._pos

    @property
    def accuracy(self) -> float | None:
        """The last eval accuracy (the initial one before any round), None without eval_data."""
        return self._accuracy

    @property
    def group(self) -> str:
        """The sync group's id (hex): same base model, task and classes."""
        return self._key.group.hex() if self._key is not None else ""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self._model.classes) if self._model is not None else ()

    def add_round_listener(self, listener: Callable[[], Awaitable[None]]) -> None:
        """`await listener()` after every merged round, before the next one starts (a local transfer
        teacher makes its versions there, so they fall on the rounds its settings name)."""
        self._round_listeners.append(listener)

    async def wait_prepared(self) -> None:
        await self._prepared.wait()

    async def teach(self, rows: TaughtRows) -> None:
        """Train on `rows` from the next round on (they replace rows taught before: a newer teacher
        version warm-starts from the adapter as it is). Raises TrainerRefused (code
        `classes_mismatch` or `bad_rows`) for rows this model cannot use."""
        await self._prepared.wait()
        own = self.classes
        if set(rows.classes) != set(own) or len(rows.classes) != len(own):
            raise TrainerRefused("classes_mismatch", f"taught classes {list(rows.classes)[:16]} are not this "
                                                     f"trainer's {list(own)[:16]}")
        t = np.asarray(rows.targets)
        if t.ndim != 2 or t.shape != (len(rows.texts), len(own)) or not len(rows.texts):
            raise TrainerRefused("bad_rows", f"targets of shape {t.shape} for {len(rows.texts)} texts and "
                                             f"{len(own)} classes")
        t = t.astype(np.float64)
        sums = t.sum(axis=1)
        if not np.isfinite(t).all() or (t < 0).any() or not (sums > 0).all():
            raise TrainerRefused("bad_rows", "targets must be finite, non-negative, and not all zero in a row")
        order = [list(rows.classes).index(c) for c in own]      # the teacher's column of each of our classes
        targets = (t[:, order] / sums[:, None]).astype(np.float32)
        self._pending_rows = TaughtRows(tuple(rows.texts), own, targets, dict(rows.source))
        self._taught = {**dict(rows.source), "rows": len(rows.texts), "received_at_us": self.ctx.clock.wall_us()}
        self.ctx.metrics.inc("taught_versions")
        self.ctx.logger.info("trainer %s: %d taught rows from %s", self.name, len(rows.texts),
                             str(rows.source.get("teacher", "?"))[:16])
        self._has_rows.set()

    async def predict(self, texts: Sequence[str]) -> Prediction:
        """Class probabilities of `texts` under the synchronised adapter (not this round's local steps)."""
        if not self._prepared.is_set():
            raise ControlError(f"trainer {self.name} is not ready ({self._state}"
                               f"{': ' + self._error if self._error else ''})")
        return await self.ctx.run_blocking(self._predict_blocking, list(texts))

    def _predict_blocking(self, texts: list[str]) -> Prediction:
        with self._model_lock:
            synced, pos, accuracy = self._synced, self._pos, self._accuracy
            local = self._model.adapter()
            self._model.load(synced)
            try:
                probs = self._model.predict(texts)
            finally:
                self._model.load(local)
        return Prediction(probs, tuple(self._model.classes), pos, accuracy)

    async def classify(self, texts: Sequence[str]) -> dict[str, Any]:
        """The control API's classify: the synchronised adapter's answer for `texts`."""
        check_classify_texts(texts)
        pred = await self.predict(texts)
        self.ctx.metrics.inc("classified", len(texts))
        return {"worker": self.name, "task": self.cfg.task, "role": "trainer", "classes": list(pred.classes),
                "labels": [pred.classes[int(i)] for i in pred.probs.argmax(axis=1)],
                "scores": [[round(float(v), 6) for v in row] for row in pred.probs], "score_kind": "probability",
                "accuracy": pred.accuracy,
                "round": pred.position.round, "base": pred.position.base.hex()}

    # ------------------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
            "state": self._state, "task": cfg.task, "topic": cfg.topic, "model": cfg.model, "codec": cfg.codec,
            "round": self._pos.round, "base": self._pos.base.hex(), "weight": self._pos.weight,
            "steps_per_round": cfg.steps_per_round, "rounds_target": cfg.rounds,
            "refused": dict(self._refusals), "last_refusal": self._last_refusal, "catchups": self._catchups,
            "restored": self._restored,
        }
        if self._doing is not None:
            out["doing"] = self._doing
        if self._error:
            out["error"] = self._error
        if self._key is not None:
            out.update(group=self._key.group.hex(), schema=self._key.schema.hex(), chunks=len(self._parts),
                       trainable=int(self._model.numel), classes=list(self._model.classes),
                       fingerprint=self._model.fingerprint[:16])
        if self._book is not None and self._ctx is not None:
            live = self._book.live(self.ctx.clock.monotonic())
            out["members"] = {n.hex(): {"round": m.position.round, "base": m.position.base.hex()}
                              for n, m in sorted(live.items())}
        if self._model is not None:
            out.update(epoch=round(self._model.epoch, 3), step=self._model.steps,
                       rows={"labelled": self._model.labelled_rows, "taught": len(self._model.taught_texts)})
        out["taught"] = self._taught
        out["accuracy"] = self._accuracy
        out["initial_accuracy"] = self._initial_accuracy
        if self._history:
            out["last_round"] = self._history[-1]
            out["loss"] = self._history[-1]["loss"]
        out["history"] = list(self._history)
        return out
