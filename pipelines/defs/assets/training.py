"""The training asset: fine-tune the encoder with the hierarchical (or baseline) loss, tracked in MLflow, run out of
process through Dagster Pipes (see pipelines/launchers.py and docs/DEPLOY.md)."""


import dataclasses
import warnings
from typing import Optional

import dagster as dg

from hmpcl_lib.tracking.experiment import TrainedModel
from hmpcl_lib.train.config import TrainConfig
from pipelines.defs.assets.data import splits
from pipelines.launchers import GPU_POD_TAGS, trained_model_from_metadata
from pipelines.defs.resources import DataStore, MlflowTracking, TrainingLauncher


class TrainingConfig(dg.Config):
    """Every knob of `hmpcl_lib.train.config.TrainConfig` that a user may set from the launchpad."""

    backbone: str = "efficientnet_lite0"
    weights: str = "package"
    loss: str = "hierarchical"
    target: str = "item"
    s_patent: float = 1.0
    s_subclass: float = 0.5
    s_class: float = 0.25
    temperature: float = 0.07
    learn_temperature: bool = False
    embed_dim: int = 256
    batch_size: int = 64
    epochs: int = 8
    steps_per_epoch: Optional[int] = None
    lr: float = 3e-4
    image_size: int = 128
    seed: int = 0

    def to_train_config(self, **overrides) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in self.model_dump().items() if k in known}
        values.update(overrides)
        return TrainConfig(**values)


# The launcher is bound on the asset so every caller (definitions, tests, `dg.materialize`) gets a working default;
# switch it with run config (`resources: training_launcher: config: {kind: k8s, image: ...}`) or HMPCL_TRAINING_*.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # asset-level resource_defs

    @dg.asset(deps=[splits], group_name="model", pool="gpu", kinds={"pytorch", "mlflow"}, op_tags=GPU_POD_TAGS,
              resource_defs={"training_launcher": TrainingLauncher()})
    def trained_encoder(context: dg.AssetExecutionContext, config: TrainingConfig, store: DataStore,
                        mlflow_tracking: MlflowTracking,
                        training_launcher: TrainingLauncher) -> dg.Output[TrainedModel]:
        """An image encoder fine-tuned on the train split; params, curves, checkpoint and model live in one MLflow run.
        Training runs out of process through Dagster Pipes (subprocess, torchrun or a k8s pod); same config and data
        as a finished run → that run is reused, not trained again."""
        tracking_cfg = mlflow_tracking.config
        extras = {
            "train_config": dataclasses.asdict(config.to_train_config()),
            "hierarchy_path": str(store.hierarchy_path),
            "splits_path": str(store.splits_path),
            "out_dir": str(store.models_dir),
            "tracking": dataclasses.asdict(tracking_cfg),
            "variant": config.loss,
            "reuse": True,
        }
        invocation = training_launcher.launch(context, extras)
        reported = invocation.get_materialize_result()
        model = trained_model_from_metadata(reported.metadata or {})
        epoch_losses = [m["epoch_loss"] for m in invocation.get_custom_messages()
                        if isinstance(m, dict) and "epoch_loss" in m]
        from hmpcl_lib.tracking import run_url

        meta = {
            **(reported.metadata or {}),
            "mlflow_run": dg.MetadataValue.url(run_url(tracking_cfg, model.run_id)),
            "launcher": training_launcher.kind,
            "processes": training_launcher.nproc_per_node,
            "epoch_losses": dg.MetadataValue.json(epoch_losses) if epoch_losses else None,
        }
        return dg.Output(model, metadata={k: v for k, v in meta.items() if v is not None})
