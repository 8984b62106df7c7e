"""Retrieval assets: corpus embeddings, the search index, the benchmark and the registry champion."""


import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from hmpcl_lib import tracking
from hmpcl_lib.experiments.runs import TrainedModel, evaluate_model, log_benchmark, overall_metrics
from hmpcl_lib.io import atomic_path, file_sha256, markdown_table
from hmpcl_lib.retrieval.metrics import METRIC_COLUMNS
from pipelines.launchers import GPU_POD_TAGS
from pipelines.metadata import image_markdown
from pipelines.defs.assets.data import decoded_drawings, year_partitions
from pipelines.defs.resources import DataStore, MlflowTracking

HEADLINE = METRIC_COLUMNS  # the benchmark metrics shown in Dagster and logged for comparisons
SEARCH_HOWTO = ("**Search drawings in the browser:** `make search` → http://127.0.0.1:8000 (the champion's index; "
                "this one: `hmpcl serve --index {index}`). JSON: `POST /api/search`.")
SERVE_HOWTO = ("**Serve the encoder over HTTP:** `mlflow models serve -m models:/{model}@champion --env-manager local "
               "-h 127.0.0.1 -p 5001`, then POST `{{\"dataframe_records\": [{{\"image\": \"<base64 PNG>\"}}]}}` to "
               "`/invocations` → one L2-normalised embedding per row.")


def _clean(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if v is not None}


def _image_size(model: TrainedModel) -> int:
    return int(model.params.get("image_size", 128))


def year_embeddings(store: DataStore, run_id: str, image_size: int) -> list[Path]:
    """The embeddings file of every parsed year by the model of `run_id`, in year order; a `dg.Failure` naming the
    years still to embed (a year never embedded by this model, or embedded from pixels rebuilt since)."""
    from hmpcl_lib.modeling.pixels import pixel_store_path

    layout, files, missing, stale = store.layout, [], [], []
    if not layout.years():
        raise dg.Failure("no parsed drawings yet: materialize `drawings` for at least one year first")
    for year in layout.years():
        found = layout.year_embeddings_paths(run_id, year)
        if not found:
            missing.append(year)
            continue
        key = found[-1].stem.rsplit("-", 1)[1]  # year=<year>-<pixels key>: the store it was embedded from
        if not pixel_store_path(layout.root, image_size, key, layout.year_group(year)).is_dir():
            stale.append(year)
        files.append(found[-1])
    if missing or stale:
        raise dg.Failure(
            f"the corpus embeddings of run {run_id} are not complete: years {missing + stale} "
            f"({len(missing)} never embedded by this model, {len(stale)} embedded from pixels rebuilt since). "
            "Materialize those partitions of corpus_embeddings (the embed_year job, or a backfill in the UI).",
            metadata={"missing_years": dg.MetadataValue.json(missing), "stale_years": dg.MetadataValue.json(stale)})
    return files


@dg.asset(partitions_def=year_partitions, deps=[decoded_drawings], group_name="retrieval", pool="gpu",
          op_tags=GPU_POD_TAGS, kinds={"pytorch", "parquet"})
def corpus_embeddings(context: dg.AssetExecutionContext, trained_encoder: TrainedModel, store: DataStore,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The year's drawings embedded by the trained encoder (batched inference, GPU + bf16 when present) from the
    year's pixel store, into `embeddings/<run id>/year=<year>-<pixels key>.parquet`. Keyed by (model, the year's
    pixels): a new year embeds only itself, an unchanged year with the same model is not embedded again, and a new
    model re-embeds the years as a backfill of these partitions (run several at a time by the run queue). Written
    chunk by chunk into a temp file renamed when complete: a run killed part-way leaves nothing, and its rerun redoes
    that year only."""
    from hmpcl_lib.retrieval.embedding import EmbedStats, ensure_store_embeddings

    size = _image_size(trained_encoder)
    pixels = store.year_pixels(context.partition_key, size)
    stats = EmbedStats()
    done = ensure_store_embeddings(lambda: tracking.load_model(mlflow_tracking.config, trained_encoder.model_uri),
                                   pixels, store.layout.embeddings_dir(trained_encoder.run_id), stats=stats)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(f"{trained_encoder.run_id}-{pixels.fingerprint[:16]}"),
        metadata={"dagster/row_count": done.rows, "dim": done.dim, "embedded": done.embedded,
                  "drawings_embedded": stats.n_images,
                  **({"images_per_s": dg.MetadataValue.float(round(stats.images_per_s, 1))} if done.embedded else {}),
                  "path": dg.MetadataValue.path(str(done.path)), "pixels": dg.MetadataValue.path(str(pixels.path)),
                  "mlflow_run_id": trained_encoder.run_id, "replaced_files": len(done.removed)})


@dg.asset(deps=[corpus_embeddings], group_name="retrieval", kinds={"faiss"})
def gallery_index(context: dg.AssetExecutionContext, trained_encoder: TrainedModel,
                  store: DataStore) -> dg.Output[str]:
    """A FAISS inner-product index over every year's embeddings by the trained encoder: what `hmpcl-search` and
    `hmpcl serve` query. Trained (IVF) on a seeded sample and filled year by year: memory holds one year's vectors
    and what faiss keeps, not the corpus's twice."""
    import pyarrow.parquet as pq

    from hmpcl_lib.retrieval.embedding import read_embeddings
    from hmpcl_lib.retrieval.index import VectorIndex

    files = year_embeddings(store, trained_encoder.run_id, _image_size(trained_encoder))
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    index = VectorIndex.build_in_parts([lambda f=f: read_embeddings(f) for f in files], sum(rows),
                                       names=[str(f) for f in files])
    out = store.layout.index_dir(trained_encoder.run_id)
    index.save(out)
    return dg.Output(str(out), metadata={
        "vectors": len(index), "kind": index.meta.kind, "path": dg.MetadataValue.path(str(out)),
        "vectors_per_year": dg.MetadataValue.json({f.stem.split("-")[0]: n for f, n in zip(files, rows)}),
        "search_it": dg.MetadataValue.md(SEARCH_HOWTO.format(index=out)),
    })


