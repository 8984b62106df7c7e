"""Keeping what the pretrained backbone knows (issue 22, round 2): frozen early stages, L2-SP and WiSE-FT
(`models.freeze_stages`, `models.wise`, `loop._l2sp_penalty`, TrainConfig `frozen_stages`, `l2sp`, `wise_alpha`);
and round 7's moving average of the weights (TrainConfig `ema_decay`, timm's ModelEmaV3)."""

from __future__ import annotations

import copy

import pytest
import torch

from hmpcl_lib.modeling.models import MirrorAveraged, build_encoder, freeze_stages, load_encoder, wise
from hmpcl_lib.train import loop as training
from hmpcl_lib.train.loop import initial_encoder, train
from test_training import make_drawing_table, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def drawing_table(tmp_path_factory):
    return make_drawing_table(tmp_path_factory.mktemp("drawings"))


def _backbone_distance(a, b, params_only: bool = False) -> float:
    """|w_a - w_b| over the backbone's floating-point state (weights and BatchNorm statistics, or weights only)."""
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    keys = dict(a.backbone.named_parameters()) if params_only else [k for k in sa if sa[k].is_floating_point()]
    return float(sum((sa[k].float() - sb[k].float()).pow(2).sum() for k in keys) ** 0.5)


def test_frozen_stages_keep_their_weights_and_batchnorm_statistics(tmp_path, drawing_table):
    config = tiny_config(frozen_stages=2, epochs=1, steps_per_epoch=2, backbone_lr_mult=1.0)
    trained = train(config, drawing_table, tmp_path / "run", resume=False).model
    start = initial_encoder(config)
    for name in ("conv_stem", "bn1", "blocks.0", "blocks.1"):
        a, b = trained.backbone.get_submodule(name).state_dict(), start.backbone.get_submodule(name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} changed while frozen"
    moved = trained.backbone.get_submodule("blocks.2").state_dict()
    kept = start.backbone.get_submodule("blocks.2").state_dict()
    assert any(not torch.equal(moved[k], kept[k]) for k in moved), "the first unfrozen stage did not train"


def test_frozen_stages_refuse_more_stages_than_the_backbone_has():
    backbone = build_encoder(weights="none").backbone
    with pytest.raises(ValueError, match="has 7 stages"):
        freeze_stages(backbone, 8)
    assert freeze_stages(backbone, 0) == [] and all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="frozen_stages must be >= 0"):
        tiny_config(frozen_stages=-1)


def test_l2sp_pulls_the_backbone_towards_its_start_instead_of_zero(tmp_path, drawing_table):
    free, pulled = (tiny_config(l2sp=alpha, epochs=1, steps_per_epoch=4, backbone_lr_mult=1.0) for alpha in (0.0, 1e4))
    runs = {c.l2sp: train(c, drawing_table, tmp_path / str(c.l2sp), resume=False).model for c in (free, pulled)}
    start = initial_encoder(free)
    moved = {alpha: _backbone_distance(model, start, params_only=True) for alpha, model in runs.items()}
    assert moved[1e4] < 0.5 * moved[0.0], moved  # the first step is the same for both (no pull yet at w0)
    # the pull replaces the backbone's weight decay towards zero; the head keeps its decay
    encoder = build_encoder(weights="none", embed_dim=16)
    groups = {g["name"]: g["weight_decay"] for g in
              training._build_optimizer(encoder, training.build_loss(pulled), pulled).param_groups}
    assert "backbone" not in groups and groups["backbone_no_decay"] == 0 and groups["head"] > 0
    anchor = [(p, p.detach().clone()) for p in encoder.backbone.parameters()]
    first = anchor[0][0]
    with torch.no_grad():
        assert float(training._l2sp_penalty(anchor, 0.1)) == 0.0
        first.add_(1.0)
        assert float(training._l2sp_penalty(anchor, 0.1)) == pytest.approx(0.05 * first.numel())


