"""Tracked experiments: train → log to MLflow, and embed → benchmark → log, as plain functions.

The Dagster assets and the Pipes training script both call these, so a run looks the same in MLflow whether it was
launched from the UI, a schedule, a subprocess or a Kubernetes pod. A run is keyed by a fingerprint of its config
and input tables: asking again for the same thing returns the finished run instead of training a duplicate.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from hmpcl_lib import tracking
from hmpcl_lib.tracking.model_source import DATA_SOURCE_TAG
from hmpcl_lib.io import atomic_dir, file_sha256
from hmpcl_lib.retrieval.evaluation import PROTOCOLS
from hmpcl_lib.splits import split_rows

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict], None]


@dataclass(frozen=True)
class TrainedModel:
    run_id: str
    model_uri: str
    checkpoint: str
    fingerprint: str
    reused: bool
    final_loss: float | None
    variant: str
    params: dict = dataclasses.field(default_factory=dict)


def train_rows(hierarchy: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    """The training split of the hierarchy table (what the encoder may see)."""
    return split_rows(hierarchy, splits, "train")


def val_rows(hierarchy: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    """The validation split of the hierarchy table (scored every epoch, `hmpcl_lib.train.validation`); empty when the
    splits have none (training then runs without validation)."""
    if not (splits["split"] == "val").any():
        return hierarchy.clear()
    return split_rows(hierarchy, splits, "val")


def train_fingerprint(config, hierarchy_path: str | Path, splits_path: str | Path) -> str:
    """The identity of a training run: its config and the exact input tables. Every process that decides whether to
    train (the Pipes script on every DDP rank, `train_tracked`) computes it here, so they cannot disagree. Of
    `pixel_store` only whether one is used counts: its path is derived from the hierarchy (already hashed here)
    and the image size."""
    params = {**dataclasses.asdict(config), "pixel_store": bool(config.pixel_store)}
    return tracking.fingerprint("train", params, file_sha256(hierarchy_path), file_sha256(splits_path))


def train_tracked(config, hierarchy_path: str | Path, splits_path: str | Path, out_dir: str | Path,
                  cfg: tracking.TrackingConfig, variant: str | None = None,
                  on_metrics: MetricsCallback | None = None, reuse: bool = True,
                  data_source: str | None = None) -> TrainedModel:
    """Train an encoder on the train split and log params, metrics, checkpoint and model to one MLflow run, with
    the hierarchy and splits tables as its datasets (digest: the file's SHA-256) and MLflow's system metrics.
    `data_source` ("sample" | "deeppatent2", the pipeline's store) becomes the run's `hmpcl.data_source` tag, which
    the model card of `hmpcl serve` reads (not part of the fingerprint: the tables already identify the data)."""
    import mlflow

    from hmpcl_lib.train.loop import train

    variant = variant or config.loss
    params = dataclasses.asdict(config)
    fp = train_fingerprint(config, hierarchy_path, splits_path)
    if reuse and (run := tracking.find_run(cfg, fp)) is not None:
        log.info("reusing finished MLflow run %s (same config and data, fingerprint %s)", run.info.run_id, fp)
        return TrainedModel(run.info.run_id, run.data.tags.get("hmpcl.model_uri", f"runs:/{run.info.run_id}/model"),
                            run.data.tags.get("hmpcl.checkpoint", ""), fp, True,
                            run.data.metrics.get("final_loss"), variant, params)

    hierarchy = pl.read_parquet(hierarchy_path)
    splits = pl.read_parquet(splits_path)
    rows = train_rows(hierarchy, splits)
    out_dir = Path(out_dir) / fp
    with tracking.start_run(cfg, run_name=f"train-{variant}", fp=fp,
                            tags={"hmpcl.stage": "train", "hmpcl.variant": variant,
                                  **({DATA_SOURCE_TAG: data_source} if data_source else {})},
                            system_metrics=True) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        tracking.log_dataset(hierarchy_path, "training", hierarchy)
        tracking.log_dataset(splits_path, "training", splits)
        mlflow.log_params({"train_drawings": rows.height, "train_patents": rows["patent_id"].n_unique()})

        def log_step(step: int, metrics: dict) -> None:
            tracking.log_metrics_safe(metrics, step=step)
            if on_metrics is not None:
                on_metrics(step, metrics)

        result = train(config, rows, out_dir, on_metrics=log_step, validation=val_rows(hierarchy, splits))
        if result.exported_epoch is not None:
            mlflow.log_param("exported_epoch", result.exported_epoch)
        final_loss = next((h["epoch_loss"] for h in reversed(result.history) if "epoch_loss" in h), None)
        if final_loss is not None:
            mlflow.log_metric("final_loss", final_loss)
        mlflow.log_artifact(str(result.checkpoint_path), artifact_path="checkpoints")
        model_uri = tracking.log_encoder(result.model)
        mlflow.set_tags({"hmpcl.model_uri": model_uri, "hmpcl.checkpoint": str(result.checkpoint_path)})
        return TrainedModel(run.info.run_id, model_uri, str(result.checkpoint_path), fp, False, final_loss, variant,
                            params)


def pretrained_tracked(config, cfg: tracking.TrackingConfig) -> TrainedModel:
    """The untouched backbone of `config` (no head: its pooled features) logged as a model in its own MLflow run,
    so the comparison reads it like a trained variant. Same backbone/weights/size → the finished run is reused."""
    import mlflow

    from hmpcl_lib.modeling.models import build_encoder

    params = {"backbone": config.backbone, "weights": str(config.weights), "image_size": config.image_size}
    fp = tracking.fingerprint("pretrained", params)
    if (run := tracking.find_run(cfg, fp)) is not None:
        return TrainedModel(run.info.run_id, run.data.tags["hmpcl.model_uri"], "", fp, True, None, "pretrained",
                            params)
    model = build_encoder(config.backbone, embed_dim=None, weights=config.weights, image_size=config.image_size)
    with tracking.start_run(cfg, run_name="pretrained", fp=fp,
                            tags={"hmpcl.stage": "pretrained", "hmpcl.variant": "pretrained"}) as run:
        mlflow.log_params(params)
        model_uri = tracking.log_encoder(model)
        mlflow.set_tag("hmpcl.model_uri", model_uri)
        return TrainedModel(run.info.run_id, model_uri, "", fp, False, None, "pretrained", params)


@dataclass(frozen=True)
class SavedBenchmark:
    """What the comparison needs of a BenchmarkResult, as saved by `save_variant_results`."""
    protocol: str
    metrics: pl.DataFrame
    per_query: pl.DataFrame | None
    recall_curve: pl.DataFrame  # k, recall (patent level, for the plot)


def save_variant_results(results: dict, out_dir: str | Path, info: dict) -> Path:
    """{protocol: BenchmarkResult} of one variant → `<out_dir>/<protocol>.{metrics,per_query,recall}.parquet` and
    `variant.json` (`info`: run id, fingerprints), written to a temp dir and renamed (never half-written)."""
    import json

    from hmpcl_lib.retrieval.evaluation import recall_at_k_curve

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for protocol, result in results.items():
            result.metrics.write_parquet(tmp / f"{protocol}.metrics.parquet")
            if result.per_query is not None:
                result.per_query.write_parquet(tmp / f"{protocol}.per_query.parquet")
            ks, values = recall_at_k_curve(result)
            pl.DataFrame({"k": ks, "recall": values}).write_parquet(tmp / f"{protocol}.recall.parquet")
        (tmp / "variant.json").write_text(json.dumps({**info, "protocols": sorted(results)}, indent=2))
    return out_dir


def load_variant_results(out_dir: str | Path) -> tuple[dict, dict[str, SavedBenchmark]]:
    """(`variant.json`, {protocol: SavedBenchmark}) as `save_variant_results` wrote them; FileNotFoundError names
    the missing folder."""
    import json

    out_dir = Path(out_dir)
    if not (out_dir / "variant.json").is_file():
        raise FileNotFoundError(f"{out_dir}: no saved variant results (materialize variant_benchmark for it)")
    info = json.loads((out_dir / "variant.json").read_text())
    saved = {}
    for protocol in info["protocols"]:
        per_query = out_dir / f"{protocol}.per_query.parquet"
        saved[protocol] = SavedBenchmark(protocol, pl.read_parquet(out_dir / f"{protocol}.metrics.parquet"),
                                         pl.read_parquet(per_query) if per_query.exists() else None,
                                         pl.read_parquet(out_dir / f"{protocol}.recall.parquet"))
    return info, saved


PROTOCOL_PREFIX = {"deeppatent": "", "leave_one_out": "loo."}  # MLflow metric names: headline unprefixed


def log_benchmark(result, run_id: str | None, cfg: tracking.TrackingConfig, name: str) -> dict[str, float]:
    """Log the overall metrics (per-class ones as `class_XX.<metric>`), prefixed by the result's protocol
    (`PROTOCOL_PREFIX`), plus the table and the per-query metrics as Parquet artifacts under `benchmark/`
    (`hmpcl compare` reads the per-query ones for paired intervals)."""
    import mlflow

    overall = overall_metrics(result.metrics)
    if run_id is None:
        return overall
    prefix = PROTOCOL_PREFIX[result.protocol]
    tracking.activate(cfg)
    with mlflow.start_run(run_id=run_id):
        tracking.log_metrics_safe({prefix + k: v for k, v in overall.items()})
        per_class = result.metrics.filter(pl.col("scope") != "all")
        for row in per_class.iter_rows(named=True):
            tracking.log_metrics_safe({f"{prefix}class_{row['scope']}.{k}": v for k, v in row.items()
                                       if k not in ("scope",) and isinstance(v, (int, float))})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.{result.protocol}.parquet"
            result.metrics.write_parquet(path)
            mlflow.log_artifact(str(path), artifact_path="benchmark")
            if result.per_query is not None:
                path = Path(tmp) / f"{name}.{result.protocol}.per_query.parquet"
                result.per_query.write_parquet(path)
                mlflow.log_artifact(str(path), artifact_path="benchmark")
    return overall


def per_query_artifact(run_id: str, cfg: tracking.TrackingConfig, protocol: str) -> pl.DataFrame | None:
    """The per-query metrics a run logged for `protocol`, or None if it logged none."""
    import mlflow

    client = tracking.client(cfg)
    names = [f.path for f in client.list_artifacts(run_id, "benchmark")
             if f.path.endswith(f".{protocol}.per_query.parquet")]
    if not names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pl.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names[0], dst_path=tmp,
                                                                   tracking_uri=cfg.tracking_uri))


def overall_metrics(metrics: pl.DataFrame) -> dict[str, float]:
    row = metrics.filter(pl.col("scope") == "all").row(0, named=True)
    return {k: (int(v) if k.startswith("n_") else float(v)) for k, v in row.items() if k != "scope" and v is not None}


def test_rows(hierarchy: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    """Hierarchy rows of the test split (queries and gallery)."""
    return split_rows(hierarchy, splits, "test")


def embed_test(model, hierarchy: pl.DataFrame, splits: pl.DataFrame, image_size: int, batch_size: int = 64,
               features: str = "head", pixel_store=None, mirrored: bool = False):
    """(drawing ids, [N, D] vectors) of the test split; `features` picks the view (`models.FEATURES`: "pooled"
    skips the projection head, "fused" joins both); `pixel_store` reads decoded pixels instead of the PNGs
    (hmpcl_lib.modeling.pixels); `mirrored` embeds each drawing with its mirror image (`models.MirrorAveraged`)."""
    from hmpcl_lib.retrieval.embedding import embed_paths
    from hmpcl_lib.modeling.models import FEATURES, MirrorAveraged, feature_view

    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if hasattr(model, "backbone"):
        model = feature_view(model, features)
    if mirrored:
        model = MirrorAveraged(model)
    rows = test_rows(hierarchy, splits)
    vectors = embed_paths(model, rows["image_path"].to_list(), image_size=image_size, batch_size=batch_size,
                          pixel_store=pixel_store)
    return rows["drawing_id"].to_numpy(), vectors


def evaluate_model(model, hierarchy: pl.DataFrame, splits: pl.DataFrame, image_size: int, batch_size: int = 64,
                   protocol: str = "deeppatent", features: str = "head", pixel_store=None):
    """Embed the test drawings with `model` and run the SPEC's benchmark on them."""
    return evaluate_protocols(model, hierarchy, splits, image_size, batch_size, (protocol,), features,
                              pixel_store)[protocol]


def evaluate_protocols(model, hierarchy: pl.DataFrame, splits: pl.DataFrame, image_size: int, batch_size: int = 64,
                       protocols=PROTOCOLS, features: str = "head", pixel_store=None) -> dict:
    """Embed the test split once and benchmark it under each protocol: {protocol: BenchmarkResult}. `features` is a
    view of `models.FEATURES`, optionally with QUERY_FLIP ("head-flip": the queries averaged with their mirror image
    (`models.MirrorAveraged`), the gallery as is)."""
    from hmpcl_lib.modeling.models import QUERY_FLIP
    from hmpcl_lib.retrieval.evaluation import benchmark_embeddings

    view, flip = (features[:-len(QUERY_FLIP)], True) if features.endswith(QUERY_FLIP) else (features, False)
    embeddings = embed_test(model, hierarchy, splits, image_size, batch_size, view, pixel_store)
    # query-side test-time augmentation: the queries as their image + mirror image, the gallery as is
    queries = embed_test(model, hierarchy, splits, image_size, batch_size, view, pixel_store, mirrored=True) \
        if flip else None
    return {p: benchmark_embeddings(embeddings, hierarchy, splits, protocol=p, query_embeddings=queries)
            for p in protocols}


def comparison_table(results: dict[str, object]) -> pl.DataFrame:
    """One row per variant with the overall metrics, in the order given; `results` maps a name to a
    BenchmarkResult, or to {protocol: BenchmarkResult} (then one row per variant and protocol)."""
    rows = []
    for name, r in results.items():
        for protocol, bench in (r.items() if isinstance(r, dict) else [(None, r)]):
            rows.append({"model": name, **({"protocol": protocol} if protocol else {}),
                         **overall_metrics(bench.metrics)})
    return pl.DataFrame(rows)


def paired_intervals(results: dict[str, dict], pairs: list[tuple[str, str]], protocol: str = "leave_one_out",
                     metrics: list[str] | None = None) -> pl.DataFrame:
    """B - A per metric with a paired bootstrap 95 % interval over the queries, for each (A, B) in `pairs`."""
    from hmpcl_lib.retrieval.metrics import paired_bootstrap

    frames = [paired_bootstrap(results[a][protocol].per_query, results[b][protocol].per_query, metrics)
              .select(pl.lit(f"{b} - {a}").alias("comparison"), pl.lit(protocol).alias("protocol"), pl.all())
              for a, b in pairs]
    return pl.concat(frames)
