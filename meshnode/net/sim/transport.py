"""The simulated network: hosts joined by modelled links (links.py), with a Transport per host that
implements net/transport.py, so a real Node runs on it unchanged. Use it on a VirtualTimeLoop
(vclock.py) to run hours of simulated time in seconds; it also works on any event loop in real time.

Peers are authenticated by construction: the simulator hands the dialler the node id of the node that
listens on the dialled address (and the listener that of the dialler), as a verified TLS certificate
would. There is no TLS; the wire Session with its signatures runs unchanged on top.

A connection is two pipes, one per direction. Each pipe sends over the DirectedLink from its source
host to its destination host (shared by every connection between those two hosts that way):

- reliable: written bytes are cut into segments and given arrival times by the link; the pipe keeps
  them in order (a segment never arrives before the one ahead of it). While the path is down (link
  cut or a host crashed) new bytes wait in the pipe and segments on the way are held; when the path
  comes back, everything held arrives one propagation delay later, in order, as TCP's retransmissions
  would deliver it. A connection that the application gives up on meanwhile (peer timeout) is gone.
- datagram: each written frame (split with wire.frames.FrameDecoder) is one datagram: it arrives
  whole, or never, possibly twice, possibly out of order. A datagram that arrives while the path is
  down is lost.

Back-pressure: `drain()` waits while the link's bottleneck holds more than `queue_bytes` (reliable:
the socket send buffer) or `queue_bytes / 2` (datagram: room for the next frame; a frame that does
not fit in what is left is tail-dropped).

Every delivered byte is also counted by packet kind (kinds.py; LinkStats.kind_bytes): a datagram is
one frame, classified from its header as it arrives; a reliable pipe notes the frame boundaries and
kinds of what is written (StreamKinds) and splits each delivered segment along them.

Links are made lazily: `add_link(..., lazy=True)` and `add_segment` (one LAN: any two of its hosts
can connect) only declare who can reach whom with which profile; the DirectedLink pair is made when
a connection first uses it (or an event names it). A full mesh of 300 hosts is then 300 entries, not
90,000 links, and the report lists the links that carried something. Each link's generator derives
from (seed, its two ends), never from when it was made, so lazy creation changes no draw.

Reliable pipes hand what arrives to the reader in batches: a segment is put in the reader's buffer at
its arrival time (statistics use that time exactly), but the reader is woken only when the last
segment of a write arrives (a meshnode node writes one frame per write, so: when a frame is complete),
when the stream ends, and otherwise at least every WAKE_S of simulated time while a long write
trickles in. Waking the reader for half a frame does nothing but cost a task step and a decode
attempt; at 20 Mbit/s a 13 KB packet is nine segments, and one wake instead of nine is most of the
simulator's own cost. What the node sees differs only in that a read returns a frame's worth of bytes
at once, as a real recv() does when the data has already arrived, and that its "last heard" time lags
by at most WAKE_S in the middle of a long frame. Before a link is cut, a host crashes or a connection
is dropped, what had arrived by then is handed over first, so a batch never turns an arrived segment
into a held or lost one.

Connection setup takes a round trip (SYN, SYN-ACK) over the same links, with loss: a lost handshake
is retried after 1 s, 2 s, 4 s... (RFC 6298's initial RTO) until the dial timeout. No listener on the
port: "connection refused" after a round trip. A crashed host answers nothing; once it is back, the
connections that still point at it are reset (as a real host answers their next segment with RST).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ...identity import NodeIdentity
from ...wire.errors import FrameError
from ...wire.frames import FrameDecoder, encode_frame
from ..transport import StreamHandler, TransportError
from .kinds import StreamKinds, frame_kind
from .links import DATAGRAM, DirectedLink, LinkProfile, derive_rng

__all__ = ["SimListener", "SimNetwork", "SimStream", "SimTransport"]

log = logging.getLogger(__name__)

FIRST_EPHEMERAL_PORT = 49152
FIRST_LISTEN_PORT = 40000
SYN_RTO = 1.0                    # RFC 6298 initial retransmission timeout for the handshake
# A long write's reader is woken at least this often (simulated seconds) while its segments arrive, so
# that a slow link's "last heard" keeps up within a fraction of any sensible peer timeout (>= seconds).
WAKE_S = 0.25
_EPS = 1e-9
_FIN = None                      # a chunk whose data is _FIN ends the stream


@dataclass
class _Host:
    name: str
    up: bool = True
    identity: NodeIdentity | None = None
    listeners: dict[int, SimListener] = field(default_factory=dict)
    streams: dict[SimStream, None] = field(default_factory=dict)  # local ends (a dict: ordered, so runs repeat)
    stale: list[SimStream] = field(default_factory=list)       # remote ends left behind by a crash
    next_port: int = FIRST_EPHEMERAL_PORT
    next_listen_port: int = FIRST_LISTEN_PORT


class SimNetwork:
    """Hosts and the directed links between them. All randomness comes from `seed`."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.hosts: dict[str, _Host] = {}
        self.links: dict[tuple[str, str], DirectedLink] = {}     # made so far, in the order they were made
        self._routes: dict[tuple[str, str], LinkProfile] = {}    # declared (lazy) directed links
        self._segment_of: dict[str, tuple[int, int]] = {}        # host -> (segment, rank in it)
        self._segments: list[tuple[LinkProfile, LinkProfile]] = []   # (earlier -> later, later -> earlier)
        self._pipes: dict[_Pipe, None] = {}      # ordered (not a set): iteration order must not vary between runs

    # ---- building

    def add_host(self, name: str) -> None:
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already")
        self.hosts[name] = _Host(name)

    def add_link(self, a: str, b: str, profile: LinkProfile, reverse: LinkProfile | None = None, *,
                 lazy: bool = False) -> None:
        """Join a and b: `profile` from a to b, `reverse` (default: the same) from b to a. `lazy`: the
        links are made when first used (a connection, an event), not now."""
        for host in (a, b):
            if host not in self.hosts:
                raise ValueError(f"unknown host {host!r}")
        if a == b:
            raise ValueError(f"a link needs two different hosts, got {a!r} twice")
        if (a, b) in self.links or (a, b) in self._routes:
            raise ValueError(f"hosts {a!r} and {b!r} are linked already")
        self._routes[(a, b)] = profile
        self._routes[(b, a)] = reverse or profile
        if not lazy:
            self._make(a, b)

    def add_segment(self, hosts: list[str] | tuple[str, ...], profile: LinkProfile,
                    reverse: LinkProfile | None = None) -> None:
        """One LAN: any two of `hosts` can connect, `profile` from the one earlier in `hosts` to the later
        one and `reverse` (default: the same) back, as a full mesh's links; made on first use, so a LAN
        of N hosts costs N entries until its hosts talk. A host belongs to one segment at most."""
        index = len(self._segments)
        for rank, host in enumerate(hosts):
            if host not in self.hosts:
                raise ValueError(f"unknown host {host!r}")
            if host in self._segment_of:
                raise ValueError(f"host {host!r} is on a segment already")
            self._segment_of[host] = (index, rank)
        self._segments.append((profile, reverse or profile))

    def _profile(self, src: str, dst: str) -> LinkProfile | None:
        """The profile of the directed link src -> dst if there can be one (declared or on one segment)."""
        declared = self._routes.get((src, dst))
        if declared is not None:
            return declared
        s, d = self._segment_of.get(src), self._segment_of.get(dst)
        if s is None or d is None or s[0] != d[0] or src == dst:
            return None
        forward, back = self._segments[s[0]]
        return forward if s[1] < d[1] else back

    def _make(self, a: str, b: str) -> DirectedLink:
        pa, pb = self._profile(a, b), self._profile(b, a)
        assert pa is not None and pb is not None
        self.links[(a, b)] = link = DirectedLink(pa, derive_rng(self.seed, "link", a, b), name=f"{a}->{b}")
        self.links[(b, a)] = DirectedLink(pb, derive_rng(self.seed, "link", b, a), name=f"{b}->{a}")
        return link

    def link(self, src: str, dst: str) -> DirectedLink | None:
        """The directed link src -> dst, made now (with its reverse) if it is declared and not made yet;
        None when the two hosts cannot reach each other."""
        link = self.links.get((src, dst))
        if link is not None:
            return link
        if self._profile(src, dst) is None:
            return None
        return self._make(src, dst)

    def can_reach(self, src: str, dst: str) -> bool:
        return (src, dst) in self.links or self._profile(src, dst) is not None

    def transport(self, host: str, identity: NodeIdentity) -> SimTransport:
        """The Transport of `host`, whose node has `identity`. A restarted node gets a new one."""
        self.hosts[host].identity = identity
        return SimTransport(self, host)

    # ---- events

    def _pair(self, a: str, b: str) -> tuple[DirectedLink, DirectedLink]:
        ab, ba = self.link(a, b), self.link(b, a)
        if ab is None or ba is None:
            raise ValueError(f"no link between {a!r} and {b!r}")
        return ab, ba

    def cut(self, a: str, b: str) -> None:
        """Partition a from b (both directions)."""
        pair = self._pair(a, b)
        self._flush(lambda pipe: pipe.link in pair)
        for link in pair:
            link.up = False

    def _flush(self, which: Any) -> None:
        """Hand over what has arrived by now on the pipes `which(pipe)` selects, before the path changes."""
        for pipe in list(self._pipes):
            if which(pipe):
                pipe.flush()

    def restore(self, a: str, b: str) -> None:
        for link in self._pair(a, b):
            link.up = True
        self._resume()

    def set_profile(self, a: str, b: str, profile: LinkProfile, *, both: bool = True) -> None:
        ab, ba = self._pair(a, b)
        ab.reconfigure(profile)
        if both:
            ba.reconfigure(profile)

    def crash(self, host: str) -> None:
        """The host stops answering: its connections die without a word (no FIN, no RST); what is on the
        way to or from it is lost. Its own streams see EOF, so its node's tasks can finish."""
        h = self.hosts[host]
        self._flush(lambda pipe: host in (pipe.src, pipe.dst))
        h.up = False
        for stream in list(h.streams):
            remote = stream._remote
            if remote is not None and remote._host != host:
                self.hosts[remote._host].stale.append(remote)
                if remote._out is not None:
                    remote._out.kill("host_down")
            stream._lose("host_down")
        h.streams.clear()
        h.listeners.clear()

    def revive(self, host: str) -> None:
        h = self.hosts[host]
        h.up = True
        self._resume()
        # Connections still pointing at the old incarnation get a reset one delay from now (the next
        # segment they send reaches a host that no longer knows them).
        for h2 in self.hosts.values():
            stale = [s for s in h2.stale if s._remote is not None and s._remote._host == host]
            for stream in stale:
                h2.stale.remove(stream)
                if not stream._closed:
                    link = self.link(host, stream._host)
                    delay = link.profile.delay if link is not None else 0.0
                    asyncio.get_running_loop().call_later(delay, stream._lose, "reset")

    def _resume(self) -> None:
        for pipe in list(self._pipes):
            pipe.resume()

    def path_up(self, src: str, dst: str) -> bool:
        link = self.link(src, dst)
        return link is not None and link.up and self.hosts[src].up and self.hosts[dst].up

    def down_reason(self, src: str, dst: str) -> str:
        return "host_down" if not (self.hosts[src].up and self.hosts[dst].up) else "partition"

    # ---- reporting

    def link_stats(self) -> dict[str, dict[str, Any]]:
        return {link.name: link.stats.to_dict() for link in self.links.values()}

    def _handshake_leg(self, src: str, dst: str, now: float) -> float | None:
        """Arrival time of one handshake segment, None if it is lost (or the path is down)."""
        link = self.link(src, dst)
        if link is None or not self.path_up(src, dst):
            return None
        times = link.send_datagram(now, 0, extras=False)
        if isinstance(times, str):
            return None
        link.stats.delivered(0, times[0] - now, times[0])
        return times[0]


