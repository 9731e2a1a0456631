"""The control API over a real unix socket: every command, hostile clients, socket file handling."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshnode.control import (
    COMMANDS,
    MAX_REQUEST,
    ControlError,
    ControlServer,
    ControlUnavailable,
    prometheus_text,
    query,
)
from meshnode.metrics import Metrics

TIMEOUT = 10.0  # a hang fails the test instead of blocking the suite; never a speed assertion

STATUS = {
    "node_id": "ab" * 32, "name": "a", "mesh_id": "cd" * 32, "version": "0.1.0", "listen": "0.0.0.0:7400",
    "uptime_s": 12.5, "peers": 1, "workers": 1, "data_dir": "/var/lib/meshnode",
}
PEER = {
    "node_id": "ef" * 32, "name": "b", "address": "10.0.0.2:7400", "direction": "out", "state": "up",
    "rtt_ms": 1.25, "connected_s": 30.0, "bytes_in": 1000, "bytes_out": 2000, "packets_in": 10,
    "packets_out": 20, "dropped": {"bad_signature": 2}, "queue": {"packets": 0, "bytes": 0},
}
WORKER = {"name": "hb", "type": "heartbeat-vectors", "state": "running", "status": {"sent": 3},
          "metrics": {"received": 7}}
COUNTERS = {"refused.other_mesh": 3, "packets.dropped.bad_signature": 2, "uptime": 1.5}


class FakeProvider:
    def __init__(self) -> None:
        self.fail = False

    def status(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("boom")
        return dict(STATUS)

    def peers(self) -> list[dict[str, Any]]:
        return [dict(PEER)]

    async def workers(self) -> list[dict[str, Any]]:  # a provider method may be async
        await asyncio.sleep(0)
        return [dict(WORKER)]

    def counters(self) -> dict[str, int | float]:
        return dict(COUNTERS)


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TIMEOUT)
    return asyncio.run(bounded())


def serving(tmp_path: Path, body: Callable[[ControlServer, Path], Awaitable[Any]], **kw: Any) -> Any:
    """Run `body(server, socket_path)` against a started server, then stop it."""
    path = tmp_path / "data" / "control.sock"

    async def main() -> Any:
        server = ControlServer(path, kw.pop("provider", None) or FakeProvider(), **kw)
        await server.start()
        try:
            return await body(server, path)
        finally:
            await server.stop()
    return run(main())


async def raw(path: Path, data: bytes, *, eof: bool = False) -> list[Any]:
    """Send raw bytes, return every response line (decoded) until the server closes or goes quiet."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    if eof:
        writer.write_eof()
    await writer.drain()
    out = []
    try:
        while True:
            line = await asyncio.wait_for(reader.readline(), 1.0)
            if not line:
                break
            out.append(json.loads(line))
    except TimeoutError:
        pass
    finally:
        writer.close()
    return out


# ------------------------------------------------------------------------------------- commands


