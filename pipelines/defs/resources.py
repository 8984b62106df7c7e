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

    def year_drawings(self, year: str | int):
        """(drawing_id, image_path) of every parsed drawing of the year: what its pixel store holds."""
        import polars as pl

        path = self.layout.drawings_path(year)
        if not path.exists():
            raise dg.Failure(f"year {year} is not parsed ({path} is missing): materialize `drawings` for it first")
        return pl.read_parquet(path, columns=["drawing_id", "image_path"])

    def year_pixels(self, year: str | int, image_size: int):
        """The year's pixel store at `image_size` (hmpcl_lib.modeling.pixels): keyed by that year's own files, so
        built once and reused whatever the labels, the splits, the model or the other years do."""
        from hmpcl_lib.modeling.pixels import ensure_pixel_store

        return ensure_pixel_store(self.year_drawings(year), self.layout.root, image_size,
                                  group=self.layout.year_group(year))

    def pixels(self, image_size: int):
        """Every parsed year's pixel store at `image_size`, read as one (`PixelStoreSet`): what training, validation
        and the benchmarks read. A year whose store is missing or stale is decoded here (logged), so a caller never
        reads pixels that are not the year's files; the pipeline's `decoded_drawings` partitions build them first."""
        from hmpcl_lib.modeling.pixels import PixelStoreSet

        years = self.layout.years()
        if not years:
            raise dg.Failure("no parsed drawings yet: materialize `drawings` for at least one year first")
        return PixelStoreSet([self.year_pixels(year, image_size) for year in years])

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
