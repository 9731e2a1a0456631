"""The daemon: wires the transport, links, member directory, router, overlay, discovery, workers,
control API and packet capture together, and owns start-up and shutdown.

Data flow. A stream (authenticated by the transport) becomes a Link running a Session. When the
peer's hello arrives the link is registered (one link per pair of nodes, see `_keep`), the peer
learns the members we know (their hellos, paced, skipping what it holds) and the other peers learn
the new member. A packet from a link is checked against the replay cache (duplicate, stale, from the
future; duplicates already in the session, before any signature work) and its origin's rate, kept in
the message cache, delivered to the local subscribers of its topic, and pushed on the overlay's
eager links while its hop limit lasts (every link when the overlay is off, and links of peers that do
not speak gossip); lazy links get its id at the next heartbeat. A packet we publish is signed once,
remembered as seen and pushed the same way.

Whom we link to. Static peers, mDNS results and addresses from peer exchange are candidates; the
link manager dials random ones while fewer than `overlay_degree` links are open, every one with the
overlay off (`_manage_links`).

One link per pair: when a second link to the same node opens, the one dialled by the node with the
smaller node id is kept; if both were dialled by the same node the newer is kept (the dialler only
redials once it considers the old link dead), unless the old one is plainly alive: then two daemons
share one identity, and the first is kept (`_identity_conflict`). Both ends apply the same rule, so
they keep the same link; the other is closed with a bye whose reason is "duplicate".

Packets from an origin whose hello we have not seen are dropped (`unknown_origin`, counted): a peer
sends us every member it knows when the link opens and forwards a newly learned member's hello, so
this happens when a member is refused (certificate), the directory is full, or a packet overtakes a
hello still waiting in a paced catch-up (the overlay's announcements of a new link wait two heartbeats
for that reason). Holding such packets would buy little and cost memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import random
import signal
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .clock import REAL_CLOCK, Clock
from .config import Config, mdns_plan
from .control import ControlServer
from .display import safe_text
from .identity import NodeIdentity, load_node_identity
from .log_limit import LogLimiter
from .metrics import Metrics
from .net.backoff import Backoff
from .net.link import Link, LinkSettings, LinkState
from .net.message_cache import MessageCache
from .net.overlay import Graft, Have, Overlay, OverlaySettings, Prune, Serve, Settled, Want
from .net.peers import CATCH_UP_DELAY, NEWS_DELAY, MemberDirectory, MemberRefused
from .net.rate import OriginRates
from .net.router import Router, Subscription, Verdict, gossip_id
from .net.tcp import TlsTransport
from .net.transport import Listener, Stream, Transport, TransportError
from .wire.frames import ReassemblyBudget
from .wire.packet import MAX_GOSSIP_PEERS, Gossip, Hello, Kind, Packet, Signer, encode_packet, set_hop_limit
from .wire.session import HelloReceived, Session
from .workers.base import PacketHandler, Worker, WorkerContext
from .workers.registry import load_worker_class

__all__ = ["Node", "run_daemon"]

log = logging.getLogger("meshnode.node")

DIAL_TIMEOUT = 10.0
HEARTBEAT = 1.0          # seconds between overlay heartbeats (re-balance, announcements, deferred sends)
DEFERRED_PER_LINK = 1024 # packet ids waiting for room in one link's queue (the packets are in the cache)
EXCHANGE_CANDIDATES = 256  # dial candidates learned from peers (peer exchange), all peers together
EXCHANGE_PER_PEER = 32     # ... and from any one peer
# Links whose TLS is up but whose hello has not come yet, all peers together; one per peer node id.
MAX_HANDSHAKING = 16
MAINTENANCE_INTERVAL = 5.0
RECENT_REFUSALS = 32
REPLAY_JOURNAL = "replay.journal"   # in data_dir: packet ids seen, so that a restart does not accept replays
STATUS_MEMBERS = 50      # members listed by `status`; the count says how many there are in all


@dataclass
class _WorkerEntry:
    name: str
    type: str
    worker: Worker | None = None
    state: str = "new"                 # new, running, failed, stopped
    error: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    subscriptions: list[Subscription] = field(default_factory=list)


@dataclass
class _Candidate:
    """A node we may dial (a static peer, an mDNS result, an address a peer told us): the overlay's link
    manager picks among them, so knowing hundreds of members does not mean linking to them all."""

    host: str
    port: int
    expected: bytes | None          # the node id it must present, when known
    backoff: Backoff
    not_before: float = 0.0         # monotonic time of the next allowed dial
    failures: int = 0
    source: bytes | None = None     # the peer that told us the address (peer exchange)


class _WorkerBus:
    """What a worker's context publishes and subscribes through: the node, with the worker's name on
    its handlers so that a failing handler is counted against the right worker."""

    def __init__(self, node: Node, entry: _WorkerEntry) -> None:
        self._node = node
        self._entry = entry

    async def publish(self, body: Any, *, hop_limit: int | None = None) -> bytes:
        return await self._node.publish(body, hop_limit=hop_limit)

    def subscribe(self, topic: str, handler: PacketHandler) -> Subscription:
        sub = self._node._subscribe(topic, handler, owner=self._entry)
        self._entry.subscriptions.append(sub)
        return sub


class Node:
    def __init__(self, config: Config, identity: NodeIdentity, *, transport: Transport | None = None,
                 clock: Clock = REAL_CLOCK, capture: Path | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        # Relative paths in worker settings resolve against node.toml's directory, like the rest of it.
        self._config_dir = config.source.parent if config.source is not None else Path.cwd()
        self.identity = identity
        self.clock = clock
        self.node_id: bytes = identity.node_id
        self.name: str = identity.name
        self.port: int = 0
        self.signer = Signer(identity.private_key)
        self.metrics = Metrics()
        self._rng = rng if rng is not None else random.Random()
        lim = config.limits
        self._wire = lim.wire
        self._reassembly_budget = ReassemblyBudget(lim.wire.reassembly_cap)  # every link's fragment sets, a share per origin
        self._link_settings = LinkSettings(ping_interval=lim.ping_interval, peer_timeout=lim.peer_timeout,
                                           send_queue=lim.send_queue, send_queue_bytes=lim.send_queue_bytes)
        self.members = MemberDirectory(identity, max_members=lim.max_members, member_ttl=lim.member_ttl,
                                       now=lambda: self.clock.wall_us() / 1e6)
        self.router = Router(dedup_capacity=lim.dedup_cache, dedup_window_s=lim.dedup_window,
                             max_future_s=lim.clock_skew)
        self._origin_rates = OriginRates(lim.origin_rate, lim.origin_rate_bytes, max_keys=lim.max_members)
        # The overlay (off: every packet to every link, every candidate dialled, as before it existed).
        self._overlay: Overlay | None = None
        self._cache: MessageCache | None = None
        if lim.overlay:
            d = lim.overlay_degree
            self._overlay = Overlay(OverlaySettings(degree=d, degree_low=max(1, d - 2), degree_high=2 * d,
                                                    lazy_degree=d), rng=self._rng)
            self._cache = MessageCache(lim.message_cache_bytes, lim.dedup_window)
        self._gossip_links: set[bytes] = set()        # peers whose hello lists the "gossip" capability
        self._deferred: dict[bytes, deque[bytes]] = {}  # peer -> ids that found its queue full
        self._candidates: dict[object, _Candidate] = {}
        self._dials_pending: set[object] = set()   # candidates being dialled (TCP/TLS not yet up)
        self._listen_ports: dict[bytes, int] = {}     # peer -> the port its hello says it listens on
        if transport is None:
            transport = TlsTransport(identity, now=lambda: self.clock.wall_us() / 1e6,
                                     max_handshakes=lim.max_handshakes,
                                     max_handshakes_per_source=lim.max_handshakes_per_source,
                                     silent_timeout=lim.silent_timeout)
        if hasattr(transport, "on_refused") and getattr(transport, "on_refused") is None:
            transport.on_refused = self._on_refused  # type: ignore[attr-defined]
        self._transport = transport
        self._capture_path = capture if capture is not None else config.capture.file
        self._capture: Any = None
        self._listener: Listener | None = None
        self._control: ControlServer | None = None
        self._discovery: Any = None
        self._links: dict[bytes, Link] = {}          # registered (open) links, by peer node id
        self._running: set[Link] = set()             # every running link, handshaking ones included
        self._tasks: set[asyncio.Task[Any]] = set()  # link runners, dialers, handler calls
        self._dialers: dict[object, asyncio.Task[None]] = {}
        self._static_ids: dict[object, bytes] = {}
        self._dialing: set[bytes] = set()
        self._link_closed = asyncio.Event()
        self._workers: list[_WorkerEntry] = []
        self._refusals: deque[dict[str, Any]] = deque(maxlen=RECENT_REFUSALS)
        # Dial failures and refusals repeat for as long as a peer is down or a stranger knocks: bounded lines.
        self._log_limit = LogLimiter(lambda: self.clock.monotonic())
        self._closed_drops: Counter[str] = Counter()
        self._conflicts: dict[bytes, int] = {}        # peer -> second links refused while the first was alive
        self._closed_bytes: Counter[str] = Counter()  # wire bytes of links that have ended
        self._started_at: float | None = None
        self._state = "new"
        self._stop_lock = asyncio.Lock()

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Listen, then the control socket, discovery, static peers and workers. On failure everything
        started so far is stopped again and the error is raised."""
        if self._state != "new":
            raise RuntimeError("a Node starts once")
        self._state = "starting"
        self._started_at = self.clock.monotonic()
        cfg = self.config
        try:
            cfg.node.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            restored = self.router.open_journal(cfg.node.data_dir / REPLAY_JOURNAL, self.clock.wall_us())
            if restored:
                log.info("replay journal: %d packet ids of the last %.0f s restored", restored,
                         cfg.limits.dedup_window)
            if self._capture_path is not None:
                from .net.capture_file import CaptureWriter

                self._capture = CaptureWriter(self._capture_path, limits=self._wire, metrics=self.metrics)
            self._listener = await self._transport.listen(cfg.node.listen_host, cfg.node.listen_port,
                                                          self._on_stream)
            self.port = self._listener.port
            self._control = ControlServer(cfg.control.socket, self, metrics=self.metrics)
            await self._control.start()
            if cfg.discovery.mdns:
                from .net.discovery import Discovery

                plan = mdns_plan(cfg)
                if plan.warning is not None:
                    log.warning("%s", plan.warning)
                self._discovery = Discovery.from_identity(
                    self.identity, self.port, interfaces=list(plan.interfaces),
                    addresses=list(plan.addresses) if plan.addresses is not None else None,
                    on_event=self._on_discovery)
                await self._discovery.start()
            for peer in cfg.discovery.static_peers:
                self._start_dialer(("static", str(peer)), peer.host, peer.port, None, initial_delay=0.0)
            self._manage_links()
            self._spawn(self._maintenance(), "maintenance")
            self._spawn(self._heartbeat(), "heartbeat")
            await self._start_workers()
        except BaseException:
            await self.stop()
            raise
        self._state = "running"
        log.info("node %s (%s) listening on %s:%d, mesh %s", self.name, self.identity.node_id_hex[:16],
                 cfg.node.listen_host, self.port, self.identity.mesh_id_short)

    async def stop(self) -> None:
        """Graceful: stop dialling and discovery, stop workers, bye to every peer, close everything."""
        async with self._stop_lock:
            if self._state == "stopped":
                return
            self._state = "stopping"
            await self._stop_workers()
            if self._discovery is not None:
                with contextlib.suppress(Exception):
                    await self._discovery.stop()
            if self._listener is not None:
                self._listener.close()
            # Bye to every peer first, while the dialers still wait on their links ...
            for link in list(self._running):
                link.close("shutdown")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._link_settings.close_grace + 1.0):
                    while self._running:
                        await self._link_closed.wait()
            # ... then everything else: dialers, maintenance, handler calls still running.
            tasks = [t for t in (*self._dialers.values(), *self._tasks) if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._dialers.clear()
            if self._listener is not None:
                with contextlib.suppress(Exception):
                    await self._listener.wait_closed()
            if self._control is not None:
                await self._control.stop()
            if self._capture is not None:
                self._capture.close()
            self.router.close()
            self._state = "stopped"
            log.info("node %s stopped", self.name)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _maintenance(self) -> None:
        while True:
            await self.clock.sleep(MAINTENANCE_INTERVAL)
            now = self.clock.monotonic()
            for link in list(self._running):
                link.session.expire(now)
            self.members.expire(linked=self._links)     # departed members and expired certificates

    # ================================================================ publishing

    async def publish(self, body: Any, *, hop_limit: int | None = None) -> bytes:
        """Sign `body` as this node and queue it to every peer; returns its packet id."""
        hop = self.config.limits.hop_limit if hop_limit is None else hop_limit
        now_us = self.clock.wall_us()
        raw = encode_packet(body, self.signer, hop_limit=hop, timestamp_us=now_us, limits=self._wire)
        packet_id = raw[24:40]
        self.router.remember(self.node_id, packet_id, now_us, now_us)
        self.metrics.inc("packets.published")
        gid = self._keep_for_peers(packet_id, self.node_id, now_us, raw)
        for link in self._push_targets(None, self.node_id):
            self._send_or_defer(link, gid, raw, own=True)
        return packet_id

    # ================================================================ the overlay

    def _keep_for_peers(self, packet_id: bytes, origin: bytes, timestamp_us: int, raw: bytes) -> bytes:
        """A new packet, as we would relay it: kept to give again, and announced to lazy links when
        kept (an id we could not serve is not announced). Returns its gossip id."""
        gid = gossip_id(origin, packet_id)
        if self._cache is not None and self._overlay is not None:
            if self._cache.put(gid, origin, timestamp_us, raw, self.clock.wall_us()):
                self._overlay.seen(gid)
        return gid

    def _push_targets(self, came_from: Link | None, origin: bytes) -> list[Link]:
        """The links a new packet is pushed on: every link without the overlay; with it, the eager links
        and the links of peers that do not speak gossip (they get everything, as before)."""
        ov = self._overlay
        return [link for peer, link in list(self._links.items())
                if link is not came_from and peer != origin
                and (ov is None or peer not in self._gossip_links or ov.is_eager(peer))]

    def _send_or_defer(self, link: Link, gid: bytes, raw: bytes, *, own: bool) -> bool:
        if link.send_packet(raw, own=own):
            return True
        # No room in the link's queue now: with the packet in the cache, keep only its id and send it
        # when the queue drains (a heartbeat), so relaying a large packet never needs a larger queue.
        if self._cache is not None and gid in self._cache and link.is_open:
            waiting = self._deferred.setdefault(link.peer_node_id, deque())
            if gid not in waiting:
                if len(waiting) >= DEFERRED_PER_LINK:
                    waiting.popleft()
                    self.metrics.inc("dropped.deferred_overflow")
                waiting.append(gid)
            self.metrics.inc("packets.deferred")
        else:
            self.metrics.inc("dropped.send_queue_full")
        return False

    def _send_deferred(self) -> None:
        if self._cache is None:
            return
        for peer, waiting in list(self._deferred.items()):
            link = self._links.get(peer)
            if link is None or not link.is_open:
                self._deferred.pop(peer, None)
                continue
            while waiting and link.queue.bytes < link.queue.max_bytes // 2:
                raw = self._cache.get(waiting[0])
                if raw is not None and not link.send_packet(raw, own=False):
                    break
                waiting.popleft()
                if raw is None:
                    self.metrics.inc("dropped.deferred_expired")
            if not waiting:
                self._deferred.pop(peer, None)

    def _send_gossip(self, peer: bytes, body: Gossip) -> None:
        link = self._links.get(peer)
        if link is None:
            return
        raw = encode_packet(body, self.signer, hop_limit=0, timestamp_us=self.clock.wall_us(), limits=self._wire)
        # The control lane: a few kB at most, never evicted by data (a lost graft would leave the two
        # ends disagreeing on the link's role, a lost announcement its packets unrepaired); a peer
        # that leaves it unread is cut off like one that leaves its pings unread.
        if link.send_control_raw(raw):
            self.metrics.inc("gossip.sent")
        else:
            self.metrics.inc("gossip.unsent")

    def _do(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Graft):
                self._send_gossip(a.peer, Gossip(mesh="graft"))
            elif isinstance(a, Prune):
                self._send_gossip(a.peer, Gossip(mesh="prune"))
            elif isinstance(a, Have):
                self._send_gossip(a.peer, Gossip(have=a.ids))
            elif isinstance(a, Want):
                self._send_gossip(a.peer, Gossip(want=a.ids))
            elif isinstance(a, Settled):
                link = self._links.get(a.peer)
                if link is not None:
                    self._exchange_peers(link)     # the members it now holds can be dialled
            elif isinstance(a, Serve) and self._cache is not None:
                link = self._links.get(a.peer)
                for pid in a.ids:
                    raw = self._cache.get(pid)
                    if link is not None and raw is not None and self._send_or_defer(link, pid, raw, own=False):
                        self.metrics.inc("gossip.served")

    def _on_gossip(self, link: Link, packet: Packet) -> None:
        peer = link.peer_node_id
        ov, cache = self._overlay, self._cache
        if ov is None or cache is None or packet.origin != peer or peer not in ov:
            # Only a linked peer speaks for itself about its own link; anything else is not ours to act on.
            self._packet_refused(link, packet, "gossip_refused", "gossip not from the linked peer, or the overlay is off")
            return
        g: Gossip = packet.body  # type: ignore[assignment]
        self.metrics.inc("gossip.received")
        actions: list[Any] = []
        if g.mesh == "graft":
            actions += ov.on_graft(peer)
        elif g.mesh == "prune":
            ov.on_prune(peer)
        if g.have:
            now_us = self.clock.wall_us()
            cache.expire(now_us)
            actions += ov.on_have(peer, g.have, self._is_new)
        if g.want:
            actions += ov.on_want(peer, g.want, cache.size_of)
        if g.peers and self.config.discovery.peer_exchange:
            self._learn_addresses(link, g.peers)
        self._do(actions)

    def _learn_addresses(self, link: Link, peers: tuple[tuple[bytes, str], ...]) -> None:
        """Peer exchange: dial candidates for members a peer links to, so one bootstrap peer is enough.
        Only for members (their certificates were checked); at most EXCHANGE_PER_PEER from one peer and
        EXCHANGE_CANDIDATES in all; never an unspecified or multicast address, nor a loopback one heard
        over a link that is not itself on loopback. The dial presents the expected node id, so a wrong
        address costs a failed dial with backoff, never a wrong link; an address that keeps failing is
        replaced by the next one a peer gives for that node."""
        from .config import ConfigError, parse_peer_address

        source = link.peer_node_id
        px = [c for k, c in self._candidates.items() if isinstance(k, tuple) and k[0] == "px"]
        from_source = sum(1 for c in px if c.source == source)
        on_loopback = _is_loopback(link.address.rsplit(":", 1)[0])
        for node_id, address in peers:
            if node_id == self.node_id or node_id not in self.members:
                continue
            try:
                where = parse_peer_address(address)
            except (ConfigError, ValueError):
                self.metrics.inc("dropped.bad_address")
                continue
            if not _dialable(where.host, allow_loopback=on_loopback):
                self.metrics.inc("dropped.bad_address")
                continue
            known = self._candidates.get(("px", node_id))
            if known is not None:
                if known.failures >= 3 and (known.host, known.port) != (where.host, where.port):
                    known.host, known.port, known.failures, known.source = where.host, where.port, 0, source
                    known.backoff.reset()
                continue
            if from_source >= EXCHANGE_PER_PEER or len(px) >= EXCHANGE_CANDIDATES:
                return
            self._add_candidate(("px", node_id), where.host, where.port, node_id, delay=0.0, source=source)
            from_source += 1
            px.append(self._candidates[("px", node_id)])

    def _forget_candidates(self) -> None:
        """Addresses from peer exchange of members the directory has forgotten go too."""
        for key in [k for k in self._candidates if isinstance(k, tuple) and k[0] == "px" and k[1] not in self.members]:
            if key not in self._dialers:
                del self._candidates[key]

    def _exchange_peers(self, link: Link) -> None:
        entries = []
        for peer, other in self._links.items():
            port = self._listen_ports.get(peer)
            if other is link or port is None:
                continue
            host = other.address.rsplit(":", 1)[0]
            entries.append((peer, f"{host}:{port}"))
        if entries:
            self._rng.shuffle(entries)
            self._send_gossip(link.peer_node_id, Gossip(peers=tuple(entries[:MAX_GOSSIP_PEERS])))

    def _is_new(self, gid: bytes) -> bool:
        """A gossip id we have not accepted (nor hold in the cache)."""
        return not self.router.dedup.knows(gid) and (self._cache is None or gid not in self._cache)

    async def _heartbeat(self) -> None:
        while True:
            await self.clock.sleep(HEARTBEAT)
            try:
                if self._overlay is not None:
                    self._do(self._overlay.heartbeat(self._is_new))
                self._send_deferred()
                self._forget_candidates()
                self._manage_links()
            except Exception:   # a bug here must not end announcements, repairs and redials for good
                self.metrics.inc("overlay.errors")
                log.exception("overlay heartbeat failed; going on")

    # ---- candidates and the links we dial

    def _add_candidate(self, key: object, host: str, port: int, expected: bytes | None, *, delay: float,
                       source: bytes | None = None) -> None:
        if key not in self._candidates:
            backoff = Backoff(self.config.discovery.reconnect_min, self.config.discovery.reconnect_max, self._rng)
            self._candidates[key] = _Candidate(host, port, expected, backoff,
                                               not_before=self.clock.monotonic() + delay, source=source)
        if self._state == "running":    # while starting, every static peer is added first, then one pick
            self._manage_links()

    def _manage_links(self) -> None:
        """Dial random candidates while fewer than `overlay_degree` links are open or being dialled; every
        candidate without the overlay (each one a dialler of its own, as before the overlay)."""
        if self._state not in ("starting", "running"):
            return
        if self._overlay is None:
            room = len(self._candidates)
        else:
            handshaking = sum(1 for link in self._running if link.outbound and link.state is LinkState.HANDSHAKE)
            room = self.config.limits.overlay_degree - len(self._links) - len(self._dials_pending) - handshaking
        if room <= 0:
            return
        now = self.clock.monotonic()
        eligible = []
        for key, c in self._candidates.items():
            target = c.expected or self._static_ids.get(key)
            if key in self._dialers or c.not_before > now or (target is not None and (
                    target in self._links or target in self._dialing)):
                continue
            eligible.append(key)
        chosen: set[bytes] = set()
        self._rng.shuffle(eligible)
        for key in eligible:
            if room <= 0:
                break
            c = self._candidates[key]
            target = c.expected or self._static_ids.get(key)
            if target is not None and target in chosen:
                continue        # the same node under two keys (static and peer exchange): one dial
            if target is not None:
                chosen.add(target)
            room -= 1
            self._dials_pending.add(key)   # counted now: the task starts later, after more calls may come
            task = asyncio.get_running_loop().create_task(self._dial_candidate(key), name=f"dial:{key}")
            self._dialers[key] = task
            task.add_done_callback(functools.partial(self._dial_done, key))

    def _dial_done(self, key: object, task: asyncio.Task[None]) -> None:
        self._dials_pending.discard(key)     # also when cancelled before it ever ran
        if self._dialers.get(key) is task:
            del self._dialers[key]

    async def _dial_candidate(self, key: object) -> None:
        c = self._candidates[key]
        target = c.expected or self._static_ids.get(key)
        if target is not None:
            self._dialing.add(target)
        try:
            stream = await self._transport.connect(c.host, c.port, timeout=DIAL_TIMEOUT)
        except TransportError as e:
            self.metrics.inc("dial.failed")
            c.failures += 1
            c.not_before = self.clock.monotonic() + c.backoff.next()
            self._dial_failed(key, c.host, c.port, e)
            return
        except asyncio.CancelledError:
            if self._candidates.get(key) is c:   # discovery lost it, or we are stopping (not a replacement)
                del self._candidates[key]
            raise
        finally:
            self._dials_pending.discard(key)
            if target is not None:
                self._dialing.discard(target)
        if c.failures:
            log.info("reached %s at %s after %d failed dials", _dial_label(key), _address(c.host, c.port), c.failures)
            c.failures = 0
            self._log_limit.forget(("dial", key))
        self._static_ids[key] = stream.peer_node_id
        if stream.peer_node_id in self._links:
            stream.close()
            return
        try:
            if await self._run_link(stream, outbound=True, expected=c.expected):
                c.backoff.reset()
            c.not_before = self.clock.monotonic() + c.backoff.next()
        except asyncio.CancelledError:
            if self._candidates.get(key) is c:
                del self._candidates[key]
            raise

    def subscribe(self, topic: str, handler: PacketHandler) -> Subscription:
        """Call `handler(packet)` for every new, verified packet on `topic` from another node."""
        return self._subscribe(topic, handler, owner=None)

    def _subscribe(self, topic: str, handler: PacketHandler, *, owner: _WorkerEntry | None) -> Subscription:
        return self.router.subscribe(topic, functools.partial(self._call_handler, handler, owner))

    def _call_handler(self, handler: PacketHandler, owner: _WorkerEntry | None, packet: Packet) -> None:
        who = owner.name if owner is not None else "subscriber"
        try:
            result = handler(packet)
        except Exception:
            self._handler_failed(owner, who)
            return
        if inspect.isawaitable(result):
            task = self._spawn(result, f"handler:{who}")
            task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is None
                                   else self._handler_failed(owner, who, t.exception()))

    def _handler_failed(self, owner: _WorkerEntry | None, who: str, exc: BaseException | None = None) -> None:
        self.metrics.inc("workers.handler_errors")
        if owner is not None:
            owner.metrics.inc("handler_errors")
        if exc is None:
            log.exception("packet handler of %s failed", who)
        else:
            log.error("packet handler of %s failed", who, exc_info=exc)

    # ================================================================ links

    def _hello(self) -> Hello:
        caps = ("vectors", "gossip") if self._overlay is not None else ("vectors",)
        return Hello(name=self.name, public_key=self.signer.public_key_bytes, caps=caps,
                     topics=tuple(self.router.topics[:64]), max_frame=self._wire.max_frame,
                     cert=self.identity.cert_der, mesh=self.identity.mesh_id, listen_port=self.port or None)

    async def _on_stream(self, stream: Stream) -> None:
        await self._run_link(stream, outbound=False)

    async def _run_link(self, stream: Stream, *, outbound: bool, expected: bytes | None = None) -> bool:
        """Run a link over `stream` until it closes; True if it ever opened."""
        peer = stream.peer_node_id
        refusal = None
        if self._state in ("stopping", "stopped"):
            refusal = "shutting_down"
        elif peer == self.node_id:
            refusal = "self"
        elif expected is not None and peer != expected:
            refusal = "id_mismatch"
        else:
            refusal = self._slot_refusal(peer, outbound=outbound)
        if refusal is not None:
            if refusal != "shutting_down":
                self._on_refused(refusal, stream.peer_address,
                                 f"certificate node id {peer.hex()[:16]}" if refusal in ("self", "id_mismatch") else
                                 f"{len(self._links)} links open, {len(self._running) - len(self._links)} in "
                                 f"handshake; node {peer.hex()[:16]}")
            stream.close()
            return False
        session = Session(self.signer, self._hello(), limits=self._wire, key_for=self.members.key_for,
                          reassembly_budget=self._reassembly_budget, hello_held=self.members.held,
                          verified=self.members.seen, already_seen=self._already_seen)
        link = Link(stream, session, outbound=outbound, owner=self, settings=self._link_settings, clock=self.clock,
                    capture=self._capture)
        self._running.add(link)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await link.run()
        finally:
            self._running.discard(link)
            self._closed_bytes["bytes.sent"] += link.bytes_out
            self._closed_bytes["bytes.received"] += link.bytes_in
            if task is not None:
                self._tasks.discard(task)
            self._notify_closed()
        return link.opened_at is not None

    def _slot_refusal(self, peer: bytes, *, outbound: bool) -> str | None:
        """Why a new link to `peer` (its certificate already checked) gets no slot, or None.

        One identity, one link: a second one is let in only to replace or race the first (see `_keep`),
        never a third, so a member cannot hold slots with links that never say hello. Links still in
        handshake have slots of their own (`MAX_HANDSHAKING`), so they never take one from a member
        whose link is open, and `max_peers` counts open links only."""
        mine = [link for link in self._running if link.peer_node_id == peer]
        # Two links may race (both ends dial at once, or a redial while the old link is not yet known
        # dead): `_keep` picks one. A third, or a second accepted one still in handshake, is refused.
        if len(mine) >= 3 or (not outbound and any(not link.outbound and link.state is LinkState.HANDSHAKE
                                                   for link in mine)):
            return "one_link_per_node"
        if peer not in self._links and len(self._links) >= self.config.limits.max_peers:
            return "max_peers"
        if len(self._running) - len(self._links) >= MAX_HANDSHAKING:
            return "handshakes_full"
        return None

    def _already_seen(self, origin: bytes, packet_id: bytes) -> bool:
        if self.router.dedup.seen(origin, packet_id):
            self.metrics.inc("packets.duplicate")
            return True
        return False

    def _keep(self, existing: Link, new: Link) -> Link:
        """Which of two links to the same peer survives (see the module docstring)."""
        smaller = min(self.node_id, new.peer_node_id)

        def by_smaller(link: Link) -> bool:
            return (self.node_id if link.outbound else link.peer_node_id) == smaller

        if by_smaller(existing) != by_smaller(new):
            return existing if by_smaller(existing) else new
        return new

    # LinkOwner -----------------------------------------------------------

    def link_open(self, link: Link, event: HelloReceived) -> None:
        peer = link.peer_node_id
        if event.node_id != peer:
            self._on_refused("id_mismatch", link.address, f"hello from {event.node_id.hex()[:16]} on a link "
                                                          f"certified for {peer.hex()[:16]}")
            link.close("id_mismatch")
            return
        new_member = None
        if event.packet is not None:
            try:
                new_member = self.members.learn(event.packet)
            except MemberRefused as e:
                self._on_refused(f"hello_{e.reason}", link.address, str(e))
                link.close("bad_hello", str(e)[:200])
                return
        existing = self._links.get(peer)
        if existing is not None and existing is not link and existing.state.value in ("handshake", "open"):
            if self._identity_conflict(existing, link):
                return
            keep = self._keep(existing, link)
            loser = link if keep is existing else existing
            self.metrics.inc("links.duplicate")
            log.info("two links to %s (%s): keeping the one dialled by %s", safe_text(link.name), peer.hex()[:16],
                     "us" if keep.outbound else "them")
            loser.close("duplicate")
            if loser is link:
                return
        self._links[peer] = link
        self.metrics.inc("links.opened")
        if event.hello.listen_port:
            self._listen_ports[peer] = event.hello.listen_port
        if self._overlay is not None and self._cache is not None and "gossip" in event.hello.caps:
            self._gossip_links.add(peer)
            self._do(self._overlay.link_opened(peer, self._cache.ids(self.clock.wall_us())))
            self._exchange_peers(link)
        log.info("peer %s (%s) up at %s (%s)", safe_text(link.name), peer.hex()[:16], link.address,
                 "dialled" if link.outbound else "accepted")
        # A new link is a new session: the peer may have restarted and hold nothing we told it before.
        self.members.forget_holder(peer)
        self._catch_up(link)
        if new_member is not None and event.packet is not None:
            self._announce(event.packet, exclude=link)

    def _identity_conflict(self, existing: Link, new: Link) -> bool:
        """A second link from the same dialler while the first is alive: two daemons share one identity
        (a copied key), not a redial (a dialler redials only once its old link is closed or timed out,
        and then the old link here has heard nothing for a ping interval). Keeping the newer, as `_keep`
        does for a redial, would make the two twins replace each other for ever; keep the first, refuse
        the second, and say so loudly."""
        if existing.outbound != new.outbound or existing.state is not LinkState.OPEN:
            return False
        if self.clock.monotonic() - existing.last_rx > self._link_settings.ping_interval:
            return False
        self.metrics.inc("links.identity_conflict")
        peer = new.peer_node_id
        # Once can be a race of two dialers of one daemon (static and mDNS); twins keep coming back.
        seen = self._conflicts.pop(peer, 0) + 1
        self._conflicts[peer] = seen
        while len(self._conflicts) > 256:
            self._conflicts.pop(next(iter(self._conflicts)))
        held = self._log_limit.allow(("identity_conflict", peer), "twin") if seen >= 3 else None
        if seen < 3:
            log.info("a second link from node %s (%s) while the first is alive: keeping the first",
                     peer.hex()[:16], new.address)
        if held is not None:
            log.error("two daemons present the identity of node %s: one linked at %s, another at %s; keeping the "
                      "first. Give every daemon its own key (meshnode node init)%s", new.peer_node_id.hex()[:16],
                      existing.address, new.address, _held_note(held))
        new.close("identity_conflict")
        return True

    def _announce(self, packet: Packet, *, exclude: Link) -> None:
        # Membership spreads by news, not by hop count: a node tells its other peers about a member it
        # has just learned (a hello it already holds is not news, so this ends), even when the hello
        # reached it as a hop-limit-0 catch-up. Otherwise, in a line a-b-c-d-e whose c-d link opens
        # last, e never learns a (found with the simulator). Never to the peer it came from, to the
        # member itself, or to a peer that has shown it holds that hello (it sent it to us): those
        # copies were most of what a join cost (issue 15). The hello of a new peer waits NEWS_DELAY:
        # in a full mesh the others link to it too, and their catch-ups tell us who holds it. Paced:
        # see _catch_up.
        origin = packet.origin
        delay = NEWS_DELAY if origin == exclude.peer_node_id else 0.0
        for other in list(self._links.values()):
            if other is not exclude and not self.members.holds(other.peer_node_id, origin):
                self._catch_up(other, (origin,), delay=delay)

    def _catch_up(self, link: Link, node_ids: tuple[bytes, ...] | None = None, *, delay: float = 0.0) -> None:
        """Send `link`'s peer the hellos of `node_ids` (news, at once), or of every member we hold (the
        catch-up of a new link: at once from the accepting side, after CATCH_UP_DELAY from the dialling
        side, so that the peer's catch-up, which may well hold most of them, reaches us first and what
        it told us is not sent back). Skipped at send time: members
        forgotten meanwhile, the peer itself, and hellos the peer has shown it holds. Through the
        link's paced announcements, which never fill more than part of the control lane, so that no
        number or size of stored hellos can overflow it and close the link (issue 16: a 3 MB hello
        closed every link with send_stalled)."""
        peer = link.peer_node_id
        members = self.members

        def hello_for(node_id: bytes) -> bytes | None:
            member = members.get(node_id)
            if member is None or node_id == self.node_id or members.holds(peer, node_id):
                return None
            members.note_holder(node_id, peer)        # it will have it: not sent to it twice
            return set_hop_limit(member.hello_raw, 0)

        if node_ids is None:
            # The side that accepted the link (usually the one that has been in the mesh longer) goes
            # first; the dialler (usually the newcomer, holding little) waits, then skips what it was told.
            link.announce([m.node_id for m in members if m.node_id != peer], hello_for,
                          delay=CATCH_UP_DELAY if link.outbound else 1e-6)
        else:
            link.announce(node_ids, hello_for, delay=delay)

    def link_member(self, link: Link, packet: Packet) -> None:
        if packet.origin == self.node_id:
            return
        try:
            member = self.members.learn(packet, via=link.peer_node_id, relayed=True)
        except MemberRefused as e:
            self.metrics.inc(f"dropped.member_{e.reason}")
            held = self._log_limit.allow(("member", link.peer_node_id), e.reason)
            if held is not None and e.reason != "hello_churn":   # bounded lines; churn is only counted
                log.warning("member announcement from %s via %s refused: %s%s", packet.origin.hex()[:16], safe_text(link.name),
                            safe_text(str(e), limit=300), _held_note(held))
            return
        if member is None:
            return
        self.metrics.inc("members.learned")
        log.info("learned member %s (%s) via %s", safe_text(member.name), member.node_id.hex()[:16],
                 safe_text(link.name))
        self._announce(packet, exclude=link)

    def link_packet(self, link: Link, packet: Packet) -> None:
        if packet.header.kind is Kind.GOSSIP:
            self._on_gossip(link, packet)
            return
        now_us = self.clock.wall_us()
        verdict = self.router.accept(packet, now_us)
        if verdict is Verdict.DUPLICATE:
            self.metrics.inc("packets.duplicate")
            return
        if verdict is not Verdict.NEW:
            skew = (packet.header.timestamp_us - now_us) / 1e6
            self._packet_refused(link, packet, verdict.value,
                                 f"stamped {skew:+.0f} s from our clock" if verdict is Verdict.FUTURE else
                                 f"stamped {-skew:.0f} s ago, older than the replay window or this origin's "
                                 f"horizon")
            return
        self.metrics.inc("packets.received")
        # Delivered here whatever the rate (reading and verifying it was the cost, already paid), but
        # relayed only within its origin's rate: one member's flood stops at the first hop instead of
        # filling every queue of the mesh (and neither cached nor announced, for the same reason).
        others = len(self._links) - (link.peer_node_id in self._links)    # peers we could relay it to
        if others > 0 and not self._origin_rates.allow(packet.origin, len(packet.raw), self.clock.monotonic()):
            self._packet_refused(link, packet, "rate_limited", f"not relayed: over {self.config.limits.origin_rate:g} "
                                 f"packets/s or {self.config.limits.origin_rate_bytes} bytes/s from one origin")
            raw = None
        else:
            raw = Router.forward_raw(packet)
            gid = self._keep_for_peers(packet.packet_id, packet.origin, packet.header.timestamp_us,
                                       raw if raw is not None else set_hop_limit(packet.raw, 0))
        if raw is not None:
            for other in self._push_targets(link, packet.origin):
                if self._send_or_defer(other, gid, raw, own=False):
                    self.metrics.inc("packets.forwarded")
        topic = getattr(packet.body, "topic", None)
        for sub in self.router.subscribers(topic):
            sub.handler(packet)
            self.metrics.inc("packets.delivered")

    def _packet_refused(self, link: Link, packet: Packet, reason: str, detail: str) -> None:
        self.metrics.inc(f"dropped.{reason}")
        link.dropped[reason] += 1
        # By origin: a member flooding stale, future-stamped or too many packets is named once in a while,
        # not once per packet (it decides how many there are).
        held = self._log_limit.allow(("origin", packet.origin), reason)
        if held is not None:
            log.warning("dropped packets of %s (via %s): %s: %s%s", packet.origin.hex()[:16], safe_text(link.name or link.address),
                        reason, detail, _held_note(held))

    def link_dropped(self, link: Link, reason: str, detail: str) -> None:
        self.metrics.inc(f"dropped.{reason}")
        held = self._log_limit.allow(("dropped", link.peer_node_id), reason)
        if held is not None:   # a member may send bad packets without end: bounded lines
            log.warning("dropped a packet from %s (%s): %s%s", safe_text(link.name or link.address), reason,
                        safe_text(detail, limit=300),
                        _held_note(held))

    def link_closed(self, link: Link) -> None:
        peer = link.peer_node_id
        for value, n in link.queue.stats.evicted.items():
            self._closed_drops[f"dropped.evicted_{value}"] += n
        if self._links.get(peer) is link:
            del self._links[peer]
            self._gossip_links.discard(peer)
            self._deferred.pop(peer, None)
            self._listen_ports.pop(peer, None)
            self.members.forget_holder(peer)
            if self._overlay is not None:
                self._overlay.link_closed(peer)
            self.metrics.inc("links.closed")
            self.metrics.inc(f"links.lost.{(link.close_reason or 'closed').split(':')[0]}")
            log.info("peer %s (%s) down: %s", safe_text(link.name), peer.hex()[:16], safe_text(link.close_reason))
        self._notify_closed()
        self._manage_links()

    def _notify_closed(self) -> None:
        self._link_closed.set()
        self._link_closed = asyncio.Event()

    # ================================================================ dialling

    def _on_refused(self, reason: str, address: str, detail: str) -> None:
        self.metrics.inc(f"refused.{reason}")
        self._refusals.append({"time_us": self.clock.wall_us(), "address": address, "reason": reason,
                               "detail": detail[:300]})
        if reason == "id_mismatch" and self._discovery is not None:
            # Another node answered at an mDNS hint's address: for the node ids dialled there, a failure.
            from .net.tcp import HandshakeRefused

            host, _, port_text = address.rpartition(":")
            hints = getattr(self._discovery, "hints", None)
            if hints is not None and port_text.isdigit():
                for node_id in hints.targeting((host.strip("[]"), int(port_text))):
                    self._dial_failed(("mdns", node_id), host.strip("[]"), int(port_text),
                                      HandshakeRefused("id_mismatch", detail))
        if reason in ("self",):
            return
        # By source, not host:port: a stranger reconnecting comes from a new port every time, and an
        # IPv6 host owns a whole /64 (net/admission.py: the same sources the handshake limits count).
        from .net.admission import source_of

        host = address.rsplit(":", 1)[0].strip("[]")
        held = self._log_limit.allow(("refused", source_of(host)), reason)
        if held is not None:
            log.warning("refused %s: %s (%s)%s", address, reason, safe_text(detail, limit=300), _held_note(held))

    def _start_dialer(self, key: object, host: str, port: int, expected: bytes | None, *,
                      initial_delay: float) -> None:
        if key in self._dialers or self._state in ("stopping", "stopped"):
            return
        self._add_candidate(key, host, port, expected, delay=initial_delay)

    async def connect(self, host: str, port: int) -> None:
        """Dial host:port now and run the link in the background; raises TransportError if the dial fails."""
        stream = await self._transport.connect(host, port, timeout=DIAL_TIMEOUT)
        self._spawn(self._run_link(stream, outbound=True), f"link:{host}:{port}")

    def _dial_failed(self, key: object, host: str, port: int, error: TransportError) -> None:
        hints = getattr(self._discovery, "hints", None)
        if hints is not None and isinstance(key, tuple) and len(key) == 2 and key[0] == "mdns":
            # An mDNS address is a hint (net/hints.py): after a failure the next advertised endpoint is
            # tried, paced per endpoint and in all, instead of redialling a fake address forever.
            node_id = key[1]
            reached = getattr(self._transport, "reached", None)
            if isinstance(reached, dict) and reached.get((host, port)) == node_id and \
                    hints.current(node_id) == (host, port):
                hints.linked(node_id)      # it answered as node_id before: a verified endpoint
            dial = hints.failed(node_id, (host, port), self.clock.monotonic())
            if dial is not None:
                task = self._dialers.pop(key, None)
                self._candidates.pop(key, None)
                if task is not None:
                    task.cancel()          # it is not running a link: it just failed to make one
                self._start_dialer(key, dial.host, dial.port, node_id, initial_delay=dial.delay)
        if getattr(error, "reason", None) is not None:
            return  # a refused handshake: the transport has reported it through _on_refused, bounded there
        # The message names the address and the OS's reason ("Connection refused", "no connection within
        # 10 s"): the same text every backoff step while the peer stays down, new text when that changes.
        address = _address(host, port)
        text = " ".join(str(error).split())
        text = (text.removeprefix(f"{address}: ") or type(error).__name__)[:200]
        held = self._log_limit.allow(("dial", key), text)
        if held is None:
            return
        every = f"{self._log_limit.interval / 60:g} min"
        log.warning("cannot dial %s at %s: %s (%s)", _dial_label(key), address, safe_text(text),
                    f"{held} more failed dials since the last report" if held else
                    f"dialling again with backoff; the same failure is logged at most every {every}")

    def _on_discovery(self, event: Any) -> None:
        from .net.discovery import PeerFound, PeerLost

        # mDNS answers are hints (net/hints.py, kept by the discovery): a record for a known node id only
        # adds an endpoint to try if the current one fails; it never redirects a dialler or a link.
        hints = getattr(self._discovery, "hints", None)
        key = ("mdns", event.node_id)
        if isinstance(event, PeerFound):
            if any(p.host == event.host and p.port == event.port for p in self.config.discovery.static_peers):
                return  # a static dialer already covers it
            # Both ends find each other; the smaller node id dials first, the other a little later,
            # so that in the common case only one link is ever made.
            first = self.node_id < event.node_id
            delay = self._rng.uniform(0, 0.1) if first else self.config.discovery.reconnect_min * 2
            if hints is None:
                self._start_dialer(key, event.host, event.port, event.node_id, initial_delay=delay)
                return
            dial = hints.found(event.node_id, event.endpoints or ((event.host, event.port),), self.clock.monotonic())
            if dial is not None:
                self._start_dialer(key, dial.host, dial.port, event.node_id, initial_delay=dial.delay + delay)
        elif isinstance(event, PeerLost):
            if event.node_id in self._links:
                return  # anyone can send a goodbye for any name: it must not end a working link
            if hints is not None:
                hints.lost(event.node_id)
            candidates = getattr(self, "_candidates", None)
            if isinstance(candidates, dict):
                candidates.pop(key, None)
            task = self._dialers.pop(key, None)
            if task is not None:
                task.cancel()

    # ================================================================ workers

    async def _start_workers(self) -> None:
        loop = asyncio.get_running_loop()

        async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
            return await loop.run_in_executor(None, functools.partial(fn, *args))

        for wc in self.config.workers:
            entry = _WorkerEntry(wc.name, wc.type)
            self._workers.append(entry)
            try:
                entry.worker = load_worker_class(wc.type)(wc.name, wc.settings, base_dir=self._config_dir)
                storage = self.config.node.data_dir / "workers" / wc.name
                storage.mkdir(parents=True, exist_ok=True)
                ctx = WorkerContext(node_id=self.node_id, node_name=self.name, storage=storage,
                                    logger=logging.getLogger(f"meshnode.worker.{wc.name}"), metrics=entry.metrics,
                                    clock=self.clock, bus=_WorkerBus(self, entry), run_blocking=run_blocking,
                                    local_worker=self._local_worker)
                await entry.worker.start(ctx)
                entry.state = "running"
                log.info("worker %s (%s) started", wc.name, wc.type)
            except Exception as e:
                entry.state, entry.error = "failed", f"{type(e).__name__}: {e}"
                self.metrics.inc("workers.errors")
                log.exception("worker %s (%s) failed to start; the daemon goes on without it", wc.name, wc.type)

    def _local_worker(self, name: str) -> Worker | None:
        return next((e.worker for e in self._workers if e.name == name), None)

    async def _stop_workers(self) -> None:
        for entry in self._workers:
            for sub in entry.subscriptions:
                sub.cancel()
            if entry.worker is None or entry.state != "running":
                continue
            try:
                await entry.worker.stop()
                entry.state = "stopped"
            except Exception as e:
                entry.state, entry.error = "failed", f"stop: {type(e).__name__}: {e}"
                self.metrics.inc("workers.errors")
                log.exception("worker %s failed to stop cleanly", entry.name)

    # ================================================================ control API

    def status(self) -> dict[str, Any]:
        uptime = 0.0 if self._started_at is None else self.clock.monotonic() - self._started_at
        return {
            "node_id": self.identity.node_id_hex, "name": self.name, "mesh_id": self.identity.mesh_id.hex(),
            "version": __version__, "state": self._state,
            "listen": f"{self.config.node.listen_host}:{self.port}", "uptime_s": round(uptime, 3),
            "peers": len(self._links), "members": len(self.members), "member_list": self._member_list(),
            "overlay": self._overlay_status(),
            "workers": len(self._workers),
            "data_dir": str(self.config.node.data_dir), "mdns": self._discovery is not None,
            "capture": str(self._capture_path) if self._capture is not None else None,
            "recent_refusals": list(self._refusals),
        }

    def _overlay_status(self) -> dict[str, Any] | None:
        if self._overlay is None or self._cache is None:
            return None
        st = self._overlay.settings
        return {"degree": st.degree, "degree_low": st.degree_low, "degree_high": st.degree_high,
                "eager": len(self._overlay.eager), "lazy": len(self._overlay.lazy),
                "candidates": len(self._candidates), "cached_packets": len(self._cache),
                "cached_bytes": self._cache.bytes, "deferred": sum(map(len, self._deferred.values()))}

    def _member_list(self) -> list[dict[str, Any]]:
        # Linked members first, then by name; at most STATUS_MEMBERS (the directory holds up to
        # max_members, thousands), `members` says how many there are in all.
        listed = sorted(self.members, key=lambda m: (m.node_id not in self._links, m.name, m.node_id))
        return [{"name": m.name[:64], "node_id": m.node_id.hex(), "linked": m.node_id in self._links}
                for m in listed[:STATUS_MEMBERS]]

    def peers(self) -> list[dict[str, Any]]:
        listed = list(self._links.values())
        listed += [link for link in self._running if link not in listed]
        return [{**link.stats(), "role": self._role_of(link)} for link in listed]

    def _role_of(self, link: Link) -> str | None:
        """The link's part in the overlay: "eager" (packets pushed), "lazy" (ids announced), "flood" (a
        peer without gossip, or the overlay off: everything pushed), None while it is not open."""
        peer = link.peer_node_id
        if self._links.get(peer) is not link:
            return None
        if self._overlay is None or peer not in self._gossip_links:
            return "flood"
        return "eager" if self._overlay.is_eager(peer) else "lazy"

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for entry in self._workers:
            status: dict[str, Any] = {}
            if entry.worker is not None:
                try:
                    status = entry.worker.status()
                except Exception as e:
                    status = {"error": f"{type(e).__name__}: {e}"}
            out.append({"name": entry.name, "type": entry.type, "state": entry.state, "error": entry.error,
                        "status": status, "metrics": entry.metrics.snapshot()})
        return out

    async def classify(self, texts: list[str], worker: str | None = None) -> Any:
        """Classify `texts` with a running worker that can (one with a `classify` method, e.g. a
        transfer worker): the one named `worker`, or the only one there is."""
        from .control import ControlError

        able = [e for e in self._workers if e.state == "running" and callable(getattr(e.worker, "classify", None))]
        if worker is None and len(able) > 1:
            # a worker that answers through another (a transfer student with a learner) is not a second answer
            names = {e.name for e in able}
            able = [e for e in able if getattr(e.worker, "classifies_through", None) not in names]
        if worker is not None:
            able = [e for e in able if e.name == worker]
            if not able:
                raise ControlError(f"no running worker named {worker!r} that can classify")
        if not able:
            raise ControlError("no running worker on this daemon can classify (configure a transfer worker)")
        if len(able) > 1:
            raise ControlError(f"several workers can classify ({', '.join(e.name for e in able)}); name one")
        return await able[0].worker.classify(texts)  # type: ignore[union-attr]

    def counters(self) -> dict[str, int | float]:
        out: Counter[str] = Counter(self._closed_drops)
        for name, value in self.metrics.snapshot().items():
            if isinstance(value, (int, float)):
                out[name] += value
        out.update(self._closed_bytes)
        for link in list(self._running):
            for value, n in link.queue.stats.evicted.items():
                out[f"dropped.evicted_{value}"] += n
            out["bytes.sent"] += link.bytes_out
            out["bytes.received"] += link.bytes_in
        if self._discovery is not None:
            for name, value in self._discovery.counters.items():
                out[f"discovery.{name}"] += value
        out["peers"] = len(self._links)
        out["members"] = len(self.members)
        if self._overlay is not None:
            out["overlay.eager"] = len(self._overlay.eager)
            out["overlay.lazy"] = len(self._overlay.lazy)
        if self._log_limit.held_back:
            out["log.held_back"] = self._log_limit.held_back
        return dict(sorted(out.items()))


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _dialable(host: str, *, allow_loopback: bool) -> bool:
    """An address a peer may point us at: not unspecified or multicast, loopback only among loopback
    nodes (a member must not make us dial our own machine's services). Names are allowed (hosts of a
    LAN, the simulator's nodes); they are resolved by the dial like static peers."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host != "localhost" or allow_loopback
    if ip.is_unspecified or ip.is_multicast:
        return False
    return allow_loopback or not ip.is_loopback


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _held_note(held: int) -> str:
    return f"; {held} more like it since the last report" if held else ""


def _dial_label(key: object) -> str:
    """Who a dialer dials, for log lines: a static peer, or a node found over mDNS."""
    if isinstance(key, tuple) and len(key) == 2 and key[0] == "mdns" and isinstance(key[1], bytes):
        return f"mDNS peer {key[1].hex()[:16]}"
    if isinstance(key, tuple) and len(key) == 2 and key[0] == "px" and isinstance(key[1], bytes):
        return f"member {key[1].hex()[:16]} (address from a peer)"
    return "static peer"


# ==================================================================== the daemon process


def run_daemon(config: Config, *, capture: Path | None = None) -> int:
    """Run a Node until SIGINT/SIGTERM (graceful; a second signal exits at once). Returns the exit code.
    Raises IdentityError for unusable identity files (the CLI turns it into exit code 2)."""
    identity = load_node_identity(config.identity.key, config.identity.cert, config.identity.ca_cert)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(config, identity, capture))
    return uvloop.run(_serve(config, identity, capture))


async def _serve(config: Config, identity: NodeIdentity, capture: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s: shutting down (send it again to exit at once)", signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("second signal: exiting now")
            os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    node = Node(config, identity, capture=capture)
    try:
        await node.start()
    except Exception as e:  # port in use, control socket taken, capture file unusable, mDNS clash...
        log.error("cannot start: %s", " ".join(str(e).split()) or type(e).__name__)
        return 1
    started = time.monotonic()
    await stop.wait()
    stopping = time.monotonic()
    await node.stop()
    log.info("stopped: ran for %.1f s, shutdown took %.1f s", stopping - started, time.monotonic() - stopping)
    return 0
