"""Retrieval metrics on the validation split at every epoch end, and the rule that picks the exported weights.

Each epoch the encoder embeds the validation drawings (at most `TrainConfig.val_drawings` of them, whole patents
chosen by a hash of their id, so the same ones every epoch and every run) and ranks them leave-one-out: every
drawing a query against all the others, exact (a [V, V] similarity matrix), scored by the benchmark's own metric code
(`retrieval.metrics.QueryLabels`), with no vector index, so the training core runs without faiss. At the default
2,000 drawings that is one embedding pass and a 2,000 x 2,000 matmul per epoch.

The metrics go into the run's history (`val_<metric>` at the epoch's last step), to MLflow as curves (the tracked
runs log every reported metric) and into the checkpoint, so a resumed run keeps them.

`TrainConfig.export_weights` picks what the run exports:
- "last": the weights after the last epoch (the cosine schedule has decayed to `min_lr_ratio` by then);
- "best-val": the epoch with the highest `selection_score` (the mean of validation R@1 and patent mAP, the two
  patent-level metrics patent search is judged on); ties go to the later epoch. Its weights are kept on disk beside
  the checkpoint (`best.safetensors`, written atomically when an epoch beats every earlier one), so a resumed run
  still exports them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import polars as pl

VAL_METRICS = ("patent_map", "patent_recall_at_1", "subclass_map_at_100", "class_map_at_100")
SELECTION_METRICS = ("patent_recall_at_1", "patent_map")  # selection_score: their mean
EXPORTS = ("last", "best-val")
BEST_FILE = "best.safetensors"
LABEL_COLUMNS = ("drawing_id", "patent_id", "subclass_code", "class_code")
LABEL_SOURCES = {"patent_id": "patent_label", "subclass_code": "subclass_label", "class_code": "class_label"}


def validation_rows(table: pl.DataFrame, max_drawings: int) -> pl.DataFrame:
    """The drawings of `table` (the validation split: image_path and the training labels) to score each epoch, with
    the metric code's columns made from the labels (a subclass label < 0 is unknown): whole patents in the order of a
    hash of their label, up to `max_drawings` (all of them when fewer), sorted by path. Patents with one drawing are
    left out (no same-patent answer to find)."""
    import polars as pl

    missing = [c for c in ("image_path", *LABEL_SOURCES.values()) if c not in table.columns]
    if missing:
        raise ValueError(f"validation table lacks columns {missing} (has {table.columns})")
    table = table.select(
        pl.col("image_path").cast(pl.String),
        pl.col("image_path").cast(pl.String).alias("drawing_id"),
        *[pl.col(source).cast(pl.Int64).cast(pl.String).alias(name) for name, source in LABEL_SOURCES.items()],
    ).with_columns(pl.when(pl.col("subclass_code").str.starts_with("-")).then(None)
                   .otherwise(pl.col("subclass_code")).alias("subclass_code"))
    sizes = table.group_by("patent_id").len().filter(pl.col("len") >= 2)
    order = sorted(sizes.iter_rows(), key=lambda r: hashlib.sha256(str(r[0]).encode()).hexdigest())
    keep, total = [], 0
    for patent, n in order:
        if total + n > max_drawings:
            break
        keep.append(patent)
        total += n
    return table.filter(pl.col("patent_id").is_in(keep)).sort("drawing_id")


@torch.no_grad()
def validate(model: torch.nn.Module, rows: pl.DataFrame, image_size: int, pixel_store: str = "",
             device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, float]:
    """Leave-one-out retrieval metrics of `model` on `rows` ({metric: mean over the queries}, `VAL_METRICS`),
    embedded in eval mode (`embed_paths` restores the model's mode afterwards)."""
    import polars as pl

    from hmpcl_lib.retrieval.embedding import embed_paths
    from hmpcl_lib.retrieval.metrics import QueryLabels

    if rows.height < 2:
        return {}
    vectors = embed_paths(model, rows["image_path"].to_list(), image_size=image_size, batch_size=batch_size,
                          device=device, num_workers=0, pixel_store=pixel_store or None)
    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    similarity = v @ v.T
    similarity.fill_diagonal_(-torch.inf)  # leave one out: a drawing never answers itself
    ranking = torch.argsort(similarity, dim=1, descending=True, stable=True)[:, :-1].numpy()
    labels = rows.select(LABEL_COLUMNS)
    frame, _ = QueryLabels(labels, labels, queries_in_gallery=True).score(_skip_self(ranking))
    scored = frame.filter(~pl.col("excluded"))
    return {m: float(scored[m].mean()) for m in VAL_METRICS if scored.height}


def _skip_self(ranking: np.ndarray) -> np.ndarray:
    """`QueryLabels(queries_in_gallery=True)` scores rankings without the query itself: the self column, ranked
    last by `validate`, is already cut, so this only checks it."""
    rows = np.arange(ranking.shape[0])[:, None]
    if (ranking == rows).any():
        raise AssertionError("a validation query ranked itself")
    return ranking


def selection_score(metrics: dict[str, Any]) -> float:
    """What "best-val" maximises: the mean of the validation metrics in SELECTION_METRICS (nan when absent)."""
    values = [metrics.get(f"val_{m}") for m in SELECTION_METRICS]
    if any(v is None for v in values):
        return float("nan")
    return float(np.mean(values))


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch "best-val" exports: the highest `selection_score` among the history's validated epochs, the later
    one on a tie; None when no epoch was validated."""
    best, best_score = None, -np.inf
    for entry in history:
        score = selection_score(entry)
        if "epoch" in entry and np.isfinite(score) and score >= best_score:
            best, best_score = int(entry["epoch"]), score
    return best


def save_best(model: torch.nn.Module, folder: Path) -> Path:
    """The model's weights as `folder/best.safetensors`, written atomically (nothing is pickled)."""
    from safetensors.torch import save_file

    from hmpcl_lib.io import atomic_path

    path = Path(folder) / BEST_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path


def load_best(model: torch.nn.Module, folder: Path) -> None:
    """Load `folder/best.safetensors` into `model` (every key must match)."""
    from safetensors.torch import load_file

    path = Path(folder) / BEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: the best-validation weights are missing; rerun without resume")
    state = load_file(str(path))
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
