"""Stream framing (SPEC §1) and fragmentation / reassembly of large packets (SPEC §5). Sans-IO.

- `encode_frame(raw)` / `FrameDecoder(max_frame).feed(chunk)`: u32 length-prefixed frames over a
  byte stream, fed in arbitrary chunks.
- `fragment_packet(raw, signer_or_origin, fragment_size=F)`: split one encoded packet into encoded,
  unsigned fragment packets.
- `Reassembler(limits).add(fragment_packet, now)`: put them back together, bounded in memory (a cap
  with eviction of the oldest incomplete sets) and in time (`expire(now)`); the caller passes `now`
  (any monotonic clock in seconds), nothing here reads a clock.
"""

from __future__ import annotations

import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

from .errors import FrameError, Reason
from .limits import DEFAULT_LIMITS, Limits
from .packet import HEADER_LEN, MAGIC, PROTOCOL_VERSION, Fragment, Kind, Packet, Signer, max_packet_len

__all__ = [
    "FRAME_PREFIX_LEN", "FRAGMENT_OVERHEAD", "encode_frame", "FrameDecoder", "fragment_packet", "iter_fragments",
    "iter_fragment_frames", "Reassembler", "ReassemblyBudget",
]

FRAME_PREFIX_LEN = 4
FRAGMENT_OVERHEAD = 256       # a fragment packet is at most fragment_size + this many bytes
PIECE_OVERHEAD = 128          # bytes charged per held piece on top of its data (Python object costs)
SET_OVERHEAD = 512            # bytes charged per incomplete set
_LEN = struct.Struct("<I")
# SPEC §2 header of a fragment packet (magic, major, minor, kind, flags 0, hop 0, reserved, body length,
# timestamp, packet id, origin), optionally preceded by the u32 frame length (SPEC §1)
_FRAGMENT_HEADER = struct.Struct("<4sBBBBB3sIQ16s32s")
_FRAMED_FRAGMENT_HEADER = struct.Struct("<I4sBBBBB3sIQ16s32s")
assert _FRAGMENT_HEADER.size == HEADER_LEN
_EMPTY_BIN = b"\xc4\x00"
_RECENT_DONE = 4096           # completed (origin, whole) keys remembered, so late duplicates are ignored


def encode_frame(raw: bytes) -> bytes:
    """One frame: u32 little-endian length, then the packet."""
    n = len(raw)
    if not 1 <= n <= 0xFFFFFFFF:
        raise FrameError(Reason.TOO_LARGE if n else Reason.BAD_HEADER, f"cannot frame {n} bytes")
    return _LEN.pack(n) + raw


class FrameDecoder:
    """Splits a byte stream into frames. `feed` accepts any chunking (one byte at a time included)
    and returns the frames completed so far. A length over `max_frame` is refused (TOO_LARGE) as soon
    as its 4 bytes arrive, before anything is buffered for it; a length of 0 is BAD_HEADER. After an
    error the stream is unusable: every later `feed` raises the same error. The error raised carries
    `frames`: the frames completed in that same call before the bad prefix (a session still handles
    them before it fails).

    `offset` in errors is the position of the bad length prefix in the whole stream.
    """

    __slots__ = ("max_frame", "_buf", "_consumed", "_error")

    def __init__(self, max_frame: int = DEFAULT_LIMITS.max_frame) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._consumed = 0          # stream offset of _buf[0]
        self._error: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not part of a returned frame yet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        if not buf:
            # Fast path: parse straight from the caller's chunk, buffer only the incomplete tail.
            view = memoryview(data)
            frames, used = self._parse(view)
            self._consumed += used
            if used < len(view):
                buf += view[used:]
            return frames
        buf += data
        with memoryview(buf) as view:
            frames, used = self._parse(view)
        if used:
            del buf[:used]
            self._consumed += used
        return frames

    def _parse(self, view: memoryview) -> tuple[list[bytes], int]:
        frames: list[bytes] = []
        pos = 0
        end = len(view)
        max_frame = self.max_frame
        while end - pos >= 4:
            (n,) = _LEN.unpack_from(view, pos)
            if n > max_frame or n == 0:
                if n:
                    args = (Reason.TOO_LARGE, f"frame of {n} bytes exceeds max_frame {max_frame}")
                else:
                    args = (Reason.BAD_HEADER, "frame of length 0")
                self._error = FrameError(*args, offset=self._consumed + pos)
                self._error.frames = []  # type: ignore[attr-defined]
                exc = FrameError(*args, offset=self._consumed + pos)
                exc.frames = frames  # type: ignore[attr-defined]
                raise exc
            if end - pos - 4 < n:
                break
            frames.append(bytes(view[pos + 4:pos + 4 + n]))
            pos += 4 + n
        return frames, pos


