"""DeepPatent2's containers: tell what a downloaded part or archive is, join a year's parts, extract them safely.

A year is tens of GB of PNG plus JSON, with folder and file names that change from year to year; so containers are
recognised by their bytes (zip, tar, tar.gz/bz2/xz, outer and inner), never their names, and records files are
found by pattern (`design*.json`, `segmentation_*.json`, several per year). A per-year lock file lets two runs of
the same year take turns instead of corrupting each other.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import fnmatch
import gzip
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from hmpcl_lib.diskspace import InsufficientDiskError, extract_bytes, free_bytes, require_free_disk
from hmpcl_lib.errors import InputError
from hmpcl_lib.io import atomic_dir, atomic_path
from hmpcl_lib.sources.dataverse import check_part_sequence, suffix_index

log = logging.getLogger(__name__)

EXTRACTED_MARKER = ".hmpcl-extracted"
YEAR_LOCK = ".hmpcl-year.lock"
RECORDS_PATTERNS = ("design*.json", "segmentation_*.json")  # design2019.json, design2019part3.json, design_2007.json

# ---------------------------------------------------------------- container detection


class _Concat(io.RawIOBase):
    """Several files read one after the other as one stream (a year's parts, without writing the joined copy)."""

    def __init__(self, paths: Iterable[Path]):
        self._paths, self._file = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._file is not None or self._paths:
            if self._file is None:
                self._file = open(self._paths.pop(0), "rb")
            if n := self._file.readinto(buffer):
                return n
            self._file.close()
            self._file = None
        return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _tail(paths: list[Path], n: int) -> bytes:
    """The last `n` bytes of the concatenation of `paths`."""
    chunks: list[bytes] = []
    for path in reversed(paths):
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            take = min(size, n - sum(map(len, chunks)))
            f.seek(size - take)
            chunks.insert(0, f.read(take))
        if sum(map(len, chunks)) >= n:
            break
    return b"".join(chunks)


def _is_tar_header(block: bytes) -> bool:
    """A POSIX/GNU tar header ('ustar' at offset 257), or an old-style one with a valid header checksum."""
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        tarfile.TarInfo.frombuf(block[:512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


_COMPRESSORS = (  # magic bytes, name, how to open a decompressing reader over a byte stream
    (b"\x1f\x8b", "gz", lambda raw: gzip.GzipFile(fileobj=raw)),
    (b"BZh", "bz2", bz2.BZ2File),
    (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile),
)
_OTHER_FORMATS = {b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!\x1a\x07": "rar", b"\x28\xb5\x2f\xfd": "zstd",
                  b"\x89PNG\r\n\x1a\n": "png image", b"PK\x07\x08": "zip split with zip -s (rejoin with zip -s 0)"}
ARCHIVE_FORMATS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz")


def detect_format(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> str:
    """The container a file (or the concatenation of a year's parts) holds, judged by its bytes, never its name.

    One of ARCHIVE_FORMATS, or a description of what it is instead (`gz (not a tar inside)`, `7z`, `empty`,
    `unknown (first bytes ...)`). Reads a few KiB (the head, decompressed for gzip/bzip2/xz, and the tail where a
    zip keeps its end-of-central-directory record), never the whole file.
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    with io.BufferedReader(_Concat(paths)) as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if _is_tar_header(head):
        return "tar"
    for magic, name, opener in _COMPRESSORS:
        if head.startswith(magic):
            try:
                with io.BufferedReader(_Concat(paths)) as raw, opener(raw) as unpacked:
                    inner = unpacked.read(512)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
                return f"{name} (truncated or corrupt: {exc})"
            return f"tar.{name}" if _is_tar_header(inner) else f"{name} (not a tar inside)"
    for magic, name in _OTHER_FORMATS.items():
        if head.startswith(magic):
            return name
    if b"PK\x05\x06" in _tail(paths, 22 + 0xFFFF):  # zip end record (+ comment): a zip with data in front
        return "zip"
    return f"unknown (first bytes {head[:8].hex(' ')})"


# ---------------------------------------------------------------- reassembly and extraction


def reassemble_parts(parts: list[Path], out: Path) -> Path:
    """Concatenate `YYYY.aa`, `YYYY.ab`, ... (any order given) into `out`; a gap in the sequence is an InputError."""
    if not parts:
        raise InputError("no parts given", source=str(out))
    named = []
    for part in map(Path, parts):
        match = re.fullmatch(r"(\d{4})\.([a-z]{2})", part.name)
        if not match:
            raise InputError("not a part name of the form YYYY.aa", source=str(part))
        named.append((match.group(1), match.group(2), part))
    years = sorted({year for year, _, _ in named})
    if len(years) != 1:
        raise InputError(f"parts of several years given: {years}", source=str(named[0][2].parent))
    suffixes = [suffix for _, suffix, _ in named]
    if len(set(suffixes)) != len(suffixes):
        raise InputError(f"year {years[0]}: a part is given twice: {sorted(suffixes)}", source=str(named[0][2].parent))
    check_part_sequence(suffixes, years[0], source=str(named[0][2].parent))
    ordered = [part for _, _, part in sorted(named, key=lambda n: suffix_index(n[1]))]
    with atomic_path(out) as tmp, open(tmp, "wb") as sink:
        for part in ordered:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, sink, 16 << 20)
    return Path(out)


def _check_space(needed: int, dest: Path, name: str, fmt: str) -> None:
    require_free_disk(f"unpacking the {fmt} archive {name}", dest, needed, margin=0)


def _unpacked_size(archive: Path) -> int:
    """What `archive` unpacks to: a zip lists it; a tar (or a corrupt zip, reported later) counts as its own size."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return archive.stat().st_size


_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _check_zip_member(info: zipfile.ZipInfo, name: str) -> None:
    """The tar `data` filter's rules for a zip member: no absolute path, no `..`, no link; and readable here."""
    member = info.filename
    if member.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", member) or ".." in PurePosixPath(
            member.replace("\\", "/")).parts:
        raise InputError(f"unsafe archive member refused: {member!r} is absolute or climbs out with '..'", name)
    if stat.S_ISLNK(info.external_attr >> 16):  # Unix mode in the high 16 bits of external_attr
        raise InputError(f"unsafe archive member refused: {member!r} is a symbolic link", name)
    if info.flag_bits & 0x1:
        raise InputError(f"zip member {member!r} is encrypted", name)
    if info.compress_type not in _ZIP_METHODS:
        method = "Deflate64" if info.compress_type == 9 else f"method {info.compress_type}"
        raise InputError(f"zip member {member!r} is compressed with {method}, which Python's zipfile cannot read: "
                         "unpack the archive with 7z or unzip and re-pack it as tar or a plain zip", name)


def _extract_zip(archive: Path, dest: Path, name: str) -> None:
    """Check every member first (nothing is written if one is refused), then stream them out one by one."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_zip_member(info, name)
            _check_space(sum(info.file_size for info in members), dest, name, "zip")
            for info in members:
                zf.extract(info, dest)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as exc:
        raise InputError(f"cannot extract zip archive (truncated or corrupt): {exc}", name) from None


def _extract_tar(archive: Path, dest: Path, name: str, fmt: str) -> None:
    """tarfile's `data` filter (no absolute paths, `..`, links out, device files) plus a bound on the total size."""
    budget, used = free_bytes(dest), 0

    def data_within_budget(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        nonlocal used
        member = tarfile.data_filter(member, path)
        used += member.size
        if used > budget:  # a tar lists no total: stop at the first member that no longer fits
            raise InsufficientDiskError(f"unpacking the {fmt} archive {name}", dest, used, budget)
        return member

    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter=data_within_budget)
    except tarfile.FilterError as exc:
        raise InputError(f"unsafe archive member refused: {exc}", name) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise InputError(f"cannot extract {fmt} archive (truncated or corrupt): {exc}", name) from None


def _extract(archive: Path, dest: Path, name: str) -> str:
    """Extract `archive` into `dest` by the format its bytes show; returns that format. Errors call it `name`."""
    fmt = detect_format(archive)
    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        _extract_zip(archive, dest, name)
    elif fmt in ARCHIVE_FORMATS:
        _extract_tar(archive, dest, name, fmt)
    else:
        raise InputError(f"not a zip or tar archive: its bytes say {fmt}", name)
    return fmt


_ARCHIVE_NAME = re.compile(r"(\.(zip|tar|tgz|tbz2?|txz|gz|bz2|xz))+$", re.IGNORECASE)


def _inner_archives(root: Path) -> list[tuple[str, Path]]:
    """(image set, path) of every archive inside the extracted year: by bytes, or by a name that says archive.

    The image set is `Segmented` / `Original` when the name says so, else the name without its archive suffixes.
    """
    found = []
    for path in sorted(root.rglob("*")):
        name = path.name
        if not path.is_file() or name.lower().endswith((".png", ".json", ".jsonl")):
            continue
        if _ARCHIVE_NAME.search(name) or detect_format(path) in ARCHIVE_FORMATS:
            lower = name.lower()
            kind = "Segmented" if "segment" in lower else "Original" if "original" in lower else None
            found.append((kind or _ARCHIVE_NAME.sub("", name) or "images", path))
    return found


def find_records_files(root: str | os.PathLike) -> list[Path]:
    """Every per-figure records file under `root` (RECORDS_PATTERNS, any folder, any case), sorted by path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [Path(folder, n) for n in files if any(fnmatch.fnmatch(n.lower(), p) for p in RECORDS_PATTERNS)]
    return sorted(found)


@dataclass(frozen=True)
class ExtractedYear:
    root: Path
    records: tuple[Path, ...]  # the per-figure JSON files (find_records_files)
    archive_format: str  # of the reassembled year (detect_format)
    inner: dict[str, str] = field(default_factory=dict)  # inner archive (path in the year) -> its format


def _marker(out_dir: Path) -> dict | None:
    """The marker of a finished extraction (None when not finished)."""
    try:
        marker = json.loads((out_dir / EXTRACTED_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "from" in marker else None


def _extracted(out_dir: Path, marker: dict) -> ExtractedYear:
    return ExtractedYear(out_dir, tuple(find_records_files(out_dir)), marker.get("format", "unknown"),
                         dict(marker.get("inner") or {}))


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop climbing
            return
        folder = folder.parent


def extract_year(archive: Path, out_dir: Path, fingerprint: Any = None, name: str | None = None) -> ExtractedYear:
    """Unpack a reassembled year into `out_dir`: records files at the top, `Original/`, `Segmented/` PNG trees.

    The outer container is a zip (DeepPatent2) or a tar (plain or compressed), told apart by its bytes; each inner
    archive (`Segmented.tar.gz`, `Original.zip`, ...) is unpacked into a folder named for its image set and then
    deleted. Idempotent: work happens in a temp folder beside `out_dir` that is renamed into place with a marker
    file, so `out_dir` either holds a complete extraction or does not exist. A marked `out_dir` made from the same
    input (`fingerprint`, default the archive's name and size) is returned as is. Errors name the archive `name`
    (default its path) and an inner one as `name > path/inside`. Not safe against a second process extracting
    into the same `out_dir` at the same time: hold `year_lock` (as `build_year` does).
    """
    archive, out_dir = Path(archive), Path(out_dir)
    name = name or str(archive)
    done = _marker(out_dir)
    if done is not None and (fingerprint is None or done["from"] == fingerprint):
        return _extracted(out_dir, done)
    if not archive.is_file():
        raise InputError("archive not found", source=str(archive))
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a run that died mid-way
        shutil.rmtree(stale, ignore_errors=True)
    require_free_disk(f"extracting {name}", out_dir.parent, extract_bytes(_unpacked_size(archive)))
    with atomic_dir(out_dir) as tmp:  # an unmarked out_dir (incomplete by construction) or one from other input
        fmt = _extract(archive, tmp, name)
        inner = {}
        for kind, inner_archive in _inner_archives(tmp):
            inside = inner_archive.relative_to(tmp).as_posix()
            inner[inside] = _extract(inner_archive, tmp / kind, f"{name} > {inside}")
            inner_archive.unlink()  # halves the disk a year needs
            _remove_empty_parents(inner_archive.parent, stop=tmp)
        if not inner:
            log.warning("%s: no inner image archives found; PNGs are looked up wherever they are", archive)
        records = find_records_files(tmp)
        if not records:
            raise InputError(f"no per-figure records file ({' or '.join(RECORDS_PATTERNS)}) in the {fmt} archive",
                             name)
        for path in records:  # the JSON at the top, beside the image trees (unless two share a name)
            if not (tmp / path.name).exists():
                path.rename(tmp / path.name)
                _remove_empty_parents(path.parent, stop=tmp)
        made_from = fingerprint if fingerprint is not None else [archive.name, archive.stat().st_size]
        marker = {"from": made_from, "format": fmt, "inner": inner}
        (tmp / EXTRACTED_MARKER).write_text(json.dumps(marker))
    return _extracted(out_dir, marker)


def extract_parts(parts: list[Path], out_dir: Path) -> ExtractedYear:
    """Reassemble a year's parts and extract them into `out_dir`; skipped when already done from these parts.

    The container is checked on the parts first, so an unknown format is reported before tens of GB are copied.
    Errors name the parts (`/raw/2019/2019.aa+2019.ab+2019.ac`), not the temporary joined file.
    """
    out_dir, parts = Path(out_dir), [Path(p) for p in parts]
    fingerprint = [[p.name, p.stat().st_size] for p in sorted(parts, key=lambda p: p.name)]
    done = _marker(out_dir)
    if done is not None and done["from"] == fingerprint:
        return _extracted(out_dir, done)
    name = str(parts[0].parent / "+".join(p.name for p in parts)) if parts else str(out_dir)
    fmt = detect_format(parts) if parts else "no parts"
    if fmt not in ARCHIVE_FORMATS:
        raise InputError(f"not a zip or tar archive: its bytes say {fmt}", name)
    joined = sum(p.stat().st_size for p in parts)  # a zip's own listing is only readable once joined
    require_free_disk(f"extracting {name}", out_dir.parent, extract_bytes(joined, joined_bytes=joined))
    archive = out_dir.parent / f".{out_dir.name}.archive"
    try:
        reassemble_parts(parts, archive)
        return extract_year(archive, out_dir, fingerprint=fingerprint, name=name)
    finally:
        archive.unlink(missing_ok=True)


# ---------------------------------------------------------------- the per-year lock


@contextlib.contextmanager
def year_lock(folder: str | os.PathLike, timeout: float | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on `folder/.hmpcl-year.lock` (fcntl.flock; the OS drops it if the process dies).

    Two runs of the same year (Dagster allows concurrent runs; so may scripts) take turns through download,
    extraction and parse instead of sharing `.part` files, temp folders and Parquet. Waits `timeout` seconds
    (None: as long as it takes), then TimeoutError. Not reentrant: take it once, around the whole job.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / YEAR_LOCK
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s: another run is working on this year", path)
            _wait_for_lock(handle, path, timeout)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for_lock(handle, path: Path, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{path} is still held by another run after {timeout} s") from None
            time.sleep(0.05)
