"""Which encoder a query command serves, and which gallery index belongs to it: an MLflow model URI (the registry's
`champion` by default) or an encoder file, the `gallery_index` the pipeline built for that model's run, and the
model's card (what it was trained on, said in `hmpcl serve`'s log and the search page's footer)."""

from __future__ import annotations

from dataclasses import dataclass
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


DATA_SOURCE_TAG = "hmpcl.data_source"  # set on training runs by the pipeline: "sample" | "deeppatent2"
# what the generated sample's model is on real drawings (issue 30; README "Look at it"): measured by the author
# on 701 real USPTO design drawing sheets of 195 patents held back from the project (a patent's other sheets are its
# positives): the untouched ImageNet backbone R@1 0.72 / patent mAP 0.48, the sample-trained champion 0.58 / 0.35
SAMPLE_MODEL_WARNING = ("a demonstration of the pipeline, not a model for real drawings: on real USPTO design drawings "
                        "the untouched ImageNet backbone retrieves better (R@1 0.72 vs 0.58); train on DeepPatent2 for "
                        "real search")


@dataclass(frozen=True)
class ModelCard:
    """What a served model is, in one line for people: its source (MLflow model URI or encoder file), the run that
    trained it, its loss and the data it was trained on. `demo` is True for a model trained on the generated sample."""

    source: str
    run_id: str | None = None
    run_name: str | None = None
    loss: str | None = None
    train_drawings: int | None = None
    data_source: str | None = None
    untouched: bool = False  # the ImageNet backbone, never fine-tuned
    date: str | None = None

    @property
    def demo(self) -> bool:
        return self.data_source == "sample"

    def summary(self) -> str:
        if self.run_id is None:
            return f"{self.source}: an encoder file; what it was trained on is not recorded"
        run = f"MLflow run {self.run_name or '?'} {self.run_id[:8]}" + (f", {self.date}" if self.date else "")
        if self.untouched:
            return f"{self.source}: the untouched ImageNet backbone, not fine-tuned ({run})"
        data = {"sample": "drawings of the generated sample corpus", "deeppatent2": "DeepPatent2 drawings"}.get(
            self.data_source or "", "drawings (source not recorded)")
        count = f"{self.train_drawings:,} " if self.train_drawings is not None else ""
        text = f"{self.source}: {self.loss or '?'} loss, trained on {count}{data} ({run})"
        return f"{text}; {SAMPLE_MODEL_WARNING}" if self.demo else text


def model_card(model_uri: str | None, checkpoint: str | None, tracking_uri: str) -> ModelCard:
    """The card of the model a query command serves (an encoder file has no recorded training: a bare card)."""
    if checkpoint or not model_uri:
        return ModelCard(source=str(checkpoint or model_uri))
    run_id = model_run_id(model_uri, tracking_uri)
    if run_id is None:
        return ModelCard(source=model_uri)
    import datetime

    import mlflow

    run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    params, tags = run.data.params, run.data.tags
    drawings = params.get("train_drawings")
    started = run.info.start_time
    return ModelCard(source=model_uri, run_id=run_id, run_name=tags.get("mlflow.runName"), loss=params.get("loss"),
                     train_drawings=int(drawings) if drawings and drawings.isdigit() else None,
                     data_source=tags.get(DATA_SOURCE_TAG), untouched=tags.get("hmpcl.stage") == "pretrained",
                     date=datetime.datetime.fromtimestamp(started / 1000, datetime.UTC).date().isoformat()
                     if started else None)
