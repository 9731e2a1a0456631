"""The simulated transport under real Nodes: delivery semantics, partitions, crashes, reproducibility and
the virtual clock. Everything runs in simulated time (a VirtualTimeLoop), so waits are cheap."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from meshnode.net.sim.links import DATAGRAM, LinkProfile, preset
from meshnode.net.sim.transport import SimNetwork
from meshnode.net.sim.vclock import run_virtual
from meshnode.net.transport import TransportError
from meshnode.sim.identities import simulated_mesh
from meshnode.sim.runner import Simulation, run_scenario
from meshnode.sim.scenario import parse_scenario
from meshnode.wire.frames import FrameDecoder, encode_frame

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    return simulated_mesh(tmp_path_factory.mktemp("mesh"), ["a", "b", "c"], seed=3)


def network(ids, profile: LinkProfile, seed: int = 1) -> SimNetwork:
    net = SimNetwork(seed)
    for n in ("a", "b", "c"):
        net.add_host(n)
    net.add_link("a", "b", profile)
    return net


# ------------------------------------------------------------------------------- the transport


def test_reliable_stream_keeps_order_over_loss_and_names_the_peer(ids) -> None:
    async def main() -> None:
        net = network(ids, LinkProfile(loss=0.2, burst=3.0, rate_bps=1e6, delay=0.01, jitter=0.005))
        ta, tb = net.transport("a", ids["a"]), net.transport("b", ids["b"])
        got: list[bytes] = []
        accepted: list[bytes] = []

        async def serve(stream) -> None:
            accepted.append(stream.peer_node_id)
            while data := await stream.read():
                got.append(data)

        listener = await tb.listen("b", 7000, serve)
        stream = await ta.connect("b", 7000, timeout=10)
        assert stream.peer_node_id == ids["b"].node_id and stream.peer_certificate == ids["b"].cert_der
        payload = bytes(range(256)) * 400
        for i in range(0, len(payload), 1000):
            stream.write(payload[i:i + 1000])
            await stream.drain()
        stream.close()
        for _ in range(600):
            if b"".join(got) == payload:
                break
            await asyncio.sleep(0.5)
        assert b"".join(got) == payload
        assert accepted == [ids["a"].node_id]
        assert net.links[("a", "b")].stats.retransmissions > 0
        listener.close()

    run_virtual(main())


def test_dial_errors_refused_no_route_and_timeout(ids) -> None:
    async def main() -> None:
        net = network(ids, preset("lan"))
        ta = net.transport("a", ids["a"])
        net.transport("b", ids["b"])
        with pytest.raises(TransportError, match="refused"):
            await ta.connect("b", 7000, timeout=5)
        with pytest.raises(TransportError, match="no route"):
            await ta.connect("c", 7000, timeout=5)
        net.cut("a", "b")
        loop = asyncio.get_running_loop()
        t = loop.time()
        with pytest.raises(TransportError, match="no connection within 5 s"):
            await ta.connect("b", 7000, timeout=5)
        assert 4.0 <= loop.time() - t <= 5.0 + 1e-6

    run_virtual(main())


def test_datagram_mode_delivers_whole_frames_or_nothing(ids) -> None:
    async def main() -> None:
        net = network(ids, LinkProfile(mode=DATAGRAM, loss=0.1, rate_bps=1e6, mtu=500, overhead=40,
                                       duplicate=0.02, reorder=0.05, delay=0.01))
        ta, tb = net.transport("a", ids["a"]), net.transport("b", ids["b"])
        frames: list[bytes] = []
        decoder = FrameDecoder()

        async def serve(stream) -> None:
            while data := await stream.read():
                frames.extend(decoder.feed(data))

        await tb.listen("b", 7000, serve)
        stream = None
        while stream is None:               # the handshake itself may be lost: the dial retries
            stream = await ta.connect("b", 7000, timeout=30)
        sent = [bytes([i % 251]) * (100 + 37 * (i % 40)) for i in range(2000)]
        for f in sent:
            stream.write(encode_frame(f))
            await stream.drain()
        await asyncio.sleep(5)
        assert set(frames) <= set(sent)              # nothing torn or mixed up: whole frames only
        stats = net.links[("a", "b")].stats
        assert 0.6 < len(frames) / len(sent) < 0.99  # lost is lost
        assert stats.dropped["loss"] > 0 and stats.duplicated > 0

    run_virtual(main())


def test_crash_is_silent_and_the_restarted_host_resets_old_connections(ids) -> None:
    async def main() -> None:
        net = network(ids, preset("wan"))
        ta, tb = net.transport("a", ids["a"]), net.transport("b", ids["b"])
        server_side = []

        async def serve(stream) -> None:
            server_side.append(stream)
            await stream.read()

        await tb.listen("b", 7000, serve)
        stream = await ta.connect("b", 7000, timeout=10)
        net.crash("b")
        stream.write(b"anyone?")
        reader = asyncio.ensure_future(stream.read())
        await asyncio.sleep(30)
        assert not reader.done()            # no FIN, no RST from a dead host
        net.revive("b")
        await asyncio.sleep(1)
        assert reader.done() and reader.result() == b""
        with pytest.raises(ConnectionResetError):
            await stream.drain()

    run_virtual(main())


# ------------------------------------------------------------------------------- nodes on it


def scenario(**over):
    data = {
        "name": "t", "seed": 11,
        "defaults": {"limits": {"peer_timeout": 6.0, "ping_interval": 2.0}},
        "nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "topology": {"kind": "full_mesh", "profile": "lossy"},
        "profiles": {"lossy": {"base": "wifi", "loss": 0.10, "burst": 1.0}},
        "traffic": [{"from": "a", "topic": "t", "count": 60, "vectors": 8, "dim": 2048, "interval": 0.5}],
        "stop": {"time": 300, "when": "delivered", "settle": 2},
    }
    data.update(over)
    return parse_scenario(data)


def test_three_nodes_under_10_percent_loss_reliable_deliver_every_packet_exactly_once() -> None:
    report = run_scenario(scenario())
    assert report["stopped_by"] == "delivered"
    assert report["checks"] == {"all_delivered": True, "exactly_once": True, "delivery_ratio_min": 1.0}
    for r in report["flows"][0]["receivers"].values():
        assert r["delivered"] == 60 and r["duplicates"] == 0
    # the loss was real: segments were retransmitted on every link that carried data
    assert all(s["retransmissions"] > 0 for name, s in report["links"].items() if s["bytes_sent"] > 50_000)


def test_datagram_mode_reports_the_delivery_ratio_and_nothing_crashes() -> None:
    sc = scenario(profiles={"lossy": {"base": "wifi", "loss": 0.10, "burst": 1.0, "mode": "datagram"}},
                  traffic=[{"from": "a", "topic": "t", "count": 100, "vectors": 1, "dim": 512, "interval": 0.5}],
                  stop={"time": 120})
    report = run_scenario(sc)
    assert report["stopped_by"] == "time"
    ratios = [r["delivery_ratio"] for r in report["flows"][0]["receivers"].values()]
    assert all(r is not None and 0.0 < r <= 1.0 for r in ratios)
    assert report["checks"]["exactly_once"]                  # dedup still holds with lost frames
    assert sum(s["dropped"].get("loss", 0) for s in report["links"].values()) > 0
    for s in report["links"].values():
        assert s["delivery_ratio"] is None or s["delivery_ratio"] < 1.0 or s["packets_sent"] < 20


def test_partition_and_heal_reconnects_and_gossip_resumes() -> None:
    sc = scenario(
        nodes=[{"name": "a"}, {"name": "b"}, {"name": "c"}],
        topology={"kind": "line", "profile": "wan"},
        traffic=[{"from": "a", "topic": "t", "count": 60, "vectors": 4, "dim": 1024, "interval": 2.0}],
        events=[{"at": 30, "action": "cut", "link": ["b", "c"]}, {"at": 60, "action": "restore", "link": ["b", "c"]}],
        stop={"time": 150})

    async def main(sim: Simulation) -> dict:
        return await sim.run()

    import tempfile
    with tempfile.TemporaryDirectory(prefix="msim-") as d:
        sim = Simulation(sc, workdir=Path(d))
        sim.prepare()
        report = run_virtual(main(sim))
    c = report["nodes"]["c"]["counters"]
    assert c["links.lost.timeout"] >= 1 and c["links.opened"] >= 2     # it went down, and came back
    fs = sim.flows[0]
    after_heal = [pid for pid, t in fs.sent_at.items() if t > 75.0]
    during = [pid for pid, t in fs.sent_at.items() if 31.0 < t < 60.0]
    assert after_heal and all(fs.got["c"][pid] == 1 for pid in after_heal)   # gossip resumed
    # anti-entropy: what was published during the cut reaches c once the link is back, exactly once
    assert during and all(fs.got["c"][pid] == 1 for pid in during)
    assert all(fs.got["b"][pid] == 1 for pid in fs.sent_at)     # b never lost a


def test_kill_and_restart_a_node() -> None:
    sc = scenario(topology={"kind": "full_mesh", "profile": "lan"},
                  traffic=[{"from": "a", "topic": "t", "count": 30, "vectors": 1, "dim": 256, "interval": 2.0}],
                  events=[{"at": 10, "action": "kill", "node": "c"}, {"at": 30, "action": "restart", "node": "c"}],
                  stop={"time": 80})
    report = run_scenario(sc)
    c = report["nodes"]["c"]
    assert c["running"] and c["incarnations"] == 2
    assert [e["outcome"] for e in report["events"]] == ["done", "done"]
    # what came while c was down is fetched from its peers' message caches after the restart, once each
    assert report["flows"][0]["receivers"]["c"]["delivered"] == 30
    assert report["flows"][0]["receivers"]["c"]["duplicates"] == 0
    assert report["flows"][0]["receivers"]["b"]["delivered"] == 30


def test_same_seed_gives_a_byte_identical_report_another_seed_does_not() -> None:
    sc = scenario(stop={"time": 60})
    one, two = (json.dumps(run_scenario(sc), indent=1) for _ in range(2))
    assert one == two
    import dataclasses
    assert json.dumps(run_scenario(dataclasses.replace(sc, seed=12)), indent=1) != one


def test_one_simulated_hour_takes_well_under_a_minute() -> None:
    sc = parse_scenario({
        "nodes": [{"name": n, "workers": [{"name": "beat", "type": "heartbeat-vectors",
                                           "settings": {"interval": 10.0}}]} for n in "abc"],
        "topology": {"kind": "line", "profile": "lora"},
        "stop": {"time": 3600}})
    t0 = time.monotonic()
    report = run_scenario(sc)
    wall = time.monotonic() - t0
    assert report["sim_time_s"] == 3600
    assert wall < 60, f"one simulated hour took {wall:.1f} s of wall time"
    # the hour happened: heartbeats every 10 s for an hour from each node, heard by its neighbours
    beats = report["nodes"]["b"]["workers"][0]["metrics"]
    assert beats["sent"] >= 350 and beats["received"] >= 2 * 300


def test_a_capture_is_on_one_clock_and_verifies_with_the_ca_the_simulator_writes(tmp_path: Path) -> None:
    """Control packets (hello, ping, pong, bye), fragments and data packets all carry simulated time,
    as the capture records do; `ca.crt` next to the captures makes every signature check out and
    names every node."""
    from meshnode.inspect import TrustStore, failed, inspect_bytes
    from meshnode.net.sim.vclock import EPOCH_US

    sc = scenario(topology={"kind": "line", "profile": "lan"},
                  traffic=[{"from": "a", "topic": "t", "count": 3, "vectors": 40, "dim": 16384,
                            "encoding": "dense2", "interval": 2.0}],     # 160 KB: fragmented
                  stop={"time": 8})
    report = run_scenario(sc, capture_dir=tmp_path)
    assert b"PRIVATE" not in (tmp_path / "ca.crt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mncap", "b.mncap", "c.mncap", "ca.crt"]
    trust = TrustStore()
    trust.add_file(tmp_path / "ca.crt")
    # Simulated time starts at the virtual epoch; the nodes' shutdown (byes, with a close grace)
    # comes after the report's end, so allow a few simulated seconds more. The real clock would be
    # years away from this window.
    first, last = EPOCH_US, EPOCH_US + int((report["sim_time_s"] + 10) * 1e6)
    kinds: set[str] = set()
    for name in "abc":
        results = list(inspect_bytes((tmp_path / f"{name}.mncap").read_bytes(), trust))
        assert not failed(results), [r for r in results if not isinstance(r, dict)]
        packets = [r for r in results if isinstance(r, dict)]
        for p in packets:
            assert first <= p["timestamp_us"] <= last, p["kind"]
            assert first <= p["captured_us"] <= last
            assert p["signature"] == ("unsigned" if p["kind"] == "fragment" else "valid")
        kinds |= {p["kind"] for p in packets}
        assert {p["origin_name"] for p in packets} <= {"a", "b", "c"}
        assert all("origin_name" in p for p in packets)
    assert {"hello", "ping", "pong", "vectors", "fragment", "bye"} <= kinds
