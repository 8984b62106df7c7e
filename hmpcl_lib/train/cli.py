"""`hmpcl-train` / `python -m hmpcl_lib.train.cli`: train the encoder from a Parquet table (flags = TrainConfig fields)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing

from hmpcl_lib.modeling import distributed as D
from hmpcl_lib.train.config import TrainConfig, _flag_type
from hmpcl_lib.train.loop import train

def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hmpcl_lib.train.cli",
        description="Train the hmpcl image encoder (resumes from OUT/checkpoints/last.pt when present).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--table", required=True, help="Parquet with image_path, class_label, subclass_label, patent_label")
    parser.add_argument("--splits", help="splits Parquet (drawing_id, split): train only on --split rows")
    parser.add_argument("--split", default="train", help="which split to train on when --splits is given")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, encoder.pt)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--log-level", default="INFO")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_flag_type(hints[f.name]),
                            default=f.default, help=f"{f.name} ({hints[f.name]})".replace("typing.", ""))
    return parser


def _load_training_table(table_path: str, splits_path: str | None, split: str):
    import polars as pl

    from hmpcl_lib.errors import InputError

    try:
        table = pl.read_parquet(table_path)
    except Exception as e:  # noqa: BLE001 - any read failure is bad input here
        raise InputError(f"cannot read training table ({e})", source=table_path) from e
    if splits_path:
        from hmpcl_lib.splits import split_rows

        table = split_rows(table, pl.read_parquet(splits_path), split, source=splits_path)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    table = _load_training_table(args.table, args.splits, args.split)
    # with a splits table, its validation split is scored every epoch (TrainConfig.val_drawings, export_weights)
    validation = None
    if args.splits and args.split != "val":
        import polars as pl

        if (pl.read_parquet(args.splits, columns=["split"])["split"] == "val").any():
            validation = _load_training_table(args.table, args.splits, "val")
    result = train(config, table, args.out, resume=not args.no_resume, validation=validation)
    if D.rank() == 0:
        last = next((h for h in reversed(result.history) if "epoch_loss" in h), {})
        print(json.dumps({"checkpoint": str(result.checkpoint_path), "steps": result.history[-1]["step"] if result.history else 0,
                          "final_epoch_loss": last.get("epoch_loss"), "exported_epoch": result.exported_epoch,
                          **{k: v for k, v in last.items() if k.startswith("val_")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
