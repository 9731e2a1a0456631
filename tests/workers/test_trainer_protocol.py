"""The trainer's sans-IO core: group keys, message parsing and refusals, chunk assembly, round
bookkeeping and lineage decisions. No torch, no sockets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from meshnode.hdc.delta import DeltaCompressor, Float32Codec, TernaryCodec
from meshnode.wire.packet import Delta, Signer, decode_packet, encode_packet
from meshnode.workers.base import WorkerSettingsError
from meshnode.workers.trainer_protocol import (
    Assembly,
    DeltaChunk,
    GroupKey,
    Hello,
    NotOurs,
    Position,
    RoundBook,
    SnapshotRequest,
    TrainerRefused,
    chunk_bodies,
    digest_of,
    hello_body,
    lineage_winner,
    parse_message,
    partition,
    request_body,
)
from meshnode.workers.trainer_settings import parse_settings

LORA = {"r": 4, "alpha": 8.0, "targets": "default", "classes": 2}


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"l0.lora_A": (4, 16), "l0.lora_B": (16, 4), "l1.lora_A": (4, 16), "l1.lora_B": (16, 4),
              "classifier.weight": (2, 16), "classifier.bias": (2,)}
    return {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}


def key(**lora: object) -> GroupKey:
    return GroupKey.build("trainer/t", "f" * 64, "t", ("pos", "neg"), tensors(), {**LORA, **lora})


def roundtrip(body: Delta) -> Delta:
    return decode_packet(encode_packet(body, Signer.from_seed(b"\x01" * 32))).body


POS = Position(3, b"\x07" * 16, 9)


def delta_chunks(k: GroupKey, delta: dict[str, np.ndarray], codec=None, max_values: int = 70,
                 pos: Position = POS) -> list[Delta]:
    codec = codec or Float32Codec()
    align = getattr(codec, "block", 1)
    parts = partition(k, max_values)
    records = []
    for p in parts:
        comp = DeltaCompressor(codec, layout=k.sublayout(p, align))
        records += comp.compress({n: delta[n] for n, _ in k.entries[p[0]:p[1]]})[0]
    return [roundtrip(b) for b in chunk_bodies(k, "delta", pos, records, codec.wire_name, parts, align, codec.meta(),
                                                  steps=5, loss=0.5, arm="x")]


def assemble(k: GroupKey, bodies: list[Delta], order: list[int] | None = None) -> dict[str, np.ndarray]:
    msgs = [parse_message(b, k) for b in bodies]
    asm = Assembly(b"\x01" * 32, POS, msgs[0].chunks, 0.0)
    for i in order or range(len(msgs)):
        asm.add(msgs[i], 100, 1.0)
    assert asm.complete
    return asm.decode(k)


def test_the_schema_hash_follows_names_shapes_and_lora_config_and_the_group_the_base_model() -> None:
    a, b = key(), key()
    assert a == b
    assert key(r=8).schema != a.schema and key(r=8).group == a.group
    other_shapes = {**tensors(), "classifier.weight": np.zeros((3, 16), np.float32)}
    assert GroupKey.build("trainer/t", "f" * 64, "t", ("pos", "neg"), other_shapes, LORA).schema != a.schema
    assert GroupKey.build("trainer/t", "e" * 64, "t", ("pos", "neg"), tensors(), LORA).group != a.group
    assert GroupKey.build("trainer/t", "f" * 64, "u", ("pos", "neg"), tensors(), LORA).group != a.group


def test_partition_tiles_the_tensors_in_bounded_chunks() -> None:
    k = key()
    for max_values in (1, 40, 70, 100, 10_000):
        parts = partition(k, max_values)
        assert parts[0][0] == 0 and parts[-1][1] == len(k.entries)
        assert all(a < b for a, b in parts) and all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
        for a, b in parts:
            sizes = [int(np.prod(s)) for _, s in k.entries[a:b]]
            assert b - a == 1 or sum(sizes) <= max_values


@pytest.mark.parametrize("codec", [Float32Codec(), TernaryCodec(block=16)])
def test_chunked_deltas_survive_the_wire_in_any_order(codec) -> None:
    k, delta = key(), tensors(1)
    bodies = delta_chunks(k, delta, codec)
    assert len(bodies) > 2
    got = assemble(k, bodies, order=list(reversed(range(len(bodies)))))
    assert set(got) == set(delta)
    if codec.name == "fp32":
        for n in delta:
            np.testing.assert_array_equal(got[n], delta[n])
    msg = parse_message(bodies[0], k)
    assert isinstance(msg, DeltaChunk) and msg.position == POS and msg.steps == 5 and msg.loss == 0.5


def test_hello_and_request_round_trip() -> None:
    k = key()
    hello = parse_message(roundtrip(hello_body(k, POS, joining=True)), k)
    assert hello == Hello(POS, True)
    req = parse_message(roundtrip(request_body(k, POS, b"\x02" * 32)), k)
    assert req == SnapshotRequest(POS, b"\x02" * 32)


def test_another_group_is_not_ours_and_another_schema_is_refused_with_a_reason() -> None:
    k = key()
    other_group = GroupKey.build("trainer/t", "e" * 64, "t", ("pos", "neg"), tensors(), LORA)
    with pytest.raises(NotOurs):
        parse_message(hello_body(other_group, POS, joining=False), k)
    with pytest.raises(TrainerRefused) as e:
        parse_message(hello_body(key(r=8), POS, joining=False), k)
    assert e.value.code == "schema_mismatch" and "LoRA rank" in e.value.detail


def _with_meta(body: Delta, **meta: object) -> Delta:
    return dataclasses.replace(body, meta={**body.meta, **meta})


@pytest.mark.parametrize("change", [
    {"part": [0, 99]}, {"part": [3, 3]}, {"part": "0-2"}, {"align": 0}, {"align": 1 << 20}, {"kind": "gossip"},
    {"base": b"short"}, {"weight": -1}, {"to": b"x"},
])
def test_malformed_meta_is_refused(change) -> None:
    k = key()
    body = delta_chunks(k, tensors(1))[0]
    if "to" in change:
        body = request_body(k, POS, b"\x02" * 32)
    with pytest.raises(TrainerRefused) as e:
        parse_message(_with_meta(body, **change), k)
    assert e.value.code == "bad_message"


def test_chunks_that_do_not_tile_or_do_not_decode_are_refused() -> None:
    k = key()
    bodies = delta_chunks(k, tensors(1))
    # the second chunk claims the first one's tensors
    bad = _with_meta(bodies[1], part=list(parse_message(bodies[0], k).part))
    with pytest.raises(TrainerRefused, match="tile"):
        assemble(k, [bodies[0], bad, *bodies[2:]])
    # a record whose fused layout is not the one its part names
    wrong = _with_meta(bodies[0], layout=b"\x00" * 16)
    with pytest.raises(TrainerRefused) as e:
        assemble(k, [wrong, *bodies[1:]])
    assert e.value.code == "bad_delta"
    msgs = [parse_message(b, k) for b in bodies]
    asm = Assembly(b"\x01" * 32, POS, len(msgs) + 1, 0.0)
    with pytest.raises(TrainerRefused, match="chunk count"):
        asm.add(msgs[0], 1, 0.0)


def test_a_round_completes_when_every_live_member_sent_and_merges_only_our_lineage() -> None:
    me, a, b, c = (bytes([i]) * 32 for i in (5, 1, 2, 9))
    book = RoundBook(me, member_timeout=10.0)
    base, other_base = b"\x01" * 16, b"\x02" * 16
    for n in (a, b, c):
        book.heard(n, Position(0, base, 0), now=0.0)
    own = {"w": np.array([3.0], np.float32)}
    assert not book.complete(0, now=1.0) and book.missing(0, now=1.0) == [a, b, c]
    assert book.add(0, a, base, {"w": np.array([1.0], np.float32)}, current=0)
    assert book.add(0, c, other_base, {"w": np.array([100.0], np.float32)}, current=0)
    assert not book.add(7, b, base, {"w": np.array([0.0], np.float32)}, current=0)   # too far ahead
    assert book.missing(0, now=1.0) == [b]
    assert book.complete(0, now=9.0) is False              # b is live and has not sent
    assert book.complete(0, now=10.5)                      # b was last heard at 0.0: no longer a member
    mean, used, other = book.merge(0, base, own)
    assert used == [a, me] and other == [c]
    np.testing.assert_array_equal(mean["w"], np.array([2.0], np.float32))
    assert book.senders(0) == set()


def test_merge_order_is_by_node_id_so_every_node_computes_the_same_bits() -> None:
    rng = np.random.default_rng(0)
    ids = [bytes([i]) * 32 for i in range(1, 6)]
    deltas = {n: {"w": rng.normal(size=1000).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))} for n in ids}
    results = []
    for me in ids:
        book = RoundBook(me, 10.0)
        for n in reversed(ids):
            if n != me:
                book.add(0, n, b"b" * 16, deltas[n], current=0)
        mean, used, _ = book.merge(0, b"b" * 16, deltas[me])
        assert used == ids
        results.append(mean["w"].tobytes())
    assert len(set(results)) == 1


def test_lineage_winner_catches_up_behind_nodes_and_settles_splits_the_same_way_everywhere() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    x, y = b"x" * 16, b"y" * 16
    # one round ahead is ordinary slack
    assert lineage_winner(b, {3: Position(3, x, 6)}, [(a, Position(4, y, 8))]) is None
    # two rounds ahead: we were away
    assert lineage_winner(b, {3: Position(3, x, 6)}, [(a, Position(5, y, 8))]) == a
    # same round, another base: more merged deltas win, then the smaller node id; both sides agree
    assert lineage_winner(b, {3: Position(3, x, 6)}, [(a, Position(3, y, 7))]) == a
    assert lineage_winner(a, {3: Position(3, y, 7)}, [(b, Position(3, x, 6))]) is None
    assert lineage_winner(b, {3: Position(3, x, 6)}, [(a, Position(3, y, 6))]) == a
    assert lineage_winner(a, {3: Position(3, y, 6)}, [(b, Position(3, x, 6))]) is None
    # a peer whose position matches one of our recent rounds is on our lineage
    assert lineage_winner(b, {2: Position(2, y, 4), 3: Position(3, x, 6)}, [(a, Position(2, y, 4))]) is None


def test_digest_tells_adapters_apart() -> None:
    k = key()
    t = tensors(2)
    assert digest_of(k.layout, t) == digest_of(k.layout, {n: v.copy() for n, v in t.items()})
    t2 = {**t, "classifier.bias": t["classifier.bias"] + np.float32(1e-7)}
    assert digest_of(k.layout, t2) != digest_of(k.layout, t)


@pytest.mark.parametrize("settings, message", [
    ({}, "task: required"),
    ({"task": "t", "model": "m", "train_data": "d", "codec": "zip"}, "codec: expected one of"),
    ({"task": "t", "model": "m", "train_data": "d", "codec": "int8", "density": 0.1}, "only for the ternary"),
    ({"task": "t", "model": "m", "train_data": "d", "steps_per_round": 0}, "steps_per_round: must be >= 1"),
    ({"task": "t", "model": "m", "train_data": "d", "codec": "ternary-rht-ef", "block": 100}, "power of two"),
    ({"task": "t", "model": "m", "train_data": "d", "lr": True}, "lr: expected"),
    ({"task": "a/b", "model": "m", "train_data": "d"}, "task: 1..128 bytes"),
    ({"task": "t", "model": "m", "train_data": "d", "speed": 1}, "unknown key"),
])
def test_settings_errors_name_the_setting(settings, message) -> None:
    with pytest.raises(WorkerSettingsError, match=message):
        parse_settings("lora", settings)


def test_settings_defaults_and_relative_paths(tmp_path) -> None:
    s = parse_settings("lora", {"task": "sst2", "model": "minilm", "train_data": "data/train.jsonl",
                                "hello_interval": 2}, base_dir=tmp_path)
    assert s.train_data == tmp_path / "data" / "train.jsonl" and s.topic == "trainer/sst2"
    assert s.codec == "ternary-ef" and s.error_feedback and s.wire_codec == "ternary" and s.join_wait == 4.0


def test_every_setting_is_documented() -> None:
    from pathlib import Path

    from meshnode.workers.trainer_settings import SETTINGS

    text = (Path(__file__).resolve().parents[2] / "docs" / "WORKERS.md").read_text()
    section = text[text.index("## trainer"):text.index("## transfer")]
    assert [k for k in SETTINGS if f"| `{k}` |" not in section] == []
