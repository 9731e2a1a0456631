"""Scenario files for `meshnode sim`: TOML in, typed frozen dataclasses out, every problem a
`ScenarioError` that names the key (`topology.links[2].profile: unknown profile 'wfi' ...`).
docs/SIM.md describes the format."""

from __future__ import annotations

import dataclasses
import difflib
import math
import random
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..identity import validate_node_name
from ..net.sim.links import PRESETS, GilbertElliott, LinkProfile, derive_rng

__all__ = [
    "EXPECT_KEYS", "Churn", "Event", "Expect", "Flow", "LinkSpec", "NodeSpec", "Scenario", "ScenarioError", "Stop",
    "load_scenario", "parse_scenario", "trainers_with_rounds",
]

TOPOLOGIES = ("full_mesh", "line", "ring", "star", "random", "clustered", "explicit")
# What a cluster of a clustered topology can be inside, and how clusters are joined to each other.
INTRA_KINDS = ("full_mesh", "line", "ring", "star", "random")
INTER_KINDS = ("full_mesh", "line", "ring", "star")
ACTIONS = ("cut", "restore", "kill", "restart", "set_profile")
STOP_WHEN = ("time", "delivered", "workers_done")
# Every simulated node is a real Node in one process, with a real control socket (one file descriptor)
# and its own key and certificate: 500 keeps far from the usual 1024-descriptor limit and from runs
# that take hours of wall time (300 nodes is what issue 15 asks to run; docs/SIM.md has the speeds).
MAX_NODES = 500
MAX_FLOW_PACKETS = 1_000_000


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message starts with the key path."""

    def __init__(self, key: str, problem: str, *, source: Path | None = None) -> None:
        self.key = key
        self.problem = problem
        text = f"{key}: {problem}" if key else problem
        if source is not None:
            text += f" (in {source})"
        super().__init__(text)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    limits: Mapping[str, Any] = field(default_factory=dict)     # [limits] of the node's config
    workers: tuple[Mapping[str, Any], ...] = ()                  # [[workers]] of the node's config


@dataclass(frozen=True)
class LinkSpec:
    a: str                  # the listening end
    b: str                  # dials a
    profile: str            # name of the a -> b profile
    reverse: str            # name of the b -> a profile


@dataclass(frozen=True)
class Flow:
    """Traffic the runner publishes: `count` vectors packets of `vectors` x `dim` trits from `source`."""

    source: str
    topic: str
    count: int
    vectors: int
    dim: int
    interval: float                 # seconds between publishes
    start: float | None             # simulated time; None: as soon as every topology link is open
    receivers: tuple[str, ...]      # who must get it (default: every other node)
    encoding: str = "auto"


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    link: tuple[str, str] | None = None
    node: str | None = None
    profile: str | None = None
    churn: int | None = None        # index of the [[churn]] table this event was drawn for; None: [[events]]


@dataclass(frozen=True)
class Churn:
    """[[churn]]: `fraction` of the nodes (round(fraction x all nodes), at least 1, at most the eligible
    ones) are each killed once at a uniform random time in [start, end) and restarted after a uniform
    random downtime in [down_min, down_max]. Drawn when the run starts, from the run's seed and the
    table's index (Scenario.churn_events), so `--seed` draws another churn as it draws other losses."""

    fraction: float
    start: float
    end: float
    down_min: float
    down_max: float
    publishers: bool = False        # may a flow's source be chosen? (default no: its flow would pause)
    nodes: tuple[str, ...] = ()     # the eligible nodes before the publisher rule; () = every node

    def eligible(self, all_nodes: Sequence[str], sources: set[str]) -> list[str]:
        pool = list(self.nodes) if self.nodes else list(all_nodes)
        return [n for n in pool if self.publishers or n not in sources]

    def count(self, n_nodes: int, n_eligible: int) -> int:
        return min(n_eligible, max(1, round(self.fraction * n_nodes))) if self.fraction > 0 else 0


@dataclass(frozen=True)
class Stop:
    time: float                     # the run ends at this simulated time at the latest
    when: str = "time"              # "delivered": as soon as every flow reached all its receivers;
                                    # "workers_done": as soon as every trainer worker is done (or failed)
    settle: float = 0.0             # simulated seconds to keep running after "delivered"


