"""LogLimiter: a repeated event is logged once, then at most once per interval with the count held back;
a new reason is news; all groups together stay under a rate, and memory stays bounded."""

from __future__ import annotations

from meshnode.log_limit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_first_then_once_per_interval_with_the_count() -> None:
    clock = Clock()
    lim = LogLimiter(clock, interval=600.0)
    assert lim.allow("peer", "refused") == 0
    for _ in range(99):
        clock.t += 5.0                      # a backoff step
        assert lim.allow("peer", "refused") is None
    clock.t += 600.0
    assert lim.allow("peer", "refused") == 99
    assert lim.held_back == 99


def test_a_new_reason_or_another_group_is_news() -> None:
    clock = Clock()
    lim = LogLimiter(clock)
    assert lim.allow("a", "refused") == 0
    assert lim.allow("a", "timeout") == 0
    assert lim.allow("b", "refused") == 0
    assert lim.allow("a", "refused") is None and lim.allow("a", "timeout") is None


def test_forget_makes_the_next_failure_news() -> None:
    lim = LogLimiter(Clock())
    assert lim.allow("a", "refused") == 0
    lim.forget("a")
    assert lim.allow("a", "refused") == 0


def test_many_groups_share_a_rate_and_memory_is_bounded() -> None:
    clock = Clock()
    lim = LogLimiter(clock, burst=5, window=60.0, max_groups=100, max_reasons=2)
    allowed = [lim.allow(("host", i), "not_tls") for i in range(1000)]   # an attacker with many addresses
    assert sum(a is not None for a in allowed) == 5
    assert lim.held_back == 995
    assert len(lim._groups) == 100
    clock.t += 12.0                         # the rate refills: one more line per 12 s
    assert lim.allow(("host", 999), "not_tls") == 1   # and it says what was held back for it
    for r in range(10):
        clock.t += 60.0
        lim.allow("one", f"reason{r}")
    assert len(lim._groups["one"]) == 2