def test_every_command(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        assert await query(path, "status") == STATUS
        assert await query(path, "peers") == [PEER]
        assert await query(path, "workers") == [WORKER]
        assert await query(path, "counters") == COUNTERS
        text = await query(path, "metrics")
        assert "meshnode_refused_other_mesh_total 3" in text.splitlines()
        assert "meshnode_up 1" in text.splitlines()
        assert 'meshnode_peer_dropped_total{peer="efefefefefefefef",name="b",direction="out",reason="bad_signature"} 2' \
            in text.splitlines()
    serving(tmp_path, body)


def test_several_requests_on_one_connection(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        lines = b"".join(json.dumps({"cmd": c}).encode() + b"\n" for c in COMMANDS)
        answers = await raw(path, lines)
        assert [a["ok"] for a in answers] == [True] * len(COMMANDS)
        assert answers[0]["result"] == STATUS
    serving(tmp_path, body)


def test_socket_is_private(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700  # created by the server
    serving(tmp_path, body)


def test_values_json_cannot_hold_are_converted(tmp_path: Path) -> None:
    class Provider(FakeProvider):
        def status(self) -> dict[str, Any]:
            return {"node_id": b"\x01\x02", "data_dir": Path("/x"), "tags": {"b"}}

    async def body(server: ControlServer, path: Path) -> None:
        assert await query(path, "status") == {"node_id": "0102", "data_dir": "/x", "tags": ["b"]}
    serving(tmp_path, body, provider=Provider())


def test_metrics_counts_requests_and_errors(tmp_path: Path) -> None:
    m = Metrics()

    async def body(server: ControlServer, path: Path) -> None:
        await query(path, "status")
        with pytest.raises(ControlError):
            await query(path, "nope")
    serving(tmp_path, body, metrics=m)
    assert m.get("control.requests") == 2 and m.get("control.errors") == 1


# -------------------------------------------------------------------------------- bad clients


def test_unknown_cmd(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        [answer] = await raw(path, b'{"cmd": "reboot"}\n', eof=True)
        assert answer["ok"] is False
        assert "unknown cmd 'reboot'" in answer["error"] and "status, peers" in answer["error"]
        with pytest.raises(ControlError, match="unknown cmd"):
            await query(path, "reboot")
    serving(tmp_path, body)


@pytest.mark.parametrize("garbage", [
    b"\xff\xfe\x00\x01garbage",
    b"not json at all",
    b"[1, 2, 3]",
    b'{"cmd": 5}',
    b'{"command": "status"}',
    b"[" * 40_000,  # deep nesting: RecursionError in the decoder, not a ValueError
    b"",            # an empty line
])
def test_garbage_gets_an_error_and_the_connection_goes_on(tmp_path: Path, garbage: bytes) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        answers = await raw(path, garbage + b'\n{"cmd": "status"}\n', eof=True)
        assert len(answers) == 2
        assert answers[0]["ok"] is False and answers[0]["error"]
        assert answers[1] == {"ok": True, "result": STATUS}
    serving(tmp_path, body)


def test_oversize_request_is_refused_and_closed(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        answers = await raw(path, b"x" * (MAX_REQUEST + 100) + b'\n{"cmd": "status"}\n')
        assert len(answers) == 1  # the error, then the server hangs up
        assert answers[0]["ok"] is False and "longer than" in answers[0]["error"]
        assert await query(path, "status") == STATUS  # and serves the next client
    serving(tmp_path, body)


def test_client_disconnects_mid_request(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        for data in (b'{"cmd": "sta', b'{"cmd": "status"}\n', b"x" * (MAX_REQUEST * 2)):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(data)
            writer.close()  # gone without reading an answer
        assert await query(path, "status") == STATUS
    serving(tmp_path, body)


def test_half_closed_request_without_newline_is_answered(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        assert await raw(path, b'{"cmd": "peers"}', eof=True) == [{"ok": True, "result": [PEER]}]
    serving(tmp_path, body)


def test_provider_error_is_an_answer_not_a_crash(tmp_path: Path) -> None:
    provider = FakeProvider()
    provider.fail = True

    async def body(server: ControlServer, path: Path) -> None:
        with pytest.raises(ControlError, match="status failed inside the daemon: RuntimeError: boom"):
            await query(path, "status")
        assert await query(path, "peers") == [PEER]
        provider.fail = False
        assert await query(path, "status") == STATUS
    serving(tmp_path, body, provider=provider)


def test_too_many_clients(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        idle = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
        for reader, writer in idle:  # an answer proves the server has counted the connection
            writer.write(b'{"cmd": "status"}\n')
            assert json.loads(await reader.readline())["ok"]
        with pytest.raises(ControlError, match="too many control clients"):
            await query(path, "status")
        for _, writer in idle:
            writer.close()
        for _ in range(100):  # the slots free up once the server sees the closes
            try:
                assert await query(path, "status") == STATUS
                return
            except ControlError:
                await asyncio.sleep(0.02)
        raise AssertionError("server never freed the client slots")
    serving(tmp_path, body, max_clients=2)


def test_idle_client_is_dropped(tmp_path: Path) -> None:
    async def body(server: ControlServer, path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # the server hung up
        writer.close()
    serving(tmp_path, body, idle_timeout=0.1)


def test_stop_ends_open_connections_and_removes_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def main() -> None:
        server = ControlServer(path, FakeProvider())
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"cmd": "status"}\n')
        assert json.loads(await reader.readline())["ok"]
        await server.stop()
        assert not path.exists()
        assert await reader.read() == b""
        writer.close()
        await server.stop()  # idempotent
        with pytest.raises(ControlUnavailable, match="does not exist"):
            await query(path, "status")
    run(main())


# --------------------------------------------------------------------------------- socket file


def _leave_stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a killed daemon leaves behind


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    _leave_stale_socket(path)

    async def main() -> None:
        with pytest.raises(ControlUnavailable, match="no daemon listens"):
            await query(path, "status")
        async with ControlServer(path, FakeProvider()):
            assert await query(path, "status") == STATUS
    run(main())


def test_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def main() -> None:
        async with ControlServer(path, FakeProvider()):
            second = ControlServer(path, FakeProvider())
            with pytest.raises(ControlError, match="already listening"):
                await second.start()
            await second.stop()  # must not remove the first one's socket
            assert await query(path, "status") == STATUS
    run(main())


def test_other_file_at_the_socket_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(ControlError, match="not a socket"):
            await ControlServer(path, FakeProvider()).start()
    run(main())
    assert path.read_text() == "precious"


def test_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)

    async def main() -> None:
        with pytest.raises(ControlError, match="writable by group or others"):
            await ControlServer(shared / "control.sock", FakeProvider()).start()
    run(main())
    assert not (shared / "control.sock").exists()


def test_query_without_daemon(tmp_path: Path) -> None:
    with pytest.raises(ControlUnavailable, match="does not exist"):
        run(query(tmp_path / "nothing.sock", "status"))


def test_query_of_a_daemon_that_never_answers(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"

    async def main() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
        server = await asyncio.start_unix_server(mute, str(path))
        try:
            with pytest.raises(ControlUnavailable, match="no answer"):
                await query(path, "status", timeout=0.1)
        finally:
            server.close()
    run(main())


# ----------------------------------------------------------------------------------- Prometheus


def test_prometheus_text() -> None:
    text = prometheus_text(
        {"a.b-c": 1, "flag": True, "label": "text is skipped", "nan": float("nan"), "big": float("inf")},
        status={"name": 'we"ird\\', "node_id": "00", "mesh_id": "11", "version": "1", "uptime_s": 3.5,
                "peers": 0, "workers": 0},
        peers=[PEER, {**PEER, "name": "c", "rtt_ms": None}],
    )
    lines = text.splitlines()
    assert "meshnode_a_b_c_total 1" in lines and "meshnode_flag 1" in lines
    assert "meshnode_nan_total NaN" in lines and "meshnode_big_total +Inf" in lines
    assert not any(line.startswith("meshnode_label") for line in lines)
    assert 'meshnode_info{node_id="00",name="we\\"ird\\\\",mesh_id="11",version="1"} 1' in lines
    # every family's samples sit together under one TYPE line
    assert sum(line.startswith("meshnode_peer_rtt_ms{") for line in lines) == 1  # None gives no sample
    sent = [i for i, line in enumerate(lines) if line.startswith("meshnode_peer_bytes_out_total{")]
    assert len(sent) == 2 and sent[1] == sent[0] + 1
    assert sum(line.startswith("# TYPE meshnode_peer_bytes_in_total ") for line in lines) == 1
    assert text.endswith("\n")
    assert prometheus_text({}) == ""


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def _families(text: str) -> dict[str, dict[str, Any]]:
    """Check `text` against the rules of the text format (0.0.4) and return {family: {type, help, samples}}."""
    import re

    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help = line[len("# HELP "):].partition(" ")
            assert re.fullmatch(_NAME, name) and "help" not in families.get(name, {}), line   # one HELP a name
            families.setdefault(name, {"samples": []})["help"] = help
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split(" ")
            assert re.fullmatch(_NAME, name) and kind in ("counter", "gauge", "histogram", "summary", "untyped")
            fam = families.setdefault(name, {"samples": []})
            assert "type" not in fam and not fam["samples"], line   # one TYPE, before the samples
            fam["type"], current = kind, name
        else:
            m = re.fullmatch(rf"({_NAME})(\{{.*\}})? (\S+)", line)
            assert m, line
            assert m.group(1) == current, f"{line}: not under its own TYPE line"   # a family's samples together
            families[current]["samples"].append(line)
    return families


def test_prometheus_counters_are_typed_and_explained_gauges_stay_gauges() -> None:
    counters = {"dial.failed": 5, "refused.other_mesh": 2, "links.lost.timeout": 1, "bytes.sent": 4096,
                "some.new_thing": 3, "peers": 1, "members": 4}
    status = {"name": "a", "node_id": "00", "mesh_id": "11", "version": "1", "uptime_s": 3.5, "peers": 1,
              "members": 4, "workers": 0}
    fams = _families(prometheus_text(counters, status=status, peers=[PEER]))
    for name in ("dial_failed", "refused_other_mesh", "links_lost_timeout", "bytes_sent", "some_new_thing"):
        fam = fams[f"meshnode_{name}_total"]
        assert fam["type"] == "counter" and fam["help"], name
    assert "TLS handshake" in fams["meshnode_dial_failed_total"]["help"]
    assert "other mesh" in fams["meshnode_refused_other_mesh_total"]["help"]
    for name in ("peers", "members", "uptime_seconds", "peer_rtt_ms", "peer_queue_packets", "peer_queue_bytes"):
        assert fams[f"meshnode_{name}"]["type"] == "gauge", name
    assert fams["meshnode_peers"]["samples"] == ["meshnode_peers 1"]   # status and counters: one sample
    for name in ("bytes_in", "bytes_out", "packets_in", "packets_out", "dropped"):
        assert fams[f"meshnode_peer_{name}_total"]["type"] == "counter", name
    assert all(fam.get("help") for fam in fams.values())
    # a counter is never called what a gauge is, and only counters end in _total
    assert all(name.endswith("_total") == (fam["type"] == "counter") for name, fam in fams.items())


def test_prometheus_help_is_escaped() -> None:
    from meshnode.control import _help_text

    assert _help_text("a\\b\nc") == "a\\\\b\\nc"
