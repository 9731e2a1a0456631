"""The real-kernel lab (deploy/netlab.py): three daemons in network namespaces find each other over real
mDNS across the bridge, and a 1 Mbit/s tbf limit shows in `meshnode peers`. Skipped, with the reason,
where the lab cannot run (not root, no `ip netns`)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "deploy" / "netlab.py"
_spec = importlib.util.spec_from_file_location("netlab", _PATH)
assert _spec is not None and _spec.loader is not None
netlab = importlib.util.module_from_spec(_spec)
sys.modules["netlab"] = netlab
_spec.loader.exec_module(netlab)

REASON = netlab.unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"netns lab unavailable: {REASON}"),
              pytest.mark.timeout(90)]


def received_bits(lab, i: int) -> int:
    return sum(p["bytes_in"] for p in lab.query(i) or []) * 8


def test_three_daemons_discover_each_other_and_the_rate_limit_shows(tmp_path: Path) -> None:
    notes: list[str] = []
    # Each daemon offers ~2.6 Mbit/s per peer (64k-trit vectors every 50 ms), far over the 1 Mbit/s limit.
    with netlab.Lab(3, rate="1mbit", workdir=tmp_path, worker={"interval": 0.05, "dim": 65536},
                    log=notes.append) as lab:
        prefix = lab.prefix
        lab.start_daemons()
        deadline = time.monotonic() + 40
        while True:
            lab.check_daemons()
            peers = [lab.query(i) or [] for i in range(3)]
            if all(len(p) == 2 and all(x["state"] == "open" for x in p) for p in peers):
                break
            assert time.monotonic() < deadline, f"no full mesh over mDNS in 40 s: {peers}"
            time.sleep(0.5)
        assert {x["name"] for x in peers[0]} == {"n1", "n2"}
        time.sleep(2)                                   # past the initial burst into empty buffers
        t0, before = time.monotonic(), [received_bits(lab, i) for i in range(3)]
        time.sleep(5)
        t1, after = time.monotonic(), [received_bits(lab, i) for i in range(3)]
        rates = [(a - b) / (t1 - t0) for a, b in zip(after, before)]
        print(f"receive rate per node, bit/s: {[round(r) for r in rates]}")
        # Each node's downlink is the 1 Mbit/s bridge port: its peers' figures add up to at most that
        # (TCP/TLS headers are not counted, so a little under). The offered load would keep it nearly
        # full, but how full depends on spare CPU (three daemons encrypting on a shared machine fell to
        # 0.48 Mbit/s under other load), so the floor only shows that traffic flows.
        for r in rates:
            assert 0.2e6 < r < 1.1e6, rates
    import subprocess
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in left                           # torn down
