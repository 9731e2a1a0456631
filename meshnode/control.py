"""The local control API that `meshnode status`, `peers`, `workers`, `counters` and `metrics` talk to.

A unix socket in the node's data directory (`control.socket` in node.toml), mode 0600, so only the
user running the daemon (and root) can ask. The protocol is newline-delimited JSON, one request line
and one response line, as many pairs as the client likes on one connection:

    -> {"cmd": "status"}
    <- {"ok": true, "result": {...}}      or      {"ok": false, "error": "unknown cmd 'x' ..."}

HTTP would buy nothing here (no browser, no proxy, no auth beyond file permissions) and cost a parser.
docs/CONTROL.md documents every command's result. Nothing a client sends can hurt the daemon: requests
are bounded (MAX_REQUEST), clients are bounded (max_clients) and time out when idle, every failure is
answered or ends only that connection, and a provider that raises gives an error response.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import re
import socket
import stat
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from .metrics import Metrics

__all__ = [
    "COMMANDS",
    "ARG_COMMANDS",
    "MAX_CLASSIFY_CHARS",
    "MAX_CLASSIFY_TEXTS",
    "MAX_REQUEST",
    "MAX_RESPONSE",
    "ControlError",
    "ControlProvider",
    "ControlServer",
    "ControlUnavailable",
    "prometheus_text",
    "query",
    "query_sync",
]

log = logging.getLogger(__name__)

COMMANDS = ("status", "peers", "workers", "counters", "metrics")
# Commands that take arguments besides "cmd"; the provider may lack them (then: a clear error).
#   {"cmd": "classify", "texts": [str, ...], "worker": str (optional)} -> provider.classify(texts, worker)
ARG_COMMANDS = ("classify",)
# A request is one short JSON object; anything near this size is a bug or an attack.
MAX_REQUEST = 64 * 1024
# Responses grow with the peer and worker tables (max_peers is 64 by default: a few tens of KiB);
# the cap only stops a client from buffering without end if something goes badly wrong.
MAX_RESPONSE = 16 * 1024 * 1024
MAX_CLIENTS = 32
IDLE_TIMEOUT = 30.0   # seconds a connection may sit without sending a full request
SEND_TIMEOUT = 10.0   # seconds a client may take to read a response before it is dropped


class ControlError(Exception):
    """The control API could not be used: the daemon answered with an error, or answered nonsense.
    The message is one line, fit to print as is."""


MAX_CLASSIFY_TEXTS = 1024
MAX_CLASSIFY_CHARS = 20000


def check_classify_texts(texts: object) -> None:
    """The bounds every worker that classifies applies to what it is asked (the control API or a
    direct caller): a non-empty list of at most MAX_CLASSIFY_TEXTS strings of at most
    MAX_CLASSIFY_CHARS characters. Raises ControlError (one line)."""
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ControlError("texts must be a non-empty list of strings")
    if len(texts) > MAX_CLASSIFY_TEXTS or any(len(t) > MAX_CLASSIFY_CHARS for t in texts):
        raise ControlError(f"at most {MAX_CLASSIFY_TEXTS} texts of at most {MAX_CLASSIFY_CHARS} characters")


class ControlUnavailable(ControlError):
    """No daemon answers on the socket (missing, refused, permission denied, or no answer in time)."""


class ControlProvider(Protocol):
    """What the daemon (node.py) exposes; each method may also be `async`. Shapes: docs/CONTROL.md."""

    def status(self) -> dict[str, Any]:
        """{node_id, name, mesh_id, version, listen, uptime_s, peers, members, member_list, workers, data_dir, ...}"""

    def peers(self) -> list[dict[str, Any]]:
        """One dict per peer link: {node_id, name, address, direction, state, rtt_ms, ...}."""

    def workers(self) -> list[dict[str, Any]]:
        """One dict per worker: {name, type, state, status, metrics}."""

    def counters(self) -> dict[str, int | float]:
        """Flat {dotted.name: number}, e.g. {"refused.other_mesh": 2}."""


# ------------------------------------------------------------------------------------------ server


class ControlServer:
    """Serve a ControlProvider on a unix socket; `await start()` once, `await stop()` on shutdown."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        provider: ControlProvider,
        *,
        metrics: Metrics | None = None,
        max_clients: int = MAX_CLIENTS,
        max_request: int = MAX_REQUEST,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._path = Path(path)
        self._provider = provider
        self._metrics = metrics
        self._max_clients = max_clients
        self._max_request = max_request
        self._idle_timeout = idle_timeout
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._inode: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        """Create the socket; raises ControlError (one line) when that is impossible or unsafe."""
        if self._server is not None:
            raise RuntimeError("control server already started")
        _prepare_directory(self._path.parent)
        _remove_stale_socket(self._path)
        # We bind ourselves instead of passing the path to start_unix_server, because asyncio would
        # silently unlink whatever socket is at the path - including a live daemon's.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(os.fspath(self._path))
            except OSError as e:
                raise ControlError(f"cannot create control socket {self._path}: {e.strerror or e}") from None
            # Nobody can connect before listen(), so chmod-ing after bind leaves no open window; the
            # directory (checked above) keeps others from swapping the file in between.
            os.chmod(self._path, 0o600)
            st = os.stat(self._path)
            self._inode = (st.st_dev, st.st_ino)
            self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=self._max_request)
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("control API listening on %s", self._path)

    async def stop(self) -> None:
        """Stop accepting, end every open connection, remove the socket file. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            await asyncio.gather(*clients, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._unlink_own_socket()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _unlink_own_socket(self) -> None:
        # Only remove the file if it is still the socket we made (a second daemon that failed to
        # start must not delete the first one's socket).
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self._path)
        self._inode = None

    def _count(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(f"control.{name}")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if len(self._clients) >= self._max_clients or task is None:
                self._count("refused")
                await self._send(writer, _error(f"too many control clients (at most {self._max_clients})"))
                return
            self._clients.add(task)
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop() ends connections by cancelling them; the handler task ends quietly
        except Exception:  # never expected; logged so a bug here is visible, and the daemon goes on
            log.exception("control connection failed")
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
        # its inner task finishes, and stop() would then wait for the idle timeout.
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    line = await reader.readline()
            except TimeoutError:
                return
            except ValueError:  # StreamReader's limit: the line is longer than max_request
                self._count("errors")
                await self._send(writer, _error(f"request longer than {self._max_request} bytes"))
                return
            except ConnectionError:
                return
            if not line:
                return
            # A last line without "\n" (the client half-closed after writing) is still answered,
            # so `printf '{"cmd":"status"}' | nc -U control.sock` works.
            response = await self._respond(line)
            if not await self._send(writer, response) or not line.endswith(b"\n"):
                return

    async def _respond(self, line: bytes) -> dict[str, Any]:
        self._count("requests")
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting is not
            self._count("errors")
            return _error('request is not JSON; send one line like {"cmd": "status"}')
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self._count("errors")
            return _error('request must be a JSON object with a string "cmd", like {"cmd": "status"}')
        cmd = request["cmd"]
        if cmd not in COMMANDS and cmd not in ARG_COMMANDS:
            self._count("errors")
            shown = cmd if len(cmd) <= 40 else cmd[:40] + "..."
            return _error(f"unknown cmd {shown!r} (known: {', '.join(COMMANDS + ARG_COMMANDS)})")
        try:
            result = await (self._run(cmd) if cmd in COMMANDS else self._run_with_args(cmd, request))
        except ControlError as e:  # the provider refused this request (bad arguments, not ready): no bug
            self._count("errors")
            return _error(str(e))
        except Exception as e:  # a provider bug must not end the daemon, only this answer
            self._count("errors")
            log.exception("control command %r failed", cmd)
            return _error(f"{cmd} failed inside the daemon: {type(e).__name__}: {e}")
        return {"ok": True, "result": result}

    async def _run(self, cmd: str) -> Any:
        if cmd == "metrics":
            status = await self._call("status")
            peers = await self._call("peers")
            return prometheus_text(await self._call("counters"), status=status, peers=peers)
        return await self._call(cmd)

    async def _run_with_args(self, cmd: str, request: dict[str, Any]) -> Any:
        method = getattr(self._provider, cmd, None)
        if method is None:
            raise ControlError(f"this daemon does not serve {cmd!r}")
        texts, worker = request.get("texts"), request.get("worker")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ControlError('classify needs "texts": a non-empty list of strings')
        if worker is not None and not isinstance(worker, str):
            raise ControlError('"worker" must be a string (a worker name)')
        result = method(texts, worker=worker)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _call(self, name: str) -> Any:
        result = getattr(self._provider, name)()
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _send(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> bool:
        try:
            data = _encode(response)
        except (TypeError, ValueError, RecursionError) as e:
            log.error("control response cannot be encoded as JSON: %s", e)
            data = _encode(_error(f"the daemon produced a response that is not JSON ({e})"))
        if len(data) > MAX_RESPONSE:
            data = _encode(_error(f"response of {len(data)} bytes is over the {MAX_RESPONSE}-byte limit"))
        try:
            writer.write(data)
            async with asyncio.timeout(SEND_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError, OSError):
            return False
        return True


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _jsonable(value: Any) -> Any:
    # The provider may hand over ids as bytes, paths, enums or sets; JSON gets their plain forms.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, default=_jsonable, separators=(",", ":")).encode("utf-8") + b"\n"


def _prepare_directory(directory: Path) -> None:
    """Create the socket's directory (0700) or check that only this user can write the existing one:
    otherwise another user could replace the socket with their own and answer our CLI."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(directory)
    except OSError as e:
        raise ControlError(f"cannot create directory {directory} for the control socket: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"{directory} is not a directory (control socket)")
    if st.st_uid != os.geteuid():
        raise ControlError(f"{directory} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
                           "refusing to put the control socket there")
    if st.st_mode & 0o022:
        raise ControlError(f"{directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                           "`chmod go-w` it or choose another control.socket")


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse if a daemon still listens or it is no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ControlError(f"cannot check {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        pass  # nobody listens: a leftover from a crashed daemon
    except TimeoutError:
        raise ControlError(f"{path} is in use by a daemon that does not answer; is another meshnode running?") \
            from None
    except OSError as e:
        raise ControlError(f"cannot check control socket {path}: {e.strerror or e}") from None
    else:
        raise ControlError(f"another daemon is already listening on {path}")
    finally:
        probe.close()
    log.warning("removing stale control socket %s (left by a daemon that did not stop cleanly)", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---------------------------------------------------------------------------------- Prometheus text


_METRIC_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    return "meshnode_" + _METRIC_BAD.sub("_", name)


def _sample_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None  # strings, None, nested values: not a sample


def _label_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_text(text: str) -> str:
    # HELP lines escape backslash and line feed (not quotes), per the text format.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Families:
    """Metric families in first-seen order; all samples of one family stay together, as the text
    format requires, and a (name, labels) pair seen twice keeps its first value."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, dict[tuple[tuple[str, str], ...], str]]] = {}

    def add(self, name: str, value: Any, *, kind: str = "gauge", help: str = "",
            labels: Iterable[tuple[str, Any]] = ()) -> None:
        text = _sample_value(value)
        if text is None:
            return
        _, _, samples = self._families.setdefault(name, (kind, help, {}))
        samples.setdefault(tuple((k, _label_value(v)) for k, v in labels), text)

    def render(self) -> str:
        out: list[str] = []
        for name, (kind, help, samples) in self._families.items():
            if help:
                out.append(f"# HELP {name} {_help_text(help)}")
            out.append(f"# TYPE {name} {kind}")
            for labels, text in samples.items():
                shown = "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""
                out.append(f"{name}{shown} {text}")
        return "\n".join(out) + "\n" if out else ""


# (field of a peer's stats, metric, type, help). Bytes and packets only grow while a link lasts; a new
# link starts again at 0, which Prometheus reads as a counter reset.
_PEER_SAMPLES = (
    ("rtt_ms", "meshnode_peer_rtt_ms", "gauge", "Round-trip time to the peer, milliseconds."),
    ("connected_s", "meshnode_peer_connected_s", "gauge", "Seconds since the link to the peer came up."),
    ("bytes_in", "meshnode_peer_bytes_in_total", "counter", "Bytes received from the peer on this link."),
    ("bytes_out", "meshnode_peer_bytes_out_total", "counter", "Bytes sent to the peer on this link."),
    ("packets_in", "meshnode_peer_packets_in_total", "counter", "Packets received from the peer on this link."),
    ("packets_out", "meshnode_peer_packets_out_total", "counter", "Packets sent to the peer on this link."),
)

# The counters answer also carries a few current values; everything else in it only grows.
_GAUGES = {
    "peers": "Open peer links.",
    "members": "Mesh members this node knows (holds a certified hello of), linked or not.",
    "overlay.eager": "Links that packets are pushed on (the gossip overlay's eager links).",
    "overlay.lazy": "Links that get packet ids only, and pull what they miss.",
}
_COUNTER_HELP = {
    "dial.failed": "Dials that did not reach a TLS handshake (refused, unreachable, timeout).",
    "workers.errors": "Workers that failed to start or to stop.",
    "workers.handler_errors": "Packet handlers of workers that raised.",
    "log.held_back": "Log lines held back because the same event repeated (see the log for the first).",
}
# Families named by a prefix and a reason: the help says what the prefix counts, the rest is the reason.
_COUNTER_PREFIX_HELP = (
    ("refused.", "Connections refused before any packet was read, reason: {}."),
    ("dropped.evicted_", "Queued packets pushed out of a full send queue, class: {}."),
    ("dropped.member_", "Member announcements refused, reason: {}."),
    ("dropped.", "Packets dropped, all peers together, reason: {}."),
    ("links.lost.", "Links lost, reason: {}."),
    ("links.", "Links {}."),
    ("packets.", "Packets {}, all peers together."),
    ("bytes.", "Bytes {} over peer links, all links together."),
    ("discovery.", "mDNS discovery: {}."),
    ("capture.", "Packet capture: {}."),
    ("control.", "Control API: {}."),
)


def _counter_help(name: str) -> str:
    if name in _COUNTER_HELP:
        return _COUNTER_HELP[name]
    for prefix, text in _COUNTER_PREFIX_HELP:
        if name.startswith(prefix) and len(name) > len(prefix):
            return text.format(name[len(prefix):].replace("_", " "))
    return f"Counter {name} of the daemon."


def prometheus_text(
    counters: Mapping[str, Any],
    *,
    status: Mapping[str, Any] | None = None,
    peers: Iterable[Mapping[str, Any]] = (),
) -> str:
    """Prometheus text exposition (format 0.0.4) of the control API's data.

    Each counter `a.b` becomes `meshnode_a_b_total`, typed `counter`, with a `# HELP` line; the current
    values in the counters answer (`peers`, `members`) and in status are gauges. Peers become labelled
    series: rtt and link age as gauges, traffic and drops as counters.
    """
    fam = _Families()
    if status is not None:
        fam.add("meshnode_up", 1, help="1 while the daemon answers.")
        fam.add("meshnode_info", 1, help="Who this daemon is.", labels=[
            (k, status.get(k, "")) for k in ("node_id", "name", "mesh_id", "version")])
        fam.add("meshnode_uptime_seconds", status.get("uptime_s"), help="Seconds since the daemon started.")
        fam.add("meshnode_peers", status.get("peers"), help=_GAUGES["peers"])
        fam.add("meshnode_members", status.get("members"), help=_GAUGES["members"])
        fam.add("meshnode_workers", status.get("workers"), help="Configured workers.")
    for peer in peers:
        labels = [("peer", str(peer.get("node_id", ""))[:16]), ("name", peer.get("name", "")),
                  ("direction", peer.get("direction", ""))]
        for key, metric, kind, help in _PEER_SAMPLES:
            fam.add(metric, peer.get(key), kind=kind, help=help, labels=labels)
        queue = peer.get("queue") or {}
        fam.add("meshnode_peer_queue_packets", queue.get("packets"), help="Packets waiting to be sent.",
                labels=labels)
        fam.add("meshnode_peer_queue_bytes", queue.get("bytes"), help="Bytes waiting to be sent.",
                labels=labels)
        for reason, n in sorted((peer.get("dropped") or {}).items()):
            fam.add("meshnode_peer_dropped_total", n, kind="counter",
                    help="Packets from or to the peer dropped on this link, by reason.",
                    labels=[*labels, ("reason", reason)])
    for name, value in sorted(counters.items()):
        if name in _GAUGES:
            fam.add(_metric_name(name), value, help=_GAUGES[name])
        elif isinstance(value, bool):   # a flag, not a count
            fam.add(_metric_name(name), value, help=f"Flag {name} of the daemon.")
        else:
            fam.add(_metric_name(name) + "_total", value, kind="counter", help=_counter_help(name))
    return fam.render()


# ------------------------------------------------------------------------------------------ client


async def query(path: str | os.PathLike[str], cmd: str, *, timeout: float = 5.0, **args: Any) -> Any:
    """Send one command (with `args` as further request keys) to the daemon at `path`; return its result.

    Raises ControlUnavailable when no daemon answers, ControlError when it answers with an error.
    """
    where = os.fspath(path)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(where, limit=MAX_RESPONSE)
            try:
                writer.write(json.dumps({"cmd": cmd, **args}).encode("utf-8") + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:  # before OSError: TimeoutError is one
        raise ControlUnavailable(f"no answer from the daemon on {where} within {timeout:g} s") from None
    except FileNotFoundError:
        raise ControlUnavailable(f"no daemon: {where} does not exist (is `meshnode run` running?)") from None
    except ConnectionRefusedError:
        raise ControlUnavailable(f"no daemon listens on {where} (left over from a daemon that stopped?)") \
            from None
    except PermissionError:
        raise ControlUnavailable(f"permission denied on {where} (ask as the user that runs the daemon)") \
            from None
    except ValueError:
        raise ControlError(f"the daemon's answer on {where} is over {MAX_RESPONSE} bytes") from None
    except OSError as e:
        raise ControlUnavailable(f"cannot reach the daemon on {where}: {e.strerror or e}") from None
    if not line.endswith(b"\n"):
        raise ControlUnavailable(f"the daemon on {where} closed the connection without a complete answer")
    try:
        response = json.loads(line)
    except (ValueError, RecursionError):
        raise ControlError(f"the daemon on {where} answered something that is not JSON") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise ControlError(f"the daemon on {where} answered without an \"ok\" field")
    if not response["ok"]:
        raise ControlError(str(response.get("error") or "the daemon reported an error without a message"))
    return response.get("result")


def query_sync(path: str | os.PathLike[str], cmd: str, *, timeout: float = 5.0, **args: Any) -> Any:
    """`query` for code without an event loop (the CLI)."""
    return asyncio.run(query(path, cmd, timeout=timeout, **args))
