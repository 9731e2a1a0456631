"""A mesh of N nodes under `meshnode sim`: what each node spends (bytes by traffic class), whether
everything arrives once, how late and over how many hops, how long a restarted node takes to hear
something, and how fast the simulator runs; the bounded-degree overlay against today's flooding in
the same run (issue 15, "Benchmark").

    .venv/bin/python benches/bench_scale.py [--quick] [--sizes 10,25,50,100,200] [--profiles lan,wifi]
                                            [--arms overlay,flood] [--out PATH] [--plot PATH]
    .venv/bin/python benches/bench_scale.py --merge A.json B.json ... --out benches/results/scale.json

Workload, the same for every run (seed 1): N nodes named n001..nNNN on a `full_mesh` candidate topology
(one LAN of the profile: every pair *can* connect; the node chooses whom it dials); three publishers
(n001 and the nodes a third and two thirds of the way along) publish 10 packets each (30 in all) of
16 x 4096 trits (auto encoding, ~13 KB signed), one every 0.5 s per publisher, from t = 5 s (nodes
start at 0 and are linked within about a second); every other node is a receiver of every flow.
The last node, not a publisher, is killed at t = 4 s and restarted at t = 7.5 s, half-way through the
traffic: its "join time" is the time from its restart to its first delivery. A run stops once every
receiver has every packet (+ 2 s) or at t = 30 s.

Arms: "overlay" runs the node's defaults; "flood" sets `limits.overlay = false` (every packet on every
link, as before issue 15). The flood arm runs only when the node's config schema has `limits.overlay`
(checked at run time); otherwise the JSON says the comparison is missing.

Per run (JSON `runs[i]`, from the report's `mesh` section, docs/SIM.md): bytes sent and received per
node (mean, max) in all and by class (data, lazy, membership, control, other); delivery ratio and
duplicates; end-to-end latency p50/p99 (`latency_ms`: of the receivers that never restarted, whose
deliveries are live; `latency_ms_all` includes the restarted node's catch-up); hops per delivery; join time of the restarted node; links made;
simulator wall time and CPU time per simulated second (measured around the run, not in the report).
Wall time depends on what else the machine runs: the JSON records the load average before and after,
and CPU time per simulated second, which depends less on it.

Targets (issue 15), judged on the overlay arm and reported met / missed: delivery 1.0 exactly once in
every run; mean bytes per node at the largest N no more than 1.5 x those at N = 25, per profile;
p99 latency growing no faster than log N (p99(N) / p99(25) <= log(N) / log(25)); 100 nodes on wifi at
least as fast as real time (wall s per simulated s <= 1).

--quick: N = 10 and 25 on lan (or --sizes), a smoke run written to results/scale_quick.json: not
the benchmark. A run of a subset (--sizes / --profiles / --arms other than the full grid) is a piece:
give it --out under benches/results/scale_partial/ and pool the pieces with --merge.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshnode import __version__  # noqa: E402
from meshnode.net.sim.kinds import CLASSES  # noqa: E402
from meshnode.sim.runner import run_timed  # noqa: E402
from meshnode.sim.scenario import parse_scenario  # noqa: E402

SIZES = (10, 25, 50, 100, 200)
PROFILES = ("lan", "wifi")
ARMS = ("overlay", "flood")
QUICK_SIZES = (10, 25)
SEED = 1
PUBLISHERS = 3
PACKETS_EACH = 10                 # x 3 publishers = 30 packets
VECTORS, DIM = 16, 4096
INTERVAL = 0.5
TRAFFIC_START = 5.0
KILL_AT, RESTART_AT = 4.0, TRAFFIC_START + PACKETS_EACH * INTERVAL / 2
STOP_TIME = 30.0
DEFAULT_OUT = ROOT / "benches" / "results" / "scale.json"
QUICK_OUT = ROOT / "benches" / "results" / "scale_quick.json"


def overlay_key_exists() -> bool:
    """Does the node's config have `limits.overlay` (the switch between the overlay and flooding)?"""
    from meshnode import config

    schema = getattr(config, "SCHEMA", {})
    return "overlay" in schema.get("limits", {})


