"""ReassemblyBudget: one cap for every link's fragment sets, a share per origin, no origin evicting
another's sets, and every byte given back (complete, expire, drop, session close)."""

from __future__ import annotations

import pytest

from meshnode.wire.errors import FrameError, Reason
from meshnode.wire.frames import PIECE_OVERHEAD, SET_OVERHEAD, Reassembler, ReassemblyBudget
from meshnode.wire.limits import Limits
from meshnode.wire.packet import Fragment, Packet, decode_packet, encode_packet

LIM = Limits(max_frame=1 << 14, fragment_size=1 << 12, reassembly_cap=40_000, reassembly_timeout=10.0)
X, Y = b"\x01" * 32, b"\x02" * 32


def frag(origin: bytes, whole: bytes, index: int, count: int, total: int, data: bytes) -> Packet:
    return decode_packet(encode_packet(Fragment(whole=whole, index=index, count=count, total=total, data=data),
                                       None, origin=origin), limits=LIM)


def piece_cost(n: int) -> int:
    return n + PIECE_OVERHEAD


def test_shared_cap_and_per_origin_share() -> None:
    budget = ReassemblyBudget(40_000)                 # share: 10_000
    assert budget.per_origin == 10_000
    r1, r2 = Reassembler(LIM, budget), Reassembler(LIM, budget)
    r1.add(frag(X, b"a" * 16, 0, 3, 6000, b"x" * 2000), 0.0)
    r2.add(frag(X, b"b" * 16, 0, 3, 6000, b"x" * 2000), 0.0)
    assert budget.held == budget.of(X) == 2 * (SET_OVERHEAD + piece_cost(2000))
    # a set larger than one origin's share is refused at its first piece, nothing held for it
    with pytest.raises(FrameError) as e:
        r1.add(frag(Y, b"c" * 16, 0, 6, 12_000, b"y" * 2000), 0.0)
    assert e.value.reason is Reason.REASSEMBLY_FULL and budget.of(Y) == 0


def test_an_origin_evicts_only_its_own_sets() -> None:
    budget = ReassemblyBudget(12_000, per_origin=6000)
    rx, ry = Reassembler(LIM, budget), Reassembler(LIM, budget)
    ry.add(frag(Y, b"y" * 16, 0, 2, 4000, b"y" * 2000), 0.0)           # Y's set, half done
    for i in range(20):                                                   # X floods sets of its own
        rx.add(frag(X, bytes([i]) * 16, 0, 2, 4000, b"x" * 2000), float(i) / 10)
        assert budget.of(X) <= 6000 and budget.held <= 12_000
    assert rx.evicted >= 18
    # Y's set was never touched and completes
    assert ry.add(frag(Y, b"y" * 16, 1, 2, 4000, b"z" * 2000), 3.0) == b"y" * 2000 + b"z" * 2000
    assert budget.of(Y) == 0


def test_a_full_cap_refuses_rather_than_evicting_another_origin() -> None:
    budget = ReassemblyBudget(6000, per_origin=6000)
    rx, ry = Reassembler(LIM, budget), Reassembler(LIM, budget)
    rx.add(frag(X, b"x" * 16, 0, 3, 4200, b"x" * 1400), 0.0)
    rx.add(frag(X, b"x" * 16, 1, 3, 4200, b"x" * 1400), 0.0)
    rx.add(frag(X, b"w" * 16, 0, 3, 1500, b"x" * 500), 0.0)
    with pytest.raises(FrameError) as e:
        ry.add(frag(Y, b"y" * 16, 0, 2, 2000, b"y" * 1000), 0.0)
    assert e.value.reason is Reason.REASSEMBLY_FULL and budget.refused == 1
    assert len(rx) == 2 and budget.of(X) == 2 * SET_OVERHEAD + 2 * piece_cost(1400) + piece_cost(500)
    assert budget.of(Y) == 0


def test_bytes_come_back_on_complete_expire_bad_piece_and_clear() -> None:
    budget = ReassemblyBudget(100_000)
    r = Reassembler(LIM, budget)
    assert r.add(frag(X, b"a" * 16, 0, 2, 200, b"a" * 100), 0.0) is None
    assert r.add(frag(X, b"a" * 16, 1, 2, 200, b"b" * 100), 0.0) is not None       # complete
    r.add(frag(X, b"b" * 16, 0, 2, 200, b"a" * 100), 0.0)
    assert r.expire(20.0) == 1                                                      # expire
    r.add(frag(X, b"c" * 16, 0, 2, 200, b"a" * 100), 20.0)
    with pytest.raises(FrameError):
        r.add(frag(X, b"c" * 16, 1, 3, 200, b"a" * 100), 20.0)                     # bad piece: set dropped
    r.add(frag(X, b"d" * 16, 0, 2, 200, b"a" * 100), 20.0)
    r.add(frag(Y, b"e" * 16, 0, 2, 200, b"a" * 100), 20.0)
    assert budget.held > 0 and r.clear() == 2                                        # the link closes
    assert budget.held == 0 and budget.origins == 0 and r.bytes_held == 0


def test_a_closing_session_gives_its_sets_back() -> None:
    from meshnode.wire.packet import Hello
    from meshnode.wire.session import Session

    from .test_session import A, B, make

    lim = Limits(max_frame=1 << 16, fragment_size=1 << 12, reassembly_cap=1 << 20)
    budget = ReassemblyBudget(lim.reassembly_cap)
    a = make(A, limits=lim)
    b = Session(B, Hello(name="b", public_key=B.public_key_bytes, max_frame=lim.max_frame), limits=lim,
                reassembly_budget=budget)
    a.receive_data(b.start(), 0.0)
    b.receive_data(a.start(), 0.0)
    from .test_session import vectors
    frames = list(a.send_frames(vectors(1, count=16, dim=4096)))
    assert len(frames) > 2
    b.receive_data(b"".join(frames[:-1]), 1.0)                  # all but the last piece
    assert budget.held > 0 and budget.of(A.node_id) == budget.held
    b.close()
    assert budget.held == 0
