"""USPTO weekly grant XML: streaming extraction of each design grant's Locarno code (`iter_grant_lic`, `read_lic_codes`).

DeepPatent2 records of some years carry a Locarno code; otherwise it comes from the USPTO weekly grant files
(`ipgYYMMDD.xml`), which are hundreds of MB of concatenated XML documents. We stream them line by line, parse each
document only up to the end of its bibliographic data (the claims and description of utility patents are never built
into a tree), and turn every odd value into an `InputError` that callers put in the quarantine table. The codes are
normalised and checked with `hmpcl_lib.taxonomy.locarno.parse_locarno_code`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html.entities
import io
import logging
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError
from hmpcl_lib.taxonomy.locarno import parse_locarno_code

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# USPTO grant XML
#
# A weekly file (`ipgYYMMDD.xml`, shipped as `ipgYYMMDD.zip`) is a concatenation of XML documents, each starting
# with its own `<?xml ...?>` line. Most are `<us-patent-grant>` (utility, design, plant, reissue, SIR), but other
# roots are interleaved: `<sequence-cwu>` sequence listings of biotech grants. Those are skipped and counted (they
# are not bad data); only broken documents are reported as errors.


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
