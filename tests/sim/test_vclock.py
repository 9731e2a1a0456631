"""The virtual-time event loop."""

from __future__ import annotations

import asyncio
import time

from meshnode.net.sim.vclock import EPOCH_US, VirtualClock, run_virtual


def test_timers_jump_and_asyncio_timeouts_use_virtual_time() -> None:
    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(86_400)
        t1 = loop.time()
        timed_out = False
        try:
            async with asyncio.timeout(5):
                await asyncio.sleep(60)
        except TimeoutError:
            timed_out = True
        return t1, loop.time(), timed_out

    t0 = time.monotonic()
    t1, t2, timed_out = run_virtual(main())
    assert t1 == 86_400 and t2 == 86_405 and timed_out
    assert time.monotonic() - t0 < 10       # a simulated day did not take a real one


def test_order_of_timers_is_kept() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        out: list[int] = []
        for i, delay in enumerate((3.0, 1.0, 2.0, 1.0)):
            loop.call_later(delay, out.append, i)
        await asyncio.sleep(4)
        return out
    assert run_virtual(main()) == [1, 3, 2, 0]


def test_executor_work_takes_real_time_on_the_virtual_clock() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        t = loop.time()
        await asyncio.to_thread(time.sleep, 0.05)
        return loop.time() - t
    elapsed = run_virtual(main())
    assert 0.05 <= elapsed < 5       # not jumped ahead to some far timer, not zero


def test_virtual_clock_wall_time_starts_at_the_epoch() -> None:
    async def main() -> tuple[int, float]:
        clock = VirtualClock()
        await clock.sleep(2.5)
        return clock.wall_us(), clock.monotonic()
    wall, mono = run_virtual(main())
    assert mono == 2.5 and wall == EPOCH_US + 2_500_000
