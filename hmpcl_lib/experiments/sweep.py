"""Sweep training configurations over seeds and compare them with the baseline, with intervals, not single numbers.

Each (variant, seed) is trained on the train split, its test split embedded once from the projection head's output
and once from the backbone's pooled features (SimCLR's pre-head representation), and benchmarked under both
protocols of `evaluation` (the DeepPatent headline and leave-one-out). Training and evaluation read the decoded
pixel store under the data root (`hmpcl sweep` passes it), as the pipeline's comparison does: one evaluation path.
The per-query metrics of every run are kept as Parquet under the sweep folder (`<variant>/seed=<n>.parquet`), so a
killed sweep resumes where it stopped and the summary can be recomputed at any time. With a tracking config, the
sweep is one MLflow parent run and every (variant, seed) a child run holding its params and overall metrics.

The summary has one row per variant: mean ± sd over seeds of each metric, the paired difference to the baseline
(per-query metrics averaged over the seeds both ran, then a paired bootstrap over queries: 95 % interval) and
whether the variant is on the Pareto front of (patent mAP, subclass mAP@100, class mAP@100).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from hmpcl_lib.io import atomic_path
from hmpcl_lib.modeling.models import FEATURES, QUERY_FLIP
from hmpcl_lib.retrieval.metrics import METRIC_COLUMNS, paired_bootstrap
from hmpcl_lib.train.checkpoint import RESUME_FREE_FIELDS

log = logging.getLogger(__name__)

# What every run is scored on: a trained run's views (models.FEATURES) and its head with query-side test-time
# augmentation; the untouched backbone's one view (its pooled features, recorded as "head"), with and without it.
SCORED = (*FEATURES, "head" + QUERY_FLIP)
UNTOUCHED_VIEWS = ("head", "head" + QUERY_FLIP)

PARETO_METRICS = ("patent_map", "subclass_map_at_100", "class_map_at_100")
SUMMARY_METRICS = ("patent_map", "patent_recall_at_1", "subclass_map_at_100", "class_map_at_100",
                   "graded_ndcg_at_10")

def run_path(out_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / variant / f"seed={seed}.parquet"


def model_path(out_dir: str | Path, variant: str, seed: int) -> Path:
    """The trained encoder of a (variant, seed), kept beside its results so other features can be evaluated later
    without training again (`load_encoder` reads it; nothing is unpickled)."""
    return Path(out_dir) / variant / f"seed={seed}.safetensors"


def curves_path(out_dir: str | Path, variant: str, seed: int) -> Path:
    """The epoch curves of a trained (variant, seed): loss and validation metrics per epoch, and the exported epoch."""
    return Path(out_dir) / variant / f"curves-seed={seed}.parquet"


def _save_curves(history: list[dict[str, Any]], exported_epoch: int | None, path: Path) -> None:
    epochs = [h for h in history if "epoch_loss" in h]
    if not epochs:
        return
    frame = pl.DataFrame(epochs, infer_schema_length=None).with_columns(
        exported=pl.col("epoch") == (exported_epoch if exported_epoch is not None else -1))
    with atomic_path(path) as tmp_path:
        frame.write_parquet(tmp_path)


def run_one(variant: str, overrides: dict[str, Any], seed: int, hierarchy: pl.DataFrame, splits: pl.DataFrame,
            base, out_dir: str | Path, data_root: str | Path | None = None, trained: bool = True) -> pl.DataFrame:
    """Train and evaluate one (variant, seed); per-query metrics for every protocol x features, saved atomically.

    An existing result file is read instead of training again (the sweep resumes); one that lacks a view of
    SCORED is completed from the saved model. With `data_root`, training and evaluation read the decoded pixel
    store at the variant's image size (built once under `data_root/pixels/`), as the pipeline's comparison does;
    without, they decode the PNGs. `trained=False` scores the untouched backbone at the config (no training: its
    pooled features, recorded as "head", the only view it has).
    """
    from hmpcl_lib.experiments.runs import evaluate_protocols, train_rows, val_rows
    from hmpcl_lib.modeling.models import build_encoder, load_encoder, save_encoder_safetensors, wise
    from hmpcl_lib.train.loop import initial_encoder, train

    path, saved_model = run_path(out_dir, variant, seed), model_path(out_dir, variant, seed)
    _check_same_run(path, base, overrides, seed, trained)
    saved = pl.read_parquet(path) if path.exists() else None
    missing = [v for v in (SCORED if trained else UNTOUCHED_VIEWS) if saved is None or v not in set(saved["features"])]
    if saved is not None and trained and not saved_model.exists():
        missing = []  # a run saved without its encoder: nothing to score more views from
    if not missing:
        return saved
    config = dataclasses.replace(base, **(overrides or {}), seed=seed)
    key = run_key(config, trained)
    store = None
    if data_root is not None:
        from hmpcl_lib.modeling.pixels import ensure_pixel_store

        store = ensure_pixel_store(hierarchy, data_root, config.image_size)
        config = dataclasses.replace(config, pixel_store=str(store.path))
    source = _same_training(overrides, out_dir, seed) if saved is None and trained else None
    if not trained:
        model, final_loss = build_encoder(config.backbone, None, config.weights, image_size=config.image_size), None
    elif saved is not None:  # views added since it ran: scored from the saved model, no training
        model, final_loss = load_encoder(saved_model), saved["final_loss"][0]
    elif source is not None:  # WiSE-FT of a run this sweep already trained: no second training
        log.info("sweep: %s seed %d derived from the saved %s encoder (wise_alpha %s)", variant, seed, source,
                 config.wise_alpha)
        model = wise(load_encoder(model_path(out_dir, source, seed)), initial_encoder(config), config.wise_alpha)
        final_loss = pl.read_parquet(run_path(out_dir, source, seed))["final_loss"][0]
        saved_model.parent.mkdir(parents=True, exist_ok=True)
        save_encoder_safetensors(model, saved_model)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = train(config, train_rows(hierarchy, splits), tmp, resume=False,
                           validation=val_rows(hierarchy, splits))
        model = result.model
        final_loss = next((h["epoch_loss"] for h in reversed(result.history) if "epoch_loss" in h), None)
        saved_model.parent.mkdir(parents=True, exist_ok=True)
        save_encoder_safetensors(model, saved_model)
        _save_curves(result.history, result.exported_epoch, curves_path(out_dir, variant, seed))
    frames = [] if saved is None else [saved]
    for features in missing:
        for protocol, bench in evaluate_protocols(model, hierarchy, splits, config.image_size,
                                                  features=features, pixel_store=store).items():
            frames.append(bench.per_query.with_columns(
                variant=pl.lit(variant), seed=pl.lit(seed), protocol=pl.lit(protocol), features=pl.lit(features),
                final_loss=pl.lit(final_loss), train_config=pl.lit(key)))
    frame = pl.concat(frames, how="diagonal_relaxed")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp_path:
        frame.write_parquet(tmp_path)
    return frame


# TrainConfig fields that do not change what a run learns: those a checkpoint resumes across (where it runs, how often
# it reports) and the pixel store's path, which the sweep sets itself (every sweep run reads one)
RUN_FREE_FIELDS = RESUME_FREE_FIELDS | {"pixel_store"}
UNTOUCHED_FIELDS = ("backbone", "weights", "image_size")  # all that defines an untouched backbone's scores


def run_key(config, trained: bool = True) -> str:
    """The TrainConfig fields that define a run's results, as JSON: saved with them, compared when a sweep resumes."""
    import json

    fields = dataclasses.asdict(config)
    free = RUN_FREE_FIELDS - ({"val_drawings"} if fields.get("export_weights", "last") != "last" else set())
    keep = UNTOUCHED_FIELDS if not trained else [k for k in fields if k not in free]
    return json.dumps({k: fields[k] for k in keep}, sort_keys=True)


