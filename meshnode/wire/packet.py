"""Semantic packets: the fixed header, the typed msgpack body, and the Ed25519 signature (SPEC §2-4).

`encode_packet(body, signer)` -> bytes and `decode_packet(bytes)` -> `Packet` are the whole API;
`verify_packet` checks a signature separately so that callers choose the key (a session looks it up
by origin). Decoding is the gate for hostile input: it only ever returns a `Packet` or raises
`PacketError` with a stable reason code, and every length is bounded before anything is allocated.

Bodies are checked against a schema table (`_SCHEMAS`: one entry per kind, listing each key, its
wire type and whether it is required, plus an optional cross-field check), not against ad-hoc code
per kind, so adding an optional field in a minor version is one line.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from functools import lru_cache
from typing import Any, ClassVar, NamedTuple

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import trits as _trits
from .errors import CodecError, PacketError, Reason
from .limits import DEFAULT_LIMITS, Limits
from .trits import Encoding

__all__ = [
    "MAGIC", "PROTOCOL_VERSION", "HEADER_LEN", "SIGNATURE_LEN", "DEFAULT_HOP_LIMIT", "SIGNATURE_DOMAIN",
    "Kind", "Flags", "Encoding", "VectorBlock", "Tensor", "Hello", "Ping", "Pong", "Vectors", "Knowledge",
    "Delta", "DeltaTensor", "Ack", "Nack", "Fragment", "Bye", "Gossip", "Body", "Header", "Packet", "Signer",
    "node_id_of", "encode_packet", "decode_packet", "verify_packet", "public_key_problem", "set_hop_limit",
    "max_packet_len",
    "signature_input",
]

MAGIC = b"MNPK"
PROTOCOL_VERSION = (1, 0)
HEADER_LEN = 72
SIGNATURE_LEN = 64
DEFAULT_HOP_LIMIT = 8
SIGNATURE_DOMAIN = b"meshnode/packet/v1\x00"
MAX_TOPIC_BYTES = 256
MAX_TENSOR_DIMS = 8
MIN_MAX_FRAME = 1024          # smallest max_frame a hello may announce (room for a fragment header)

# magic, major, minor, kind, flags, hop limit, reserved(3), body length, timestamp, packet id, origin
_HEADER = struct.Struct("<4sBBBBB3sIQ16s32s")
assert _HEADER.size == HEADER_LEN
_HOP_OFFSET = 8
_FLAGS_OFFSET = 7
_RESERVED_FLAGS = 0x0E        # bits 1-3 must be 0; bits 4-7 are hints a v1.0 reader ignores
_U64_MAX = (1 << 64) - 1


class Kind(IntEnum):
    HELLO = 1
    PING = 2
    PONG = 3
    VECTORS = 4
    KNOWLEDGE = 5
    DELTA = 6
    ACK = 7
    NACK = 8
    FRAGMENT = 9
    BYE = 10
    GOSSIP = 11


class Flags(IntFlag):
    SIGNED = 1


_KIND_BY_VALUE: dict[int, Kind] = {k.value: k for k in Kind}
_FLAGS_BY_VALUE: tuple[Flags, ...] = tuple(Flags(v) for v in range(256))


def max_packet_len(limits: Limits = DEFAULT_LIMITS) -> int:
    """The longest encoded packet `limits` allow (header + max body + signature)."""
    return HEADER_LEN + limits.max_body + SIGNATURE_LEN


# ----------------------------------------------------------------------------------------------------
# Value types carried in bodies


@dataclass(frozen=True, slots=True)
class VectorBlock:
    """N packed ternary vectors of dimension D in one HDC space (SPEC §3.1)."""

    space: bytes
    dim: int
    count: int
    encoding: Encoding
    data: bytes
    # True only when `data` is immutable bytes known to be a valid encoding of (dim, count, encoding):
    # set by from_trits (packed from checked trits) and by the decoder (validated). The encoder then
    # skips re-reading every trit; limits and all other fields are still checked. Not an init
    # argument, so a hand-built block (or dataclasses.replace) starts unchecked.
    _data_checked: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_trits(cls, trits: np.ndarray, space: bytes, encoding: Encoding | str = "auto", *,
                   limits: Limits = DEFAULT_LIMITS) -> VectorBlock:
        """Pack a (D,) or (N, D) array of -1/0/+1. `encoding` is an Encoding, its lower-case name
        ("dense2", "base3", "sparse") or "auto" (the smallest, SPEC §3.1)."""
        arr = np.asarray(trits)
        if arr.ndim == 1:
            count, dim = 1, arr.shape[0]
        elif arr.ndim == 2:
            count, dim = arr.shape
        else:
            raise CodecError(Reason.BAD_DIMENSION, f"trits must be (D,) or (N, D), got shape {arr.shape}")
        if isinstance(encoding, str) and encoding != "auto":
            try:
                encoding = Encoding[encoding.upper()]
            except KeyError:
                raise CodecError(Reason.BAD_ENCODING, f"unknown encoding {encoding!r}") from None
        enc, data = _trits.pack(arr, encoding, limits=limits)  # type: ignore[arg-type]
        return cls._checked(bytes(space), int(dim), int(count), Encoding(enc), data)

    @classmethod
    def _checked(cls, space: bytes, dim: int, count: int, encoding: Encoding, data: bytes) -> VectorBlock:
        """A block whose `data` (bytes) is already known to be valid for dim, count and encoding."""
        block = cls(space, dim, count, encoding, data)
        object.__setattr__(block, "_data_checked", type(data) is bytes)
        return block

    def to_trits(self, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        """The (count, dim) int8 array (validated)."""
        return _trits.unpack(self.data, self.dim, self.count, self.encoding, limits=limits)

    @property
    def nbytes(self) -> int:
        """Bytes of packed data (what the vectors cost on the wire, without msgpack framing)."""
        return len(self.data)

    def zero_fraction(self) -> float:
        """Fraction of the count*dim trits that are 0 (0.0 for an empty block)."""
        total = self.count * self.dim
        if total == 0:
            return 0.0
        if self.encoding == Encoding.SPARSE and len(self.data) >= 4 * self.count:
            nonzeros = int(np.frombuffer(self.data, dtype="<u4", count=self.count).sum(dtype=np.int64))
        else:
            nonzeros = int(np.count_nonzero(self.to_trits()))
        return 1.0 - nonzeros / total


_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i8": np.dtype("i1"), "u8": np.dtype("u1"),
    "i32": np.dtype("<i4"),
}
_DTYPE_NAMES: dict[tuple[str, int], str] = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}


@dataclass(frozen=True, slots=True)
class Tensor:
    """A small dense array: `dtype` one of f32 f16 i8 u8 i32, raw little-endian C-order `data` (SPEC §3.2)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if type(self.shape) is not tuple:
            object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def from_array(cls, array: np.ndarray) -> Tensor:
        arr = np.asarray(array)
        name = _DTYPE_NAMES.get((arr.dtype.kind, arr.dtype.itemsize))
        if name is None:
            raise PacketError(Reason.BAD_BODY, f"tensor dtype {arr.dtype} is not one of {', '.join(_DTYPES)}")
        data = np.ascontiguousarray(arr, dtype=_DTYPES[name]).tobytes()
        return cls(dtype=name, shape=tuple(int(s) for s in arr.shape), data=data)

    def to_array(self) -> np.ndarray:
        """A read-only array viewing `data` (no copy); `.copy()` it to modify."""
        dt = _DTYPES.get(self.dtype)
        if dt is None:
            raise PacketError(Reason.BAD_BODY, f"tensor dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        return np.frombuffer(self.data, dtype=dt).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def _tuple_fields(obj: Any, names: tuple[str, ...]) -> None:
    """Frozen bodies hold tuples; callers may pass lists (normalised here, once)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and type(value) is not tuple:
            object.__setattr__(obj, name, tuple(value))


# ----------------------------------------------------------------------------------------------------
# Bodies, one per kind (SPEC §4). Optional fields default to None (absent on the wire).


@dataclass(frozen=True, slots=True)
class Hello:
    KIND: ClassVar[Kind] = Kind.HELLO
    name: str
    public_key: bytes
    caps: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    max_frame: int = DEFAULT_LIMITS.max_frame
    cert: bytes | None = None
    mesh: bytes | None = None
    listen_port: int | None = None

    def __post_init__(self) -> None:
        _tuple_fields(self, ("caps", "topics"))


@dataclass(frozen=True, slots=True)
class Ping:
    KIND: ClassVar[Kind] = Kind.PING
    seq: int
    sent_us: int | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    KIND: ClassVar[Kind] = Kind.PONG
    seq: int
    echo_us: int | None = None


@dataclass(frozen=True, slots=True)
class Vectors:
    KIND: ClassVar[Kind] = Kind.VECTORS
    topic: str
    vectors: VectorBlock
    labels: tuple[int, ...] | None = None
    ids: tuple[str | int, ...] | None = None
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _tuple_fields(self, ("labels", "ids"))


@dataclass(frozen=True, slots=True)
class Knowledge:
    KIND: ClassVar[Kind] = Kind.KNOWLEDGE
    topic: str
    task: str
    form: str
    classes: tuple[str, ...]
    vectors: VectorBlock | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    predictions: Tensor | None = None
    anchor_hash: bytes | None = None
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _tuple_fields(self, ("classes",))


@dataclass(frozen=True, slots=True)
class DeltaTensor:
    name: str
    shape: tuple[int, ...]
    values: Tensor | None = None
    trits: VectorBlock | None = None
    scales: Tensor | None = None

    def __post_init__(self) -> None:
        _tuple_fields(self, ("shape",))


@dataclass(frozen=True, slots=True)
class Delta:
    KIND: ClassVar[Kind] = Kind.DELTA
    topic: str
    group: bytes
    round: int
    chunk: int
    chunks: int
    codec: str
    tensors: tuple[DeltaTensor, ...]
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _tuple_fields(self, ("tensors",))


@dataclass(frozen=True, slots=True)
class Ack:
    KIND: ClassVar[Kind] = Kind.ACK
    ref: bytes
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Nack:
    KIND: ClassVar[Kind] = Kind.NACK
    ref: bytes
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Fragment:
    KIND: ClassVar[Kind] = Kind.FRAGMENT
    whole: bytes
    index: int
    count: int
    total: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Bye:
    KIND: ClassVar[Kind] = Kind.BYE
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Gossip:
    """Link-local overlay control (SPEC §4, "gossip"): ids the sender holds, ids it asks for, a change of
    the link's role in the overlay, and dial addresses of members. Sent only to peers whose hello lists
    the "gossip" capability; hop limit 0, never forwarded."""

    KIND: ClassVar[Kind] = Kind.GOSSIP
    have: tuple[bytes, ...] = ()
    want: tuple[bytes, ...] = ()
    mesh: str | None = None                      # "graft" | "prune"
    peers: tuple[tuple[bytes, str], ...] = ()    # (node id, "host:port") of members the sender links to


Body = Hello | Ping | Pong | Vectors | Knowledge | Delta | Ack | Nack | Fragment | Bye | Gossip


# ----------------------------------------------------------------------------------------------------
# Header, packet, keys


@dataclass(frozen=True, slots=True)
class Header:
    major: int
    minor: int
    kind: Kind
    flags: Flags
    hop_limit: int
    timestamp_us: int
    packet_id: bytes
    origin: bytes
    body_length: int

    @property
    def signed(self) -> bool:
        return bool(self.flags & Flags.SIGNED)


@dataclass(frozen=True, slots=True)
class Packet:
    header: Header
    body: Body
    signature: bytes | None
    raw: bytes

    @property
    def signed_message(self) -> bytes:
        """Exactly the bytes the signature covers (SPEC §2): domain || header with hop 0 || SHA-256(body)."""
        view = memoryview(self.raw)
        return signature_input(view[:HEADER_LEN], view[HEADER_LEN:HEADER_LEN + self.header.body_length])

    @property
    def kind(self) -> Kind:
        return self.header.kind

    @property
    def origin(self) -> bytes:
        return self.header.origin

    @property
    def packet_id(self) -> bytes:
        return self.header.packet_id


def signature_input(header: bytes | memoryview, body: bytes | memoryview) -> bytes:
    """The message Ed25519 signs for a packet (SPEC §2), 123 bytes: SIGNATURE_DOMAIN, the 72-byte
    `header` with its hop-limit byte set to 0, then SHA-256 of `body`.

    The one place that builds it: sender and receiver both call this. Pure Ed25519 hashes its whole
    message with SHA-512 twice to sign and once to verify; with the body prehashed, a large packet
    costs one SHA-256 pass (SHA-NI on most x86 CPUs) on each side and Ed25519 works on 123 bytes."""
    if len(header) != HEADER_LEN:
        raise ValueError(f"a packet header is {HEADER_LEN} bytes, got {len(header)}")
    return b"".join((SIGNATURE_DOMAIN, header[:_HOP_OFFSET], b"\x00", header[_HOP_OFFSET + 1:],
                     hashlib.sha256(body).digest()))


def node_id_of(public_key_bytes: bytes) -> bytes:
    """A node id: SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key_bytes).digest()


@lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


class Signer:
    """An Ed25519 private key used to sign packets (the node's identity key)."""

    __slots__ = ("_key", "public_key", "public_key_bytes", "node_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.public_key_bytes: bytes = self.public_key.public_bytes_raw()
        self.node_id: bytes = node_id_of(self.public_key_bytes)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        """Deterministic key from a 32-byte seed (RFC 8032 private key), for tests and golden vectors."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Signer(node_id={self.node_id.hex()[:16]}...)"


# ----------------------------------------------------------------------------------------------------
# Body schema: wire types (decode = check + convert; encode = to msgpack-ready value)


class _Bad(Exception):
    """A body problem found below the top level; `path` is filled in on the way up."""

    def __init__(self, message: str, reason: Reason = Reason.BAD_BODY, *, data: bytes | None = None,
                 data_offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.path: list[str] = []
        self.data = data                # for codec errors: the bin whose byte `data_offset` is bad
        self.data_offset = data_offset


def _tname(v: Any) -> str:
    return {dict: "map", list: "array", bytes: "bin", str: "str", int: "int", float: "float", bool: "bool",
            type(None): "nil"}.get(type(v), type(v).__name__)


class _WType:
    """A wire type: `decode` checks a msgpack value and converts it, `encode` does the reverse."""

    __slots__ = ()
    what = "value"

    def decode(self, v: Any, lim: Limits) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, v: Any) -> Any:
        return v

    def check_typed(self, v: Any, lim: Limits) -> Any:
        """What `decode` gives for the msgpack round trip of `encode(v)`, without the round trip: the
        sender's check of a typed value (the caller has made sure the wire form survives msgpack
        unchanged, see `_check_wire_tree`). Containers and vector blocks override it to walk the typed
        value instead of its wire form; leaves are cheap enough to encode and decode."""
        return self.decode(self.encode(v), lim)


class _Simple(_WType):
    """A value of exactly one of the given Python types (bool is not int)."""

    __slots__ = ("types", "what")

    def __init__(self, what: str, *types: type) -> None:
        self.types = frozenset(types)
        self.what = what

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) not in self.types:
            raise _Bad(f"expected {self.what}, got {_tname(v)}")
        return v


class _UInt(_WType):
    __slots__ = ("lo", "hi", "what")

    def __init__(self, lo: int = 0, hi: int = _U64_MAX) -> None:
        self.lo, self.hi = lo, hi
        self.what = "int" if (lo, hi) == (0, _U64_MAX) else f"int in {lo}..{hi}"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not int:
            raise _Bad(f"expected {self.what}, got {_tname(v)}")
        if not self.lo <= v <= self.hi:
            raise _Bad(f"expected {self.what}, got {v}")
        return v

    def encode(self, v: Any) -> Any:
        return int(v)


class _Str(_WType):
    """A str of min_bytes..max_bytes UTF-8 bytes (max_str bounds every str already)."""

    __slots__ = ("min_bytes", "max_bytes", "what")

    def __init__(self, min_bytes: int = 0, max_bytes: int | None = None) -> None:
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self.what = "str" if max_bytes is None and not min_bytes else f"str of {min_bytes}..{max_bytes} bytes"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not str:
            raise _Bad(f"expected {self.what}, got {_tname(v)}")
        if self.min_bytes or self.max_bytes is not None:
            n = len(v) if v.isascii() else len(v.encode("utf-8"))
            if n < self.min_bytes or (self.max_bytes is not None and n > self.max_bytes):
                raise _Bad(f"expected {self.what}, got {n} bytes")
        return v


class _Bin(_WType):
    __slots__ = ("lo", "hi", "what")

    def __init__(self, lo: int = 0, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        if hi is None:
            self.what = "bin"
        elif lo == hi:
            self.what = f"bin of {lo} bytes"
        else:
            self.what = f"bin of {lo}..{hi} bytes"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not bytes:
            raise _Bad(f"expected {self.what}, got {_tname(v)}")
        if len(v) < self.lo or (self.hi is not None and len(v) > self.hi):
            raise _Bad(f"expected {self.what}, got {len(v)} bytes")
        return v

    def encode(self, v: Any) -> Any:
        return bytes(v)


class _Choice(_WType):
    __slots__ = ("values", "what")

    def __init__(self, *values: str) -> None:
        self.values = frozenset(values)
        self.what = " | ".join(repr(x) for x in values)

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not str or v not in self.values:
            raise _Bad(f"expected one of {self.what}, got {v!r}"[:200])
        return v


class _ListOf(_WType):
    """An array of `item`s, decoded to a tuple. Plain type checks run over the whole array at C speed."""

    __slots__ = ("item", "fast", "what")

    def __init__(self, item: _WType) -> None:
        self.item = item
        self.fast = item.types if isinstance(item, _Simple) else None
        self.what = f"[{item.what}]"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not list:
            raise _Bad(f"expected {self.what}, got {_tname(v)}")
        if self.fast is not None and set(map(type, v)) <= self.fast:
            return tuple(v)
        dec = self.item.decode
        out = []
        for i, x in enumerate(v):
            try:
                out.append(dec(x, lim))
            except _Bad as e:
                e.path.insert(0, f"[{i}]")
                raise
        return tuple(out)

    def encode(self, v: Any) -> Any:
        enc = self.item.encode
        return [enc(x) for x in v]

    def check_typed(self, v: Any, lim: Limits) -> Any:
        if self.fast is not None and set(map(type, v)) <= self.fast:   # _Simple.encode is the identity
            return tuple(v)
        check = self.item.check_typed
        out = []
        for i, x in enumerate(v):
            try:
                out.append(check(x, lim))
            except _Bad as e:
                e.path.insert(0, f"[{i}]")
                raise
        return tuple(out)


class _Shape(_WType):
    """An array of non-negative ints."""

    __slots__ = ("max_dims",)
    what = "[int >= 0]"

    def __init__(self, max_dims: int | None = None) -> None:
        self.max_dims = max_dims

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not list or not set(map(type, v)) <= _INT_ONLY:
            raise _Bad(f"expected {self.what}, got {_tname(v)}")
        if v and min(v) < 0:
            raise _Bad("shape entries must be >= 0")
        if self.max_dims is not None and len(v) > self.max_dims:
            raise _Bad(f"at most {self.max_dims} dimensions, got {len(v)}", Reason.BAD_DIMENSION)
        return tuple(v)

    def encode(self, v: Any) -> Any:
        return [int(x) for x in v]


class _AnyMap(_WType):
    __slots__ = ()
    what = "map"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not dict:
            raise _Bad(f"expected map, got {_tname(v)}")
        return v


class _Field(NamedTuple):
    key: str
    wtype: _WType
    required: bool = True


class _Record(_WType):
    """A map with known keys, decoded into a dataclass; unknown keys are ignored (SPEC §3)."""

    __slots__ = ("cls", "fields", "check", "what")

    def __init__(self, cls: type, fields: tuple[_Field, ...],
                 check: Callable[[Any, Limits], None] | None = None) -> None:
        self.cls, self.fields, self.check = cls, fields, check
        self.what = "map"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not dict:
            raise _Bad(f"expected map, got {_tname(v)}")
        kwargs = {}
        get = v.get
        for key, wtype, required in self.fields:
            x = get(key, _MISSING)
            if x is _MISSING:
                if required:
                    raise _Bad(f"required key {key!r} is missing")
                continue
            try:
                kwargs[key] = wtype.decode(x, lim)
            except _Bad as e:
                e.path.insert(0, key)
                raise
        obj = self.cls(**kwargs)
        if self.check is not None:
            self.check(obj, lim)
        return obj

    def encode(self, obj: Any) -> Any:
        if type(obj) is not self.cls:
            raise PacketError(Reason.BAD_BODY, f"expected {self.cls.__name__}, got {type(obj).__name__}")
        out = {}
        for key, wtype, required in self.fields:
            x = getattr(obj, key)
            if x is None:
                if required:
                    raise PacketError(Reason.BAD_BODY, f"{self.cls.__name__}.{key} is required")
                continue
            out[key] = wtype.encode(x)
        return out

    def check_typed(self, obj: Any, lim: Limits) -> Any:
        # encode() has run on obj already: its type is right and every required field is set.
        kwargs = {}
        for key, wtype, _required in self.fields:
            x = getattr(obj, key)
            if x is None:
                continue
            try:
                kwargs[key] = wtype.check_typed(x, lim)
            except _Bad as e:
                e.path.insert(0, key)
                raise
        out = self.cls(**kwargs)
        if self.check is not None:
            self.check(out, lim)
        return out


_MISSING = object()
_INT_ONLY = frozenset((int,))


class _VectorBlockT(_WType):
    """SPEC §3.1: types first, then the trits codec validates the data (dimension, length, contents)."""

    __slots__ = ()
    what = "vector block"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not dict:
            raise _Bad(f"expected vector block (map), got {_tname(v)}")
        try:
            space = v["space"]
            dim = v["dim"]
            count = v["count"]
            enc = v["encoding"]
            data = v["data"]
        except KeyError as e:
            raise _Bad(f"required key {e.args[0]!r} is missing") from None
        return self._check(space, dim, count, enc, data, lim, data_checked=False)

    @staticmethod
    def _check(space: Any, dim: Any, count: Any, enc: Any, data: Any, lim: Limits, *,
               data_checked: bool) -> VectorBlock:
        """SPEC §3.1 in its order, from `space` on; the trits themselves are read unless `data_checked`."""
        if type(space) is not bytes or not 1 <= len(space) <= 32:
            raise _Bad("space: expected bin of 1..32 bytes")
        if type(dim) is not int or dim < 0:
            raise _Bad(f"dim: expected int >= 0, got {dim!r}"[:200], Reason.BAD_DIMENSION)
        if type(count) is not int or count < 0:
            raise _Bad(f"count: expected int >= 0, got {count!r}"[:200], Reason.BAD_DIMENSION)
        if type(enc) is not int or enc not in _ENCODINGS:
            raise _Bad(f"encoding: expected 0, 1 or 2, got {enc!r}"[:200], Reason.BAD_ENCODING)
        if type(data) is not bytes:
            raise _Bad(f"data: expected bin, got {_tname(data)}")
        encoding = _ENCODINGS[enc]
        try:
            if data_checked:
                _trits._check_limits(dim, count, lim)      # what validate checks before the data
            else:
                _trits.validate(data, dim, count, encoding, limits=lim)
        except CodecError as e:
            raise _Bad(_codec_message(e), e.reason, data=data, data_offset=e.offset) from None
        return VectorBlock._checked(space, dim, count, encoding, data)

    def encode(self, b: Any) -> Any:
        if type(b) is not VectorBlock:
            raise PacketError(Reason.BAD_BODY, f"expected VectorBlock, got {type(b).__name__}")
        return {"space": bytes(b.space), "dim": int(b.dim), "count": int(b.count), "encoding": int(b.encoding),
                "data": bytes(b.data)}

    def check_typed(self, b: Any, lim: Limits) -> Any:
        # the same values encode() put on the wire, in the same order of checks as decode()
        data = bytes(b.data)
        return self._check(bytes(b.space), int(b.dim), int(b.count), int(b.encoding), data, lim,
                           data_checked=b._data_checked and data is b.data)


_ENCODINGS: dict[int, Encoding] = {int(e): e for e in Encoding}


class _TensorT(_WType):
    """SPEC §3.2: dtype, <= 8 dims, element count <= max_trits, exact data length."""

    __slots__ = ()
    what = "tensor"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not dict:
            raise _Bad(f"expected tensor (map), got {_tname(v)}")
        try:
            dtype = v["dtype"]
            shape = v["shape"]
            data = v["data"]
        except KeyError as e:
            raise _Bad(f"required key {e.args[0]!r} is missing") from None
        dt = _DTYPES.get(dtype) if type(dtype) is str else None
        if dt is None:
            raise _Bad(f"dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}"[:200])
        try:
            shape = _TENSOR_SHAPE.decode(shape, lim)
        except _Bad as e:
            e.path.insert(0, "shape")
            raise
        if type(data) is not bytes:
            raise _Bad(f"data: expected bin, got {_tname(data)}")
        n = 1
        for s in shape:
            n *= s
        if n > lim.max_trits:
            raise _Bad(f"{n} elements exceed max_trits {lim.max_trits}", Reason.BAD_DIMENSION)
        if len(data) != n * dt.itemsize:
            raise _Bad(f"data: {len(data)} bytes, shape {list(shape)} {dtype} needs {n * dt.itemsize}",
                       Reason.BAD_LENGTH)
        return Tensor(dtype, shape, data)

    def encode(self, t: Any) -> Any:
        if type(t) is not Tensor:
            raise PacketError(Reason.BAD_BODY, f"expected Tensor, got {type(t).__name__}")
        return {"dtype": t.dtype, "shape": [int(s) for s in t.shape], "data": bytes(t.data)}


_TENSOR_SHAPE = _Shape(MAX_TENSOR_DIMS)

# the wire types used by the schemas
STR = _Str()
TOPIC = _Str(1, MAX_TOPIC_BYTES)
UINT = _UInt()
INT = _Simple("int", int)
BIN = _Bin()
ID16 = _Bin(16, 16)
KEY32 = _Bin(32, 32)
MAP = _AnyMap()
VBLOCK = _VectorBlockT()
TENSOR = _TensorT()


# ---- cross-field checks (the "check" column of the schema table)

# A gossip body lists at most this many ids in `have` and in `want`, and this many `peers`: enough for a
# few seconds of traffic and a handful of dial hints, small enough that one gossip packet costs a
# receiver a bounded amount of work however it was made.
MAX_GOSSIP_IDS = 1024
MAX_GOSSIP_PEERS = 32
MAX_PEER_ADDRESS = 262     # "[" + the longest IPv6 text / host name (253) + "]:" + port


class _PeerEntry(_WType):
    """[node id bin(32), "host:port" str] -> (bytes, str)."""

    __slots__ = ()
    what = "[bin of 32 bytes, str]"

    def decode(self, v: Any, lim: Limits) -> Any:
        if type(v) is not list or len(v) != 2 or type(v[0]) is not bytes or len(v[0]) != 32 \
                or type(v[1]) is not str or not 1 <= len(v[1].encode("utf-8")) <= MAX_PEER_ADDRESS:
            raise _Bad(f"expected {self.what} with an address of 1..{MAX_PEER_ADDRESS} bytes")
        return (v[0], v[1])

    def encode(self, v: Any) -> Any:
        return [bytes(v[0]), v[1]]


def _check_gossip(g: Gossip, lim: Limits) -> None:
    if len(g.have) > MAX_GOSSIP_IDS or len(g.want) > MAX_GOSSIP_IDS:
        raise _Bad(f"more than {MAX_GOSSIP_IDS} ids in have or want")
    if len(g.peers) > MAX_GOSSIP_PEERS:
        raise _Bad(f"more than {MAX_GOSSIP_PEERS} peers")


def _check_hello(h: Hello, lim: Limits) -> None:
    if h.max_frame < MIN_MAX_FRAME:
        raise _Bad(f"max_frame {h.max_frame} is below the minimum {MIN_MAX_FRAME}")


def _check_vectors(v: Vectors, lim: Limits) -> None:
    n = v.vectors.count
    for key in ("labels", "ids"):
        seq = getattr(v, key)
        if seq is not None and len(seq) != n:
            raise _Bad(f"{key}: {len(seq)} entries for {n} vectors")


def _check_knowledge(k: Knowledge, lim: Limits) -> None:
    c = len(k.classes)
    if k.form == "prototypes":
        if k.vectors is None:
            raise _Bad("form 'prototypes' needs 'vectors'")
        if k.vectors.count != c:
            raise _Bad(f"vectors: {k.vectors.count} prototypes for {c} classes")
    elif k.form == "linear":
        if k.weight is None:
            raise _Bad("form 'linear' needs 'weight'")
        if k.weight.dtype not in ("f32", "f16") or len(k.weight.shape) != 2 or k.weight.shape[0] != c:
            raise _Bad(f"weight: expected a {c} x D f32/f16 tensor, got {k.weight.dtype} {list(k.weight.shape)}")
    elif k.form == "predictions":
        p = k.predictions
        if p is None:
            raise _Bad("form 'predictions' needs 'predictions'")
        soft = p.dtype in ("f32", "f16") and len(p.shape) == 2 and p.shape[1] == c
        hard = p.dtype == "i32" and len(p.shape) == 1
        if not (soft or hard):
            raise _Bad(f"predictions: expected N x {c} f32/f16 or N i32, got {p.dtype} {list(p.shape)}")
    if k.bias is not None and (k.bias.dtype not in ("f32", "f16") or k.bias.shape != (c,)):
        raise _Bad(f"bias: expected a ({c},) f32/f16 tensor, got {k.bias.dtype} {list(k.bias.shape)}")


def _check_delta(d: Delta, lim: Limits) -> None:
    if not d.chunk < d.chunks:
        raise _Bad(f"chunk {d.chunk} is not below chunks {d.chunks}")


def _check_fragment(f: Fragment, lim: Limits) -> None:
    if not 1 <= f.count <= lim.max_fragments:
        raise _Bad(f"count {f.count} is not in 1..max_fragments ({lim.max_fragments})", Reason.BAD_FRAGMENT)
    if f.index >= f.count:
        raise _Bad(f"index {f.index} is not below count {f.count}", Reason.BAD_FRAGMENT)
    if f.total > max_packet_len(lim):
        raise _Bad(f"total {f.total} exceeds the largest packet {max_packet_len(lim)}", Reason.BAD_FRAGMENT)
    if not 1 <= len(f.data) <= f.total:
        raise _Bad(f"data: {len(f.data)} bytes for a packet of {f.total}", Reason.BAD_FRAGMENT)


_DELTA_TENSOR = _Record(DeltaTensor, (
    _Field("name", STR),
    _Field("shape", _Shape()),
    _Field("values", TENSOR, False),
    _Field("trits", VBLOCK, False),
    _Field("scales", TENSOR, False),
))

# The schema table: kind -> (dataclass, keys with wire types and required-ness, cross-field check).
_SCHEMAS: dict[Kind, _Record] = {
    Kind.HELLO: _Record(Hello, (
        _Field("name", STR),
        _Field("public_key", KEY32),
        _Field("caps", _ListOf(STR)),
        _Field("topics", _ListOf(TOPIC)),
        _Field("max_frame", UINT),
        _Field("cert", BIN, False),
        _Field("mesh", BIN, False),
        _Field("listen_port", _UInt(0, 65535), False),
    ), _check_hello),
    Kind.PING: _Record(Ping, (_Field("seq", UINT), _Field("sent_us", UINT, False))),
    Kind.PONG: _Record(Pong, (_Field("seq", UINT), _Field("echo_us", UINT, False))),
    Kind.VECTORS: _Record(Vectors, (
        _Field("topic", TOPIC),
        _Field("vectors", VBLOCK),
        _Field("labels", _ListOf(INT), False),
        _Field("ids", _ListOf(_Simple("str or int", str, int)), False),
        _Field("meta", MAP, False),
    ), _check_vectors),
    Kind.KNOWLEDGE: _Record(Knowledge, (
        _Field("topic", TOPIC),
        _Field("task", STR),
        _Field("form", _Choice("prototypes", "linear", "predictions")),
        _Field("classes", _ListOf(STR)),
        _Field("vectors", VBLOCK, False),
        _Field("weight", TENSOR, False),
        _Field("bias", TENSOR, False),
        _Field("predictions", TENSOR, False),
        _Field("anchor_hash", BIN, False),
        _Field("meta", MAP, False),
    ), _check_knowledge),
    Kind.DELTA: _Record(Delta, (
        _Field("topic", TOPIC),
        _Field("group", BIN),
        _Field("round", UINT),
        _Field("chunk", UINT),
        _Field("chunks", _UInt(1)),
        _Field("codec", STR),
        _Field("tensors", _ListOf(_DELTA_TENSOR)),
        _Field("meta", MAP, False),
    ), _check_delta),
    Kind.ACK: _Record(Ack, (_Field("ref", ID16), _Field("meta", MAP, False))),
    Kind.NACK: _Record(Nack, (_Field("ref", ID16), _Field("reason", STR), _Field("detail", STR, False))),
    Kind.FRAGMENT: _Record(Fragment, (
        _Field("whole", ID16),
        _Field("index", UINT),
        _Field("count", UINT),
        _Field("total", UINT),
        _Field("data", BIN),
    ), _check_fragment),
    Kind.BYE: _Record(Bye, (_Field("reason", STR), _Field("detail", STR, False))),
    Kind.GOSSIP: _Record(Gossip, (
        _Field("have", _ListOf(ID16), False),
        _Field("want", _ListOf(ID16), False),
        _Field("mesh", _Choice("graft", "prune"), False),
        _Field("peers", _ListOf(_PeerEntry()), False),
    ), _check_gossip),
}
assert set(_SCHEMAS) == set(Kind)


# ----------------------------------------------------------------------------------------------------
# Body decoding


_SCALARS = frozenset((type(None), bool, int, float, str, bytes))
_STR_ONLY = frozenset((str,))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _check_tree(root: Any, max_depth: int) -> None:
    """Nesting depth (the body map is depth 1), str map keys, and only the allowed value types."""
    stack = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        obj, depth = pop()
        if depth > max_depth:
            raise _Bad(f"nesting deeper than {max_depth}")
        if type(obj) is dict:
            if obj and not set(map(type, obj)) <= _STR_ONLY:
                raise _Bad("map keys must be str")
            values: Any = obj.values()
        else:
            values = obj
        types = set(map(type, values))
        if float in types:
            _check_finite(values)
        if types <= _SCALARS:
            continue
        for x in values:
            t = type(x)
            if t is dict or t is list:
                push((x, depth + 1))
            elif t not in _SCALARS:
                raise _Bad(f"value of type {t.__name__} is not allowed")


_WIRE_TYPES = _SCALARS | {dict, list}


def _check_wire_tree(root: dict[str, Any], lim: Limits) -> None:
    """Raise _Bad unless msgpack would give `root` back unchanged (same values, same exact types) under
    the decoder's options, and `_check_tree` would accept it: only the types msgpack makes (no tuples,
    subclasses, numpy scalars), str keys, depth, and the limits `_decode_body` passes to msgpack
    (str bytes, array/map entries, the entry budget). Bins need no check: the whole body is already
    within max_body. A failure here is not final: the caller lets the real decode decide."""
    max_str, max_coll, max_depth = lim.max_str, lim.max_collection, lim.max_depth
    quarter = max_str // 4                 # a str of at most this many chars has at most max_str UTF-8 bytes
    budget = 16 * max_coll
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        obj, depth = pop()
        if depth > max_depth:
            raise _Bad(f"nesting deeper than {max_depth}")
        n = len(obj)
        budget -= n + 1
        if n > max_coll or budget < 0:
            raise _Bad("too many array/map entries")
        if type(obj) is dict:
            if n and not set(map(type, obj)) <= _STR_ONLY:
                raise _Bad("map keys must be str")
            _check_str_lengths(obj, quarter, max_str)
            values: Any = obj.values()
        else:
            values = obj
        types = set(map(type, values))
        if not types <= _WIRE_TYPES:
            raise _Bad("a value msgpack would convert")
        if float in types:
            _check_finite(values)
        if str in types:
            _check_str_lengths(values, quarter, max_str)
        if dict in types or list in types:
            for x in values:
                if type(x) is dict or type(x) is list:
                    push((x, depth + 1))


def _check_finite(items: Any) -> None:
    """SPEC §3: a msgpack float is finite. No v1.0 field gives NaN or an infinity a meaning, JSON (inspect,
    logs, the control API) cannot carry them, and NaN is not equal to itself, so a signed meta value
    holding one cannot be compared or shown as it was sent."""
    for x in items:
        if type(x) is float and not math.isfinite(x):
            raise _Bad(f"float {x!r} is not allowed (NaN and infinities are refused)")


def _check_str_lengths(items: Any, quarter: int, max_str: int) -> None:
    for x in items:
        if type(x) is str and len(x) > quarter and len(x.encode("utf-8", "surrogatepass")) > max_str:
            raise _Bad(f"a str longer than {max_str} bytes")


class _DuplicateKey(ValueError):
    """A msgpack map holds the same key twice (SPEC §3: refused)."""


class _Budget:
    """Counts the entries of every array and map as msgpack builds them, and stops the decode once a
    body holds more than 16 * max_collection of them (SPEC §3, normative): a 64 MiB body of tiny
    items would otherwise become gigabytes of Python objects (each item costs 8-60 bytes of memory
    for 1-3 bytes of input).

    Maps arrive as key/value pairs (`object_pairs_hook`), so that a key sent twice is seen and
    refused: a dict would silently keep the last value, while a first-wins parser elsewhere would read
    the same signed body differently."""

    __slots__ = ("left",)

    def __init__(self, lim: Limits) -> None:
        self.left = 16 * lim.max_collection

    def list_hook(self, obj: list[Any]) -> list[Any]:
        self.left -= len(obj) + 1
        if self.left < 0:
            raise ValueError("body holds too many array/map entries")
        return obj

    def pairs_hook(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        self.left -= len(pairs) + 1
        if self.left < 0:
            raise ValueError("body holds too many array/map entries")
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[Any] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _DuplicateKey(f"map key {key!r} occurs twice"[:200])
                seen.add(key)
        return obj


def _decode_body(kind: Kind, body: bytes | memoryview, lim: Limits) -> Any:
    """msgpack -> checked body dataclass; raises _Bad."""
    budget = _Budget(lim)
    try:
        # max_str_len bounds every str, map keys included; raw=False decodes each with Python's strict
        # UTF-8 codec (no surrogates, no overlong forms): invalid UTF-8 raises UnicodeDecodeError.
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext,
            list_hook=budget.list_hook, object_pairs_hook=budget.pairs_hook,
            max_str_len=lim.max_str, max_bin_len=lim.max_body, max_array_len=lim.max_collection,
            max_map_len=lim.max_collection, max_ext_len=0,
        )
    except _DuplicateKey as e:
        raise _Bad(f"duplicate map key: {e}") from None
    except Exception as e:  # msgpack raises many types (ValueError, FormatError, StackError, UnicodeDecodeError...)
        raise _Bad(f"not a valid msgpack body ({type(e).__name__}: {e})"[:300]) from None
    if type(obj) is not dict:
        raise _Bad(f"body must be a map, got {_tname(obj)}")
    _check_tree(obj, lim.max_depth)
    return _SCHEMAS[kind].decode(obj, lim)


def _data_offset(body: memoryview, path: list[str]) -> int | None:
    """Where, in `body`, the parser found the first byte of the `data` bin of the vector block at
    `path` (keys, and "[i]" for array indices, as `_Bad.path` holds them); None if it is not there.

    msgpack's Unpacker walks the body by headers (read_map_header / read_array_header / skip) and
    `tell()` gives the position of the bin's type byte; its payload follows a header of 2, 3 or 5
    bytes (bin 8 / 16 / 32). Only called for an error, on a body that has decoded already, whose map
    keys are unique (duplicates are refused), so the path names exactly one value."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    try:
        for step in [*path, "data"]:
            if step.startswith("["):
                index = int(step[1:-1])
                if not index < unpacker.read_array_header():
                    return None
                for _ in range(index):
                    unpacker.skip()
                continue
            for _ in range(unpacker.read_map_header()):
                if unpacker.unpack() == step:
                    break
                unpacker.skip()
            else:
                return None
        at = unpacker.tell()
        header = _BIN_HEADER_LEN.get(body[at])
    except (ValueError, IndexError, msgpack.OutOfData):
        return None
    return None if header is None else at + header


