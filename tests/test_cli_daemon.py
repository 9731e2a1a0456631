"""`meshnode run`: config errors give one line and exit 2; a real daemon process answers `status` and
exits 0 promptly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshnode.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def node_dir(tmp_path: Path) -> Path:
    return enrolled_node(tmp_path)


def enrolled_node(tmp_path: Path) -> Path:
    """A mesh and one node "a" made by the CLI, with mDNS off; returns the node's directory."""
    runner = CliRunner()
    assert runner.invoke(main, ["mesh", "init", str(tmp_path / "mesh")]).exit_code == 0
    r = runner.invoke(main, ["node", "init", str(tmp_path / "node-a"), "--mesh", str(tmp_path / "mesh"),
                             "--name", "a", "--listen-host", "127.0.0.1"])
    assert r.exit_code == 0, r.output
    toml = tmp_path / "node-a" / "node.toml"
    # mDNS off: other tests and processes on this host must not see this daemon.
    toml.write_text(toml.read_text().replace("mdns = true", "mdns = false"))
    return tmp_path / "node-a"


def _run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("edit, expect", [
    (lambda t: t.replace("[node]", "[node]\nlisten_prot = 1"), "node.listen_prot: unknown key"),
    (lambda t: t.replace("listen_port = 0", "listen_port = 70000"), "node.listen_port: must be in 0..65535"),
])
def test_config_errors_give_one_line_and_exit_2(node_dir: Path, edit, expect) -> None:
    toml = node_dir / "node.toml"
    toml.write_text(edit(toml.read_text()))
    r = CliRunner().invoke(main, ["run", "--config", str(toml)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines() if hasattr(r, "stderr") else r.output.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0]


def test_missing_ca_gives_one_line_and_exit_2(node_dir: Path) -> None:
    (node_dir / "ca.crt").unlink()
    r = CliRunner().invoke(main, ["run", "--config", str(node_dir / "node.toml")])
    assert r.exit_code == 2
    out = r.output.strip().splitlines()
    assert len(out) == 1 and "identity.ca_cert" in out[0] and "not found" in out[0]


def test_run_answers_status_and_stops_on_sigterm(node_dir: Path) -> None:
    toml = str(node_dir / "node.toml")
    proc = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "run", "--config", toml],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            r = _run_cli("status", "--json", "--config", toml, "--timeout", "2")
            if r.returncode == 0:
                status = json.loads(r.stdout)
                break
            time.sleep(0.2)
        assert status is not None, f"no status answer; daemon exit {proc.poll()}"
        assert status["name"] == "a" and status["state"] == "running" and status["peers"] == 0
        r = _run_cli("peers", "--json", "--config", toml)
        assert r.returncode == 0 and json.loads(r.stdout) == []
        r = _run_cli("counters", "--json", "--config", toml)
        assert r.returncode == 0 and json.loads(r.stdout)["peers"] == 0
        # for people: words, not Python values
        r = _run_cli("status", "--config", toml)
        assert r.returncode == 0
        rows = {line.split("  ", 1)[0]: line.split()[-1] for line in r.stdout.splitlines() if "  " in line}
        assert rows["mDNS"] == "off" and rows["recent refusals"] == "none" and rows["members"] == "0"
        assert not any(python in r.stdout for python in ("True", "False", "[]", "{}"))
        r = _run_cli("metrics", "--config", toml)
        assert r.returncode == 0 and "# TYPE meshnode_peers gauge" in r.stdout.splitlines()
        assert any(line.startswith("# TYPE meshnode_control_requests_total counter") for line in r.stdout.splitlines())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert code == 0 and time.monotonic() - t0 < 5
        err = proc.stderr.read()
        assert "shutting down" in err and "stopped: ran for" in err and "shutdown took" in err
        assert not (node_dir / "data" / "control.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
