"""Counters and gauges that the control API serves as JSON (and, later, as Prometheus text)."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Metrics:
    """A flat namespace of monotonically increasing counters and last-value gauges.

    Names use dots for structure (`packets.dropped.bad_signature`); a snapshot is a plain dict so it
    can go straight into JSON.
    """

    def __init__(self) -> None:
        self._counters: Counter[str] = Counter()
        self._gauges: dict[str, Any] = {}

    def inc(self, name: str, amount: int | float = 1) -> None:
        self._counters[name] += amount

    def set(self, name: str, value: Any) -> None:
        self._gauges[name] = value

    def get(self, name: str, default: Any = 0) -> Any:
        if name in self._gauges:
            return self._gauges[name]
        return self._counters.get(name, default)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        out.update(self._gauges)
        return dict(sorted(out.items()))