_BIN_HEADER_LEN = {0xC4: 2, 0xC5: 3, 0xC6: 5}


def _body_error(e: _Bad, raw: bytes | None, body_start: int, body_end: int) -> PacketError:
    """The PacketError for a body problem (SPEC §2, "Offsets"): an error that names a byte of a vector
    block's `data` carries that byte's offset in the packet, counted from where the parser found the
    bin's payload (after whichever bin header the sender used); every other body error carries the
    body's start. None when there is no packet (encoding)."""
    where = ".".join(e.path).replace(".[", "[")
    message = f"{where}: {e.message}" if where else e.message
    offset = None if raw is None else body_start
    if e.data is not None and e.data_offset is not None and raw is not None:
        base = _data_offset(memoryview(raw)[body_start:body_end], e.path)
        if base is not None:
            offset = body_start + base + e.data_offset
    return PacketError(e.reason, message, offset=offset)


def _codec_message(e: CodecError) -> str:
    """A CodecError's text without the "reason: " prefix and " at offset N" suffix (the reason is
    kept, and the offset is re-based to the packet, by the PacketError this becomes)."""
    text = str(e).removeprefix(f"{e.reason.value}: ")
    return text.removesuffix(f" at offset {e.offset}") if e.offset is not None else text


# ----------------------------------------------------------------------------------------------------
# Encode / decode / verify


