"""Scenario generation for large meshes (node groups, ring / random / clustered topologies, churn),
lazy links, and the report's mesh figures (issue 15, the simulator's part)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

import pytest

from meshnode.net.sim.kinds import CLASSES, TRAFFIC_CLASS
from meshnode.net.sim.links import preset
from meshnode.net.sim.transport import SimNetwork
from meshnode.sim.runner import run_timed
from meshnode.sim.scenario import MAX_NODES, ScenarioError, parse_scenario


def big(n: int = 30, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"seed": 5, "node_groups": [{"prefix": "n", "count": n}],
                            "topology": {"kind": "full_mesh", "profile": "lan"}, "stop": {"time": 100}}
    data.update(over)
    return data


def degrees(sc: Any) -> Counter[str]:
    deg: Counter[str] = Counter()
    for link in sc.links:
        deg.update((link.a, link.b))
    return deg


def connected(sc: Any) -> bool:
    adj: dict[str, set[str]] = {n: set() for n in sc.node_names}
    for link in sc.links:
        adj[link.a].add(link.b)
        adj[link.b].add(link.a)
    seen, todo = {sc.node_names[0]}, [sc.node_names[0]]
    while todo:
        for x in adj[todo.pop()] - seen:
            seen.add(x)
            todo.append(x)
    return len(seen) == len(sc.node_names)


def test_node_groups_name_nodes_in_order_with_their_limits_and_workers() -> None:
    sc = parse_scenario(big(nodes=[{"name": "hub"}], node_groups=[
        {"prefix": "a", "count": 12, "limits": {"hop_limit": 3}},
        {"prefix": "b-", "count": 3, "first": 0,
         "workers": [{"name": "beat", "type": "heartbeat-vectors", "settings": {"interval": 5.0}}]}]))
    assert sc.node_names[:3] == ("hub", "a01", "a02") and sc.node_names[12] == "a12"
    assert sc.node_names[13:] == ("b-0", "b-1", "b-2")
    assert sc.nodes[1].limits == {"hop_limit": 3} and sc.nodes[13].workers[0]["name"] == "beat"
    assert len(sc.links) == 16 * 15 // 2 and sc.segment


@pytest.mark.parametrize("over, key", [
    ({"node_groups": [{"prefix": "n", "count": 0}]}, "node_groups[0].count"),
    ({"node_groups": [{"prefix": "n", "count": 2}, {"prefix": "n", "count": 2}]}, "node_groups[1].prefix"),
    ({"node_groups": [{"prefix": "n", "count": 2, "size": 3}]}, "node_groups[0].size"),
    ({"node_groups": [{"prefix": "n", "count": MAX_NODES}, {"prefix": "m", "count": 1}]}, "node_groups[1].prefix"),
    ({"topology": {"kind": "ring", "profile": "lan", "neighbours": 15}}, "topology.neighbours"),
    ({"topology": {"kind": "random", "profile": "lan"}}, "topology.degree"),
    ({"topology": {"kind": "random", "profile": "lan", "degree": 29}}, "topology.degree"),
    ({"topology": {"kind": "line", "profile": "lan", "degree": 3}}, "topology.degree"),
    ({"topology": {"kind": "clustered", "sizes": [10, 10], "intra": {"kind": "full_mesh", "profile": "lan"},
                   "inter": {"profile": "wan"}}}, "topology.sizes"),
    ({"topology": {"kind": "clustered", "clusters": 2, "intra": {"kind": "tree", "profile": "lan"},
                   "inter": {"profile": "wan"}}}, "topology.intra.kind"),
    ({"topology": {"kind": "clustered", "clusters": 2, "intra": {"kind": "full_mesh"},
                   "inter": {"profile": "wan"}}}, "topology.intra.profile"),
    ({"churn": [{"fraction": 0.1, "start": 5, "end": 90, "down": [1, 20]}]}, "churn[0].end"),
    ({"churn": [{"fraction": 1.5, "start": 5, "end": 9, "down": [1, 2]}]}, "churn[0].fraction"),
    ({"churn": [{"fraction": 0.1, "start": 5, "end": 9, "down": [3, 2]}]}, "churn[0].down"),
    ({"churn": [{"fraction": 0.1, "start": 5, "end": 9, "down": [1, 2], "nodes": ["zz"]}]}, "churn[0].nodes[0]"),
])
def test_generation_errors_name_the_key(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(big(**over))
    assert err.value.key == key, str(err.value)


def test_three_hundred_nodes_fit() -> None:
    assert MAX_NODES >= 300
    sc = parse_scenario(big(300, topology={"kind": "random", "profile": "wifi", "degree": 6}))
    assert len(sc.node_names) == 300 and connected(sc)


def test_ring_links_each_node_to_its_k_next() -> None:
    sc = parse_scenario(big(10, topology={"kind": "ring", "profile": "lan", "neighbours": 2}))
    assert set(degrees(sc).values()) == {4} and len(sc.links) == 20 and connected(sc)


def test_random_topology_is_connected_near_regular_and_seeded() -> None:
    sc = parse_scenario(big(60, topology={"kind": "random", "profile": "wifi", "degree": 6}))
    deg = degrees(sc)
    assert connected(sc) and min(deg.values()) >= 5 and max(deg.values()) <= 6
    assert len({frozenset((x.a, x.b)) for x in sc.links}) == len(sc.links)
    again = parse_scenario(big(60, topology={"kind": "random", "profile": "wifi", "degree": 6}))
    assert again.links == sc.links
    # the shape follows topology.seed (default: the scenario's seed), fixed when the file loads
    other = parse_scenario(big(60, topology={"kind": "random", "profile": "wifi", "degree": 6, "seed": 9}))
    assert other.links != sc.links


def test_clustered_joins_clusters_through_their_first_nodes() -> None:
    sc = parse_scenario(big(node_groups=[{"prefix": "a", "count": 8}, {"prefix": "b", "count": 8},
                                         {"prefix": "c", "count": 8}],
                            topology={"kind": "clustered", "sizes": [8, 8, 8],
                                      "intra": {"kind": "random", "degree": 3, "profile": "wifi"},
                                      "inter": {"kind": "line", "links": 2, "profile": "wan"}}))
    wan = sorted((x.a, x.b) for x in sc.links if x.profile == "wan")
    assert wan == [("a1", "b1"), ("a2", "b2"), ("b1", "c1"), ("b2", "c2")]
    assert connected(sc)
    assert all(x.a[0] == x.b[0] for x in sc.links if x.profile == "wifi")     # intra links stay inside


def test_churn_is_drawn_from_the_run_seed_and_spares_publishers() -> None:
    data = big(40, traffic=[{"from": "n01", "count": 3}, {"from": "n02", "count": 3}],
               churn=[{"fraction": 0.25, "start": 10, "end": 20, "down": [2, 5]}])
    sc = parse_scenario(data)
    events = [e for e in sc.all_events() if e.churn == 0]
    kills = {e.node: e.at for e in events if e.action == "kill"}
    back = {e.node: e.at for e in events if e.action == "restart"}
    assert len(kills) == 10 and kills.keys() == back.keys()
    assert not {"n01", "n02"} & kills.keys()
    assert all(10 <= kills[n] < 20 and 2 <= back[n] - kills[n] <= 5 for n in kills)
    assert [e.at for e in sc.all_events()] == sorted(e.at for e in sc.all_events())
    assert sc.all_events() == parse_scenario(data).all_events()
    assert dataclasses.replace(sc, seed=6).churn_events() != sc.churn_events()    # --seed draws another churn
    with_pub = parse_scenario({**data, "churn": [{"fraction": 1.0, "start": 10, "end": 20, "down": [2, 5],
                                                   "publishers": True}]})
    assert len(with_pub.churn_events()) == 80


def test_a_segment_makes_links_only_when_used() -> None:
    net = SimNetwork(3)
    names = [f"h{i:03d}" for i in range(300)]
    for n in names:
        net.add_host(n)
    net.add_segment(names, preset("wifi"), preset("lan"))
    assert net.links == {} and net.can_reach("h010", "h200") and not net.can_reach("h010", "h010")
    link = net.link("h200", "h010")
    assert link is not None and len(net.links) == 2
    assert net.links[("h010", "h200")].profile == preset("wifi")     # earlier -> later: the profile
    assert link.profile == preset("lan")                              # later -> earlier: the reverse
    net.add_host("x")
    assert not net.can_reach("x", "h001") and net.link("x", "h001") is None


def _small_churn_run() -> tuple[dict[str, Any], Any]:
    sc = parse_scenario({
        "seed": 3, "node_groups": [{"prefix": "n", "count": 6}],
        "topology": {"kind": "full_mesh", "profile": "lan"},
        "traffic": [{"from": "n1", "count": 6, "vectors": 2, "dim": 256, "interval": 0.5, "start": 2.0}],
        "churn": [{"fraction": 0.34, "start": 2.5, "end": 3.0, "down": [0.5, 1.0]}],
        "stop": {"time": 8.0}})
    return run_timed(sc)


def test_mesh_figures_add_up_and_the_report_repeats_byte_for_byte() -> None:
    report, timing = _small_churn_run()
    mesh = report["mesh"]
    assert mesh["nodes"] == 6 and 1 <= mesh["links_made"] <= 15
    churned = report["churn"][0]["nodes"]
    assert len(churned) == 2 and "n1" not in churned
    assert all(report["nodes"][n]["incarnations"] == 2 for n in churned)
    # bytes by class add up to all; what links sent adds up to the per-node totals
    for way in ("sent", "received"):
        b = mesh["bytes_per_node"][way]
        assert abs(sum(b[c]["mean"] for c in CLASSES) - b["all"]["mean"]) < 1.0
    total_sent = sum(n["bytes_sent"] for n in report["nodes"].values())
    assert round(mesh["bytes_per_node"]["sent"]["all"]["mean"] * 6) == total_sent
    d = mesh["delivery"]
    assert d["expected"] == 6 * 5 and 0 <= d["delivered"] <= d["expected"]
    if d["delivered"]:
        assert mesh["hops"]["count"] == d["delivered"] and mesh["hops"]["p50"] >= 1
        assert mesh["latency_ms"]["count"] == d["delivered"]
    for name, node in report["nodes"].items():
        assert len(node["joins"]) == node["incarnations"]
    assert "wall" not in json.dumps(report)                       # wall-clock figures stay out of it
    assert timing.sim_s == report["sim_time_s"] and timing.run_wall_s > 0
    again, _ = _small_churn_run()
    assert json.dumps(again, sort_keys=True) == json.dumps(report, sort_keys=True)


def test_every_wire_kind_has_a_traffic_class() -> None:
    from meshnode.net.sim.kinds import KINDS

    missing = [k for k in KINDS if k not in TRAFFIC_CLASS]
    assert not missing, f"add these packet kinds to kinds.TRAFFIC_CLASS: {missing}"
    assert set(TRAFFIC_CLASS.values()) <= set(CLASSES)
