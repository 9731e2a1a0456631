"""Bounded logging of events that repeat: a static peer that is down, a stranger that keeps knocking.

One line per attempt would bury everything else in the log, and anyone who can open a TCP connection
(or, worse, holds a member certificate) could fill the disk. So a line about (group, reason) goes out
the first time, then at most once per `interval` seconds, telling how many were held back meanwhile;
a new reason for the same group is news and goes out at once. On top of that all groups together get
at most `burst` lines per `window` seconds, because an attacker controls how many groups there are
(source addresses, advertised node ids). Memory is bounded too: at most `max_groups` groups (the least
recently used is forgotten) and `max_reasons` reasons per group.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["LogLimiter"]


@dataclass
class _Seen:
    last: float | None = None   # when a line about it last went out; None: never
    held: int = 0               # lines held back since


class LogLimiter:
    def __init__(self, now: Callable[[], float], *, interval: float = 600.0, burst: int = 20,
                 window: float = 60.0, max_groups: int = 1024, max_reasons: int = 8) -> None:
        self.interval = interval
        self._now = now
        self._groups: OrderedDict[Hashable, dict[str, _Seen]] = OrderedDict()
        self._max_groups = max_groups
        self._max_reasons = max_reasons
        self._burst = float(burst)
        self._rate = burst / window
        self._tokens = float(burst)
        self._refilled: float | None = None   # not read at construction: a virtual clock may not run yet
        self.held_back = 0   # lines held back since start, all groups together

    def allow(self, group: Hashable, reason: str) -> int | None:
        """None: stay quiet. Otherwise write the line; the number is how many lines about this group and
        reason were held back since the last one that went out."""
        now = self._now()
        reasons = self._groups.get(group)
        if reasons is None:
            reasons = self._groups[group] = {}
            while len(self._groups) > self._max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(group)
        seen = reasons.get(reason)
        if seen is None:
            while len(reasons) >= self._max_reasons:
                del reasons[next(iter(reasons))]
            seen = reasons[reason] = _Seen()
        due = seen.last is None or now - seen.last >= self.interval
        if not due or not self._take(now):
            seen.held += 1
            self.held_back += 1
            return None
        held, seen.last, seen.held = seen.held, now, 0
        return held

    def forget(self, group: Hashable) -> None:
        """The trouble with `group` is over (a peer reached again): its next failure is news."""
        self._groups.pop(group, None)

    def _take(self, now: float) -> bool:
        if self._refilled is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
