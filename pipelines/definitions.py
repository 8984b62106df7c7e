"""The one Dagster code location of hmpcl (`dagster dev` in the repo root loads it through workspace.yaml)."""


import dagster as dg

from pipelines.assets.data import drawings, lic_codes, lic_hierarchy, raw_archives, splits
from pipelines.assets.retrieval import (champion_model, corpus_embeddings, gallery_index, model_comparison,
                                        retrieval_benchmark)
from pipelines.assets.training import trained_encoder
from pipelines.checks import ALL_CHECKS
from pipelines.jobs import ALL_JOBS
from pipelines.resources import DataStore, MlflowTracking
from pipelines.schedules import retrain_schedule
from pipelines.sensors import new_drawings_sensor

ALL_ASSETS = [raw_archives, lic_codes, drawings, lic_hierarchy, splits, trained_encoder, corpus_embeddings,
              gallery_index, retrieval_benchmark, champion_model, model_comparison]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=ALL_JOBS,
    schedules=[retrain_schedule()],
    sensors=[new_drawings_sensor],
    resources={"store": DataStore(), "mlflow_tracking": MlflowTracking()},
)
