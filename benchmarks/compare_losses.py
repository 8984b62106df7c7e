"""Pretrained vs baseline vs hierarchical loss over several training seeds, on the parsed corpus under a data root.

Same split, same config; only the training seed changes. Prints one markdown row per (seed, model) and the mean ± std
per model, so a claim like "hierarchical beats baseline on class mAP" comes with its spread.

    .venv/bin/python benchmarks/compare_losses.py --data-root data --seeds 0 1 2 --epochs 4
Needs `make run` (or the data assets) first: it reads data/parsed/lic_hierarchy.parquet and splits.parquet.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import polars as pl

from hmpcl_lib.tracking.experiment import evaluate_model, overall_metrics, train_rows
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.train.config import TrainConfig
from hmpcl_lib.train.loop import train

COLUMNS = ["patent_map", "patent_recall_at_1", "subclass_map_at_100", "class_map_at_100", "graded_ndcg_at_10"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--drawings-per-patent", type=int, default=2)
    args = p.parse_args()
    parsed = Path(args.data_root) / "parsed"
    hier, spl = pl.read_parquet(parsed / "lic_hierarchy.parquet"), pl.read_parquet(parsed / "splits.parquet")
    rows = train_rows(hier, spl)
    base = TrainConfig(epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
                       drawings_per_patent=args.drawings_per_patent)
    results = [{"seed": "-", "model": "pretrained", **overall_metrics(evaluate_model(
        build_encoder(base.backbone, embed_dim=None, weights=base.weights), hier, spl, args.image_size).metrics)}]
    for seed in args.seeds:
        for loss in ("baseline", "hierarchical"):
            started = time.perf_counter()
            cfg = dataclasses.replace(base, loss=loss, seed=seed)
            with tempfile.TemporaryDirectory() as out:
                model = train(cfg, rows, out, resume=False).model
            metrics = overall_metrics(evaluate_model(model, hier, spl, args.image_size).metrics)
            results.append({"seed": str(seed), "model": loss, **metrics})
            print(f"seed {seed} {loss}: " + ", ".join(f"{c}={metrics[c]:.4f}" for c in COLUMNS)
                  + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    table = pl.DataFrame(results).select("seed", "model", *COLUMNS)
    summary = table.filter(pl.col("seed") != "-").group_by("model", maintain_order=True).agg(
        *[pl.format("{} ± {}", pl.col(c).mean().round(4), pl.col(c).std().round(4)).alias(c) for c in COLUMNS])
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   tbl_rows=100, tbl_cols=-1, float_precision=4):
        print(table)
        print(summary)


if __name__ == "__main__":
    main()
