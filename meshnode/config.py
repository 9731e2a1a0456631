"""The daemon's configuration file (TOML) as typed, frozen dataclasses.

The schema is data: `SCHEMA` maps every section and key to a `Setting` (kind, default, check,
meaning). Parsing, the error messages, the default file written by `node init` and the reference
table in docs/CONFIG.md are all derived from it, so they cannot drift apart.

Paths: `node.data_dir` and the `[identity]` files (things the operator provides) resolve against the
directory of the config file; `capture.file` and `control.socket` (things the daemon writes) resolve
against `node.data_dir`. Absolute paths are kept as they are.

Every problem is a `ConfigError` whose message starts with the full key path, e.g.
`limits.max_peers: expected int, got str`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .atomic import write_atomic
from .identity import CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE
from .wire.limits import Limits

__all__ = [
    "CONFIG_FILE",
    "SCHEMA",
    "WORKER_SCHEMA",
    "CaptureConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DiscoveryConfig",
    "IdentityConfig",
    "Kind",
    "LimitsConfig",
    "MdnsPlan",
    "NodeConfig",
    "PeerAddress",
    "Setting",
    "WorkerConfig",
    "default_config_text",
    "load_config",
    "mdns_plan",
    "parse_config",
    "parse_peer_address",
    "render_reference",
    "toml_value",
    "workers_toml",
    "write_default_config",
]

CONFIG_FILE = "node.toml"
# sun_path in struct sockaddr_un is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107


class ConfigError(ValueError):
    """A config file that cannot be used; `key` is the full key path ("" for the file as a whole)."""

    def __init__(self, key: str, problem: str, *, source: Path | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        text = f"{key}: {problem}" if key else problem
        if source is not None:
            text += f" (in {source})"
        super().__init__(text)


# ------------------------------------------------------------------------------------ the schema


class Kind(Enum):
    """The value kinds a setting can have. The value is what docs call it; `label` is what an error
    message says was expected."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "str"
    STR_LIST = "list of str"
    TABLE = "table"
    PATH = "path (from config dir)"
    DATA_PATH = "path (from data_dir)"
    OPT_DATA_PATH = "path (from data_dir; \"\" = off)"

    @property
    def label(self) -> str:
        return "str (a path)" if self.name.endswith("PATH") else self.value


Check = Callable[[Any], str | None]  # returns a problem description, or None when the value is fine


@dataclass(frozen=True)
class Setting:
    kind: Kind
    default: Any
    doc: str
    check: Check | None = None         # applied to the value (to each element for STR_LIST)
    default_doc: str | None = None     # how docs show a computed default
    convert: Callable[[Any], Any] | None = None  # turns a checked value into its typed form

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def shown_default(self) -> str:
        return self.default_doc if self.default_doc is not None else toml_value(self.default)


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _in_range(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be in {lo}..{hi}, got {v}"
    return check


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"
    return check


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name(v: str) -> str | None:
    if _NAME_RE.fullmatch(v):
        return None
    return f"{v!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def _host(v: str) -> str | None:
    if not v or any(c.isspace() for c in v):
        return f"{v!r} is not a host name or address"
    return None


def _ip(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"{v!r} is not an IP address (give the address of the interface, e.g. \"192.168.1.5\")"
    return None


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_PEER_RE = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})")


def parse_peer_address(text: str) -> PeerAddress:
    """"host:port" or "[ipv6]:port" -> PeerAddress; ValueError with the reason otherwise."""
    m = _PEER_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not \"host:port\" (IPv6 as \"[addr]:port\")")
    host = m["v6"] or m["host"]
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            raise ValueError(f"{text!r}: {m['v6']!r} is not an IPv6 address") from None
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be in 1..65535")
    return PeerAddress(host, port)


def _peer(v: str) -> str | None:
    try:
        parse_peer_address(v)
    except ValueError as e:
        return str(e)
    return None


def _default_name() -> str:
    # The host name is the natural default; squeeze it into the name alphabet so it always passes.
    base = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip(".-_")[:64]
    return base if base and _NAME_RE.fullmatch(base) else "meshnode"


