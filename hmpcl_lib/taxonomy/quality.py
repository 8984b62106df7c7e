"""Data-quality rules behind the pipeline's asset checks, as plain functions (testable without Dagster)."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pyarrow as pa


def duplicate_values(df: pl.DataFrame, column: str) -> list:
    """Values of `column` that occur more than once."""
    return df.group_by(column).len().filter(pl.col("len") > 1)[column].to_list()


def missing_files(paths: list[str], max_checked: int = 20_000, seed: int = 0) -> tuple[list[str], int]:
    """Paths that do not exist; above `max_checked` a seeded random subset is checked (returns missing, checked)."""
    if len(paths) > max_checked:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in rng.choice(len(paths), size=max_checked, replace=False)]
    return [p for p in paths if not os.path.isfile(p)], len(paths)


def schema_differences(df: pl.DataFrame, schema: pa.Schema) -> list[str]:
    """Columns missing from `df` or of another type than the Arrow schema says."""
    actual = df.to_arrow().schema
    problems = []
    for field in schema:
        if field.name not in actual.names:
            problems.append(f"missing column {field.name}")
        elif not actual.field(field.name).type.equals(field.type) and not (
            pa.types.is_large_string(actual.field(field.name).type) and pa.types.is_string(field.type)
        ):
            problems.append(f"{field.name}: {actual.field(field.name).type} != {field.type}")
    return problems


def leaking_patents(splits: pl.DataFrame) -> list[str]:
    """Patents that appear in more than one split."""
    return (splits.group_by("patent_id").agg(pl.col("split").n_unique().alias("n"))
            .filter(pl.col("n") > 1)["patent_id"].to_list())


def embedding_problems(vectors: np.ndarray, tol: float = 1e-2) -> dict[str, int]:
    """Rows with NaN/inf values and rows whose L2 norm is not 1 (± tol)."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=1)
    return {"non_finite_rows": int((~finite).sum()),
            "bad_norm_rows": int((finite & (np.abs(norms - 1) > tol)).sum()),
            "rows": int(len(vectors))}


def metrics_out_of_range(metrics: dict[str, float]) -> dict[str, float]:
    """Rate metrics (everything but counts) outside [0, 1] or NaN."""
    return {k: v for k, v in metrics.items()
            if not k.startswith("n_") and not (0.0 <= float(v) <= 1.0)}
