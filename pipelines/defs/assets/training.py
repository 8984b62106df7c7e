"""The training asset: fine-tune the encoder with the baseline loss (the default since issue 28) or the hierarchical
one, tracked in MLflow, run out of process through Dagster Pipes (see pipelines/launchers.py and docs/DEPLOY.md)."""


import dataclasses
import warnings

import dagster as dg
import pydantic

from hmpcl_lib.experiments.runs import TrainedModel
from hmpcl_lib.train.config import TrainConfig, field_types
from pipelines.defs.assets.data import decoded_drawings, splits
from pipelines.launchers import GPU_POD_TAGS, trained_model_from_metadata
from pipelines.defs.resources import DataStore, MlflowTracking, TrainingLauncher


class TrainingConfig(pydantic.create_model("TrainConfigFields", __base__=dg.Config, **field_types())):
    """Every field of `hmpcl_lib.train.config.TrainConfig`, with its defaults: the launchpad, `hmpcl-train` and
    checkpoints share one definition. Values are validated by TrainConfig when the asset runs."""

    def to_train_config(self, **overrides) -> TrainConfig:
        return TrainConfig(**{**self.model_dump(), **overrides})


def train_through_launcher(context: dg.AssetExecutionContext, train_config: TrainConfig, variant: str,
                           store: DataStore, mlflow_tracking: MlflowTracking,
                           training_launcher: TrainingLauncher) -> tuple[TrainedModel, dict]:
    """Train `train_config` out of process through the Pipes launcher (the same for every asset that trains), and
    return the TrainedModel the child reported with the asset's metadata. Same config and data as a finished MLflow
    run → that run is reused, not trained again."""
    from hmpcl_lib.tracking import run_url

    tracking_cfg = mlflow_tracking.config
    if not train_config.pixel_store:  # the years' pixel stores (decoded_drawings), the one training path
        train_config = dataclasses.replace(train_config, pixel_store=store.pixels(train_config.image_size).path)
    extras = {
        "train_config": dataclasses.asdict(train_config),
        "hierarchy_path": str(store.layout.hierarchy_path),
        "splits_path": str(store.layout.splits_path),
        "out_dir": str(store.layout.models_dir),
        "tracking": dataclasses.asdict(tracking_cfg),
        "variant": variant,
        "reuse": True,
        "data_source": store.source,
    }
    invocation = training_launcher.launch(context, extras)
    reported = invocation.get_materialize_result()
    model = trained_model_from_metadata(reported.metadata or {})
    epochs = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "epoch_loss" in m]
    # the validation curves (hmpcl_lib.train.validation), one row per epoch; the last epoch's values as numbers
    curves = [{k: v for k, v in m.items() if k == "epoch" or k.startswith("val_")} for m in epochs
              if any(k.startswith("val_") for k in m)]
    meta = {
        **(reported.metadata or {}),
        "mlflow_run": dg.MetadataValue.url(run_url(tracking_cfg, model.run_id)),
        "launcher": training_launcher.kind,
        "processes": training_launcher.nproc_per_node,
        "epoch_losses": dg.MetadataValue.json([m["epoch_loss"] for m in epochs]) if epochs else None,
        "validation_curves": dg.MetadataValue.json(curves) if curves else None,
        **({k: dg.MetadataValue.float(v) for k, v in curves[-1].items() if k != "epoch"} if curves else {}),
    }
    return model, {k: v for k, v in meta.items() if v is not None}


# The launcher is bound on the assets that train so every caller (definitions, tests, `dg.materialize`) gets a
# working default; switch it with run config (`resources: training_launcher: config: {kind: k8s, image: ...}`) or
# HMPCL_TRAINING_*. One instance: Dagster requires every asset of a job to bind the same resource object.
TRAINING_LAUNCHER = TrainingLauncher()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # asset-level resource_defs

    @dg.asset(deps=[splits, decoded_drawings], group_name="model", pool="gpu", kinds={"pytorch", "mlflow"}, op_tags=GPU_POD_TAGS,
              resource_defs={"training_launcher": TRAINING_LAUNCHER})
    def trained_encoder(context: dg.AssetExecutionContext, config: TrainingConfig, store: DataStore,
                        mlflow_tracking: MlflowTracking,
                        training_launcher: TrainingLauncher) -> dg.Output[TrainedModel]:
        """An image encoder fine-tuned on the train split; params, curves, checkpoint and model live in one MLflow run.
        Training runs out of process through Dagster Pipes (subprocess, torchrun or a k8s pod); same config and data
        as a finished run → that run is reused, not trained again."""
        model, meta = train_through_launcher(context, config.to_train_config(), config.loss, store, mlflow_tracking,
                                             training_launcher)
        return dg.Output(model, metadata=meta)
