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
            assert found == PeerFound(b.node_id, mesh, "127.0.0.1", 7002, PROTOCOL_VERSION, ("127.0.0.1",))
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
