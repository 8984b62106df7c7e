"""DeepPatent2 on disk: reassemble a year's parts, extract them safely, stream-parse `design{YYYY}.json`.

A year is tens of GB of PNG plus a JSON array of hundreds of MB, with folder names that change from year to
year; so files are found by pattern, the JSON is decoded one record at a time, and every record that cannot
be used becomes a quarantine row (file, record, reason) instead of a crash or a silent drop.
The HTTP side (listing, resumable download) lives in `hmpcl_lib.dataverse` and is re-exported here.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from hmpcl_lib import schemas
from hmpcl_lib.dataverse import (  # re-exported (see __all__): the DeepPatent2 API in one place
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
from hmpcl_lib.io import atomic_path

__all__ = [
    "DEEPPATENT2_DOI", "DEFAULT_BASE_URL", "DataverseFile", "list_dataset_files", "files_for_year", "download_file",
    "download_year", "year_parts", "reassemble_parts", "extract_year", "extract_parts", "ExtractedYear",
    "find_design_json", "RawRecord", "iter_design_records", "PatentId", "parse_patent_id", "parse_design_record",
    "png_index", "parse_year", "reason_counts", "EXTRACTED_MARKER",
]

log = logging.getLogger(__name__)

EXTRACTED_MARKER = ".hmpcl-extracted"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

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


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract with tarfile's `data` filter: no member may land outside `dest` (absolute paths, `..`, links)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise InputError(f"unsafe archive member refused: {exc}", source=str(archive)) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InputError(f"cannot extract archive (truncated or corrupt): {exc}", source=str(archive)) from None


def _inner_archives(root: Path) -> list[tuple[str, Path]]:
    """(`Original`|`Segmented`, path) for every tar archive whose name says which image set it holds."""
    found = []
    for path in sorted(root.rglob("*")):
        name = path.name.lower()
        if path.is_file() and name.endswith(_TAR_SUFFIXES):
            if "segment" in name:
                found.append(("Segmented", path))
            elif "original" in name:
                found.append(("Original", path))
    return found


def find_design_json(root: str | os.PathLike, year: int | None = None, source: str | None = None) -> Path:
    """The one `design*.json` under `root` (top level first), wherever the year's layout put it."""
    root = Path(root)
    candidates = sorted(p for p in root.glob("design*.json") if p.is_file()) or sorted(
        p for p in root.rglob("design*.json") if p.is_file()
    )
    if year is not None and len(candidates) > 1:
        candidates = [p for p in candidates if str(year) in p.name] or candidates
    if len(candidates) != 1:
        what = "none" if not candidates else f"several: {[str(c) for c in candidates]}"
        raise InputError(f"expected one design*.json, found {what}", source=source or str(root))
    return candidates[0]


def year_parts(raw_dir: str | os.PathLike, year: int) -> list[Path]:
    """The downloaded parts `YYYY.aa`, `YYYY.ab`, ... in `raw_dir`, in order (a gap is an InputError)."""
    parts = {p.suffix[1:]: p for p in Path(raw_dir).glob(f"{year}.??") if re.fullmatch(r"[a-z]{2}", p.suffix[1:])}
    check_part_sequence(list(parts), year, source=str(raw_dir))
    return [parts[s] for s in sorted(parts, key=suffix_index)]


@dataclass(frozen=True)
class ExtractedYear:
    root: Path
    design_json: Path


