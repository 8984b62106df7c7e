"""Every result on disk and in MLflow as one DuckDB database, for questions in SQL.

`build_results_db(layout, tracking)` writes `<data root>/results.duckdb` (a temp file renamed into place) with:

| table | rows |
|---|---|
| `hierarchy`, `splits` | the `lic_hierarchy` and `splits` tables |
| `per_query` | one row per benchmarked query of every comparison variant (`source` 'comparison', `run_id`) and every sweep run (`source` 'sweep', `sweep`, `seed`); `variant`, `protocol`, `features`, the query's `drawing_id` and `class_code`, `excluded` and the metric columns of `retrieval.metrics` |
| `benchmark_metrics` | the per-class and overall tables (`scope`: 'all' or a class code) of the comparison variants and of every `retrieval_benchmark` run |
| `recall_curve` | recall@k (patent level) per comparison variant and protocol |
| `runs`, `run_params`, `run_metrics`, `run_tags` | the MLflow experiment's runs (one row each) and their params, latest metrics and tags (`run_id`, `key`, `value`); empty without a tracking config |
| `model_versions` | the registered model's versions: run, creation time, aliases (the champion's history) |

Views: `overall` (mean of each metric over the included queries per source, sweep, variant, seed, protocol and
features: equal to the library's overall metrics) and `per_class_overall` (the same per query class).

`query(path, sql)` runs one read-only SELECT (a connection opened read-only, statements other than SELECT refused,
no file access from SQL) and answers a polars DataFrame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from hmpcl_lib.errors import HmpclError
from hmpcl_lib.io import atomic_path
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.metrics import METRIC_COLUMNS

PER_QUERY_KEYS = ["source", "sweep", "variant", "seed", "protocol", "features", "run_id"]


class ResultsDbError(HmpclError):
    """A missing database, a statement that is not a read-only SELECT, or SQL DuckDB refuses."""


def _comparison_frames(layout: DataLayout) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[pl.DataFrame]]:
    """(per_query, benchmark_metrics, recall_curve) frames of every saved comparison variant."""
    per_query, metrics, recall = [], [], []
    root = layout.root / "variants"
    for info_path in sorted(root.glob("*/variant.json")) if root.is_dir() else []:
        info = json.loads(info_path.read_text())
        keys = {"variant": info.get("variant", info_path.parent.name), "run_id": info.get("run_id")}
        for protocol in info.get("protocols", []):
            folder = info_path.parent
            tags = {**keys, "protocol": protocol}
            if (folder / f"{protocol}.per_query.parquet").is_file():
                per_query.append(pl.read_parquet(folder / f"{protocol}.per_query.parquet").with_columns(
                    source=pl.lit("comparison"), sweep=pl.lit(None, pl.String), seed=pl.lit(None, pl.Int64),
                    features=pl.lit("head"), **{k: pl.lit(v, pl.String) for k, v in tags.items()}))
            metrics.append(pl.read_parquet(folder / f"{protocol}.metrics.parquet").with_columns(
                source=pl.lit("comparison"), **{k: pl.lit(v, pl.String) for k, v in tags.items()}))
            recall.append(pl.read_parquet(folder / f"{protocol}.recall.parquet").with_columns(
                **{k: pl.lit(v, pl.String) for k, v in tags.items()}))
    return per_query, metrics, recall


def _sweep_frames(layout: DataLayout) -> list[pl.DataFrame]:
    """The per-query results of every (variant, seed) of every sweep under the data root."""
    frames = []
    root = layout.sweeps_dir
    for path in sorted(root.glob("*/*/seed=*.parquet")) if root.is_dir() else []:
        frames.append(pl.read_parquet(path).drop("final_loss", "train_config", strict=False).with_columns(
            source=pl.lit("sweep"), sweep=pl.lit(path.parent.parent.name), run_id=pl.lit(None, pl.String),
            seed=pl.col("seed").cast(pl.Int64)))
    return frames


def _benchmark_frames(layout: DataLayout) -> list[pl.DataFrame]:
    """The `retrieval_benchmark` metrics table of every run (DeepPatent protocol)."""
    root = layout.root / "benchmarks"
    return [pl.read_parquet(p).with_columns(source=pl.lit("retrieval_benchmark"), variant=pl.lit(None, pl.String),
                                            run_id=pl.lit(p.stem), protocol=pl.lit("deeppatent"))
            for p in sorted(root.glob("*.parquet")) if root.is_dir()]


MLFLOW_SCHEMAS = {
    "runs": {"run_id": pl.String, "run_name": pl.String, "status": pl.String, "start_time": pl.Int64,
             "end_time": pl.Int64, "stage": pl.String, "variant": pl.String, "parent_run_id": pl.String},
    "run_params": {"run_id": pl.String, "key": pl.String, "value": pl.String},
    "run_metrics": {"run_id": pl.String, "key": pl.String, "value": pl.Float64},
    "run_tags": {"run_id": pl.String, "key": pl.String, "value": pl.String},
    "model_versions": {"name": pl.String, "version": pl.Int64, "run_id": pl.String, "created": pl.Int64,
                       "aliases": pl.String, "tags": pl.String},
}
TIMES = {"runs": ["start_time", "end_time"], "model_versions": ["created"]}  # epoch ms → timestamps


def _mlflow_frames(tracking) -> dict[str, pl.DataFrame]:
    """runs, run_params, run_metrics, run_tags and model_versions of the tracking config's experiment and registry
    (empty tables without one)."""
    rows = _mlflow_rows(tracking) if tracking is not None else {name: [] for name in MLFLOW_SCHEMAS}
    return {name: pl.DataFrame(rows[name], schema=schema).with_columns(
                [pl.col(c).cast(pl.Datetime("ms")) for c in TIMES.get(name, [])])
            for name, schema in MLFLOW_SCHEMAS.items()}


def _mlflow_rows(tracking) -> dict[str, list[dict]]:
    import mlflow

    from hmpcl_lib.tracking import client, experiment_id

    c = client(tracking)
    runs, params, metrics, tags = [], [], [], []
    token = None
    while True:
        page = c.search_runs([experiment_id(tracking)], max_results=1000, page_token=token)
        for r in page:
            info = r.info
            runs.append({"run_id": info.run_id, "run_name": info.run_name, "status": info.status,
                         "start_time": info.start_time, "end_time": info.end_time,
                         "stage": r.data.tags.get("hmpcl.stage"), "variant": r.data.tags.get("hmpcl.variant"),
                         "parent_run_id": r.data.tags.get("mlflow.parentRunId")})
            params += [{"run_id": info.run_id, "key": k, "value": v} for k, v in r.data.params.items()]
            metrics += [{"run_id": info.run_id, "key": k, "value": float(v)} for k, v in r.data.metrics.items()]
            tags += [{"run_id": info.run_id, "key": k, "value": v} for k, v in r.data.tags.items()]
        token = page.token
        if not token:
            break
    versions = []
    try:
        found = c.search_model_versions(f"name = '{tracking.registered_model}'")
    except mlflow.exceptions.MlflowException:
        found = []
    for v in found:
        aliases = c.get_model_version(v.name, v.version).aliases
        versions.append({"name": v.name, "version": int(v.version), "run_id": v.run_id,
                         "created": v.creation_timestamp, "aliases": ",".join(sorted(aliases)),
                         "tags": json.dumps(dict(v.tags or {}), sort_keys=True)})
    return {"runs": runs, "run_params": params, "run_metrics": metrics, "run_tags": tags, "model_versions": versions}


def _per_query(frames: list[pl.DataFrame]) -> pl.DataFrame:
    columns = PER_QUERY_KEYS + ["drawing_id", "class_code", "excluded", *METRIC_COLUMNS]
    if not frames:
        return pl.DataFrame(schema={c: pl.Float64 if c in METRIC_COLUMNS else pl.Int64 if c == "seed"
                                    else pl.Boolean if c == "excluded" else pl.String for c in columns})
    return pl.concat([f.select(columns) for f in frames], how="vertical_relaxed")


VIEWS = {
    "overall": f"""
        SELECT {', '.join(PER_QUERY_KEYS)}, count(*) AS n_queries,
               {', '.join(f'avg({m}) AS {m}' for m in METRIC_COLUMNS)}
        FROM per_query WHERE NOT excluded GROUP BY ALL""",
    "per_class_overall": f"""
        SELECT {', '.join(PER_QUERY_KEYS)}, class_code, count(*) AS n_queries,
               {', '.join(f'avg({m}) AS {m}' for m in METRIC_COLUMNS)}
        FROM per_query WHERE NOT excluded GROUP BY ALL""",
}


def build_results_db(layout: DataLayout, tracking=None, path: str | os.PathLike | None = None) -> Path:
    """Write the results database (see the module doc) from what is on disk under `layout` and, with a
    `tracking` config, in MLflow; returns its path. Tables with nothing to hold are created empty."""
    import duckdb

    path = Path(path or layout.results_db_path)
    per_query, metrics, recall = _comparison_frames(layout)
    per_query += _sweep_frames(layout)
    metrics += _benchmark_frames(layout)
    tables: dict[str, pl.DataFrame] = {"per_query": _per_query(per_query)}
    metric_keys = ["source", "variant", "protocol", "run_id", "scope"]
    tables["benchmark_metrics"] = (pl.concat([m.select(*metric_keys, pl.exclude(metric_keys)) for m in metrics],
                                             how="diagonal_relaxed") if metrics else
                                   pl.DataFrame(schema={k: pl.String for k in metric_keys}))
    tables["recall_curve"] = (pl.concat(recall, how="vertical_relaxed").select("variant", "protocol", "run_id", "k",
                                                                                "recall")
                              if recall else pl.DataFrame(schema={"variant": pl.String, "protocol": pl.String,
                                                                  "run_id": pl.String, "k": pl.Int64,
                                                                  "recall": pl.Float64}))
    for name, source in (("hierarchy", layout.hierarchy_path), ("splits", layout.splits_path)):
        if source.is_file():
            tables[name] = pl.read_parquet(source)
    tables.update(_mlflow_frames(tracking))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.unlink()  # DuckDB creates its own file
        con = duckdb.connect(str(tmp))
        try:
            for name, frame in tables.items():
                con.register("_frame", frame.to_arrow())
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _frame')
                con.unregister("_frame")
            for name, sql in VIEWS.items():
                con.execute(f'CREATE VIEW "{name}" AS {sql}')
            con.execute("CHECKPOINT")
        finally:
            con.close()
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    return path


def _connect(path: str | os.PathLike):
    import duckdb

    path = Path(path)
    if not path.is_file():
        raise ResultsDbError(f"no results database at {path}: materialize the results_db asset (`make run` does)")
    return duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})


def query(path: str | os.PathLike, sql: str) -> pl.DataFrame:
    """The answer of one SELECT on the database at `path`, read-only (ResultsDbError otherwise)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ResultsDbError(f"not valid SQL: {exc}") from None
    if len(statements) != 1:
        raise ResultsDbError(f"one statement at a time, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise ResultsDbError(f"the results database is read-only: only SELECT (or WITH ... SELECT, DESCRIBE) is "
                             f"allowed, got {statements[0].type.name}")
    con = _connect(path)
    try:
        return pl.from_arrow(con.sql(sql).to_arrow_table())
    except duckdb.Error as exc:
        raise ResultsDbError(str(exc).strip()) from None
    finally:
        con.close()