def _check_same_run(path: Path, base, overrides: dict[str, Any] | None, seed: int, trained: bool) -> None:
    """A saved run made with another config (another default since, another --set) is not reused under the same
    name: HmpclError naming the file and the fields. Reads the saved config column only; a missing file, or one
    saved before the config was kept, passes."""
    import json

    from hmpcl_lib.errors import HmpclError
    from hmpcl_lib.train.config import saved_config_values

    if not path.exists() or "train_config" not in pl.read_parquet_schema(path):
        return
    kept = pl.read_parquet(path, columns=["train_config"])["train_config"].drop_nulls()
    if not len(kept):
        return
    now = json.loads(run_key(dataclasses.replace(base, **(overrides or {}), seed=seed), trained))
    was = saved_config_values(json.loads(kept[0]))  # a field added since: the value it had before it existed
    diff = {k: (was[k], v) for k, v in sorted(now.items()) if was[k] != v}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise HmpclError(f"{path} holds a run of another config ({detail}); pass the saved values with --set, or "
                         f"use another --name or --out")


def _same_training(overrides: dict[str, Any] | None, out_dir: str | Path, seed: int) -> str | None:
    """The variant whose saved encoder of `seed` had the same training as `overrides` when they differ only by
    `wise_alpha` (applied after training), so the sweep averages that encoder instead of training again."""
    from hmpcl_lib.experiments.variants import VARIANTS

    overrides = dict(overrides or {})
    if overrides.pop("wise_alpha", 1.0) == 1.0:
        return None
    return next((name for name, o in VARIANTS.items() if o is not None and o == overrides
                 and model_path(out_dir, name, seed).exists() and run_path(out_dir, name, seed).exists()), None)


