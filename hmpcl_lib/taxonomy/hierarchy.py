"""The `lic_hierarchy` and `splits` tables: drawing -> patent -> subclass -> class, and the seeded patent split.

Both outputs depend only on the *set* of input rows (never their order) and the seed, so re-materializing
gives byte-identical tables, and a drawing never changes label or split because rows were read in another order.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import polars as pl
import pyarrow as pa

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError
from hmpcl_lib.taxonomy.locarno import MISSING_TEXTS, load_taxonomy, parse_locarno_code, taxonomy_edition

SPLIT_NAMES = ("train", "val", "test")
# the columns of the parsed drawings tables that `build_lic_hierarchy` reads (read only these at scale)
DRAWING_COLUMNS = ("drawing_id", "patent_id", "doc_number", "grant_date", "figid", "image_path",
                   "classification_locarno")


def _frame(table: pa.Table | pl.DataFrame, name: str, required: Sequence[str]) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    if not isinstance(df, pl.DataFrame):
        raise InputError(f"{name} must be a table, got {type(table).__name__}", name)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{name} lacks column(s) {missing}", name)
    return df


def _raise_on_duplicates(df: pl.DataFrame, keys: list[str], name: str) -> None:
    dup = df.group_by(keys).len().filter(pl.col("len") > 1).sort(keys)
    if dup.height:
        example = dict(zip(keys, dup.row(0)[: len(keys)]))
        raise InputError(f"{dup.height} duplicated {keys} key(s) in {name}, e.g. {example}", name)


def _as_date(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """grant_date as a Date (dates, or ISO `YYYY-MM-DD` strings), so both sides of the join agree."""
    col = pl.col("grant_date")
    try:
        return df.with_columns(col.str.to_date("%Y-%m-%d") if df.schema["grant_date"] == pl.String else col.cast(pl.Date))
    except pl.exceptions.PolarsError as err:
        raise InputError(f"grant_date is not a date: {str(err).splitlines()[0]}", name) from None


def _parse_codes(df: pl.DataFrame, raw: str, prefix: str, source: str) -> pl.DataFrame:
    """Parse each distinct (raw code, edition) of `df` once: columns raw, lic_edition, {prefix}class_code,
    {prefix}subclass_code, {prefix}known_subclass, {prefix}mapped_subclass_code, {prefix}error (reason or null)."""
    rows = []
    for value, edition in df.select(raw, "lic_edition").unique().drop_nulls().iter_rows():
        try:
            code = parse_locarno_code(value, edition=edition, source=source)
            rows.append((value, edition, code.class_code, code.subclass_code, code.known_subclass, code.mapped_subclass_code, None))
        except InputError as err:
            rows.append((value, edition, None, None, None, None, err.reason))
    names = ["class_code", "subclass_code", "known_subclass", "mapped_subclass_code", "error"]
    types = [pl.String, pl.String, pl.Boolean, pl.String, pl.String]
    schema = {raw: pl.String, "lic_edition": pl.String, **{prefix + n: t for n, t in zip(names, types)}}
    return pl.DataFrame(rows, schema=schema, orient="row")


def build_lic_hierarchy(
    drawings: pa.Table | pl.DataFrame,
    lic_codes: pa.Table | pl.DataFrame,
    taxonomy: pl.DataFrame | None = None,
    *,
    source: str = "drawings",
) -> tuple[pa.Table, pa.Table]:
    """Give each drawing its patent's LIC code, checked against and titled from the patent's edition, and integer labels.

    The code comes from the drawing's own record (`classification_locarno`, e.g. `1403`; the column may be absent)
    when it has one (`lic_source` "record"), else from the USPTO XML code of its patent, joined on doc_number +
    grant_date (`lic_source` "uspto_xml"); `lic_xml_code` keeps the XML code either way, so `lic_source_report`
    can count where both exist and disagree. The edition is the one the grant XML declares, else the one in force
    on the grant date (`locarno.taxonomy_edition`); titles come from that edition of `taxonomy` (default: the
    shipped one). A subclass that edition does not list is kept with `known_subclass` False and no subclass title.

    Labels are dense ranks over the sorted codes present in the result (class_label; subclass_label over
    `mapped_subclass_code`, -1 for an unknown subclass; patent_label over patent ids), so they are the same for any
    row order. Drawings with a malformed record code, or without any code, go to the quarantine table (one row per
    drawing, `source` names the drawings table). Returns (`lic_hierarchy` table sorted by drawing_id, quarantine table).
    """
    draw, codes = _checked_inputs(drawings, lic_codes)
    joined = _choose_code(_codes_of_drawings(draw, codes, source))
    quarantine = joined.filter(pl.col("reason").is_not_null()).sort("drawing_id").select(
        source=pl.lit(source), record=pl.col("drawing_id"), reason="reason", stage=pl.lit("lic_hierarchy")
    )
    hierarchy = _labelled(joined.filter(pl.col("reason").is_null()), load_taxonomy() if taxonomy is None else taxonomy)
    hierarchy_table = hierarchy.select(schemas.LIC_HIERARCHY.names).to_arrow().cast(schemas.LIC_HIERARCHY)
    quarantine_table = quarantine.to_arrow().cast(schemas.QUARANTINE)
    return hierarchy_table, quarantine_table


def _checked_inputs(drawings: pa.Table | pl.DataFrame, lic_codes: pa.Table | pl.DataFrame
                    ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both tables as frames with their columns checked, dates as dates, no duplicate keys (InputError otherwise)."""
    draw = _frame(drawings, "drawings", list(DRAWING_COLUMNS[:-1]))
    codes = _frame(lic_codes, "lic_codes", ["doc_number", "grant_date", "lic_edition", "class_code", "subclass_code"])
    if "classification_locarno" not in draw.columns:
        draw = draw.with_columns(classification_locarno=pl.lit(None, pl.String))
    draw, codes = _as_date(draw, "drawings"), _as_date(codes, "lic_codes")
    _raise_on_duplicates(draw, ["drawing_id"], "drawings")
    _raise_on_duplicates(codes, ["doc_number", "grant_date"], "lic_codes")
    return draw, codes


