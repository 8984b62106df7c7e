"""Locarno International Classification (LIC): the shipped taxonomy by edition, code normalisation, USPTO grant XML extraction.

DeepPatent2 records of some years carry a Locarno code; otherwise it comes from the USPTO weekly grant files
(`ipgYYMMDD.xml`), which are hundreds of MB of concatenated XML documents. We stream them line by line, parse each
document only up to the end of its bibliographic data (the claims and description of utility patents are never built
into a tree), and turn every odd value into an `InputError` that callers put in the quarantine table.

The taxonomy (`data/locarno_editions.csv`; sources and confidence in `data/LOCARNO_SOURCES.md`) covers editions 8 to 15
(USPTO grants 2007-2020 declare editions 8-12, later ones 13-15): one row per class or subclass and title, valid from
`first_edition` to `last_edition`, with its source and confidence. Vacant numbers (03-02, 15-08, 19-05; 23-02 from the
14th) are not listed. A code is validated against the edition its grant declares: a valid class (01..32) whose subclass
that edition does not list is kept and flagged (`LocarnoCode.known_subclass` is False), never dropped. Where a subclass
was renumbered or split, `mapped_subclass_code` is its stable training label: 32-00 (editions 8-13) -> 32-01 (its
content from the 14th on); 23-06, 23-07, 23-08 (14th, split out of 23-02) -> 23-02, the code that covers all three.
"""

from __future__ import annotations

import datetime as dt
import functools
import html.entities
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import polars as pl
import pyarrow as pa

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError

log = logging.getLogger(__name__)

TAXONOMY_PATH = Path(__file__).parent / "data" / "locarno_editions.csv"
EDITIONS = tuple(str(e) for e in range(8, 16))  # the editions the shipped taxonomy covers
NEWEST_EDITION = EDITIONS[-1]
# (date it entered into force, edition), newest first; used when a grant declares no usable edition.
EDITIONS_IN_FORCE = (
    (dt.date(2025, 1, 1), "15"), (dt.date(2023, 1, 1), "14"), (dt.date(2021, 1, 1), "13"), (dt.date(2019, 1, 1), "12"),
    (dt.date(2017, 1, 1), "11"), (dt.date(2014, 1, 1), "10"), (dt.date(2009, 1, 1), "9"), (dt.date(2004, 1, 1), "8"),
)
NUM_CLASSES = 32

MISSING_TEXTS = frozenset({"", "none", "null", "nan", "n/a", "na"})  # values that mean "no code"
# Optional "LOC (11) Cl." prefix of the WIPO notation, then class, optional separator, optional subclass.
_PREFIX = re.compile(r"^(?:LOC\s*\(\s*\d+\s*\)\s*)?(?:CL\.?\s*)?", re.IGNORECASE | re.ASCII)
_SEPARATED = re.compile(r"^(\d{1,2})\s*[-/.\s]\s*(\d{1,2})$", re.ASCII)
_DIGITS = re.compile(r"^\d{1,4}$", re.ASCII)
# An edition as grants write it: "11", " 11 ", "09", "LOC (9)", "(9)", "9th", "9th edition".
_EDITION = re.compile(r"^(?:LOC\s*)?\(?\s*(\d{1,2})\s*\)?\s*(?:st|nd|rd|th)?\s*(?:ed(?:ition|\.)?)?$", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True, order=True)
class LocarnoCode:
    """A normalised LIC code: class `"15"` and subclass `"15-07"` (None when only the class is known).

    Equality and order use the code only. `edition` is the taxonomy edition it was checked against;
    `known_subclass` is False when that edition does not list the subclass (kept, flagged), None for a class-only
    code; `mapped_subclass_code` is the stable training label (the subclass itself unless renumbered or split).
    """

    class_code: str
    subclass_code: str | None = None
    edition: str | None = field(default=None, compare=False)
    known_subclass: bool | None = field(default=None, compare=False)
    mapped_subclass_code: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.subclass_code or self.class_code


@functools.lru_cache(maxsize=1)
def load_spans() -> pl.DataFrame:
    """The shipped file as is: level, class_code, subclass_code, first_edition, last_edition, title,
    mapped_subclass_code, confidence, source, note."""
    codes = ("class_code", "subclass_code", "mapped_subclass_code")
    editions = {"first_edition": pl.Int32, "last_edition": pl.Int32}
    return pl.read_csv(TAXONOMY_PATH, schema_overrides={**{c: pl.String for c in codes}, **editions})


