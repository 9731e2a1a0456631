"""Ten `meshnode run` processes on 127.0.0.1 that find each other over mDNS (issue 15, "Tests"): with a
small overlay degree each node dials only a few of the nine others, keeps its eager links within the
watermarks, and every heartbeat packet reaches every node exactly once (the heartbeat worker counts
what it hears from each origin; a node never hears an origin more often than that origin published)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshnode import identity as idm
from meshnode.control import query

from ._mesh import free_port

pytestmark = pytest.mark.timeout(180)

N = 10
DEGREE = 3
DEADLINE = 90.0     # a generous bound on a loaded 2-core machine: ten Python daemons start and link


def write_node(root: Path, ca: idm.MeshCA, i: int) -> Path:
    name = f"n{i}"
    d = root / name
    ident = idm.init_node(d, ca, name)
    toml = d / "node.toml"
    toml.write_text(f"""
[node]
name = "{name}"
data_dir = "{d / 'data'}"
listen_host = "127.0.0.1"
listen_port = {free_port()}
log_level = "warning"
[identity]
key = "{ident.key_path}"
cert = "{ident.cert_path}"
ca_cert = "{ident.ca_cert_path}"
[discovery]
mdns = true
mdns_interfaces = ["127.0.0.1"]
reconnect_min = 0.2
reconnect_max = 2.0
[limits]
overlay_degree = {DEGREE}
ping_interval = 1.0
peer_timeout = 10.0
[[workers]]
name = "beat"
type = "heartbeat-vectors"
[workers.settings]
interval = 0.5
dim = 64
""")
    return toml


async def snapshot(sockets: list[Path]) -> list[dict]:
    out = []
    for sock in sockets:
        status = await query(sock, "status")
        workers = await query(sock, "workers")
        # workers start after the control socket: until then, nothing sent or heard
        beat = workers[0]["status"] if workers and workers[0]["status"] else {"sent": 0, "heard": {}}
        out.append({"status": status, "beat": beat, "id": status["node_id"]})
    return out


def test_ten_daemons_keep_the_degree_bound_and_deliver_exactly_once(tmp_path: Path) -> None:
    ca = idm.init_mesh(tmp_path / "mesh")
    tomls = [write_node(tmp_path, ca, i) for i in range(N)]
    procs = [subprocess.Popen([sys.executable, "-m", "meshnode.cli", "run", "--config", str(t)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}) for t in tomls]
    sockets = [t.parent / "data" / "control.sock" for t in tomls]
    try:
        asyncio.run(_check(procs, sockets))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def _check(procs: list[subprocess.Popen], sockets: list[Path]) -> None:
    end = time.monotonic() + DEADLINE
    while not all(s.exists() for s in sockets):
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
        assert time.monotonic() < end, "daemons did not start"
        await asyncio.sleep(0.2)
    # every node knows all nine others (members) and has links
    while True:
        snap = await snapshot(sockets)
        if all(s["status"]["members"] == N - 1 and s["status"]["peers"] >= 1 and s["beat"]["sent"] > 0
               for s in snap):
            break
        assert time.monotonic() < end, [(s["status"]["name"], s["status"]["members"], s["status"]["peers"])
                                        for s in snap]
        await asyncio.sleep(0.5)
    # what every origin has published by now must reach every node, once
    target = {s["id"]: s["beat"]["sent"] for s in snap}
    while True:
        snap = await snapshot(sockets)
        heard_all = all(s["beat"]["heard"].get(o, 0) >= n for s in snap for o, n in target.items() if o != s["id"])
        if heard_all:
            break
        assert time.monotonic() < end, "not every packet reached every node"
        await asyncio.sleep(0.5)
    sent_now = {s["id"]: s["beat"]["sent"] for s in await snapshot(sockets)}
    for s in snap:     # heard was read before sent_now: never more than once per packet
        for o, n in s["beat"]["heard"].items():
            assert n <= sent_now[o], (s["status"]["name"], o[:8], n, sent_now[o])
    links = 0
    for s in snap:
        ov = s["status"]["overlay"]
        links += s["status"]["peers"]
        assert ov["eager"] <= ov["degree_high"]
        assert ov["eager"] >= min(ov["degree_low"], s["status"]["peers"])
    # each node dials at most DEGREE of the nine candidates it found: at most N x DEGREE links (30),
    # where dialling every candidate makes the full mesh's 45
    assert links / 2 <= N * DEGREE, links