@dataclass(frozen=True)
class Expect:
    """What the scenario is meant to show ([expect]); None / empty: not stated. The runner measures
    each stated one and the run passes when every one is met (runner.evaluate_expectations)."""

    all_delivered: bool | None = None           # every flow reached all its receivers
    exactly_once: bool | None = None            # no receiver got a packet twice
    delivery_ratio_min: float | None = None     # the lowest receiver delivery ratio is at least this
    receiver_ratio_min: Mapping[str, float] = field(default_factory=dict)   # receiver -> its lowest ratio
    workers_done: bool | None = None            # every trainer worker with rounds > 0 reached "done"
    accuracy_min: Mapping[str, float] = field(default_factory=dict)         # "node/worker" -> final accuracy


EXPECT_KEYS = tuple(f.name for f in fields(Expect))


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...]
    profiles: Mapping[str, LinkProfile]
    flows: tuple[Flow, ...]
    events: tuple[Event, ...]
    stop: Stop
    defaults: Mapping[str, Any] = field(default_factory=dict)   # [limits] for every node
    listen_port: int = 7000
    source: Path | None = None      # the file it came from: relative paths in worker settings resolve there
    expect: Expect | None = None    # [expect]; None: the scenario states no expectation
    churn: tuple[Churn, ...] = ()   # [[churn]]: expanded into kill / restart events by churn_events()
    # full_mesh: one LAN, where every pair *can* connect (links holds every pair all the same, as the
    # nodes' candidates); the simulator then makes a link only when a connection uses it
    segment: bool = False

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def churn_events(self) -> tuple[Event, ...]:
        """The kill / restart events of every [[churn]] table, drawn from this scenario's seed."""
        names = self.node_names
        sources = {f.source for f in self.flows}
        out: list[Event] = []
        for i, c in enumerate(self.churn):
            rng = derive_rng(self.seed, "churn", str(i))
            pool = c.eligible(names, sources)
            for node in rng.sample(pool, c.count(len(names), len(pool))):
                kill = rng.uniform(c.start, c.end)
                back = kill + rng.uniform(c.down_min, c.down_max)
                out += [Event(round(kill, 6), "kill", node=node, churn=i),
                        Event(round(back, 6), "restart", node=node, churn=i)]
        return tuple(out)

    def all_events(self) -> tuple[Event, ...]:
        """[[events]] and the churn's, in time order ([[events]] first among events at the same time)."""
        return tuple(sorted((*self.events, *self.churn_events()), key=lambda e: (e.at, e.churn is not None)))


# ------------------------------------------------------------------------------------ checking


