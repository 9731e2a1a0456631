"""Seeded randomized Hadamard rotation of blocks (the "rht" in the `ternary-rht` delta codec).

A block of B values (B a power of two) is rotated as y = (x * s) @ H, with H the orthonormal
Sylvester-Hadamard matrix of order B and s a vector of random signs. The rotation is orthogonal, so
quantisation error keeps its norm through the inverse, and it spreads a few large entries over the
whole block, which is what a per-block scale needs. Sender and receiver derive the same signs from
a shared seed and the tensor name, so nothing but the seed travels.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

__all__ = ["is_power_of_two", "next_power_of_two", "hadamard", "random_signs", "rotate", "unrotate"]

MAX_ORDER = 1 << 12  # the dense H costs order**2 floats; larger blocks gain nothing for quantisation


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@lru_cache(maxsize=16)
def hadamard(order: int) -> np.ndarray:
    """The orthonormal (H @ H = I, H symmetric) Sylvester-Hadamard matrix, float32, read-only."""
    if not is_power_of_two(order) or order > MAX_ORDER:
        raise ValueError(f"Hadamard order must be a power of two <= {MAX_ORDER}, got {order}")
    h = np.ones((1, 1), np.float64)
    while h.shape[0] < order:
        h = np.block([[h, h], [h, -h]])
    out = (h / np.sqrt(order)).astype(np.float32)
    out.flags.writeable = False
    return out


def random_signs(seed: int, name: str, nblocks: int, block: int) -> np.ndarray:
    """(nblocks, block) float32 of +-1, a pure function of (seed, name)."""
    name_key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([int(seed) & ((1 << 64) - 1), name_key])
    bits = rng.integers(0, 2, size=(nblocks, block), dtype=np.int8)
    return (1 - 2 * bits).astype(np.float32)


def rotate(blocks: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """(nblocks, B) -> rotated (nblocks, B), float32."""
    return (blocks * signs) @ hadamard(blocks.shape[1])


def unrotate(blocks: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The inverse of `rotate` (H is symmetric and its own inverse)."""
    return (blocks @ hadamard(blocks.shape[1])) * signs
