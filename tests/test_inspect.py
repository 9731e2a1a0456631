"""`meshnode inspect`: input forms (file, stdin, hex, frames, fragments, capture), trust (raw key,
hex key, PEM, node certificate, mesh CA directory), signature status, errors without tracebacks, and
the human-readable output. Through click's CliRunner and through meshnode.inspect directly."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from meshnode.cli import main as cli
from meshnode.identity import init_mesh, init_node
from meshnode.inspect import InspectError, TrustStore, failed, inspect_bytes, maybe_unhex, split_input
from meshnode.wire import capture
from meshnode.wire.errors import WireError
from meshnode.wire.frames import encode_frame, fragment_packet
from meshnode.wire.packet import (
    SIGNATURE_DOMAIN, Hello, Knowledge, Ping, Signer, Tensor, VectorBlock, Vectors, encode_packet, signature_input,
)

A = Signer.from_seed(bytes(range(32)))
B = Signer.from_seed(bytes(range(32, 64)))
T0 = 1_700_000_000_000_000
SPACE = b"space"


def _pid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def ping(n: int = 1, signer: Signer = A) -> bytes:
    return encode_packet(Ping(seq=n, sent_us=T0), signer, packet_id=_pid(n), timestamp_us=T0 + n)


def vectors_packet(n: int = 2, dim: int = 1000, count: int = 3, encoding: str = "dense2") -> bytes:
    rng = np.random.default_rng(n)
    t = rng.integers(-1, 2, size=(count, dim), dtype=np.int8)
    t[:, : dim // 2] = 0      # at least half zeros
    block = VectorBlock.from_trits(t, SPACE, encoding)
    return encode_packet(Vectors(topic="t", vectors=block), A, packet_id=_pid(n), timestamp_us=T0 + n)


def invoke(args: list[str], stdin: bytes | None = None) -> Result:
    result = CliRunner().invoke(cli, ["inspect", *args], input=stdin)
    # never a traceback: the only exception is the exit itself
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def trust_of(*keys: bytes) -> TrustStore:
    trust = TrustStore()
    for k in keys:
        trust.add_bytes(k)
    return trust


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------------------------- input forms


def test_single_packet_file_json(tmp_path: Path) -> None:
    path = write(tmp_path, "p.bin", ping(5))
    result = invoke(["--json", path])
    assert result.exit_code == 0
    [obj] = json_lines(result)
    assert obj["file"] == path and obj["kind"] == "ping" and obj["offset"] == 0
    assert obj["body"] == {"seq": 5, "sent_us": T0}
    assert obj["origin"] == A.node_id.hex() and obj["packet_id"] == _pid(5).hex()
    assert obj["signature"] == "unknown_key"    # no --trust given


def test_stdin(tmp_path: Path) -> None:
    result = invoke(["--json", "-"], stdin=ping(3))
    assert result.exit_code == 0
    [obj] = json_lines(result)
    assert obj["file"] == "-" and obj["body"]["seq"] == 3


def test_stdin_hex_with_whitespace_and_capitals() -> None:
    raw = ping(4)
    text = "\n".join(raw[i:i + 8].hex(" ").upper() for i in range(0, len(raw), 8)).encode() + b"\n"
    result = invoke(["--json", "-"], stdin=text)
    assert result.exit_code == 0
    assert json_lines(result)[0]["body"]["seq"] == 4


def test_hex_with_an_odd_number_of_digits_is_an_error() -> None:
    result = invoke(["--json", "-"], stdin=ping(4).hex()[:-1].encode())
    assert result.exit_code == 1
    [obj] = json_lines(result)
    assert obj["error"] == "truncated"


def test_maybe_unhex_leaves_binary_alone() -> None:
    raw = ping(1)
    assert maybe_unhex(raw) == raw
    assert maybe_unhex(encode_frame(raw)) == encode_frame(raw)
    assert maybe_unhex(raw.hex().encode()) == raw


def test_frame_stream_offsets_are_those_of_each_packet() -> None:
    packets = [ping(1), vectors_packet(2), ping(3)]
    stream = b"".join(encode_frame(p) for p in packets)
    results = list(inspect_bytes(stream, trust_of(A.public_key_bytes)))
    assert not failed(results)
    offsets, at = [], 0
    for p in packets:
        offsets.append(at + 4)
        at += 4 + len(p)
    assert [r["offset"] for r in results] == offsets          # type: ignore[index]
    assert [r["kind"] for r in results] == ["ping", "vectors", "ping"]  # type: ignore[index]
    assert all(r["signature"] == "valid" for r in results)    # type: ignore[index]


def test_fragments_are_shown_and_reassembled() -> None:
    whole = vectors_packet(7, dim=4000, count=4, encoding="base3")
    pieces = fragment_packet(whole, A, fragment_size=1000, first_packet_id=_pid(100), timestamp_us=T0)
    assert len(pieces) > 2
    random.Random(1).shuffle(pieces)   # any order
    stream = b"".join(encode_frame(p) for p in pieces)
    results = list(inspect_bytes(stream, trust_of(A.public_key_bytes)))
    assert not failed(results)
    kinds = [r["kind"] for r in results]  # type: ignore[index]
    assert kinds == ["fragment"] * len(pieces) + ["vectors"]
    last = results[-1]
    assert isinstance(last, dict)
    assert last["reassembled_from"] == len(pieces) and last["size"] == len(whole)
    assert last["signature"] == "valid" and last["packet_id"] == _pid(7).hex()
    assert all(r["signature"] == "unsigned" for r in results[:-1])  # type: ignore[index]


def test_incomplete_fragment_set_is_not_an_error() -> None:
    pieces = fragment_packet(vectors_packet(7, dim=4000, count=4), A, fragment_size=1000)
    results = list(inspect_bytes(b"".join(encode_frame(p) for p in pieces[:-1]), TrustStore()))
    assert not failed(results) and all(r["kind"] == "fragment" for r in results)  # type: ignore[index]


def _capture(records: list[capture.CaptureRecord]) -> bytes:
    return capture.CAPTURE_MAGIC + b"".join(capture.encode_record(r) for r in records)


def test_capture_file(tmp_path: Path) -> None:
    p1, p2 = ping(1), vectors_packet(2)
    records = [capture.CaptureRecord(T0, capture.Direction.OUT, B.node_id, "127.0.0.1:7946", p1),
               capture.CaptureRecord(T0 + 5, capture.Direction.IN, B.node_id, "[::1]:7000", p2)]
    data = _capture(records)
    path = write(tmp_path, "c.mncap", data)
    result = invoke(["--json", path])
    assert result.exit_code == 0
    first, second = json_lines(result)
    assert (first["direction"], first["address"], first["captured_us"]) == ("out", "127.0.0.1:7946", T0)
    assert (second["direction"], second["peer"]) == ("in", B.node_id.hex())
    # offsets point at the packets' first bytes inside the capture file
    assert data[first["offset"]:first["offset"] + len(p1)] == p1
    assert data[second["offset"]:second["offset"] + len(p2)] == p2


def test_capture_cut_short_reports_the_records_before(tmp_path: Path) -> None:
    data = _capture([capture.CaptureRecord(T0, capture.Direction.IN, B.node_id, "x", ping(1)),
                     capture.CaptureRecord(T0, capture.Direction.IN, B.node_id, "x", ping(2))])
    result = invoke(["--json", write(tmp_path, "c.mncap", data[:-3])])
    assert result.exit_code == 1
    first, err = json_lines(result)
    assert first["body"]["seq"] == 1
    # SPEC Appendix A: at that record, i.e. its first byte (right after the first record's packet)
    assert err["error"] == "truncated" and err["offset"] == first["offset"] + len(ping(1))


@pytest.mark.parametrize("data,reason,offset", [
    (capture.CAPTURE_MAGIC[:6] + b"\x02\x00", "unsupported_version", 6),
    (capture.CAPTURE_MAGIC[:7], "truncated", 7),
    (capture.CAPTURE_MAGIC + bytes(8) + b"\x05" + bytes(34), "bad_header", 16),       # direction 5
])
def test_damaged_capture_header(data: bytes, reason: str, offset: int) -> None:
    [err] = inspect_bytes(data, TrustStore())
    assert isinstance(err, InspectError) and (err.reason, err.offset) == (reason, offset)


def test_empty_input_is_an_error_but_an_empty_capture_is_not(tmp_path: Path) -> None:
    result = invoke(["--json", write(tmp_path, "empty.bin", b"")])
    assert result.exit_code == 1 and json_lines(result)[0]["error"] == "truncated"
    result = invoke(["--json", write(tmp_path, "empty.mncap", capture.CAPTURE_MAGIC)])
    assert result.exit_code == 0 and result.stdout == ""


# ------------------------------------------------------------------------------------------- trust


def test_trust_raw_key_hex_key_and_pem(tmp_path: Path) -> None:
    path = write(tmp_path, "p.bin", ping(1))
    raw_key = write(tmp_path, "a.pub", A.public_key_bytes)
    hex_key = write(tmp_path, "a.hex", A.public_key_bytes.hex().encode() + b"\n")
    pem = write(tmp_path, "a.pem", A.public_key.public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    other = write(tmp_path, "b.pub", B.public_key_bytes)
    for key in (raw_key, hex_key, pem):
        assert json_lines(invoke(["--json", "--trust", key, path]))[0]["signature"] == "valid"
    assert json_lines(invoke(["--json", "--trust", other, path]))[0]["signature"] == "unknown_key"


def test_bad_trust_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = write(tmp_path, "junk.pub", b"not a key at all")
    result = invoke(["--trust", bad, write(tmp_path, "p.bin", ping(1))])
    assert result.exit_code == 2 and "--trust" in result.output


def _hello(signer: Signer, cert: bytes | None, n: int) -> bytes:
    return encode_packet(Hello(name="n", public_key=signer.public_key_bytes, cert=cert), signer,
                         packet_id=_pid(n), timestamp_us=T0 + n)


def test_mesh_ca_vouches_for_keys_in_hello_certificates(tmp_path: Path) -> None:
    ca = init_mesh(tmp_path / "mesh")
    member = init_node(tmp_path / "n1", ca, "n1")
    stranger_ca = init_mesh(tmp_path / "other-mesh")
    stranger = init_node(tmp_path / "n2", stranger_ca, "n2")
    s1, s2 = Signer(member.private_key), Signer(stranger.private_key)
    stream = b"".join(encode_frame(p) for p in (
        ping(1, s1),                       # before its hello: nothing vouches for the key yet
        _hello(s1, member.cert_der, 2),
        ping(3, s1),
        _hello(s2, stranger.cert_der, 4),  # a certificate from another mesh
        ping(5, s2),
    ))
    path = write(tmp_path, "s.frames", stream)
    statuses = [o["signature"] for o in json_lines(invoke(["--json", "--trust", str(tmp_path / "mesh"), path]))]
    assert statuses == ["unknown_key", "valid", "valid", "self_signed", "unknown_key"]
    # a node directory trusts that node's own key (node.crt) and its mesh (ca.crt)
    statuses = [o["signature"] for o in json_lines(invoke(["--json", "--trust", str(tmp_path / "n1"), path]))]
    assert statuses == ["valid", "valid", "valid", "self_signed", "unknown_key"]
    # the node certificate alone: that key only
    statuses = [o["signature"] for o in json_lines(invoke(["--json", "--trust", str(tmp_path / "n2" / "node.crt"),
                                                           path]))]
    assert statuses == ["unknown_key", "self_signed", "unknown_key", "valid", "valid"]
    # without any trust, a hello only proves it holds its own key
    statuses = [o["signature"] for o in json_lines(invoke(["--json", path]))]
    assert statuses == ["unknown_key", "self_signed", "unknown_key", "self_signed", "unknown_key"]


def test_hello_with_a_certificate_for_another_key_is_not_vouched_for(tmp_path: Path) -> None:
    ca = init_mesh(tmp_path / "mesh")
    member = init_node(tmp_path / "n1", ca, "n1")
    forged = _hello(B, member.cert_der, 1)   # B's hello carrying n1's certificate
    trust = TrustStore()
    trust.add_file(tmp_path / "mesh")
    results = list(inspect_bytes(encode_frame(forged) + encode_frame(ping(2, B)), trust))
    assert [r["signature"] for r in results] == ["self_signed", "unknown_key"]  # type: ignore[index]


def test_invalid_signature_fails_with_reason_and_offset(tmp_path: Path) -> None:
    raw = bytearray(ping(1))
    raw[-1] ^= 0x80                           # damage the signature itself
    path = write(tmp_path, "p.bin", bytes(raw))
    key = write(tmp_path, "a.pub", A.public_key_bytes)
    result = invoke(["--json", "--trust", key, path])
    assert result.exit_code == 1
    packet, err = json_lines(result)
    assert packet["signature"] == "invalid"
    assert err["error"] == "bad_signature" and err["offset"] == len(raw) - 64
    # without the key the signature cannot be checked: not an error
    assert invoke(["--json", path]).exit_code == 0


def test_hop_limit_is_not_signed() -> None:
    raw = bytearray(ping(1))
    raw[8] = 0
    [r] = inspect_bytes(bytes(raw), trust_of(A.public_key_bytes))
    assert isinstance(r, dict) and r["signature"] == "valid" and r["hop_limit"] == 0


# ------------------------------------------------------------------------------- errors and output


@pytest.mark.parametrize("data,reason,offset", [
    (b"XXXX" + ping(1)[4:], "bad_magic", 0),
    (ping(1)[:4] + b"\x07" + ping(1)[5:], "unsupported_version", 4),
    (ping(1)[:100], "truncated", 100),
    (ping(1) + b"\0\0", "trailing_data", len(ping(1))),
    (encode_frame(ping(1))[:-1], "truncated", 0),
    (encode_frame(ping(1)) + b"\0\0\0\0", "bad_header", 4 + len(ping(1))),
])
def test_malformed_input_gives_reason_and_offset(tmp_path: Path, data: bytes, reason: str, offset: int) -> None:
    path = write(tmp_path, "bad.data", data)          # no known suffix: the form comes from the content
    result = invoke(["--json", path])
    assert result.exit_code == 1
    err = json_lines(result)[-1]
    assert (err["error"], err["offset"], err["file"]) == (reason, offset, path)
    human = invoke([path])
    assert human.exit_code == 1
    assert f"error {reason} at offset {offset}" in human.stderr


def test_bad_packet_inside_a_good_stream_does_not_stop_it() -> None:
    bad = bytearray(ping(2))
    bad[6] = 99                                # unknown kind
    stream = encode_frame(ping(1)) + encode_frame(bytes(bad)) + encode_frame(ping(3))
    results = list(inspect_bytes(stream, TrustStore()))
    assert isinstance(results[1], InspectError)
    assert (results[1].reason, results[1].offset) == ("unknown_kind", 4 + len(ping(1)) + 4 + 6)
    assert [r["body"]["seq"] for r in (results[0], results[2])] == [1, 3]  # type: ignore[index]


def test_unreadable_file_fails_and_the_others_are_still_read(tmp_path: Path) -> None:
    good = write(tmp_path, "p.bin", ping(1))
    result = invoke(["--json", str(tmp_path / "missing.bin"), good])
    assert result.exit_code == 1
    assert "missing.bin" in result.stderr
    assert json_lines(result)[0]["file"] == good


def test_unsigned_packet_of_a_signed_kind_fails(tmp_path: Path) -> None:
    raw = encode_packet(Ping(seq=1), None, origin=A.node_id, packet_id=_pid(1), timestamp_us=T0)
    result = invoke(["--json", write(tmp_path, "u.bin", raw)])
    assert result.exit_code == 1
    packet, err = json_lines(result)
    assert packet["signature"] == "unsigned" and (err["error"], err["offset"]) == ("unsigned", 7)


def test_human_output(tmp_path: Path) -> None:
    stream = encode_frame(ping(1)) + encode_frame(vectors_packet(2, dim=1000, count=3, encoding="dense2"))
    key = write(tmp_path, "a.pub", A.public_key_bytes)
    result = invoke(["--trust", key, write(tmp_path, "s.frames", stream)])
    assert result.exit_code == 0
    out = result.stdout
    assert "s.frames @4: ping v1.0" in out and "signature valid" in out
    assert f"origin {A.node_id.hex()[:16]}" in out
    # the vector line: dimension, encoding, bytes on the wire, zeros, size relative to float32
    [line] = [x for x in out.splitlines() if x.strip().startswith("vectors:")]
    assert "3 x 1000 trits, dense2, 750 bytes on the wire (2.000 bits/trit)" in line
    assert "6.25% of float32" in line and "zeros " in line
    assert not any(line.startswith("{") for line in out.splitlines())   # not JSON


def test_unknown_body_keys_and_hint_flags_are_shown(tmp_path: Path) -> None:
    body = msgpack.packb({"seq": 1, "added_in_1_4": True})
    header = bytearray(ping(1)[:72])
    header[5], header[7] = 4, 0x21                   # minor 4, flags: signed + hint bit 5
    header[12:16] = len(body).to_bytes(4, "little")
    signature = A.sign(SIGNATURE_DOMAIN + bytes(header[:8]) + b"\0" + bytes(header[9:])
                       + hashlib.sha256(body).digest())
    path = write(tmp_path, "p.bin", bytes(header) + body + signature)
    key = write(tmp_path, "a.pub", A.public_key_bytes)
    [obj] = json_lines(invoke(["--json", "--trust", key, path]))
    assert (obj["version"], obj["flags"], obj["signature"]) == ("1.4", ["signed", "bit5"], "valid")
    assert obj["ignored_keys"] == ["added_in_1_4"]
    assert "ignored keys (newer minor version?): added_in_1_4" in invoke(["--trust", key, path]).stdout


def test_nan_and_infinity_in_meta_are_refused_and_the_json_stays_strict(tmp_path: Path) -> None:
    """SPEC §3 (v1.0 draft 2): msgpack floats must be finite. A packet that carries NaN / inf is
    bad_body (it used to decode, shown as "nan"); the sender refuses to build one."""
    w = Tensor.from_array(np.zeros((2, 3), np.float32))
    body = Knowledge(topic="t", task="x", form="linear", classes=("a", "b"), weight=w,
                     meta={"loss": float("nan"), "big": float("inf")})
    with pytest.raises(WireError) as e:
        encode_packet(body, A, packet_id=_pid(1), timestamp_us=T0)
    assert e.value.reason == "bad_body"
    raw = encode_packet(body, A, packet_id=_pid(1), timestamp_us=T0, _validate=False)
    result = invoke(["--json", write(tmp_path, "k.bin", raw)])
    assert result.exit_code == 1
    [obj] = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
             for line in result.stdout.splitlines()]
    assert (obj["error"], obj["offset"]) == ("bad_body", 72)
    assert "nan" in obj["message"]


def test_split_input_detects_each_form() -> None:
    raw = ping(1)
    assert [i.offset for i in split_input(raw)] == [0]
    assert [i.offset for i in split_input(encode_frame(raw) + encode_frame(raw))] == [4, 8 + len(raw)]
    with pytest.raises(WireError):
        list(split_input(b""))


def test_hostile_inputs_never_raise() -> None:
    """Random bytes and random damage to valid streams: always results, never an exception."""
    rng = random.Random(20261124)
    seeds = [ping(1), encode_frame(ping(1)) + encode_frame(vectors_packet(2)),
             _capture([capture.CaptureRecord(T0, capture.Direction.IN, B.node_id, "h", ping(3))]),
             ping(4).hex().encode()]
    trust = trust_of(A.public_key_bytes)
    for i in range(400):
        data = bytearray(rng.choice(seeds))
        op = i % 4
        if op == 0:
            data = bytearray(rng.randbytes(rng.randrange(0, 200)))
        elif op == 1 and data:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 2:
            del data[rng.randrange(len(data) + 1):]
        else:
            data += rng.randbytes(rng.randrange(1, 8))
        results = list(inspect_bytes(bytes(data), trust))
        assert results or bytes(data) == capture.CAPTURE_MAGIC     # a capture with no records yet
        for r in results:
            json.dumps(r.as_json() if isinstance(r, InspectError) else r, allow_nan=False)


# ------------------------------------------------------------------------ times and names (people)


def _named_hello(signer: Signer, name: str, cert: bytes | None, n: int) -> bytes:
    return encode_packet(Hello(name=name, public_key=signer.public_key_bytes, cert=cert), signer,
                         packet_id=_pid(n), timestamp_us=T0 + n)


def test_human_times_are_utc_iso_8601(tmp_path: Path) -> None:
    record = capture.CaptureRecord(T0 + 250_000, capture.Direction.IN, B.node_id, "h:1", ping(1))
    out = invoke([write(tmp_path, "c.mncap", _capture([record]))]).stdout
    # T0 = 1_700_000_000 s = 2023-11-14 22:13:20 UTC; the ping's own time is T0 + 1 us
    assert "captured 2023-11-14 22:13:20.250 UTC  in" in out
    assert "time 2023-11-14 22:13:20.000 UTC" in out
    # JSON keeps the microseconds as they are
    [obj] = json_lines(invoke(["--json", str(tmp_path / "c.mncap")]))
    assert (obj["captured_us"], obj["timestamp_us"]) == (T0 + 250_000, T0 + 1)


def test_a_time_past_year_9999_is_shown_as_microseconds() -> None:
    from meshnode.inspect import format_time

    assert format_time(2**64 - 1) == f"{2**64 - 1} us"
    assert format_time(0) == "1970-01-01 00:00:00.000 UTC"
    assert format_time(T0 + 123_999, date=False) == "22:13:20.123"


def test_names_come_from_certificates_and_hellos(tmp_path: Path) -> None:
    ca = init_mesh(tmp_path / "mesh")
    member = init_node(tmp_path / "n1", ca, "alpha")
    s1 = Signer(member.private_key)
    # the ping comes before the hello: the name is known for it all the same (names are read first),
    # while the key is still trusted from the hello on only
    stream = b"".join(encode_frame(p) for p in (ping(1, s1), _named_hello(s1, "alpha", member.cert_der, 2),
                                                ping(3, s1)))
    path = write(tmp_path, "s.frames", stream)
    short = s1.node_id.hex()[:16]

    vouched = json_lines(invoke(["--json", "--trust", str(tmp_path / "mesh"), path]))
    assert [o["signature"] for o in vouched] == ["unknown_key", "valid", "valid"]
    assert [o.get("origin_name") for o in vouched] == ["alpha"] * 3
    assert invoke(["--trust", str(tmp_path / "mesh"), path]).stdout.count(f"origin alpha ({short})") == 3

    # without a trusted CA the name is only what the hello claims: "?" for people, absent from JSON
    assert all("origin_name" not in o for o in json_lines(invoke(["--json", path])))
    assert invoke([path]).stdout.count(f"origin alpha? ({short})") == 3

    # a node certificate names its node without any hello
    alone = write(tmp_path, "p.bin", ping(4, s1))
    [obj] = json_lines(invoke(["--json", "--trust", str(tmp_path / "n1" / "node.crt"), alone]))
    assert obj["origin_name"] == "alpha" and obj["signature"] == "valid"


def test_a_capture_names_its_peers(tmp_path: Path) -> None:
    records = [capture.CaptureRecord(T0, capture.Direction.IN, B.node_id, "b:7000", _named_hello(B, "bee", None, 1)),
               capture.CaptureRecord(T0 + 1, capture.Direction.OUT, B.node_id, "b:7000", ping(2)),
               capture.CaptureRecord(T0 + 2, capture.Direction.IN, bytes(32), "?", ping(3))]
    out = invoke([write(tmp_path, "c.mncap", _capture(records))]).stdout
    assert out.count(f"peer bee? ({B.node_id.hex()[:16]})  b:7000") == 2
    assert "peer unknown  ?" in out


def test_hostile_names_and_strings_cannot_drive_the_terminal(tmp_path: Path) -> None:
    evil = "ev\x1b[2J\x07il"
    stream = encode_frame(_named_hello(B, evil, None, 1)) + encode_frame(
        encode_packet(Vectors(topic="t\x1b]0;x\x07", vectors=VectorBlock.from_trits(np.zeros((1, 8), np.int8),
                                                                                       SPACE)), B, timestamp_us=T0))
    result = invoke(["--summary", write(tmp_path, "s.frames", stream)])
    plain = invoke([str(tmp_path / "s.frames")])
    for out in (result.stdout, plain.stdout):
        assert "\x1b" not in out and "\x07" not in out
    assert "ev\\x1b[2J\\x07il?" in plain.stdout and "origin ev\\x1b[2J\\x07il? (" in plain.stdout


# ----------------------------------------------------------------------------------------- summary


def _mixed_stream() -> tuple[bytes, int]:
    """2 pings, 3 vectors packets (topics t, t, u), a vectors packet in 3+ fragments, a ping with a bad
    signature, an unsigned ping and one frame that is not a packet; returns it and the fragment count."""
    whole = encode_packet(Vectors(topic="big", vectors=VectorBlock.from_trits(
        np.ones((4, 4000), np.int8), SPACE, "base3")), A, packet_id=_pid(50), timestamp_us=T0 + 50)
    pieces = fragment_packet(whole, A, fragment_size=1000, first_packet_id=_pid(100), timestamp_us=T0 + 60)
    bad = bytearray(ping(7))
    bad[-1] ^= 1
    unsigned = encode_packet(Ping(seq=8), None, origin=A.node_id, packet_id=_pid(8), timestamp_us=T0 + 8)
    packets = [ping(1), ping(2), _vectors("t", 3), _vectors("t", 4), _vectors("u", 5, B), *pieces, bytes(bad),
               unsigned, b"not a packet at all"]
    return b"".join(encode_frame(p) for p in packets), len(pieces)


def _vectors(topic: str, n: int, signer: Signer = A) -> bytes:
    block = VectorBlock.from_trits(np.ones((1, 64), np.int8), SPACE)
    return encode_packet(Vectors(topic=topic, vectors=block), signer, packet_id=_pid(n), timestamp_us=T0 + n)


def test_summary_counts_match_the_packets(tmp_path: Path) -> None:
    stream, nfrag = _mixed_stream()
    path = write(tmp_path, "s.frames", stream)
    key = write(tmp_path, "a.pub", A.public_key_bytes)
    each = json_lines(invoke(["--json", "--trust", key, path]))
    result = invoke(["--json", "--summary", "--trust", key, path])
    assert result.exit_code == 1                               # the errors still count
    [line] = json_lines(result)
    assert line["file"] == path
    s = line["summary"]
    packets = [o for o in each if "kind" in o]
    rows = {(r["kind"], r["topic"]): r for r in s["rows"]}
    assert {k: r["packets"] for k, r in rows.items()} == {
        ("ping", None): 4, ("vectors", "t"): 2, ("vectors", "u"): 1, ("vectors", "big"): 1,
        ("fragment", None): nfrag}
    assert rows[("vectors", "big")]["reassembled"] == 1
    assert rows[("vectors", "u")]["origins"] == [B.node_id.hex()]
    assert rows[("ping", None)]["bytes"] == sum(o["size"] for o in packets if o["kind"] == "ping")
    assert (rows[("ping", None)]["first_us"], rows[("ping", None)]["last_us"]) == (T0 + 1, T0 + 8)
    wire = [o for o in packets if "reassembled_from" not in o]
    assert s["totals"]["packets"] == len(wire) == 4 + 3 + nfrag
    assert s["totals"]["bytes"] == sum(o["size"] for o in wire)
    assert s["totals"]["reassembled"] == 1 and s["times"] == "packet"
    errors = s["errors"]
    assert (errors["undecodable"], errors["unsigned"], errors["bad_signature"]) == (1, 1, 1)
    assert sum(errors["by_reason"].values()) == sum(1 for o in each if "error" in o)
    assert s["signatures"]["unknown_key"] == 1 and s["signatures"]["invalid"] == 1

    text = invoke(["--summary", "--trust", key, path])
    assert text.exit_code == 1 and not text.stderr             # errors are counted, not listed one by one
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{path}: {4 + 3 + nfrag} packets, ")
    assert lines[1].split() == ["kind", "topic", "packets", "bytes", "first", "last", "origins"]
    assert any(x.split()[:3] == ["vectors", "big", "1"] and "(1 reassembled)" in x for x in lines)
    assert "  errors: 1 undecodable, 1 unsigned, 1 bad signature" in lines


def test_summary_of_a_capture_uses_capture_times(tmp_path: Path) -> None:
    records = [capture.CaptureRecord(T0 + 1_000_000 * i, capture.Direction.IN, B.node_id, "b", ping(i))
               for i in (1, 2, 3)]
    path = write(tmp_path, "c.mncap", _capture(records))
    [line] = json_lines(invoke(["--json", "--summary", path]))
    [row] = line["summary"]["rows"]
    assert (row["first_us"], row["last_us"], line["summary"]["times"]) == (T0 + 1_000_000, T0 + 3_000_000,
                                                                          "captured")
    out = invoke(["--summary", path]).stdout
    assert "2023-11-14 22:13:21.000 UTC .. 2023-11-14 22:13:23.000 UTC (capture times)" in out


# ----------------------------------------------------------------------------------------- filters


def test_filters_select_the_packets(tmp_path: Path) -> None:
    stream, nfrag = _mixed_stream()
    path = write(tmp_path, "s.frames", stream)
    key = write(tmp_path, "a.pub", A.public_key_bytes)

    def shown(*args: str) -> list[dict[str, Any]]:
        return json_lines(invoke(["--json", "--trust", key, *args, path]))

    def kinds(*args: str) -> list[Any]:
        return [o.get("kind", o.get("error")) for o in shown(*args)]

    # the undecodable frame always shows (what it was is unknown); a packet's own error goes with it
    assert kinds("--kind", "vectors") == ["vectors"] * 4 + ["bad_magic"]
    assert kinds("--kind", "PING") == ["ping"] * 3 + ["bad_signature", "ping", "unsigned", "bad_magic"]
    assert kinds("--kind", "fragment") == ["fragment"] * nfrag + ["bad_magic"]
    assert kinds("--kind", "ping", "--kind", "fragment").count("fragment") == nfrag
    assert [o["body"]["topic"] for o in shown("--topic", "t") if "kind" in o] == ["t", "t"]
    assert kinds("--topic", "t") == ["vectors", "vectors", "bad_magic"]
    assert kinds("--topic", "*") == ["vectors"] * 4 + ["bad_magic"]          # any topic: only topic'd kinds
    assert kinds("--topic", "b*", "--topic", "u") == ["vectors", "vectors", "bad_magic"]
    by_b = shown("--peer", B.node_id.hex()[:6])
    assert [o.get("body", {}).get("topic") for o in by_b if "kind" in o] == ["u"]
    # criteria combine: kind AND topic
    assert kinds("--kind", "ping", "--topic", "t") == ["bad_magic"]
    # the exit status follows what is shown: filtered out, a bad signature does not fail the run
    good = stream.split(b"not a packet")[0]
    clean = write(tmp_path, "clean.frames", good[:-4])          # without the last frame's length prefix
    assert invoke(["--trust", key, "--kind", "vectors", clean]).exit_code == 0
    assert invoke(["--trust", key, "--kind", "ping", clean]).exit_code == 1
    # and the filters apply to the summary
    [line] = json_lines(invoke(["--json", "--summary", "--trust", key, "--kind", "vectors", clean]))
    assert {r["kind"] for r in line["summary"]["rows"]} == {"vectors"}
    assert line["summary"]["errors"]["bad_signature"] == 0


def test_peer_filter_takes_names_and_the_capture_peer(tmp_path: Path) -> None:
    records = [capture.CaptureRecord(T0, capture.Direction.IN, B.node_id, "b", _named_hello(B, "bee", None, 1)),
               capture.CaptureRecord(T0, capture.Direction.OUT, B.node_id, "b", ping(2)),         # to bee
               capture.CaptureRecord(T0, capture.Direction.OUT, bytes(32), "x", ping(3))]         # peer unknown
    path = write(tmp_path, "c.mncap", _capture(records))
    seqs = [o["body"].get("seq") for o in json_lines(invoke(["--json", "--peer", "bee", path]))]
    assert seqs == [None, 2]                    # bee's hello (origin) and the ping sent to bee (peer)
    assert len(json_lines(invoke(["--json", "--peer", A.node_id.hex()[:8].upper(), path]))) == 2
    assert json_lines(invoke(["--json", "--peer", "nobody", path])) == []


def test_unknown_kind_is_a_one_line_usage_error(tmp_path: Path) -> None:
    result = invoke(["--kind", "vectros", write(tmp_path, "p.bin", ping(1))])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "did you mean 'vectors'" in result.stderr


def test_hostile_inputs_never_break_the_filters_the_summary_or_the_text() -> None:
    """The same kind of damage as above, through everything `inspect` prints for people."""
    from meshnode.inspect import Filter, Summary, format_error, format_text

    rng = random.Random(20261206)
    stream, _ = _mixed_stream()
    seeds = [stream, _capture([capture.CaptureRecord(T0, capture.Direction.IN, B.node_id, "h",
                                                     _named_hello(B, "bee", None, 1))])]
    selections = [Filter(), Filter(frozenset({"ping"})), Filter(topics=("t*",)), Filter(peers=("bee", "0"))]
    for i in range(120):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        trust = trust_of(A.public_key_bytes)
        summary = Summary()
        for r in selections[i % len(selections)].select(inspect_bytes(bytes(data), trust), trust.names):
            summary.add(r)
            assert format_error("f", r) if isinstance(r, InspectError) else format_text("f", r, trust.names)
        assert summary.format("f", trust.names)
        json.dumps(summary.as_json(trust.names), allow_nan=False)


# ------------------------------------------------------------- issue 16: the tool agrees with SPEC


def _signed_fragments(whole: bytes, signature: bytes) -> bytes:
    """`whole` in two fragments that carry `signature` (flags bit 0 set): SPEC §4 says receivers do
    not check it."""
    out = b""
    half = len(whole) // 2 + 1
    for i, piece in enumerate((whole[:half], whole[half:])):
        frag = bytearray(fragment_packet(whole, A, fragment_size=half, first_packet_id=_pid(40), timestamp_us=T0)[i])
        frag[7] |= 1
        out += encode_frame(bytes(frag) + signature)
        assert piece in frag
    return out


@pytest.mark.parametrize("signature", [bytes(64), b"\xff" * 64])
def test_a_fragments_signature_is_not_checked(signature: bytes) -> None:
    stream = _signed_fragments(ping(1), signature)
    results = list(inspect_bytes(stream, trust_of(A.public_key_bytes)))
    assert not failed(results), results
    assert [r["signature"] for r in results] == ["ignored", "ignored", "valid"]  # type: ignore[index]


def _hello_claiming(signer: Signer, origin: bytes) -> bytes:
    body = Hello(name="x", public_key=signer.public_key_bytes, max_frame=1 << 20)
    raw = bytearray(encode_packet(body, signer, packet_id=_pid(9), timestamp_us=T0))
    raw[40:72] = origin
    raw[-64:] = signer.sign(signature_input(bytes(raw[:72]), bytes(raw[72:-64])))
    return bytes(raw)


@pytest.mark.parametrize("trusted", [(), (A.public_key_bytes,), (B.public_key_bytes,)])
def test_a_hello_whose_key_is_not_its_origin_is_a_bad_signature_at_the_origin(trusted: tuple[bytes, ...]) -> None:
    """SPEC §6: bad_signature (offset 40), whatever key is trusted; it used to be unknown_key, or
    valid when the origin's key was trusted."""
    raw = _hello_claiming(A, B.node_id)
    results = list(inspect_bytes(raw, trust_of(*trusted)))
    assert results[0]["signature"] == "invalid"  # type: ignore[index]
    err = results[1]
    assert isinstance(err, InspectError) and (err.reason, err.offset) == ("bad_signature", 40)


