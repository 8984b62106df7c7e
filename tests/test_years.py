"""The corpus grows by year through the real assets: a year that lands is decoded and embedded alone, the index is
rebuilt, and the years already there are neither decoded nor embedded again (files untouched, no new
materializations). A year whose embedding dies part-way leaves nothing, and its rerun redoes that year only."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from hmpcl_lib import tracking
from pipelines.definitions import ALL_ASSETS
from pipelines.defs.checks import ALL_CHECKS
from pipelines.defs.resources import DataStore, MlflowTracking
from pipelines.defs.sensors import current_model_run, follow_up_requests

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TINY_TRAINING = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "image_size": 64, "embed_dim": 32}
FIRST, NEW = ["2018", "2019"], "2020"


def _materialize(env, selection, partition=None, **kw):
    return dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=selection, partition_key=partition,
                          resources=env["resources"], instance=env["instance"], **kw)


def _ingest(env, year):
    result = _materialize(env, ["raw_archives", "drawings", "decoded_drawings"], year,
                          run_config={"ops": {"decoded_drawings": {"config": {"image_size": 64}}}})
    assert result.success


def _files(store: DataStore, year: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of the year's pixel store and embeddings: what "untouched" means."""
    paths = [*(store.layout.root / "pixels" / store.layout.year_group(year)).rglob("*"),
             *(store.layout.root / "embeddings").rglob(f"{store.layout.year_group(year)}-*")]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths if p.is_file()}


def _materializations(env, asset: str, year: str) -> int:
    records = env["instance"].fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[year]), limit=100)
    return len(records.records)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("years")
    store = DataStore(root=str(root / "data"), source="sample", sample_n_classes=3, sample_subclasses_per_class=2,
                      sample_patents_per_subclass=4, sample_views_min=3, sample_views_max=4, sample_image_size=64,
                      sample_years=[2018, 2019, 2020], min_lic_coverage=0.8)
    mlflow_tracking = MlflowTracking(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "mlartifacts"),
                                     experiment="hmpcl-years", registered_model="hmpcl-years-encoder")
    env = {"store": store, "resources": {"store": store, "mlflow_tracking": mlflow_tracking},
           "instance": dg.DagsterInstance.ephemeral()}
    for year in FIRST:  # two years landed, a model trained on them, both embedded, published
        _ingest(env, year)
    assert _materialize(env, ["lic_codes", "lic_hierarchy", "splits", "trained_encoder"],
                        run_config={"ops": {"trained_encoder": {"config": TINY_TRAINING}}}).success
    for year in FIRST:
        assert _materialize(env, ["corpus_embeddings"], year).success
    assert _materialize(env, ["gallery_index", "retrieval_benchmark", "champion_model"]).success
    return env


def test_a_new_year_is_decoded_and_embedded_alone_and_joins_the_index(env, monkeypatch):
    store, layout = env["store"], env["store"].layout
    before = {year: _files(store, year) for year in FIRST}
    counts = {(a, y): _materializations(env, a, y) for a in ("decoded_drawings", "corpus_embeddings") for y in FIRST}
    model_run = current_model_run(env["instance"])

    _ingest(env, NEW)  # the year lands: parsed and decoded (ingest_year)
    real_load = tracking.load_model

    class DiesPartWay(torch.nn.Module):  # a pod lost in the middle of the year's embedding
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.output_dim = inner, inner.config, inner.output_dim

        def forward(self, x):
            raise RuntimeError("killed part-way")

    monkeypatch.setattr(tracking, "load_model", lambda *a, **k: DiesPartWay(real_load(*a, **k)))
    died = _materialize(env, ["corpus_embeddings"], NEW, raise_on_error=False)
    assert not died.success
    assert layout.year_embeddings_paths(model_run, NEW) == []  # nothing half-written to be mistaken for the year
    assert not list(layout.embeddings_dir(model_run).glob(".*.tmp"))
    monkeypatch.setattr(tracking, "load_model", real_load)

    again = _materialize(env, ["corpus_embeddings"], NEW)  # the rerun: this year only
    meta = again.get_asset_materialization_events()[0].materialization.metadata
    decoded = _materializations(env, "decoded_drawings", NEW)
    assert meta["embedded"].value is True and meta["drawings_embedded"].value == meta["dagster/row_count"].value > 0
    assert decoded == 1

    # what the follow-up sensor starts now: the index only (the model is benchmarked already)
    years = layout.years()
    embedded = {y for y in years if layout.year_embeddings_paths(model_run, y)}
    (request,) = follow_up_requests("embed_year", again.run_id, years, model_run, embedded,
                                    layout.benchmark_path(model_run).exists())
    assert request.job_name == "refresh_index"
    index = _materialize(env, ["gallery_index"])
    assert index.success
    index_meta = index.get_asset_materialization_events()[0].materialization.metadata
    per_year = index_meta["vectors_per_year"].value
    assert set(per_year) == {f"year={y}" for y in [*FIRST, NEW]} and per_year[f"year={NEW}"] == meta[
        "dagster/row_count"].value

    # the years already there: not decoded, not embedded, their files untouched and no new materializations
    assert {year: _files(store, year) for year in FIRST} == before
    assert {(a, y): _materializations(env, a, y) for a, y in counts} == counts


def test_the_index_refuses_a_year_the_model_has_not_embedded(env):
    """A year parsed but never embedded by this model is named, with what to run."""
    store = env["store"]  # the sample has no 2017: the year's parsed table is written by hand
    import polars as pl

    from hmpcl_lib.io import write_parquet_atomic

    drawings = pl.read_parquet(store.layout.drawings_path(NEW))
    extra = store.layout.drawings_path("2017")
    write_parquet_atomic(drawings.head(2).with_columns(pl.col("drawing_id") + "-copy").to_arrow(), extra)
    try:
        result = _materialize(env, ["gallery_index"], raise_on_error=False)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert "['2017']" in failure.message and "embed_year" in failure.message
    finally:
        extra.unlink()
