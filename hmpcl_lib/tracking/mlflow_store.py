"""MLflow helpers: one experiment, runs keyed by a content fingerprint, a registry with a `champion` alias.

Why fingerprints: re-materializing an asset with the same inputs and config must not create a second run or a
second registry version, so every run carries a `hmpcl.fingerprint` tag and is looked up before training.
mlflow is imported lazily so the torch core stays importable without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hmpcl_lib.errors import InputError

CHAMPION = "champion"
FINGERPRINT_TAG = "hmpcl.fingerprint"


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SYSTEM_METRICS_INTERVAL_S = 5  # MLflow's default is 10 s: a short training run would show few or no samples


DEFAULT_ARTIFACT_ROOT = "mlartifacts"
DEFAULT_UI_URL = "http://127.0.0.1:5000"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the local sqlite store: the one default every entry point uses."""
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def default_artifact_root() -> str:
    """$HMPCL_MLFLOW_ARTIFACTS, else `mlartifacts` in the current folder (the Makefile exports it)."""
    import os

    return os.environ.get("HMPCL_MLFLOW_ARTIFACTS") or DEFAULT_ARTIFACT_ROOT


def default_ui_url() -> str:
    """$HMPCL_MLFLOW_UI, else the local MLflow UI `make mlflow` starts."""
    import os

    return os.environ.get("HMPCL_MLFLOW_UI") or DEFAULT_UI_URL


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs and models live. The store, artifact root and UI default to the environment the Makefile and the
    README set (`MLFLOW_TRACKING_URI`, `HMPCL_MLFLOW_ARTIFACTS`, `HMPCL_MLFLOW_UI`), read when the config is made, as
    every entry point reads them."""

    tracking_uri: str = field(default_factory=default_tracking_uri)
    experiment: str = "hmpcl"
    registered_model: str = "hmpcl-encoder"
    artifact_root: str = field(default_factory=default_artifact_root)
    ui_url: str = field(default_factory=default_ui_url)


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (configs, table hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def client(cfg: TrackingConfig):
    """An MlflowClient on `cfg`'s store (no global state is touched)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=cfg.tracking_uri)


