"""DeepPatent2 on disk: reassemble a year's parts, extract them safely, stream-parse its per-figure JSON.

A year is tens of GB of PNG plus JSON arrays of hundreds of MB, with folder and file names that change from year
to year; so containers are recognised by their bytes (zip, tar, tar.gz/bz2/xz, outer and inner), records files
are found by pattern (`design*.json`, `segmentation_*.json`, several per year), the JSON is decoded one record at a
time, and every record that cannot be used becomes a quarantine row (file, record, reason) instead of a crash or a
silent drop. A per-year lock file lets two runs of the same year take turns instead of corrupting each other.
The HTTP side (listing, resumable download) lives in `hmpcl_lib.sources.dataverse` and is re-exported here.
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
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, NamedTuple

import ijson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from hmpcl_lib import schemas
from hmpcl_lib.sources.dataverse import (  # re-exported (see __all__): the DeepPatent2 API in one place
    DEEPPATENT2_DOI,
    DEFAULT_BASE_URL,
    DataverseFile,
    check_part_sequence,
    download_file,
    download_year,
    files_for_year,
    list_dataset_files,
    suffix_index,
)
from hmpcl_lib.errors import InputError
from hmpcl_lib.diskspace import InsufficientDiskError, extract_bytes, free_bytes, require_free_disk
from hmpcl_lib.io import atomic_path, write_parquet_atomic

__all__ = [
    "DEEPPATENT2_DOI", "DEFAULT_BASE_URL", "DataverseFile", "list_dataset_files", "files_for_year", "download_file",
    "download_year", "year_parts", "reassemble_parts", "detect_format", "extract_year", "extract_parts",
    "ExtractedYear", "RECORDS_PATTERNS", "find_records_files", "RawRecord", "iter_design_records", "PatentId",
    "parse_patent_id", "parse_design_record", "png_index", "ParsedYear", "parse_year", "reason_counts",
    "year_lock", "build_year", "EXTRACTED_MARKER", "YEAR_LOCK",
]

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


def year_parts(raw_dir: str | os.PathLike, year: int) -> list[Path]:
    """The downloaded parts `YYYY.aa`, `YYYY.ab`, ... in `raw_dir`, in order (a gap is an InputError)."""
    parts = {p.suffix[1:]: p for p in Path(raw_dir).glob(f"{year}.??") if re.fullmatch(r"[a-z]{2}", p.suffix[1:])}
    check_part_sequence(list(parts), year, source=str(raw_dir))
    return [parts[s] for s in sorted(parts, key=suffix_index)]


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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
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
        if out_dir.exists():  # unmarked (incomplete by construction) or made from other input
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


# ---------------------------------------------------------------- one year at a time


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


# ---------------------------------------------------------------- streaming JSON


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One element of a records file: the decoded value, or why it could not be decoded (JSON Lines)."""

    index: int  # 0-based position in the file
    data: Any
    error: str | None = None
    line: int | None = None  # JSON Lines: the 1-based line number


_MAX_NESTING = 10_000  # records nest 3 deep; ijson's memory grows with the square of the depth


class _NestingGuard:
    """A reader that stops a file whose brackets nest absurdly deep before ijson builds it (a few bytes.count per
    chunk). It counts brackets inside strings too, so it over-estimates depth, hence the generous limit."""

    def __init__(self, raw: io.BufferedReader, source: str):
        self.raw, self.source, self.depth = raw, source, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        opened = data.count(b"[") + data.count(b"{") - data.count(b"]") - data.count(b"}")
        self.depth = max(0, self.depth + opened)
        if self.depth > _MAX_NESTING:
            raise InputError(f"JSON nests deeper than {_MAX_NESTING} levels: not a records file", self.source)
        return data


def _ijson_reason(exc: Exception) -> tuple[str, str]:
    """yajl's message (first line) and the text around the error (its second line)."""
    text = exc.args[0] if exc.args else str(exc)
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    lines = text.splitlines()
    near = " ".join(lines[1].split()) if len(lines) > 1 and lines[1].strip() else ""
    return lines[0].strip() if lines else type(exc).__name__, near


