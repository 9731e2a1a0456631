"""The trainer's messages and round bookkeeping, sans IO: `delta` bodies in, typed messages and
decisions out. No sockets, no clocks (times are passed in), no torch.

Every message is a `delta` packet on `trainer/<task>` (protocol/SPEC.md §4); `meta.kind` says which:

| kind               | tensors                          | meta besides kind, group, schema, round, base, weight |
|--------------------|----------------------------------|-------------------------------------------------------|
| `hello`            | none                             | `joining` bool                                        |
| `delta`            | one fused record per chunk       | `part` [a, b], `align`, `steps`, `loss`, `arm`        |
| `snapshot-request` | none                             | `to` (node id)                                        |
| `snapshot`         | fp32, one fused record per chunk | `to`, `part` [a, b], `align`                          |

`group` (the Delta's field) is a hash of the base model's fingerprint, the task and the classes:
nodes of another group are not ours and are ignored. `schema` is a hash of the adapter's tensor
names, shapes and dtypes and the LoRA config: same group with another schema is refused with a
reason. A chunk's `part` names the range [a, b) of the schema's sorted tensors its fused record
holds (`align` their padding), so a sender's chunking needs no agreement. (`round`, `base`,
`weight`) is where the sender's synchronised adapter stands: its round, a digest of its values and
how many deltas were merged into it since the start; receivers compare positions to notice a node
that fell behind or diverged (see `lineage_winner`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..hdc.delta import FUSED_NAME, MAX_BLOCK, Layout, decode_delta
from ..wire.errors import WireError
from ..wire.packet import Delta, DeltaTensor

__all__ = [
    "GroupKey", "Position", "Hello", "DeltaChunk", "SnapshotRequest", "SnapshotChunk", "TrainerRefused", "NotOurs",
    "parse_message", "hello_body", "request_body", "chunk_bodies", "partition", "Assembly", "RoundBook",
    "lineage_winner", "digest_of",
]

MAX_CHUNKS = 4096
MAX_PENDING = 64          # incomplete assemblies kept at once (oldest dropped first)
ROUND_WINDOW = 4          # deltas for rounds this far ahead of ours are kept; farther ones dropped


class TrainerRefused(Exception):
    """A message of our group this node will not use; `code` is stable, `detail` for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


class NotOurs(Exception):
    """A message of another sync group (another base model or task): not an error."""


@dataclass(frozen=True)
class GroupKey:
    """What a node syncs: group id, schema hash, and the schema's sorted (name, shape) entries."""

    topic: str
    group: bytes
    schema: bytes
    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def build(cls, topic: str, fingerprint: str, task: str, classes: Sequence[str],
              tensors: Mapping[str, Any], lora: Mapping[str, Any]) -> GroupKey:
        group = hashlib.sha256("\n".join(["meshnode/trainer/v1", fingerprint, task, *classes]).encode()).digest()[:16]
        entries = tuple((n, tuple(int(s) for s in np.shape(tensors[n]))) for n in sorted(tensors))
        dtypes = [str(getattr(tensors[n], "dtype", "float32")).removeprefix("torch.") for n in sorted(tensors)]
        text = [f"{n}:{','.join(map(str, s))}:{d}" for (n, s), d in zip(entries, dtypes)]
        text += [f"{k}={lora[k]}" for k in sorted(lora)]
        schema = hashlib.sha256("\n".join(["meshnode/trainer/schema/v1", *text]).encode()).digest()[:16]
        return cls(topic, group, schema, entries)

    @property
    def layout(self) -> Layout:
        return Layout(self.entries)

    def sublayout(self, part: tuple[int, int], align: int) -> Layout:
        a, b = part
        return Layout(self.entries[a:b], align)


@dataclass(frozen=True)
class Position:
    round: int
    base: bytes
    weight: int

    def rank(self, node_id: bytes) -> tuple[int, int, bytes]:
        """Orders lineages: later round, then more merged deltas, then the smaller node id wins."""
        return self.round, self.weight, bytes(255 - c for c in node_id)


