"""Retrieval metrics: hand-computed examples and a plain-python reference on random rankings."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.metrics import OUTPUT_COLUMNS, evaluate, per_query_metrics

# gallery rows: 0..5
GALLERY = pl.DataFrame(
    {
        "drawing_id": ["g0", "g1", "g2", "g3", "g4", "g5"],
        "patent_id": ["P1", "P1", "P2", "P3", "P4", "P5"],
        "subclass_code": ["01-01", "01-01", "01-01", "01-02", "02-01", None],
        "class_code": ["01", "01", "01", "01", "02", "02"],
    }
)
QUERIES = pl.DataFrame(
    {
        "drawing_id": ["q0", "q1", "q2", "q3"],
        "patent_id": ["P1", "P4", "P9", "P5"],  # P9 has no gallery drawing -> excluded
        "subclass_code": ["01-01", "02-01", "01-02", None],
        "class_code": ["01", "02", "01", "02"],
    }
)
RANKING = np.array(
    [
        [2, 0, 3, 1, 4, 5],  # q0: patent hits at ranks 2, 4
        [4, 5, 0, 1, 2, 3],  # q1: perfect
        [3, 0, 1, 2, 4, 5],  # q2: excluded
        [4, 5, 0, 1, 2, 3],  # q3: patent hit at rank 2, null subclass
    ]
)


def dcg(gains: list[float]) -> float:
    return sum(g / math.log2(r + 2) for r, g in enumerate(gains))


# q0: patent AP = (1/2 + 2/4) / 2; subclass 01-01 hits at 1,2,4 of 3: (1 + 1 + 3/4) / 3;
#     gains [2, 3, 1, 3, 0, 0], ideal [3, 3, 2, 1]
Q0 = dict(ap=0.5, sub=2.75 / 3, cls=1.0, ndcg=dcg([2, 3, 1, 3]) / dcg([3, 3, 2, 1]), mrr=0.5, r1=0.0)
Q1 = dict(ap=1.0, sub=1.0, cls=1.0, ndcg=1.0, mrr=1.0, r1=1.0)
# q3: patent at rank 2 -> AP 1/2; subclass null -> undefined; class 02 hits at 1, 2; gains [1, 3], ideal [3, 1]
Q3 = dict(ap=0.5, sub=None, cls=1.0, ndcg=dcg([1, 3]) / dcg([3, 1]), mrr=0.5, r1=0.0)


def test_hand_computed_example():
    out = evaluate(QUERIES, GALLERY, RANKING)
    assert out.columns == OUTPUT_COLUMNS
    assert out["scope"].to_list() == ["all", "01", "02"]
    row = out.row(0, named=True)
    assert (row["n_queries"], row["n_excluded"]) == (3, 1)
    assert row["patent_map"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert row["patent_recall_at_1"] == pytest.approx(1 / 3)
    assert row["patent_recall_at_5"] == pytest.approx(1.0)
    assert row["patent_recall_at_10"] == pytest.approx(1.0)
    assert row["patent_mrr_at_10"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert row["subclass_map_at_100"] == pytest.approx((2.75 / 3 + 1.0) / 2)  # q3 has no subclass
    assert row["class_map_at_100"] == pytest.approx(1.0)
    assert row["graded_ndcg_at_10"] == pytest.approx((Q0["ndcg"] + 1.0 + Q3["ndcg"]) / 3)
    assert Q0["ndcg"] == pytest.approx(0.898999, abs=1e-5)

    class_01 = out.row(1, named=True)  # q0 kept, q2 excluded
    assert (class_01["n_queries"], class_01["n_excluded"]) == (1, 1)
    assert class_01["patent_map"] == pytest.approx(0.5)
    assert class_01["subclass_map_at_100"] == pytest.approx(2.75 / 3)
    class_02 = out.row(2, named=True)
    assert (class_02["n_queries"], class_02["n_excluded"]) == (2, 0)
    assert class_02["patent_map"] == pytest.approx(0.75)
    assert class_02["subclass_map_at_100"] == pytest.approx(1.0)
    assert class_02["graded_ndcg_at_10"] == pytest.approx((1.0 + Q3["ndcg"]) / 2)


def test_truncated_ranking_is_penalised_and_padding_is_ignored():
    short = evaluate(QUERIES[:1], GALLERY, RANKING[:1, :2], per_class=False)
    # only one of two relevant drawings retrieved, at rank 2: AP = (1/2) / 2
    assert short["patent_map"][0] == pytest.approx(0.25)
    assert short["patent_recall_at_1"][0] == 0.0 and short["patent_recall_at_5"][0] == 1.0
    padded = np.concatenate([RANKING, np.full((4, 5), -1)], axis=1)  # k beyond gallery size
    assert evaluate(QUERIES, GALLERY, padded).equals(evaluate(QUERIES, GALLERY, RANKING))


def test_per_class_false_and_excluded_only_scope():
    out = evaluate(QUERIES[2:3], GALLERY, RANKING[2:3], per_class=True)
    assert out["scope"].to_list() == ["all", "01"]
    assert out["n_queries"].to_list() == [0, 0] and out["n_excluded"].to_list() == [1, 1]
    assert out["patent_map"].null_count() == 2
    assert evaluate(QUERIES, GALLERY, RANKING, per_class=False).height == 1


def test_bad_ranking_names_the_query():
    bad = RANKING.copy()
    bad[3, 1] = 99
    with pytest.raises(InputError, match="q3") as err:
        evaluate(QUERIES, GALLERY, bad)
    assert err.value.source == "ranking"
    with pytest.raises(InputError, match="shape"):
        evaluate(QUERIES, GALLERY, RANKING[:2])
    with pytest.raises(InputError, match="missing columns"):
        evaluate(QUERIES.drop("class_code"), GALLERY, RANKING)


# ---------- plain-python reference ----------


def reference_per_query(queries: pl.DataFrame, gallery: pl.DataFrame, ranking: np.ndarray) -> list[dict | None]:
    g = gallery.to_dicts()
    rows = []
    for qi, q in enumerate(queries.to_dicts()):
        n_pat = sum(x["patent_id"] == q["patent_id"] for x in g)
        if n_pat == 0:
            rows.append(None)
            continue
        ranked_pad = [g[j] if j >= 0 else None for j in ranking[qi]]

        def same_sub(x):
            return x is not None and q["subclass_code"] is not None and x["subclass_code"] == q["subclass_code"]

        def same_pat(x):
            return x is not None and x["patent_id"] == q["patent_id"]

        def same_cls(x):
            return x is not None and x["class_code"] == q["class_code"]

        def ap(items, rel, n_rel):
            hits, total = 0, 0.0
            for r, x in enumerate(items, start=1):
                if rel(x):
                    hits += 1
                    total += hits / r
            return total / n_rel if n_rel else None

        first = next((r for r, x in enumerate(ranked_pad, start=1) if same_pat(x)), None)
        n_sub = sum(same_sub(x) for x in g)
        n_cls = sum(same_cls(x) for x in g)

        def gain(x):
            return 3 if same_pat(x) else 2 if same_sub(x) else 1 if same_cls(x) else 0

        ideal = sorted((gain(x) for x in g), reverse=True)[:10]
        rows.append(
            {
                "patent_map": ap(ranked_pad, same_pat, n_pat),
                "patent_recall_at_1": float(first is not None and first <= 1),
                "patent_recall_at_5": float(first is not None and first <= 5),
                "patent_recall_at_10": float(first is not None and first <= 10),
                "patent_mrr_at_10": 1 / first if first is not None and first <= 10 else 0.0,
                "subclass_map_at_100": ap(ranked_pad[:100], same_sub, min(n_sub, 100)),
                "class_map_at_100": ap(ranked_pad[:100], same_cls, min(n_cls, 100)),
                "graded_ndcg_at_10": dcg([gain(x) for x in ranked_pad[:10]]) / dcg(ideal),
            }
        )
    return rows


def random_case(seed: int, n_gallery: int, n_queries: int, k: int):
    rng = np.random.default_rng(seed)
    n_patents = max(2, n_gallery // 3)
    patent_class = rng.integers(0, 3, n_patents)
    patent_sub = patent_class * 10 + rng.integers(0, 2, n_patents)
    sub_known = rng.random(n_patents) > 0.2

    def frame(prefix, patents):
        return pl.DataFrame(
            {
                "drawing_id": [f"{prefix}{i}" for i in range(len(patents))],
                "patent_id": [f"P{p}" for p in patents],
                "subclass_code": [f"s{patent_sub[p]}" if sub_known[p] else None for p in patents],
                "class_code": [f"c{patent_class[p]}" for p in patents],
            }
        )

    gallery = frame("g", rng.integers(0, n_patents, n_gallery))
    queries = frame("q", rng.integers(0, n_patents + 3, n_queries) % n_patents)
    # add queries of patents absent from the gallery
    absent = [p for p in range(n_patents) if f"P{p}" not in set(gallery["patent_id"])]
    if absent:
        queries = pl.concat([queries, frame("x", np.array(absent[:2]))])
    scores = np.round(rng.random((queries.height, n_gallery)), 1)  # many ties
    order = np.argsort(-scores, axis=1, kind="stable")
    ranking = order[:, :k] if k <= n_gallery else np.pad(order, ((0, 0), (0, k - n_gallery)), constant_values=-1)
    return queries, gallery, ranking


@pytest.mark.parametrize(
    "seed,n_gallery,n_queries,k",
    [(0, 40, 25, 40), (1, 40, 25, 3), (2, 30, 20, 45), (3, 150, 30, 120), (4, 12, 10, 1), (5, 300, 15, 300)],
)
def test_matches_reference_on_random_rankings(seed, n_gallery, n_queries, k):
    queries, gallery, ranking = random_case(seed, n_gallery, n_queries, k)
    got = per_query_metrics(queries, gallery, ranking).to_dicts()
    expected = reference_per_query(queries, gallery, ranking)
    for g, e in zip(got, expected, strict=True):
        assert g["excluded"] == (e is None)
        for name, value in (e or {}).items():
            if value is None:
                assert g[name] is None, name
            else:
                assert g[name] == pytest.approx(value, abs=1e-9), name

    summary = evaluate(queries, gallery, ranking)
    kept = [e for e in expected if e is not None]
    all_row = summary.row(0, named=True)
    assert all_row["n_queries"] == len(kept)
    assert all_row["n_excluded"] == len(expected) - len(kept)
    for name in ("patent_map", "class_map_at_100", "graded_ndcg_at_10"):
        assert all_row[name] == pytest.approx(np.mean([e[name] for e in kept]))
    subs = [e["subclass_map_at_100"] for e in kept if e["subclass_map_at_100"] is not None]
    assert all_row["subclass_map_at_100"] == pytest.approx(np.mean(subs))
    assert summary["n_queries"][1:].sum() == all_row["n_queries"]


def test_empty_gallery_or_queries():
    out = evaluate(QUERIES, GALLERY[:0], np.full((4, 2), -1))
    assert out["n_excluded"].to_list() == [4, 2, 2] and out["n_queries"].sum() == 0
    empty = evaluate(QUERIES[:0], GALLERY, np.zeros((0, 3), dtype=np.int64))
    assert empty.columns == OUTPUT_COLUMNS and empty["n_queries"].to_list() == [0]
