"""SPEC §2 "Verification rule": OpenSSL's cofactorless RFC 8032 verification plus three checks it does
not make (canonical, not small-order keys; not small-order R). The edge-case packets come from the
golden-vector generator, which builds them with textbook curve arithmetic."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshnode.wire import packet as packet_mod
from meshnode.wire.errors import PacketError, Reason
from meshnode.wire.packet import Hello, Ping, Signer, decode_packet, encode_packet, verify_packet

from ._support import vector_generator

gen, VALID, MALFORMED = vector_generator()
ED = gen.Ed25519
GOLDEN = Signer.from_seed(gen.SEED)

# what OpenSSL alone (cryptography's verify) does with each edge case, measured; SPEC §2 states it
OPENSSL_ACCEPTS = {
    "ed25519_s_not_canonical": False,
    "ed25519_r_not_canonical": False,
    "ed25519_r_small_order": True,
    "ed25519_key_small_order": True,
    "ed25519_key_small_order_8": True,
    "ed25519_key_not_canonical": True,
    "ed25519_key_mixed_order_cofactored": False,
}


def _key_of(raw: bytes) -> bytes:
    """The key a receiver checks the packet against: a hello's own, else the golden node's."""
    p = decode_packet(raw)
    return p.body.public_key if isinstance(p.body, Hello) else GOLDEN.public_key_bytes


def test_the_small_order_table_is_the_8_torsion_of_the_curve():
    t8 = ED.order8()
    points = [ED.mul(i, t8) for i in range(8)]
    assert len(set(points)) == 8 and all(ED.mul(8, p) == ED.IDENTITY for p in points)
    assert {y for _, y in points} == packet_mod._SMALL_ORDER_Y
    assert packet_mod._P == ED.P


@pytest.mark.parametrize("stem", sorted(OPENSSL_ACCEPTS))
def test_each_edge_case_is_refused_and_openssl_does_what_the_spec_says(stem: str):
    raw = MALFORMED[f"malformed/{stem}.bin"]
    key = _key_of(raw)
    assert gen.openssl_accepts(key, raw) is OPENSSL_ACCEPTS[stem]
    packet = decode_packet(raw)
    for k in (key, Ed25519PublicKey.from_public_bytes(key)):      # raw bytes and a key object alike
        with pytest.raises(PacketError) as e:
            verify_packet(packet, k)
        assert (e.value.reason, e.value.offset) == (Reason.BAD_SIGNATURE, len(raw) - 64)


def test_a_mixed_order_key_verifies_where_the_cofactorless_equation_holds():
    raw = VALID["26_hello_mixed_order_key.bin"]
    key = decode_packet(raw).body.public_key  # type: ignore[union-attr]
    assert ED.mul(ED.L, _point(key)) != ED.IDENTITY           # not of prime order: a torsion part
    verify_packet(decode_packet(raw), key)


def _point(encoding: bytes) -> tuple[int, int]:
    y = int.from_bytes(encoding, "little")
    x = ED.x_of(y & ((1 << 255) - 1), y >> 255)
    assert x is not None
    return x, y & ((1 << 255) - 1)


@pytest.mark.parametrize("seed", [bytes([i]) * 32 for i in range(6)])
def test_honest_signatures_still_verify(seed: bytes):
    signer = Signer.from_seed(seed)
    raw = encode_packet(Ping(seq=1), signer)
    verify_packet(decode_packet(raw), signer.public_key_bytes)
    verify_packet(decode_packet(raw), signer.public_key)


def test_identity_key_and_zero_signature_forge_anything_under_openssl_alone():
    """Why small-order keys are refused: with A = identity, (R = identity, S = 0) is a signature of
    every message for OpenSSL."""
    identity = ED.encode(ED.IDENTITY)
    for raw in (MALFORMED["malformed/ed25519_key_small_order.bin"],):
        body = msgpack.unpackb(raw[72:-64])
        assert body["public_key"] == identity and raw[-64:] == identity + bytes(32)
        assert gen.openssl_accepts(identity, raw)


def test_public_key_problem_names_refused_keys_only():
    assert packet_mod.public_key_problem(GOLDEN.public_key_bytes) is None
    assert "small order" in packet_mod.public_key_problem(ED.encode(ED.IDENTITY))
    assert "canonical" in packet_mod.public_key_problem((ED.P + 1).to_bytes(32, "little"))
    assert "32 bytes" in packet_mod.public_key_problem(bytes(31))
