"""Finding peers on the LAN with mDNS / DNS-SD (python-zeroconf's asyncio API).

Each daemon advertises `_meshnode._tcp.local.`: the SRV record carries its TLS port, the TXT record
what a stranger may see and nothing more:

    id   = node id, 64 hex characters      v = protocol version ("1.0")      mesh = mesh id, short hex

and browses for the same type. Services of other meshes and our own are ignored; the rest become
`PeerFound` / `PeerLost` events, delivered to a callback and/or async iterators (`events()`).

mDNS is unauthenticated: anyone on the LAN can advertise any node id and mesh id, or add records to
a real node's service name. Discovery only gives hints of where to dial; the TLS handshake and
`identity.verify_peer_certificate` decide who it really is, and the caller must check that the
certificate's node id is the one advertised. So a record never replaces what we know about a node id:
its endpoints (host, port) are added to the node's list (`PeerFound.endpoints`, first seen first, at
most `per_node_endpoints`), and `PeerFound.host`/`port` stay the first endpoint seen. `hints` (a
net/hints.py DialHints) is the book the caller keeps its dials in: one endpoint at a time, the next
after a failure, the verified one first, dials to unverified endpoints bounded per endpoint and in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import ifaddr
from zeroconf import DNSQuestionType, InterfaceChoice, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .hints import HINT_PER_NODE, DialHints, Endpoint

if TYPE_CHECKING:
    from ..identity import NodeIdentity
__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Discovery",
    "DiscoveryError",
    "EventStream",
    "PeerEvent",
    "PeerFound",
    "PeerLost",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_meshnode._tcp.local."
PROTOCOL_VERSION = "1.0"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SHORT_HEX = re.compile(r"[0-9a-f]{1,64}")
_VERSION = re.compile(r"[0-9]{1,5}\.[0-9]{1,5}")
# A DNS label holds at most 63 bytes, so the instance name carries a 128-bit prefix of the node id
# (unique enough to avoid collisions); the full id travels in the TXT record.
_NAME_ID_CHARS = 32


class DiscoveryError(RuntimeError):
    """Discovery could not start (e.g. this node is already advertised by another live process)."""


@dataclass(frozen=True)
class PeerFound:
    """A node of our mesh is advertised at host:port (not yet authenticated: see module doc)."""

    node_id: bytes
    mesh_id: str                   # short hex, as advertised
    host: str                      # preferred address to dial (IPv4 first)
    port: int
    version: str                   # protocol version "major.minor" as advertised
    addresses: tuple[str, ...] = ()  # every advertised address
    # Every (host, port) advertised for this node id, by any record, first seen first (bounded).
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()


@dataclass(frozen=True)
class PeerLost:
    """The advertisement of a previously found node went away (goodbye packet or TTL expiry)."""

    node_id: bytes

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()


PeerEvent = PeerFound | PeerLost
_END = object()  # sentinel that ends event streams on stop()


class EventStream:
    """An async iterator over discovery events; it sees every event after `events()` was called,
    starting with a PeerFound for each peer already known."""

    def __init__(self, owner: Discovery) -> None:
        self._owner = owner
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> PeerEvent:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # stay ended
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._owner._streams.discard(self)
        self._queue.put_nowait(_END)


def _default_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this host (loopback only if there is nothing else).

    IPv4 only because zeroconf, given all interfaces, runs IPv4 only; pass `interfaces` with IPv6
    addresses to advertise and browse over IPv6.
    """
    found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)]
    routable = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return routable or found or ["127.0.0.1"]


def _pick_host(addresses: Sequence[str]) -> str:
    def rank(a: str) -> tuple[int, int]:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        return (ip.version, 1 if ip.is_link_local else 0)

    return min(addresses, key=rank)


