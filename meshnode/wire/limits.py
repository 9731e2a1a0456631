"""Bounds that every decoder checks before it allocates. One object, passed down, so a daemon
operator can tighten all of them from the config file in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame: int = 1 << 20            # bytes in one stream frame (one encoded packet)
    max_body: int = 64 << 20            # bytes of msgpack body in one (possibly reassembled) packet
    max_dim: int = 1 << 20              # trits per vector
    max_count: int = 1 << 16            # vectors per vector block
    max_trits: int = 1 << 28            # count * dim in one block, elements in one tensor
    max_fragments: int = 1 << 16        # pieces of one fragmented packet
    fragment_size: int = 64 << 10       # bytes of the whole packet carried by one fragment
    reassembly_cap: int = 64 << 20      # bytes held by all incomplete fragment sets of all links; a quarter per origin
    reassembly_timeout: float = 30.0    # seconds an incomplete set may wait for its pieces
    max_collection: int = 1 << 16       # entries in one msgpack array or map
    max_str: int = 1 << 16              # bytes in one msgpack str
    max_depth: int = 8                  # msgpack nesting

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive, got {getattr(self, name)}")
        if self.fragment_size + 256 > self.max_frame:
            raise ValueError("fragment_size must leave room for the fragment header inside max_frame")


DEFAULT_LIMITS = Limits()
