"""Golden vectors (protocol/vectors/): the generator and the committed files stay in sync, and
`meshnode inspect` still gives exactly the committed JSON for every input, through its Python API
and through the CLI."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from meshnode.cli import main as cli
from meshnode.inspect import InspectError, TrustStore, format_for_name, inspect_bytes
from meshnode.wire.packet import VectorBlock, decode_packet

from ._support import PROTOCOL, vector_generator

VECTORS = PROTOCOL / "vectors"


gen, VALID, MALFORMED = vector_generator()
INPUTS = sorted({**VALID, **MALFORMED})

# The reason and the byte offset (SPEC §2, "Offsets"; Appendix A; docs/INSPECT.md for hex) each
# malformed file must be refused with: written out here, not read from the files, so that a change in
# the code's behaviour fails this test instead of silently regenerating. Every offset is normative.
EXPECTED = {
    "bad_body": ("bad_body", 72),
    "bad_body_ack_ref": ("bad_body", 72),
    "bad_body_array_entries": ("bad_body", 72),
    "bad_body_bin_key": ("bad_body", 72),
    "bad_body_bool_int": ("bad_body", 72),
    "bad_body_delta_chunk": ("bad_body", 72),
    "bad_body_depth": ("bad_body", 72),
    "bad_body_duplicate_key": ("bad_body", 72),
    "bad_body_duplicate_key_nested": ("bad_body", 72),
    "bad_body_ext": ("bad_body", 72),
    "bad_body_extra_bytes": ("bad_body", 72),
    "bad_body_float_int": ("bad_body", 72),
    "bad_body_hello_max_frame": ("bad_body", 72),
    "bad_body_infinity_f32": ("bad_body", 72),
    "bad_body_int_key": ("bad_body", 72),
    "bad_body_key_length": ("bad_body", 72),
    "bad_body_knowledge_form": ("bad_body", 72),
    "bad_body_labels_count": ("bad_body", 72),
    "bad_body_map_entries": ("bad_body", 72),
    "bad_body_missing_key": ("bad_body", 72),
    "bad_body_nan": ("bad_body", 72),
    "bad_body_negative_int": ("bad_body", 72),
    "bad_body_nil_int": ("bad_body", 72),
    "bad_body_not_map": ("bad_body", 72),
    "bad_body_optional_nil": ("bad_body", 72),
    "bad_body_space": ("bad_body", 72),
    "bad_body_str_length": ("bad_body", 72),
    "bad_body_tensor_data": ("bad_body", 72),
    "bad_body_tensor_dtype": ("bad_body", 72),
    "bad_body_tensor_shape": ("bad_body", 72),
    "bad_body_timestamp_ext": ("bad_body", 72),
    "bad_body_topic_empty": ("bad_body", 72),
    "bad_body_total_entries": ("bad_body", 72),
    "bad_body_utf8": ("bad_body", 72),
    "bad_body_utf8_overlong_key": ("bad_body", 72),
    "bad_body_utf8_surrogate": ("bad_body", 72),
    "bad_body_vector_data": ("bad_body", 72),
    "bad_dimension": ("bad_dimension", 72),
    "bad_dimension_bool": ("bad_dimension", 72),
    "bad_dimension_tensor_dims": ("bad_dimension", 72),
    "bad_dimension_tensor_elements": ("bad_dimension", 72),
    "bad_dimension_tensor_overflow": ("bad_dimension", 72),
    "bad_encoding": ("bad_encoding", 72),
    "bad_fragment": ("bad_fragment", 1881),
    "bad_fragment_count_zero": ("bad_fragment", 76),
    "bad_fragment_data_over_total": ("bad_fragment", 76),
    "bad_fragment_duplicate": ("bad_fragment", 234),
    "bad_fragment_empty_data": ("bad_fragment", 76),
    "bad_fragment_index": ("bad_fragment", 76),
    "bad_fragment_last_piece": ("bad_fragment", 4),
    "bad_fragment_nested": ("bad_fragment", 196),
    "bad_fragment_piece_size": ("bad_fragment", 234),
    "bad_fragment_total": ("bad_fragment", 76),
    "bad_header": ("bad_header", 7),
    "bad_header_reserved": ("bad_header", 9),
    "bad_length": ("bad_length", 72),
    "bad_length_sparse": ("bad_length", 137),
    "bad_length_sparse_counts": ("bad_length", 72),
    "bad_length_sparse_total": ("bad_length", 72),
    "bad_length_tensor": ("bad_length", 72),
    "bad_magic": ("bad_magic", 0),
    "bad_padding": ("bad_padding", 138),
    "bad_padding_base3": ("bad_padding", 138),
    "bad_padding_sparse": ("bad_padding", 143),
    "bad_signature": ("bad_signature", 95),
    "bad_trit": ("bad_trit", 137),
    "bad_trit_base3": ("bad_trit", 137),
    "bad_trit_delta": ("bad_trit", 262),
    "bad_trit_long_bin_header": ("bad_trit", 154),
    "bad_trit_sparse": ("bad_trit", 143),
    "bad_trit_sparse_passes": ("bad_trit", 149),
    "bad_trit_sparse_position": ("bad_trit", 141),
    "capture_address_not_utf8": ("bad_header", 51),
    "capture_address_too_long": ("too_large", 49),
    "capture_bad_direction": ("bad_header", 236),
    "capture_bad_magic": ("bad_magic", 0),
    "capture_bad_packet": ("bad_magic", 69),
    "capture_packet_too_large": ("too_large", 65),
    "capture_truncated_header": ("truncated", 7),
    "capture_truncated_record": ("truncated", 228),
    "capture_unsupported_version": ("unsupported_version", 6),
    "ed25519_key_mixed_order_cofactored": ("bad_signature", 160),
    "ed25519_key_not_canonical": ("bad_signature", 166),
    "ed25519_key_small_order": ("bad_signature", 164),
    "ed25519_key_small_order_8": ("bad_signature", 162),
    "ed25519_r_not_canonical": ("bad_signature", 78),
    "ed25519_r_small_order": ("bad_signature", 78),
    "ed25519_s_not_canonical": ("bad_signature", 95),
    "frame_length_zero": ("bad_header", 163),
    "frames_first_bad": ("bad_magic", 4),
    "frames_then_too_large": ("too_large", 326),
    "hello_origin_mismatch": ("bad_signature", 40),
    "hex_bad_character": ("bad_magic", 4),
    "hex_odd_digits": ("truncated", 158),
    "reassembly_full": ("reassembly_full", 4),
    "too_large": ("too_large", 0),
    "too_large_body": ("too_large", 12),
    "too_large_count": ("too_large", 72),
    "too_large_dim": ("too_large", 72),
    "too_large_trits": ("too_large", 72),
    "trailing_data": ("trailing_data", 159),
    "trailing_data_in_frame": ("trailing_data", 163),
    "truncated": ("truncated", 149),
    "truncated_empty": ("truncated", 0),
    "truncated_header": ("truncated", 40),
    "truncated_magic": ("truncated", 2),
    "truncated_stream": ("truncated", 163),
    "truncated_stream_prefix": ("truncated", 163),
    "unknown_kind": ("unknown_kind", 6),
    "unsigned": ("unsigned", 7),
    "unsigned_reassembled": ("unsigned", 183),
    "unsupported_version": ("unsupported_version", 4),
    "unsupported_version_short": ("unsupported_version", 4),
}


def _stem(name: str) -> str:
    return Path(name).name.rsplit(".", 1)[0]


def _committed_json(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / gen.json_name(name)).read_text())


def _golden_trust() -> TrustStore:
    trust = TrustStore()
    trust.add_file(VECTORS / gen.TRUST_FILE)
    return trust


def test_regenerating_gives_the_committed_files_byte_for_byte() -> None:
    files = gen.render()
    on_disk = gen.generated_on_disk(VECTORS)
    assert sorted(files) == on_disk, "run `make vectors`: the generator and protocol/vectors/ differ in file names"
    different = [name for name, content in files.items() if (VECTORS / name).read_bytes() != content]
    assert not different, f"run `make vectors` (and review the diff): these files changed: {different}"


def test_generation_is_deterministic() -> None:
    assert gen.build() == (VALID, MALFORMED)


def test_every_kind_and_encoding_is_covered() -> None:
    kinds, encodings, dims, counts = set(), set(), set(), set()
    for name, content in VALID.items():
        for entry in _committed_json(name):
            kinds.add(entry["kind"])
            blocks = [entry["body"].get("vectors")] + [t.get("trits") for t in entry["body"].get("tensors", [])]
            for block in filter(None, blocks):
                encodings.add(block["encoding"])
                dims.add(block["dim"])
                counts.add(block["count"])
    assert kinds == {"hello", "ping", "pong", "vectors", "knowledge", "delta", "ack", "nack", "fragment", "bye", "gossip"}
    assert encodings == {"dense2", "base3", "sparse"}
    assert 0 in dims and 0 in counts and max(dims) > 65536   # empty blocks and u32 sparse positions
    assert set(EXPECTED) == {_stem(n) for n in MALFORMED}


@pytest.mark.parametrize("name", INPUTS)
def test_inspect_gives_the_committed_json(name: str) -> None:
    results = list(inspect_bytes((VECTORS / name).read_bytes(), _golden_trust(), fmt=format_for_name(name)))
    got = [r.as_json() if isinstance(r, InspectError) else r for r in results]
    assert got == _committed_json(name)
    errors = [r for r in results if isinstance(r, InspectError)]
    if name in VALID:
        assert not errors
        assert all(r["signature"] in ("valid", "unsigned", "unknown_key", "self_signed", "ignored") for r in got)
    else:
        assert errors and (errors[-1].reason, errors[-1].offset) == EXPECTED[_stem(name)]


@pytest.mark.parametrize("name", INPUTS)
def test_cli_json_is_the_committed_json_plus_file(name: str) -> None:
    path = VECTORS / name
    result = CliRunner().invoke(cli, ["inspect", "--json", "--trust", str(VECTORS / gen.TRUST_FILE), str(path)])
    assert result.exit_code == (0 if name in VALID else 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(line.pop("file") == str(path) for line in lines)
    assert lines == _committed_json(name)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_committed_json_has_nothing_machine_specific() -> None:
    paths = list(VECTORS.rglob("*.json"))
    assert len(paths) == len(INPUTS)
    for path in paths:
        text = path.read_text()
        assert str(PROTOCOL.parent) not in text
        for entry in json.loads(text):
            assert "file" not in entry
            for s in _strings(entry):
                assert not re.match(r"(/|~|[A-Za-z]:\\)", s), f"{path}: {s!r} looks like a path"


def test_readme_describes_every_file() -> None:
    readme = (VECTORS / "README.md").read_text()
    missing = [name for name in gen.render() if f"`{Path(name).name}`" not in readme and not name.endswith(".json")]
    assert not missing, f"protocol/vectors/README.md does not mention {missing}"


def test_demo_glob_sees_only_valid_packets() -> None:
    """`make demo` runs `meshnode inspect protocol/vectors/*.bin` (no --trust) and must exit 0."""
    bins = sorted(str(p) for p in VECTORS.glob("*.bin"))
    assert len(bins) >= 15
    result = CliRunner().invoke(cli, ["inspect", *bins])
    assert result.exit_code == 0, result.output
    assert "signature unknown_key" in result.stdout and "signature self_signed" in result.stdout


def test_vector_figures_match_the_generators_trits() -> None:
    """The JSON's zero fractions and sizes agree with the trits the generator started from (computed
    here with numpy, not with the code that printed the JSON)."""
    cases = {"04_vectors_dense2": ("dense2", 2, 1000, 0.3), "05_vectors_base3": ("base3", 4, 103, 0.3),
             "06_vectors_sparse": ("sparse", 3, 10000, 0.995), "07_vectors_sparse_wide": ("wide", 1, 70000, 0.9995)}
    for stem, (label, n, d, zeros) in cases.items():
        t = gen.trits(label, n, d, zeros)
        block = _committed_json(stem + ".bin")[0]["body"]["vectors"]
        assert (block["dim"], block["count"]) == (d, n)
        assert block["zero_fraction"] == pytest.approx(float(np.mean(t == 0)), abs=1e-6)
        nonzeros = int(np.count_nonzero(t))
        wire = {"dense2": n * -(-d // 4), "base3": n * -(-d // 5),
                "sparse": 4 * n + (2 if d <= 65536 else 4) * nonzeros + -(-nonzeros // 8)}[block["encoding"]]
        assert block["bytes"] == wire
        assert block["vs_float32"] == pytest.approx(wire / (4 * n * d), abs=1e-6)
        packet = decode_packet((VECTORS / (stem + ".bin")).read_bytes())
        vb = packet.body.vectors  # type: ignore[union-attr]
        assert isinstance(vb, VectorBlock)
        assert np.array_equal(vb.to_trits(), t)
        if d > 65536:
            assert np.nonzero(t)[1].max() >= 65536, "the wide block must use a position that needs u32"


def test_header_fields_match_the_bytes() -> None:
    """The JSON header fields, checked against a struct parse of SPEC §2's table."""
    header = struct.Struct("<4sBBBBB3sIQ16s32s")
    for name in VALID:
        if not name.endswith(".bin"):
            continue
        raw = (VECTORS / name).read_bytes()
        magic, major, minor, kind, flags, hop, _, body_len, ts, pid, origin = header.unpack_from(raw)
        entry = _committed_json(name)[0]
        assert magic == b"MNPK" and entry["version"] == f"{major}.{minor}"
        assert (entry["hop_limit"], entry["timestamp_us"], entry["packet_id"], entry["origin"]) == (
            hop, ts, pid.hex(), origin.hex())
        assert entry["size"] == len(raw) == 72 + body_len + (64 if flags & 1 else 0)
