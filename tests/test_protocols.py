"""Leave-one-out protocol, paired bootstrap intervals and the sweep's summary (issue 11's measuring tools)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from hmpcl_lib.experiments import sweep
from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.evaluation import benchmark_embeddings
from hmpcl_lib.retrieval.metrics import METRIC_COLUMNS, paired_bootstrap, per_query_metrics
from test_evaluation import make_corpus


def test_leave_one_out_equals_one_query_against_all_other_test_drawings():
    hierarchy, splits, (ids, vectors) = make_corpus(n_patents=12, views=3)
    result = benchmark_embeddings((ids, vectors), hierarchy, splits, protocol="leave_one_out")
    test_ids = splits.filter(pl.col("role").is_in(["query", "gallery"]))["drawing_id"].sort()
    assert result.per_query["drawing_id"].to_list() == test_ids.to_list()  # every test drawing is a query
    labels = hierarchy.select("drawing_id", "patent_id", "subclass_code", "class_code")
    vec = dict(zip(ids, vectors))
    for q, qid in enumerate(test_ids.to_list()):
        assert qid not in result.ranking_ids[q].tolist()  # never its own result
        others = labels.filter(pl.col("drawing_id").is_in(test_ids) & (pl.col("drawing_id") != qid))
        scores = np.stack([vec[d] for d in others["drawing_id"]]) @ vec[qid]
        ranking = np.argsort(-scores, kind="stable")[None, :]
        expected = per_query_metrics(labels.filter(pl.col("drawing_id") == qid), others, ranking)
        got = result.per_query.filter(pl.col("drawing_id") == qid)
        for m in METRIC_COLUMNS:
            assert got[m][0] == pytest.approx(expected[m][0], abs=1e-9), (qid, m)


def test_leave_one_out_has_more_queries_than_the_headline_protocol():
    hierarchy, splits, embeddings = make_corpus(n_patents=12, views=4)
    headline = benchmark_embeddings(embeddings, hierarchy, splits)
    loo = benchmark_embeddings(embeddings, hierarchy, splits, protocol="leave_one_out")
    assert headline.per_query.height == 12
    assert loo.per_query.height == splits.filter(pl.col("role").is_in(["query", "gallery"])).height
    with pytest.raises(ValueError, match="protocol"):
        benchmark_embeddings(embeddings, hierarchy, splits, protocol="all-pairs")


def _per_query(values: dict[str, list[float]], n: int) -> pl.DataFrame:
    return pl.DataFrame({"drawing_id": [f"d{i}" for i in range(n)], **values})


def test_paired_bootstrap_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(0)
    a = _per_query({"patent_map": rng.random(50).tolist()}, 50)
    b = a.with_columns(pl.col("patent_map") + 0.1)
    row = paired_bootstrap(a, b, ["patent_map"]).row(0, named=True)
    assert row["n"] == 50
    assert row["diff"] == pytest.approx(0.1) and row["low"] == pytest.approx(0.1) and row["high"] == pytest.approx(0.1)


def test_paired_bootstrap_interval_is_paired_and_covers_the_mean():
    rng = np.random.default_rng(1)
    base = rng.random(200)
    a = _per_query({"patent_map": base.tolist()}, 200)
    b = _per_query({"patent_map": (base + 0.02 + 0.01 * rng.standard_normal(200)).tolist()}, 200)
    row = paired_bootstrap(a, b, ["patent_map"]).row(0, named=True)
    assert row["low"] < row["diff"] < row["high"]
    assert row["low"] > 0  # paired: the per-query spread of `base` cancels, so a 0.02 shift is clearly > 0
    assert row["high"] - row["low"] < 0.01


def test_paired_bootstrap_needs_the_same_queries():
    a = _per_query({"patent_map": [0.1, 0.2]}, 2)
    with pytest.raises(InputError, match="same queries"):
        paired_bootstrap(a, a.head(1), ["patent_map"])


def test_pareto_front():
    points = {"a": (0.5, 0.5, 0.5), "b": (0.6, 0.4, 0.5), "c": (0.4, 0.4, 0.4), "d": (0.5, 0.5, 0.5)}
    assert sweep.pareto_front(points) == {"a", "b", "d"}


def _runs(variant: str, seed: int, shift: float, n: int = 30) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    base = {m: rng.random(n) for m in METRIC_COLUMNS}
    return pl.DataFrame({"drawing_id": [f"d{i}" for i in range(n)], "class_code": "01", "excluded": False,
                         **{m: v + shift for m, v in base.items()}}).with_columns(
        variant=pl.lit(variant), seed=pl.lit(seed), protocol=pl.lit("leave_one_out"), features=pl.lit("head"))


def test_summary_means_over_seeds_and_paired_difference_to_the_baseline():
    frame = pl.concat([_runs("baseline", s, 0.0) for s in (0, 1)] + [_runs("better", s, 0.05) for s in (0, 1)])
    summary = sweep.summarise(frame).sort("variant")
    base, better = summary.row(0, named=True), summary.row(1, named=True)
    assert base["variant"] == "baseline" and base["seeds"] == 2 and base["patent_map_diff"] is None
    assert better["patent_map_mean"] == pytest.approx(base["patent_map_mean"] + 0.05)
    assert better["patent_map_diff"] == pytest.approx(0.05)
    assert better["patent_map_low"] == pytest.approx(0.05) and better["pareto"] and not base["pareto"]
    text = sweep.markdown(summary)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    assert rows[0][:3] == ["variant", "features", "seeds"] and set(rows[1][0]) <= {"-", ":"}
    assert ["better", "head", "2"] in [r[:3] for r in rows[2:]] and "Δ +0.050" in text


def test_sweep_resumes_from_saved_runs(tmp_path, monkeypatch):
    saved = _runs("baseline", 0, 0.0)
    path = sweep.run_path(tmp_path, "baseline", 0)
    path.parent.mkdir(parents=True)
    saved.write_parquet(path)
    monkeypatch.setattr("hmpcl_lib.train.loop.train", lambda *a, **k: pytest.fail("trained again"))
    frame = sweep.run_sweep(pl.DataFrame(), pl.DataFrame(), {"baseline": {"loss": "baseline"}}, [0], None, tmp_path)
    assert frame.equals(saved)


def test_pooled_features_are_compared_with_the_baselines_head_features():
    head = pl.concat([_runs("baseline", 0, 0.0), _runs("ft", 0, 0.02)])
    pooled = _runs("ft", 0, -0.1).with_columns(features=pl.lit("pooled"))
    summary = sweep.summarise(pl.concat([head, pooled]), features="pooled")
    row = summary.row(0, named=True)
    assert (row["variant"], row["features"]) == ("ft", "pooled")
    assert row["patent_map_diff"] == pytest.approx(-0.1)
