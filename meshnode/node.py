"""The daemon: wires the transport, links, member directory, router, discovery, workers, control API
and packet capture together, and owns start-up and shutdown.

Data flow. A stream (authenticated by the transport) becomes a Link running a Session. When the
peer's hello arrives the link is registered (one link per pair of nodes, see `_keep`), the peer
learns every member we know (their hellos, hop limit 0) and the other peers learn the new member.
A packet from a link is checked by the Router (duplicate, stale, from the future), delivered to the
local subscribers of its topic, and forwarded to every other peer while its hop limit lasts. A packet
we publish is signed once, remembered as seen, and queued to every peer.

One link per pair: when a second link to the same node opens, the one dialled by the node with the
smaller node id is kept; if both were dialled by the same node the newer is kept (the dialler only
redials once it considers the old link dead). Both ends apply the same rule, so they keep the same
link; the other is closed with a bye whose reason is "duplicate".

Packets from an origin whose hello we have not seen are dropped (`unknown_origin`, counted): a peer
sends us every member it knows, ahead of any data (control lane) when the link opens, and forwards a
newly learned member's hello ahead of that member's packets, so this only happens when a member is
refused (certificate) or the directory is full. Holding such packets would buy little and cost memory.
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
from .identity import NodeIdentity, load_node_identity
from .log_limit import LogLimiter
from .metrics import Metrics
from .net.backoff import Backoff
from .net.link import Link, LinkSettings
from .net.peers import MemberDirectory, MemberRefused
from .net.router import Router, Subscription, Verdict
from .net.tcp import TlsTransport
from .net.transport import Listener, Stream, Transport, TransportError
from .wire.packet import Hello, Packet, Signer, encode_packet, set_hop_limit
from .wire.session import HelloReceived, Session
from .workers.base import PacketHandler, Worker, WorkerContext
from .workers.registry import load_worker_class

__all__ = ["Node", "run_daemon"]

log = logging.getLogger("meshnode.node")

DIAL_TIMEOUT = 10.0
MAINTENANCE_INTERVAL = 5.0
RECENT_REFUSALS = 32
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
        self._link_settings = LinkSettings(ping_interval=lim.ping_interval, peer_timeout=lim.peer_timeout,
                                           send_queue=lim.send_queue, send_queue_bytes=lim.send_queue_bytes)
        self.members = MemberDirectory(identity, max_members=lim.max_members,
                                       now=lambda: self.clock.wall_us() / 1e6)
        self.router = Router(dedup_capacity=lim.dedup_cache, dedup_window_s=lim.dedup_window)
        if transport is None:
            transport = TlsTransport(identity, now=lambda: self.clock.wall_us() / 1e6)
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
            self._spawn(self._maintenance(), "maintenance")
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

    # ================================================================ publishing

    async def publish(self, body: Any, *, hop_limit: int | None = None) -> bytes:
        """Sign `body` as this node and queue it to every peer; returns its packet id."""
        hop = self.config.limits.hop_limit if hop_limit is None else hop_limit
        now_us = self.clock.wall_us()
        raw = encode_packet(body, self.signer, hop_limit=hop, timestamp_us=now_us, limits=self._wire)
        packet_id = raw[24:40]
        self.router.remember(packet_id, now_us, now_us)
        self.metrics.inc("packets.published")
        for link in list(self._links.values()):
            if not link.send_packet(raw, own=True):
                self.metrics.inc("dropped.send_queue_full")
        return packet_id

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
        return Hello(name=self.name, public_key=self.signer.public_key_bytes, caps=("vectors",),
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
        elif len(self._running) >= self.config.limits.max_peers:
            refusal = "max_peers"
        if refusal is not None:
            if refusal != "shutting_down":
                self._on_refused(refusal, stream.peer_address,
                                 f"certificate node id {peer.hex()[:16]}" if refusal != "max_peers" else
                                 f"already {len(self._running)} links")
            stream.close()
            return False
        session = Session(self.signer, self._hello(), limits=self._wire, key_for=self.members.key_for)
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
            keep = self._keep(existing, link)
            loser = link if keep is existing else existing
            self.metrics.inc("links.duplicate")
            log.info("two links to %s (%s): keeping the one dialled by %s", link.name, peer.hex()[:16],
                     "us" if keep.outbound else "them")
            loser.close("duplicate")
            if loser is link:
                return
        self._links[peer] = link
        self.metrics.inc("links.opened")
        log.info("peer %s (%s) up at %s (%s)", link.name, peer.hex()[:16], link.address,
                 "dialled" if link.outbound else "accepted")
        for member in self.members:
            if member.node_id != peer and member.node_id != self.node_id:
                link.send_control_raw(set_hop_limit(member.hello_raw, 0))
        if new_member is not None and event.packet is not None:
            self._announce(event.packet, exclude=link)

    def _announce(self, packet: Packet, *, exclude: Link) -> None:
        # Membership spreads by news, not by hop count: a node tells its other peers about a member it
        # has just learned (a hello it already holds is not news, so this ends), even when the hello
        # reached it as a hop-limit-0 catch-up. Otherwise, in a line a-b-c-d-e whose c-d link opens
        # last, e never learns a (found with the simulator).
        raw = Router.forward_raw(packet) or set_hop_limit(packet.raw, 0)
        for other in list(self._links.values()):
            if other is not exclude and other.peer_node_id != packet.origin:
                other.send_control_raw(raw)

    def link_member(self, link: Link, packet: Packet) -> None:
        if packet.origin == self.node_id:
            return
        try:
            member = self.members.learn(packet)
        except MemberRefused as e:
            self.metrics.inc(f"dropped.member_{e.reason}")
            held = self._log_limit.allow(("member", link.peer_node_id), e.reason)
            if held is not None:   # a member may relay bad hellos without end: bounded lines
                log.warning("member announcement from %s via %s refused: %s%s", packet.origin.hex()[:16], link.name,
                            str(e)[:300], _held_note(held))
            return
        if member is None:
            return
        self.metrics.inc("members.learned")
        log.info("learned member %s (%s) via %s", member.name, member.node_id.hex()[:16], link.name)
        self._announce(packet, exclude=link)

    def link_packet(self, link: Link, packet: Packet) -> None:
        verdict = self.router.accept(packet, self.clock.wall_us())
        if verdict is Verdict.DUPLICATE:
            self.metrics.inc("packets.duplicate")
            return
        if verdict is not Verdict.NEW:
            self.metrics.inc(f"dropped.{verdict.value}")
            link.dropped[verdict.value] += 1
            return
        self.metrics.inc("packets.received")
        raw = Router.forward_raw(packet)
        if raw is not None:
            for other in list(self._links.values()):
                if other is link or other.peer_node_id == packet.origin:
                    continue
                if other.send_packet(raw, own=False):
                    self.metrics.inc("packets.forwarded")
                else:
                    self.metrics.inc("dropped.send_queue_full")
        topic = getattr(packet.body, "topic", None)
        for sub in self.router.subscribers(topic):
            sub.handler(packet)
            self.metrics.inc("packets.delivered")

    def link_dropped(self, link: Link, reason: str, detail: str) -> None:
        self.metrics.inc(f"dropped.{reason}")
        held = self._log_limit.allow(("dropped", link.peer_node_id), reason)
        if held is not None:   # a member may send bad packets without end: bounded lines
            log.warning("dropped a packet from %s (%s): %s%s", link.name or link.address, reason, detail[:300],
                        _held_note(held))

    def link_closed(self, link: Link) -> None:
        peer = link.peer_node_id
        for value, n in link.queue.stats.evicted.items():
            self._closed_drops[f"dropped.evicted_{value}"] += n
        if self._links.get(peer) is link:
            del self._links[peer]
            self.metrics.inc("links.closed")
            self.metrics.inc(f"links.lost.{(link.close_reason or 'closed').split(':')[0]}")
            log.info("peer %s (%s) down: %s", link.name, peer.hex()[:16], link.close_reason)
        self._notify_closed()

    def _notify_closed(self) -> None:
        self._link_closed.set()
        self._link_closed = asyncio.Event()

    # ================================================================ dialling

    def _on_refused(self, reason: str, address: str, detail: str) -> None:
        self.metrics.inc(f"refused.{reason}")
        self._refusals.append({"time_us": self.clock.wall_us(), "address": address, "reason": reason,
                               "detail": detail[:300]})
        if reason in ("self",):
            return
        # By host, not host:port: a stranger reconnecting comes from a new port every time.
        held = self._log_limit.allow(("refused", address.rsplit(":", 1)[0]), reason)
        if held is not None:
            log.warning("refused %s: %s (%s)%s", address, reason, detail[:300], _held_note(held))

    def _start_dialer(self, key: object, host: str, port: int, expected: bytes | None, *,
                      initial_delay: float) -> None:
        if key in self._dialers or self._state in ("stopping", "stopped"):
            return
        task = asyncio.get_running_loop().create_task(self._dial_loop(key, host, port, expected, initial_delay),
                                                      name=f"dial:{host}:{port}")
        self._dialers[key] = task
        task.add_done_callback(lambda t, k=key: self._dialers.pop(k, None) if self._dialers.get(k) is t else None)

    async def connect(self, host: str, port: int) -> None:
        """Dial host:port now and run the link in the background; raises TransportError if the dial fails."""
        stream = await self._transport.connect(host, port, timeout=DIAL_TIMEOUT)
        self._spawn(self._run_link(stream, outbound=True), f"link:{host}:{port}")

    async def _dial_loop(self, key: object, host: str, port: int, expected: bytes | None,
                         initial_delay: float) -> None:
        backoff = Backoff(self.config.discovery.reconnect_min, self.config.discovery.reconnect_max, self._rng)
        if initial_delay > 0:
            await self.clock.sleep(initial_delay)
        failures = 0   # in a row, to say when the peer is reachable again
        while True:
            target = expected or self._static_ids.get(key)
            if target is not None and (target in self._links or target in self._dialing):
                closed = self._link_closed
                await closed.wait()
                continue
            if target is not None:
                self._dialing.add(target)
            try:
                stream = await self._transport.connect(host, port, timeout=DIAL_TIMEOUT)
            except TransportError as e:
                self.metrics.inc("dial.failed")
                failures += 1
                self._dial_failed(key, host, port, e)
                stream = None
            finally:
                if target is not None:
                    self._dialing.discard(target)
            opened = False
            if stream is not None:
                if failures:
                    log.info("reached %s at %s after %d failed dials", _dial_label(key), _address(host, port),
                             failures)
                    failures = 0
                    self._log_limit.forget(("dial", key))
                self._static_ids[key] = stream.peer_node_id
                if stream.peer_node_id in self._links:   # reached by another way meanwhile
                    stream.close()
                    continue
                opened = await self._run_link(stream, outbound=True, expected=expected)
            if opened:
                backoff.reset()
            await self.clock.sleep(backoff.next())

    def _dial_failed(self, key: object, host: str, port: int, error: TransportError) -> None:
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
        log.warning("cannot dial %s at %s: %s (%s)", _dial_label(key), address, text,
                    f"{held} more failed dials since the last report" if held else
                    f"dialling again with backoff; the same failure is logged at most every {every}")

    def _on_discovery(self, event: Any) -> None:
        from .net.discovery import PeerFound, PeerLost

        if isinstance(event, PeerFound):
            if any(p.host == event.host and p.port == event.port for p in self.config.discovery.static_peers):
                return  # a static dialer already covers it
            # Both ends find each other; the smaller node id dials first, the other a little later,
            # so that in the common case only one link is ever made.
            first = self.node_id < event.node_id
            delay = self._rng.uniform(0, 0.1) if first else self.config.discovery.reconnect_min * 2
            self._start_dialer(("mdns", event.node_id), event.host, event.port, event.node_id,
                               initial_delay=delay)
        elif isinstance(event, PeerLost):
            task = self._dialers.pop(("mdns", event.node_id), None)
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
            "workers": len(self._workers),
            "data_dir": str(self.config.node.data_dir), "mdns": self._discovery is not None,
            "capture": str(self._capture_path) if self._capture is not None else None,
            "recent_refusals": list(self._refusals),
        }

    def _member_list(self) -> list[dict[str, Any]]:
        # Linked members first, then by name; at most STATUS_MEMBERS (the directory holds up to
        # max_members, thousands), `members` says how many there are in all.
        listed = sorted(self.members, key=lambda m: (m.node_id not in self._links, m.name, m.node_id))
        return [{"name": m.name[:64], "node_id": m.node_id.hex(), "linked": m.node_id in self._links}
                for m in listed[:STATUS_MEMBERS]]

    def peers(self) -> list[dict[str, Any]]:
        listed = list(self._links.values())
        listed += [link for link in self._running if link not in listed]
        return [link.stats() for link in listed]

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
        if self._log_limit.held_back:
            out["log.held_back"] = self._log_limit.held_back
        return dict(sorted(out.items()))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _held_note(held: int) -> str:
    return f"; {held} more like it since the last report" if held else ""


def _dial_label(key: object) -> str:
    """Who a dialer dials, for log lines: a static peer, or a node found over mDNS."""
    if isinstance(key, tuple) and len(key) == 2 and key[0] == "mdns" and isinstance(key[1], bytes):
        return f"mDNS peer {key[1].hex()[:16]}"
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
