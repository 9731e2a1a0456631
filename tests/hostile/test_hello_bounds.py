"""Issue 16 item 1: an oversized member hello partitioned a node. A hello over MAX_HELLO_BYTES is
dropped where it is received (relayed in fragments or not), and a link's catch-up of stored hellos is
paced so that it can never overflow the control lane (send_stalled), however many there are."""

from __future__ import annotations

import asyncio

import pytest

from meshnode.net.link import Link, LinkSettings, LinkState
from meshnode.wire.errors import Reason
from meshnode.wire.limits import Limits
from meshnode.wire.packet import Hello, Signer, encode_packet
from meshnode.wire.session import MAX_HELLO_BYTES, MemberAnnounced, PacketDropped, Session

from ..net.test_link import MemoryStream, _Pipe
from .._mesh import aio, wait_for

pytestmark = pytest.mark.timeout(60)

LIM = Limits(max_frame=1 << 16, fragment_size=1 << 13)
A, B = Signer.from_seed(b"\x01" * 32), Signer.from_seed(b"\x02" * 32)


def hello_raw(signer: Signer, size: int) -> bytes:
    """A validly self-signed hello of about `size` bytes (topics of 256 bytes fill it)."""
    topics = tuple(f"{i:04d}".ljust(256, "t") for i in range(max(size // 259, 1)))
    return encode_packet(Hello(name="m", public_key=signer.public_key_bytes, topics=topics, max_frame=1 << 16,
                               cert=b"\x30\x00"), signer, limits=Limits(max_collection=1 << 16))


def open_pair() -> tuple[Session, Session]:
    a = Session(A, Hello(name="a", public_key=A.public_key_bytes, max_frame=LIM.max_frame), limits=LIM)
    b = Session(B, Hello(name="b", public_key=B.public_key_bytes, max_frame=LIM.max_frame), limits=LIM)
    a.receive_data(b.start(), 0.0)
    b.receive_data(a.start(), 0.0)
    return a, b


def test_a_relayed_3_mb_hello_in_fragments_is_dropped_not_announced() -> None:
    member = Signer.from_seed(b"\x03" * 32)
    raw = hello_raw(member, 3_100_000)
    assert len(raw) > 3_000_000
    a, b = open_pair()
    events = b.receive_data(a.send_raw(raw), 1.0)            # ~380 fragments, then the whole hello
    assert not [e for e in events if isinstance(e, MemberAnnounced)]
    (drop,) = [e for e in events if isinstance(e, PacketDropped)]
    assert drop.reason is Reason.TOO_LARGE
    # the bound itself: one byte over is dropped, a hello at the bound is announced
    small = hello_raw(member, MAX_HELLO_BYTES - 600)
    assert len(small) <= MAX_HELLO_BYTES
    assert [type(e) for e in b.receive_data(a.send_raw(small), 2.0)] == [MemberAnnounced]


class _Owner:
    def __init__(self) -> None:
        self.members: list = []

    def link_open(self, link, event): pass
    def link_packet(self, link, packet): pass
    def link_dropped(self, link, reason, detail): pass
    def link_closed(self, link): pass

    def link_member(self, link, packet):
        self.members.append(packet.origin)


@aio
async def test_a_catch_up_of_3_mb_of_hellos_never_overflows_the_smallest_control_lane() -> None:
    """200 stored hellos of ~16 KiB (3.2 MB) to a new peer, with send_queue_bytes at its smallest
    (the control lane's cap is then 256 KiB): the old catch-up queued them all in the control lane at
    once and the link closed with send_stalled; paced, they all arrive and the link stays open."""
    members = [Signer.from_seed(bytes([i, 7]) * 16) for i in range(200)]
    hellos = {m.node_id: hello_raw(m, 16_000) for m in members}
    ab, ba = _Pipe(1 << 16), _Pipe(1 << 16)
    settings = LinkSettings(ping_interval=60, peer_timeout=120, send_queue_bytes=LIM.max_frame)
    owner_a, owner_b = _Owner(), _Owner()
    a = Link(MemoryStream(ba, ab, B.node_id), open_pair()[0].__class__(
        A, Hello(name="a", public_key=A.public_key_bytes, max_frame=LIM.max_frame), limits=LIM),
        outbound=True, owner=owner_a, settings=settings)
    b = Link(MemoryStream(ab, ba, A.node_id), Session(
        B, Hello(name="b", public_key=B.public_key_bytes, max_frame=LIM.max_frame), limits=LIM),
        outbound=False, owner=owner_b, settings=settings)
    runs = [asyncio.ensure_future(a.run()), asyncio.ensure_future(b.run())]
    try:
        await wait_for(lambda: a.is_open and b.is_open, "the link to open")
        assert sum(map(len, hellos.values())) > 3_000_000 > a.queue.max_control_bytes
        a.announce(list(hellos), hellos.get)
        assert a.queue.control_bytes <= a.queue.max_control_bytes // 2
        await wait_for(lambda: len(owner_b.members) == len(members), "every hello at the peer")
        assert sorted(owner_b.members) == sorted(hellos) and a.state is LinkState.OPEN
        assert a.dropped["control_overflow"] == 0 and a.close_reason is None
    finally:
        a.close("bye")
        b.close("bye")
        await asyncio.gather(*runs, return_exceptions=True)
