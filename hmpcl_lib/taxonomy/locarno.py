"""Locarno International Classification (LIC): the shipped taxonomy by edition and code normalisation.

The taxonomy (`tables/locarno_editions.csv`; sources and confidence in `tables/LOCARNO_SOURCES.md`) covers editions 8
to 15 (USPTO grants 2007-2020 declare editions 8-12, later ones 13-15): one row per class or subclass and title, valid
from `first_edition` to `last_edition`, with its source and confidence. Vacant numbers (03-02, 15-08, 19-05; 23-02 from
the 14th) are not listed. A code is validated against the edition its grant declares: a valid class (01..32) whose
subclass that edition does not list is kept and flagged (`LocarnoCode.known_subclass` is False), never dropped. Where a
subclass was renumbered or split, `mapped_subclass_code` is its stable training label: 32-00 (editions 8-13) -> 32-01
(its content from the 14th on); 23-06, 23-07, 23-08 (14th, split out of 23-02) -> 23-02, the code that covers all
three. The USPTO grant XML reader that extracts the codes is `hmpcl_lib.sources.uspto`.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from hmpcl_lib.errors import InputError

TAXONOMY_PATH = Path(__file__).parent / "tables" / "locarno_editions.csv"
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
