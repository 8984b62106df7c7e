"""The retrieval benchmark: test queries vs test gallery of the splits table, through the real vector index.

Going through `VectorIndex` (not a numpy matmul) means the benchmark measures what users get from search.

Two protocols on the same test split:
- "deeppatent" (the headline, SPEC): the first drawing of each test patent is the query, the rest the gallery;
- "leave_one_out": every test drawing is a query against all other test drawings (about 6x the queries on the
  sample, so a smaller difference between two models is visible above the noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import polars as pl

from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.retrieval.metrics import per_query_metrics, summarise

FULL_RANKING_MAX_GALLERY = 10_000
TRUNCATED_K = 1000
LABEL_COLUMNS = ["drawing_id", "patent_id", "subclass_code", "class_code"]
PROTOCOLS = ("deeppatent", "leave_one_out")


@dataclass
class BenchmarkResult:
    metrics: pl.DataFrame  # metrics.evaluate output: scope "all" + one row per main class
    queries: pl.DataFrame  # LABEL_COLUMNS, row order of the rankings
    gallery: pl.DataFrame  # LABEL_COLUMNS, row order = index positions
    ranking_ids: np.ndarray  # [Q, K] gallery drawing ids (None pads)
    ranking_scores: np.ndarray  # [Q, K] float32 (-inf pads)
    ranking: np.ndarray  # [Q, K] gallery row positions (-1 pads)
    per_query: pl.DataFrame | None = None  # metrics.per_query_metrics: one row per query (paired comparisons)
    protocol: str = "deeppatent"


def _role_rows(splits: pl.DataFrame, hierarchy: pl.DataFrame, role: str) -> pl.DataFrame:
    rows = splits.filter(pl.col("role") == role).select("drawing_id").sort("drawing_id")
    labels = hierarchy.select(LABEL_COLUMNS).unique("drawing_id", keep="first", maintain_order=True)
    joined = rows.join(labels, on="drawing_id", how="left")
    unlabelled = joined.filter(pl.col("patent_id").is_null() | pl.col("class_code").is_null())
    if unlabelled.height:
        raise InputError(
            f"{unlabelled.height} {role} drawing(s) have no patent/class in the hierarchy table",
            source="lic_hierarchy",
            record=unlabelled["drawing_id"][0],
        )
    return joined


def _vectors_for(frame: pl.DataFrame, ids: np.ndarray, vectors: np.ndarray, role: str) -> np.ndarray:
    position = pl.DataFrame({"drawing_id": ids.astype(str), "_row": np.arange(len(ids))})
    rows = frame.select("drawing_id").join(position, on="drawing_id", how="left", maintain_order="left")
    missing = rows.filter(pl.col("_row").is_null())
    if missing.height:
        raise InputError(
            f"{missing.height} {role} drawing(s) have no embedding", source="embeddings", record=missing["drawing_id"][0]
        )
    return vectors[rows["_row"].to_numpy()]


def _without_self(ranking: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query's own row (query q is gallery row q) from [Q, K+1] results → [Q, K]."""
    keep = ranking != np.arange(ranking.shape[0])[:, None]
    keep[keep.all(axis=1), -1] = False  # self not retrieved (ties): drop the last result instead
    shape = (ranking.shape[0], ranking.shape[1] - 1)
    return ranking[keep].reshape(shape), scores[keep].reshape(shape)


def benchmark_embeddings(
    embeddings: tuple[np.ndarray, np.ndarray],
    hierarchy: pl.DataFrame,
    splits: pl.DataFrame,
    k: int | None = None,
    per_class: bool = True,
    index_kind: str = "flat",
    protocol: str = "deeppatent",
) -> BenchmarkResult:
    """Rank the test gallery for every test query and score the rankings (see the module doc for `protocol`).

    k defaults to the whole gallery when it has at most 10 000 drawings (exact mAP), else 1000. The index is
    exact (`flat`) by default so the numbers describe the embeddings, not the ANN approximation.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    ids, vectors = embeddings
    if protocol == "deeppatent":
        queries = _role_rows(splits, hierarchy, "query")
        gallery = _role_rows(splits, hierarchy, "gallery")
    else:
        queries = gallery = pl.concat([_role_rows(splits, hierarchy, role) for role in ("query", "gallery")]).sort(
            "drawing_id")
    if gallery.height == 0:
        raise InputError("the splits table has no gallery drawings", source="splits")
    query_vectors = _vectors_for(queries, np.asarray(ids), vectors, "query")
    gallery_vectors = _vectors_for(gallery, np.asarray(ids), vectors, "gallery")
    index = VectorIndex.build(gallery["drawing_id"].to_numpy(), gallery_vectors, kind=index_kind)
    leave_one_out = protocol == "leave_one_out"
    size = gallery.height - leave_one_out
    if k is None:
        k = size if size <= FULL_RANKING_MAX_GALLERY else TRUNCATED_K
    ranking, scores = index.search_positions(query_vectors, k + leave_one_out)
    if leave_one_out:
        ranking, scores = _without_self(ranking, scores)
    ranking_ids = np.full(ranking.shape, None, dtype=object)
    ranking_ids[ranking >= 0] = index.ids[ranking[ranking >= 0]]
    per_query = per_query_metrics(queries, gallery, ranking, queries_in_gallery=leave_one_out)
    return BenchmarkResult(summarise(per_query, per_class), queries, gallery, ranking_ids, scores, ranking,
                           per_query, protocol)


def recall_at_k_curve(result: BenchmarkResult, ks: Iterable[int] = range(1, 51)) -> tuple[np.ndarray, np.ndarray]:
    """Patent-level hit rate at each k (queries with no same-patent gallery drawing left out), for plots."""
    ks = np.asarray(list(ks), dtype=np.int64)
    query_patent = result.queries["patent_id"].to_numpy()
    gallery_patent = result.gallery["patent_id"].to_numpy()
    ranking = result.ranking
    relevant = (gallery_patent[np.where(ranking >= 0, ranking, 0)] == query_patent[:, None]) & (ranking >= 0)
    included = np.isin(query_patent, gallery_patent)
    relevant = relevant[included]
    if relevant.shape[0] == 0:
        return ks, np.full(len(ks), np.nan)
    first = np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    return ks, (first[None, :] <= ks[:, None]).mean(axis=1)
