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

from meshnode.inspect import Result, TrustStore, inspect_bytes  # noqa: E402
from meshnode.wire import capture, frames  # noqa: E402
from meshnode.wire.packet import (  # noqa: E402
    Ack, Body, Bye, Delta, DeltaTensor, Fragment, Hello, Knowledge, Nack, Ping, Pong, Signer, Tensor, VectorBlock,
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
    return v, b


def golden_trust() -> TrustStore:
    trust = TrustStore()
    trust.add_bytes(Signer.from_seed(SEED).public_key_bytes)
    return trust


def expected(data: bytes) -> list[dict[str, Any]]:
    """What `meshnode inspect --json --trust golden-node.pub` prints for `data`, minus "file" keys."""
    results: list[Result] = list(inspect_bytes(data, golden_trust()))
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
        files[json_name(name)] = (json.dumps(expected(content), indent=1) + "\n").encode()
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