# Meanings of the wire/ limits (their defaults and types come from wire.limits.Limits itself, so a
# change there is picked up here; a field without an entry still works, and the docs test notices).
_WIRE_LIMIT_DOCS: dict[str, str] = {
    "max_frame": "Largest stream frame (one encoded packet or fragment) accepted or sent, bytes.",
    "max_body": "Largest packet body after reassembly, bytes.",
    "max_dim": "Largest vector dimension (trits) accepted.",
    "max_count": "Most vectors in one vector block.",
    "max_trits": "Most elements (count x dim) in one vector block or tensor.",
    "max_fragments": "Most fragments one packet may be split into.",
    "fragment_size": "Bytes of packet carried by one fragment; must leave room for the fragment header "
                     "inside max_frame.",
    "reassembly_cap": "Bytes held by all incomplete fragment sets of all links together; one origin may hold "
                      "at most a quarter of it, so a packet larger than reassembly_cap / 4 cannot be received.",
    "reassembly_timeout": "Seconds an incomplete fragment set waits for its missing pieces.",
    "max_collection": "Most entries in one msgpack array or map of a packet body.",
    "max_str": "Longest msgpack string in a packet body, bytes.",
    "max_depth": "Deepest msgpack nesting in a packet body.",
}


def _wire_limit_settings() -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for f in dataclasses.fields(Limits):
        default = f.default
        kind = Kind.FLOAT if isinstance(default, float) else Kind.INT
        doc = _WIRE_LIMIT_DOCS.get(f.name, "A wire-layer bound; see meshnode/wire/limits.py.")
        out[f.name] = Setting(kind, default, doc, _positive)
    return out


