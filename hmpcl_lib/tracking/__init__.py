"""The MLflow adapter: nothing else.

`mlflow_store` holds the MLflow helpers (one experiment, runs keyed by a content fingerprint, a registry with a
`champion` alias); they are re-exported here, so `from hmpcl_lib import tracking; tracking.fingerprint(...)` works.
`pyfunc` / `pyfunc_entry` are the logged model flavour (models-from-code, safetensors weights), `model_source` picks
the model and index a query command serves. Experiments built on it are in `hmpcl_lib.experiments`, the commands in
`hmpcl_lib.cli`.
"""

from hmpcl_lib.tracking.mlflow_store import (CHAMPION, FINGERPRINT_TAG, LegacyModelError, PromotionDecision, TrackingConfig, activate, client,
                                             default_tracking_uri, DEFAULT_TRACKING_URI, default_artifact_root,
                                             default_ui_url,
                                             current_champion, decide_promotion, experiment_id, find_run, fingerprint, load_model,
                                             log_dataset, log_encoder, log_metrics_safe, promote_if_better, recent_runs, register, relog,
                                             registered_version_for_run, run_url, start_run)

__all__ = ["CHAMPION", "FINGERPRINT_TAG", "LegacyModelError", "PromotionDecision", "TrackingConfig", "client", "current_champion",
           "decide_promotion", "experiment_id", "find_run", "fingerprint", "load_model", "log_dataset", "log_encoder", "log_metrics_safe",
           "promote_if_better", "recent_runs", "register", "relog", "registered_version_for_run", "run_url", "start_run",
           "default_tracking_uri", "DEFAULT_TRACKING_URI", "default_artifact_root", "default_ui_url", "activate"]
