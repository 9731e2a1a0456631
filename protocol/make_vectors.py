"""Regenerate the golden vectors in protocol/vectors/ (run: `make vectors`).

Every file is deterministic: fixed keys (from fixed seeds), packet ids, timestamps and trits, and
Ed25519 signatures are deterministic too. For each `NAME.bin` (or `.frames`, `.hex`) the expected
output of `meshnode inspect --json --trust protocol/vectors/golden-node.pub` is written to
`NAME.json` (a list of the JSON objects, without the "file" key). A second implementation must
produce the same packets from the same inputs and reject the malformed ones with the same code.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from meshnode.inspect import TrustStore, inspect_bytes  # noqa: E402
from meshnode.wire import frames, packet  # noqa: E402
from meshnode.wire.packet import (  # noqa: E402
    Ack, Bye, Delta, DeltaTensor, Hello, Knowledge, Nack, Ping, Pong, Signer, Tensor, VectorBlock, Vectors,
    encode_packet,
)

OUT = ROOT / "vectors"
SEED = bytes(range(32))                 # the golden node's Ed25519 private key seed
OTHER_SEED = bytes(range(32, 64))       # a second node, whose key the reader is NOT given
T0 = 1_764_000_000_000_000              # 2025-11-24T16:00:00Z in microseconds
SPACE = bytes.fromhex("5eed0000000010000001")  # an example space id (10 bytes)


def pid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def trits(rng: np.random.Generator, count: int, dim: int, zeros: float) -> np.ndarray:
    t = rng.choice(np.array([-1, 1], dtype=np.int8), size=(count, dim))
    t[rng.random((count, dim)) < zeros] = 0
    return t


def build() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Returns (valid files, malformed files) as name -> content."""
    signer = Signer.from_seed(SEED)
    other = Signer.from_seed(OTHER_SEED)
    rng = np.random.default_rng(20261124)

    def enc(body: object, n: int, **kw: object) -> bytes:
        return encode_packet(body, signer, packet_id=pid(n), timestamp_us=T0 + n, **kw)  # type: ignore[arg-type]

    valid: dict[str, bytes] = {}
    valid["01_hello.bin"] = enc(Hello(name="golden", public_key=signer.public_key_bytes, caps=["vectors", "delta"],
                                      topics=["heartbeat", "sst2"], max_frame=1 << 20, listen_port=7946), 1)
    valid["02_ping.bin"] = enc(Ping(seq=7, sent_us=T0), 2)
    valid["03_pong.bin"] = enc(Pong(seq=7, echo_us=T0), 3)
    v = trits(rng, 1, 4096, 0.3)
    valid["04_vectors_dense2.bin"] = enc(Vectors(topic="anchors", vectors=VectorBlock.from_trits(v, SPACE, "dense2")), 4)
    v = trits(rng, 4, 100, 0.3)
    valid["05_vectors_base3.bin"] = enc(Vectors(topic="anchors", vectors=VectorBlock.from_trits(v, SPACE, "base3"),
                                                labels=[0, 1, 1, 0], ids=["a", "b", 3, 4], meta={"split": "train"}), 5)
    v = trits(rng, 3, 10000, 0.97)
    valid["06_vectors_sparse.bin"] = enc(Vectors(topic="anchors", vectors=VectorBlock.from_trits(v, SPACE, "sparse")), 6)
    v = trits(rng, 1, 70000, 0.999)  # D > 65536: sparse positions are 4 bytes wide
    valid["07_vectors_sparse_wide.bin"] = enc(Vectors(topic="wide", vectors=VectorBlock.from_trits(v, SPACE, "sparse")), 7)
    valid["08_vectors_empty.bin"] = enc(Vectors(topic="empty", vectors=VectorBlock.from_trits(
        np.zeros((0, 64), dtype=np.int8), SPACE, "dense2")), 8)
    protos = trits(rng, 2, 1000, 0.3)
    valid["09_knowledge_prototypes.bin"] = enc(Knowledge(topic="sst2", task="sst2", form="prototypes",
                                                         classes=["negative", "positive"],
                                                         vectors=VectorBlock.from_trits(protos, SPACE, "auto")), 9)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    valid["10_knowledge_linear.bin"] = enc(Knowledge(topic="ag_news", task="ag_news", form="linear",
                                                     classes=["World", "Sports", "Business", "Sci/Tech"],
                                                     weight=Tensor.from_array(w),
                                                     bias=Tensor.from_array(np.zeros(4, np.float32))), 10)
    d = trits(rng, 1, 8 * 384, 0.6)
    valid["11_delta.bin"] = enc(Delta(topic="lora", group=bytes(8), round=3, chunk=0, chunks=1, codec="ternary-ef",
                                      tensors=[DeltaTensor(name="layer.0.attention.self.query.lora_A.weight",
                                                           shape=(8, 384),
                                                           trits=VectorBlock.from_trits(d, b"delta", "auto"),
                                                           scales=Tensor.from_array(np.full(24, 0.01, np.float32)))]), 11)
    valid["12_ack.bin"] = enc(Ack(ref=pid(11)), 12)
    valid["13_nack.bin"] = enc(Nack(ref=pid(11), reason="schema_mismatch", detail="adapter schema differs"), 13)
    valid["14_bye.bin"] = enc(Bye(reason="shutdown"), 14)
    # A whole stream: hello, ping, then a packet too large for one fragment, split into fragments.
    big = trits(rng, 64, 4096, 0.3)
    whole = enc(Vectors(topic="anchors", vectors=VectorBlock.from_trits(big, SPACE, "base3")), 15)
    pieces = frames.fragment_packet(whole, signer, fragment_size=16 << 10, first_packet_id=pid(100), timestamp_us=T0 + 100)
    valid["15_fragmented.frames"] = b"".join(frames.encode_frame(p) for p in pieces)
    valid["16_stream.frames"] = b"".join(frames.encode_frame(valid[k]) for k in ("01_hello.bin", "02_ping.bin", "05_vectors_base3.bin"))
    valid["17_ping.hex"] = (valid["02_ping.bin"].hex(" ", 16).replace(" ", "\n", 0) + "\n").encode()
    valid["18_unknown_key.bin"] = encode_packet(Ping(seq=1), other, packet_id=pid(18), timestamp_us=T0 + 18)

    bad: dict[str, bytes] = {}
    ping = valid["02_ping.bin"]
    bad["bad_magic.bin"] = b"XNPK" + ping[4:]
    bad["unsupported_version.bin"] = ping[:4] + bytes([2]) + ping[5:]
    bad["truncated.bin"] = ping[:-10]
    bad["trailing_data.bin"] = ping + b"\x00"
    bad["too_large.frames"] = struct.pack("<I", (1 << 20) + 1) + b"MNPK"
    flipped = bytearray(ping)
    flipped[packet.HEADER_LEN + 2] ^= 0x01   # a bit inside the signed body
    bad["bad_signature.bin"] = bytes(flipped)
    body_start = packet.HEADER_LEN
    garbage = bytearray(ping)
    garbage[body_start] = 0xC1                # msgpack's never-used byte
    bad["bad_body.bin"] = bytes(garbage)
    unknown = bytearray(ping)
    unknown[6] = 200
    bad["unknown_kind.bin"] = bytes(unknown)
    # A dense2 block whose first byte holds the invalid code 10; re-signed so only the trit is wrong.
    raw_block = VectorBlock(space=SPACE, dim=8, count=1, encoding=packet.Encoding.DENSE2, data=b"\x02\x00")
    bad["bad_trit.bin"] = encode_packet(Vectors(topic="x", vectors=raw_block), signer, packet_id=pid(201),
                                        timestamp_us=T0, _validate=False)
    pad_block = VectorBlock(space=SPACE, dim=5, count=1, encoding=packet.Encoding.DENSE2, data=b"\x00\x40")
    bad["bad_padding.bin"] = encode_packet(Vectors(topic="x", vectors=pad_block), signer, packet_id=pid(202),
                                           timestamp_us=T0, _validate=False)
    len_block = VectorBlock(space=SPACE, dim=16, count=1, encoding=packet.Encoding.BASE3, data=b"\x00\x00")
    bad["bad_length.bin"] = encode_packet(Vectors(topic="x", vectors=len_block), signer, packet_id=pid(203),
                                          timestamp_us=T0, _validate=False)
    return valid, bad


def expected(data: bytes, trust: TrustStore) -> list[dict[str, object]]:
    return [r if isinstance(r, dict) else r.as_json() for r in inspect_bytes(data, trust)]


def golden_trust() -> TrustStore:
    trust = TrustStore()
    trust.add_file(OUT / "golden-node.pub")
    return trust


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*"):
        if old.suffix in {".bin", ".frames", ".hex", ".json", ".pub"}:
            old.unlink()
    (OUT / "golden-node.pub").write_bytes(Signer.from_seed(SEED).public_key_bytes)
    valid, bad = build()
    for name, content in {**valid, **bad}.items():
        (OUT / name).write_bytes(content)
        result = expected(content, golden_trust())
        (OUT / (name.rsplit(".", 1)[0] + ".json")).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {len(valid)} valid and {len(bad)} malformed golden files to {OUT}")


if __name__ == "__main__":
    main()
