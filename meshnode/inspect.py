"""What `meshnode inspect` shows: input detection, fragment reassembly, trust, and packet description.

Kept apart from the CLI so that the golden-vector tests and other tools get exactly the JSON the
command prints (`inspect_bytes`) and the same human text (`format_text`, `format_error`).

Input may be one packet, a stream of frames, hex text of any of them, or a capture file
(`InputFormat`). The CLI takes the form from `--format`, else from the file's suffix (`.bin`,
`.frames`, `.hex`, `.mncap`: what protocol/vectors/README.md says), else from the content
(`sniff`: docs/INSPECT.md "Input forms" has the rules).

Every problem is reported as an `InspectError` (a stable reason code from SPEC §7, the byte offset in
the input, and a message), never as an exception: the input is hostile by definition.

Node names come from certificates: a node certificate given to `--trust`, or one a trusted mesh CA
issued, carried in a hello (`NameBook`, verified names); failing that, from the name a self-signed
hello claims (shown with a "?" in human text, never in JSON). `Filter` selects packets by kind, topic
and node; `Summary` counts them per kind and topic.
"""

from __future__ import annotations

import binascii
import dataclasses
import datetime as _dt
import difflib
import enum
import hashlib
import json
import math
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from .wire import capture
from .wire.errors import Reason, WireError
from .wire.frames import FRAME_PREFIX_LEN, FrameDecoder, Reassembler
from .wire.limits import DEFAULT_LIMITS, Limits
from .wire.packet import (
    HEADER_LEN, MAGIC, SIGNATURE_LEN, Flags, Hello, Kind, Packet, Tensor, VectorBlock, decode_packet, node_id_of,
    verify_packet,
)

__all__ = [
    "InputFormat", "format_for_name", "sniff", "unhex",
    "InputItem", "NodeName", "NameBook", "TrustStore", "InspectError", "Result", "maybe_unhex", "split_input",
    "describe_value", "describe_vectors", "describe_packet", "inspect_bytes", "failed", "format_text",
    "format_error", "format_time", "KINDS", "parse_kinds", "Filter", "Summary",
]

_HEX_TEXT = (string.hexdigits + string.whitespace).encode()
_INLINE_BYTES = 64  # bin fields up to this size are shown in full (hex), longer ones by size and SHA-256
_FLAGS_OFFSET = 7   # header byte of the flags (SPEC §2), where an unsigned packet's problem is
_ORIGIN_OFFSET = 40  # header field of the origin (SPEC §2), where a hello's origin/key mismatch is
_CAPTURE_RECORD_FIXED = 8 + 1 + 32 + 2 + 4  # capture record bytes besides the address and the packet
_KIND_OFFSET = 6    # header byte of the kind (SPEC §2): the look-ahead for names decodes hellos only
_NAME_SHOWN = 64    # longest node name shown (what a certificate's CN may hold); the rest is cut
_NO_PEER = bytes(32)  # a capture record's peer id when the daemon did not know it
KINDS = tuple(k.name.lower() for k in Kind)


class InputFormat(enum.Enum):
    """What the input is (`--format`). AUTO: hex text if it is all hex digits and whitespace, then
    the un-hexed bytes by their first bytes (`sniff`). HEX: hex text (an error if it is not), then
    its bytes by `sniff`."""

    AUTO = "auto"
    PACKET = "packet"
    FRAMES = "frames"
    CAPTURE = "capture"
    HEX = "hex"


_SUFFIX_FORMATS = {".bin": InputFormat.PACKET, ".frames": InputFormat.FRAMES, ".mncap": InputFormat.CAPTURE,
                   ".hex": InputFormat.HEX}


def format_for_name(name: str) -> InputFormat:
    """The form a file name's suffix names (protocol/vectors/README.md), else AUTO (stdin "-" too)."""
    return _SUFFIX_FORMATS.get(Path(name).suffix.lower(), InputFormat.AUTO)


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


# ---------------------------------------------------------------------------------------- names


@dataclass(frozen=True, slots=True)
class NodeName:
    """A node's name; `verified` when a trusted certificate says so (given with --trust, or issued by a
    trusted mesh CA), not when only the node's own hello claims it."""

    name: str
    verified: bool


