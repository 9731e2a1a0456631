"""Gossip routing decisions, sans-IO: duplicate and replay detection, forwarding, topic subscriptions.

The node asks `Router.accept(packet, now_us)` for every verified packet that arrives (and registers
its own with `remember`); the answer says whether it is new. A new packet is delivered to the local
subscribers of its topic and forwarded, with its hop limit decremented, while the hop limit lasts
(`forward_raw`; a packet that arrives with hop limit 0 is delivered, not forwarded).

Replays. Packet ids are remembered for `window` seconds of *origin* time (the packet's timestamp),
so a packet seen once is refused as a duplicate while its id is remembered, and a packet older than
the window is refused as stale, because its id may have been forgotten. A packet stamped more than
`max_future` seconds ahead of our clock is refused (`future`): its id would otherwise be remembered
for that much longer, and a wrong clock is a problem the operator should see.

Memory is bounded per origin and in all, and one origin's packets never push out another's. Each
origin holds at most `per_origin` ids; when it has more, *its* oldest id is forgotten and *its* stale
horizon moves up to that timestamp (so "a packet we cannot prove new is refused" still holds, for
that origin only). When all origins together hold `capacity` ids, the origin that holds the most
loses its oldest: a member flooding ids (or stamping them far ahead) only ever ages out its own.
Members are bounded too (`max_members`), so `capacity` is the bound on memory.

Restarts. With a `DedupJournal`, every id remembered is appended to a file in the node's data
directory, and a restarted node loads it: a packet it delivered before the restart is still a
duplicate after it (within the window), while packets published during the downtime are new.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..wire.packet import Packet, set_hop_limit

__all__ = ["DedupCache", "DedupJournal", "Router", "Subscription", "Verdict", "gossip_id"]

log = logging.getLogger(__name__)

PacketHandler = Callable[[Packet], Awaitable[None] | None]

# One origin's share of the id cache, as a fraction of it: 1/4 of the default 65536 is 16384 ids, 54
# packets per second for the whole 300 s window, which is what `origin_rate` (50/s) lets through,
# and far above what a worker publishes (a trainer sends a delta of a few packets every few seconds).
# Beyond it an origin's own horizon rises (its late copies are refused); a flood by several members
# shares the cache fairly (the biggest holder pays).
PER_ORIGIN_SHARE = 4
MIN_PER_ORIGIN = 64


def gossip_id(origin: bytes, packet_id: bytes) -> bytes:
    """The id the overlay announces and asks for (SPEC §6.1): a packet id alone is the origin's choice,
    so a member could publish its own packet under another member's id and have nodes believe they
    hold that one; bound to the origin, it cannot."""
    return hashlib.sha256(origin + packet_id).digest()[:16]


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"
    FUTURE = "future"


class _OriginIds:
    """One origin's remembered ids: a set, a heap by timestamp, and the origin's stale horizon."""

    __slots__ = ("ids", "by_time", "horizon_us")

    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        self.by_time: list[tuple[int, bytes]] = []
        self.horizon_us = -1            # highest timestamp forgotten because a bound was reached

    def forget_oldest(self) -> bytes:
        ts, old = heapq.heappop(self.by_time)
        self.ids.discard(old)
        self.horizon_us = max(self.horizon_us, ts)
        return old

    def expire(self, oldest_ok: int) -> list[bytes]:
        heap, gone = self.by_time, []
        while heap and heap[0][0] < oldest_ok:
            _, old = heapq.heappop(heap)
            self.ids.discard(old)
            gone.append(old)
        return gone


class DedupCache:
    """Packet ids by origin, keyed by their origin timestamps; see the module docstring for the guarantees."""

    def __init__(self, capacity: int, window_s: float, *, max_future_s: float | None = None,
                 per_origin: int | None = None) -> None:
        if capacity < 1 or window_s <= 0:
            raise ValueError("capacity and window must be positive")
        self.capacity = capacity
        self.window_us = int(window_s * 1e6)
        future = window_s if max_future_s is None else min(max_future_s, window_s)
        if future < 0:
            raise ValueError("max_future must not be negative")
        self.max_future_us = int(future * 1e6)
        self.per_origin = per_origin if per_origin is not None else \
            min(capacity, max(capacity // PER_ORIGIN_SHARE, MIN_PER_ORIGIN))
        self._origins: dict[bytes, _OriginIds] = {}
        self._known: set[bytes] = set()   # gossip ids of every id held: "have we seen it" for the overlay
        self._expired_at = -1
        self.floor_us = -1              # refuse everything at or below this (a journal that could not be read)

    def __len__(self) -> int:
        return len(self._known)

    def knows(self, gid: bytes) -> bool:
        """Whether a packet with this gossip id (`gossip_id`) is remembered."""
        return gid in self._known

    def held_by(self, origin: bytes) -> int:
        o = self._origins.get(origin)
        return len(o.ids) if o is not None else 0

    def horizon_of(self, origin: bytes) -> int:
        o = self._origins.get(origin)
        return max(o.horizon_us if o is not None else -1, self.floor_us)

    def seen(self, origin: bytes, packet_id: bytes) -> bool:
        o = self._origins.get(origin)
        return o is not None and packet_id in o.ids

    def classify(self, origin: bytes, packet_id: bytes, timestamp_us: int, now_us: int) -> Verdict:
        """What `check` would answer, without remembering anything."""
        o = self._origins.get(origin)
        if o is not None and packet_id in o.ids:
            return Verdict.DUPLICATE
        if timestamp_us < now_us - self.window_us or timestamp_us <= self.horizon_of(origin):
            return Verdict.STALE
        if timestamp_us > now_us + self.max_future_us:
            return Verdict.FUTURE
        return Verdict.NEW

    def check(self, origin: bytes, packet_id: bytes, timestamp_us: int, now_us: int) -> Verdict:
        """Classify and, when NEW, remember the id."""
        self._expire(now_us)
        verdict = self.classify(origin, packet_id, timestamp_us, now_us)
        if verdict is Verdict.NEW:
            self._add(origin, packet_id, timestamp_us)
        return verdict

    def _add(self, origin: bytes, packet_id: bytes, timestamp_us: int) -> None:
        o = self._origins.get(origin)
        if o is None:
            o = self._origins[origin] = _OriginIds()
        o.ids.add(packet_id)
        heapq.heappush(o.by_time, (timestamp_us, packet_id))
        self._known.add(gossip_id(origin, packet_id))
        if len(o.ids) > self.per_origin:
            self._known.discard(gossip_id(origin, o.forget_oldest()))
        while len(self._known) > self.capacity:
            # The origin holding the most pays: a flood ages out the flooder's own ids only.
            who, biggest = max(self._origins.items(), key=lambda kv: len(kv[1].ids))
            self._known.discard(gossip_id(who, biggest.forget_oldest()))

    def _expire(self, now_us: int) -> None:
        oldest_ok = now_us - self.window_us
        # Expiry walks every origin: at most once per 100 ms of clock, so a burst costs one pass.
        if self._expired_at >= 0 and now_us - self._expired_at < 100_000:
            return
        self._expired_at = now_us
        for origin, o in list(self._origins.items()):
            self._known.difference_update(gossip_id(origin, x) for x in o.expire(oldest_ok))
            if not o.ids and o.horizon_us < oldest_ok:
                del self._origins[origin]

    def entries(self) -> Iterator[tuple[bytes, bytes, int]]:
        """(origin, packet id, timestamp) of every remembered id."""
        for origin, o in self._origins.items():
            for ts, pid in o.by_time:
                if pid in o.ids:
                    yield origin, pid, ts

    def horizons(self) -> Iterator[tuple[bytes, int]]:
        """(origin, stale horizon) of every origin that has one."""
        for origin, o in self._origins.items():
            if o.horizon_us >= 0:
                yield origin, o.horizon_us

    def raise_horizon(self, origin: bytes, horizon_us: int) -> None:
        o = self._origins.get(origin)
        if o is None:
            o = self._origins[origin] = _OriginIds()
        o.horizon_us = max(o.horizon_us, horizon_us)


_RECORD = struct.Struct("<32s16sq")
# A record whose packet id is this carries an origin's stale horizon instead of an id: a rewrite keeps
# only the ids still held, and without it the ids an origin's own flood pushed out would be accepted
# again after a restart. (A real packet id is 128 random bits: this one is never chosen by chance, and
# a member that chooses it only raises its own horizon.)
_HORIZON = b"\xff" * 16


class DedupJournal:
    """The ids a node has remembered, appended to a file so that a restart does not forget them.

    Records are fixed-size (origin, packet id, timestamp); a torn last record (the process died
    mid-write) is ignored. The file is rewritten with only the ids still in the window when it holds
    more than twice the cache's capacity, so it stays within 2 x capacity x 56 bytes (7 MiB by default).
    Appends go straight to the OS (no buffering in the process), so a killed daemon loses nothing; a
    power cut can lose the last writes, which the OS had not flushed.
    """

    def __init__(self, path: Path, cache: DedupCache) -> None:
        self.path = path
        self._cache = cache
        self._fd: int | None = None
        self._records = 0

    def load(self, now_us: int) -> int:
        """Read the journal into the cache; returns the ids restored. An unreadable journal makes the
        cache refuse every packet stamped before `now_us` (it cannot prove them new) and is replaced."""
        restored = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as e:
            log.warning("cannot read the replay journal %s (%s): refusing packets stamped before now", self.path, e)
            self._cache.floor_us = now_us
            data = b""
        usable = len(data) - len(data) % _RECORD.size
        oldest_ok = now_us - self._cache.window_us
        for origin, pid, ts in _RECORD.iter_unpack(memoryview(data)[:usable]):
            if pid == _HORIZON:
                if ts >= oldest_ok:
                    self._cache.raise_horizon(origin, ts)
            elif ts >= oldest_ok and self._cache.check(origin, pid, ts, now_us) is Verdict.NEW:
                restored += 1
        self._rewrite()
        return restored

    def append(self, origin: bytes, packet_id: bytes, timestamp_us: int) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, _RECORD.pack(origin, packet_id, timestamp_us))
        except OSError as e:   # a full disk must not stop the mesh: the in-memory cache still works
            log.warning("replay journal %s: %s; it is off until the next start", self.path, e)
            self.close()
            return
        self._records += 1
        if self._records > 2 * self._cache.capacity:
            self._rewrite()

    def _rewrite(self) -> None:
        self.close()
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                n = 0
                for origin, horizon in self._cache.horizons():
                    f.write(_RECORD.pack(origin, _HORIZON, horizon))
                    n += 1
                for origin, pid, ts in self._cache.entries():
                    f.write(_RECORD.pack(origin, pid, ts))
                    n += 1
            os.replace(tmp, self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._records = n
        except OSError as e:
            log.warning("replay journal %s: %s; replays are refused until a restart only", self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
    def __init__(self, *, dedup_capacity: int, dedup_window_s: float, max_future_s: float | None = None) -> None:
        self.dedup = DedupCache(dedup_capacity, dedup_window_s, max_future_s=max_future_s)
        self.journal: DedupJournal | None = None
        self._subs: dict[str, list[Subscription]] = {}

    def open_journal(self, path: Path, now_us: int) -> int:
        """Remember ids across restarts in `path`; returns how many were restored from it."""
        self.journal = DedupJournal(path, self.dedup)
        return self.journal.load(now_us)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def accept(self, packet: Packet, now_us: int) -> Verdict:
        return self._check(packet.origin, packet.packet_id, packet.header.timestamp_us, now_us)

    def remember(self, origin: bytes, packet_id: bytes, timestamp_us: int, now_us: int) -> None:
        """Our own packets: a copy relayed back to us is then a duplicate."""
        self._check(origin, packet_id, timestamp_us, now_us)

    def _check(self, origin: bytes, packet_id: bytes, timestamp_us: int, now_us: int) -> Verdict:
        verdict = self.dedup.check(origin, packet_id, timestamp_us, now_us)
        if verdict is Verdict.NEW and self.journal is not None:
            self.journal.append(origin, packet_id, timestamp_us)
        return verdict

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
