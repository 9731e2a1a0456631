"""TLS 1.3 with mutual certificates between nodes of one mesh, on real asyncio streams (127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from meshnode import identity as idm
from meshnode.identity import IdentityError
from meshnode.net import tls

TIMEOUT = 10.0  # bound on every network wait; a passing run takes milliseconds


@dataclass(frozen=True)
class Nodes:
    a1: idm.NodeIdentity
    a2: idm.NodeIdentity
    b1: idm.NodeIdentity  # same software, another mesh


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Nodes:
    mesh_a = idm.init_mesh(tmp_path_factory.mktemp("mesh-a"))
    mesh_b = idm.init_mesh(tmp_path_factory.mktemp("mesh-b"))
    return Nodes(
        idm.init_node(tmp_path_factory.mktemp("a1"), mesh_a, "a1"),
        idm.init_node(tmp_path_factory.mktemp("a2"), mesh_a, "a2"),
        idm.init_node(tmp_path_factory.mktemp("b1"), mesh_b, "b1"),
    )


@dataclass
class Server:
    port: int
    accepted: list[idm.PeerInfo] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve(
    identity: idm.NodeIdentity, handshake_timeout: float = tls.HANDSHAKE_TIMEOUT
) -> AsyncIterator[Server]:
    """A server that, once a handshake completes, verifies the peer, greets it and closes."""
    state = Server(port=0)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = tls.peer_info(writer.get_extra_info("ssl_object"), identity, now=time.time())
        state.accepted.append(info)
        writer.write(b"welcome " + info.name.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls.server_context(identity),
                                        ssl_handshake_timeout=handshake_timeout)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


async def read_all(reader: asyncio.StreamReader) -> bytes | BaseException:
    """Everything the server sent, or the exception that ended the stream (a timeout fails the test)."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"the server neither answered nor hung up within {TIMEOUT} s") from None
    except (ssl.SSLError, ConnectionError) as e:
        return e


async def dial(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), TIMEOUT)


def test_contexts_are_tls13_mutual_without_hostname_check(nodes: Nodes) -> None:
    for ctx in (tls.server_context(nodes.a1), tls.client_context(nodes.a1)):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.check_hostname is False
        assert len(ctx.get_ca_certs()) == 1  # the mesh CA and nothing else


def test_two_nodes_of_one_mesh_connect(nodes: Nodes) -> None:
    async def main() -> None:
        async with serve(nodes.a1) as server:
            reader, writer = await dial(server.port, tls.client_context(nodes.a2))
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
            # The client learns who answered; the server learnt who dialled.
            assert tls.peer_info(ssl_object, nodes.a2, now=time.time()).node_id == nodes.a1.node_id
            assert await read_all(reader) == b"welcome a2"
            writer.close()
            assert [p.node_id for p in server.accepted] == [nodes.a2.node_id]

    asyncio.run(main())


def test_node_of_another_mesh_is_refused_by_the_server(nodes: Nodes) -> None:
    async def main() -> None:
        async with serve(nodes.a1) as server:
            # In TLS 1.3 the client finishes first; the server's refusal arrives as an alert on read.
            reader, writer = await dial(server.port, _trusting_client(nodes.b1, nodes.a1))
            result = await read_all(reader)
            assert not (isinstance(result, bytes) and result.startswith(b"welcome")), result
            writer.close()
            assert server.accepted == []

    asyncio.run(main())


def test_server_of_another_mesh_is_refused_by_the_client(nodes: Nodes) -> None:
    async def main() -> None:
        async with serve(nodes.b1) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await dial(server.port, tls.client_context(nodes.a1))
            assert server.accepted == []

    asyncio.run(main())


def test_client_without_certificate_is_refused(nodes: Nodes) -> None:
    async def main() -> None:
        async with serve(nodes.a1) as server:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.load_verify_locations(cadata=nodes.a1.ca_cert_pem.decode())
            reader, writer = await dial(server.port, ctx)
            result = await read_all(reader)
            assert not (isinstance(result, bytes) and result.startswith(b"welcome")), result
            writer.close()
            assert server.accepted == []

    asyncio.run(main())


