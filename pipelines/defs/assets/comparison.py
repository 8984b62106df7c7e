"""The model comparison as assets: each variant (pretrained, baseline, hierarchical) is a partition of
`variant_encoder` (trained through the same Pipes launcher, with the GPU tags, as `trained_encoder`) and of
`variant_benchmark` (its test split embedded and benchmarked under both protocols, logged to its MLflow run, saved
under `data/variants/<variant>/`). `model_comparison` only reads the saved results: the table, paired bootstrap
intervals and plots, in Dagster and in its own MLflow run.

A variant is materialized, seen and backfilled like any partition (`compare_variants` job); with the same config
and data, the partition that trains `trained_encoder`'s config (`baseline`, the default loss) reuses its finished MLflow
run instead of training again.
"""

import tempfile
import warnings
from pathlib import Path

import dagster as dg
import polars as pl

from hmpcl_lib import tracking
from hmpcl_lib.io import file_sha256, markdown_table
from hmpcl_lib.retrieval.evaluation import PROTOCOLS
from hmpcl_lib.retrieval.metrics import METRIC_COLUMNS
from hmpcl_lib.experiments.runs import (PROTOCOL_PREFIX, TrainedModel, comparison_table, evaluate_protocols,
                                       load_variant_results, log_benchmark, paired_intervals, pretrained_tracked,
                                       save_variant_results)
from hmpcl_lib.experiments.variants import COMPARISON, variant_config
from pipelines.defs.assets.data import decoded_drawings, splits
from pipelines.defs.assets.training import TRAINING_LAUNCHER, TrainingConfig, train_through_launcher
from pipelines.defs.resources import DataStore, MlflowTracking, TrainingLauncher
from pipelines.launchers import GPU_POD_TAGS
from pipelines.metadata import image_markdown, table_metadata

variant_partitions = dg.StaticPartitionsDefinition(list(COMPARISON))
PAIRS = [("baseline", "hierarchical"), ("pretrained", "baseline"), ("pretrained", "hierarchical")]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # asset-level resource_defs

    @dg.asset(partitions_def=variant_partitions, deps=[splits, decoded_drawings], group_name="comparison", pool="gpu",
              op_tags=GPU_POD_TAGS, kinds={"pytorch", "mlflow"}, resource_defs={"training_launcher": TRAINING_LAUNCHER})
    def variant_encoder(context: dg.AssetExecutionContext, config: TrainingConfig, store: DataStore,
                        mlflow_tracking: MlflowTracking,
                        training_launcher: TrainingLauncher) -> dg.Output[TrainedModel]:
        """One variant of the comparison, on the run config's TrainConfig with the variant's overrides
        (`experiments.variants.COMPARISON`): trained through the Pipes launcher, or, for `pretrained`, the untouched backbone
        logged as its own MLflow run."""
        variant = context.partition_key
        train_config = variant_config(config.to_train_config(), variant)
        if variant == "pretrained":
            model = pretrained_tracked(train_config, mlflow_tracking.config)
            return dg.Output(model, metadata={"mlflow_run_id": model.run_id, "model_uri": model.model_uri,
                                              "reused_finished_run": model.reused,
                                              "mlflow_run": dg.MetadataValue.url(
                                                  tracking.run_url(mlflow_tracking.config, model.run_id))})
        model, meta = train_through_launcher(context, train_config, variant, store, mlflow_tracking,
                                             training_launcher)
        return dg.Output(model, metadata=meta)


@dg.asset(partitions_def=variant_partitions, group_name="comparison", pool="gpu", op_tags=GPU_POD_TAGS,
          kinds={"pytorch", "mlflow"})