def _schema_of(body: Body) -> _Record:
    schema = _SCHEMAS.get(getattr(body, "KIND", None))  # type: ignore[arg-type]
    if schema is None:
        raise PacketError(Reason.UNKNOWN_KIND, f"{type(body).__name__} is not a packet body")
    return schema


def _check_outgoing(kind: Kind, body: Body, wire: dict[str, Any], body_bytes: bytes, lim: Limits) -> None:
    """Raise the PacketError the receiver's decode of `body_bytes` would raise (with limits `lim`).

    Decoding what was just encoded costs a msgpack parse, copies of every bin and a read of every trit.
    When the wire form is plain msgpack data within the limits, the typed body is checked directly by
    the same schema code instead, and vector blocks built by from_trits (or decoded) skip the trit scan;
    anything else (tuples or numpy scalars in a meta map, a limit exceeded...) takes the full decode."""
    try:
        _check_wire_tree(wire, lim)
    except _Bad:
        try:
            _decode_body(kind, body_bytes, lim)
        except _Bad as e:
            raise _body_error(e, None, 0, 0) from None
        return
    try:
        _SCHEMAS[kind].check_typed(body, lim)
    except _Bad as e:
        raise _body_error(e, None, 0, 0) from None


def encode_packet(body: Body, signer: Signer | None, *, origin: bytes | None = None, packet_id: bytes | None = None,
                  timestamp_us: int | None = None, hop_limit: int = DEFAULT_HOP_LIMIT,
                  minor: int = PROTOCOL_VERSION[1], limits: Limits = DEFAULT_LIMITS, _validate: bool = True) -> bytes:
    """Encode (and sign, when `signer` is given) one packet.

    The origin is the signer's node id; an unsigned packet (fragments) needs `origin`. The packet id
    defaults to 16 random bytes (os.urandom) and the timestamp to the wall clock. The body is checked
    with the same schema code the receiver runs, so that what decode would refuse fails here, with
    the same reason, not at the peer (`_check_outgoing`), unless `_validate=False`, which exists
    only to build malformed test vectors.
    """
    schema = _schema_of(body)
    kind = body.KIND
    wire = schema.encode(body)
    try:
        body_bytes = msgpack.packb(wire, use_bin_type=True)
    except UnicodeEncodeError as e:            # a str holding a lone surrogate: not UTF-8 (SPEC §3)
        raise PacketError(Reason.BAD_BODY, f"a str is not valid UTF-8 ({e.reason})") from None
    if _validate:
        if len(body_bytes) > limits.max_body:
            raise PacketError(Reason.TOO_LARGE, f"body of {len(body_bytes)} bytes exceeds max_body {limits.max_body}")
        _check_outgoing(kind, body, wire, body_bytes, limits)
    if signer is not None:
        if origin is not None and origin != signer.node_id:
            raise PacketError(Reason.BAD_HEADER, "origin differs from the signer's node id")
        origin = signer.node_id
    elif origin is None:
        raise PacketError(Reason.BAD_HEADER, "an unsigned packet needs an explicit origin")
    if len(origin) != 32:
        raise PacketError(Reason.BAD_HEADER, "origin must be 32 bytes")
    if packet_id is None:
        packet_id = os.urandom(16)
    elif len(packet_id) != 16:
        raise PacketError(Reason.BAD_HEADER, "packet id must be 16 bytes")
    if timestamp_us is None:
        timestamp_us = time.time_ns() // 1000
    if not 0 <= timestamp_us <= _U64_MAX or not 0 <= hop_limit <= 255 or not 0 <= minor <= 255:
        raise PacketError(Reason.BAD_HEADER, "timestamp, hop limit or minor out of range")
    if len(body_bytes) > 0xFFFFFFFF:
        raise PacketError(Reason.TOO_LARGE, "body longer than 4 GiB")
    flags = Flags.SIGNED if signer is not None else 0
    header = _HEADER.pack(MAGIC, PROTOCOL_VERSION[0], minor, kind, flags, hop_limit, b"\0\0\0", len(body_bytes),
                          timestamp_us, bytes(packet_id), bytes(origin))
    if signer is None:
        return header + body_bytes
    signature = signer.sign(signature_input(header, body_bytes))
    return b"".join((header, body_bytes, signature))


