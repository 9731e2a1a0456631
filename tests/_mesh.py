"""Helpers for daemon-level tests: identities, configs with short timeouts, waiting with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshnode import identity as idm
from meshnode.config import Config, parse_config
from meshnode.node import Node

DEADLINE = 45.0   # generous bound for a loaded 2-core machine (a deadline, not a wait: passing runs need a few seconds)


async def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(directory: Path, identity: idm.NodeIdentity, *, mdns: bool = False, port: int = 0,
                static: list[str] | None = None, peer_timeout: float = 1.5, ping_interval: float = 0.25,
                workers: list[dict] | None = None, peer_exchange: bool = True, **limits: Any) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "node": {"name": identity.name, "data_dir": str(directory / "data"), "listen_host": "127.0.0.1",
                 "listen_port": port, "log_level": "debug"},
        "identity": {"key": str(identity.key_path), "cert": str(identity.cert_path),
                     "ca_cert": str(identity.ca_cert_path)},
        "discovery": {"mdns": mdns, "mdns_interfaces": ["127.0.0.1"], "static_peers": static or [],
                      "reconnect_min": 0.1, "reconnect_max": 0.4, "peer_exchange": peer_exchange},
        "limits": {"peer_timeout": peer_timeout, "ping_interval": ping_interval, **limits},
    }
    if workers:
        data["workers"] = workers
    return parse_config(data, base_dir=directory, check_files=True)


def aio(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test function on a fresh event loop (the suite uses no async pytest plugin)."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


@contextlib.asynccontextmanager
async def running(*nodes: Node):
    """Start `nodes` in order; stop every one that started, whatever happens inside."""
    started: list[Node] = []
    try:
        for n in nodes:
            await n.start()
            started.append(n)
        yield nodes
    finally:
        await asyncio.gather(*(n.stop() for n in started))