class _Reader:
    """Typed access to one TOML table, with the key path for errors and a check for unknown keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(path, f"expected a table, got {_kind(data)}")
        self.data = data
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def only(self, *allowed: str) -> None:
        for k in self.data:
            if k not in allowed:
                near = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(allowed)}"
                raise ScenarioError(self.key(str(k)), f"unknown key{hint}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., *,
            check: Any = None) -> Any:
        if name not in self.data:
            if default is ...:
                raise ScenarioError(self.key(name), "required")
            return default
        v = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
            want = " or ".join(_name_of(k) for k in kinds)
            raise ScenarioError(self.key(name), f"expected {want}, got {_kind(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ScenarioError(self.key(name), "must be a finite number")
        if check is not None:
            problem = check(v)
            if problem:
                raise ScenarioError(self.key(name), problem)
        return v

    def table(self, name: str, *, default: Any = ...) -> _Reader:
        if name not in self.data and default is not ...:
            return _Reader(default, self.key(name))
        return _Reader(self.get(name, dict), self.key(name))

    def tables(self, name: str) -> list[_Reader]:
        items = self.get(name, list, [])
        return [_Reader(item, f"{self.key(name)}[{i}]") for i, item in enumerate(items)]


def _name_of(k: type) -> str:
    return {int: "int", float: "number", str: "str", bool: "bool", list: "array", dict: "table"}.get(k, k.__name__)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Mapping):
        return "table"
    return _name_of(type(v))


def _at_least(lo: float) -> Any:
    return lambda v: None if v >= lo else f"must be >= {lo}, got {v}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _one_of(*choices: str) -> Any:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"


_PROFILE_KEYS = tuple(f.name for f in fields(LinkProfile) if f.name != "note")
_GE_KEYS = tuple(f.name for f in fields(GilbertElliott))


def _profile(r: _Reader, profiles: Mapping[str, LinkProfile]) -> LinkProfile:
    r.only("base", *_PROFILE_KEYS)
    base_name = r.get("base", str, None)
    if base_name is None:
        base = LinkProfile()
    elif base_name in profiles:
        base = profiles[base_name]
    else:
        raise ScenarioError(r.key("base"), f"unknown profile {base_name!r}; known: {', '.join(profiles)}")
    changes: dict[str, Any] = {}
    for f in fields(LinkProfile):
        if f.name in ("note", "gilbert_elliott") or f.name not in r.data:
            continue
        default = getattr(LinkProfile(), f.name)
        kind: type | tuple[type, ...] = (int, float) if isinstance(default, float) else type(default)
        changes[f.name] = r.get(f.name, kind)
    if "gilbert_elliott" in r.data:
        g = r.table("gilbert_elliott")
        g.only(*_GE_KEYS)
        try:
            changes["gilbert_elliott"] = GilbertElliott(**{k: g.get(k, float, getattr(GilbertElliott(0, 1), k))
                                                            for k in _GE_KEYS})
        except ValueError as e:
            raise ScenarioError(g.path, str(e)) from None
    try:
        return base.with_changes(**changes, note=f"custom (based on {base_name})" if base_name else "custom")
    except (ValueError, TypeError) as e:
        key, _, problem = str(e).partition(": ")
        raise ScenarioError(r.key(key) if problem else r.path, problem or str(e)) from None


def _profile_ref(r: _Reader, name: str, profiles: Mapping[str, LinkProfile], default: str | None = None) -> str:
    v = r.get(name, str, default if default is not None else ...)
    if v not in profiles:
        near = difflib.get_close_matches(v, list(profiles), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ScenarioError(r.key(name), f"unknown profile {v!r}{hint}; known: {', '.join(profiles)}")
    return v


def _limits(r: _Reader) -> dict[str, Any]:
    # Checked by the daemon's own config parser when the node is built (errors name the key there too);
    # here only that it is a table of scalars.
    out = {}
    for k, v in r.data.items():
        if isinstance(v, (Mapping, list)):
            raise ScenarioError(r.key(str(k)), "expected a number, string or bool")
        out[str(k)] = v
    return out


def parse_scenario(data: Mapping[str, Any], *, name: str = "scenario", source: Path | None = None) -> Scenario:
    try:
        return _parse(data, name)
    except ScenarioError as e:
        if source is None:
            raise
        raise ScenarioError(e.key, e.problem, source=source) from None


def _parse(data: Mapping[str, Any], default_name: str) -> Scenario:
    top = _Reader(data, "")
    top.only("name", "seed", "listen_port", "defaults", "profiles", "nodes", "node_groups", "topology", "traffic",
             "events", "churn", "stop", "expect")
    name = top.get("name", str, default_name)
    seed = top.get("seed", int, 0, check=_at_least(0))
    listen_port = top.get("listen_port", int, 7000, check=lambda v: None if 1 <= v <= 65535 else "must be 1..65535")
    defaults = top.table("defaults", default={})
    defaults.only("limits")
    default_limits = _limits(defaults.table("limits", default={}))

    profiles: dict[str, LinkProfile] = dict(PRESETS)
    prof_table = top.table("profiles", default={})
    for pname in prof_table.data:
        if pname in PRESETS:
            raise ScenarioError(prof_table.key(pname), "a preset has this name; pick another (use base = "
                                                       f"{pname!r} to start from it)")
        profiles[pname] = _profile(prof_table.table(pname), profiles)

    nodes: list[NodeSpec] = []
    seen: set[str] = set()

    def add_node(nname: str, r: _Reader, key: str) -> None:
        try:
            validate_node_name(nname)
        except ValueError as e:
            raise ScenarioError(r.key(key), str(e)) from None
        if nname in seen:
            raise ScenarioError(r.key(key), f"node {nname!r} is named twice")
        if len(seen) >= MAX_NODES:
            raise ScenarioError(r.key(key), f"at most {MAX_NODES} nodes")
        seen.add(nname)
        workers = []
        for wr in r.tables("workers"):
            wr.only("name", "type", "settings")
            workers.append({"name": wr.get("name", str), "type": wr.get("type", str),
                            "settings": dict(wr.get("settings", dict, {}))})
        nodes.append(NodeSpec(nname, _limits(r.table("limits", default={})), tuple(workers)))

    for nr in top.tables("nodes"):
        nr.only("name", "limits", "workers")
        add_node(nr.get("name", str), nr, "name")
    for gr in top.tables("node_groups"):
        # count nodes named prefix + a number, zero-padded to the width of the largest, from `first`
        gr.only("prefix", "count", "first", "limits", "workers")
        prefix = gr.get("prefix", str)
        count = gr.get("count", int, check=lambda v: None if 1 <= v <= MAX_NODES else f"must be 1..{MAX_NODES}")
        first = gr.get("first", int, 1, check=_at_least(0))
        width = len(str(first + count - 1))
        for k in range(first, first + count):
            add_node(f"{prefix}{k:0{width}d}", gr, "prefix")
    if not nodes:
        raise ScenarioError("nodes", "at least one [[nodes]] or [[node_groups]] table is required")
    names = [n.name for n in nodes]

    def node_ref(r: _Reader, key: str) -> str:
        v = r.get(key, str)
        if v not in seen:
            raise ScenarioError(r.key(key), f"no node named {v!r}; nodes: {', '.join(names)}")
        return v

    topo = top.table("topology")
    kind = topo.get("kind", str, check=_one_of(*TOPOLOGIES))
    topo.only("kind", *_TOPOLOGY_KEYS[kind])
    links: list[LinkSpec] = []
    if kind == "explicit":
        default_profile = _profile_ref(topo, "profile", profiles) if "profile" in topo.data else None
        for lr in topo.tables("links"):
            lr.only("a", "b", "profile", "reverse")
            a, b = node_ref(lr, "a"), node_ref(lr, "b")
            if a == b:
                raise ScenarioError(lr.key("b"), f"a link joins two different nodes, got {a!r} twice")
            p = _profile_ref(lr, "profile", profiles, default_profile)
            links.append(LinkSpec(a, b, p, _profile_ref(lr, "reverse", profiles, p)))
        if not links:
            raise ScenarioError(topo.key("links"), "an explicit topology needs at least one [[topology.links]]")
    elif kind == "clustered":
        links = _clustered(topo, names, profiles, seed)
    else:
        p = _profile_ref(topo, "profile", profiles)
        rev = _profile_ref(topo, "reverse", profiles, p)
        center = node_ref(topo, "center") if "center" in topo.data else None
        links = [LinkSpec(a, b, p, rev) for a, b in _shape(topo, kind, names, seed, center)]
    pair_set: set[frozenset[str]] = set()
    for i, link in enumerate(links):
        key = frozenset((link.a, link.b))
        if key in pair_set:
            raise ScenarioError(f"topology.links[{i}]", f"{link.a!r} and {link.b!r} are linked twice")
        pair_set.add(key)

    flows: list[Flow] = []
    for fr in top.tables("traffic"):
        fr.only("from", "to", "topic", "count", "vectors", "dim", "interval", "start", "encoding")
        src = node_ref(fr, "from")
        to = fr.get("to", list, None)
        if to is None:
            receivers = tuple(n for n in names if n != src)
        else:
            for j, t in enumerate(to):
                if t not in seen or t == src:
                    raise ScenarioError(f"{fr.key('to')}[{j}]", f"{t!r} is not another node of the scenario")
            receivers = tuple(to)
        topic = fr.get("topic", str, "sim", check=lambda v: None if 1 <= len(v.encode()) <= 256
                       else "must be 1..256 bytes of UTF-8")
        count = fr.get("count", int, check=lambda v: None if 1 <= v <= MAX_FLOW_PACKETS
                       else f"must be 1..{MAX_FLOW_PACKETS}")
        vectors = fr.get("vectors", int, 1, check=lambda v: None if 1 <= v <= 65536 else "must be 1..65536")
        dim = fr.get("dim", int, 1024, check=lambda v: None if 1 <= v <= 1 << 20 else "must be 1..1048576")
        flows.append(Flow(src, topic, count, vectors, dim,
                          fr.get("interval", float, 0.0, check=_at_least(0.0)),
                          fr.get("start", float, None, check=_at_least(0.0)), receivers,
                          fr.get("encoding", str, "auto", check=_one_of("auto", "dense2", "base3", "sparse"))))

    stop_r = top.table("stop")
    stop_r.only("time", "when", "settle")
    stop = Stop(stop_r.get("time", float, check=_positive), stop_r.get("when", str, "time", check=_one_of(*STOP_WHEN)),
                stop_r.get("settle", float, 0.0, check=_at_least(0.0)))
    if stop.when == "delivered" and not flows:
        raise ScenarioError("stop.when", "\"delivered\" needs at least one [[traffic]] flow")
    if stop.when == "workers_done" and not trainers_with_rounds(nodes):
        raise ScenarioError("stop.when", "\"workers_done\" needs a trainer worker with settings.rounds > 0")

    events: list[Event] = []
    for er in top.tables("events"):
        er.only("at", "action", "link", "node", "profile")
        at = er.get("at", float, check=_at_least(0.0))
        action = er.get("action", str, check=_one_of(*ACTIONS))
        if action in ("cut", "restore", "set_profile"):
            pair = er.get("link", list)
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                raise ScenarioError(er.key("link"), "expected two node names, e.g. [\"a\", \"b\"]")
            if frozenset(pair) not in pair_set:
                raise ScenarioError(er.key("link"), f"{pair[0]!r} and {pair[1]!r} have no link in the topology")
            profile = _profile_ref(er, "profile", profiles) if action == "set_profile" else None
            for key in ("node",) + (("profile",) if action != "set_profile" else ()):
                if key in er.data:
                    raise ScenarioError(er.key(key), f"not used by action {action!r}")
            events.append(Event(at, action, link=(pair[0], pair[1]), profile=profile))
        else:
            node = node_ref(er, "node")
            for key in ("link", "profile"):
                if key in er.data:
                    raise ScenarioError(er.key(key), f"not used by action {action!r}")
            events.append(Event(at, action, node=node))
    events.sort(key=lambda e: e.at)   # stable: same-time events keep their file order
    for i, e in enumerate(events):
        if e.at > stop.time:
            raise ScenarioError(f"events[{i}].at", f"{e.at} is after stop.time {stop.time}")
    expect = _expect(top.table("expect"), nodes, flows) if "expect" in top.data else None
    churn = tuple(_churn(cr, stop, names, flows) for cr in top.tables("churn"))
    return Scenario(name, seed, tuple(nodes), tuple(links), profiles, tuple(flows), tuple(events), stop,
                    default_limits, listen_port, expect=expect, churn=churn, segment=kind == "full_mesh")


# ------------------------------------------------------------------------------------ topologies

# The keys each topology kind takes besides `kind` (anything else is an error naming the key).
_TOPOLOGY_KEYS: dict[str, tuple[str, ...]] = {
    "full_mesh": ("profile", "reverse"),
    "line": ("profile", "reverse"),
    "ring": ("profile", "reverse", "neighbours"),
    "star": ("profile", "reverse", "center"),
    "random": ("profile", "reverse", "degree", "seed"),
    "clustered": ("profile", "reverse", "clusters", "sizes", "seed", "intra", "inter"),
    "explicit": ("profile", "links"),
}


def _shape(r: _Reader, kind: str, names: Sequence[str], seed: int, center: str | None) -> list[tuple[str, str]]:
    """The pairs (a listens, b dials) of a generated topology over `names`, in a fixed order."""
    n = len(names)
    if kind == "full_mesh":
        return [(names[i], names[j]) for i in range(n) for j in range(i + 1, n)]
    if kind == "line":
        return list(zip(names, names[1:]))
    if kind == "star":
        hub = center if center is not None else names[0]
        return [(hub, x) for x in names if x != hub]
    if kind == "ring":
        k = r.get("neighbours", int, 1, check=_at_least(1))
        if n < 3:
            raise ScenarioError(r.path, f"a ring needs at least 3 nodes, got {n}")
        if 2 * k >= n:
            raise ScenarioError(r.key("neighbours"), f"must be < half the nodes ({n}), got {k}: use full_mesh")
        # node i links to the next k around the ring (degree 2k)
        return [(names[i], names[(i + d) % n]) for d in range(1, k + 1) for i in range(n)]
    # random
    degree = r.get("degree", int, check=_at_least(2))
    if n < 3 or degree >= n - 1:
        raise ScenarioError(r.key("degree"), f"must be < {n - 1} (nodes - 1) for {n} nodes; use full_mesh")
    rng = derive_rng(r.get("seed", int, seed, check=_at_least(0)), "topology", r.path)
    return _random_graph(list(names), degree, rng)


def _random_graph(names: list[str], degree: int, rng: random.Random) -> list[tuple[str, str]]:
    """A connected random graph where every node has `degree` links (a few may end one short when no
    partner is left): a random ring (connected by construction), then random chords between nodes that
    still have room, the emptiest first."""
    n = len(names)
    order = names[:]
    rng.shuffle(order)
    index = {x: i for i, x in enumerate(names)}
    adj: dict[str, set[str]] = {x: set() for x in names}
    pairs: list[tuple[str, str]] = []

    def join(a: str, b: str) -> None:
        adj[a].add(b)
        adj[b].add(a)
        pairs.append((a, b) if index[a] < index[b] else (b, a))

    for i in range(n):
        join(order[i], order[(i + 1) % n])
    for x in order:
        tries = 0
        while len(adj[x]) < degree and tries < 4 * n:
            tries += 1
            y = order[rng.randrange(n)]
            if y != x and y not in adj[x] and len(adj[y]) < degree:
                join(x, y)
        if len(adj[x]) < degree:            # random tries ran dry: take the first partner left, if any
            for y in order:
                if len(adj[x]) >= degree:
                    break
                if y != x and y not in adj[x] and len(adj[y]) < degree:
                    join(x, y)
    return pairs


def _clustered(topo: _Reader, names: list[str], profiles: Mapping[str, LinkProfile], seed: int) -> list[LinkSpec]:
    """Clusters (consecutive blocks of the node order) with a topology inside each and links between
    them: [topology.intra] {kind, profile, reverse, degree / neighbours}, [topology.inter] {kind (how
    clusters are joined: full_mesh = every pair of clusters), links (per joined pair), profile, reverse}.
    Link j between clusters p and q joins their nodes number j (their first nodes act as gateways), so
    a scenario can name an inter-cluster link in an event."""
    n = len(names)
    if "sizes" in topo.data:
        if "clusters" in topo.data:
            raise ScenarioError(topo.key("clusters"), "give clusters or sizes, not both")
        sizes = topo.get("sizes", list)
        for j, v in enumerate(sizes):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ScenarioError(f"{topo.key('sizes')}[{j}]", f"expected an int >= 1, got {v!r}")
        if sum(sizes) != n:
            raise ScenarioError(topo.key("sizes"), f"add up to {sum(sizes)}, but the scenario has {n} nodes")
    else:
        k = topo.get("clusters", int, check=lambda v: None if 2 <= v <= n else f"must be 2..{n} (the nodes)")
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    if len(sizes) < 2:
        raise ScenarioError(topo.key("sizes"), "a clustered topology needs at least 2 clusters")
    blocks, at = [], 0
    for size in sizes:
        blocks.append(names[at:at + size])
        at += size
    default = topo.data.get("profile")
    intra = topo.table("intra")
    ikind = intra.get("kind", str, "full_mesh", check=_one_of(*INTRA_KINDS))
    intra.only("kind", "profile", "reverse", *{"ring": ("neighbours",), "random": ("degree",)}.get(ikind, ()))
    ip = _profile_ref(intra, "profile", profiles, default)
    irev = _profile_ref(intra, "reverse", profiles, ip)
    links: list[LinkSpec] = []
    tseed = topo.get("seed", int, seed, check=_at_least(0))
    for c, block in enumerate(blocks):
        if len(block) == 1:
            continue
        kind = ikind
        if kind == "ring" and len(block) < 3 or kind == "random" and len(block) <= 3:
            kind = "full_mesh"          # too small for the shape: all of them are linked anyway
        sub = _Reader(intra.data, intra.path)
        pairs = (_shape(sub, kind, block, tseed + c, None) if kind != "random" else
                 _random_graph(block, min(sub.get("degree", int, check=_at_least(2)), len(block) - 1),
                               derive_rng(tseed, "topology", f"cluster{c}")))
        links += [LinkSpec(a, b, ip, irev) for a, b in pairs]
    inter = topo.table("inter")
    inter.only("kind", "links", "profile", "reverse")
    xkind = inter.get("kind", str, "full_mesh", check=_one_of(*INTER_KINDS))
    per_pair = inter.get("links", int, 1, check=_at_least(0))
    xp = _profile_ref(inter, "profile", profiles, default)
    xrev = _profile_ref(inter, "reverse", profiles, xp)
    ids = [str(i) for i in range(len(blocks))]
    if xkind == "ring" and len(blocks) < 3:
        xkind = "line"
    joined = _shape(_Reader({}, inter.path), xkind, ids, tseed, None)
    have = {frozenset((x.a, x.b)) for x in links}
    for p, q in joined:
        bp, bq = blocks[int(p)], blocks[int(q)]
        for j in range(min(per_pair, len(bp) * len(bq))):
            a, b = bp[j % len(bp)], bq[(j + j // len(bp)) % len(bq)]
            if frozenset((a, b)) not in have:
                have.add(frozenset((a, b)))
                links.append(LinkSpec(a, b, xp, xrev))
    return links


def _churn(r: _Reader, stop: Stop, names: list[str], flows: list[Flow]) -> Churn:
    r.only("fraction", "start", "end", "down", "publishers", "nodes")
    fraction = r.get("fraction", float, check=lambda v: None if 0 < v <= 1 else f"must be in (0, 1], got {v}")
    start = r.get("start", float, check=_at_least(0.0))
    end = r.get("end", float, check=lambda v: None if v > start else f"must be after start ({start}), got {v}")
    down = r.get("down", list)
    if len(down) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in down) \
            or not 0 <= down[0] <= down[1]:
        raise ScenarioError(r.key("down"), f"expected [min, max] seconds with 0 <= min <= max, got {down!r}")
    if end + down[1] > stop.time:
        raise ScenarioError(r.key("end"), f"a node killed just before end ({end}) and down for {down[1]} s would "
                                          f"restart after stop.time ({stop.time})")
    pool: tuple[str, ...] = ()
    if "nodes" in r.data:
        raw = r.get("nodes", list)
        for j, x in enumerate(raw):
            if x not in names:
                raise ScenarioError(f"{r.key('nodes')}[{j}]", f"no node named {x!r}")
        pool = tuple(raw)
    c = Churn(fraction, start, end, float(down[0]), float(down[1]), r.get("publishers", bool, False), pool)
    if not c.eligible(names, {f.source for f in flows}):
        raise ScenarioError(r.path, "no node can churn (every candidate publishes; set publishers = true)")
    return c


def _ratio(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else f"must be in 0..1, got {v}"


def trainers_with_rounds(nodes: Sequence[NodeSpec]) -> list[tuple[str, str]]:
    """(node, worker) of every trainer that stops after a number of rounds: the ones that can be done."""
    return [(n.name, w["name"]) for n in nodes for w in n.workers
            if w["type"] == "trainer" and isinstance(w["settings"].get("rounds"), int) and w["settings"]["rounds"] > 0]


def _minimums(r: _Reader, key: str, known: set[str], unknown: str) -> dict[str, float]:
    """A table of name -> a minimum in [0, 1], every name one of `known` (else `unknown`, formatted
    with the name, followed by the known names)."""
    out: dict[str, float] = {}
    table = r.table(key, default={})
    for name in table.data:
        if name not in known:
            raise ScenarioError(table.key(name), unknown.format(name) + (", ".join(sorted(known)) or "none"))
        out[name] = table.get(name, float, check=_ratio)
    return out


def _expect(r: _Reader, nodes: list[NodeSpec], flows: list[Flow]) -> Expect:
    r.only(*EXPECT_KEYS)
    if not r.data:
        raise ScenarioError(r.path, f"states nothing; give at least one of {', '.join(EXPECT_KEYS)} (or leave "
                                    "the table out)")
    for key in ("all_delivered", "exactly_once", "delivery_ratio_min", "receiver_ratio_min"):
        if key in r.data and not flows:
            raise ScenarioError(r.key(key), "needs at least one [[traffic]] flow to measure")
    receivers = {x for f in flows for x in f.receivers}
    per_receiver = _minimums(r, "receiver_ratio_min", receivers, "{!r} receives no flow; receivers: ")
    workers = {f"{n.name}/{w['name']}" for n in nodes for w in n.workers}
    per_worker = _minimums(r, "accuracy_min", workers, 'no worker {!r} (give "node/worker"); workers: ')
    workers_done = r.get("workers_done", bool, None)
    if workers_done is not None and not trainers_with_rounds(nodes):
        raise ScenarioError(r.key("workers_done"), "needs a trainer worker with settings.rounds > 0")
    return Expect(all_delivered=r.get("all_delivered", bool, None), exactly_once=r.get("exactly_once", bool, None),
                  delivery_ratio_min=r.get("delivery_ratio_min", float, None, check=_ratio),
                  receiver_ratio_min=per_receiver, workers_done=workers_done, accuracy_min=per_worker)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError("", f"cannot read {p}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError("", f"not valid TOML: {e}", source=p) from None
    return dataclasses.replace(parse_scenario(data, name=p.stem, source=p), source=p.absolute())
