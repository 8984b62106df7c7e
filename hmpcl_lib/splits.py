"""The rows of one split (`train`, `val`, `test`) of a table of drawings: the one place a split is selected, for
training (the tracked runs and `hmpcl-train`) and for evaluation."""

from __future__ import annotations

import polars as pl

from hmpcl_lib.errors import InputError


def split_rows(table: pl.DataFrame, splits: pl.DataFrame, split: str, source: str = "splits") -> pl.DataFrame:
    """The rows of `table` whose drawing is in `split`, by drawing id (so the order never depends on how the table
    was written); InputError naming `source` when a column is missing or no row is in the split."""
    for name, frame, columns in (("table", table, ["drawing_id"]), ("splits", splits, ["drawing_id", "split"])):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputError(f"the {name} lacks columns {missing}", source=source)
    ids = splits.filter(pl.col("split") == split).select("drawing_id")
    rows = table.join(ids, on="drawing_id", how="semi").sort("drawing_id")
    if rows.height == 0 and table.height:
        raise InputError(f"no drawing of the table is in split {split!r}", source=source)
    return rows
