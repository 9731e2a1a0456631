"""Traffic by packet kind: the simulated links attribute every delivered byte to the kind of packet it
belongs to (from the header only), the report and summary show the split, and the plot draws one
panel per link (or per node) stacked by kind, with line rates and labelled events."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from meshnode.net.sim.kinds import KINDS, StreamKinds, frame_kind
from meshnode.sim.report import MAX_LINK_PANELS, _panels, plot_report, print_summary
from meshnode.sim.runner import run_scenario
from meshnode.sim.scenario import parse_scenario
from meshnode.wire.frames import encode_frame
from meshnode.wire.packet import Bye, Kind, Ping, Pong, Signer

pytestmark = pytest.mark.timeout(120)

SIGNER = Signer.from_seed(bytes(range(32)))
OTHER = Signer.from_seed(bytes(32))


def frame(body: Any, signer: Signer = SIGNER) -> bytes:
    from meshnode.wire.packet import encode_packet
    return encode_frame(encode_packet(body, signer, timestamp_us=1))


def as_kind(framed: bytes, kind: Kind) -> bytes:
    """The same frame with another kind byte: frame_kind reads the header only, never the body."""
    return framed[:10] + bytes([kind]) + framed[11:]


def test_frame_kind_reads_the_header() -> None:
    ping = frame(Ping(1))
    assert frame_kind(ping) == "ping" and frame_kind(frame(Pong(1))) == "pong" and frame_kind(frame(Bye("x"))) == "bye"
    hello = as_kind(ping, Kind.HELLO)
    assert frame_kind(hello, SIGNER.node_id) == "hello"             # the sender's own hello
    assert frame_kind(hello, OTHER.node_id) == "members"            # a relayed hello: a member announcement
    assert frame_kind(hello) == "hello"                              # sender unknown
    assert frame_kind(hello[:60], OTHER.node_id) == "hello"          # origin not there yet
    assert frame_kind(ping[:10]) == "other"                          # kind byte not there yet
    assert frame_kind(b"\x10\0\0\0XXXX" + ping[8:]) == "other"       # not a meshnode packet
    assert frame_kind(ping[:10] + b"\xee" + ping[11:]) == "other"    # unknown kind
    assert set(KINDS) >= {"hello", "members", "ping", "pong", "vectors", "delta", "knowledge", "fragment", "bye",
                          "other"}


@pytest.mark.parametrize("seed", range(5))
def test_stream_kinds_split_any_segmentation_by_frame(seed: int) -> None:
    rng = random.Random(seed)
    frames = [frame(Ping(1)), as_kind(frame(Ping(2), OTHER), Kind.HELLO), frame(Bye("done", "x" * 3000)),
              frame(Pong(2))]
    stream = b"".join(frames)
    kinds = StreamKinds(SIGNER.node_id)
    # written in pieces cut anywhere (inside length prefixes and headers too) ...
    cuts = sorted(rng.sample(range(1, len(stream)), 12))
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        kinds.wrote(stream[lo:hi])
    # ... and delivered in other pieces: every byte is attributed once, packets counted when they end
    got: dict[str, list[int]] = {}
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 700)
        for kind, nbytes, packets in kinds.take(min(n, len(stream) - pos)):
            entry = got.setdefault(kind, [0, 0])
            entry[0] += nbytes
            entry[1] += packets
        pos += n
    assert sum(b for b, _ in got.values()) == len(stream)
    assert got["ping"][1] == got["pong"][1] == got["bye"][1] == got["members"][1] == 1
    assert got["bye"][0] >= len(frames[2]) - 76      # all but a header cut by a write end, at most
    assert kinds.undelivered == 0


def test_whole_frames_written_are_attributed_exactly() -> None:
    frames = [frame(Ping(1)), frame(Bye("done", "x" * 3000)), frame(Pong(2))]
    kinds = StreamKinds(SIGNER.node_id)
    kinds.wrote(b"".join(frames[:2]))
    kinds.wrote(frames[2])
    out = kinds.take(sum(map(len, frames)))
    assert out == [("ping", len(frames[0]), 1), ("bye", len(frames[1]), 1), ("pong", len(frames[2]), 1)]
    kinds.wrote(frames[0])
    kinds.clear()                                   # the connection is gone
    assert kinds.undelivered == 0


def scenario(mode: str, **over: Any):
    data: dict[str, Any] = {
        "seed": 4,
        "profiles": {"radio": {"base": "wifi", "loss": 0.05, "burst": 1.0, "mode": mode}},
        "nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "topology": {"kind": "line", "profile": "radio"},
        # 40 x 16384 dense2 trits: 160 KB, fragmented; and small packets that are not
        "traffic": [{"from": "a", "count": 3, "vectors": 40, "dim": 16384, "encoding": "dense2", "interval": 2.0},
                    {"from": "c", "topic": "small", "count": 20, "vectors": 1, "dim": 64, "interval": 0.5}],
        "stop": {"time": 20},
    }
    data.update(over)
    return parse_scenario(data)


@pytest.mark.parametrize("mode", ["reliable", "datagram"])
def test_the_kinds_add_up_to_what_each_link_delivered(mode: str) -> None:
    report = run_scenario(scenario(mode))
    seen: set[str] = set()
    for name, s in report["links"].items():
        kinds = s["kinds"]
        assert sum(v["bytes"] for v in kinds.values()) == s["bytes_delivered"], name
        assert set(kinds) <= set(KINDS) and list(kinds) == [k for k in KINDS if k in kinds]
        timeline = report["timeline"]
        rows = timeline["kinds"][name]
        assert [sum(col) for col in zip(*rows.values(), strict=True)] == timeline["bytes"][name] or not rows
        seen |= set(kinds)
        if mode == "datagram":
            # a datagram is one frame; the link's packets also count the (empty) handshake segments
            assert 0 < sum(v["packets"] for v in kinds.values()) <= s["packets_delivered"]
    assert {"hello", "ping", "vectors", "fragment"} <= seen
    assert "other" not in seen                                # every byte was a recognisable packet


def test_summary_table_of_kinds() -> None:
    report = run_scenario(scenario("reliable", traffic=[{"from": "a", "count": 2, "vectors": 1, "dim": 64}],
                                   stop={"time": 5}))
    out = io.StringIO()
    print_summary(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "delivered by packet kind" in text
    header = next(line for line in text.splitlines() if line.strip("│┃ ").startswith("kind"))
    assert all(name in header for name in report["links"])          # 4 links: a column each
    row = next(line for line in text.splitlines() if line.strip("│┃ ").startswith("vectors"))
    assert "%" in row


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_plot_has_a_panel_per_link_with_events_and_line_rates(tmp_path: Path) -> None:
    sc = scenario("reliable", profiles={"slow": {"base": "lte", "rate_bps": 200_000}},
                  traffic=[{"from": "a", "count": 20, "vectors": 4, "dim": 1024, "interval": 1.0}],
                  events=[{"at": 4, "action": "cut", "link": ["b", "c"]},
                          {"at": 8, "action": "restore", "link": ["b", "c"]},
                          {"at": 10, "action": "set_profile", "link": ["a", "b"], "profile": "slow"},
                          {"at": 12, "action": "kill", "node": "c"}, {"at": 15, "action": "restart", "node": "c"}],
                  topology={"kind": "line", "profile": "wifi"}, stop={"time": 25})
    report = run_scenario(sc)
    capacity = report["timeline"]["capacity_bps"]
    assert capacity["a->b"] == [[0.0, 20e6], [10.0, 200_000.0]] and capacity["b->a"][-1] == [10.0, 200_000.0]
    assert capacity["b->c"] == [[0.0, 20e6]]
    panels, what = _panels(report)
    assert [p.title.split(":")[0] for p in panels] == list(report["links"]) and what == "delivered on each link"
    assert panels[0].capacity == capacity["a->b"] and panels[0].about == {"a", "b"}
    plot_report(report, tmp_path / "p.png")
    width, height = png_size(tmp_path / "p.png")
    assert (width, height) == (1200, 500)       # 2 columns, a row per link pair: 0.6 + 2 x 2.2 in at 100 dpi


def test_many_links_give_a_panel_per_node(tmp_path: Path) -> None:
    names = "abcde"                                            # full mesh of 5: 20 directed links
    sc = parse_scenario({"nodes": [{"name": n} for n in names], "topology": {"kind": "full_mesh", "profile": "lan"},
                         "traffic": [{"from": "a", "count": 2, "vectors": 1, "dim": 64}],
                         "events": [{"at": 2, "action": "kill", "node": "e"}], "stop": {"time": 4}})
    report = run_scenario(sc)
    assert len(report["links"]) > MAX_LINK_PANELS
    panels, what = _panels(report)
    assert [p.about for p in panels] == [{n} for n in names] and what == "received by each node"
    incoming = [s for s in report["links"].values() if s["to"] == "b"]
    b = panels[1]
    assert sum(map(sum, b.kinds.values())) == sum(s["bytes_delivered"] for s in incoming)
    assert b.capacity == [[0.0, 4 * 1e9]]                      # four 1 Gbit/s links into b
    plot_report(report, tmp_path / "n.png")
    assert png_size(tmp_path / "n.png") == (1200, 720)        # 5 node panels in 3 rows
