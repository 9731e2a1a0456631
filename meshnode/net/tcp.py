"""The real transport: TCP + TLS 1.3 with mutual certificates (net/tls.py), implementing net/transport.py.

Accepting: the listener takes plain TCP connections and runs the TLS handshake itself
(`StreamWriter.start_tls`) instead of letting asyncio do it inside `start_server(ssl=...)`, because a
failed server-side handshake there is only logged by asyncio and never reaches our code: a peer of
another mesh, a client without a certificate or a port scanner would leave no trace in the counters.
Here every refusal is reported to `on_refused(reason, address, detail)` before any packet is read,
with a stable reason:

    other_mesh       the certificate does not chain to our mesh CA
    forged           it names our CA but its signature does not verify (or its node id does not match its key)
    expired / not_yet_valid    outside its validity window
    no_certificate   the client sent none
    bad_certificate  anything else wrong with the certificate
    not_tls          the bytes are not a TLS 1.3 handshake (random bytes, HTTP, TLS 1.2...)
    handshake_timeout  no complete handshake in time
    silent           not a byte within `silent_timeout` (shorter than the handshake timeout: a real
                     client sends its ClientHello at once, a slot-holding flood sends nothing)
    busy             too many handshakes in progress (a cheap flood must not exhaust the daemon)
    busy_source      too many handshakes in progress from this source (IPv4 address, IPv6 /64), so
                     that one host cannot hold the slots every other node needs (net/admission.py)
    early_drop       dropped at random because the handshake table is filling up (net/admission.py)
    aborted          the other end broke off the handshake: in TLS 1.3 a client checks our certificate first,
                     so this is what a node of another mesh dialling us looks like from our side
    disconnected     any other network error during the handshake

Dialling raises `HandshakeRefused` (a TransportError with the same `reason`) for the same problems on
the server's certificate, and a plain TransportError when the TCP connection itself fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from ..identity import IdentityError, NodeIdentity, PeerInfo
from ..log_limit import LogLimiter
from . import admission as adm
from . import tls
from .admission import Admitted, HandshakeAdmission
from .transport import StreamHandler, TransportError

__all__ = ["HandshakeRefused", "TlsListener", "TlsStream", "TlsTransport", "format_address"]

log = logging.getLogger(__name__)

MAX_HANDSHAKES = adm.MAX_HANDSHAKES
MAX_HANDSHAKES_PER_SOURCE = adm.MAX_HANDSHAKES_PER_SOURCE
MAX_REACHED = 1024
RefusalHandler = Callable[[str, str, str], None]

# OpenSSL X509_V_ERR_* codes -> our refusal reasons.
_VERIFY_REASONS = {
    2: "other_mesh", 18: "other_mesh", 19: "other_mesh", 20: "other_mesh", 21: "other_mesh",
    7: "forged",
    9: "not_yet_valid",
    10: "expired",
}


class HandshakeRefused(TransportError):
    """The TLS handshake or the certificate check failed; `reason` is one of the codes above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _os_reason(e: OSError) -> str:
    # asyncio words a failed connect as "Connect call failed ('10.0.0.5', 7400)"; the errno says what
    # happened (Connection refused, No route to host). Resolver errors carry their own negative codes.
    if isinstance(e.errno, int) and e.errno > 0 and not isinstance(e, socket.gaierror):
        return os.strerror(e.errno)
    return str(e.strerror or e)


def format_address(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername) if peername else "?"


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        return _VERIFY_REASONS.get(code, "bad_certificate"), str(getattr(exc, "verify_message", exc))
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
            return "no_certificate", "the peer presented no certificate"
        if "UNKNOWN_CA" in text or "CERTIFICATE_UNKNOWN" in text or "BAD_CERTIFICATE" in text:
            return "other_mesh", "the peer does not accept our certificate (another mesh?)"
        return "not_tls", str(exc.reason or exc)
    if isinstance(exc, TimeoutError):
        return "handshake_timeout", "no complete TLS handshake in time"
    if isinstance(exc, IdentityError):
        return exc.reason.value, str(exc)
    if isinstance(exc, (ConnectionResetError, EOFError, BrokenPipeError)):
        # In TLS 1.3 the client checks our certificate before it sends its own, so a node of another
        # mesh dialling us breaks off here (its alert usually dies with the reset); it counts other_mesh.
        return "aborted", "the peer broke off the handshake (often: it does not trust our mesh CA)"
    return "disconnected", f"{type(exc).__name__}: {exc}"


