"""Dagster metadata for tables and runs: row count, column schema, a markdown preview (`hmpcl_lib.io.markdown_table`),
links."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from hmpcl_lib.io import file_sha256, markdown_table

CONTENT_DIGEST = "content_sha256"  # metadata key: SHA-256 of a written file, read back by new_drawings_sensor


def table_metadata(df: pl.DataFrame, path: Path | None = None, preview_rows: int = 5) -> dict:
    meta = {
        "dagster/row_count": dg.MetadataValue.int(df.height),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in df.schema.items()]
        ),
        "preview": dg.MetadataValue.md(markdown_table(df, preview_rows)),
    }
    if path is not None:
        meta["path"] = dg.MetadataValue.path(str(path))
    return meta


def content_metadata(path: Path) -> tuple[dict, dg.DataVersion]:
    """The SHA-256 of a file as written (one streamed pass, no parsing) as metadata and as the materialization's data
    version: with a deterministic writer, same content ⇔ same digest."""
    digest = file_sha256(path)
    return {CONTENT_DIGEST: dg.MetadataValue.text(digest)}, dg.DataVersion(digest)


def counts_markdown(df: pl.DataFrame, by: str) -> str:
    if df.height == 0:
        return "(none)"
    return markdown_table(df.group_by(by).len().sort("len", descending=True), max_rows=50)


def image_markdown(title: str, png: Path) -> dg.MetadataValue:
    """Inline PNG as a data URI so the plot shows in the asset's metadata without a file server."""
    import base64

    data = base64.b64encode(Path(png).read_bytes()).decode()
    return dg.MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{data})")
