"""A simulated mesh's identities, derived from the scenario seed: same seed, same keys, same
certificates (issued for the virtual epoch by default), so a run is reproducible byte for byte. These keys are
as secret as the seed: they are for simulations only."""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..identity import NodeIdentity, init_mesh, init_node
from ..net.sim.vclock import EPOCH_US

__all__ = ["simulated_mesh"]


def _derive(seed: int, label: str) -> bytes:
    return hashlib.sha256(f"meshnode-sim/{seed}/{label}".encode()).digest()


def _serial(seed: int, label: str) -> int:
    # 159 bits with the top one set: a positive X.509 serial of fixed DER length.
    return (int.from_bytes(_derive(seed, "serial/" + label), "big") >> 97) | (1 << 158)


def simulated_mesh(directory: Path, names: Iterable[str], seed: int,
                   now: _dt.datetime | None = None) -> dict[str, NodeIdentity]:
    """A mesh CA and one identity per name under `directory` (written as node files, as `mesh init`
    and `node init` would), issued at `now`: the virtual epoch unless given (daemons on the real clock,
    e.g. a bench's, need the real time, or the certificates have long expired)."""
    now = now or _dt.datetime.fromtimestamp(EPOCH_US / 1e6, tz=_dt.timezone.utc)
    ca = init_mesh(directory / "mesh", force=True, now=now,
                   key=Ed25519PrivateKey.from_private_bytes(_derive(seed, "ca")), serial=_serial(seed, "ca"))
    return {name: init_node(directory / "nodes" / name, ca, name, force=True, now=now,
                            key=Ed25519PrivateKey.from_private_bytes(_derive(seed, "node/" + name)),
                            serial=_serial(seed, "node/" + name))
            for name in names}
