"""What the simulated links carry, by packet kind: "this link spent 80% of its bytes on hellos" reads
straight from the report. Sans-IO, and cheap: only the frame length prefix and the packet header's
kind byte (and, for a hello, its origin) are looked at; bodies are never decoded.

A frame on the wire (SPEC §1, §2) starts:

    offset 0   u32 frame length
    offset 4   magic "MNPK", major, minor
    offset 10  kind (Kind in wire/packet.py)
    offset 44  origin (32 bytes), to offset 76

Kinds are the wire kinds by name, plus two of our own: "members", a hello whose origin is not the
node that sent it over this link (a relayed hello: a member announcement), told apart from the
sender's own "hello" because a mesh that churns sends far more of them; and "other", bytes that are
not a recognisable packet. A fragment is "fragment" whatever it is a piece of (that is in its body).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Final

from ...wire.packet import MAGIC, Kind

__all__ = ["CLASSES", "KINDS", "TRAFFIC_CLASS", "StreamKinds", "frame_kind", "traffic_class"]

_KIND_AT: Final = 10                   # in a framed packet: 4 (length) + 6
_ORIGIN_AT: Final = 44                 # 4 + 40
_HEAD: Final = 76                      # bytes of a frame needed to classify it: up to the end of the origin
_NAMES: Final[dict[int, str]] = {k.value: k.name.lower() for k in Kind}

# Every kind a link can report, in the order reports and plots list them. Fixed, so the per-link maps
# stay bounded whatever the peers send.
KINDS: Final[tuple[str, ...]] = (*_NAMES.values(), "members", "other")

# What each kind is for, to split a node's bytes into budgets (issue 15's scale benchmark): data (what
# workers publish, and the fragments it travels in), lazy (announcements of what a node has, and the
# pulls they cause), membership (hellos and relayed member announcements), control (keepalive, bye,
# acknowledgements). A kind the overlay adds is one line here; a kind missing here counts as "other"
# and the report lists it (mesh.unclassified_kinds), so a forgotten line shows.
TRAFFIC_CLASS: Final[dict[str, str]] = {
    "vectors": "data", "knowledge": "data", "delta": "data", "fragment": "data",
    "gossip": "lazy",           # ids held (have), ids pulled (want), graft / prune, peer addresses
    "hello": "membership", "members": "membership",
    "ping": "control", "pong": "control", "bye": "control", "ack": "control", "nack": "control",
    "other": "other",
}
CLASSES: Final[tuple[str, ...]] = ("data", "lazy", "membership", "control", "other")


def traffic_class(kind: str) -> str:
    return TRAFFIC_CLASS.get(kind, "other")


def frame_kind(head: bytes | bytearray | memoryview, sender: bytes | None = None) -> str:
    """The kind of the frame whose first bytes (its length prefix included) are `head`. With fewer
    than 11 bytes the kind is not known yet: "other". A hello is "members" when its origin is known
    (76 bytes) and is not `sender`."""
    if len(head) <= _KIND_AT or bytes(head[4:8]) != MAGIC:
        return "other"
    kind = _NAMES.get(head[_KIND_AT], "other")
    if kind == "hello" and sender is not None and len(head) >= _HEAD and bytes(head[_ORIGIN_AT:_HEAD]) != sender:
        return "members"
    return kind


class _Run:
    """Consecutive bytes of one frame in one write: mutable, as they are delivered a piece at a time."""

    __slots__ = ("ends", "kind", "left")

    def __init__(self, kind: str, left: int, ends: bool) -> None:
        self.kind = kind
        self.left = left          # bytes not delivered yet
        self.ends = ends          # the frame's last byte is in this run


class StreamKinds:
    """The kinds of one connection's byte stream (reliable mode), to attribute delivered segments,
    which cut frames anywhere, to the packets they carry. `wrote(data)` as the writer writes (in order),
    `take(n)` as n bytes are delivered (in order, never more than was written). Holds one small run
    per frame written and not yet delivered."""

    __slots__ = ("_done", "_head", "_runs", "_size", "sender", "sent")

    def __init__(self, sender: bytes | None = None, sent: Counter[str] | None = None) -> None:
        self.sender = sender
        self.sent = sent                             # bytes written by kind, when given (LinkStats.kind_bytes_sent)
        self._runs: deque[_Run] = deque()
        self._head = bytearray()                     # the current frame's first bytes (up to _HEAD)
        self._size: int | None = None                # the current frame's size, prefix included
        self._done = 0                               # bytes of the current frame written so far

    def wrote(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            part = 0
            if self._size is None:
                take = min(4 - len(self._head), end - pos)
                self._head += view[pos:pos + take]
                pos += take
                self._done += take
                part = take
                if len(self._head) < 4:
                    # A length prefix split across writes (a meshnode node writes whole frames, so
                    # this is someone else's writer): its bytes are "other".
                    self._runs.append(_Run("other", part, False))
                    if self.sent is not None:
                        self.sent["other"] += part
                    return
                # a frame of length 0 is invalid: count its prefix as a frame of its own
                self._size = 4 + int.from_bytes(self._head[:4], "little")
            more = min(end - pos, self._size - self._done)
            room = _HEAD - len(self._head)
            if room > 0:
                self._head += view[pos:pos + min(more, room)]
            pos += more
            self._done += more
            part += more
            finished = self._done == self._size
            # Bytes of a frame whose header is cut by the end of a write get the kind known so far.
            kind = frame_kind(self._head, self.sender)
            self._runs.append(_Run(kind, part, finished))
            if self.sent is not None:
                self.sent[kind] += part
            if finished:
                self._head = bytearray()
                self._size = None
                self._done = 0

    def take(self, nbytes: int) -> list[tuple[str, int, int]]:
        """Attribute `nbytes` delivered bytes: [(kind, bytes, packets completed)] in stream order."""
        out: dict[str, list[int]] = {}
        runs = self._runs
        while runs and (nbytes > 0 or runs[0].left == 0):
            run = runs[0]
            k = min(nbytes, run.left)
            run.left -= k
            nbytes -= k
            entry = out.setdefault(run.kind, [0, 0])
            entry[0] += k
            if run.left == 0:
                runs.popleft()
                if run.ends:
                    entry[1] += 1
        if nbytes > 0:                       # more delivered than written: cannot happen; never lose count
            out.setdefault("other", [0, 0])[0] += nbytes
        return [(kind, b, p) for kind, (b, p) in out.items()]

    def clear(self) -> None:
        """The connection is gone: nothing written will be delivered."""
        self._runs.clear()
        self._head = bytearray()
        self._size = None
        self._done = 0

    @property
    def undelivered(self) -> int:
        return sum(run.left for run in self._runs)
