"""Daemons in one process over real sockets on 127.0.0.1: real TLS, real mDNS (loopback), real control
sockets. Each test builds its own nodes with short liveness timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import types
from pathlib import Path

import numpy as np
import pytest

from meshnode import identity as idm
from meshnode.control import query
from meshnode.net.tcp import TlsTransport
from meshnode.node import Node
from meshnode.wire.capture import Direction, iter_records
from meshnode.wire.packet import Hello, Kind, Signer, VectorBlock, Vectors, encode_packet, verify_packet
from meshnode.wire.session import Session

from ._mesh import aio, free_port, node_config, running, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> dict[str, idm.NodeIdentity]:
    ca = idm.init_mesh(tmp_path_factory.mktemp("mesh"))
    other = idm.init_mesh(tmp_path_factory.mktemp("other-mesh"))
    ids = {n: idm.init_node(tmp_path_factory.mktemp(n), ca, n) for n in ("a", "b", "c", "d", "evil")}
    ids["foreign"] = idm.init_node(tmp_path_factory.mktemp("foreign"), other, "foreign")
    return ids


def vectors(seed: int, topic: str = "t", dim: int = 256) -> Vectors:
    trits = np.random.default_rng(seed).integers(-1, 2, size=(2, dim), dtype=np.int8)
    return Vectors(topic=topic, vectors=VectorBlock.from_trits(trits, b"test"))


def inbox(node: Node, topic: str = "t") -> list:
    got: list = []
    node.subscribe(topic, got.append)
    return got


def make(mesh, tmp_path: Path, name: str, seed: int = 0, **kw) -> Node:
    return Node(node_config(tmp_path / name, mesh[name], **kw), mesh[name], rng=random.Random(seed))


@aio
async def test_three_daemons_find_each_other_over_mdns_and_gossip_exactly_once(mesh, tmp_path) -> None:
    a, b, c = (make(mesh, tmp_path, n, i, mdns=True) for i, n in enumerate("abc"))
    async with running(a, b, c):
        await wait_for(lambda: all(len(n.peers()) == 2 and all(p["state"] == "open" for p in n.peers())
                                   for n in (a, b, c)), "every node to hold two open links")
        got_b, got_c, got_a = inbox(b), inbox(c), inbox(a)
        body = vectors(1)
        pid = await a.publish(body)
        # b and c each relay a's packet to the other unless the other's relay reached them before a's own
        # copy (then it came from their only other peer): at least one relay, every relay arriving as a
        # duplicate. Wait until each relayed copy has arrived, so a wrong second delivery would show.
        def relayed() -> int:
            return b.metrics.get("packets.forwarded") + c.metrics.get("packets.forwarded")

        def duplicates() -> int:
            return b.metrics.get("packets.duplicate") + c.metrics.get("packets.duplicate")

        await wait_for(lambda: relayed() >= 1 and duplicates() == relayed(), "the relayed copies to arrive")
        assert a.metrics.get("packets.forwarded") == 0 and a.metrics.get("packets.duplicate") == 0
        assert [p.packet_id for p in got_b] == [pid] and [p.packet_id for p in got_c] == [pid]
        assert got_b[0].body == body and got_a == []
        # the control API reports the same over the unix socket
        peers = await query(a.config.control.socket, "peers")
        assert sorted(p["name"] for p in peers) == ["b", "c"]
        assert all(p["packets_out"] >= 2 and p["bytes_in"] > 0 for p in peers)
        status = await query(b.config.control.socket, "status")
        assert status["peers"] == 2 and status["name"] == "b" and status["mdns"] is True


@aio
async def test_line_topology_relays_and_verifies_at_the_far_end(mesh, tmp_path) -> None:
    b = make(mesh, tmp_path, "b", 1)
    async with running(b):
        # no peer exchange: a and c would learn each other's address from b and link directly
        a = make(mesh, tmp_path, "a", 2, static=[f"127.0.0.1:{b.port}"], peer_exchange=False)
        c = make(mesh, tmp_path, "c", 3, static=[f"127.0.0.1:{b.port}"], peer_exchange=False)
        async with running(a, c):
            await wait_for(lambda: len(b._links) == 2 and len(a._links) == 1 and len(c._links) == 1,
                           "the line a-b-c")
            await wait_for(lambda: a.node_id in c.members and c.node_id in a.members, "a and c to learn each other")
            got_c = inbox(c)
            pid = await a.publish(vectors(2))
            await wait_for(lambda: got_c, "a's packet at c")
            await asyncio.sleep(0.2)  # room for a wrong second copy (there is no other path to c)
            assert [p.packet_id for p in got_c] == [pid]
            packet = got_c[0]
            assert packet.origin == a.node_id and packet.header.hop_limit == a.config.limits.hop_limit - 1
            verify_packet(packet, mesh["a"].public_key_bytes)        # raises if the signature were bad
            assert b.metrics.get("packets.forwarded") == 1
            assert a.node_id not in c._links                        # no direct link: relayed by b
            # status lists the members: b linked, c known through b
            status = await query(a.config.control.socket, "status")
            assert status["members"] == 2
            assert status["member_list"] == [{"name": "b", "node_id": b.node_id.hex(), "linked": True},
                                             {"name": "c", "node_id": c.node_id.hex(), "linked": False}]


@aio
async def test_strangers_are_refused_and_real_peers_keep_being_served(mesh, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    a = make(mesh, tmp_path, "a", 1)
    async with running(a):
        b = make(mesh, tmp_path, "b", 2, static=[f"127.0.0.1:{a.port}"])
        foreign = make(mesh, tmp_path, "foreign", 3, static=[f"127.0.0.1:{a.port}"])
        async with running(b, foreign):
            await wait_for(lambda: len(a._links) == 1, "b's link")
            # a plain TCP client sending random bytes
            r, w = await asyncio.open_connection("127.0.0.1", a.port)
            w.write(random.Random(7).randbytes(512))
            await w.drain()
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
            # a dials the foreign node itself
            with pytest.raises(ConnectionError):
                await a.connect("127.0.0.1", foreign.port)
            await wait_for(lambda: a.metrics.get("refused.aborted") >= 1, "the foreign dial to be refused")
            counters = await query(a.config.control.socket, "counters")
            assert counters["refused.not_tls"] >= 1 and counters["refused.other_mesh"] >= 1
            assert counters["refused.aborted"] >= 1
            assert foreign.metrics.get("refused.other_mesh") >= 1 and not foreign._links
            status = await query(a.config.control.socket, "status")
            assert {r["reason"] for r in status["recent_refusals"]} >= {"not_tls", "other_mesh", "aborted"}
            assert any("refused" in rec.getMessage() and "not_tls" in rec.getMessage() for rec in caplog.records)
            # the real peer is still served
            got = inbox(b)
            pid = await a.publish(vectors(3))
            await wait_for(lambda: got, "a's packet at b")
            assert got[0].packet_id == pid
            peers = await query(a.config.control.socket, "peers")
            assert [p["name"] for p in peers] == ["b"]


@aio
async def test_a_tampered_packet_is_dropped_and_counted(mesh, tmp_path) -> None:
    a = make(mesh, tmp_path, "a", 1)
    async with running(a):
        got = inbox(a)
        evil_id = mesh["evil"]
        stream = await TlsTransport(evil_id).connect("127.0.0.1", a.port, timeout=10)
        signer = Signer(evil_id.private_key)
        session = Session(signer, Hello(name="evil", public_key=signer.public_key_bytes, cert=evil_id.cert_der))
        stream.write(session.start())
        while session.peer_hello is None:
            data = await asyncio.wait_for(stream.read(), 10)
            assert data, "a closed the link"
            session.receive_data(data, 0.0)
        good = encode_packet(vectors(4), signer)
        bad = bytearray(encode_packet(vectors(5), signer))
        bad[16] ^= 0x01                         # timestamp bit flip: still decodes, signature no longer verifies
        stream.write(session.send_raw(bytes(bad)) + session.send_raw(good))
        await stream.drain()
        await wait_for(lambda: got, "the untampered packet")
        assert [p.raw for p in got] == [good]
        counters = await query(a.config.control.socket, "counters")
        assert counters["dropped.bad_signature"] == 1
        (peer,) = await query(a.config.control.socket, "peers")
        assert peer["name"] == "evil" and peer["dropped"] == {"bad_signature": 1}
        stream.close()


class _FreezableStream:
    """A stream that can go silent like a crashed host: reads block, writes vanish, the socket stays open."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.frozen = False
        self._closed = asyncio.Event()

    peer_node_id = property(lambda self: self.inner.peer_node_id)
    peer_certificate = property(lambda self: self.inner.peer_certificate)
    peer_address = property(lambda self: self.inner.peer_address)

    async def read(self, max_bytes: int = 1 << 16) -> bytes:
        if self.frozen:
            await self._closed.wait()
            return b""
        reading = asyncio.ensure_future(self.inner.read(max_bytes))
        closing = asyncio.ensure_future(self._closed.wait())
        done, _ = await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        if reading in done and not self.frozen:
            return reading.result()
        reading.cancel()
        await self._closed.wait()
        return b""

    def write(self, data: bytes) -> None:
        if not self.frozen:
            self.inner.write(data)

    async def drain(self) -> None:
        if not self.frozen:
            await self.inner.drain()

    def close(self) -> None:
        self._closed.set()
        if not self.frozen:
            self.inner.close()

    abort = close

    async def wait_closed(self) -> None:
        if not self.frozen:
            await self.inner.wait_closed()


