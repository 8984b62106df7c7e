"""Training loop, dataset and config (hmpcl_lib/train/loop.py, hmpcl_lib/modeling/dataset.py) on a tiny drawn corpus.

`make_drawing_table` is shared with test_training_resume.py and test_training_ddp.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw

from hmpcl_lib.modeling.dataset import DrawingDataset, collate
from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss
from hmpcl_lib.modeling.models import build_encoder, build_transform, load_encoder
from hmpcl_lib.train.cli import build_arg_parser
from hmpcl_lib.train.config import TrainConfig
from hmpcl_lib.train.loop import TrainingDivergedError, train
from hmpcl_lib.train import loop as training

CLASSES, SUBCLASSES, PATENTS, VIEWS = 3, 2, 5, 2


def _draw(klass: int, subclass: int, patent: int, view: int, size: int = 64) -> Image.Image:
    """Class = outline shape, subclass = inner hatching, patent = size/offset, view = small rotation."""
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    r = 14 + 3 * patent
    cx, cy = size // 2 + (patent % 3 - 1) * 4, size // 2 + (patent % 2) * 3
    box = (cx - r, cy - r, cx + r, cy + r)
    if klass == 0:
        d.ellipse(box, outline=0, width=2)
    elif klass == 1:
        d.rectangle(box, outline=0, width=2)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], outline=0, width=2)
    if subclass == 0:
        for k in range(-r, r, 6):
            d.line([(cx + k, cy - r // 2), (cx + k, cy + r // 2)], fill=0, width=1)
    else:
        d.line([(cx - r // 2, cy - r // 2), (cx + r // 2, cy + r // 2)], fill=0, width=3)
        d.line([(cx - r // 2, cy + r // 2), (cx + r // 2, cy - r // 2)], fill=0, width=3)
    return img.rotate(8 * view, fillcolor=255)


def make_drawing_table(root: Path) -> pl.DataFrame:
    """60 PNG line drawings: 3 classes x 2 subclasses x 5 patents x 2 views, with integer labels."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(CLASSES):
        for s in range(SUBCLASSES):
            for p in range(PATENTS):
                for v in range(VIEWS):
                    path = root / f"c{c}_s{s}_p{p}_v{v}.png"
                    _draw(c, s, p, v).save(path)
                    rows.append({
                        "drawing_id": path.stem, "image_path": str(path), "class_label": c,
                        "subclass_label": c * SUBCLASSES + s, "patent_label": (c * SUBCLASSES + s) * PATENTS + p,
                    })
    return pl.DataFrame(rows).with_columns(pl.col("^.*_label$").cast(pl.Int32))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def drawing_table(tmp_path_factory) -> pl.DataFrame:
    return make_drawing_table(tmp_path_factory.mktemp("drawings"))


def tiny_config(**overrides) -> TrainConfig:
    base = dict(weights="none", embed_dim=32, image_size=64, batch_size=16, epochs=2, steps_per_epoch=4,
                lr=1e-3, warmup_steps=1, num_workers=0, log_every=1, seed=0)
    return TrainConfig(**{**base, **overrides})


def full_set_loss(encoder, table: pl.DataFrame, image_size: int) -> float:
    """Hierarchical loss of all drawings at once, eval mode, eval transform: a stable measure of progress."""
    transform = build_transform(image_size, train=False, mean=encoder.config["mean"], std=encoder.config["std"])
    images, _ = collate([DrawingDataset(table["image_path"].to_list(), None, transform)[i] for i in range(table.height)])
    encoder.eval()
    with torch.no_grad():
        z = encoder(images)
    labels = [torch.from_numpy(table[c].to_numpy().astype(np.int64)) for c in ("patent_label", "subclass_label", "class_label")]
    return float(HierarchicalContrastiveLoss()(z, *labels))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": "triplet"}, "loss must be 'hierarchical' or 'baseline'"),
        ({"s_subclass": 1.5}, "s_patent > s_subclass"),
        ({"drawings_per_patent": 1}, "drawings_per_patent must be >= 2"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be >= 1"),
        ({"device": "tpu"}, "device must be"),
        ({"loss": "hierarchical", "target": "level", "coarse_temperature": 0.2}, "coarse_temperature needs the hierarchical loss"),
        ({"loss": "baseline", "coarse_temperature": 0.2}, "coarse_temperature needs the hierarchical loss"),
        ({"coarse_temperature": 0.0}, "coarse_temperature must be > 0"),
        ({"val_drawings": -1}, "val_drawings must be >= 0"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_the_configured_loss_is_the_one_built():
    loss = training.build_loss(TrainConfig(loss="hierarchical", target="cumulative-set", coarse_temperature=0.2))
    assert (loss.target, loss.coarse_temperature, loss.temperature) == ("cumulative-set", 0.2, pytest.approx(0.07))
    assert training.build_loss(TrainConfig(loss="hierarchical")).coarse_temperature is None


def test_cli_has_a_flag_for_every_config_field():
    parser = build_arg_parser()
    args = parser.parse_args(["--table", "t.parquet", "--out", "o", "--embed-dim", "none", "--learn-temperature", "true",
                              "--lr", "0.01", "--loss", "baseline", "--num-workers", "auto"])
    assert args.embed_dim is None and args.learn_temperature is True and args.lr == 0.01 and args.loss == "baseline"
    assert args.num_workers is None and args.epochs == TrainConfig().epochs
    help_text = parser.format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in help_text


# ---------------------------------------------------------------- dataset


def test_dataset_replicates_grey_to_rgb_and_returns_indices(drawing_table):
    dataset = DrawingDataset(drawing_table["image_path"].to_list(), None, build_transform(32, False, (0.5,) * 3, (0.5,) * 3))
    images, indices = collate([dataset[3], dataset[(5, 123)]])
    assert images.shape == (2, 3, 32, 32) and indices.tolist() == [3, 5]
    torch.testing.assert_close(images[0, 0], images[0, 2])  # grey replicated on every channel


def test_dataset_names_missing_and_broken_files(tmp_path, drawing_table):
    good = drawing_table["image_path"][0]
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good).read_bytes()[:200])
    dataset = DrawingDataset([good, str(tmp_path / "missing.png"), str(garbage), str(truncated)], None,
                             build_transform(32, train=False))
    with pytest.raises(InputError, match=r"missing\.png, record #1: image file is missing"):
        dataset[1]
    with pytest.raises(InputError, match=r"garbage\.png, record #2: image cannot be decoded"):
        dataset[2]
    with pytest.raises(InputError, match=r"truncated\.png, record #3: image cannot be decoded"):
        dataset[3]


