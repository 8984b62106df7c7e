"""End to end through Dagster: a tiny generated sample → data assets → training → embeddings → index → benchmark →
registry → comparison, with MLflow in a temporary sqlite store."""

from __future__ import annotations

import dagster as dg
import mlflow
import polars as pl
import pytest

from pipelines.defs.checks import ALL_CHECKS
from pipelines.definitions import ALL_ASSETS
from pipelines.defs.assets.data import drawings, raw_archives
from pipelines.defs.resources import DataStore, MlflowTracking

pytestmark = pytest.mark.slow

TINY_TRAINING = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 16, "image_size": 64, "embed_dim": 32}
MODEL = ["lic_codes", "lic_hierarchy", "splits", "trained_encoder"]
PUBLISH = ["gallery_index", "retrieval_benchmark", "champion_model"]
UNPARTITIONED = MODEL + PUBLISH
VARIANTS = ["pretrained", "baseline", "hierarchical"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    store = DataStore(root=str(root / "data"), source="sample", sample_n_classes=3, sample_subclasses_per_class=2,
                      sample_patents_per_subclass=4, sample_views_min=3, sample_views_max=4, sample_image_size=64,
                      min_lic_coverage=0.8)
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "mlartifacts"),
                              experiment="hmpcl-test", registered_model="hmpcl-test-encoder")
    resources = {"store": store, "mlflow_tracking": tracking}
    instance = dg.DagsterInstance.ephemeral()
    years = {}
    for year in store.sample_years:  # ingest_year, then the model, then embed_year, then publish: make run's order
        years[year] = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=["raw_archives", "drawings", "decoded_drawings"],
                                     partition_key=str(year), resources=resources, instance=instance,
                                     run_config={"ops": {"decoded_drawings": {"config": {"image_size": 64}}}})
        assert years[year].success
    run_config = {"ops": {"trained_encoder": {"config": TINY_TRAINING}}}
    model = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=MODEL, resources=resources, instance=instance,
                           run_config=run_config)
    assert model.success
    embedded = {year: dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=["corpus_embeddings"], partition_key=str(year),
                                     resources=resources, instance=instance) for year in store.sample_years}
    result = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=PUBLISH, resources=resources, instance=instance)
    variants = {v: dg.materialize([*ALL_ASSETS], selection=["variant_encoder", "variant_benchmark"], partition_key=v,
                                  resources=resources, instance=instance,
                                  run_config={"ops": {"variant_encoder": {"config": TINY_TRAINING}}})
                for v in VARIANTS}
    comparison = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=["model_comparison"], resources=resources,
                                instance=instance)
    return {"store": store, "tracking": tracking, "result": result, "resources": resources, "variants": variants,
            "years": years, "model": model, "embedded": embedded,
            "comparison": comparison, "instance": instance, "run_config": run_config}


def test_every_asset_materializes_and_checks_pass(env):
    runs = [env["result"], env["model"], *env["years"].values(), *env["embedded"].values()]
    assert all(r.success for r in runs) and env["comparison"].success
    assert all(r.success for r in env["variants"].values())
    materialized = {e.asset_key.path[-1] for r in runs for e in r.get_asset_materialization_events()}
    assert set(UNPARTITIONED) | {"decoded_drawings", "corpus_embeddings"} <= materialized
    checks = {(e.asset_check_key.name, r.run_id): e.passed for r in runs for e in r.get_asset_check_evaluations()}
    assert {name for name, _ in checks} >= {"pixel_store_matches_drawings", "embeddings_finite_and_normalised"}
    assert all(passed for (name, _), passed in checks.items() if name != "fine_tuning_beats_pretrained"), checks
    assert "fine_tuning_beats_pretrained" in {e.asset_check_key.name
                                              for e in env["comparison"].get_asset_check_evaluations()}


def test_variants_are_partitions_and_the_default_one_reuses_trained_encoder(env):
    trained = env["model"].output_for_node("trained_encoder")
    baseline = env["variants"]["baseline"].output_for_node("variant_encoder")  # the default loss since issue 28
    assert baseline.reused and baseline.run_id == trained.run_id  # same config + data: not trained twice
    hierarchical = env["variants"]["hierarchical"].output_for_node("variant_encoder")
    assert hierarchical.params["loss"] == "hierarchical" and not hierarchical.reused
    assert env["variants"]["pretrained"].output_for_node("variant_encoder").variant == "pretrained"
    for v in VARIANTS:
        saved = env["store"].layout.variant_dir(v)
        assert (saved / "variant.json").is_file() and (saved / "leave_one_out.per_query.parquet").is_file()


def test_comparison_refuses_a_missing_variant(env, tmp_path):
    from pipelines.defs.assets.comparison import read_variants

    store = env["store"]
    empty = store.model_copy(update={"root": str(tmp_path)})
    (tmp_path / "parsed").mkdir()
    import shutil

    shutil.copy(store.layout.splits_path, empty.layout.splits_path)
    with pytest.raises(dg.Failure, match="pretrained: not benchmarked yet"):
        read_variants(empty)


def test_data_tables_are_consistent(env):
    store = env["store"]
    hier = pl.read_parquet(store.layout.hierarchy_path)
    spl = pl.read_parquet(store.layout.splits_path)
    assert hier["class_code"].n_unique() == 3
    assert set(spl["drawing_id"]) == set(hier["drawing_id"])
    quarantine = pl.read_parquet(store.layout.quarantine_path(2019))
    assert {"source", "record", "reason"} <= set(quarantine.columns)


