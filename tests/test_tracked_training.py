"""`experiment.train_tracked` shows what MLflow users look for: the run's datasets (hierarchy and splits tables,
digest = the file's SHA-256) and MLflow's own system metrics; a tiny run in a temporary sqlite store."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
# the same fixtures as test_training (one torch thread, the tiny drawing table): imported, so pytest registers them
from test_training import drawing_table, tiny_config  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

from hmpcl_lib import tracking  # noqa: E402
from hmpcl_lib.io import file_sha256  # noqa: E402
from hmpcl_lib.experiments.runs import train_tracked  # noqa: E402


@pytest.fixture
def tables(drawing_table, tmp_path):
    hierarchy = drawing_table.with_columns(pl.col("drawing_id").str.extract(r"^(c\d+_s\d+_p\d+)").alias("patent_id"))
    splits = hierarchy.select("drawing_id", "patent_id",
                              pl.when(pl.col("patent_id").str.ends_with("p4")).then(pl.lit("test"))
                              .otherwise(pl.lit("train")).alias("split"), pl.lit("gallery").alias("role"))
    hierarchy.write_parquet(tmp_path / "lic_hierarchy.parquet")
    splits.write_parquet(tmp_path / "splits.parquet")
    return tmp_path / "lic_hierarchy.parquet", tmp_path / "splits.parquet"


def test_a_training_run_logs_its_datasets_and_system_metrics(tables, tmp_path, monkeypatch):
    """System metrics are sampled by MLflow's own thread: the training is held open (inside its run) until the first
    sample is logged, with a generous deadline, instead of hoping a 2-step run outlasts the sampling interval."""
    import time

    import mlflow

    from hmpcl_lib.train import loop

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    real_train = loop.train

    def train_until_sampled(*args, **kwargs):
        result = real_train(*args, **kwargs)
        run_id, deadline = mlflow.active_run().info.run_id, time.monotonic() + 120
        while "system/cpu_utilization_percentage" not in mlflow.get_run(run_id).data.metrics:
            assert time.monotonic() < deadline, "MLflow logged no system metric within 120 s"
            time.sleep(0.2)
        return result

    monkeypatch.setattr(loop, "train", train_until_sampled)  # train_tracked imports it at call time
    cfg = tracking.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  artifact_root=str(tmp_path / "art"))
    hierarchy_path, splits_path = tables
    trained = train_tracked(tiny_config(epochs=1, steps_per_epoch=2), hierarchy_path, splits_path, tmp_path / "out",
                            cfg)
    run = tracking.client(cfg).get_run(trained.run_id)

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"lic_hierarchy", "splits"}
    for name, path in (("lic_hierarchy", hierarchy_path), ("splits", splits_path)):
        dataset = inputs[name].dataset
        assert dataset.digest == file_sha256(path)[:32]
        assert dataset.source_type == "polars" or path.name in dataset.source
        assert {t.key: t.value for t in inputs[name].tags}["mlflow.data.context"] == "training"
    assert '"num_rows": 60' in inputs["lic_hierarchy"].dataset.profile

    metrics = run.data.metrics
    assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
    assert "system/system_memory_usage_megabytes" in metrics
    assert "final_loss" in metrics
