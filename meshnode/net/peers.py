"""The member directory: which nodes of the mesh we know, and the key each one signs its packets with.

A node learns members from hellos: the hello of each direct peer (its TLS certificate already checked)
and hellos relayed by peers as member announcements (SPEC §6, "announcements"). Every hello carries
the node's CA-signed certificate; a relayed one is accepted only if that certificate verifies against
our mesh CA, is valid now, and names the node id that signed the hello. The directory is what lets c
verify a packet that a originated and b relayed, without any link between a and c.

Bounded: at most `max_members` entries; a hello of a new node beyond that is refused (`directory_full`)
rather than evicting a member whose packets we may still be verifying.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..identity import IdentityError, NodeIdentity, verify_peer_certificate
from ..wire.packet import Hello, Kind, Packet

__all__ = ["Member", "MemberDirectory", "MemberRefused"]


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


class MemberDirectory:
    def __init__(self, identity: NodeIdentity, *, max_members: int = 4096,
                 now: Callable[[], float] = time.time) -> None:
        self._identity = identity
        self._max = max_members
        self._now = now
        self._members: dict[bytes, Member] = {}

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

    def learn(self, packet: Packet) -> Member | None:
        """Check a hello (its self-signature already verified by the session) and store its origin.

        Returns the member when this hello is news (a new member, or a newer hello of a known one:
        worth announcing further), None when we already hold this hello or a newer one. Raises
        MemberRefused when the hello does not prove membership.
        """
        if packet.kind is not Kind.HELLO:
            raise MemberRefused("not_a_hello", f"a {packet.kind.name.lower()} packet announces no member")
        hello: Hello = packet.body  # type: ignore[assignment]
        origin = packet.origin
        known = self._members.get(origin)
        if known is not None and (known.hello_id == packet.packet_id
                                  or known.hello_time_us >= packet.header.timestamp_us):
            return None
        if hello.cert is None:
            raise MemberRefused("no_certificate", f"hello of {origin.hex()[:16]} carries no certificate")
        try:
            info = verify_peer_certificate(hello.cert, self._identity, now=self._now())
        except IdentityError as e:
            raise MemberRefused(e.reason.value, str(e)) from None
        if info.node_id != origin or info.public_key_bytes != hello.public_key:
            raise MemberRefused("id_mismatch", f"certificate of {info.name!r} is for node {info.node_id.hex()[:16]}, "
                                               f"the hello comes from {origin.hex()[:16]}")
        if known is None and len(self._members) >= self._max:
            raise MemberRefused("directory_full", f"already {self._max} members")
        member = Member(origin, info.name, hello.public_key, packet.raw, packet.packet_id,
                        packet.header.timestamp_us, info.not_after)
        self._members[origin] = member
        return member
