"""The results database (`results_db` asset, `hmpcl sql`): its SQL answers equal the library's own numbers, and it
refuses what it must (writes, bad SQL, a missing file) with a clear message."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from hmpcl_lib import cli
from hmpcl_lib.experiments import results_db as rdb
from hmpcl_lib.experiments import sweep
from hmpcl_lib.experiments.runs import overall_metrics, save_variant_results
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.evaluation import benchmark_embeddings
from hmpcl_lib.retrieval.metrics import METRIC_COLUMNS
from test_evaluation import make_corpus


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two comparison variants and a 2-variant x 2-seed sweep of real benchmarks on a small corpus."""
    layout = DataLayout(tmp_path_factory.mktemp("data"))
    hierarchy, splits, (ids, vectors) = make_corpus(n_patents=12, views=3)
    layout.parsed_dir.mkdir(parents=True)
    hierarchy.write_parquet(layout.hierarchy_path)
    splits.write_parquet(layout.splits_path)
    rng = np.random.default_rng(0)

    def noisy_unit() -> np.ndarray:
        v = vectors + rng.normal(0, 0.3, vectors.shape).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    library = {}
    for variant in ("baseline", "hierarchical"):
        noisy = noisy_unit()
        benches = {p: benchmark_embeddings((ids, noisy), hierarchy, splits, protocol=p)
                   for p in ("deeppatent", "leave_one_out")}
        save_variant_results(benches, layout.variant_dir(variant), {"variant": variant, "run_id": f"run-{variant}"})
        library[variant] = benches
    frames = []
    for seed in (0, 1):
        for variant in ("baseline", "cumulative"):
            noisy = noisy_unit()
            bench = benchmark_embeddings((ids, noisy), hierarchy, splits, protocol="leave_one_out")
            frame = bench.per_query.with_columns(variant=pl.lit(variant), seed=pl.lit(seed),
                                                 protocol=pl.lit("leave_one_out"), features=pl.lit("head"),
                                                 final_loss=pl.lit(1.0))
            path = sweep.run_path(layout.sweeps_dir / "mini", variant, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path)
            frames.append(frame)
    db = rdb.build_results_db(layout)
    return layout, db, library, pl.concat(frames)


def test_mean_per_query_metrics_in_sql_equal_the_librarys_overall_and_per_class_metrics(results):
    _, db, library, _ = results
    for variant, benches in library.items():
        for protocol, bench in benches.items():
            row = rdb.query(db, f"SELECT * FROM overall WHERE source = 'comparison' AND variant = '{variant}' "
                                f"AND protocol = '{protocol}'").row(0, named=True)
            expected = overall_metrics(bench.metrics)
            for m in METRIC_COLUMNS:
                assert row[m] == pytest.approx(expected[m], abs=1e-12), (variant, protocol, m)
            assert row["n_queries"] == expected["n_queries"]
            per_class = rdb.query(db, f"SELECT class_code, patent_map FROM per_class_overall WHERE "
                                      f"source = 'comparison' AND variant = '{variant}' AND protocol = '{protocol}' "
                                      f"ORDER BY class_code")
            lib = bench.metrics.filter(pl.col("scope") != "all").sort("scope")
            assert per_class["class_code"].to_list() == lib["scope"].to_list()
            np.testing.assert_allclose(per_class["patent_map"].to_numpy(), lib["patent_map"].to_numpy(), atol=1e-12)


def test_the_sweep_summary_in_sql_equals_the_sweeps_own_summary(results):
    _, db, _, frame = results
    answer = rdb.query(db, rdb.QUESTIONS["sweep summary: mean and sd over seeds per variant (leave-one-out, head "
                                         "features)"])
    summary = sweep.summarise(frame, protocol="leave_one_out", features="head", n_resamples=10)
    for row in summary.iter_rows(named=True):
        sql = answer.filter(pl.col("variant") == row["variant"]).row(0, named=True)
        assert sql["seeds"] == row["seeds"] == 2
        assert sql["patent_map"] == pytest.approx(row["patent_map_mean"], abs=5e-4)  # SQL rounds to 3 digits
        assert sql["patent_map_sd"] == pytest.approx(row["patent_map_sd"], abs=5e-4)