def decode_packet(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> Packet:
    """Parse and check one packet (header, body, vector contents); the signature is NOT verified.

    Checks run in the order SPEC §2 gives, so a given malformed input always yields the same reason.
    Returns a Packet or raises PacketError; nothing else.
    """
    raw = data if type(data) is bytes else bytes(data)
    n = len(raw)
    if n < HEADER_LEN:
        if raw[:4] != MAGIC[:n]:
            raise PacketError(Reason.BAD_MAGIC, f"magic {raw[:4].hex()} is not {MAGIC.hex()}", offset=0)
        if n > 4 and raw[4] != PROTOCOL_VERSION[0]:
            raise _version_error(raw)
        raise PacketError(Reason.TRUNCATED, f"{n} bytes, a header is {HEADER_LEN}", offset=n)
    (magic, major, minor, kind_v, flags_v, hop, reserved, body_len, ts, pid, origin) = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise PacketError(Reason.BAD_MAGIC, f"magic {magic.hex()} is not {MAGIC.hex()}", offset=0)
    if major != PROTOCOL_VERSION[0]:
        raise _version_error(raw)
    kind = _KIND_BY_VALUE.get(kind_v)
    if kind is None:
        raise PacketError(Reason.UNKNOWN_KIND, f"kind {kind_v}", offset=6)
    if flags_v & _RESERVED_FLAGS:
        raise PacketError(Reason.BAD_HEADER, f"reserved flag bits set (flags 0x{flags_v:02x})", offset=7)
    if reserved != b"\0\0\0":
        raise PacketError(Reason.BAD_HEADER, "reserved header bytes are not zero", offset=9)
    if body_len > limits.max_body:
        raise PacketError(Reason.TOO_LARGE, f"body length {body_len} exceeds max_body {limits.max_body}", offset=12)
    body_end = HEADER_LEN + body_len
    signed = flags_v & 1
    expected = body_end + SIGNATURE_LEN if signed else body_end
    if n != expected:
        if n < expected:
            raise PacketError(Reason.TRUNCATED, f"{n} bytes, the header announces {expected}", offset=n)
        raise PacketError(Reason.TRAILING_DATA, f"{n - expected} bytes after the packet's end", offset=expected)
    try:
        body = _decode_body(kind, memoryview(raw)[HEADER_LEN:body_end], limits)
    except _Bad as e:
        raise _body_error(e, raw, HEADER_LEN, body_end) from None
    header = Header(major, minor, kind, _FLAGS_BY_VALUE[flags_v], hop, ts, pid, origin, body_len)
    return Packet(header, body, raw[body_end:] if signed else None, raw)


def _version_error(raw: bytes) -> PacketError:
    theirs = f"{raw[4]}.{raw[5]}" if len(raw) > 5 else f"{raw[4]}.x"
    ours = f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}"
    return PacketError(Reason.UNSUPPORTED_VERSION,
                       f"packet speaks protocol {theirs}, this node speaks {ours} (majors must match)", offset=4)


