"""The transport interface: what the daemon needs from a network, and nothing more.

TCP+TLS (`tcp.py`) and the simulated network implement it, so every node test can run either on
real sockets or deterministically in one process. A stream is already authenticated when the
daemon sees it: `peer_node_id` comes from a verified certificate (or the simulator's equivalent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol


class TransportError(ConnectionError):
    """Dialling or accepting failed; the message says why (refused, timeout, bad certificate...)."""


class Stream(Protocol):
    @property
    def peer_node_id(self) -> bytes:
        """SHA-256 of the peer's public key, taken from its verified certificate."""

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), where the transport has one."""

    @property
    def peer_address(self) -> str:
        """"host:port" of the other end, for logs and the peer table."""

    async def read(self, max_bytes: int = 1 << 16) -> bytes:
        """Up to max_bytes; b"" once the peer has closed."""

    def write(self, data: bytes) -> None:
        """Queue bytes for sending; pair with `drain` for back-pressure."""

    async def drain(self) -> None:
        """Wait until the transport's buffer has room again."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


StreamHandler = Callable[[Stream], Awaitable[None]]


class Listener(Protocol):
    @property
    def port(self) -> int: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Transport(Protocol):
    async def listen(self, host: str, port: int, handler: StreamHandler) -> Listener:
        """Accept authenticated streams and run `handler` on each (port 0 = any free port)."""

    async def connect(self, host: str, port: int, *, timeout: float) -> Stream:
        """Dial and authenticate; raises TransportError."""
