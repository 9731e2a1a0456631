"""The transfer worker's messages, sans-IO: building them (teacher, student) and checking what arrives.

All traffic of one task goes on one topic, `transfer/<task>`. Three messages, each an ordinary body
kind of the wire protocol (no new packet kinds), told apart by `meta["kind"]`:

- anchor chunk  (`vectors`, meta kind "anchors"): rows `start .. start+count-1` of the teacher's
  ternary anchor vectors, in its HDC space. A teacher splits its N x D block into chunks of at most
  `chunk_bytes` packed bytes, so every packet stays well under 4 MiB (the wire then fragments each).
- knowledge     (`knowledge`, meta kind "knowledge"): one per form (linear, prototypes,
  predictions), bound to the anchor set by `anchor_hash` and to the space by `meta["space"]`.
- student hello (`vectors` with zero vectors, meta kind "student"): "I am a student of this task, in
  this space, with this anchor set, and I want anchors (to fit a map) or only predictions". A hello
  with `adopted` tells teachers which version it already has, so they stop sending it.

Every teacher message carries `digest`: a hash of the teacher's content (anchor vectors and all its
knowledge), which groups chunks and knowledge of one version across republishing rounds; chunks of a
round that got lost are filled in by the next one.

`check_*` turn a received body into a typed message or raise `TransferRefused` with a stable `code`
(counted by the worker as `refused.<code>`): the receiver compares the space, the dimension and the
anchor set with its own before it allocates anything sized by the message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hdc.knowledge import (
    KnowledgeError,
    LinearKnowledge,
    PredictionKnowledge,
    PrototypeKnowledge,
    from_body,
)
from ..hdc.space import Space
from ..wire.errors import PacketError, Reason
from ..wire.packet import Knowledge, VectorBlock, Vectors

__all__ = [
    "FORMS",
    "MAX_CHUNK_BYTES",
    "TOPIC_PREFIX",
    "AnchorChunk",
    "Assembly",
    "Expectation",
    "KnowledgeForm",
    "KnowledgeOffer",
    "StudentHello",
    "TransferRefused",
    "anchor_chunks",
    "check_knowledge",
    "check_task_name",
    "check_vectors",
    "content_digest",
    "knowledge_bodies",
    "student_hello",
    "topic_for",
    "with_digest",
]

TOPIC_PREFIX = "transfer/"
FORMS = ("linear", "prototypes", "predictions")
MAX_CHUNK_BYTES = 3 << 20      # packed trits per anchor chunk: the packet stays well under 4 MiB
DIGEST_LEN = 16
_TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

KnowledgeForm = LinearKnowledge | PrototypeKnowledge | PredictionKnowledge


class TransferRefused(PacketError):
    """A transfer message that this node will not use; `code` names why (stable, used in counters)."""

    def __init__(self, code: str, message: str, reason: Reason = Reason.BAD_BODY) -> None:
        super().__init__(reason, message)
        self.code = code
        self.detail = message


def check_task_name(task: str) -> str:
    if not isinstance(task, str) or not _TASK.match(task):
        raise ValueError(f"task name {task!r} must be 1-64 of A-Z a-z 0-9 . _ - (letter or digit first)")
    return task


def topic_for(task: str) -> str:
    return TOPIC_PREFIX + check_task_name(task)


@dataclass(frozen=True)
class Expectation:
    """What a node knows locally and requires of every message on its task's topic."""

    task: str
    space: Space
    anchor_set: str
    anchor_count: int
    anchor_hash: bytes

    def meta(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "task": self.task, "anchor_set": self.anchor_set, "anchor_count": self.anchor_count,
                "anchor_hash": self.anchor_hash,
                "space": {"id": self.space.space_id, "seed": self.space.seed, "dim": self.space.dim,
                          "version": self.space.version}}


@dataclass(frozen=True)
class AnchorChunk:
    digest: bytes
    start: int
    trits: np.ndarray        # (count, D) int8


@dataclass(frozen=True)
class KnowledgeOffer:
    digest: bytes
    form: str
    knowledge: KnowledgeForm
    info: dict[str, Any]     # the teacher's description: model, train_size, labels kind (for status only)


@dataclass(frozen=True)
class StudentHello:
    wants: str               # "anchors" | "predictions"
    adopted: bytes | None    # digest the student already adopted from some teacher


# ------------------------------------------------------------------------------------------ building


def _knowledge_content(body: Knowledge) -> list[bytes]:
    parts = [body.form.encode(), "\x00".join(body.classes).encode()]
    for name in ("weight", "bias", "predictions"):
        t = getattr(body, name)
        parts.append(b"" if t is None else t.dtype.encode() + repr(t.shape).encode() + t.data)
    parts.append(b"" if body.vectors is None else body.vectors.to_trits().tobytes())
    return parts