def test_a_frame_stream_whose_first_packet_is_bad_is_still_read_as_frames() -> None:
    stream = encode_frame(b"MNPQ" + ping(1)[4:]) + encode_frame(ping(2)) + encode_frame(ping(3))
    for data in (stream, stream.hex().encode()):
        results = list(inspect_bytes(data, TrustStore()))
        assert isinstance(results[0], InspectError) and (results[0].reason, results[0].offset) == ("bad_magic", 4)
        assert [r["body"]["seq"] for r in results[1:]] == [2, 3]  # type: ignore[index]


def test_format_follows_the_suffix_and_the_option_overrides_it(tmp_path: Path) -> None:
    stream = encode_frame(ping(1)) + encode_frame(ping(2))
    as_bin = write(tmp_path, "s.bin", stream)
    [err] = json_lines(invoke(["--json", as_bin]))
    assert err["error"] == "bad_magic" and err["offset"] == 0
    assert "read as packet; the content looks like frames" in err["message"]
    result = invoke(["--json", "--format", "frames", as_bin])
    assert result.exit_code == 0 and [o["body"]["seq"] for o in json_lines(result)] == [1, 2]
    result = invoke(["--json", "--format", "auto", write(tmp_path, "s.dump", stream)])
    assert result.exit_code == 0 and len(json_lines(result)) == 2
    hexed = write(tmp_path, "s.txt", stream.hex(" ").encode())
    assert [o["body"]["seq"] for o in json_lines(invoke(["--json", "--format", "hex", hexed]))] == [1, 2]
    assert invoke(["--format", "nonsense", as_bin]).exit_code == 2