def _extracted_from(out_dir: Path) -> Any:
    """What the marker of a finished extraction says it was made from (None when not finished)."""
    try:
        return json.loads((out_dir / EXTRACTED_MARKER).read_text())["from"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop climbing
            return
        folder = folder.parent


def extract_year(archive: Path, out_dir: Path, fingerprint: Any = None) -> ExtractedYear:
    """Unpack a reassembled year into `out_dir` (json at the top, `Original/` and `Segmented/` PNG trees).

    Idempotent: work happens in a temp folder beside `out_dir` that is renamed into place with a marker file,
    so `out_dir` either holds a complete extraction or does not exist. A marked `out_dir` made from the same
    input (`fingerprint`, default the archive's name and size) is returned as is.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    done = _extracted_from(out_dir)
    if done is not None and (fingerprint is None or done == fingerprint):
        return ExtractedYear(out_dir, find_design_json(out_dir))
    if not archive.is_file():
        raise InputError("archive not found", source=str(archive))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a run that died mid-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _safe_extract(archive, tmp)
        inner = _inner_archives(tmp)
        for kind, inner_archive in inner:
            _safe_extract(inner_archive, tmp / kind)
            inner_archive.unlink()  # halves the disk a year needs
        if not inner:
            log.warning("%s: no Original/Segmented archives found; PNGs are looked up wherever they are", archive)
        design_json = find_design_json(tmp, source=str(archive))
        json_folder = design_json.parent
        design_json = design_json.rename(tmp / design_json.name)
        for emptied in [json_folder] + [p.parent for _, p in inner]:  # drop folders the moves left empty
            _remove_empty_parents(emptied, stop=tmp)
        made_from = fingerprint if fingerprint is not None else [archive.name, archive.stat().st_size]
        (tmp / EXTRACTED_MARKER).write_text(json.dumps({"from": made_from, "inner": [p.name for _, p in inner]}))
        if out_dir.exists():  # unmarked (incomplete by construction) or made from other input
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExtractedYear(out_dir, out_dir / design_json.name)


def extract_parts(parts: list[Path], out_dir: Path) -> Path:
    """Reassemble a year's parts and extract them into `out_dir`; skipped when already done from these parts."""
    out_dir = Path(out_dir)
    fingerprint = [[Path(p).name, Path(p).stat().st_size] for p in sorted(parts, key=lambda p: Path(p).name)]
    if _extracted_from(out_dir) == fingerprint:
        return out_dir
    archive = out_dir.parent / f".{out_dir.name}.archive"
    try:
        reassemble_parts(parts, archive)
        extract_year(archive, out_dir, fingerprint=fingerprint)
    finally:
        archive.unlink(missing_ok=True)
    return out_dir


# ---------------------------------------------------------------- streaming JSON


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One element of a design JSON file: the decoded value, or why it could not be decoded (JSON Lines)."""

    index: int
    offset: int  # byte offset of the record in the file
    data: Any
    error: str | None = None


_NON_WS = re.compile(r"[^ \t\n\r]")


class _ArrayReader:
    """Decode the elements of a top-level JSON array one by one from a text stream (bounded buffer)."""

    def __init__(self, text: io.TextIOBase, source: str, first_byte: int, chunk: int, max_record: int):
        self.text, self.source, self.chunk, self.max_record = text, source, chunk, max_record
        self.buf, self.pos, self.eof = "", 0, False
        self.mark, self.mark_bytes = 0, first_byte  # buf[mark] is at byte mark_bytes of the file
        self.decoder = json.JSONDecoder()

    def byte_at(self, p: int) -> int:
        """Byte offset of buf[p] (p >= mark), computed incrementally so the total cost stays linear."""
        self.mark_bytes += len(self.buf[self.mark : p].encode("utf-8", "surrogatepass"))
        self.mark = p
        return self.mark_bytes

    def fill(self) -> bool:
        """Drop what is consumed (before pos), append a chunk; False at end of file."""
        if self.pos:
            self.byte_at(self.pos)
            self.buf, self.mark, self.pos = self.buf[self.pos :], 0, 0
        try:
            more = self.text.read(self.chunk)
        except UnicodeDecodeError as exc:
            near = self.mark_bytes + len(self.buf)
            raise InputError(f"not UTF-8 text near byte {near}: {exc.reason}", self.source) from None
        if not more:
            self.eof = True
            return False
        self.buf += more
        return True

    def next_token(self) -> int | None:
        """Index of the next non-whitespace char from pos (reading more as needed); None at end of file."""
        while True:
            match = _NON_WS.search(self.buf, self.pos)
            if match:
                return match.start()
            self.pos = len(self.buf)
            if not self.fill():
                return None

    def fail(self, reason: str, index: int, p: int) -> InputError:
        return InputError(f"{reason} at byte {self.byte_at(p)}", source=self.source, record=f"#{index}")

    def decode(self, p: int, index: int) -> tuple[Any, int]:
        """Decode the value at buf[p]; read more while it may just be cut by the buffer end."""
        self.pos = p
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the very end might continue in the next chunk
                    return value, end
                error = None
            except json.JSONDecodeError as exc:
                error = f"malformed JSON record ({exc.msg})"
            except RecursionError:
                error = "malformed JSON record (nested too deeply)"
            if error and (self.eof or len(self.buf) - self.pos > self.max_record):
                raise self.fail(error, index, self.pos)
            self.fill()  # at end of file the next round returns (or rejects) the value as it is

    def __iter__(self) -> Iterator[RawRecord]:
        p = self.next_token()
        if p is None or self.buf[p] != "[":
            raise InputError("not a JSON array or JSON Lines file", source=self.source)
        self.pos = p + 1
        p = self.next_token()
        if p is not None and self.buf[p] == "]":
            self.pos = p + 1
        else:
            index = 0
            while True:
                if p is None:
                    raise InputError(f"file ends inside the array (truncated?) after {index} records", self.source)
                start = self.byte_at(p)
                value, self.pos = self.decode(p, index)
                yield RawRecord(index, start, value)
                p = self.next_token()
                if p is None:
                    raise InputError(f"file ends inside the array (truncated?) after {index + 1} records", self.source)
                if self.buf[p] == "]":
                    self.pos = p + 1
                    break
                if self.buf[p] != ",":
                    raise self.fail("expected ',' or ']' after the record", index, p)
                self.pos = p + 1
                index += 1
                p = self.next_token()
        if self.next_token() is not None:
            raise InputError("unexpected data after the closing ']'", source=self.source)


def _iter_json_lines(raw: io.BufferedReader, source: str) -> Iterator[RawRecord]:
    """One JSON value per line; a bad line becomes an error record and the next line starts afresh."""
    offset, index = raw.tell(), 0
    for line_no, line in enumerate(raw, start=1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            record = RawRecord(index, start, json.loads(line))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            record = RawRecord(index, start, None, f"malformed JSON: line {line_no} at byte {start}: {reason}")
        yield record
        index += 1


def iter_design_records(
    json_path: str | os.PathLike, chunk_chars: int = 1 << 20, max_record_chars: int = 64 << 20
) -> Iterator[RawRecord]:
    """Stream the records of `design{YYYY}.json`: a top-level JSON array, or JSON Lines.

    Memory stays at about one chunk plus one record. In JSON Lines a malformed line is yielded as an error
    record and parsing goes on; in an array there is no safe place to resync, so it is an InputError naming
    the file, the record index and the byte offset.
    """
    source = str(json_path)
    try:
        raw = open(json_path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", source=source) from None
    with raw:
        start = 3 if raw.read(3) == b"\xef\xbb\xbf" else 0
        raw.seek(start)
        head = raw.read(1 << 16).lstrip()
        raw.seek(start)
        if head.startswith(b"["):
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
            yield from _ArrayReader(text, source, start, chunk_chars, max_record_chars)
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


REQUIRED_FIELDS = ("id", "patentID", "figid", "figure_file")
TEXT_FIELDS = ("caption", "object", "aspect", "object_title", "W_label", "H_label", "L_label", "T_label")
NUMBER_FIELDS = ("x_figure", "y_figure", "w_figure", "h_figure")


def parse_design_record(record: Any, year: int | None = None) -> dict[str, Any]:
    """Validate one per-figure record into a drawings row (without `image_path`); InputError says what is wrong.

    Reasons start with a category (`missing field: ...`, `bad patentID: ...`) so they can be counted.
    Fields beyond SPEC's list (e.g. `classification_national`) are ignored.
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


def parse_year(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike | None,
    year: int,
    max_bad_fraction: float = 0.05,
    require_images: bool = True,
    verify_images: bool = False,
    batch_size: int = 10_000,
) -> tuple[pa.Table, pa.Table]:
    """Parse one year's `design{YYYY}.json` into (drawings, quarantine) tables (`schemas.DRAWINGS`, `QUARANTINE`).

    `image_path` is the segmented PNG if present under `image_root`, else the original figure. Records that
    fail validation, repeat a drawing_id, or (with `require_images`) lack an image go to quarantine. More bad
    records than `max_bad_fraction` of all raises InputError with the count per reason.
    """
    source = str(json_path)
    if require_images and image_root is None:
        raise InputError("image_root is required when require_images=True", source=source)
    images = png_index(image_root) if image_root is not None else {}
    if require_images and not images:
        log.warning("%s: no PNG under %s", source, image_root)
    drawings = _Batches(schemas.DRAWINGS, batch_size)
    quarantine = _Batches(schemas.QUARANTINE, batch_size)
    total = 0

    def reject(raw: RawRecord, reason: str) -> None:
        quarantine.append({"source": source, "record": _record_label(raw), "reason": reason, "stage": "parse"})

    for raw in iter_design_records(json_path):
        total += 1
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
        drawings.append(row)

    if total == 0:
        raise InputError("no records", source=source)
    table, duplicates = _split_duplicates(drawings.table(), source)
    bad_rows = pa.concat_tables([quarantine.table(), duplicates])
    if bad_rows.num_rows > max_bad_fraction * total:
        counts = ", ".join(f"{reason}: {n}" for reason, n in reason_counts(bad_rows).items())
        raise InputError(
            f"{bad_rows.num_rows} of {total} records are bad ({bad_rows.num_rows / total:.1%} > "
            f"{max_bad_fraction:.1%}): {counts}",
            source=source,
        )
    return table, bad_rows


def _split_duplicates(table: pa.Table, source: str) -> tuple[pa.Table, pa.Table]:
    """Keep the first row of each drawing_id; the later ones become quarantine rows (vectorised, no Python set)."""
    ids = pl.from_arrow(table.column("drawing_id"))  # one column: polars copies strings into its own layout
    first = ids.is_first_distinct()
    if first.all():
        return table, schemas.empty(schemas.QUARANTINE)
    repeated = ids.filter(~first).unique()
    keep = (first & ids.is_in(repeated)).to_arrow()  # first rows of the repeated ids only
    first_record = dict(
        zip(table.column("drawing_id").filter(keep).to_pylist(), table.column("record_id").filter(keep).to_pylist())
    )
    later = table.filter(pc.invert(first.to_arrow())).select(["drawing_id", "record_id"]).to_pylist()
    rows = [
        {"source": source, "record": r["record_id"], "stage": "parse",
         "reason": f"duplicate drawing_id: {r['drawing_id']} (first in record {first_record[r['drawing_id']]})"}
        for r in later
    ]
    return table.filter(first.to_arrow()), pa.Table.from_pylist(rows, schema=schemas.QUARANTINE)


def reason_counts(quarantine: pa.Table) -> dict[str, int]:
    """Quarantine rows per reason category (the text before the first ':'), e.g. for Dagster metadata."""
    return dict(Counter(r.split(":", 1)[0] for r in quarantine.column("reason").to_pylist()).most_common())