class Discovery:
    """Advertise this node and report the other nodes of its mesh found on the LAN.

    Usage:
        async with Discovery(node_id=..., mesh_id=..., port=...) as d:
            async for event in d.events(): ...

    `interfaces`: IP addresses of the interfaces to use (empty: all). `addresses`: what to advertise
    (default: the given interfaces, or all non-loopback addresses of this host).
    `counters` records what was ignored and why (self, other_mesh, malformed, unresolved, overflow).
    `name_check`: seconds start() spends asking whether this node's name is already advertised
    before it registers (a twin on the same host answers only after its one-second multicast
    rate limit); it is most of start()'s latency when the name is free.
    """

    def __init__(
        self,
        *,
        node_id: bytes,
        mesh_id: str,
        port: int,
        interfaces: Sequence[str] = (),
        addresses: Sequence[str] | None = None,
        version: str = PROTOCOL_VERSION,
        on_event: Callable[[PeerEvent], None] | None = None,
        resolve_timeout: float = 3.0,
        name_check: float = 2.0,
        max_tracked: int = 1024,
        per_node_endpoints: int = HINT_PER_NODE,
        hints: DialHints | None = None,
    ) -> None:
        if len(node_id) != 32:
            raise ValueError("node_id must be 32 bytes")
        if not _SHORT_HEX.fullmatch(mesh_id):
            raise ValueError("mesh_id must be lowercase hex")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        for a in [*interfaces, *(addresses or ())]:
            ipaddress.ip_address(a)  # ValueError early, not inside zeroconf
        self.node_id = node_id
        self.mesh_id = mesh_id
        self.port = port
        self.version = version
        self._interfaces = list(interfaces)
        self._addresses = list(addresses) if addresses is not None else None
        self._on_event = on_event
        self._resolve_timeout_ms = int(resolve_timeout * 1000)
        self._name_check_ms = int(name_check * 1000)
        self._max_tracked = max_tracked
        self._per_node_endpoints = per_node_endpoints
        self.hints = hints if hints is not None else DialHints(per_node=per_node_endpoints)

        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._by_name: dict[str, bytes] = {}        # service name -> node id we reported for it
        self._peers: dict[bytes, PeerFound] = {}
        self._streams: set[EventStream] = set()
        self._counters: Counter[str] = Counter()
        self._running = False
        self._stopped = False

    @classmethod
    def from_identity(cls, identity: NodeIdentity, port: int, **kwargs: Any) -> Discovery:
        return cls(node_id=identity.node_id, mesh_id=identity.mesh_id_short, port=port, **kwargs)

    # -- public state

    @property
    def instance_name(self) -> str:
        return f"{self.mesh_id[:16]}-{self.node_id.hex()[:_NAME_ID_CHARS]}.{SERVICE_TYPE}"

    @property
    def peers(self) -> Mapping[bytes, PeerFound]:
        return MappingProxyType(self._peers)

    @property
    def counters(self) -> Mapping[str, int]:
        return MappingProxyType(self._counters)

    def events(self) -> EventStream:
        stream = EventStream(self)
        for found in self._peers.values():
            stream._queue.put_nowait(found)
        if self._stopped:
            stream._queue.put_nowait(_END)
        else:
            self._streams.add(stream)  # before start() too, so that no early event is missed
        return stream

    # -- lifecycle

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._running or self._stopped:
            raise RuntimeError("a Discovery starts once; make a new one to advertise again")
        interfaces = self._interfaces or InterfaceChoice.All
        azc = AsyncZeroconf(interfaces=interfaces)  # IP version follows the interfaces given
        self._azc = azc
        self._running = True
        addresses = self._addresses or list(self._interfaces) or _default_addresses()
        node_hex = self.node_id.hex()
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            self.instance_name,
            port=self.port,
            properties={"id": node_hex, "v": self.version, "mesh": self.mesh_id},
            server=f"mn-{node_hex[:_NAME_ID_CHARS]}.local.",
            parsed_addresses=addresses,
        )
        try:
            # Browse first so that peers are found while our own registration is still probing.
            self._browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])
            # zeroconf's own probing lasts under a second, but a responder that has just announced may
            # not multicast the same records again for a second (RFC 6762 section 6), so a twin started
            # right after this node would probe unanswered: first ask for our name, for long enough.
            # QM, because a unicast answer to port 5353 reaches only one of the sockets sharing it.
            taken = AsyncServiceInfo(SERVICE_TYPE, self.instance_name)
            if await taken.async_request(azc.zeroconf, self._name_check_ms, question_type=DNSQuestionType.QM):
                raise NonUniqueNameException(self.instance_name)
            await (await azc.async_register_service(self._info))
        except NonUniqueNameException:
            await self._teardown(unregister=False)
            raise DiscoveryError(
                f"{self.instance_name} is already advertised: is this node running elsewhere?"
            ) from None
        except BaseException:
            await self._teardown(unregister=False)
            raise

    async def stop(self) -> None:
        """Unregister our service (peers see PeerLost through the goodbye packets), stop browsing and
        end the event streams. Idempotent."""
        await self._teardown(unregister=True)

    async def _teardown(self, *, unregister: bool) -> None:
        self._running = False
        self._stopped = True
        for task in list(self._resolving.values()):
            task.cancel()
        for task in list(self._resolving.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._resolving.clear()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        azc, self._azc = self._azc, None
        if azc is not None:
            if unregister and self._info is not None:
                try:
                    await (await azc.async_unregister_service(self._info))
                except Exception as e:  # closing must not fail because a goodbye could not be sent
                    log.warning("mDNS unregister failed: %s", e)
            await azc.async_close()
        for stream in list(self._streams):
            stream.close()

    # -- browsing

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Called by zeroconf on the event loop; it must not block, so resolving runs in a task.
        if not self._running:
            return
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            self._lost(name)
            return
        if name not in self._by_name and name not in self._resolving and (
            len(self._by_name) + len(self._resolving) >= self._max_tracked
        ):
            # A LAN full of fake services must not grow our memory without bound.
            self._counters["overflow"] += 1
            return
        old = self._resolving.pop(name, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._resolving[name] = task
        task.add_done_callback(lambda t, n=name: self._forget_task(n, t))

    def _forget_task(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:  # not a newer resolve of the same name
            del self._resolving[name]

    async def _resolve(self, name: str) -> None:
        azc = self._azc
        if azc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(azc.zeroconf, self._resolve_timeout_ms):
            self._counters["unresolved"] += 1
            log.debug("mDNS: could not resolve %s", name)
            return
        found = self._parse(name, info)
        if found is None:
            return
        previous_id = self._by_name.get(name)
        if previous_id is not None and previous_id != found.node_id:
            self._lost(name)  # same name, different node: report the old one gone first
        self._by_name[name] = found.node_id
        known = self._peers.get(found.node_id)
        if known is not None:
            # Another record for a node id we know (a second name, a changed SRV, or a fake): its
            # endpoints are added after the known ones, never in their place.
            endpoints = list(known.endpoints)
            for ep in found.endpoints:
                if ep not in endpoints:
                    if len(endpoints) >= self._per_node_endpoints:
                        self._counters["endpoints_ignored"] += 1
                        continue
                    endpoints.append(ep)
            addresses = known.addresses + tuple(a for a in found.addresses if a not in known.addresses)
            found = dataclasses.replace(known, endpoints=tuple(endpoints), addresses=addresses[:64])
            if found == known:
                return
            self._counters["endpoints_added"] += 1
        else:
            self._counters["found"] += 1
        self._peers[found.node_id] = found
        self._emit(found)

    def _parse(self, name: str, info: AsyncServiceInfo) -> PeerFound | None:
        props = info.decoded_properties
        node_hex, mesh, version = props.get("id"), props.get("mesh"), props.get("v")
        if not (isinstance(node_hex, str) and _HEX64.fullmatch(node_hex)
                and isinstance(mesh, str) and _SHORT_HEX.fullmatch(mesh)
                and isinstance(version, str) and _VERSION.fullmatch(version)):
            self._counters["malformed"] += 1
            log.debug("mDNS: ignoring %s: malformed TXT record", name)
            return None
        node_id = bytes.fromhex(node_hex)
        if node_id == self.node_id:
            self._counters["self"] += 1
            return None
        if mesh != self.mesh_id:
            self._counters["other_mesh"] += 1
            log.debug("mDNS: ignoring %s: mesh %s is not ours (%s)", name, mesh, self.mesh_id)
            return None
        addresses = tuple(info.parsed_scoped_addresses())
        port = info.port
        if not addresses or port is None or not 1 <= port <= 65535:
            self._counters["malformed"] += 1
            log.debug("mDNS: ignoring %s: no address or bad port", name)
            return None
        host = _pick_host(addresses)
        # The preferred address first, then the rest in the order given (bounded).
        hosts = [host, *(a for a in addresses if a != host)][:self._per_node_endpoints]
        return PeerFound(node_id, mesh, host, port, version, addresses, tuple((h, port) for h in hosts))

    def _lost(self, name: str) -> None:
        node_id = self._by_name.pop(name, None)
        if node_id is None or node_id not in self._peers:
            return
        if any(other == node_id for other in self._by_name.values()):
            return  # still advertised under another name
        del self._peers[node_id]
        self._counters["lost"] += 1
        self._emit(PeerLost(node_id))

    def _emit(self, event: PeerEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a faulty callback must not stop discovery
                log.exception("discovery callback failed on %s", event)
        for stream in self._streams:
            stream._queue.put_nowait(event)