def test_every_readme_question_runs_and_the_tables_are_listed(results):
    _, db, _, _ = results
    for question, sql in rdb.QUESTIONS.items():
        rdb.query(db, sql)  # no MLflow tables without a tracking config: those questions need them
    listing = rdb.tables(db)
    assert {"per_query", "benchmark_metrics", "recall_curve", "hierarchy", "splits", "overall"} <= set(listing["name"])
    assert listing.filter(pl.col("name") == "per_query")["rows"][0] > 0


def test_mlflow_runs_params_and_registry_are_tables(tmp_path):
    import mlflow

    from hmpcl_lib import tracking

    cfg = tracking.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  artifact_root=str(tmp_path / "artifacts"))
    with tracking.start_run(cfg, run_name="train-x", fp="fp1", tags={"hmpcl.stage": "train"}) as run:
        mlflow.log_params({"loss": "hierarchical", "seed": "0"})
        mlflow.log_metric("patent_map", 0.5)
    db = rdb.build_results_db(DataLayout(tmp_path / "data"), cfg)
    answer = rdb.query(db, "SELECT r.run_name, p.value AS loss, m.value AS patent_map FROM runs r "
                           "JOIN run_params p ON p.run_id = r.run_id AND p.key = 'loss' "
                           "JOIN run_metrics m ON m.run_id = r.run_id AND m.key = 'patent_map'")
    assert answer.rows() == [("train-x", "hierarchical", 0.5)]
    assert rdb.query(db, "SELECT count(*) AS n FROM runs WHERE run_id = '" + run.info.run_id + "'")["n"][0] == 1


@pytest.mark.parametrize("statement, message", [
    ("DELETE FROM per_query", "read-only: only SELECT"),
    ("CREATE TABLE t AS SELECT 1", "read-only: only SELECT"),
    ("COPY (SELECT 1) TO 'out.csv'", "read-only: only SELECT"),
    ("SELECT 1; SELECT 2", "one statement at a time"),
    ("SELEC 1", "not valid SQL"),
    ("SELECT no_such_column FROM runs", "no_such_column"),
    ("SELECT * FROM read_csv('/etc/hostname')", "disabled by configuration"),
])
def test_bad_or_writing_statements_are_refused_with_a_message(results, statement, message):
    _, db, _, _ = results
    before = db.read_bytes()
    with pytest.raises(rdb.ResultsDbError, match=message.replace("(", r"\(")):
        rdb.query(db, statement)
    assert db.read_bytes() == before  # nothing written


def test_hmpcl_sql_prints_tables_csv_json_and_errors(results, tmp_path, capsys):
    layout, db, library, _ = results
    assert cli.main(["sql", "--data-root", str(layout.root), "--csv",
                     "SELECT variant, protocol, patent_map FROM overall WHERE source = 'comparison' "
                     "ORDER BY variant, protocol"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "variant,protocol,patent_map" and len(lines) == 5
    assert float(lines[1].split(",")[2]) == pytest.approx(overall_metrics(library["baseline"]["deeppatent"].metrics)
                                                          ["patent_map"])
    assert cli.main(["sql", "--db", str(db), "--csv", "SELECT [1, 2] AS ks, {'a': 1} AS s"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1] == '"[1, 2]","{""a"": 1}"'  # nested values as JSON
    assert cli.main(["sql", "--db", str(db), "--json", "SELECT 1 AS one"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"one": 1}]
    assert cli.main(["sql", "--db", str(db), "--tables"]) == 0
    assert "| per_query" in capsys.readouterr().out
    assert cli.main(["sql", "--db", str(tmp_path / "none.duckdb"), "SELECT 1"]) == 1
    assert "no results database" in capsys.readouterr().err
    assert cli.main(["sql", "--db", str(db), "DROP TABLE runs"]) == 1
    assert "read-only" in capsys.readouterr().err
