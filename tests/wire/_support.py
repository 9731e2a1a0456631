"""Shared builders for the packet/frames/session tests: fixed keys, deterministic trits, one body of
each kind, and the hypothesis settings they use (explicit, so other test files keep their own)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from hypothesis import HealthCheck, settings

from meshnode.wire.packet import (
    Ack,
    Bye,
    Delta,
    DeltaTensor,
    Hello,
    Knowledge,
    Nack,
    Ping,
    Pong,
    Signer,
    Tensor,
    VectorBlock,
    Vectors,
)

# derandomize: the same examples on every run (deterministic CI); moderate counts (2 shared cores).
WIRE = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(WIRE, max_examples=30)

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
SEED_C = bytes(range(64, 96))
SPACE = b"test-space"

A = Signer.from_seed(SEED_A)
B = Signer.from_seed(SEED_B)
C = Signer.from_seed(SEED_C)


def random_trits(seed: int, count: int, dim: int, zeros: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.choice(np.array([-1, 1], dtype=np.int8), size=(count, dim))
    t[rng.random((count, dim)) < zeros] = 0
    return t


def sample_bodies(signer: Signer) -> list[object]:
    """One valid body of every kind except fragment, with optional fields present."""
    block = VectorBlock.from_trits(random_trits(1, 4, 64), SPACE)
    w = Tensor.from_array(np.arange(2 * 64, dtype=np.float32).reshape(2, 64))
    return [
        Hello(name="a", public_key=signer.public_key_bytes, caps=("vectors",), topics=("t",), max_frame=1 << 20,
              cert=b"\x30\x00", mesh=b"m", listen_port=7946),
        Ping(seq=1, sent_us=5),
        Pong(seq=1, echo_us=5),
        Vectors(topic="t", vectors=block, labels=(0, 1, 2, 3), ids=("a", 1, "b", 2), meta={"k": [1, 2.5, None]}),
        Knowledge(topic="t", task="x", form="linear", classes=("n", "p"), weight=w,
                  bias=Tensor.from_array(np.zeros(2, np.float32)), anchor_hash=b"h" * 32, meta={}),
        Delta(topic="lora", group=b"g", round=1, chunk=0, chunks=1, codec="ternary",
              tensors=(DeltaTensor(name="w", shape=(4, 64), trits=block,
                                   scales=Tensor.from_array(np.ones(4, np.float16))),)),
        Ack(ref=bytes(16), meta={"n": 1}),
        Nack(ref=bytes(16), reason="nope", detail="because"),
        Bye(reason="shutdown", detail="bye"),
    ]


PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


@functools.cache
def vector_generator() -> tuple[ModuleType, dict[str, bytes], dict[str, bytes]]:
    """protocol/make_vectors.py as a module, and what it builds (valid, malformed): loaded and built
    once for every test module that compares against it."""
    spec = importlib.util.spec_from_file_location("make_vectors", PROTOCOL / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_vectors", module)
    spec.loader.exec_module(module)
    valid, malformed = module.build()
    return module, valid, malformed
