"""One peer's bounded send queue and the order frames leave in. Sans-IO: the link's writer task asks
`next_frame()` for what to write next; nothing here waits or touches a socket.

Two lanes:

- control: pings, pongs, byes and member announcements (hellos). Always written first, never dropped
  to make room for data. It has a hard cap of its own (`max_control_bytes`): a peer that reads nothing
  while we keep answering its pings must not grow our memory, and `put_control` returning False tells
  the link to give up on that peer.
- data: packets (own or forwarded), each an iterator of frames: one frame for a small packet, one per
  fragment for a large one (encoded lazily, as it is taken). Small packets go ahead of the fragments of
  a large one, so a large packet delays them by at most one fragment; `small_burst` small frames in a
  row are followed by one fragment, so a stream of small packets cannot starve a large one.

The data lane is bounded by packets (`max_packets`) and bytes (`max_bytes`, each packet charged its
full encoded size until its last frame is taken). When a new packet does not fit, it may push out
queued packets of strictly lower value, least valuable and then oldest first; a packet whose first
frame has been written is never pushed out (its remaining fragments would be useless to the peer
without the ones already sent, and vice versa). If even that does not make room, the new packet is
refused and nothing is evicted. A packet larger than `max_bytes` is admitted only into an empty data
lane (it then travels alone), so memory stays bounded by max(`max_bytes`, one packet). Value, lowest first:

    forwarded bulk  <  forwarded small  <  own bulk  <  own small

so under pressure a node stops relaying other nodes' large packets first and its own small packets
last. "bulk" = a packet that needs more than one frame (fragments).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["SendQueue", "Value", "value_of"]


class Value(IntEnum):
    """How much a queued packet is worth keeping under pressure (higher is kept longer)."""

    FORWARDED_BULK = 0
    FORWARDED = 1
    OWN_BULK = 2
    OWN = 3


def value_of(*, own: bool, bulk: bool) -> Value:
    if own:
        return Value.OWN_BULK if bulk else Value.OWN
    return Value.FORWARDED_BULK if bulk else Value.FORWARDED


@dataclass(slots=True, eq=False)
class _Item:
    frames: Iterator[bytes]
    size: int
    value: Value
    seq: int
    started: bool = False


@dataclass(slots=True)
class _Stats:
    packets_sent: int = 0
    evicted: Counter[str] = field(default_factory=Counter)   # by Value name
    refused: Counter[str] = field(default_factory=Counter)   # by Value name


class SendQueue:
    def __init__(self, max_packets: int, max_bytes: int, *, max_control_bytes: int | None = None,
                 small_burst: int = 8) -> None:
        if max_packets < 1 or max_bytes < 1 or small_burst < 1:
            raise ValueError("queue bounds must be positive")
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.max_control_bytes = max_control_bytes if max_control_bytes is not None else max(max_bytes // 4, 1 << 16)
        self._small_burst = small_burst
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._small: deque[_Item] = deque()
        self._bulk: deque[_Item] = deque()
        self._bytes = 0
        self._seq = 0
        self._smalls_in_a_row = 0
        self.stats = _Stats()

    # ---- state

    @property
    def packets(self) -> int:
        """Data packets queued (a partly sent large packet included)."""
        return len(self._small) + len(self._bulk)

    @property
    def bytes(self) -> int:
        """Bytes charged to queued data packets."""
        return self._bytes

    @property
    def control_bytes(self) -> int:
        return self._control_bytes

    def __bool__(self) -> bool:
        return bool(self._control or self._small or self._bulk)

    # ---- input

    def put_control(self, data: bytes, *, force: bool = False) -> bool:
        """Queue whole control frames; False (and nothing queued) if the control cap would be exceeded.
        `force` skips the cap (the final bye)."""
        if not data:
            return True
        if not force and self._control_bytes + len(data) > self.max_control_bytes:
            return False
        self._control.append(data)
        self._control_bytes += len(data)
        return True

    def put(self, frames: Iterator[bytes], size: int, *, own: bool, bulk: bool) -> bool:
        """Queue one data packet (its frames, its encoded size). False if refused (queue full)."""
        value = value_of(own=own, bulk=bulk)
        # A packet larger than the whole byte budget goes alone: admitted only into an empty data lane, so
        # memory stays bounded by max(max_bytes, one packet) and big packets are slow, not impossible.
        oversize_alone = size > self.max_bytes and not (self._small or self._bulk)
        if not oversize_alone and (size > self.max_bytes or not self._make_room(size, value)):
            self.stats.refused[value.name.lower()] += 1
            return False
        item = _Item(frames, size, value, self._seq)
        self._seq += 1
        (self._bulk if bulk else self._small).append(item)
        self._bytes += size
        return True

    def _make_room(self, size: int, value: Value) -> bool:
        free_packets = self.max_packets - self.packets
        free_bytes = self.max_bytes - self._bytes
        if free_packets >= 1 and free_bytes >= size:
            return True
        victims = sorted((i for q in (self._small, self._bulk) for i in q if i.value < value and not i.started),
                         key=lambda i: (i.value, i.seq))
        chosen: list[_Item] = []
        for victim in victims:
            if free_packets >= 1 and free_bytes >= size:
                break
            chosen.append(victim)
            free_packets += 1
            free_bytes += victim.size
        if free_packets < 1 or free_bytes < size:
            return False
        gone = {id(v) for v in chosen}
        self._small = deque(i for i in self._small if id(i) not in gone)
        self._bulk = deque(i for i in self._bulk if id(i) not in gone)
        for victim in chosen:
            self._bytes -= victim.size
            self.stats.evicted[victim.value.name.lower()] += 1
        return True

    def clear_data(self) -> int:
        """Forget every queued data packet (the link is closing); returns how many."""
        n = self.packets
        self._small.clear()
        self._bulk.clear()
        self._bytes = 0
        return n

    # ---- output

    def next_frame(self) -> bytes | None:
        """The next frame to write, or None when nothing is queued."""
        if self._control:
            data = self._control.popleft()
            self._control_bytes -= len(data)
            return data
        while self._small or self._bulk:
            take_small = bool(self._small) and (not self._bulk or self._smalls_in_a_row < self._small_burst)
            lane = self._small if take_small else self._bulk
            item = lane[0]
            frame = next(item.frames, None)
            if frame is None:                  # finished (or an empty iterator): release and go on
                lane.popleft()
                self._bytes -= item.size
                self.stats.packets_sent += 1
                continue
            item.started = True
            self._smalls_in_a_row = self._smalls_in_a_row + 1 if take_small else 0
            if take_small:                     # a small packet is one frame: done now
                lane.popleft()
                self._bytes -= item.size
                self.stats.packets_sent += 1
            return frame
        return None
