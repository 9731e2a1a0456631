"""The send queue's drop policy and frame order, and a Link over an in-memory stream pair: small
packets and pings overtake the fragments of a 10 MB packet."""

from __future__ import annotations

import asyncio

import numpy as np

from meshnode.net.link import Link, LinkSettings
from meshnode.net.send_queue import SendQueue
from meshnode.wire.limits import Limits
from meshnode.wire.packet import Hello, Signer, Tensor, VectorBlock, Vectors, Knowledge, encode_packet
from meshnode.wire.session import Session

from .._mesh import aio, wait_for

A = Signer.from_seed(bytes(range(32)))
B = Signer.from_seed(bytes(range(32, 64)))


def item(tag: bytes, n: int = 1):
    return iter([tag + bytes([i]) for i in range(n)])


def test_control_goes_first_and_small_packets_overtake_fragments():
    q = SendQueue(16, 1 << 20)
    assert q.put(item(b"big", 5), 500, own=True, bulk=True)
    assert q.next_frame() == b"big\x00"
    assert q.put(item(b"small"), 10, own=False, bulk=False)
    assert q.put_control(b"ping")
    assert [q.next_frame() for _ in range(3)] == [b"ping", b"small\x00", b"big\x01"]
    assert [q.next_frame() for _ in range(4)] == [b"big\x02", b"big\x03", b"big\x04", None]
    assert q.packets == 0 and q.bytes == 0 and q.stats.packets_sent == 2


def test_a_stream_of_small_packets_does_not_starve_a_large_one():
    q = SendQueue(1000, 1 << 20, small_burst=4)
    q.put(item(b"B", 3), 300, own=True, bulk=True)
    for i in range(20):
        q.put(iter([b"s%d" % i]), 10, own=True, bulk=False)
    order = [q.next_frame() for _ in range(23)]
    assert [f for f in order if f.startswith(b"B")] == [b"B\x00", b"B\x01", b"B\x02"]
    assert order.index(b"B\x01") < 12           # one fragment per 4 small frames, not after all 20


def test_full_queue_evicts_the_least_valuable_first_and_refuses_what_it_cannot_place():
    q = SendQueue(4, 1000)
    assert q.put(item(b"fb", 2), 300, own=False, bulk=True)      # forwarded bulk
    assert q.put(item(b"fs"), 100, own=False, bulk=False)        # forwarded small
    assert q.put(item(b"ob", 2), 300, own=True, bulk=True)       # own bulk
    assert q.put(item(b"os"), 100, own=True, bulk=False)         # own small
    # the queue is full (4 packets): a forwarded small packet pushes out the forwarded bulk one
    assert q.put(item(b"fs2"), 100, own=False, bulk=False)
    assert q.stats.evicted == {"forwarded_bulk": 1}
    # a forwarded bulk packet has nothing of lower value to push out: refused, nothing evicted
    assert not q.put(item(b"fb2", 2), 100, own=False, bulk=True)
    assert q.stats.refused == {"forwarded_bulk": 1} and q.stats.evicted == {"forwarded_bulk": 1}
    # an own packet needing more bytes than one victim frees: both forwarded ones go, oldest first;
    # the own bulk packet (worth more) stays
    assert q.put(item(b"os2"), 600, own=True, bulk=False)
    assert q.stats.evicted == {"forwarded_bulk": 1, "forwarded": 2}
    frames = []
    while (f := q.next_frame()) is not None:
        frames.append(f)
    assert frames == [b"os\x00", b"os2\x00", b"ob\x00", b"ob\x01"]
    assert q.bytes == 0 and q.packets == 0


def test_a_started_packet_is_never_evicted_and_bytes_stay_bounded():
    q = SendQueue(10, 1000)
    q.put(item(b"fb", 3), 900, own=False, bulk=True)
    assert q.next_frame() == b"fb\x00"                            # started
    assert not q.put(item(b"os"), 200, own=True, bulk=False)      # the only victim is in flight
    assert q.bytes == 900
    assert not q.put(item(b"huge"), 1001, own=True, bulk=False)   # larger than the whole queue, not alone
    assert q.put(item(b"os"), 100, own=True, bulk=False) and q.bytes == 1000


def test_a_packet_larger_than_the_queue_travels_alone():
    q = SendQueue(10, 1000)
    assert q.put(item(b"big", 2), 5000, own=True, bulk=True)      # empty data lane: admitted
    assert q.bytes == 5000
    assert not q.put(item(b"fs"), 10, own=False, bulk=False)      # nothing of lower value joins it
    assert not q.put(item(b"big2", 2), 5000, own=True, bulk=True)
    assert q.next_frame() == b"big\x00"                           # started: now nothing pushes it out
    assert not q.put(item(b"os"), 10, own=True, bulk=False)
    assert [q.next_frame() for _ in range(2)] == [b"big\x01", None]
    assert q.bytes == 0 and q.put(item(b"os"), 10, own=True, bulk=False)


def test_control_lane_has_its_own_cap():
    q = SendQueue(10, 1000, max_control_bytes=100)
    assert q.put_control(b"x" * 60)
    assert not q.put_control(b"y" * 60)
    assert q.put_control(b"bye" * 30, force=True)
    assert q.control_bytes == 150


# ------------------------------------------------------------------------------ Link over memory pipes


class _Pipe:
    """One direction of a byte pipe with a bounded buffer; the reader side is slow on purpose
    (a 64 KiB read per event-loop turn), like a link slower than the sender."""

    def __init__(self, limit: int) -> None:
        self.buf = bytearray()
        self.limit = limit
        self.closed = False
        self.changed = asyncio.Event()


