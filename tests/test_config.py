"""node.toml: schema, defaults, error messages, the default file, and the docs table."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from meshnode import config as cfgm
from meshnode import identity as idm
from meshnode.config import ConfigError, Kind, PeerAddress
from meshnode.wire.limits import Limits

DOCS = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


def _load(tmp_path: Path, text: str, **kw) -> cfgm.Config:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return cfgm.load_config(p, check_files=kw.pop("check_files", False), **kw)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg  # one clear line
    return msg


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> idm.MeshCA:
    return idm.init_mesh(tmp_path_factory.mktemp("mesh"))


# ------------------------------------------------------------------------------------- defaults


def test_empty_file_gives_every_default(tmp_path: Path) -> None:
    c = _load(tmp_path, "")
    assert c.node.data_dir == (tmp_path / "data").resolve()
    assert (c.node.listen_host, c.node.listen_port, c.node.log_level) == ("0.0.0.0", 0, "info")
    assert c.node.name  # the host name, squeezed into the name alphabet
    assert c.identity.key == (tmp_path / "node.key").resolve()
    assert c.identity.cert == (tmp_path / "node.crt").resolve()
    assert c.identity.ca_cert == (tmp_path / "ca.crt").resolve()
    assert c.discovery.mdns is True and c.discovery.mdns_interfaces == () and c.discovery.static_peers == ()
    assert (c.discovery.reconnect_min, c.discovery.reconnect_max) == (0.5, 30.0)
    lim = c.limits
    assert (lim.max_peers, lim.send_queue, lim.peer_timeout, lim.ping_interval, lim.hop_limit, lim.dedup_cache) \
        == (64, 1024, 15.0, 5.0, 8, 65536)
    assert lim.wire == Limits()
    assert c.capture.file is None
    assert c.control.socket == c.node.data_dir / "control.sock"
    assert c.workers == ()
    assert c.source == tmp_path / "node.toml"


def test_every_schema_default_passes_its_own_check() -> None:
    for section, schema in [*cfgm.SCHEMA.items(), ("workers", cfgm.WORKER_SCHEMA)]:
        for key, s in schema.items():
            v = s.default_value()
            if v is None or s.check is None:
                continue
            for item in (v if s.kind is Kind.STR_LIST else [v]):
                assert s.check(item) is None, f"{section}.{key}"


def test_config_is_frozen(tmp_path: Path) -> None:
    c = _load(tmp_path, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.node.listen_port = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- values


def test_full_file(tmp_path: Path) -> None:
    c = _load(tmp_path, """