def verify_packet(packet: Packet, public_key: bytes | Ed25519PublicKey) -> None:
    """Check the packet's signature against `public_key` (raw 32 bytes or a key object) by the rule
    of SPEC §2 ("Verification rule"): OpenSSL's RFC 8032 cofactorless verification (S < L, R compared
    by its encoding), after three checks OpenSSL does not make: the key is a canonical encoding
    (y < p) and not a point of small order, and R is not a point of small order.

    Raises PacketError UNSIGNED (no signature, offset 7: the flags byte) or BAD_SIGNATURE (offset:
    the signature's first byte). It does not check that the key is the origin's: the caller chose
    the key by origin (`node_id_of(key) == origin` for a hello).
    """
    if packet.signature is None:
        raise PacketError(Reason.UNSIGNED, f"{packet.header.kind.name.lower()} packet is not signed",
                          offset=_FLAGS_OFFSET)
    at = len(packet.raw) - SIGNATURE_LEN
    raw_key = public_key.public_bytes_raw() if isinstance(public_key, Ed25519PublicKey) else bytes(public_key)
    problem = _key_problem(raw_key) or _r_problem(packet.signature[:32])
    if problem is not None:
        raise PacketError(Reason.BAD_SIGNATURE, problem, offset=at)
    key = public_key if isinstance(public_key, Ed25519PublicKey) else _public_key(raw_key)
    try:
        key.verify(packet.signature, packet.signed_message)
    except InvalidSignature:
        raise PacketError(Reason.BAD_SIGNATURE, "signature does not verify", offset=at) from None


