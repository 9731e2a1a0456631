"""The member directory: which nodes of the mesh we know, and the key each one signs its packets with.

A node learns members from hellos: the hello of each direct peer (its TLS certificate already checked)
and hellos relayed by peers as member announcements (SPEC §6, "announcements"). Every hello carries
the node's CA-signed certificate; a relayed one is accepted only if that certificate verifies against
our mesh CA, is valid now, and names the node id that signed the hello. The directory is what lets c
verify a packet that a originated and b relayed, without any link between a and c.

Bounded: at most `max_members` entries; a hello of a new node beyond that is refused (`directory_full`)
rather than evicting a member whose packets we may still be verifying. A hello larger than
MAX_HELLO_BYTES is refused (`hello_too_large`): every stored hello is announced to every new peer, so
its size is what one member can make every link of ours carry. A member is forgotten (`expire`) when
its certificate has expired, or when it has not been seen for `member_ttl` seconds: no link to it, no
packet of it verified (`seen`), no newer hello of it.

Cheap first: `held(packet)` says, before any signature or certificate work, whether a hello is one we
hold already (same packet id, not newer, or newer with the same body: the same member re-stamping the
same hello for each of its links). Such a hello teaches nothing and is neither verified nor relayed
again; it never replaces or refreshes the held one (it is not verified), it only tells us that the
peer who sent it holds it (`holders`), so that we do not send it that hello back.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass

from ..identity import IdentityError, NodeIdentity, check_claimed_name, verify_peer_certificate
from ..wire.packet import HEADER_LEN, Hello, Kind, Packet
from ..wire.session import MAX_HELLO_BYTES

__all__ = ["CATCH_UP_DELAY", "MAX_HELLO_BYTES", "MEMBER_TTL", "NEWS_DELAY", "Member", "MemberDirectory", "MemberRefused"]

# Seconds a member that we have no link to may go unseen (no verified packet, no newer hello) before
# it is forgotten: long enough that a member that only listens is not dropped between two of its
# link changes on a quiet mesh, short enough that departed nodes do not pile up towards max_members.
MEMBER_TTL = 3600.0
# A member may change the content of its hello (topics, port, certificate) at most once per this many
# seconds: each change is news that every node relays to every link, so a member re-signing new
# hellos in a loop would otherwise make the whole mesh carry them. Legitimate changes are rare (a
# restart with another port, a renewed certificate).
MIN_UPDATE_INTERVAL = 10.0
# Seconds a new link waits before it sends its peer the members it holds (node.py `_catch_up`): the
# peer's own catch-up reaches us meanwhile, and what it told us is not sent back (issue 15: a join
# cost O(N^2) bytes, most of it hellos the receiver held already).
CATCH_UP_DELAY = 1.0
# Seconds a node waits before it tells its other peers about a new peer of its own (not one relayed to
# it): in a full mesh they link to that peer too, and the catch-ups exchanged meanwhile show who holds it.
NEWS_DELAY = 0.25
# Peers remembered per member as holding its current hello (so it is not sent back to them): a hint,
# bounded so that a churn of links cannot grow it.
HOLDERS_PER_MEMBER = 64


class MemberRefused(Exception):
    """A hello that does not make its origin a member; `reason` is a stable code for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Member:
    node_id: bytes
    name: str
    public_key: bytes
    hello_raw: bytes            # the hello as signed by the member, to announce it to our peers
    hello_id: bytes             # its packet id
    hello_time_us: int          # its timestamp: a newer hello replaces an older one, never the reverse
    not_after: _dt.datetime

    @property
    def hello_body(self) -> bytes:
        return _body_of(self.hello_raw)


def _body_of(raw: bytes) -> bytes:
    """A packet's body bytes (header and signature cut off): what a hello says, whatever its stamp."""
    n = int.from_bytes(raw[12:16], "little")
    return raw[HEADER_LEN:HEADER_LEN + n]


