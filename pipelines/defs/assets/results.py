"""results_db: every benchmark, comparison variant, sweep and MLflow run in one DuckDB file (`hmpcl sql` asks it)."""

import dagster as dg

from hmpcl_lib.experiments import results_db as rdb
from hmpcl_lib.io import markdown_table
from pipelines.defs.assets.comparison import model_comparison
from pipelines.defs.assets.retrieval import champion_model, retrieval_benchmark
from pipelines.defs.resources import DataStore, MlflowTracking


@dg.asset(deps=[model_comparison, retrieval_benchmark, champion_model], group_name="comparison", kinds={"duckdb"},
          automation_condition=dg.AutomationCondition.eager())
def results_db(context: dg.AssetExecutionContext, store: DataStore, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Rebuilt after the benchmarks, the comparison and the champion (and by `hmpcl sweep` after a sweep): the
    per-query, per-class and recall tables, the hierarchy and splits, and MLflow's runs, params, metrics and
    registry, queryable with `hmpcl sql "SELECT ..."`. Metadata: the tables with row counts and three answers."""
    path = rdb.build_results_db(store.layout, mlflow_tracking.config)
    listing = rdb.tables(path)
    meta = {"path": dg.MetadataValue.path(str(path)),
            "tables": dg.MetadataValue.md(markdown_table(listing, max_rows=listing.height, max_chars=120))}
    for question in list(rdb.QUESTIONS)[:3]:
        answer = rdb.query(path, rdb.QUESTIONS[question])
        meta[question[:60]] = dg.MetadataValue.md(f"{question}\n\n" + markdown_table(answer, max_rows=12))
    context.log.info("results database %s: %d tables and views", path, listing.height)
    return dg.MaterializeResult(metadata=meta)
