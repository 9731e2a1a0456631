"""Refusal logs under a connect flood (issue 16, item 9, second half).

Every refused connection is caused by a stranger, so the lines about them must be bounded per source
and reason, each refusal logged once (not once by the transport and again by the daemon), with the
number held back reported on the next line that goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest

from meshnode import identity as idm
from meshnode.net.tcp import TlsTransport
from meshnode.node import Node

from .._mesh import aio, node_config, running, wait_for

pytestmark = pytest.mark.timeout(90)

CONNECTS = 150   # bounded; the attack run used 4,000


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> dict[str, idm.NodeIdentity]:
    ca = idm.init_mesh(tmp_path_factory.mktemp("mesh"))
    return {"a": idm.init_node(tmp_path_factory.mktemp("a"), ca, "a")}


async def _garbage(port: int, source: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(reader.read(), 10)
    writer.close()


@aio
async def test_a_connect_flood_gives_a_bounded_number_of_lines_with_held_back_counts(mesh, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    a = Node(node_config(tmp_path / "a", mesh["a"]), mesh["a"],
             transport=TlsTransport(mesh["a"], rng=random.Random(5)), rng=random.Random(1))
    async with running(a):
        for _ in range(CONNECTS):
            await _garbage(a.port, "127.0.0.2")
        await wait_for(lambda: a.counters().get("refused.not_tls", 0) >= CONNECTS, "every refusal to be counted")
        lines = [r.getMessage() for r in caplog.records if "127.0.0.2" in r.getMessage()]
        assert len(lines) == 1, lines            # once, by the daemon only, for all 150
        # Another source is news at once; the flooding one is reported again only after the interval,
        # with how many were held back.
        await _garbage(a.port, "127.0.0.3")
        await wait_for(lambda: any("127.0.0.3" in r.getMessage() for r in caplog.records), "a line about 127.0.0.3")
        a._log_limit.interval = 0.0              # as if the interval (10 min) had passed
        await _garbage(a.port, "127.0.0.2")
        await wait_for(lambda: sum("127.0.0.2" in r.getMessage() for r in caplog.records) >= 2, "the next line")
        last = [r.getMessage() for r in caplog.records if "127.0.0.2" in r.getMessage()][-1]
        assert f"{CONNECTS - 1} more like it" in last, last
    assert a.counters().get("refused.not_tls", 0) == CONNECTS + 2   # every refusal counted once
