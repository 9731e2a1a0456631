"""Capped exponential backoff with jitter, for redialling peers. Pure: the caller sleeps."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays min, 2*min, 4*min ... capped at max, each drawn from [d/2, d] ("equal jitter"), so that
    nodes that lost each other at the same moment do not redial in lockstep. Seed the rng for tests."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng
        self._current = minimum

    def next(self) -> float:
        d = self._current
        self._current = min(self._current * 2, self.maximum)
        return d / 2 + self._rng.uniform(0, d / 2)

    def reset(self) -> None:
        self._current = self.minimum
