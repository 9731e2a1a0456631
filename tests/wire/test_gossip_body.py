"""Kind 11, gossip (SPEC §4, §6.1): round trip and the bounds a receiver checks before acting on it."""

from __future__ import annotations

import msgpack
import pytest

from meshnode.wire.errors import PacketError, Reason
from meshnode.wire.packet import (
    MAX_GOSSIP_IDS,
    MAX_GOSSIP_PEERS,
    Gossip,
    Kind,
    Signer,
    decode_packet,
    encode_packet,
)

SIGNER = Signer.from_seed(bytes(32))


def test_round_trip():
    g = Gossip(have=(b"a" * 16,), want=(b"b" * 16, b"c" * 16), mesh="prune", peers=((b"n" * 32, "[::1]:7946"),))
    p = decode_packet(encode_packet(g, SIGNER, hop_limit=0))
    assert p.kind is Kind.GOSSIP and p.body == g and p.header.hop_limit == 0
    assert decode_packet(encode_packet(Gossip(), SIGNER, hop_limit=0)).body == Gossip()


def raw_with(body: dict) -> bytes:
    good = encode_packet(Gossip(), SIGNER, hop_limit=0)
    packed = msgpack.packb(body)
    header = bytearray(good[:72])
    header[7] = 0                                    # unsigned: the body is what is under test
    header[12:16] = len(packed).to_bytes(4, "little")
    return bytes(header) + packed


@pytest.mark.parametrize("body", [
    {"have": [b"x" * 16] * (MAX_GOSSIP_IDS + 1)},
    {"want": [b"x" * 15]},
    {"mesh": "join"},
    {"peers": [[b"n" * 32, "h:1"]] * (MAX_GOSSIP_PEERS + 1)},
    {"peers": [[b"n" * 31, "h:1"]]},
    {"peers": [[b"n" * 32, ""]]},
    {"peers": [[b"n" * 32, "h" * 300]]},
    {"peers": [[b"n" * 32]]},
])
def test_bounds_are_bad_body(body):
    with pytest.raises(PacketError) as e:
        decode_packet(raw_with(body))
    assert e.value.reason is Reason.BAD_BODY


def test_the_largest_allowed_lists_decode():
    g = Gossip(have=(b"x" * 16,) * MAX_GOSSIP_IDS, peers=((b"n" * 32, "h" * 260 + ":1"),) * MAX_GOSSIP_PEERS)
    assert decode_packet(encode_packet(g, SIGNER, hop_limit=0)).body == g
