"""Arrow schemas of the tables the pipeline writes (see docs/ARCHITECTURE.md): one place to change a column."""

from __future__ import annotations

import pyarrow as pa

DRAWINGS = pa.schema(
    [
        ("drawing_id", pa.string()),
        ("record_id", pa.string()),
        ("patent_id", pa.string()),
        ("doc_number", pa.string()),
        ("grant_date", pa.date32()),
        ("year", pa.int16()),
        ("figid", pa.int32()),
        ("caption", pa.string()),
        ("object", pa.string()),
        ("aspect", pa.string()),
        ("figure_file", pa.string()),
        ("subfigure_file", pa.string()),
        ("object_title", pa.string()),
        ("x_figure", pa.float64()),
        ("y_figure", pa.float64()),
        ("w_figure", pa.float64()),
        ("h_figure", pa.float64()),
        ("W_label", pa.string()),
        ("H_label", pa.string()),
        ("L_label", pa.string()),
        ("T_label", pa.string()),
        ("image_path", pa.string()),
    ]
)

QUARANTINE = pa.schema(
    [("source", pa.string()), ("record", pa.string()), ("reason", pa.string()), ("stage", pa.string())]
)

LIC_CODES = pa.schema(
    [
        ("doc_number", pa.string()),
        ("grant_date", pa.date32()),
        ("lic_edition", pa.string()),
        ("lic_raw", pa.string()),
        ("class_code", pa.string()),
        ("subclass_code", pa.string()),
        ("source", pa.string()),
    ]
)

LIC_HIERARCHY = pa.schema(
    [
        ("drawing_id", pa.string()),
        ("patent_id", pa.string()),
        ("figid", pa.int32()),
        ("image_path", pa.string()),
        ("class_code", pa.string()),
        ("class_title", pa.string()),
        ("subclass_code", pa.string()),
        ("subclass_title", pa.string()),
        ("lic_edition", pa.string()),
        ("class_label", pa.int32()),
        ("subclass_label", pa.int32()),
        ("patent_label", pa.int32()),
    ]
)

SPLITS = pa.schema(
    [("drawing_id", pa.string()), ("patent_id", pa.string()), ("split", pa.string()), ("role", pa.string())]
)


def embeddings_schema(dim: int, float16: bool = False) -> pa.Schema:
    value = pa.float16() if float16 else pa.float32()
    return pa.schema([("drawing_id", pa.string()), ("embedding", pa.list_(value, dim))])


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