@dataclass(frozen=True)
class Hello:
    position: Position
    joining: bool


@dataclass(frozen=True)
class DeltaChunk:
    position: Position
    chunk: int
    chunks: int
    part: tuple[int, int]
    align: int
    body: Delta
    steps: int
    loss: float | None
    arm: str


@dataclass(frozen=True)
class SnapshotRequest:
    position: Position
    to: bytes


@dataclass(frozen=True)
class SnapshotChunk:
    position: Position
    to: bytes
    chunk: int
    chunks: int
    part: tuple[int, int]
    align: int
    body: Delta


Message = Hello | DeltaChunk | SnapshotRequest | SnapshotChunk


def digest_of(layout: Layout, tensors: Mapping[str, np.ndarray]) -> bytes:
    """Digest of an adapter's float32 values in layout order: equal digests, equal adapters."""
    return hashlib.sha256(layout.fuse(tensors).tobytes()).digest()[:16]


# ------------------------------------------------------------------------------------------ encode


def _meta(key: GroupKey, kind: str, pos: Position, **more: Any) -> dict[str, Any]:
    return {"kind": kind, "schema": key.schema, "base": pos.base, "weight": pos.weight, **more}


def hello_body(key: GroupKey, pos: Position, *, joining: bool) -> Delta:
    return Delta(key.topic, key.group, pos.round, 0, 1, "fp32", (), _meta(key, "hello", pos, joining=joining))


def request_body(key: GroupKey, pos: Position, to: bytes) -> Delta:
    return Delta(key.topic, key.group, pos.round, 0, 1, "fp32", (), _meta(key, "snapshot-request", pos, to=to))


