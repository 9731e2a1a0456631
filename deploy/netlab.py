#!/usr/bin/env python3
"""A real-kernel lab: N meshnode daemons, each in its own network namespace, joined by a bridge that
lives in a namespace of its own, with the links shaped by what the kernel offers.

    sudo deploy/netlab.py --nodes 3 --rate 1mbit --loss 0.02 --duration 60
    sudo deploy/netlab.py --nodes 3 --rate 1mbit --delay-ms 20     # delay only where netem exists

Real sockets, real TLS, real mDNS across the bridge. Shaping:
  rate    tbf on both ends of every node's veth (egress of the node and egress of the bridge port)
  loss    nftables on the bridge's forward path: `numgen random mod 1000000 < loss * 1e6 drop`
  delay   netem, where the kernel has it; otherwise the lab says so and runs without delay
          (use `meshnode sim` for delay and jitter)

Isolation: the bridge, the veths and the daemons are all inside namespaces named `<prefix>-*` (a fresh
random prefix per run); nothing is added to the host's namespace, and the namespaces have no route
out, so no traffic leaves them. Everything is torn down on exit, on failure and on SIGINT/SIGTERM.
Needs root and iproute2 (`ip netns`); tc and nft for shaping.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SUBNET = "10.99.0"
PORT = 7000


class LabError(RuntimeError):
    """The lab cannot run here (not root, no `ip netns`, a command failed); the message says why."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"mnprobe{secrets.token_hex(3)}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns add` does not work here: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Lab:
    """`with Lab(...) as lab:` builds the namespaces and the shaped bridge; `lab.start_daemons()` runs
    one daemon per namespace; leaving the block tears everything down."""

    def __init__(self, nodes: int = 3, *, rate: str | None = "1mbit", loss: float = 0.0, delay_ms: float = 0.0,
                 workdir: Path | None = None, meshnode: str | None = None, worker: dict[str, Any] | None = None,
                 log: Any = print) -> None:
        if not 1 <= nodes <= 200:
            raise ValueError("nodes must be 1..200")
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in 0..1")
        self.n = nodes
        self.rate = rate
        self.loss = loss
        self.delay_ms = delay_ms
        self.prefix = f"mn{secrets.token_hex(3)}"
        self.hub = f"{self.prefix}-hub"
        self.names = [f"n{i}" for i in range(nodes)]
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="netlab-")) if workdir is None else workdir
        self.meshnode = meshnode or str(Path(sys.executable).with_name("meshnode"))
        self.worker = worker
        self.log = log
        self.notes: list[str] = []
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._torn_down = False

    def ns(self, i: int) -> str:
        return f"{self.prefix}-{self.names[i]}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def config_path(self, i: int) -> Path:
        return self.workdir / self.names[i] / "node.toml"

    # ---- building

    def __enter__(self) -> Lab:
        reason = unavailable_reason()
        if reason is not None:
            raise LabError(reason)
        atexit.register(self.teardown)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._netns(self.hub)
        bridge = f"{self.prefix}br"
        _run("ip", "-n", self.hub, "link", "add", bridge, "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", bridge, "up")
        netem_ok = None
        for i in range(self.n):
            ns = self.ns(i)
            self._netns(ns)
            node_if, hub_if = f"{self.prefix}n{i}", f"{self.prefix}h{i}"
            # Create the pair inside the hub namespace, then move one end: nothing touches the host's.
            _run("ip", "-n", self.hub, "link", "add", hub_if, "type", "veth", "peer", "name", node_if)
            _run("ip", "-n", self.hub, "link", "set", node_if, "netns", ns)
            _run("ip", "-n", self.hub, "link", "set", hub_if, "master", bridge)
            _run("ip", "-n", self.hub, "link", "set", hub_if, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", node_if)
            _run("ip", "-n", ns, "link", "set", node_if, "up")
            _run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", node_if)   # mDNS multicast
            if self.rate:
                for where, dev in ((ns, node_if), (self.hub, hub_if)):
                    _run("ip", "netns", "exec", where, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate",
                         self.rate, "burst", "32kbit", "latency", "400ms")
            if self.delay_ms > 0 and netem_ok is not False:
                proc = _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", node_if,
                            "parent" if self.rate else "root", *(["1:1"] if self.rate else []), "netem", "delay",
                            f"{self.delay_ms}ms", check=False)
                netem_ok = proc.returncode == 0
                if not netem_ok:
                    self._note(f"this kernel has no netem ({proc.stderr.strip() or 'tc failed'}): links run "
                               f"WITHOUT the requested {self.delay_ms:g} ms delay. Rate and loss still apply; "
                               "use `meshnode sim` to study delay and jitter.")
        if self.loss > 0:
            if shutil.which("nft") is None:
                raise LabError("loss needs nftables (`nft`), which is not installed")
            threshold = int(round(self.loss * 1_000_000))
            nft = ("ip", "netns", "exec", self.hub, "nft")
            _run(*nft, "add", "table", "bridge", "netlab")
            _run(*nft, "add", "chain", "bridge", "netlab", "forward",
                 "{ type filter hook forward priority 0; policy accept; }")
            _run(*nft, "add", "rule", "bridge", "netlab", "forward", "numgen", "random", "mod", "1000000",
                 "<", str(threshold), "counter", "drop")
        self._note(f"{self.n} namespaces {self.prefix}-n0..n{self.n - 1} on bridge {bridge} (namespace {self.hub}); "
                   f"rate {self.rate or 'unlimited'}, loss {self.loss:.2%}"
                   + (f", delay {self.delay_ms:g} ms" if self.delay_ms and netem_ok else ""))

    def _note(self, text: str) -> None:
        self.notes.append(text)
        self.log(f"netlab: {text}")

    # ---- daemons

    def start_daemons(self) -> None:
        mesh_dir = self.workdir / "mesh"
        _run(self.meshnode, "mesh", "init", str(mesh_dir))
        for i, name in enumerate(self.names):
            d = self.workdir / name
            _run(self.meshnode, "node", "init", str(d), "--mesh", str(mesh_dir), "--name", name,
                 "--port", str(PORT), "--force")
            worker = ""
            if self.worker:
                settings = ", ".join(f"{k} = {json.dumps(v)}" for k, v in self.worker.items())
                worker = f'\n[[workers]]\nname = "beat"\ntype = "heartbeat-vectors"\nsettings = {{ {settings} }}\n'
            self.config_path(i).write_text(
                f'[node]\nname = "{name}"\ndata_dir = "data"\nlisten_host = "0.0.0.0"\nlisten_port = {PORT}\n'
                f'log_level = "info"\n\n[identity]\nkey = "node.key"\ncert = "node.crt"\nca_cert = "ca.crt"\n\n'
                f'[discovery]\nmdns = true\nmdns_interfaces = ["{self.address(i)}"]\n' + worker)
            log = open(d / "daemon.log", "wb")
            self._procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.ns(i), self.meshnode, "run", "--config", str(self.config_path(i))],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def query(self, i: int, what: str = "peers") -> Any:
        proc = _run(self.meshnode, what, "--config", str(self.config_path(i)), "--json", check=False)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)

    def check_daemons(self) -> None:
        for i, p in enumerate(self._procs):
            if p.poll() is not None:
                tail = (self.workdir / self.names[i] / "daemon.log").read_text(errors="replace")[-2000:]
                raise LabError(f"daemon {self.names[i]} exited with {p.returncode}:\n{tail}")

    # ---- teardown

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for p in self._procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self._procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)   # takes its veths with it
        self._namespaces.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", default="1mbit", help="tbf rate per node link, e.g. 1mbit, 50kbit; 'none' for none")
    ap.add_argument("--loss", type=float, default=0.0, help="drop probability on the bridge, 0..1")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per node link (needs netem)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds to run before tearing down")
    ap.add_argument("--load-interval", type=float, default=0.0,
                    help="if > 0, each daemon runs a heartbeat worker publishing 64k-trit vectors this often")
    ap.add_argument("--workdir", type=Path, help="keep configs, keys and daemon logs here")
    args = ap.parse_args(argv)

    def on_signal(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    worker = {"interval": args.load_interval, "dim": 65536} if args.load_interval > 0 else None
    try:
        with Lab(args.nodes, rate=None if args.rate == "none" else args.rate, loss=args.loss,
                 delay_ms=args.delay_ms, workdir=args.workdir, worker=worker) as lab:
            if args.workdir is not None:
                args.workdir.mkdir(parents=True, exist_ok=True)
            lab.start_daemons()
            end = time.monotonic() + args.duration
            while time.monotonic() < end:
                time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                lab.check_daemons()
                for i, name in enumerate(lab.names):
                    peers = lab.query(i) or []
                    row = ", ".join(f"{p['name']} {p['state']} out {p['bytes_out']:,} B" for p in peers)
                    print(f"{name}: {row or 'no peers yet'}")
    except LabError as e:
        print(f"netlab: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
