"""Gossip decisions without sockets: duplicates, replays, hop limits, topics, the member directory and
the redial backoff."""

from __future__ import annotations

import random
import time

import pytest

from meshnode import identity as idm
from meshnode.net.backoff import Backoff
from meshnode.net.peers import MemberDirectory, MemberRefused
from meshnode.net.router import DedupCache, Router, Verdict
from meshnode.wire.packet import Hello, Signer, VectorBlock, Vectors, decode_packet, encode_packet

S = 1_000_000  # microseconds per second
NOW = 1_800_000_000 * S


A = b"A" * 32   # origins
B = b"B" * 32


def test_dedup_refuses_duplicates_stale_and_future_packets():
    d = DedupCache(capacity=100, window_s=10, max_future_s=2)
    assert d.check(A, b"a" * 16, NOW, NOW) is Verdict.NEW
    assert d.check(A, b"a" * 16, NOW, NOW + 1) is Verdict.DUPLICATE
    assert d.check(A, b"b" * 16, NOW - 11 * S, NOW) is Verdict.STALE
    assert d.check(A, b"c" * 16, NOW + 3 * S, NOW) is Verdict.FUTURE   # the skew bound, not the window
    assert d.check(A, b"d" * 16, NOW + 2 * S, NOW) is Verdict.NEW
    # once the window has passed, the id is forgotten but the packet is stale anyway: a replay never passes
    assert d.check(A, b"a" * 16, NOW, NOW + 20 * S) is Verdict.STALE
    assert len(d) == 0


def test_a_full_origin_raises_its_own_stale_horizon_instead_of_forgetting_silently():
    d = DedupCache(capacity=100, window_s=100, per_origin=3)
    for i in range(5):
        assert d.check(A, bytes([i]) * 16, NOW + i, NOW) is Verdict.NEW
    assert d.held_by(A) == 3 and d.horizon_of(A) == NOW + 1
    # ids 0 and 1 were forgotten; replaying them is refused as stale, not accepted as new
    assert d.check(A, bytes([0]) * 16, NOW, NOW) is Verdict.STALE
    assert d.check(A, bytes([1]) * 16, NOW + 1, NOW) is Verdict.STALE
    assert d.check(A, bytes([4]) * 16, NOW + 4, NOW) is Verdict.DUPLICATE
    assert d.check(A, b"n" * 16, NOW + 50, NOW) is Verdict.NEW
    # another origin's packets are untouched by A's horizon
    assert d.horizon_of(B) == -1 and d.check(B, b"x" * 16, NOW, NOW) is Verdict.NEW


def test_one_origin_flooding_future_stamped_ids_cannot_push_out_another_origins_packets():
    """Issue 16, attack 2: 70,000 tiny packets stamped +280 s from one member stopped all delivery
    between honest nodes for 138 s. Now the flood ages out the flooder's own ids only."""
    d = DedupCache(capacity=1000, window_s=300, max_future_s=30)
    honest = [bytes([1, i]) * 8 for i in range(20)]
    for i, pid in enumerate(honest):
        assert d.check(B, pid, NOW + i, NOW) is Verdict.NEW
    future = far = 0
    for i in range(70_000):
        v = d.check(A, i.to_bytes(16, "big"), NOW + 280 * S, NOW + i)
        far += v is Verdict.FUTURE
        v = d.check(A, (i + 10**6).to_bytes(16, "big"), NOW + 29 * S + i, NOW + i)
        future += v is Verdict.NEW
    assert far == 70_000                      # +280 s is refused outright
    assert d.held_by(A) <= d.per_origin and len(d) <= d.capacity
    # B's ids are all still remembered (replays refused) and B's new packets are still accepted
    assert all(d.check(B, pid, NOW + i, NOW + 1) is Verdict.DUPLICATE for i, pid in enumerate(honest))
    assert d.check(B, b"new" * 5 + b"!", NOW + 1, NOW + 1) is Verdict.NEW


def test_many_flooding_origins_together_stay_within_capacity_and_the_biggest_pays():
    d = DedupCache(capacity=200, window_s=300, per_origin=150)
    for i in range(50):
        assert d.check(B, bytes([2, i]) * 8, NOW, NOW) is Verdict.NEW
    for k in range(5):
        origin = bytes([k + 10]) * 32
        for i in range(150):
            d.check(origin, bytes([k, i]) * 8, NOW, NOW)
    assert len(d) == 200
    # max-min fair: B, which sent the least, keeps at least an equal share of the cache
    assert d.held_by(B) >= 200 // 6


