"""Capture files: a record of every packet a daemon sent or received.

The wire is encrypted, so captures are the only way to look at packets; `meshnode inspect` reads
them. Sans-IO: this module turns records into bytes and bytes into records; the daemon owns the file.

Layout (little-endian): an 8-byte file header `MNCAP` 00 <major u8> <minor u8>, then records:
    u64 timestamp_us | u8 direction (0 = in, 1 = out) | 32-byte peer node id (zeros if unknown)
    | u16 peer address length | address (UTF-8) | u32 packet length | packet bytes
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from .errors import FrameError, Reason
from .limits import DEFAULT_LIMITS, Limits

CAPTURE_MAGIC = b"MNCAP\x00\x01\x00"
_RECORD_HEAD = struct.Struct("<QB32sH")
_PACKET_LEN = struct.Struct("<I")
MAX_ADDRESS = 1024


class Direction(IntEnum):
    IN = 0
    OUT = 1


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    timestamp_us: int
    direction: Direction
    peer: bytes          # node id of the peer the packet came from or went to
    address: str         # "host:port" of that peer, as the daemon saw it
    packet: bytes        # the encoded packet, exactly as on the wire (inside TLS)


def encode_record(record: CaptureRecord) -> bytes:
    address = record.address.encode("utf-8")
    if len(address) > MAX_ADDRESS:
        raise ValueError(f"capture address longer than {MAX_ADDRESS} bytes")
    if len(record.peer) != 32:
        raise ValueError("capture peer id must be 32 bytes")
    return b"".join((
        _RECORD_HEAD.pack(record.timestamp_us, int(record.direction), record.peer, len(address)),
        address,
        _PACKET_LEN.pack(len(record.packet)),
        record.packet,
    ))


def is_capture(data: bytes | memoryview) -> bool:
    return bytes(data[:5]) == CAPTURE_MAGIC[:5]


def iter_records(data: bytes | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[CaptureRecord]:
    """Yield the records of a whole capture file; a damaged record raises FrameError with its offset.

    A record cut short at the very end (the daemon was killed mid-write) is reported as truncated at
    the record's first byte (SPEC Appendix A: "at that record", whichever field the file ends in),
    after every complete record before it has been yielded. Other record errors carry the offset of
    the field they are about: direction (+8), address length (+41), address, packet length.
    """
    view = memoryview(data)
    head = bytes(view[:len(CAPTURE_MAGIC)])
    if head != CAPTURE_MAGIC:
        if len(head) < len(CAPTURE_MAGIC) and CAPTURE_MAGIC.startswith(head):
            raise FrameError(Reason.TRUNCATED, f"capture file header cut short ({len(head)} bytes)",
                             offset=len(head))
        if head[:6] == CAPTURE_MAGIC[:6]:
            version = f"{head[6]}.{head[7]}" if len(head) == 8 else f"{head[6]}.x"
            raise FrameError(Reason.UNSUPPORTED_VERSION,
                             f"capture format {version}, this reader knows {CAPTURE_MAGIC[6]}.{CAPTURE_MAGIC[7]}",
                             offset=6)
        raise FrameError(Reason.BAD_MAGIC, "not a meshnode capture file", offset=0)
    offset = len(CAPTURE_MAGIC)
    max_packet = limits.max_body + 72 + 64
    while offset < len(view):
        if len(view) - offset < _RECORD_HEAD.size:
            raise FrameError(Reason.TRUNCATED, f"capture record cut short in its header ({len(view) - offset} "
                             f"of {_RECORD_HEAD.size} bytes)", offset=offset)
        ts, direction, peer, addr_len = _RECORD_HEAD.unpack_from(view, offset)
        if direction not in (0, 1):
            raise FrameError(Reason.BAD_HEADER, f"capture direction {direction}", offset=offset + 8)
        if addr_len > MAX_ADDRESS:
            raise FrameError(Reason.TOO_LARGE, f"capture address of {addr_len} bytes", offset=offset + 41)
        pos = offset + _RECORD_HEAD.size
        if len(view) - pos < addr_len + _PACKET_LEN.size:
            raise FrameError(Reason.TRUNCATED, "capture record cut short in its address or packet length",
                             offset=offset)
        try:
            address = bytes(view[pos:pos + addr_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(Reason.BAD_HEADER, "capture address is not UTF-8", offset=pos) from None
        pos += addr_len
        (plen,) = _PACKET_LEN.unpack_from(view, pos)
        if plen > max_packet:
            raise FrameError(Reason.TOO_LARGE, f"captured packet of {plen} bytes", offset=pos)
        pos += _PACKET_LEN.size
        if len(view) - pos < plen:
            raise FrameError(Reason.TRUNCATED, f"capture record cut short in its packet ({len(view) - pos} of "
                             f"{plen} bytes)", offset=offset)
        yield CaptureRecord(ts, Direction(direction), bytes(peer), address, bytes(view[pos:pos + plen]))
        offset = pos + plen