@pytest.mark.parametrize("text,reason,offset", [
    (b"4d 4e 50 4b 0g", "bad_magic", 4),          # the 'g' would be part of byte 4
    (b"4d4e504b01 zz", "bad_magic", 5),
    (b"4d 4e 5", "truncated", 2),
    (b"", "truncated", 0),
])
def test_hex_errors_have_offsets_of_the_unhexed_bytes(tmp_path: Path, text: bytes, reason: str, offset: int) -> None:
    [err] = json_lines(invoke(["--json", write(tmp_path, "p.hex", text)]))
    assert (err["error"], err["offset"]) == (reason, offset)


def test_an_unsigned_reassembled_packet_is_reported_at_the_fragment_that_completed_it() -> None:
    whole = encode_packet(Ping(seq=1), None, origin=A.node_id, packet_id=_pid(1), timestamp_us=T0)
    pieces = fragment_packet(whole, A, fragment_size=50, first_packet_id=_pid(10), timestamp_us=T0)
    stream = b"".join(encode_frame(p) for p in pieces)
    results = list(inspect_bytes(stream, trust_of(A.public_key_bytes)))
    err = results[-1]
    last_offset = len(stream) - len(pieces[-1])
    assert isinstance(err, InspectError) and (err.reason, err.offset) == ("unsigned", last_offset)
    assert "offset 7 in it" in err.message