[node]
name = "gpu-1"
data_dir = "state"
listen_host = "127.0.0.1"
listen_port = 7400
log_level = "debug"
[identity]
key = "/etc/meshnode/node.key"
[discovery]
mdns = false
mdns_interfaces = ["127.0.0.1", "::1"]
static_peers = ["10.0.0.7:7400", "[2001:db8::7]:7401", "box.example.org:1"]
reconnect_min = 1
[limits]
max_peers = 16
peer_timeout = 20
max_frame = 2097152
reassembly_timeout = 5
[capture]
file = "cap.mncap"
[control]
socket = "/run/meshnode.sock"
[[workers]]
name = "hb"
type = "heartbeat"
[workers.settings]
interval = 10.0
nested = { a = [1, 2] }
[[workers]]
name = "t"
type = "trainer"
""")
    assert c.node.name == "gpu-1" and c.node.listen_port == 7400 and c.node.log_level == "debug"
    assert c.node.data_dir == (tmp_path / "state").resolve()
    assert c.identity.key == Path("/etc/meshnode/node.key")
    assert c.discovery.static_peers == (PeerAddress("10.0.0.7", 7400), PeerAddress("2001:db8::7", 7401),
                                        PeerAddress("box.example.org", 1))
    assert str(c.discovery.static_peers[1]) == "[2001:db8::7]:7401"
    assert c.discovery.reconnect_min == 1.0 and isinstance(c.discovery.reconnect_min, float)
    assert c.discovery.mdns_interfaces == ("127.0.0.1", "::1")
    assert c.limits.max_peers == 16 and c.limits.peer_timeout == 20.0
    assert c.limits.wire.max_frame == 2097152 and c.limits.wire.reassembly_timeout == 5.0
    assert c.capture.file == c.node.data_dir / "cap.mncap"
    assert c.control.socket == Path("/run/meshnode.sock")
    assert [(w.name, w.type) for w in c.workers] == [("hb", "heartbeat"), ("t", "trainer")]
    assert c.workers[0].settings == {"interval": 10.0, "nested": {"a": [1, 2]}}
    assert c.workers[1].settings == {}
    with pytest.raises(TypeError):
        c.workers[0].settings["interval"] = 1  # type: ignore[index]


# ---------------------------------------------------------------------------------------- errors


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    msg = _error(tmp_path, '[limits]\nmax_peers = "many"\n')
    assert msg.startswith("limits.max_peers: expected int, got str")
    assert str(tmp_path / "node.toml") in msg


def test_every_key_refuses_a_wrong_type(tmp_path: Path) -> None:
    # Data-driven over the whole schema: a value of the wrong kind is refused naming the key.
    wrong = {Kind.BOOL: 1, Kind.INT: "1", Kind.FLOAT: "1.0", Kind.STR: 1, Kind.STR_LIST: "x",
             Kind.TABLE: 1, Kind.PATH: 1, Kind.DATA_PATH: [], Kind.OPT_DATA_PATH: False}
    for section, schema in cfgm.SCHEMA.items():
        for key, s in schema.items():
            with pytest.raises(ConfigError) as e:
                cfgm.parse_config({section: {key: wrong[s.kind]}}, base_dir=tmp_path)
            assert e.value.key == f"{section}.{key}" and "expected" in e.value.problem


def test_bool_is_not_an_int_but_an_int_is_a_float(tmp_path: Path) -> None:
    assert _error(tmp_path, "[limits]\nmax_peers = true\n").startswith("limits.max_peers: expected int, got bool")
    assert _load(tmp_path, "[limits]\npeer_timeout = 30\n").limits.peer_timeout == 30.0
    assert _error(tmp_path, "[limits]\npeer_timeout = nan\n").startswith("limits.peer_timeout: expected a finite")


def test_unknown_keys_and_sections(tmp_path: Path) -> None:
    assert _error(tmp_path, "[limits]\nmax_peer = 3\n").startswith(
        "limits.max_peer: unknown key (did you mean max_peers?)")
    assert _error(tmp_path, "[limit]\nmax_peers = 3\n").startswith("limit: unknown section (did you mean [limits]?)")
    assert _error(tmp_path, 'name = "x"\n').startswith("name: unknown section")
    assert _error(tmp_path, "limits = 3\n").startswith("limits: expected table, got int")


@pytest.mark.parametrize("port", [-1, 65536, 100000])
def test_bad_port(tmp_path: Path, port: int) -> None:
    assert _error(tmp_path, f"[node]\nlisten_port = {port}\n").startswith(
        f"node.listen_port: must be in 0..65535, got {port}")


@pytest.mark.parametrize("peer", ["nohost", "host:0", "host:65536", ":7400", "[zz::]:1", "a b:1", "::1:7400",
                                  "host:port", "10.0.0.1:"])
def test_malformed_static_peer(tmp_path: Path, peer: str) -> None:
    msg = _error(tmp_path, f'[discovery]\nstatic_peers = ["10.0.0.1:1", {peer!r}]\n'.replace("'", '"'))
    assert msg.startswith("discovery.static_peers[1]: ")


def test_other_value_checks(tmp_path: Path) -> None:
    cases = {
        '[node]\nlog_level = "loud"\n': "node.log_level: must be one of debug, info",
        '[node]\nname = "bad name"\n': "node.name: 'bad name' must be",
        '[discovery]\nmdns_interfaces = ["eth0"]\n': "discovery.mdns_interfaces[0]: 'eth0' is not an IP address",
        "[discovery]\nstatic_peers = [1]\n": "discovery.static_peers[0]: expected str, got int",
        "[limits]\nhop_limit = 0\n": "limits.hop_limit: must be in 1..255",
        "[limits]\nmax_peers = 0\n": "limits.max_peers: must be > 0",
        "[limits]\nping_interval = 20.0\n": "limits.ping_interval: must be below peer_timeout",
        "[limits]\nsend_queue_bytes = 1000\n": "limits.send_queue_bytes: must be >= max_frame",
        "[limits]\nfragment_size = 1048576\n": "limits: fragment_size must leave room",
        "[discovery]\nreconnect_min = 60.0\n": "discovery.reconnect_max: must be >= reconnect_min",
        f'[control]\nsocket = "/{"x" * 120}.sock"\n': "control.socket: ",
        "workers = 3\n": "workers: expected array of tables",
        '[[workers]]\ntype = "t"\n': "workers[0].name: required",
        '[[workers]]\nname = "a"\ntype = "t"\nnmae = "b"\n': "workers[0].nmae: unknown key (did you mean name?)",
        '[[workers]]\nname = "a"\ntype = "t"\n[[workers]]\nname = "a"\ntype = "u"\n':
            "workers[1].name: duplicate worker name 'a'",
        '[[workers]]\nname = "a"\ntype = "t"\nsettings = 3\n': "workers[0].settings: expected table, got int",
    }
    for text, start in cases.items():
        msg = _error(tmp_path, text)
        assert msg.startswith(start), (text, msg)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        cfgm.load_config(tmp_path / "absent.toml")
    assert "not valid TOML" in _error(tmp_path, "[node\n")


def test_missing_identity_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, '[identity]\nkey = "node.key"\n', check_files=True)
    assert str(e.value).startswith(f"identity.key: file not found: {(tmp_path / 'node.key').resolve()}")


@pytest.mark.parametrize("text", ["", "\n# truncated\n", "[node]\nname = \"n1\"\n", "[identity]\n"])
def test_the_daemon_refuses_a_config_without_an_identity(tmp_path: Path, mesh: idm.MeshCA, text: str) -> None:
    # Issue 16 item 10: an empty node.toml used to run on every default (0.0.0.0, mDNS on), as whatever
    # key lay beside it. The identity files are there here, so only the missing [identity] table stops it.
    idm.init_node(tmp_path, mesh, "n1")
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text, check_files=True)
    msg = str(e.value)
    assert msg.startswith("identity: no [identity] configured") and "meshnode node init" in msg
    assert "\n" not in msg and str(tmp_path / "node.toml") in msg
    # Tools that only read settings (status, peers: the socket path) still accept it.
    assert _load(tmp_path, text).control.socket.name == "control.sock"
    # With the table, the same files run.
    assert _load(tmp_path, text.replace("[identity]\n", "") + '[identity]\nkey = "node.key"\n',
                 check_files=True).identity.key == (tmp_path / "node.key").resolve()


# ------------------------------------------------------------------------------------- paths


def test_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    c = _load(sub, '[node]\ndata_dir = "../var"\n[capture]\nfile = "c.mncap"\n[identity]\nca_cert = "~/x.crt"\n')
    assert c.node.data_dir == (tmp_path / "var").resolve()
    assert c.capture.file == (tmp_path / "var" / "c.mncap").resolve()
    assert c.control.socket == (tmp_path / "var" / "control.sock").resolve()
    assert c.identity.ca_cert == Path("~/x.crt").expanduser().resolve()


# -------------------------------------------------------------------------------- default file


def test_default_config_runs_as_is_for_several_nodes(tmp_path: Path, mesh: idm.MeshCA) -> None:
    loaded = []
    for name in ("n1", "n2"):
        d = tmp_path / name
        idm.init_node(d, mesh, name)
        path = cfgm.write_default_config(d / "node.toml", name=name)
        c = cfgm.load_config(path)  # check_files: the identity written by init_node is found
        loaded.append(c)
        assert c.node.name == name and c.node.listen_port == 0 and c.discovery.mdns
        assert c.node.data_dir == (d / "data").resolve()
        assert c.identity.key == (d / "node.key").resolve()
        assert idm.load_node_identity(c.identity.key, c.identity.cert, c.identity.ca_cert).name == name
        # Same settings as an empty file apart from what it sets: the commented defaults are the defaults.
        plain = cfgm.parse_config({"node": {"name": name}}, base_dir=d, source=path)
        assert c == plain
    assert loaded[0].control.socket != loaded[1].control.socket


def test_default_config_lists_every_key(tmp_path: Path) -> None:
    text = cfgm.default_config_text("n1", static_peers=["10.0.0.1:7400"], listen_port=7400)
    for section, schema in cfgm.SCHEMA.items():
        assert f"[{section}]" in text
        for key in schema:
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key}"
    # Uncommenting every setting gives a valid file with the same meaning (the worker example aside).
    settings, _, workers_example = text.partition("# Workers:")
    uncommented = "\n".join(line[2:] if line.startswith("# ") and " = " in line else line
                             for line in settings.splitlines())
    assert cfgm.parse_config(tomllib.loads(uncommented), base_dir=tmp_path) == \
        cfgm.parse_config(tomllib.loads(text), base_dir=tmp_path)
    example = "\n".join(line[2:] for line in workers_example.splitlines()[1:] if line.startswith("# "))
    assert cfgm.parse_config(tomllib.loads(example), base_dir=tmp_path).workers[0].settings == {"interval": 10.0}


def test_write_default_config_refuses_overwrite_and_bad_values(tmp_path: Path) -> None:
    p = cfgm.write_default_config(tmp_path / "node.toml", name="n1")
    with pytest.raises(ConfigError, match="already exists"):
        cfgm.write_default_config(p, name="n2")
    assert cfgm.load_config(p, check_files=False).node.name == "n1"
    cfgm.write_default_config(p, name="n2", force=True)
    assert cfgm.load_config(p, check_files=False).node.name == "n2"
    with pytest.raises(ConfigError, match="discovery.static_peers"):
        cfgm.write_default_config(tmp_path / "x.toml", name="n3", static_peers=["nope"])
    assert not (tmp_path / "x.toml").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["node.toml"]


# ------------------------------------------------------------------------------------------ docs


def test_docs_reference_is_generated_from_the_schema() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert cfgm.render_reference() in text, "run: .venv/bin/python -m meshnode.config docs/CONFIG.md"
    for section, schema in cfgm.SCHEMA.items():
        for key in schema:
            assert f"`{section}.{key}`" in text


# ------------------------------------------------------------------------------------ mDNS plan


def _plan(tmp_path: Path, host: str, interfaces: list[str], mdns: bool = True) -> cfgm.MdnsPlan:
    ifs = ", ".join(f'"{a}"' for a in interfaces)
    return cfgm.mdns_plan(_load(tmp_path, f'[node]\nlisten_host = "{host}"\n'
                                          f'[discovery]\nmdns = {str(mdns).lower()}\nmdns_interfaces = [{ifs}]\n'))


def test_mdns_advertises_what_the_node_listens_on(tmp_path: Path) -> None:
    # the default: every interface, the host's LAN addresses
    assert _plan(tmp_path, "0.0.0.0", []) == cfgm.MdnsPlan((), None, None)
    # one address: only that one is advertised (peers dialling another would find nobody)
    assert _plan(tmp_path, "192.168.1.5", []) == cfgm.MdnsPlan((), ("192.168.1.5",), None)
    # a one-machine mesh said explicitly: no warning
    assert _plan(tmp_path, "127.0.0.1", ["127.0.0.1"]) == cfgm.MdnsPlan(("127.0.0.1",), ("127.0.0.1",), None)
    # mDNS off: nothing to say
    assert _plan(tmp_path, "127.0.0.1", [], mdns=False).warning is None


def test_loopback_listen_host_keeps_mdns_on_loopback_and_warns(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "127.0.0.1", [])
    assert plan.interfaces == ("127.0.0.1",) and plan.addresses == ("127.0.0.1",)
    assert plan.warning is not None and "\n" not in plan.warning
    assert "only nodes on this machine" in plan.warning and 'listen_host = "0.0.0.0"' in plan.warning
    # asked to advertise on the LAN while listening on loopback: kept as asked, and said to be unreachable
    plan = _plan(tmp_path, "127.0.0.1", ["10.0.0.5"])
    assert plan.interfaces == ("10.0.0.5",) and plan.addresses is None
    assert plan.warning is not None and "10.0.0.5" in plan.warning and "cannot connect" in plan.warning


def test_run_and_check_refuse_an_empty_config_with_one_line_and_exit_2(tmp_path: Path, mesh: idm.MeshCA) -> None:
    from click.testing import CliRunner

    from meshnode.cli import main

    idm.init_node(tmp_path, mesh, "n1")          # a usable key beside the file: still refused
    (tmp_path / "node.toml").write_text("")
    for command in ("run", "check"):
        r = CliRunner().invoke(main, [command, "--config", str(tmp_path / "node.toml")])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert lines[0].startswith("error: identity: no [identity] configured"), lines[0]
