"""The link model of the simulated network. Sans-IO: every method takes `now` and returns times; nothing
here sleeps, schedules or reads a clock, so the statistics can be tested over many packets in
microseconds and the same seed always gives the same numbers.

One `DirectedLink` is one direction between two hosts. Everything sent that way shares it:

    bottleneck   a FIFO that serialises `wire bytes * 8 / rate_bps` seconds per segment, bounded by
                 `queue_bytes`; a datagram that does not fit is tail-dropped ("queue_full")
    loss         per segment (one MTU-sized piece of what is sent): Bernoulli, or Gilbert-Elliott
                 (a two-state Markov chain, good and bad, with a loss probability in each state)
    propagation  `delay` plus Gaussian jitter (never negative)
    cut          while cut nothing gets through (partitions)

and two delivery modes:

- reliable (stream semantics, like TCP): a lost segment is not lost, it is late. Its first loss is
  repaired by fast retransmit about one round trip later; each further loss of the same segment waits
  a retransmission timeout that doubles each time (RFC 6298: max(min_rto, srtt + 4 rttvar), capped
  at 120 s as Linux does). Every retransmission occupies the bottleneck again. Order is kept per
  connection by the caller (head-of-line blocking: a segment is never delivered before the one
  ahead of it). With loss, the sending rate is also capped at the Mathis et al. (1997) steady-state
  TCP throughput `MSS / RTT * sqrt(3 / (2 p))`, because real TCP halves its window on loss; a link
  that loses nothing runs at the line rate. Duplication and reordering are absorbed by TCP and have
  no effect in this mode.
- datagram (lost is lost): a datagram (one whole frame) is lost when any of its segments is lost, as
  an IP-fragmented UDP datagram is. It may be duplicated and reordered.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .kinds import KINDS

__all__ = [
    "DATAGRAM", "PRESETS", "RELIABLE", "DirectedLink", "GilbertElliott", "LatencyHistogram", "LinkProfile",
    "LinkStats", "derive_rng", "preset",
]

RELIABLE = "reliable"
DATAGRAM = "datagram"
Mode = Literal["reliable", "datagram"]

RTO_MAX_S = 120.0          # Linux TCP_RTO_MAX
MAX_RETRANSMISSIONS = 15   # Linux tcp_retries2: past this a real stack resets the connection; we deliver anyway


def derive_rng(seed: int, *labels: str) -> random.Random:
    """A Random seeded from the scenario seed and a label path. Uses SHA-256, not hash(): str hashes are
    salted per process, so they would break "same seed, same run" across processes."""
    digest = hashlib.sha256(("/".join([str(seed), *labels])).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty loss: a good and a bad state; the chain steps once per segment, then the segment is lost
    with the probability of the state it is in."""

    p_enter_bad: float             # P(good -> bad) per segment
    p_leave_bad: float             # P(bad -> good) per segment; 1 / mean bad-period length in segments
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{f.name}: must be in 0..1, got {v}")
        if self.p_leave_bad <= 0.0:
            raise ValueError("p_leave_bad: must be > 0 (the bad state must end)")

    @classmethod
    def from_mean(cls, loss: float, burst: float) -> GilbertElliott:
        """The simple Gilbert model with a given mean loss ratio and mean burst length (segments):
        every segment is lost in the bad state, none in the good one."""
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss: must be in 0..1 (exclusive) for bursty loss, got {loss}")
        if burst < 1.0:
            raise ValueError(f"burst: a mean burst length is >= 1 segment, got {burst}")
        r = 1.0 / burst
        p = r * loss / (1.0 - loss)
        if p > 1.0:
            raise ValueError(f"loss {loss} with burst {burst} is not reachable (needs P(good->bad) = {p:.3f} > 1)")
        return cls(p_enter_bad=p, p_leave_bad=r)

    @property
    def stationary_bad(self) -> float:
        total = self.p_enter_bad + self.p_leave_bad
        return self.p_enter_bad / total if total > 0 else 0.0

    @property
    def mean_loss(self) -> float:
        pb = self.stationary_bad
        return (1.0 - pb) * self.loss_good + pb * self.loss_bad


