"""Locarno International Classification (LIC): the shipped taxonomy, code normalisation, USPTO grant XML extraction.

DeepPatent2 has no Locarno code; it comes from the USPTO weekly grant files (`ipgYYMMDD.xml`), which are
hundreds of MB of concatenated XML documents. We stream them line by line, parse each document only up to
the end of its bibliographic data (the claims and description of utility patents are never built into a tree),
and turn every odd value into an `InputError` that callers put in the quarantine table.

The taxonomy (`data/locarno.csv`) is the 14th edition (in force since 2023-01-01): 32 classes, 223 subclasses
(vacant numbers such as 03-02, 15-08 and 19-05 are left out; classes 31 and 32 have the single subclass `-00`).
Codes of older editions (USPTO used editions 8-12 for 2007-2020 grants) are validated against it too.
"""

from __future__ import annotations

import datetime as dt
import functools
import html.entities
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import polars as pl
import pyarrow as pa

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError

log = logging.getLogger(__name__)

TAXONOMY_PATH = Path(__file__).parent / "data" / "locarno.csv"
TAXONOMY_EDITION = "14"
NUM_CLASSES = 32

_MISSING = {"", "none", "null", "nan", "n/a", "na"}
# Optional "LOC (11) Cl." prefix of the WIPO notation, then class, optional separator, optional subclass.
_PREFIX = re.compile(r"^(?:LOC\s*\(\s*\d+\s*\)\s*)?(?:CL\.?\s*)?", re.IGNORECASE | re.ASCII)
_SEPARATED = re.compile(r"^(\d{1,2})\s*[-/.\s]\s*(\d{1,2})$", re.ASCII)
_DIGITS = re.compile(r"^\d{1,4}$", re.ASCII)


@dataclass(frozen=True, order=True)
class LocarnoCode:
    """A normalised LIC code: class `"15"` and subclass `"15-07"` (None when only the class is known)."""

    class_code: str
    subclass_code: str | None = None

    def __str__(self) -> str:
        return self.subclass_code or self.class_code


@functools.lru_cache(maxsize=1)
def load_taxonomy() -> pl.DataFrame:
    """The shipped taxonomy: columns edition, level ('class'|'subclass'), class_code, subclass_code, title."""
    return pl.read_csv(TAXONOMY_PATH, schema_overrides={c: pl.String for c in ("edition", "class_code", "subclass_code")})


@functools.lru_cache(maxsize=1)
def _subclasses_by_class() -> dict[str, frozenset[str]]:
    subs = load_taxonomy().filter(pl.col("level") == "subclass")
    out: dict[str, set[str]] = {}
    for klass, sub in subs.select("class_code", "subclass_code").iter_rows():
        out.setdefault(klass, set()).add(sub)
    return {k: frozenset(v) for k, v in out.items()}


def class_titles() -> dict[str, str]:
    """class_code -> title."""
    t = load_taxonomy().filter(pl.col("level") == "class")
    return dict(zip(t["class_code"].to_list(), t["title"].to_list()))


def subclass_titles() -> dict[str, str]:
    """subclass_code -> title."""
    t = load_taxonomy().filter(pl.col("level") == "subclass")
    return dict(zip(t["subclass_code"].to_list(), t["title"].to_list()))


def parse_locarno_code(
    raw: Any, *, strict: bool = True, source: str | None = None, record: str | int | None = None
) -> LocarnoCode:
    """Normalise a raw LIC value into a `LocarnoCode`, or raise `InputError` saying why it is unusable.

    Accepted forms (surrounding whitespace ignored, optional WIPO prefix `LOC (11) Cl.`):
    - class and subclass with a separator `-`, `/`, `.` or space: `15-07`, `15/07`, `15.07`, ` 15 07 `, `1-04`;
    - four digits `1507`, `0507`;
    - three digits `507`: read as a class whose leading zero was lost (05-07), never as 50-7;
    - one or two digits `15`, `5`: class only (subclass unknown), except for classes 31 and 32, which have
      the single subclass `-00`, so the class alone determines it.
    `None`, `"None"`, `""` (and null/NaN/N/A) raise "missing Locarno code". Class 00 or > 32 raises. A
    well-formed subclass that the taxonomy does not list raises "unknown Locarno subclass" when `strict`
    (the default), else it is returned as is. An `int` (e.g. 1507 read from a numeric column) is accepted.
    """
    if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, int)):
        if raw is None:
            raise InputError("missing Locarno code (None)", source, record)
        raise InputError(f"Locarno code must be text, got {type(raw).__name__} {raw!r}", source, record)
    text = str(raw).strip()
    if text.lower() in _MISSING:
        raise InputError(f"missing Locarno code ({raw!r})", source, record)
    body = _PREFIX.sub("", text, count=1).strip()

    sub_digits: str | None
    if m := _SEPARATED.match(body):
        class_digits, sub_digits = m.group(1), m.group(2).zfill(2)
    elif _DIGITS.match(body):
        if len(body) <= 2:
            class_digits, sub_digits = body, None
        else:
            class_digits, sub_digits = body[:-2], body[-2:]
    else:
        raise InputError(f"malformed Locarno code {raw!r} (expected e.g. 15-07, 1507 or 15)", source, record)

    class_code = class_digits.zfill(2)
    if not 1 <= int(class_code) <= NUM_CLASSES:
        raise InputError(f"invalid Locarno class {class_code} in {raw!r} (classes are 01..{NUM_CLASSES})", source, record)
    known = _subclasses_by_class().get(class_code, frozenset())
    if sub_digits is None:
        only = f"{class_code}-00"
        return LocarnoCode(class_code, only if known == {only} else None)
    subclass_code = f"{class_code}-{sub_digits}"
    if strict and subclass_code not in known:
        raise InputError(
            f"unknown Locarno subclass {subclass_code} (from {raw!r}) in edition {TAXONOMY_EDITION} taxonomy",
            source,
            record,
        )
    return LocarnoCode(class_code, subclass_code)