class SimTransport:
    """The Transport of one host on a SimNetwork (net/transport.py)."""

    def __init__(self, network: SimNetwork, host: str) -> None:
        self.network = network
        self.host = host

    async def listen(self, host: str, port: int, handler: StreamHandler) -> SimListener:
        """Listen on `port` of this transport's host (`host` is ignored: every address of the host)."""
        h = self.network.hosts[self.host]
        if not h.up:
            raise TransportError(f"{self.host} is down")
        if port == 0:
            while h.next_listen_port in h.listeners:
                h.next_listen_port += 1
            port = h.next_listen_port
        if port in h.listeners:
            raise TransportError(f"cannot listen on {self.host}:{port}: address in use")
        listener = SimListener(self, port, handler)
        h.listeners[port] = listener
        return listener

    async def connect(self, host: str, port: int, *, timeout: float) -> SimStream:
        net = self.network
        address = f"{host}:{port}"
        if host not in net.hosts:
            raise TransportError(f"{address}: unknown host (the scenario has no node {host!r})")
        if not net.can_reach(self.host, host):
            raise TransportError(f"{address}: no route from {self.host} (no link between them)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        rto = SYN_RTO
        while True:
            now = loop.time()
            if not net.hosts[self.host].up:
                raise TransportError(f"{address}: {self.host} is down")
            there = net._handshake_leg(self.host, host, now)
            back = net._handshake_leg(host, self.host, there) if there is not None else None
            if back is not None and back <= deadline:
                await asyncio.sleep(there - now)
                listener = net.hosts[host].listeners.get(port) if net.path_up(self.host, host) else None
                if listener is None and net.path_up(self.host, host):
                    await asyncio.sleep(max(0.0, back - loop.time()))
                    raise TransportError(f"{address}: connection refused")
                if listener is not None:
                    mine = listener.accept(self)
                    await asyncio.sleep(max(0.0, back - loop.time()))
                    if mine._lost is None:
                        return mine
                    raise TransportError(f"{address}: connection reset during the handshake")
            wait = min(rto, deadline - loop.time())
            if wait <= 0:
                raise TransportError(f"{address}: no connection within {timeout:g} s")
            await asyncio.sleep(wait)
            rto *= 2


class SimListener:
    def __init__(self, transport: SimTransport, port: int, handler: StreamHandler) -> None:
        self._transport = transport
        self._port = port
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def port(self) -> int:
        return self._port

    def accept(self, dialler: SimTransport) -> SimStream:
        """A handshake from `dialler` arrived: make both ends, run the handler on ours, return theirs."""
        net = self._transport.network
        here, there = self._transport.host, dialler.host
        h_here, h_there = net.hosts[here], net.hosts[there]
        client_port = h_there.next_port
        h_there.next_port = FIRST_EPHEMERAL_PORT + (h_there.next_port - FIRST_EPHEMERAL_PORT + 1) % 16384
        assert h_here.identity is not None and h_there.identity is not None
        server = SimStream(net, here, h_there.identity, f"{there}:{client_port}")
        client = SimStream(net, there, h_here.identity, f"{here}:{self._port}")
        server._attach(client, _Pipe(net, here, there, client))
        client._attach(server, _Pipe(net, there, here, server))
        task = asyncio.get_running_loop().create_task(self._serve(server), name=f"sim-accept:{here}:{self._port}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _serve(self, stream: SimStream) -> None:
        try:
            await self._handler(stream)
        except asyncio.CancelledError:
            stream.close()
            raise
        except Exception:
            log.exception("connection from %s failed", stream.peer_address)
            stream.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            listeners = self._transport.network.hosts[self._transport.host].listeners
            if listeners.get(self._port) is self:
                del listeners[self._port]

    async def wait_closed(self) -> None:
        return None


class SimStream:
    """One end of a simulated connection (the Stream protocol)."""

    def __init__(self, network: SimNetwork, host: str, peer: NodeIdentity, address: str) -> None:
        self._net = network
        self._host = host
        self._peer = peer
        self._address = address
        self._remote: SimStream | None = None
        self._out: _Pipe | None = None
        self._rx = bytearray()
        self._eof = False              # the peer's FIN (or a reset) arrived
        self._closed = False           # closed here
        self._lost: str | None = None  # reset / host_down: writes go nowhere, drain raises
        self._waiter: asyncio.Future[None] | None = None
        network.hosts[host].streams[self] = None

    def _attach(self, remote: SimStream, out: _Pipe) -> None:
        self._remote = remote
        self._out = out
        self._net._pipes[out] = None

    # ---- Stream protocol

    @property
    def peer_node_id(self) -> bytes:
        return self._peer.node_id

    @property
    def peer_certificate(self) -> bytes | None:
        return self._peer.cert_der

    @property
    def peer_address(self) -> str:
        return self._address

    async def read(self, max_bytes: int = 1 << 16) -> bytes:
        while not self._rx and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._rx[:max_bytes])
        del self._rx[:max_bytes]
        return data

    def write(self, data: bytes) -> None:
        if self._closed or self._lost is not None or not data or self._out is None:
            return
        self._out.send(data)

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._lost is not None:
                raise ConnectionResetError(f"connection to {self._address} lost ({self._lost})")
            if self._out is None or self._closed:
                return
            wait = self._out.drain_wait(loop.time())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._out is not None and self._lost is None:
            self._out.send_fin()
        self._set_eof()

    def abort(self) -> None:
        """Close now: unsent data is dropped and the peer is reset (after one delay, if it can hear us)."""
        if self._closed and self._lost is not None:
            return
        self._closed = True
        remote, out = self._remote, self._out
        if out is not None:
            out.discard("connection_reset")
            if remote is not None and self._net.path_up(self._host, remote._host):
                asyncio.get_running_loop().call_later(out.link.profile.delay, remote._lose, "reset")
        self._lose("aborted")

    async def wait_closed(self) -> None:
        return None

    # ---- from the pipes and the network

    def _set_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _receive(self, data: bytes | None) -> None:
        if data is _FIN:
            self._set_eof()
        elif not self._closed and not self._eof:
            self._rx += data
            self._wake()

    def _lose(self, why: str) -> None:
        """The connection is gone (reset, crash): nothing more in or out."""
        if self._lost is None:
            self._lost = why
        if self._out is not None:
            self._out.discard(why)
            self._net._pipes.pop(self._out, None)
        self._closed = True
        self._net.hosts[self._host].streams.pop(self, None)
        self._set_eof()


class _Pipe:
    """One direction of a connection: bytes written at `src` arrive at `sink` on `dst`."""

    def __init__(self, network: SimNetwork, src: str, dst: str, sink: SimStream) -> None:
        self.net = network
        self.src, self.dst = src, dst
        link = network.link(src, dst)
        assert link is not None, f"{src}->{dst}: no link"
        self.link = link
        self.sink = sink
        self.datagram = self.link.profile.mode == DATAGRAM
        self.pending = bytearray()         # reliable: written while the path is down
        self.fin_pending = False
        self.inflight: deque[list[Any]] = deque()        # reliable: [arrival, sent_at, data], in order
        # reliable: the chunks (the same lists as in inflight) whose arrival wakes the reader: the last
        # of each write, and one per WAKE_S of a long write (see the module docstring)
        self.wakes: deque[list[Any]] = deque()
        self.last_wake = 0.0
        self.heap: list[tuple[float, int, float, bytes | None]] = []   # datagram: (arrival, seq, sent_at, data)
        self._seq = 0
        self.last_arrival = 0.0
        self.decoder = FrameDecoder(0xFFFFFFFF) if self.datagram else None
        # The sending node's id tells its own hellos from the member announcements it relays.
        identity = network.hosts[src].identity
        self.sender = identity.node_id if identity is not None else None
        # reliable: which packet kind each written byte belongs to, so delivered segments (cut anywhere
        # in the stream) are split by kind; a datagram is one whole frame and is classified as it arrives
        self.kinds = StreamKinds(self.sender, self.link.stats.kind_bytes_sent) if not self.datagram else None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.dead: str | None = None       # the far end crashed: what is sent vanishes

    # ---- sending

    def send(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        if self.dead is not None:
            self.link.refuse(len(data), self.dead)
            # counted as sent (the sender spent it), by the kind of the frame it starts with
            self.link.stats.kind_bytes_sent[frame_kind(data[:76], self.sender)] += len(data)
            return
        if self.datagram:
            assert self.decoder is not None
            try:
                frames = self.decoder.feed(data)
            except FrameError:             # our own node wrote a bad frame: nothing sensible to send
                log.error("sim %s->%s: the writer sent bytes that are not frames", self.src, self.dst)
                return
            sent = self.link.stats.kind_bytes_sent
            for frame in frames:
                data = encode_frame(frame)
                sent[frame_kind(data[:76], self.sender)] += len(data)
                self._datagram(now, data)
            return
        assert self.kinds is not None
        self.kinds.wrote(data)
        if self.pending or not self.net.path_up(self.src, self.dst):
            self.pending += data
            return
        self._transmit(now, data)

    def send_fin(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.dead is not None:
            return
        if self.datagram:
            self._datagram(now, _FIN)
        elif self.pending or not self.net.path_up(self.src, self.dst):
            self.fin_pending = True
        else:
            self._transmit_fin(now)

    def _transmit(self, now: float, data: bytes | bytearray) -> None:
        pos = 0
        view = memoryview(data)
        last = self.last_arrival
        inflight, wakes = self.inflight, self.wakes
        chunk: list[Any] = []
        for arrival, size in self.link.send_stream(now, len(data)):
            last = max(arrival, last)
            chunk = [last, now, bytes(view[pos:pos + size])]
            inflight.append(chunk)
            pos += size
            if last - self.last_wake >= WAKE_S:
                wakes.append(chunk)
                self.last_wake = last
        if chunk and (not wakes or wakes[-1] is not chunk):
            wakes.append(chunk)              # the end of the write
            self.last_wake = last
        self.last_arrival = last
        self._arm()

    def _transmit_fin(self, now: float) -> None:
        link = self.link
        arrival = max(now, link.free_at) + link.profile.overhead * 8 / link.profile.rate_bps \
            if link.profile.rate_bps else now
        self.last_arrival = max(arrival + link.propagation(), self.last_arrival)
        chunk = [self.last_arrival, now, _FIN]
        self.inflight.append(chunk)
        self.wakes.append(chunk)
        self._arm()

    def _datagram(self, now: float, data: bytes | None) -> None:
        size = len(data) if data is not None else 0
        if not self.net.path_up(self.src, self.dst) and self.link.up:
            self.link.refuse(size, self.net.down_reason(self.src, self.dst))
            return
        times = self.link.send_datagram(now, size)
        if isinstance(times, str):
            return
        for t in times:
            self._seq += 1
            heapq.heappush(self.heap, (t, self._seq, now, data))
        self._arm()

    def drain_wait(self, now: float) -> float:
        """Seconds until the writer may go on (0: now)."""
        q = self.link.profile.queue_bytes
        if self.dead is not None:
            # Reliable: the window is full of unacknowledged data and stays so. Datagram: no feedback.
            return 0.0 if self.datagram else 1.0
        if self.pending:
            # Path down: TCP's send buffer fills; the writer waits until the path is back.
            return 0.0 if len(self.pending) < q else 1.0
        room = q // 2 if self.datagram else 0
        return max(0.0, self.link.ready_at(now, room) - now)

    # ---- delivering

    def _head(self) -> float | None:
        if self.datagram:
            return self.heap[0][0] if self.heap else None
        return self.wakes[0][0] if self.wakes else None

    def _arm(self) -> None:
        head = self._head()
        if head is None:
            return
        if self.timer is not None:
            if self.timer_at <= head + _EPS:
                return
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer_at = head
        self.timer = loop.call_at(head, self._deliver)

    def _deliver(self) -> None:
        self.timer = None
        self._hand_over(asyncio.get_running_loop().time())
        self._arm()

    def flush(self) -> None:
        """Hand over now what has arrived by now (before a cut, a crash or a reset changes the path)."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:                # no loop (torn down): nothing can arrive any more
            return
        self._hand_over(now)

    def _hand_over(self, now: float) -> None:
        """Everything due by `now` (and, reliable, the path up): into the sink, counted at its own
        arrival time, so that batching changes no statistic."""
        up = self.net.path_up(self.src, self.dst)
        stats = self.link.stats
        sink = self.sink
        if self.datagram:
            heap = self.heap
            while heap and heap[0][0] <= now + _EPS:
                _, _, sent_at, data = heapq.heappop(heap)
                if not up:
                    stats.dropped[self.net.down_reason(self.src, self.dst)] += 1
                    continue
                if data is not _FIN:
                    stats.delivered(len(data), now - sent_at, now)
                    stats.delivered_kind(frame_kind(data[:76], self.sender), len(data), 1, now)
                sink._receive(data)
        elif up:
            inflight, wakes = self.inflight, self.wakes
            kinds = self.kinds
            assert kinds is not None
            got = False
            # The kinds of consecutive segments that arrive in the same simulated second are taken in
            # one go (the per-second bins are all they are counted in): one call per batch, not per segment.
            pending, second = 0, -1
            while inflight and inflight[0][0] <= now + _EPS:
                arrival, sent_at, data = inflight.popleft()
                if pending and int(arrival) != second:
                    for kind, nbytes, packets in kinds.take(pending):
                        stats.delivered_kind(kind, nbytes, packets, second)
                    pending = 0
                if data is _FIN:
                    self.net._pipes.pop(self, None)       # nothing follows a FIN: done with this pipe
                    sink._receive(data)
                    continue
                stats.delivered(len(data), arrival - sent_at, arrival)
                pending += len(data)
                second = int(arrival)
                if not sink._closed and not sink._eof:     # as _receive: nothing reaches a closed end
                    sink._rx += data
                    got = True
            if pending:
                for kind, nbytes, packets in kinds.take(pending):
                    stats.delivered_kind(kind, nbytes, packets, second)
            while wakes and wakes[0][0] <= now + _EPS:
                wakes.popleft()
            if got:
                sink._wake()

    def resume(self) -> None:
        """The path may be back: deliver what was held, send what waited."""
        if not self.net.path_up(self.src, self.dst):
            return
        now = asyncio.get_running_loop().time()
        if not self.datagram and self.inflight:
            earliest = now + self.link.propagation()
            for chunk in self.inflight:          # the wakes are the same lists: they move with them
                chunk[0] = max(chunk[0], earliest)
            self.last_arrival = max(self.last_arrival, self.inflight[-1][0])
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        if self.pending:
            data, self.pending = self.pending, bytearray()
            self._transmit(now, data)
        if self.fin_pending:
            self.fin_pending = False
            self._transmit_fin(now)
        self._arm()
        self.sink._wake()

    def kill(self, why: str) -> None:
        """The far end crashed: drop what is on the way, and everything sent from now on."""
        self.discard(why)
        self.dead = why

    def discard(self, why: str) -> None:
        """The connection is gone: what is still on the way never arrives."""
        self.flush()                        # what has arrived by now was not on the way any more
        n = len(self.inflight) + len(self.heap) + (1 if self.pending else 0)
        if n:
            self.link.stats.dropped[why] += n
        self.inflight.clear()
        self.wakes.clear()
        self.heap.clear()
        self.pending.clear()
        if self.kinds is not None:
            self.kinds.clear()
        self.fin_pending = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.net._pipes.pop(self, None)

