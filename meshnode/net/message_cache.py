"""The recent packets a node can give again: to a lazy peer that asks for one it missed, to a peer whose
link opens after a partition or a restart, and to a peer whose send queue had no room for it when it
arrived. Sans-IO; the caller passes the time.

Bounded in bytes (`max_bytes`) and per origin (`max_bytes / per_origin_share`), and by age: a packet
older than the replay window is of no use (every receiver refuses it as stale) and is dropped. When a
bound is hit the oldest packets of the origin that holds the most bytes go first, so one member's
large or numerous packets never push out another's.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["MessageCache"]


@dataclass(frozen=True, slots=True)
class _Entry:
    origin: bytes
    timestamp_us: int
    raw: bytes


class MessageCache:
    def __init__(self, max_bytes: int, window_s: float, *, per_origin_share: int = 4) -> None:
        if max_bytes < 1 or window_s <= 0 or per_origin_share < 1:
            raise ValueError("cache bounds must be positive")
        self.max_bytes = max_bytes
        self.per_origin_bytes = max(max_bytes // per_origin_share, 1)
        self.window_us = int(window_s * 1e6)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()         # insertion (arrival) order
        self._by_origin: dict[bytes, OrderedDict[bytes, None]] = {}
        self._origin_bytes: dict[bytes, int] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, packet_id: object) -> bool:
        return packet_id in self._entries

    def get(self, packet_id: bytes) -> bytes | None:
        e = self._entries.get(packet_id)
        return e.raw if e is not None else None

    def size_of(self, packet_id: bytes) -> int | None:
        e = self._entries.get(packet_id)
        return len(e.raw) if e is not None else None

    def ids(self, now_us: int) -> list[bytes]:
        """Every id still worth announcing (within the window), oldest first."""
        self.expire(now_us)
        oldest_ok = now_us - self.window_us
        return [pid for pid, e in self._entries.items() if e.timestamp_us >= oldest_ok]

    def put(self, packet_id: bytes, origin: bytes, timestamp_us: int, raw: bytes, now_us: int) -> bool:
        """Keep a packet; False when it cannot be kept (larger than an origin's share, or too old)."""
        size = len(raw)
        if packet_id in self._entries or size > self.per_origin_bytes or timestamp_us < now_us - self.window_us:
            return False
        self._entries[packet_id] = _Entry(origin, timestamp_us, raw)
        self._by_origin.setdefault(origin, OrderedDict())[packet_id] = None
        self._origin_bytes[origin] = self._origin_bytes.get(origin, 0) + size
        self.bytes += size
        while self._origin_bytes[origin] > self.per_origin_bytes:
            self._drop_oldest_of(origin)
        while self.bytes > self.max_bytes:
            self._drop_oldest_of(max(self._origin_bytes, key=self._origin_bytes.__getitem__))
        self.expire(now_us)
        return packet_id in self._entries

    def expire(self, now_us: int) -> None:
        oldest_ok = now_us - self.window_us
        # Arrival order is close to timestamp order; an early-stamped packet that arrived late waits at
        # most until the entries before it expire, which the byte bounds already cover.
        while self._entries:
            pid, e = next(iter(self._entries.items()))
            if e.timestamp_us >= oldest_ok:
                break
            self._remove(pid)

    def _drop_oldest_of(self, origin: bytes) -> None:
        self._remove(next(iter(self._by_origin[origin])))

    def _remove(self, packet_id: bytes) -> None:
        e = self._entries.pop(packet_id)
        mine = self._by_origin[e.origin]
        del mine[packet_id]
        self._origin_bytes[e.origin] -= len(e.raw)
        self.bytes -= len(e.raw)
        if not mine:
            del self._by_origin[e.origin]
            del self._origin_bytes[e.origin]
