"""Simulated time for asyncio: an event loop whose clock is virtual and which jumps to the next timer
whenever nothing is ready, so an hour of heartbeats on a 50 kbit/s link passes in seconds of wall time.

Everything asyncio times (call_later, asyncio.sleep, asyncio.timeout, wait_for) reads `loop.time()`,
so it all runs on the virtual clock unchanged. The jump happens inside the selector: asked to wait
`timeout` seconds for I/O, it polls the real selector without waiting and, if nothing is ready, moves
the clock forward by `timeout` instead of sleeping.

Real work still takes real time: while a job runs in an executor (a worker's torch code, `to_thread`)
or the loop has nothing scheduled at all (it can only be waiting for real I/O such as the control
socket), the selector waits for real and the virtual clock advances by the real time that passed. So
a simulated training step costs what it costs on this machine, and heartbeats keep their meaning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["EPOCH_US", "VirtualClock", "VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")

# Virtual wall time starts at 2025-01-01T00:00:00Z, so timestamps and certificate windows are the same
# on every run (the simulator issues its certificates for this date).
EPOCH_US = 1_735_689_600 * 1_000_000
# While callbacks keep the loop busy, the real selector is polled on every this many turns only.
REAL_POLL_EVERY = 16


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector; see the module docstring."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._inner = inner
        self._loop = loop
        self._busy_turns = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self._loop
        if loop.real_jobs > 0:
            events = self._inner.select(timeout)
            loop.account_real_time()
            return events
        if timeout is None:
            t0 = time.monotonic()
            events = self._inner.select(timeout)
            loop.advance(time.monotonic() - t0)
            return events
        if timeout == 0:
            # Callbacks are ready: the loop only asks whether real I/O is ready too. Real I/O here is
            # rare (a control socket, an executor's wake-up, whose callback is queued anyway), so look
            # every REAL_POLL_EVERY-th time: a system call per loop turn was a tenth of a busy run.
            self._busy_turns += 1
            if self._busy_turns < REAL_POLL_EVERY:
                return []
        self._busy_turns = 0
        events = self._inner.select(0)
        if not events and timeout > 0:
            loop.advance(timeout)
        return events

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (seconds, starting at `start`)."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        self.real_jobs = 0            # executor jobs in flight: time runs at real speed meanwhile
        self._real_mark = 0.0         # real time up to which the clock has counted those jobs
        super().__init__(_VirtualSelector(selectors.DefaultSelector(), self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds

    def run_in_executor(self, executor: concurrent.futures.Executor | None, func: Callable[..., T],
                        *args: Any) -> asyncio.Future[T]:
        if self.real_jobs == 0:
            self._real_mark = time.monotonic()   # before the job can start
        future = super().run_in_executor(executor, func, *args)
        self.real_jobs += 1
        future.add_done_callback(self._job_done)
        return future

    def account_real_time(self) -> None:
        """While executor jobs run, every real second counts, inside the selector or not: a loaded
        machine spends real time between selects too, and a job must not look shorter than it was."""
        now = time.monotonic()
        self.advance(now - self._real_mark)
        self._real_mark = now

    def _job_done(self, _: asyncio.Future[Any]) -> None:
        self.account_real_time()
        self.real_jobs -= 1


class VirtualClock:
    """The meshnode Clock over the running loop's time: monotonic = loop time, wall = EPOCH + loop time.
    Works on any loop; on a VirtualTimeLoop it is simulated time."""

    def __init__(self, epoch_us: int = EPOCH_US) -> None:
        self.epoch_us = epoch_us

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_us(self) -> int:
        return self.epoch_us + int(round(asyncio.get_running_loop().time() * 1e6))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """asyncio.run(main) on a VirtualTimeLoop."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
