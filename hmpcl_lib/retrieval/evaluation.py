"""The retrieval benchmark: test queries vs test gallery of the splits table, through the real vector index.

Going through `VectorIndex` (not a numpy matmul) means the benchmark measures what users get from search.

Two protocols on the same test split:
- "deeppatent" (the headline, SPEC): the first drawing of each test patent is the query, the rest the gallery;
- "leave_one_out": every test drawing is a query against all other test drawings (about 6x the queries on the
  sample, so a smaller difference between two models is visible above the noise).

Bounded memory at any size: queries are searched and scored a chunk at a time (`QUERY_CHUNK_CELLS` ranking cells
per chunk: ≈ 2000 queries at K = 1000), each ranking is cut at
`TRUNCATED_K` once the gallery exceeds `FULL_RANKING_MAX_GALLERY`, and only the first `KEEP_RANKINGS` queries'
rankings are kept, to rank `KEEP_DEPTH` (for the query/top-k pictures); the recall curve comes from each query's
first same-patent rank.
At DeepPatent2's full size (≈ 540k test drawings, leave-one-out) the peak is the test vectors, the index and one
chunk's [chunk, K] arrays, never [Q, K]. What the truncation does to each metric: R@1/5/10, MRR@10, nDCG@10
and the mAP@100 of subclass and class look at the top 100 at most, so they are exact; patent mAP counts a relevant
item ranked below K as never retrieved (precision 0 there), so it is a lower bound of the full-ranking mAP, tight
while a patent's drawings sit in the top 1000 (DeepPatent2 has ≈ 7 per patent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import polars as pl

from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.retrieval.metrics import QueryLabels, summarise

FULL_RANKING_MAX_GALLERY = 10_000
TRUNCATED_K = 1000
QUERY_CHUNK_CELLS = 2_000_000  # [queries, K] ranking cells scored at once: ≈ 150 MB of working arrays
KEEP_RANKINGS = 100  # queries whose rankings the result keeps (the pictures use the first few) ...
KEEP_DEPTH = 100  # ... down to this rank (their ids become Python strings: keep them few)
LABEL_COLUMNS = ["drawing_id", "patent_id", "subclass_code", "class_code"]
PROTOCOLS = ("deeppatent", "leave_one_out")


@dataclass
class BenchmarkResult:
    metrics: pl.DataFrame  # metrics.evaluate output: scope "all" + one row per main class
    queries: pl.DataFrame  # LABEL_COLUMNS, row order of the rankings
    gallery: pl.DataFrame  # LABEL_COLUMNS, row order = index positions
    ranking_ids: np.ndarray  # [min(Q, keep_rankings), K] gallery drawing ids of the first queries (None pads)
    ranking_scores: np.ndarray  # the same rows' scores, float32 (-inf pads)
    ranking: np.ndarray  # the same rows' gallery row positions (-1 pads)
    per_query: pl.DataFrame | None = None  # metrics.per_query_metrics: one row per query (paired comparisons)
    protocol: str = "deeppatent"
    first_hit: np.ndarray | None = None  # [Q] 1-based rank of each query's first same-patent item (huge: none)


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


def _without_self(ranking: np.ndarray, scores: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query's own row (query start + i is gallery row start + i) from [Q, K+1] results → [Q, K]."""
    keep = ranking != np.arange(start, start + ranking.shape[0])[:, None]
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
    query_chunk: int | None = None,
    keep_rankings: int = KEEP_RANKINGS,
    keep_depth: int = KEEP_DEPTH,
    query_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> BenchmarkResult:
    """Rank the test gallery for every test query and score the rankings (see the module doc for `protocol`).
    `query_embeddings` (ids, vectors) embed the queries differently from the gallery (query-side test-time
    augmentation, `models.MirrorAveraged`); by default the queries use `embeddings` too.

    k defaults to the whole gallery when it has at most 10 000 drawings (exact mAP), else 1000. The index is
    exact (`flat`) by default so the numbers describe the embeddings, not the ANN approximation. Queries go
    `query_chunk` at a time (default: QUERY_CHUNK_CELLS // K); the first `keep_rankings` queries' rankings are kept,
    to rank `keep_depth`.
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
    query_ids, query_vectors = query_embeddings if query_embeddings is not None else (ids, vectors)
    query_vectors = _vectors_for(queries, np.asarray(query_ids), query_vectors, "query")
    gallery_vectors = _vectors_for(gallery, np.asarray(ids), vectors, "gallery")
    index = VectorIndex.build(gallery["drawing_id"].to_numpy(), gallery_vectors, kind=index_kind)
    leave_one_out = protocol == "leave_one_out"
    size = gallery.height - leave_one_out
    if k is None:
        k = size if size <= FULL_RANKING_MAX_GALLERY else TRUNCATED_K
    labels = QueryLabels(queries, gallery, queries_in_gallery=leave_one_out)
    query_chunk = max(1, query_chunk or QUERY_CHUNK_CELLS // (k + 1))
    frames, first_hits, kept, kept_scores = [], [], [], []
    for start in range(0, max(queries.height, 1), query_chunk):
        ranking, scores = index.search_positions(query_vectors[start:start + query_chunk], k + leave_one_out)
        if leave_one_out:
            ranking, scores = _without_self(ranking, scores, start)
        frame, first_hit = labels.score(ranking, start)
        frames.append(frame)
        first_hits.append(first_hit)
        if start < keep_rankings:
            kept.append(ranking[:keep_rankings - start, :keep_depth])
            kept_scores.append(scores[:keep_rankings - start, :keep_depth])
    ranking, scores = np.concatenate(kept), np.concatenate(kept_scores)
    ranking_ids = np.full(ranking.shape, None, dtype=object)
    ranking_ids[ranking >= 0] = index.ids[ranking[ranking >= 0]]
    per_query = pl.concat(frames)
    return BenchmarkResult(summarise(per_query, per_class), queries, gallery, ranking_ids, scores, ranking,
                           per_query, protocol, np.concatenate(first_hits))


def recall_at_k_curve(result: BenchmarkResult, ks: Iterable[int] = range(1, 51)) -> tuple[np.ndarray, np.ndarray]:
    """Patent-level hit rate at each k over the included queries (those with a same-patent gallery drawing), from
    each query's first same-patent rank: every query counts, not only the ones whose ranking is kept."""
    ks = np.asarray(list(ks), dtype=np.int64)
    included = ~result.per_query["excluded"].to_numpy()
    first = result.first_hit[included]
    if first.shape[0] == 0:
        return ks, np.full(len(ks), np.nan)
    return ks, (first[None, :] <= ks[:, None]).mean(axis=1)
