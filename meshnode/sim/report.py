"""Presenting a simulation: live progress, the end-of-run summary, the JSON report file and the plot."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from ..net.sim.kinds import KINDS
from .runner import Progress

__all__ = ["MAX_LINK_PANELS", "LiveProgress", "plot_report", "print_summary", "size_text", "write_report"]


def size_text(n: float) -> str:
    """Bytes in decimal units for people: 950 B, 12.3 KB, 4.5 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _drops(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _accuracy_rows(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(node, worker, series) for every worker series in the report, in report order. Reports written
    before accuracy was recorded have no "accuracy" key: they simply have none."""
    return [(node, worker, series) for node, n in report["nodes"].items()
            for worker, series in (n.get("accuracy") or {}).items()]


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} s" if v >= 10_000 else f"{v:.1f} ms"


class LiveProgress:
    """A rich Live view refreshed from the simulation's progress callback, at most every `every`
    seconds of wall time (the simulation calls back in simulated time, which may race ahead)."""

    def __init__(self, console: Console, scenario_name: str, every: float = 0.25) -> None:
        self.console = console
        self.name = scenario_name
        self.every = every
        self._last = 0.0
        self._t0 = time.monotonic()
        self._live = Live(console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self.every and p.time < p.stop_time:
            return
        self._last = now
        bar = ProgressBar(total=p.stop_time, completed=min(p.time, p.stop_time), width=40)
        head = Table.grid(padding=(0, 1))
        head.add_row(f"[bold]{self.name}[/]", bar,
                     f"simulated {p.time:,.1f} / {p.stop_time:,.0f} s", f"(wall {now - self._t0:.1f} s)")
        links = Table("link", "packets", "delivered", "bytes", "drops", "retrans", box=None, header_style="bold")
        for name, s in p.links.items():
            links.add_row(name, f"{s['packets_sent']:,}", f"{s['packets_delivered']:,}", size_text(s["bytes_delivered"]),
                          _drops(s["dropped"]), f"{s['retransmissions']:,}")
        parts: list[Any] = [head, links]
        for f in p.flows:
            got = ", ".join(f"{r} {v['delivered']}/{f['published']}" for r, v in f["receivers"].items())
            parts.append(f"flow {f['index']} from {f['from']} on {f['topic']!r}: {got}")
        self._live.update(Group(*parts), refresh=True)


def print_summary(report: dict[str, Any], console: Console, *, wall_s: float | None = None) -> None:
    line = (f"[bold]{report['scenario']}[/] (seed {report['seed']}): {report['sim_time_s']:,.1f} simulated s, "
            f"stopped by {report['stopped_by']}")
    if wall_s is not None:
        line += f", {wall_s:.1f} s of wall time"
    console.print(line)
    if report["ready_at_s"] is not None:
        console.print(f"every topology link open at {report['ready_at_s']:.2f} s")
    else:
        console.print("[yellow]the topology never had all its links open at once[/]")
    links = Table("link", "profile", "sent", "delivered", "ratio", "retrans", "drops", "latency p50", "p99",
                  title="links", header_style="bold")
    for name, s in report["links"].items():
        prof = s["profile"]
        desc = f"{prof['mode']}, {prof['rate_bps'] / 1e3:,.0f} kbit/s" if prof["rate_bps"] else prof["mode"]
        ratio = "-" if s["delivery_ratio"] is None else f"{s['delivery_ratio']:.3f}"
        links.add_row(name, desc, f"{s['packets_sent']:,} / {size_text(s['bytes_sent'])}",
                      f"{s['packets_delivered']:,} / {size_text(s['bytes_delivered'])}", ratio, f"{s['retransmissions']:,}",
                      _drops(s["dropped"]), _ms(s["latency_ms"]["p50"]), _ms(s["latency_ms"]["p99"]))
    console.print(links)
    kinds = _kinds_table(report)
    if kinds is not None:
        console.print(kinds)
    nodes = Table("node", "sent", "received", "links opened/lost", "dropped packets", "workers", title="nodes",
                  header_style="bold")
    for name, n in report["nodes"].items():
        c = n["counters"]
        drops = {k[8:]: v for k, v in c.items() if k.startswith("dropped.")}
        workers = ", ".join(f"{w['name']} ({w['state']})" for w in n["workers"]) or "-"
        state = "" if n["running"] else " [red](down)[/]"
        nodes.add_row(name + state, size_text(n["bytes_sent"]), size_text(n["bytes_received"]),
                      f"{c.get('links.opened', 0)}/{c.get('links.closed', 0)}", _drops(drops), escape(workers))
    console.print(nodes)
    workers_table = _workers_table(report)
    if workers_table is not None:
        console.print(workers_table)
    for f in report["flows"]:
        t = Table("receiver", "delivered", "ratio", "duplicates", "latency p50", "p99", "max",
                  title=f"flow {f['index']}: {f['from']} -> {f['topic']!r}, {f['published']} of {f['count']} "
                        f"published ({f['vectors']} x {f['dim']} trits)", header_style="bold")
        for r, v in f["receivers"].items():
            ratio = "-" if v["delivery_ratio"] is None else f"{v['delivery_ratio']:.3f}"
            lat = v["latency_ms"]
            t.add_row(r, str(v["delivered"]), ratio, str(v["duplicates"]), _ms(lat["p50"]), _ms(lat["p99"]),
                      _ms(lat["max"]))
        console.print(t)
    for e in report["events"]:
        what = e.get("link") or e.get("node")
        console.print(f"event t={e['at']:g} s: {e['action']} {what} -> {e['outcome']}")
    _print_verdict(report, console)


def _print_verdict(report: dict[str, Any], console: Console) -> None:
    """The expectations and what the exit code is, and why. Reports written before expectations
    existed have no "verdict": they get the rule of their time (traffic all delivered exactly once)."""
    chk = report["checks"]
    verdict = report.get("verdict")
    stated = bool(verdict and verdict["expectations_stated"])
    if report["flows"]:
        # Red only when nothing says whether a loss was expected; with [expect], the table below judges.
        def yes_no(ok: bool) -> str:
            return ("yes" if ok else "no") if stated else ("[green]yes[/]" if ok else "[red]no[/]")
        console.print(f"all delivered: {yes_no(chk['all_delivered'])}   exactly once: {yes_no(chk['exactly_once'])}"
                      f"   lowest delivery ratio: {chk['delivery_ratio_min']}")
    if verdict is None:
        return
    if stated:
        notes = any(e["note"] for e in report["expectations"])
        t = Table("expectation", "expected", "measured", "", *(("note",) if notes else ()), title="expectations",
                  header_style="bold")
        for e in report["expectations"]:
            expected = ("at least " if e.get("compare") == "at_least" else "") + _value(e["expected"])
            t.add_row(escape(e["key"]), expected, _value(e["measured"]),
                      "[green]met[/]" if e["met"] else "[bold red]NOT met[/]",
                      *((escape(e["note"] or ""),) if notes else ()))
        console.print(t)
        if verdict["passed"]:
            console.print(f"[green]{escape(verdict['reason'])}: exit 0[/]")
        else:
            console.print(f"[bold red]{escape(verdict['reason'])}: exit 1[/]")
    elif verdict["passed"]:
        console.print(f"no expectations stated: exit 0 ({escape(verdict['reason'])})")
    else:
        console.print(f"[red]no expectations stated: exit 1 because {escape(verdict['reason'])}[/]; if the scenario "
                      "means to show that, say so in an \\[expect] table (docs/SIM.md)")


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))


def _kinds_table(report: dict[str, Any]) -> Table | None:
    """Delivered payload by packet kind: all links together, and per link when they fit (8 or fewer
    directed links). Reports from before the split have no "kinds": no table."""
    links = {name: s.get("kinds") for name, s in report["links"].items()}
    if not links or any(k is None for k in links.values()):
        return None
    total: dict[str, list[int]] = {}
    for per_kind in links.values():
        for kind, v in per_kind.items():
            entry = total.setdefault(kind, [0, 0])
            entry[0] += v["bytes"]
            entry[1] += v["packets"]
    if not total:
        return None
    everything = sum(b for b, _ in total.values())
    per_link = len(links) <= MAX_LINK_PANELS
    t = Table("kind", "bytes", "share", "packets", *(links if per_link else ()),
              title="delivered by packet kind" + (" (bytes per link)" if per_link else ", all links"),
              header_style="bold")
    for kind in (k for k in KINDS if k in total):
        b, n = total[kind]
        share = f"{100 * b / everything:.1f}%" if everything else "-"
        cells = [size_text(per_kind[kind]["bytes"]) if kind in per_kind else "-" for per_kind in links.values()]
        t.add_row(kind, size_text(b), share, f"{n:,}", *(cells if per_link else ()))
    return t


def _workers_table(report: dict[str, Any]) -> Table | None:
    """One row per node and worker: what it is, where it got to, what it moved, how well it does. A
    down node's workers are gone from the report; the ones that recorded an accuracy still show."""
    rows = []
    for node, n in report["nodes"].items():
        accuracy = n.get("accuracy") or {}
        seen = set()
        for w in n["workers"]:
            seen.add(w["name"])
            rows.append((node, w, accuracy.get(w["name"])))
        rows += [(node, {"name": name, "type": series["type"], "state": "node down", "error": None, "metrics": {}},
                  series) for name, series in accuracy.items() if name not in seen]
    if not rows:
        return None
    t = Table("node", "worker", "type", "model", "state", "rounds", "sent", "received", "accuracy first", "final",
              title="workers", header_style="bold")
    for node, w, series in rows:
        kind = w["type"]
        if series is not None and series.get("role") and series["role"] != kind:
            kind += f" ({series['role']})"
        state = w["state"]
        if state == "running" and w.get("phase"):
            state = w["phase"]
        if w.get("error"):
            state += f": {str(w['error'])[:60]}"
        metrics = w["metrics"]
        points = series["over_time"] if series is not None else []
        # Names and states come from config files and worker status: escape rich markup.
        t.add_row(escape(node), escape(w["name"]), escape(kind),
                  escape(str(series["model"])) if series is not None and series.get("model") else "-",
                  escape(state), _count(metrics.get("rounds")), _bytes(metrics.get("bytes_sent")),
                  _bytes(metrics.get("bytes_received")), _acc(points[0][1] if points else None),
                  _acc(series["final"] if series is not None else None))
    return t


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "-"


def _bytes(v: Any) -> str:
    return size_text(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------ the plot

# More directed links than this and the plot has a panel per node (what it received) instead of one
# per link: 4 full-mesh nodes already make 12 links, too many small panels to read.
MAX_LINK_PANELS = 8
_PANEL_H = 2.2            # inches per row of panels
_ACC_H = 3.0              # inches of the accuracy panel
_HEAD_H = 0.6             # inches for the title and the legend
# A panel is a few hundred pixels wide: more bins than this and bursty traffic (a ping every 20 s in
# 8 s bins) becomes a comb of one-pixel spikes, so the plot merges the report's bins down to this many.
_PLOT_BINS = 150
# One colour per kind, the same in every panel (tab20's pairs of near shades would make ping and pong,
# vectors and pong, hard to tell apart).
_COLOURS = {"hello": "tab:blue", "members": "lightskyblue", "ping": "tab:pink", "pong": "tab:olive",
            "vectors": "tab:orange", "knowledge": "tab:purple", "delta": "tab:green", "fragment": "tab:brown",
            "ack": "gold", "nack": "black", "bye": "maroon", "gossip": "tab:cyan", "other": "tab:grey",
            "all": "tab:blue"}


@dataclass(frozen=True)
class _Panel:
    title: str
    kinds: dict[str, list[int]]              # kind -> delivered bytes per bin
    capacity: list[list[float]]              # [[t, bit/s], ...] a step function; [] unknown or unlimited
    about: frozenset[str]                    # a link panel: its two ends; a node panel: the node
    is_link: bool = True

    def concerns(self, event_nodes: frozenset[str], link_event: bool) -> bool:
        """Is an event about these nodes (a link's two ends, or one node) this panel's business? A
        link's events are its own link's only; a node's events are its links' and its own."""
        if self.is_link and link_event:
            return event_nodes == self.about
        return bool(event_nodes & self.about)


def _panels(report: dict[str, Any]) -> tuple[list[_Panel], str]:
    timeline = report["timeline"]
    by_link = timeline.get("kinds") or {name: {"all": row} for name, row in timeline["bytes"].items()}
    capacity = timeline.get("capacity_bps") or {}
    if len(report["links"]) <= MAX_LINK_PANELS:
        panels = []
        for name, s in report["links"].items():
            steps = capacity.get(name) or [[0.0, s["profile"]["rate_bps"]]]
            rates = [f"{_rate(r)} from {t:g} s" if i else _rate(r) for i, (t, r) in enumerate(steps)]
            title = f"{name}: {s['profile']['mode']}, {', '.join(rates)}"
            unlimited = any(r == 0 for _, r in steps)
            panels.append(_Panel(title, by_link.get(name, {}), [] if unlimited else steps,
                                 frozenset((s["from"], s["to"]))))
        return panels, "delivered on each link"
    panels = []
    for node in report["nodes"]:
        incoming = [name for name, s in report["links"].items() if s["to"] == node]
        kinds: dict[str, list[int]] = {}
        for name in incoming:
            for kind, row in by_link.get(name, {}).items():
                acc = kinds.setdefault(kind, [0] * len(row))
                for i, v in enumerate(row):
                    acc[i] += v
        steps_of = [capacity.get(name) or [] for name in incoming]
        total: list[list[float]] = []
        if incoming and all(steps and all(r > 0 for _, r in steps) for steps in steps_of):
            times = sorted({t for steps in steps_of for t, _ in steps})
            total = [[t, sum(_rate_at(steps, t) for steps in steps_of)] for t in times]
        panels.append(_Panel(f"{node}: received over {len(incoming)} links", kinds, total, frozenset((node,)),
                             is_link=False))
    return panels, "received by each node"


def _rate_at(steps: list[list[float]], t: float) -> float:
    rate = steps[0][1]
    for at, r in steps:
        if at <= t:
            rate = r
    return rate


def _rate(bps: float) -> str:
    if not bps:
        return "no rate limit"
    for scale, unit in ((1e9, "Gbit/s"), (1e6, "Mbit/s")):
        if bps >= scale:
            return f"{bps / scale:,.1f} {unit}"
    return f"{bps / 1e3:,.1f} kbit/s"


def _event_label(e: dict[str, Any]) -> tuple[str, frozenset[str]]:
    """What an event did, in words for the plot, and the nodes it concerns."""
    if "link" in e:
        a, b = e["link"]
        words = {"cut": f"{a}-{b} down", "restore": f"{a}-{b} up"}.get(e["action"], f"{a}-{b}: {e.get('profile')}")
        return words, frozenset((a, b))
    node = e.get("node", "")
    return {"kill": f"{node} stopped", "restart": f"{node} started"}.get(e["action"], f"{e['action']} {node}"), \
        frozenset((node,))


def plot_report(report: dict[str, Any], path: Path) -> None:
    """PNG of delivered payload over simulated time, stacked by packet kind: one panel per directed
    link (or, with more than MAX_LINK_PANELS links, per node: what it received), each with the link's
    line rate as a dashed step line and the scenario's events as vertical lines (labelled, in red, on
    the panels they concern); below, when any worker reported an accuracy, each node's workers'
    accuracy over the same time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    timeline = report["timeline"]
    bin_s = timeline["bin_s"]
    end = report["sim_time_s"]
    panels, what = _panels(report)
    acc_rows = [r for r in _accuracy_rows(report) if r[2]["over_time"]]
    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, -(-len(panels) // ncols))
    fig = plt.figure(figsize=(6 * ncols if ncols > 1 else 10, _HEAD_H + _PANEL_H * nrows + (_ACC_H if acc_rows else 0)),
                     dpi=100)
    grid = fig.add_gridspec(nrows + (1 if acc_rows else 0), ncols,
                            height_ratios=[_PANEL_H] * nrows + ([_ACC_H] if acc_rows else []))
    colour = {k: _COLOURS.get(k, "tab:grey") for k in (*KINDS, "all")}
    merge = max(1, -(-len(next(iter(timeline["bytes"].values()), [])) // _PLOT_BINS))
    plot_bin = bin_s * merge
    events = [(e, *_event_label(e)) for e in report["events"]]
    first = None
    shown: set[str] = set()
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[i // ncols, i % ncols], sharex=first)
        first = first or ax
        kinds = [k for k in (*KINDS, "all") if any(panel.kinds.get(k, ()))]
        peak = 0.0
        if kinds:
            rows = [[sum(row[j:j + merge]) for j in range(0, len(row), merge)] for row in
                    (panel.kinds[k] for k in kinds)]
            xs = [j * plot_bin for j in range(len(rows[0]))]
            ys = [[b * 8 / plot_bin / 1e3 for b in row] for row in rows]
            ax.stackplot(xs, *ys, colors=[colour[k] for k in kinds], step="post", linewidth=0)
            peak = max(sum(col) for col in zip(*ys))
            shown.update(kinds)
        if panel.capacity:
            kbps = [[t, r / 1e3] for t, r in panel.capacity]
            top = max(r for _, r in kbps)
            # A line rate far above the traffic would flatten it to nothing: say it instead of drawing it.
            if peak == 0 or top <= 20 * peak:
                ax.step([t for t, _ in kbps] + [end], [r for _, r in kbps] + [kbps[-1][1]], where="post",
                        color="black", linestyle="--", linewidth=1)
                shown.add("line rate")
            else:
                ax.text(0.99, 0.95, f"line rate {_rate(panel.capacity[-1][1])} (off scale)", transform=ax.transAxes,
                        ha="right", va="top", fontsize=7, color="dimgrey")
        for e, label, about in events:
            mine = panel.concerns(about, "link" in e)
            ax.axvline(e["at"], color="tab:red" if mine else "lightgrey", linestyle=":", linewidth=1)
            if mine:
                ax.annotate(label, (e["at"], 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                            textcoords="offset points", fontsize=7, rotation=90, va="top", color="tab:red")
        ax.set_title(panel.title, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, max(end, bin_s))
        if i % ncols == 0:
            ax.set_ylabel("kbit/s", fontsize=8)
        if i >= len(panels) - ncols and not acc_rows:
            ax.set_xlabel("simulated time (s)", fontsize=8)
    handles = [Patch(color=colour[k], label=k) for k in (*KINDS, "all") if k in shown]
    if "line rate" in shown:
        handles.append(Line2D([], [], color="black", linestyle="--", label="line rate"))
    if handles:
        fig.legend(handles=handles, loc="upper center", ncols=min(len(handles), 8), fontsize=8,
                   bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()), frameon=False)
    fig.suptitle(f"{report['scenario']} (seed {report['seed']}): payload {what}, by packet kind "
                 f"({plot_bin} s bins)", fontsize=10, y=1 - 0.05 / fig.get_figheight(), va="top")
    if acc_rows:
        acc_ax = fig.add_subplot(grid[nrows, :], sharex=first)
        _plot_accuracy(acc_ax, report, acc_rows)
    fig.tight_layout(rect=(0, 0, 1, 1 - _HEAD_H / fig.get_figheight()))
    fig.savefig(path)
    plt.close(fig)


def _plot_accuracy(ax: Any, report: dict[str, Any], rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Accuracy as a step function (a point holds until the next change), each line extended to the
    end of the run so the final value is visible."""
    end = report["sim_time_s"]
    for node, worker, series in rows:
        points = series["over_time"]
        ts = [p[0] for p in points]
        accs = [p[1] for p in points]
        if ts[-1] < end:
            ts.append(end)
            accs.append(accs[-1])
        label = f"{node}/{worker}" + (f" ({series['model']})" if series["model"] else "")
        ax.step(ts, accs, where="post", label=label, linewidth=1.2)
    for e in report["events"]:
        ax.axvline(e["at"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("eval accuracy")
    ax.legend(fontsize=7, ncols=2)
