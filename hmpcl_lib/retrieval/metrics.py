"""Retrieval metrics of SPEC.md "Evaluation", vectorised over a [Q, K] ranking.

Inputs: `queries` and `gallery` frames with `drawing_id`, `patent_id`, `subclass_code` (nullable) and
`class_code`; `ranking[q, r]` is the gallery row index at rank r+1 for query q (descending score; -1 pads a
ranking shorter than K). Queries and gallery are assumed disjoint (the DeepPatent protocol): a query found in
the gallery would count as its own relevant item.

Patent level (relevant = same patent), over the whole ranking:
  - mAP: AP = sum_r P@r * rel_r / (number of relevant items in the *whole gallery*), so a truncated ranking
    that misses relevant items is penalised;
  - Recall@{1,5,10}: hit rate, 1 if at least one relevant item is in the top k;
  - MRR@10: 1 / rank of the first relevant item within the top 10, else 0.
Hierarchy level:
  - subclass / class mAP@100: relevant = same subclass (a null subclass never matches) / same main class;
    AP@100 = sum_{r<=100} P@r * rel_r / min(#relevant in gallery, 100). A query with no relevant item at that
    level (e.g. a null subclass) has no AP there and is left out of that mean only.
  - graded nDCG@10: gain 3 same patent, else 2 same subclass, else 1 same main class, else 0; linear gains,
    discount 1 / log2(rank + 1); the ideal DCG sorts the query's gains over the whole gallery.
Queries with no same-patent item in the gallery are excluded from every metric and counted (`n_excluded`).

Leave-one-out (`queries_in_gallery=True`): every query is also a gallery row, and the caller's ranking leaves the
query's own row out; the counts of relevant gallery items then leave it out too.

`paired_bootstrap` gives a percentile interval for the difference of two models' means over the same queries
(resampling queries with replacement, the same resample for both models).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from hmpcl_lib.errors import InputError

METRIC_COLUMNS = [
    "patent_map",
    "patent_recall_at_1",
    "patent_recall_at_5",
    "patent_recall_at_10",
    "patent_mrr_at_10",
    "subclass_map_at_100",
    "class_map_at_100",
    "graded_ndcg_at_10",
]
OUTPUT_COLUMNS = ["scope", "n_queries", "n_excluded", *METRIC_COLUMNS]
REQUIRED_COLUMNS = ("drawing_id", "patent_id", "subclass_code", "class_code")
RECALL_KS = (1, 5, 10)
MRR_K = 10
HIERARCHY_MAP_K = 100
NDCG_K = 10
GAIN_PATENT, GAIN_SUBCLASS, GAIN_CLASS = 3.0, 2.0, 1.0


def _check_frames(queries: pl.DataFrame, gallery: pl.DataFrame) -> None:
    for name, frame in (("queries", queries), ("gallery", gallery)):
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(f"missing columns {missing}", source=name)


def _check_ranking(ranking: np.ndarray, query_ids: pl.Series, gallery_size: int) -> np.ndarray:
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or ranking.shape[0] != len(query_ids):
        raise InputError(f"ranking must have shape [{len(query_ids)}, K], got {ranking.shape}", source="ranking")
    if not np.issubdtype(ranking.dtype, np.integer):
        raise InputError(f"ranking must hold integer gallery row indices, got {ranking.dtype}", source="ranking")
    bad = (ranking < -1) | (ranking >= gallery_size)
    if bad.any():
        q, r = np.argwhere(bad)[0]
        raise InputError(
            f"gallery index {ranking[q, r]} at rank {r + 1} is outside [0, {gallery_size})",
            source="ranking",
            record=query_ids[int(q)],
        )
    return ranking.astype(np.int64, copy=False)


def _codes(query_values: pl.Series, gallery_values: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Encode both columns with one shared integer dictionary; null becomes -1 (never equal to anything)."""
    both = pl.concat([query_values.cast(pl.String), gallery_values.cast(pl.String)])
    codes = both.cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
    return codes[: len(query_values)], codes[len(query_values) :]


def _relevance(query_codes: np.ndarray, gallery_codes: np.ndarray, ranking: np.ndarray) -> np.ndarray:
    """[Q, K] bool: ranked gallery item shares the query's (non-null) key; padded ranks are never relevant."""
    ranked = np.append(gallery_codes, -2)[ranking]  # rank padding -1 picks the sentinel -2, equal to nothing
    return (ranked == query_codes[:, None]) & (query_codes[:, None] >= 0)