@dataclass(frozen=True)
class LinkProfile:
    """What one directed link does. Times in seconds, rates in bit/s, sizes in bytes."""

    rate_bps: float = 0.0          # 0 = no rate limit
    delay: float = 0.0             # one-way propagation delay
    jitter: float = 0.0            # standard deviation of the Gaussian added to `delay`
    loss: float = 0.0              # mean loss ratio per segment
    burst: float = 1.0             # mean loss burst length in segments; > 1 makes the loss Gilbert-Elliott
    gilbert_elliott: GilbertElliott | None = None   # explicit chain; replaces loss/burst
    duplicate: float = 0.0         # datagram mode: probability a datagram arrives twice
    reorder: float = 0.0           # datagram mode: probability a datagram is held back (arrives late)
    queue_bytes: int = 256 * 1024  # bottleneck queue (datagram) / send buffer (reliable)
    mtu: int = 1500                # wire bytes per segment, headers included
    overhead: int = 40             # header bytes per segment (IPv4 + TCP = 40)
    mode: Mode = RELIABLE
    min_rto: float = 0.2           # Linux's minimum retransmission timeout
    note: str = ""                 # where the numbers come from (presets)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ValueError(f"{key}: {problem}, got {getattr(self, key)!r}")

        for key in ("rate_bps", "delay", "jitter", "min_rto"):
            v = getattr(self, key)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0, key,
                 "must be a finite number >= 0")
        for key in ("loss", "duplicate", "reorder"):
            v = getattr(self, key)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0, key,
                 "must be a probability in 0..1")
        need(self.loss < 1.0 or self.mode == DATAGRAM, "loss",
             "must be < 1 in reliable mode (cut the link for a partition)")
        need(isinstance(self.burst, (int, float)) and self.burst >= 1.0, "burst", "must be >= 1 segment")
        need(isinstance(self.mtu, int) and 64 <= self.mtu <= 1 << 16, "mtu", "must be an int in 64..65536")
        need(isinstance(self.overhead, int) and 0 <= self.overhead < self.mtu, "overhead",
             "must be an int in 0..mtu-1")
        need(isinstance(self.queue_bytes, int) and self.queue_bytes >= self.mtu, "queue_bytes",
             "must be an int >= mtu")
        need(self.mode in (RELIABLE, DATAGRAM), "mode", f"must be {RELIABLE!r} or {DATAGRAM!r}")
        if self.gilbert_elliott is None and self.burst > 1.0 and self.loss > 0.0:
            GilbertElliott.from_mean(self.loss, self.burst)      # raises if unreachable

    @property
    def mss(self) -> int:
        """Payload bytes per segment."""
        return self.mtu - self.overhead

    @property
    def loss_process(self) -> GilbertElliott | None:
        if self.gilbert_elliott is not None:
            return self.gilbert_elliott
        if self.burst > 1.0 and self.loss > 0.0:
            return GilbertElliott.from_mean(self.loss, self.burst)
        return None

    @property
    def mean_loss(self) -> float:
        ge = self.loss_process
        return ge.mean_loss if ge is not None else self.loss

    @property
    def rtt(self) -> float:
        """Round trip of a full segment one way and its ACK back, over this profile both ways."""
        ser = self.mtu * 8 / self.rate_bps if self.rate_bps else 0.0
        return max(2 * self.delay + ser, 1e-3)

    @property
    def rto(self) -> float:
        # RFC 6298 with srtt = rtt and rttvar ~ the jitter of a round trip.
        return min(max(self.min_rto, self.rtt + 4 * 2 * self.jitter), RTO_MAX_S)

    @property
    def mathis_bps(self) -> float:
        """Steady-state TCP throughput bound at this loss (inf without loss)."""
        p = self.mean_loss
        if p <= 0.0:
            return math.inf
        return self.mss * 8 / self.rtt * math.sqrt(3.0 / (2.0 * p))

    def with_changes(self, **changes: Any) -> LinkProfile:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("gilbert_elliott", "note")}
        ge = self.gilbert_elliott
        if ge is not None:
            out["gilbert_elliott"] = {f.name: getattr(ge, f.name) for f in fields(ge)}
        return out


