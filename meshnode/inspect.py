"""What `meshnode inspect` shows: input detection, fragment reassembly, trust, and packet description.

Kept apart from the CLI so that the golden-vector tests and other tools get exactly the JSON the
command prints (`inspect_bytes`) and the same human text (`format_text`, `format_error`).

Input may be one packet, a stream of frames, hex text of either, or a capture file; `split_input`
tells them apart by their first bytes (a capture starts with `MNCAP`, a packet with `MNPK`, a frame
stream with a 4-byte length followed by `MNPK`; anything else is read as one packet, which then
fails with `bad_magic`).

Every problem is reported as an `InspectError` (a stable reason code from SPEC §7, the byte offset in
the input, and a message), never as an exception: the input is hostile by definition.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import hashlib
import json
import math
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .wire import capture
from .wire.errors import Reason, WireError
from .wire.frames import FRAME_PREFIX_LEN, FrameDecoder, Reassembler
from .wire.limits import DEFAULT_LIMITS, Limits
from .wire.packet import (
    HEADER_LEN, MAGIC, SIGNATURE_LEN, Flags, Hello, Kind, Packet, Tensor, VectorBlock, decode_packet, node_id_of,
    verify_packet,
)

__all__ = [
    "InputItem", "TrustStore", "InspectError", "Result", "maybe_unhex", "split_input", "describe_value",
    "describe_vectors", "describe_packet", "inspect_bytes", "failed", "format_text", "format_error",
]

_HEX_TEXT = (string.hexdigits + string.whitespace).encode()
_INLINE_BYTES = 64  # bin fields up to this size are shown in full (hex), longer ones by size and SHA-256
_FLAGS_OFFSET = 7   # header byte of the flags (SPEC §2), where an unsigned packet's problem is
_CAPTURE_RECORD_FIXED = 8 + 1 + 32 + 2 + 4  # capture record bytes besides the address and the packet


@dataclass(frozen=True, slots=True)
class InputItem:
    """One encoded packet found in the input: `offset` is where its first byte is in the input."""

    offset: int
    raw: bytes
    record: capture.CaptureRecord | None = None


@dataclass(frozen=True, slots=True)
class InspectError:
    """A malformed piece of input: what `inspect` reports instead of a traceback. `offset` is the
    byte offset in the (un-hexed) input; `reason` a code of SPEC §7."""

    offset: int | None
    reason: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"error": self.reason, "offset": self.offset, "message": self.message}


Result = dict[str, Any] | InspectError


def _message(exc: WireError) -> str:
    """The error's message without the "reason: " prefix and " at offset N" suffix WireError adds
    (both are reported in fields of their own, and the offset may be re-based)."""
    text = str(exc)
    prefix = f"{exc.reason.value}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    suffix = f" at offset {exc.offset}"
    if exc.offset is not None and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text


def _error(exc: WireError, offset: int | None, context: str = "") -> InspectError:
    return InspectError(offset, exc.reason.value, context + _message(exc))


# ---------------------------------------------------------------------------------------- trust


@dataclass
class TrustStore:
    """Keys whose signatures count as valid: explicit public keys and node certificates, plus mesh
    CAs, whose node certificates (carried in hello packets) make further keys trusted."""

    keys: dict[bytes, Ed25519PublicKey] = field(default_factory=dict)
    cas: list[x509.Certificate] = field(default_factory=list)

    def add_file(self, path: Path) -> None:
        """Accept a raw 32-byte Ed25519 public key (or its 64 hex digits), a PEM public key, a PEM/DER
        certificate (a CA certificate makes it a mesh CA), or a mesh / node directory holding
        `ca.crt` and/or `node.crt` (what `meshnode mesh init` / `node init` write). Raises ValueError
        (or OSError) with the path in the message."""
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in ("ca.crt", "ca.pem", "node.crt", "node.pem") if (path / n).is_file()]
            if not found:
                raise ValueError(f"{path}: no ca.crt or node.crt in this directory")
            for p in found:
                self.add_file(p)
            return
        data = path.read_bytes()
        try:
            self.add_bytes(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def add_bytes(self, data: bytes) -> None:
        """`add_file` for the content of a file."""
        text = data.strip()
        if len(data) == 32:
            self._add_key(Ed25519PublicKey.from_public_bytes(data))
            return
        if len(text) == 64 and not text.translate(None, _HEX_TEXT):
            self._add_key(Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode())))
            return
        if b"-----BEGIN PUBLIC KEY-----" in data:
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, UnsupportedAlgorithm):
                raise ValueError("not a readable PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            self._add_key(key)
            return
        try:
            pem = b"-----BEGIN" in data
            cert = x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data)
        except ValueError:
            raise ValueError("not an Ed25519 public key (raw, hex or PEM) or a certificate") from None
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the certificate's key is not Ed25519")
        if _is_ca(cert):
            self.cas.append(cert)
        self._add_key(key)

    def _add_key(self, key: Ed25519PublicKey) -> None:
        self.keys[node_id_of(key.public_bytes_raw())] = key

    def learn_from_hello(self, packet: Packet) -> None:
        """A signed hello whose certificate a trusted mesh CA issued, for the key the hello carries,
        makes that key trusted (from this packet on). The certificate's validity window is not
        checked: a capture may be older than the certificates in it."""
        hello = packet.body
        if not isinstance(hello, Hello) or not hello.cert or not self.cas:
            return
        if node_id_of(hello.public_key) != packet.header.origin or not _verifies(packet, hello.public_key):
            return
        try:
            cert = x509.load_der_x509_certificate(hello.cert)
        except ValueError:
            return
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey) or key.public_bytes_raw() != hello.public_key or _is_ca(cert):
            return
        for ca in self.cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            self._add_key(key)
            return

    def status(self, packet: Packet) -> str:
        """valid | invalid | unknown_key | unsigned | self_signed (a hello that verifies against the
        key it carries, which nothing trusted vouches for)."""
        if not packet.header.flags & Flags.SIGNED:
            return "unsigned"
        key = self.keys.get(packet.header.origin)
        if key is None:
            if isinstance(packet.body, Hello) and node_id_of(packet.body.public_key) == packet.header.origin:
                return "self_signed" if _verifies(packet, packet.body.public_key) else "invalid"
            return "unknown_key"
        return "valid" if _verifies(packet, key) else "invalid"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _verifies(packet: Packet, key: Ed25519PublicKey | bytes) -> bool:
    try:
        verify_packet(packet, key)
    except WireError:
        return False
    return True


# ---------------------------------------------------------------------------------------- input


def maybe_unhex(data: bytes) -> bytes:
    """Hex text (any whitespace between digits) becomes bytes; anything else is returned as it is.
    Binary packets and frames never look like hex: `MNPK` and a frame's `MNPK` are not hex digits."""
    if not data or data.translate(None, _HEX_TEXT):
        return data
    digits = b"".join(data.split())
    if not digits:
        return data
    if len(digits) % 2:
        raise WireError(Reason.TRUNCATED, f"hex text has an odd number of digits ({len(digits)})",
                        offset=len(digits) // 2)
    return binascii.unhexlify(digits)


def split_input(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[InputItem]:
    """Yield the packets in `data`: a capture file, one bare packet, or a stream of frames. A framing
    error is raised (as WireError, offset = the bad length prefix) after the frames before it."""
    if capture.is_capture(data):
        offset = len(capture.CAPTURE_MAGIC)
        for record in capture.iter_records(data, limits=limits):
            start = offset + _CAPTURE_RECORD_FIXED + len(record.address.encode("utf-8"))
            yield InputItem(start, record.packet, record)
            offset = start + len(record.packet)
        return
    if not data:
        raise WireError(Reason.TRUNCATED, "empty input", offset=0)
    if data[FRAME_PREFIX_LEN:FRAME_PREFIX_LEN + len(MAGIC)] != MAGIC:
        yield InputItem(0, data)        # one packet (or not a packet at all: decoding says why)
        return
    decoder = FrameDecoder(limits.max_frame)
    try:
        frames = decoder.feed(data)
        error: WireError | None = None
    except WireError as exc:
        frames, error = getattr(exc, "frames", []), exc
    offset = 0
    for frame in frames:
        yield InputItem(offset + FRAME_PREFIX_LEN, frame)
        offset += FRAME_PREFIX_LEN + len(frame)
    if error is not None:
        raise error
    if decoder.pending:
        raise WireError(Reason.TRUNCATED, f"the stream ends inside a frame ({decoder.pending} bytes of it)",
                        offset=offset)


# ----------------------------------------------------------------------------------- description


def describe_value(value: Any) -> Any:
    """Body field values as JSON-friendly values: vector blocks and tensors described, short bins
    as hex, long ones by size and SHA-256, non-finite floats as strings (JSON has none)."""
    if isinstance(value, VectorBlock):
        return describe_vectors(value)
    if isinstance(value, Tensor):
        return {"dtype": value.dtype, "shape": list(value.shape), "bytes": len(value.data)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        if len(value) <= _INLINE_BYTES:
            return value.hex()
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: describe_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): describe_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe_value(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe_vectors(block: VectorBlock) -> dict[str, Any]:
    """A vector block: dimension, count, encoding, bytes of packed data on the wire, bits per trit,
    fraction of zero trits, and size relative to the same vectors as float32 (None when empty)."""
    trits_total = block.count * block.dim
    nbytes = len(block.data)
    return {
        "space": block.space.hex(),
        "dim": block.dim,
        "count": block.count,
        "encoding": block.encoding.name.lower(),
        "bytes": nbytes,
        "bits_per_trit": round(8 * nbytes / trits_total, 4) if trits_total else None,
        "zero_fraction": round(float(block.zero_fraction()), 6) if trits_total else None,
        "vs_float32": round(nbytes / (4 * trits_total), 6) if trits_total else None,
    }


def describe_packet(packet: Packet, item: InputItem, trust: TrustStore, *,
                    reassembled_from: int | None = None) -> dict[str, Any]:
    """One packet as the JSON object `inspect --json` prints (without the "file" key)."""
    h = packet.header
    out: dict[str, Any] = {"offset": item.offset}
    if item.record is not None:
        out["captured_us"] = item.record.timestamp_us
        out["direction"] = item.record.direction.name.lower()
        out["peer"] = item.record.peer.hex()
        out["address"] = item.record.address
    if reassembled_from is not None:
        out["reassembled_from"] = reassembled_from
    out.update({
        "version": f"{h.major}.{h.minor}",
        "kind": h.kind.name.lower(),
        "flags": _flag_names(int(h.flags)),
        "hop_limit": h.hop_limit,
        "timestamp_us": h.timestamp_us,
        "packet_id": h.packet_id.hex(),
        "origin": h.origin.hex(),
        "size": len(packet.raw),
        "signature": trust.status(packet),
        "body": describe_value(packet.body),
    })
    ignored = _ignored_keys(packet)
    if ignored:
        out["ignored_keys"] = ignored
    return out


def _flag_names(flags: int) -> list[str]:
    """Known flags by name, other set bits (SPEC §2: hints bits 4-7) as "bitN"."""
    names = [f.name.lower() for f in Flags if flags & f and f.name]
    known = sum(int(f) for f in Flags)
    return names + [f"bit{i}" for i in range(8) if flags >> i & 1 and not known >> i & 1]


def _ignored_keys(packet: Packet) -> list[str]:
    """Top-level body keys this version does not know (a newer minor's optional fields, SPEC §3)."""
    known = {f.name for f in dataclasses.fields(packet.body)}
    body = msgpack.unpackb(memoryview(packet.raw)[HEADER_LEN:HEADER_LEN + packet.header.body_length], raw=False)
    return sorted(k for k in body if k not in known)


# -------------------------------------------------------------------------------------- inspect


def inspect_bytes(data: bytes, trust: TrustStore, *, limits: Limits = DEFAULT_LIMITS, now: float = 0.0
                  ) -> Iterator[Result]:
    """Describe every packet in `data`, in order. Fragments are shown, and once a set is complete so
    is the packet it carried (`reassembled_from`). A packet that does not decode, a bad signature
    and an unsigned packet of a kind that must be signed are InspectErrors; a bad packet inside a
    good frame does not stop the stream, an error in the framing (or capture records) does."""
    reassembler = Reassembler(limits)
    try:
        for item in split_input(maybe_unhex(data), limits=limits):
            yield from _inspect_item(item, trust, reassembler, limits, now)
    except WireError as exc:
        yield _error(exc, exc.offset)


def failed(results: list[Result]) -> bool:
    """Whether `inspect` exits non-zero for these results: any error at all."""
    return any(isinstance(r, InspectError) for r in results)


def _inspect_item(item: InputItem, trust: TrustStore, reassembler: Reassembler, limits: Limits, now: float
                  ) -> Iterator[Result]:
    try:
        packet = decode_packet(item.raw, limits=limits)
    except WireError as exc:
        yield _error(exc, None if exc.offset is None else item.offset + exc.offset)
        return
    yield from _report(packet, item, trust)
    if packet.header.kind is not Kind.FRAGMENT:
        return
    try:
        whole = reassembler.add(packet, now)
    except WireError as exc:
        yield _error(exc, item.offset)
        return
    if whole is None:
        return
    try:
        inner = decode_packet(whole, limits=limits)
        if inner.header.kind is Kind.FRAGMENT:
            raise WireError(Reason.BAD_FRAGMENT, "the reassembled packet is itself a fragment")
    except WireError as exc:
        where = f" (offset {exc.offset} in it)" if exc.offset is not None else ""
        yield InspectError(item.offset, exc.reason.value,
                           f"packet reassembled from {packet.body.count} fragments{where}: {_message(exc)}")
        return
    yield from _report(inner, InputItem(item.offset, whole, item.record), trust, reassembled_from=packet.body.count)


def _report(packet: Packet, item: InputItem, trust: TrustStore, *, reassembled_from: int | None = None
            ) -> Iterator[Result]:
    trust.learn_from_hello(packet)
    description = describe_packet(packet, item, trust, reassembled_from=reassembled_from)
    yield description
    status = description["signature"]
    kind = packet.header.kind.name.lower()
    if status == "invalid":
        yield InspectError(item.offset + len(packet.raw) - SIGNATURE_LEN, Reason.BAD_SIGNATURE.value,
                           f"the {kind} packet's signature does not verify against its origin's key")
    elif status == "unsigned" and packet.header.kind is not Kind.FRAGMENT:
        yield InspectError(item.offset + _FLAGS_OFFSET, Reason.UNSIGNED.value,
                           f"a {kind} packet must be signed (only fragments are not)")


# ------------------------------------------------------------------------------------ human text


def format_error(name: str, error: InspectError) -> str:
    where = f" at offset {error.offset}" if error.offset is not None else ""
    return f"{name}: error {error.reason}{where}: {error.message}"


def format_text(name: str, p: dict[str, Any]) -> str:
    """A packet description for people: header line, then one line per body field."""
    lines = [f"{name} @{p['offset']}: {p['kind']} v{p['version']}  {p['size']} bytes  signature {p['signature']}"]
    if "direction" in p:
        lines.append(f"  captured {p['captured_us']} us  {p['direction']}  peer {p['peer'][:16]}  {p['address']}")
    if "reassembled_from" in p:
        lines.append(f"  reassembled from {p['reassembled_from']} fragments")
    lines.append(f"  id {p['packet_id']}  origin {p['origin'][:16]}  hop limit {p['hop_limit']}  "
                 f"time {p['timestamp_us']} us  flags {','.join(p['flags']) or '-'}")
    for key, value in p["body"].items():
        if value is None:
            continue
        if _is_vectors(value):
            lines.append(_format_vectors(f"  {key}", value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"  {key}:")
            for i, entry in enumerate(value):
                parts = [f"{k}={_short(v)}" for k, v in entry.items() if v is not None and not _is_vectors(v)]
                lines.append(f"    [{i}] " + " ".join(parts))
                lines.extend(_format_vectors(f"      {k}", v) for k, v in entry.items() if _is_vectors(v))
        else:
            lines.append(f"  {key}: {_short(value)}")
    if p.get("ignored_keys"):
        lines.append(f"  ignored keys (newer minor version?): {', '.join(p['ignored_keys'])}")
    return "\n".join(lines)


def _is_vectors(value: Any) -> bool:
    return isinstance(value, dict) and "encoding" in value and "dim" in value and "count" in value


def _format_vectors(label: str, v: dict[str, Any]) -> str:
    if not v["count"] or not v["dim"]:
        return f"{label}: {v['count']} x {v['dim']} trits, {v['encoding']}, {v['bytes']} bytes on the wire"
    return (f"{label}: {v['count']} x {v['dim']} trits, {v['encoding']}, {v['bytes']} bytes on the wire "
            f"({v['bits_per_trit']:.3f} bits/trit), zeros {100 * v['zero_fraction']:.1f}%, "
            f"{100 * v['vs_float32']:.2f}% of float32, space {v['space']}")


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
