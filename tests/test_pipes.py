"""trained_encoder through Dagster Pipes: a real child process (PipesSubprocessClient) trains on a tiny sample,
streams logs and metrics back and reports the materialization the asset turns into a TrainedModel."""

from __future__ import annotations

import dataclasses
import os
import sys

import dagster as dg
import mlflow
import pytest
import yaml

from hmpcl_lib.experiments.runs import TrainedModel
from hmpcl_lib.train.config import TrainConfig
from pipelines import launchers
from pipelines.defs.assets.data import drawings, lic_codes, lic_hierarchy, raw_archives, splits
from pipelines.defs.assets.training import trained_encoder
from pipelines.pipes_train import materialization_metadata, parse_extras
from pipelines.defs.resources import DataStore, MlflowTracking, TrainingLauncher

TINY_TRAINING = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "image_size": 64, "embed_dim": 32}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    store = DataStore(root=str(root / "data"), source="sample", sample_n_classes=2, sample_subclasses_per_class=2,
                      sample_patents_per_subclass=4, sample_views_min=3, sample_views_max=4, sample_image_size=64,
                      sample_years=[2019], min_lic_coverage=0.8)
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "mlartifacts"),
                              experiment="hmpcl-pipes-test", registered_model="hmpcl-pipes-test-encoder")
    resources = {"store": store, "mlflow_tracking": tracking}
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([raw_archives, drawings], partition_key="2019", resources=resources,
                          instance=instance).success
    assert dg.materialize([lic_codes, lic_hierarchy, splits], resources=resources, instance=instance).success
    run_config = {"ops": {"trained_encoder": {"config": TINY_TRAINING}}}
    result = dg.materialize([trained_encoder], resources=resources, instance=instance, run_config=run_config)
    mlflow.set_tracking_uri(tracking.tracking_uri)  # the tests read the store through MLflow's fluent API
    return {"store": store, "tracking": tracking, "resources": resources, "instance": instance,
            "run_config": run_config, "result": result}


def _materialization(result: dg.ExecuteInProcessResult):
    events = result.get_asset_materialization_events()
    assert len(events) == 1
    return events[0].event_specific_data.materialization


def test_materialization_metadata_comes_back_through_pipes(env):
    result = env["result"]
    assert result.success
    meta = _materialization(result).metadata
    model = result.output_for_node("trained_encoder")
    assert isinstance(model, TrainedModel) and not model.reused
    assert meta["mlflow_run_id"].value == model.run_id
    assert meta["final_loss"].value == pytest.approx(model.final_loss) and model.final_loss > 0
    assert meta["model_uri"].value == model.model_uri and model.model_uri.startswith(("runs:/", "models:/"))
    assert meta["fingerprint"].value == model.fingerprint
    assert meta["launcher"].value == "subprocess"
    assert meta["mlflow_run"].value.endswith(model.run_id)
    assert len(meta["epoch_losses"].value) == TINY_TRAINING["epochs"]  # custom messages, one per epoch end
    # validation every epoch: its curves in the asset's metadata and in the MLflow run, the last values as numbers
    curves = meta["validation_curves"].value
    assert [c["epoch"] for c in curves] == [0.0, 1.0] and 0.0 <= meta["val_patent_recall_at_1"].value <= 1.0
    history = mlflow.MlflowClient().get_metric_history(model.run_id, "val_patent_map")
    assert [round(m.value, 6) for m in history] == [round(c["val_patent_map"], 6) for c in curves]
    store = env["store"]  # trained from the years' pixel stores, the one training path
    pixels = os.pathsep.join(str(store.year_pixels(y, TINY_TRAINING["image_size"]).path) for y in store.layout.years())
    expected = dataclasses.asdict(TrainConfig(**{**TINY_TRAINING, "pixel_store": pixels}))
    assert model.params == expected  # downstream assets rebuild TrainConfig from these


