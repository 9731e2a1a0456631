"""Scenario files: the shipped examples load, and every mistake is reported with its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshnode.cli import main
from meshnode.sim.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "deploy" / "scenarios"


def base(**over) -> dict:
    data = {"nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "topology": {"kind": "line", "profile": "wifi"}, "stop": {"time": 10}}
    data.update(over)
    return data


def test_shipped_scenarios_load() -> None:
    files = sorted(SCENARIOS.glob("*.toml"))
    assert {f.stem for f in files} >= {"wifi-three", "lora-line-partition"}
    for f in files:
        sc = load_scenario(f)
        assert sc.name == f.stem
    lora = load_scenario(SCENARIOS / "lora-line-partition.toml")
    assert len(lora.nodes) == 5 and {link.profile for link in lora.links} == {"lora"}
    assert [e.action for e in lora.events] == ["cut", "restore"]
    # the partition loses nothing since anti-entropy, and it says so
    assert lora.expect is not None and lora.expect.all_delivered is True and lora.expect.exactly_once is True
    assert all(load_scenario(f).expect is not None for f in files)


def test_the_shipped_partition_scenario_meets_its_expectations_and_exits_0(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sim", str(SCENARIOS / "lora-line-partition.toml"), "--quiet", "--report",
                                       str(tmp_path / "r.json")], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["checks"]["all_delivered"] and report["checks"]["exactly_once"]   # across the cut
    assert report["verdict"]["passed"] and all(e["met"] for e in report["expectations"])
    assert "all 3 expectations met: exit 0" in result.output


def test_topologies() -> None:
    star = parse_scenario(base(topology={"kind": "star", "profile": "lan", "center": "b"}))
    assert {(link.a, link.b) for link in star.links} == {("b", "a"), ("b", "c")}
    mesh = parse_scenario(base(topology={"kind": "full_mesh", "profile": "lan"}))
    assert len(mesh.links) == 3
    explicit = parse_scenario(base(topology={"kind": "explicit", "links": [
        {"a": "a", "b": "c", "profile": "lora", "reverse": "lte"}]}))
    assert explicit.links[0].reverse == "lte"
    custom = parse_scenario(base(profiles={"radio": {"base": "lora", "rate_bps": 1200, "mode": "datagram"}},
                                 topology={"kind": "line", "profile": "radio"}))
    assert custom.profiles["radio"].rate_bps == 1200 and custom.profiles["radio"].mtu == 222


@pytest.mark.parametrize("over, key", [
    ({"nodez": []}, "nodez"),
    ({"topology": {"kind": "torus", "profile": "wifi"}}, "topology.kind"),
    ({"topology": {"kind": "line", "profile": "wfi"}}, "topology.profile"),
    ({"profiles": {"r": {"base": "lora", "rate_bps": -5}}, "topology": {"kind": "line", "profile": "r"}},
     "profiles.r.rate_bps"),
    ({"profiles": {"r": {"loss": "high"}}}, "profiles.r.loss"),
    ({"profiles": {"r": {"gilbert_elliott": {"p_enter_bad": 2}}}}, "profiles.r.gilbert_elliott"),
    ({"nodes": [{"name": "a"}, {"name": "a"}]}, "nodes[1].name"),
    ({"nodes": [{"name": "a", "workers": [{"name": "w"}]}]}, "nodes[0].workers[0].type"),
    ({"traffic": [{"from": "z", "count": 1}]}, "traffic[0].from"),
    ({"traffic": [{"from": "a", "count": 0}]}, "traffic[0].count"),
    ({"events": [{"at": 1, "action": "cut", "link": ["a", "c"]}]}, "events[0].link"),
    ({"events": [{"at": 1, "action": "explode", "node": "a"}]}, "events[0].action"),
    ({"events": [{"at": 99, "action": "kill", "node": "a"}]}, "events[0].at"),
    ({"stop": {"time": 10, "when": "delivered"}}, "stop.when"),
    ({"stop": {"tiem": 10}}, "stop.tiem"),
])
def test_errors_name_the_bad_key(over: dict, key: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(base(**over))
    assert err.value.key == key, str(err.value)
    assert str(err.value).startswith(f"{key}: ")


def test_a_typo_gets_a_suggestion() -> None:
    with pytest.raises(ScenarioError, match="did you mean 'profile'"):
        parse_scenario(base(topology={"kind": "line", "profil": "wifi"}))


def test_bad_node_limits_are_caught_by_the_daemon_config_with_the_node_named(tmp_path: Path) -> None:
    from meshnode.sim.runner import Simulation

    sc = parse_scenario(base(nodes=[{"name": "a", "limits": {"peer_timout": 3}}, {"name": "b"}, {"name": "c"}]))
    with pytest.raises(ScenarioError, match=r"^nodes\.a\.limits\.peer_timout"):
        Simulation(sc, workdir=tmp_path).prepare()


def test_cli_sim_writes_report_plot_and_captures(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('seed = 2\n[[nodes]]\nname = "a"\n[[nodes]]\nname = "b"\n'
                        '[topology]\nkind = "line"\nprofile = "lte"\n'
                        '[[traffic]]\nfrom = "a"\ncount = 5\nvectors = 2\ndim = 64\ninterval = 1.0\n'
                        '[stop]\ntime = 60\nwhen = "delivered"\n')
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["sim", str(scenario), "--report", str(out / "r.json"), "--plot",
                                       str(out / "r.png"), "--capture", str(out / "cap"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "r.json").read_text())
    assert report["checks"]["all_delivered"] and report["stopped_by"] == "delivered"
    assert set(report["links"]) == {"a->b", "b->a"}
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    inspected = CliRunner().invoke(main, ["inspect", "--json", str(out / "cap" / "b.mncap")])
    kinds = [json.loads(line).get("kind") for line in inspected.output.splitlines() if line.startswith("{")]
    assert "vectors" in kinds and "hello" in kinds
    # the simulator leaves its mesh CA with the captures: with it, every signature checks out
    checked = CliRunner().invoke(main, ["inspect", "--summary", "--json", "--trust", str(out / "cap" / "ca.crt"),
                                        str(out / "cap" / "b.mncap")])
    assert checked.exit_code == 0, checked.output
    summary = json.loads(checked.stdout)["summary"]
    assert set(summary["signatures"]) <= {"valid", "unsigned"} and summary["signatures"]["valid"] > 0
    assert sorted(summary["names"].values()) == ["a", "b"]


def test_cli_sim_bad_scenario_exits_2_naming_the_key(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[[nodes]]\nname = "a"\n[topology]\nkind = "line"\nprofile = "lora"\n[stop]\ntime = -1\n')
    result = CliRunner().invoke(main, ["sim", str(scenario)])
    assert result.exit_code == 2 and "stop.time: must be > 0" in result.output