@functools.lru_cache(maxsize=None)
def load_taxonomy(edition: str | int | None = None) -> pl.DataFrame:
    """One row per code and edition: edition ('8'..'15'), level ('class'|'subclass'), class_code, subclass_code,
    title, mapped_subclass_code (subclasses only), confidence, source. All editions, or only `edition`."""
    editions = pl.DataFrame({"edition": [int(e) for e in EDITIONS]}, schema={"edition": pl.Int32})
    tax = (
        load_spans()
        .join(editions, how="cross")
        .filter(pl.col("edition").is_between(pl.col("first_edition"), pl.col("last_edition")))
        .with_columns(
            edition=pl.col("edition").cast(pl.String),
            mapped_subclass_code=pl.when(pl.col("level") == "subclass").then(pl.coalesce("mapped_subclass_code", "subclass_code")),
        )
        .select("edition", "level", "class_code", "subclass_code", "title", "mapped_subclass_code", "confidence", "source")
        .sort(pl.col("edition").cast(pl.Int32), "class_code", "level", "subclass_code", nulls_last=False)
    )
    return tax if edition is None else tax.filter(pl.col("edition") == taxonomy_edition(edition))


def normalise_edition(raw: Any) -> str | None:
    """An edition as a grant writes it ('11', ' 11 ', '09', 'LOC (9)', 9) -> '11', '9'; None if missing or unreadable."""
    if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, int)):
        return None
    m = _EDITION.match(str(raw).strip())
    return str(int(m.group(1))) if m and int(m.group(1)) > 0 else None


def edition_in_force(date: dt.date) -> str:
    """The edition in force on `date` (the 8th for dates before 2004: the oldest edition shipped)."""
    return next((edition for since, edition in EDITIONS_IN_FORCE if date >= since), EDITIONS[0])


def taxonomy_edition(raw: Any, grant_date: dt.date | None = None) -> str:
    """The shipped edition to check a code against.

    The declared edition when it is one of 8..15; an older one (7) -> 8 and a newer one (16) -> 15, the nearest
    shipped; missing or unreadable -> the edition in force on the grant date when known, else the newest (15):
    the newest edition is the one a code without context most plausibly follows.
    """
    edition = normalise_edition(raw)
    if edition is None:
        return edition_in_force(grant_date) if grant_date is not None else NEWEST_EDITION
    return str(min(max(int(edition), int(EDITIONS[0])), int(EDITIONS[-1])))


@functools.lru_cache(maxsize=None)
def _subclasses_by_class(edition: str) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    subs = load_taxonomy(edition).filter(pl.col("level") == "subclass")
    for klass, sub in subs.select("class_code", "subclass_code").iter_rows():
        out.setdefault(klass, set()).add(sub)
    return {k: frozenset(v) for k, v in out.items()}


@functools.lru_cache(maxsize=1)
def _mapped() -> dict[str, str]:
    spans = load_spans().filter(pl.col("mapped_subclass_code").is_not_null())
    return dict(spans.select("subclass_code", "mapped_subclass_code").iter_rows())


def class_titles(edition: str | int | None = None) -> dict[str, str]:
    """class_code -> title in `edition` (default: the newest)."""
    t = load_taxonomy(taxonomy_edition(edition)).filter(pl.col("level") == "class")
    return dict(zip(t["class_code"].to_list(), t["title"].to_list()))


def subclass_titles(edition: str | int | None = None) -> dict[str, str]:
    """subclass_code -> title in `edition` (default: the newest)."""
    t = load_taxonomy(taxonomy_edition(edition)).filter(pl.col("level") == "subclass")
    return dict(zip(t["subclass_code"].to_list(), t["title"].to_list()))


