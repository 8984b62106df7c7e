"""Validation during training (hmpcl_lib/train/validation.py): metrics every epoch, the rule that picks the exported
weights, and that validating changes nothing of what a run learns."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from hmpcl_lib.train import validation as V
from hmpcl_lib.train.config import TrainConfig
from hmpcl_lib.train.loop import train
from test_training import make_drawing_table, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    table = make_drawing_table(tmp_path_factory.mktemp("drawings"))
    is_val = pl.col("patent_label") % 5 == 4  # one patent in five of each subclass
    return table.filter(~is_val), table.filter(is_val)


def test_validation_rows_take_whole_patents_the_same_every_time():
    patents = [0, 0, 0, 1, 1, 2, 3, 3, 4]
    table = pl.DataFrame({"image_path": [f"{i}.png" for i in range(9)], "patent_label": patents,
                          "subclass_label": [-1] * 4 + [5] * 5, "class_label": [7] * 9})
    rows = V.validation_rows(table, 4)
    assert rows.height <= 4 and rows["patent_id"].n_unique() >= 1
    for patent, n in rows.group_by("patent_id").len().iter_rows():  # whole patents, none with a single drawing
        assert n == patents.count(int(patent)) >= 2
    assert V.validation_rows(table.reverse(), 4).equals(rows)  # the order of the table does not matter
    every = V.validation_rows(table, 100)
    assert set(every["patent_id"]) == {"0", "1", "3"} and every["drawing_id"].to_list() == every["image_path"].to_list()
    assert every.filter(pl.col("subclass_code").is_null()).height == 4  # label -1: subclass unknown
    with pytest.raises(ValueError, match="lacks columns"):
        V.validation_rows(table.drop("patent_label"), 4)


def test_best_epoch_is_the_highest_score_and_the_later_on_a_tie():
    def entry(epoch, r1, pmap):
        return {"epoch": epoch, "epoch_loss": 1.0, "val_patent_recall_at_1": r1, "val_patent_map": pmap}

    assert V.best_epoch([entry(0, 0.5, 0.5), entry(1, 0.7, 0.5), entry(2, 0.6, 0.5)]) == 1
    assert V.best_epoch([entry(0, 0.5, 0.5), entry(1, 0.6, 0.4), entry(2, 0.4, 0.6)]) == 2  # a tie: the later
    assert V.best_epoch([{"epoch": 0, "epoch_loss": 1.0}, {"step": 3, "loss": 2.0}]) is None
    assert V.best_epoch([entry(0, 0.5, 0.5), entry(1, float("nan"), 0.9)]) == 0
    assert math.isnan(V.selection_score({"val_patent_map": 0.3}))


def test_validate_scores_a_perfect_and_a_useless_embedding():
    """validate's leave-one-out numbers on embeddings built to be right or wrong (a model that returns them)."""
    table = V.validation_rows(pl.DataFrame({"image_path": ["a0", "a1", "b0", "b1"], "patent_label": [0, 0, 1, 1],
                                            "subclass_label": [0, 0, 1, 1], "class_label": [0] * 4}), 100)

    def scored(vectors):
        import hmpcl_lib.retrieval.embedding as embedding

        original = embedding.embed_paths
        embedding.embed_paths = lambda *a, **k: np.asarray(vectors, dtype=np.float32)
        try:
            return V.validate(torch.nn.Identity(), table, 32)
        finally:
            embedding.embed_paths = original

    perfect = scored([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert perfect["patent_recall_at_1"] == 1.0 and perfect["patent_map"] == 1.0
    crossed = scored([[1, 0], [0, 1], [1, 0], [0, 1]])  # each drawing sits on the other patent's drawing
    assert crossed["patent_recall_at_1"] == 0.0 and crossed["patent_map"] == pytest.approx(5 / 12)  # ties keep id order


def test_every_epoch_is_validated_and_validation_changes_nothing_learned(corpus, tmp_path):
    train_table, val_table = corpus
    config = tiny_config(epochs=2)
    seen = []
    with_val = train(config, train_table, tmp_path / "a", validation=val_table,
                     on_metrics=lambda step, m: seen.append(m) if "epoch_loss" in m else None)
    without = train(config, train_table, tmp_path / "b")
    epochs = [h for h in with_val.history if "epoch_loss" in h]
    assert [h["epoch"] for h in epochs] == [0, 1]
    for h, reported in zip(epochs, seen):
        for m in V.VAL_METRICS:
            assert 0.0 <= h[f"val_{m}"] <= 1.0 and reported[f"val_{m}"] == h[f"val_{m}"]
    assert with_val.exported_epoch == 1
    for (name, a), (_, b) in zip(with_val.model.state_dict().items(), without.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_best_val_exports_the_best_epoch_and_keeps_it_across_a_resume(corpus, tmp_path, monkeypatch):
    """A scripted validation score peaks at epoch 1 of 3: the run exports epoch 1's weights, bit for bit, and so does
    the same run restarted from its checkpoint (the weights kept on disk, the scores in the history)."""
    train_table, val_table = corpus
    scores = {0: 0.2, 1: 0.9, 2: 0.5}
    calls = []

    def scripted(model, rows, *args, **kwargs):
        epoch = len(calls)
        calls.append(epoch)
        return {"patent_map": scores[epoch], "patent_recall_at_1": scores[epoch],
                "subclass_map_at_100": 0.0, "class_map_at_100": 0.0}

    monkeypatch.setattr(V, "validate", scripted)
    snapshots = {}
    original_save = V.save_best

    def save_and_remember(model, folder):
        snapshots[len(calls) - 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return original_save(model, folder)

    monkeypatch.setattr(V, "save_best", save_and_remember)
    config = tiny_config(epochs=3, export_weights="best-val")
    result = train(config, train_table, tmp_path / "full", validation=val_table)
    assert result.exported_epoch == 1 and sorted(snapshots) == [0, 1]
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][name], rtol=0, atol=0, msg=name)

    # the finished run, restarted in its folder, resumes from its last checkpoint and still exports epoch 1
    resumed = train(config, train_table, tmp_path / "full", validation=val_table)
    assert resumed.exported_epoch == 1
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][name], rtol=0, atol=0, msg=name)


