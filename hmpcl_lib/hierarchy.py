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
from hmpcl_lib.locarno import load_taxonomy

SPLIT_NAMES = ("train", "val", "test")


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


def build_lic_hierarchy(
    drawings: pa.Table | pl.DataFrame,
    lic_codes: pa.Table | pl.DataFrame,
    taxonomy: pl.DataFrame | None = None,
    *,
    source: str = "drawings",
) -> tuple[pa.Table, pa.Table]:
    """Join drawings to their patent's LIC code (on doc_number + grant_date) and add titles and integer labels.

    Labels are dense ranks over the sorted codes present in the result (class_label, subclass_label with -1
    for an unknown subclass, patent_label over patent ids), so they are the same for any row order.
    Drawings whose patent has no LIC code go to the quarantine table (one row per drawing, `source` names the
    drawings table). Returns (`lic_hierarchy` table sorted by drawing_id, quarantine table).
    """
    draw = _frame(drawings, "drawings", ["drawing_id", "patent_id", "doc_number", "grant_date", "figid", "image_path"])
    codes = _frame(lic_codes, "lic_codes", ["doc_number", "grant_date", "lic_edition", "class_code", "subclass_code"])
    tax = load_taxonomy() if taxonomy is None else taxonomy
    draw, codes = _as_date(draw, "drawings"), _as_date(codes, "lic_codes")
    _raise_on_duplicates(draw, ["drawing_id"], "drawings")
    _raise_on_duplicates(codes, ["doc_number", "grant_date"], "lic_codes")

    class_titles = tax.filter(pl.col("level") == "class").select("class_code", class_title=pl.col("title"))
    subclass_titles = tax.filter(pl.col("level") == "subclass").select("subclass_code", subclass_title=pl.col("title"))
    joined = draw.select("drawing_id", "patent_id", "doc_number", "grant_date", "figid", "image_path").join(
        codes.select("doc_number", "grant_date", "lic_edition", "class_code", "subclass_code"),
        on=["doc_number", "grant_date"],
        how="left",
    )

    unmatched = joined.filter(pl.col("class_code").is_null()).sort("drawing_id")
    quarantine = unmatched.select(
        source=pl.lit(source),
        record=pl.col("drawing_id"),
        reason=pl.lit("no Locarno code for patent ") + pl.col("patent_id"),
        stage=pl.lit("lic_hierarchy"),
    )

    def dense_rank(col: str) -> pl.Expr:
        return (pl.col(col).rank("dense") - 1).cast(pl.Int32)

    hierarchy = (
        joined.filter(pl.col("class_code").is_not_null())
        .join(class_titles, on="class_code", how="left")
        .join(subclass_titles, on="subclass_code", how="left")
        .with_columns(
            class_label=dense_rank("class_code"),
            subclass_label=dense_rank("subclass_code").fill_null(-1),
            patent_label=dense_rank("patent_id"),
        )
        .sort("drawing_id")
    )
    hierarchy_table = hierarchy.select(schemas.LIC_HIERARCHY.names).to_arrow().cast(schemas.LIC_HIERARCHY)
    quarantine_table = quarantine.to_arrow().cast(schemas.QUARANTINE)
    return hierarchy_table, quarantine_table


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
