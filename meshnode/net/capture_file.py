"""Append capture records (wire.capture) to a file, for `meshnode inspect`.

Thread-free on purpose: records are buffered in memory and written with plain `os.write` from the
event loop in chunks of at most `flush_bytes` (256 KiB by default). Such a write only copies into the
page cache and takes tens of microseconds, far below anything that could delay a heartbeat, while a
writer thread would add a lock, a queue and shutdown ordering to get the same result. No fsync happens
on the loop except in `close()`, at shutdown.

The buffer is bounded: it is written out as soon as it holds `flush_bytes`, so it never holds more than
that plus one record; when a write fails the buffer is dropped, never kept growing. Data waiting in the
buffer goes out after at most `flush_interval` seconds (a timer on the running loop), on `flush()`,
and on `close()`, so nothing is lost on a clean shutdown.

A capture must never take the daemon down: a failed write (disk full, I/O error) is counted, logged
once, removes any half-written record from the end of the file, and turns the writer off. Only the
constructor raises (CaptureError), for problems an operator must fix before starting: the file cannot
be opened, is not a capture, or is damaged in the middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..metrics import Metrics
from ..wire.capture import CAPTURE_MAGIC, CaptureRecord, encode_record, iter_records
from ..wire.errors import Reason, WireError
from ..wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["CaptureError", "CaptureWriter"]

log = logging.getLogger(__name__)

FLUSH_BYTES = 256 * 1024
FLUSH_INTERVAL = 1.0


class CaptureError(Exception):
    """The capture file cannot be used; the message names the file and says why, in one line."""


class CaptureWriter:
    """Buffered, append-only capture file writer. See the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limits: Limits = DEFAULT_LIMITS,
        metrics: Metrics | None = None,
        flush_bytes: int = FLUSH_BYTES,
        flush_interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_bytes <= 0 or flush_interval <= 0:
            raise ValueError("flush_bytes and flush_interval must be > 0")
        self.path = Path(path)
        self._metrics = metrics
        self._flush_bytes = flush_bytes
        self._flush_interval = flush_interval
        self._clock = clock
        self._buffer = bytearray()
        self._pending = 0            # records in the buffer
        self._timer: asyncio.TimerHandle | None = None
        self._last_flush = clock()
        self.records = 0             # records written to the file
        self.bytes = 0               # bytes written to the file (headers included)
        self.dropped = 0             # records lost: writer off, write failed, or not encodable
        self.errors = 0              # failed writes
        self._fd: int | None = _open_locked(self.path)
        try:
            self._size = _prepare_existing(self._fd, self.path, limits)
        except BaseException:
            os.close(self._fd)
            raise
        if self._size == 0:
            self._buffer += CAPTURE_MAGIC  # a new file: the header goes out with the first flush

    @property
    def enabled(self) -> bool:
        """False once closed or turned off by a write error."""
        return self._fd is not None

    def write(self, record: CaptureRecord) -> None:
        """Queue one record. Never raises: a record that cannot be encoded or written is counted."""
        if self._fd is None:
            self._drop(1)
            return
        try:
            data = encode_record(record)
        except ValueError as e:  # a peer id or address the format cannot hold: skip this record only
            self._drop(1)
            log.warning("capture %s: record skipped: %s", self.path, e)
            return
        self._buffer += data
        self._pending += 1
        if len(self._buffer) >= self._flush_bytes or self._clock() - self._last_flush >= self._flush_interval:
            self.flush()
        else:
            self._arm_timer()

    def flush(self) -> None:
        """Write the buffer to the file now (no fsync). Never raises."""
        self._cancel_timer()
        self._last_flush = self._clock()
        if self._fd is None or not self._buffer:
            return
        data, records = bytes(self._buffer), self._pending
        self._buffer.clear()
        self._pending = 0
        try:
            _write_all(self._fd, data)
        except OSError as e:
            self.errors += 1
            self._count("capture.errors")
            self._drop(records)
            self._fail(e)
            return
        self._size += len(data)
        self.bytes += len(data)
        self.records += records
        self._count("capture.records", records)

    def close(self) -> None:
        """Flush, fsync and close. Idempotent; never raises."""
        self.flush()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            log.error("capture %s: fsync failed on close: %s", self.path, e.strerror or e)
        finally:
            os.close(fd)  # also releases the lock

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ helpers

    def _fail(self, e: OSError) -> None:
        fd, self._fd = self._fd, None
        assert fd is not None
        # Cut back to the last complete record so the file stays readable (and appendable) past
        # what was already on disk; freeing space usually lets this succeed even when disk is full.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, self._size)
        with contextlib.suppress(OSError):
            os.close(fd)
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        log.error("capture %s: write failed (%s); capture is off from now on, the daemon goes on", self.path,
                  reason)

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._count("capture.dropped", n)

    def _count(self, name: str, n: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.inc(name, n)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # used without an event loop (tools, tests): flush()/close() are the caller's job
        self._timer = loop.call_later(self._flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _open_locked(path: Path) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        raise CaptureError(f"capture file {path}: cannot open: {e.strerror or e}") from None
    try:
        # Two daemons appending to one file would interleave records into garbage.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CaptureError(f"capture file {path} is in use by another process") from None
    except OSError:
        pass  # a file system without flock (some network mounts): go on unlocked
    return fd


def _prepare_existing(fd: int, path: Path, limits: Limits) -> int:
    """Check an existing file before appending; returns its (possibly trimmed) size.

    A record cut short at the end (a daemon killed mid-write) is trimmed away, because appending
    after it would make every later record unreadable. Any other damage is the operator's call.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if size < len(CAPTURE_MAGIC) and CAPTURE_MAGIC.startswith(m[:size]):
                good = 0  # only part of the file header made it to disk
            else:
                good = _scan(m, path, limits)
    except OSError as e:
        raise CaptureError(f"capture file {path}: cannot read: {e.strerror or e}") from None
    if good < size:
        log.warning("capture %s: dropping a truncated record at the end (%d bytes at offset %d)", path,
                    size - good, good)
        try:
            os.ftruncate(fd, good)
        except OSError as e:
            raise CaptureError(f"capture file {path}: cannot trim its truncated end: {e.strerror or e}") \
                from None
    return good


def _scan(data: mmap.mmap, path: Path, limits: Limits) -> int:
    end = len(CAPTURE_MAGIC)
    problem = None
    records = iter_records(data, limits=limits)
    try:
        # The byte layout belongs to wire.capture; the size of a record is what encode_record gives.
        for record in records:
            end += len(encode_record(record))
    except WireError as e:
        if e.reason != Reason.TRUNCATED:
            problem = str(e)
    finally:
        records.close()  # drop the generator's view of the map before the map is closed
    if problem is not None:
        raise CaptureError(f"{path} cannot be appended to ({problem}); move it away or pick another "
                           "capture file")
    return end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:  # no progress and no error: treat as a full device rather than spin
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
