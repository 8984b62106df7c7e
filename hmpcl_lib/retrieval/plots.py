"""Small deterministic PNG figures for MLflow artifacts and Dagster metadata (matplotlib, Agg backend).

No timestamps or software tags are written into the PNG, so the same inputs give the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from PIL import Image  # noqa: E402

from hmpcl_lib.io import atomic_path  # noqa: E402

THUMB_PIXELS = 160
SAME_PATENT_COLOUR = "#2ca02c"
OTHER_COLOUR = "#bbbbbb"
PNG_METADATA = {"Software": None}


def _thumbnail(path: str | None) -> np.ndarray | None:
    """A small RGB array of the image, or None if it cannot be read (the grid shows a placeholder)."""
    if not path:
        return None
    try:
        with Image.open(path) as img:
            if img.width * img.height > 50_000_000:
                return None
            img.draft("RGB", (THUMB_PIXELS, THUMB_PIXELS))
            img = img.convert("RGB")
            img.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _save(fig: plt.Figure, out: str | os.PathLike) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata=PNG_METADATA)
    plt.close(fig)
    return out


def _show(ax: plt.Axes, image: np.ndarray | None, title: str, colour: str, width: float) -> None:
    if image is None:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    ax.set_title(title, fontsize=7)


def results_grid_png(
    query_path: str | os.PathLike,
    results_df: pl.DataFrame,
    out_png: str | os.PathLike,
    query_patent_id: str | None = None,
    columns: int = 5,
) -> Path:
    """Query + top-k thumbnails titled with patent id, class and score; green border = same patent as the query."""
    n = results_df.height
    rows = 1 + max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 2.0), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    query_ax = axes[0, 0]
    query_ax.axis("on")
    _show(query_ax, _thumbnail(str(query_path)), f"query\n{query_patent_id or Path(query_path).name}", "black", 2)
    for i, row in enumerate(results_df.iter_rows(named=True)):
        ax = axes[1 + i // columns, i % columns]
        ax.axis("on")
        same = query_patent_id is not None and row.get("patent_id") == query_patent_id
        title = f"#{row['rank']} {row.get('patent_id')}\nclass {row.get('class_code')}  {row['score']:.3f}"
        _show(ax, _thumbnail(row.get("image_path")), title, SAME_PATENT_COLOUR if same else OTHER_COLOUR, 4 if same else 1)
    fig.tight_layout()
    return _save(fig, out_png)


def recall_curve_png(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], out: str | os.PathLike) -> Path:
    """Recall@k curves, one line per model name."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in sorted(curves):
        ks, values = curves[name]
        ax.plot(list(ks), list(values), label=name, linewidth=1.5)
    ax.set_xlabel("k")
    ax.set_ylabel("patent-level Recall@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def per_class_bar_png(
    metrics_by_model: Mapping[str, pl.DataFrame] | pl.DataFrame, metric: str, out: str | os.PathLike
) -> Path:
    """Grouped bars of `metric` per main class (one bar per model), from `metrics.evaluate` tables.

    Accepts {model name: metrics table} or one table with a `model` column.
    """
    if isinstance(metrics_by_model, pl.DataFrame):
        frame = metrics_by_model
        if "model" not in frame.columns:
            frame = frame.with_columns(pl.lit("model").alias("model"))
    else:
        frame = pl.concat(
            [df.select("scope", metric).with_columns(pl.lit(name).alias("model")) for name, df in metrics_by_model.items()]
        )
    frame = frame.filter(pl.col("scope") != "all")
    models = sorted(frame["model"].unique().to_list())
    classes = sorted(frame["scope"].unique().to_list())
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(classes) * max(1, len(models)) ** 0.5 + 2), 3.5))
    positions = np.arange(len(classes))
    for i, name in enumerate(models):
        values = dict(frame.filter(pl.col("model") == name).select("scope", metric).iter_rows())
        heights = [values.get(c) if values.get(c) is not None else np.nan for c in classes]
        ax.bar(positions + i * width, heights, width, label=name)
    ax.set_xticks(positions + width * (len(models) - 1) / 2, classes, fontsize=7, rotation=90 if len(classes) > 12 else 0)
    ax.set_xlabel("main class")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
