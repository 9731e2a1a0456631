"""Two Sessions talking to each other in memory (SPEC §6)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.wire.errors import Reason, SessionError
from meshnode.wire.frames import encode_frame, fragment_packet
from meshnode.wire.limits import Limits
from meshnode.wire.packet import (
    Ack, Bye, Fragment, Hello, Kind, Ping, Signer, VectorBlock, Vectors, decode_packet, encode_packet,
    set_hop_limit,
)
from meshnode.wire.session import (
    Closed, HelloReceived, PacketDropped, PacketReceived, PongReceived, Session, SessionFailed, State,
)

from ._support import A, B, C, FEW, SPACE, random_trits

LIM = Limits(max_frame=1 << 16, fragment_size=1 << 13, reassembly_cap=1 << 20)


def make(signer: Signer, *, keys: dict | None = None, limits: Limits = LIM, minor: int = 0, **hello_kw) -> Session:
    hello = Hello(name=signer.node_id.hex()[:8], public_key=signer.public_key_bytes, caps=("vectors",),
                  topics=("t",), max_frame=limits.max_frame, **hello_kw)
    keys = keys or {}
    return Session(signer, hello, limits=limits, key_for=keys.get, minor=minor)


def pair(**kw) -> tuple[Session, Session]:
    a, b = make(A, **kw), make(B, **kw)
    ea = a.receive_data(b.start(), 0.0)
    eb = b.receive_data(a.start(), 0.0)
    assert [type(e) for e in ea] == [HelloReceived] and [type(e) for e in eb] == [HelloReceived]
    assert a.state is State.OPEN and b.state is State.OPEN
    return a, b


def vectors(seed: int = 0, count: int = 1, dim: int = 256) -> Vectors:
    return Vectors(topic="t", vectors=VectorBlock.from_trits(random_trits(seed, count, dim), SPACE))


def test_hello_exchange():
    a, b = make(A), make(B)
    assert a.state is State.NEW
    hello_a = a.start()
    assert a.state is State.HELLO_SENT
    (ev,) = b.receive_data(hello_a, 0.0)           # b has not sent its hello yet
    assert isinstance(ev, HelloReceived) and ev.node_id == A.node_id and ev.hello.name == a.hello.name
    assert b.state is State.HELLO_RECEIVED and b.peer_hello == ev.hello and b.peer_node_id == A.node_id
    b_hello = b.start()
    assert b.state is State.OPEN
    (ev,) = a.receive_data(b_hello, 0.0)
    assert ev.node_id == B.node_id and a.state is State.OPEN and a.negotiated_minor == 0
    with pytest.raises(SessionError):
        a.start()                                  # only once


def test_version_negotiation_takes_the_lower_minor():
    a, b = make(A, minor=3), make(B, minor=1)
    (ea,) = a.receive_data(b.start(), 0.0)
    (eb,) = b.receive_data(a.start(), 0.0)
    assert ea.minor == eb.minor == 1 == a.negotiated_minor == b.negotiated_minor
    (ev,) = b.receive_data(a.send(Ack(ref=bytes(16))), 0.0)
    assert ev.packet.header.minor == 1


def test_different_major_is_refused_naming_both_versions():
    a, b = make(A), make(B)
    hello = bytearray(a.start()[4:])
    hello[4] = 2                                   # a major-2 peer
    events = b.receive_data(encode_frame(bytes(hello)), 0.0)
    (ev,) = events
    assert isinstance(ev, SessionFailed) and ev.error.reason is Reason.VERSION_REFUSED
    assert "2.0" in str(ev.error) and "1.0" in str(ev.error)
    assert b.state is State.CLOSED
    bye = decode_packet(b.data_to_send()[4:], limits=LIM)
    assert isinstance(bye.body, Bye) and bye.body.reason == "version_refused"
    assert b.receive_data(b"anything", 1.0) == []           # ignored once closed


def test_other_major_after_open_is_only_dropped():
    a, b = pair()
    raw = bytearray(encode_packet(Ack(ref=bytes(16)), A))
    raw[4] = 2
    (ev,) = b.receive_data(encode_frame(bytes(raw)), 0.0)
    assert isinstance(ev, PacketDropped) and ev.reason is Reason.UNSUPPORTED_VERSION
    assert b.state is State.OPEN


def test_ping_pong_with_rtt():
    a, b = pair()
    ping = a.ping(10.0)
    assert b.receive_data(ping, 10.1) == []        # answered automatically, into the outbox
    pong = b.data_to_send()
    assert b.data_to_send() == b""
    assert decode_packet(pong[4:], limits=LIM).header.kind is Kind.PONG
    (ev,) = a.receive_data(pong, 10.25)
    assert isinstance(ev, PongReceived) and ev.seq == 0 and ev.rtt == pytest.approx(0.25)
    a.receive_data(b"", 11)
    second = a.ping(11.0)
    b.receive_data(second, 11.0)
    (ev,) = a.receive_data(b.data_to_send(), 11.5)
    assert ev.seq == 1 and ev.rtt == pytest.approx(0.5)


def test_unsolicited_pong_has_no_rtt():
    a, b = pair()
    raw = encode_packet(Ping(seq=99), B)          # make b answer a ping a never sent... by pinging b directly
    b.receive_data(encode_frame(encode_packet(Ping(seq=42), A)), 0.0)
    (ev,) = a.receive_data(b.data_to_send(), 1.0)
    assert ev == PongReceived(42, None)
    assert raw


@FEW
@given(seed=st.integers(0, 2**16), max_chunk=st.integers(1, 5000))
def test_large_packet_is_fragmented_and_delivered(seed, max_chunk):
    a, b = pair()
    body = Vectors(topic="t", vectors=VectorBlock.from_trits(random_trits(seed, 16, 4096), SPACE, "dense2"))
    data = a.send(body)
    assert len(data) > LIM.fragment_size           # several frames
    rng = random.Random(seed)
    events = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, max_chunk)
        events += b.receive_data(data[pos:pos + step], 1.0)
        pos += step
    (ev,) = events
    assert isinstance(ev, PacketReceived) and ev.packet.body == body and ev.packet.header.origin == A.node_id
    assert b.reassembler.bytes_held == 0


def test_peer_max_frame_is_respected():
    a = make(A)
    b = make(B, limits=Limits(max_frame=2048, fragment_size=1024, reassembly_cap=1 << 20))
    a.receive_data(b.start(), 0.0)
    b.receive_data(a.start(), 0.0)
    data = a.send(vectors(1, 4, 4096))
    frames = []
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "little")
        frames.append(n)
        pos += 4 + n
    assert max(frames) <= 2048
    (ev,) = b.receive_data(data, 0.0)
    assert isinstance(ev, PacketReceived)


def test_tampered_packet_is_dropped_and_session_keeps_working():
    a, b = pair()
    raw = bytearray(encode_packet(vectors(2), A))
    raw[raw.index(b"\xa5topic\xa1t") + 7] ^= 0x01  # topic "t" -> "u": still a valid body, now forged
    (ev,) = b.receive_data(a.send_raw(bytes(raw)), 0.0)
    assert isinstance(ev, PacketDropped) and ev.reason is Reason.BAD_SIGNATURE
    raw = bytearray(encode_packet(vectors(2), A))
    raw[-1] ^= 0x01                               # in the signature itself
    (ev,) = b.receive_data(a.send_raw(bytes(raw)), 0.0)
    assert ev.reason is Reason.BAD_SIGNATURE and b.state is State.OPEN
    (ev,) = b.receive_data(a.send(vectors(3)), 0.0)
    assert isinstance(ev, PacketReceived)


def test_malformed_and_unsigned_packets_are_dropped():
    a, b = pair()
    (ev,) = b.receive_data(encode_frame(b"MNPK\x01garbage"), 0.0)
    assert ev.reason is Reason.TRUNCATED and b.state is State.OPEN
    unsigned = encode_packet(Ack(ref=bytes(16)), None, origin=A.node_id)
    (ev,) = b.receive_data(encode_frame(unsigned), 0.0)
    assert ev.reason is Reason.UNSIGNED
    (ev,) = b.receive_data(a.send(Ack(ref=bytes(16))), 0.0)
    assert isinstance(ev, PacketReceived)


def test_unknown_origin_is_dropped_and_known_one_forwarded():
    a, b = pair()
    from_c = encode_packet(vectors(4), C, hop_limit=5)
    (ev,) = b.receive_data(a.send_raw(set_hop_limit(from_c, 4)), 0.0)
    assert isinstance(ev, PacketDropped) and ev.reason is Reason.UNKNOWN_ORIGIN
    a2, b2 = make(A), make(B, keys={C.node_id: C.public_key})
    a2.receive_data(b2.start(), 0.0)
    b2.receive_data(a2.start(), 0.0)
    (ev,) = b2.receive_data(a2.send_raw(set_hop_limit(from_c, 4)), 0.0)
    assert isinstance(ev, PacketReceived) and ev.packet.header.origin == C.node_id
    assert ev.packet.header.hop_limit == 4


def test_data_before_hello_is_a_violation():
    a, b = make(A), make(B)
    b.start()
    (ev,) = b.receive_data(encode_frame(encode_packet(vectors(5), A)), 0.0)
    assert isinstance(ev, SessionFailed) and ev.error.reason is Reason.PROTOCOL_VIOLATION
    assert b.state is State.CLOSED
    assert decode_packet(b.data_to_send()[4:], limits=LIM).body.reason == "protocol_violation"


def test_bye_before_hello_is_allowed_when_its_origin_is_known():
    a, b = make(A), make(B, keys={A.node_id: A.public_key})
    (ev,) = b.receive_data(a.close("going away"), 0.0)
    assert ev == Closed("going away", None) and b.state is State.CLOSED and a.state is State.CLOSED
    # with no key for its origin (no hello yet, not in the key store) it cannot be verified: dropped
    a, b = make(A), make(B)
    (ev,) = b.receive_data(a.close("going away"), 0.0)
    assert ev.reason is Reason.UNKNOWN_ORIGIN and b.state is State.NEW


def test_second_hello_is_a_violation():
    a, b = pair()
    again = encode_frame(encode_packet(a.hello, A))
    (ev,) = b.receive_data(again, 0.0)
    assert isinstance(ev, SessionFailed) and ev.error.reason is Reason.PROTOCOL_VIOLATION


def test_hello_must_be_self_consistent():
    a, b = make(A), make(B)
    b.start()
    # signed by A but carrying C's key: origin is not SHA-256(public_key)
    forged = encode_frame(encode_packet(Hello(name="x", public_key=C.public_key_bytes), A))
    (ev,) = b.receive_data(forged, 0.0)
    assert isinstance(ev, PacketDropped) and ev.reason is Reason.BAD_SIGNATURE
    assert b.state is State.HELLO_SENT
    tampered = bytearray(a.start())
    tampered[4 + 80] ^= 1
    (ev,) = b.receive_data(bytes(tampered), 0.0)
    assert isinstance(ev, PacketDropped) and b.state is State.HELLO_SENT
    unsigned = encode_frame(encode_packet(a.hello, None, origin=A.node_id))
    (ev,) = b.receive_data(unsigned, 0.0)
    assert ev.reason is Reason.UNSIGNED
    (ev,) = b.receive_data(encode_frame(encode_packet(a.hello, A)), 0.0)
    assert isinstance(ev, HelloReceived) and b.state is State.OPEN


def test_framing_error_is_fatal():
    a, b = pair()
    events = b.receive_data(a.send(Ack(ref=bytes(16))) + (LIM.max_frame + 1).to_bytes(4, "little"), 0.0)
    assert isinstance(events[0], PacketReceived)         # the good frame before the bad prefix is kept
    assert isinstance(events[1], SessionFailed) and events[1].error.reason is Reason.TOO_LARGE
    assert b.state is State.CLOSED and b.data_to_send()


def test_close_and_bye():
    a, b = pair()
    data = a.close("shutdown", "maintenance")
    assert a.state is State.CLOSED and a.close() == b""
    (ev,) = b.receive_data(data + a.state.value.encode(), 0.0)    # bytes after the bye are ignored
    assert ev == Closed("shutdown", "maintenance") and b.state is State.CLOSED
    with pytest.raises(SessionError):
        a.send(Ack(ref=bytes(16)))
    with pytest.raises(SessionError):
        a.ping(0.0)


def test_local_misuse():
    a = make(A)
    with pytest.raises(SessionError):
        a.send(Ack(ref=bytes(16)))                # before hello
    a2, _ = pair()
    with pytest.raises(SessionError):
        a2.send(a2.hello)
    with pytest.raises(SessionError):
        a2.send(Fragment(whole=bytes(16), index=0, count=1, total=1, data=b"x"))
    with pytest.raises(ValueError):
        Session(A, Hello(name="x", public_key=B.public_key_bytes))
    big = Session(A, Hello(name="x", public_key=A.public_key_bytes, max_frame=1 << 30), limits=LIM)
    assert big.hello.max_frame == LIM.max_frame


def test_fragment_rules():
    a, b = pair()
    raw = encode_packet(vectors(6, 16, 4096), A)
    # fragments made by someone other than the peer are refused
    foreign = fragment_packet(raw, C, fragment_size=4096, limits=LIM)
    (ev,) = b.receive_data(encode_frame(foreign[0]), 0.0)
    assert ev.reason is Reason.BAD_FRAGMENT
    # a reassembled packet that is itself a fragment is refused
    inner = encode_packet(Fragment(whole=bytes(16), index=0, count=1, total=1, data=b"x"), A)
    events = []
    for f in fragment_packet(inner, A, fragment_size=40, limits=LIM):
        events += b.receive_data(encode_frame(f), 0.0)
    (ev,) = events
    assert ev.reason is Reason.BAD_FRAGMENT
    # an unsigned packet, fragmented, is still refused once reassembled
    unsigned = encode_packet(vectors(7, 16, 4096), None, origin=A.node_id)
    events = []
    for f in fragment_packet(unsigned, A, fragment_size=4096, limits=LIM):
        events += b.receive_data(encode_frame(f), 0.0)
    (ev,) = events
    assert ev.reason is Reason.UNSIGNED
    # inconsistent pieces of one set are dropped (and so is the set), the session goes on
    w = bytes(range(16))
    first = encode_packet(Fragment(whole=w, index=0, count=3, total=300, data=b"x" * 100), None, origin=A.node_id)
    other = encode_packet(Fragment(whole=w, index=1, count=4, total=300, data=b"x" * 100), None, origin=A.node_id)
    assert b.receive_data(encode_frame(first), 0.0) == []
    (ev,) = b.receive_data(encode_frame(other), 0.0)
    assert ev.reason is Reason.BAD_FRAGMENT and b.reassembler.bytes_held == 0 and b.state is State.OPEN
    # lost pieces expire
    pieces = fragment_packet(raw, A, fragment_size=4096, limits=LIM)
    for f in pieces[1:]:
        assert b.receive_data(encode_frame(f), 0.0) == []
    assert b.reassembler.bytes_held > 0
    assert b.expire(LIM.reassembly_timeout) == 1 and b.reassembler.bytes_held == 0
    assert b.state is State.OPEN


def test_many_packets_both_ways_in_one_stream():
    a, b = pair()
    bodies = [vectors(i, 2, 64 * (i + 1)) for i in range(20)]
    stream = b"".join(a.send(x) for x in bodies)
    got = b.receive_data(stream, 0.0)
    assert [e.packet.body for e in got] == bodies
    back = b.receive_data(b"", 0.0)
    assert back == []
    replies = b"".join(b.send(Ack(ref=e.packet.header.packet_id)) for e in got)
    acks = a.receive_data(replies, 0.0)
    assert [e.packet.body.ref for e in acks] == [e.packet.header.packet_id for e in got]


def test_trits_survive_end_to_end():
    a, b = pair()
    t = random_trits(11, 3, 1000)
    (ev,) = b.receive_data(a.send(Vectors(topic="t", vectors=VectorBlock.from_trits(t, SPACE))), 0.0)
    assert np.array_equal(ev.packet.body.vectors.to_trits(), t)


def test_every_packet_the_session_makes_carries_its_clock():
    """hello, ping, pong, fragments, a bye on failure and a bye on close: one clock (the owner's; in a
    simulation, virtual time), not the system clock behind the owner's back."""
    made: list[bytes] = []
    a, b = make(A), make(B)
    a.wall_us = b.wall_us = lambda: 42_000_123
    a.observer = b.observer = lambda direction, raw: made.append(raw) if direction == "out" else None
    a.receive_data(b.start(), 0.0)
    b.receive_data(a.start(), 0.0)
    b.receive_data(a.ping(1.0), 1.0)
    a.receive_data(b.data_to_send(), 1.1)                                 # the pong
    frames = b"".join(a.send_frames(vectors(count=40, dim=2048)))        # larger than one fragment
    b.receive_data(frames, 1.2)
    b.receive_data(b"\xff\xff\xff\xff", 1.3)                              # a framing error: b says bye
    a.close("done")
    kinds = [decode_packet(raw).header.kind for raw in made]
    assert {Kind.HELLO, Kind.PING, Kind.PONG, Kind.FRAGMENT, Kind.BYE} <= set(kinds)
    assert kinds.count(Kind.BYE) == 2
    assert {decode_packet(raw).header.timestamp_us for raw in made} == {42_000_123}


def test_without_a_clock_the_session_stamps_the_system_time():
    import time

    a, _ = pair()
    before = time.time_ns() // 1000
    stamp = decode_packet(a.ping(0.0)[4:]).header.timestamp_us
    assert before <= stamp <= time.time_ns() // 1000