class _FreezableTransport:
    def __init__(self, inner: TlsTransport) -> None:
        self.inner = inner
        self.on_refused = None
        self.streams: list[_FreezableStream] = []

    async def listen(self, host, port, handler):
        async def wrap(stream):
            s = _FreezableStream(stream)
            self.streams.append(s)
            await handler(s)
        self.inner.on_refused = self.on_refused
        return await self.inner.listen(host, port, wrap)

    async def connect(self, host, port, *, timeout):
        s = _FreezableStream(await self.inner.connect(host, port, timeout=timeout))
        self.streams.append(s)
        return s

    def freeze(self) -> None:
        for s in self.streams:
            s.frozen = True

    def release(self) -> None:
        for s in self.streams:
            s.inner.close()


@aio
async def test_a_silent_daemon_is_dropped_after_the_timeout_and_rejoins(mesh, tmp_path) -> None:
    port = free_port()
    cfg_c = node_config(tmp_path / "c", mesh["c"], port=port, peer_timeout=1.0, ping_interval=0.2)
    frozen = _FreezableTransport(TlsTransport(mesh["c"]))
    c = Node(cfg_c, mesh["c"], transport=frozen, rng=random.Random(1))
    await c.start()
    # no peer exchange: a and b would link to each other through c's word, and this is about c only
    a = make(mesh, tmp_path, "a", 2, static=[f"127.0.0.1:{port}"], peer_timeout=1.0, ping_interval=0.2,
             peer_exchange=False)
    b = make(mesh, tmp_path, "b", 3, static=[f"127.0.0.1:{port}"], peer_timeout=1.0, ping_interval=0.2,
             peer_exchange=False)
    try:
        async with running(a, b):
            await wait_for(lambda: len(c._links) == 2, "a and b to reach c")
            frozen.freeze()                     # c's host "dies": nothing in, nothing out, sockets stay open
            await c.stop()                      # frees the port; its bye never leaves the frozen streams
            await wait_for(lambda: not a._links and not b._links, "a and b to drop the silent c", timeout=10)
            assert a.metrics.get("links.lost.timeout") == 1 and b.metrics.get("links.lost.timeout") == 1
            c2 = Node(cfg_c, mesh["c"], rng=random.Random(4))
            async with running(c2):
                await wait_for(lambda: len(c2._links) == 2 and c.node_id in a._links and c.node_id in b._links,
                               "a and b to reconnect to the restarted c")
                got = inbox(a)
                await c2.publish(vectors(6))
                await wait_for(lambda: got, "c's packet at a")
    finally:
        frozen.release()


