"""Fragment packets are built by hand (struct header + msgpack map with the piece spliced in): they
must be exactly what encode_packet gives for the same Fragment body, framed or not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.wire.errors import FrameError
from meshnode.wire.frames import encode_frame, iter_fragment_frames, iter_fragments
from meshnode.wire.limits import Limits
from meshnode.wire.packet import Fragment, Ping, decode_packet, encode_packet

from ._support import WIRE, A

BIG = Limits(max_fragments=1 << 20)


def _packet(size: int) -> bytes:
    """A valid encoded packet header followed by filler bytes: the fragmenter only reads the header."""
    raw = encode_packet(Ping(seq=1), A, packet_id=bytes(range(16)), timestamp_us=9)
    return (raw + bytes(range(256)) * (size // 256 + 1))[:max(size, len(raw))]


@WIRE
@given(size=st.sampled_from([159, 300, 70_000, 200_000]) | st.integers(159, 5000),
       fragment_size=st.sampled_from([1, 7, 255, 256, 65535, 65536, 65537, 1 << 20]) | st.integers(1, 3000),
       minor=st.integers(0, 255), ts=st.integers(0, 2**64 - 1), first=st.integers(0, 2**128 - 1))
def test_hand_built_fragments_are_encode_packets_bytes(size, fragment_size, minor, ts, first):
    raw = _packet(size)
    first_id = first.to_bytes(16, "big")
    kw = {"fragment_size": fragment_size, "first_packet_id": first_id, "timestamp_us": ts, "minor": minor,
          "limits": BIG}
    count = -(-len(raw) // fragment_size)
    if count > 4000:                      # keep the test quick: check the first and last few only
        fragment_size = -(-len(raw) // 4000)
        kw["fragment_size"] = fragment_size
        count = -(-len(raw) // fragment_size)
    built = list(iter_fragments(raw, A, **kw))
    framed = list(iter_fragment_frames(raw, A, **kw))
    assert len(built) == len(framed) == count
    for i in sorted({0, 1, count - 2, count - 1} & set(range(count))):
        pid = ((first + i) % 2**128).to_bytes(16, "big")
        body = Fragment(whole=raw[24:40], index=i, count=count, total=len(raw),
                        data=raw[i * fragment_size:(i + 1) * fragment_size])
        expected = encode_packet(body, None, origin=A.node_id, packet_id=pid, timestamp_us=ts, hop_limit=0,
                                 minor=minor, limits=BIG)
        assert built[i] == expected
        assert framed[i] == encode_frame(expected)
        assert decode_packet(built[i], limits=BIG).body == body


def test_random_ids_and_argument_checks():
    raw = _packet(5000)
    a, b = (list(iter_fragments(raw, A, fragment_size=1000)) for _ in range(2))
    assert {f[24:40] for f in a}.isdisjoint({f[24:40] for f in b}) and len({f[24:40] for f in a}) == 5
    with pytest.raises(FrameError):
        iter_fragments(raw, b"short", fragment_size=1000)
    with pytest.raises(FrameError):
        iter_fragments(raw, A, fragment_size=1000, first_packet_id=b"x")
    with pytest.raises(FrameError):
        iter_fragments(raw, A, fragment_size=1000, minor=256)
    with pytest.raises(ValueError):
        iter_fragments(raw, A, fragment_size=0)