# The presets, with where their numbers come from (docs/SIM.md has the full table and caveats).
PRESETS: dict[str, LinkProfile] = {
    "lan": LinkProfile(
        rate_bps=1e9, delay=0.0001, jitter=0.00002, queue_bytes=1 << 20, mtu=1500, overhead=40,
        note="Gigabit Ethernet: 1 Gbit/s line rate, ~0.1 ms one-way through one switch, no loss."),
    "wifi": LinkProfile(
        rate_bps=20e6, delay=0.003, jitter=0.002, loss=0.01, burst=2.0, queue_bytes=512 << 10,
        note="A busy 802.11n/ac home or office network: ~20 Mbit/s of real throughput for one station "
             "(well under the PHY rate), a few ms of delay and jitter, 1% residual loss in short bursts "
             "(after 802.11 link-layer retries)."),
    "wan": LinkProfile(
        rate_bps=10e6, delay=0.040, jitter=0.010, loss=0.01, queue_bytes=256 << 10,
        note="A congested wide-area path: 10 Mbit/s available, 40 ms one way (80 ms RTT, a continental "
             "path), 10 ms jitter, 1% loss from congestion at a shared bottleneck."),
    "lte": LinkProfile(
        rate_bps=10e6, delay=0.045, jitter=0.015, loss=0.002, queue_bytes=256 << 10,
        note="4G uplink: the 4G row of Loadero's network-conditions table (45 ms latency, 15 ms uplink "
             "jitter, 0.2% loss) with 10 Mbit/s, a typical LTE uplink (Loadero gives 50 Mbit/s up, "
             "Apple's Network Link Conditioner LTE preset 10 Mbit/s up)."),
    "lora": LinkProfile(
        rate_bps=5469.0, delay=0.010, jitter=0.002, loss=0.05, burst=3.0, queue_bytes=16 << 10,
        mtu=222, overhead=21,
        note="LoRa SF7, 125 kHz, coding rate 4/5: bit rate SF * BW / 2^SF * CR = 5469 bit/s (Semtech "
             "AN1200.13). 222-byte frames (LoRaWAN EU868 DR5 application payload limit), 21 bytes of "
             "overhead per frame (13 LoRaWAN header/MIC + ~8 byte-times of preamble). 5% loss in bursts "
             "is an assumption for a link near its range limit. Duty-cycle limits (1% in EU868) are NOT "
             "modelled: set rate_bps = 55 for a duty-cycle-bound EU868 device."),
}


def preset(name: str) -> LinkProfile:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown link preset {name!r}; known: {', '.join(PRESETS)}") from None


class LatencyHistogram:
    """Latencies in log-spaced buckets (2% wide, 1 us .. ~1 day): bounded memory for any run length,
    percentiles within 2%."""

    _LO = 1e-6
    _STEP = math.log(1.02)
    _N = int(math.log(1e5 / 1e-6) / math.log(1.02)) + 2

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        s = max(seconds, 0.0)
        i = 0 if s <= self._LO else min(int(math.log(s / self._LO) / self._STEP) + 1, self._N)
        self.counts[i] += 1
        self.n += 1
        self.total += s
        self.max = max(self.max, s)

    def merge(self, other: LatencyHistogram) -> None:
        """Add `other`'s latencies to these (e.g. every receiver of every flow into one)."""
        self.counts.update(other.counts)
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def _upper(self, i: int) -> float:
        return self._LO * math.exp(i * self._STEP)

    def percentile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.n))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self._upper(i), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | None]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 3)
        return {"count": self.n, "mean": ms(self.total / self.n) if self.n else None, "p50": ms(self.percentile(50)),
                "p90": ms(self.percentile(90)), "p99": ms(self.percentile(99)), "max": ms(self.max if self.n else None)}


