"""The overlay's decisions and the message cache, without sockets: watermarks, graft/prune, lazy
announcements, what a peer's `want` can and cannot make us send, and the cache's bounds."""

from __future__ import annotations

import random

import pytest

from meshnode.net.message_cache import MessageCache
from meshnode.net.overlay import Graft, Have, Overlay, OverlaySettings, Prune, Serve, Settled, Want

S = 1_000_000
NOW = 1_800_000_000 * S


def peer(i: int) -> bytes:
    return i.to_bytes(32, "big")


def pid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_links_are_grafted_up_to_the_degree_then_lazy():
    ov = Overlay(OverlaySettings(degree=3, degree_low=2, degree_high=5), rng=random.Random(1))
    acts = [ov.link_opened(peer(i), []) for i in range(6)]
    assert [a for a in acts[0] if isinstance(a, Graft)] == [Graft(peer(0))]
    assert len(ov.eager) == 3 and len(ov.lazy) == 3 and acts[5] == []


def test_heartbeat_keeps_the_degree_between_its_watermarks_under_churn():
    s = OverlaySettings(degree=4, degree_low=3, degree_high=6)
    ov = Overlay(s, rng=random.Random(2))
    rng = random.Random(3)
    linked: set[int] = set()
    for step in range(500):
        if linked and rng.random() < 0.5:
            gone = rng.choice(sorted(linked))
            linked.discard(gone)
            ov.link_closed(peer(gone))
        else:
            new = rng.randrange(1000)
            if new not in linked:
                linked.add(new)
                ov.link_opened(peer(new), [])
                if rng.random() < 0.5:   # the other end grafts us too
                    ov.on_graft(peer(new))
        ov.heartbeat()
        eager = len(ov.eager)
        assert eager <= s.degree_high
        assert eager >= min(s.degree_low, len(linked)), (step, eager, len(linked))


def test_a_graft_beyond_the_high_watermark_is_answered_with_a_prune():
    ov = Overlay(OverlaySettings(degree=1, degree_low=1, degree_high=2), rng=random.Random(1))
    for i in range(3):
        ov.link_opened(peer(i), [])
    assert ov.on_graft(peer(1)) == []
    assert ov.on_graft(peer(2)) == [Prune(peer(2))]
    ov.on_prune(peer(1))
    assert ov.eager == [peer(0)]


def test_new_ids_are_announced_to_eager_links_and_a_sample_of_lazy_ones():
    ov = Overlay(OverlaySettings(degree=1, degree_low=1, degree_high=2, lazy_degree=1), rng=random.Random(1))
    for i in range(3):
        ov.link_opened(peer(i), [])
    ov.seen(pid(7))
    haves = [a for a in ov.heartbeat() if isinstance(a, Have)]
    # peer 0 is eager (a failed push is repaired); one of the two lazy ones (lazy_degree = 1)
    assert peer(0) in {a.peer for a in haves} and len(haves) == 2 and all(a.ids == (pid(7),) for a in haves)
    assert [a for a in ov.heartbeat() if isinstance(a, Have)] == []     # said once


def test_a_link_that_opens_gets_every_cached_id_once_it_has_settled_a_chunk_a_heartbeat():
    ov = Overlay(OverlaySettings(want_budget=100), rng=random.Random(1))
    acts = ov.link_opened(peer(1), [pid(i) for i in range(2500)])
    assert [a for a in acts if isinstance(a, Have)] == []
    assert [a for a in ov.heartbeat() if isinstance(a, Have)] == []
    first = ov.heartbeat()
    assert Settled(peer(1)) in first
    got = [i for a in first if isinstance(a, Have) for i in a.ids]
    for _ in range(30):
        got += [i for a in ov.heartbeat() if isinstance(a, Have) for i in a.ids]
    assert got == [pid(i) for i in range(2500)]
    assert all(len(a.ids) <= 100 for a in first if isinstance(a, Have))


def test_anti_entropy_of_a_backlog_larger_than_the_history_is_fetched_whole():
    """A link opening after a long partition: 10,000 cached ids (more than `history`) all cross."""
    s = OverlaySettings(want_budget=128, history=4096)
    sender, receiver = Overlay(s, rng=random.Random(1)), Overlay(s, rng=random.Random(2))
    a, b = peer(1), peer(2)
    sender.link_opened(b, [pid(i) for i in range(10_000)])
    receiver.link_opened(a, [])
    got: set[bytes] = set()
    is_new = lambda p: p not in got  # noqa: E731
    for _ in range(200):
        for act in sender.heartbeat():
            if isinstance(act, Have):
                for w in receiver.on_have(a, act.ids, is_new):
                    got.update(w.ids)            # served at once
        for w in receiver.heartbeat(is_new):
            if isinstance(w, Want):
                got.update(w.ids)
    assert len(got) == 10_000


def test_a_peer_that_announces_and_never_serves_does_not_starve_an_honest_one():
    s = OverlaySettings(want_budget=8, max_asks=2, want_timeout=1)
    ov = Overlay(s, rng=random.Random(3))
    liar, honest = peer(1), peer(2)
    ov.link_opened(liar, [])
    ov.link_opened(honest, [])
    ids = [pid(i) for i in range(8)]
    got: set[bytes] = set()
    is_new = lambda p: p not in got  # noqa: E731
    asked_honest = 0
    for _ in range(40):
        ov.on_have(liar, ids, is_new)          # the liar announces every beat, serves nothing
        for w in ov.on_have(honest, ids, is_new) + ov.heartbeat(is_new):
            if isinstance(w, Want) and w.peer == honest:
                asked_honest += 1
                got.update(w.ids)
        if got >= set(ids):
            break
    assert got == set(ids) and asked_honest >= 1