def scenario(n: int, profile: str, arm: str) -> Any:
    width = len(str(n))
    name = [f"n{k:0{width}d}" for k in range(1, n + 1)]
    sources = [name[0], name[n // 3], name[2 * n // 3]]
    joiner = name[-1]
    assert joiner not in sources and n >= 4
    limits = {"overlay": False} if arm == "flood" else {}
    return parse_scenario({
        "name": f"scale-{profile}-{n}-{arm}", "seed": SEED,
        "defaults": {"limits": limits},
        "node_groups": [{"prefix": "n", "count": n}],
        "topology": {"kind": "full_mesh", "profile": profile},
        "traffic": [{"from": s, "topic": "scale", "count": PACKETS_EACH, "vectors": VECTORS, "dim": DIM,
                     "interval": INTERVAL, "start": TRAFFIC_START + i * INTERVAL / PUBLISHERS}
                    for i, s in enumerate(sources)],
        "events": [{"at": KILL_AT, "action": "kill", "node": joiner},
                   {"at": RESTART_AT, "action": "restart", "node": joiner}],
        "stop": {"time": STOP_TIME, "when": "delivered", "settle": 2.0},
    }), joiner


def run_one(n: int, profile: str, arm: str) -> dict[str, Any]:
    sc, joiner = scenario(n, profile, arm)
    report, timing = run_timed(sc)
    mesh = report["mesh"]
    joins = report["nodes"][joiner]["joins"]
    drops: dict[str, int] = {}
    for node in report["nodes"].values():
        for k, v in node["counters"].items():
            if k.startswith("dropped."):
                drops[k] = drops.get(k, 0) + v
    joiner_ratio = min((f["receivers"][joiner]["delivery_ratio"] or 0.0) for f in report["flows"])
    return {
        "n": n, "profile": profile, "arm": arm, "ready_at_s": report["ready_at_s"],
        "stopped_by": report["stopped_by"], "sim_time_s": report["sim_time_s"], "links_made": mesh["links_made"],
        "bytes_per_node": mesh["bytes_per_node"], "unclassified_kinds": mesh["unclassified_kinds"],
        "delivery": mesh["delivery"], "all_delivered": report["checks"]["all_delivered"],
        "exactly_once": report["checks"]["exactly_once"], "joiner": joiner, "joiner_delivery_ratio": joiner_ratio,
        "latency_ms": mesh["latency_ms_steady"], "latency_ms_all": mesh["latency_ms"], "hops": mesh["hops"],
        "join_s": joins[-1]["join_s"] if len(joins) > 1 else None,
        "dropped": dict(sorted(drops.items())),
        "timing": timing.to_dict(),
        "cpu_per_sim_s": round(timing.cpu_s / timing.sim_s, 4) if timing.sim_s else None,
    }


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's targets on the overlay arm: [{target, profile, measured, limit, met}]."""
    out: list[dict[str, Any]] = []
    ov = [r for r in runs if r["arm"] == "overlay"]
    for r in ov:
        out.append({"target": "delivery 1.0 exactly once", "profile": r["profile"], "n": r["n"],
                    "measured": {"ratio": r["delivery"]["ratio"], "duplicates": r["delivery"]["duplicates"]},
                    "met": r["delivery"]["ratio"] == 1.0 and r["delivery"]["duplicates"] == 0})
    for profile in sorted({r["profile"] for r in ov}):
        by_n = {r["n"]: r for r in ov if r["profile"] == profile}
        if 25 in by_n and max(by_n) > 25:
            top = max(by_n)
            ratio = by_n[top]["bytes_per_node"]["sent"]["all"]["mean"] / max(1.0, by_n[25]["bytes_per_node"]["sent"]["all"]["mean"])
            out.append({"target": f"mean bytes per node at N={top} <= 1.5 x N=25", "profile": profile,
                        "measured": round(ratio, 3), "limit": 1.5, "met": ratio <= 1.5})
            p25, ptop = by_n[25]["latency_ms"]["p99"], by_n[top]["latency_ms"]["p99"]
            if p25 and ptop:
                growth, limit = ptop / p25, math.log(top) / math.log(25)
                out.append({"target": f"p99 latency growth N=25 -> {top} <= log N growth", "profile": profile,
                            "measured": round(growth, 3), "limit": round(limit, 3), "met": growth <= limit})
    for r in ov:
        if r["n"] == 100 and r["profile"] == "wifi":
            per = r["timing"]["wall_per_sim_s"]
            out.append({"target": "100 nodes on wifi at least 1x real time (wall s per sim s <= 1)",
                        "profile": "wifi", "measured": per, "limit": 1.0, "met": per is not None and per <= 1.0})
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    series = sorted({(r["profile"], r["arm"]) for r in runs})
    style = {"overlay": "-", "flood": "--"}
    colour = {"lan": "tab:blue", "wifi": "tab:orange"}
    ax = axes[0][0]
    for profile, arm in series:
        rs = sorted((r for r in runs if (r["profile"], r["arm"]) == (profile, arm)), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        ax.plot(ns, [r["bytes_per_node"]["sent"]["all"]["mean"] / 1e6 for r in rs], style[arm], marker="o",
                color=colour.get(profile), label=f"{profile}, {arm}: mean")
        ax.plot(ns, [r["bytes_per_node"]["sent"]["all"]["max"] / 1e6 for r in rs], style[arm], marker=".",
                color=colour.get(profile), alpha=0.4, label=f"{profile}, {arm}: max")
    ax.set_title("bytes sent per node (same 30 packets published)", fontsize=9)
    ax.set_ylabel("MB")
    ax = axes[0][1]
    arm = "overlay" if any(r["arm"] == "overlay" for r in runs) else runs[0]["arm"]
    for profile in sorted({r["profile"] for r in runs}):
        rs = sorted((r for r in runs if r["profile"] == profile and r["arm"] == arm), key=lambda r: r["n"])
        for cls, ls in zip(CLASSES, ("-", ":", "--", "-.", (0, (1, 3)))):
            vals = [r["bytes_per_node"]["sent"][cls]["mean"] / 1e6 for r in rs]
            if any(vals):
                ax.plot([r["n"] for r in rs], vals, linestyle=ls, marker="o", color=colour.get(profile),
                        label=f"{profile}: {cls}")
    ax.set_title(f"mean bytes sent per node by class ({arm} arm)", fontsize=9)
    ax.set_ylabel("MB")
    ax = axes[1][0]
    for profile, arm in series:
        rs = sorted((r for r in runs if (r["profile"], r["arm"]) == (profile, arm)), key=lambda r: r["n"])
        ax.plot([r["n"] for r in rs], [r["latency_ms"]["p99"] or math.nan for r in rs], style[arm], marker="o",
                color=colour.get(profile), label=f"{profile}, {arm}: p99")
        ax.plot([r["n"] for r in rs], [r["latency_ms"]["p50"] or math.nan for r in rs], style[arm], marker=".",
                color=colour.get(profile), alpha=0.4, label=f"{profile}, {arm}: p50")
    ax.set_yscale("log")
    ax.set_title("end-to-end latency (publish to subscriber)", fontsize=9)
    ax.set_ylabel("ms")
    ax = axes[1][1]
    for profile, arm in series:
        rs = sorted((r for r in runs if (r["profile"], r["arm"]) == (profile, arm)), key=lambda r: r["n"])
        ax.plot([r["n"] for r in rs], [r["timing"]["wall_per_sim_s"] for r in rs], style[arm], marker="o",
                color=colour.get(profile), label=f"{profile}, {arm}")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_title("simulator wall s per simulated s (1 = real time)", fontsize=9)
    for row in axes:
        for a in row:
            a.set_xlabel("nodes")
            a.legend(fontsize=6)
            a.tick_params(labelsize=7)
    load = result.get("loadavg_before")
    fig.suptitle(f"bench_scale ({result['mode']}): full-mesh candidates, 3 publishers x {PACKETS_EACH} packets of "
                 f"{VECTORS} x {DIM} trits; load average before {load}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(runs: list[dict[str, Any]], *, header: bool = True) -> None:
    if header:
        print(f"{'N':>4} {'profile':7} {'arm':8} {'sent/node mean':>14} {'max':>10} {'data':>9} {'lazy':>9} {'memb.':>9} "
              f"{'ctrl':>9} {'delivery':>8} {'dups':>5} {'p50 ms':>8} {'p99 ms':>9} {'hops p99':>8} {'join s':>7} "
              f"{'wall/sim':>8} {'cpu/sim':>7}")
    for r in runs:
        b = r["bytes_per_node"]["sent"]
        d = r["delivery"]
        lat = r["latency_ms"]

        def kb(v: float) -> str:
            return f"{v / 1e3:,.0f}K"
        print(f"{r['n']:>4} {r['profile']:7} {r['arm']:8} {kb(b['all']['mean']):>14} {kb(b['all']['max']):>10} "
              f"{kb(b['data']['mean']):>9} {kb(b['lazy']['mean']):>9} {kb(b['membership']['mean']):>9} "
              f"{kb(b['control']['mean']):>9} {d['ratio'] if d['ratio'] is not None else '-':>8} {d['duplicates']:>5} "
              f"{lat['p50'] if lat['p50'] is not None else '-':>8} {lat['p99'] if lat['p99'] is not None else '-':>9} "
              f"{r['hops']['p99'] if r['hops']['p99'] is not None else '-':>8} "
              f"{r['join_s'] if r['join_s'] is not None else '-':>7} {r['timing']['wall_per_sim_s']:>8} "
              f"{r['cpu_per_sim_s']:>7}", flush=True)


def merge(paths: list[Path]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    seen: set[tuple[int, str, str]] = set()
    pieces = []
    for p in paths:
        piece = json.loads(p.read_text())
        if piece.get("workload") != pieces[0].get("workload") if pieces else False:
            raise SystemExit(f"{p}: its workload differs from {paths[0]}'s")
        pieces.append(piece)
        for r in piece["runs"]:
            cell = (r["n"], r["profile"], r["arm"])
            if cell in seen:
                raise SystemExit(f"{p}: the run {cell} is in another piece too")
            seen.add(cell)
            runs.append(r)
    runs.sort(key=lambda r: (r["profile"], r["n"], r["arm"]))
    first = pieces[0]
    return {**first, "mode": "full" if all(p["mode"] == "full" for p in pieces) else "quick",
            "merged_from": [str(p) for p in paths], "runs": runs, "targets": targets(runs),
            "flood_arm": {**first["flood_arm"], "available": all(p["flood_arm"]["available"] for p in pieces)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 10, 25 on lan: a smoke run, not the benchmark")
    ap.add_argument("--sizes", help="comma-separated node counts (default 10,25,50,100,200)")
    ap.add_argument("--profiles", help="comma-separated link presets (default lan,wifi)")
    ap.add_argument("--arms", default=",".join(ARMS), help="overlay,flood (default both)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG (default: --out with .png)")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="PIECE", help="pool pieces into --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.merge:
        if args.out is None:
            ap.error("--merge needs --out")
        result = merge(args.merge)
    else:
        sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
        profiles = tuple(args.profiles.split(",")) if args.profiles else (("lan",) if args.quick else PROFILES)
        arms = tuple(args.arms.split(","))
        has_switch = overlay_key_exists()
        out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
        load_before = os.getloadavg()
        runs = []
        print(f"sizes {sizes}, profiles {profiles}, arms {arms}; limits.overlay "
              f"{'exists' if has_switch else 'does NOT exist: only the default (flooding) arm runs'}")
        for profile in profiles:
            for n in sizes:
                for arm in arms:
                    if arm == "flood" and not has_switch:
                        continue
                    runs.append(run_one(n, profile, arm))
                    table(runs[-1:], header=len(runs) == 1)
        result = {
            "bench": "scale", "mode": "quick" if args.quick else "full", "meshnode_version": __version__,
            "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "workload": {"seed": SEED, "topology": "full_mesh", "publishers": PUBLISHERS, "packets_each": PACKETS_EACH,
                         "vectors": VECTORS, "dim": DIM, "interval_s": INTERVAL, "traffic_start_s": TRAFFIC_START,
                         "joiner": {"killed_at_s": KILL_AT, "restarted_at_s": RESTART_AT}, "stop_time_s": STOP_TIME},
            "flood_arm": {"available": has_switch, "setting": "limits.overlay = false",
                          "note": None if has_switch else "limits.overlay does not exist yet: the default arm IS "
                          "today's flooding and the overlay arm is missing; rerun when the overlay lands"},
            "runs": runs, "targets": targets(runs),
        }
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    for t in result["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']} ({t['profile']}"
              f"{', N=' + str(t['n']) if 'n' in t else ''}): {t['measured']}")
    if result["runs"]:
        png = args.plot or out.with_suffix(".png")
        plot(result, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