def _add_id(first: bytes, i: int) -> bytes:
    return ((int.from_bytes(first, "big") + i) % (1 << 128)).to_bytes(16, "big")


def fragment_packet(raw: bytes, signer_or_origin: Signer | bytes, *, fragment_size: int,
                    first_packet_id: bytes | None = None, timestamp_us: int | None = None,
                    minor: int = PROTOCOL_VERSION[1], limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """Split the encoded packet `raw` into ceil(len/F) encoded fragment packets (SPEC §5).

    `signer_or_origin` names the fragmenting node (a Signer's node id, or 32 raw bytes); fragments
    are never signed. Each fragment gets its own packet id: random, or `first_packet_id` + i (big
    endian, for reproducible test vectors). Hop limit 0.
    """
    return list(iter_fragments(raw, signer_or_origin, fragment_size=fragment_size, first_packet_id=first_packet_id,
                               timestamp_us=timestamp_us, minor=minor, limits=limits))


def iter_fragments(raw: bytes, signer_or_origin: Signer | bytes, *, fragment_size: int,
                   first_packet_id: bytes | None = None, timestamp_us: int | None = None,
                   minor: int = PROTOCOL_VERSION[1], limits: Limits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """`fragment_packet`, one fragment at a time: a sender that interleaves other frames between the
    pieces of a large packet encodes each piece only when it is about to go out (one copy of `raw`
    held, not two). The arguments are checked now; errors never come from the iteration."""
    return _fragments(raw, signer_or_origin, fragment_size, first_packet_id, timestamp_us, minor, limits, framed=False)


def iter_fragment_frames(raw: bytes, signer_or_origin: Signer | bytes, *, fragment_size: int,
                         first_packet_id: bytes | None = None, timestamp_us: int | None = None,
                         minor: int = PROTOCOL_VERSION[1], limits: Limits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """`iter_fragments`, each fragment already framed (`encode_frame` of it), built in one copy."""
    return _fragments(raw, signer_or_origin, fragment_size, first_packet_id, timestamp_us, minor, limits, framed=True)


def _fragments(raw: bytes, signer_or_origin: Signer | bytes, fragment_size: int, first_packet_id: bytes | None,
               timestamp_us: int | None, minor: int, limits: Limits, *, framed: bool) -> Iterator[bytes]:
    if fragment_size < 1:
        raise ValueError("fragment_size must be positive")
    origin = signer_or_origin.node_id if isinstance(signer_or_origin, Signer) else bytes(signer_or_origin)
    total = len(raw)
    if total < HEADER_LEN or raw[:4] != MAGIC:
        raise FrameError(Reason.BAD_HEADER, "fragment_packet needs an encoded packet")
    if total > max_packet_len(limits):
        raise FrameError(Reason.TOO_LARGE, f"packet of {total} bytes exceeds the largest packet {max_packet_len(limits)}")
    count = -(-total // fragment_size)
    if count > limits.max_fragments:
        raise FrameError(Reason.TOO_LARGE, f"{count} fragments exceed max_fragments {limits.max_fragments}")
    if timestamp_us is None:
        timestamp_us = time.time_ns() // 1000
    if len(origin) != 32:
        raise FrameError(Reason.BAD_HEADER, "origin must be 32 bytes")
    if first_packet_id is not None and len(first_packet_id) != 16:
        raise FrameError(Reason.BAD_HEADER, "packet id must be 16 bytes")
    if not 0 <= timestamp_us < 1 << 64 or not 0 <= minor <= 255:
        raise FrameError(Reason.BAD_HEADER, "timestamp or minor out of range")
    return _encode_fragments(raw, origin, fragment_size, count, first_packet_id, timestamp_us, minor, framed)


def _encode_fragments(raw: bytes, origin: bytes, fragment_size: int, count: int, first_packet_id: bytes | None,
                      timestamp_us: int, minor: int, framed: bool) -> Iterator[bytes]:
    """The fragment packets, built directly: the body is the msgpack map encode_packet would give a
    Fragment (every field is valid by construction: index < count <= max_fragments, 1 <= len(data) <=
    total <= the largest packet), whose only large value, `data`, goes in as a slice of `raw`, so each
    fragment costs one copy of its piece and nothing else. tests/wire/test_fragment_encoding.py checks
    that the bytes equal encode_packet's."""
    whole = bytes(raw[24:40])
    total = len(raw)
    view = memoryview(raw)
    major = PROTOCOL_VERSION[0]
    for i in range(count):
        piece = view[i * fragment_size:(i + 1) * fragment_size]
        n = len(piece)
        # msgpack of the Fragment map with empty data, then data's real bin header (bin 8/16/32) and data
        head = msgpack.packb({"whole": whole, "index": i, "count": count, "total": total, "data": b""},
                             use_bin_type=True)[:-len(_EMPTY_BIN)]
        bin_header = (b"\xc4" + n.to_bytes(1, "big") if n < 0x100 else
                      b"\xc5" + n.to_bytes(2, "big") if n < 0x10000 else b"\xc6" + n.to_bytes(4, "big"))
        body_len = len(head) + len(bin_header) + n
        pid = _add_id(first_packet_id, i) if first_packet_id is not None else os.urandom(16)
        fields = (MAGIC, major, minor, Kind.FRAGMENT, 0, 0, b"\0\0\0", body_len, timestamp_us, pid, origin)
        header = (_FRAMED_FRAGMENT_HEADER.pack(HEADER_LEN + body_len, *fields) if framed
                  else _FRAGMENT_HEADER.pack(*fields))
        yield b"".join((header, head, bin_header, piece))


@dataclass(slots=True)
class _Set:
    count: int
    total: int
    size: int                      # F, the size of every piece but the last
    created: float
    pieces: dict[int, bytes]
    held: int                      # bytes charged to this set (and to the budget, for its origin)


class ReassemblyBudget:
    """The bytes that incomplete fragment sets may hold, shared by every Reassembler of a node (one per
    link), so that `cap` bounds them all together whatever the number of links, and each origin has a
    share of its own. Sans-IO bookkeeping: no clock, no locks (one event loop charges it).

    - `cap`: all origins together (a node passes `limits.reassembly_cap`).
    - `per_origin`: one origin's share, default cap/4. Fragments travel one hop (SPEC section 5: their
      origin is the peer at the other end of the link), so an origin is a peer, and a member whose
      certificate is in an attacker's hands holds at most a quarter of the cap: three quarters stay for
      everyone else. A quarter and not less, because one set must fit in one share: 16 MiB of the
      default 64 MiB still holds an 8 MiB adapter delta twice over. A packet larger than the share is
      refused (`reassembly_full`); raise `reassembly_cap` to receive larger ones.

    A Reassembler makes room only by evicting sets of the same origin, never another origin's, so one
    origin cannot push out another's sets; nor can it starve another: it holds at most `per_origin`, so
    an origin is refused for lack of room only when the others together hold more than cap - per_origin
    (with cap/4: three origins at full share).
    """

    __slots__ = ("cap", "per_origin", "held", "_by_origin", "refused")

    def __init__(self, cap: int, per_origin: int | None = None) -> None:
        if cap < 1:
            raise ValueError("cap must be positive")
        per_origin = max(cap // 4, 1) if per_origin is None else per_origin
        if not 1 <= per_origin <= cap:
            raise ValueError("per_origin must be between 1 and cap")
        self.cap = cap
        self.per_origin = per_origin
        self.held = 0
        self._by_origin: dict[bytes, int] = {}      # only origins holding something: at most one per link
        self.refused = 0                             # pieces refused for lack of room, for metrics

    def of(self, origin: bytes) -> int:
        """Bytes held for `origin`."""
        return self._by_origin.get(origin, 0)

    @property
    def origins(self) -> int:
        """How many origins hold bytes now."""
        return len(self._by_origin)

    def fits(self, origin: bytes, n: int) -> bool:
        return self.held + n <= self.cap and self._by_origin.get(origin, 0) + n <= self.per_origin

    def charge(self, origin: bytes, n: int) -> None:
        """Charge `n` bytes to `origin`; the caller has checked `fits`."""
        self.held += n
        self._by_origin[origin] = self._by_origin.get(origin, 0) + n

    def release(self, origin: bytes, n: int) -> None:
        if n <= 0:
            return
        left = self._by_origin.get(origin, 0) - n
        if left < 0 or self.held < n:
            raise AssertionError(f"released {n} bytes for an origin that holds {left + n}")
        self.held -= n
        if left:
            self._by_origin[origin] = left
        else:
            del self._by_origin[origin]


class Reassembler:
    """Reassembles fragment packets by (origin, whole), in any order, with duplicates.

    Memory: the bytes held (piece data plus PIECE_OVERHEAD per piece and SET_OVERHEAD per set, so that
    many tiny pieces cannot hide their cost) are charged to a ReassemblyBudget shared by every
    Reassembler of a node (`budget`; without one, a budget of its own of `limits.reassembly_cap`, all
    of which one origin may use). A piece that does not fit evicts the oldest incomplete sets of the
    same origin first, never another origin's; a set that cannot fit in its origin's share even alone is
    refused at its first piece with REASSEMBLY_FULL, and so is a piece that still does not fit once its
    origin's older sets are gone (the global cap is full of other origins' sets; its set is dropped).
    `bytes_held` is what this Reassembler holds. Time: sets older than `limits.reassembly_timeout`
    (since their first piece) are dropped by `expire(now)`, which `add` also calls. `now` must not go
    backwards. `clear()` gives everything back (the link is closing).

    A piece that disagrees with its set (count, total, length, or the content of a duplicate) raises
    BAD_FRAGMENT and drops the whole set. Pieces of a set completed recently are ignored.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, budget: ReassemblyBudget | None = None) -> None:
        self.limits = limits
        self.budget = budget if budget is not None else ReassemblyBudget(limits.reassembly_cap,
                                                                         limits.reassembly_cap)
        self._sets: dict[tuple[bytes, bytes], _Set] = {}     # insertion order = age order
        self._done: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self.bytes_held = 0
        self.expired = 0           # counters, for metrics
        self.evicted = 0
        self.completed = 0

    def __len__(self) -> int:
        return len(self._sets)

    def expire(self, now: float) -> int:
        """Drop incomplete sets whose first piece is older than the timeout; returns how many."""
        deadline = now - self.limits.reassembly_timeout
        dropped = 0
        sets = self._sets
        while sets:
            key = next(iter(sets))
            if sets[key].created > deadline:
                break
            self._drop(key)
            dropped += 1
        self.expired += dropped
        return dropped

    def clear(self) -> int:
        """Drop every incomplete set and give its bytes back to the budget; returns how many."""
        n = len(self._sets)
        for key in list(self._sets):
            self._drop(key)
        return n

    def add(self, packet: Packet, now: float) -> bytes | None:
        """Add one fragment packet; returns the whole packet's bytes when this piece completes it."""
        frag = packet.body
        if not isinstance(frag, Fragment):
            raise FrameError(Reason.BAD_FRAGMENT, f"a {packet.header.kind.name.lower()} packet is not a fragment")
        self.expire(now)
        lim = self.limits
        origin = packet.header.origin
        key = (origin, frag.whole)
        if key in self._done:
            return None
        count, total, index, data = frag.count, frag.total, frag.index, frag.data
        length = len(data)
        if count > lim.max_fragments or not 0 <= index < count or total > max_packet_len(lim) or not 1 <= length <= total:
            raise FrameError(Reason.BAD_FRAGMENT, f"fragment {index}/{count} of {length} bytes for {total}")
        s = self._sets.get(key)
        if s is None:
            size = _piece_size(count, total, index, length)
            if count == 1:
                self._remember(key)
                self.completed += 1
                return data
            share = self.budget.per_origin
            if total + count * PIECE_OVERHEAD + SET_OVERHEAD > share:
                raise FrameError(Reason.REASSEMBLY_FULL,
                                 f"a packet of {total} bytes in {count} pieces exceeds the reassembly cap {share}"
                                 + (" of one origin" if share < self.budget.cap else ""))
            s = _Set(count, total, size, now, {}, 0)
            if not self._make_room(origin, SET_OVERHEAD + length + PIECE_OVERHEAD, None):
                self.budget.refused += 1
                raise FrameError(Reason.REASSEMBLY_FULL, f"no room for a new set of {total} bytes: "
                                 f"{self.budget.held} bytes held by {self.budget.origins} origins")
            self._sets[key] = s
            self._charge(origin, s, SET_OVERHEAD)
        else:
            if count != s.count or total != s.total:
                self._drop(key)
                raise FrameError(Reason.BAD_FRAGMENT,
                                 f"fragment says {count} pieces / {total} bytes, its set has {s.count} / {s.total}")
            expected = s.size if index < count - 1 else total - (count - 1) * s.size
            if length != expected:
                self._drop(key)
                raise FrameError(Reason.BAD_FRAGMENT, f"piece {index} has {length} bytes, expected {expected}")
            old = s.pieces.get(index)
            if old is not None:
                if old != data:
                    self._drop(key)
                    raise FrameError(Reason.BAD_FRAGMENT, f"duplicate piece {index} differs from the first copy")
                return None
            if not self._make_room(origin, length + PIECE_OVERHEAD, key):
                self._drop(key)
                self.budget.refused += 1
                raise FrameError(Reason.REASSEMBLY_FULL, f"no room for piece {index} of a set of {total} bytes: "
                                 f"{self.budget.held} bytes held by {self.budget.origins} origins")
        s.pieces[index] = data
        self._charge(origin, s, length + PIECE_OVERHEAD)
        if len(s.pieces) < count:
            return None
        self._drop(key)
        self._remember(key)
        self.completed += 1
        pieces = s.pieces
        return b"".join([pieces[i] for i in range(count)])

    def _charge(self, origin: bytes, s: _Set, n: int) -> None:
        s.held += n
        self.bytes_held += n
        self.budget.charge(origin, n)

    def _make_room(self, origin: bytes, need: int, keep: tuple[bytes, bytes] | None) -> bool:
        """Evict this origin's oldest sets (never `keep`, never another origin's) until `need` more bytes
        fit in the budget; False if they cannot."""
        budget = self.budget
        while not budget.fits(origin, need):
            victim = next((k for k in self._sets if k[0] == origin and k != keep), None)
            if victim is None:
                return False
            self._drop(victim)
            self.evicted += 1
        return True

    def _drop(self, key: tuple[bytes, bytes]) -> None:
        s = self._sets.pop(key, None)
        if s is not None:
            self.bytes_held -= s.held
            self.budget.release(key[0], s.held)

    def _remember(self, key: tuple[bytes, bytes]) -> None:
        self._done[key] = None
        if len(self._done) > _RECENT_DONE:
            self._done.popitem(last=False)


def _piece_size(count: int, total: int, index: int, length: int) -> int:
    """F, inferred from the first piece of a set (SPEC §5): every piece but the last has F bytes."""
    if count == 1:
        if length != total:
            raise FrameError(Reason.BAD_FRAGMENT, f"single piece of {length} bytes for a packet of {total}")
        return total
    if index < count - 1:
        size = length
    else:
        rest = total - length
        if rest <= 0 or rest % (count - 1):
            raise FrameError(Reason.BAD_FRAGMENT, f"last piece of {length} bytes does not fit {count} pieces of {total}")
        size = rest // (count - 1)
    if not (count - 1) * size < total <= count * size:
        raise FrameError(Reason.BAD_FRAGMENT, f"{count} pieces of {size} bytes cannot make {total}")
    return size