def _iter_array(raw: io.BufferedReader, source: str, buf_size: int) -> Iterator[RawRecord]:
    """The elements of a top-level JSON array, streamed by ijson (yajl); a syntax error names the record."""
    index = 0
    try:
        for value in ijson.items(_NestingGuard(raw, source), "item", use_float=True, buf_size=buf_size):
            yield RawRecord(index, value)
            index += 1
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        reason, near = _ijson_reason(exc)
        if "premature EOF" in reason:
            raise InputError(f"file ends inside the array (truncated?) after {index} records", source) from None
        if "trailing garbage" in reason:
            raise InputError(f"unexpected data after the closing ']' ({near!r})", source) from None
        where = f" near {near!r}" if near else ""
        raise InputError(f"malformed JSON record ({reason}){where}", source, record=f"#{index}") from None


def _iter_json_lines(raw: io.BufferedReader, source: str) -> Iterator[RawRecord]:
    """One JSON value per line; a bad line becomes an error record and the next line starts afresh."""
    offset, index = raw.tell(), 0
    for line_no, line in enumerate(raw, start=1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            record = RawRecord(index, json.loads(line), line=line_no)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            record = RawRecord(index, None, f"malformed JSON: line {line_no} at byte {start}: {reason}", line_no)
        yield record
        index += 1


def iter_design_records(json_path: str | os.PathLike, buf_size: int = 1 << 16) -> Iterator[RawRecord]:
    """Stream the records of a per-figure JSON file: a top-level JSON array (ijson), or JSON Lines.

    Memory stays at about one buffer plus one record. In JSON Lines a malformed line is yielded as an error
    record and parsing goes on; in an array there is no safe place to resync, so it is an InputError naming the
    file, the record number and the text around the error.
    """
    source = str(json_path)
    try:
        raw = open(json_path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", source=source) from None
    with raw:
        start = 3 if raw.read(3) == b"\xef\xbb\xbf" else 0  # a UTF-8 byte order mark, which yajl refuses
        raw.seek(start)
        head = raw.read(1 << 16).lstrip()
        raw.seek(start)
        if head.startswith(b"["):
            yield from _iter_array(raw, source, buf_size)
        elif not head:
            raise InputError("empty file", source=source)
        else:
            yield from _iter_json_lines(raw, source)


# ---------------------------------------------------------------- records


class PatentId(NamedTuple):
    doc_number: str
    grant_date: date


_PATENT_ID = re.compile(r"US([A-Z]{0,2}[0-9]{5,8})-([0-9]{4})([0-9]{2})([0-9]{2})")


def parse_patent_id(text: Any, source: str | None = None, record: str | None = None) -> PatentId:
    """`USD0836880-20190101` -> PatentId("D0836880", date(2019, 1, 1)); anything else is an InputError."""
    match = _PATENT_ID.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise InputError(f"bad patentID: {text!r} is not US<doc-number>-<YYYYMMDD>", source, record)
    try:
        grant = date(int(match.group(2)), int(match.group(3)), int(match.group(4)))
    except ValueError as exc:
        raise InputError(f"bad patentID: {text!r} has an invalid date ({exc})", source, record) from None
    if grant.year < 1790:  # the first US patent act; earlier years are corrupt data
        raise InputError(f"bad patentID: {text!r} has an impossible grant year", source, record)
    return PatentId(match.group(1), grant)


def _parse_compact_date(value: Any) -> date | None:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    match = re.fullmatch(r"([0-9]{4})-?([0-9]{2})-?([0-9]{2})", text)
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def _text(record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"bad text: {field} is not valid Unicode") from None
    return text


def _number(record: dict, field: str) -> float | None:
    value = record.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"bad number: {field}={value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InputError(f"bad number: {field}={value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"bad number: {field}={value!r} is not finite")
    return number


_FIGURE_TAIL = re.compile(r"-D[0-9]{5}\.(?i:png)")  # after the patentID
_SUBFIGURE_TAIL = re.compile(r"_[0-9]+\.(?i:png)")  # after the figure stem


def _named_after(path: Any, stem: str, tail: re.Pattern) -> bool:
    """`path`'s file name is `stem` followed by `tail` (no per-record regex compilation)."""
    if not isinstance(path, str):
        return False
    name = os.path.basename(path)
    return name.startswith(stem) and tail.fullmatch(name, len(stem)) is not None


def _locarno_text(value: Any) -> str | None:
    """`classification_locarno` as the record has it: a string as is; a number as its text, zero-padded to 4 digits
    when it holds a subclass (JSON `602` is `"0602"`, class 06 subclass 02; `15` stays the class-only `"15"`).
    Interpreting the code is the hierarchy's job."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"{value:04d}" if value >= 100 else str(value)
    raise InputError(f"bad classification_locarno: {value!r} is not a code")


REQUIRED_FIELDS = ("id", "patentID", "figid", "figure_file")
TEXT_FIELDS = ("caption", "object", "aspect", "object_title", "classification_national")
# `*_figure`: the figure's box on the sheet (pixels); `*_label`: the label's box, normalised (0.0439147).
NUMBER_FIELDS = ("x_figure", "y_figure", "w_figure", "h_figure", "W_label", "H_label", "L_label", "T_label")


def parse_design_record(record: Any, year: int | None = None) -> dict[str, Any]:
    """Validate one per-figure record into a drawings row (without `image_path`); InputError says what is wrong.

    Reasons start with a category (`missing field: ...`, `bad number: W_label=...`) so they can be counted.
    Fields beyond SPEC's list and the two classifications are ignored.
    """
    if not isinstance(record, dict):
        raise InputError(f"not an object: a JSON {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if record.get(f) in (None, "")]
    if missing:
        raise InputError(f"missing field: {', '.join(missing)}")
    record_id = record["id"]
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise InputError(f"bad id: {record_id!r}")
    patent_id, figure_file = record["patentID"], record["figure_file"]
    doc_number, grant_date = parse_patent_id(patent_id)
    if year is not None and grant_date.year != year:
        raise InputError(f"wrong year: patent {patent_id} granted in {grant_date.year}, not {year}")
    if record.get("patentdate") not in (None, "") and _parse_compact_date(record["patentdate"]) != grant_date:
        raise InputError(f"bad patentdate: {record['patentdate']!r} does not match patentID {patent_id}")
    figid = record["figid"]
    if isinstance(figid, str) and figid.strip().isdigit() and figid.isascii():
        figid = int(figid)
    if isinstance(figid, bool) or not isinstance(figid, int) or not 0 <= figid < 2**31:
        raise InputError(f"bad figid: {record['figid']!r}")
    if not _named_after(figure_file, patent_id, _FIGURE_TAIL):
        raise InputError(f"bad figure_file: {figure_file!r} is not {patent_id}-D<5 digits>.png")
    figure_stem = os.path.splitext(os.path.basename(figure_file))[0]
    subfigure_file = record.get("subfigure_file") or None
    if subfigure_file is not None and not _named_after(subfigure_file, figure_stem, _SUBFIGURE_TAIL):
        raise InputError(f"bad subfigure_file: {subfigure_file!r} is not {figure_stem}_<n>.png")
    row = {
        "drawing_id": os.path.splitext(os.path.basename(subfigure_file or figure_file))[0],
        "record_id": _text(record, "id"),
        "patent_id": patent_id,
        "doc_number": doc_number,
        "grant_date": grant_date,
        "year": grant_date.year,
        "figid": figid,
        "figure_file": _text(record, "figure_file"),
        "subfigure_file": _text(record, "subfigure_file") if subfigure_file else None,
    }
    row.update({f: _text(record, f) for f in TEXT_FIELDS})
    row.update({f: _number(record, f) for f in NUMBER_FIELDS})
    row["classification_locarno"] = _locarno_text(record.get("classification_locarno"))
    return row


def png_index(image_root: str | os.PathLike) -> dict[str, str]:
    """File name -> absolute path of every PNG under `image_root` (built once: folder names vary by year)."""
    index: dict[str, str] = {}
    for folder, dirs, files in os.walk(os.path.abspath(image_root)):
        dirs.sort()  # first match wins, deterministically
        for name in sorted(files):
            if name.lower().endswith(".png"):
                index.setdefault(name, os.path.join(folder, name))
    return index


def _undecodable(path: str) -> str | None:
    from PIL import Image  # only needed with verify_images

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for bad files; all mean "cannot use this image"
        return f"{type(exc).__name__}: {exc}"
    return None


def _record_label(raw: RawRecord) -> str:
    record_id = raw.data.get("id") if isinstance(raw.data, dict) else None
    if isinstance(record_id, (str, int)) and not isinstance(record_id, bool) and str(record_id).isprintable():
        return str(record_id)
    return f"#{raw.index}"


class _Batches:
    """Rows collected as dicts and turned into an Arrow RecordBatch every `batch_size` rows (bounded memory)."""

    def __init__(self, schema: pa.Schema, batch_size: int):
        self.schema, self.batch_size = schema, batch_size
        self.pending: list[dict[str, Any]] = []
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0

    def append(self, row: dict[str, Any]) -> None:
        self.pending.append(row)
        self.rows += 1
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.batches.append(pa.RecordBatch.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def table(self) -> pa.Table:
        self.flush()
        return pa.Table.from_batches(self.batches, schema=self.schema)


@dataclass(frozen=True)
class ParsedYear:
    """What `parse_year` made of a year: the tables, and per records file what became of its records."""

    drawings: pa.Table  # schemas.DRAWINGS
    quarantine: pa.Table  # schemas.QUARANTINE
    files: dict[str, dict[str, int]]  # file -> {records, drawings, quarantined, exact_duplicates}
    exact_duplicates: int  # records dropped as exact copies of an earlier one (same record id and content)


_SOURCE = "_source"  # the records file of a row, while the year is parsed


def parse_year(
    records_files: str | os.PathLike | Iterable[str | os.PathLike],
    image_root: str | os.PathLike | None,
    year: int,
    max_bad_fraction: float = 0.05,
    require_images: bool = True,
    verify_images: bool = False,
    batch_size: int = 10_000,
) -> ParsedYear:
    """Parse a year's records files (`design2019.json` + `design2019part3.json`, ...) into drawings + quarantine.

    `image_path` is the segmented PNG if present under `image_root`, else the original figure. Records that fail
    validation, repeat a drawing_id with other content, or (with `require_images`) lack an image go to quarantine;
    exact copies of an earlier record (same record id and content, as when two files overlap) are dropped and
    counted. More bad records than `max_bad_fraction` of all raises InputError with the count per reason.
    """
    paths = [records_files] if isinstance(records_files, (str, os.PathLike)) else list(records_files)
    if not paths:
        raise InputError(f"no records files given for {year}", source=str(image_root))
    if require_images and image_root is None:
        raise InputError("image_root is required when require_images=True", source=str(paths[0]))
    images = png_index(image_root) if image_root is not None else {}
    if require_images and not images:
        log.warning("%s: no PNG under %s", paths[0], image_root)
    drawings = _Batches(schemas.DRAWINGS.append(pa.field(_SOURCE, pa.string())), batch_size)
    quarantine = _Batches(schemas.QUARANTINE, batch_size)
    records: Counter[str] = Counter()

    for path in paths:
        source = str(path)
        records[source] += 0

        def reject(raw: RawRecord, reason: str) -> None:
            quarantine.append({"source": source, "record": _record_label(raw), "reason": reason, "stage": "parse"})

        for raw in iter_design_records(path):
            records[source] += 1
            if raw.error is not None:
                reject(raw, raw.error)
                continue
            try:
                row = parse_design_record(raw.data, year)
            except InputError as exc:
                reject(raw, exc.reason)
                continue
            segmented = images.get(os.path.basename(row["subfigure_file"])) if row["subfigure_file"] else None
            row["image_path"] = segmented or images.get(os.path.basename(row["figure_file"]))
            if row["image_path"] is None and require_images:
                wanted = " or ".join(f for f in (row["subfigure_file"], row["figure_file"]) if f)
                reject(raw, f"missing image: no {wanted} under {image_root}")
                continue
            if verify_images and row["image_path"] and (problem := _undecodable(row["image_path"])):
                reject(raw, f"undecodable image: {row['image_path']}: {problem}")
                continue
            row[_SOURCE] = source
            drawings.append(row)

    total = sum(records.values())
    if total == 0:
        raise InputError("no records", source=", ".join(map(str, paths)))
    table, duplicates, exact = _split_duplicates(drawings.table())
    bad_rows = pa.concat_tables([quarantine.table(), duplicates])
    if bad_rows.num_rows > max_bad_fraction * total:
        counts = ", ".join(f"{reason}: {n}" for reason, n in reason_counts(bad_rows).items())
        raise InputError(
            f"{bad_rows.num_rows} of {total} records are bad ({bad_rows.num_rows / total:.1%} > "
            f"{max_bad_fraction:.1%}): {counts}",
            source=", ".join(map(str, paths)),
        )
    bad = Counter(bad_rows.column("source").to_pylist())
    files = {
        source: {"records": n, "drawings": n - bad[source] - exact[source], "quarantined": bad[source],
                 "exact_duplicates": exact[source]}
        for source, n in records.items()
    }
    return ParsedYear(table, bad_rows, files, sum(exact.values()))


def _split_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table, Counter[str]]:
    """Resolve rows that share a drawing_id (vectorised; only the repeated ids are looked at row by row).

    A row equal in every column to an earlier one is an exact duplicate: dropped, counted per file. Any other
    repeat keeps the first row and sends the later ones to quarantine. Returns (drawings, quarantine, counts).
    """
    ids = pl.from_arrow(table.column("drawing_id"))  # one column: polars copies strings into its own layout
    repeated = ids.is_duplicated()
    if not repeated.any():
        return table.drop_columns([_SOURCE]), schemas.empty(schemas.QUARANTINE), Counter()
    numbered = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    rows = pl.from_arrow(numbered.filter(repeated.to_arrow())).with_columns(
        exact=~pl.struct(schemas.DRAWINGS.names).is_first_distinct(),
        first=pl.col("drawing_id").is_first_distinct(),
    )
    firsts = {r["drawing_id"]: r for r in rows.filter("first").select("drawing_id", "record_id", _SOURCE).to_dicts()}
    conflicts = rows.filter(~pl.col("exact") & ~pl.col("first"))
    quarantine = [
        {"source": r[_SOURCE], "record": r["record_id"], "stage": "parse",
         "reason": f"duplicate drawing_id: {r['drawing_id']} (first in record {firsts[r['drawing_id']]['record_id']}"
                   + ("" if firsts[r["drawing_id"]][_SOURCE] == r[_SOURCE] else
                      f" of {firsts[r['drawing_id']][_SOURCE]}") + ")"}
        for r in conflicts.select("drawing_id", "record_id", _SOURCE).to_dicts()
    ]
    exact = Counter(rows.filter("exact")[_SOURCE].to_list())
    dropped = rows.filter(pl.col("exact") | ~pl.col("first"))["_row"].to_arrow()
    keep = pc.invert(pc.is_in(numbered.column("_row"), value_set=dropped))
    return (table.filter(keep).drop_columns([_SOURCE]), pa.Table.from_pylist(quarantine, schema=schemas.QUARANTINE),
            exact)


def reason_counts(quarantine: pa.Table) -> dict[str, int]:
    """Quarantine rows per reason category (the text before the first ':'), e.g. for Dagster metadata."""
    return dict(Counter(r.split(":", 1)[0] for r in quarantine.column("reason").to_pylist()).most_common())


def build_year(
    year: int,
    raw_dir: str | os.PathLike,
    extracted_dir: str | os.PathLike,
    drawings_path: str | os.PathLike,
    quarantine_path: str | os.PathLike,
    **parse_options: Any,
) -> tuple[ExtractedYear, ParsedYear]:
    """The `drawings` asset without Dagster: under the year's lock, extract the downloaded parts (reused when
    already done from the same parts), parse every records file and write both tables atomically."""
    with year_lock(raw_dir):
        extracted = extract_parts(year_parts(raw_dir, year), Path(extracted_dir))
        if not extracted.records:
            raise InputError(f"no per-figure records file ({' or '.join(RECORDS_PATTERNS)})", str(extracted.root))
        parsed = parse_year(extracted.records, extracted.root, year, **parse_options)
        write_parquet_atomic(parsed.drawings, drawings_path)
        write_parquet_atomic(parsed.quarantine, quarantine_path)
    return extracted, parsed
