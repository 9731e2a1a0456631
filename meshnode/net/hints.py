"""Where to dial a node that mDNS told us about: addresses as hints, dials to them as a bounded budget.

mDNS is unauthenticated (net/discovery.py): anyone on the LAN can advertise any node id at any
address, or add records to a real node's service name. Taken at face value that let fake records keep
two honest nodes from ever linking (the node dialled the fake address forever), and 200 fake services
made three daemons open 24.5 connections/s to a third party's port (reflection). So this book:

- keeps, per node id, every advertised endpoint (host, port) in the order first seen, at most
  `per_node`; a later record for a known node id *adds* an endpoint, it never replaces the one in use;
- dials one endpoint at a time; when a dial to it fails (or the wrong node answers) it moves on to the
  next endpoint, so a fake record costs one failed dial instead of the link;
- remembers the endpoint through which a node was reached (`linked`): that one is tried first from then
  on, and while it works no new record changes anything;
- spaces dials to each endpoint with a backoff shared by every node id that names it (1 s, doubling per
  dial until the endpoint proves to be the node it was dialled for, up to `max_backoff`), so any number of fake node ids pointing at one third-party port cost
  one dial per backoff step;
- and spends dials to endpoints not yet verified from one global budget (`rate` per second, bursts of
  `burst`), so fake node ids at many addresses cannot make us dial faster than that either.

Pure: the caller passes `now` (monotonic seconds) and turns each `Dial` into a dial after `delay`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = [
    "HINT_DIAL_BURST",
    "HINT_DIAL_RATE",
    "HINT_MAX_BACKOFF",
    "HINT_MIN_INTERVAL",
    "Dial",
    "DialHints",
    "Endpoint",
]

Endpoint = tuple[str, int]

# Defaults (candidates for config keys under [discovery]; see docs/OPERATIONS.md "Security").
HINT_DIAL_RATE = 2.0        # dials per second to endpoints not yet verified, all of them together
HINT_DIAL_BURST = 8         # ... in bursts of at most this many
HINT_MIN_INTERVAL = 1.0     # seconds between two dials to one endpoint (host, port), whichever node id
HINT_MAX_BACKOFF = 60.0     # an endpoint never verified is dialled at most this rarely in the end
HINT_PER_NODE = 8           # endpoints remembered per node id
HINT_MAX_ENDPOINTS = 4096   # endpoint states remembered in all (least recently used forgotten)
VERIFIED_RETRIES = 3        # failures of a verified endpoint in a row before the others are tried


@dataclass(frozen=True)
class Dial:
    """Dial `node_id` at host:port after `delay` seconds (and only there, until told otherwise)."""

    node_id: bytes
    host: str
    port: int
    delay: float

    @property
    def endpoint(self) -> Endpoint:
        return (self.host, self.port)


@dataclass
class _EndpointState:
    failures: int = 0
    attempts: int = 0                # dials scheduled since it last proved to be the node named
    next_ok: float = float("-inf")   # earliest time of the next dial to this endpoint


@dataclass
class _Target:
    endpoints: list[Endpoint] = field(default_factory=list)
    current: Endpoint | None = None
    verified: Endpoint | None = None
    verified_failures: int = 0


class DialHints:
    def __init__(self, *, rate: float = HINT_DIAL_RATE, burst: int = HINT_DIAL_BURST,
                 min_interval: float = HINT_MIN_INTERVAL, max_backoff: float = HINT_MAX_BACKOFF,
                 per_node: int = HINT_PER_NODE, max_endpoints: int = HINT_MAX_ENDPOINTS) -> None:
        if rate <= 0 or burst < 1 or min_interval <= 0 or max_backoff < min_interval or per_node < 1:
            raise ValueError("need rate > 0, burst >= 1, 0 < min_interval <= max_backoff, per_node >= 1")
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = float("-inf")       # GCRA: theoretical arrival time of the next unverified dial
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.per_node = per_node
        self._max_endpoints = max_endpoints
        self._targets: dict[bytes, _Target] = {}
        self._endpoints: OrderedDict[Endpoint, _EndpointState] = OrderedDict()
        self.counters: dict[str, int] = {"scheduled": 0, "retargeted": 0, "ignored_endpoints": 0}

    # -- what discovery says

    def found(self, node_id: bytes, endpoints: tuple[Endpoint, ...] | list[Endpoint], now: float) -> Dial | None:
        """A record for `node_id` advertises `endpoints`. A Dial for a node id not dialled yet; None for a
        known one (its new endpoints are only remembered: they are tried if the current one fails)."""
        target = self._targets.get(node_id)
        known = target is not None
        if target is None:
            target = self._targets[node_id] = _Target()
        for ep in endpoints:
            if ep in target.endpoints:
                continue
            if len(target.endpoints) >= self.per_node:
                self.counters["ignored_endpoints"] += 1
                continue
            target.endpoints.append(ep)
        if known and target.current is not None or not target.endpoints:
            return None
        return self._dial(node_id, target, target.endpoints[0], now)

    def lost(self, node_id: bytes) -> None:
        """No record names `node_id` any more; endpoint backoffs stay (a fake may come back)."""
        self._targets.pop(node_id, None)

    def known(self, node_id: bytes) -> bool:
        return node_id in self._targets

    def endpoints(self, node_id: bytes) -> tuple[Endpoint, ...]:
        target = self._targets.get(node_id)
        return tuple(target.endpoints) if target is not None else ()

    def current(self, node_id: bytes) -> Endpoint | None:
        target = self._targets.get(node_id)
        return target.current if target is not None else None

    def verified(self, node_id: bytes) -> Endpoint | None:
        target = self._targets.get(node_id)
        return target.verified if target is not None else None

    def targeting(self, endpoint: Endpoint) -> list[bytes]:
        """The node ids whose current dial goes to `endpoint`."""
        return [nid for nid, t in self._targets.items() if t.current == endpoint]

    # -- what dialling found

    def linked(self, node_id: bytes) -> None:
        """The node was reached through its current endpoint: it is verified, and preferred from now on."""
        target = self._targets.get(node_id)
        if target is None or target.current is None:
            return
        target.verified = target.current
        target.verified_failures = 0
        state = self._endpoints.get(target.current)
        if state is not None:
            state.failures = state.attempts = 0

    def failed(self, node_id: bytes, endpoint: Endpoint, now: float) -> Dial | None:
        """A dial of `node_id` at `endpoint` failed (no connection, refused handshake, another node).
        A Dial: stop dialling `endpoint` for it and dial this instead. None: nothing to change (not our
        current endpoint, or a verified one that gets its usual retries with the caller's backoff)."""
        target = self._targets.get(node_id)
        state = self._state(endpoint)
        state.failures += 1
        if target is None or target.current != endpoint:
            return None
        if endpoint == target.verified:
            target.verified_failures += 1
            if target.verified_failures < VERIFIED_RETRIES or len(target.endpoints) == 1:
                return None
            target.verified = None      # gone for good, it seems: hints again, budget again
        # The next endpoint in order, round robin, starting after the failed one.
        i = target.endpoints.index(endpoint) if endpoint in target.endpoints else -1
        order = target.endpoints[i + 1:] + target.endpoints[:i + 1]
        self.counters["retargeted"] += 1
        return self._dial(node_id, target, order[0], now)

    # -- the budget

    def _state(self, endpoint: Endpoint) -> _EndpointState:
        state = self._endpoints.get(endpoint)
        if state is None:
            state = self._endpoints[endpoint] = _EndpointState()
            while len(self._endpoints) > self._max_endpoints:
                self._endpoints.popitem(last=False)
        else:
            self._endpoints.move_to_end(endpoint)
        return state

    def _dial(self, node_id: bytes, target: _Target, endpoint: Endpoint, now: float) -> Dial:
        state = self._state(endpoint)
        at = max(now, state.next_ok)
        if endpoint != target.verified:
            # GCRA with reservation: each unverified dial takes the next free slot of the global budget.
            at = max(at, self._tat - self._tolerance)
            self._tat = max(self._tat, at) + self._interval
        # Spacing doubles with every dial scheduled, not only with every failure seen: dials reserved
        # at once for many fake node ids at one endpoint back off among themselves too.
        spacing = min(self.max_backoff, self.min_interval * (2 ** min(state.attempts, 30)))
        state.attempts += 1
        state.next_ok = at + spacing
        target.current = endpoint
        self.counters["scheduled"] += 1
        return Dial(node_id, endpoint[0], endpoint[1], at - now)