SCHEMA: dict[str, dict[str, Setting]] = {
    "node": {
        "name": Setting(Kind.STR, _default_name, "Human-readable node name, shown in logs and "
                        "`meshnode peers`. Peers see the name in this node's certificate.", _name,
                        default_doc="the host name"),
        "data_dir": Setting(Kind.PATH, "data", "Directory for state, the control socket and captures "
                            "(created on start).", _non_empty),
        "listen_host": Setting(Kind.STR, "0.0.0.0", "Address to accept peers on (\"::\" for IPv6, "
                               "\"127.0.0.1\" for this machine only; mDNS advertises this address when it "
                               "is a single one, and stays on loopback with a loopback address).", _host),
        "listen_port": Setting(Kind.INT, 0, "TCP port to accept peers on; 0 picks a free port (mDNS "
                               "advertises whichever it gets).", _in_range(0, 65535)),
        "log_level": Setting(Kind.STR, "info", "One of debug, info, warning, error, critical.",
                             _one_of("debug", "info", "warning", "error", "critical")),
    },
    "identity": {
        "key": Setting(Kind.PATH, NODE_KEY_FILE, "This node's Ed25519 private key (PEM). "
                       "Refused unless only its owner may access it (mode 0600 or 0400), as OpenSSH does."),
        "cert": Setting(Kind.PATH, NODE_CERT_FILE, "This node's certificate, signed by the mesh CA."),
        "ca_cert": Setting(Kind.PATH, CA_CERT_FILE, "The mesh CA certificate: the only trust anchor."),
    },
    "discovery": {
        "mdns": Setting(Kind.BOOL, True, "Advertise and browse `_meshnode._tcp.local.` on the LAN."),
        "mdns_interfaces": Setting(Kind.STR_LIST, [], "IP addresses of the interfaces mDNS uses; empty "
                                   "means all.", _ip),
        "static_peers": Setting(Kind.STR_LIST, [], "Peers to dial beyond the LAN, as \"host:port\" "
                                "(IPv6 as \"[addr]:port\").", _peer,
                                convert=lambda peers: tuple(parse_peer_address(p) for p in peers)),
        "peer_exchange": Setting(Kind.BOOL, True, "Dial members whose addresses peers tell us about (with the "
                                 "overlay on, while fewer than `limits.overlay_degree` links are open), so one static "
                                 "peer is enough to join a mesh beyond the LAN."),
        "reconnect_min": Setting(Kind.FLOAT, 0.5, "First delay before redialling a lost peer, seconds "
                                 "(doubles per failure).", _positive),
        "reconnect_max": Setting(Kind.FLOAT, 30.0, "Longest delay between redials, seconds.", _positive),
    },
    "limits": {
        "max_peers": Setting(Kind.INT, 64, "Most simultaneous peer links; further dials and accepts are "
                             "refused.", _positive),
        "send_queue": Setting(Kind.INT, 1024, "Most packets queued for sending to one peer.", _positive),
        "send_queue_bytes": Setting(Kind.INT, 8 << 20, "Most bytes queued for sending to one peer "
                                    "(worst-case memory for all queues: max_peers x this).", _positive),
        "peer_timeout": Setting(Kind.FLOAT, 15.0, "Seconds without any frame from a peer before its link is "
                                "closed.", _positive),
        "ping_interval": Setting(Kind.FLOAT, 5.0, "Seconds between pings on an idle link; must be below "
                                 "peer_timeout.", _positive),
        "hop_limit": Setting(Kind.INT, 8, "Hop limit given to packets this node originates (relays "
                             "decrement it).", _in_range(1, 255)),
        "dedup_cache": Setting(Kind.INT, 65536, "Packet ids remembered to drop duplicates and replays.",
                               _positive),
        "dedup_window": Setting(Kind.FLOAT, 300.0, "Seconds a packet id is remembered, by the packet's own "
                                "timestamp; older packets are dropped as stale replays. The ids seen are kept in "
                                "`replay.journal` in the data directory, so a restart refuses replays too. "
                                "Clocks of the mesh must agree to well within this.",
                                _positive),
        "clock_skew": Setting(Kind.FLOAT, 30.0, "Seconds a packet's timestamp may be ahead of this node's clock; "
                              "packets stamped further ahead are dropped (`dropped.future`): an id stamped ahead "
                              "is remembered that much longer, so a member could otherwise fill the replay cache "
                              "with ids that never age. Keep clocks in sync (NTP) to well within this.",
                              _positive),
        "max_handshakes": Setting(Kind.INT, 64, "TLS handshakes in progress at once, all sources together; past "
                                  "half of it new connections are dropped at random (`refused.early_drop`), at "
                                  "it all are (`refused.busy`).", _positive),
        "max_handshakes_per_source": Setting(Kind.INT, 8, "TLS handshakes in progress from one IPv4 address or "
                                             "IPv6 /64 (`refused.busy_source`); raise it for many nodes behind "
                                             "one NAT that dial this node at once.", _positive),
        "silent_timeout": Setting(Kind.FLOAT, 3.0, "Seconds a new connection may stay silent before it is closed "
                                  "(`refused.silent`); the whole handshake has 10 s.", _positive),
        "overlay": Setting(Kind.BOOL, True, "Gossip over a bounded-degree overlay: packets are pushed on "
                           "`overlay_degree` links and announced by id on the others, which pull what they miss; "
                           "static peers and mDNS results are candidates, dialled until `overlay_degree` links are "
                           "open. false: every packet goes to every link and every candidate is dialled (the "
                           "behaviour before the overlay, for comparison).",),
        "overlay_degree": Setting(Kind.INT, 6, "Links that carry packets eagerly (kept between degree - 2 and "
                                  "2 x degree), and links this node dials on its own.", _in_range(1, 64)),
        "message_cache_bytes": Setting(Kind.INT, 64 << 20, "Bytes of recent packets kept to give again: to a "
                                       "peer that asks for one it missed, to a link that opens after a partition "
                                       "or a restart, to a link whose queue was full. A quarter at most per "
                                       "origin; packets older than `dedup_window` are dropped.", _positive),
        "member_ttl": Setting(Kind.FLOAT, 3600.0, "Seconds a member this node has no link to may go unseen (no "
                              "verified packet, no newer hello) before it is forgotten.", _positive),
        "origin_rate": Setting(Kind.FLOAT, 50.0, "Packets per second this node relays for any one origin (bursts "
                               "of 2 s worth); more are delivered here but not relayed (`dropped.rate_limited`), "
                               "so one member's flood stops at the first hop and cannot starve the others.", _positive),
        "origin_rate_bytes": Setting(Kind.INT, 32 << 20, "Bytes per second this node relays for "
                                     "any one origin (bursts of 2 s worth; a single larger packet passes when "
                                     "the burst is full).", _positive),
        "max_members": Setting(Kind.INT, 4096, "Most mesh members whose keys this node holds (learned from "
                               "hellos, directly or relayed); hellos of further nodes are refused.", _positive),
        **_wire_limit_settings(),
    },
    "capture": {
        "file": Setting(Kind.OPT_DATA_PATH, "", "Record every packet sent or received to this capture "
                        "file (read with `meshnode inspect`); empty means off."),
    },
    "control": {
        "socket": Setting(Kind.DATA_PATH, "control.sock", "Unix socket of the local control API "
                          "(`meshnode status`, `meshnode peers`).", _non_empty),
    },
}