def partition(key: GroupKey, max_values: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the schema's tensors with at most `max_values` values each (a tensor
    bigger than that alone in its range)."""
    parts: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, (_, shape) in enumerate(key.entries):
        n = math.prod(shape)
        if i > start and size + n > max_values:
            parts.append((start, i))
            start, size = i, 0
        size += n
    if key.entries:
        parts.append((start, len(key.entries)))
    return parts


def chunk_bodies(key: GroupKey, kind: str, pos: Position, records: Sequence[DeltaTensor], wire_codec: str,
                 parts: Sequence[tuple[int, int]], align: int, codec_meta: Mapping[str, Any],
                 **more: Any) -> list[Delta]:
    """One body per part (records[i] is part i's fused record), for `delta` or `snapshot`."""
    n = len(parts)
    return [Delta(key.topic, key.group, pos.round, i, n, wire_codec, (rec,),
                  {**codec_meta, **_meta(key, kind, pos, part=list(part), align=align,
                                         layout=key.sublayout(part, align).digest, **more)})
            for i, (rec, part) in enumerate(zip(records, parts))]


# ------------------------------------------------------------------------------------------ decode


def _get(meta: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    v = meta.get(name)
    if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
        raise TrainerRefused("bad_message", f"meta.{name} is missing or not a {getattr(kind, '__name__', kind)}")
    return v


def _node_id(meta: Mapping[str, Any]) -> bytes:
    to = _get(meta, "to", bytes)
    if len(to) != 32:
        raise TrainerRefused("bad_message", "meta.to is not a 32-byte node id")
    return bytes(to)


def _part(key: GroupKey, body: Delta, meta: Mapping[str, Any]) -> tuple[tuple[int, int], int]:
    part = meta.get("part")
    if (not isinstance(part, list) or len(part) != 2 or not all(type(x) is int for x in part)
            or not 0 <= part[0] < part[1] <= len(key.entries)):
        raise TrainerRefused("bad_message", f"meta.part must be [a, b] with 0 <= a < b <= {len(key.entries)}")
    align = _get(meta, "align", int)
    if not 1 <= align <= MAX_BLOCK:
        raise TrainerRefused("bad_message", f"meta.align must be in 1..{MAX_BLOCK}")
    if not 1 <= body.chunks <= min(MAX_CHUNKS, len(key.entries)):
        raise TrainerRefused("bad_message", f"{body.chunks} chunks for {len(key.entries)} tensors")
    if len(body.tensors) != 1 or body.tensors[0].name != FUSED_NAME:
        raise TrainerRefused("bad_message", f"a chunk holds one fused record named {FUSED_NAME!r}")
    return (part[0], part[1]), align


def parse_message(body: Delta, key: GroupKey) -> Message:
    """The message in a `delta` body on our topic. Raises NotOurs for another group, TrainerRefused
    for our group with another schema or a malformed message. Tensor payloads are not decoded here
    (see Assembly.decode)."""
    if body.group != key.group:
        raise NotOurs()
    meta = body.meta if isinstance(body.meta, dict) else {}
    schema = meta.get("schema")
    if schema != key.schema:
        shown = schema.hex() if isinstance(schema, bytes) else repr(schema)[:40]
        raise TrainerRefused("schema_mismatch", f"adapter schema {shown} differs from ours {key.schema.hex()} "
                                                "(LoRA rank, alpha, targets or the classifier head differ)")
    base = _get(meta, "base", bytes)
    weight = _get(meta, "weight", int)
    if len(base) != 16 or weight < 0:
        raise TrainerRefused("bad_message", "meta.base must be 16 bytes and meta.weight >= 0")
    pos = Position(body.round, bytes(base), weight)
    kind = meta.get("kind")
    if kind == "hello":
        return Hello(pos, bool(meta.get("joining", False)))
    if kind == "snapshot-request":
        return SnapshotRequest(pos, _node_id(meta))
    if kind == "delta":
        part, align = _part(key, body, meta)
        loss = meta.get("loss")
        steps = meta.get("steps", 0)
        arm = meta.get("arm", body.codec)
        return DeltaChunk(pos, body.chunk, body.chunks, part, align, body,
                          steps if type(steps) is int else 0,
                          float(loss) if isinstance(loss, float) and math.isfinite(loss) else None,
                          arm[:40] if isinstance(arm, str) else body.codec)
    if kind == "snapshot":
        part, align = _part(key, body, meta)
        if body.codec != "fp32":
            raise TrainerRefused("bad_message", "a snapshot is sent in fp32")
        return SnapshotChunk(pos, _node_id(meta), body.chunk, body.chunks, part, align, body)
    raise TrainerRefused("bad_message", f"unknown meta.kind {str(kind)[:40]!r}")


@dataclass
class Assembly:
    """The chunks of one sender's delta (or snapshot) for one position."""

    sender: bytes
    position: Position
    chunks: int
    updated: float
    parts: dict[int, DeltaChunk | SnapshotChunk] = field(default_factory=dict)
    nbytes: int = 0

    def add(self, msg: DeltaChunk | SnapshotChunk, nbytes: int, now: float) -> None:
        if msg.chunks != self.chunks:
            raise TrainerRefused("bad_message", f"chunk count changed from {self.chunks} to {msg.chunks}")
        if msg.chunk not in self.parts:
            self.parts[msg.chunk] = msg
            self.nbytes += nbytes
        self.updated = now

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.chunks

    def decode(self, key: GroupKey) -> dict[str, np.ndarray]:
        """The float32 tensors of a complete assembly; its parts must tile the schema exactly."""
        ordered = [self.parts[i] for i in range(self.chunks)]
        at = 0
        for m in ordered:
            if m.part[0] != at:
                raise TrainerRefused("bad_message", "chunk parts do not tile the adapter's tensors")
            at = m.part[1]
        if at != len(key.entries):
            raise TrainerRefused("bad_message", "chunk parts do not cover the adapter's tensors")
        out: dict[str, np.ndarray] = {}
        for m in ordered:
            try:
                out.update(decode_delta(m.body, layout=key.sublayout(m.part, m.align)))
            except WireError as e:
                raise TrainerRefused("bad_delta", str(e)) from None
        return out


@dataclass(frozen=True)
class Member:
    last_seen: float
    position: Position


class RoundBook:
    """Who is in the group and which deltas arrived for which round.

    Completion: a round is complete when every live member (heard within `member_timeout`) has sent
    its delta for it. The merge takes, in node-id order, the deltas whose base equals ours: a node on
    another lineage cannot be averaged with (its delta is relative to other values); it will catch
    up instead."""

    def __init__(self, self_id: bytes, member_timeout: float) -> None:
        self.self_id = self_id
        self.member_timeout = member_timeout
        self.members: dict[bytes, Member] = {}
        self.received: dict[int, dict[bytes, tuple[bytes, dict[str, np.ndarray]]]] = {}

    def heard(self, node_id: bytes, position: Position, now: float) -> None:
        self.members[node_id] = Member(now, position)

    def live(self, now: float) -> dict[bytes, Member]:
        return {n: m for n, m in self.members.items() if now - m.last_seen <= self.member_timeout}

    def add(self, round_: int, sender: bytes, base: bytes, tensors: dict[str, np.ndarray], current: int) -> bool:
        """Keep a decoded delta; False (dropped) when its round is over or too far ahead."""
        if not current <= round_ < current + ROUND_WINDOW:
            return False
        self.received.setdefault(round_, {})[sender] = (base, tensors)
        return True

    def senders(self, round_: int) -> set[bytes]:
        return set(self.received.get(round_, {}))

    def complete(self, round_: int, now: float) -> bool:
        return set(self.live(now)) <= self.senders(round_)

    def missing(self, round_: int, now: float) -> list[bytes]:
        return sorted(set(self.live(now)) - self.senders(round_))

    def merge(self, round_: int, base: bytes, own: dict[str, np.ndarray]
              ) -> tuple[dict[str, np.ndarray], list[bytes], list[bytes]]:
        """(mean delta, senders merged in order, senders refused for another base); forgets the round."""
        got = self.received.pop(round_, {})
        got[self.self_id] = (base, own)
        used = sorted(n for n, (b, _) in got.items() if b == base)
        other = sorted(n for n, (b, _) in got.items() if b != base)
        mean = {}
        for name in own:
            acc = np.zeros_like(own[name], dtype=np.float32)
            for n in used:
                acc += got[n][1][name]
            mean[name] = acc / np.float32(len(used))
        return mean, used, other

    def forget_before(self, round_: int) -> None:
        for r in [r for r in self.received if r < round_]:
            del self.received[r]


def lineage_winner(self_id: bytes, own: Mapping[int, Position], peers: Iterable[tuple[bytes, Position]]
                   ) -> bytes | None:
    """The peer this node should fetch a snapshot from, or None when its own lineage stands.

    `own` is this node's position at each recent round (its latest the highest). A peer two or more
    rounds past our latest means this node fell behind (it was away). A peer at one of our recent
    rounds with another base is a divergent lineage (the nodes merged different sets of deltas, or
    started from different weights): the higher `Position.rank` at that round wins. Every node ranks
    the same positions the same way, so a split group converges on one lineage. A peer one round
    ahead is ordinary slack."""
    latest = own[max(own)]
    best: tuple[tuple[int, int, bytes], bytes] | None = None
    for node_id, pos in peers:
        if pos.round >= latest.round + 2:
            wins = True
        elif pos.round in own and pos.base != own[pos.round].base:
            wins = pos.rank(node_id) > own[pos.round].rank(self_id)
        else:
            wins = False
        if wins:
            cand = (pos.rank(node_id), node_id)
            if best is None or cand > best:
                best = cand
    return best[1] if best else None
