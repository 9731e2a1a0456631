"""mDNS poisoning without credentials (issue 16, item 7).

A stranger on the LAN (here: a zeroconf instance on loopback) advertises records that name our nodes'
ids at addresses where no node listens, before the nodes start; and many fake node ids pointing at a
third party's port. mDNS answers must be hints: a fake record costs one failed dial, not the link, and
fakes cannot make a daemon hammer somebody else's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
from collections.abc import AsyncIterator

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshnode import identity as idm
from meshnode.net.discovery import SERVICE_TYPE
from meshnode.node import Node

from .._mesh import aio, node_config, running, wait_for

pytestmark = pytest.mark.timeout(120)

LOOPBACK = ["127.0.0.1"]
LINK_DEADLINE = 40.0   # generous; with the fix two nodes link in a few seconds (mDNS probing included)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> dict[str, idm.NodeIdentity]:
    ca = idm.init_mesh(tmp_path_factory.mktemp("mesh"))
    return {n: idm.init_node(tmp_path_factory.mktemp(n), ca, n) for n in ("a", "b", "c")}


def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def fake_services(records: list[tuple[bytes, str, int]], mesh_id: str) -> AsyncIterator[None]:
    """Advertise (node id, address, port) records of our mesh under fresh names."""
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    infos = []
    for node_id, host, port in records:
        tag = secrets.token_hex(5)
        infos.append(AsyncServiceInfo(SERVICE_TYPE, f"fake-{tag}.{SERVICE_TYPE}", port=port,
                                      properties={"id": node_id.hex(), "mesh": mesh_id, "v": "1.0"},
                                      server=f"fake-{tag}.local.", parsed_addresses=[host]))
    try:
        waits = await asyncio.gather(*(zc.async_register_service(i, cooperating_responders=True) for i in infos))
        await asyncio.gather(*waits)
        yield
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(zc.async_unregister_all_services(), 10)
        await zc.async_close()


@aio
async def test_fake_records_for_our_node_ids_do_not_keep_two_nodes_apart(mesh, tmp_path) -> None:
    a_id, b_id = mesh["a"], mesh["b"]
    records = [(n.node_id, "127.0.0.1", dead_port()) for n in (a_id, b_id) for _ in range(5)]
    async with fake_services(records, a_id.mesh_id_short):
        a = Node(node_config(tmp_path / "a", a_id, mdns=True), a_id, rng=random.Random(1))
        b = Node(node_config(tmp_path / "b", b_id, mdns=True), b_id, rng=random.Random(2))
        async with running(a, b):
            await wait_for(lambda: b_id.node_id in a._links and a_id.node_id in b._links,
                           "two honest nodes to link despite fake records", timeout=LINK_DEADLINE)
            hints = a._discovery.hints
            assert len(hints.endpoints(b_id.node_id)) >= 2   # the fakes were seen, and only added


@aio
async def test_fake_services_cannot_make_a_node_hammer_a_third_party_port(mesh, tmp_path) -> None:
    # The third party: a plain TCP listener that counts connections and closes them.
    accepted = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    victim = await asyncio.start_server(count, "127.0.0.1", 0)
    port = victim.sockets[0].getsockname()[1]
    fakes = [(secrets.token_bytes(32), "127.0.0.1", port) for _ in range(40)]
    try:
        c = Node(node_config(tmp_path / "c", mesh["c"], mdns=True), mesh["c"], rng=random.Random(3))
        async with fake_services(fakes, mesh["c"].mesh_id_short), running(c):
            await wait_for(lambda: sum(1 for n, _, _ in fakes if c._discovery.hints.known(n)) >= 20,
                           "the node to learn most of the fake services", timeout=LINK_DEADLINE)
            await wait_for(lambda: accepted >= 1, "a first dial to the third party", timeout=LINK_DEADLINE)
            seen = accepted
            # Watch for a while (a bounded window, not a timing assertion: a slow machine dials less).
            await asyncio.sleep(4.0)
            # Before: 40 dialers at 0.1-0.4 s each, hundreds of connections in this window. Now the
            # endpoint's shared backoff allows 1 dial, then 1 s, 2 s, 4 s ... apart.
            assert accepted - seen <= 4, f"{accepted - seen} connections to the third party in 4 s"
    finally:
        victim.close()
        await victim.wait_closed()