def _gallery_counts(queries: pl.DataFrame, gallery: pl.DataFrame, keys: list[str],
                    queries_in_gallery: bool = False) -> np.ndarray:
    """Per query: number of gallery rows equal on all `keys` (null keys never match), itself left out when the
    query is one of the gallery rows."""
    counts = gallery.drop_nulls(keys).group_by(keys).agg(pl.len().alias("_n"))
    joined = queries.select(keys).with_row_index("_q").join(counts, on=keys, how="left")
    n = joined.sort("_q")["_n"].fill_null(0).to_numpy().astype(np.int64)
    if queries_in_gallery:
        n = n - queries.select(pl.all_horizontal(pl.col(keys).is_not_null())).to_series().to_numpy()
    return n


def _average_precision(relevant: np.ndarray, normaliser: np.ndarray) -> np.ndarray:
    """AP per row: sum of precision at each relevant rank over `normaliser` (NaN where it is 0)."""
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    summed = (hits / ranks * relevant).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(normaliser > 0, summed / np.maximum(normaliser, 1), np.nan)


def _first_hit_rank(relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the first relevant item per row; a huge number where there is none."""
    never = np.full(relevant.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    if relevant.shape[1] == 0:
        return never
    return np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, never)


def _ideal_dcg(n_patent: np.ndarray, n_subclass: np.ndarray, n_class: np.ndarray, k: int) -> np.ndarray:
    """DCG@k of the best possible list: n_patent gains of 3, then n_subclass of 2, then n_class of 1."""
    positions = np.arange(k)[None, :]
    ends_3 = n_patent[:, None]
    ends_2 = ends_3 + n_subclass[:, None]
    ends_1 = ends_2 + n_class[:, None]
    gains = np.select(
        [positions < ends_3, positions < ends_2, positions < ends_1], [GAIN_PATENT, GAIN_SUBCLASS, GAIN_CLASS], 0.0
    )
    return (gains / np.log2(positions + 2)).sum(axis=1)


class QueryLabels:
    """Everything the metrics need of the labels, computed once over all queries and the whole gallery (integer
    codes, relevant-item counts per level): rankings can then be scored a chunk of queries at a time, so a
    benchmark with 10^5-10^6 queries never holds a [Q, K] array of all of them (see `evaluation.py`)."""

    def __init__(self, queries: pl.DataFrame, gallery: pl.DataFrame, queries_in_gallery: bool = False):
        _check_frames(queries, gallery)
        self.queries, self.gallery_size = queries, gallery.height

        def counts(keys: list[str]) -> np.ndarray:
            return _gallery_counts(queries, gallery, keys, queries_in_gallery)

        self.q_patent, self.g_patent = _codes(queries["patent_id"], gallery["patent_id"])
        self.q_sub, self.g_sub = _codes(queries["subclass_code"], gallery["subclass_code"])
        self.q_cls, self.g_cls = _codes(queries["class_code"], gallery["class_code"])
        self.n_patent, self.n_sub, self.n_cls = counts(["patent_id"]), counts(["subclass_code"]), counts(["class_code"])
        # Graded gains count the deepest shared level once: counts by inclusion-exclusion over the key sets.
        n_patent_sub = counts(["patent_id", "subclass_code"])
        n_patent_cls = counts(["patent_id", "class_code"])
        n_sub_cls = counts(["subclass_code", "class_code"])
        n_all = counts(["patent_id", "subclass_code", "class_code"])
        self.n_gain_2 = self.n_sub - n_patent_sub
        self.n_gain_1 = self.n_cls - n_sub_cls - n_patent_cls + n_all

    def score(self, ranking: np.ndarray, start: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
        """Per-query metrics of queries start .. start + len(ranking) (see `per_query_metrics`), and the 1-based
        rank of each one's first same-patent item (a huge number where none is ranked)."""
        rows = slice(start, start + len(ranking))
        queries = self.queries[rows]
        ranking = _check_ranking(ranking, queries["drawing_id"], self.gallery_size)
        rel_patent = _relevance(self.q_patent[rows], self.g_patent, ranking)
        rel_sub = _relevance(self.q_sub[rows], self.g_sub, ranking)
        rel_cls = _relevance(self.q_cls[rows], self.g_cls, ranking)
        n_patent = self.n_patent[rows]
        excluded = n_patent == 0

        columns: dict[str, np.ndarray] = {"patent_map": _average_precision(rel_patent, n_patent)}
        first_hit = _first_hit_rank(rel_patent)
        for k in RECALL_KS:
            columns[f"patent_recall_at_{k}"] = (first_hit <= k).astype(np.float64)
        columns["patent_mrr_at_10"] = np.where(first_hit <= MRR_K, 1.0 / np.minimum(first_hit, MRR_K), 0.0)
        top = HIERARCHY_MAP_K
        columns["subclass_map_at_100"] = _average_precision(rel_sub[:, :top], np.minimum(self.n_sub[rows], top))
        columns["class_map_at_100"] = _average_precision(rel_cls[:, :top], np.minimum(self.n_cls[rows], top))
        gains = np.select(
            [rel_patent[:, :NDCG_K], rel_sub[:, :NDCG_K], rel_cls[:, :NDCG_K]],
            [GAIN_PATENT, GAIN_SUBCLASS, GAIN_CLASS],
            0.0,
        )
        dcg = (gains / np.log2(np.arange(gains.shape[1]) + 2)).sum(axis=1)
        ideal = _ideal_dcg(n_patent, self.n_gain_2[rows], self.n_gain_1[rows], NDCG_K)
        with np.errstate(invalid="ignore", divide="ignore"):
            columns["graded_ndcg_at_10"] = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)

        frame = pl.DataFrame(
            {
                "drawing_id": queries["drawing_id"],
                "class_code": queries["class_code"].cast(pl.String),
                "excluded": excluded,
                **{name: np.where(excluded, np.nan, values) for name, values in columns.items()},
            }
        )
        return frame.with_columns(pl.col(METRIC_COLUMNS).fill_nan(None)), first_hit


