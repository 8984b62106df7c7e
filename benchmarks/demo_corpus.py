"""A small rendered corpus with its index, for the search page's tests, benchmark and screenshots.

`write_demo_corpus(root, spec)` renders the generated sample's drawings (`hmpcl_lib.sample`) straight to PNG under
`<root>/extracted/demo/` and writes `<root>/parsed/lic_hierarchy.parquet` with the columns the page reads (titles
from the shipped taxonomy), skipping the archive/parse steps of `make run`. `demo_searcher(layout, model)` embeds
every drawing with `model` and builds an exact index over them, so a corpus drawing finds itself at score 1.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.embedding import embed_paths
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.retrieval.search import Searcher
from hmpcl_lib.sample import VIEWS, SampleSpec, render_drawing, sample_patents
from hmpcl_lib.sample.writers import locarno_edition
from hmpcl_lib.taxonomy.locarno import load_taxonomy

DEMO_SPEC = SampleSpec(years=(2019,), n_classes=4, subclasses_per_class=2, patents_per_subclass=2, views=(4, 4),
                       image_size=96, faults=False)


def write_demo_corpus(root: str | Path, spec: SampleSpec = DEMO_SPEC) -> DataLayout:
    """Render every drawing of `spec` and write the hierarchy table; returns the layout of `root`."""
    layout = DataLayout(Path(root))
    folder = layout.extracted_dir("demo")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for patent in sample_patents(spec).iter_rows(named=True):
        for view in range(patent["n_views"]):
            drawing_id = f"{patent['patent_id']}-D{view + 1:05d}"
            path = folder / f"{drawing_id}.png"
            if not path.is_file():
                render_drawing(spec, patent, view).save(path)
            rows.append({"drawing_id": drawing_id, "patent_id": patent["patent_id"], "figid": view + 1,
                         "image_path": str(path), "class_code": patent["class_code"],
                         "subclass_code": patent["subclass_code"], "lic_edition": locarno_edition(patent["year"]),
                         "aspect": VIEWS[view][0]})
    tax = load_taxonomy()
    classes = tax.filter(pl.col("level") == "class").select(
        pl.col("edition").alias("lic_edition"), "class_code", pl.col("title").alias("class_title"))
    subclasses = tax.filter(pl.col("level") == "subclass").select(
        pl.col("edition").alias("lic_edition"), "subclass_code", pl.col("title").alias("subclass_title"))
    table = (pl.DataFrame(rows, schema_overrides={"figid": pl.Int32})
             .join(classes, on=["lic_edition", "class_code"], how="left", maintain_order="left")
             .join(subclasses, on=["lic_edition", "subclass_code"], how="left", maintain_order="left")
             .sort("drawing_id"))
    layout.parsed_dir.mkdir(parents=True, exist_ok=True)
    table.write_parquet(layout.hierarchy_path)
    return layout


def demo_searcher(layout: DataLayout, model: torch.nn.Module, index_dir: str | Path | None = None) -> Searcher:
    """Embed every drawing of the layout's hierarchy table with `model`, index them (saved to `index_dir` when
    given) and return a Searcher confined to the data root."""
    hierarchy = pl.read_parquet(layout.hierarchy_path)
    vectors = embed_paths(model, hierarchy["image_path"].to_list(), device="cpu", num_workers=0)
    index = VectorIndex.build(hierarchy["drawing_id"].to_numpy(), vectors, kind="flat", use_gpu=False)
    if index_dir is not None:
        index.save(index_dir)
    return Searcher(model, index, hierarchy, data_root=layout.root)