def test_the_journal_keeps_replays_out_after_a_restart(tmp_path):
    j = tmp_path / "replay.journal"
    r1 = Router(dedup_capacity=100, dedup_window_s=300)
    assert r1.open_journal(j, NOW) == 0
    pid = b"p" * 16
    assert r1.dedup.check(A, pid, NOW, NOW) is Verdict.NEW   # not through the router: not journalled
    r1.remember(A, b"q" * 16, NOW, NOW)
    r1.close()
    r2 = Router(dedup_capacity=100, dedup_window_s=300)
    assert r2.open_journal(j, NOW + S) == 1
    assert r2.dedup.check(A, b"q" * 16, NOW, NOW + S) is Verdict.DUPLICATE   # a replay after the restart
    assert r2.dedup.check(A, b"r" * 16, NOW + S // 2, NOW + S) is Verdict.NEW  # published while down: new
    r2.close()
    # a torn last record (killed mid-write) is ignored, the rest is kept
    with open(j, "ab") as f:
        f.write(b"x" * 10)
    r3 = Router(dedup_capacity=100, dedup_window_s=300)
    assert r3.open_journal(j, NOW + S) == 1
    r3.close()
    # ids outside the window are not restored
    r4 = Router(dedup_capacity=100, dedup_window_s=300)
    assert r4.open_journal(j, NOW + 400 * S) == 0
    r4.close()


def test_the_journal_stays_bounded(tmp_path):
    j = tmp_path / "replay.journal"
    r = Router(dedup_capacity=50, dedup_window_s=300)
    r.open_journal(j, NOW)
    for i in range(1000):
        r.remember(A, i.to_bytes(16, "big"), NOW + i, NOW + i)
    r.close()
    assert j.stat().st_size <= 2 * 50 * 56 + 56


def test_an_unreadable_journal_refuses_everything_stamped_before_the_start(tmp_path):
    j = tmp_path / "replay.journal"
    j.mkdir()    # reading a directory fails
    r = Router(dedup_capacity=50, dedup_window_s=300)
    r.open_journal(j, NOW)
    assert r.dedup.check(A, b"o" * 16, NOW - S, NOW) is Verdict.STALE
    assert r.dedup.check(A, b"n" * 16, NOW + 1, NOW) is Verdict.NEW


def test_forwarding_decrements_the_hop_limit_and_stops_at_zero():
    signer = Signer.from_seed(bytes(32))
    body = Vectors(topic="t", vectors=VectorBlock.from_trits([1, 0, -1], b"s"))
    p = decode_packet(encode_packet(body, signer, hop_limit=2))
    once = decode_packet(Router.forward_raw(p))
    assert once.header.hop_limit == 1 and once.signed_message == p.signed_message and once.signature == p.signature
    zero = decode_packet(Router.forward_raw(once))
    assert zero.header.hop_limit == 0 and Router.forward_raw(zero) is None


def test_subscriptions():
    r = Router(dedup_capacity=10, dedup_window_s=10)
    seen = []
    sub = r.subscribe("t", seen.append)
    r.subscribe("u", seen.append)
    assert [s.topic for s in r.subscribers("t")] == ["t"] and r.subscribers(None) == []
    assert r.topics == ["t", "u"]
    sub.cancel()
    sub.cancel()
    assert r.subscribers("t") == [] and r.topics == ["u"]
    with pytest.raises(ValueError):
        r.subscribe("", seen.append)


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    ca = idm.init_mesh(tmp_path_factory.mktemp("m"))
    other = idm.init_mesh(tmp_path_factory.mktemp("o"))
    return {"a": idm.init_node(tmp_path_factory.mktemp("a"), ca, "a"),
            "b": idm.init_node(tmp_path_factory.mktemp("b"), ca, "b"),
            "x": idm.init_node(tmp_path_factory.mktemp("x"), other, "x")}


def hello(identity, *, cert=True, ts=None, topics=()):
    signer = Signer(identity.private_key)
    body = Hello(name=identity.name, public_key=signer.public_key_bytes, topics=topics,
                 cert=identity.cert_der if cert else None)
    return decode_packet(encode_packet(body, signer, timestamp_us=ts))


def test_member_directory_learns_verified_members_only(ids):
    clock = [time.time()]
    d = MemberDirectory(ids["a"], max_members=1, now=lambda: clock[0])
    first = hello(ids["b"], ts=NOW)
    m = d.learn(first)
    assert m is not None and m.name == "b" and d.key_for(ids["b"].node_id) == ids["b"].public_key_bytes
    assert d.learn(first) is None                              # the same hello again: no news
    assert d.learn(hello(ids["b"], ts=NOW - S)) is None        # an older one never replaces a newer one
    # a newer hello with the same body is the member re-stamping it for a new link: no news (that
    # relay storm was most of what a join cost); a newer one that says something new is news
    assert d.learn(hello(ids["b"], ts=NOW + S)) is None
    clock[0] += 60        # a change is news at most once per MIN_UPDATE_INTERVAL
    assert d.learn(hello(ids["b"], ts=NOW + 2 * S, topics=("u",))) is not None
    with pytest.raises(MemberRefused) as e:
        d.learn(hello(ids["x"]))
    assert e.value.reason == "other_mesh"
    with pytest.raises(MemberRefused) as e:
        d.learn(hello(ids["a"], cert=False))
    assert e.value.reason == "no_certificate"
    # a's own key with b's certificate: the certificate does not name the hello's origin
    signer = Signer(ids["a"].private_key)
    swapped = decode_packet(encode_packet(Hello(name="a", public_key=signer.public_key_bytes,
                                                cert=ids["b"].cert_der), signer))
    with pytest.raises(MemberRefused) as e:
        d.learn(swapped)
    assert e.value.reason == "id_mismatch"
    with pytest.raises(MemberRefused) as e:
        d.learn(hello(ids["a"]))
    assert e.value.reason == "directory_full"
    assert d.key_for(ids["a"].node_id) is None and len(d) == 1


def test_backoff_doubles_with_jitter_and_is_capped():
    b = Backoff(0.5, 4.0, random.Random(1))
    delays = [b.next() for _ in range(6)]
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps))
    assert len(set(delays)) == 6                                 # jittered, not lockstep
    b.reset()
    assert b.next() <= 0.5
    assert [Backoff(0.5, 4, random.Random(7)).next() for _ in range(2)] == \
        [Backoff(0.5, 4, random.Random(7)).next()] * 2         # seeded: reproducible