def test_comparison_table_and_mlflow(env):
    table = env["comparison"].output_for_node("model_comparison")
    for protocol in ("deeppatent", "leave_one_out"):
        rows = table.filter(pl.col("protocol") == protocol)
        assert rows["model"].to_list() == ["pretrained", "baseline", "hierarchical"]
    loo, headline = table.filter(pl.col("protocol") == "leave_one_out"), table.filter(pl.col("protocol") == "deeppatent")
    assert (loo["n_queries"] > headline["n_queries"]).all()
    for column in ("patent_map", "subclass_map_at_100", "class_map_at_100", "graded_ndcg_at_10"):
        assert table[column].is_between(0, 1).all()
    cfg = env["tracking"].config
    mlflow.set_tracking_uri(cfg.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.experiment])
    assert {"train-hierarchical", "train-baseline", "pretrained", "model-comparison"} <= set(runs["tags.mlflow.runName"])
    trained = runs[runs["tags.mlflow.runName"] == "train-baseline"].iloc[0]  # trained_encoder's run: the default loss
    assert trained["tags.hmpcl.data_source"] == "sample"  # the search page's model card reads it
    inputs = mlflow.get_run(trained["run_id"]).inputs.dataset_inputs
    contexts = {(i.dataset.name, t.value) for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert {("lic_hierarchy", "training"), ("splits", "training"), ("test_split", "evaluation")} <= contexts
    champion_meta = next(e.event_specific_data.materialization.metadata
                         for e in env["result"].get_asset_materialization_events()
                         if e.asset_key.path[-1] == "champion_model")
    assert "mlflow models serve" in champion_meta["serve_it"].value and "make search" in champion_meta["search_it"].value
    assert trained["metrics.patent_map"] >= 0 and trained["params.loss"] == "baseline"
    from hmpcl_lib import tracking

    champion = tracking.load_model(cfg, f"models:/{cfg.registered_model}@champion")  # safetensors weights only
    import torch

    with torch.inference_mode():
        z = champion(torch.zeros(2, 3, 64, 64))
    assert z.shape == (2, 32)
    from hmpcl_lib.tracking.model_source import model_card

    card = model_card(f"models:/{cfg.registered_model}@champion", None, cfg.tracking_uri)  # what `hmpcl serve` says
    assert card.demo and card.run_id == trained["run_id"] and card.train_drawings == int(trained["params.train_drawings"])


def test_rematerializing_reuses_the_run_and_registry_version(env):
    cfg = env["tracking"].config
    mlflow.set_tracking_uri(cfg.tracking_uri)
    before = len(mlflow.search_runs(experiment_names=[cfg.experiment]))
    result = dg.materialize([*ALL_ASSETS], selection=["trained_encoder"], resources=env["resources"],
                            instance=env["instance"], run_config=env["run_config"])
    assert result.success and result.output_for_node("trained_encoder").reused
    assert dg.materialize([*ALL_ASSETS], selection=["retrieval_benchmark", "champion_model"],
                          resources=env["resources"], instance=env["instance"]).success
    assert len(mlflow.search_runs(experiment_names=[cfg.experiment])) == before
    versions = mlflow.MlflowClient().search_model_versions(f"name='{cfg.registered_model}'")
    assert len(versions) == 1


def _hashes(paths) -> dict[str, str]:
    from hmpcl_lib.io import file_sha256

    return {str(p): file_sha256(p) for p in paths}


def test_rematerializing_data_gives_identical_files(env):
    store = env["store"]
    parsed = sorted((store.base / "parsed").rglob("*.parquet"))
    embeddings = sorted((store.base / "embeddings").rglob("*.parquet"))
    assert len(embeddings) == len(store.sample_years)  # one file per year
    before = _hashes(parsed + embeddings)
    for year in store.sample_years:
        assert dg.materialize([raw_archives, drawings], partition_key=str(year), resources=env["resources"],
                              instance=env["instance"]).success
    result = dg.materialize([*ALL_ASSETS], selection=["lic_codes", "lic_hierarchy", "splits", "trained_encoder"],
                            resources=env["resources"], instance=env["instance"], run_config=env["run_config"])
    assert result.success
    for year in store.sample_years:
        again = dg.materialize([*ALL_ASSETS], selection=["corpus_embeddings"], partition_key=str(year),
                               resources=env["resources"], instance=env["instance"])
        assert again.success
        meta = again.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
        assert meta["embedded"].value is False and meta["drawings_embedded"].value == 0  # same model, same pixels
    assert _hashes(parsed + embeddings) == before


def test_search_cli_finds_the_champions_index(env, monkeypatch, capsys):
    from hmpcl_lib.cli.search import main

    store, cfg = env["store"], env["tracking"].config
    monkeypatch.setenv("HMPCL_DATA_ROOT", str(store.base))
    hier = pl.read_parquet(store.layout.hierarchy_path)
    query = hier.sort("drawing_id")["image_path"][0]
    code = main(["--image", query, "-k", "3", "--model-uri", f"models:/{cfg.registered_model}@champion",
                 "--tracking-uri", cfg.tracking_uri, "--hierarchy", str(store.layout.hierarchy_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert hier.sort("drawing_id")["drawing_id"][0] in out  # the drawing itself is in the corpus index