def per_query_metrics(queries: pl.DataFrame, gallery: pl.DataFrame, ranking: np.ndarray,
                      queries_in_gallery: bool = False) -> pl.DataFrame:
    """One row per query: drawing_id, class_code, `excluded` flag and every metric (null when excluded)."""
    labels = QueryLabels(queries, gallery, queries_in_gallery)  # checks the frames
    _check_ranking(ranking, queries["drawing_id"], gallery.height)  # all queries: `score` checks a slice's rows
    return labels.score(ranking)[0]


def _scope_means(per_query: pl.DataFrame, scope: pl.Expr) -> pl.DataFrame:
    return (
        per_query.with_columns(scope.alias("scope"))
        .group_by("scope", maintain_order=True)
        .agg(
            (~pl.col("excluded")).sum().cast(pl.Int64).alias("n_queries"),
            pl.col("excluded").sum().cast(pl.Int64).alias("n_excluded"),
            *[pl.col(c).mean().cast(pl.Float64) for c in METRIC_COLUMNS],
        )
    )


def summarise(per_query: pl.DataFrame, per_class: bool = True) -> pl.DataFrame:
    """A `scope="all"` row, then one row per query main class (sorted), columns OUTPUT_COLUMNS.

    Means are over included queries; a metric with no defined value in a scope is null.
    """
    parts = [_scope_means(per_query, pl.lit("all"))]
    if per_class:
        by_class = _scope_means(per_query, pl.col("class_code").fill_null("unknown"))
        parts.append(by_class.sort("scope"))
    result = pl.concat(parts, how="vertical").select(OUTPUT_COLUMNS)
    if per_query.height == 0:
        result = pl.DataFrame(
            {"scope": ["all"], "n_queries": [0], "n_excluded": [0], **{c: [None] for c in METRIC_COLUMNS}},
            schema={"scope": pl.String, "n_queries": pl.Int64, "n_excluded": pl.Int64}
            | {c: pl.Float64 for c in METRIC_COLUMNS},
        )
    return result


def evaluate(
    queries: pl.DataFrame, gallery: pl.DataFrame, ranking: np.ndarray, per_class: bool = True,
    queries_in_gallery: bool = False,
) -> pl.DataFrame:
    """All metrics of `per_query_metrics`, summarised by `summarise`."""
    return summarise(per_query_metrics(queries, gallery, ranking, queries_in_gallery), per_class)


def paired_bootstrap(a: pl.DataFrame, b: pl.DataFrame, metrics: list[str] | None = None, n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> pl.DataFrame:
    """Mean difference b - a per metric over the queries both evaluated, with a paired percentile interval.

    `a` and `b` are `per_query_metrics` frames of two models on the same queries (joined on drawing_id; a query
    excluded or undefined in either is left out of that metric). Returns metric, n, diff, low, high.
    """
    metrics = metrics or METRIC_COLUMNS
    joined = a.select("drawing_id", *metrics).join(b.select("drawing_id", *metrics), on="drawing_id", suffix="_b")
    if joined.height != a.height or joined.height != b.height:
        raise InputError(f"paired_bootstrap needs the same queries: {a.height} vs {b.height}, {joined.height} shared",
                         source="per_query_metrics")
    rng = np.random.default_rng(seed)
    rows = []
    for m in metrics:
        pair = joined.select(m, f"{m}_b").drop_nulls().to_numpy()
        n = pair.shape[0]
        if n == 0:
            rows.append({"metric": m, "n": 0, "diff": None, "low": None, "high": None})
            continue
        diff = pair[:, 1] - pair[:, 0]
        means = diff[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(means, [tail, 100 - tail])
        rows.append({"metric": m, "n": n, "diff": float(diff.mean()), "low": float(low), "high": float(high)})
    return pl.DataFrame(rows, schema={"metric": pl.String, "n": pl.Int64, "diff": pl.Float64, "low": pl.Float64,
                                      "high": pl.Float64})
