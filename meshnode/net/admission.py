"""Who may start a TLS handshake with us: a sans-IO admission policy for unauthenticated connections.

A handshake in progress costs a socket, a task and OpenSSL state, and a stranger can hold one for the
whole handshake timeout by sending nothing (or a byte at a time). A single global cap alone lets one
host keep every slot busy by reopening its connections as they time out, which kept new and restarting
nodes out indefinitely. So, in the spirit of OpenSSH's MaxStartups / PerSourceMaxStartups and libp2p's
resource manager:

- one *source* holds at most `per_source` handshakes at once. A source is an IPv4 address, or an IPv6
  /64 (one host usually owns a whole /64, so per-address limits would be no limit at all there);
- past `early_drop_start` handshakes in all, a newcomer is dropped at random with a probability that
  rises linearly from `early_drop_rate` to 1 at `max_total` (MaxStartups' "start:rate:full"), so that
  many sources together cannot wedge the table shut at exactly full and an honest dialer that retries
  gets a fair chance;
- `max_total` handshakes in all, whatever the sources.

This module decides and counts; it never touches a socket (net/tcp.py does, and releases the ticket
when the handshake ends however it ends). Decisions are plain data, so the policy is tested without
sockets and with a seeded random generator.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "EARLY_DROP_RATE",
    "EARLY_DROP_START",
    "IPV6_SOURCE_PREFIX",
    "MAX_HANDSHAKES",
    "MAX_HANDSHAKES_PER_SOURCE",
    "Admitted",
    "HandshakeAdmission",
    "Refused",
    "source_of",
]

# Defaults (candidates for config keys under [limits]; see docs/OPERATIONS.md "Security").
MAX_HANDSHAKES = 64             # handshakes in progress, all sources together
MAX_HANDSHAKES_PER_SOURCE = 8   # per IPv4 address / IPv6 /64: a few nodes on one host dial at once
EARLY_DROP_START = 32           # random early drop starts here ...
EARLY_DROP_RATE = 0.3           # ... with this probability, rising to 1 at MAX_HANDSHAKES
IPV6_SOURCE_PREFIX = 64


def source_of(host: str, *, ipv6_prefix: int = IPV6_SOURCE_PREFIX) -> str:
    """The source a connection from `host` is charged to: the IPv4 address (IPv4-mapped IPv6 included)
    or the IPv6 network of `ipv6_prefix` bits. Anything unparsable is its own source."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Admitted:
    """Go ahead; hand the ticket back to `release` when the handshake ends (success or not)."""

    source: str
    serial: int


@dataclass(frozen=True)
class Refused:
    """Close the connection at once. `reason` is a refusal reason of net/tcp.py:

    busy          `max_total` handshakes already in progress
    busy_source   this source already has `per_source` handshakes in progress
    early_drop    dropped at random because the table is filling up (see module doc)
    """

    source: str
    reason: str
    detail: str


class HandshakeAdmission:
    """Counts handshakes in progress, per source and in all, and decides who may start one."""

    def __init__(self, *, max_total: int = MAX_HANDSHAKES, per_source: int = MAX_HANDSHAKES_PER_SOURCE,
                 early_drop_start: int | None = EARLY_DROP_START, early_drop_rate: float = EARLY_DROP_RATE,
                 ipv6_prefix: int = IPV6_SOURCE_PREFIX, rng: random.Random | None = None) -> None:
        if max_total < 1 or per_source < 1:
            raise ValueError("max_total and per_source must be at least 1")
        if not 0.0 <= early_drop_rate <= 1.0:
            raise ValueError("early_drop_rate must be in [0, 1]")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be in 0..128")
        self.max_total = max_total
        self.per_source = min(per_source, max_total)
        # None (or >= max_total): no early drop, only the hard limits.
        self.early_drop_start = max_total if early_drop_start is None else min(early_drop_start, max_total)
        self.early_drop_rate = early_drop_rate
        self.ipv6_prefix = ipv6_prefix
        # The drop decision faces strangers: unpredictable by default, seeded in tests.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._by_source: Counter[str] = Counter()
        self._live: set[Admitted] = set()
        self._serial = 0

    @property
    def in_progress(self) -> int:
        return len(self._live)

    @property
    def by_source(self) -> Mapping[str, int]:
        return MappingProxyType(self._by_source)

    def in_progress_for(self, host: str) -> int:
        return self._by_source.get(source_of(host, ipv6_prefix=self.ipv6_prefix), 0)

    def drop_probability(self, in_progress: int) -> float:
        """The chance that a newcomer is dropped at random while `in_progress` handshakes run."""
        if in_progress >= self.max_total:
            return 1.0
        if in_progress < self.early_drop_start:
            return 0.0
        span = self.max_total - self.early_drop_start
        return self.early_drop_rate + (1.0 - self.early_drop_rate) * (in_progress - self.early_drop_start) / span

    def admit(self, host: str) -> Admitted | Refused:
        source = source_of(host, ipv6_prefix=self.ipv6_prefix)
        total = len(self._live)
        held = self._by_source.get(source, 0)
        # The per-source limit first: a flooding source learns nothing about the others' load from it.
        if held >= self.per_source:
            return Refused(source, "busy_source", f"{held} handshakes from {source} already in progress")
        if total >= self.max_total:
            return Refused(source, "busy", f"{total} handshakes already in progress")
        p = self.drop_probability(total)
        if p > 0.0 and self._rng.random() < p:
            return Refused(source, "early_drop", f"{total} handshakes in progress: dropped at random (p={p:.2f})")
        self._serial += 1
        ticket = Admitted(source, self._serial)
        self._live.add(ticket)
        self._by_source[source] += 1
        return ticket

    def release(self, ticket: Admitted) -> None:
        """The handshake of `ticket` ended. Releasing twice is harmless (a ticket frees one slot once)."""
        if ticket not in self._live:
            return
        self._live.remove(ticket)
        self._by_source[ticket.source] -= 1
        if self._by_source[ticket.source] <= 0:
            del self._by_source[ticket.source]