def _host_of(address: str) -> str:
    """"10.0.0.5:7400" -> "10.0.0.5", "[fe80::1]:7400" -> "[fe80::1]"."""
    return address.rsplit(":", 1)[0]


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): for connections we refuse before reading them."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float) -> bool:
    """Wait until the client has sent something (or closed: the handshake then fails at once with its
    own reason). False after `timeout` seconds of silence. Nothing is read, so the TLS layer still sees
    the whole ClientHello."""
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, on_readable)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


class TlsStream:
    """An authenticated TLS stream (the Stream protocol)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: PeerInfo, der: bytes,
                 address: str) -> None:
        self._reader = reader
        self._writer = writer
        self.info = info
        self._der = der
        self._address = address

    @property
    def peer_node_id(self) -> bytes:
        return self.info.node_id

    @property
    def peer_certificate(self) -> bytes | None:
        return self._der

    @property
    def peer_address(self) -> str:
        return self._address

    async def read(self, max_bytes: int = 1 << 16) -> bytes:
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("read from %s failed: %s", self._address, e)
            return b""

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        """Close now, dropping unsent data (a peer that does not read would keep close() waiting)."""
        self._writer.transport.abort()

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._writer.wait_closed()


class TlsListener:
    """Our own accept loop on a listening socket (see TlsTransport.listen for why)."""

    def __init__(self, sock: socket.socket, owner: TlsTransport, handler: StreamHandler) -> None:
        self._sock = sock
        self._owner = owner
        self._port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(owner._accept_loop(sock, handler),
                                                            name=f"listen:{self._port}")

    @property
    def port(self) -> int:
        return self._port

    def close(self) -> None:
        self._task.cancel()
        for task in list(self._owner._accepting):
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        tasks = [self._task, *self._owner._accepting]
        await asyncio.gather(*tasks, return_exceptions=True)


class TlsTransport:
    """TCP + TLS 1.3, both sides authenticated by the mesh CA. See the module docstring."""

    def __init__(self, identity: NodeIdentity, *, on_refused: RefusalHandler | None = None,
                 handshake_timeout: float = tls.HANDSHAKE_TIMEOUT, silent_timeout: float = tls.SILENT_TIMEOUT,
                 max_handshakes: int = MAX_HANDSHAKES, max_handshakes_per_source: int = MAX_HANDSHAKES_PER_SOURCE,
                 admission: HandshakeAdmission | None = None, rng: random.Random | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.on_refused = on_refused
        self.handshake_timeout = handshake_timeout
        self.silent_timeout = min(silent_timeout, handshake_timeout)
        # Who may start a handshake (per source, early drop, in all): net/admission.py, sans-IO.
        self.admission = admission if admission is not None else HandshakeAdmission(
            max_total=max_handshakes, per_source=max_handshakes_per_source,
            early_drop_start=min(adm.EARLY_DROP_START, max_handshakes), rng=rng)
        self._now = now
        self._server_ctx = tls.server_context(identity)
        self._client_ctx = tls.client_context(identity)
        self._accepting: set[asyncio.Task[None]] = set()
        # Only used without an on_refused owner: refusals are caused by strangers, so even our own
        # fallback lines are bounded per source and reason, with the count of those held back.
        self._log_limit = LogLimiter(time.monotonic)
        # (host, port) -> node id of the last certificate verified there by a dial of ours: what an mDNS
        # hint turned out to be (net/hints.py). Bounded, least recently reached forgotten.
        self.reached: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    @property
    def max_handshakes(self) -> int:
        return self.admission.max_total

    @property
    def handshakes_in_progress(self) -> int:
        return self.admission.in_progress

    def _refused(self, reason: str, address: str, detail: str) -> None:
        if self.on_refused is None:
            # By host, not host:port: a stranger reconnecting comes from a new port every time.
            held = self._log_limit.allow(_host_of(address), reason)
            if held is not None:
                note = f"; {held} more like it since the last report" if held else ""
                log.warning("refused %s: %s (%s)%s", address, reason, detail, note)
        else:  # the owner logs it (the daemon: bounded per address and reason), once rather than twice
            try:
                self.on_refused(reason, address, detail)
            except Exception:  # a faulty counter must not stop the listener
                log.exception("on_refused callback failed")

    def _verify(self, writer: asyncio.StreamWriter) -> tuple[PeerInfo, bytes]:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        info = tls.peer_info(ssl_object, self.identity, now=self._now())
        return info, der or b""

    async def listen(self, host: str, port: int, handler: StreamHandler) -> TlsListener:
        """Accept on host:port (port 0: a free one). The accept loop is ours and each handshake runs through
        `loop.connect_accepted_socket(ssl=...)`, which raises on a failed handshake: with
        `start_server(ssl=...)` a failed handshake is only logged by asyncio and never reaches us, and
        `StreamWriter.start_tls` loses the ClientHello under uvloop (which reads before it can be paused)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=128,
                                        dualstack_ipv6=host in ("::", "") and socket.has_dualstack_ipv6())
        except OSError as e:
            raise TransportError(f"cannot listen on {format_address((host, port))}: {e.strerror or e}") from None
        sock.setblocking(False)
        return TlsListener(sock, self, handler)

    async def _accept_loop(self, sock: socket.socket, handler: StreamHandler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peername = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", e.strerror or e)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            address = format_address(peername)
            decision = self.admission.admit(peername[0] if isinstance(peername, tuple) else str(peername))
            if not isinstance(decision, Admitted):
                # Decided before any byte is read or any task exists: a refused flood costs an accept
                # and a close. A reset rather than a FIN, so that no TIME_WAIT piles up on our side.
                self._refused(decision.reason, address, decision.detail)
                _reset(conn)
                continue
            task = loop.create_task(self._serve(conn, address, handler, decision))
            self._accepting.add(task)     # while handshaking; _serve removes it once authenticated
            task.add_done_callback(self._accepting.discard)

    async def _serve(self, conn: socket.socket, address: str, handler: StreamHandler, ticket: Admitted) -> None:
        try:
            stream = await self._handshake(conn, address)
        except asyncio.CancelledError:
            conn.close()
            raise
        finally:
            self.admission.release(ticket)
        if stream is None:
            return
        # Past the handshake: closing the listener no longer cancels this connection (the node closes
        # its links itself, with a bye).
        self._accepting.discard(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(stream)
        except asyncio.CancelledError:
            stream.close()
            raise
        except Exception:
            log.exception("connection from %s failed", address)
            stream.close()

    async def _handshake(self, conn: socket.socket, address: str) -> TlsStream | None:
        """The server side of the handshake; the caller holds an admission ticket for it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not await _readable(loop, conn, self.silent_timeout):
            self._refused("silent", address, f"not a byte within {self.silent_timeout:g} s")
            _reset(conn)
            return None
        remaining = max(0.001, self.handshake_timeout - (loop.time() - started))
        reader = asyncio.StreamReader(limit=1 << 16, loop=loop)
        # Our own reference: uvloop returns its SSL protocol instead of ours from connect_accepted_socket.
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(remaining):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self._server_ctx, ssl_handshake_timeout=remaining)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            info, der = self._verify(writer)
        except (OSError, ssl.SSLError, TimeoutError, IdentityError, EOFError) as e:
            reason, detail = _classify(e)
            self._refused(reason, address, detail)
            if writer is not None:
                # abort, not close: a closing SSL transport keeps the descriptor registered with the loop
                # while it shuts down, and the next accepted socket, given the same number, then fails
                # in add_reader ("used by transport") and hangs unrefused.
                writer.transport.abort()
            else:
                conn.close()
            return None
        return TlsStream(reader, writer, info, der, address)

    async def connect(self, host: str, port: int, *, timeout: float) -> TlsStream:
        address = format_address((host, port))
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._client_ctx, server_hostname=host,
                    ssl_handshake_timeout=min(timeout, self.handshake_timeout))
        except ssl.SSLError as e:
            reason, detail = _classify(e)
            self._refused(reason, address, detail)
            raise HandshakeRefused(reason, f"{address}: {detail}") from None
        except TimeoutError:
            raise TransportError(f"{address}: no connection within {timeout:g} s") from None
        except OSError as e:
            raise TransportError(f"{address}: {_os_reason(e)}") from None
        try:
            info, der = self._verify(writer)
        except IdentityError as e:
            writer.close()
            reason, detail = _classify(e)
            self._refused(reason, address, detail)
            raise HandshakeRefused(reason, f"{address}: {detail}") from None
        self.reached[(host, port)] = info.node_id
        self.reached.move_to_end((host, port))
        while len(self.reached) > MAX_REACHED:
            self.reached.popitem(last=False)
        return TlsStream(reader, writer, info, der, address)