def overall(frame: pl.DataFrame) -> pl.DataFrame:
    """Mean of every metric per (variant, seed, protocol, features) over the included queries."""
    return (frame.filter(~pl.col("excluded"))
            .group_by("variant", "seed", "protocol", "features", maintain_order=True)
            .agg(pl.len().alias("n_queries"), *[pl.col(m).mean() for m in METRIC_COLUMNS]))


def pareto_front(points: dict[str, tuple[float, ...]]) -> set[str]:
    """Names whose point no other point dominates (>= everywhere and > somewhere)."""
    def dominates(a, b) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}


def summarise(frame: pl.DataFrame, baseline: str = "baseline", protocol: str = "leave_one_out",
              features: str | None = "head", metrics: Iterable[str] = SUMMARY_METRICS,
              n_resamples: int = 2000) -> pl.DataFrame:
    """One row per variant (and features, when None is given): mean ± sd over seeds, paired 95 % interval of the
    difference to the baseline's head features on the seeds both ran, Pareto flag. Columns are plain values
    (`<m>_mean`, `<m>_sd`, `<m>_diff`, `<m>_low`, `<m>_high`), so callers format them as they like."""
    metrics = list(metrics)
    frame = frame.filter(pl.col("protocol") == protocol)
    base_runs = frame.filter((pl.col("variant") == baseline) & (pl.col("features") == "head"))
    if features is not None:
        frame = frame.filter(pl.col("features") == features)
    per_run = overall(frame)
    rows = []
    for (variant, feats), runs in per_run.group_by("variant", "features", maintain_order=True):
        row: dict[str, Any] = {"variant": variant, "features": feats, "seeds": runs["seed"].n_unique()}
        for m in metrics:
            row[f"{m}_mean"] = runs[m].mean()
            row[f"{m}_sd"] = runs[m].std() if runs.height > 1 else None
        ours = frame.filter((pl.col("variant") == variant) & (pl.col("features") == feats))
        seeds = sorted(set(ours["seed"].unique()) & set(base_runs["seed"].unique()))
        if base_runs.height and seeds and not (variant == baseline and feats == "head"):
            def seed_mean(f: pl.DataFrame) -> pl.DataFrame:
                return (f.filter(pl.col("seed").is_in(seeds)).group_by("drawing_id")
                        .agg(*[pl.col(m).mean() for m in metrics]).sort("drawing_id"))
            diff = paired_bootstrap(seed_mean(base_runs), seed_mean(ours), metrics, n_resamples=n_resamples)
            for d in diff.iter_rows(named=True):
                row.update({f"{d['metric']}_diff": d["diff"], f"{d['metric']}_low": d["low"],
                            f"{d['metric']}_high": d["high"]})
        rows.append(row)
    front = pareto_front({(r["variant"], r["features"]): tuple(r[f"{m}_mean"] for m in PARETO_METRICS)
                          for r in rows})
    for r in rows:
        r["pareto"] = (r["variant"], r["features"]) in front
    return pl.DataFrame(rows, infer_schema_length=None)


def markdown(summary: pl.DataFrame, metrics: Iterable[str] = SUMMARY_METRICS) -> str:
    """The summary as a markdown table: mean ± sd, and Δ to the baseline with its 95 % interval."""
    from hmpcl_lib.io import markdown_table

    def cell(r: dict, m: str) -> str:
        text = f"{r[f'{m}_mean']:.3f}"
        if r.get(f"{m}_sd") is not None:
            text += f" ± {r[f'{m}_sd']:.3f}"
        if r.get(f"{m}_diff") is not None:
            text += f" (Δ {r[f'{m}_diff']:+.3f} [{r[f'{m}_low']:+.3f}, {r[f'{m}_high']:+.3f}])"
        return text

    metrics = list(metrics)
    rows = [{"variant": r["variant"], "features": r["features"], "seeds": str(r["seeds"]),
             **{m: cell(r, m) for m in metrics}, "Pareto": "yes" if r["pareto"] else ""}
            for r in summary.iter_rows(named=True)]
    return markdown_table(pl.DataFrame(rows), max_rows=len(rows), max_chars=200)