@dataclass
class LinkStats:
    """What happened on one directed link. "packets" are segments in reliable mode and datagrams in
    datagram mode; bytes are payload bytes (what the application wrote), not wire bytes."""

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_delivered: int = 0
    bytes_delivered: int = 0
    wire_bytes: int = 0               # bytes put on the wire, headers and retransmissions included
    retransmissions: int = 0
    duplicated: int = 0
    reordered: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    bytes_per_second: Counter[int] = field(default_factory=Counter)   # delivered payload bytes by sim second
    # Delivered payload by packet kind (kinds.KINDS: a fixed set, so these stay bounded). The
    # transport attributes every delivered byte, so the kinds' bytes add up to bytes_delivered;
    # packets here are meshnode packets (frames) whose last byte was delivered, not segments.
    kind_bytes: Counter[str] = field(default_factory=Counter)
    kind_packets: Counter[str] = field(default_factory=Counter)
    kind_bytes_per_second: dict[str, Counter[int]] = field(default_factory=dict)
    # Payload written by packet kind (what the sender spent, delivered or not): adds up to bytes_sent
    # in reliable mode; in datagram mode it counts the frames handed to the link, dropped ones included.
    kind_bytes_sent: Counter[str] = field(default_factory=Counter)

    def delivered(self, nbytes: int, latency: float, now: float) -> None:
        self.packets_delivered += 1
        self.bytes_delivered += nbytes
        self.latency.add(latency)
        self.bytes_per_second[int(now)] += nbytes

    def delivered_kind(self, kind: str, nbytes: int, packets: int, now: float) -> None:
        """`nbytes` of what `delivered` counted belonged to packets of `kind`, `packets` of which ended."""
        self.kind_bytes[kind] += nbytes
        if packets:
            self.kind_packets[kind] += packets
        per_second = self.kind_bytes_per_second.get(kind)
        if per_second is None:
            per_second = self.kind_bytes_per_second[kind] = Counter()
        per_second[int(now)] += nbytes

    def to_dict(self) -> dict[str, Any]:
        unique = self.packets_sent
        return {
            "packets_sent": self.packets_sent, "bytes_sent": self.bytes_sent,
            "packets_delivered": self.packets_delivered, "bytes_delivered": self.bytes_delivered,
            "wire_bytes": self.wire_bytes, "retransmissions": self.retransmissions,
            "duplicated": self.duplicated, "reordered": self.reordered,
            "dropped": dict(sorted(self.dropped.items())),
            # Duplicates are delivered twice but sent once: count each sent packet at most once.
            "delivery_ratio": None if unique == 0 else round(
                min(self.packets_delivered - self.duplicated, unique) / unique, 6),
            "latency_ms": self.latency.summary_ms(),
            "kinds": {k: {"bytes": self.kind_bytes[k], "packets": self.kind_packets[k]}
                      for k in KINDS if self.kind_bytes[k] or self.kind_packets[k]},
            "kinds_sent": {k: self.kind_bytes_sent[k] for k in sorted(self.kind_bytes_sent, key=_kind_order)},
        }


def _kind_order(kind: str) -> tuple[int, str]:
    return (KINDS.index(kind), "") if kind in KINDS else (len(KINDS), kind)


