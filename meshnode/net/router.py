"""Gossip routing decisions, sans-IO: duplicate and replay detection, forwarding, topic subscriptions.

The node asks `Router.accept(packet, now_us)` for every verified packet that arrives (and registers
its own with `remember`); the answer says whether it is new. A new packet is delivered to the local
subscribers of its topic and forwarded, with its hop limit decremented, to every other peer while the
hop limit lasts (`forward_raw`; a packet that arrives with hop limit 0 is delivered, not forwarded).

Replays. Packet ids are remembered for `window` seconds of *origin* time (the packet's timestamp),
so a packet seen once is refused as a duplicate while its id is remembered, and a packet older than
the window is refused as stale, because its id may have been forgotten. The memory is bounded
(`capacity` ids): when it is full the entry with the oldest timestamp is forgotten and the stale
horizon moves up to that timestamp, so the "a packet we cannot prove new is refused" rule holds even
under a flood, at the price of refusing genuinely new packets older than the horizon. A packet stamped
more than `window` seconds in the future is refused too (`future`): otherwise its id could be
remembered for arbitrarily long, and a node with a wrong clock is a problem the operator should see.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from ..wire.packet import Packet, set_hop_limit

__all__ = ["DedupCache", "Router", "Subscription", "Verdict"]

log = logging.getLogger(__name__)

PacketHandler = Callable[[Packet], Awaitable[None] | None]


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"
    FUTURE = "future"


class DedupCache:
    """Packet ids keyed by their origin timestamps; see the module docstring for the guarantees."""

    def __init__(self, capacity: int, window_s: float) -> None:
        if capacity < 1 or window_s <= 0:
            raise ValueError("capacity and window must be positive")
        self.capacity = capacity
        self.window_us = int(window_s * 1e6)
        self._ids: set[bytes] = set()
        self._by_time: list[tuple[int, bytes]] = []
        self.horizon_us = -1            # highest timestamp forgotten because the cache was full

    def __len__(self) -> int:
        return len(self._ids)

    def check(self, packet_id: bytes, timestamp_us: int, now_us: int) -> Verdict:
        """Classify and, when NEW, remember the id."""
        self._expire(now_us)
        if packet_id in self._ids:
            return Verdict.DUPLICATE
        if timestamp_us < now_us - self.window_us or timestamp_us <= self.horizon_us:
            return Verdict.STALE
        if timestamp_us > now_us + self.window_us:
            return Verdict.FUTURE
        self._ids.add(packet_id)
        heapq.heappush(self._by_time, (timestamp_us, packet_id))
        while len(self._ids) > self.capacity:
            ts, old = heapq.heappop(self._by_time)
            self._ids.discard(old)
            self.horizon_us = max(self.horizon_us, ts)
        return Verdict.NEW

    def _expire(self, now_us: int) -> None:
        oldest_ok = now_us - self.window_us
        heap = self._by_time
        while heap and heap[0][0] < oldest_ok:
            _, old = heapq.heappop(heap)
            self._ids.discard(old)


@dataclass(eq=False)
class Subscription:
    """Returned by `subscribe`; `cancel()` stops the deliveries."""

    topic: str
    handler: PacketHandler
    _router: Router | None = None

    def cancel(self) -> None:
        if self._router is not None:
            self._router._unsubscribe(self)
            self._router = None


class Router:
    def __init__(self, *, dedup_capacity: int, dedup_window_s: float) -> None:
        self.dedup = DedupCache(dedup_capacity, dedup_window_s)
        self._subs: dict[str, list[Subscription]] = {}

    def accept(self, packet: Packet, now_us: int) -> Verdict:
        return self.dedup.check(packet.packet_id, packet.header.timestamp_us, now_us)

    def remember(self, packet_id: bytes, timestamp_us: int, now_us: int) -> None:
        """Our own packets: a copy relayed back to us is then a duplicate."""
        self.dedup.check(packet_id, timestamp_us, now_us)

    @staticmethod
    def forward_raw(packet: Packet) -> bytes | None:
        """The packet as relayed (hop limit - 1), or None when its hop limit is spent."""
        hop = packet.header.hop_limit
        if hop <= 0:
            return None
        return set_hop_limit(packet.raw, hop - 1)

    # ---- topics

    def subscribe(self, topic: str, handler: PacketHandler) -> Subscription:
        if not isinstance(topic, str) or not 1 <= len(topic.encode("utf-8")) <= 256:
            raise ValueError("a topic is a string of 1..256 UTF-8 bytes")
        sub = Subscription(topic, handler, self)
        self._subs.setdefault(topic, []).append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]

    def subscribers(self, topic: str | None) -> list[Subscription]:
        if topic is None:
            return []
        return list(self._subs.get(topic, ()))

    @property
    def topics(self) -> list[str]:
        return sorted(self._subs)