def activate(cfg: TrackingConfig) -> None:
    """Point MLflow's fluent API (start_run, log_*, load_model, register_model) at `cfg`'s store: the one place the
    process-wide tracking URI is set, called explicitly before fluent calls."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)


class LegacyModelError(InputError):
    """A model logged by an older hmpcl as pickled Python objects: refused (see `load_model`)."""


@contextlib.contextmanager
def _downloaded_model(cfg: TrackingConfig, model_uri: str) -> Iterator[tuple[Path, Any, bool]]:
    """(local folder, MLmodel, pickle-free?) of the model at `model_uri`, downloaded to a temp folder for the block."""
    import tempfile

    import mlflow
    from mlflow.models import Model

    from hmpcl_lib.tracking import pyfunc

    activate(cfg)
    with tempfile.TemporaryDirectory(prefix="hmpcl-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        except mlflow.exceptions.MlflowException as exc:
            raise InputError(f"cannot load the model from {cfg.tracking_uri}: {exc}", source=model_uri) from exc
        try:
            model = Model.load(str(local))
        except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a folder without MLmodel
            raise InputError(f"not an MLflow model ({exc})", source=model_uri) from exc
        yield local, model, (model.metadata or {}).get(pyfunc.FORMAT_KEY) == pyfunc.FORMAT


def _encoder_weights(local: Path, model: Any, model_uri: str) -> Path:
    """The encoder artifact of a downloaded hmpcl model (safetensors, or an old model's state-dict .pt)."""
    from hmpcl_lib.tracking import pyfunc

    artifacts = model.flavors.get("python_function", {}).get("artifacts", {})
    if pyfunc.ENCODER_ARTIFACT not in artifacts:
        raise InputError("no encoder weights artifact (not an hmpcl model?)", source=model_uri)
    return local / artifacts[pyfunc.ENCODER_ARTIFACT]["path"]


def load_model(cfg: TrackingConfig, model_uri: str):
    """The encoder logged at `model_uri` (`runs:/…`, `models:/name@alias`, `models:/name/3`, `models:/m-…`) in eval
    mode on the CPU, read from its safetensors weights only: none of the model's code runs and nothing is
    unpickled. An unknown URI is an InputError naming it; a model logged the old way is a LegacyModelError that
    says how to re-log it. (Files load through `hmpcl_lib.modeling.models.load_encoder`.)"""
    from hmpcl_lib.modeling.models import load_encoder

    with _downloaded_model(cfg, model_uri) as (local, model, pickle_free):
        if not pickle_free:
            raise LegacyModelError(
                source=model_uri,
                reason=f"{model_uri} was logged by an older hmpcl as pickled Python objects (a cloudpickled pyfunc and "
                "a pickled pytorch flavour), which hmpcl no longer loads: loading them can run any code. Re-log it "
                f"without retraining: `hmpcl relog {model_uri}` (reads only its weights, logs a pickle-free model, "
                "registers it and moves its aliases).")
        return load_encoder(_encoder_weights(local, model, model_uri)).eval()


def relog(cfg: TrackingConfig, model_uri: str) -> tuple[str, Any]:
    """Re-log a model logged the old (pickled) way without retraining: read only its encoder weights (a plain state
    dict, loaded with `weights_only=True`), log them pickle-free to the same run, and when `model_uri` names a
    registered version, register the new model as a new version with the same tags and move the old version's
    aliases to it. Returns (new model URI, new version or None)."""
    import mlflow

    from hmpcl_lib.modeling.models import load_encoder

    c = client(cfg)
    version = None
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri[len("models:/"):].partition("@")
        if ref:
            version = c.get_model_version_by_alias(name, ref)
        elif "/" in name:
            name, _, number = name.partition("/")
            version = c.get_model_version(name, number)
    with _downloaded_model(cfg, model_uri) as (local, model, pickle_free):
        if pickle_free:
            return model_uri, version
        encoder = load_encoder(_encoder_weights(local, model, model_uri))  # weights_only: no unpickling
        run_id = model.run_id or (version.run_id if version else None)
    with mlflow.start_run(run_id=run_id):
        new_uri = log_encoder(encoder)
    new_version = None
    if version is not None:
        new_version = c.create_model_version(version.name, new_uri, run_id=run_id,
                                             tags={**version.tags, "relogged_from_version": str(version.version)})
        for alias in version.aliases:
            c.set_registered_model_alias(version.name, alias, new_version.version)
    return new_uri, new_version


def experiment_id(cfg: TrackingConfig) -> str:
    """Get or create the experiment, with artifacts in `artifact_root` (not the deprecated ./mlruns default)."""
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = Path(cfg.artifact_root).expanduser().resolve()
    location.mkdir(parents=True, exist_ok=True)
    return c.create_experiment(cfg.experiment, artifact_location=location.as_uri())


def find_run(cfg: TrackingConfig, fp: str, status: str = "FINISHED"):
    """The newest run of the experiment tagged with fingerprint `fp` (and `status`), or None."""
    c = client(cfg)
    runs = c.search_runs(
        [experiment_id(cfg)],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fp}' and attributes.status = '{status}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


@contextlib.contextmanager
def start_run(cfg: TrackingConfig, run_name: str, fp: str | None = None, tags: dict[str, str] | None = None,
              nested: bool = False, system_metrics: bool = False) -> Iterator[Any]:
    """Start (and end) an MLflow run in the project experiment; a failure marks the run FAILED.

    `system_metrics`: MLflow's own `system/*` metrics (CPU, memory, disk, network; GPU when pynvml is installed)
    sampled every SYSTEM_METRICS_INTERVAL_S seconds, unless $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says
    otherwise (MLflow logs no sample for a run shorter than the interval)."""
    import os

    import mlflow

    exp = experiment_id(cfg)
    all_tags = dict(tags or {})
    if fp:
        all_tags[FINGERPRINT_TAG] = fp
    activate(cfg)
    if system_metrics and not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=all_tags, nested=nested,
                          log_system_metrics=system_metrics) as run:
        yield run


def log_dataset(path: str | Path, context: str, df=None, name: str | None = None) -> str:
    """Log a Parquet table as an input of the active run (the run's Datasets column), its digest the first 32 hex
    digits of the file's SHA-256 (MLflow keeps at most 36): the same file shows the same digest in every run.
    `df`: the table already read from `path` (else it is read here)."""
    import warnings

    import mlflow
    import polars as pl

    from hmpcl_lib.io import file_sha256

    path = Path(path).resolve()
    digest = file_sha256(path)[:32]
    with warnings.catch_warnings():  # MLflow registers two equivalent sources for file URIs and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_polars(pl.read_parquet(path) if df is None else df, source=path.as_uri(),
                                          name=name or path.stem, digest=digest)
    mlflow.log_input(dataset, context=context)
    return digest