WORKER_SCHEMA: dict[str, Setting] = {
    "name": Setting(Kind.STR, None, "Unique name of this worker instance (required).", _name,
                    default_doc="required"),
    "type": Setting(Kind.STR, None, "Worker type, e.g. \"trainer\" or \"transfer\" (required).", _non_empty,
                    default_doc="required"),
    "settings": Setting(Kind.TABLE, {}, "Free-form settings for this worker; the worker checks them."),
}


# ------------------------------------------------------------------------------- the dataclasses


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    listen_host: str
    listen_port: int
    log_level: str


@dataclass(frozen=True)
class IdentityConfig:
    key: Path
    cert: Path
    ca_cert: Path


@dataclass(frozen=True)
class DiscoveryConfig:
    mdns: bool
    mdns_interfaces: tuple[str, ...]
    static_peers: tuple[PeerAddress, ...]
    peer_exchange: bool
    reconnect_min: float
    reconnect_max: float


@dataclass(frozen=True)
class LimitsConfig:
    max_peers: int
    send_queue: int
    send_queue_bytes: int
    peer_timeout: float
    ping_interval: float
    hop_limit: int
    dedup_cache: int
    dedup_window: float
    clock_skew: float
    max_handshakes: int
    max_handshakes_per_source: int
    silent_timeout: float
    overlay: bool
    overlay_degree: int
    message_cache_bytes: int
    member_ttl: float
    origin_rate: float
    origin_rate_bytes: int
    max_members: int
    wire: Limits  # the [limits] keys named after wire.limits.Limits fields, as one object for wire/


@dataclass(frozen=True)
class CaptureConfig:
    file: Path | None


@dataclass(frozen=True)
class ControlConfig:
    socket: Path


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    type: str
    settings: Mapping[str, Any]  # read-only view; nested tables stay plain dicts (copied on parse)


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    identity: IdentityConfig
    discovery: DiscoveryConfig
    limits: LimitsConfig
    capture: CaptureConfig
    control: ControlConfig
    workers: tuple[WorkerConfig, ...]
    source: Path | None = None  # the file it came from


_SECTION_CLASSES: dict[str, type] = {
    "node": NodeConfig, "identity": IdentityConfig, "discovery": DiscoveryConfig, "limits": LimitsConfig,
    "capture": CaptureConfig, "control": ControlConfig,
}


def _check_schema_matches_classes() -> None:
    # Catches a key added to SCHEMA but not to its dataclass (or the reverse) at import time.
    wire = {f.name for f in dataclasses.fields(Limits)}
    for section, cls in _SECTION_CLASSES.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"wire"}
        keys = set(SCHEMA[section]) - (wire if section == "limits" else set())
        assert fields == keys, f"config schema and {cls.__name__} disagree: {sorted(fields ^ keys)}"
    assert {f.name for f in dataclasses.fields(WorkerConfig)} == set(WORKER_SCHEMA)


_check_schema_matches_classes()


# -------------------------------------------------------------------------------------- parsing


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list):
        return "list"
    return type(v).__name__


def _unknown(key: str, known: Any, source: Path | None) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(key, "unknown key" + hint, source=source)


