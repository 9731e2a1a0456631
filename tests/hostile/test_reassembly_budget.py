"""Issue 16 item 5: fragment floods from several member identities, one link each, are bounded by one
reassembly cap for the whole node (not one per link), each origin by its share, and an honest peer's
large packet still gets through."""

from __future__ import annotations

import pytest

from meshnode.wire.frames import ReassemblyBudget
from meshnode.wire.limits import Limits
from meshnode.wire.packet import Hello, Signer, VectorBlock, Vectors
from meshnode.wire.session import PacketDropped, PacketReceived, Session

pytestmark = pytest.mark.timeout(60)

LIM = Limits(max_frame=1 << 16, fragment_size=1 << 12, reassembly_cap=1 << 20)   # 1 MiB for all links
ATTACKERS = [Signer.from_seed(bytes([i]) * 32) for i in range(1, 4)]
HONEST = Signer.from_seed(b"\x09" * 32)
VICTIM = Signer.from_seed(b"\x0a" * 32)


def session(signer: Signer, budget: ReassemblyBudget | None = None) -> Session:
    hello = Hello(name=signer.node_id.hex()[:6], public_key=signer.public_key_bytes, max_frame=LIM.max_frame)
    return Session(signer, hello, limits=LIM, **({} if budget is None else {"reassembly_budget": budget}))


def linked(peer: Signer, budget: ReassemblyBudget) -> tuple[Session, Session]:
    """(the peer's session, the victim's session for that link), both open."""
    them, us = session(peer), session(VICTIM, budget)
    them.receive_data(us.start(), 0.0)
    us.receive_data(them.start(), 0.0)
    return them, us


def packet(seed: int, kib: int) -> Vectors:
    import numpy as np
    trits = np.random.default_rng(seed).integers(-1, 2, size=(kib * 4, 1024), dtype=np.int8)   # ~256 B a row
    return Vectors(topic="t", vectors=VectorBlock.from_trits(trits, b"space", "dense2"))


def test_three_members_flooding_fragment_sets_stay_within_one_cap_and_an_honest_peer_gets_through() -> None:
    budget = ReassemblyBudget(LIM.reassembly_cap)
    victims = []
    for k, attacker in enumerate(ATTACKERS):
        them, us = linked(attacker, budget)
        victims.append(us)
        for i in range(40):                      # 40 sets of ~64 KiB, never completed (the last piece held back)
            frames = list(them.send_frames(packet(100 * k + i, 64)))
            us.receive_data(b"".join(frames[:-1]), float(i) / 10)
            held = sum(v.reassembler.bytes_held for v in victims)
            assert held == budget.held <= LIM.reassembly_cap
            assert budget.of(attacker.node_id) <= budget.per_origin
    # what the three floods hold in all: at most three shares, whatever the number of links
    assert budget.held <= 3 * budget.per_origin < LIM.reassembly_cap
    honest, us = linked(HONEST, budget)
    body = packet(999, 200)                      # 200 KiB, fragmented
    events = us.receive_data(honest.send(body), 5.0)
    assert [type(e) for e in events] == [PacketReceived] and events[0].packet.body == body
    for v in victims:                            # the links close: every byte comes back
        v.close()
    assert budget.held == 0


def test_without_a_shared_budget_each_link_had_a_cap_of_its_own() -> None:
    """What the issue measured (60 -> 254 MB with three identities): per-link caps add up."""
    sessions = []
    for k, attacker in enumerate(ATTACKERS):
        them, us = linked(attacker, ReassemblyBudget(LIM.reassembly_cap, LIM.reassembly_cap))
        sessions.append(us)
        for i in range(40):
            frames = list(them.send_frames(packet(100 * k + i, 64)))
            events = us.receive_data(b"".join(frames[:-1]), float(i) / 10)
            assert not [e for e in events if isinstance(e, PacketDropped)]
    assert sum(s.reassembler.bytes_held for s in sessions) > LIM.reassembly_cap