def test_the_mlflow_run_exists_and_holds_the_training(env):
    model = env["result"].output_for_node("trained_encoder")
    cfg = env["tracking"].config
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri).get_run(model.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final_loss"] == pytest.approx(model.final_loss)
    assert run.data.params["epochs"] == str(TINY_TRAINING["epochs"])


def test_logs_from_the_child_process_arrived(env):
    result = env["result"]
    messages = [r.user_message for r in env["instance"].all_logs(result.run_id)]
    assert any(f"training {TrainConfig().loss}" in m and "pid" in m for m in messages), messages
    assert any("epoch_loss=" in m for m in messages)
    assert any("launching training" in m and "pipelines.pipes_train" in m for m in messages)


def test_rematerializing_reuses_the_finished_run_without_training(env):
    cfg = env["tracking"].config
    first = env["result"].output_for_node("trained_encoder")
    before = len(mlflow.search_runs(experiment_names=[cfg.experiment]))
    again = dg.materialize([trained_encoder], resources=env["resources"], instance=env["instance"],
                           run_config=env["run_config"])
    model = again.output_for_node("trained_encoder")
    assert model.reused and model.run_id == first.run_id and model.fingerprint == first.fingerprint
    assert _materialization(again).metadata["reused_finished_run"].value is True
    assert len(mlflow.search_runs(experiment_names=[cfg.experiment])) == before


def test_training_reads_the_years_pixel_stores(env):
    """One training path: the Pipes child trains from every parsed year's pixel store (a PixelStoreSet)."""
    store = env["store"]
    config = {**TINY_TRAINING, "epochs": 1, "seed": 2}  # another fingerprint: a fresh run
    result = dg.materialize([trained_encoder], resources=env["resources"], instance=env["instance"],
                            run_config={"ops": {"trained_encoder": {"config": config}}})
    model = result.output_for_node("trained_encoder")
    assert not model.reused and model.final_loss > 0
    used = model.params["pixel_store"].split(os.pathsep)
    assert used == [str(store.year_pixels(year, 64).path) for year in store.layout.years()]


def test_a_failing_child_fails_the_step_with_its_error(env):
    run_config = {"ops": {"trained_encoder": {"config": {**TINY_TRAINING, "loss": "triplet"}}}}
    result = dg.materialize([trained_encoder], resources=env["resources"], instance=env["instance"],
                            run_config=run_config, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = str(failure.to_string()) if failure else ""
    assert "loss must be 'hierarchical' or 'baseline'" in text or "triplet" in text, text


def test_torchrun_launcher_trains_with_two_gloo_ranks(env):
    """nproc_per_node=2: rank 0 reports through Pipes and MLflow, rank 1 joins the DDP training silently."""
    config = {**TINY_TRAINING, "epochs": 1, "seed": 1}  # another fingerprint: a fresh run, not the reused one
    run_config = {"ops": {"trained_encoder": {"config": config}},
                  "resources": {"training_launcher": {"config": {"nproc_per_node": 2}}}}
    result = dg.materialize([trained_encoder], resources=env["resources"], instance=env["instance"],
                            run_config=run_config)
    model = result.output_for_node("trained_encoder")
    assert not model.reused and model.final_loss > 0
    meta = _materialization(result).metadata
    assert meta["processes"].value == 2 and len(meta["epoch_losses"].value) == 1
    cfg = env["tracking"].config
    runs = mlflow.search_runs(experiment_names=[cfg.experiment], filter_string=f"tags.`hmpcl.fingerprint` = '{model.fingerprint}'")
    assert len(runs) == 1  # one MLflow run, not one per rank


# ------------------------------------------------------------------ no child process needed


def test_parse_extras_names_what_is_missing_or_unknown():
    with pytest.raises(ValueError, match="lack .*splits_path"):
        parse_extras({"train_config": {}, "hierarchy_path": "h", "out_dir": "o", "tracking": {}})
    with pytest.raises(ValueError, match="unknown fields \\['epochz'\\]"):
        parse_extras({"train_config": {"epochz": 1}, "hierarchy_path": "h", "splits_path": "s", "out_dir": "o",
                      "tracking": {}})


def test_reported_metadata_round_trips_into_a_trained_model():
    model = TrainedModel("r1", "runs:/r1/model", "/c/last.pt", "fp", False, 1.5, "baseline", {"epochs": 2})
    raw = materialization_metadata(model)
    assert raw["final_loss"] == {"raw_value": 1.5, "type": "float"}
    values = {k: dg.MetadataValue.json(v["raw_value"]) if v["type"] == "json" else v["raw_value"]
              for k, v in raw.items()}
    assert launchers.trained_model_from_metadata(values) == model
    with pytest.raises(dg.DagsterInvariantViolationError, match="mlflow_run_id"):
        launchers.trained_model_from_metadata({"model_uri": "x", "fingerprint": "y"})


def test_torchrun_command_for_several_processes():
    assert launchers.training_command("py") == ["py", "-m", "pipelines.pipes_train"]
    cmd = launchers.training_command(sys.executable, 4)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=4" in cmd
    assert cmd[-2:] == ["-m", "pipelines.pipes_train"]
    with pytest.raises(ValueError, match="nproc_per_node"):
        launchers.training_command("py", 0)


def test_launcher_is_switched_by_run_config_alone(env):
    """Swapping subprocess → k8s is config: here the k8s launcher is chosen and refuses for lack of an image."""
    run_config = {**env["run_config"], "resources": {"training_launcher": {"config": {"kind": "k8s", "image": ""}}}}
    result = dg.materialize([trained_encoder], resources=env["resources"], instance=env["instance"],
                            run_config=run_config, raise_on_error=False)
    assert not result.success
    assert "needs `image`" in result.get_step_failure_events()[0].step_failure_data.error.to_string()


def test_k8s_pod_spec_gets_the_gpu_limit(tmp_path):
    spec_file = tmp_path / "pod.yaml"
    spec_file.write_text(yaml.safe_dump({"containers": [{"name": "training"}], "nodeSelector": {"gpu": "h100"}}))
    spec = launchers.k8s_pod_spec(str(spec_file), gpus=2)
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert spec["nodeSelector"] == {"gpu": "h100"}
    from hmpcl_lib.errors import InputError

    with pytest.raises(InputError, match="missing.yaml"):
        launchers.k8s_pod_spec(str(tmp_path / "missing.yaml"), gpus=1)


def test_k8s_client_is_built_when_dagster_k8s_is_installed():
    pytest.importorskip("dagster_k8s")
    from dagster_k8s import PipesK8sClient

    client = launchers._k8s_client(load_incluster_config=False)
    assert isinstance(client, PipesK8sClient)


def test_launcher_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HMPCL_TRAINING_LAUNCHER", "k8s")
    monkeypatch.setenv("HMPCL_TRAINING_NPROC", "8")
    launcher = TrainingLauncher()
    assert (launcher.kind, launcher.nproc_per_node) == ("k8s", 8)
