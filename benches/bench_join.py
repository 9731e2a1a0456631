"""What one node's join costs a full mesh: bytes the new node sends and receives, and what each existing
node pays, split into the new node's own hellos, relayed hellos (member announcements) and the rest.

Real Nodes on the simulated network (meshnode/net/sim, `lan` profile, a virtual clock), no traffic but
pings: N members form a full mesh (every pair linked) and settle, then node `x` starts with all N as
static peers (a full-mesh candidate set, as mDNS gives on one LAN). The join is measured from x's start
until x holds a link to every member, every member knows x, x knows every member, and 10 simulated
seconds more have passed (so that late relays are counted); bytes are the simulated links' payload
bytes (what the nodes wrote), classified by packet kind (net/sim/kinds.py).

    .venv/bin/python benches/bench_join.py --label after            # N = 10, 20, 40
    .venv/bin/python benches/bench_join.py --label before --sizes 10,20   # on the code before the change

Each run merges its figures under `runs.<label>` of `--out` (default benches/results/join.json), so a
"before" run (taken on the code as it was) and an "after" run sit side by side; rerun a label to
replace it. `--quick` (N = 4, written to results/join_quick.json) only keeps the script from rotting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshnode.config import SCHEMA  # noqa: E402
from meshnode.net.sim.links import preset  # noqa: E402
from meshnode.net.sim.vclock import VirtualClock, run_virtual  # noqa: E402
from meshnode.node import Node  # noqa: E402
from meshnode.sim.runner import Simulation  # noqa: E402
from meshnode.sim.scenario import parse_scenario  # noqa: E402

SETTLE_S = 10.0          # simulated seconds after the join looks complete, so late relays count too
DEADLINE_S = 600.0       # simulated seconds a phase may take at most
LIMIT_KEYS = set(SCHEMA.get("limits", {}))


def _totals(sim: Simulation, names: list[str]) -> dict[str, dict[str, Counter[str]]]:
    """Per node: bytes sent and received by kind, over every directed link made so far."""
    out = {n: {"sent": Counter(), "received": Counter()} for n in names}
    for (src, dst), link in sim.net.links.items():
        for kind, n in link.stats.kind_bytes.items():
            out[src]["sent"][kind] += n
            out[dst]["received"][kind] += n
    return out


def _delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    d = {k: after[k] - before[k] for k in set(after) | set(before)}
    own, relayed = d.get("hello", 0), d.get("members", 0)
    total = sum(d.values())
    return {"total": total, "own_hellos": own, "relayed_hellos": relayed, "other": total - own - relayed}


async def _wait(cond: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not cond():
        if loop.time() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def measure(n: int, seed: int) -> dict[str, Any]:
    members = [f"m{i:03d}" for i in range(n)]
    names = [*members, "x"]
    # x is last: in a full_mesh scenario the later node of each pair dials, so x dials every member.
    limits: dict[str, Any] = {"peer_timeout": 15.0, "ping_interval": 5.0, "max_peers": 128}
    if "overlay" in LIMIT_KEYS:
        # Everyone links to everyone, as before the bounded-degree overlay (issue 15 item 1): this bench
        # measures what membership costs per link, the overlay only changes how many links there are.
        limits["overlay"] = False
    sc = parse_scenario({"name": f"join-{n}", "seed": seed, "defaults": {"limits": limits},
                         "nodes": [{"name": m} for m in names],
                         "topology": {"kind": "full_mesh", "profile": "lan"}, "stop": {"time": 1}})

    async def main(sim: Simulation) -> dict[str, Any]:
        sim.prepare()
        for name in names:
            sim.net.add_host(name)
        for link in sc.links:
            sim.net.add_link(link.a, link.b, preset("lan"))
        loop = asyncio.get_running_loop()
        for name in members:
            await sim._start_node(name)
        nodes: dict[str, Node] = sim.nodes  # type: ignore[assignment]
        await _wait(lambda: all(len(nodes[m]._links) == n - 1 and len(nodes[m].members) >= n - 1 for m in members),
                    "the mesh to form")
        await asyncio.sleep(SETTLE_S)
        before = _totals(sim, names)
        t0 = loop.time()
        await sim._start_node("x")
        x = nodes["x"]
        await _wait(lambda: len(x._links) == n and len(x.members) >= n
                    and all(x.node_id in nodes[m].members for m in members), "x to join")
        joined = loop.time() - t0
        await asyncio.sleep(SETTLE_S)
        after = _totals(sim, names)
        others = [_delta(after[m]["sent"], before[m]["sent"]) for m in members]
        others_in = [_delta(after[m]["received"], before[m]["received"]) for m in members]
        counters = {k: v for k, v in x.counters().items() if k.startswith(("dropped", "members", "refused"))}
        for node in nodes.values():
            await node.stop()
        return {
            "n": n, "joined_after_s": round(joined, 3),
            "x_sent": _delta(after["x"]["sent"], before["x"]["sent"]),
            "x_received": _delta(after["x"]["received"], before["x"]["received"]),
            "member_sent_mean": {k: round(sum(o[k] for o in others) / n, 1) for k in others[0]},
            "member_sent_max": {k: max(o[k] for o in others) for k in others[0]},
            "member_received_mean": {k: round(sum(o[k] for o in others_in) / n, 1) for k in others_in[0]},
            "mesh_total": sum(o["total"] for o in others) + _delta(after["x"]["sent"], before["x"]["sent"])["total"],
            "x_counters": counters,
        }

    with tempfile.TemporaryDirectory(prefix="bench-join-") as d:
        sim = Simulation(sc, workdir=Path(d))
        sim.clock = VirtualClock()
        t = time.monotonic()
        result = run_virtual(main(sim))
        result["wall_s"] = round(time.monotonic() - t, 2)
        return result


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,20,40", help="member counts N (comma separated)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--label", default="after", help="name of this run in the JSON (e.g. before / after)")
    ap.add_argument("--quick", action="store_true", help="N = 4 only, to results/join_quick.json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [4] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    out = args.out or ROOT / "benches" / "results" / ("join_quick.json" if args.quick else "join.json")
    rows = []
    for n in sizes:
        row = measure(n, args.seed)
        rows.append(row)
        xs, xr = row["x_sent"], row["x_received"]
        print(f"N={n:3d}  x sent {xs['total']:>9,d} B (relayed hellos {xs['relayed_hellos']:>9,d})  "
              f"x received {xr['total']:>9,d} B (relayed hellos {xr['relayed_hellos']:>9,d})  "
              f"member sent mean {row['member_sent_mean']['total']:>9,.0f} B  mesh total {row['mesh_total']:>10,d} B  "
              f"joined in {row['joined_after_s']:.2f} s sim, {row['wall_s']:.1f} s wall", flush=True)
    doc: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    doc.update({"bench": "bench_join", "what": "bytes of one node joining a full mesh of N (simulated lan)",
                "mode": "quick" if args.quick else "full"})
    doc.setdefault("runs", {})[args.label] = {
        "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "meshnode")),
        "seed": args.seed, "settle_s": SETTLE_S, "python": platform.python_version(),
        "loadavg": os.getloadavg(), "command": " ".join(["benches/bench_join.py", *(argv or sys.argv[1:])]),
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