class NameBook:
    """Node id -> name, as far as the certificates and hellos seen so far tell. A verified name
    replaces a claimed one, never the other way round; otherwise the first name seen stays (a node
    id is the hash of a key, so only its holder can sign a hello for it)."""

    def __init__(self) -> None:
        self._names: dict[bytes, NodeName] = {}

    def __len__(self) -> int:
        return len(self._names)

    def add(self, node_id: bytes, name: str, *, verified: bool) -> None:
        if not name:
            return
        known = self._names.get(node_id)
        if known is None or (verified and not known.verified):
            self._names[node_id] = NodeName(name, verified)

    def get(self, node_id: bytes | str) -> NodeName | None:
        """The name of a node id (bytes or hex), or None."""
        if isinstance(node_id, str):
            try:
                node_id = bytes.fromhex(node_id)
            except ValueError:
                return None
        return self._names.get(node_id)

    def verified(self, node_id: bytes) -> str | None:
        known = self._names.get(node_id)
        return known.name if known is not None and known.verified else None

    def matches(self, node_id_hex: str, query: str) -> bool:
        """`query` is this node's name (verified or claimed) or a prefix of its hex id."""
        known = self.get(node_id_hex)
        if known is not None and known.name == query:
            return True
        q = query.lower()
        return bool(q) and not q.strip(string.hexdigits.lower()) and node_id_hex.startswith(q)


# ---------------------------------------------------------------------------------------- trust


@dataclass
class TrustStore:
    """Keys whose signatures count as valid: explicit public keys and node certificates, plus mesh
    CAs, whose node certificates (carried in hello packets) make further keys trusted. Also the
    node names those certificates and hellos tell (`names`)."""

    keys: dict[bytes, Ed25519PublicKey] = field(default_factory=dict)
    cas: list[x509.Certificate] = field(default_factory=list)
    names: NameBook = field(default_factory=NameBook)

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
        else:
            self.names.add(node_id_of(key.public_bytes_raw()), _common_name(cert), verified=True)
        self._add_key(key)

    def _add_key(self, key: Ed25519PublicKey) -> None:
        self.keys[node_id_of(key.public_bytes_raw())] = key

    def learn_from_hello(self, packet: Packet, *, keys: bool = True) -> None:
        """A signed hello whose certificate a trusted mesh CA issued, for the key the hello carries,
        makes that key trusted (from this packet on) and the certificate's name a verified one; a
        hello that only verifies against its own key gives a claimed name. keys=False learns the
        name only (the look-ahead for names: a key is trusted from its hello on, not before). The
        certificate's validity window is not checked: a capture may be older than its certificates."""
        hello = packet.body
        origin = packet.header.origin
        if not isinstance(hello, Hello) or node_id_of(hello.public_key) != origin:
            return
        if not _verifies(packet, hello.public_key):
            return
        cert = self._vouched(hello)
        if cert is None:
            self.names.add(origin, hello.name, verified=False)
            return
        if keys:
            self._add_key(Ed25519PublicKey.from_public_bytes(hello.public_key))
        self.names.add(origin, _common_name(cert) or hello.name, verified=True)

    def _vouched(self, hello: Hello) -> x509.Certificate | None:
        """The hello's certificate if a trusted mesh CA issued it for the key the hello carries."""
        if not hello.cert or not self.cas:
            return None
        try:
            cert = x509.load_der_x509_certificate(hello.cert)
        except ValueError:
            return None
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey) or key.public_bytes_raw() != hello.public_key or _is_ca(cert):
            return None
        for ca in self.cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return cert
        return None

    def status(self, packet: Packet) -> str:
        """valid | invalid | unknown_key | unsigned | self_signed (a hello that verifies against the
        key it carries, which nothing trusted vouches for) | ignored (a fragment's signature)."""
        return self.check(packet)[0]

    def check(self, packet: Packet) -> tuple[str, WireError | None]:
        """(`status`, the error that makes it "invalid"): the receiver's rules of SPEC §4-6.
        A fragment's signature is not checked (§4: the reassembled packet's is what counts). A hello
        is checked against the key it carries, which must hash to its origin (§6, else
        bad_signature at the origin field); any other packet against the trusted key of its origin."""
        if not packet.header.flags & Flags.SIGNED:
            return "unsigned", None
        if packet.header.kind is Kind.FRAGMENT:
            return "ignored", None
        origin = packet.header.origin
        if isinstance(packet.body, Hello):
            if node_id_of(packet.body.public_key) != origin:
                return "invalid", WireError(Reason.BAD_SIGNATURE, "the hello's origin is not the SHA-256 of its "
                                            "public_key", offset=_ORIGIN_OFFSET)
            problem = _verify(packet, packet.body.public_key)
            if problem is not None:
                return "invalid", problem
            return ("valid" if origin in self.keys else "self_signed"), None
        key = self.keys.get(origin)
        if key is None:
            return "unknown_key", None
        problem = _verify(packet, key)
        return ("valid", None) if problem is None else ("invalid", problem)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _common_name(cert: x509.Certificate) -> str:
    try:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(cns[0].value) if cns else ""