def test_gossip_ids_bind_the_packet_id_to_its_origin():
    """A member cannot claim another member's packet id in the overlay: the id announced and asked for
    is derived from (origin, packet id), so its own packet under that id is a different gossip id."""
    from meshnode.net.router import gossip_id

    d = DedupCache(capacity=100, window_s=300)
    p = b"p" * 16
    assert d.check(A, p, NOW, NOW) is Verdict.NEW          # the attacker's packet with B's id
    assert d.knows(gossip_id(A, p)) and not d.knows(gossip_id(B, p))
    assert d.check(B, p, NOW, NOW) is Verdict.NEW          # B's own is still new, and pullable
    assert d.knows(gossip_id(B, p))


def test_peer_exchange_addresses_are_checked():
    from meshnode.node import _dialable

    assert _dialable("192.0.2.7", allow_loopback=False) and _dialable("node-7.lan", allow_loopback=False)
    assert not _dialable("0.0.0.0", allow_loopback=True) and not _dialable("[::]", allow_loopback=True)
    assert not _dialable("224.0.0.251", allow_loopback=False)
    assert not _dialable("127.0.0.1", allow_loopback=False) and _dialable("127.0.0.1", allow_loopback=True)
    assert not _dialable("localhost", allow_loopback=False)


def test_an_origins_horizon_survives_a_journal_rewrite_and_a_restart(tmp_path):
    """Ids an origin's own flood pushed out of the cache are refused as stale, before a restart and
    after it, even once the journal was rewritten with only the ids still held."""
    j = tmp_path / "replay.journal"
    r = Router(dedup_capacity=100, dedup_window_s=300)
    r.dedup.per_origin = 5
    r.open_journal(j, NOW)
    for i in range(201):     # the 201st record rewrites the journal (> 2 x 100): it then holds the 5 kept ids
        r.remember(A, i.to_bytes(16, "big"), NOW + i, NOW + i)
    pushed_out = (0).to_bytes(16, "big")
    assert r.dedup.check(A, pushed_out, NOW, NOW + 300) is Verdict.STALE
    r.close()
    r2 = Router(dedup_capacity=100, dedup_window_s=300)
    r2.dedup.per_origin = 5
    r2.open_journal(j, NOW + 400)
    assert r2.dedup.check(A, pushed_out, NOW, NOW + 400) is Verdict.STALE        # still refused
    assert r2.dedup.check(A, (150).to_bytes(16, "big"), NOW + 150, NOW + 400) is Verdict.STALE
    assert r2.dedup.check(B, pushed_out, NOW + 200, NOW + 400) is Verdict.NEW      # B has no horizon
    r2.close()