@aio
async def test_capture_records_packets_both_ways(mesh, tmp_path) -> None:
    capture = tmp_path / "a.mncap"
    a = Node(node_config(tmp_path / "a", mesh["a"]), mesh["a"], capture=capture, rng=random.Random(1))
    async with running(a):
        b = make(mesh, tmp_path, "b", 2, static=[f"127.0.0.1:{a.port}"])
        async with running(b):
            await wait_for(lambda: len(a._links) == 1, "the link")
            got = inbox(a)
            await b.publish(vectors(7))
            await a.publish(vectors(8))
            await wait_for(lambda: got, "b's packet")
    records = list(iter_records(capture.read_bytes()))
    kinds = {(r.direction, r.packet[6]) for r in records}          # byte 6: the kind
    assert (Direction.IN, Kind.HELLO) in kinds and (Direction.OUT, Kind.HELLO) in kinds
    assert (Direction.IN, Kind.VECTORS) in kinds and (Direction.OUT, Kind.VECTORS) in kinds
    assert all(r.peer == mesh["b"].node_id for r in records)


@aio
async def test_workers_run_and_a_broken_worker_does_not_stop_the_daemon(mesh, tmp_path) -> None:
    workers = [{"name": "hb", "type": "heartbeat-vectors", "settings": {"interval": 0.05, "dim": 64}},
               {"name": "nope", "type": "no-such-worker"}]
    a = make(mesh, tmp_path, "a", 1, workers=workers)
    async with running(a):
        b = make(mesh, tmp_path, "b", 2, static=[f"127.0.0.1:{a.port}"])
        async with running(b):
            got = inbox(b, "heartbeat")

            def boom(packet):
                raise RuntimeError("handler bug")
            b.subscribe("heartbeat", boom)
            await wait_for(lambda: len(got) >= 3, "heartbeats at b")
            ws = {w["name"]: w for w in await query(a.config.control.socket, "workers")}
            assert ws["hb"]["state"] == "running" and ws["hb"]["status"]["sent"] >= 3
            assert ws["nope"]["state"] == "failed" and "no-such-worker" in ws["nope"]["error"]
            assert a.metrics.get("workers.errors") == 1
            assert b.metrics.get("workers.handler_errors") >= 3
    assert (tmp_path / "a" / "data" / "workers" / "hb" / "heartbeat.json").is_file()