# Ed25519 (RFC 8032): the field prime p, and the y-coordinates of the 8 points of small order
# (order 1, 2, 4 and 8): the identity (0, 1), (0, -1), (+-sqrt(-1), 0) and four points with y = +-_Y8.
# A point is of small order exactly when its y mod p is one of these; the sign bit (x's parity) does
# not matter. tests/wire/test_ed25519.py derives them again from the curve equation.
_P = 2**255 - 19
_Y8 = 0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7
_SMALL_ORDER_Y = frozenset((0, 1, _P - 1, _Y8, _P - _Y8))
_Y_MASK = (1 << 255) - 1


def public_key_problem(raw: bytes) -> str | None:
    """Why `raw` cannot be a node's Ed25519 public key under SPEC §2's verification rule (a signature
    against it never verifies), or None: for code that accepts keys (certificate issue, hellos)."""
    return _key_problem(bytes(raw))


@lru_cache(maxsize=4096)
def _key_problem(raw: bytes) -> str | None:
    """Why `raw` is not an acceptable Ed25519 public key (SPEC §2), or None.

    OpenSSL accepts a y >= p (reducing it mod p) and keys of small order; with a small-order key A,
    R = identity and S = 0 verify for every message whose k * A is the identity (all of them for
    A = identity), so such a key proves nothing about who signed. Whether the encoding decodes to
    a point at all is left to the verification, which fails for one that does not."""
    if len(raw) != 32:
        return f"an Ed25519 public key is 32 bytes, got {len(raw)}"
    y = int.from_bytes(raw, "little") & _Y_MASK
    if y >= _P:
        return "the public key is not a canonical encoding (y >= p)"
    if y in _SMALL_ORDER_Y:
        return "the public key is a point of small order"
    return None


