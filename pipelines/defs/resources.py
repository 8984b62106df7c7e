"""Resources: where files live (DataStore) and where runs are tracked (MlflowTracking).

Defaults come from environment variables so the same definitions serve the bundled sample, a workstation with real
DeepPatent2 and a cluster: HMPCL_DATA_ROOT, HMPCL_SOURCE (sample | deeppatent2), HMPCL_USPTO_XML_DIR,
MLFLOW_TRACKING_URI, HMPCL_MLFLOW_ARTIFACTS.
"""


import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from hmpcl_lib.layout import DataLayout, default_data_root
from hmpcl_lib.sample.spec import SampleSpec
from hmpcl_lib.tracking import TrackingConfig, default_artifact_root, default_tracking_uri, default_ui_url


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class DataStore(dg.ConfigurableResource):
    """The data root and the source feeding it: the generated sample or real DeepPatent2 + USPTO grant XML."""

    root: str = Field(default_factory=default_data_root)
    source: str = Field(default_factory=lambda: _env("HMPCL_SOURCE", "sample"),
                        description="'sample' (generated, offline) or 'deeppatent2' (Harvard Dataverse)")
    dataverse_url: str = "https://dataverse.harvard.edu"
    doi: str = "doi:10.7910/DVN/UG4SBD"
    uspto_xml_dir: str = Field(default_factory=lambda: _env("HMPCL_USPTO_XML_DIR", ""),
                               description="folder of USPTO weekly grant XML files (ipgYYMMDD.xml) for real data")
    decode_once: bool = Field(default_factory=lambda: _env("HMPCL_DECODE_ONCE", "1") not in ("0", "false"),
                              description="embed from the decoded pixel store (decoded_drawings), not PNGs")
    train_from_pixels: bool = Field(
        default_factory=lambda: _env("HMPCL_TRAIN_FROM_PIXELS", "0") not in ("0", "false"),
        description="train from the pixel store too (for GPUs, where PNG decoding is the ceiling); off by default: "
                    "on the sample its batched augmentation gave lower retrieval scores than the PNG path")
    max_bad_fraction: float = 0.05
    min_lic_coverage: float = Field(default=0.9, description="lic_hierarchy check: share of drawings with a LIC code")
    # the generated corpus's size: SampleSpec's own defaults, settable from the launchpad
    sample_n_classes: int = SampleSpec.n_classes
    sample_subclasses_per_class: int = SampleSpec.subclasses_per_class
    sample_patents_per_subclass: int = SampleSpec.patents_per_subclass
    sample_views_min: int = SampleSpec.views[0]
    sample_views_max: int = SampleSpec.views[1]
    sample_years: list[int] = list(SampleSpec.years)
    sample_image_size: int = SampleSpec.image_size
    sample_seed: int = SampleSpec.seed

    @property
    def layout(self) -> DataLayout:
        """Every path under the data root (`hmpcl_lib.layout.DataLayout`)."""
        return DataLayout(Path(self.root))

    @property
    def base(self) -> Path:
        return self.layout.root

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(n_classes=self.sample_n_classes, subclasses_per_class=self.sample_subclasses_per_class,
                          patents_per_subclass=self.sample_patents_per_subclass,
                          views=(self.sample_views_min, self.sample_views_max), years=tuple(self.sample_years),
                          image_size=self.sample_image_size, seed=self.sample_seed)

    def pixels(self, rows, image_size: int):
        """The decoded pixel store of `rows` at `image_size` (built once, then reused; see
        hmpcl_lib.modeling.pixels), or None when `decode_once` is off and PNGs are read instead."""
        if not self.decode_once:
            return None
        from hmpcl_lib.modeling.pixels import ensure_pixel_store

        return ensure_pixel_store(rows, self.layout.root, image_size)

    def uspto_dir(self) -> Path:
        return Path(self.uspto_xml_dir).expanduser().resolve() if self.uspto_xml_dir else self.layout.uspto_dir


class MlflowTracking(dg.ConfigurableResource):
    """Our MLflow resource (dagster-mlflow is the old resource style): tracking URI, experiment and registry names."""

    tracking_uri: str = Field(default_factory=default_tracking_uri)
    experiment: str = TrackingConfig.experiment  # the library's TrackingConfig holds every default
    registered_model: str = TrackingConfig.registered_model
    artifact_root: str = Field(default_factory=default_artifact_root)
    ui_url: str = Field(default_factory=default_ui_url)

    @property
    def config(self) -> TrackingConfig:
        return TrackingConfig(self.tracking_uri, self.experiment, self.registered_model, self.artifact_root,
                              self.ui_url)


class TrainingLauncher(dg.ConfigurableResource):
    """Where `trained_encoder` runs training through Dagster Pipes: a local subprocess or a Kubernetes pod,
    optionally under torchrun. Switching is config only (these fields, or the HMPCL_TRAINING_* env vars)."""

    kind: str = Field(default_factory=lambda: _env("HMPCL_TRAINING_LAUNCHER", "subprocess"),
                      description="'subprocess' (dg.PipesSubprocessClient) or 'k8s' (dagster_k8s.PipesK8sClient)")
    nproc_per_node: int = Field(default_factory=lambda: int(_env("HMPCL_TRAINING_NPROC", "1")),
                                description="> 1: run the training script under torchrun with this many processes")
    python: str = Field(default="", description="interpreter; '' = the current one (subprocess), 'python' (k8s)")
    image: str = Field(default_factory=lambda: _env("HMPCL_IMAGE", ""), description="k8s: the training image")
    namespace: str = Field(default_factory=lambda: _env("HMPCL_K8S_NAMESPACE", "dagster"))
    pod_spec_file: str = Field(default_factory=lambda: _env("HMPCL_K8S_POD_SPEC", ""),
                               description="k8s: YAML base pod spec (GPU limits, volumes, tolerations)")
    gpus: int = Field(default=1, description="k8s: nvidia.com/gpu limit of the training container")
    load_incluster_config: bool = Field(default=True, description="k8s: False uses the local kubeconfig")

    def launch(self, context: dg.AssetExecutionContext, extras: dict) -> "dg.PipesClientCompletedInvocation":
        from pipelines.launchers import launch_training

        return launch_training(context, self, extras)
