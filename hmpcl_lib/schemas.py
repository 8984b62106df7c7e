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
        ("W_label", pa.float64()),  # the figure label's box, normalised (e.g. 0.0439147)
        ("H_label", pa.float64()),
        ("L_label", pa.float64()),
        ("T_label", pa.float64()),
        ("classification_national", pa.string()),  # as the record has it, e.g. "D 8403"
        ("classification_locarno", pa.string()),  # as the record has it, e.g. "1403" (numbers zero-padded to 4)
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
        ("lic_edition", pa.string()),  # the taxonomy edition the code was checked against and titled from ('8'..'15')
        ("known_subclass", pa.bool_()),  # False: a subclass that edition does not list (kept, flagged); null: class only
        ("mapped_subclass_code", pa.string()),  # stable training label (the subclass unless renumbered or split)
        ("lic_source", pa.string()),  # where the code came from: "record" (DeepPatent2) or "uspto_xml"
        ("lic_xml_code", pa.string()),  # the USPTO XML code of the patent when there is one (to audit disagreements)
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