def test_wise_averages_the_backbone_weight_for_weight_and_keeps_the_head():
    torch.manual_seed(0)
    tuned = build_encoder(weights="none", embed_dim=16)
    torch.manual_seed(1)
    start = build_encoder(weights="none", embed_dim=16)
    with torch.no_grad():  # distinct BatchNorm statistics too
        start.backbone.bn1.running_var.fill_(2.0)
    head = copy.deepcopy(tuned.head.state_dict())
    half = wise(copy.deepcopy(tuned), start, 0.5)
    a, b, m = tuned.backbone.state_dict(), start.backbone.state_dict(), half.backbone.state_dict()
    for k in ("conv_stem.weight", "bn1.running_var", "blocks.3.0.conv_pw.weight"):
        assert torch.allclose(m[k], (a[k] + b[k]) / 2, atol=1e-6)
    assert all(torch.equal(half.head.state_dict()[k], v) for k, v in head.items())
    assert _backbone_distance(wise(copy.deepcopy(tuned), start, 0.0), start) == 0
    assert _backbone_distance(wise(copy.deepcopy(tuned), start, 1.0), tuned) == 0
    with pytest.raises(ValueError, match="wise_alpha must be in"):
        tiny_config(wise_alpha=1.5)


def test_training_with_wise_alpha_exports_the_average_of_its_start_and_its_end(tmp_path, drawing_table):
    config = tiny_config(epochs=1, steps_per_epoch=2, backbone_lr_mult=1.0)
    full = train(config, drawing_table, tmp_path / "full", resume=False).model
    half = train(tiny_config(epochs=1, steps_per_epoch=2, backbone_lr_mult=1.0, wise_alpha=0.5), drawing_table,
                 tmp_path / "half", resume=False).model
    expected = wise(copy.deepcopy(full), initial_encoder(config), 0.5)
    assert _backbone_distance(half, expected) < 1e-4 * _backbone_distance(full, initial_encoder(config))
    exported = load_encoder(tmp_path / "half" / "encoder.pt")
    assert _backbone_distance(exported, half) == 0


def test_mirror_averaged_queries_are_the_same_for_an_image_and_its_mirror():
    torch.manual_seed(0)
    encoder = build_encoder(weights="none", embed_dim=16).eval()
    mirrored = MirrorAveraged(encoder).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b, plain = mirrored(x), mirrored(torch.flip(x, dims=[-1])), encoder(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(a, plain, atol=1e-3) and mirrored.config is encoder.config


def test_ema_exports_the_warmed_up_moving_average_of_the_weights_after_each_step(tmp_path, drawing_table, monkeypatch):
    after_step = []  # the raw weights after each optimizer step, recorded around the loop's own step
    real_step = training._train_step

    def recording_step(run, batch):
        out = real_step(run, batch)
        after_step.append({k: v.detach().clone() for k, v in run.encoder.state_dict().items()})
        return out

    monkeypatch.setattr(training, "_train_step", recording_step)
    config = tiny_config(epochs=1, steps_per_epoch=4, backbone_lr_mult=1.0, ema_decay=0.5)
    averaged = train(config, drawing_table, tmp_path / "ema", resume=False).model
    expected = dict(after_step[0])  # t = 1: decay 0, the average starts at the weights after the first step
    for t, weights in enumerate(after_step[1:], start=2):  # then min(ema_decay, 1 - t^(-2/3)) (study.RULE_7)
        decay = min(0.5, 1 - t ** (-2 / 3))
        expected = {k: decay * expected[k] + (1 - decay) * w if w.is_floating_point() else w
                    for k, w in weights.items()}
    got = averaged.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(got[k], after_step[-1][k]) for k in got if got[k].is_floating_point())
    # the exported encoder is the average; the checkpoint keeps both, so a resumed run continues the same average
    assert _backbone_distance(load_encoder(tmp_path / "ema" / "encoder.pt"), averaged) == 0
    ckpt = torch.load(tmp_path / "ema" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(ckpt["ema"][k], v) for k, v in got.items())
    with pytest.raises(ValueError, match="ema_decay must be in"):
        tiny_config(ema_decay=1.0)


def test_ema_resumed_mid_epoch_continues_the_same_average(tmp_path, drawing_table):
    config = tiny_config(epochs=1, steps_per_epoch=4, backbone_lr_mult=1.0, ema_decay=0.9, checkpoint_every_steps=2)
    straight = train(config, drawing_table, tmp_path / "straight", resume=False).model

    class Crash(Exception):
        pass

    def crash_at_3(step, metrics):
        if step == 3 and "loss" in metrics:
            raise Crash
    with pytest.raises(Crash):  # the checkpoint of step 2 is the last one written
        train(config, drawing_table, tmp_path / "crashed", on_metrics=crash_at_3)
    resumed = train(config, drawing_table, tmp_path / "crashed").model
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