def tables(path: str | os.PathLike) -> pl.DataFrame:
    """name, kind (table or view), rows and columns of everything in the database."""
    con = _connect(path)
    try:
        listed = con.execute("SELECT table_name, table_type FROM information_schema.tables "
                             "WHERE table_schema = 'main' ORDER BY table_type, table_name").fetchall()
        rows: list[dict[str, Any]] = []
        for name, kind in listed:
            count = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            columns = [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
            rows.append({"name": name, "kind": "view" if kind == "VIEW" else "table", "rows": count,
                         "columns": ", ".join(columns)})
    finally:
        con.close()
    return pl.DataFrame(rows, schema={"name": pl.String, "kind": pl.String, "rows": pl.Int64, "columns": pl.String})


# Questions the README answers on the sample, and the asset's metadata shows (the SQL is the documentation).
QUESTIONS = {
    "per-class difference hierarchical - baseline (leave-one-out, class mAP@100), with its sign over runs and seeds": """
        WITH m AS (
            SELECT source, coalesce(sweep, '') AS sweep, coalesce(seed, -1) AS seed, variant, class_code,
                   class_map_at_100
            FROM per_class_overall
            WHERE protocol = 'leave_one_out' AND features = 'head' AND variant IN ('baseline', 'hierarchical', 'cumulative'))
        SELECT h.class_code, count(*) AS runs,
               round(avg(h.class_map_at_100 - b.class_map_at_100), 3) AS mean_diff,
               sum(CASE WHEN h.class_map_at_100 > b.class_map_at_100 THEN 1 ELSE 0 END) AS runs_better
        FROM m h JOIN m b USING (source, sweep, seed, class_code)
        WHERE h.variant IN ('hierarchical', 'cumulative') AND b.variant = 'baseline'
        GROUP BY h.class_code ORDER BY mean_diff DESC""",
    "queries where fine-tuning lost rank 1 to the pretrained backbone (leave-one-out)": """
        SELECT q.drawing_id, q.class_code, p.patent_recall_at_1 AS pretrained_r1, q.patent_recall_at_1 AS hierarchical_r1,
               round(q.patent_map - p.patent_map, 3) AS map_diff
        FROM per_query q JOIN per_query p USING (drawing_id, protocol)
        WHERE q.source = 'comparison' AND p.source = 'comparison' AND q.variant = 'hierarchical'
          AND p.variant = 'pretrained' AND q.protocol = 'leave_one_out'
          AND p.patent_recall_at_1 > q.patent_recall_at_1
        ORDER BY map_diff, q.drawing_id LIMIT 10""",
    "recall@k per protocol and variant": """
        SELECT variant, protocol,
               round(max(recall) FILTER (WHERE k = 1), 3) AS r_at_1, round(max(recall) FILTER (WHERE k = 5), 3) AS r_at_5,
               round(max(recall) FILTER (WHERE k = 10), 3) AS r_at_10, round(max(recall) FILTER (WHERE k = 50), 3) AS r_at_50
        FROM recall_curve GROUP BY variant, protocol ORDER BY protocol, variant""",
    "the champion's history": """
        SELECT v.version, v.created, v.aliases, r.run_name, round(m.value, 4) AS patent_map
        FROM model_versions v LEFT JOIN runs r USING (run_id)
        LEFT JOIN run_metrics m ON m.run_id = v.run_id AND m.key = 'patent_map'
        ORDER BY v.version""",
    "sweep summary: mean and sd over seeds per variant (leave-one-out, head features)": """
        SELECT sweep, variant, count(*) AS seeds, round(avg(patent_map), 3) AS patent_map,
               round(stddev_samp(patent_map), 3) AS patent_map_sd, round(avg(class_map_at_100), 3) AS class_map_at_100,
               round(stddev_samp(class_map_at_100), 3) AS class_map_sd
        FROM overall WHERE source = 'sweep' AND protocol = 'leave_one_out' AND features = 'head'
        GROUP BY sweep, variant ORDER BY sweep, patent_map DESC""",
}
