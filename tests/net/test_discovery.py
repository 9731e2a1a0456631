"""mDNS discovery on the loopback interface with real zeroconf sockets.

Node and mesh ids are random per run: other processes on this host may be browsing the same service
type at the same time, and must neither collide with nor disturb these tests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshnode.net.discovery import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Discovery,
    DiscoveryError,
    PeerEvent,
    PeerFound,
    PeerLost,
)

LOOPBACK = ["127.0.0.1"]
DEADLINE = 15.0  # generous bound for a loaded machine; a passing run needs about 2 s (mDNS probing)


async def until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait for a condition with a deadline (zeroconf offers no event for our counters)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def next_event(stream, want: Callable[[PeerEvent], bool], what: str) -> PeerEvent:
    async def scan() -> PeerEvent:
        async for event in stream:
            if want(event):
                return event
        raise AssertionError(f"event stream ended while waiting for {what}")

    try:
        return await asyncio.wait_for(scan(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}") from None


def _node(mesh: str, port: int, **kw) -> Discovery:
    return Discovery(node_id=secrets.token_bytes(32), mesh_id=mesh, port=port, interfaces=LOOPBACK, **kw)


def test_nodes_of_one_mesh_find_each_other_and_ignore_the_rest() -> None:
    async def main() -> None:
        mesh, other = secrets.token_hex(8), secrets.token_hex(8)
        seen_by_a: list[PeerEvent] = []
        a = _node(mesh, 7001, on_event=seen_by_a.append)
        b = _node(mesh, 7002)
        c = _node(other, 7003)
        # A stranger on the LAN advertising our type with junk in its TXT record.
        rogue_zc = AsyncZeroconf(interfaces=LOOPBACK)
        tag = secrets.token_hex(4)
        rogue = AsyncServiceInfo(SERVICE_TYPE, f"rogue-{tag}.{SERVICE_TYPE}", port=7004,
                                 properties={"id": "not-hex", "mesh": mesh, "v": "1.0"},
                                 server=f"rogue-{tag}.local.", parsed_addresses=["127.0.0.1"])
        events_a = a.events()
        events_b = b.events()
        await asyncio.gather(a.start(), b.start(), c.start(), rogue_zc.async_register_service(rogue))
        try:
            found = await next_event(events_a, lambda e: isinstance(e, PeerFound), "A to find B")
            assert found == PeerFound(b.node_id, mesh, "127.0.0.1", 7002, PROTOCOL_VERSION, ("127.0.0.1",),
                                      (("127.0.0.1", 7002),))
            found = await next_event(events_b, lambda e: isinstance(e, PeerFound), "B to find A")
            assert found.node_id == a.node_id and found.port == 7001

            # Wait until A has seen, and dropped, everything that is not its peer.
            await until(lambda: a.counters["other_mesh"] >= 1, "A to see C's advertisement")
            await until(lambda: a.counters["malformed"] >= 1, "A to see the rogue advertisement")
            await until(lambda: a.counters["self"] >= 1, "A to see its own advertisement")
            await until(lambda: c.counters["other_mesh"] >= 2, "C to see A and B")
            assert set(a.peers) == {b.node_id}
            assert set(b.peers) == {a.node_id}
            assert dict(c.peers) == {}
            assert seen_by_a == [a.peers[b.node_id]]  # the callback saw exactly what the stream saw
            # A stream opened later starts with the peers already known.
            late = a.events()
            assert (await next_event(late, lambda e: True, "replay")).node_id == b.node_id
            late.close()

            # B leaves: its goodbye reaches A as PeerLost.
            await b.stop()
            lost = await next_event(events_a, lambda e: isinstance(e, PeerLost), "A to lose B")
            assert lost == PeerLost(b.node_id)
            assert dict(a.peers) == {}
            assert [e async for e in events_b] == []  # B's stream ended with stop()
        finally:
            await asyncio.gather(a.stop(), b.stop(), c.stop())
            await rogue_zc.async_unregister_service(rogue)
            await rogue_zc.async_close()
        assert [e async for e in a.events()] == []  # a stopped instance yields nothing
        await a.stop()  # stop is idempotent

    asyncio.run(main())


def test_the_same_node_cannot_be_advertised_twice() -> None:
    async def main() -> None:
        node_id, mesh = secrets.token_bytes(32), secrets.token_hex(8)
        async with Discovery(node_id=node_id, mesh_id=mesh, port=7011, interfaces=LOOPBACK):
            twin = Discovery(node_id=node_id, mesh_id=mesh, port=7012, interfaces=LOOPBACK)
            with pytest.raises(DiscoveryError, match="already advertised"):
                await asyncio.wait_for(twin.start(), DEADLINE)
            assert [e async for e in twin.events()] == []  # the failed one is cleanly stopped

    asyncio.run(main())


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Discovery(node_id=b"short", mesh_id="ab", port=1)
    with pytest.raises(ValueError):
        Discovery(node_id=bytes(32), mesh_id="AB!", port=1)
    with pytest.raises(ValueError):
        Discovery(node_id=bytes(32), mesh_id="ab", port=0)
    with pytest.raises(ValueError):
        Discovery(node_id=bytes(32), mesh_id="ab", port=1, interfaces=["eth0"])
    d = Discovery(node_id=bytes(range(32)), mesh_id="00112233aabbccdd", port=1)
    assert d.instance_name == f"00112233aabbccdd-{bytes(range(32)).hex()[:32]}.{SERVICE_TYPE}"
    assert len(d.instance_name.split(".")[0]) <= 63  # one DNS label


def test_a_record_for_a_known_node_id_adds_an_endpoint_and_never_replaces_it() -> None:
    """A stranger advertises our peer's node id under another name, at another port: the peer's
    first endpoint stays first, the fake one is only added after it (issue 16, item 7)."""

    async def main() -> None:
        mesh = secrets.token_hex(8)
        a = _node(mesh, 7021)
        b = _node(mesh, 7022)
        events_a = a.events()
        await asyncio.gather(a.start(), b.start())
        fake_zc = AsyncZeroconf(interfaces=LOOPBACK)
        tag = secrets.token_hex(4)
        fake = AsyncServiceInfo(SERVICE_TYPE, f"fake-{tag}.{SERVICE_TYPE}", port=7999,
                                properties={"id": b.node_id.hex(), "mesh": mesh, "v": "1.0"},
                                server=f"fake-{tag}.local.", parsed_addresses=["127.0.0.1"])
        try:
            await next_event(events_a, lambda e: isinstance(e, PeerFound), "A to find B")
            await fake_zc.async_register_service(fake)
            found = await next_event(events_a, lambda e: isinstance(e, PeerFound) and len(e.endpoints) == 2,
                                     "A to see the fake endpoint")
            assert (found.host, found.port) == ("127.0.0.1", 7022)
            assert found.endpoints == (("127.0.0.1", 7022), ("127.0.0.1", 7999))
            assert a.counters["endpoints_added"] >= 1
        finally:
            await fake_zc.async_unregister_service(fake)
            await fake_zc.async_close()
            await asyncio.gather(a.stop(), b.stop())

    asyncio.run(main())


# ---------------------------------------------------------------- the dial book (net/hints.py), no sockets

import itertools

from meshnode.net.hints import DialHints

N1, N2 = bytes([1]) * 32, bytes([2]) * 32
REAL, FAKE, OTHER = ("10.0.0.1", 7400), ("10.0.0.66", 7400), ("10.0.0.2", 7400)


def test_hints_move_to_the_next_endpoint_after_a_failure_and_keep_a_verified_one() -> None:
    h = DialHints(rate=100.0, burst=100)
    first = h.found(N1, [FAKE], now=0.0)     # the fake record arrived first
    assert first is not None and first.endpoint == FAKE and first.delay == 0.0
    assert h.found(N1, [REAL], now=0.1) is None     # a known node id: remembered, no redirect
    nxt = h.failed(N1, FAKE, now=1.0)
    assert nxt is not None and nxt.endpoint == REAL
    h.linked(N1)
    assert h.verified(N1) == REAL
    # Later fake records change nothing; a verified endpoint gets retries before the others.
    assert h.found(N1, [OTHER], now=5.0) is None
    assert h.failed(N1, REAL, now=6.0) is None
    assert h.failed(N1, REAL, now=7.0) is None
    again = h.failed(N1, REAL, now=8.0)
    assert again is not None and again.endpoint == OTHER
    assert h.failed(N1, FAKE, now=9.0) is None    # not the current endpoint: counted, nothing to change


def test_hints_pace_dials_per_endpoint_and_in_all() -> None:
    # 200 fake node ids at one third-party port: one dial per backoff step, not 200.
    h = DialHints(rate=2.0, burst=4, min_interval=1.0, max_backoff=60.0)
    dials = [h.found(bytes([i % 256, i // 256]) + bytes(30), [FAKE], now=0.0) for i in range(200)]
    delays = sorted(d.delay for d in dials if d is not None)
    assert len(delays) == 200
    assert delays[0] == 0.0 and delays[1] >= 1.0        # the shared endpoint spaces them
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(delays))
    assert sum(1 for d in delays if d < 60.0) <= 6      # and back off: 0, 1, 3, 7, 15, 31 s ...
    # 200 fake node ids at 200 addresses: the global budget (2/s after a burst of 4).
    h = DialHints(rate=2.0, burst=4)
    delays = [h.found(bytes([i % 256, i // 256]) + bytes(30), [(f"10.1.{i // 250}.{i % 250}", 7400)],
                      now=0.0).delay for i in range(200)]   # type: ignore[union-attr]
    assert delays[:4] == [0.0] * 4
    assert sum(1 for d in delays if d < 10.0) <= 4 + 2 * 10
    # Failures back an endpoint off exponentially, whichever node id names it.
    h = DialHints(rate=100.0, burst=100, min_interval=1.0, max_backoff=8.0)
    d = h.found(N1, [FAKE, OTHER], now=0.0)
    assert d is not None
    times = []
    now = 0.0
    for _ in range(6):
        d = h.failed(N1, d.endpoint, now=now)
        assert d is not None
        now += d.delay
        times.append((d.endpoint, now))
    assert max(b - a for (_, a), (_, b) in itertools.pairwise(times)) <= 8.0 + 1e-9
