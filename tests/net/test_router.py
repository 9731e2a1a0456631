"""Gossip decisions without sockets: duplicates, replays, hop limits, topics, the member directory and
the redial backoff."""

from __future__ import annotations

import random

import pytest

from meshnode import identity as idm
from meshnode.net.backoff import Backoff
from meshnode.net.peers import MemberDirectory, MemberRefused
from meshnode.net.router import DedupCache, Router, Verdict
from meshnode.wire.packet import Hello, Signer, VectorBlock, Vectors, decode_packet, encode_packet

S = 1_000_000  # microseconds per second
NOW = 1_800_000_000 * S


def test_dedup_refuses_duplicates_stale_and_future_packets():
    d = DedupCache(capacity=100, window_s=10)
    assert d.check(b"a" * 16, NOW, NOW) is Verdict.NEW
    assert d.check(b"a" * 16, NOW, NOW + 1) is Verdict.DUPLICATE
    assert d.check(b"b" * 16, NOW - 11 * S, NOW) is Verdict.STALE
    assert d.check(b"c" * 16, NOW + 11 * S, NOW) is Verdict.FUTURE
    # once the window has passed, the id is forgotten but the packet is stale anyway: a replay never passes
    assert d.check(b"a" * 16, NOW, NOW + 20 * S) is Verdict.STALE
    assert len(d) == 0


def test_a_full_dedup_cache_raises_the_stale_horizon_instead_of_forgetting_silently():
    d = DedupCache(capacity=3, window_s=100)
    for i in range(5):
        assert d.check(bytes([i]) * 16, NOW + i, NOW) is Verdict.NEW
    assert len(d) == 3 and d.horizon_us == NOW + 1
    # ids 0 and 1 were forgotten; replaying them is refused as stale, not accepted as new
    assert d.check(bytes([0]) * 16, NOW, NOW) is Verdict.STALE
    assert d.check(bytes([1]) * 16, NOW + 1, NOW) is Verdict.STALE
    assert d.check(bytes([4]) * 16, NOW + 4, NOW) is Verdict.DUPLICATE
    assert d.check(b"n" * 16, NOW + 50, NOW) is Verdict.NEW


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


def hello(identity, *, cert=True, ts=None):
    signer = Signer(identity.private_key)
    body = Hello(name=identity.name, public_key=signer.public_key_bytes, cert=identity.cert_der if cert else None)
    return decode_packet(encode_packet(body, signer, timestamp_us=ts))


def test_member_directory_learns_verified_members_only(ids):
    d = MemberDirectory(ids["a"], max_members=1)
    first = hello(ids["b"], ts=NOW)
    m = d.learn(first)
    assert m is not None and m.name == "b" and d.key_for(ids["b"].node_id) == ids["b"].public_key_bytes
    assert d.learn(first) is None                              # the same hello again: no news
    assert d.learn(hello(ids["b"], ts=NOW - S)) is None        # an older one never replaces a newer one
    assert d.learn(hello(ids["b"], ts=NOW + S)) is not None    # a newer one is news (to announce on)
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
