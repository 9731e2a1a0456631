"""One zip archive cut into parts (`x.zip.001`, `x.zip.002`, ...): read it in place and extract it safely.

The parts are read as one seekable stream (`ConcatReader`), so reassembly copies nothing, neither to
memory nor to disk. `extract_once` unpacks the archive into a fresh temporary directory next to the
destination and renames it into place, so a reader sees either no directory or a complete one, and
two processes racing each other both end with the same complete directory. Archives are treated as
hostile: absolute or `..` member names, too many members, or more bytes than `max_bytes` are refused
before (and, for sizes, also while) anything is written.
"""

from __future__ import annotations

import bisect
import io
import os
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

__all__ = ["ArchiveError", "ConcatReader", "extract_once", "safe_member_path"]

_COPY_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive is malformed or hostile (bad member name, too big, not a zip)."""


class ConcatReader(io.RawIOBase):
    """Several files read as one seekable byte stream, in the given order."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self.size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            want = min(len(view) - done, self._starts[i] + self._sizes[i] - self._pos)
            got = f.readinto(view[done:done + want])
            if not got:  # a part shrank under us
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path a member may be written to; ArchiveError for absolute, `..` or odd names."""
    if not name or "\x00" in name or "\\" in name:
        raise ArchiveError(f"archive member {name!r}: empty name, NUL or backslash")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part == ".." for part in path.parts) or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"archive member {name!r} would be written outside the destination")
    return path


def _check(archive: zipfile.ZipFile, max_bytes: int, max_members: int) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"archive has {len(infos)} members, more than the {max_members} allowed")
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise ArchiveError(f"archive would unpack to {declared} bytes, more than the {max_bytes} allowed")
    return [(info, safe_member_path(info.filename)) for info in infos]


def _extract(archive: zipfile.ZipFile, dest: Path, max_bytes: int, max_members: int) -> None:
    written = 0
    for info, rel in _check(archive, max_bytes, max_members):
        target = dest.joinpath(*rel.parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # zipfile stops at the declared size and checks the CRC; the count guards the total anyway
        try:
            out = open(target, "xb")  # noqa: SIM115 - closed below
        except FileExistsError as e:
            raise ArchiveError(f"archive member {info.filename!r} appears twice") from e
        with archive.open(info) as src, out:
            while chunk := src.read(_COPY_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise ArchiveError(f"archive unpacks to more than the {max_bytes} bytes allowed")
                out.write(chunk)


def extract_once(parts: Sequence[Path], dest: Path, *, max_bytes: int, max_members: int = 10_000) -> Path:
    """Unpack the zip cut into `parts` to `dest` unless `dest` exists; returns `dest`.

    `dest` only ever appears by renaming a completely extracted temporary directory, so its existence
    means it is complete.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        with ConcatReader(parts) as raw:
            if raw.size > max_bytes:
                raise ArchiveError(f"archive parts hold {raw.size} bytes, more than the {max_bytes} allowed")
            try:
                with zipfile.ZipFile(io.BufferedReader(raw, _COPY_CHUNK)) as archive:
                    _extract(archive, tmp, max_bytes, max_members)
            except ArchiveError:
                raise
            # not a zip, bad CRC, truncated member, offsets pointing before the start
            except (zipfile.BadZipFile, EOFError, ValueError) as e:
                raise ArchiveError(f"the parts do not form a valid zip archive: {e}") from e
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