def parse_locarno_code(
    raw: Any, *, edition: Any = None, source: str | None = None, record: str | int | None = None
) -> LocarnoCode:
    """Normalise a raw LIC value into a `LocarnoCode` checked against `edition`, or raise `InputError` saying why.

    Accepted forms (surrounding whitespace ignored, optional WIPO prefix `LOC (11) Cl.`):
    - class and subclass with a separator `-`, `/`, `.` or space: `15-07`, `15/07`, `15.07`, ` 15 07 `, `1-04`;
    - four digits `1507`, `0507`;
    - three digits `507`: read as a class whose leading zero was lost (05-07), never as 50-7;
    - one or two digits `15`, `5`: class only (subclass unknown), except for an undivided class (31; 32 before the
      14th edition), whose single subclass `-00` the class alone determines.
    `edition` is the grant's as written ('11', ' 11 ', 'LOC (9)'); see `taxonomy_edition` for a missing or unknown one.
    `None`, `"None"`, `""` (and null/NaN/N/A) raise "missing Locarno code"; class 00 or > 32 raises; anything else
    malformed raises. A well-formed subclass that the edition does not list is kept with `known_subclass=False`.
    An `int` (e.g. 1507 read from a numeric column) is accepted.
    """
    if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, int)):
        if raw is None:
            raise InputError("missing Locarno code (None)", source, record)
        raise InputError(f"Locarno code must be text, got {type(raw).__name__} {raw!r}", source, record)
    text = str(raw).strip()
    if text.lower() in MISSING_TEXTS:
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
    ed = taxonomy_edition(edition)
    known = _subclasses_by_class(ed).get(class_code, frozenset())
    if sub_digits is None:
        only = f"{class_code}-00"
        if known != {only}:
            return LocarnoCode(class_code, None, ed, None, None)
        sub_digits = "00"
    subclass_code = f"{class_code}-{sub_digits}"
    return LocarnoCode(class_code, subclass_code, ed, subclass_code in known, _mapped().get(subclass_code, subclass_code))


# --------------------------------------------------------------------------------------------------------------
# USPTO grant XML
#
# A weekly file (`ipgYYMMDD.xml`, shipped as `ipgYYMMDD.zip`) is a concatenation of XML documents, each starting
# with its own `<?xml ...?>` line. Most are `<us-patent-grant>` (utility, design, plant, reissue, SIR), but other
# roots are interleaved: `<sequence-cwu>` sequence listings of biotech grants. Those are skipped and counted (they
# are not bad data); only broken documents are reported as errors.

import dataclasses  # noqa: E402  (the reader's own imports, kept with it below the taxonomy half)
import io  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

GRANT_ROOT = "us-patent-grant"


@dataclasses.dataclass
class GrantFileCounts:
    """What one weekly file held, filled in while `iter_grant_lic` streams it (for asset metadata)."""

    source: str
    documents: int = 0  # every document of the file
    grants: int = 0  # <us-patent-grant> documents whose bibliographic data was read
    design_grants: int = 0  # of which design patents
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # non-grant documents by root tag, e.g. {"sequence-cwu": 2}
    errors: int = 0  # documents reported to `on_error` (malformed XML, bad date, ...)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarise_grant_counts(counts: Iterable[GrantFileCounts]) -> dict[str, Any]:
    """Totals over files (documents, grants, design_grants, errors, skipped by root tag) and `per_file` counts
    keyed by file name: what `read_lic_codes(..., counts=...)` collected, shaped for asset metadata."""
    counts = list(counts)
    totals: dict[str, Any] = {key: sum(getattr(c, key) for c in counts) for key in ("documents", "grants", "design_grants", "errors")}
    skipped: dict[str, int] = {}
    for c in counts:
        for root, n in c.skipped.items():
            skipped[root] = skipped.get(root, 0) + n
    per_file = {Path(c.source).name: {k: v for k, v in c.as_dict().items() if k != "source"} for c in counts}
    return {**totals, "skipped": dict(sorted(skipped.items())), "per_file": per_file}


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
    """XMLParser target that keeps only the few texts we need, and notes when it has seen enough: the end of
    the bibliographic part of a grant, or the root tag of any other document (whose body is never parsed)."""

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
            self.done = tag != GRANT_ROOT
            return
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


def _iter_documents(stream: Iterable[bytes], source: str) -> Iterator[tuple[int, int, Iterator[bytes]]]:
    """Split a weekly stream on `<?xml` lines: yields (index, first line number, line iterator), never a whole file."""
    pending: bytes | None = None
    line_no = 0

    def lines() -> Iterator[bytes]:
        nonlocal pending, line_no
        first, pending = pending, None
        if first is not None:
            yield first
        for line in stream:
            line_no += 1
            if line.lstrip().startswith(b"<?xml"):
                pending = line
                return
            yield line

    for line in stream:  # find the first document
        line_no += 1
        if line.lstrip().startswith(b"<?xml"):
            pending = line
            break
        if line.strip():
            raise InputError("file does not start with an XML declaration (<?xml ...?>)", source, "#0")
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
            return collector  # the rest (description, claims; a sequence listing) is not needed
    parser.close()  # raises on truncated documents
    if collector.root == GRANT_ROOT and not collector.done:
        raise ET.ParseError(f"no <{_BIBLIO}> element")
    return collector


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _xml_streams(path: Path) -> Iterator[tuple[str, Iterable[bytes]]]:
    """(source, binary stream) of each XML document file in `path`: the file itself, or each `.xml` member of a
    zip, streamed out of the archive (never extracted to disk nor read whole). Zip sources read `<zip>!<member>`."""
    if not _is_zip(path):
        with open(path, "rb") as f:
            yield str(path), f
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as err:
        raise InputError(f"corrupt or unreadable zip archive ({err})", str(path)) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(".xml")]
        if not members:
            names = ", ".join(archive.namelist()[:5]) or "none"
            raise InputError(f"zip archive has no .xml member (members: {names})", str(path))
        for member in members:
            with archive.open(member) as f:  # buffered: ZipExtFile's own readline is several times slower
                yield f"{path}!{member.filename}", io.BufferedReader(f, buffer_size=1 << 20)


