"""Safe extraction of a bundle archive into a fresh directory.

Every entry is checked before anything is written, and sizes are counted
while writing (a zip header may lie): no absolute paths, no `..`, no
symlinks, devices, FIFOs or sockets, no encrypted or duplicate entries, at
most `max_entries` entries and `max_total_bytes` uncompressed, and no entry
over 1 MiB that inflates more than `max_ratio` times (a zip bomb).  Each
refusal names the bundle and the entry.  The caller extracts into a temporary
directory and renames it into place only after verification.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["ExtractLimits", "UnsafeBundle", "extract_zip"]

#: Small entries are exempt from the ratio check: a 10 KiB file of spaces is no bomb.
RATIO_FLOOR = 1024 * 1024
_CHUNK = 64 * 1024


class UnsafeBundle(Exception):
    """The archive is malformed or would write outside its directory or its limits."""


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    max_entries: int = 1000
    max_total_bytes: int = 128 * 1024 * 1024
    max_ratio: int = 200


def _check_entry(info: zipfile.ZipInfo, bundle: str, limits: ExtractLimits) -> PurePosixPath:
    name = info.filename
    where = f"bundle {bundle!r}: unsafe entry {name!r}"
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if "\x00" in name or not clean.strip("/"):
        raise UnsafeBundle(f"{where}: invalid name")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeBundle(f"{where}: absolute path")
    if ".." in path.parts:
        raise UnsafeBundle(f"{where}: '..' would leave the bundle directory")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeBundle(f"{where}: symbolic link")
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeBundle(f"{where}: device, FIFO or socket")
    if info.flag_bits & 0x1:
        raise UnsafeBundle(f"{where}: encrypted")
    if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(
            info.compress_size, 1):
        raise UnsafeBundle(f"{where}: inflates {info.file_size // max(info.compress_size, 1)}"
                           f" times (limit max_ratio {limits.max_ratio}): a zip bomb?")
    return path


def extract_zip(data: bytes, target: Path, bundle: str, limits: ExtractLimits) -> list[str]:
    """Extract `data` (a zip) into the empty directory `target`; the file names written."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UnsafeBundle(f"bundle {bundle!r}: not a zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeBundle(f"bundle {bundle!r}: {len(infos)} entries (limit max_entries "
                               f"{limits.max_entries})")
        paths = [_check_entry(info, bundle, limits) for info in infos]
        seen: set[str] = set()
        for path, info in zip(paths, infos, strict=True):
            if str(path) in seen:
                raise UnsafeBundle(f"bundle {bundle!r}: unsafe entry {info.filename!r}: "
                                   "duplicate name")
            seen.add(str(path))
        budget = limits.max_total_bytes
        written = []
        for path, info in zip(paths, infos, strict=True):
            destination = target.joinpath(*path.parts)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            budget = _copy(archive, info, destination, budget, bundle, limits)
            written.append(str(path))
    return written


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, budget: int,
          bundle: str, limits: ExtractLimits) -> int:
    """Write one entry, counting real bytes against the budget; the budget left."""
    entry_limit = max(RATIO_FLOOR, limits.max_ratio * max(info.compress_size, 1))
    size = 0
    try:
        with archive.open(info) as source, destination.open("xb") as sink:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                budget -= len(chunk)
                if budget < 0:
                    raise UnsafeBundle(f"bundle {bundle!r}: entry {info.filename!r} goes over "
                                       f"max_total_bytes {limits.max_total_bytes}")
                if size > entry_limit:
                    raise UnsafeBundle(f"bundle {bundle!r}: unsafe entry {info.filename!r}: "
                                       f"inflates over max_ratio {limits.max_ratio}: a zip bomb?")
                sink.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        if isinstance(exc, FileExistsError):
            raise UnsafeBundle(f"bundle {bundle!r}: unsafe entry {info.filename!r}: "
                               "written twice") from None
        raise UnsafeBundle(f"bundle {bundle!r}: entry {info.filename!r} is unreadable "
                           f"({exc})") from None
    return budget
