"""Runs a scenario: real Nodes (with their workers) over the simulated network, on virtual time.

The runner plays the scenario's traffic (signed vectors packets, published through the nodes' normal
publish path), records every delivery to a subscriber (exactly once? how late?), applies the timed
events (cut / restore a link, kill / restart a node, change a link's profile) and stops at the stop
condition. Everything random is derived from the scenario seed, and the report holds no wall-clock
figure, so the same seed gives a byte-identical report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import Config, ConfigError, parse_config
from ..identity import NodeIdentity
from ..net.sim.links import LatencyHistogram, derive_rng
from ..net.sim.transport import SimNetwork
from ..net.sim.vclock import VirtualClock, run_virtual
from ..node import Node
from ..wire.packet import Packet, VectorBlock, Vectors
from .identities import simulated_mesh
from .scenario import Event, Flow, Scenario, ScenarioError

__all__ = ["Progress", "Simulation", "run_scenario"]

log = logging.getLogger("meshnode.sim")

SPACE = b"meshnode-sim/v1"


@dataclass
class _FlowState:
    flow: Flow
    published: int = 0
    not_published: int = 0                     # the source was down when its turn came
    done_publishing: bool = False
    sent_at: dict[bytes, float] = field(default_factory=dict)            # packet id -> publish time
    got: dict[str, Counter[bytes]] = field(default_factory=dict)          # receiver -> packet id -> deliveries
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)

    def complete(self) -> bool:
        return self.done_publishing and all(len(self.got[r]) >= self.published for r in self.flow.receivers)


@dataclass(frozen=True)
class Progress:
    """What a progress display shows (a snapshot; `links` maps "a->b" to its LinkStats.to_dict())."""

    time: float
    stop_time: float
    links: dict[str, dict[str, Any]]
    flows: list[dict[str, Any]]
    peers: dict[str, int]


class Simulation:
    def __init__(self, scenario: Scenario, *, workdir: Path, capture_dir: Path | None = None,
                 on_progress: Callable[[Progress], None] | None = None, progress_interval: float = 1.0) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.capture_dir = capture_dir
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.net = SimNetwork(scenario.seed)
        self.clock = VirtualClock()
        self.nodes: dict[str, Node | None] = {}
        self.incarnation: Counter[str] = Counter()
        self.retired: dict[str, Counter[str]] = {n: Counter() for n in scenario.node_names}
        self.flows = [_FlowState(f, got={r: Counter() for r in f.receivers},
                                 latency={r: LatencyHistogram() for r in f.receivers}) for f in scenario.flows]
        self.events_done: list[dict[str, Any]] = []
        self.ready_at: float | None = None
        self._ready = asyncio.Event()
        self._delivered = asyncio.Event()
        self._neighbours: dict[str, set[str]] = {n: set() for n in scenario.node_names}
        for link in scenario.links:
            self._neighbours[link.a].add(link.b)
            self._neighbours[link.b].add(link.a)
        self.identities: dict[str, NodeIdentity] = {}
        self.configs: dict[str, Config] = {}

    # ------------------------------------------------------------------ setting up

    def prepare(self) -> None:
        """Identities and node configs; raises ScenarioError (naming the node) for a bad [limits] or
        worker entry. Call before `run` (run calls it if needed)."""
        sc = self.scenario
        self.identities = simulated_mesh(self.workdir / "identities", sc.node_names, sc.seed)
        dialled: dict[str, list[str]] = {n: [] for n in sc.node_names}
        for link in sc.links:
            dialled[link.b].append(f"{link.a}:{sc.listen_port}")
        for spec in sc.nodes:
            ident = self.identities[spec.name]
            data: dict[str, Any] = {
                "node": {"name": spec.name, "data_dir": str(self.workdir / "nodes" / spec.name),
                         "listen_host": spec.name, "listen_port": sc.listen_port, "log_level": "warning"},
                "identity": {"key": str(ident.key_path), "cert": str(ident.cert_path),
                             "ca_cert": str(ident.ca_cert_path)},
                "discovery": {"mdns": False, "static_peers": dialled[spec.name]},
                "limits": {**sc.defaults, **spec.limits},
            }
            if spec.workers:
                data["workers"] = [dict(w) for w in spec.workers]
            try:
                self.configs[spec.name] = parse_config(data, base_dir=self.workdir, check_files=True)
            except ConfigError as e:
                where = "defaults.limits" if e.key.startswith("limits.") and e.key[7:] in sc.defaults \
                    and e.key[7:] not in spec.limits else f"nodes.{spec.name}"
                raise ScenarioError(f"{where}.{e.key}" if e.key else where, e.problem) from None

    def _profile_of(self, name: str) -> Any:
        return self.scenario.profiles[name]

    async def _start_node(self, name: str) -> None:
        self.incarnation[name] += 1
        capture = self.capture_dir / f"{name}.mncap" if self.capture_dir is not None else None
        node = Node(self.configs[name], self.identities[name], transport=self.net.transport(name, self.identities[name]),
                    clock=self.clock, capture=capture,
                    rng=derive_rng(self.scenario.seed, "node", name, str(self.incarnation[name])))
        for i, fs in enumerate(self.flows):
            if name in fs.flow.receivers:
                node.subscribe(fs.flow.topic, self._receiver(i, name))
        await node.start()
        self.nodes[name] = node

    def _receiver(self, flow_index: int, name: str) -> Callable[[Packet], None]:
        fs = self.flows[flow_index]

        def on_packet(packet: Packet) -> None:
            sent = fs.sent_at.get(packet.packet_id)
            if sent is None:
                return                   # same topic, not ours (a worker's, another flow's)
            got = fs.got[name]
            got[packet.packet_id] += 1
            if got[packet.packet_id] == 1:
                fs.latency[name].add(self.clock.monotonic() - sent)
                if fs.complete() and all(f.complete() for f in self.flows):
                    self._delivered.set()
        return on_packet

    # ------------------------------------------------------------------ running

    async def run(self) -> dict[str, Any]:
        sc = self.scenario
        if not self.configs:
            self.prepare()
        for name in sc.node_names:
            self.net.add_host(name)
        for link in sc.links:
            self.net.add_link(link.a, link.b, self._profile_of(link.profile), self._profile_of(link.reverse))
        loop = asyncio.get_running_loop()
        for name in sc.node_names:
            await self._start_node(name)
        tasks = [loop.create_task(self._watch_ready(), name="sim-ready"),
                 loop.create_task(self._play_events(), name="sim-events"),
                 *(loop.create_task(self._play_flow(i), name=f"sim-flow-{i}") for i in range(len(self.flows)))]
        if self.on_progress is not None:
            tasks.append(loop.create_task(self._report_progress(), name="sim-progress"))
        stopped_by = "time"
        try:
            remaining = sc.stop.time - loop.time()
            if sc.stop.when == "delivered":
                try:
                    async with asyncio.timeout(remaining):
                        await self._delivered.wait()
                    stopped_by = "delivered"
                    await asyncio.sleep(min(sc.stop.settle, sc.stop.time - loop.time()))
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(remaining)
            end = loop.time()
            report = self._report(end, stopped_by)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(n.stop() for n in self.nodes.values() if n is not None), return_exceptions=True)
        if self.on_progress is not None:
            self.on_progress(self._progress())
        return report

    async def _watch_ready(self) -> None:
        while not self._all_linked():
            await asyncio.sleep(0.05)
        self.ready_at = asyncio.get_running_loop().time()
        self._ready.set()

    def _all_linked(self) -> bool:
        for name, want in self._neighbours.items():
            node = self.nodes.get(name)
            if node is None:
                return False
            up = {p["name"] for p in node.peers() if p["state"] == "open"}
            if not want <= up:
                return False
        return True

    async def _play_flow(self, index: int) -> None:
        fs = self.flows[index]
        flow = fs.flow
        loop = asyncio.get_running_loop()
        if flow.start is None:
            await self._ready.wait()
        else:
            await asyncio.sleep(max(0.0, flow.start - loop.time()))
        rng = np.random.default_rng([self.scenario.seed, index])
        for seq in range(flow.count):
            trits = rng.integers(-1, 2, size=(flow.vectors, flow.dim), dtype=np.int8)
            node = self.nodes.get(flow.source)
            if node is None:
                fs.not_published += 1
            else:
                body = Vectors(topic=flow.topic, vectors=VectorBlock.from_trits(trits, SPACE, flow.encoding),
                               meta={"flow": index, "seq": seq})
                packet_id = await node.publish(body)
                fs.sent_at[packet_id] = loop.time()
                fs.published += 1
            if flow.interval > 0 and seq + 1 < flow.count:
                await asyncio.sleep(flow.interval)
        fs.done_publishing = True
        if all(f.complete() for f in self.flows):
            self._delivered.set()

    async def _play_events(self) -> None:
        loop = asyncio.get_running_loop()
        for event in self.scenario.events:
            await asyncio.sleep(max(0.0, event.at - loop.time()))
            outcome = await self._apply(event)
            entry: dict[str, Any] = {"at": event.at, "action": event.action}
            if event.link is not None:
                entry["link"] = list(event.link)
            if event.node is not None:
                entry["node"] = event.node
            if event.profile is not None:
                entry["profile"] = event.profile
            entry["outcome"] = outcome
            entry["done_at"] = round(loop.time(), 6)
            self.events_done.append(entry)

    async def _apply(self, event: Event) -> str:
        net = self.net
        if event.action == "cut":
            assert event.link is not None
            net.cut(*event.link)
        elif event.action == "restore":
            assert event.link is not None
            net.restore(*event.link)
        elif event.action == "set_profile":
            assert event.link is not None and event.profile is not None
            net.set_profile(*event.link, self._profile_of(event.profile))
        elif event.action == "kill":
            assert event.node is not None
            node = self.nodes.get(event.node)
            if node is None:
                return "ignored: not running"
            net.crash(event.node)
            self.nodes[event.node] = None
            with contextlib.suppress(Exception):
                await node.stop()
            self.retired[event.node].update(
                {k: v for k, v in node.counters().items() if k not in ("peers", "members")})
        elif event.action == "restart":
            assert event.node is not None
            if self.nodes.get(event.node) is not None:
                return "ignored: already running"
            net.revive(event.node)
            await self._start_node(event.node)
        return "done"

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            self.on_progress(self._progress())
            await asyncio.sleep(self.progress_interval)

    def _progress(self) -> Progress:
        loop = asyncio.get_running_loop()
        return Progress(loop.time(), self.scenario.stop.time, self.net.link_stats(), self._flow_summaries(),
                        {n: (len(node.peers()) if node is not None else -1) for n, node in self.nodes.items()})

    # ------------------------------------------------------------------ reporting

    def _flow_summaries(self) -> list[dict[str, Any]]:
        out = []
        for i, fs in enumerate(self.flows):
            f = fs.flow
            receivers = {}
            for r in f.receivers:
                got = fs.got[r]
                delivered = len(got)
                receivers[r] = {
                    "delivered": delivered,
                    "duplicates": sum(n - 1 for n in got.values()),
                    "delivery_ratio": round(delivered / fs.published, 6) if fs.published else None,
                    "latency_ms": fs.latency[r].summary_ms(),
                }
            out.append({"index": i, "from": f.source, "topic": f.topic, "count": f.count, "vectors": f.vectors,
                        "dim": f.dim, "published": fs.published, "not_published": fs.not_published,
                        "complete": fs.complete(), "receivers": receivers})
        return out

    def _report(self, end: float, stopped_by: str) -> dict[str, Any]:
        sc = self.scenario
        links = {}
        per_node_sent: Counter[str] = Counter()
        per_node_recv: Counter[str] = Counter()
        for (src, dst), link in self.net.links.items():
            stats = link.stats.to_dict()
            per_node_sent[src] += stats["bytes_sent"]
            per_node_recv[dst] += stats["bytes_delivered"]
            links[link.name] = {"from": src, "to": dst, "profile": link.profile.to_dict(), **stats}
        nodes = {}
        for name in sc.node_names:
            node = self.nodes.get(name)
            counters = Counter(self.retired[name])
            workers: list[dict[str, Any]] = []
            if node is not None:
                counters.update(node.counters())
                workers = [{"name": w["name"], "type": w["type"], "state": w["state"], "error": w["error"],
                            "metrics": w["metrics"]} for w in node.workers()]
            nodes[name] = {
                "running": node is not None, "incarnations": self.incarnation[name],
                "bytes_sent": per_node_sent[name], "bytes_received": per_node_recv[name],
                "counters": dict(sorted(counters.items())), "workers": workers,
            }
        flows = self._flow_summaries()
        every = [r for f in flows for r in f["receivers"].values()]
        return {
            "scenario": sc.name, "seed": sc.seed, "meshnode_version": __version__,
            "stopped_by": stopped_by, "sim_time_s": round(end, 6),
            "ready_at_s": None if self.ready_at is None else round(self.ready_at, 6),
            "checks": {
                "all_delivered": bool(flows) and all(f["complete"] for f in flows),
                "exactly_once": all(r["duplicates"] == 0 for r in every),
                "delivery_ratio_min": min((r["delivery_ratio"] for r in every if r["delivery_ratio"] is not None),
                                          default=None),
            },
            "nodes": nodes, "links": links, "flows": flows, "events": self.events_done,
            "timeline": self._timeline(end),
        }

    def _timeline(self, end: float) -> dict[str, Any]:
        """Delivered payload bytes per link in at most ~500 equal time bins (for plots)."""
        bin_s = max(1, -(-int(end) // 500))
        nbins = int(end) // bin_s + 1
        series = {}
        for link in self.net.links.values():
            row = [0] * nbins
            for second, nbytes in link.stats.bytes_per_second.items():
                row[min(second // bin_s, nbins - 1)] += nbytes
            series[link.name] = row
        return {"bin_s": bin_s, "bytes": series}


def run_scenario(scenario: Scenario, *, workdir: Path | None = None, capture_dir: Path | None = None,
                 on_progress: Callable[[Progress], None] | None = None, progress_interval: float = 1.0) -> dict[str, Any]:
    """Run `scenario` on virtual time and return its report (see docs/SIM.md)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            # Short: the node control sockets live here, and a unix socket path has at most 107 bytes.
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="msim-")))
        if capture_dir is not None:
            capture_dir.mkdir(parents=True, exist_ok=True)
        sim = Simulation(scenario, workdir=workdir, capture_dir=capture_dir, on_progress=on_progress,
                         progress_interval=progress_interval)
        sim.prepare()
        return run_virtual(sim.run())
