"""One peer link: an authenticated Stream with a wire Session on it, a bounded send queue and three tasks.

    reader     stream bytes -> session.receive_data -> events for the owner (the node)
    writer     send queue -> stream, one frame at a time, control first (net/send_queue.py)
    keepalive  a ping every `ping_interval`; the link closes when nothing at all has arrived for
               `peer_timeout` (this also bounds the wait for the peer's hello)

The owner (node.py) gets the events through the LinkOwner methods and decides what they mean (which
links to keep, what to forward); the link only moves bytes, keeps its counters, and records every
packet in and out to the capture file when there is one. Closing is graceful (a bye, queued after the
control frames already waiting; queued data is dropped) with a deadline: a peer that does not read is
cut off after `close_grace` seconds. The link's clock also stamps the packets the session makes
(hello, ping, pong, bye, fragments), so that they share the data packets' timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import REAL_CLOCK, Clock
from ..display import safe_text
from ..wire.capture import CaptureRecord, Direction
from ..wire.errors import SessionError
from ..wire.packet import Packet
from ..wire.session import (
    Closed,
    HelloReceived,
    MemberAnnounced,
    PacketDropped,
    PacketReceived,
    PongReceived,
    Session,
    SessionFailed,
    State,
)
from .send_queue import SendQueue
from .transport import Stream

if TYPE_CHECKING:
    from .capture_file import CaptureWriter

__all__ = ["Link", "LinkOwner", "LinkSettings", "LinkState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    ping_interval: float = 5.0
    peer_timeout: float = 15.0
    send_queue: int = 1024               # data packets
    send_queue_bytes: int = 8 << 20      # bytes of data packets
    close_grace: float = 2.0             # seconds a closing link may take to flush its bye
    read_size: int = 1 << 16


class LinkState(Enum):
    HANDSHAKE = "handshake"              # stream up, waiting for the peer's hello
    OPEN = "open"
    CLOSING = "closing"                  # bye queued, flushing
    CLOSED = "closed"


class LinkOwner(Protocol):
    def link_open(self, link: Link, event: HelloReceived) -> None: ...
    def link_packet(self, link: Link, packet: Packet) -> None: ...
    def link_member(self, link: Link, packet: Packet) -> None: ...
    def link_dropped(self, link: Link, reason: str, detail: str) -> None: ...
    def link_closed(self, link: Link) -> None: ...


class _Announcements:
    """What a link still has to announce (member hellos), by key (node id), in order: `urgent` (news,
    as soon as the control lane has room) before `deferred` (a catch-up, not before `not_before`). Keys,
    not packets: the packet is looked up when its turn comes, so a backlog of 4096 members costs a few
    hundred kB of keys, not megabytes of hellos, and a member forgotten or replaced meanwhile goes out
    as it is then (or not at all)."""

    __slots__ = ("lookup", "urgent", "deferred", "not_before", "ready", "task", "sent", "skipped")

    def __init__(self, lookup: Callable[[bytes], bytes | None]) -> None:
        self.lookup = lookup
        self.urgent: OrderedDict[bytes, None] = OrderedDict()
        self.deferred: OrderedDict[bytes, None] = OrderedDict()
        self.not_before = 0.0
        self.ready: bytes | None = None          # framed, taken from a queue, waiting for room
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self.skipped = 0

    def __bool__(self) -> bool:
        return bool(self.ready is not None or self.urgent or self.deferred)


# Paced announcements take at most this fraction of the control lane's cap, so that pings, pongs and
# the bye always find room in the rest and the lane can never overflow because of them.
ANNOUNCE_SHARE = 2
ANNOUNCE_POLL_MIN = 0.002    # seconds between looks at the control lane while announcements wait for room
ANNOUNCE_POLL_MAX = 0.25


class Link:
    _announcements: _Announcements | None = None     # made by the first `announce`

    def __init__(self, stream: Stream, session: Session, *, outbound: bool, owner: LinkOwner,
                 settings: LinkSettings = LinkSettings(), clock: Clock = REAL_CLOCK,
                 capture: CaptureWriter | None = None) -> None:
        self.stream = stream
        self.session = session
        self.outbound = outbound
        self.owner = owner
        self.settings = settings
        self.clock = clock
        self.capture = capture
        self.peer_node_id: bytes = stream.peer_node_id
        self.address: str = stream.peer_address
        self.name: str = ""
        self.state = LinkState.HANDSHAKE
        self.close_reason: str | None = None
        self.queue = SendQueue(settings.send_queue, settings.send_queue_bytes)
        self.rtt: float | None = None
        self.bytes_in = self.bytes_out = 0
        self.packets_in = self.packets_out = 0
        self.dropped: Counter[str] = Counter()
        self.started = clock.monotonic()
        self.opened_at: float | None = None
        self.last_rx = self.started
        self._last_ping = self.started
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        session.observer = self._observe
        # One clock for the packets the session stamps (hello, ping, pong, bye, fragments), the data
        # packets the node stamps and the capture records: real time for a daemon, simulated time in
        # the simulator, never a mix of the two.
        session.wall_us = clock.wall_us

    # ---- lifecycle

    async def run(self) -> None:
        """Run until the link is closed (by either side, a failure or a timeout); returns then."""
        loop = asyncio.get_running_loop()
        tag = self.peer_node_id.hex()[:8]
        self._reader = loop.create_task(self._read_loop(), name=f"link-read:{tag}")
        self._tasks = [loop.create_task(self._write_loop(), name=f"link-write:{tag}"),
                       loop.create_task(self._keepalive(), name=f"link-alive:{tag}")]
        self._queue_control(self.session.start())
        try:
            # wait(), not `await self._reader`: the reader may be cancelled (abort) without that ending run()
            # as cancelled, and cancelling run() must raise here rather than be taken for the reader's end.
            await asyncio.wait({self._reader})
        finally:
            await self._finish()

    def close(self, reason: str, detail: str | None = None) -> None:
        """Say bye (reason) and close after flushing control frames; idempotent."""
        if self.state in (LinkState.CLOSING, LinkState.CLOSED):
            return
        self.close_reason = self.close_reason or reason
        self.state = LinkState.CLOSING
        self.queue.clear_data()
        self.queue.put_control(self.session.close(reason, detail), force=True)
        self._wakeup.set()
        with contextlib.suppress(RuntimeError):
            self._abort_timer = asyncio.get_running_loop().call_later(self.settings.close_grace, self._abort)

    def _abort(self) -> None:
        abort = getattr(self.stream, "abort", None)
        (abort or self.stream.close)()
        if self._reader is not None:
            self._reader.cancel()

    async def _finish(self) -> None:
        if self.state is not LinkState.CLOSING and self.state is not LinkState.CLOSED:
            self.close(self.close_reason or "closed")
        self._wakeup.set()                # the writer may be idle: let it see CLOSING and finish
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        # Give the writer its grace period to flush the bye, then stop everything.
        writer = self._tasks[0] if self._tasks else None
        if writer is not None and not writer.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                async with asyncio.timeout(self.settings.close_grace):
                    await asyncio.shield(writer)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self.stream.close()
        self.state = LinkState.CLOSED
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.settings.close_grace):
                await self.stream.wait_closed()
        try:
            self.owner.link_closed(self)
        except Exception:
            log.exception("link_closed handler failed")

    # ---- sending

    @property
    def is_open(self) -> bool:
        return self.state is LinkState.OPEN

    def send_packet(self, raw: bytes, *, own: bool) -> bool:
        """Queue an encoded, signed packet (ours or one being forwarded). False if not queued."""
        if self.state is not LinkState.OPEN:
            return False
        bulk = self.session.frame_count(len(raw)) > 1
        try:
            frames = self.session.send_raw_frames(raw)
        except SessionError:
            return False
        if not self.queue.put(frames, len(raw), own=own, bulk=bulk):
            self.dropped["send_queue_full"] += 1
            return False
        self._wakeup.set()
        return True

    def send_control_raw(self, raw: bytes) -> bool:
        """Queue an encoded packet in the control lane (member announcements): ahead of data, never evicted."""
        if self.state is not LinkState.OPEN:
            return False
        try:
            data = self.session.send_raw(raw)
        except SessionError:
            return False
        return self._queue_control(data)

    def announce(self, keys: Iterable[bytes], lookup: Callable[[bytes], bytes | None], *,
                 delay: float = 0.0) -> None:
        """Queue announcements (member hellos) to go out in the control lane as it drains, never more
        than 1/ANNOUNCE_SHARE of its cap at a time, so that no number or size of them can overflow it
        (which closes the link: `send_stalled`). `keys` name them (node ids); `lookup(key)` gives the
        packet to send when its turn comes, or None to skip it (forgotten, or the peer holds it by
        then). `delay` > 0: a catch-up, sent after `delay` seconds and after every announcement queued
        without delay. A key already waiting is not queued twice. The last `lookup` given is used."""
        if self.state is not LinkState.OPEN:
            return
        ann = self._announcements
        if ann is None:
            ann = self._announcements = _Announcements(lookup)
        ann.lookup = lookup
        target = ann.deferred if delay > 0 else ann.urgent
        for key in keys:
            if key not in ann.urgent and key not in ann.deferred:
                target[key] = None
        if delay > 0:
            ann.not_before = max(ann.not_before, self.clock.monotonic() + delay)
        self._feed_announcements()
        if ann and (ann.task is None or ann.task.done()):
            if ann.task is not None and ann.task in self._tasks:
                self._tasks.remove(ann.task)   # finished: the list holds one pacer at most
            ann.task = asyncio.get_running_loop().create_task(self._pace_announcements(),
                                                              name=f"link-announce:{self.peer_node_id.hex()[:8]}")
            self._tasks.append(ann.task)       # cancelled with the link's other tasks

    @property
    def announcements_waiting(self) -> int:
        ann = self._announcements
        return 0 if ann is None else len(ann.urgent) + len(ann.deferred) + (ann.ready is not None)

    def _feed_announcements(self) -> bool:
        """Move waiting announcements into the control lane while it has room; True if any moved."""
        ann = self._announcements
        if ann is None or self.state is not LinkState.OPEN:
            return False
        queue = self.queue
        window = queue.max_control_bytes // ANNOUNCE_SHARE
        moved = False
        while True:
            data = ann.ready
            if data is None:
                key = self._next_announcement(ann)
                if key is None:
                    return moved
                raw = ann.lookup(key)
                if raw is None:
                    ann.skipped += 1
                    continue
                try:
                    data = self.session.send_raw(raw)
                except SessionError:
                    return moved
                if len(data) > window:             # cannot happen with hellos <= MAX_HELLO_BYTES; never stall on it
                    ann.skipped += 1
                    continue
            if queue.control_bytes and queue.control_bytes + len(data) > window:
                ann.ready = data                   # no room now: first in line when the lane drains
                return moved
            ann.ready = None
            if not self._queue_control(data):
                return moved
            ann.sent += 1
            moved = True

    def _next_announcement(self, ann: _Announcements) -> bytes | None:
        if ann.urgent:
            return ann.urgent.popitem(last=False)[0]
        if ann.deferred and self.clock.monotonic() >= ann.not_before:
            return ann.deferred.popitem(last=False)[0]
        return None

    async def _pace_announcements(self) -> None:
        """Feed the control lane as it drains. The writer does not say when it has written a frame, so
        this looks again after a short wait, longer while nothing moves (a peer that reads nothing is
        closed by the keepalive, which ends this too)."""
        ann = self._announcements
        assert ann is not None
        wait = ANNOUNCE_POLL_MIN
        while ann and self.state is LinkState.OPEN:
            if self._feed_announcements():
                wait = ANNOUNCE_POLL_MIN
            elif ann.ready is None and not ann.urgent and ann.deferred:
                wait = max(ann.not_before - self.clock.monotonic(), ANNOUNCE_POLL_MIN)
            else:
                wait = min(wait * 2, ANNOUNCE_POLL_MAX)
            if not ann:
                return
            await self.clock.sleep(wait)

    def _queue_control(self, data: bytes) -> bool:
        if not data:
            return True
        if not self.queue.put_control(data):
            # The peer has not read a control backlog this large: it is not coming back.
            self.dropped["control_overflow"] += 1
            self.close("send_stalled", "the peer does not read")
            return False
        self._wakeup.set()
        return True

    # ---- tasks

    async def _read_loop(self) -> None:
        session = self.session
        while True:
            data = await self.stream.read(self.settings.read_size)
            if not data:
                self.close_reason = self.close_reason or "eof"
                return
            now = self.clock.monotonic()
            self.last_rx = now
            self.bytes_in += len(data)
            for event in session.receive_data(data, now):
                self._on_event(event)
            self._queue_control(session.data_to_send())
            if session.state is State.CLOSED:
                if self.state is LinkState.OPEN or self.state is LinkState.HANDSHAKE:
                    self.state = LinkState.CLOSING
                return

    def _on_event(self, event: object) -> None:
        owner = self.owner
        try:
            if isinstance(event, PacketReceived):
                owner.link_packet(self, event.packet)
            elif isinstance(event, PongReceived):
                if event.rtt is not None:
                    self.rtt = event.rtt
            elif isinstance(event, MemberAnnounced):
                owner.link_member(self, event.packet)
            elif isinstance(event, PacketDropped):
                self.dropped[event.reason.value] += 1
                owner.link_dropped(self, event.reason.value, event.detail)
            elif isinstance(event, HelloReceived):
                self.name = event.hello.name
                if self.state is LinkState.HANDSHAKE:
                    self.state = LinkState.OPEN
                    self.opened_at = self.clock.monotonic()
                owner.link_open(self, event)
            elif isinstance(event, SessionFailed):
                reason = event.error.reason.value
                self.dropped[reason] += 1
                self.close_reason = self.close_reason or f"failed:{reason}"
                owner.link_dropped(self, reason, str(event.error))
            elif isinstance(event, Closed):
                self.close_reason = self.close_reason or f"peer_bye:{event.reason}"
        except Exception:  # an owner bug must not kill the link's reader, let alone the daemon
            log.exception("handling %s from %s failed", type(event).__name__, self.address)

    async def _write_loop(self) -> None:
        queue, stream = self.queue, self.stream
        try:
            while True:
                frame = queue.next_frame()
                if frame is None:
                    if self.state is LinkState.CLOSING or self.state is LinkState.CLOSED:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                stream.write(frame)
                self.bytes_out += len(frame)
                await stream.drain()
        except (ConnectionError, OSError) as e:
            log.debug("write to %s failed: %s", self.address, e)
            self.close_reason = self.close_reason or "write_failed"
            if self._reader is not None:
                self._reader.cancel()
        finally:
            if self.state is LinkState.CLOSING:
                self.stream.close()   # bye flushed (or the stream is gone): let the reader see EOF

    async def _keepalive(self) -> None:
        s = self.settings
        tick = min(s.ping_interval, s.peer_timeout / 4)
        while self.state is LinkState.HANDSHAKE or self.state is LinkState.OPEN:
            await self.clock.sleep(tick)
            now = self.clock.monotonic()
            if now - self.last_rx > s.peer_timeout:
                what = "hello_timeout" if self.state is LinkState.HANDSHAKE else "timeout"
                log.info("peer %s (%s) silent for %.1f s: closing (%s)", safe_text(self.name or "?"), self.address,
                         now - self.last_rx, what)
                self.close(what)
                return
            if self.state is LinkState.OPEN and now - self._last_ping >= s.ping_interval:
                self._last_ping = now
                with contextlib.suppress(SessionError):
                    self._queue_control(self.session.ping(now))

    # ---- accounting

    def _observe(self, direction: str, raw: bytes) -> None:
        incoming = direction == "in"
        if incoming:
            self.packets_in += 1
        else:
            self.packets_out += 1
        if self.capture is not None:
            self.capture.write(CaptureRecord(self.clock.wall_us(), Direction.IN if incoming else Direction.OUT,
                                             self.peer_node_id, self.address, raw))

    def dropped_by_reason(self) -> dict[str, int]:
        out = Counter(self.dropped)
        for value, n in self.queue.stats.evicted.items():
            out[f"evicted_{value}"] += n
        return dict(sorted(out.items()))

    def stats(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {
            "node_id": self.peer_node_id.hex(),
            "name": self.name,
            "address": self.address,
            "direction": "out" if self.outbound else "in",
            "state": self.state.value,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "connected_s": round(now - (self.opened_at or self.started), 3),
            "idle_s": round(now - self.last_rx, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "dropped": self.dropped_by_reason(),
            "queue": {"packets": self.queue.packets, "bytes": self.queue.bytes,
                      "control_bytes": self.queue.control_bytes},
        }