def _codes_of_drawings(draw: pl.DataFrame, codes: pl.DataFrame, source: str) -> pl.DataFrame:
    """Each drawing with its record code and its patent's XML code, the edition that applies, and both codes
    parsed against that edition (`rec_*` and `xml_*` columns)."""
    record_raw = pl.col("classification_locarno").cast(pl.String)
    joined = draw.select(
        "drawing_id", "patent_id", "doc_number", "grant_date", "figid", "image_path",
        record_raw=pl.when(record_raw.str.strip_chars().str.to_lowercase().is_in(list(MISSING_TEXTS)).not_()).then(record_raw),
    ).join(
        codes.select(
            "doc_number", "grant_date",
            xml_edition=pl.col("lic_edition").cast(pl.String).fill_null(""),
            lic_xml_code=pl.coalesce("subclass_code", "class_code"),
        ),
        on=["doc_number", "grant_date"],
        how="left",
    ).with_columns(pl.col("xml_edition").fill_null(""))
    editions = joined.select("xml_edition", "grant_date").unique()
    editions = editions.with_columns(
        lic_edition=pl.Series([taxonomy_edition(e or None, d) for e, d in editions.iter_rows()], dtype=pl.String)
    )
    joined = joined.join(editions, on=["xml_edition", "grant_date"], how="left")
    joined = joined.join(_parse_codes(joined, "record_raw", "rec_", source), on=["record_raw", "lic_edition"], how="left")
    return joined.join(_parse_codes(joined, "lic_xml_code", "xml_", source), on=["lic_xml_code", "lic_edition"], how="left")