def _verifies(packet: Packet, key: Ed25519PublicKey | bytes) -> bool:
    return _verify(packet, key) is None


def _verify(packet: Packet, key: Ed25519PublicKey | bytes) -> WireError | None:
    try:
        verify_packet(packet, key)
    except WireError as exc:
        return exc
    return None


# ---------------------------------------------------------------------------------------- input


def maybe_unhex(data: bytes) -> bytes:
    """Hex text (any whitespace between digits) becomes bytes; anything else is returned as it is.
    Binary packets and frames never look like hex: `MNPK` and a frame's `MNPK` are not hex digits."""
    if not data or data.translate(None, _HEX_TEXT):
        return data
    if not b"".join(data.split()):
        return data
    return unhex(data)


def unhex(data: bytes) -> bytes:
    """Hex text -> bytes: hex digits of either case, ASCII whitespace anywhere (also between the two
    digits of a byte). Offsets in errors are of the un-hexed bytes, like every offset inspect reports:
    a character that is neither is `bad_magic` at the byte it would have been part of; an odd number
    of digits is `truncated` at the byte the last digit starts."""
    stray = data.translate(None, _HEX_TEXT)
    if stray:
        at = next(i for i, c in enumerate(data) if c not in _HEX_TEXT)
        digits_before = len(b"".join(data[:at].split()))
        raise WireError(Reason.BAD_MAGIC, f"not hex text: character {data[at:at + 1]!r} at text position {at}",
                        offset=digits_before // 2)
    digits = b"".join(data.split())
    if len(digits) % 2:
        raise WireError(Reason.TRUNCATED, f"hex text has an odd number of digits ({len(digits)})",
                        offset=len(digits) // 2)
    return binascii.unhexlify(digits)


def sniff(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> InputFormat:
    """PACKET, FRAMES or CAPTURE for binary input, by its first bytes: `MNCAP` is a capture; `MNPK`
    (or a shorter prefix of it, an empty input included) a packet; a frame stream is a u32 length
    of 1..max_frame first, or any length followed by `MNPK` (a stream whose first frame is too
    large); anything else is read as one packet, which then fails with `bad_magic`. A frame length
    can never read as `MNPK` (0x4B504E4D is over 1 GiB, above any max_frame), so the rules never
    overlap; what they cannot tell apart is a frame stream from a non-packet: `--format` decides."""
    if capture.is_capture(data):
        return InputFormat.CAPTURE
    if data[:len(MAGIC)] == MAGIC[:len(data)]:
        return InputFormat.PACKET
    if len(data) >= FRAME_PREFIX_LEN:
        length = int.from_bytes(data[:FRAME_PREFIX_LEN], "little")
        if 1 <= length <= limits.max_frame or data[FRAME_PREFIX_LEN:FRAME_PREFIX_LEN + len(MAGIC)] == MAGIC:
            return InputFormat.FRAMES
    return InputFormat.PACKET


def split_input(data: bytes, fmt: InputFormat = InputFormat.AUTO, *, limits: Limits = DEFAULT_LIMITS
                ) -> Iterator[InputItem]:
    """Yield the packets in `data` (binary: un-hex text first): a capture file, one bare packet, or a
    stream of frames, as `fmt` says (AUTO or HEX: by `sniff`). A framing error is raised (as
    WireError, offset = the bad length prefix) after the frames before it; a stream that ends inside
    a frame (or inside its length prefix) is `truncated` at that frame's length prefix."""
    if fmt in (InputFormat.AUTO, InputFormat.HEX):
        fmt = sniff(data, limits=limits)
    if fmt is InputFormat.CAPTURE:
        offset = len(capture.CAPTURE_MAGIC)
        for record in capture.iter_records(data, limits=limits):
            start = offset + _CAPTURE_RECORD_FIXED + len(record.address.encode("utf-8"))
            yield InputItem(start, record.packet, record)
            offset = start + len(record.packet)
        return
    if not data:
        raise WireError(Reason.TRUNCATED, "empty input", offset=0)
    if fmt is InputFormat.PACKET:
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
                    reassembled_from: int | None = None, status: str | None = None) -> dict[str, Any]:
    """One packet as the JSON object `inspect --json` prints (without the "file" key). `origin_name`
    and `peer_name` are there only for names a trusted certificate vouches for."""
    h = packet.header
    out: dict[str, Any] = {"offset": item.offset}
    if item.record is not None:
        out["captured_us"] = item.record.timestamp_us
        out["direction"] = item.record.direction.name.lower()
        out["peer"] = item.record.peer.hex()
        peer_name = trust.names.verified(item.record.peer)
        if peer_name is not None:
            out["peer_name"] = peer_name
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
    })
    origin_name = trust.names.verified(h.origin)
    if origin_name is not None:
        out["origin_name"] = origin_name
    out.update({
        "size": len(packet.raw),
        "signature": trust.status(packet) if status is None else status,
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


def inspect_bytes(data: bytes, trust: TrustStore, *, fmt: InputFormat = InputFormat.AUTO,
                  limits: Limits = DEFAULT_LIMITS, now: float = 0.0) -> Iterator[Result]:
    """Describe every packet in `data` (of the form `fmt`), in order. Fragments are shown, and once a
    set is complete so is the packet it carried (`reassembled_from`). A packet that does not decode,
    a bad signature and an unsigned packet of a kind that must be signed are InspectErrors; a bad
    packet inside a good frame does not stop the stream, an error in the framing (or capture
    records) does.

    The hellos in `data` are read first for the names they tell (`trust.names`), so that packets
    before a node's hello are shown with its name too; which keys are trusted still goes in order."""
    reassembler = Reassembler(limits)
    try:
        if fmt is InputFormat.HEX:
            data = unhex(data)
        elif fmt is InputFormat.AUTO:
            data = maybe_unhex(data)
    except WireError as exc:
        yield _error(exc, exc.offset)
        return
    _learn_names(data, fmt, trust, limits)
    # Input read as a form its content does not look like (a capture named x.bin): say so with the
    # first error, if it comes before any packet.
    hint = ""
    if fmt in (InputFormat.PACKET, InputFormat.FRAMES, InputFormat.CAPTURE):
        looks = sniff(data, limits=limits)
        if looks is not fmt and (looks is not InputFormat.PACKET or data.startswith(MAGIC)):   # not a fallback
            hint = f" (read as {fmt.value}; the content looks like {looks.value}: see --format)"
    try:
        for item in split_input(data, fmt, limits=limits):
            for result in _inspect_item(item, trust, reassembler, limits, now):
                if hint and isinstance(result, InspectError):
                    result = dataclasses.replace(result, message=result.message + hint)
                hint = ""
                yield result
    except WireError as exc:
        error = _error(exc, exc.offset)
        yield dataclasses.replace(error, message=error.message + hint) if hint else error


def _learn_names(data: bytes, fmt: InputFormat, trust: TrustStore, limits: Limits) -> None:
    """The names the (unfragmented) hellos in `data` tell; everything else, errors included, is the
    main pass's business."""
    try:
        for item in split_input(data, fmt, limits=limits):
            if len(item.raw) <= _KIND_OFFSET or item.raw[_KIND_OFFSET] != Kind.HELLO:
                continue
            try:
                packet = decode_packet(item.raw, limits=limits)
            except WireError:
                continue
            trust.learn_from_hello(packet, keys=False)
    except WireError:
        return


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
        yield _reassembled_error(exc, packet.body.count, item.offset)
        return
    yield from _report(inner, InputItem(item.offset, whole, item.record), trust, reassembled_from=packet.body.count)


def _reassembled_error(exc: WireError, pieces: int, offset: int) -> InspectError:
    """An error in a reassembled packet: its bytes are nowhere in the input, so the error is at the
    fragment that completed the set (its first byte), and the offset inside the packet is told."""
    where = f" (offset {exc.offset} in it)" if exc.offset is not None else ""
    return InspectError(offset, exc.reason.value, f"packet reassembled from {pieces} fragments{where}: {_message(exc)}")


def _report(packet: Packet, item: InputItem, trust: TrustStore, *, reassembled_from: int | None = None
            ) -> Iterator[Result]:
    trust.learn_from_hello(packet)
    status, problem = trust.check(packet)
    description = describe_packet(packet, item, trust, reassembled_from=reassembled_from, status=status)
    yield description
    kind = packet.header.kind.name.lower()
    error: WireError | None = None
    if status == "invalid":
        assert problem is not None
        why = _message(problem)
        error = WireError(Reason.BAD_SIGNATURE, f"the {kind} packet's signature does not verify against its "
                          "origin's key" + ("" if why == "signature does not verify" else f": {why}"),
                          offset=len(packet.raw) - SIGNATURE_LEN if problem.offset is None else problem.offset)
    elif status == "unsigned" and packet.header.kind is not Kind.FRAGMENT:
        error = WireError(Reason.UNSIGNED, f"a {kind} packet must be signed (only fragments are not)",
                          offset=_FLAGS_OFFSET)
    if error is None:
        return
    if reassembled_from is not None:
        yield _reassembled_error(error, reassembled_from, item.offset)
    else:
        yield _error(error, item.offset + (error.offset or 0))


# ------------------------------------------------------------------------------------ human text


def format_error(name: str, error: InspectError) -> str:
    where = f" at offset {error.offset}" if error.offset is not None else ""
    return f"{name}: error {error.reason}{where}: {error.message}"


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def format_time(us: int, *, date: bool = True) -> str:
    """Microseconds since the Unix epoch as UTC ISO-8601 to the millisecond ("2026-12-06 13:22:08.123
    UTC"; date=False: "13:22:08.123"); a value past year 9999 (any u64 may arrive) as "N us"."""
    try:
        t = _EPOCH + _dt.timedelta(microseconds=us)
    except OverflowError:
        return f"{us} us"
    text = t.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S") + f".{t.microsecond // 1000:03d}"
    return text + " UTC" if date else text


def _printable(text: str, limit: int | None = None) -> str:
    """`text` safe for a terminal: control and other unprintable characters (escape sequences in a
    hostile name or topic) as Python escapes, cut to `limit` characters."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _who(node_id_hex: str, names: NameBook | None) -> str:
    """A node for people: its name and id prefix; a name only its own hello claims ends in "?"."""
    known = names.get(node_id_hex) if names is not None else None
    if known is None:
        return node_id_hex[:16]
    return f"{_printable(known.name, _NAME_SHOWN)}{'' if known.verified else '?'} ({node_id_hex[:16]})"


def format_text(name: str, p: dict[str, Any], names: NameBook | None = None) -> str:
    """A packet description for people: header line, then one line per body field. Times are UTC;
    nodes are named where `names` knows them."""
    lines = [f"{name} @{p['offset']}: {p['kind']} v{p['version']}  {p['size']} bytes  signature {p['signature']}"]
    if "direction" in p:
        peer = "unknown" if p["peer"] == _NO_PEER.hex() else _who(p["peer"], names)
        lines.append(f"  captured {format_time(p['captured_us'])}  {p['direction']}  peer {peer}  "
                     f"{_printable(p['address'])}")
    if "reassembled_from" in p:
        lines.append(f"  reassembled from {p['reassembled_from']} fragments")
    lines.append(f"  id {p['packet_id']}  origin {_who(p['origin'], names)}  hop limit {p['hop_limit']}  "
                 f"time {format_time(p['timestamp_us'])}  flags {','.join(p['flags']) or '-'}")
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
    text = _printable(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------- filters


def parse_kinds(values: Iterable[str]) -> frozenset[str]:
    """Kind names (any case) as a set; ValueError, with a suggestion, for one that is not a kind."""
    kinds = set()
    for value in values:
        kind = value.strip().lower()
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown kind {_printable(value, 40)!r}; {hint}kinds: {', '.join(KINDS)}")
        kinds.add(kind)
    return frozenset(kinds)


# A packet's own problem: this error comes right after the packet's description and goes with it.
_PACKET_ERRORS = frozenset((Reason.BAD_SIGNATURE.value, Reason.UNSIGNED.value))


@dataclass(frozen=True, slots=True)
class Filter:
    """Which packets to show. Each given criterion must hold (any of its values): `kinds` the packet's
    kind (a reassembled packet has its own, its fragments are "fragment"); `topics` the body's topic,
    exactly or, for a value ending in "*", by prefix (packets without a topic never match); `peers` a
    node name or hex id prefix, of the origin or of the capture record's peer. No criterion: all."""

    kinds: frozenset[str] = frozenset()
    topics: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.kinds or self.topics or self.peers)

    def matches(self, p: dict[str, Any], names: NameBook) -> bool:
        if self.kinds and p["kind"] not in self.kinds:
            return False
        if self.topics:
            topic = p["body"].get("topic") if isinstance(p.get("body"), dict) else None
            if not isinstance(topic, str) or not any(_topic_matches(t, topic) for t in self.topics):
                return False
        if self.peers:
            nodes = [p["origin"]]
            if p.get("peer") and p["peer"] != _NO_PEER.hex():
                nodes.append(p["peer"])
            if not any(names.matches(n, q) for n in nodes for q in self.peers):
                return False
        return True

    def select(self, results: Iterable[Result], names: NameBook) -> Iterator[Result]:
        """The results for the packets that match, with their own errors (bad signature, unsigned);
        errors that belong to no decoded packet (malformed input) always pass: what they were is unknown."""
        shown: bool | None = None          # whether the packet just before was selected
        for r in results:
            if isinstance(r, InspectError):
                if shown is None or r.reason not in _PACKET_ERRORS or shown:
                    yield r
                shown = None
            else:
                shown = not self or self.matches(r, names)
                if shown:
                    yield r


def _topic_matches(pattern: str, topic: str) -> bool:
    return topic.startswith(pattern[:-1]) if pattern.endswith("*") else topic == pattern


# --------------------------------------------------------------------------------------- summary


@dataclass
class _Row:
    packets: int = 0
    bytes: int = 0
    reassembled: int = 0
    first_us: int | None = None
    last_us: int | None = None
    origins: set[str] = field(default_factory=set)


class Summary:
    """Counts over one input's results (`add` each, then `as_json` / `format`): per kind and topic the
    packets, bytes, first and last time and origins; totals on the wire; signature statuses; errors.

    A reassembled packet counts in its own kind's row (and its `reassembled`); its fragments count in
    the fragment row. The totals are what was on the wire: fragments, not the packets they carried.
    Times are capture times for a capture file, the packets' own timestamps otherwise."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str | None], _Row] = {}
        self.packets = 0
        self.bytes = 0
        self.reassembled = 0
        self.captured = False
        self.signatures: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.first_error: dict[str, InspectError] = {}

    def add(self, result: Result) -> None:
        if isinstance(result, InspectError):
            self.errors[result.reason] += 1
            self.first_error.setdefault(result.reason, result)
            return
        p = result
        topic = p["body"].get("topic") if isinstance(p.get("body"), dict) else None
        row = self.rows.setdefault((p["kind"], topic if isinstance(topic, str) else None), _Row())
        row.packets += 1
        row.bytes += p["size"]
        if "reassembled_from" in p:
            row.reassembled += 1
            self.reassembled += 1
        else:
            self.packets += 1
            self.bytes += p["size"]
        if "captured_us" in p:
            self.captured = True
        t = p.get("captured_us", p["timestamp_us"])
        row.first_us = t if row.first_us is None else min(row.first_us, t)
        row.last_us = t if row.last_us is None else max(row.last_us, t)
        row.origins.add(p["origin"])
        self.signatures[p["signature"]] += 1

    def error_counts(self) -> dict[str, int]:
        """Errors in the three groups people ask about: not decodable at all, unsigned, bad signature."""
        unsigned = self.errors[Reason.UNSIGNED.value]
        bad = self.errors[Reason.BAD_SIGNATURE.value]
        return {"undecodable": sum(self.errors.values()) - unsigned - bad, "unsigned": unsigned,
                "bad_signature": bad}

    def _sorted(self) -> list[tuple[tuple[str, str | None], _Row]]:
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(self.rows.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1] or ""))

    def as_json(self, names: NameBook | None = None) -> dict[str, Any]:
        """The summary as `inspect --summary --json` prints it; `names` maps origins to the names a
        trusted certificate vouches for (claimed names are left out, as in the per-packet JSON)."""
        firsts = [r.first_us for r in self.rows.values() if r.first_us is not None]
        lasts = [r.last_us for r in self.rows.values() if r.last_us is not None]
        rows = []
        for (kind, topic), r in self._sorted():
            rows.append({"kind": kind, "topic": topic, "packets": r.packets, "bytes": r.bytes,
                         "reassembled": r.reassembled, "first_us": r.first_us, "last_us": r.last_us,
                         "origins": sorted(r.origins)})
        verified = {}
        if names is not None:
            for origin in sorted({o for r in self.rows.values() for o in r.origins}):
                name = names.verified(bytes.fromhex(origin))
                if name is not None:
                    verified[origin] = name
        return {
            "times": "captured" if self.captured else "packet",
            "rows": rows,
            "names": verified,
            "totals": {"packets": self.packets, "bytes": self.bytes, "reassembled": self.reassembled,
                       "first_us": min(firsts, default=None), "last_us": max(lasts, default=None)},
            "signatures": dict(sorted(self.signatures.items())),
            "errors": {**self.error_counts(), "by_reason": dict(sorted(self.errors.items()))},
        }

    def format(self, title: str, names: NameBook | None = None) -> str:
        """A table for people, headed by `title` (the file name)."""
        j = self.as_json()
        t = j["totals"]
        same_day = t["first_us"] is not None and format_time(t["first_us"])[:10] == format_time(t["last_us"])[:10]
        span = f", {format_time(t['first_us'])} .. {format_time(t['last_us'])}" if t["first_us"] is not None else ""
        what = "capture times" if self.captured else "packet times"
        lines = [f"{title}: {t['packets']} packets, {t['bytes']} bytes{span} ({what})"]
        table = [("kind", "topic", "packets", "bytes", "first", "last", "origins")]
        for row in j["rows"]:
            origins = sorted(self._origin(o, names) for o in row["origins"])
            shown = ", ".join(origins[:3]) + (f" +{len(origins) - 3}" if len(origins) > 3 else "")
            packets = str(row["packets"]) + (f" ({row['reassembled']} reassembled)" if row["reassembled"] else "")
            table.append((row["kind"], "-" if row["topic"] is None else _printable(row["topic"], 40), packets,
                          str(row["bytes"]), format_time(row["first_us"], date=not same_day),
                          format_time(row["last_us"], date=not same_day), shown))
        if len(table) > 1:
            widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
            right = {2, 3}
            for r in table:
                cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
                lines.append("  " + "  ".join(cells).rstrip())
        if self.reassembled:
            lines.append(f"  {self.reassembled} packets reassembled from fragments (counted in their own kind's "
                         "row; the totals count the fragments)")
        if self.signatures:
            lines.append("  signatures: " + ", ".join(f"{k} {v}" for k, v in sorted(self.signatures.items())))
        e = j["errors"]
        lines.append(f"  errors: {e['undecodable']} undecodable, {e['unsigned']} unsigned, "
                     f"{e['bad_signature']} bad signature")
        for reason, n in sorted(self.errors.items()):
            first = self.first_error[reason]
            where = f" at offset {first.offset}" if first.offset is not None else ""
            lines.append(f"    {reason} x{n}, first{where}: {_printable(first.message, 200)}")
        return "\n".join(lines)

    @staticmethod
    def _origin(node_id_hex: str, names: NameBook | None) -> str:
        known = names.get(node_id_hex) if names is not None else None
        if known is None:
            return node_id_hex[:16]
        return _printable(known.name, _NAME_SHOWN) + ("" if known.verified else "?")