@dataclass(frozen=True)
class Benchmark:
    run_id: str
    metrics_path: str
    overall: dict
    split_fingerprint: str


def _plots(result, name: str, out: Path) -> dict[str, Path]:
    from hmpcl_lib.retrieval import plots
    from hmpcl_lib.retrieval.evaluation import recall_at_k_curve

    ks, values = recall_at_k_curve(result)
    files = {"recall_curve": out / f"{name}_recall_at_k.png", "per_class_map": out / f"{name}_per_class_map.png"}
    plots.recall_curve_png({name: (ks, values)}, files["recall_curve"])
    plots.per_class_bar_png({name: result.metrics}, "patent_map", files["per_class_map"])
    return files


def _query_grids(result, hierarchy: pl.DataFrame, out: Path, n: int = 3, k: int = 8) -> list[Path]:
    """Query + top-k thumbnails for the first few test queries."""
    from hmpcl_lib.retrieval import plots

    shown = {result.queries["drawing_id"][q] for q in range(min(n, len(result.ranking_ids)))}
    shown |= {i for q in range(len(shown)) for i in result.ranking_ids[q][:k] if i is not None}
    rows = hierarchy.filter(pl.col("drawing_id").is_in(list(shown)))  # a handful of rows, whatever the corpus size
    paths = dict(zip(rows["drawing_id"].to_list(), rows["image_path"].to_list()))
    meta = rows.select("drawing_id", "patent_id", "class_code", "subclass_code")
    grids = []
    for q in range(min(n, len(result.ranking_ids))):
        qid = result.queries["drawing_id"][q]
        ids = [i for i in result.ranking_ids[q][:k] if i is not None]
        res = pl.DataFrame({"rank": list(range(1, len(ids) + 1)), "drawing_id": ids,
                            "score": [float(s) for s in result.ranking_scores[q][:len(ids)]]})
        res = res.join(meta, on="drawing_id", how="left").with_columns(
            pl.col("drawing_id").replace_strict(paths, default=None).alias("image_path")).sort("rank")
        png = out / f"query_{q}_{qid}.png"
        plots.results_grid_png(paths[qid], res, png, query_patent_id=result.queries["patent_id"][q])
        grids.append(png)
    return grids