class _Parser:
    def __init__(self, base_dir: Path, source: Path | None) -> None:
        self.base_dir = base_dir
        self.source = source
        self.data_dir = base_dir

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(key, problem, source=self.source)

    def value(self, key: str, s: Setting, raw: Any) -> Any:
        """Type-check, check and convert one value."""
        k = s.kind
        if k is Kind.BOOL:
            ok = isinstance(raw, bool)
        elif k is Kind.INT:
            ok = isinstance(raw, int) and not isinstance(raw, bool)
        elif k is Kind.FLOAT:
            ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
            if ok:
                raw = float(raw)  # `peer_timeout = 15` is fine
                if not math.isfinite(raw):
                    raise self.error(key, f"expected a finite float, got {raw}")
        elif k is Kind.STR_LIST:
            ok = isinstance(raw, list)
            if ok:
                for i, item in enumerate(raw):
                    if not isinstance(item, str):
                        raise self.error(f"{key}[{i}]", f"expected str, got {_type_name(item)}")
        elif k is Kind.TABLE:
            ok = isinstance(raw, dict)
        else:  # STR and the path kinds
            ok = isinstance(raw, str)
        if not ok:
            raise self.error(key, f"expected {k.label}, got {_type_name(raw)}")
        if s.check is not None:
            items = list(enumerate(raw)) if k is Kind.STR_LIST else [(None, raw)]
            for i, item in items:
                problem = s.check(item)
                if problem:
                    raise self.error(key if i is None else f"{key}[{i}]", problem)
        return self.convert(s, raw)

    def convert(self, s: Setting, v: Any) -> Any:
        if s.kind is Kind.PATH:
            return (self.base_dir / os.path.expanduser(v)).resolve()
        if s.kind is Kind.DATA_PATH:
            return (self.data_dir / os.path.expanduser(v)).resolve()
        if s.kind is Kind.OPT_DATA_PATH:
            return (self.data_dir / os.path.expanduser(v)).resolve() if v else None
        if s.kind is Kind.STR_LIST:
            v = tuple(v)
        elif s.kind is Kind.TABLE:
            v = MappingProxyType(copy.deepcopy(v))  # detached from the parsed document
        return s.convert(v) if s.convert is not None else v

    def table(self, prefix: str, schema: Mapping[str, Setting], raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(prefix, f"expected table, got {_type_name(raw)}")
        for key in raw:
            if key not in schema:
                raise _unknown(f"{prefix}.{key}", schema, self.source)
        out: dict[str, Any] = {}
        for key, s in schema.items():
            path = f"{prefix}.{key}"
            if key in raw:
                out[key] = self.value(path, s, raw[key])
            elif s.default is None:
                raise self.error(path, "required")
            else:
                out[key] = self.convert(s, s.default_value())
            if prefix == "node" and key == "data_dir":
                self.data_dir = out[key]  # later sections resolve their data paths against it
        return out


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: str | os.PathLike[str],
    source: Path | None = None,
    check_files: bool = False,
) -> Config:
    """Check a parsed TOML document against SCHEMA and build the Config.

    `check_files` is what the daemon (and `meshnode check`) ask for: the file must configure an
    identity (a non-empty [identity] table) and the identity files must exist. Tools that only read
    settings (`meshnode status` finding the control socket) do not ask for it.
    """
    p = _Parser(Path(base_dir).resolve(), source)
    if check_files and data.get("identity", {}) == {}:
        # An empty or truncated node.toml would otherwise run on every default: listening on 0.0.0.0
        # with mDNS on, as whatever key happens to lie beside it. Starting a daemon is a decision the
        # file must show; `meshnode node init` writes the [identity] table for it.
        raise p.error("identity", "no [identity] configured; the daemon will not start on defaults "
                                  "(run `meshnode node init DIR --mesh MESH_DIR --name NAME`, which writes a "
                                  "complete node.toml)")
    for section in data:
        if section not in SCHEMA and section != "workers":
            known = [*SCHEMA, "workers"]
            close = difflib.get_close_matches(section, known, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else f" (sections: {', '.join(known)})"
            raise p.error(section, "unknown section" + hint)
    values = {name: p.table(name, schema, data.get(name, {})) for name, schema in SCHEMA.items()}

    lim = values["limits"]
    wire_names = [f.name for f in dataclasses.fields(Limits)]
    try:
        wire = Limits(**{n: lim.pop(n) for n in wire_names})
    except ValueError as e:
        raise p.error("limits", str(e)) from None
    sections = {name: _SECTION_CLASSES[name](**v) for name, v in values.items() if name != "limits"}
    limits = LimitsConfig(**lim, wire=wire)

    raw_workers = data.get("workers", [])
    if not isinstance(raw_workers, list):
        raise p.error("workers", f"expected array of tables ([[workers]]), got {_type_name(raw_workers)}")
    workers: list[WorkerConfig] = []
    seen: set[str] = set()
    for i, w in enumerate(raw_workers):
        wv = p.table(f"workers[{i}]", WORKER_SCHEMA, w)
        if wv["name"] in seen:
            raise p.error(f"workers[{i}].name", f"duplicate worker name {wv['name']!r}")
        seen.add(wv["name"])
        workers.append(WorkerConfig(**wv))

    cfg = Config(limits=limits, workers=tuple(workers), source=source, **sections)
    for key, rule in _RULES:
        problem = rule(cfg)
        if problem:
            raise p.error(key, problem)
    if check_files:
        for key in ("key", "cert", "ca_cert"):
            path: Path = getattr(cfg.identity, key)
            if not path.is_file():
                what = "not a file" if path.exists() else "file not found"
                raise p.error(f"identity.{key}", f"{what}: {path} (run `meshnode node init`?)")
    return cfg


# Rules that involve more than one key: (key reported, check on the whole config).
_RULES: list[tuple[str, Callable[[Config], str | None]]] = [
    ("discovery.reconnect_max", lambda c: None if c.discovery.reconnect_max >= c.discovery.reconnect_min
     else f"must be >= reconnect_min ({c.discovery.reconnect_min})"),
    ("limits.ping_interval", lambda c: None if c.limits.ping_interval < c.limits.peer_timeout
     else f"must be below peer_timeout ({c.limits.peer_timeout}), or idle links would time out"),
    ("limits.send_queue_bytes", lambda c: None if c.limits.send_queue_bytes >= c.limits.wire.max_frame
     else f"must be >= max_frame ({c.limits.wire.max_frame}), or a full-size packet could never be sent"),
    ("control.socket", lambda c: None if len(os.fsencode(c.control.socket)) <= _MAX_UNIX_SOCKET_PATH
     else f"{c.control.socket} is longer than the {_MAX_UNIX_SOCKET_PATH} bytes a unix socket path may "
          "have; use a shorter data_dir or an absolute socket path"),
]


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read and check a node.toml. Relative paths resolve against its directory."""
    p = Path(path).absolute()
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError("", f"{p}: is a directory, expected a config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{p}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{p}: not UTF-8 text: {e}") from None
    return parse_config(data, base_dir=p.parent, source=p, check_files=check_files)


@dataclass(frozen=True)
class MdnsPlan:
    """Where mDNS runs and what it advertises, given where the node listens."""

    interfaces: tuple[str, ...]          # addresses of the interfaces mDNS uses; empty: all
    addresses: tuple[str, ...] | None    # what to advertise; None: the interfaces', else the host's LAN addresses
    warning: str | None                  # one line for the operator, when this is likely not what was meant


def mdns_plan(config: Config) -> MdnsPlan:
    """mDNS tells peers where to dial, so it must advertise an address the node listens on.

    - listen_host a wildcard ("0.0.0.0", "::") or a host name: as configured.
    - a single non-loopback address: that address alone is advertised.
    - a loopback address and no `mdns_interfaces`: mDNS runs on that loopback address only. Nodes on this
      machine find each other; the LAN is not told of an address it cannot reach. Warned about, because
      the LAN then never sees this node; `mdns_interfaces = [<that address>]` says it is meant.
    - a loopback address and non-loopback `mdns_interfaces`: as configured (it was asked for), warned
      about, since the peers that find this node cannot connect to it.
    """
    disc, host = config.discovery, config.node.listen_host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if not disc.mdns or ip is None or ip.is_unspecified:
        return MdnsPlan(disc.mdns_interfaces, None, None)
    if not ip.is_loopback:
        return MdnsPlan(disc.mdns_interfaces, (host,), None)
    if not disc.mdns_interfaces:
        return MdnsPlan((host,), (host,), (
            f"node.listen_host {host} is a loopback address: mDNS advertises and browses on {host} only, so only "
            f"nodes on this machine can find this one (listen_host = \"0.0.0.0\" joins the LAN; "
            f"discovery.mdns_interfaces = [\"{host}\"] says a one-machine mesh is meant)"))
    elsewhere = [a for a in disc.mdns_interfaces
                 if not (ipaddress.ip_address(a).is_loopback and ipaddress.ip_address(a).version == ip.version)]
    if not elsewhere:
        return MdnsPlan(disc.mdns_interfaces, (host,), None)
    return MdnsPlan(disc.mdns_interfaces, None, (
        f"node.listen_host {host} is a loopback address but mDNS advertises {', '.join(elsewhere)} "
        f"(discovery.mdns_interfaces): peers that find this node cannot connect to it; set listen_host = "
        f"\"0.0.0.0\", or mdns_interfaces = [\"{host}\"] for nodes on this machine only"))


# ----------------------------------------------------------------------- writing and documenting


def toml_value(v: Any) -> str:
    """`v` as a TOML value (bool, number, string, list, inline table)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}" if not v else "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _comment(text: str, width: int = 100) -> list[str]:
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def default_config_text(
    name: str,
    *,
    data_dir: str = "data",
    listen_host: str | None = None,
    listen_port: int = 0,
    static_peers: tuple[str, ...] | list[str] = (),
    mdns_interfaces: tuple[str, ...] | list[str] = (),
    mdns: bool = True,
) -> str:
    """A complete node.toml: the given values set, every other key shown commented at its default."""
    active: dict[str, dict[str, Any]] = {
        "node": {"name": name, "data_dir": data_dir, "listen_port": listen_port},
        "identity": {k: SCHEMA["identity"][k].default for k in SCHEMA["identity"]},
        "discovery": {"mdns": mdns},
    }
    if listen_host is not None:
        active["node"]["listen_host"] = listen_host
    if static_peers:
        active["discovery"]["static_peers"] = list(static_peers)
    if mdns_interfaces:
        active["discovery"]["mdns_interfaces"] = list(mdns_interfaces)
    out = [
        "# meshnode node configuration (written by `meshnode node init`).",
        "# Runs as is: a free port, mDNS on, data and identity files beside this file.",
        "# Relative paths: data_dir and [identity] against this file's directory; capture.file and",
        "# control.socket against data_dir. Every key is listed with its default; see docs/CONFIG.md.",
    ]
    for section, schema in SCHEMA.items():
        out += ["", f"[{section}]"]
        for key, s in schema.items():
            out += _comment(s.doc)
            if key in active.get(section, {}):
                out.append(f"{key} = {toml_value(active[section][key])}")
            else:
                out.append(f"# {key} = {toml_value(s.default_value())}")
    out += [
        "",
        "# Workers: one [[workers]] table each; `settings` is passed to the worker as is.",
        "# [[workers]]",
        '# name = "heartbeat"',
        '# type = "heartbeat-vectors"',
        "# [workers.settings]",
        "# interval = 10.0",
        "",
    ]
    return "\n".join(out)