def _choose_code(joined: pl.DataFrame) -> pl.DataFrame:
    """The record's code when it has a good one, else the XML's (`lic_source`), and `reason` for a quarantined
    drawing (a bad record code, a bad XML code it needs, or no code at all)."""
    from_record = pl.col("rec_class_code").is_not_null()

    def chosen(name: str) -> pl.Expr:
        return pl.when(from_record).then(pl.col("rec_" + name)).otherwise(pl.col("xml_" + name)).alias(name)

    return joined.with_columns(
        chosen("class_code"), chosen("subclass_code"), chosen("known_subclass"), chosen("mapped_subclass_code"),
        lic_source=pl.when(from_record).then(pl.lit("record")).when(pl.col("xml_class_code").is_not_null()).then(pl.lit("uspto_xml")),
        reason=pl.when(pl.col("rec_error").is_not_null())
        .then(pl.format("bad classification_locarno {} of patent {}: {}", pl.col("record_raw"), pl.col("patent_id"), pl.col("rec_error")))
        .when(pl.col("xml_error").is_not_null() & ~from_record)  # a good record code needs no XML code
        .then(pl.format("bad USPTO Locarno code {} of patent {}: {}", pl.col("lic_xml_code"), pl.col("patent_id"), pl.col("xml_error")))
        .when(pl.col("xml_class_code").is_null() & pl.col("rec_class_code").is_null())
        .then(pl.lit("no Locarno code for patent ") + pl.col("patent_id")),
    )


def _labelled(kept: pl.DataFrame, tax: pl.DataFrame) -> pl.DataFrame:
    """Titles from the row's edition of `tax`, and dense integer labels over the sorted codes present."""
    def dense_rank(col: str) -> pl.Expr:
        return (pl.col(col).rank("dense") - 1).cast(pl.Int32)

    class_titles = tax.filter(pl.col("level") == "class").select("edition", "class_code", class_title=pl.col("title"))
    subclass_titles = tax.filter(pl.col("level") == "subclass").select("edition", "subclass_code", subclass_title=pl.col("title"))
    return (
        kept
        .join(class_titles, left_on=["lic_edition", "class_code"], right_on=["edition", "class_code"], how="left")
        .join(subclass_titles, left_on=["lic_edition", "subclass_code"], right_on=["edition", "subclass_code"], how="left")
        .with_columns(
            class_label=dense_rank("class_code"),
            subclass_label=dense_rank("mapped_subclass_code").fill_null(-1),
            patent_label=dense_rank("patent_id"),
        )
        .sort("drawing_id")
    )


def lic_source_report(hierarchy: pa.Table | pl.DataFrame, max_examples: int = 5) -> dict:
    """Where the hierarchy's codes came from, for asset metadata: drawings whose code came from their DeepPatent2
    record vs the USPTO XML, how many have both and disagree (different class, or different subclasses where both
    give one), a few disagreeing patents, subclasses flagged as unknown to their edition; overall and per grant year."""
    df = _frame(hierarchy, "lic_hierarchy", ["patent_id", "class_code", "subclass_code", "known_subclass", "lic_source", "lic_xml_code"])
    xml_class = pl.col("lic_xml_code").str.slice(0, 2)
    xml_sub = pl.when(pl.col("lic_xml_code").str.len_chars() == 5).then(pl.col("lic_xml_code"))
    both = (pl.col("lic_source") == "record") & pl.col("lic_xml_code").is_not_null()
    differ = (pl.col("class_code") != xml_class) | (pl.col("subclass_code") != xml_sub).fill_null(False)
    df = df.with_columns(
        year=pl.col("patent_id").str.extract(r"-(\d{4})\d{4}$"),
        from_record=pl.col("lic_source") == "record",
        from_xml=pl.col("lic_source") == "uspto_xml",
        both=both,
        disagree=both & differ,
        flagged=pl.col("known_subclass").not_().fill_null(False),
    )

    def counts(frame: pl.DataFrame) -> dict[str, int]:
        return {
            "drawings": frame.height,
            "from_record": int(frame["from_record"].sum()),
            "from_uspto_xml": int(frame["from_xml"].sum()),
            "record_and_xml": int(frame["both"].sum()),
            "disagree": int(frame["disagree"].sum()),
            "unknown_subclass_for_edition": int(frame["flagged"].sum()),
        }

    examples = (
        df.filter("disagree")
        .group_by("patent_id")
        .agg(record=pl.coalesce("subclass_code", "class_code").first(), uspto_xml=pl.col("lic_xml_code").first(), drawings=pl.len())
        .sort("patent_id")
        .head(max_examples)
    )
    by_year = {str(y): counts(df.filter(pl.col("year") == y)) for y in sorted(df["year"].drop_nulls().unique().to_list())}
    return {**counts(df), "disagree_examples": examples.to_dicts(), "by_year": by_year}


