"""The link model over 10,000 simulated packets: measured loss, rate, delay and burst lengths match the
configured values within statistical tolerance; the same seed gives the same numbers."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from meshnode.net.sim.links import (
    DATAGRAM, PRESETS, DirectedLink, GilbertElliott, LatencyHistogram, LinkProfile, derive_rng,
)

N = 10_000


def link(seed: int = 1, **kw) -> DirectedLink:
    return DirectedLink(LinkProfile(**kw), derive_rng(seed, "test"))


def within(measured: float, expected: float, sigma: float, k: float = 4.5) -> bool:
    return abs(measured - expected) <= k * sigma


def test_bernoulli_datagram_loss_matches_the_configured_ratio() -> None:
    p = 0.1
    lk = link(mode=DATAGRAM, loss=p, mtu=1500)
    delivered = sum(not isinstance(lk.send_datagram(i * 1.0, 1000), str) for i in range(N))
    sigma = math.sqrt(p * (1 - p) / N)
    assert within(1 - delivered / N, p, sigma), delivered
    assert lk.stats.dropped["loss"] == N - delivered
    assert lk.stats.packets_sent == N     # deliveries are counted by the transport, when they happen


def test_a_datagram_is_lost_when_any_of_its_segments_is() -> None:
    p, seg = 0.02, 4                      # 4 segments of 1460 bytes each
    lk = link(mode=DATAGRAM, loss=p, mtu=1500, overhead=40, queue_bytes=1 << 20)
    delivered = sum(not isinstance(lk.send_datagram(i * 1.0, 4 * 1460), str) for i in range(N))
    expected = 1 - (1 - p) ** seg
    assert within(1 - delivered / N, expected, math.sqrt(expected * (1 - expected) / N))


def test_gilbert_elliott_mean_loss_and_burst_length() -> None:
    ge = GilbertElliott.from_mean(0.05, 4.0)
    assert ge.mean_loss == pytest.approx(0.05) and 1 / ge.p_leave_bad == pytest.approx(4.0)
    lk = link(mode=DATAGRAM, loss=0.05, burst=4.0)
    lost = [isinstance(lk.send_datagram(i * 1.0, 100), str) for i in range(N * 5)]
    bursts, run = [], 0
    for x in lost:
        if x:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    ratio = sum(lost) / len(lost)
    # Bursty loss: the variance of the mean is inflated by about (1 + rho) / (1 - rho), rho = 1 - p - r.
    rho = 1 - ge.p_enter_bad - ge.p_leave_bad
    sigma = math.sqrt(0.05 * 0.95 / len(lost) * (1 + rho) / (1 - rho))
    assert within(ratio, 0.05, sigma), ratio
    mean_burst = statistics.fmean(bursts)
    assert within(mean_burst, 4.0, statistics.stdev(bursts) / math.sqrt(len(bursts))), mean_burst
    # ... and it really is bursty: Bernoulli loss at 5% has mean runs of 1/(1-0.05) = 1.05
    assert mean_burst > 3.0


def test_rate_limit_and_delay_over_a_back_to_back_burst() -> None:
    rate, size, mtu = 1e6, 1000, 1500
    lk = link(mode=DATAGRAM, rate_bps=rate, delay=0.05, jitter=0.005, mtu=mtu, overhead=40, queue_bytes=1 << 30)
    arrivals = [lk.send_datagram(0.0, size)[0] for _ in range(N)]      # all offered at t = 0
    wire = size + 40
    span = arrivals[-1] - arrivals[0]
    measured_rate = (N - 1) * wire * 8 / span
    assert measured_rate == pytest.approx(rate, rel=0.01)
    # Latency minus queueing and serialisation is the propagation delay: mean 50 ms, sd 5 ms.
    prop = [a - (i + 1) * wire * 8 / rate for i, a in enumerate(arrivals)]
    assert within(statistics.fmean(prop), 0.05, 0.005 / math.sqrt(N))
    assert statistics.stdev(prop) == pytest.approx(0.005, rel=0.05)


def test_bounded_queue_tail_drops_what_does_not_fit() -> None:
    lk = link(mode=DATAGRAM, rate_bps=1e6, queue_bytes=10 * 1040, mtu=1500, overhead=40)
    outcomes = [lk.send_datagram(0.0, 1000) for _ in range(20)]
    assert sum(isinstance(o, str) for o in outcomes) == 10
    assert lk.stats.dropped == {"queue_full": 10}
    # Once the queue has drained, datagrams fit again.
    assert not isinstance(lk.send_datagram(1.0, 1000), str)


def test_reliable_stream_delivers_everything_and_pays_loss_in_time() -> None:
    p = 0.1
    lk = link(loss=p, rate_bps=10e6, delay=0.02, mtu=1500, overhead=40)
    segs = lk.send_stream(0.0, N * 1460)
    assert len(segs) == N and sum(s for _, s in segs) == N * 1460
    # Retransmissions per segment: geometric, mean p / (1 - p).
    per_seg = lk.stats.retransmissions / N
    sigma = math.sqrt(p / (1 - p) ** 2 / N)
    assert within(per_seg, p / (1 - p), sigma), per_seg
    late = [t for t, _ in segs]
    # A lost segment arrives at least one round trip later than it would have.
    baseline = [(i + 1) * 1500 * 8 / 10e6 + 0.02 for i in range(N)]
    assert sum(t > b + 0.039 for t, b in zip(late, baseline)) >= lk.stats.retransmissions * 0.9 / 1.2


def test_reliable_rate_is_capped_by_the_mathis_bound_under_loss() -> None:
    prof = LinkProfile(loss=0.01, rate_bps=100e6, delay=0.04, mtu=1500, overhead=40)
    lk = DirectedLink(prof, derive_rng(3, "m"))
    segs = lk.send_stream(0.0, N * 1460)
    goodput = N * 1460 * 8 / max(t for t, _ in segs)
    assert goodput < 100e6 * 0.5
    assert goodput == pytest.approx(prof.mathis_bps * 1460 / 1500, rel=0.1)


def test_cut_link_drops_datagrams_with_reason_partition() -> None:
    lk = link(mode=DATAGRAM)
    lk.up = False
    assert lk.send_datagram(0.0, 10) == "partition"
    assert lk.stats.dropped == {"partition": 1}


def test_duplication_and_reordering_rates() -> None:
    lk = link(mode=DATAGRAM, duplicate=0.05, reorder=0.1, delay=0.01)
    outs = [lk.send_datagram(i * 0.001, 100) for i in range(N)]
    dups = sum(len(o) == 2 for o in outs)
    assert within(dups / N, 0.05, math.sqrt(0.05 * 0.95 / N))
    assert within(lk.stats.reordered / N, 0.1, math.sqrt(0.1 * 0.9 / N))


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    def run(seed: int) -> dict:
        lk = DirectedLink(PRESETS["wan"], derive_rng(seed, "x"))
        lk.send_stream(0.0, 2_000_000)
        return lk.stats.to_dict()
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_derive_rng_does_not_depend_on_hash_randomisation() -> None:
    assert derive_rng(1, "link", "a", "b").random() == random.Random(
        int.from_bytes(__import__("hashlib").sha256(b"1/link/a/b").digest()[:16], "big")).random()


def test_latency_histogram_percentiles_within_two_percent() -> None:
    rng = random.Random(0)
    values = sorted(rng.expovariate(10) for _ in range(N))
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    for q in (50, 90, 99):
        exact = values[math.ceil(q / 100 * N) - 1]
        assert h.percentile(q) == pytest.approx(exact, rel=0.021)


@pytest.mark.parametrize("bad, key", [
    ({"loss": 1.5}, "loss"), ({"rate_bps": -1}, "rate_bps"), ({"mode": "tcp"}, "mode"), ({"mtu": 10}, "mtu"),
    ({"loss": 1.0}, "loss"), ({"burst": 0.5}, "burst"), ({"queue_bytes": 100}, "queue_bytes"),
])
def test_bad_profiles_name_the_field(bad: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        LinkProfile(**bad)


def test_presets_are_valid_and_documented() -> None:
    assert set(PRESETS) >= {"lan", "wifi", "wan", "lte", "lora"}
    for name, prof in PRESETS.items():
        assert prof.note, name