def _r_problem(r: bytes) -> str | None:
    """Why R (the signature's first 32 bytes) is refused before verification (SPEC §2), or None.
    A non-canonical R never verifies anyway (OpenSSL compares R by its encoding); it is named here
    so that the reason is clear. A small-order R can only be made by the key's holder; it is
    refused, as libsodium does, so that every rule-following verifier accepts the same signatures."""
    y = int.from_bytes(r, "little") & _Y_MASK
    if y >= _P:
        return "R is not a canonical encoding (y >= p)"
    if y in _SMALL_ORDER_Y:
        return "R is a point of small order"
    return None


def set_hop_limit(raw: bytes, hop_limit: int) -> bytes:
    """The same packet with another hop limit (the signature does not cover it, so it stays valid)."""
    if not 0 <= hop_limit <= 255:
        raise PacketError(Reason.BAD_HEADER, f"hop limit {hop_limit} out of 0..255")
    if len(raw) < HEADER_LEN or raw[:4] != MAGIC:
        raise PacketError(Reason.BAD_MAGIC if len(raw) >= 4 else Reason.TRUNCATED, "not a packet", offset=0)
    return b"".join((raw[:_HOP_OFFSET], bytes((hop_limit,)), raw[_HOP_OFFSET + 1:]))


def body_to_wire(body: Body) -> dict[str, Any]:
    """The msgpack-ready map a body encodes to (for tools and tests)."""
    return _SCHEMAS[body.KIND].encode(body)

