"""`transfer`: move task knowledge between nodes whose models have different architectures.

A *teacher* embeds a shared, unlabeled anchor set and its labeled training set with its model,
encodes both in a shared HDC space, trains a probe, and publishes on `transfer/<task>`: its knowledge
(linear probe, prototypes and/or predictions on the anchors) and, when a student asks for them, its
ternary anchor vectors in chunks. It republishes every `republish_interval`, and soon after a new
student says hello.

A *student* hosts another model. It says hello (repeating until it has adopted something), checks
every teacher message against its own space, dimension and anchor set (refusing with a counted,
logged reason), assembles one version of a teacher's content, fits its classifier off the event loop
(`alignment`: its own probe on the teacher's anchor predictions, or a map into the teacher's space),
evaluates it on its local labeled eval set when one is configured, persists it (safetensors + json,
written atomically, restored at the next start) and serves it: `status()` for `meshnode workers`,
`classify()` for the control API's `classify` command and `meshnode predict`. With several teachers
of one task it keeps the first complete one, or, when it has an eval set, the most accurate.

Message formats and checks: transfer_protocol.py; the learning: transfer_model.py; settings:
transfer_settings.py; operator docs: docs/WORKERS.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..atomic import write_atomic
from ..control import MAX_CLASSIFY_CHARS, MAX_CLASSIFY_TEXTS, ControlError, check_classify_texts
from ..data import LabeledTexts
from ..display import safe_text
from ..hdc.knowledge import LinearKnowledge, PredictionKnowledge, PrototypeKnowledge
from ..hdc.space import Space
from ..wire.packet import Knowledge, Packet, Vectors
from .anchors import MAX_ANCHORS, AnchorSet, load_anchor_set
from .base import TaskWorker, WorkerContext, WorkerSettingsError
from .trainer import Prediction, TaughtRows, TrainerWorker
from .trainer_protocol import TrainerRefused
from .transfer_model import (
    StudentFit,
    TeacherFit,
    accuracy_against,
    fit_student,
    fit_teacher,
    fit_teacher_from_predictions,
    space_encoder,
    taught_targets,
)
from .transfer_protocol import (
    Assembly,
    Expectation,
    KnowledgeOffer,
    StudentHello,
    TransferRefused,
    anchor_chunks,
    check_knowledge,
    check_vectors,
    content_digest,
    knowledge_bodies,
    student_hello,
    with_digest,
)
from .transfer_settings import TransferSettings, parse_settings

__all__ = ["MAX_CLASSIFY_CHARS", "MAX_CLASSIFY_TEXTS", "TransferWorker"]

_PACKET_BUDGET = 3_500_000   # bytes of one knowledge body: well under 4 MiB with headers
_STALE_ASSEMBLY_S = 600.0    # an incomplete teacher version with no progress for this long is dropped
# How long a teacher listens for students before its first round (see _teacher_main).
_FIRST_ROUND_WAIT_S = 12.0
RESULT_JSON = "result.json"
RECEIVED = "received.safetensors"
_MAX_STUDENTS = 1024        # students whose last request a teacher remembers (one entry per node id)
_DONE_MAX = 4096            # versions remembered as evaluated (so a republished one is not fitted again)
_FIT_GAP_S = 5.0            # at most one fit per teacher this often: a member spamming versions costs one
                            # fit per gap, not one per packet; a version that comes sooner waits its turn
_LOGGED_MAX = 1024          # (sender, reason) pairs whose refusal was logged: each logs once, all are counted
_VERSION_POLL_S = 1.0       # how often a trainer-backed teacher checks whether its first version is made


def _load_labeled(path: Path, split: str, classes: tuple[str, ...] | None, limit: int, seed: int) -> LabeledTexts:
    from ..data import DataError, load_labeled

    try:
        return load_labeled(path, split, classes=classes, limit=limit, seed=seed)
    except (OSError, DataError) as e:
        raise ValueError(f"cannot load labeled data {path}: {e}") from None


def _knowledge_arrays(knowledge: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k in knowledge.values():
        if isinstance(k, LinearKnowledge):
            out["linear.weight"], out["linear.bias"] = k.weight, k.bias
        elif isinstance(k, PrototypeKnowledge):
            out["prototypes"] = k.prototypes
        elif isinstance(k, PredictionKnowledge):
            out["predictions"] = k.predictions
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


class TransferWorker(TaskWorker):
    type_name: ClassVar[str] = "transfer"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "safetensors", "scipy")

    def __init__(self, name: str, settings: Mapping[str, Any], *, base_dir: Path | None = None) -> None:
        super().__init__(name, settings, base_dir=base_dir)
        self.cfg: TransferSettings = parse_settings(name, settings, base_dir=self.base_dir)
        self.space = Space(seed=self.cfg.space_seed, dim=self.cfg.dim, version=self.cfg.space_version)
        self._exp: Expectation | None = None
        self._embedder: Any = None
        self._embed_lock = threading.Lock()
        self._eval: LabeledTexts | None = None
        self._eval_emb: np.ndarray | None = None
        self._anchor_emb: np.ndarray | None = None
        self._accuracy: float | None = None
        self._refusals: Counter[str] = Counter()
        self._last_refusal: dict[str, Any] | None = None
        # teacher
        self._teacher: TeacherFit | None = None
        self._train_size = 0
        self._bodies: list[Knowledge] = []
        self._digest: bytes | None = None
        self._pending: dict[bytes, str] = {}
        self._wake = asyncio.Event()
        self._rounds = 0
        self._last_round: float | None = None
        self._students: dict[bytes, str] = {}     # student -> what it last asked for (newest last)
        self._trainer: TrainerWorker | None = None   # teacher with `trainer`, student with `learner`
        self._doing: str | None = None   # what "preparing" is busy with, for status
        self._anchors: AnchorSet | None = None
        self._anchor_trits: np.ndarray | None = None
        self._center: np.ndarray | None = None
        self._whiten: np.ndarray | None = None
        self._version: dict[str, Any] | None = None
        self._versions = 0
        self._initial_accuracy: float | None = None
        # student
        self._assemblies: dict[tuple[bytes, bytes], Assembly] = {}
        self._done: dict[tuple[bytes, bytes], None] = {}      # insertion-ordered: the oldest go first
        self._last_fit: dict[bytes, float] = {}               # teacher -> when its last fit started
        self._logged: dict[tuple[bytes, str], None] = {}
        self._fitting: set[tuple[bytes, bytes]] = set()
        self._fit_lock = asyncio.Lock()
        self._fit: StudentFit | None = None
        self._adopted: dict[str, Any] | None = None
        self._candidates: dict[str, dict[str, Any]] = {}
        self._hello_adopted_pending = False
        self._fit_error: str | None = None
        self._knowledge: dict[str, Any] | None = None   # what the adopted fit was made from
        self._pool: tuple[str, ...] = ()
        self._pool_emb: np.ndarray | None = None
        self._taught: dict[str, Any] | None = None

    @property
    def classifies_through(self) -> str | None:
        """The local trainer worker whose adapter answers classify for this worker, if any."""
        return self.cfg.trainer if self.cfg.role == "teacher" else self.cfg.learner

    def check_links(self, others: Mapping[str, Any]) -> None:
        for key in ("trainer", "learner"):
            name = getattr(self.cfg, key)
            if name is not None and not isinstance(others.get(name), TrainerWorker):
                kinds = ", ".join(f"{n} ({getattr(w, 'type_name', '?')})" for n, w in others.items() if n != self.name)
                raise WorkerSettingsError(f"workers.{self.name}.settings.{key}: no trainer worker named {name!r} on "
                                          f"this node (workers: {kinds or 'none'})")

    def _local_trainer(self, key: str, name: str) -> TrainerWorker:
        worker = self.ctx.local_worker(name)
        if not isinstance(worker, TrainerWorker):
            raise ValueError(f"workers.{self.name}.settings.{key}: this node has no trainer worker named {name!r}")
        return worker

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._state = "preparing"
        main = self._teacher_main() if self.cfg.role == "teacher" else self._student_main()
        self._spawn(main, f"worker:{self.name}")

    # ------------------------------------------------------------------------------------ shared

    def _prepare_common(self, *, embed_eval: bool = True) -> AnchorSet:
        """Blocking: anchor set, model, anchor embeddings, eval set (`embed_eval`)."""
        from ..models import LOAD_LOCK, Embedder, default_cache_dir

        cfg = self.cfg
        anchors = load_anchor_set(cfg.anchors, name=cfg.anchor_set, max_texts=cfg.max_anchors)
        self._anchors = anchors
        self._exp = Expectation(cfg.task, self.space, anchors.name, len(anchors), anchors.hash)
        if cfg.role == "teacher" and cfg.trainer is not None and not {"linear", "prototypes"} & set(cfg.knowledge):
            return anchors   # predictions only: the trainer's model makes them, no frozen embedder needed
        if not self._keeps_route:
            return anchors   # the learner answers and trains on the teacher's labels: no frozen model needed
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self._doing = "loading the model"
        with LOAD_LOCK:   # one model load at a time in a process (see meshnode.models)
            self._embedder = Embedder.from_spec(cfg.model, cache_dir=cfg.cache_dir or default_cache_dir(),
                                                device=cfg.device, batch_size=cfg.batch_size,
                                                max_length=cfg.max_length)
        self._anchor_emb = self._embed(anchors.texts, what="anchors")
        if cfg.eval_data is not None and embed_eval:
            self._eval = _load_labeled(cfg.eval_data, cfg.eval_split, cfg.classes, cfg.max_eval, cfg.seed)
            self._eval_emb = self._embed(self._eval.texts, what="eval rows")
        self._doing = None
        return anchors

    @property
    def _keeps_route(self) -> bool:
        """Whether this worker fits a frozen route of its own model. A student with a learner, no map
        and no eval set does not: its learner answers `predict`, trains on the teacher's labels as
        they came, and without an eval set the route would not even be a baseline, so loading a
        second copy of the model and embedding the anchors would be work nobody uses."""
        cfg = self.cfg
        return not (cfg.role == "student" and cfg.learner is not None and not cfg.needs_anchors
                    and cfg.eval_data is None)

    def _embed(self, texts: Sequence[str], what: str | None = None) -> np.ndarray:
        with self._embed_lock:
            if what is None:
                return self._embedder.embed(texts)

            def progress(done: int, todo: int) -> None:
                self._doing = f"embedding {what} {done}/{todo} (new to the cache)"

            self._embedder.on_progress = progress
            try:
                return self._embedder.embed(texts)
            finally:
                self._embedder.on_progress = None

    def _refuse(self, err: TransferRefused, origin: bytes) -> None:
        self._refusals[err.code] += 1
        self.ctx.metrics.inc(f"refused.{err.code}")
        self._last_refusal = {"reason": err.code, "detail": err.detail, "from": origin.hex(),
                              "time_us": self.ctx.clock.wall_us()}
        key = (origin, err.code)
        if key in self._logged:
            return   # counted above; a member sending the same bad message all day must not fill the log
        self._logged[key] = None
        while len(self._logged) > _LOGGED_MAX:
            del self._logged[next(iter(self._logged))]
        self.ctx.logger.warning("transfer %s: refused a message from %s: %s: %s (further ones from it for this "
                                "reason are only counted)", self.name, origin.hex()[:16], err.code,
                                safe_text(err.detail))

    def _remember_done(self, key: tuple[bytes, bytes]) -> None:
        self._done.pop(key, None)
        self._done[key] = None
        while len(self._done) > _DONE_MAX:
            del self._done[next(iter(self._done))]

    # ------------------------------------------------------------------------------------ teacher

    def _prepare_teacher(self) -> None:
        cfg = self.cfg
        anchors = self._prepare_common()
        assert cfg.train_data is not None and self._exp is not None and self._anchor_emb is not None
        train = _load_labeled(cfg.train_data, cfg.train_split, cfg.classes, cfg.max_train, cfg.seed)
        if len(np.unique(train.labels)) < 2:
            raise ValueError(f"{cfg.train_data}: the training set needs at least two classes")
        train_emb = self._embed(train.texts)
        fit = fit_teacher(self.space, cfg.tau, self._anchor_emb, anchors.hash, train_emb, train.labels,
                          train.classes, probe=cfg.probe, forms=cfg.knowledge, predictions=cfg.predictions,
                          seed=cfg.seed)
        info = {"model": self._embedder.name, "train_size": len(train), "probe": cfg.probe,
                "fingerprint": self._embedder.fingerprint[:16]}
        bodies = knowledge_bodies(cfg.topic, self._exp, fit.forms, half=cfg.half, info=info)
        for body in bodies:
            size = sum(len(t.data) for t in (body.weight, body.bias, body.predictions) if t is not None)
            size += len(body.vectors.data) if body.vectors is not None else 0
            if size > _PACKET_BUDGET:
                raise ValueError(f"knowledge form {body.form!r} is {size} bytes, over the {_PACKET_BUDGET}-byte "
                                 "packet budget (fewer classes, a smaller dim, or another form)")
        anchors_sent = fit.anchor_trits if cfg.send_anchors != "never" else None
        self._digest = content_digest(self._exp, anchors_sent, bodies)
        self._bodies = with_digest(bodies, self._digest)
        self._teacher, self._train_size = fit, len(train)
        if self._eval is not None and self._eval_emb is not None:
            pred = fit.scores(self.space, self._eval_emb, cfg.tau).argmax(axis=1)
            self._accuracy = accuracy_against(pred, fit.linear.classes, self._eval.labels, self._eval.classes)

    def _prepare_trainer_teacher(self) -> None:
        """Blocking: anchors, and the frozen anchor vectors a map student needs (linear/prototypes)."""
        self._prepare_common(embed_eval=False)
        if self._anchor_emb is not None:
            self._center, self._whiten = space_encoder(self.space, self._anchor_emb)
            self._anchor_trits = self.space.encode(self._anchor_emb, center=self._center, tau=self.cfg.tau,
                                                   whiten=self._whiten)

    async def _teacher_main(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        if cfg.trainer is not None:
            self._trainer = self._local_trainer("trainer", cfg.trainer)
            await ctx.run_blocking(self._prepare_trainer_teacher)
            ctx.subscribe(cfg.topic, self._on_teacher_packet)
            self._state = "waiting-trainer"
            trainer = self._trainer
            await trainer.wait_prepared()
            self._initial_accuracy = trainer.accuracy
            trainer.add_round_listener(lambda: self._on_trainer_round(trainer))
            while self._digest is None:
                await self.sleep_or_wake(_VERSION_POLL_S, self._wake)
        else:
            await ctx.run_blocking(self._prepare_teacher)
            ctx.subscribe(cfg.topic, self._on_teacher_packet)
            if not self._pending:
                # Students say hello every announce_interval (10 s by default) until they adopt: wait
                # for one before the first round, so that it carries what they ask for (a few kB of
                # predictions) instead of every form (20-70x that). A hello ends the wait at once.
                await self.sleep_or_wake(_FIRST_ROUND_WAIT_S, self._wake)
        self._state = "publishing"
        ctx.logger.info("transfer %s: teacher of %r ready (digest %s)", self.name, self.cfg.task,
                        self._digest.hex()[:16] if self._digest else "-")
        while True:
            if self._last_round is not None:
                gap = self.cfg.min_republish_gap - (ctx.clock.monotonic() - self._last_round)
                if gap > 0:
                    await ctx.clock.sleep(gap)
            await self._publish_round()
            await self.sleep_or_wake(self.cfg.republish_interval, self._wake)

    async def _on_trainer_round(self, trainer: TrainerWorker) -> None:
        """Called by the trainer after each merged round (it waits for us, so versions fall on the
        rounds the settings name, however fast it trains): a new version of what this teacher teaches
        after `publish_every` merged rounds, an eval accuracy `publish_margin` above the last version's,
        or the trainer's last round."""
        cfg = self.cfg
        pos, acc = trainer.position, trainer.accuracy
        last = self._version or {"round": 0, "accuracy": self._initial_accuracy}
        if pos.round <= last["round"]:
            return
        last_acc = last["accuracy"]
        due = (pos.round - last["round"] >= cfg.publish_every
               or (acc is not None and last_acc is not None and acc >= last_acc + cfg.publish_margin)
               or 0 < trainer.cfg.rounds <= pos.round)
        if not due:
            return
        pred = await trainer.predict(self._anchors.texts if self._anchors is not None else ())
        await self.ctx.run_blocking(self._make_version, pred, self.ctx.clock.wall_us())
        # every student known gets the new version as it last asked for it (adopted students no
        # longer say hello)
        self._pending.update(self._students)
        self._wake.set()

    def _make_version(self, pred: Prediction, now_us: int) -> None:
        """Blocking: knowledge bodies and digest of the trainer's predictions on the anchors. (`now_us`
        comes from the caller: meshnode sim's virtual clock is read on the event loop only.)"""
        cfg = self.cfg
        assert self._exp is not None
        fit = fit_teacher_from_predictions(pred.probs, pred.classes, self._exp.anchor_hash, self._anchor_trits,
                                           self._center, forms=cfg.knowledge, predictions=cfg.predictions,
                                           whiten=self._whiten)
        info = {"model": cfg.model, "trainer": cfg.trainer, "group": self._trainer.group if self._trainer else "",
                "trainer_round": pred.position.round,
                "adapter": pred.position.base.hex(),
                # the wire refuses NaN and infinities (SPEC §3): an accuracy that is not a number is unknown
                "accuracy": pred.accuracy if pred.accuracy is None or math.isfinite(pred.accuracy) else None}
        bodies = knowledge_bodies(cfg.topic, self._exp, fit.forms, half=cfg.half, info=info)
        anchors_sent = fit.anchor_trits if cfg.send_anchors != "never" and fit.anchor_trits.size else None
        digest = content_digest(self._exp, anchors_sent, bodies)
        self._bodies, self._teacher, self._digest = with_digest(bodies, digest), fit, digest
        self._accuracy = pred.accuracy
        self._versions += 1
        self._version = {"round": pred.position.round, "adapter": pred.position.base.hex(), "accuracy": pred.accuracy,
                         "digest": digest.hex(), "made_at_us": now_us}
        self.ctx.metrics.inc("versions")
        self.ctx.logger.info("transfer %s: version %d from trainer %s round %d (accuracy %s)", self.name,
                             self._versions, cfg.trainer, pred.position.round, pred.accuracy)

    async def _publish_round(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        assert self._exp is not None and self._teacher is not None and self._digest is not None
        # A round carries only what students asked for: predictions for students without a map; the
        # probe (or prototypes) and the anchor vectors for students with one. A periodic round serves
        # the students heard so far the same way (every form to students that need a few kB of
        # predictions cost them 20-70x the route's bytes: issue 18). With no student heard yet it
        # carries every form, anchors only when send_anchors is "always": a student whose anchors or
        # space do not match is never heard, and learns why from the refusal this round gives it.
        wants = set(self._pending.values()) or set(self._students.values())
        self._pending.clear()
        forms = set(cfg.knowledge)
        wants_anchors = cfg.send_anchors == "always"
        if wants:
            forms = set()
            if "predictions" in wants:
                forms.add("predictions")
            if "anchors" in wants:
                # predictions too, when published: a student with a learner trains on them (a few kB)
                forms |= {"linear", "prototypes", "predictions"}
                wants_anchors = wants_anchors or cfg.send_anchors == "on_request"
            if not forms & set(cfg.knowledge):
                ctx.metrics.inc("unserved_requests")
                ctx.logger.warning("transfer %s: students want %s, which this teacher does not publish "
                                   "(settings.knowledge = %s)", self.name, "/".join(sorted(wants)), list(cfg.knowledge))
        self._last_round = ctx.clock.monotonic()
        self._rounds += 1
        for body in self._bodies:
            if body.form in forms:
                await ctx.publish(body)
                ctx.metrics.inc(f"published.{body.form}")
        if wants_anchors and self._teacher.anchor_trits.size:
            chunks = anchor_chunks(cfg.topic, self._exp, self._teacher.anchor_trits, self._digest, cfg.chunk_bytes)
            for i, chunk in enumerate(chunks):
                if i and cfg.chunk_interval:
                    await ctx.clock.sleep(cfg.chunk_interval)   # let the links drain between chunks
                await ctx.publish(chunk)
                ctx.metrics.inc("published.anchor_chunks")
        ctx.metrics.inc("rounds")

    def _on_teacher_packet(self, packet: Packet) -> None:
        body = packet.body
        if not isinstance(body, Vectors) or not isinstance(body.meta, dict) or body.meta.get("kind") != "student":
            return   # other teachers' traffic on the same task
        assert self._exp is not None
        try:
            hello = check_vectors(body, self._exp)
        except TransferRefused as e:
            self._refuse(e, packet.origin)
            return
        assert isinstance(hello, StudentHello)
        self.ctx.metrics.inc("student_hellos")
        self._students.pop(packet.origin, None)
        self._students[packet.origin] = hello.wants
        while len(self._students) > _MAX_STUDENTS:   # bounded: forget the student heard least recently
            del self._students[next(iter(self._students))]
        if hello.adopted != self._digest:
            self._pending[packet.origin] = hello.wants
            self._wake.set()

    # ------------------------------------------------------------------------------------ student

    def _prepare_student(self) -> None:
        self._prepare_common()
        if self.cfg.pool is not None:
            self._pool = load_anchor_set(self.cfg.pool, name="pool", max_texts=MAX_ANCHORS).texts
        try:
            self._restore()
        except Exception as e:  # a damaged or foreign state file must not keep the student from learning anew
            self.ctx.logger.warning("transfer %s: cannot restore the saved result (%s: %s); starting fresh",
                                    self.name, type(e).__name__, e)
            self._fit = self._adopted = self._accuracy = None
            self._done.clear()

    async def _student_main(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        if cfg.learner is not None:
            self._trainer = self._local_trainer("learner", cfg.learner)
        await ctx.run_blocking(self._prepare_student)
        if self._fit is not None and self._knowledge is not None and self._adopted is not None:
            await self._teach_learner(self._fit, self._knowledge, self._adopted)   # restored: no teacher needed
        ctx.subscribe(cfg.topic, self._on_student_packet)
        if self._fit is None:
            self._state = "waiting"
        assert self._exp is not None
        wants = "anchors" if cfg.needs_anchors else "predictions"
        while True:
            adopted = self._adopted["digest_bytes"] if self._adopted is not None else None
            if adopted is None or self._hello_adopted_pending:
                self._hello_adopted_pending = False
                await ctx.publish(student_hello(cfg.topic, self._exp, wants, adopted))
                ctx.metrics.inc("hellos")
            self._drop_stale()
            await self.sleep_or_wake(cfg.announce_interval, self._wake)

    def _drop_stale(self) -> None:
        now = self.ctx.clock.monotonic()
        for key, asm in list(self._assemblies.items()):
            if now - asm.updated > _STALE_ASSEMBLY_S and key not in self._fitting:
                del self._assemblies[key]
                self.ctx.metrics.inc("dropped.stale_assembly")

    def _on_student_packet(self, packet: Packet) -> None:
        body, origin = packet.body, packet.origin
        assert self._exp is not None
        try:
            if isinstance(body, Vectors):
                if isinstance(body.meta, dict) and body.meta.get("kind") == "student":
                    return   # another student
                msg: Any = check_vectors(body, self._exp)
            elif isinstance(body, Knowledge):
                msg = check_knowledge(body, self._exp)
            else:
                return
        except TransferRefused as e:
            self._refuse(e, origin)
            return
        if self.cfg.teacher is not None and not origin.hex().startswith(self.cfg.teacher):
            self.ctx.metrics.inc("ignored.other_teacher")
            return
        key = (origin, msg.digest)
        if key in self._done:
            self.ctx.metrics.inc("ignored.known_version")
            return
        asm = self._assemblies.get(key)
        if asm is None:
            if len(self._assemblies) >= self.cfg.max_teachers:
                idle = [k for k in self._assemblies if k not in self._fitting]
                if not idle:
                    self.ctx.metrics.inc("dropped.too_many_teachers")
                    return
                oldest = min(idle, key=lambda k: self._assemblies[k].updated)
                del self._assemblies[oldest]
                self.ctx.metrics.inc("dropped.too_many_teachers")
            asm = self._assemblies[key] = Assembly(origin, msg.digest, self._exp.anchor_count, self.space.dim,
                                                   self.ctx.clock.monotonic())
        # What this student's route costs: the first copy of each form and anchor chunk it uses.
        # Republished copies (a teacher answers every student's hello) and what other students'
        # routes need (gossip brings it to every subscriber) are counted in the metric below only.
        if isinstance(msg, KnowledgeOffer):
            charged = msg.form not in asm.knowledge and (self.cfg.needs_anchors or msg.form == "predictions")
        else:
            charged = self.cfg.needs_anchors and not bool(asm.have[msg.start: msg.start + msg.trits.shape[0]].all())
        if charged:
            asm.bytes += len(packet.raw)
            asm.packets += 1
        asm.updated = self.ctx.clock.monotonic()
        self.ctx.metrics.inc("bytes_received", len(packet.raw))
        if isinstance(msg, KnowledgeOffer):
            asm.add_knowledge(msg)
        else:
            asm.add_chunk(msg)
        if asm.ready_for(self.cfg.needs_anchors) and key not in self._fitting:
            self._fitting.add(key)
            self._spawn(self._fit_version(asm), f"worker:{self.name}:fit")

    async def _fit_version(self, asm: Assembly) -> None:
        key = (asm.teacher, asm.digest)
        try:
            wait = _FIT_GAP_S - (self.ctx.clock.monotonic() - self._last_fit.get(asm.teacher, -_FIT_GAP_S))
            if wait > 0:
                self.ctx.metrics.inc("deferred.fit_rate")
                await self.ctx.clock.sleep(wait)
                newer = [a for k, a in self._assemblies.items() if k[0] == asm.teacher and k != key
                         and a.ready_for(self.cfg.needs_anchors) and a.updated > asm.updated]
                if newer:   # a later version of this teacher is ready: fit that one instead
                    self.ctx.metrics.inc("ignored.superseded")
                    return
            self._last_fit.pop(asm.teacher, None)
            self._last_fit[asm.teacher] = self.ctx.clock.monotonic()
            while len(self._last_fit) > _LOGGED_MAX:
                del self._last_fit[next(iter(self._last_fit))]
            async with self._fit_lock:
                if self._fit is None:
                    self._state = "fitting"
                knowledge = {form: offer.knowledge for form, offer in asm.knowledge.items()}
                info = next(iter(asm.knowledge.values())).info if asm.knowledge else {}
                try:
                    fit, accuracy, seconds = await self.ctx.run_blocking(
                        self._fit_blocking, knowledge, asm.anchors if self.cfg.needs_anchors else None)
                except TransferRefused as e:
                    self._refuse(e, asm.teacher)
                    return
                except Exception as e:  # e.g. a degenerate anchor block: this version is unusable, not the worker
                    self.ctx.metrics.inc("fit_errors")
                    self._fit_error = f"{type(e).__name__}: {e}"[:300]
                    self.ctx.logger.exception("transfer %s: fitting teacher %s's knowledge failed", self.name,
                                              asm.teacher.hex()[:16])
                    return
                record = {"teacher": asm.teacher.hex(), "digest": asm.digest.hex(), "accuracy": accuracy,
                          "bytes_received": asm.bytes, "packets": asm.packets, "fit_s": round(seconds, 3),
                          "teacher_model": str(info.get("model", ""))[:128], "form": fit.form,
                          "labels": getattr(knowledge.get(fit.form), "labels", None),
                          "teacher_round": info.get("trainer_round") if type(info.get("trainer_round")) is int
                          else None,
                          "teacher_group": str(info.get("group", ""))[:64]}
                self._candidates[asm.teacher.hex()] = record
                if self._better(record):
                    try:
                        await self.ctx.run_blocking(self._persist, record, knowledge, self.ctx.clock.wall_us(),
                                                    asm.anchors if self.cfg.needs_anchors else None)
                    except OSError as e:  # a full disk costs the restart, not the knowledge
                        self.ctx.metrics.inc("persist_errors")
                        self.ctx.logger.error("transfer %s: cannot save the result: %s", self.name, e)
                    self._adopt(fit, record, asm.digest, knowledge)
                    await self._teach_learner(fit, knowledge, record)
        finally:
            self._fitting.discard(key)
            self._remember_done(key)
            self._assemblies.pop(key, None)
            if self._fit is None:
                self._state = "waiting"

    def _fit_blocking(self, knowledge: dict[str, Any], teacher_anchors: np.ndarray | None
                      ) -> tuple[StudentFit, float | None, float]:
        t0 = time.perf_counter()
        assert self._anchor_emb is not None or not self._keeps_route
        classes = next(iter(knowledge.values())).classes
        if self._eval is not None and set(classes) != set(self._eval.classes):
            raise TransferRefused("classes_mismatch", f"teacher's classes {list(classes)[:16]} are not this node's "
                                                      f"eval classes {list(self._eval.classes)[:16]}")
        # a map's fit (ridge, CCA, ...) takes minutes on a CPU at D = 10,000: say so while it runs
        self._doing = f"fitting the {self.cfg.alignment} route"
        try:
            fit = fit_student(self.cfg.alignment, self.space, self.cfg.tau, self._anchor_emb, knowledge=knowledge,
                              teacher_anchors=teacher_anchors, seed=self.cfg.seed)
        finally:
            self._doing = None
        accuracy = None
        if self._eval is not None and self._eval_emb is not None:
            accuracy = accuracy_against(fit.predict(self._eval_emb), fit.classes, self._eval.labels,
                                        self._eval.classes)
        return fit, accuracy, time.perf_counter() - t0

    def _better(self, record: dict[str, Any]) -> bool:
        cur = self._adopted
        if cur is not None and cur["teacher"] == record["teacher"]:
            # a version from the trainer round before the one we hold (gossip reorders) is not newer
            old, new = cur.get("teacher_round"), record.get("teacher_round")
            if isinstance(old, int) and isinstance(new, int) and new < old:
                self.ctx.metrics.inc("ignored.older_version")
                return False
            return True
        if cur is None:
            return True
        old, new = cur.get("teacher_round"), record.get("teacher_round")
        if isinstance(old, int) and isinstance(new, int) and record.get("teacher_group") \
                and record.get("teacher_group") == cur.get("teacher_group"):
            # teachers of one trainer group teach the same synchronised adapter: the later round wins
            return new > old
        if record["accuracy"] is None or cur["accuracy"] is None:
            return False  # without an eval set, keep the first teacher
        return bool(record["accuracy"] > cur["accuracy"])

    def _adopt(self, fit: StudentFit, record: dict[str, Any], digest: bytes, knowledge: dict[str, Any]) -> None:
        self._fit, self._knowledge = fit, knowledge
        self._accuracy = record["accuracy"]
        self._adopted = {**record, "digest_bytes": digest, "adopted_at_us": self.ctx.clock.wall_us()}
        self._state = "adopted"
        self._hello_adopted_pending = True
        self._wake.set()
        self.ctx.metrics.inc("adopted")
        self.ctx.logger.info("transfer %s: adopted %s knowledge of teacher %s (accuracy %s, %d bytes)", self.name,
                             fit.form, record["teacher"][:16], record["accuracy"], record["bytes_received"])

    # ------------------------------------------------------------------------------------ learner

    async def _teach_learner(self, fit: StudentFit, knowledge: dict[str, Any], record: dict[str, Any]) -> None:
        """Hand the local trainer (`learner`) the anchors with the teacher's labels, and with a map the
        pool pseudo-labelled through it. A refusal is counted like any other; the worker goes on."""
        if self._trainer is None:
            return
        teacher = bytes.fromhex(record["teacher"]) if isinstance(record.get("teacher"), str) else b""
        try:
            rows = await self.ctx.run_blocking(self._taught_rows, fit, knowledge, record)
            await self._trainer.teach(rows)
        except TrainerRefused as e:
            self._refuse(TransferRefused(e.code, e.detail), teacher)
            return
        except ValueError as e:
            self._refuse(TransferRefused("bad_knowledge", str(e)[:300]), teacher)
            return
        self._taught = {**dict(rows.source), "rows": len(rows.texts)}
        self.ctx.metrics.inc("taught")

    def _taught_rows(self, fit: StudentFit, knowledge: dict[str, Any], record: dict[str, Any]) -> TaughtRows:
        assert self._anchors is not None
        if self._pool and self._pool_emb is None and self.cfg.needs_anchors:
            self._pool_emb = self._embed(self._pool)
        anchors, pool, soft = taught_targets(knowledge, fit, self._anchor_emb, self._pool_emb if self.cfg.needs_anchors
                                       else None, hard=self.cfg.learner_targets == "hard")
        texts = self._anchors.texts + (self._pool if pool is not None else ())
        targets = anchors if pool is None else np.vstack([anchors, pool])
        source = {"teacher": str(record.get("teacher") or "")[:64], "digest": str(record.get("digest") or "")[:64],
                  "teacher_round": record.get("teacher_round"), "form": fit.form,
                  "anchors": len(self._anchors.texts), "pool": 0 if pool is None else len(pool),
                  "targets": "soft" if soft else "hard"}
        return TaughtRows(texts, tuple(fit.classes), targets, source)

    # ------------------------------------------------------------------------------------ persistence

    def _fingerprint(self) -> str:
        return str(self._embedder.fingerprint) if self._embedder is not None else ""

    def _persist(self, record: dict[str, Any], knowledge: dict[str, Any], now_us: int,
                 anchors: np.ndarray | None) -> None:
        from safetensors.numpy import save as st_save

        assert self._exp is not None
        arrays = _knowledge_arrays(knowledge)
        if anchors is not None:
            arrays["teacher_anchors"] = np.ascontiguousarray(anchors, dtype=np.int8)
        blob = st_save(arrays)
        classes = next(iter(knowledge.values())).classes
        doc = {
            "format": 1, "task": self.cfg.task, "alignment": self.cfg.alignment, "classes": list(classes),
            "space": {"seed": self.space.seed, "dim": self.space.dim, "version": self.space.version},
            "anchor_set": self._exp.anchor_set, "anchor_hash": self._exp.anchor_hash.hex(),
            "anchor_count": self._exp.anchor_count, "model": self.cfg.model, "model_fingerprint": self._fingerprint(),
            "forms": sorted(knowledge),
            "labels_by_form": {f: getattr(k, "labels", None) for f, k in knowledge.items()},
            "received_sha256": hashlib.sha256(blob).hexdigest(), "eval_size": len(self._eval.texts) if self._eval else 0,
            **{k: v for k, v in record.items()}, "saved_at_us": now_us,
        }
        storage = self.ctx.storage
        write_atomic(storage / RECEIVED, blob)        # arrays first: the json names their hash
        write_atomic(storage / RESULT_JSON, json.dumps(doc, indent=1).encode())

    def _restore(self) -> None:
        """Blocking: reload what an earlier run adopted, if it still fits these settings and this model."""
        from safetensors.numpy import load as st_load

        assert self._exp is not None
        path = self.ctx.storage / RESULT_JSON
        if not path.exists():
            return
        log = self.ctx.logger
        try:
            doc = json.loads(path.read_text())
            blob = (self.ctx.storage / RECEIVED).read_bytes()
        except (OSError, ValueError) as e:
            log.warning("transfer %s: cannot read the saved result (%s); starting fresh", self.name, e)
            return
        expect = {"task": self.cfg.task, "alignment": self.cfg.alignment, "anchor_hash": self._exp.anchor_hash.hex(),
                  "model_fingerprint": self._fingerprint(),
                  "space": {"seed": self.space.seed, "dim": self.space.dim, "version": self.space.version}}
        if not self._keeps_route:
            del expect["model_fingerprint"]   # labels on the anchors do not depend on this node's model
        stale = [k for k, v in expect.items() if doc.get(k) != v]
        if stale or doc.get("received_sha256") != hashlib.sha256(blob).hexdigest():
            log.info("transfer %s: saved result does not fit (%s); starting fresh", self.name,
                     ", ".join(stale) or "arrays changed")
            return
        arrays = st_load(blob)
        classes = tuple(doc["classes"])
        labels = doc.get("labels_by_form") or {}
        knowledge: dict[str, Any] = {}
        if "linear.weight" in arrays:
            knowledge["linear"] = LinearKnowledge(classes, arrays["linear.weight"], arrays["linear.bias"],
                                                  labels.get("linear") or "gold")
        if "prototypes" in arrays:
            knowledge["prototypes"] = PrototypeKnowledge(classes, arrays["prototypes"], labels.get("prototypes") or "gold")
        if "predictions" in arrays:
            knowledge["predictions"] = PredictionKnowledge(classes, arrays["predictions"], self._exp.anchor_hash,
                                                           labels.get("predictions") or "teacher")
        fit, accuracy, _ = self._fit_blocking(knowledge, arrays.get("teacher_anchors"))
        record = {k: doc.get(k) for k in ("teacher", "digest", "bytes_received", "packets", "fit_s", "teacher_model",
                                          "form", "labels", "teacher_round", "teacher_group")}
        record["accuracy"] = accuracy
        self._fit, self._accuracy, self._knowledge = fit, accuracy, knowledge
        digest = bytes.fromhex(doc["digest"])
        self._adopted = {**record, "digest_bytes": digest, "adopted_at_us": doc.get("saved_at_us"), "restored": True}
        self._remember_done((bytes.fromhex(doc["teacher"]), digest))
        self._hello_adopted_pending = True
        self._state = "adopted"
        log.info("transfer %s: restored knowledge of teacher %s from %s", self.name, doc["teacher"][:16], path)

    # ------------------------------------------------------------------------------------ serving

    async def classify(self, texts: Sequence[str]) -> dict[str, Any]:
        """Class scores for `texts` from the adopted knowledge (student) or the probe (teacher)."""
        check_classify_texts(texts)
        if self._trainer is not None:
            # the trained adapter answers, not the frozen probe it learnt beside
            out = await self._trainer.classify(texts)
            return {**out, "worker": self.name, "via": self._trainer.name, "role": self.cfg.role,
                    **({"teacher": self._adopted["teacher"]} if self._adopted is not None else {})}
        if self._fit is None and self._teacher is None:
            raise ControlError(f"worker {self.name} cannot classify yet ({self._state}"
                               f"{': ' + self._error if self._error else ''})")
        scores, classes = await self.ctx.run_blocking(self._scores, list(texts))
        self.ctx.metrics.inc("classified", len(texts))
        labels = [classes[int(i)] for i in scores.argmax(axis=1)]
        out = {"worker": self.name, "task": self.cfg.task, "role": self.cfg.role, "classes": list(classes),
               "labels": labels, "scores": [[round(float(v), 6) for v in row] for row in scores],
               # a frozen probe's outputs are regression scores (they can be negative or above 1)
               "score_kind": "score", "accuracy": self._accuracy}
        if self._adopted is not None:
            out["teacher"] = self._adopted["teacher"]
        return out

    def _scores(self, texts: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
        emb = self._embed(texts)
        if self._fit is not None:
            return self._fit.scores(emb), self._fit.classes
        assert self._teacher is not None
        return self._teacher.scores(self.space, emb, self.cfg.tau), self._teacher.linear.classes

    def status(self) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
            "role": cfg.role, "task": cfg.task, "topic": cfg.topic, "state": self._state, "model": cfg.model,
            "space": {"seed": self.space.seed, "dim": self.space.dim, "version": self.space.version,
                      "id": self.space.space_id.hex()},
            "accuracy": self._accuracy, "eval_size": len(self._eval.texts) if self._eval else 0,
            "refused": dict(self._refusals), "last_refusal": self._last_refusal,
        }
        if self._doing is not None:
            out["doing"] = self._doing
        if self._error:
            out["error"] = self._error
        if self._exp is not None:
            out["anchors"] = {"name": self._exp.anchor_set, "count": self._exp.anchor_count,
                              "hash": self._exp.anchor_hash.hex()}
        if cfg.role == "teacher":
            if cfg.trainer is not None:
                out.update(trainer=cfg.trainer, version=self._version, versions=self._versions)
            out.update(knowledge=list(cfg.knowledge), rounds=self._rounds, students=len(self._students),
                       digest=self._digest.hex() if self._digest else None, train_size=self._train_size,
                       train_accuracy=self._teacher.train_accuracy if self._teacher else None,
                       send_anchors=cfg.send_anchors)
            return out
        out["alignment"] = cfg.alignment
        out["frozen_route"] = self._keeps_route
        if cfg.learner is not None:
            # `accuracy` above is the frozen route's; the learner's adapter is what classify serves
            t = self._trainer
            out["learner"] = {"worker": cfg.learner, "taught": self._taught,
                              "accuracy": t.accuracy if t is not None else None,
                              "round": t.position.round if t is not None else None}
        if self._fit_error:
            out["last_fit_error"] = self._fit_error
        out["bytes_received_total"] = self.ctx.metrics.get("bytes_received") if self._ctx is not None else 0
        if self._adopted is not None:
            a = self._adopted
            out.update(teacher=a["teacher"], bytes_received=a["bytes_received"], form=a["form"],
                       labels=a["labels"], digest=a["digest"], teacher_model=a["teacher_model"],
                       adopted_at_us=a["adopted_at_us"], restored=bool(a.get("restored")),
                       teacher_round=a.get("teacher_round"))
        out["candidates"] = list(self._candidates.values())
        out["assembling"] = [{"teacher": t.hex(), **asm.progress()} for (t, _), asm in self._assemblies.items()]
        return out