# --------------------------------------------------------------------------------------------------------------
# USPTO grant XML


def normalise_doc_number(raw: str, *, source: str | None = None, record: str | int | None = None) -> str:
    """USPTO doc-number as DeepPatent2 writes it: designs are 'D' + 7 digits (`D836880` -> `D0836880`).

    Other kinds (utility `10165721`, reissue `RE049123`, plant `PP031234`, `H`, `T`, `X`) are returned stripped
    and upper-cased; anything else is malformed.
    """
    text = (raw or "").strip().upper()
    if m := re.fullmatch(r"D\s*0*(\d{1,7})", text, re.ASCII):
        return "D" + m.group(1).zfill(7)
    if re.fullmatch(r"(?:RE|PP|H|T|X)?\d{1,9}", text, re.ASCII):
        return text
    raise InputError(f"malformed doc-number {raw!r}", source, record)


def _parse_date(raw: str | None, source: str, record: str) -> dt.date:
    text = (raw or "").strip()
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise InputError(f"bad grant date {raw!r} (expected YYYYMMDD)", source, record) from None


_BIBLIO = "us-bibliographic-data-grant"
_WANTED = {
    (_BIBLIO, "publication-reference", "document-id", "doc-number"): "doc_number",
    (_BIBLIO, "publication-reference", "document-id", "kind"): "kind",
    (_BIBLIO, "publication-reference", "document-id", "date"): "date",
    (_BIBLIO, "classification-locarno", "edition"): "lic_edition",
    (_BIBLIO, "classification-locarno", "main-classification"): "lic_raw",
}