def log_metrics_safe(metrics: dict[str, float], step: int | None = None) -> None:
    """Log only finite numeric metrics (MLflow rejects NaN in some stores; NaN means 'not defined' here)."""
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_encoder(model, name: str = "model") -> str:
    """Log a torch encoder to the active run as one pickle-free `python_function` model (`hmpcl_lib.tracking.pyfunc`:
    models-from-code + safetensors weights; images in, embeddings out: `mlflow models serve`,
    `mlflow.pyfunc.load_model`; `load_model` here gives the torch module). Returns the model's URI."""
    import tempfile

    import mlflow.pyfunc

    from hmpcl_lib.modeling.models import save_encoder_safetensors
    from hmpcl_lib.tracking import pyfunc

    # ship the whole hmpcl_lib package (this file is hmpcl_lib/tracking/mlflow_store.py): the entry point imports it
    code = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="hmpcl-encoder-") as tmp:
        weights = save_encoder_safetensors(model.cpu().eval(), Path(tmp) / pyfunc.WEIGHTS_FILE)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=pyfunc.ENTRY_POINT, artifacts={pyfunc.ENCODER_ARTIFACT: str(weights)},
            code_paths=[code], signature=pyfunc.signature(), input_example=pyfunc.input_example(),
            pip_requirements=pyfunc.requirements(), model_config=dict(pyfunc.MODEL_CONFIG),
            metadata={pyfunc.FORMAT_KEY: pyfunc.FORMAT})
    return info.model_uri


def run_url(cfg: TrackingConfig, run_id: str) -> str:
    return f"{cfg.ui_url}/#/experiments/{experiment_id(cfg)}/runs/{run_id}"


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    promoted: bool
    reason: str
    champion_version: str | None
    champion_value: float | None
    candidate_value: float


def registered_version_for_run(cfg: TrackingConfig, run_id: str):
    c = client(cfg)
    try:
        found = c.search_model_versions(f"name='{cfg.registered_model}' and run_id='{run_id}'")
    except Exception:  # registry has no such model yet
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


def current_champion(cfg: TrackingConfig):
    c = client(cfg)
    try:
        return c.get_model_version_by_alias(cfg.registered_model, CHAMPION)
    except Exception:  # no registered model or no alias yet
        return None


def register(cfg: TrackingConfig, run_id: str, model_uri: str, tags: dict[str, str]) -> Any:
    """Register the run's model once: an existing version for the same run is reused, not duplicated."""
    import mlflow

    existing = registered_version_for_run(cfg, run_id)
    if existing is not None:
        return existing
    activate(cfg)
    return mlflow.register_model(model_uri, cfg.registered_model, tags=tags)


def decide_promotion(candidate_value: float, champion_value: float | None, champion_version: str | None,
                     min_improvement: float = 0.0) -> tuple[bool, str]:
    """Pure rule: promote when there is no champion, or the candidate beats it on the same test split."""
    if champion_version is None or champion_value is None:
        return True, "no champion yet"
    if candidate_value > champion_value + min_improvement:
        return True, f"patent mAP {candidate_value:.4f} beats champion v{champion_version} ({champion_value:.4f})"
    return False, f"patent mAP {candidate_value:.4f} does not beat champion v{champion_version} ({champion_value:.4f})"


def promote_if_better(cfg: TrackingConfig, version: str, candidate_value: float, champion_value: float | None,
                      metric: str = "patent_map") -> PromotionDecision:
    """Move the `champion` alias to `version` only if it wins; the decision is recorded as version tags."""
    c = client(cfg)
    champ = current_champion(cfg)
    champ_version = None if champ is None else str(champ.version)
    if champ_version == str(version):
        decision = PromotionDecision(str(version), False, "already champion", champ_version, champion_value, candidate_value)
    else:
        promoted, reason = decide_promotion(candidate_value, champion_value, champ_version)
        if promoted:
            c.set_registered_model_alias(cfg.registered_model, CHAMPION, str(version))
        decision = PromotionDecision(str(version), promoted, reason, champ_version, champion_value, candidate_value)
    c.set_model_version_tag(cfg.registered_model, str(version), f"{metric}", f"{candidate_value:.6f}")
    c.set_model_version_tag(cfg.registered_model, str(version), "promotion_decision", decision.reason)
    return decision


def recent_runs(cfg: TrackingConfig, last: int = 5, filter_string: str = ""):
    """The last `last` runs of the experiment as a polars DataFrame (params, metrics, tags flattened)."""
    import polars as pl

    c = client(cfg)
    runs = c.search_runs([experiment_id(cfg)], filter_string=filter_string,
                         order_by=["attributes.start_time DESC"], max_results=last)
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
               "start_time": r.info.start_time}
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame({"run_id": []}, schema={"run_id": pl.Utf8})
