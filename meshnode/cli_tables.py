"""Rich tables for `meshnode status/peers/workers/counters` (the control API's answers, for people).

Every field is read with a default: a daemon that adds, renames or omits a field must still print,
and unknown status fields are shown at the end rather than hidden.

Much of what these tables show was chosen by a peer (its name, the names of members it announced, the
detail of a refusal, a teacher's id), so every cell is a `rich.text.Text` (never parsed as markup: "[red]"
or "[link=...]" print as written) of a string that went through `display.safe_text` (control characters
such as newline and ESC shown as escapes, so a name cannot forge a second row or recolour the terminal).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .display import SAFE_TEXT_LIMIT, safe_text

__all__ = ["counters_table", "human_bytes", "human_duration", "peers_table", "rounds_table", "status_table",
           "workers_table"]

_STATUS_LABELS = {
    "name": "name", "node_id": "node id", "mesh_id": "mesh id", "version": "version", "state": "state",
    "listen": "listen", "uptime_s": "uptime", "mdns": "mDNS", "peers": "peers", "members": "members",
    "workers": "workers", "data_dir": "data dir", "capture": "capture", "recent_refusals": "recent refusals",
}
_STATUS_SHOWN_WITH = {"member_list": "members"}   # fields drawn inside another field's row
STATUS_REFUSALS_SHOWN = 5


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


def _text(value: Any, limit: int | None = SAFE_TEXT_LIMIT) -> str:
    # For people: no Python spellings (True, [], {}) in a table; --json has the values as they are.
    # Escaped (display.safe_text) and cut at `limit`: the value may have come from a peer.
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)) and not value:
        return "none"
    if isinstance(value, (dict, list)):
        return safe_text(json.dumps(value, separators=(",", ":")), limit=limit)
    return safe_text(value, limit=limit)


def _cells(*values: str) -> list[Text]:
    """Table cells that are text, never markup (see the module docstring)."""
    return [Text(v) for v in values]


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, Mapping) or not mapping:
        return "-"
    # long lists (a trainer's round history, a student's candidates) belong to --json, not a table cell
    return "  ".join(f"{_text(k)}={_text(v) if not isinstance(v, list) or len(v) <= 3 else f'[{len(v)} items]'}"
                     for k, v in mapping.items())


def _members_cell(status: Mapping[str, Any]) -> RenderableType:
    """The count, then one line per listed member: name, node id prefix, linked now or known through others."""
    total, listed = status.get("members"), status.get("member_list")
    members = [m for m in listed if isinstance(m, Mapping)] if isinstance(listed, list) else []
    if not members:
        return Text(_text(total))
    count = total if isinstance(total, int) and not isinstance(total, bool) else len(members)
    linked = sum(1 for m in members if m.get("linked") is True)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(overflow="fold")
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    for m in members:
        grid.add_row(*_cells(_text(m.get("name")), _text(m.get("node_id") or "-")[:16],
                             "linked" if m.get("linked") is True else "via others"))
    parts: list[RenderableType] = [Text(f"{count} known, {linked} linked now"), grid]
    if count > len(members):
        parts.append(Text(f"and {count - len(members)} more, not listed"))
    return Group(*parts)


def _clock_time(time_us: Any) -> str:
    if not isinstance(time_us, (int, float)) or isinstance(time_us, bool):
        return "-"
    try:
        return time.strftime("%H:%M:%S", time.localtime(time_us / 1e6))
    except (OverflowError, OSError, ValueError):
        return "-"


def _refusals_cell(refusals: Any) -> RenderableType:
    """The last few refused connections, newest last; the daemon keeps more (--json)."""
    items = [r for r in refusals if isinstance(r, Mapping)] if isinstance(refusals, list) else []
    if not items:
        return Text("none")
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for r in items[-STATUS_REFUSALS_SHOWN:]:
        detail = _text(r.get("detail"))
        # texts that came from the network: Text, so that "[...]" in them is not read as markup
        grid.add_row(*_cells(_clock_time(r.get("time_us")), _text(r.get("address")), _text(r.get("reason")),
                             detail if len(detail) <= 120 else detail[:119] + "…"))
    if len(items) <= STATUS_REFUSALS_SHOWN:
        return grid
    return Group(Text(f"{len(items)}, the last {STATUS_REFUSALS_SHOWN}:"), grid)


def _status_value(key: str, value: Any, status: Mapping[str, Any]) -> RenderableType:
    if key == "uptime_s":
        return human_duration(value)
    if key == "mdns" and isinstance(value, bool):
        return "on" if value else "off"
    if key == "capture" and value is None:
        return "off"
    if key == "members":
        return _members_cell(status)
    if key == "recent_refusals":
        return _refusals_cell(value)
    return Text(_text(value, limit=None))   # our own node's values (paths): not cut


def status_table(status: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, label in _STATUS_LABELS.items():
        if key in status:
            table.add_row(label, _status_value(key, status[key], status))
    for key, value in status.items():
        if key not in _STATUS_LABELS and key not in _STATUS_SHOWN_WITH:
            table.add_row(Text(_text(key).replace("_", " ")), Text(_text(value)))
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
        table.add_row(*_cells(
            _text(p.get("name")),
            _text(p.get("node_id") or "-")[:16],
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
        ))
    return table


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _accuracy_cell(status: Mapping[str, Any]) -> str:
    now, start = _num(status.get("accuracy")), _num(status.get("initial_accuracy"))
    if now is None:
        return "-"
    return f"{start:.3f} -> {now:.3f}" if start is not None else f"{now:.3f}"


def _worker_state(w: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    """One state: the worker's own while the node runs it, else the node's (failed, stopped, ...)."""
    outer, inner = w.get("state"), status.get("state")
    return _text(inner if outer == "running" and isinstance(inner, str) and inner else outer)


def _worker_note(w: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    notes: list[str] = []
    error = w.get("error") or status.get("error")
    if error:
        notes.append(f"error: {_text(error)}")
    if status.get("doing"):
        notes.append(_text(status["doing"]))
    if isinstance(status.get("taught"), Mapping):
        t = status["taught"]
        notes.append(f"taught {_text(t.get('rows'))} rows by teacher round {_text(t.get('teacher_round'))}")
    if status.get("role") == "teacher" and isinstance(status.get("versions"), int):
        v = status.get("version")
        at = f", the last at trainer round {_text(v.get('round'))}" if isinstance(v, Mapping) else ""
        notes.append(f"{status['versions']} versions published{at}; {_text(status.get('students'))} students")
    if status.get("role") == "student" and isinstance(status.get("teacher"), str):
        at = f"its round {_text(status['teacher_round'])}, " if status.get("teacher_round") is not None else ""
        notes.append(f"learns from teacher {_text(status['teacher'])[:16]} ({at}{_text(status.get('form'))})")
    refused = status.get("refused")
    if isinstance(refused, Mapping) and refused:
        notes.append("refused " + ", ".join(f"{_text(k)} {_text(v)}" for k, v in refused.items()))
    return "; ".join(notes) or "-"


def workers_table(workers: list[Any], *, full: bool = False) -> Table:
    """One line per worker: state, round, accuracy, loss, traffic and what needs saying. `full`: every
    status and metrics field instead (long; --json is the machine-readable form)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    if full:
        for col in ("name", "type", "state"):
            table.add_column(col, no_wrap=True)
        table.add_column("status", overflow="fold")
        table.add_column("metrics", overflow="fold")
    else:
        for col, justify in (("name", "left"), ("type", "left"), ("state", "left"), ("round", "right"),
                             ("accuracy", "right"), ("loss", "right"), ("sent", "right"), ("received", "right")):
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        table.add_column("notes", overflow="fold")
    for w in workers:
        if not isinstance(w, Mapping):
            continue
        status = w.get("status") if isinstance(w.get("status"), Mapping) else {}
        metrics = w.get("metrics") if isinstance(w.get("metrics"), Mapping) else {}
        if full:
            table.add_row(*_cells(_text(w.get("name")), _text(w.get("type")), _text(w.get("state")),
                                  _pairs(status), _pairs(metrics)))
            continue
        rnd, target = status.get("round"), status.get("rounds_target")
        round_cell = "-" if rnd is None else (f"{_text(rnd)}/{_text(target)}" if target else _text(rnd))
        loss = _num(status.get("loss"))
        table.add_row(*_cells(_text(w.get("name")), _text(w.get("type")), _worker_state(w, status), round_cell,
                              _accuracy_cell(status), "-" if loss is None else f"{loss:.4f}",
                              human_bytes(metrics.get("bytes_sent")), human_bytes(metrics.get("bytes_received")),
                              _worker_note(w, status)))
    return table