def run_sweep(hierarchy: pl.DataFrame, splits: pl.DataFrame, variants: dict[str, dict[str, Any]],
              seeds: Iterable[int], base, out_dir: str | Path, tracking_cfg=None, name: str = "sweep",
              data_root: str | Path | None = None, untouched: dict[str, dict[str, Any]] | None = None) -> pl.DataFrame:
    """Every variant x seed (seed-major, so a partial sweep already compares all variants); returns all per-query
    rows. `untouched` ({name: overrides}) are scored untrained (the references a trained variant must beat), under
    every seed too, so they pair with the trained runs like any variant (their scores do not depend on the seed).
    With `tracking_cfg`, a parent MLflow run `name` and one child run per trained (variant, seed)."""
    seeds = list(seeds)
    for seed in seeds:  # refuse a stale folder before anything is logged or trained
        for variant, o, trained in [(v, o, False) for v, o in (untouched or {}).items()] + \
                                   [(v, o, True) for v, o in variants.items()]:
            _check_same_run(run_path(out_dir, variant, seed), base, o, seed, trained)
    frames = []
    parent = _parent_run(tracking_cfg, name, variants, seeds, base) if tracking_cfg else None
    for seed in seeds:
        frames += [run_one(v, o, seed, hierarchy, splits, base, out_dir, data_root, trained=False)
                   for v, o in (untouched or {}).items()]
        for variant, overrides in variants.items():
            fresh = not run_path(out_dir, variant, seed).exists()
            frame = run_one(variant, overrides, seed, hierarchy, splits, base, out_dir, data_root)
            frames.append(frame)
            if parent is not None and fresh:
                _log_child(tracking_cfg, parent, variant, seed, dataclasses.replace(base, **overrides, seed=seed),
                           frame, out_dir)
            log.info("sweep %s: %s seed %d done", name, variant, seed)
    return pl.concat(frames, how="diagonal_relaxed")


def _parent_run(cfg, name: str, variants: dict, seeds: list[int], base) -> str:
    import mlflow

    from hmpcl_lib import tracking

    fp = tracking.fingerprint("sweep", name, variants, seeds, run_key(base))  # where it runs: the same parent
    run = tracking.find_run(cfg, fp)  # the parent is closed at once; children are added to it by run id
    if run is not None:
        return run.info.run_id
    with tracking.start_run(cfg, run_name=name, fp=fp, tags={"hmpcl.stage": "sweep"}) as parent:
        mlflow.log_params({"variants": ",".join(variants), "seeds": ",".join(map(str, seeds))})
        mlflow.log_dict({"variants": variants, "base": dataclasses.asdict(base)}, "sweep.json")
        return parent.info.run_id


def _log_child(cfg, parent_id: str, variant: str, seed: int, config, frame: pl.DataFrame,
               out_dir: str | Path) -> None:
    import mlflow

    from hmpcl_lib import tracking

    tracking.activate(cfg)
    with mlflow.start_run(run_id=parent_id):
        with tracking.start_run(cfg, run_name=f"{variant}-seed{seed}", nested=True,
                                tags={"hmpcl.stage": "sweep", "hmpcl.variant": variant,
                                      "mlflow.parentRunId": parent_id}):
            mlflow.log_params({k: str(v) for k, v in dataclasses.asdict(config).items()})
            for r in overall(frame).iter_rows(named=True):
                prefix = f"{r['protocol']}.{r['features']}."
                tracking.log_metrics_safe({prefix + m: r[m] for m in METRIC_COLUMNS})
            curves = curves_path(out_dir, variant, seed)
            if curves.exists():  # the epoch curves, validation included, at their training step
                for r in pl.read_parquet(curves).iter_rows(named=True):
                    tracking.log_metrics_safe({k: v for k, v in r.items() if k == "epoch_loss" or k.startswith("val_")},
                                              step=int(r["step"]))
