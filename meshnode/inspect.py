"""What `meshnode inspect` shows: input detection, fragment reassembly, trust, and packet description.

Kept apart from the CLI so the golden-vector tests and other tools get exactly the JSON the command
prints. Input may be one packet, a stream of frames, hex text of either, or a capture file.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .wire import capture
from .wire.errors import Reason, WireError
from .wire.frames import FrameDecoder, Reassembler
from .wire.limits import DEFAULT_LIMITS, Limits
from .wire.packet import MAGIC, Flags, Hello, Kind, Packet, Tensor, VectorBlock, decode_packet, node_id_of, verify_packet

_HEX_CHARS = frozenset(string.hexdigits + string.whitespace)
_INLINE_BYTES = 64  # bin fields up to this size are shown in full, longer ones by size and hash


@dataclass(frozen=True, slots=True)
class InputItem:
    """One encoded packet found in the input, with where it came from."""

    offset: int
    raw: bytes
    record: capture.CaptureRecord | None = None


@dataclass
class TrustStore:
    """Keys we accept signatures from: explicit public keys, node certificates, and mesh CAs whose
    certificates (carried in hello packets) vouch for further keys."""

    keys: dict[bytes, Ed25519PublicKey] = field(default_factory=dict)
    cas: list[x509.Certificate] = field(default_factory=list)

    def add_file(self, path: Path) -> None:
        """Accept a PEM public key, a PEM/DER certificate (a CA cert makes it a mesh CA), a raw
        32-byte key, or a mesh/node directory holding `ca.pem` / `node.pem`."""
        if path.is_dir():
            found = [p for p in (path / "ca.pem", path / "ca.crt", path / "node.pem", path / "node.crt") if p.exists()]
            if not found:
                raise ValueError(f"{path}: no ca.pem or node.pem in this directory")
            for p in found:
                self.add_file(p)
            return
        data = path.read_bytes()
        if len(data) == 32:
            self._add_key(Ed25519PublicKey.from_public_bytes(data))
            return
        if b"-----BEGIN PUBLIC KEY-----" in data:
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path}: not an Ed25519 public key")
            self._add_key(key)
            return
        try:
            cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        except ValueError:
            raise ValueError(f"{path}: not a public key or certificate") from None
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: certificate key is not Ed25519")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca:
            self.cas.append(cert)
        self._add_key(key)

    def _add_key(self, key: Ed25519PublicKey) -> None:
        self.keys[node_id_of(key.public_bytes_raw())] = key

    def learn_from_hello(self, packet: Packet) -> None:
        """A hello whose certificate a trusted mesh CA signed makes its key trusted."""
        hello = packet.body
        if not isinstance(hello, Hello) or not hello.cert or not self.cas:
            return
        try:
            cert = x509.load_der_x509_certificate(hello.cert)
        except ValueError:
            return
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey) or key.public_bytes_raw() != hello.public_key:
            return
        for ca in self.cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure means "not vouched for"
                continue
            self._add_key(key)
            return

    def status(self, packet: Packet) -> str:
        """valid | invalid | unknown_key | unsigned | self_signed (a hello that verifies only
        against the key it carries itself)."""
        if not packet.header.flags & Flags.SIGNED:
            return "unsigned"
        key = self.keys.get(packet.header.origin)
        if key is None:
            if isinstance(packet.body, Hello) and node_id_of(packet.body.public_key) == packet.header.origin:
                return "self_signed" if _verifies(packet, packet.body.public_key) else "invalid"
            return "unknown_key"
        return "valid" if _verifies(packet, key) else "invalid"


def _verifies(packet: Packet, key: Ed25519PublicKey | bytes) -> bool:
    try:
        verify_packet(packet, key)
    except WireError:
        return False
    return True


def maybe_unhex(data: bytes) -> bytes:
    """Hex text (whitespace allowed) becomes bytes; anything else is returned as it is."""
    if not data or not all(chr(b) in _HEX_CHARS for b in data[:4096]):
        return data
    text = "".join(data.decode("ascii", "replace").split())
    if not text or not all(c in string.hexdigits for c in text):
        return data
    if len(text) % 2:
        raise WireError(Reason.TRUNCATED, "hex text has an odd number of digits", offset=len(text))
    return binascii.unhexlify(text)


def split_input(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[InputItem]:
    """Yield the packets in `data`: a capture file, one bare packet, or a stream of frames."""
    if capture.is_capture(data):
        offset = len(capture.CAPTURE_MAGIC)
        for record in capture.iter_records(data, limits=limits):
            yield InputItem(offset, record.packet, record)
            offset += 8 + 1 + 32 + 2 + len(record.address.encode()) + 4 + len(record.packet)
        return
    if data[:4] == MAGIC:
        yield InputItem(0, data)
        return
    decoder = FrameDecoder(limits.max_frame)
    offset = 0
    try:
        for frame in decoder.feed(data):
            yield InputItem(offset + 4, frame)
            offset += 4 + len(frame)
    except WireError as exc:
        raise type(exc)(exc.reason, str(exc).split(": ", 1)[-1].rsplit(" at offset", 1)[0], offset=offset) from None
    if decoder.pending:
        raise WireError(Reason.TRUNCATED, f"stream ends inside a frame ({decoder.pending} bytes left over)", offset=offset)


def describe_value(value: Any) -> Any:
    """Turn body field values into JSON-friendly values, describing vectors and tensors."""
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
        return {str(describe_value(k)): describe_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe_value(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.name.lower()
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    return repr(value)


def describe_vectors(block: VectorBlock) -> dict[str, Any]:
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


def describe_packet(packet: Packet, item: InputItem, trust: TrustStore, *, reassembled_from: int | None = None) -> dict[str, Any]:
    h = packet.header
    out: dict[str, Any] = {"offset": item.offset}
    if item.record is not None:
        out["captured_us"] = item.record.timestamp_us
        out["direction"] = item.record.direction.name.lower()
        out["peer"] = item.record.peer.hex()
        out["address"] = item.record.address
    if reassembled_from is not None:
        out["reassembled_from"] = reassembled_from
    flags = [f.name.lower() for f in Flags if h.flags & f]
    out.update({
        "version": f"{h.major}.{h.minor}",
        "kind": Kind(h.kind).name.lower(),
        "flags": flags,
        "hop_limit": h.hop_limit,
        "timestamp_us": h.timestamp_us,
        "packet_id": h.packet_id.hex(),
        "origin": h.origin.hex(),
        "size": len(packet.raw),
        "signature": trust.status(packet),
        "body": describe_value(packet.body),
    })
    return out


@dataclass(frozen=True, slots=True)
class InspectError:
    """A malformed piece of input: what `inspect` reports instead of a traceback."""

    offset: int | None
    reason: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"error": self.reason, "offset": self.offset, "message": self.message}


def inspect_bytes(data: bytes, trust: TrustStore, *, limits: Limits = DEFAULT_LIMITS, now: float = 0.0
                  ) -> Iterator[dict[str, Any] | InspectError]:
    """Describe every packet in `data`; fragments are shown and, once complete, so is the whole
    packet they carried. Stops at the first error in the framing itself; a bad packet inside a
    good frame is reported and the rest of the stream is still read."""
    reassembler = Reassembler(limits)
    try:
        data = maybe_unhex(data)
        items: Iterable[InputItem] = split_input(data, limits=limits)
        for item in items:
            yield from _inspect_item(item, trust, reassembler, limits, now)
    except WireError as exc:
        yield InspectError(exc.offset, exc.reason.value, str(exc))


def _inspect_item(item: InputItem, trust: TrustStore, reassembler: Reassembler, limits: Limits, now: float
                  ) -> Iterator[dict[str, Any] | InspectError]:
    try:
        packet = decode_packet(item.raw, limits=limits)
    except WireError as exc:
        offset = None if exc.offset is None else item.offset + exc.offset
        yield InspectError(offset, exc.reason.value, str(exc))
        return
    trust.learn_from_hello(packet)
    yield describe_packet(packet, item, trust)
    if packet.header.kind == Kind.FRAGMENT:
        try:
            whole = reassembler.add(packet, now)
        except WireError as exc:
            yield InspectError(item.offset, exc.reason.value, str(exc))
            return
        if whole is not None:
            inner = InputItem(item.offset, whole, item.record)
            try:
                inner_packet = decode_packet(whole, limits=limits)
            except WireError as exc:
                yield InspectError(item.offset, exc.reason.value, f"reassembled packet: {exc}")
                return
            trust.learn_from_hello(inner_packet)
            yield describe_packet(inner_packet, inner, trust, reassembled_from=packet.body.count)
