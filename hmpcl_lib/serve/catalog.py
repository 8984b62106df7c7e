"""What the search page shows about a corpus drawing, looked up by drawing id only (never by a user-given path).

`Catalog` holds one row per drawing of the hierarchy table: patent id, grant date (from the parsed `drawings`
tables when they exist, else the `-YYYYMMDD` suffix of the patent id), Locarno class and subclass with their titles
(the hierarchy's own `class_title` / `subclass_title`, else the shipped taxonomy of the row's `lic_edition`, else of
the newest edition) and the image path. `image_of` only answers files under the data root, and `thumbnail`
decodes them with the query path's checks (header size limit before decoding).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from hmpcl_lib.errors import InputError
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.query_image import DEFAULT_MAX_PIXELS, check_query_path, open_query_image
from hmpcl_lib.taxonomy.locarno import NEWEST_EDITION, load_taxonomy

CATALOG_COLUMNS = ["drawing_id", "patent_id", "grant_date", "class_code", "class_title", "subclass_code",
                   "subclass_title", "image_path"]
THUMB_SIZE = 192  # pixels, the longer side
MAX_DRAWING_ID = 200  # characters; longer ids are refused before any lookup


def _grant_dates(hierarchy: pl.DataFrame, layout: DataLayout) -> pl.DataFrame:
    """drawing_id -> grant_date: the drawings tables' column, else parsed from the patent id's date suffix."""
    from_id = hierarchy.select(
        "drawing_id",
        pl.col("patent_id").str.extract(r"-(\d{8})$").str.to_date("%Y%m%d", strict=False).alias("id_date"),
    )
    paths = layout.drawings_paths()
    if not paths:
        return from_id.rename({"id_date": "grant_date"})
    parsed = (pl.scan_parquet(paths).select("drawing_id", pl.col("grant_date").cast(pl.Date))
              .unique("drawing_id", keep="first").collect())
    return (from_id.join(parsed, on="drawing_id", how="left")
            .select("drawing_id", pl.coalesce("grant_date", "id_date").alias("grant_date")))


def _titled(hierarchy: pl.DataFrame) -> pl.DataFrame:
    """Class and subclass titles: the table's own columns where set, else the taxonomy of the row's edition."""
    tax = load_taxonomy()
    edition = pl.col("lic_edition") if "lic_edition" in hierarchy.columns else pl.lit(None, pl.String)
    frame = hierarchy.with_columns(pl.coalesce(edition, pl.lit(NEWEST_EDITION)).alias("_edition"))
    classes = tax.filter(pl.col("level") == "class").select(
        pl.col("edition").alias("_edition"), "class_code", pl.col("title").alias("_class_title"))
    subclasses = tax.filter(pl.col("level") == "subclass").select(
        pl.col("edition").alias("_edition"), "subclass_code", pl.col("title").alias("_subclass_title"))
    frame = (frame.join(classes, on=["_edition", "class_code"], how="left", maintain_order="left")
             .join(subclasses, on=["_edition", "subclass_code"], how="left", maintain_order="left"))
    own_class = pl.col("class_title") if "class_title" in frame.columns else pl.lit(None, pl.String)
    own_subclass = pl.col("subclass_title") if "subclass_title" in frame.columns else pl.lit(None, pl.String)
    return frame.with_columns(class_title=pl.coalesce(own_class, "_class_title"),
                              subclass_title=pl.coalesce(own_subclass, "_subclass_title"))


class Catalog:
    """Drawing metadata and images by drawing id, confined to the data root."""

    def __init__(self, hierarchy: pl.DataFrame, layout: DataLayout, max_pixels: int = DEFAULT_MAX_PIXELS,
                 thumb_size: int = THUMB_SIZE):
        missing = [c for c in ("drawing_id", "patent_id", "class_code", "subclass_code", "image_path")
                   if c not in hierarchy.columns]
        if missing:
            raise InputError(f"hierarchy table lacks columns {missing}", source="hierarchy")
        self.layout = layout
        self.max_pixels = max_pixels
        self.thumb_size = thumb_size
        rows = hierarchy.unique("drawing_id", keep="first", maintain_order=True)
        self.table = (_titled(rows).join(_grant_dates(rows, layout), on="drawing_id", how="left", maintain_order="left")
                      .select(CATALOG_COLUMNS))
        # id -> row number, and the rows as Arrow columns: result rows are an Arrow `take`, not a dict per drawing
        self._row_of = {drawing_id: i for i, drawing_id in enumerate(self.table["drawing_id"].to_list())}
        self._arrow = self.table.to_arrow()
        self.thumbnail = functools.lru_cache(maxsize=4096)(self._thumbnail)

    @classmethod
    def from_layout(cls, layout: DataLayout, **kw) -> "Catalog":
        if not layout.hierarchy_path.is_file():
            raise InputError("hierarchy table not found: run `make run` first (or pass --data-root)",
                             source=str(layout.hierarchy_path))
        return cls(pl.read_parquet(layout.hierarchy_path), layout, **kw)

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, drawing_id: object) -> bool:
        return isinstance(drawing_id, str) and drawing_id in self._row_of

    def get(self, drawing_id: str) -> dict | None:
        if not isinstance(drawing_id, str) or len(drawing_id) > MAX_DRAWING_ID:
            return None
        row = self._row_of.get(drawing_id)
        return None if row is None else self.rows([row])[0]

    def row_numbers(self, drawing_ids: Iterable[str | None]) -> np.ndarray:
        """int64 row number of each id in this catalog, -1 where it has none (e.g. to map index positions once)."""
        return np.fromiter((self._row_of.get(i, -1) for i in drawing_ids), dtype=np.int64)

    def rows(self, row_numbers: Sequence[int] | np.ndarray) -> list[dict]:
        """The CATALOG_COLUMNS of the given rows (an Arrow take: microseconds for a page of results)."""
        return self._arrow.take(pa.array(np.asarray(row_numbers, dtype=np.int64))).to_pylist()

    def classes(self) -> list[dict]:
        """[{class_code, class_title, drawings}] of the corpus, by code (for the class filter)."""
        counts = (self.table.group_by("class_code").agg(pl.col("class_title").drop_nulls().first(),
                                                         pl.len().alias("drawings"))
                  .drop_nulls("class_code").sort("class_code"))
        return counts.to_dicts()

    def examples(self, per_class: int = 1, limit: int = 12) -> list[dict]:
        """A few corpus drawings to pick as queries: the first `per_class` of each class, up to `limit`."""
        picked = (self.table.drop_nulls("class_code").sort("drawing_id")
                  .group_by("class_code", maintain_order=True).head(per_class).sort("class_code"))
        return picked.head(limit).to_dicts()

    def image_of(self, drawing_id: str) -> Path:
        """The drawing's image file, resolved; refused when it is missing or outside the data root."""
        row = self.get(drawing_id)
        if row is None or not row["image_path"]:
            raise KeyError(drawing_id)
        return check_query_path(row["image_path"], self.layout.root)

    def _thumbnail(self, drawing_id: str) -> bytes:
        """A small PNG of the drawing (longer side `thumb_size`); KeyError for an unknown id, InputError for a bad file."""
        path = self.image_of(drawing_id)
        image = open_query_image(path, self.layout.root, self.max_pixels)
        image.thumbnail((self.thumb_size, self.thumb_size))
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()
