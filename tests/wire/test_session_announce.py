"""Session additions for the daemon: member announcements (relayed hellos), lazy frame output and the
frame observer used for packet capture."""

from __future__ import annotations

from meshnode.wire.errors import Reason
from meshnode.wire.frames import FrameDecoder
from meshnode.wire.limits import Limits
from meshnode.wire.packet import Hello, Kind, decode_packet, encode_packet, set_hop_limit
from meshnode.wire.session import (
    HelloReceived, MemberAnnounced, PacketDropped, PacketReceived, PongReceived, SessionFailed, State,
)

from ._support import A, B, C
from .test_session import LIM, make, pair, vectors


def hello_of(signer, **kw) -> bytes:
    return encode_packet(Hello(name="c", public_key=signer.public_key_bytes, max_frame=1 << 16, **kw), signer)


def test_hello_of_another_origin_is_an_announcement():
    a, b = pair()
    raw_c = hello_of(C, cert=b"\x30\x00")
    (ev,) = b.receive_data(a.send_raw(set_hop_limit(raw_c, 3)), 1.0)
    assert isinstance(ev, MemberAnnounced)
    assert ev.packet.origin == C.node_id and ev.packet.body.cert == b"\x30\x00" and ev.packet.header.hop_limit == 3
    assert b.state is State.OPEN
    # Once b holds c's key (as the daemon's member directory would), a packet c signed and a relayed is accepted.
    b.key_for = {C.node_id: C.public_key_bytes}.get
    from_c = encode_packet(vectors(1), C)
    (ev,) = b.receive_data(a.send_raw(from_c), 2.0)
    assert isinstance(ev, PacketReceived) and ev.packet.origin == C.node_id


def test_announcement_with_a_bad_self_signature_is_dropped():
    a, b = pair()
    raw_c = bytearray(hello_of(C))
    raw_c[16] ^= 1                                   # the timestamp: the signature no longer verifies
    (ev,) = b.receive_data(a.send_raw(bytes(raw_c)), 1.0)
    assert isinstance(ev, PacketDropped) and ev.reason is Reason.BAD_SIGNATURE
    assert b.state is State.OPEN
    # A hello whose origin is not the hash of the key it carries is refused the same way.
    forged = encode_packet(Hello(name="x", public_key=C.public_key_bytes, max_frame=1 << 16), A)
    (ev,) = b.receive_data(a.send_raw(forged), 1.0)
    assert isinstance(ev, PacketDropped) and ev.reason is Reason.BAD_SIGNATURE


def test_second_hello_from_the_peer_itself_is_still_a_violation():
    a, b = pair()
    again = encode_packet(a.hello, A)
    events = b.receive_data(a.send_raw(again), 1.0)
    assert [type(e) for e in events] == [SessionFailed]
    assert events[0].error.reason is Reason.PROTOCOL_VIOLATION and b.state is State.CLOSED
    bye = decode_packet(FrameDecoder().feed(b.data_to_send())[0])
    assert bye.kind is Kind.BYE and bye.body.reason == "protocol_violation"


def test_hello_received_carries_the_packet():
    a, b = make(A), make(B)
    a.start()
    (ev,) = a.receive_data(b.start(), 0.0)
    assert isinstance(ev, HelloReceived) and ev.packet is not None
    assert ev.packet.origin == B.node_id and ev.packet.kind is Kind.HELLO


def test_send_frames_is_lazy_and_equals_send():
    a, b = pair()
    body = vectors(2, count=16, dim=4096)            # about 16 KiB packed: several 8 KiB fragments
    frames = a.send_frames(body)
    first = next(frames)
    # A ping can go out between two fragments of the big packet; the receiver takes both in order.
    ping = a.ping(5.0)
    rest = list(frames)
    assert len(rest) >= 1
    events = b.receive_data(first + ping, 5.0)
    assert events == []                              # the ping was answered (pong in b's outbox), nothing whole yet
    pong_events = a.receive_data(b.data_to_send(), 5.5)
    assert [type(e) for e in pong_events] == [PongReceived]
    events = b.receive_data(b"".join(rest), 6.0)
    assert [type(e) for e in events] == [PacketReceived] and events[0].packet.body == body
    assert a.frame_count(len(encode_packet(body, A))) == 1 + len(rest)


def test_observer_sees_every_frame_both_ways():
    seen_a: list[tuple[str, int]] = []
    seen_b: list[tuple[str, int]] = []
    lim = Limits(max_frame=1 << 16, fragment_size=1 << 13, reassembly_cap=1 << 20)
    a = make(A, limits=lim)
    b = make(B, limits=lim)
    a.observer = lambda d, raw: seen_a.append((d, decode_packet(raw).kind))
    b.observer = lambda d, raw: seen_b.append((d, decode_packet(raw).kind))
    b.receive_data(a.start(), 0.0)
    a.receive_data(b.start(), 0.0)
    data = a.send(vectors(3, count=16, dim=4096))
    b.receive_data(data, 1.0)
    out_kinds = [k for d, k in seen_a if d == "out"]
    in_kinds = [k for d, k in seen_b if d == "in"]
    assert out_kinds[0] is Kind.HELLO and set(out_kinds[1:]) == {Kind.FRAGMENT}
    assert in_kinds == out_kinds                    # fragments as such; the reassembled packet is not repeated
    assert ("out", Kind.HELLO) in seen_b and ("in", Kind.HELLO) in seen_a
    assert LIM.fragment_size == lim.fragment_size
