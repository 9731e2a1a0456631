"""Presenting a simulation: live progress, the end-of-run summary, the JSON report file and the plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from .runner import Progress

__all__ = ["LiveProgress", "plot_report", "print_summary", "write_report"]


def _size(n: float) -> str:
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
            links.add_row(name, f"{s['packets_sent']:,}", f"{s['packets_delivered']:,}", _size(s["bytes_delivered"]),
                          _drops(s["dropped"]), f"{s['retransmissions']:,}")
        parts: list[Any] = [head, links]
        for f in p.flows:
            got = ", ".join(f"{r} {v['delivered']}/{f['published']}" for r, v in f["receivers"].items())
            parts.append(f"flow {f['index']} from {f['from']} on {f['topic']!r}: {got}")
        self._live.update(Group(*parts), refresh=True)


def print_summary(report: dict[str, Any], console: Console, *, wall_s: float | None = None) -> None:
    chk = report["checks"]
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
        links.add_row(name, desc, f"{s['packets_sent']:,} / {_size(s['bytes_sent'])}",
                      f"{s['packets_delivered']:,} / {_size(s['bytes_delivered'])}", ratio, f"{s['retransmissions']:,}",
                      _drops(s["dropped"]), _ms(s["latency_ms"]["p50"]), _ms(s["latency_ms"]["p99"]))
    console.print(links)
    nodes = Table("node", "sent", "received", "links opened/lost", "dropped packets", "workers", title="nodes",
                  header_style="bold")
    for name, n in report["nodes"].items():
        c = n["counters"]
        drops = {k[8:]: v for k, v in c.items() if k.startswith("dropped.")}
        workers = ", ".join(f"{w['name']} ({w['state']})" for w in n["workers"]) or "-"
        state = "" if n["running"] else " [red](down)[/]"
        nodes.add_row(name + state, _size(n["bytes_sent"]), _size(n["bytes_received"]),
                      f"{c.get('links.opened', 0)}/{c.get('links.closed', 0)}", _drops(drops), workers)
    console.print(nodes)
    acc_rows = _accuracy_rows(report)
    if acc_rows:
        acc = Table("node", "worker", "model", "role", "first", "final", "points", title="accuracy",
                    header_style="bold")
        for node, worker, series in acc_rows:
            points = series["over_time"]
            # Worker and model names come from config files and worker status: escape rich markup.
            acc.add_row(escape(node), escape(worker), escape(str(series["model"] or "-")),
                        escape(str(series["role"])), _acc(points[0][1] if points else None),
                        _acc(series["final"]), str(len(points)))
        console.print(acc)
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
    if report["flows"]:
        ok = "[green]yes[/]" if chk["all_delivered"] else "[red]no[/]"
        once = "[green]yes[/]" if chk["exactly_once"] else "[red]no[/]"
        console.print(f"all delivered: {ok}   exactly once: {once}   lowest delivery ratio: "
                      f"{chk['delivery_ratio_min']}")


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def plot_report(report: dict[str, Any], path: Path) -> None:
    """PNG of delivered bytes per second on each link over simulated time and, when any worker
    reported an accuracy, a second panel below with each node's workers' accuracy over the same time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    bin_s = timeline["bin_s"]
    acc_rows = [r for r in _accuracy_rows(report) if r[2]["over_time"]]
    if acc_rows:
        fig, (ax, acc_ax) = plt.subplots(2, 1, figsize=(10, 8), dpi=100, sharex=True, height_ratios=(5, 3))
    else:
        fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    for name, row in timeline["bytes"].items():
        if any(row):
            ax.plot([i * bin_s for i in range(len(row))], [b * 8 / bin_s / 1e3 for b in row], label=name,
                    linewidth=1)
    for e in report["events"]:
        ax.axvline(e["at"], color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{e['action']} {'-'.join(e['link']) if 'link' in e else e.get('node', '')}", (e["at"], 0),
                    xytext=(3, 3), textcoords="offset points", fontsize=7, rotation=90, color="grey")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(f"delivered payload (kbit/s, {bin_s} s bins)")
    ax.set_title(f"{report['scenario']} (seed {report['seed']})")
    if ax.has_data():
        ax.legend(fontsize=7, ncols=2)
    if acc_rows:
        _plot_accuracy(acc_ax, report, acc_rows)
        ax.set_xlabel("")                      # shared with the panel below, labelled there
    fig.tight_layout()
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
