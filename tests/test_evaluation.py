"""Benchmark over splits through the real index; recall curve; benchmark plots."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.evaluation import benchmark_embeddings, recall_at_k_curve
from hmpcl_lib.retrieval.metrics import evaluate
from hmpcl_lib.retrieval.plots import per_class_bar_png, recall_curve_png

DIM = 24


def make_corpus(seed: int = 0, n_patents: int = 40, views: int = 4):
    """Hierarchy + test splits + embeddings in which class, subclass and patent each pull vectors together."""
    rng = np.random.default_rng(seed)
    directions = lambda n: rng.standard_normal((n, DIM))  # noqa: E731
    class_dir, sub_dir, patent_dir = directions(3), directions(6), directions(n_patents)
    rows, vectors = [], []
    for p in range(n_patents):
        klass, sub = p % 3, (p % 3) * 2 + (p // 3) % 2
        for v in range(views):
            drawing_id = f"USD{p:07d}-D{v:05d}"
            rows.append(
                {
                    "drawing_id": drawing_id,
                    "patent_id": f"USD{p:07d}-20200101",
                    "class_code": f"{klass + 1:02d}",
                    "subclass_code": None if p % 7 == 0 else f"{klass + 1:02d}-{sub:02d}",
                    "image_path": f"/data/{drawing_id}.png",
                }
            )
            vec = 1.0 * class_dir[klass] + 1.0 * sub_dir[sub] + 1.2 * patent_dir[p] + 0.9 * rng.standard_normal(DIM)
            vectors.append(vec / np.linalg.norm(vec))
    hierarchy = pl.DataFrame(rows)
    splits = hierarchy.select(
        "drawing_id",
        "patent_id",
        pl.lit("test").alias("split"),
        pl.when(pl.col("drawing_id").str.ends_with("D00000")).then(pl.lit("query")).otherwise(pl.lit("gallery")).alias("role"),
    )
    # two patents only have a query drawing (their gallery drawings are in train) -> excluded
    lonely = ["USD0000001-20200101", "USD0000002-20200101"]
    splits = splits.with_columns(
        pl.when(pl.col("patent_id").is_in(lonely) & (pl.col("role") == "gallery"))
        .then(pl.lit("train"))
        .otherwise(pl.col("role"))
        .alias("role")
    )
    ids = hierarchy["drawing_id"].to_numpy()
    return hierarchy, splits, (ids, np.asarray(vectors, dtype=np.float32))


def test_benchmark_matches_brute_force_ranking():
    hierarchy, splits, (ids, vectors) = make_corpus()
    result = benchmark_embeddings((ids, vectors), hierarchy, splits, keep_depth=1000)
    assert result.queries.height == 40 and result.gallery.height == 38 * 3
    assert result.ranking.shape == (40, 114)  # whole gallery (<= 10 000)
    # brute force: same ranking from a numpy matmul
    position = {d: i for i, d in enumerate(ids)}
    q = vectors[[position[d] for d in result.queries["drawing_id"]]]
    g = vectors[[position[d] for d in result.gallery["drawing_id"]]]
    brute = np.argsort(-(q @ g.T), axis=1, kind="stable")
    np.testing.assert_array_equal(result.ranking, brute)
    assert result.ranking_ids[0, 0] == result.gallery["drawing_id"][int(brute[0, 0])]
    assert result.metrics.equals(evaluate(result.queries, result.gallery, brute))

    overall = result.metrics.row(0, named=True)
    assert overall["n_queries"] == 38 and overall["n_excluded"] == 2
    assert result.metrics["scope"].to_list() == ["all", "01", "02", "03"]
    # structured embeddings retrieve far better than chance (3 relevant of 114)
    assert overall["patent_map"] > 0.5 and overall["class_map_at_100"] > 0.6


def test_random_embeddings_score_lower_and_truncation_penalises():
    hierarchy, splits, (ids, vectors) = make_corpus()
    good = benchmark_embeddings((ids, vectors), hierarchy, splits, per_class=False)
    noise = np.random.default_rng(5).standard_normal(vectors.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    bad = benchmark_embeddings((ids, noise), hierarchy, splits, per_class=False)
    assert bad.metrics["patent_map"][0] < good.metrics["patent_map"][0] - 0.3
    truncated = benchmark_embeddings((ids, noise), hierarchy, splits, k=2, per_class=False)
    assert truncated.ranking.shape == (40, 2)
    assert truncated.metrics["patent_map"][0] < bad.metrics["patent_map"][0]
    assert truncated.metrics["patent_recall_at_1"][0] == pytest.approx(bad.metrics["patent_recall_at_1"][0])


def test_recall_curve_agrees_with_metrics():
    hierarchy, splits, embeddings = make_corpus()
    result = benchmark_embeddings(embeddings, hierarchy, splits)
    ks, values = recall_at_k_curve(result, ks=range(1, 51))
    assert ks.tolist() == list(range(1, 51))
    assert np.all(np.diff(values) >= 0) and values[-1] <= 1.0
    overall = result.metrics.row(0, named=True)
    for k in (1, 5, 10):
        assert values[k - 1] == pytest.approx(overall[f"patent_recall_at_{k}"])


def test_missing_embedding_or_label_names_the_drawing():
    hierarchy, splits, (ids, vectors) = make_corpus()
    keep = ids != "USD0000005-D00002"
    with pytest.raises(InputError, match="USD0000005-D00002.*no embedding"):
        benchmark_embeddings((ids[keep], vectors[keep]), hierarchy, splits)
    with pytest.raises(InputError, match="USD0000003-D00000.*hierarchy"):
        benchmark_embeddings((ids, vectors), hierarchy.filter(pl.col("drawing_id") != "USD0000003-D00000"), splits)


def test_plots_are_written_and_deterministic(tmp_path):
    hierarchy, splits, (ids, vectors) = make_corpus()
    good = benchmark_embeddings((ids, vectors), hierarchy, splits)
    noise = np.random.default_rng(1).standard_normal(vectors.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    bad = benchmark_embeddings((ids, noise), hierarchy, splits)
    curves = {"hierarchical": recall_at_k_curve(good), "pretrained": recall_at_k_curve(bad)}
    first = recall_curve_png(curves, tmp_path / "recall.png").read_bytes()
    assert first[:4] == b"\x89PNG" and recall_curve_png(curves, tmp_path / "again.png").read_bytes() == first
    by_model = {"hierarchical": good.metrics, "pretrained": bad.metrics}
    bars = per_class_bar_png(by_model, "patent_map", tmp_path / "bars.png").read_bytes()
    stacked = pl.concat([df.with_columns(pl.lit(n).alias("model")) for n, df in by_model.items()])
    assert per_class_bar_png(stacked, "patent_map", tmp_path / "bars2.png").read_bytes() == bars
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.png", "bars.png", "bars2.png", "recall.png"]


@pytest.mark.parametrize("protocol", ["deeppatent", "leave_one_out"])
def test_chunked_queries_give_the_same_numbers_and_keep_only_the_first_rankings(protocol):
    """Queries scored a few at a time (as at DeepPatent2's size) give exactly the one-shot per-query metrics,
    summary and recall curve; only the first `keep_rankings` rankings are kept."""
    hierarchy, splits, embeddings = make_corpus(n_patents=60)
    whole = benchmark_embeddings(embeddings, hierarchy, splits, protocol=protocol)
    chunked = benchmark_embeddings(embeddings, hierarchy, splits, protocol=protocol, query_chunk=7,
                                   keep_rankings=9)
    assert chunked.per_query.equals(whole.per_query) and chunked.metrics.equals(whole.metrics)
    np.testing.assert_array_equal(chunked.first_hit, whole.first_hit)
    np.testing.assert_array_equal(recall_at_k_curve(chunked)[1], recall_at_k_curve(whole)[1])
    assert chunked.ranking.shape == (9, whole.ranking.shape[1])
    np.testing.assert_array_equal(chunked.ranking, whole.ranking[:9])
    assert chunked.ranking_ids.tolist() == whole.ranking_ids[:9].tolist()


@pytest.mark.parametrize("protocol", ["deeppatent", "leave_one_out"])
def test_query_embeddings_rank_the_queries_and_leave_the_gallery_alone(protocol):
    hierarchy, splits, (ids, vectors) = make_corpus()
    plain = benchmark_embeddings((ids, vectors), hierarchy, splits, protocol=protocol, keep_depth=1000)
    same = benchmark_embeddings((ids, vectors), hierarchy, splits, protocol=protocol, keep_depth=1000,
                                query_embeddings=(ids[::-1].copy(), vectors[::-1].copy()))  # matched by id
    np.testing.assert_array_equal(same.ranking, plain.ranking)
    noise = np.random.default_rng(5).standard_normal(vectors.shape).astype(np.float32)
    noisy = benchmark_embeddings((ids, vectors), hierarchy, splits, protocol=protocol, keep_depth=1000,
                                 query_embeddings=(ids, noise / np.linalg.norm(noise, axis=1, keepdims=True)))
    assert noisy.gallery.equals(plain.gallery)  # the index holds the gallery's own vectors
    assert noisy.metrics["patent_map"][0] < plain.metrics["patent_map"][0] - 0.2
    if protocol == "leave_one_out":  # a query is never its own answer, even when its vector moved
        assert not (noisy.ranking == np.arange(noisy.ranking.shape[0])[:, None]).any()
