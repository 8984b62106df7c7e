"""Which encoder a query command serves, and which gallery index belongs to it: an MLflow model URI (the registry's
`champion` by default) or an encoder file, and the `gallery_index` the pipeline built for that model's run."""

from __future__ import annotations

from pathlib import Path

from hmpcl_lib.errors import InputError
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.tracking.mlflow_store import CHAMPION, TrackingConfig, load_model

DEFAULT_REGISTERED_MODEL = TrackingConfig.registered_model


def champion_uri(registered_model: str = DEFAULT_REGISTERED_MODEL) -> str:
    return f"models:/{registered_model}@{CHAMPION}"


def load_query_model(model_uri: str | None, checkpoint: str | None, tracking_uri: str):
    """The encoder of an encoder file (safetensors, loaded without running code) or of an MLflow model URI."""
    if checkpoint:
        from hmpcl_lib.modeling.models import load_encoder

        return load_encoder(checkpoint)
    if not model_uri:
        raise InputError("pass a model URI or an encoder file", source="model")
    return load_model(TrackingConfig(tracking_uri=tracking_uri), model_uri)


def model_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The MLflow run behind `models:/name@alias`, `models:/name/version` or `runs:/id/...` (None for other URIs)."""
    import mlflow

    if not model_uri.startswith("models:/"):
        return model_uri.split("/")[1] if model_uri.startswith("runs:/") else None
    name, _, ref = model_uri[len("models:/"):].partition("@")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        if ref:
            return client.get_model_version_by_alias(name, ref).run_id
        name, _, version = name.partition("/")
        return client.get_model_version(name, version).run_id if version else None
    except mlflow.exceptions.MlflowException as exc:
        raise InputError(f"cannot resolve the model in {tracking_uri}: {exc}", source=model_uri) from exc


def index_dir_of(model_uri: str | None, checkpoint: str | None, tracking_uri: str, layout: DataLayout) -> Path:
    """The `gallery_index` asset writes the index of the model's MLflow run: the one built by this model."""
    run_id = None if checkpoint or not model_uri else model_run_id(model_uri, tracking_uri)
    if run_id is None:
        raise InputError("pass --index DIR (cannot tell which index belongs to this model)", source="search")
    return layout.index_dir(run_id)
