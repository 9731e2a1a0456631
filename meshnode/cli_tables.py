"""Rich tables for `meshnode status/peers/workers/counters` (the control API's answers, for people).

Every field is read with a default: a daemon that adds, renames or omits a field must still print,
and unknown status fields are shown at the end rather than hidden.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.table import Table

__all__ = ["counters_table", "human_bytes", "human_duration", "peers_table", "status_table", "workers_table"]

_STATUS_LABELS = {
    "name": "name", "node_id": "node id", "mesh_id": "mesh id", "version": "version", "listen": "listen",
    "uptime_s": "uptime", "peers": "peers", "workers": "workers", "data_dir": "data dir",
}


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, Mapping) or not mapping:
        return "-"
    # long lists (a trainer's round history, a student's candidates) belong to --json, not a table cell
    return "  ".join(f"{k}={_text(v) if not isinstance(v, list) or len(v) <= 3 else f'[{len(v)} items]'}"
                     for k, v in mapping.items())


def status_table(status: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, label in _STATUS_LABELS.items():
        if key in status:
            value = human_duration(status[key]) if key == "uptime_s" else _text(status[key])
            table.add_row(label, value)
    for key, value in status.items():
        if key not in _STATUS_LABELS:
            table.add_row(key.replace("_", " "), _text(value))
    return table


def peers_table(peers: list[Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("name", "left"), ("node id", "left"), ("address", "left"), ("dir", "left"),
                          ("state", "left"), ("rtt", "right"), ("up", "right"), ("in", "right"),
                          ("out", "right"), ("dropped", "right"), ("queued", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for p in peers:
        if not isinstance(p, Mapping):
            continue
        rtt = p.get("rtt_ms")
        dropped = p.get("dropped") or {}
        n_dropped = sum(v for v in dropped.values() if isinstance(v, (int, float))) \
            if isinstance(dropped, Mapping) else 0
        queue = p.get("queue") or {}
        table.add_row(
            _text(p.get("name")),
            str(p.get("node_id") or "-")[:16],
            _text(p.get("address")),
            _text(p.get("direction")),
            _text(p.get("state")),
            f"{rtt:.1f} ms" if isinstance(rtt, (int, float)) else "-",
            human_duration(p.get("connected_s")),
            f"{human_bytes(p.get('bytes_in'))} / {_text(p.get('packets_in'))} pk",
            f"{human_bytes(p.get('bytes_out'))} / {_text(p.get('packets_out'))} pk",
            str(n_dropped),
            f"{_text(queue.get('packets'))} pk / {human_bytes(queue.get('bytes'))}"
            if isinstance(queue, Mapping) else "-",
        )
    return table


def workers_table(workers: list[Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("status", overflow="fold")
    table.add_column("metrics", overflow="fold")
    for w in workers:
        if isinstance(w, Mapping):
            table.add_row(_text(w.get("name")), _text(w.get("type")), _text(w.get("state")),
                          _pairs(w.get("status")), _pairs(w.get("metrics")))
    return table


def counters_table(counters: Mapping[str, Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("counter", no_wrap=True)
    table.add_column("value", justify="right")
    for name, value in sorted(counters.items()):
        table.add_row(name, _text(value))
    return table
