"""The Kubernetes example config in deploy/ is valid for the Dagster and dagster-k8s versions we pin: the instance
yaml against Dagster's instance schema and the run launcher / Postgres storage schemas (no cluster or Postgres
needed), the GPU op tags against dagster-k8s's tag parser, the training pod spec against the Kubernetes models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines import launchers

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PG_ENV = {"DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "secret", "DAGSTER_PG_HOST": "pg.internal",
          "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_PORT": "5432", "DAGSTER_K8S_NAMESPACE": "dagster"}


def _needs(module: str):
    return pytest.importorskip(module, reason=f"the k8s extra ({module}) is not installed")


def _load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def _process(config_type, value):
    """Validate `value` against a Dagster config schema and resolve its {env: ...} entries."""
    from dagster._config import process_config, resolve_to_config_type

    result = process_config(resolve_to_config_type(config_type), value)
    assert result.success, [e.message for e in result.errors]
    return result.value


@pytest.mark.parametrize("name", ["dagster.yaml", "helm/values.yaml", "k8s/training-pod.yaml",
                                  "k8s/gpu-op-tags.yaml"])
def test_every_yaml_file_parses_to_a_mapping(name):
    assert isinstance(_load(name), dict)


def test_k8s_instance_yaml_passes_dagsters_instance_schema(monkeypatch):
    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert "postgres" in config["storage"]


def test_run_launcher_and_postgres_config_match_their_classes(monkeypatch):
    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)
    dagster_k8s, _ = _needs("dagster_k8s"), _needs("dagster_postgres")
    from dagster_postgres import DagsterPostgresStorage

    raw = _load("dagster.yaml")
    launcher = _process(dagster_k8s.K8sRunLauncher.config_type(), raw["run_launcher"]["config"])
    assert launcher["job_namespace"] == "dagster" and "HMPCL_TRAINING_LAUNCHER=k8s" in launcher["env_vars"]
    storage = _process(DagsterPostgresStorage.config_type(), raw["storage"]["postgres"])
    assert storage["postgres_db"]["hostname"] == "pg.internal" and storage["postgres_db"]["port"] == 5432


def test_a_missing_pg_env_var_is_reported(monkeypatch):
    for key in PG_ENV:
        monkeypatch.delenv(key, raising=False)
    _needs("dagster_postgres")
    from dagster._config import process_config, resolve_to_config_type
    from dagster_postgres import DagsterPostgresStorage

    result = process_config(resolve_to_config_type(DagsterPostgresStorage.config_type()),
                            _load("dagster.yaml")["storage"]["postgres"])
    assert not result.success
    assert any("DAGSTER_PG_" in e.message for e in result.errors)


def test_gpu_op_tags_parse_as_user_defined_k8s_config():
    _needs("dagster_k8s")
    from dagster_k8s.job import get_user_defined_k8s_config

    for tags in (_load("k8s/gpu-op-tags.yaml"), launchers.GPU_POD_TAGS):
        as_run_tags = {k: json.dumps(v) for k, v in tags.items()}  # tags travel as JSON strings
        parsed = get_user_defined_k8s_config(as_run_tags)
        assert parsed.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _load("k8s/gpu-op-tags.yaml") == json.loads(json.dumps(launchers.GPU_POD_TAGS))


def test_trained_encoder_carries_the_gpu_tags_and_pool():
    from pipelines.definitions import defs

    asset = defs.get_assets_def("trained_encoder")
    assert asset.op.pool == "gpu"
    tags = asset.op.tags["dagster-k8s/config"]
    config = json.loads(tags) if isinstance(tags, str) else tags
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_training_pod_spec_builds_a_valid_pipes_pod():
    _needs("dagster_k8s")
    from dagster_k8s.pipes import build_pod_body

    spec = launchers.k8s_pod_spec(str(DEPLOY / "k8s" / "training-pod.yaml"), gpus=4)
    pod = build_pod_body("hmpcl-train-1", "registry/hmpcl:1", launchers.training_command("python", 4),
                         {"DAGSTER_PIPES_CONTEXT": "e30=", "DAGSTER_PIPES_MESSAGES": "e30="}, None, spec)
    container = pod.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "4"
    assert container.command[-2:] == ["-m", "pipelines.pipes_train"] and "--nproc_per_node=4" in container.command
    assert {m.mount_path for m in container.volume_mounts} == {"/data", "/dev/shm"}
    assert pod.spec.restart_policy == "Never"


def test_helm_values_point_at_this_code_location():
    values = _load("helm/values.yaml")
    deployment = values["dagster-user-deployments"]["deployments"][0]
    module = deployment["dagsterApiGrpcArgs"][deployment["dagsterApiGrpcArgs"].index("-m") + 1]
    assert module == "pipelines.definitions"
    assert Path(DEPLOY.parent, *module.split(".")).with_suffix(".py").is_file()
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["HMPCL_TRAINING_LAUNCHER"] == "k8s"
    assert Path(DEPLOY.parent, env["HMPCL_K8S_POD_SPEC"].removeprefix("/opt/hmpcl/")).is_file()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