class MemoryStream:
    def __init__(self, inbound: _Pipe, outbound: _Pipe, peer: bytes) -> None:
        self._in, self._out, self._peer = inbound, outbound, peer

    peer_node_id = property(lambda self: self._peer)
    peer_certificate = property(lambda self: None)
    peer_address = property(lambda self: "memory")

    async def read(self, max_bytes: int = 1 << 16) -> bytes:
        p = self._in
        while not p.buf and not p.closed:
            p.changed.clear()
            await p.changed.wait()
        await asyncio.sleep(0.002)       # about 30 MB/s: slower than the sender
        data = bytes(p.buf[:max_bytes])
        del p.buf[:max_bytes]
        p.changed.set()
        return data

    def write(self, data: bytes) -> None:
        if not self._out.closed:
            self._out.buf += data
            self._out.changed.set()

    async def drain(self) -> None:
        p = self._out
        while len(p.buf) > p.limit and not p.closed:
            p.changed.clear()
            await p.changed.wait()

    def close(self) -> None:
        for p in (self._in, self._out):
            p.closed = True
            p.changed.set()

    async def wait_closed(self) -> None:
        return None


class Recorder:
    def __init__(self) -> None:
        self.packets: list = []

    def link_open(self, link, event): pass
    def link_member(self, link, packet): pass
    def link_dropped(self, link, reason, detail): pass
    def link_closed(self, link): pass

    def link_packet(self, link, packet):
        self.packets.append(packet)


LIM = Limits(max_frame=1 << 20, fragment_size=64 << 10)


def _link(signer: Signer, peer: bytes, inbound: _Pipe, outbound: _Pipe, owner) -> Link:
    hello = Hello(name=signer.node_id.hex()[:4], public_key=signer.public_key_bytes, max_frame=LIM.max_frame)
    session = Session(signer, hello, limits=LIM)
    settings = LinkSettings(ping_interval=60, peer_timeout=120, send_queue=64, send_queue_bytes=32 << 20)
    return Link(MemoryStream(inbound, outbound, peer), session, outbound=True, owner=owner, settings=settings)


def _big_packet() -> bytes:
    data = np.random.default_rng(0).standard_normal((1024, 2560)).astype(np.float32)   # 10 MiB
    body = Knowledge(topic="big", task="t", form="linear", classes=tuple(f"c{i}" for i in range(1024)),
                     weight=Tensor.from_array(data))
    return encode_packet(body, A, limits=Limits(max_body=64 << 20))


@aio
async def test_a_ping_and_a_small_packet_are_not_stuck_behind_a_10_mb_packet():
    ab, ba = _Pipe(256 << 10), _Pipe(256 << 10)
    rec_a, rec_b = Recorder(), Recorder()
    link_a = _link(A, B.node_id, ba, ab, rec_a)
    link_b = _link(B, A.node_id, ab, ba, rec_b)
    tasks = [asyncio.create_task(link_a.run()), asyncio.create_task(link_b.run())]
    try:
        await wait_for(lambda: link_a.is_open and link_b.is_open, "both hellos")
        big = _big_packet()
        assert len(big) > 10 << 20
        assert link_a.send_packet(big, own=True)
        await wait_for(lambda: link_b.bytes_in > 1 << 20, "the first MiB of the big packet")
        small = encode_packet(Vectors(topic="s", vectors=VectorBlock.from_trits(np.ones(64, np.int8), b"x")), A)
        queued_at = link_b.bytes_in
        assert link_a.send_packet(small, own=True)
        link_a._queue_control(link_a.session.ping(link_a.clock.monotonic()))
        at_small = None

        def small_arrived() -> bool:
            nonlocal at_small
            if at_small is None and any(p.raw == small for p in rec_b.packets):
                at_small = link_b.bytes_in
            return at_small is not None

        await wait_for(small_arrived, "the small packet")
        await wait_for(lambda: link_a.rtt is not None, "the pong")
        # behind it were only the pipe's buffer (256 KiB) and the fragment being written (64 KiB)
        assert at_small - queued_at < 1 << 20, f"the small packet waited for {at_small - queued_at} bytes"
        await wait_for(lambda: len(rec_b.packets) == 2, "the big packet", timeout=30)
        assert [p.raw for p in rec_b.packets] == [small, big]
        assert link_a.stats()["queue"] == {"packets": 0, "bytes": 0, "control_bytes": 0}
    finally:
        link_a.close("test over")
        await asyncio.gather(*tasks, return_exceptions=True)
    assert link_b.close_reason == "peer_bye:test over"


class _StoppedWallClock:
    """The real monotonic clock with a wall clock that stands still (the simulator's, in effect)."""

    def monotonic(self) -> float:
        import time
        return time.monotonic()

    def wall_us(self) -> int:
        return 1_735_689_600_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_the_session_stamps_its_packets_with_the_links_clock():
    """One clock per link: the hello, pings and byes the session makes carry the same time as the
    capture records and the node's data packets (the link's clock), not the system clock."""
    from meshnode.wire.packet import decode_packet

    hello = Hello(name="a", public_key=A.public_key_bytes, max_frame=LIM.max_frame)
    session = Session(A, hello, limits=LIM)
    Link(MemoryStream(_Pipe(1), _Pipe(1), B.node_id), session, outbound=True, owner=Recorder(),
         clock=_StoppedWallClock())
    frame = session.start()
    assert decode_packet(frame[4:]).header.timestamp_us == 1_735_689_600_000_000
