"""Token buckets per key (an origin node id), sans-IO: the caller passes the time.

A member that holds a valid certificate can sign as many packets as its CPU allows; every node that
forwards them spends its uplink, its peers' queues and their CPU on them. `OriginRates` gives each
origin a rate (packets and bytes per second) with a burst of `burst_s` seconds' worth; past it the
origin's packets are dropped at each hop (counted), so one flooding member cannot starve the links
of everyone else, and its flood dies out within a hop instead of reaching the whole mesh.

Memory: one bucket per origin seen, at most `max_keys` (least recently used forgotten: a forgotten
origin starts with a full bucket again, which grants it one burst more, not more than that per
`max_keys` distinct origins, and origins are members, whose number is bounded by `max_members`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["OriginRates", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float            # tokens per second
    capacity: float        # the burst
    tokens: float
    at: float              # when `tokens` was last brought up to date

    def take(self, n: float, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate) if now > self.at else self.tokens
        self.at = max(self.at, now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class OriginRates:
    def __init__(self, packets_per_s: float, bytes_per_s: float, *, burst_s: float = 2.0,
                 max_keys: int = 4096) -> None:
        if packets_per_s <= 0 or bytes_per_s <= 0 or burst_s <= 0 or max_keys < 1:
            raise ValueError("rates, burst and max_keys must be positive")
        self.packets_per_s = packets_per_s
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[TokenBucket, TokenBucket]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, size: int, now: float) -> bool:
        """Charge one packet of `size` bytes to `key`; False (nothing charged) when it is over its rate.
        A packet larger than the byte burst is let through when the byte bucket is full, so a large
        packet is never refused for its size alone."""
        pair = self._buckets.get(key)
        if pair is None:
            pb, bb = self.packets_per_s * self.burst_s, self.bytes_per_s * self.burst_s
            pair = (TokenBucket(self.packets_per_s, pb, pb, now), TokenBucket(self.bytes_per_s, bb, bb, now))
            self._buckets[key] = pair
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        packets, octets = pair
        charge = min(float(size), octets.capacity)
        if not packets.take(1.0, now):
            return False
        if not octets.take(charge, now):
            packets.tokens += 1.0   # refund: nothing was let through
            return False
        return True