def test_export_rule_needs_validation():
    with pytest.raises(ValueError, match="export_weights"):
        TrainConfig(export_weights="best")
    with pytest.raises(ValueError, match="needs val_drawings > 0"):
        TrainConfig(export_weights="best-val", val_drawings=0)


def test_hmpcl_train_validates_on_the_splits_val_split(corpus, tmp_path, capsys):
    """`hmpcl-train --splits` scores the splits table's validation drawings every epoch and says what it exported;
    a splits table without a validation split trains without validation."""
    import json

    from hmpcl_lib.train import cli

    train_table, val_table = corpus
    table = pl.concat([train_table, val_table]).with_columns(pl.col("image_path").alias("drawing_id"))
    table.write_parquet(tmp_path / "table.parquet")
    flags = ["--weights", "none", "--embed-dim", "32", "--image-size", "64", "--batch-size", "16", "--epochs", "1",
             "--steps-per-epoch", "2", "--warmup-steps", "1", "--num-workers", "0", "--export-weights", "best-val"]
    for name, val_split in (("with", "val"), ("without", "train")):
        splits = table.select("drawing_id", split=pl.when(pl.col("drawing_id").is_in(val_table["image_path"].to_list()))
                              .then(pl.lit(val_split)).otherwise(pl.lit("train")))
        splits.write_parquet(tmp_path / f"{name}.parquet")
        assert cli.main(["--table", str(tmp_path / "table.parquet"), "--splits", str(tmp_path / f"{name}.parquet"),
                         "--out", str(tmp_path / name), *flags]) == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert printed["exported_epoch"] == 0
        assert ("val_patent_recall_at_1" in printed) is (name == "with")
