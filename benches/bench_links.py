"""The same workload over every link preset of the simulated network: how long does it take, what
goodput does the protocol get, and how far is that from what the link could carry at best?

    .venv/bin/python benches/bench_links.py [--quick] [--datagram] [--out PATH]

Workload: node a publishes 200 vectors packets of 64 x 4096 trits (auto encoding: base3, about 52 KB
each, signed) back to back to node b over one link of the preset (both directions the preset),
real Nodes over the simulated network on virtual time (seed 1). Per preset:

- completion_s: simulated seconds from the first publish to the last packet delivered to b's subscriber
- goodput_bps: encoded packet bytes * 8 / completion_s
- delivery_ratio: distinct packets delivered / published
- min_time_s: the theoretical minimum for that payload at that rate (bytes * 8 / rate_bps + one-way
  delay), and wire_min_time_s, the same with the preset's per-segment header bytes; efficiency =
  min_time_s / completion_s
- wall_s: wall time the simulation took

Two node settings differ from the daemon defaults, the same for every preset, recorded in the JSON:
send_queue_bytes = 64 MiB (200 packets of 52 KB = 10.5 MB would overflow the default 8 MiB queue and
the drops would be counted instead of the time) and dedup_window = 1 day (over LoRa a packet waits
hours in the queue and the default 300 s replay window would refuse it as stale; see docs/SIM.md).

--datagram also runs each preset in datagram mode (lost is lost), with the fragment size set so that a
fragment and its header fit one segment (at least 256 bytes), so that a loss costs one fragment, not a
52 KB frame; a packet still needs every one of its fragments. These runs stop at
3 x min_time + 120 s since an incomplete transfer never completes. --quick: 10 packets, a smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from meshnode import __version__
from meshnode.net.sim.links import DATAGRAM, PRESETS
from meshnode.sim.runner import run_scenario
from meshnode.sim.scenario import parse_scenario
from meshnode.wire.packet import Signer, VectorBlock, Vectors, encode_packet

ROOT = Path(__file__).resolve().parents[1]
VECTORS, DIM = 64, 4096


def packet_bytes() -> int:
    """Encoded size of one workload packet (signed, auto encoding), as the runner publishes it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    trits = np.random.default_rng([1, 0]).integers(-1, 2, size=(VECTORS, DIM), dtype=np.int8)
    body = Vectors(topic="bench", vectors=VectorBlock.from_trits(trits, b"meshnode-sim/v1"), meta={"flow": 0, "seq": 0})
    return len(encode_packet(body, Signer(Ed25519PrivateKey.generate())))


def run_preset(name: str, count: int, mode: str, pkt: int) -> dict:
    prof = PRESETS[name]
    payload = count * pkt
    min_time = payload * 8 / prof.rate_bps + prof.delay
    segs = -(-(pkt + 4) // prof.mss)                 # + the 4-byte frame prefix
    wire_min = count * (pkt + 4 + segs * prof.overhead) * 8 / prof.rate_bps + prof.delay
    limits = {"send_queue_bytes": 64 << 20, "dedup_window": 86400.0}
    profile = {"base": name}
    if mode == DATAGRAM:
        profile["mode"] = DATAGRAM
        limits["fragment_size"] = max(256, prof.mss - 160)    # fragment + its header in one segment where possible
        stop = {"time": 3 * min_time + 120, "when": "delivered"}
    else:
        stop = {"time": 20 * min_time + 3600, "when": "delivered"}
    sc = parse_scenario({
        "name": f"links-{name}-{mode}", "seed": 1, "defaults": {"limits": limits},
        "nodes": [{"name": "a"}, {"name": "b"}],
        "profiles": {"p": profile},
        "topology": {"kind": "line", "profile": "p"},
        "traffic": [{"from": "a", "to": ["b"], "topic": "bench", "count": count, "vectors": VECTORS, "dim": DIM}],
        "stop": stop})
    t0 = time.monotonic()
    report = run_scenario(sc)
    wall = time.monotonic() - t0
    flow = report["flows"][0]
    rb = flow["receivers"]["b"]
    start = report["ready_at_s"]
    completion = (report["sim_time_s"] - start) if flow["complete"] else None
    link = report["links"]["a->b"]
    return {
        "preset": name, "mode": mode, "profile": link["profile"], "packets": count, "packet_bytes": pkt,
        "payload_bytes": payload, "published": flow["published"], "delivered": rb["delivered"],
        "delivery_ratio": rb["delivery_ratio"], "complete": flow["complete"],
        "completion_s": None if completion is None else round(completion, 6),
        "goodput_bps": None if not completion else round(rb["delivered"] * pkt * 8 / completion, 1),
        "min_time_s": round(min_time, 6), "wire_min_time_s": round(wire_min, 6),
        "efficiency": None if not completion else round(min_time / completion, 4),
        "latency_ms": rb["latency_ms"], "link_a_to_b": {k: link[k] for k in (
            "packets_sent", "bytes_sent", "wire_bytes", "retransmissions", "dropped", "delivery_ratio")},
        "node_drops": {k: v for k, v in report["nodes"]["a"]["counters"].items() if k.startswith("dropped.")},
        "stopped_by": report["stopped_by"], "sim_time_s": report["sim_time_s"], "wall_s": round(wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 packets: a smoke run, not the benchmark")
    ap.add_argument("--datagram", action="store_true", help="also run every preset in datagram mode")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    ap.add_argument("--out", type=Path, default=ROOT / "benches" / "results" / "links.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)   # datagram runs log every lost hello; the JSON counts them
    count = 10 if args.quick else 200
    pkt = packet_bytes()
    rows = []
    modes = ["reliable", DATAGRAM] if args.datagram else ["reliable"]
    print(f"{count} packets of {VECTORS} x {DIM} trits, {pkt} bytes each encoded ({count * pkt / 1e6:.2f} MB)")
    print(f"{'preset':8} {'mode':9} {'delivered':>9} {'completion':>12} {'min time':>10} {'eff.':>6} "
          f"{'goodput':>14} {'retrans':>8} {'wall':>7}")
    for name in args.presets.split(","):
        for mode in modes:
            r = run_preset(name, count, mode, pkt)
            rows.append(r)
            comp = "-" if r["completion_s"] is None else f"{r['completion_s']:,.2f} s"
            eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.3f}"
            good = "-" if r["goodput_bps"] is None else f"{r['goodput_bps'] / 1e3:,.1f} kbit/s"
            print(f"{name:8} {mode:9} {r['delivered']:>4}/{r['published']:<4} {comp:>12} {r['min_time_s']:>8,.2f} s "
                  f"{eff:>6} {good:>14} {r['link_a_to_b']['retransmissions']:>8} {r['wall_s']:>6.1f}s")
    result = {
        "bench": "links", "mode": "quick" if args.quick else "full", "meshnode_version": __version__,
        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "workload": {"packets": count, "vectors": VECTORS, "dim": DIM, "encoding": "auto", "packet_bytes": pkt,
                     "seed": 1, "node_limits": {"send_queue_bytes": 64 << 20, "dedup_window": 86400.0}},
        "presets": {name: PRESETS[name].note for name in args.presets.split(",")},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