def iter_grant_lic(
    path: str | Path,
    on_error: Callable[[InputError], None] | None = None,
    counts: GrantFileCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the LIC data of each design patent in a USPTO weekly grant file (`.xml`, or `.zip` holding it).

    Yields dicts: source (the file; `<zip>!<member>` for a zip), index (document number in the file, from 0),
    doc_number (`D0836880`), grant_date (datetime.date), kind (`S1`), lic_edition, lic_raw (str, None if the
    design has no classification-locarno). Non-design grants are skipped unless they carry a Locarno code;
    documents with another root than <us-patent-grant> (`<sequence-cwu>` ...) are skipped without parsing
    their body. Both are only counted, in `counts` when given. A malformed document is reported as an
    `InputError` naming the file and `#index` to `on_error` (default: logged as a warning) and the stream goes
    on with the next document. A corrupt zip or a zip without an .xml member raises `InputError`.
    """
    path = Path(path)
    counts = counts if counts is not None else GrantFileCounts(str(path))
    report = on_error or (lambda err: log.warning("%s", err))

    def error(err: InputError) -> None:
        counts.errors += 1
        report(err)

    for source, stream in _xml_streams(path):
        try:
            yield from _grant_records(stream, source, counts, error)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise InputError(f"corrupt zip member ({type(err).__name__}: {err})", source) from None


def _grant_records(
    stream: Iterable[bytes], source: str, counts: GrantFileCounts, error: Callable[[InputError], None]
) -> Iterator[dict[str, Any]]:
    for index, first_line, lines in _iter_documents(stream, source):
        counts.documents += 1
        record = f"#{index} (line {first_line})"
        try:
            doc = _parse_document(lines)
            if doc.root != GRANT_ROOT:
                counts.skipped[doc.root] = counts.skipped.get(doc.root, 0) + 1
                continue
            counts.grants += 1
            fields = doc.fields
            if not fields.get("doc_number"):
                raise InputError("no publication-reference doc-number", source, record)
            kind = fields.get("kind", "")
            is_design = kind.upper().startswith("S") or doc.appl_type == "design" or fields["doc_number"].upper().startswith("D")
            counts.design_grants += is_design
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
            error(err)
        except (ET.ParseError, UnicodeDecodeError) as err:
            error(InputError(f"malformed XML document: {err} (line counted from the document's <?xml line)", source, record))


def read_lic_codes(
    paths: Iterable[str | Path], *, counts: list[GrantFileCounts] | None = None
) -> tuple[pa.Table, pa.Table]:
    """Read weekly grant files (`.xml` or `.zip`) into (`lic_codes` table, quarantine table), both sorted.

    Quarantined (stage `lic_codes`): malformed documents, designs without classification-locarno,
    invalid/unknown codes, and a repeated (doc_number, grant_date) with a different code than the first.
    Non-grant documents (`<sequence-cwu>` ...) are not quarantined. When `counts` is a list, one
    `GrantFileCounts` per file (in sorted file order) is appended to it.
    """
    rows: dict[tuple[str, dt.date], dict[str, Any]] = {}
    bad: list[dict[str, str]] = []

    def quarantine(err: InputError) -> None:
        bad.append({"source": err.source or "", "record": err.record or "", "reason": err.reason, "stage": "lic_codes"})

    for path in sorted(Path(p) for p in paths):
        file_counts = GrantFileCounts(str(path))
        if counts is not None:
            counts.append(file_counts)
        for rec in iter_grant_lic(path, on_error=quarantine, counts=file_counts):
            record = f"#{rec['index']} ({rec['doc_number']})"
            if rec["lic_raw"] is None:
                quarantine(InputError("design patent without classification-locarno", rec["source"], record))
                continue
            try:
                code = parse_locarno_code(rec["lic_raw"], edition=rec["lic_edition"], source=rec["source"], record=record)
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