def lic_coverage(drawings: pa.Table | pl.DataFrame, hierarchy: pa.Table | pl.DataFrame) -> float:
    """Share of distinct drawings that made it into the hierarchy; 0.0 for no drawings (so a check fails)."""
    draw_ids = _frame(drawings, "drawings", ["drawing_id"]).get_column("drawing_id").unique()
    if draw_ids.len() == 0:
        return 0.0
    kept = _frame(hierarchy, "lic_hierarchy", ["drawing_id"]).get_column("drawing_id").unique()
    return float(draw_ids.is_in(kept.implode()).sum()) / draw_ids.len()


def patent_hash(patent_id: str, seed: int) -> int:
    """A 64-bit hash of (seed, patent_id) that is the same in every process and library version."""
    digest = hashlib.blake2b(f"{seed}\x1f{patent_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def build_splits(
    hierarchy: pa.Table | pl.DataFrame, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> pa.Table:
    """Split by patent into train/val/test, stratified by main class; in test, queries vs gallery.

    Within each main class, patents are ordered by `patent_hash(patent_id, seed)` and cut at the cumulative
    fractions (rounded half up), so every class with enough patents has some in each split and the result
    depends on the patent set and seed only, never on row order. In test, each patent's lowest drawing_id
    is its `query` and the rest its `gallery`; a single-drawing test patent keeps its query row (the
    evaluation excludes and counts queries without a relevant gallery item).
    """
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    df = _frame(hierarchy, "lic_hierarchy", ["drawing_id", "patent_id", "class_code"])
    _raise_on_duplicates(df, ["drawing_id"], "lic_hierarchy")

    patents = df.group_by("patent_id").agg(pl.col("class_code").min()).sort("patent_id")
    patents = patents.with_columns(
        hash=pl.Series([patent_hash(p, seed) for p in patents["patent_id"].to_list()], dtype=pl.UInt64)
    ).sort(["class_code", "hash", "patent_id"])
    rank = pl.int_range(pl.len()).over("class_code")
    size = pl.len().over("class_code")
    train_end = (size * fractions[0] + 0.5).floor()
    val_end = (size * (fractions[0] + fractions[1]) + 0.5).floor()
    patents = patents.with_columns(
        split=pl.when(rank < train_end).then(pl.lit("train")).when(rank < val_end).then(pl.lit("val")).otherwise(pl.lit("test"))
    )

    first_drawing = pl.col("drawing_id") == pl.col("drawing_id").min().over("patent_id")
    out = (
        df.select("drawing_id", "patent_id")
        .join(patents.select("patent_id", "split"), on="patent_id", how="left")
        .with_columns(
            role=pl.when(pl.col("split") != "test")
            .then(pl.col("split"))
            .when(first_drawing)
            .then(pl.lit("query"))
            .otherwise(pl.lit("gallery"))
        )
        .sort("drawing_id")
    )
    return out.select(schemas.SPLITS.names).to_arrow().cast(schemas.SPLITS)