def workers_toml(workers: list[Mapping[str, Any]]) -> str:
    """[[workers]] tables (name, type, settings) as TOML text, to append to a node.toml."""
    out: list[str] = []
    for w in workers:
        out += ["", "[[workers]]", f"name = {toml_value(w['name'])}", f"type = {toml_value(w['type'])}",
                "[workers.settings]"]
        out += [f"{k} = {toml_value(v)}" for k, v in (w.get("settings") or {}).items()]
    return "\n".join(out) + "\n"


def write_default_config(
    path: str | os.PathLike[str],
    *,
    name: str,
    force: bool = False,
    **values: Any,
) -> Path:
    """Write a node.toml that runs as is (see `default_config_text` for the optional values).

    The text is parsed back before it is written, so a bad name or peer fails here, not at start.
    Several nodes initialised in different directories start side by side without editing: each has
    its own data dir and identity, and port 0 lets each take a free port.
    """
    p = Path(path)
    text = default_config_text(name, **values)
    parse_config(tomllib.loads(text), base_dir=p.parent.absolute(), source=p)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(p, text.encode("utf-8"), replace=force)
    except FileExistsError:
        raise ConfigError("", f"{p}: already exists; refusing to overwrite (use force)") from None
    return p


def render_reference() -> str:
    """The Markdown reference table of every key (the generated part of docs/CONFIG.md)."""
    out: list[str] = []

    def row(key: str, s: Setting) -> str:
        default = s.shown_default() if s.default_doc is not None else f"`{s.shown_default()}`"
        return f"| `{key}` | {s.kind.value} | {default} | {s.doc} |"

    for section, schema in SCHEMA.items():
        out += [f"### [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out += [row(f"{section}.{k}", s) for k, s in schema.items()]
        out.append("")
    out += ["### [[workers]]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    out += [row(f"workers[].{k}", s) for k, s in WORKER_SCHEMA.items()]
    return "\n".join(out) + "\n"


_BEGIN = "<!-- BEGIN GENERATED: meshnode.config.render_reference() -->\n"
_END = "<!-- END GENERATED -->\n"


def _update_reference(doc: Path) -> bool:
    text = doc.read_text(encoding="utf-8")
    head, _, rest = text.partition(_BEGIN)
    _, _, tail = rest.partition(_END)
    new = head + _BEGIN + render_reference() + _END + tail
    if new != text:
        doc.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    # `python -m meshnode.config docs/CONFIG.md` regenerates the reference table in place.
    for arg in sys.argv[1:]:
        print(f"{arg}: {'updated' if _update_reference(Path(arg)) else 'up to date'}")