class MemberDirectory:
    def __init__(self, identity: NodeIdentity, *, max_members: int = 4096, member_ttl: float = MEMBER_TTL,
                 max_hello: int = MAX_HELLO_BYTES, now: Callable[[], float] = time.time) -> None:
        self._identity = identity
        self._max = max_members
        self.member_ttl = member_ttl
        self.max_hello = max_hello
        self._now = now
        self._members: dict[bytes, Member] = {}
        self._seen: dict[bytes, float] = {}          # node id -> last sign of life (our wall clock, seconds)
        self._changed: dict[bytes, float] = {}       # node id -> when its hello last changed content
        self._holders: dict[bytes, dict[bytes, None]] = {}   # node id -> peers holding its current hello
        self.forgotten = 0                           # counters, for metrics
        self.held_skipped = 0

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._members

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def get(self, node_id: bytes) -> Member | None:
        return self._members.get(node_id)

    def key_for(self, node_id: bytes) -> bytes | None:
        """The member's raw Ed25519 public key (the Session's `key_for`), or None if unknown."""
        member = self._members.get(node_id)
        return member.public_key if member is not None else None

    # ---- cheap checks, before any cryptography

    def held(self, packet: Packet, via: bytes | None = None) -> bool:
        """True when `packet` (a hello, signature NOT checked) is one we hold already: the same packet,
        an older or equally old one, or a newer stamp of the same body. Nothing about the held member
        changes; `via` (the peer that sent it) is noted as holding that hello, which is the peer's own
        claim about itself and can only spare it traffic."""
        known = self._members.get(packet.origin)
        if known is None:
            return False
        if not (known.hello_id == packet.packet_id or known.hello_time_us >= packet.header.timestamp_us
                or _body_of(packet.raw) == known.hello_body):
            return False
        self.held_skipped += 1
        if via is not None:
            self.note_holder(packet.origin, via)
        return True

    def note_holder(self, node_id: bytes, peer: bytes) -> None:
        """`peer` holds the current hello of `node_id` (it sent it to us, or we sent it to it)."""
        if node_id not in self._members:
            return
        holders = self._holders.setdefault(node_id, {})
        if peer not in holders and len(holders) >= HOLDERS_PER_MEMBER:
            holders.pop(next(iter(holders)))
        holders[peer] = None

    def forget_holder(self, peer: bytes) -> None:
        """`peer`'s link closed: what it held is no longer known (a restarted node holds nothing), so
        its next link gets the full catch-up."""
        for holders in self._holders.values():
            holders.pop(peer, None)

    def holds(self, peer: bytes, node_id: bytes) -> bool:
        """Whether `peer` is known to hold the current hello of `node_id` (or is that member)."""
        return peer == node_id or peer in self._holders.get(node_id, ())

    def seen(self, node_id: bytes) -> None:
        """A packet of `node_id` verified against its key just now: it is alive."""
        if node_id in self._members:
            self._seen[node_id] = self._now()

    # ---- learning and forgetting

    def learn(self, packet: Packet, *, via: bytes | None = None, relayed: bool = False) -> Member | None:
        """Check a hello (its self-signature already verified by the session) and store its origin.

        Returns the member when this hello is news (a new member, or a newer hello of a known one with
        another body: worth announcing further), None when we already hold this hello or an equivalent
        one (see `held`). Raises MemberRefused when the hello does not prove membership, is larger than
        `max_hello`, or, relayed, changes a member's hello again less than MIN_UPDATE_INTERVAL after the
        last change (`hello_churn`). `via`: the peer it came from, which holds it. Not `relayed` (the
        peer's own hello, on an authenticated link), a change too soon is stored, not refused, but it
        is not news.
        """
        if packet.kind is not Kind.HELLO:
            raise MemberRefused("not_a_hello", f"a {packet.kind.name.lower()} packet announces no member")
        origin = packet.origin
        if len(packet.raw) > self.max_hello:
            raise MemberRefused("hello_too_large", f"hello of {origin.hex()[:16]} has {len(packet.raw)} bytes, "
                                                   f"more than {self.max_hello}")
        if self.held(packet, via):
            return None
        hello: Hello = packet.body  # type: ignore[assignment]
        known = self._members.get(origin)
        if hello.cert is None:
            raise MemberRefused("no_certificate", f"hello of {origin.hex()[:16]} carries no certificate")
        now = self._now()
        churn = known is not None and now - self._changed.get(origin, now - MIN_UPDATE_INTERVAL) < MIN_UPDATE_INTERVAL
        if churn and relayed:
            raise MemberRefused("hello_churn", f"hello of {origin.hex()[:16]} changed less than "
                                               f"{MIN_UPDATE_INTERVAL:g} s ago")
        try:
            info = verify_peer_certificate(hello.cert, self._identity, now=now)
        except IdentityError as e:
            raise MemberRefused(e.reason.value, str(e)) from None
        if info.node_id != origin or info.public_key_bytes != hello.public_key:
            raise MemberRefused("id_mismatch", f"certificate of {info.name!r} is for node {info.node_id.hex()[:16]}, "
                                               f"the hello comes from {origin.hex()[:16]}")
        try:    # the hello's name is the sender's word; only the certificate's was checked by the CA
            check_claimed_name(hello.name, info.name)
        except IdentityError as e:
            raise MemberRefused(e.reason.value, str(e)) from None
        if known is None and len(self._members) >= self._max:
            raise MemberRefused("directory_full", f"already {self._max} members")
        member = Member(origin, info.name, hello.public_key, packet.raw, packet.packet_id,
                        packet.header.timestamp_us, info.not_after)
        self._members[origin] = member
        self._seen[origin] = now
        self._changed[origin] = now
        self._holders.pop(origin, None)        # holders of the old hello do not hold this one
        if via is not None:
            self.note_holder(origin, via)
        # The peer's own hello (not relayed) is always taken, but a change that comes too soon after the
        # last one is not news: it is not relayed, so reconnecting in a loop with a new hello each time
        # does not make the whole mesh carry them.
        return None if churn else member

    def forget(self, node_id: bytes) -> Member | None:
        member = self._members.pop(node_id, None)
        self._seen.pop(node_id, None)
        self._changed.pop(node_id, None)
        self._holders.pop(node_id, None)
        return member

    def expire(self, linked: Container[bytes] = ()) -> list[Member]:
        """Forget members whose certificate has expired, and members not in `linked` (the node ids we
        hold a link to) that have not been seen for `member_ttl` seconds. Returns them. Call from a timer."""
        now = self._now()
        now_dt = _dt.datetime.fromtimestamp(now, tz=_dt.timezone.utc)
        cutoff = now - self.member_ttl
        gone = []
        for node_id, member in list(self._members.items()):
            linked_now = node_id in linked
            if linked_now:
                self._seen[node_id] = now
            if member.not_after < now_dt or (not linked_now and self._seen.get(node_id, now) < cutoff):
                gone.append(member)
                self.forget(node_id)
        self.forgotten += len(gone)
        return gone
