"""`hmpcl sweep` end to end on a tiny drawn corpus: trains, logs a parent run with child runs, resumes."""

from __future__ import annotations

import dataclasses
import mlflow
import polars as pl
import pytest
import torch

from hmpcl_lib import cli
from hmpcl_lib.experiments import sweep
from hmpcl_lib.modeling.models import load_encoder, wise
from hmpcl_lib.train.config import TrainConfig, config_from_strings
from hmpcl_lib.train.loop import initial_encoder
from test_training import make_drawing_table

TINY_EPOCHS = 1
TINY = ["weights=none", "embed_dim=16", "image_size=48", "batch_size=16", f"epochs={TINY_EPOCHS}", "steps_per_epoch=2",
        "warmup_steps=1", "num_workers=0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _data_root(tmp_path):
    table = make_drawing_table(tmp_path / "png")
    hierarchy = table.with_columns(
        patent_id=pl.format("USD{}-20200101", pl.col("patent_label")),
        class_code=pl.format("0{}", pl.col("class_label") + 1),
        subclass_code=pl.format("0{}-0{}", pl.col("class_label") + 1, pl.col("subclass_label") + 1))
    # patents 3 and 4 of every subclass are test (first view = query), patent 2 validation, the rest train
    test = pl.col("is_test")
    splits = hierarchy.select("drawing_id", "patent_id", is_test=(pl.col("patent_label") % 5) >= 3,
                              is_val=(pl.col("patent_label") % 5) == 2).with_columns(
        split=pl.when(test).then(pl.lit("test")).when(pl.col("is_val")).then(pl.lit("val")).otherwise(pl.lit("train")),
        role=pl.when(~test).then(pl.lit("train")).when(pl.col("drawing_id").str.ends_with("_v0"))
        .then(pl.lit("query")).otherwise(pl.lit("gallery"))).drop("is_test", "is_val")
    (tmp_path / "parsed").mkdir()
    hierarchy.write_parquet(tmp_path / "parsed" / "lic_hierarchy.parquet")
    splits.write_parquet(tmp_path / "parsed" / "splits.parquet")
    return tmp_path


def test_sweep_trains_logs_children_and_resumes(tmp_path, capsys, monkeypatch):
    root = _data_root(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # MLflow artifacts land under the test folder
    args = ["sweep", "--data-root", str(root), "--variant", "cumulative", "--variant", "pretrained", "--seeds", "0",
            "--tracking-uri", uri, "--name", "tiny", *[a for s in TINY for a in ("--set", s)]]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")][:3] for line in out.splitlines() if line.startswith("|")]
    assert ["baseline", "head", "1"] in rows and ["cumulative", "pooled", "1"] in rows and "Δ" in out
    assert ["cumulative", "fused", "1"] in rows and ["pretrained", "head", "1"] in rows
    folder = root / "sweeps" / "tiny"
    for variant in ("baseline", "cumulative"):
        saved = pl.read_parquet(sweep.run_path(folder, variant, 0))
        assert set(saved["protocol"]) == {"deeppatent", "leave_one_out"} and set(saved["features"]) == set(sweep.SCORED)
        assert saved.filter(pl.col("protocol") == "leave_one_out").height == 3 * 2 * 2 * 2 * 4  # test drawings x 4
        assert sweep.model_path(folder, variant, 0).exists()  # the trained encoder, kept for later views
    untouched = pl.read_parquet(sweep.run_path(folder, "pretrained", 0))  # scored, not trained: one view, no model
    assert set(untouched["features"]) == set(sweep.UNTOUCHED_VIEWS) and not sweep.model_path(folder, "pretrained", 0).exists()
    # query-side augmentation changes only the queries' vectors: the leave-one-out gallery is the same drawings
    flip = untouched.filter(pl.col("features") == "head-flip")
    assert flip.height == untouched.filter(pl.col("features") == "head").height
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["hmpcl"])
    parent = runs[runs["tags.mlflow.runName"] == "tiny"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert sorted(children["tags.mlflow.runName"]) == ["baseline-seed0", "cumulative-seed0"]
    assert children["metrics.leave_one_out.head.patent_map"].between(0, 1).all()
    for run_id in children["run_id"]:  # the validation curve of every trained run, one point per epoch
        curve = mlflow.MlflowClient().get_metric_history(run_id, "val_patent_recall_at_1")
        assert len(curve) == TINY_EPOCHS and all(0 <= m.value <= 1 for m in curve)
    curves = pl.read_parquet(sweep.curves_path(folder, "cumulative", 0))
    assert curves["epoch"].to_list() == list(range(TINY_EPOCHS)) and curves["exported"].to_list()[-1]

    monkeypatch.setattr("hmpcl_lib.train.loop.train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    path = sweep.run_path(folder, "cumulative", 0)
    full = pl.read_parquet(path)
    full.filter(pl.col("features") != "fused").write_parquet(path)  # a run saved before the fused view existed
    capsys.readouterr()
    assert cli.main([*args, "--set", "epochs=2"]) == 1  # another config under the same name: refused, not reused
    err = capsys.readouterr().err
    assert str(sweep.run_path(folder, "baseline", 0)) in err and "epochs: saved 1, now 2" in err
    assert cli.main([*args, "--set", "num_workers=1"]) == 0  # where it runs is no part of what it learned
    assert cli.main([*args, "--variant", "cumulative-wise-.5"]) == 0  # WiSE-FT of the saved run: no training
    derived = load_encoder(sweep.model_path(folder, "cumulative-wise-.5", 0))
    config = config_from_strings(TINY, TrainConfig(wise_alpha=0.5))
    expected = wise(load_encoder(sweep.model_path(folder, "cumulative", 0)), initial_encoder(config), 0.5)
    assert all(torch.allclose(v, expected.state_dict()[k]) for k, v in derived.state_dict().items())
    assert set(pl.read_parquet(sweep.run_path(folder, "cumulative-wise-.5", 0))["features"]) == set(sweep.SCORED)
    assert len(mlflow.search_runs(experiment_names=["hmpcl"])) == len(runs) + 2  # another variant list: a parent, a child (none for the refused sweep)
    completed = pl.read_parquet(path)  # the missing view scored again from the saved model
    assert completed.height == full.height and set(completed["features"]) == set(sweep.SCORED)
    means = [sweep.overall(f.filter(pl.col("features") == "fused")).sort("protocol") for f in (full, completed)]
    # the same weights (a saved file holds the contiguous layout, training ran channels_last: float noise only)
    assert abs(means[0]["patent_map"] - means[1]["patent_map"]).max() < 0.05


def test_sweep_refuses_unknown_variants_and_missing_data(tmp_path, capsys):
    assert cli.main(["sweep", "--data-root", str(tmp_path), "--variant", "nope", "--no-mlflow"]) == 1
    assert "unknown variant" in capsys.readouterr().err
    assert cli.main(["sweep", "--data-root", str(tmp_path), "--variant", "level", "--no-mlflow"]) == 1
    assert "make run" in capsys.readouterr().err


def test_the_sweep_and_the_comparison_share_one_variant_registry(tmp_path, capsys):
    from hmpcl_lib.experiments import variants

    assert set(variants.COMPARISON) <= set(variants.VARIANTS) and set(variants.SWEEP) <= set(variants.TRAINED)
    assert variants.VARIANTS["pretrained"] is None and "pretrained" not in variants.TRAINED
    assert "pretrained" in variants.UNTOUCHED and not set(variants.UNTOUCHED) & set(variants.TRAINED)
    assert cli.main(["sweep", "--data-root", str(tmp_path), "--variant", "pretrained-999px", "--no-mlflow"]) == 1
    assert "unknown variant(s) ['pretrained-999px'] for a sweep" in capsys.readouterr().err


def test_the_default_variant_is_what_ships_whatever_the_defaults_become():
    """`--variant default` trains TrainConfig() exactly: no override of its own, so a changed default moves it too."""
    import dataclasses

    from hmpcl_lib.experiments import variants
    from hmpcl_lib.train import config as config_module

    assert variants.variant_config(config_module.TrainConfig(), "default") == config_module.TrainConfig()
    moved = dataclasses.replace(config_module.TrainConfig(), loss="baseline", epochs=3)
    assert variants.variant_config(moved, "default") == moved
    assert "default" in variants.TRAINED and "default" not in variants.SWEEP  # not a hypothesis of its own


def test_a_field_added_since_a_run_was_saved_counts_as_what_it_meant_before(tmp_path):
    """A saved run (or checkpoint) lacks the fields added after it: each takes the value it had before it existed,
    not today's default, which may have changed since (target "item" became "cumulative")."""
    import json

    from hmpcl_lib.errors import HmpclError
    from hmpcl_lib.train.config import BEFORE_IT_EXISTED, saved_config_values

    base = TrainConfig()
    old = json.loads(sweep.run_key(dataclasses.replace(base, target="item")))
    for name in BEFORE_IT_EXISTED:
        old.pop(name, None)
    path = tmp_path / "seed=0.parquet"
    pl.DataFrame({"train_config": [json.dumps(old)]}).write_parquet(path)
    sweep._check_same_run(path, base, {"target": "item"}, 0, True)  # the same run as then: reused
    with pytest.raises(HmpclError, match=r"target: saved 'item', now 'cumulative'"):
        sweep._check_same_run(path, base, {}, 0, True)
    with pytest.raises(HmpclError, match=r"ema_decay: saved 0.0, now 0.5"):
        sweep._check_same_run(path, base, {"target": "item", "ema_decay": 0.5}, 0, True)
    assert saved_config_values({})["frozen_stages"] == 0 and saved_config_values({"epochs": 3})["epochs"] == 3