class DirectedLink:
    """One direction of a link: see the module docstring. `rng` must be this link's own generator."""

    def __init__(self, profile: LinkProfile, rng: random.Random, *, name: str = "") -> None:
        self.profile = profile
        self.rng = rng
        self.name = name
        self.up = True
        self.free_at = 0.0                # when the bottleneck has serialised everything given to it
        self.stats = LinkStats()
        self._bad = False                 # Gilbert-Elliott state
        self._configure(profile)

    def _configure(self, profile: LinkProfile) -> None:
        self._ge = profile.loss_process
        self._byte_time = 8.0 / profile.rate_bps if profile.rate_bps else 0.0
        mathis = profile.mathis_bps
        self._pace_byte_time = 8.0 / mathis if math.isfinite(mathis) else 0.0

    def reconfigure(self, profile: LinkProfile) -> None:
        """Change the profile mid-run (scenario events); queued work keeps the times it was given."""
        self.profile = profile
        self._configure(profile)

    # ---- building blocks

    def lost(self) -> bool:
        """One segment through the loss process (advances the Gilbert-Elliott chain)."""
        ge = self._ge
        rng = self.rng
        if ge is None:
            p = self.profile.loss
            return p > 0.0 and rng.random() < p
        if self._bad:
            if rng.random() < ge.p_leave_bad:
                self._bad = False
        elif rng.random() < ge.p_enter_bad:
            self._bad = True
        p = ge.loss_bad if self._bad else ge.loss_good
        return p > 0.0 and rng.random() < p

    def _lost_later(self, bad: bool, elapsed: float, slot: float) -> tuple[bool, bool]:
        """A retransmission `elapsed` seconds after an attempt made in state `bad`: is it lost, and in
        which state? The main chain steps once per new segment and must not be stepped by this (the
        segments sent meanwhile already did), so draw from the chain's n-step transition instead, with
        n = elapsed / (one segment's time on the wire): P(bad after n) = pi + (bad - pi) * lambda^n,
        lambda = 1 - p_enter_bad - p_leave_bad. Without bursts, a plain Bernoulli draw."""
        ge = self._ge
        rng = self.rng
        if ge is None:
            return rng.random() < self.profile.loss, False
        n = 1_000_000 if slot <= 0 else min(1_000_000, max(1, round(elapsed / slot)))
        pi = ge.stationary_bad
        lam = 1.0 - ge.p_enter_bad - ge.p_leave_bad
        p_bad = pi + ((1.0 if bad else 0.0) - pi) * lam ** n
        now_bad = rng.random() < p_bad
        p = ge.loss_bad if now_bad else ge.loss_good
        return p > 0.0 and rng.random() < p, now_bad

    def propagation(self) -> float:
        p = self.profile
        if p.jitter <= 0.0:
            return p.delay
        return max(0.0, p.delay + self.rng.gauss(0.0, p.jitter))

    def backlog(self, now: float) -> int:
        """Wire bytes waiting in the bottleneck at `now`."""
        if not self._byte_time:
            return 0
        return int(max(0.0, self.free_at - now) / self._byte_time)

    def ready_at(self, now: float, room: int) -> float:
        """When the bottleneck will have at most `queue_bytes - room` bytes waiting (now if it already has)."""
        if not self._byte_time:
            return now
        limit = max(0, self.profile.queue_bytes - room)
        return max(now, self.free_at - limit * self._byte_time)

    def segment_sizes(self, nbytes: int) -> list[int]:
        mss = self.profile.mss
        full, rest = divmod(nbytes, mss)
        return [mss] * full + ([rest] if rest else [])

    def _retransmit_wait(self, k: int) -> float:
        """Wait before retransmission number k (1-based) of one segment."""
        p = self.profile
        if k == 1:
            return p.rtt                  # fast retransmit: duplicate ACKs arrive a round trip later
        return min(p.rto * 2 ** (k - 2), RTO_MAX_S)

    # ---- the two modes

    def send_stream(self, now: float, nbytes: int) -> list[tuple[float, int]]:
        """Reliable mode: `nbytes` of stream payload, cut into segments. Returns (arrival time, payload
        bytes) per segment in order. The caller keeps per-connection order (arrival = max(arrival,
        previous)) and holds arrivals while the link is cut."""
        out: list[tuple[float, int]] = []
        stats = self.stats
        overhead = self.profile.overhead
        for seg in self.segment_sizes(nbytes):
            wire = seg + overhead
            ser = wire * self._byte_time
            start = max(now, self.free_at)
            arrive = start + ser
            k = 0
            lost, bad = self.lost(), self._bad
            while lost and k < MAX_RETRANSMISSIONS:
                k += 1
                gap = self._retransmit_wait(k) + ser
                arrive += gap
                lost, bad = self._lost_later(bad, gap, ser)
            arrive += self.propagation()
            self.free_at = start + max(ser * (1 + k), wire * self._pace_byte_time)
            stats.packets_sent += 1
            stats.bytes_sent += seg
            stats.wire_bytes += wire * (1 + k)
            stats.retransmissions += k
            out.append((arrive, seg))
        return out

    def refuse(self, nbytes: int, reason: str) -> None:
        """Count a packet that was sent but could not even start (e.g. its destination host is down)."""
        self.stats.packets_sent += 1
        self.stats.bytes_sent += nbytes
        self.stats.dropped[reason] += 1

    def send_datagram(self, now: float, nbytes: int, *, extras: bool = True) -> list[float] | str:
        """Datagram mode: one datagram of `nbytes`. Returns its arrival times (two: duplicated) or the
        reason it was dropped ("partition", "queue_full", "loss"). `extras=False`: no duplication or
        reordering (handshake segments, which a stream stack would absorb)."""
        p = self.profile
        stats = self.stats
        if not self.up:
            self.refuse(nbytes, "partition")
            return "partition"
        stats.packets_sent += 1
        stats.bytes_sent += nbytes
        nseg = max(1, -(-nbytes // p.mss))
        wire = nbytes + nseg * p.overhead
        if self.backlog(now) + wire > p.queue_bytes:
            stats.dropped["queue_full"] += 1
            return "queue_full"
        start = max(now, self.free_at)
        ser = wire * self._byte_time
        self.free_at = start + ser
        stats.wire_bytes += wire
        lost = False
        for _ in range(nseg):           # every segment steps the loss chain, lost or not
            lost = self.lost() or lost
        if lost:
            stats.dropped["loss"] += 1
            return "loss"
        arrive = start + ser + self.propagation()
        rng = self.rng
        if not extras:
            return [arrive]
        if p.reorder > 0.0 and rng.random() < p.reorder:
            # Held back by up to one more delay (at least 1 ms), so datagrams sent after it overtake it.
            arrive += rng.uniform(0.0, max(p.delay, 1e-3))
            stats.reordered += 1
        times = [arrive]
        if p.duplicate > 0.0 and rng.random() < p.duplicate:
            times.append(start + ser + self.propagation())
            stats.duplicated += 1
        return times

