"""`hmpcl-search`: the drawings nearest to an image file, from a terminal.

    hmpcl-search --image drawing.png -k 10 [--model-uri models:/hmpcl-encoder@champion | --model-checkpoint FILE]
                 [--index DIR] [--hierarchy data/parsed/lic_hierarchy.parquet] [--out-png results.png]

By default the model is the registry's champion and the index the one the `gallery_index` asset built for its run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from hmpcl_lib.errors import HmpclError, InputError
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.query_image import DEFAULT_MAX_PIXELS
from hmpcl_lib.tracking.mlflow_store import default_tracking_uri
from hmpcl_lib.tracking.model_source import champion_uri, index_dir_of, load_query_model


def _parser() -> argparse.ArgumentParser:
    layout = DataLayout.from_env()
    p = argparse.ArgumentParser(prog="hmpcl-search", description="Find the drawings nearest to an image.")
    p.add_argument("--image", required=True, help="query image file")
    p.add_argument("-k", "--k", type=int, default=10, help="number of results")
    p.add_argument("--model-uri", default=champion_uri(), help="MLflow model URI")
    p.add_argument("--model-checkpoint", help="encoder file instead of MLflow (safetensors or a checkpoint)")
    p.add_argument("--index", default=os.environ.get("HMPCL_INDEX_DIR"),
                   help="index directory (default: the gallery_index of the model's MLflow run)")
    p.add_argument("--hierarchy", default=str(layout.hierarchy_path), help="lic_hierarchy Parquet")
    p.add_argument("--tracking-uri", default=default_tracking_uri())
    p.add_argument("--data-root", help="refuse query images outside this folder")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-png", help="also save a picture of the query and its results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import polars as pl

    from hmpcl_lib.retrieval.index import VectorIndex
    from hmpcl_lib.retrieval.search import Searcher

    args = _parser().parse_args(argv)
    try:
        hierarchy_path = Path(args.hierarchy)
        if not hierarchy_path.is_file():
            raise InputError("hierarchy table not found", source=str(hierarchy_path))
        index_dir = args.index or index_dir_of(args.model_uri, args.model_checkpoint, args.tracking_uri,
                                               DataLayout.from_env())
        searcher = Searcher(
            load_query_model(args.model_uri, args.model_checkpoint, args.tracking_uri),
            VectorIndex.load(index_dir),
            pl.read_parquet(hierarchy_path),
            data_root=args.data_root,
            max_pixels=args.max_pixels,
            device=args.device,
        )
        results = searcher.search_image(args.image, args.k)
    except HmpclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table_style = dict(tbl_rows=max(args.k, 10), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200)
    with pl.Config(**table_style, tbl_hide_dataframe_shape=True):
        print(results.drop("image_path"))
    if args.out_png:
        from hmpcl_lib.retrieval.plots import results_grid_png  # noqa: PLC0415

        query_path = str(Path(args.image).resolve())
        same_file = searcher.hierarchy.filter(pl.col("image_path") == query_path)
        query_patent = same_file["patent_id"][0] if same_file.height else None
        results_grid_png(args.image, results, args.out_png, query_patent_id=query_patent)
        print(f"picture: {args.out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