def _logged(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "meshnode.node" and text in r.getMessage()]


@aio
async def test_loopback_listen_host_with_mdns_warns_and_keeps_mdns_on_loopback(mesh, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="meshnode.node")
    cfg = node_config(tmp_path / "a", mesh["a"], mdns=True)
    cfg = dataclasses.replace(cfg, discovery=dataclasses.replace(cfg.discovery, mdns_interfaces=()))
    a = Node(cfg, mesh["a"], rng=random.Random(1))
    async with running(a):
        (warning,) = _logged(caplog, "loopback")
        assert warning.levelno == logging.WARNING and "only nodes on this machine" in warning.getMessage()
        # what is advertised is what the node listens on, and the LAN is not told of it
        assert a._discovery._interfaces == ["127.0.0.1"] and a._discovery._addresses == ["127.0.0.1"]


@aio
async def test_a_failing_dial_is_logged_once_then_counted_and_its_end_is_said(mesh, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="meshnode.node")
    port = free_port()                                      # nobody listens there (yet)
    a = make(mesh, tmp_path, "a", 1, static=[f"127.0.0.1:{port}"])
    async with running(a):
        await wait_for(lambda: a.metrics.get("dial.failed") >= 6, "several failed dials")
        (line,) = _logged(caplog, "cannot dial")           # one line, however many backoff steps
        assert line.levelno == logging.WARNING
        assert f"static peer at 127.0.0.1:{port}: Connection refused" in line.getMessage()
        assert "at most every 10 min" in line.getMessage()
        b = make(mesh, tmp_path, "b", 2, port=port)
        async with running(b):
            await wait_for(lambda: b.node_id in a._links, "a to reach b once it listens")
            (reached,) = _logged(caplog, "reached static peer")
            assert f"127.0.0.1:{port} after" in reached.getMessage()
        # b is gone again: that is news, logged once more
        await wait_for(lambda: len(_logged(caplog, "cannot dial")) == 2, "the new failure to be logged")
        failed = a.metrics.get("dial.failed")
        await wait_for(lambda: a.metrics.get("dial.failed") >= failed + 3, "more failed dials")
        assert len(_logged(caplog, "cannot dial")) == 2


def test_refusals_and_bad_packets_are_logged_once_per_source_and_reason_and_all_counted(mesh, tmp_path,
                                                                                         caplog) -> None:
    caplog.set_level(logging.WARNING, logger="meshnode.node")
    a = make(mesh, tmp_path, "a", 1)
    for port in range(40000, 40100):                        # a stranger reconnecting from fresh ports
        a._on_refused("not_tls", f"10.9.8.7:{port}", "random bytes")
    a._on_refused("other_mesh", "10.9.8.7:41000", "certificate of another mesh")
    a._on_refused("not_tls", "[2001:db8::5]:40000", "random bytes")
    lines = [r.getMessage() for r in _logged(caplog, "refused")]
    assert len(lines) == 3 and "10.9.8.7:40000: not_tls" in lines[0]
    assert a.metrics.get("refused.not_tls") == 101 and len(a.status()["recent_refusals"]) == 32
    assert a.counters()["log.held_back"] == 99
    # a member sending bad packets without end: counted, logged once
    link = types.SimpleNamespace(peer_node_id=mesh["evil"].node_id, name="evil", address="10.9.8.6:7400")
    for _ in range(50):
        a.link_dropped(link, "bad_signature", "does not verify")   # type: ignore[arg-type]
    assert len(_logged(caplog, "dropped a packet")) == 1 and a.metrics.get("dropped.bad_signature") == 50
