"""Regenerate the golden vectors in protocol/vectors/ (`make vectors`, or run this file).

Everything is deterministic: keys come from fixed seeds, packet ids and timestamps are fixed, trits
and floats come from SHAKE-256 of a label (not from a random generator whose stream could change
between library versions), and Ed25519 signatures are deterministic by design (RFC 8032).

For every input file (`NAME.bin` one packet, `NAME.frames` a stream of frames, `NAME.hex` hex text,
`NAME.mncap` a capture file) the expected output of

    meshnode inspect --json --trust protocol/vectors/golden-node.pub FILE

is written to `NAME.json`: a JSON list of the objects the command prints, one per line, without
their "file" key. Malformed inputs live in `malformed/`, so that `make demo`
(`meshnode inspect protocol/vectors/*.bin`) sees only valid packets. protocol/vectors/README.md
explains each file; tests/wire/test_golden.py checks that this script reproduces the committed
files byte for byte and that inspect still prints exactly the committed JSON.

Packets are encoded twice: with meshnode's encoder, and with `raw_packet` below, a direct
transcription of SPEC §2 (struct + msgpack + Ed25519). The script stops if the two disagree, and
the malformed packets are built with `raw_packet` or by editing bytes, never with a private switch
of the real encoder.

The Ed25519 edge cases (SPEC §2, "Verification rule": non-canonical S and R, small-order and
non-canonical keys, a mixed-order key) need signatures no library makes on purpose: `Ed25519` below
is textbook curve arithmetic (RFC 8032 §5.1) used only for them, slow and not constant-time.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

from meshnode.inspect import Result, TrustStore, format_for_name, inspect_bytes  # noqa: E402
from meshnode.wire import capture, frames  # noqa: E402
from meshnode.wire.packet import (  # noqa: E402
    Ack, Body, Bye, Delta, DeltaTensor, Fragment, Gossip, Hello, Knowledge, Nack, Ping, Pong, Signer, Tensor, VectorBlock,
    Vectors, body_to_wire, encode_packet, set_hop_limit,
)

OUT = ROOT / "vectors"
INPUT_SUFFIXES = (".bin", ".frames", ".hex", ".mncap")
GENERATED_SUFFIXES = (*INPUT_SUFFIXES, ".json", ".pub")   # what `main` may delete as stale
TRUST_FILE = "golden-node.pub"

SEED = bytes(range(32))                 # the golden node's Ed25519 private key seed (RFC 8032)
OTHER_SEED = bytes(range(32, 64))       # a second node, whose key the reader is NOT given
T0 = 1_764_000_000_000_000              # 2025-11-24T16:00:00Z in microseconds since the epoch
SPACE = bytes.fromhex("5eed0000000010000001")  # an example space id (10 bytes)
FRAGMENT_SIZE = 1024                    # F for the fragment set (small, to keep the files small)

# SPEC §2 header: magic, major, minor, kind, flags, hop limit, reserved(3), body length, timestamp, id, origin
HEADER = struct.Struct("<4sBBBBB3sIQ16s32s")
DOMAIN = b"meshnode/packet/v1\x00"


class Ed25519:
    """Edwards25519 in affine coordinates (RFC 8032 §5.1), for building edge-case signatures only."""

    P = 2**255 - 19
    L = 2**252 + 27742317777372353535851937790883648493
    D = -121665 * pow(121666, -1, P) % P
    SQRT_M1 = pow(2, (P - 1) // 4, P)
    IDENTITY = (0, 1)

    @classmethod
    def add(cls, p: tuple[int, int], q: tuple[int, int]) -> tuple[int, int]:
        (x1, y1), (x2, y2), P = p, q, cls.P
        t = cls.D * x1 * x2 * y1 * y2 % P
        return (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P

    @classmethod
    def mul(cls, k: int, p: tuple[int, int]) -> tuple[int, int]:
        r = cls.IDENTITY
        while k:
            if k & 1:
                r = cls.add(r, p)
            p, k = cls.add(p, p), k >> 1
        return r

    @classmethod
    def x_of(cls, y: int, sign: int) -> int | None:
        P = cls.P
        u = (y * y - 1) * pow(cls.D * y * y + 1, -1, P) % P
        x = pow(u, (P + 3) // 8, P)
        if (x * x - u) % P:
            x = x * cls.SQRT_M1 % P
        if (x * x - u) % P:
            return None
        return P - x if x and x & 1 != sign else x

    @classmethod
    def encode(cls, p: tuple[int, int]) -> bytes:
        return (p[1] | (p[0] & 1) << 255).to_bytes(32, "little")

    @classmethod
    def base(cls) -> tuple[int, int]:
        y = 4 * pow(5, -1, cls.P) % cls.P
        x = cls.x_of(y, 0)
        assert x is not None
        return x, y

    @classmethod
    def order8(cls) -> tuple[int, int]:
        """A point of order 8: L times the first point (by y) of the curve whose multiple is one."""
        for y in range(2, 100):
            x = cls.x_of(y, 0)
            if x is not None:
                t = cls.mul(cls.L, (x, y))
                if cls.mul(4, t) != cls.IDENTITY:
                    return t
        raise AssertionError("no point of order 8 found")

    @classmethod
    def h(cls, *parts: bytes) -> int:
        return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little") % cls.L

    @classmethod
    def secret(cls, seed: bytes) -> tuple[int, bytes]:
        """RFC 8032 §5.1.5: the secret scalar a and the nonce prefix of a 32-byte seed."""
        digest = hashlib.sha512(seed).digest()
        a = int.from_bytes(digest[:32], "little") & ((1 << 254) - 8) | 1 << 254
        return a, digest[32:]


def pid(n: int) -> bytes:
    """Packet id n: 16 bytes, big-endian (real packet ids are random)."""
    return n.to_bytes(16, "big")


def shake(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


def trits(label: str, count: int, dim: int, zeros: float) -> np.ndarray:
    """(count, dim) trits from SHAKE-256(label) read as little-endian u16 values v, one per trit:
    0 if v < zeros * 65536, else +1 if v is odd, -1 if even."""
    v = np.frombuffer(shake(label, 2 * count * dim), "<u2").reshape(count, dim)
    t = np.where(v & 1, 1, -1).astype(np.int8)
    t[v < round(zeros * 65536)] = 0
    return t


def floats(label: str, *shape: int) -> np.ndarray:
    """float32 values (b - 128) / 64 from SHAKE-256(label): exact in binary, so identical everywhere."""
    n = int(np.prod(shape))
    b = np.frombuffer(shake(label, n), np.uint8).astype(np.float32)
    return ((b - 128) / 64).reshape(shape)


def raw_packet(kind: int, body: bytes | dict[str, Any], signer: Signer | None, *, packet_id: bytes,
               timestamp_us: int, hop_limit: int = 8, major: int = 1, minor: int = 0, flags: int | None = None,
               origin: bytes | None = None, reserved: bytes = b"\0\0\0", body_length: int | None = None,
               sign: bool | None = None) -> bytes:
    """SPEC §2 written out by hand: any field can be given any value, so malformed packets are easy.
    The signature (when `signer` is given and `sign` is not False) covers what is actually sent."""
    body_bytes = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    sign = signer is not None if sign is None else sign
    if flags is None:
        flags = 1 if sign else 0
    if origin is None:
        assert signer is not None
        origin = signer.node_id
    n = len(body_bytes) if body_length is None else body_length
    header = HEADER.pack(b"MNPK", major, minor, kind, flags, hop_limit, reserved, n, timestamp_us, packet_id, origin)
    if not sign:
        return header + body_bytes
    assert signer is not None
    # SPEC §2: domain || the 72 header bytes with byte 8 (hop limit) zeroed || SHA-256 of the body as sent
    signature = signer.sign(DOMAIN + header[:8] + b"\0" + header[9:72] + hashlib.sha256(body_bytes).digest())
    return header + body_bytes + signature


def frame(raw: bytes) -> bytes:
    return struct.pack("<I", len(raw)) + raw


def hex_text(data: bytes) -> bytes:
    """16 bytes a line, space-separated lower-case hex."""
    lines = [data[i:i + 16].hex(" ") for i in range(0, len(data), 16)]
    return ("\n".join(lines) + "\n").encode()


def build() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(valid inputs, malformed inputs): file name (relative to vectors/) -> content."""
    signer = Signer.from_seed(SEED)
    other = Signer.from_seed(OTHER_SEED)

    def enc(body: Body, n: int, by: Signer = signer) -> bytes:
        raw = encode_packet(body, by, packet_id=pid(n), timestamp_us=T0 + n)
        by_hand = raw_packet(int(body.KIND), body_to_wire(body), by, packet_id=pid(n), timestamp_us=T0 + n)
        if raw != by_hand:
            raise SystemExit(f"encode_packet and the SPEC transcription disagree on packet {n} ({body.KIND.name})")
        return raw

    def block(label: str, count: int, dim: int, zeros: float, encoding: str, space: bytes = SPACE) -> VectorBlock:
        return VectorBlock.from_trits(trits(label, count, dim, zeros), space, encoding)

    v: dict[str, bytes] = {}
    v["01_hello.bin"] = enc(Hello(name="golden", public_key=signer.public_key_bytes, caps=("vectors", "delta"),
                                  topics=("heartbeat", "sst2"), max_frame=1 << 20, listen_port=7946), 1)
    v["02_ping.bin"] = enc(Ping(seq=7, sent_us=T0), 2)
    v["03_pong.bin"] = enc(Pong(seq=7, echo_us=T0), 3)
    v["04_vectors_dense2.bin"] = enc(Vectors(topic="anchors", vectors=block("dense2", 2, 1000, 0.3, "dense2")), 4)
    v["05_vectors_base3.bin"] = enc(Vectors(topic="anchors", vectors=block("base3", 4, 103, 0.3, "base3"),
                                            labels=(0, 1, 1, -1), ids=("a", "b", 3, 4), meta={"split": "train"}), 5)
    v["06_vectors_sparse.bin"] = enc(Vectors(topic="anchors", vectors=block("sparse", 3, 10000, 0.995, "sparse")), 6)
    # D > 65536: sparse positions are u32
    v["07_vectors_sparse_wide.bin"] = enc(Vectors(topic="wide", vectors=block("wide", 1, 70000, 0.9995, "sparse")), 7)
    v["08_vectors_no_vectors.bin"] = enc(Vectors(topic="empty", vectors=VectorBlock.from_trits(
        np.zeros((0, 64), np.int8), SPACE, "base3"), labels=(), ids=()), 8)
    v["09_vectors_zero_dim.bin"] = enc(Vectors(topic="empty", vectors=VectorBlock.from_trits(
        np.zeros((3, 0), np.int8), SPACE, "sparse")), 9)
    v["10_knowledge_prototypes.bin"] = enc(Knowledge(
        topic="sst2", task="sst2", form="prototypes", classes=("negative", "positive"),
        vectors=block("prototypes", 2, 384, 0.2, "auto"), anchor_hash=hashlib.sha256(b"anchors").digest()), 10)
    v["11_knowledge_linear.bin"] = enc(Knowledge(
        topic="ag_news", task="ag_news", form="linear", classes=("World", "Sports", "Business", "Sci/Tech"),
        weight=Tensor.from_array(floats("weight", 4, 64)), bias=Tensor.from_array(floats("bias", 4))), 11)
    v["12_knowledge_predictions.bin"] = enc(Knowledge(
        topic="sst2", task="sst2", form="predictions", classes=("negative", "positive"),
        predictions=Tensor.from_array(np.array([0, 1, 1, 0, 1], np.int32)), meta={"anchors": "sst2-unlabeled-v1"}),
        12)
    v["13_delta.bin"] = enc(Delta(
        topic="lora", group=bytes.fromhex("0123456789abcdef"), round=3, chunk=0, chunks=1, codec="ternary-ef",
        tensors=(DeltaTensor(name="layer.0.attention.self.query.lora_A.weight", shape=(8, 384),
                             trits=block("delta-a", 8, 384, 0.6, "auto", b"lora-a"),
                             scales=Tensor.from_array(floats("scales-a", 8).astype(np.float16))),
                 DeltaTensor(name="layer.0.attention.self.query.lora_B.weight", shape=(384, 8),
                             values=Tensor.from_array(floats("values-b", 384, 8).astype(np.float16))))), 13)
    v["14_ack.bin"] = enc(Ack(ref=pid(13)), 14)
    v["15_nack.bin"] = enc(Nack(ref=pid(13), reason="schema_mismatch", detail="adapter shapes differ"), 15)
    v["16_bye.bin"] = enc(Bye(reason="shutdown"), 16)
    v["17_unknown_key.bin"] = enc(Ping(seq=1), 17, other)
    # Forward compatibility (SPEC §2-3): minor 3, a hint flag bit, an unknown body key; still a valid
    # ping, and its signature still verifies after a forwarder lowered the hop limit from 8 to 2.
    future = raw_packet(2, {"seq": 9, "future_field": [1, "x"]}, signer, packet_id=pid(18), timestamp_us=T0 + 18,
                        minor=3, flags=0x11)
    v["18_ping_v1_3_forwarded.bin"] = set_hop_limit(future, 2)

    whole = enc(Vectors(topic="anchors", vectors=block("fragmented", 16, 1024, 0.3, "base3")), 19)
    pieces = frames.fragment_packet(whole, signer, fragment_size=FRAGMENT_SIZE, first_packet_id=pid(100),
                                    timestamp_us=T0 + 100)
    assert len(pieces) > 2
    v["19_fragmented.frames"] = b"".join(map(frame, pieces))
    v["20_stream.frames"] = b"".join(frame(v[k]) for k in ("01_hello.bin", "02_ping.bin", "05_vectors_base3.bin",
                                                            "16_bye.bin"))
    v["21_ping.hex"] = hex_text(v["02_ping.bin"])
    peer = other.node_id
    records = [
        capture.CaptureRecord(T0 + 1000, capture.Direction.OUT, peer, "192.0.2.7:7946", v["01_hello.bin"]),
        capture.CaptureRecord(T0 + 2000, capture.Direction.IN, peer, "192.0.2.7:7946", v["17_unknown_key.bin"]),
        capture.CaptureRecord(T0 + 3000, capture.Direction.OUT, peer, "192.0.2.7:7946", v["03_pong.bin"]),
    ]
    v["22_capture.mncap"] = capture.CAPTURE_MAGIC + b"".join(map(capture.encode_record, records))

    b: dict[str, bytes] = {}
    ping = v["02_ping.bin"]
    m = "malformed/"
    b[m + "bad_magic.bin"] = b"MNPQ" + ping[4:]
    b[m + "unsupported_version.bin"] = ping[:4] + bytes([2]) + ping[5:]
    b[m + "truncated.bin"] = ping[:-10]
    b[m + "truncated_header.bin"] = ping[:40]
    b[m + "trailing_data.bin"] = ping + b"\0"
    b[m + "too_large.frames"] = struct.pack("<I", (1 << 20) + 1) + ping
    b[m + "too_large_body.bin"] = raw_packet(2, b"", signer, packet_id=pid(200), timestamp_us=T0,
                                             body_length=(64 << 20) + 1, sign=False, flags=1)
    b[m + "frames_then_too_large.frames"] = frame(ping) + frame(v["03_pong.bin"]) + struct.pack("<I", 1 << 30)
    b[m + "truncated_stream.frames"] = frame(ping) + frame(v["03_pong.bin"])[:-5]
    seq_at = ping.index(b"\xa3seq\x07") + 4       # the value of "seq": 7 -> 6, signature left as it was
    b[m + "bad_signature.bin"] = ping[:seq_at] + b"\x06" + ping[seq_at + 1:]
    b[m + "unsigned.bin"] = raw_packet(2, {"seq": 7}, None, packet_id=pid(201), timestamp_us=T0,
                                       origin=signer.node_id)
    b[m + "bad_header.bin"] = raw_packet(2, {"seq": 7}, signer, packet_id=pid(202), timestamp_us=T0, flags=0x03)
    b[m + "unknown_kind.bin"] = raw_packet(200, {"seq": 7}, signer, packet_id=pid(203), timestamp_us=T0)
    b[m + "bad_body.bin"] = raw_packet(2, b"\x81\xa3seq\xc1", signer, packet_id=pid(204), timestamp_us=T0)
    b[m + "bad_body_extra_bytes.bin"] = raw_packet(2, msgpack.packb({"seq": 7}) + b"\x00", signer, packet_id=pid(206),
                                                   timestamp_us=T0)
    b[m + "bad_body_missing_key.bin"] = raw_packet(2, {"sent_us": T0}, signer, packet_id=pid(205), timestamp_us=T0)

    def bad_block(name: str, n: int, dim: Any, count: Any, encoding: Any, data: bytes) -> None:
        body = {"topic": "x", "vectors": {"space": SPACE, "dim": dim, "count": count, "encoding": encoding,
                                          "data": data}}
        b[m + name] = raw_packet(4, body, signer, packet_id=pid(n), timestamp_us=T0)

    # The data of SPEC §3.1's malformed examples, inside otherwise valid, correctly signed packets.
    bad_block("bad_trit.bin", 210, 4, 1, 0, bytes.fromhex("02"))               # dense2 code 10
    bad_block("bad_trit_base3.bin", 211, 5, 1, 1, bytes.fromhex("f3"))         # base3 byte 243
    bad_block("bad_trit_sparse.bin", 212, 10, 1, 2, bytes.fromhex("02000000 0900 0100 00"))  # 9 then 1
    bad_block("bad_padding.bin", 213, 5, 1, 0, bytes.fromhex("4d07"))          # dense2 bit past trit 4
    bad_block("bad_padding_base3.bin", 214, 7, 1, 1, bytes.fromhex("4173"))    # base3 padding digit 0
    bad_block("bad_length.bin", 215, 16, 1, 1, bytes.fromhex("0000"))          # base3 16 trits need 4 bytes
    bad_block("bad_length_sparse.bin", 216, 1, 1, 2, bytes.fromhex("02000000"))  # k = 2 > D = 1
    bad_block("bad_encoding.bin", 217, 4, 1, 3, b"\0")
    bad_block("bad_dimension.bin", 218, -1, 1, 0, b"")
    bad_block("too_large_dim.bin", 219, (1 << 20) + 1, 0, 0, b"")              # D over max_dim
    # Two fragments of one set that disagree on the whole packet's size (the second says one byte less).
    half = -(-len(whole) // 2)
    f0 = Fragment(whole=whole[24:40], index=0, count=2, total=len(whole), data=whole[:half])
    f1 = Fragment(whole=whole[24:40], index=1, count=2, total=len(whole) - 1, data=whole[half:-1])
    b[m + "bad_fragment.frames"] = b"".join(
        frame(encode_packet(f, None, origin=signer.node_id, packet_id=pid(220 + i), timestamp_us=T0, hop_limit=0))
        for i, f in enumerate((f0, f1)))
    _more_valid(v, signer)
    _more_malformed(v, b, signer, other, whole)
    return v, b


def mp(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def map_of(*pairs: tuple[bytes, bytes]) -> bytes:
    """A msgpack map from already packed (key, value) pairs: keys may repeat, values be anything."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n) if n < 1 << 16 else b"\xdf" + struct.pack(">I", n)
    return head + b"".join(k + v for k, v in pairs)


def array_of(items: list[bytes]) -> bytes:
    n = len(items)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n) if n < 1 << 16 else b"\xdd" + struct.pack(">I", n)
    return head + b"".join(items)


def with_signature(unsigned: bytes, sign: Any) -> bytes:
    """`unsigned` (header with flags bit 0 set, and body) followed by sign(SPEC §2 signature input)."""
    message = DOMAIN + unsigned[:8] + b"\0" + unsigned[9:72] + hashlib.sha256(unsigned[72:]).digest()
    return unsigned + sign(message)


def openssl_accepts(public_key: bytes, packet: bytes) -> bool:
    """What `cryptography` (OpenSSL) alone says about the packet's signature: the generator asserts it,
    so each Ed25519 vector documents what OpenSSL does (SPEC §2, "Verification rule")."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    n = struct.unpack_from("<I", packet, 12)[0]
    message = DOMAIN + packet[:8] + b"\0" + packet[9:72] + hashlib.sha256(packet[72:72 + n]).digest()
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(packet[72 + n:], message)
    except InvalidSignature:
        return False
    return True


def hello_body(name: str, public_key: bytes) -> dict[str, Any]:
    return {"name": name, "public_key": public_key, "caps": [], "topics": [], "max_frame": 1 << 20}


def _more_valid(v: dict[str, bytes], signer: Signer) -> None:
    """Valid inputs that pin a rule a second implementation could get wrong (SPEC §3, §4, §2)."""
    # Any msgpack int width (SPEC §3): seq 7 as uint 64, sent_us as uint 32 -- not msgpack's shortest form.
    body = map_of((mp("seq"), b"\xcf" + (7).to_bytes(8, "big")), (mp("sent_us"), b"\xce" + (1 << 31).to_bytes(4, "big")))
    v["23_ping_wide_ints.bin"] = raw_packet(2, body, signer, packet_id=pid(23), timestamp_us=T0 + 23)
    # labels / ids span -2**63 .. 2**64-1; meta floats (float 32 and 64) that are finite.
    block = VectorBlock.from_trits(trits("extremes", 2, 16, 0.3), SPACE, "dense2")
    body = map_of((mp("topic"), mp("extremes")), (mp("vectors"), mp(body_to_wire(Vectors(topic="x", vectors=block))["vectors"])),
                  (mp("labels"), array_of([mp(-(1 << 63)), mp((1 << 64) - 1)])),
                  (mp("ids"), array_of([mp(-(1 << 63)), mp("x")])),
                  (mp("meta"), map_of((mp("f32"), b"\xca" + struct.pack(">f", 0.5)), (mp("f64"), mp(-1e300)))))
    v["24_vectors_int_extremes.bin"] = raw_packet(4, body, signer, packet_id=pid(24), timestamp_us=T0 + 24)
    # A tensor with a 0 in its shape has 0 elements, however large the other entries (SPEC §3.2).
    body = {"topic": "lora", "group": b"g", "round": 0, "chunk": 0, "chunks": 1, "codec": "raw",
            "tensors": [{"name": "empty", "shape": [0], "values": {"dtype": "f32", "shape": [(1 << 64) - 1, 0, (1 << 64) - 1],
                                                                  "data": b""}}]}
    v["25_delta_empty_tensor.bin"] = raw_packet(6, body, signer, packet_id=pid(25), timestamp_us=T0 + 25)
    # A mixed-order key (golden key + a point of order 8) with a signature for which the cofactorless
    # equation holds (k = 0 mod 8): every verifier accepts it (SPEC §2: such keys are not refused).
    ed = Ed25519
    a, prefix = ed.secret(SEED)
    mixed = ed.encode(ed.add(ed.mul(a, ed.base()), ed.order8()))
    for i in range(64):
        raw, k = _mixed_hello(mixed, a, prefix, f"mixed-{i}", 26)
        if k % 8 == 0:
            assert openssl_accepts(mixed, raw)
            v["26_hello_mixed_order_key.bin"] = raw
            break
    # Fragments that carry a signature (here 64 zero bytes): receivers do not check it (SPEC §4).
    whole = v["02_ping.bin"]
    pieces = []
    for i, piece in enumerate((whole[:100], whole[100:])):
        frag = raw_packet(9, {"whole": whole[24:40], "index": i, "count": 2, "total": len(whole), "data": piece}, None,
                          packet_id=pid(270 + i), timestamp_us=T0 + 270, hop_limit=0, origin=signer.node_id, flags=1)
        pieces.append(frame(frag + bytes(64)))
    v["27_fragments_signed.frames"] = b"".join(pieces)
    # The overlay's link-local control (SPEC §4, §6.1): what the sender holds, what it asks for, a
    # graft, and one dial hint; hop limit 0 as every gossip packet.
    g = Gossip(have=(pid(13), pid(19)), want=(pid(14),), mesh="graft", peers=((bytes(range(32)), "192.0.2.7:7946"),))
    raw = encode_packet(g, signer, packet_id=pid(28), timestamp_us=T0 + 28, hop_limit=0)
    assert raw == raw_packet(11, body_to_wire(g), signer, packet_id=pid(28), timestamp_us=T0 + 28, hop_limit=0)
    v["28_gossip.bin"] = raw


def _mixed_hello(key: bytes, a: int, prefix: bytes, name: str, n: int) -> tuple[bytes, int]:
    """A hello carrying `key` = [a]B + T, signed as RFC 8032 would with secret a; and its k."""
    ed = Ed25519
    unsigned = raw_packet(1, hello_body(name, key), None, packet_id=pid(n), timestamp_us=T0 + n,
                          origin=hashlib.sha256(key).digest(), flags=1)
    box: dict[str, int] = {}

    def sign(message: bytes) -> bytes:
        r = ed.h(prefix, message)
        big_r = ed.encode(ed.mul(r, ed.base()))
        box["k"] = k = ed.h(big_r, key, message)
        return big_r + ((r + k * a) % ed.L).to_bytes(32, "little")
    return with_signature(unsigned, sign), box["k"]


def _more_malformed(v: dict[str, bytes], b: dict[str, bytes], signer: Signer, other: Signer, whole: bytes) -> None:
    """Malformed inputs for every error class SPEC §8 promises (see vectors/README.md)."""
    m = "malformed/"
    ping = v["02_ping.bin"]
    n = iter(range(300, 1000))

    def packet(kind: int, body: bytes | dict[str, Any], **kw: Any) -> bytes:
        return raw_packet(kind, body, signer, packet_id=pid(next(n)), timestamp_us=T0, **kw)

    # ---- header and framing (SPEC §1-2)
    b[m + "bad_header_reserved.bin"] = packet(2, {"seq": 7}, reserved=b"\0\x01\0")
    b[m + "truncated_empty.bin"] = b""
    b[m + "truncated_magic.bin"] = b"MN"
    b[m + "unsupported_version_short.bin"] = b"MNPK\x02"
    b[m + "frame_length_zero.frames"] = frame(ping) + b"\0\0\0\0" + frame(v["03_pong.bin"])
    b[m + "frames_first_bad.frames"] = frame(b"MNPQ" + ping[4:]) + frame(v["03_pong.bin"])
    b[m + "trailing_data_in_frame.frames"] = frame(ping + b"\0") + frame(v["03_pong.bin"])
    b[m + "truncated_stream_prefix.frames"] = frame(ping) + b"\x9f\x00"

    # ---- msgpack (SPEC §3)
    b[m + "bad_body_duplicate_key.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("seq"), mp(8))))
    block = body_to_wire(Vectors(topic="x", vectors=VectorBlock.from_trits(trits("dup", 1, 8, 0.3), SPACE, "dense2")))
    b[m + "bad_body_duplicate_key_nested.bin"] = packet(4, map_of(
        (mp("topic"), mp("x")), (mp("vectors"), mp(block["vectors"])),
        (mp("meta"), map_of((mp("a"), mp(1)), (mp("a"), mp(1))))))
    b[m + "bad_body_utf8.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("note"), b"\xa2\xff\xfe")))
    b[m + "bad_body_utf8_surrogate.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("note"), b"\xa3\xed\xa0\x80")))
    b[m + "bad_body_utf8_overlong_key.bin"] = packet(2, map_of((mp("seq"), mp(7)), (b"\xa2\xc0\xaf", mp(1))))
    b[m + "bad_body_nan.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("loss"), b"\xcb" + struct.pack(">d", float("nan")))))
    b[m + "bad_body_infinity_f32.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("x"), b"\xca" + struct.pack(">f", float("inf")))))
    deep: Any = 1
    for _ in range(8):
        deep = [deep]                                  # the body map is depth 1: this reaches depth 10
    b[m + "bad_body_depth.bin"] = packet(2, {"seq": 7, "deep": deep})
    b[m + "bad_body_array_entries.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("x"), array_of([b"\xc0"] * 65537))))
    keys = [bytes((0xa3, 0x21 + i // 8100, 0x21 + i // 90 % 90, 0x21 + i % 90)) for i in range(65537)]
    b[m + "bad_body_map_entries.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("x"), map_of(*((k, b"\xc0") for k in keys)))))
    # 8 arrays of 65536 empty arrays: 8 * (65537 + 65536) entries, over 16 * 65536 in all.
    b[m + "bad_body_total_entries.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("x"), array_of([array_of([b"\x90"] * 65536)] * 8))))
    b[m + "bad_body_str_length.bin"] = packet(2, {"seq": 7, "note": "x" * 65537})
    b[m + "bad_body_key_length.bin"] = packet(2, {"seq": 7, "x" * 65537: 1})
    b[m + "bad_body_ext.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("x"), b"\xd4\x01\x00")))
    b[m + "bad_body_timestamp_ext.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp("t"), b"\xd6\xff\x00\x00\x00\x00")))
    b[m + "bad_body_int_key.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp(1), mp(2))))
    b[m + "bad_body_bin_key.bin"] = packet(2, map_of((mp("seq"), mp(7)), (mp(b"k"), mp(2))))
    b[m + "bad_body_not_map.bin"] = packet(2, mp([7]))
    b[m + "bad_body_nil_int.bin"] = packet(2, {"seq": None})
    b[m + "bad_body_bool_int.bin"] = packet(2, {"seq": True})
    b[m + "bad_body_float_int.bin"] = packet(2, {"seq": 7.0})
    b[m + "bad_body_negative_int.bin"] = packet(2, {"seq": -1})
    b[m + "bad_body_optional_nil.bin"] = packet(2, {"seq": 7, "sent_us": None})
    # ---- further rules of SPEC §4
    b[m + "bad_body_topic_empty.bin"] = packet(4, {"topic": "", "vectors": block["vectors"]})
    b[m + "bad_body_labels_count.bin"] = packet(4, {"topic": "x", "vectors": block["vectors"], "labels": [1, 2]})
    b[m + "bad_body_hello_max_frame.bin"] = packet(1, {**hello_body("golden", signer.public_key_bytes), "max_frame": 1023})
    b[m + "bad_body_delta_chunk.bin"] = packet(6, {"topic": "lora", "group": b"g", "round": 0, "chunk": 1, "chunks": 1,
                                                   "codec": "raw", "tensors": []})
    b[m + "bad_body_ack_ref.bin"] = packet(7, {"ref": bytes(15)})
    b[m + "bad_body_knowledge_form.bin"] = packet(5, {"topic": "x", "task": "t", "form": "prototypes", "classes": ["a"]})

    # ---- vector blocks (SPEC §3.1)
    def vblock(dim: Any, count: Any, encoding: Any, data: Any, space: Any = SPACE) -> bytes:
        return packet(4, {"topic": "x", "vectors": {"space": space, "dim": dim, "count": count, "encoding": encoding,
                                                    "data": data}})
    b[m + "bad_padding_sparse.bin"] = vblock(10, 1, 2, bytes.fromhex("01000000 0100 02"))
    b[m + "bad_trit_sparse_position.bin"] = vblock(10, 1, 2, bytes.fromhex("01000000 0a00 00"))
    # Two passes: every position < D first, then the order. Vector 0's positions are not increasing,
    # but vector 1's position 12 >= D is what is reported.
    b[m + "bad_trit_sparse_passes.bin"] = vblock(10, 2, 2, bytes.fromhex("02000000 01000000 0500 0300 0c00 00"))
    b[m + "bad_length_sparse_counts.bin"] = vblock(10, 2, 2, bytes.fromhex("00000000"))
    b[m + "bad_length_sparse_total.bin"] = vblock(10, 1, 2, bytes.fromhex("01000000 0100"))
    # data sent as bin 32 while meta holds the same byte as bin 8: the offset is data's byte, where the
    # parser found it (a search for the shortest encoding of data would find meta's).
    b[m + "bad_trit_long_bin_header.bin"] = packet(4, map_of(
        (mp("topic"), mp("x")), (mp("meta"), map_of((mp("copy"), mp(b"\x02")))),
        (mp("vectors"), map_of((mp("space"), mp(SPACE)), (mp("dim"), mp(4)), (mp("count"), mp(1)), (mp("encoding"), mp(0)),
                               (mp("data"), b"\xc6\x00\x00\x00\x01\x02")))))
    good = body_to_wire(Delta(topic="lora", group=b"g", round=0, chunk=0, chunks=1, codec="raw", tensors=(
        DeltaTensor(name="a", shape=(2, 8), trits=VectorBlock.from_trits(trits("delta-ok", 2, 8, 0.3), b"s", "dense2")),
        DeltaTensor(name="b", shape=(1, 5), trits=VectorBlock.from_trits(trits("delta-bad", 1, 5, 0.3), b"s", "base3")))))
    good["tensors"][1]["trits"]["data"] = b"\xf4"                       # base3 byte 244
    b[m + "bad_trit_delta.bin"] = packet(6, good)
    b[m + "too_large_count.bin"] = vblock(0, 65537, 0, b"")
    b[m + "too_large_trits.bin"] = vblock(65537, 65536, 0, b"")         # N x D = 4295032832 passes 32 bits
    b[m + "bad_dimension_bool.bin"] = vblock(True, 1, 0, b"\0")
    b[m + "bad_body_space.bin"] = vblock(4, 1, 0, b"\0", space=bytes(33))
    b[m + "bad_body_vector_data.bin"] = vblock(4, 1, 0, "x")

    # ---- tensors (SPEC §3.2), as the weight of a "linear" knowledge packet
    def weight(dtype: Any, shape: Any, data: Any) -> bytes:
        return packet(5, {"topic": "x", "task": "t", "form": "linear", "classes": ["a", "b"],
                          "weight": {"dtype": dtype, "shape": shape, "data": data}})
    b[m + "bad_body_tensor_dtype.bin"] = weight("f64", [2, 1], bytes(16))
    b[m + "bad_body_tensor_shape.bin"] = weight("f32", [2, -1], b"")
    b[m + "bad_body_tensor_data.bin"] = weight("f32", [2, 1], "xxxxxxxx")
    b[m + "bad_dimension_tensor_dims.bin"] = weight("f32", [2] + [1] * 8, bytes(8))
    b[m + "bad_dimension_tensor_elements.bin"] = weight("u8", [16384, 16385], b"")
    b[m + "bad_dimension_tensor_overflow.bin"] = weight("u8", [1 << 32, 1 << 32], b"")   # 2**64: 0 in u64
    b[m + "bad_length_tensor.bin"] = weight("f32", [2, 1], bytes(7))

    # ---- fragments (SPEC §4-5); F = 100 bytes of the 159-byte ping unless stated
    def frag(index: int, count: int, total: int, data: bytes, *, whole_id: bytes = ping[24:40]) -> bytes:
        return frame(raw_packet(9, {"whole": whole_id, "index": index, "count": count, "total": total, "data": data},
                                None, packet_id=pid(next(n)), timestamp_us=T0, hop_limit=0, origin=signer.node_id))
    t = len(ping)
    b[m + "bad_fragment_count_zero.frames"] = frag(0, 0, t, ping[:100])
    b[m + "bad_fragment_index.frames"] = frag(2, 2, t, ping[100:])
    b[m + "bad_fragment_total.frames"] = frag(1, 2, (64 << 20) + 72 + 64 + 1, b"x")
    b[m + "bad_fragment_empty_data.frames"] = frag(0, 2, t, b"")
    b[m + "bad_fragment_data_over_total.frames"] = frag(0, 2, 4, b"12345")
    b[m + "bad_fragment_piece_size.frames"] = frag(0, 2, t, ping[:100]) + frag(1, 2, t, ping[99:])
    b[m + "bad_fragment_last_piece.frames"] = frag(2, 3, t, ping[149:])   # F = (159 - 10) / 2 is not whole
    b[m + "bad_fragment_duplicate.frames"] = frag(0, 2, t, ping[:100]) + frag(0, 2, t, b"X" + ping[1:100])
    inner = raw_packet(9, {"whole": pid(1), "index": 0, "count": 1, "total": 1, "data": b"x"}, None, packet_id=pid(next(n)),
                       timestamp_us=T0, hop_limit=0, origin=signer.node_id)
    half = len(inner) // 2
    b[m + "bad_fragment_nested.frames"] = (frag(0, 2, len(inner), inner[:half], whole_id=inner[24:40])
                                           + frag(1, 2, len(inner), inner[half:], whole_id=inner[24:40]))
    # total + 2 pieces x 128 + 512 > the 64 MiB cap: refused at its first piece (the last, 1 byte).
    b[m + "reassembly_full.frames"] = frag(1, 2, (64 << 20) + 72 + 64, b"x")
    unsigned = raw_packet(2, {"seq": 7}, None, packet_id=pid(next(n)), timestamp_us=T0, origin=signer.node_id)
    b[m + "unsigned_reassembled.frames"] = (frag(0, 2, len(unsigned), unsigned[:50], whole_id=unsigned[24:40])
                                            + frag(1, 2, len(unsigned), unsigned[50:], whole_id=unsigned[24:40]))

    # ---- capture files (SPEC Appendix A)
    def record(packet_bytes: bytes, *, address: bytes = b"192.0.2.7:7946", direction: int = 1,
               length: int | None = None) -> bytes:
        plen = len(packet_bytes) if length is None else length
        return (struct.pack("<QB32sH", T0 + 1000, direction, other.node_id, len(address)) + address
                + struct.pack("<I", plen) + packet_bytes)
    good_record = record(ping)
    b[m + "capture_bad_magic.mncap"] = b"MNCAX\x00\x01\x00" + good_record
    b[m + "capture_unsupported_version.mncap"] = b"MNCAP\x00\x02\x00" + good_record
    b[m + "capture_truncated_header.mncap"] = capture.CAPTURE_MAGIC[:7]
    b[m + "capture_truncated_record.mncap"] = capture.CAPTURE_MAGIC + good_record + good_record[:-10]
    b[m + "capture_bad_direction.mncap"] = capture.CAPTURE_MAGIC + good_record + record(ping, direction=2)
    b[m + "capture_address_too_long.mncap"] = capture.CAPTURE_MAGIC + record(ping, address=b"x" * 1025)
    b[m + "capture_address_not_utf8.mncap"] = capture.CAPTURE_MAGIC + record(ping, address=b"192.0.2.\xff:1")
    b[m + "capture_packet_too_large.mncap"] = capture.CAPTURE_MAGIC + record(b"", length=(64 << 20) + 72 + 64 + 1)
    b[m + "capture_bad_packet.mncap"] = capture.CAPTURE_MAGIC + record(b"MNPQ" + ping[4:]) + good_record

    # ---- hex text
    b[m + "hex_odd_digits.hex"] = hex_text(ping)[:-2] + b"\n"
    b[m + "hex_bad_character.hex"] = hex_text(ping).replace(b"4d 4e 50 4b 01", b"4d 4e 50 4b 0g", 1)

    # ---- signatures (SPEC §2 "Verification rule", §6)
    ed = Ed25519
    a, prefix = ed.secret(SEED)
    gold = signer.public_key_bytes
    s_value = int.from_bytes(ping[-32:], "little")
    b[m + "ed25519_s_not_canonical.bin"] = ping[:-32] + (s_value + ed.L).to_bytes(32, "little")
    assert not openssl_accepts(gold, b[m + "ed25519_s_not_canonical.bin"])
    identity = ed.encode(ed.IDENTITY)
    identity_p1 = (ed.P + 1).to_bytes(32, "little")                     # the identity with y = p + 1

    def with_r(big_r: bytes) -> bytes:
        """A ping signed with R = big_r and S = k * a: [S]B = R + [k]A holds for R = the identity."""
        unsigned = raw_packet(2, {"seq": 7}, None, packet_id=pid(next(n)), timestamp_us=T0, origin=signer.node_id, flags=1)
        return with_signature(unsigned, lambda msg: big_r + (ed.h(big_r, gold, msg) * a % ed.L).to_bytes(32, "little"))
    b[m + "ed25519_r_small_order.bin"] = with_r(identity)
    assert openssl_accepts(gold, b[m + "ed25519_r_small_order.bin"])          # OpenSSL alone would accept it
    b[m + "ed25519_r_not_canonical.bin"] = with_r(identity_p1)
    assert not openssl_accepts(gold, b[m + "ed25519_r_not_canonical.bin"])    # R is compared by its encoding

    def keyed_hello(key: bytes, name: str) -> bytes:
        """A hello carrying `key`, signed with R = identity, S = 0: valid under the cofactorless
        equation whenever [k]key is the identity (always for the identity, 1 in 8 for order 8)."""
        unsigned = raw_packet(1, hello_body(name, key), None, packet_id=pid(next(n)), timestamp_us=T0,
                              origin=hashlib.sha256(key).digest(), flags=1)
        return with_signature(unsigned, lambda msg: identity + bytes(32))
    b[m + "ed25519_key_small_order.bin"] = keyed_hello(identity, "small-order")
    b[m + "ed25519_key_not_canonical.bin"] = keyed_hello(identity_p1, "not-canonical")
    t8 = ed.order8()
    for i in range(64):
        raw = keyed_hello(ed.encode(t8), f"order-8-{i}")
        if openssl_accepts(ed.encode(t8), raw):
            b[m + "ed25519_key_small_order_8.bin"] = raw
            break
    for name in ("ed25519_key_small_order.bin", "ed25519_key_not_canonical.bin", "ed25519_key_small_order_8.bin"):
        raw = b[m + name]                                               # OpenSSL alone would accept each
        assert openssl_accepts(msgpack.unpackb(raw[72:-64])["public_key"], raw), name
    mixed = ed.encode(ed.add(ed.mul(a, ed.base()), t8))
    for i in range(64):
        raw, k = _mixed_hello(mixed, a, prefix, f"mixed-{i}", next(n))
        if k % 8:       # the cofactored equation [8][S]B = [8]R + [8][k]A holds, the cofactorless one does not
            assert not openssl_accepts(mixed, raw)
            b[m + "ed25519_key_mixed_order_cofactored.bin"] = raw
            break
    # A hello correctly signed by the golden key, whose origin is another node's id.
    b[m + "hello_origin_mismatch.bin"] = packet(1, hello_body("golden", gold), origin=other.node_id)


def golden_trust() -> TrustStore:
    trust = TrustStore()
    trust.add_bytes(Signer.from_seed(SEED).public_key_bytes)
    return trust


def expected(name: str, data: bytes) -> list[dict[str, Any]]:
    """What `meshnode inspect --json --trust golden-node.pub NAME` prints for `data`, minus "file"
    keys: the form of the input is the one its suffix names (docs/INSPECT.md)."""
    results: list[Result] = list(inspect_bytes(data, golden_trust(), fmt=format_for_name(name)))
    return [r if isinstance(r, dict) else r.as_json() for r in results]


def json_name(name: str) -> str:
    return name.rsplit(".", 1)[0] + ".json"


def render() -> dict[str, bytes]:
    """Every generated file (relative path under vectors/ -> content): inputs, their JSON, the key."""
    valid, bad = build()
    files: dict[str, bytes] = {TRUST_FILE: Signer.from_seed(SEED).public_key_bytes}
    for name, content in {**valid, **bad}.items():
        assert name.endswith(INPUT_SUFFIXES), name
        files[name] = content
        files[json_name(name)] = (json.dumps(expected(name, content), indent=1) + "\n").encode()
    assert len({json_name(n) for n in {**valid, **bad}}) == len(valid) + len(bad), "two inputs share a JSON name"
    return files


def generated_on_disk(out: Path = OUT) -> list[str]:
    """Files under `out` that this script owns (by suffix), as relative paths."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix in GENERATED_SUFFIXES)


def main() -> None:
    files = render()
    for stale in set(generated_on_disk()) - set(files):
        (OUT / stale).unlink()
    for name, content in files.items():
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    print(f"wrote {len(files)} files to {OUT}")


if __name__ == "__main__":
    main()
