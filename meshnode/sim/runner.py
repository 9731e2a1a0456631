"""Runs a scenario: real Nodes (with their workers) over the simulated network, on virtual time.

The runner plays the scenario's traffic (signed vectors packets, published through the nodes' normal
publish path), records every delivery to a subscriber (exactly once? how late?), applies the timed
events (cut / restore a link, kill / restart a node, change a link's profile) and stops at the stop
condition. It also samples every running node's workers at a fixed simulated interval and keeps each
worker's eval accuracy over time (a learning curve per node and worker). Everything random is
derived from the scenario seed, and the report holds no wall-clock figure, so the same seed gives a
byte-identical report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import Config, ConfigError, parse_config
from ..identity import CA_CERT_FILE, NodeIdentity
from ..net.sim.kinds import CLASSES, KINDS, TRAFFIC_CLASS, traffic_class
from ..net.sim.links import LatencyHistogram, derive_rng
from ..net.sim.transport import SimNetwork
from ..net.sim.vclock import VirtualClock, run_virtual
from ..node import Node
from ..wire.packet import Packet, VectorBlock, Vectors
from .identities import simulated_mesh
from .scenario import Event, Expect, Flow, Scenario, ScenarioError, trainers_with_rounds

__all__ = ["ACCURACY_MAX_POINTS", "ACCURACY_SAMPLE_S", "READY_DEGREE", "AccuracySeries", "Progress", "SimTiming",
           "Simulation", "evaluate_expectations", "run_scenario", "run_timed", "verdict"]

log = logging.getLogger("meshnode.sim")

SPACE = b"meshnode-sim/v1"

# Workers' accuracy is sampled every this many simulated seconds: a worker evaluates after a training
# round or a fit, which takes seconds at least, so 1 s resolves every change without costing much (a
# status() call per worker per simulated second). Not a scenario key: it is a property of the report.
ACCURACY_SAMPLE_S = 1.0
# A series holds at most this many points; on reaching it, every second point is dropped (see
# AccuracySeries.add), so a very long run keeps its whole curve at half the resolution instead of
# growing without bound or losing its beginning.
ACCURACY_MAX_POINTS = 10_000
# "Ready" (when flows without a start time begin): every node runs, the open links join all nodes into
# one mesh, and every node has at least min(its topology degree, READY_DEGREE) of them open. With the
# overlay a node keeps a handful of its candidates, not all of them, so "every topology link open" would
# never happen in a large full mesh; 4 is at or below any sensible overlay's low watermark, and for the
# small topologies of before (degree <= 4, or trees) it still means every topology link.
READY_DEGREE = 4


@dataclass(frozen=True)
class SimTiming:
    """Wall-clock figures of one run: not part of the report, which is the same on every run."""

    wall_s: float                   # setup (identities, configs) and the run
    run_wall_s: float               # the run alone, on the virtual clock
    cpu_s: float                    # process CPU time of the same (less sensitive to a shared machine)
    sim_s: float                    # simulated seconds run

    @property
    def wall_per_sim_s(self) -> float | None:
        return self.run_wall_s / self.sim_s if self.sim_s > 0 else None

    def to_dict(self) -> dict[str, float | None]:
        per = self.wall_per_sim_s
        return {"wall_s": round(self.wall_s, 3), "run_wall_s": round(self.run_wall_s, 3), "cpu_s": round(self.cpu_s, 3),
                "sim_s": round(self.sim_s, 6), "wall_per_sim_s": None if per is None else round(per, 4)}


@dataclass
class _FlowState:
    flow: Flow
    published: int = 0
    not_published: int = 0                     # the source was down when its turn came
    done_publishing: bool = False
    sent_at: dict[bytes, float] = field(default_factory=dict)            # packet id -> publish time
    got: dict[str, Counter[bytes]] = field(default_factory=dict)          # receiver -> packet id -> deliveries
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    hops: Counter[int] = field(default_factory=Counter)     # links travelled -> first deliveries
    first_sent: float | None = None

    def complete(self) -> bool:
        return self.done_publishing and all(len(self.got[r]) >= self.published for r in self.flow.receivers)


@dataclass(frozen=True)
class Progress:
    """What a progress display shows (a snapshot; `links` maps "a->b" to its LinkStats.to_dict();
    `workers` maps a running node to its Node.workers(), `counters` to its Node.counters())."""

    time: float
    stop_time: float
    links: dict[str, dict[str, Any]]
    flows: list[dict[str, Any]]
    peers: dict[str, int]
    workers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counters: dict[str, dict[str, int | float]] = field(default_factory=dict)


@dataclass
class AccuracySeries:
    """One worker's eval accuracy over simulated time, across the node's incarnations: a point
    [t, accuracy] is kept when the accuracy differs from the last one kept, so it is a step function.
    None (not evaluated yet, e.g. after a restart) and non-finite values are not recorded: the series
    holds the last known value until a new one is seen."""

    type: str
    model: str | None = None
    role: str | None = None
    points: list[list[float]] = field(default_factory=list)
    max_points: int = ACCURACY_MAX_POINTS

    def add(self, t: float, accuracy: float) -> bool:
        """Record `accuracy` seen at `t` if it changed; return whether a point was added."""
        if self.points and self.points[-1][1] == accuracy:
            return False
        self.points.append([round(t, 3), accuracy])
        if len(self.points) >= self.max_points:
            # Halve the resolution: keep the even-indexed points and always the newest, which is the
            # value in force now (dropping a step point extends the previous value, a fair coarsening).
            newest = self.points[-1]
            self.points = self.points[:-1:2] + [newest]
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "model": self.model, "role": self.role or self.type,
                "final": self.points[-1][1] if self.points else None,
                "over_time": [list(p) for p in self.points]}


def _accuracy_of(status: Any) -> float | None:
    """The worker status' accuracy as a finite float, or None (absent, None, not a number, NaN)."""
    if not isinstance(status, dict):
        return None
    value = status.get("accuracy")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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
        self._spec_profile: dict[tuple[str, str], str] = {}     # directed pair -> its profile's name
        for link in scenario.links:
            self._neighbours[link.a].add(link.b)
            self._neighbours[link.b].add(link.a)
            self._spec_profile[(link.a, link.b)] = link.profile
            self._spec_profile[(link.b, link.a)] = link.reverse
        self.events = scenario.all_events()          # [[events]] and the churn's, drawn from the seed
        # node -> [started at, first delivery to it at (None: none yet)], one per incarnation
        self.joins: dict[str, list[list[float | None]]] = {n: [] for n in scenario.node_names}
        self.identities: dict[str, NodeIdentity] = {}
        self.configs: dict[str, Config] = {}
        # node -> worker name -> its accuracy series (insertion order: first seen first, so the report
        # is the same on every run)
        self.accuracy: dict[str, dict[str, AccuracySeries]] = {n: {} for n in scenario.node_names}

    # ------------------------------------------------------------------ setting up

    def prepare(self) -> None:
        """Identities and node configs; raises ScenarioError (naming the node) for a bad [limits] or
        worker entry. Call before `run` (run calls it if needed)."""
        sc = self.scenario
        self.identities = simulated_mesh(self.workdir / "identities", sc.node_names, sc.seed)
        if self.capture_dir is not None and self.identities:
            # The mesh CA certificate (public; the keys stay in the workdir) next to the captures, so
            # that `meshnode inspect --trust DIR/ca.crt DIR/*.mncap` checks every signature: each
            # node's hello carries its certificate, which this CA issued, and with it its name.
            self.capture_dir.mkdir(parents=True, exist_ok=True)
            (self.capture_dir / CA_CERT_FILE).write_bytes(next(iter(self.identities.values())).ca_cert_pem)
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
                # source: the scenario file, so that the workers' relative paths (data, anchors) mean
                # "next to the scenario", as they mean "next to node.toml" for a daemon
                self.configs[spec.name] = parse_config(data, base_dir=self.workdir, source=sc.source,
                                                       check_files=True)
            except ConfigError as e:
                where = "defaults.limits" if e.key.startswith("limits.") and e.key[7:] in sc.defaults \
                    and e.key[7:] not in spec.limits else f"nodes.{spec.name}"
                raise ScenarioError(f"{where}.{e.key}" if e.key else where, e.problem) from None

    def _profile_of(self, name: str) -> Any:
        return self.scenario.profiles[name]

    async def _start_node(self, name: str) -> None:
        self.incarnation[name] += 1
        self.joins[name].append([asyncio.get_running_loop().time(), None])
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
        # hops = links travelled: the origin gives its packets its hop_limit, each relay lowers it by one
        origin_hops = self.configs[fs.flow.source].limits.hop_limit

        def on_packet(packet: Packet) -> None:
            sent = fs.sent_at.get(packet.packet_id)
            if sent is None:
                return                   # same topic, not ours (a worker's, another flow's)
            got = fs.got[name]
            got[packet.packet_id] += 1
            join = self.joins[name][-1]
            if join[1] is None:
                join[1] = self.clock.monotonic()
            if got[packet.packet_id] == 1:
                fs.latency[name].add(self.clock.monotonic() - sent)
                fs.hops[origin_hops - packet.header.hop_limit + 1] += 1
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
        if sc.segment and sc.links:
            # full_mesh: one LAN; the links are made as the nodes connect, not 45,000 of them up front
            first = sc.links[0]
            self.net.add_segment(sc.node_names, self._profile_of(first.profile), self._profile_of(first.reverse))
        else:
            for link in sc.links:
                self.net.add_link(link.a, link.b, self._profile_of(link.profile), self._profile_of(link.reverse),
                                  lazy=True)
        loop = asyncio.get_running_loop()
        for name in sc.node_names:
            await self._start_node(name)
        tasks = [loop.create_task(self._watch_ready(), name="sim-ready"),
                 loop.create_task(self._play_events(), name="sim-events"),
                 *(loop.create_task(self._play_flow(i), name=f"sim-flow-{i}") for i in range(len(self.flows)))]
        if self.on_progress is not None:
            tasks.append(loop.create_task(self._report_progress(), name="sim-progress"))
        if any(spec.workers for spec in sc.nodes):
            # Only where there are workers: a scenario without any keeps exactly the timers it had.
            tasks.append(loop.create_task(self._sample_accuracy_loop(), name="sim-accuracy"))
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
            elif sc.stop.when == "workers_done":
                try:
                    async with asyncio.timeout(remaining):
                        while not self._trained():
                            await asyncio.sleep(ACCURACY_SAMPLE_S)
                    stopped_by = "workers_done"
                    await asyncio.sleep(min(sc.stop.settle, sc.stop.time - loop.time()))
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(remaining)
            end = loop.time()
            self._sample_accuracy()              # the value in force at the end, even between samples
            report = self._report(end, stopped_by)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(n.stop() for n in self.nodes.values() if n is not None), return_exceptions=True)
        if self.on_progress is not None:
            self.on_progress(self._progress())
        return report

    def _trained(self) -> bool:
        """Every running node's trainer workers are done (or failed: they will not train any more)."""
        states = [w["status"].get("state") if w["state"] == "running" and isinstance(w.get("status"), dict)
                  else "failed" for node in self.nodes.values() if node is not None
                  for w in node.workers() if w["type"] == "trainer"]
        return bool(states) and all(s in ("done", "failed") for s in states)

    async def _watch_ready(self) -> None:
        while not self._all_linked():
            await asyncio.sleep(0.05)
        self.ready_at = asyncio.get_running_loop().time()
        self._ready.set()

    def _all_linked(self) -> bool:
        """Ready (see READY_DEGREE): every node runs, has enough of its topology links open, and the
        open links join every node into one mesh."""
        open_to: dict[str, set[str]] = {}
        for name, want in self._neighbours.items():
            node = self.nodes.get(name)
            if node is None:
                return False
            up = {p["name"] for p in node.peers() if p["state"] == "open"} & want
            if len(up) < min(len(want), READY_DEGREE):
                return False
            open_to[name] = up
        names = list(open_to)
        seen = {names[0]}
        todo = [names[0]]
        while todo:
            for peer in open_to[todo.pop()]:
                if peer not in seen:
                    seen.add(peer)
                    todo.append(peer)
        return len(seen) == len(names)

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
                if fs.first_sent is None:
                    fs.first_sent = loop.time()
            if flow.interval > 0 and seq + 1 < flow.count:
                await asyncio.sleep(flow.interval)
        fs.done_publishing = True
        if all(f.complete() for f in self.flows):
            self._delivered.set()

    async def _play_events(self) -> None:
        loop = asyncio.get_running_loop()
        for event in self.events:
            await asyncio.sleep(max(0.0, event.at - loop.time()))
            outcome = await self._apply(event)
            entry: dict[str, Any] = {"at": event.at, "action": event.action}
            if event.churn is not None:
                entry["churn"] = event.churn
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
            self._sample_accuracy()              # what the node knew when it died
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

    async def _sample_accuracy_loop(self) -> None:
        while True:
            self._sample_accuracy()
            await asyncio.sleep(ACCURACY_SAMPLE_S)

    def _sample_accuracy(self) -> None:
        now = asyncio.get_running_loop().time()
        for name, node in self.nodes.items():
            if node is None:
                continue
            series = self.accuracy[name]
            for w in node.workers():
                status = w.get("status")
                accuracy = _accuracy_of(status)
                if accuracy is None:
                    continue
                s = series.get(w["name"])
                if s is None:
                    s = series[w["name"]] = AccuracySeries(type=w["type"])
                assert isinstance(status, dict)
                s.type = w["type"]
                model, role = status.get("model"), status.get("role")
                # Names from a worker's status end up in the report and on a terminal: keep them short
                # strings (the summary table escapes them).
                s.model = str(model)[:128] if model is not None else s.model
                s.role = str(role)[:32] if role else s.role
                s.add(now, accuracy)

    def _progress(self) -> Progress:
        loop = asyncio.get_running_loop()
        up = {n: node for n, node in self.nodes.items() if node is not None}
        return Progress(loop.time(), self.scenario.stop.time, self.net.link_stats(), self._flow_summaries(),
                        {n: (len(node.peers()) if node is not None else -1) for n, node in self.nodes.items()},
                        workers={n: node.workers() for n, node in up.items()},
                        counters={n: node.counters() for n, node in up.items()})

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
                        "complete": fs.complete(), "receivers": receivers, "hops": _hops_summary(fs.hops)})
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
                # phase: the worker's own state from its status (a trainer: training, waiting, ...,
                # done), next to the node's view of it (state: running, failed, stopped)
                workers = [{"name": w["name"], "type": w["type"], "state": w["state"], "error": w["error"],
                            "phase": _phase_of(w.get("status")), "metrics": w["metrics"]}
                           for w in node.workers()]
            nodes[name] = {
                "running": node is not None, "incarnations": self.incarnation[name],
                "joins": [{"started_at": round(t0, 6), "first_delivery_at": None if t1 is None else round(t1, 6),
                           "join_s": self._join_s(name, t0, t1)} for t0, t1 in self.joins[name]],
                "bytes_sent": per_node_sent[name], "bytes_received": per_node_recv[name],
                "counters": dict(sorted(counters.items())), "workers": workers,
                "accuracy": {w: s.to_dict() for w, s in self.accuracy[name].items()},
            }
        flows = self._flow_summaries()
        every = [r for f in flows for r in f["receivers"].values()]
        report: dict[str, Any] = {
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
            "churn": self._churn_report(),
            "mesh": self._mesh_summary(nodes, flows),
            "timeline": self._timeline(end),
        }
        report["expectations"] = evaluate_expectations(sc, report)
        report["verdict"] = verdict(report, stated=sc.expect is not None)
        return report

    def _timeline(self, end: float) -> dict[str, Any]:
        """Delivered payload bytes per link in at most ~500 equal time bins, in all and by packet kind,
        and each link's line rate over time (for plots)."""
        bin_s = max(1, -(-int(end) // 500))
        nbins = int(end) // bin_s + 1

        def binned(per_second: Counter[int]) -> list[int]:
            row = [0] * nbins
            for second, nbytes in per_second.items():
                row[min(second // bin_s, nbins - 1)] += nbytes
            return row

        series, kinds, capacity = {}, {}, {}
        for (src, dst), link in self.net.links.items():
            series[link.name] = binned(link.stats.bytes_per_second)
            per_kind = link.stats.kind_bytes_per_second
            kinds[link.name] = {k: binned(per_kind[k]) for k in KINDS if k in per_kind}
            # The rate each profile gave this link and when (set_profile changes both directions);
            # 0: no rate limit.
            steps = [[0.0, self._profile_of(self._link_spec_profile(src, dst)).rate_bps]]
            for e in self.events_done:
                if e["action"] == "set_profile" and set(e["link"]) == {src, dst} and e["outcome"] == "done":
                    steps.append([e["done_at"], self._profile_of(e["profile"]).rate_bps])
            capacity[link.name] = steps
        return {"bin_s": bin_s, "bytes": series, "kinds": kinds, "capacity_bps": capacity}

    def _link_spec_profile(self, src: str, dst: str) -> str:
        """The name of the profile the topology gave the directed link src -> dst."""
        return self._spec_profile[(src, dst)]

    def _join_s(self, name: str, started: float, first: float | None) -> float | None:
        """Seconds from a (re)start to the node's first delivery, counted from when its flows began
        publishing if that was later (a node started before any traffic does not wait for itself)."""
        if first is None:
            return None
        began = [fs.first_sent for fs in self.flows if name in fs.flow.receivers and fs.first_sent is not None]
        return round(first - max(started, min(began, default=started)), 6)

    def _churn_report(self) -> list[dict[str, Any]]:
        """Per [[churn]] table: which nodes it drew, and when each went down and came back."""
        out = []
        for i, c in enumerate(self.scenario.churn):
            downs: dict[str, dict[str, float]] = {}
            for e in self.events:
                if e.churn == i and e.node is not None:
                    downs.setdefault(e.node, {})["down_at" if e.action == "kill" else "up_at"] = e.at
            out.append({"index": i, "fraction": c.fraction, "publishers": c.publishers,
                        "nodes": dict(sorted(downs.items()))})
        return out

    def _mesh_summary(self, nodes: dict[str, Any], flows: list[dict[str, Any]]) -> dict[str, Any]:
        """Figures for the whole mesh (docs/SIM.md "mesh"): bytes per node by traffic class (mean, max),
        delivery and duplicates over every flow and receiver, end-to-end latency and hops, join times."""
        names = self.scenario.node_names
        sent = {n: Counter[str]() for n in names}
        received = {n: Counter[str]() for n in names}
        unclassified: set[str] = set()
        for (src, dst), link in self.net.links.items():
            for kind, nbytes in link.stats.kind_bytes_sent.items():
                sent[src][traffic_class(kind)] += nbytes
                if kind not in TRAFFIC_CLASS:
                    unclassified.add(kind)
            for kind, nbytes in link.stats.kind_bytes.items():
                received[dst][traffic_class(kind)] += nbytes
                if kind not in TRAFFIC_CLASS:
                    unclassified.add(kind)

        def spread(per_node: dict[str, Counter[str]]) -> dict[str, dict[str, float]]:
            out = {}
            for cls in ("all", *CLASSES):
                values = [sum(c.values()) if cls == "all" else c[cls] for c in per_node.values()]
                out[cls] = {"mean": round(sum(values) / len(values), 1), "max": max(values)}
            return out

        expected = delivered = duplicates = 0
        ratios = []
        latency = LatencyHistogram()
        steady = LatencyHistogram()    # receivers that never restarted: a catch-up is late by design
        hops: Counter[int] = Counter()
        for fs, f in zip(self.flows, flows):
            hops.update(fs.hops)
            for r, v in f["receivers"].items():
                expected += fs.published
                delivered += v["delivered"]
                duplicates += v["duplicates"]
                if v["delivery_ratio"] is not None:
                    ratios.append(v["delivery_ratio"])
                latency.merge(fs.latency[r])
                if self.incarnation[r] <= 1:
                    steady.merge(fs.latency[r])
        joins = {"first_start": [], "restart": []}
        never = 0
        for name in names:
            for k, j in enumerate(nodes[name]["joins"]):
                if j["join_s"] is None:
                    never += k > 0
                else:
                    joins["restart" if k else "first_start"].append(j["join_s"])
        return {
            "nodes": len(names), "links_made": len(self.net.links) // 2,
            "bytes_per_node": {"sent": spread(sent), "received": spread(received)},
            "unclassified_kinds": sorted(unclassified),
            "delivery": {"expected": expected, "delivered": delivered,
                         "ratio": round(delivered / expected, 6) if expected else None,
                         "ratio_min": min(ratios, default=None), "duplicates": duplicates,
                         "duplicate_ratio": round(duplicates / delivered, 6) if delivered else None},
            "latency_ms": latency.summary_ms(),
            "latency_ms_steady": steady.summary_ms(),
            "hops": _hops_summary(hops),
            "join_s": {"first_start": _spread_s(joins["first_start"]),
                       "restart": {**_spread_s(joins["restart"]), "never": never}},
        }


def _hops_summary(hops: Counter[int]) -> dict[str, Any]:
    """Links travelled per first delivery: mean, p50, p99, max and the histogram (hops -> deliveries)."""
    n = sum(hops.values())
    if not n:
        return {"count": 0, "mean": None, "p50": None, "p99": None, "max": None, "histogram": {}}

    def pct(q: float) -> int:
        rank, seen = max(1, math.ceil(q / 100 * n)), 0
        for h in sorted(hops):
            seen += hops[h]
            if seen >= rank:
                return h
        return max(hops)
    return {"count": n, "mean": round(sum(h * c for h, c in hops.items()) / n, 4), "p50": pct(50), "p99": pct(99),
            "max": max(hops), "histogram": {str(h): hops[h] for h in sorted(hops)}}


def _spread_s(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "max": None}
    ordered = sorted(values)
    return {"count": len(values), "mean": round(sum(values) / len(values), 6),
            "p50": ordered[(len(ordered) - 1) // 2], "max": ordered[-1]}


def _phase_of(status: Any) -> str | None:
    """A worker status' own state (str, kept short: it ends up on a terminal), or None."""
    if not isinstance(status, dict) or status.get("state") is None:
        return None
    return str(status["state"])[:32]


# ------------------------------------------------------------------------------------ expectations


@dataclass(frozen=True)
class _Check:
    """How one [expect] key is measured from the report and judged. `measure(report, scenario, entry)`
    gives (the measured value, a note or None); `entry` is the table key for per-receiver / per-worker
    expectations, None for the others."""

    measure: Callable[[dict[str, Any], Scenario, str | None], tuple[Any, str | None]]
    met: Callable[[Any, Any], bool]         # (measured, expected)
    per_entry: bool = False                 # a table: one expectation per entry


def _equal(measured: Any, expected: Any) -> bool:
    return measured is not None and measured == expected


def _at_least(measured: Any, expected: Any) -> bool:
    return measured is not None and measured >= expected


def _check_value(key: str) -> Callable[[dict[str, Any], Scenario, str | None], tuple[Any, str | None]]:
    return lambda report, _sc, _entry: (report["checks"][key], None)


def _receiver_ratio(report: dict[str, Any], _sc: Scenario, receiver: str | None) -> tuple[Any, str | None]:
    ratios = [(f["index"], f["receivers"][receiver]["delivery_ratio"]) for f in report["flows"]
              if receiver in f["receivers"]]
    known = [r for _, r in ratios if r is not None]
    if len(known) < len(ratios):
        return None, "a flow it receives published nothing"
    return min(known, default=None), (f"lowest of {len(ratios)} flows" if len(ratios) > 1 else None)


def _workers_done(report: dict[str, Any], sc: Scenario, _entry: str | None) -> tuple[Any, str | None]:
    phases = {}
    for node, worker in trainers_with_rounds(sc.nodes):
        entry = next((w for w in report["nodes"][node]["workers"] if w["name"] == worker), None)
        phases[f"{node}/{worker}"] = "node down" if entry is None else (
            entry.get("phase") if entry["state"] == "running" else entry["state"]) or "-"
    done = sum(p == "done" for p in phases.values())
    not_done = ", ".join(f"{w} {p}" for w, p in phases.items() if p != "done")
    return done == len(phases), f"{done} of {len(phases)} trainers done" + (f"; {not_done}" if not_done else "")


def _final_accuracy(report: dict[str, Any], _sc: Scenario, entry: str | None) -> tuple[Any, str | None]:
    assert entry is not None
    node, _, worker = entry.partition("/")
    series = report["nodes"][node]["accuracy"].get(worker)
    if series is None or series["final"] is None:
        return None, "never reported an accuracy"
    return series["final"], None


# The [expect] keys, as data: adding one is a line here and a field in scenario.Expect.
_CHECKS: dict[str, _Check] = {
    "all_delivered": _Check(_check_value("all_delivered"), _equal),
    "exactly_once": _Check(_check_value("exactly_once"), _equal),
    "delivery_ratio_min": _Check(_check_value("delivery_ratio_min"), _at_least),
    "receiver_ratio_min": _Check(_receiver_ratio, _at_least, per_entry=True),
    "workers_done": _Check(_workers_done, _equal),
    "accuracy_min": _Check(_final_accuracy, _at_least, per_entry=True),
}


def evaluate_expectations(scenario: Scenario, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stated expectation of `scenario` measured on `report`: [{key, expected, compare ("equal" or
    "at_least": measured >= expected), measured, met, note}] in [expect]'s field order; a table key
    gives one entry per table entry ("key.entry"). Nothing to measure (None) is never met."""
    expect = scenario.expect or Expect()
    out = []
    for key, check in _CHECKS.items():
        stated = getattr(expect, key)
        items = list(stated.items()) if check.per_entry else [(None, stated)]
        for entry, expected in items:
            if expected is None:
                continue
            measured, note = check.measure(report, scenario, entry)
            out.append({"key": key if entry is None else f"{key}.{entry}", "expected": expected,
                        "compare": "at_least" if check.met is _at_least else "equal",
                        "measured": measured, "met": check.met(measured, expected), "note": note})
    return out


def verdict(report: dict[str, Any], *, stated: bool) -> dict[str, Any]:
    """Did the run show what it should? With [expect]: when every expectation is met. Without: when it
    has no traffic, or all of it reached every receiver exactly once (the rule before [expect])."""
    if stated:
        missed = [e["key"] for e in report["expectations"] if not e["met"]]
        n = len(report["expectations"])
        reason = (f"{len(missed)} of {n} expectations NOT met: {', '.join(missed)}" if missed
                  else f"all {n} expectations met")
        return {"expectations_stated": True, "passed": not missed, "reason": reason}
    chk = report["checks"]
    if not report["flows"]:
        return {"expectations_stated": False, "passed": True, "reason": "no traffic to check"}
    problems = []
    if not chk["all_delivered"]:
        problems.append(f"not all was delivered (lowest delivery ratio {chk['delivery_ratio_min']})")
    if not chk["exactly_once"]:
        problems.append("some packets were delivered more than once")
    return {"expectations_stated": False, "passed": not problems,
            "reason": " and ".join(problems) if problems else "all traffic was delivered exactly once"}


def run_scenario(scenario: Scenario, *, workdir: Path | None = None, capture_dir: Path | None = None,
                 on_progress: Callable[[Progress], None] | None = None, progress_interval: float = 1.0) -> dict[str, Any]:
    """Run `scenario` on virtual time and return its report (see docs/SIM.md)."""
    return run_timed(scenario, workdir=workdir, capture_dir=capture_dir, on_progress=on_progress,
                     progress_interval=progress_interval)[0]


def run_timed(scenario: Scenario, *, workdir: Path | None = None, capture_dir: Path | None = None,
              on_progress: Callable[[Progress], None] | None = None,
              progress_interval: float = 1.0) -> tuple[dict[str, Any], SimTiming]:
    """run_scenario, and how long it took in wall-clock and CPU time (kept out of the report, which
    must be the same on every run)."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            # Short: the node control sockets live here, and a unix socket path has at most 107 bytes.
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="msim-")))
        if capture_dir is not None:
            capture_dir.mkdir(parents=True, exist_ok=True)
        sim = Simulation(scenario, workdir=workdir, capture_dir=capture_dir, on_progress=on_progress,
                         progress_interval=progress_interval)
        sim.prepare()
        run0 = time.monotonic()
        report = run_virtual(sim.run())
    now = time.monotonic()
    return report, SimTiming(wall_s=now - wall0, run_wall_s=now - run0, cpu_s=time.process_time() - cpu0,
                             sim_s=report["sim_time_s"])