class _BiblioCollector:
    """XMLParser target that keeps only the few texts we need, and notes when the bibliographic part ends."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.root: str | None = None
        self.fields: dict[str, str] = {}
        self.has_locarno = False
        self.appl_type: str | None = None
        self.done = False
        self._text: list[str] | None = None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
        else:
            self.path.append(tag)
        key = tuple(self.path)
        if key == (_BIBLIO, "classification-locarno"):
            self.has_locarno = True
        elif key == (_BIBLIO, "application-reference"):
            self.appl_type = attrib.get("appl-type")
        self._text = [] if key in _WANTED else None

    def data(self, text: str) -> None:
        if self._text is not None:
            self._text.append(text)

    def end(self, tag: str) -> None:
        key = tuple(self.path)
        if key in _WANTED and self._text is not None and _WANTED[key] not in self.fields:
            self.fields[_WANTED[key]] = "".join(self._text).strip()
        self._text = None
        if key == (_BIBLIO,):
            self.done = True
        if self.path:
            self.path.pop()

    def close(self) -> None:
        return None


def _iter_documents(path: Path) -> Iterator[tuple[int, int, Iterator[bytes]]]:
    """Split a weekly file on `<?xml` lines: yields (index, first line number, line iterator), never a whole file."""
    with open(path, "rb") as f:
        pending: bytes | None = None
        line_no = 0

        def lines() -> Iterator[bytes]:
            nonlocal pending, line_no
            first, pending = pending, None
            if first is not None:
                yield first
            for line in f:
                line_no += 1
                if line.lstrip().startswith(b"<?xml"):
                    pending = line
                    return
                yield line

        for line in f:  # find the first document
            line_no += 1
            if line.lstrip().startswith(b"<?xml"):
                pending = line
                break
            if line.strip():
                raise InputError("file does not start with an XML declaration (<?xml ...?>)", str(path), "#0")
        index = 0
        while pending is not None:
            doc = lines()
            yield index, line_no, doc
            for _ in doc:  # drain what the parser did not need
                pass
            index += 1


def _parse_document(lines: Iterator[bytes]) -> _BiblioCollector:
    collector = _BiblioCollector()
    parser = ET.XMLParser(target=collector)
    parser.entity.update(html.entities.entitydefs)  # named entities the DTD would define (&lsquo; ...)
    for line in lines:
        parser.feed(line)
        if collector.done:
            return collector  # the rest (description, claims) is not needed
    parser.close()  # raises on truncated documents
    if collector.root == "us-patent-grant" and not collector.done:
        raise ET.ParseError(f"no <{_BIBLIO}> element")
    return collector


def iter_grant_lic(
    path: str | Path, on_error: Callable[[InputError], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the LIC data of each design patent in a USPTO weekly grant file.

    Yields dicts: source, index (document number in the file, from 0), doc_number (`D0836880`),
    grant_date (datetime.date), kind (`S1`), lic_edition, lic_raw (str, None if the design has no
    classification-locarno). Non-design documents are skipped unless they carry a Locarno code.
    A malformed document is reported as an `InputError` naming the file and `#index` to `on_error`
    (default: logged as a warning) and the stream goes on with the next document.
    """
    path = Path(path)
    source = str(path)
    report = on_error or (lambda err: log.warning("%s", err))
    for index, first_line, lines in _iter_documents(path):
        record = f"#{index} (line {first_line})"
        try:
            doc = _parse_document(lines)
            if doc.root != "us-patent-grant":
                raise InputError(f"not a us-patent-grant document (root <{doc.root}>)", source, record)
            fields = doc.fields
            if not fields.get("doc_number"):
                raise InputError("no publication-reference doc-number", source, record)
            kind = fields.get("kind", "")
            is_design = kind.upper().startswith("S") or doc.appl_type == "design" or fields["doc_number"].upper().startswith("D")
            if not is_design and not doc.has_locarno:
                continue
            record = f"#{index} ({fields['doc_number']})"
            yield {
                "source": source,
                "index": index,
                "doc_number": normalise_doc_number(fields["doc_number"], source=source, record=record),
                "grant_date": _parse_date(fields.get("date"), source, record),
                "kind": kind or None,
                "lic_edition": fields.get("lic_edition") or None,
                "lic_raw": fields.get("lic_raw") if doc.has_locarno else None,
            }
        except InputError as err:
            report(err)
        except (ET.ParseError, UnicodeDecodeError) as err:
            report(InputError(f"malformed XML document: {err} (line counted from the document's <?xml line)", source, record))


def read_lic_codes(paths: Iterable[str | Path], *, strict: bool = True) -> tuple[pa.Table, pa.Table]:
    """Read weekly grant files into (`lic_codes` table, quarantine table), both sorted for determinism.

    Quarantined (stage `lic_codes`): malformed documents, designs without classification-locarno,
    invalid/unknown codes, and a repeated (doc_number, grant_date) with a different code than the first.
    """
    rows: dict[tuple[str, dt.date], dict[str, Any]] = {}
    bad: list[dict[str, str]] = []

    def quarantine(err: InputError) -> None:
        bad.append({"source": err.source or "", "record": err.record or "", "reason": err.reason, "stage": "lic_codes"})

    for path in sorted(Path(p) for p in paths):
        for rec in iter_grant_lic(path, on_error=quarantine):
            record = f"#{rec['index']} ({rec['doc_number']})"
            if rec["lic_raw"] is None:
                quarantine(InputError("design patent without classification-locarno", rec["source"], record))
                continue
            try:
                code = parse_locarno_code(rec["lic_raw"], strict=strict, source=rec["source"], record=record)
            except InputError as err:
                quarantine(err)
                continue
            row = {
                "doc_number": rec["doc_number"],
                "grant_date": rec["grant_date"],
                "lic_edition": rec["lic_edition"],
                "lic_raw": rec["lic_raw"],
                "class_code": code.class_code,
                "subclass_code": code.subclass_code,
                "source": rec["source"],
            }
            key = (row["doc_number"], row["grant_date"])
            first = rows.setdefault(key, row)
            if first is not row and (first["class_code"], first["subclass_code"]) != (code.class_code, code.subclass_code):
                quarantine(
                    InputError(
                        f"conflicting Locarno code {code} for {key[0]} {key[1]:%Y%m%d}; kept {first['subclass_code'] or first['class_code']} from {first['source']}",
                        rec["source"],
                        record,
                    )
                )
    codes = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=schemas.LIC_CODES)
    bad.sort(key=lambda r: (r["source"], _record_order(r["record"]), r["reason"]))
    return codes, pa.Table.from_pylist(bad, schema=schemas.QUARANTINE)


def _record_order(record: str) -> tuple[int, str]:
    m = re.match(r"#(\d+)", record)
    return (int(m.group(1)) if m else -1, record)
