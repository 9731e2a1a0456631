"""The demo's mesh as real daemons on this machine: one `meshnode run` process per node, on loopback.

`write_mesh` enrols the nodes in a fresh mesh CA and writes each node's node.toml (static peers on
127.0.0.1, no mDNS: nothing leaves the machine), the data each node reads, and nothing else; a user
can start any of them again later with `meshnode run --config DIR/<node>/node.toml`.
`DaemonMesh` starts the processes, asks each one's control socket what it is doing (the same
answers `meshnode workers` and `meshnode counters` print), and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import CONFIG_FILE, default_config_text, workers_toml
from ..control import ControlError, query
from ..identity import init_mesh, init_node
from .plan import ALL_NODES, ALONE_NODE, MESH_NODES, DemoPlan, write_data
from .watch import NodeView, Snapshot, node_view

__all__ = ["DaemonMesh", "DemoFailed", "MeshLayout", "write_mesh"]

# A unix socket path has at most 107 bytes: refuse a demo directory that would not fit, with a reason.
_SOCKET_PATH_MAX = 104
_LOG_TAIL_LINES = 15


class DemoFailed(RuntimeError):
    """The demo cannot go on: one line that says why and where to look."""


@dataclass(frozen=True)
class MeshLayout:
    directory: Path
    configs: dict[str, Path]        # node -> node.toml
    sockets: dict[str, Path]        # node -> control socket
    logs: dict[str, Path]           # node -> the daemon's log (its stderr)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_mesh(plan: DemoPlan, directory: Path) -> MeshLayout:
    """The mesh CA, each node's identity, node.toml and data under `directory` (which must be empty or
    absent: the caller clears an earlier demo)."""
    directory = directory.absolute()
    mesh_dir = directory / "mesh"
    ca = init_mesh(mesh_dir)
    ports = {n: _free_port() for n in ALL_NODES}
    workers = plan.workers()
    configs, sockets, logs = {}, {}, {}
    for i, name in enumerate(ALL_NODES):
        node_dir = directory / name
        sock = node_dir / "state" / "control.sock"
        if len(os.fsencode(sock)) > _SOCKET_PATH_MAX:
            raise DemoFailed(f"{sock}: too long for a unix socket ({len(os.fsencode(sock))} bytes, at most "
                             f"{_SOCKET_PATH_MAX}); give a shorter --dir")
        init_node(node_dir, ca, name)
        # each node dials the ones before it: one link per pair, a full mesh of the four
        peers = [] if name == ALONE_NODE else [f"127.0.0.1:{ports[p]}" for p in MESH_NODES[:i]]
        text = default_config_text(name, data_dir="state", listen_host="127.0.0.1", listen_port=ports[name],
                                   static_peers=peers, mdns=False)
        path = node_dir / CONFIG_FILE
        path.write_text(text + workers_toml(workers[name]), encoding="utf-8")
        write_data(plan, node_dir)
        configs[name], sockets[name], logs[name] = path, sock, node_dir / "daemon.log"
    return MeshLayout(directory, configs, sockets, logs)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DaemonMesh:
    """The daemons of a `MeshLayout`, as child processes: `start`, `snapshot` (repeatedly), `stop`."""

    def __init__(self, layout: MeshLayout, *, log_level: str = "info") -> None:
        self.layout = layout
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._t0 = 0.0

    def start(self) -> None:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self._t0 = time.monotonic()
        for name, config in self.layout.configs.items():
            with open(self.layout.logs[name], "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "meshnode", "run", "--config", str(config), "--log-level", self.log_level],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True)   # a Ctrl-C in the terminal reaches the demo, which stops them in order

    def check_alive(self) -> None:
        """Raise DemoFailed naming the first daemon that exited, with the end of its log."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                raise DemoFailed(f"the daemon of {name} exited with code {code}; the end of "
                                 f"{self.layout.logs[name]}:\n{_tail(self.layout.logs[name])}")

    async def _ask(self, name: str) -> NodeView:
        path = self.layout.sockets[name]
        try:
            workers, counters = await asyncio.gather(query(path, "workers", timeout=5.0),
                                                     query(path, "counters", timeout=5.0))
        except ControlError:   # not listening yet, or busy: shown as down until it answers
            return node_view(name, None, None, up=False)
        return node_view(name, workers if isinstance(workers, list) else None,
                         counters if isinstance(counters, dict) else None)

    async def snapshot(self) -> Snapshot:
        views = await asyncio.gather(*(self._ask(n) for n in self.procs))
        return Snapshot(time.monotonic() - self._t0, {v.name: v for v in views})

    def stop(self, *, grace: float = 20.0, on_wait: Callable[[str], None] | None = None) -> dict[str, int | None]:
        """SIGTERM every daemon (they save their state and say bye), SIGKILL what is left after `grace`."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if on_wait is not None:
                    on_wait(f"{name} did not stop within {grace:g} s: killed")
                proc.kill()
                proc.wait()
        return {name: proc.returncode for name, proc in self.procs.items()}