def test_tls12_client_is_refused(nodes: Nodes) -> None:
    async def main() -> None:
        async with serve(nodes.a1) as server:
            ctx = tls.client_context(nodes.a2)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await dial(server.port, ctx)
            assert server.accepted == []

    asyncio.run(main())


def test_plain_tcp_garbage_is_refused_and_the_server_lives_on(nodes: Nodes, caplog) -> None:
    async def main() -> None:
        rng = random.Random(1234)
        async with serve(nodes.a1) as server:
            # At least a record header (5 bytes), so that the server can tell at once it is not TLS.
            for size in (5, 300, 20000):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(rng.randbytes(size))
                await writer.drain()
                rest = await read_all(reader)  # the server drops us: EOF, an alert or a reset
                assert not (isinstance(rest, bytes) and b"welcome" in rest)
                writer.close()
            # A silent client that is mid-handshake does not block others either.
            idle = await asyncio.open_connection("127.0.0.1", server.port)
            reader, writer = await dial(server.port, tls.client_context(nodes.a2))
            assert await read_all(reader) == b"welcome a2"
            writer.close()
            idle[1].close()
            assert [p.name for p in server.accepted] == ["a2"]

    with caplog.at_level("WARNING"):
        asyncio.run(main())
    # A port scan must not fill the daemon's log with tracebacks.
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_silent_client_is_dropped_after_the_handshake_timeout(nodes: Nodes) -> None:
    async def main() -> None:
        async with serve(nodes.a1, handshake_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x16")  # the first byte of a TLS record, then nothing
            await writer.drain()
            result = await read_all(reader)
            assert result == b"" or isinstance(result, BaseException), result
            writer.close()

    asyncio.run(main())


def test_peer_info_without_certificate_is_an_identity_error(nodes: Nodes) -> None:
    with pytest.raises(IdentityError, match="no certificate"):
        tls.peer_info(None, nodes.a1, now=time.time())


def _trusting_client(identity: idm.NodeIdentity, server: idm.NodeIdentity) -> ssl.SSLContext:
    """A client of another mesh that trusts our CA too, so only the server's check can stop it."""
    ctx = tls.client_context(identity)
    ctx.load_verify_locations(cadata=server.ca_cert_pem.decode())
    return ctx


# ---------------------------------------------------------------- handshake admission (issue 16, item 3)

from meshnode.net.admission import Admitted, HandshakeAdmission, Refused, source_of
from meshnode.net.tcp import TlsTransport


def test_sources_are_ipv4_addresses_and_ipv6_slash64s() -> None:
    assert source_of("10.0.0.5") == "10.0.0.5"
    assert source_of("::ffff:10.0.0.5") == "10.0.0.5"   # a dual-stack listener sees IPv4 like this
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("not-an-address") == "not-an-address"


def test_admission_bounds_each_source_and_the_total() -> None:
    adm = HandshakeAdmission(max_total=6, per_source=2, early_drop_start=None, rng=random.Random(0))
    a1, a2 = adm.admit("10.0.0.1"), adm.admit("10.0.0.1")
    assert isinstance(a1, Admitted) and isinstance(a2, Admitted)
    refused = adm.admit("10.0.0.1")
    assert isinstance(refused, Refused) and refused.reason == "busy_source"
    others = [adm.admit(f"10.0.0.{i}") for i in (2, 2, 3, 3)]
    assert all(isinstance(t, Admitted) for t in others)
    full = adm.admit("10.0.0.4")   # a fresh source, but the table is full
    assert isinstance(full, Refused) and full.reason == "busy"
    assert adm.in_progress == 6 and adm.in_progress_for("10.0.0.1") == 2
    adm.release(a1)
    adm.release(a1)               # twice: frees one slot, once
    assert adm.in_progress == 5 and adm.in_progress_for("10.0.0.1") == 1
    assert isinstance(adm.admit("10.0.0.1"), Admitted)
    for t in (a2, *others):
        adm.release(t)  # type: ignore[arg-type]
    assert adm.in_progress == 1 and dict(adm.by_source) == {"10.0.0.1": 1}


def test_admission_drops_at_random_past_the_start_threshold() -> None:
    adm = HandshakeAdmission(max_total=64, per_source=64, early_drop_start=32, early_drop_rate=0.3,
                             rng=random.Random(42))
    assert adm.drop_probability(31) == 0.0
    assert adm.drop_probability(32) == pytest.approx(0.3)
    assert adm.drop_probability(48) == pytest.approx(0.65)
    assert adm.drop_probability(64) == 1.0
    held = [adm.admit("10.0.0.1") for _ in range(32)]
    assert all(isinstance(t, Admitted) for t in held)   # below the threshold nothing is dropped
    # At 32 in progress, about 30 % of newcomers are dropped (seeded: the exact count is reproducible).
    outcomes = []
    for _ in range(1000):
        d = adm.admit("10.0.0.2")
        outcomes.append(isinstance(d, Refused) and d.reason == "early_drop")
        if isinstance(d, Admitted):
            adm.release(d)
    assert 200 < sum(outcomes) < 400


def test_a_flooding_source_leaves_room_for_another_to_handshake(nodes: Nodes) -> None:
    """One source (127.0.0.2) opens many half-open connections; it holds at most `per_source` slots and
    a real node dialling from 127.0.0.1 still completes its handshake."""

    async def main() -> None:
        refusals: list[tuple[str, str]] = []
        server = TlsTransport(nodes.a1, max_handshakes=8, max_handshakes_per_source=3, handshake_timeout=60.0,
                              on_refused=lambda reason, address, detail: refusals.append((reason, address)),
                              rng=random.Random(3))
        accepted: list[bytes] = []

        async def handler(stream) -> None:
            accepted.append(stream.peer_node_id)
            stream.close()

        listener = await server.listen("127.0.0.1", 0, handler)
        flood = []
        try:
            for _ in range(12):
                _reader, writer = await asyncio.open_connection("127.0.0.1", listener.port, local_addr=("127.0.0.2", 0))
                writer.write(b"\x16")   # a TLS record's first byte, then nothing: not "silent"
                flood.append(writer)
            end = time.monotonic() + TIMEOUT
            while sum(1 for r, _ in refusals if r == "busy_source") < 9:
                assert time.monotonic() < end, f"the flood was not refused: {refusals}"
                await asyncio.sleep(0.01)
            assert server.admission.in_progress_for("127.0.0.2") == 3
            client = TlsTransport(nodes.a2)
            stream = await client.connect("127.0.0.1", listener.port, timeout=TIMEOUT)
            assert stream.peer_node_id == nodes.a1.node_id
            stream.close()
            end = time.monotonic() + TIMEOUT
            while not accepted:
                assert time.monotonic() < end, "the honest handshake was not accepted"
                await asyncio.sleep(0.01)
            assert accepted == [nodes.a2.node_id]
        finally:
            for writer in flood:
                writer.close()
            listener.close()
            await listener.wait_closed()
        assert server.handshakes_in_progress == 0   # every slot was given back

    asyncio.run(main())


def test_refusals_without_an_owner_are_logged_bounded_per_source(nodes: Nodes, caplog) -> None:
    """Without an on_refused owner the transport logs refusals itself: once per source and reason,
    then nothing until the interval has passed (a connect flood must not become a log flood)."""

    async def main() -> None:
        server = TlsTransport(nodes.a1)
        listener = await server.listen("127.0.0.1", 0, lambda stream: asyncio.sleep(0))
        try:
            for _ in range(40):
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(reader.read(), TIMEOUT)
                writer.close()
        finally:
            listener.close()
            await listener.wait_closed()
        assert server._log_limit.held_back == 39

    with caplog.at_level("WARNING", logger="meshnode.net.tcp"):
        asyncio.run(main())
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "not_tls" in lines[0].getMessage()
