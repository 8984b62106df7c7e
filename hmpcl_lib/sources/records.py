"""DeepPatent2's per-figure records: stream a records file, validate each record into a drawings row, parse a year.

The records files are JSON arrays of hundreds of MB (or JSON Lines), so the JSON is decoded one record at a time
(ijson), and every record that cannot be used becomes a quarantine row (file, record, reason) instead of a crash or
a silent drop.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable, Iterator, NamedTuple

import ijson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError

log = logging.getLogger(__name__)

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
