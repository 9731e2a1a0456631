"""The gossip overlay's decisions, sans-IO: which links carry packets eagerly, what to announce lazily,
what to ask for and what to serve. The node feeds it events (a link opened or closed, a packet seen,
a gossip body received, a heartbeat) and carries out the actions it returns.

The design follows gossipsub v1.1's mesh, reduced to one overlay for every topic:

- Each node keeps `degree` of its links *eager* (packets are pushed on them in full), between the
  watermarks `degree_low` and `degree_high`; roles are agreed with `graft` / `prune`, so both ends of a
  link see it the same way. A heartbeat re-balances: below the low watermark it grafts random lazy
  links, above the high one it prunes random eager links back to `degree`.
- The other links are *lazy*: each heartbeat, the ids seen since the last one are announced (`have`)
  to up to `lazy_degree` random lazy links (and to every eager link, so that a failed push is
  repaired too), which ask (`want`) for what they have not seen and get it from the sender's message
  cache.
- When a link opens, each side announces every id in its message cache (anti-entropy: from two
  heartbeats later, once the members' hellos are across, `want_budget` ids a heartbeat), so packets
  published on one side of a partition, or while a node was down, cross once the link is back.

Ids here are gossip ids (the node's choice: SHA-256 of origin and packet id, so that no member can
claim another's packet id); the overlay treats them as opaque.

Bounds (per peer, whatever it sends): `want` lists are answered for ids in our cache only, each id at
most `max_serves` times per peer, and at most `serve_budget` packets per peer per heartbeat; a peer's
`have` makes us ask only for ids not yet seen and not already asked for, at most `want_budget` per
peer per heartbeat; ids already asked for are remembered for `want_timeout` heartbeats (bounded).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..wire.packet import MAX_GOSSIP_IDS

__all__ = ["Graft", "Have", "Overlay", "OverlaySettings", "Prune", "Serve", "Settled", "Want"]


@dataclass(frozen=True)
class OverlaySettings:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    lazy_degree: int = 6           # lazy links that get each heartbeat's announcements
    history: int = 4096            # ids remembered for the next announcements (the newest win)
    max_serves: int = 3            # times one id is served to one peer
    serve_budget: int = 128        # packets served to one peer per heartbeat
    want_budget: int = 128         # ids asked of one peer per heartbeat
    want_timeout: int = 3          # heartbeats before an id asked for may be asked for again
    max_asks: int = 3              # times one id is asked of one peer before we give up on it there
    serve_bytes: int = 4 << 20     # bytes of packets served to one peer per heartbeat (at least one packet)

    def __post_init__(self) -> None:
        if not 1 <= self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("overlay watermarks must satisfy 1 <= low <= degree <= high")


# ---- actions


@dataclass(frozen=True)
class Graft:
    peer: bytes


@dataclass(frozen=True)
class Prune:
    peer: bytes


@dataclass(frozen=True)
class Have:
    peer: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Want:
    peer: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Serve:
    peer: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Settled:
    """The link has been open for BACKLOG_BEATS heartbeats: both ends hold each other's members now
    (the moment to tell the peer about our other peers' addresses)."""

    peer: bytes


Action = Graft | Prune | Have | Want | Serve | Settled

BACKLOG_BEATS = 2     # heartbeats between a link opening and the announcement of our whole cache


@dataclass
class _Peer:
    eager: bool = False
    served: OrderedDict[bytes, int] = field(default_factory=OrderedDict)   # id -> times served
    # ids it announced that we have not got yet -> times asked; asked for as the budget allows, so an
    # announcement of thousands (a link opening after a partition) is fetched over a few heartbeats
    pending: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    # ids asked of it max_asks times and never served: not taken from it again, however often it
    # announces them (a peer that announces and never serves must not hold our asks)
    gave_up: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    backlog: list[bytes] = field(default_factory=list)   # our cached ids, announced a chunk a heartbeat
    opened: int = 0                     # the heartbeat it opened at
    settled: bool = False               # Settled was said (the link is past its first heartbeats)
    serve_bytes_left: int = 0
    serve_left: int = 0
    want_left: int = 0


def _chunks(ids: Sequence[bytes], size: int = MAX_GOSSIP_IDS) -> list[tuple[bytes, ...]]:
    return [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]


class Overlay:
    def __init__(self, settings: OverlaySettings = OverlaySettings(), *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng if rng is not None else random.Random()
        self._peers: dict[bytes, _Peer] = {}
        self._recent: deque[bytes] = deque(maxlen=settings.history)
        self._asked: OrderedDict[bytes, int] = OrderedDict()    # id -> heartbeat it was asked for
        self._beat = 0

    # ---- state

    @property
    def eager(self) -> list[bytes]:
        return [p for p, s in self._peers.items() if s.eager]

    @property
    def lazy(self) -> list[bytes]:
        return [p for p, s in self._peers.items() if not s.eager]

    def is_eager(self, peer: bytes) -> bool:
        s = self._peers.get(peer)
        return s is not None and s.eager

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    # ---- links

    def link_opened(self, peer: bytes, cached_ids: Iterable[bytes]) -> list[Action]:
        """A gossip-capable link is up: graft it while we are below `degree`, and announce everything in
        our message cache (anti-entropy)."""
        st = self._peers[peer] = _Peer()      # a new link is a new session, whatever the old one agreed
        st.serve_left, st.want_left = self.settings.serve_budget, self.settings.want_budget
        st.serve_bytes_left = self.settings.serve_bytes
        # Announced at the second heartbeat from now, not at once: the peers first exchange the hellos
        # of the members they know (one side waits a second), and a packet served before its origin's
        # hello would be dropped as from an unknown origin.
        st.backlog, st.opened = list(cached_ids), self._beat
        out: list[Action] = []
        if len(self.eager) < self.settings.degree:
            st.eager = True
            out.append(Graft(peer))
        return out

    def link_closed(self, peer: bytes) -> None:
        self._peers.pop(peer, None)

    def on_graft(self, peer: bytes) -> list[Action]:
        st = self._peers.get(peer)
        if st is None or st.eager:
            return []
        if len(self.eager) >= self.settings.degree_high:
            return [Prune(peer)]
        st.eager = True
        return []

    def on_prune(self, peer: bytes) -> None:
        st = self._peers.get(peer)
        if st is not None:
            st.eager = False

    # ---- packets

    def seen(self, packet_id: bytes) -> None:
        """A new packet (ours or one we accepted): announce it to lazy links at the next heartbeat."""
        self._recent.append(packet_id)
        self._asked.pop(packet_id, None)

    def on_have(self, peer: bytes, ids: Sequence[bytes], is_new: Callable[[bytes], bool]) -> list[Action]:
        """Note what a peer announces that is new to us, and ask for as much of it as its budget allows
        (the rest at the next heartbeats)."""
        st = self._peers.get(peer)
        if st is None:
            return []
        for pid in ids:
            if pid not in st.pending and pid not in st.gave_up and is_new(pid):
                st.pending[pid] = 0
        while len(st.pending) > self.settings.history:
            st.pending.popitem(last=False)
        return self._ask(peer, st, is_new)

    def _ask(self, peer: bytes, st: _Peer, is_new: Callable[[bytes], bool]) -> list[Action]:
        want: list[bytes] = []
        for pid, asks in list(st.pending.items()):
            if st.want_left <= 0:
                break
            if not is_new(pid):
                del st.pending[pid]
                continue
            if asks >= self.settings.max_asks:
                del st.pending[pid]
                st.gave_up[pid] = None
                while len(st.gave_up) > self.settings.history:
                    st.gave_up.popitem(last=False)
                continue
            if pid in self._asked:      # asked of someone recently: wait for that answer
                continue
            want.append(pid)
            st.pending[pid] = asks + 1
            st.want_left -= 1
            self._asked[pid] = self._beat
        while len(self._asked) > self.settings.history:
            self._asked.popitem(last=False)
        return [Want(peer, tuple(want))] if want else []

    def on_want(self, peer: bytes, ids: Sequence[bytes], size_of: Callable[[bytes], int | None]) -> list[Action]:
        """The ids of a peer's request we serve: in our cache (`size_of` gives the packet's size, None
        when we do not hold it), served to it fewer than `max_serves` times, within its budgets for
        this heartbeat (packets and bytes). Nothing else, whatever it asks."""
        st = self._peers.get(peer)
        if st is None:
            return []
        serve: list[bytes] = []
        for pid in ids:
            if st.serve_left <= 0 or st.serve_bytes_left <= 0:
                break
            n = st.served.get(pid, 0)
            size = size_of(pid) if n < self.settings.max_serves else None
            if size is None:
                continue
            st.served[pid] = n + 1
            st.served.move_to_end(pid)
            st.serve_left -= 1
            st.serve_bytes_left -= size
            serve.append(pid)
        while len(st.served) > self.settings.history:
            st.served.popitem(last=False)
        return [Serve(peer, tuple(serve))] if serve else []

    # ---- time

    def heartbeat(self, is_new: Callable[[bytes], bool] = lambda pid: True) -> list[Action]:
        """Re-balance the eager links, announce what was seen since the last heartbeat, renew budgets and
        ask for more of what peers announced (`is_new`: not yet seen)."""
        s = self.settings
        self._beat += 1
        out: list[Action] = []
        eager, lazy = self.eager, self.lazy
        if len(eager) < s.degree_low and lazy:
            for peer in self._rng.sample(lazy, min(len(lazy), s.degree - len(eager))):
                self._peers[peer].eager = True
                out.append(Graft(peer))
        elif len(eager) > s.degree_high:
            for peer in self._rng.sample(eager, len(eager) - s.degree):
                self._peers[peer].eager = False
                out.append(Prune(peer))
        for st in self._peers.values():
            st.serve_left, st.want_left, st.serve_bytes_left = s.serve_budget, s.want_budget, s.serve_bytes
        expired = self._beat - s.want_timeout
        while self._asked and next(iter(self._asked.values())) <= expired:
            self._asked.popitem(last=False)
        peers = list(self._peers.items())
        self._rng.shuffle(peers)        # no peer is always asked first
        for peer, st in peers:
            if self._beat - st.opened >= BACKLOG_BEATS:
                if not st.settled:
                    st.settled = True
                    out.append(Settled(peer))
                if st.backlog:
                    # a chunk a heartbeat, as much as the peer may ask for in one: it fetches the
                    # backlog as fast as it is announced, and never holds more of it than it can ask
                    chunk, st.backlog = st.backlog[:s.want_budget], st.backlog[s.want_budget:]
                    out.append(Have(peer, tuple(chunk)))
            if st.pending:
                out += self._ask(peer, st, is_new)
        if self._recent:
            recent = list(self._recent)
            self._recent.clear()
            lazy = self.lazy
            # Eager links too: a push can fail where an announcement still gets through (the packet's
            # origin not yet known to a peer that just restarted, a full queue), and 16 bytes an id is
            # little next to the packet. Lazy links: a sample, as gossipsub does.
            for peer in self.eager + self._rng.sample(lazy, min(len(lazy), s.lazy_degree)):
                out += [Have(peer, chunk) for chunk in _chunks(recent)]
        return out