def content_digest(exp: Expectation, anchor_trits: np.ndarray | None, bodies: list[Knowledge]) -> bytes:
    """16 bytes naming one version of a teacher's content (same content, same digest, across restarts)."""
    h = hashlib.sha256(b"meshnode/transfer/v1\x00" + exp.space.space_id + exp.anchor_hash)
    if anchor_trits is not None:
        h.update(np.ascontiguousarray(anchor_trits, dtype=np.int8).tobytes())
    for body in bodies:
        for part in _knowledge_content(body):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.digest()[:DIGEST_LEN]


def rows_per_chunk(dim: int, chunk_bytes: int) -> int:
    # dense2 (4 trits a byte) is the largest packing `auto` can choose, so this bounds every encoding
    return max(1, chunk_bytes // math.ceil(dim / 4))


def anchor_chunks(topic: str, exp: Expectation, trits: np.ndarray, digest: bytes, chunk_bytes: int) -> list[Vectors]:
    """The teacher's (N, D) ternary anchor block as `vectors` bodies of at most `chunk_bytes` packed bytes."""
    n, d = trits.shape
    if (n, d) != (exp.anchor_count, exp.space.dim):
        raise ValueError(f"anchor block is {n} x {d}, expected {exp.anchor_count} x {exp.space.dim}")
    step = rows_per_chunk(d, chunk_bytes)
    count = math.ceil(n / step)
    out = []
    for i, start in enumerate(range(0, n, step)):
        block = VectorBlock.from_trits(trits[start:start + step], exp.space.space_id)
        meta = {**exp.meta("anchors"), "digest": digest, "start": start, "chunk": i, "chunks": count}
        out.append(Vectors(topic=topic, vectors=block, meta=meta))
    return out


def knowledge_bodies(topic: str, exp: Expectation, forms: dict[str, KnowledgeForm], *, half: bool,
                     info: dict[str, Any]) -> list[Knowledge]:
    """One `knowledge` body per form, without digest (see `with_digest`)."""
    out = []
    for form, k in forms.items():
        if isinstance(k, LinearKnowledge):
            body = k.to_body(topic, exp.task, half=half)
        elif isinstance(k, PrototypeKnowledge):
            body = k.to_body(topic, exp.task, exp.space)
        else:
            body = k.to_body(topic, exp.task, half=half)
        if body.form != form:
            raise ValueError(f"knowledge for form {form!r} encodes as {body.form!r}")
        meta = {**(body.meta or {}), **exp.meta("knowledge"), "info": info}
        out.append(dataclasses.replace(body, anchor_hash=exp.anchor_hash, meta=meta))
    return out


def with_digest(bodies: list[Knowledge], digest: bytes) -> list[Knowledge]:
    return [dataclasses.replace(b, meta={**(b.meta or {}), "digest": digest}) for b in bodies]


def student_hello(topic: str, exp: Expectation, wants: str, adopted: bytes | None = None) -> Vectors:
    if wants not in ("anchors", "predictions"):
        raise ValueError(f"wants must be 'anchors' or 'predictions', got {wants!r}")
    meta = {**exp.meta("student"), "wants": wants}
    if adopted is not None:
        meta["adopted"] = adopted
    block = VectorBlock.from_trits(np.zeros((0, exp.space.dim), np.int8), exp.space.space_id)
    return Vectors(topic=topic, vectors=block, meta=meta)


# ------------------------------------------------------------------------------------------ checking


def _meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise TransferRefused("bad_meta", "a transfer message needs a meta map")
    return meta


def _check_common(meta: dict[str, Any], exp: Expectation, *, dim: int | None, space_id: bytes | None) -> None:
    """Task, dimension, space and anchor set, in that order, each with its own reason code."""
    task = meta.get("task")
    if task != exp.task:
        raise TransferRefused("task_mismatch", f"message for task {str(task)[:64]!r}, this worker does {exp.task!r}")
    space = meta.get("space")
    if not isinstance(space, dict):
        raise TransferRefused("bad_meta", "meta.space must be a map {id, seed, dim, version}")
    if dim is None:
        dim = space.get("dim")
    if dim != exp.space.dim:
        raise TransferRefused("dim_mismatch", f"sender's space is {str(dim)[:20]}-d, this node's is {exp.space.dim}-d",
                              Reason.BAD_DIMENSION)
    sid = space.get("id") if space_id is None else space_id
    if sid != exp.space.space_id or space.get("id") != exp.space.space_id:
        raise TransferRefused("space_mismatch", f"sender's space (seed {str(space.get('seed'))[:24]}, version "
                              f"{str(space.get('version'))[:8]}) is not this node's (seed {exp.space.seed}, "
                              f"version {exp.space.version}, D {exp.space.dim})")
    ah = meta.get("anchor_hash")
    if ah != exp.anchor_hash:
        shown = ah.hex()[:16] if isinstance(ah, bytes) else "none"
        raise TransferRefused("anchor_hash_mismatch", f"sender's anchor set {str(meta.get('anchor_set'))[:64]!r} "
                              f"(hash {shown}) is not this node's {exp.anchor_set!r} (hash "
                              f"{exp.anchor_hash.hex()[:16]}): the anchor files differ")
    if meta.get("anchor_count") != exp.anchor_count:
        raise TransferRefused("anchor_count_mismatch", f"sender has {str(meta.get('anchor_count'))[:20]} anchors, "
                              f"this node {exp.anchor_count}")


def _digest(meta: dict[str, Any]) -> bytes:
    d = meta.get("digest")
    if type(d) is not bytes or len(d) != DIGEST_LEN:
        raise TransferRefused("bad_meta", f"meta.digest must be {DIGEST_LEN} bytes")
    return d


def check_vectors(body: Vectors, exp: Expectation) -> AnchorChunk | StudentHello:
    meta = _meta(body.meta)
    kind = meta.get("kind")
    if kind not in ("anchors", "student"):
        raise TransferRefused("bad_meta", f"unknown transfer message kind {str(kind)[:32]!r} on a vectors body")
    block = body.vectors
    _check_common(meta, exp, dim=block.dim, space_id=block.space)
    if kind == "student":
        if block.count != 0:
            raise TransferRefused("bad_meta", "a student hello carries no vectors")
        wants = meta.get("wants")
        if wants not in ("anchors", "predictions"):
            raise TransferRefused("bad_meta", f"wants must be 'anchors' or 'predictions', got {str(wants)[:32]!r}")
        adopted = meta.get("adopted")
        if adopted is not None and (type(adopted) is not bytes or len(adopted) != DIGEST_LEN):
            raise TransferRefused("bad_meta", f"adopted must be {DIGEST_LEN} bytes")
        return StudentHello(wants, adopted)
    digest = _digest(meta)
    start = meta.get("start")
    if type(start) is not int or start < 0 or block.count < 1 or start + block.count > exp.anchor_count:
        raise TransferRefused("bad_chunk", f"chunk rows {str(start)[:20]}+{block.count} do not fit "
                              f"{exp.anchor_count} anchors")
    return AnchorChunk(digest, start, block.to_trits())


def check_knowledge(body: Knowledge, exp: Expectation) -> KnowledgeOffer:
    if body.task != exp.task:
        raise TransferRefused("task_mismatch", f"knowledge for task {body.task[:64]!r}, this worker does {exp.task!r}")
    meta = _meta(body.meta)
    if meta.get("kind") != "knowledge":
        raise TransferRefused("bad_meta", "knowledge without meta.kind 'knowledge'")
    if body.anchor_hash != meta.get("anchor_hash"):
        raise TransferRefused("bad_meta", "anchor_hash and meta.anchor_hash disagree")
    dim = None
    if body.form == "linear" and body.weight is not None and len(body.weight.shape) == 2:
        dim = body.weight.shape[1]
    elif body.form == "prototypes" and body.vectors is not None:
        dim = body.vectors.dim
    _check_common(meta, exp, dim=dim, space_id=body.vectors.space if body.vectors is not None else None)
    digest = _digest(meta)
    try:
        k = from_body(body, space=exp.space, expected_anchor_hash=exp.anchor_hash, anchor_count=exp.anchor_count)
    except KnowledgeError as e:
        raise TransferRefused("bad_knowledge", str(e)) from None
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    return KnowledgeOffer(digest, body.form, k, info)


# ------------------------------------------------------------------------------------------ assembly


class Assembly:
    """What one teacher version (teacher node id, digest) has delivered so far, bounded by the
    receiver's own anchor count and dimension (never by what the sender claims)."""

    def __init__(self, teacher: bytes, digest: bytes, anchor_count: int, dim: int, now: float) -> None:
        self.teacher = teacher
        self.digest = digest
        self.anchor_count = anchor_count
        self.dim = dim
        self.anchors: np.ndarray | None = None   # allocated by the first chunk
        self.have = np.zeros(anchor_count, dtype=bool)
        self.knowledge: dict[str, KnowledgeOffer] = {}
        self.bytes = 0
        self.packets = 0
        self.updated = now

    def add_chunk(self, chunk: AnchorChunk) -> None:
        if self.anchors is None:
            self.anchors = np.zeros((self.anchor_count, self.dim), dtype=np.int8)
        stop = chunk.start + chunk.trits.shape[0]
        self.anchors[chunk.start:stop] = chunk.trits
        self.have[chunk.start:stop] = True

    def add_knowledge(self, offer: KnowledgeOffer) -> None:
        self.knowledge[offer.form] = offer

    @property
    def anchors_complete(self) -> bool:
        return bool(self.have.all())

    def ready_for(self, needs_anchors: bool) -> bool:
        if needs_anchors:
            return self.anchors_complete and ("linear" in self.knowledge or "prototypes" in self.knowledge)
        return "predictions" in self.knowledge

    def progress(self) -> dict[str, Any]:
        return {"anchors": f"{int(self.have.sum())}/{self.anchor_count}", "forms": sorted(self.knowledge),
                "bytes": self.bytes}