@dg.asset(deps=[corpus_embeddings], group_name="retrieval", kinds={"mlflow"})
def retrieval_benchmark(context: dg.AssetExecutionContext, trained_encoder: TrainedModel, store: DataStore,
                        mlflow_tracking: MlflowTracking) -> dg.Output[Benchmark]:
    """SPEC metrics (patent mAP, R@k, MRR@10, subclass/class mAP@100, graded nDCG@10), overall and per main class,
    logged to the model's MLflow run with plots and query/top-k grids. Headline protocol (first drawing of each test
    patent vs the rest) plus leave-one-out (every test drawing vs all others: `loo.*` in MLflow)."""
    import mlflow

    from hmpcl_lib.retrieval.embedding import read_embeddings
    from hmpcl_lib.retrieval.evaluation import LABEL_COLUMNS, benchmark_embeddings

    cfg = mlflow_tracking.config
    spl = pl.read_parquet(store.layout.splits_path)
    test = spl.filter(pl.col("split") == "test")["drawing_id"]
    hier = pl.read_parquet(store.layout.hierarchy_path, columns=[*LABEL_COLUMNS, "image_path"]).filter(
        pl.col("drawing_id").is_in(test.implode()))
    files = year_embeddings(store, trained_encoder.run_id, _image_size(trained_encoder))
    embeddings = read_embeddings(files, ids=test)  # the test split's vectors, year by year, not the corpus's
    result = benchmark_embeddings(embeddings, hier, spl)
    overall = log_benchmark(result, trained_encoder.run_id, cfg, "retrieval_benchmark")
    loo = benchmark_embeddings(embeddings, hier, spl, protocol="leave_one_out")
    loo_overall = log_benchmark(loo, trained_encoder.run_id, cfg, "retrieval_benchmark")
    path = store.layout.benchmark_path(trained_encoder.run_id)
    with atomic_path(path) as tmp_path:
        result.metrics.write_parquet(tmp_path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = _plots(result, trained_encoder.variant, out)
        grids = _query_grids(result, hier, out)
        tracking.activate(cfg)
        with mlflow.start_run(run_id=trained_encoder.run_id):
            tracking.log_dataset(store.layout.splits_path, "evaluation", spl.filter(pl.col("split") == "test"), name="test_split")
            for f in [*files.values(), *grids]:
                mlflow.log_artifact(str(f), artifact_path="plots")
        plot_meta = {k: image_markdown(k, v) for k, v in files.items()}
        if grids:
            plot_meta["query_topk"] = image_markdown("query and top-k (green = same patent)", grids[0])
    value = Benchmark(trained_encoder.run_id, str(path), overall, file_sha256(store.layout.splits_path))
    return dg.Output(value, metadata={
        **{k: dg.MetadataValue.float(overall[k]) for k in HEADLINE if k in overall},
        "n_queries": int(overall.get("n_queries", 0)),
        "n_excluded_queries": int(overall.get("n_excluded", 0)),
        **{f"loo_{k}": dg.MetadataValue.float(loo_overall[k]) for k in HEADLINE if k in loo_overall},
        "loo_n_queries": int(loo_overall.get("n_queries", 0)),
        "metrics": dg.MetadataValue.md(markdown_table(result.metrics, max_rows=50)),
        "metrics_leave_one_out": dg.MetadataValue.md(markdown_table(loo.metrics, max_rows=50)),
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(cfg, trained_encoder.run_id)),
        **plot_meta,
    })


@dg.asset(group_name="retrieval", kinds={"mlflow"})
def champion_model(context: dg.AssetExecutionContext, trained_encoder: TrainedModel,
                   retrieval_benchmark: Benchmark, store: DataStore,
                   mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Registers the trained encoder; the `champion` alias moves to it only if it beats the current champion on
    patent-level mAP on the same test split (the champion is re-scored when the split changed)."""
    cfg = mlflow_tracking.config
    version = tracking.register(cfg, trained_encoder.run_id, trained_encoder.model_uri,
                                tags={"split_fingerprint": retrieval_benchmark.split_fingerprint,
                                      "loss": trained_encoder.variant})
    candidate = retrieval_benchmark.overall["patent_map"]
    champ = tracking.current_champion(cfg)
    champ_value = None
    if champ is not None and str(champ.version) != str(version.version):
        if champ.tags.get("split_fingerprint") == retrieval_benchmark.split_fingerprint and "patent_map" in champ.tags:
            champ_value = float(champ.tags["patent_map"])
        else:  # different test split: score the champion on this one so the comparison is fair
            context.log.info(f"re-scoring champion v{champ.version} on the current test split")
            model = tracking.load_model(cfg, f"models:/{cfg.registered_model}/{champ.version}")
            hier, spl = pl.read_parquet(store.layout.hierarchy_path), pl.read_parquet(store.layout.splits_path)
            size = _image_size(trained_encoder)
            champ_value = overall_metrics(evaluate_model(model, hier, spl, size, pixel_store=store.pixels(size))
                                          .metrics)["patent_map"]
    decision = tracking.promote_if_better(cfg, str(version.version), candidate, champ_value)
    context.log.info(f"champion decision for v{version.version}: {decision.reason}")
    return dg.MaterializeResult(metadata=_clean({
        "registered_model": cfg.registered_model,
        "version": str(version.version),
        "promoted": decision.promoted,
        "decision": decision.reason,
        "previous_champion": decision.champion_version,
        "candidate_patent_map": dg.MetadataValue.float(candidate),
        "load_with": dg.MetadataValue.md(
            f"`hmpcl_lib.tracking.load_model(cfg, \"models:/{cfg.registered_model}@champion\")` (torch module, read "
            f"from its safetensors weights), or `mlflow.pyfunc.load_model(\"models:/{cfg.registered_model}@champion\")"
            ".predict(df)` (a column `image` of base64 PNG/JPEG → L2-normalised embeddings); no pickle either way"),
        "serve_it": dg.MetadataValue.md(SERVE_HOWTO.format(model=cfg.registered_model)),
        "search_it": dg.MetadataValue.md(SEARCH_HOWTO.format(index=store.layout.index_dir(trained_encoder.run_id))),
    }))
