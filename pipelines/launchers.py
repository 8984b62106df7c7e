"""Pipes clients for the training step: the same `python -m pipelines.pipes_train` in a subprocess or a k8s pod.

Why Pipes: the asset stays one Dagster step whose logs, metrics and materialization come back from wherever the
training actually ran, so moving it onto a GPU node is a resource-config change, not a code change.
dagster_k8s is imported only when the k8s launcher is chosen (it is the optional `k8s` extra).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from hmpcl_lib.experiments.runs import TrainedModel

PIPES_MODULE = "pipelines.pipes_train"
REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_KINDS = ("subprocess", "k8s")

# `dagster-k8s/config` tags for a step that needs one GPU when runs execute as k8s pods (K8sRunLauncher, or the
# k8s_job_executor for a pod per step). Put them on an asset with `op_tags=GPU_POD_TAGS`.
GPU_POD_TAGS: dict[str, Any] = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "4", "memory": "16Gi"}},
        },
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}


def training_command(python: str, nproc_per_node: int = 1) -> list[str]:
    """The child command: the Pipes training module, under torchrun when more than one process per node."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    if nproc_per_node == 1:
        return [python, "-m", PIPES_MODULE]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            "-m", PIPES_MODULE]


def subprocess_env() -> dict[str, str]:
    """PYTHONPATH with the repo root, so the child imports `pipelines`/`hmpcl_lib` from any working directory."""
    current = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), current) if p)}


def k8s_pod_spec(pod_spec_file: str, gpus: int) -> dict[str, Any]:
    """Base pod spec for the training pod: the YAML file if given, with the GPU limit set on its first container."""
    import yaml

    spec: dict[str, Any] = {}
    if pod_spec_file:
        path = Path(pod_spec_file)
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            from hmpcl_lib.errors import InputError

            raise InputError(f"cannot read the training pod spec: {exc}", source=str(path)) from exc
    containers = spec.setdefault("containers", [{}])
    if gpus > 0:
        limits = containers[0].setdefault("resources", {}).setdefault("limits", {})
        limits["nvidia.com/gpu"] = str(gpus)
    return spec


def _k8s_client(load_incluster_config: bool):
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError as exc:  # optional extra
        raise dg.DagsterInvariantViolationError(
            "the 'k8s' training launcher needs dagster-k8s: pip install 'hmpcl[k8s]'") from exc
    return PipesK8sClient(load_incluster_config=load_incluster_config)


def launch_training(context: dg.AssetExecutionContext, launcher, extras: Mapping[str, Any]):
    """Run the Pipes training script with `extras` through the client `launcher.kind` names."""
    if launcher.kind == "subprocess":
        client = dg.PipesSubprocessClient(env=subprocess_env(), cwd=os.getcwd())
        command = training_command(launcher.python or sys.executable, launcher.nproc_per_node)
        context.log.info(f"launching training: {' '.join(command)}")
        return client.run(context=context, command=command, extras=dict(extras))
    if launcher.kind == "k8s":
        if not launcher.image:
            raise dg.DagsterInvariantViolationError("the k8s training launcher needs `image` (or HMPCL_IMAGE)")
        command = training_command(launcher.python or "python", launcher.nproc_per_node)
        context.log.info(f"launching training pod ({launcher.image}): {' '.join(command)}")
        return _k8s_client(launcher.load_incluster_config).run(
            context=context, extras=dict(extras), image=launcher.image, command=command,
            namespace=launcher.namespace, base_pod_spec=k8s_pod_spec(launcher.pod_spec_file, launcher.gpus))
    raise dg.DagsterInvariantViolationError(f"unknown training launcher {launcher.kind!r}: one of {LAUNCHER_KINDS}")


def _value(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    entry = metadata.get(key)
    if entry is None:
        return default
    return entry.value if isinstance(entry, dg.MetadataValue) else entry


def trained_model_from_metadata(metadata: Mapping[str, Any]) -> TrainedModel:
    """Rebuild the TrainedModel that the child trained from the materialization metadata it reported."""
    missing = [k for k in ("mlflow_run_id", "model_uri", "fingerprint") if _value(metadata, k) is None]
    if missing:
        raise dg.DagsterInvariantViolationError(f"the training process reported no {missing} in its materialization")
    final_loss = _value(metadata, "final_loss")
    return TrainedModel(
        run_id=str(_value(metadata, "mlflow_run_id")),
        model_uri=str(_value(metadata, "model_uri")),
        checkpoint=str(_value(metadata, "checkpoint", "")),
        fingerprint=str(_value(metadata, "fingerprint")),
        reused=bool(_value(metadata, "reused_finished_run", False)),
        final_loss=None if final_loss is None else float(final_loss),
        variant=str(_value(metadata, "loss", "")),
        params=dict(_value(metadata, "params", {}) or {}),
    )
