"""What the demo shows of a running mesh: snapshots built from what each node says about itself
(`Node.workers()` and `Node.counters()`, the same answers a daemon's control socket gives), and their
history. Pure: both the loopback path (control sockets) and the simulator path (in-process nodes) feed it.

Everything here comes from a node, so every value is checked for its type, not trusted."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["History", "NodeView", "Snapshot", "WorkerView", "node_view"]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _int(v: Any) -> int:
    n = _num(v)
    return int(n) if n is not None and n >= 0 else 0


def _str(v: Any, limit: int = 80) -> str | None:
    return str(v)[:limit] if isinstance(v, str) and v else None


@dataclass(frozen=True)
class WorkerView:
    name: str
    type: str
    state: str                  # the node's view (running / failed / ...) or, while running, the worker's own
    doing: str | None           # what "preparing" is busy with
    model: str | None
    round: int | None
    rounds_target: int | None
    accuracy: float | None
    initial_accuracy: float | None
    delta_bytes: int            # a trainer's own delta packets, as sent
    fp32_bytes: int             # what the same rounds would have sent as fp32 (trainable x 4 bytes per round)
    taught: bool                # a learner that has rows from a teacher
    error: str | None

    @property
    def finished(self) -> bool:
        """A trainer that reached its rounds: its state says "done", or "stopped" (once the run ended)
        with its round at the target. Its position passes the last round before that round's eval
        ends, so the round alone is not enough: the demo would stop a trainer still evaluating and
        show the eval before as its result."""
        return self.state == "done" or (self.state == "stopped" and self.round is not None
                                        and self.rounds_target is not None and self.round >= self.rounds_target)


@dataclass(frozen=True)
class NodeView:
    name: str
    up: bool
    peers: int
    bytes_sent: int             # every byte of every link of the node (session frames, before TLS)
    bytes_received: int
    workers: tuple[WorkerView, ...] = ()

    def worker(self, name: str) -> WorkerView | None:
        return next((w for w in self.workers if w.name == name), None)


@dataclass(frozen=True)
class Snapshot:
    time: float                 # seconds since the demo's mesh started (simulated seconds under --sim)
    nodes: dict[str, NodeView]


def _worker_view(entry: Mapping[str, Any]) -> WorkerView:
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
    outer = _str(entry.get("state")) or "?"
    inner = _str(status.get("state"))
    state = inner if outer == "running" and inner else outer
    rounds_sent = _int(metrics.get("rounds"))
    trainable = _int(status.get("trainable"))
    target = _int(status.get("rounds_target")) or None
    rnd = status.get("round")
    return WorkerView(
        name=_str(entry.get("name")) or "?", type=_str(entry.get("type")) or "?", state=state,
        doing=_str(status.get("doing"), 60), model=_str(status.get("model")),
        round=_int(rnd) if _num(rnd) is not None else None, rounds_target=target,
        accuracy=_num(status.get("accuracy")), initial_accuracy=_num(status.get("initial_accuracy")),
        delta_bytes=_int(metrics.get("bytes_sent")), fp32_bytes=rounds_sent * trainable * 4,
        taught=isinstance(status.get("taught"), dict),
        error=_str(entry.get("error"), 200) or _str(status.get("error"), 200))


def node_view(name: str, workers: Sequence[Any] | None, counters: Mapping[str, Any] | None,
              *, up: bool = True) -> NodeView:
    """A node's view from its `workers` and `counters` answers (None when it did not answer)."""
    c = counters if isinstance(counters, Mapping) else {}
    views = tuple(_worker_view(w) for w in (workers or ()) if isinstance(w, Mapping))
    return NodeView(name=name, up=up and counters is not None, peers=_int(c.get("peers")),
                    bytes_sent=_int(c.get("bytes.sent")), bytes_received=_int(c.get("bytes.received")),
                    workers=views)


@dataclass
class History:
    """Curves over the snapshots seen: per (node, worker) accuracy as a step function (a point when it
    changes), per node the wire bytes at each of those points and at the end."""

    accuracy: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)  # "node/worker" -> (t, acc, bytes)
    last: Snapshot | None = None

    def add(self, snap: Snapshot) -> None:
        self.last = snap
        for node in snap.nodes.values():
            wire = node.bytes_sent + node.bytes_received
            for w in node.workers:
                if w.type != "trainer" or w.accuracy is None:
                    continue
                points = self.accuracy.setdefault(f"{node.name}/{w.name}", [])
                if not points or points[-1][1] != w.accuracy:
                    points.append((round(snap.time, 2), w.accuracy, wire))

    def curves(self) -> dict[str, list[tuple[float, float, int]]]:
        """The accuracy series, each carried on to the last snapshot (its time and the node's bytes
        then), so a step plot shows how long a value held and what the node spent meanwhile."""
        out = {k: list(v) for k, v in self.accuracy.items()}
        if self.last is None:
            return out
        for key, points in out.items():
            node = self.last.nodes.get(key.split("/", 1)[0])
            if points and node is not None and node.up and points[-1][0] < self.last.time:
                points.append((round(self.last.time, 2), points[-1][1], node.bytes_sent + node.bytes_received))
        return out