def rounds_table(worker: Mapping[str, Any], last: int = 10) -> Table | None:
    """A trainer's last rounds (its status' history), one row each; None for a worker without rounds."""
    status = worker.get("status") if isinstance(worker.get("status"), Mapping) else {}
    history = [h for h in (status.get("history") or []) if isinstance(h, Mapping)][-last:]
    if not history:
        return None
    table = Table(title=Text(f"{_text(worker.get('name'))}: last rounds"), box=None, header_style="bold",
                  title_justify="left", pad_edge=False)
    for col in ("round", "merged", "missing", "loss", "accuracy", "sent", "received", "train", "wait", "eval"):
        table.add_column(col, justify="right", no_wrap=True)
    for h in history:
        acc, loss = _num(h.get("accuracy")), _num(h.get("loss"))
        missing = h.get("missing")
        table.add_row(*_cells(_text(h.get("round")), _text(h.get("merged")),
                              str(len(missing)) if isinstance(missing, list) else "-",
                              "-" if loss is None else f"{loss:.4f}", "-" if acc is None else f"{acc:.3f}",
                              human_bytes(h.get("bytes_sent")), human_bytes(h.get("bytes_received")),
                              *(human_duration(h.get(k)) for k in ("train_s", "wait_s", "eval_s"))))
    return table


def counters_table(counters: Mapping[str, Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("counter", no_wrap=True)
    table.add_column("value", justify="right")
    for name, value in sorted(counters.items()):
        table.add_row(*_cells(_text(name), _text(value)))
    return table
