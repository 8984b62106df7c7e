"""Training as an external process driven by Dagster Pipes: `python -m pipelines.pipes_train` (or under torchrun).

Launched by the `trained_encoder` asset through a Pipes client (subprocess locally, a pod on Kubernetes). It reads
everything from the Pipes extras (`train_config`, `hierarchy_path`, `splits_path`, `out_dir`, `tracking`, `variant`,
`reuse`), trains through `experiment.train_tracked` (so MLflow looks the same however it was launched), streams
metrics back as Pipes logs and custom messages, and reports the materialization with the run's identity.
Only dagster_pipes is imported here, never dagster: the training image does not need the orchestrator.

Under torchrun only rank 0 opens the Pipes channel and logs to MLflow; the other ranks read the same extras and
join the DDP training (the library's `train` does the gathering and rank-0-only checkpointing).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from dagster_pipes import PipesContext, PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from hmpcl_lib import tracking
from hmpcl_lib.experiments.runs import TrainedModel, train_fingerprint, train_rows, train_tracked, val_rows
from hmpcl_lib.train.config import TrainConfig

REQUIRED_EXTRAS = ("train_config", "hierarchy_path", "splits_path", "out_dir", "tracking")


def parse_extras(extras: Mapping[str, Any]) -> tuple[TrainConfig, tracking.TrackingConfig]:
    """TrainConfig and TrackingConfig from the extras; a missing or unknown key is a clear error, not a KeyError."""
    missing = [k for k in REQUIRED_EXTRAS if k not in extras]
    if missing:
        raise ValueError(f"Pipes extras lack {missing} (got {sorted(extras)})")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(extras["train_config"]) - known)
    if unknown:
        raise ValueError(f"Pipes extras train_config has unknown fields {unknown}")
    return TrainConfig(**extras["train_config"]), tracking.TrackingConfig(**extras["tracking"])


def materialization_metadata(model: TrainedModel) -> dict[str, dict[str, Any]]:
    """What the asset needs to rebuild the TrainedModel, as typed Pipes metadata (None values left out)."""
    typed = {
        "mlflow_run_id": (model.run_id, "text"),
        "model_uri": (model.model_uri, "text"),
        "checkpoint": (model.checkpoint or None, "path"),
        "fingerprint": (model.fingerprint, "text"),
        "final_loss": (model.final_loss, "float"),
        "reused_finished_run": (model.reused, "bool"),
        "loss": (model.variant, "text"),
        "params": (model.params, "json"),
    }
    return {k: {"raw_value": v, "type": t} for k, (v, t) in typed.items() if v is not None}


class _ForwardToPipes(logging.Handler):
    """Library log records (reuse decisions, throughput, warnings) go to the Dagster event log too."""

    def __init__(self, pipes: PipesContext):
        super().__init__(level=logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        getattr(self.pipes.log, level)(f"{record.name}: {record.getMessage()}")


def run_reporting(pipes: PipesContext) -> TrainedModel:
    """Rank 0 (or the only process): train tracked in MLflow, stream metrics, report the materialization."""
    config, tracking_cfg = parse_extras(pipes.extras)
    extras = pipes.extras
    handler = _ForwardToPipes(pipes)
    library_log = logging.getLogger("hmpcl_lib")
    library_log.addHandler(handler)
    library_log.setLevel(logging.INFO)

    def on_metrics(step: int, metrics: dict) -> None:
        pipes.report_custom_message({"step": step, **{k: float(v) for k, v in metrics.items()}})
        pipes.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    try:
        pipes.log.info(f"training {config.loss} ({config.backbone}, {config.epochs} epochs) in pid {os.getpid()}")
        model = train_tracked(config, extras["hierarchy_path"], extras["splits_path"], extras["out_dir"],
                              tracking_cfg, variant=extras.get("variant"), on_metrics=on_metrics,
                              reuse=bool(extras.get("reuse", True)), data_source=extras.get("data_source"))
    finally:
        library_log.removeHandler(handler)
    pipes.report_asset_materialization(metadata=materialization_metadata(model), data_version=model.fingerprint)
    return model


def run_follower(extras: Mapping[str, Any]) -> None:
    """A non-zero torchrun rank: same data and config, no Pipes channel, no MLflow writes."""
    import polars as pl

    from hmpcl_lib.train.loop import train

    config, tracking_cfg = parse_extras(extras)
    fp = train_fingerprint(config, extras["hierarchy_path"], extras["splits_path"])
    if extras.get("reuse", True) and _finished_run_exists(tracking_cfg, fp):
        return  # rank 0 reuses the finished run too: nobody trains
    hierarchy, splits = pl.read_parquet(extras["hierarchy_path"]), pl.read_parquet(extras["splits_path"])
    train(config, train_rows(hierarchy, splits), Path(extras["out_dir"]) / fp, validation=val_rows(hierarchy, splits))


def _finished_run_exists(cfg: tracking.TrackingConfig, fp: str) -> bool:
    """Rank 0's reuse test, read-only (tracking.find_run would create the experiment, racing rank 0)."""
    client = tracking.client(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], max_results=1, filter_string=(
        f"tags.`{tracking.FINGERPRINT_TAG}` = '{fp}' and attributes.status = 'FINISHED'"))
    return bool(runs)


def follower_extras() -> dict[str, Any]:
    """The Pipes extras read straight from the injected context, without opening a message channel."""
    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data.get("extras") or {})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) == 0:
        with open_dagster_pipes() as pipes:
            run_reporting(pipes)
    else:
        run_follower(follower_extras())


if __name__ == "__main__":
    main()