def variant_benchmark(context: dg.AssetExecutionContext, variant_encoder: TrainedModel, store: DataStore,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The variant's test split embedded and benchmarked under both protocols (headline and leave-one-out),
    logged to its MLflow run (with the test split as its evaluation dataset) and saved (metrics, per-query metrics,
    recall curve) for `model_comparison`."""
    import mlflow

    cfg = mlflow_tracking.config
    hier, spl = pl.read_parquet(store.layout.hierarchy_path), pl.read_parquet(store.layout.splits_path)
    model = tracking.load_model(cfg, variant_encoder.model_uri)
    size = int(variant_encoder.params.get("image_size", 128))
    results = evaluate_protocols(model, hier, spl, size, protocols=PROTOCOLS, pixel_store=store.pixels(size))
    overall = {p: log_benchmark(r, variant_encoder.run_id, cfg, "variant_benchmark") for p, r in results.items()}
    tracking.activate(cfg)
    with mlflow.start_run(run_id=variant_encoder.run_id):
        tracking.log_dataset(store.layout.splits_path, "evaluation", spl.filter(pl.col("split") == "test"), name="test_split")
    out = save_variant_results(results, store.layout.variant_dir(context.partition_key), {
        "variant": context.partition_key, "run_id": variant_encoder.run_id,
        "fingerprint": variant_encoder.fingerprint, "split_sha256": file_sha256(store.layout.splits_path)})
    return dg.MaterializeResult(metadata={
        **{f"{PROTOCOL_PREFIX[p].replace('.', '_')}{k}": dg.MetadataValue.float(v[k])
           for p, v in overall.items() for k in METRIC_COLUMNS if k in v},
        "n_queries": int(overall["deeppatent"].get("n_queries", 0)),
        "loo_n_queries": int(overall["leave_one_out"].get("n_queries", 0)),
        "path": dg.MetadataValue.path(str(out)),
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(cfg, variant_encoder.run_id)),
    })


def read_variants(store: DataStore) -> tuple[dict[str, dict], dict[str, dict]]:
    """({variant: variant.json}, {variant: {protocol: SavedBenchmark}}) of every comparison variant; a missing or
    stale (other test split) variant is a Failure naming it."""
    split_sha = file_sha256(store.layout.splits_path)
    infos, results, problems = {}, {}, []
    for variant in COMPARISON:
        try:
            infos[variant], results[variant] = load_variant_results(store.layout.variant_dir(variant))
        except FileNotFoundError:
            problems.append(f"{variant}: not benchmarked yet")
            continue
        if infos[variant].get("split_sha256") != split_sha:
            problems.append(f"{variant}: benchmarked on another test split")
    if problems:
        raise dg.Failure("materialize variant_benchmark (job compare_variants) for: " + "; ".join(problems))
    return infos, results


@dg.asset(deps=[variant_benchmark], group_name="comparison", kinds={"mlflow"},
          automation_condition=dg.AutomationCondition.eager())
def model_comparison(context: dg.AssetExecutionContext, store: DataStore,
                     mlflow_tracking: MlflowTracking) -> dg.Output[pl.DataFrame]:
    """Pretrained-only vs baseline loss vs hierarchical loss on the same split, under both protocols, with paired
    bootstrap 95 % intervals of the differences, as tables in Dagster and MLflow. Reads the `variant_benchmark`
    partitions; trains nothing."""
    import mlflow

    from hmpcl_lib.retrieval import plots

    cfg = mlflow_tracking.config
    infos, results = read_variants(store)
    table = comparison_table(results)
    md = markdown_table(table)
    intervals = pl.concat([paired_intervals(results, PAIRS, protocol) for protocol in reversed(PROTOCOLS)])
    intervals_md = markdown_table(intervals, max_rows=100)
    context.log.info("model comparison on the test split:\n" + md + "\n\npaired 95 % intervals:\n" + intervals_md)

    fp = tracking.fingerprint("comparison", {v: i["run_id"] for v, i in infos.items()},
                              file_sha256(store.layout.splits_path))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        curves = {name: (r["deeppatent"].recall_curve["k"].to_numpy(), r["deeppatent"].recall_curve["recall"].to_numpy())
                  for name, r in results.items()}
        recall_png, bar_png = out / "recall_at_k.png", out / "per_class_class_map.png"
        plots.recall_curve_png(curves, recall_png)
        plots.per_class_bar_png({n: r["deeppatent"].metrics for n, r in results.items()}, "class_map_at_100", bar_png)
        (out / "comparison.md").write_text(md + "\n\n" + intervals_md + "\n")
        table.write_parquet(out / "comparison.parquet")
        intervals.write_parquet(out / "paired_intervals.parquet")
        existing = tracking.find_run(cfg, fp)
        tracking.activate(cfg)
        run_ctx = (mlflow.start_run(run_id=existing.info.run_id) if existing is not None
                   else tracking.start_run(cfg, "model-comparison", fp=fp, tags={"hmpcl.stage": "comparison"}))
        with run_ctx as run:
            mlflow.log_params({f"{v}.run_id": i["run_id"] for v, i in infos.items()})
            for row in table.iter_rows(named=True):
                prefix = f"{row['model']}.{PROTOCOL_PREFIX[row['protocol']]}"
                tracking.log_metrics_safe({prefix + k: v for k, v in row.items() if k in METRIC_COLUMNS})
            for row in intervals.iter_rows(named=True):
                name = f"{row['comparison'].replace(' ', '')}.{PROTOCOL_PREFIX[row['protocol']]}{row['metric']}"
                tracking.log_metrics_safe({f"{name}.diff": row["diff"], f"{name}.low": row["low"],
                                           f"{name}.high": row["high"]})
            for f in out.iterdir():
                mlflow.log_artifact(str(f), artifact_path="comparison")
            run_id = run.info.run_id
        meta = {"comparison": dg.MetadataValue.md(md),
                "paired_intervals": dg.MetadataValue.md(intervals_md),
                "recall_at_k": image_markdown("Recall@k", recall_png),
                "per_class_class_map": image_markdown("class mAP@100 per main class", bar_png),
                "variant_runs": dg.MetadataValue.json({v: i["run_id"] for v, i in infos.items()}),
                "mlflow_run": dg.MetadataValue.url(tracking.run_url(cfg, run_id))}
    return dg.Output(table, metadata={**meta, **table_metadata(table)})