def test_have_asks_only_for_new_ids_within_budget_and_the_rest_at_the_next_heartbeats():
    ov = Overlay(OverlaySettings(want_budget=3, want_timeout=2, max_asks=2), rng=random.Random(1))
    ov.link_opened(peer(1), [])
    ov.link_opened(peer(2), [])
    known = {pid(0)}
    is_new = lambda p: p not in known  # noqa: E731
    assert ov.on_have(peer(1), [pid(0), pid(1), pid(2)], is_new) == [Want(peer(1), (pid(1), pid(2)))]
    # the same ids announced by another peer are not asked for again meanwhile
    assert ov.on_have(peer(2), [pid(1), pid(2)], is_new) == []
    # budget: 1 left for peer 1 this heartbeat; pid 4 waits for the next one
    assert ov.on_have(peer(1), [pid(3), pid(4)], is_new) == [Want(peer(1), (pid(3),))]
    wants = [a for a in ov.heartbeat(is_new) if isinstance(a, Want)]
    assert wants == [Want(peer(1), (pid(4),))]
    known |= {pid(3), pid(4)}
    # pid 1 and 2 never came: once want_timeout heartbeats have passed they are asked for again ...
    again = [a for a in ov.heartbeat(is_new) + ov.heartbeat(is_new) if isinstance(a, Want)]
    assert {i for a in again for i in a.ids} == {pid(1), pid(2)}
    # ... and after max_asks of each peer, given up (a peer cannot keep us asking for ever)
    for _ in range(10):
        ov.heartbeat(is_new)
    assert [a for a in ov.heartbeat(is_new) if isinstance(a, Want)] == []


def test_a_large_announcement_is_fetched_over_several_heartbeats():
    ov = Overlay(OverlaySettings(want_budget=100), rng=random.Random(1))
    ov.link_opened(peer(1), [])
    got: set[bytes] = set()
    is_new = lambda p: p not in got  # noqa: E731
    asked = [a for a in ov.on_have(peer(1), [pid(i) for i in range(1000)], is_new)]
    for _ in range(12):
        for a in asked:
            got.update(a.ids)         # the peer serves what we ask for
        asked = [a for a in ov.heartbeat(is_new) if isinstance(a, Want)]
    assert got == {pid(i) for i in range(1000)}


def test_want_serves_only_cached_ids_a_bounded_number_of_times():
    """A peer's `want` cannot make us send anything we do not hold, nor one id without end."""
    ov = Overlay(OverlaySettings(max_serves=2, serve_budget=100), rng=random.Random(1))
    ov.link_opened(peer(1), [])
    cache = {pid(1): 100}
    assert ov.on_want(peer(1), [pid(1), pid(9)], cache.get) == [Serve(peer(1), (pid(1),))]
    assert ov.on_want(peer(1), [pid(1)], cache.get) == [Serve(peer(1), (pid(1),))]
    assert ov.on_want(peer(1), [pid(1)] * 50, cache.get) == []
    # a peer we have no gossip link with gets nothing at all
    assert ov.on_want(peer(5), [pid(1)], cache.get) == []
    assert ov.on_have(peer(5), [pid(2)], lambda p: True) == []


def test_want_budget_per_heartbeat():
    ov = Overlay(OverlaySettings(serve_budget=5), rng=random.Random(1))
    ov.link_opened(peer(1), [])
    ids = [pid(i) for i in range(20)]
    (serve,) = ov.on_want(peer(1), ids, lambda p: 10)
    assert len(serve.ids) == 5 and ov.on_want(peer(1), ids, lambda p: 10) == []
    ov.heartbeat()
    assert len(ov.on_want(peer(1), ids[5:], lambda p: 10)[0].ids) == 5


def test_want_is_bounded_in_bytes_too():
    """One 16-byte request must not buy megabytes without end: packets served per heartbeat stop at
    `serve_bytes` (at least one packet goes)."""
    ov = Overlay(OverlaySettings(serve_budget=100, serve_bytes=5 << 20), rng=random.Random(1))
    ov.link_opened(peer(1), [])
    (serve,) = ov.on_want(peer(1), [pid(i) for i in range(20)], lambda p: 2 << 20)
    assert len(serve.ids) == 3


def test_the_message_cache_is_bounded_per_origin_and_in_all_and_by_age():
    c = MessageCache(max_bytes=1000, window_s=10, per_origin_share=2)
    a, b = peer(1), peer(2)
    for i in range(4):
        assert c.put(pid(i), b, NOW, b"b" * 100, NOW)
    for i in range(100, 120):      # a floods: only its own oldest go
        c.put(pid(i), a, NOW, b"a" * 100, NOW)
    assert c.bytes <= 1000 and all(pid(i) in c for i in range(4))
    assert sum(pid(i) in c for i in range(100, 120)) == 5
    assert not c.put(pid(999), a, NOW, b"x" * 600, NOW)          # larger than an origin's share
    assert not c.put(pid(998), a, NOW - 11 * S, b"x", NOW)       # older than the window
    assert c.ids(NOW + 11 * S) == [] and c.bytes == 0


def test_settings_are_checked():
    with pytest.raises(ValueError):
        OverlaySettings(degree=3, degree_low=4)
