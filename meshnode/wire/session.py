"""The per-connection state machine (SPEC §6), sans-IO in the h11 / h2 style.

    session = Session(signer, hello, limits=limits, key_for=peers.key_of)
    transport.write(session.start())                      # our hello
    for event in session.receive_data(chunk, now):        # bytes in -> events out
        ...
    transport.write(session.data_to_send())               # automatic replies (pong, bye on failure)
    transport.write(session.send(body))                   # our packets -> bytes (fragmented as needed)

Output: methods the caller invokes for its own packets (`start`, `send`, `send_raw`, `ping`,
`close`) return the bytes to write. `send_frames` / `send_raw_frames` return the same frames one at a
time, lazily (a large packet's fragments are encoded only as they are taken), so that a writer can
put small frames between the fragments of a big packet. Bytes the session produces by itself while receiving (the pong
that answers a ping, the bye sent when the session fails) go to an outbox drained by
`data_to_send()`, as in h2: call it after every `receive_data`. Every piece of output is one or more
whole frames, so the caller may write the two streams in any order.

Inbound policy: frames are decoded, the (state, kind) pair is looked up in `_TRANSITIONS` (a missing
pair is a protocol violation), then every packet except a fragment must carry a valid signature by
its origin: a hello verifies against the public key it carries (whose SHA-256 must be the header's
origin), a packet from the peer against the peer's hello key, any other origin against
`key_for(origin)`. Fragments are reassembled here; the whole packet then takes the same path.

- A malformed, unsigned, badly signed or unknown-origin packet yields PacketDropped; the session goes on.
- A hello from another origin once OPEN is a member announcement (a relayed hello that carries a
  node's key and certificate, so packets it originates can be verified here): it yields
  MemberAnnounced once its self-signature checks out; whether the certificate belongs to the mesh is
  the caller's business. Before any signature work, `hello_held(packet, peer)` (the caller's member
  directory) may say the hello is one it holds already: it is then dropped silently (counted in
  `announcements_held`), neither verified nor reported, so a hello that every peer relays costs one
  signature check, not one per copy. A second hello from the peer itself is still a protocol violation.
- A hello larger than `max_hello` bytes (MAX_HELLO_BYTES, SPEC section 4) is dropped (`too_large`) before it is
  decoded, whether it is the peer's own (the session keeps waiting for a valid one) or relayed.
- Fragment sets are charged to `reassembly_budget` (frames.ReassemblyBudget), shared by every session
  of a node, and given back when the session closes.
- A framing error, a packet the current state does not allow, or a peer of another major version
  yields SessionFailed: the state becomes CLOSED, a bye is queued in the outbox, and the caller should
  flush `data_to_send()` and close the transport. Data received once CLOSED is ignored.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import FrameError, PacketError, Reason, SessionError, WireError
from .frames import (
    FRAGMENT_OVERHEAD,
    FrameDecoder,
    Reassembler,
    ReassemblyBudget,
    encode_frame,
    iter_fragment_frames,
)
from .limits import DEFAULT_LIMITS, Limits
from .packet import (
    HEADER_LEN,
    MAGIC,
    PROTOCOL_VERSION,
    Body,
    Bye,
    Hello,
    Kind,
    Packet,
    Ping,
    Pong,
    Signer,
    _public_key,
    decode_packet,
    encode_packet,
    node_id_of,
    verify_packet,
)

__all__ = [
    "State", "Session", "Event", "HelloReceived", "MemberAnnounced", "PacketReceived", "PongReceived",
    "PacketDropped", "SessionFailed", "Closed", "FrameObserver", "MAX_HELLO_BYTES",
]

# The largest hello (the whole encoded packet: header, body, signature) a node accepts, its peer's or a
# relayed one. A real hello is about 1 kB (name, key, certificate, a few topics); this implementation's
# largest, with 64 topics of 256 bytes and a long name, is under 18 kB, so 32 KiB leaves room to grow.
# Bounded because every hello a node holds is sent to each new peer and relayed to every link: a
# megabyte hello, multiplied by the members and links, is what partitioned a node (issue 16).
MAX_HELLO_BYTES = 32 << 10
_KIND_OFFSET = 6

# observer(direction, raw): called with every packet as a whole frame's content, "in" as it is read
# (fragments as such; a reassembled packet is not reported again) and "out" as it is produced.
FrameObserver = Callable[[str, bytes], None]


class State(Enum):
    NEW = "new"                          # no hello either way yet
    HELLO_SENT = "hello_sent"            # ours sent, theirs awaited
    HELLO_RECEIVED = "hello_received"    # theirs received, ours not sent yet
    OPEN = "open"                        # both hellos exchanged: anything goes
    CLOSED = "closed"


# ---- events


@dataclass(frozen=True, slots=True)
class HelloReceived:
    hello: Hello
    node_id: bytes                       # the peer's node id (= SHA-256 of hello.public_key)
    minor: int                           # the negotiated minor version
    packet: Packet | None = None         # the hello itself (to announce the peer to other nodes)


@dataclass(frozen=True, slots=True)
class MemberAnnounced:
    packet: Packet                       # a hello of another origin, relayed by the peer; self-signature verified


@dataclass(frozen=True, slots=True)
class PacketReceived:
    packet: Packet                       # signed and verified; a reassembled packet's raw is the whole


@dataclass(frozen=True, slots=True)
class PongReceived:
    seq: int
    rtt: float | None                    # seconds, on the caller's `now` clock; None for an unsolicited pong


@dataclass(frozen=True, slots=True)
class PacketDropped:
    reason: Reason
    detail: str
    offset: int | None = None            # byte offset inside the packet, where meaningful


@dataclass(frozen=True, slots=True)
class SessionFailed:
    error: WireError


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str
    detail: str | None = None


Event = HelloReceived | MemberAnnounced | PacketReceived | PongReceived | PacketDropped | SessionFailed | Closed


class _Drop(Exception):
    def __init__(self, reason: Reason, detail: str, offset: int | None = None) -> None:
        super().__init__(detail)
        self.event = PacketDropped(reason, detail, offset)


# ---- the transition table: (state, kind received) -> (handler, next state or None = unchanged)

_S, _K = State, Kind
_APP_KINDS = (_K.VECTORS, _K.KNOWLEDGE, _K.DELTA, _K.ACK, _K.NACK, _K.GOSSIP)
# Kinds that are gossiped, and so deduplicated by (origin, packet id); gossip itself is link-local.
_DEDUP_KINDS = frozenset(int(k) for k in (_K.VECTORS, _K.KNOWLEDGE, _K.DELTA, _K.ACK, _K.NACK))
_TRANSITIONS: dict[tuple[State, Kind], tuple[str, State | None]] = {
    (_S.NEW, _K.HELLO): ("_on_hello", _S.HELLO_RECEIVED),
    (_S.HELLO_SENT, _K.HELLO): ("_on_hello", _S.OPEN),
    **{(s, _K.BYE): ("_on_bye", _S.CLOSED) for s in (_S.NEW, _S.HELLO_SENT, _S.HELLO_RECEIVED, _S.OPEN)},
    (_S.OPEN, _K.HELLO): ("_on_announce", None),
    (_S.OPEN, _K.PING): ("_on_ping", None),
    (_S.OPEN, _K.PONG): ("_on_pong", None),
    (_S.OPEN, _K.FRAGMENT): ("_on_fragment", None),
    **{(_S.OPEN, k): ("_on_packet", None) for k in _APP_KINDS},
}
# local actions: action -> {state it is allowed in: next state}
_ACTIONS: dict[str, dict[State, State]] = {
    "start": {_S.NEW: _S.HELLO_SENT, _S.HELLO_RECEIVED: _S.OPEN},
    "send": {_S.OPEN: _S.OPEN},
    "close": {s: _S.CLOSED for s in State if s is not _S.CLOSED},
}
_NOT_SENDABLE = frozenset((Kind.HELLO, Kind.FRAGMENT))   # hello: start(); fragments: made by send()


class Session:
    """One connection's protocol state. See the module docstring for the I/O contract."""

    def __init__(self, signer: Signer, hello: Hello, *, limits: Limits = DEFAULT_LIMITS,
                 key_for: Callable[[bytes], Ed25519PublicKey | bytes | None] = lambda origin: None,
                 minor: int = PROTOCOL_VERSION[1], ping_window: int = 64,
                 observer: FrameObserver | None = None, wall_us: Callable[[], int] | None = None,
                 reassembly_budget: ReassemblyBudget | None = None, max_hello: int = MAX_HELLO_BYTES,
                 hello_held: Callable[[Packet, bytes | None], bool] | None = None,
                 verified: Callable[[bytes], None] | None = None,
                 already_seen: Callable[[bytes, bytes], bool] | None = None) -> None:
        if hello.public_key != signer.public_key_bytes:
            raise ValueError("hello.public_key must be the signer's public key")
        if hello.max_frame > limits.max_frame:          # never announce more than we accept
            hello = dataclasses.replace(hello, max_frame=limits.max_frame)
        self.signer = signer
        self.hello = hello
        self.limits = limits
        self.key_for = key_for
        self.minor = minor
        self.state = State.NEW
        self.peer_hello: Hello | None = None
        self.peer_node_id: bytes | None = None
        self.negotiated_minor: int | None = None
        self._peer_key: Ed25519PublicKey | bytes | None = None
        self._fragment_size = limits.fragment_size
        self._decoder = FrameDecoder(limits.max_frame)
        self._reassembler = Reassembler(limits, reassembly_budget)
        self.max_hello = max_hello
        self.hello_held = hello_held
        # Called with the origin of every packet that verified against `key_for(origin)` (not the
        # peer's, not a hello): a member directory's sign of life for members we have no link to.
        self.verified = verified
        # `already_seen(origin, packet_id)`: the caller has accepted a packet with this origin and id
        # (its replay cache). A copy is dropped on its header alone, before decoding or verifying it:
        # whatever its body says, the caller would drop it as a duplicate, and in a gossip overlay most
        # copies that arrive are duplicates (each node hears each packet from several eager peers).
        self.already_seen = already_seen
        self.duplicates_skipped = 0
        self.announcements_held = 0
        self._outbox: list[bytes] = []
        self._pings: OrderedDict[int, float] = OrderedDict()
        self._ping_window = ping_window
        self._next_seq = 0
        self._now = 0.0
        self.observer = observer
        # The header timestamp of every packet this session makes (hello, ping, pong, bye, fragments):
        # the owner's clock, so that these agree with the data packets it stamps itself (in a
        # simulation, virtual time). None: the system clock.
        self.wall_us = wall_us

    # ---- output

    def data_to_send(self) -> bytes:
        """Bytes the session queued by itself (pongs, a bye on failure); empties the outbox."""
        out = b"".join(self._outbox)
        self._outbox.clear()
        return out

    def start(self) -> bytes:
        """Our hello, framed. Call once, first."""
        self._act("start")
        raw = encode_packet(self.hello, self.signer, minor=self.minor, limits=self.limits,
                            timestamp_us=self._stamp())
        return self._out(raw)

    def send(self, body: Body) -> bytes:
        """Sign and frame one packet (fragmented when larger than the fragment size). Only when OPEN."""
        return b"".join(self.send_frames(body))

    def send_raw(self, raw: bytes) -> bytes:
        """Frame an already encoded (and signed) packet, e.g. one being forwarded. Only when OPEN."""
        return b"".join(self.send_raw_frames(raw))

    def send_frames(self, body: Body) -> Iterator[bytes]:
        """`send`, one frame at a time (lazily encoded fragments). Checks happen now, not while iterating."""
        if body.KIND in _NOT_SENDABLE:
            raise SessionError(Reason.PROTOCOL_VIOLATION, f"{body.KIND.name.lower()} packets are not sent with send()")
        self._act("send")
        raw = encode_packet(body, self.signer, minor=self._out_minor, limits=self.limits,
                            timestamp_us=self._stamp())
        return self._frames(raw)

    def send_raw_frames(self, raw: bytes) -> Iterator[bytes]:
        """`send_raw`, one frame at a time (lazily encoded fragments)."""
        if len(raw) < HEADER_LEN or raw[:4] != MAGIC:
            raise SessionError(Reason.BAD_MAGIC, "send_raw needs an encoded packet")
        self._act("send")
        return self._frames(bytes(raw))

    def ping(self, now: float) -> bytes:
        """A ping; its pong comes back as PongReceived(seq, rtt) measured on the same `now` clock."""
        self._act("send")
        seq = self._next_seq
        self._next_seq += 1
        self._pings[seq] = now
        while len(self._pings) > self._ping_window:
            self._pings.popitem(last=False)
        sent_us = int(now * 1e6) if now >= 0 else None
        return self.send(Ping(seq=seq, sent_us=sent_us))

    def frame_count(self, raw_len: int) -> int:
        """How many frames a packet of `raw_len` bytes takes on this session (1, or its fragment count)."""
        return 1 if raw_len <= self._fragment_size else -(-raw_len // self._fragment_size)

    def close(self, reason: str = "bye", detail: str | None = None) -> bytes:
        """A bye, framed; the session is CLOSED afterwards. Returns b"" if already closed."""
        if self.state is State.CLOSED:
            return b""
        self._act("close")
        return self._out(encode_packet(Bye(reason=reason, detail=detail), self.signer, minor=self._out_minor,
                                       limits=self.limits, timestamp_us=self._stamp()))

    def _stamp(self) -> int | None:
        """The timestamp for a packet made now (None: encode_packet reads the system clock)."""
        return None if self.wall_us is None else self.wall_us()

    @property
    def _out_minor(self) -> int:
        return self.minor if self.negotiated_minor is None else self.negotiated_minor

    def _act(self, action: str) -> None:
        nxt = _ACTIONS[action].get(self.state)
        if nxt is None:
            raise SessionError(Reason.PROTOCOL_VIOLATION, f"cannot {action} in state {self.state.value}")
        self.state = nxt
        if nxt is State.CLOSED:
            self._closed()

    def _closed(self) -> None:
        """The session is over: give the fragment sets' bytes back to the shared budget."""
        self._reassembler.clear()

    def _out(self, raw: bytes) -> bytes:
        if self.observer is not None:
            self.observer("out", raw)
        return encode_frame(raw)

    def _frame(self, raw: bytes) -> bytes:
        return b"".join(self._frames(raw))

    def _frames(self, raw: bytes) -> Iterator[bytes]:
        if len(raw) <= self._fragment_size:
            return iter((self._out(raw),))
        frames = iter_fragment_frames(raw, self.signer, fragment_size=self._fragment_size, minor=self._out_minor,
                                      timestamp_us=self._stamp(), limits=self.limits)
        return map(self._observed, frames)

    def _observed(self, frame: bytes) -> bytes:
        """`_out` for a packet that comes already framed (the observer takes it without the prefix)."""
        if self.observer is not None:
            self.observer("out", frame[4:])
        return frame

    # ---- input

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Feed bytes from the transport; returns what happened. Drain data_to_send() afterwards."""
        if self.state is State.CLOSED:
            return []
        self._now = now
        events: list[Event] = []
        try:
            frames = self._decoder.feed(data)
            error: FrameError | None = None
        except FrameError as e:
            frames, error = getattr(e, "frames", []), e
        for frame in frames:
            if self.observer is not None:
                self.observer("in", frame)
            self._handle(frame, events, nested=False)
            if self.state is State.CLOSED:
                return events
        if error is not None:
            self._fail(error, events)
        return events

    def _handle(self, raw: bytes, events: list[Event], *, nested: bool) -> None:
        if (self.already_seen is not None and self.state is State.OPEN and len(raw) >= HEADER_LEN
                and raw[_KIND_OFFSET] in _DEDUP_KINDS and raw[:4] == MAGIC
                and self.already_seen(raw[40:72], raw[24:40])):
            self.duplicates_skipped += 1
            return
        if len(raw) > self.max_hello and len(raw) > _KIND_OFFSET and raw[_KIND_OFFSET] == Kind.HELLO:
            # Before decoding: nothing about an oversized hello is worth the work (issue 16).
            events.append(PacketDropped(Reason.TOO_LARGE, f"hello of {len(raw)} bytes exceeds {self.max_hello}",
                                        _KIND_OFFSET))
            return
        try:
            packet = decode_packet(raw, limits=self.limits)
        except PacketError as e:
            if e.reason is Reason.UNSUPPORTED_VERSION and self.peer_hello is None:
                theirs = f"{raw[4]}.{raw[5]}" if len(raw) > 5 else f"{raw[4]}.x"
                self._fail(SessionError(Reason.VERSION_REFUSED,
                                        f"peer speaks protocol {theirs}, we speak "
                                        f"{PROTOCOL_VERSION[0]}.{self.minor}: majors differ", offset=4), events)
            else:
                events.append(PacketDropped(e.reason, str(e), e.offset))
            return
        kind = packet.header.kind
        if nested and kind is Kind.FRAGMENT:
            events.append(PacketDropped(Reason.BAD_FRAGMENT, "a reassembled packet is itself a fragment"))
            return
        entry = _TRANSITIONS.get((self.state, kind))
        if entry is None:
            self._fail(SessionError(Reason.PROTOCOL_VIOLATION,
                                    f"{kind.name.lower()} packet received in state {self.state.value}"), events)
            return
        handler, next_state = entry
        if (kind is Kind.HELLO and self.state is State.OPEN and self.hello_held is not None
                and packet.header.origin != self.peer_node_id and self.hello_held(packet, self.peer_node_id)):
            self.announcements_held += 1      # known already: no signature work, nothing to report
            return
        try:
            if kind is not Kind.FRAGMENT:
                self._verify(packet)
            getattr(self, handler)(packet, events)
        except _Drop as d:
            events.append(d.event)
            return
        if next_state is not None:
            self.state = next_state
            if next_state is State.CLOSED:
                self._closed()

    def _verify(self, packet: Packet) -> None:
        h = packet.header
        if packet.signature is None:
            raise _Drop(Reason.UNSIGNED, f"{h.kind.name.lower()} packet is not signed", 7)   # the flags byte (SPEC §2)
        if h.kind is Kind.HELLO:
            key: Any = packet.body.public_key  # type: ignore[union-attr]
            if node_id_of(key) != h.origin:
                raise _Drop(Reason.BAD_SIGNATURE, "hello origin is not the SHA-256 of its public key", 40)
        elif h.origin == self.peer_node_id:
            key = self._peer_key
        else:
            key = self.key_for(h.origin)
            if key is None:
                raise _Drop(Reason.UNKNOWN_ORIGIN, f"no key for origin {h.origin.hex()[:16]}...", 40)
            try:
                verify_packet(packet, key)
            except PacketError as e:
                raise _Drop(e.reason, str(e), e.offset) from None
            if self.verified is not None:
                self.verified(h.origin)
            return
        try:
            verify_packet(packet, key)
        except PacketError as e:
            raise _Drop(e.reason, str(e), e.offset) from None

    def _fail(self, error: WireError, events: list[Event]) -> None:
        if self.state is not State.CLOSED:
            self._outbox.append(self._out(encode_packet(
                Bye(reason=error.reason.value, detail=str(error)[:1000]), self.signer, minor=self._out_minor,
                limits=self.limits, timestamp_us=self._stamp())))
        self.state = State.CLOSED
        self._closed()
        events.append(SessionFailed(error))

    # ---- handlers (named in _TRANSITIONS)

    def _on_hello(self, packet: Packet, events: list[Event]) -> None:
        hello: Hello = packet.body  # type: ignore[assignment]
        self.peer_hello = hello
        self.peer_node_id = packet.header.origin
        self._peer_key = _public_key(hello.public_key)      # valid: the hello just verified against it
        self.negotiated_minor = min(self.minor, packet.header.minor)
        self._fragment_size = min(self.limits.fragment_size, hello.max_frame - FRAGMENT_OVERHEAD)
        events.append(HelloReceived(hello, packet.header.origin, self.negotiated_minor, packet))

    def _on_announce(self, packet: Packet, events: list[Event]) -> None:
        if packet.header.origin == self.peer_node_id:
            self._fail(SessionError(Reason.PROTOCOL_VIOLATION, "second hello from the peer"), events)
            return
        events.append(MemberAnnounced(packet))

    def _on_bye(self, packet: Packet, events: list[Event]) -> None:
        bye: Bye = packet.body  # type: ignore[assignment]
        events.append(Closed(bye.reason, bye.detail))

    def _on_ping(self, packet: Packet, events: list[Event]) -> None:
        ping: Ping = packet.body  # type: ignore[assignment]
        raw = encode_packet(Pong(seq=ping.seq, echo_us=ping.sent_us), self.signer, minor=self._out_minor,
                            limits=self.limits, timestamp_us=self._stamp())
        self._outbox.append(self._frame(raw))

    def _on_pong(self, packet: Packet, events: list[Event]) -> None:
        seq = packet.body.seq  # type: ignore[union-attr]
        sent = self._pings.pop(seq, None)
        events.append(PongReceived(seq, None if sent is None else self._now - sent))

    def _on_fragment(self, packet: Packet, events: list[Event]) -> None:
        if packet.header.origin != self.peer_node_id:
            raise _Drop(Reason.BAD_FRAGMENT, "fragment from an origin other than the peer", 40)
        try:
            whole = self._reassembler.add(packet, self._now)
        except FrameError as e:
            raise _Drop(e.reason, str(e), e.offset) from None
        if whole is not None:
            self._handle(whole, events, nested=True)

    def _on_packet(self, packet: Packet, events: list[Event]) -> None:
        events.append(PacketReceived(packet))

    # ---- introspection

    @property
    def reassembler(self) -> Reassembler:
        return self._reassembler

    def expire(self, now: float) -> int:
        """Drop stale incomplete fragment sets (call from a timer); returns how many."""
        return self._reassembler.expire(now)