def test_training_table_errors_are_clear(tmp_path, drawing_table):
    with pytest.raises(ValueError, match=r"lacks columns \['patent_label'\]"):
        train(tiny_config(), drawing_table.drop("patent_label"), tmp_path)
    broken = drawing_table.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("class_label"))
                                        .alias("class_label"))
    with pytest.raises(ValueError, match=r"class_label has 1 nulls \(first at row #7\)"):
        train(tiny_config(), broken, tmp_path)


# ---------------------------------------------------------------- training


def test_training_lowers_the_loss_and_writes_checkpoints(tmp_path, drawing_table):
    config = tiny_config(weights="package", epochs=2, steps_per_epoch=5, lr=2e-3, backbone_lr_mult=0.5)
    torch.manual_seed(config.seed)  # the same initial weights train() starts from
    before = full_set_loss(build_encoder(config.backbone, config.embed_dim, config.weights), drawing_table, 64)
    seen = []
    result = train(config, drawing_table, tmp_path, on_metrics=lambda step, m: seen.append((step, m)))
    after = full_set_loss(result.model, drawing_table, 64)
    assert after < before - 0.1, (before, after)

    step_metrics = [m for _, m in seen if "loss" in m]
    assert len(step_metrics) == 10
    assert set(step_metrics[0]) == {"loss", "lr", "temperature", "skipped_anchors", "images_per_s"}
    assert math.isclose(step_metrics[0]["temperature"], 0.07, rel_tol=1e-6)
    assert [s for s, m in seen if "epoch_loss" in m] == [5, 10]

    ckpt = torch.load(result.checkpoint_path, weights_only=True)  # checkpoints hold no pickled objects
    assert result.checkpoint_path == tmp_path / "checkpoints" / "last.pt"
    assert (ckpt["epoch"], ckpt["batches_done"], ckpt["step"]) == (2, 0, 10)
    exported = load_encoder(tmp_path / "encoder.pt")
    assert math.isclose(full_set_loss(exported, drawing_table, 64), after, rel_tol=1e-5)

    # a finished run is not redone: resume returns the stored model
    again = train(config, drawing_table, tmp_path)
    assert len(again.history) == len(result.history)


def test_resume_refuses_a_different_config_or_table(tmp_path, drawing_table):
    train(tiny_config(epochs=1, steps_per_epoch=1), drawing_table, tmp_path)
    with pytest.raises(Exception, match=r"config differs \(lr: checkpoint 0.001 vs now 0.01\)"):
        train(tiny_config(epochs=1, steps_per_epoch=1, lr=0.01), drawing_table, tmp_path)
    with pytest.raises(Exception, match="training table changed"):
        train(tiny_config(epochs=1, steps_per_epoch=1), drawing_table.reverse(), tmp_path)
    # fields that do not change the maths may differ
    train(tiny_config(epochs=1, steps_per_epoch=1, log_every=5, checkpoint_every_steps=3), drawing_table, tmp_path)
    # a checkpoint written before a field existed trained at what the field meant then, not at today's default
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["target"], ckpt["config"]["ema_decay"]
    torch.save(ckpt, path)
    with pytest.raises(Exception, match=r"config differs \(target: checkpoint 'item' vs now 'cumulative'\)"):
        train(tiny_config(epochs=1, steps_per_epoch=1), drawing_table, tmp_path)


class _NaNOnCall(HierarchicalContrastiveLoss):
    """A loss that turns NaN on its n-th call (what an exploding run looks like to the loop)."""

    def __init__(self, bad_call: int, **kw):
        super().__init__(**kw)
        self.bad_call, self.calls = bad_call, 0

    def forward(self, *args):
        self.calls += 1
        loss = super().forward(*args)
        return loss * float("nan") if self.calls == self.bad_call else loss


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, drawing_table, monkeypatch):
    monkeypatch.setattr(training, "build_loss", lambda config: _NaNOnCall(4))
    config = tiny_config(epochs=1, steps_per_epoch=6, checkpoint_every_steps=2)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 4: loss = nan; last good checkpoint kept at .*last\.pt"):
        train(config, drawing_table, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)  # checkpoints hold no pickled objects
    assert ckpt["step"] == 2 and ckpt["batches_done"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())

    monkeypatch.setattr(training, "build_loss", lambda config: _NaNOnCall(0))  # fixed: never NaN
    result = train(config, drawing_table, tmp_path)
    assert [h["step"] for h in result.history if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_huge_learning_rate_diverges_cleanly(tmp_path, drawing_table):
    with pytest.raises(TrainingDivergedError, match="diverged at step"):
        train(tiny_config(lr=1e30, backbone_lr_mult=1.0, grad_clip=None, weight_decay=0.0, epochs=3), drawing_table, tmp_path)


def test_one_device_rule_refuses_cuda_without_cuda(monkeypatch):
    from hmpcl_lib.modeling.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
