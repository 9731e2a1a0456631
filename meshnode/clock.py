"""Time as workers and the network see it: real (the event loop's clock) or virtual (the simulator's).

Everything that waits or timestamps goes through a Clock, so a simulated hour can pass in seconds
while timeouts, heartbeats and rate limits behave as they would in real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for timeouts and intervals)."""

    def wall_us(self) -> int:
        """Microseconds since the Unix epoch (for packet timestamps)."""

    async def sleep(self, seconds: float) -> None:
        """Wait this long on this clock."""


class RealClock:
    """The event loop's monotonic clock and the system's wall clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_us(self) -> int:
        return time.time_ns() // 1000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


REAL_CLOCK = RealClock()
