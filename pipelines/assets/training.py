"""The training asset: fine-tune the encoder with the hierarchical (or baseline) loss, tracked in MLflow."""


import dataclasses
from typing import Optional

import dagster as dg

from hmpcl_lib.experiment import TrainedModel, train_tracked
from hmpcl_lib.training import TrainConfig
from pipelines.assets.data import splits
from pipelines.resources import DataStore, MlflowTracking


class TrainingConfig(dg.Config):
    """Every knob of `hmpcl_lib.training.TrainConfig` that a user may set from the launchpad."""

    backbone: str = "efficientnet_lite0"
    weights: str = "package"
    loss: str = "hierarchical"
    s_patent: float = 1.0
    s_subclass: float = 0.5
    s_class: float = 0.25
    temperature: float = 0.07
    learn_temperature: bool = False
    embed_dim: int = 256
    batch_size: int = 64
    epochs: int = 4
    steps_per_epoch: Optional[int] = None
    lr: float = 3e-4
    image_size: int = 128
    seed: int = 0

    def to_train_config(self, **overrides) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in self.model_dump().items() if k in known}
        values.update(overrides)
        return TrainConfig(**values)


@dg.asset(deps=[splits], group_name="model", pool="gpu", kinds={"pytorch", "mlflow"})
def trained_encoder(context: dg.AssetExecutionContext, config: TrainingConfig, store: DataStore,
                    mlflow_tracking: MlflowTracking) -> dg.Output[TrainedModel]:
    """An image encoder fine-tuned on the train split; params, curves, checkpoint and model live in one MLflow run.
    Same config and data as a finished run → that run is reused, not trained again."""

    def report(step: int, metrics: dict) -> None:
        if "epoch_loss" in metrics:
            context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    tracking = mlflow_tracking.config
    model = train_tracked(config.to_train_config(), store.hierarchy_path, store.splits_path, store.models_dir,
                          tracking, on_metrics=report)
    from hmpcl_lib.tracking import run_url

    meta = {
        "mlflow_run": dg.MetadataValue.url(run_url(tracking, model.run_id)),
        "mlflow_run_id": model.run_id,
        "model_uri": model.model_uri,
        "loss": model.variant,
        "final_loss": dg.MetadataValue.float(float(model.final_loss)) if model.final_loss is not None else None,
        "reused_finished_run": model.reused,
        "fingerprint": model.fingerprint,
    }
    return dg.Output(model, metadata={k: v for k, v in meta.items() if v is not None})
