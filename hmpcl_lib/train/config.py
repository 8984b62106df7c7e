"""`TrainConfig`: every field that defines a training run, its validation, and `config_from_strings`
(FIELD=VALUE assignments typed like the CLI flags)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable

from hmpcl_lib.modeling.models import DEFAULT_IMAGE_SIZE


@dataclass
class TrainConfig:
    """Everything that defines a training run, and the one place its fields and defaults are written: checkpoints
    store it, `hmpcl-train` makes a flag of every field, and the Dagster `trained_encoder` config is built from it."""

    backbone: str = "efficientnet_lite0"
    weights: str = "package"  # "package" | "none" | "hub" | path to a timm state dict
    embed_dim: int | None = 256  # None: no projection head
    head: str = "mlp"  # "mlp" | "linear"
    # "baseline" | "hierarchical". "baseline" since round 8 of the quality study (issue 28, docs/QUALITY.md): no
    # hierarchical form kept rank 1 against it over seeds on unseen samples; the hierarchy is the option that adds
    # subclass and class structure (+9 and +30 points mAP@100) at a cost at rank 1 (0 to -3 points)
    loss: str = "baseline"
    # hierarchical target form (losses.py): "cumulative" (the winner of the issue-11 sweep, docs/QUALITY.md) |
    # "cumulative-set" (its coarse terms score the positive set, round 8) | "item" (the paper's per-item weights) | "level"
    target: str = "cumulative"
    s_patent: float = 1.0
    s_subclass: float = 0.5
    s_class: float = 0.25
    temperature: float = 0.07
    # the subclass and class terms' own temperature (cumulative targets only; losses.py); None: `temperature`
    coarse_temperature: float | None = None
    learn_temperature: bool = False
    batch_size: int = 64  # global batch: each of the DDP ranks draws batch_size / world_size
    drawings_per_patent: int = 2
    patents_per_subclass: int = 2
    subclasses_per_class: int = 2
    # 16 since round 7 of the issue-22 study (README): at 8 the default was still learning (16 epochs: patent mAP
    # +6.5, R@1 +4.9 points on two unseen samples, confirmed on the default sample)
    epochs: int = 16
    steps_per_epoch: int | None = None  # None: the sampler's natural epoch length
    lr: float = 3e-4  # head (and learnable temperature) learning rate
    # the backbone's lr as a fraction of lr. 1.0 since the issue-22 quality study (README): at 0.1 the backbone hardly
    # moved (0.14 % of its weight norm in 8 epochs) and lost rank 1 to the untouched backbone; at 1.0 it beats it
    backbone_lr_mult: float = 1.0
    # Keeping what the pretrained backbone knows (models.freeze_stages, loop._l2sp_penalty, models.wise):
    # L2-SP (Li et al., ICML 2018): alpha/2 * |w - w0|^2 over the backbone's trainable weights, w0 the initial
    # (pretrained) ones; > 0 replaces the backbone's weight decay towards zero
    l2sp: float = 0.0
    frozen_stages: int = 0  # the stem and the first N stages of the backbone do not train (BatchNorm statistics too)
    # WiSE-FT (Wortsman et al., CVPR 2022): the exported backbone is w0 + wise_alpha * (w - w0); 1 = as trained
    wise_alpha: float = 1.0
    # > 0: the exported encoder is an exponential moving average of the weights (timm's ModelEmaV3 with its warmup:
    # decay min(ema_decay, 1 - t^(-2/3)) after t optimizer steps, so short runs average over their later steps)
    ema_decay: float = 0.0
    # validation (hmpcl_lib.train.validation): leave-one-out retrieval metrics on up to this many drawings of the
    # validation split at every epoch end, logged as curves (0: none)
    val_drawings: int = 2000
    # what the run exports: "last" (the last epoch's weights) | "best-val" (the epoch with the best validation R@1 +
    # patent mAP, validation.best_epoch)
    export_weights: str = "last"
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # None: 5 % of all steps (at least 1)
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of the peak lr
    image_size: int = DEFAULT_IMAGE_SIZE
    grad_clip: float | None = 1.0
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (tiny per-device batches, exact DDP equivalence)
    # DataLoader worker processes; None: auto (0 with a pixel store, whose batches cost little next to a CPU step;
    # else from the CPU count, to decode PNGs beside the step)
    num_workers: int | None = None
    # a pixel store directory (hmpcl_lib.modeling.pixels.ensure_pixel_store), or several joined by os.pathsep (the
    # pipeline's per-year stores), holding every image_path of the table at image_size: drawings are then never
    # decoded again; what the pipeline and `hmpcl sweep` train from. "" = decode the PNGs every epoch: for a table
    # with no store (`hmpcl-train` on a folder of your own), at the cost of one decode per drawing per epoch.
    pixel_store: str = ""
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    log_every: int = 10
    checkpoint_every_steps: int | None = None  # also checkpoint mid-epoch every N steps

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        need(self.loss in ("hierarchical", "baseline"), f"loss must be 'hierarchical' or 'baseline', got {self.loss!r}")
        need(self.head in ("mlp", "linear"), f"head must be 'mlp' or 'linear', got {self.head!r}")
        from hmpcl_lib.modeling.losses import TARGETS, validate_scores

        need(self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}")

        try:
            validate_scores(self.s_patent, self.s_subclass, self.s_class)
        except ValueError as e:
            raise ValueError(f"TrainConfig: {e}") from None
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        if self.coarse_temperature is not None:
            from hmpcl_lib.modeling.losses import CUMULATIVE_TARGETS

            need(self.coarse_temperature > 0, f"coarse_temperature must be > 0, got {self.coarse_temperature}")
            need(self.loss == "hierarchical" and self.target in CUMULATIVE_TARGETS,
                 f"coarse_temperature needs the hierarchical loss with a target of {CUMULATIVE_TARGETS}")
        need(self.embed_dim is None or self.embed_dim > 0, f"embed_dim must be > 0 or None, got {self.embed_dim}")
        for name in ("batch_size", "drawings_per_patent", "patents_per_subclass", "subclasses_per_class",
                     "epochs", "image_size", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.drawings_per_patent >= 2, "drawings_per_patent must be >= 2 (a patent needs a positive pair)")
        for name in ("steps_per_epoch", "checkpoint_every_steps"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{name} must be >= 1 or None, got {value}")
        need(self.warmup_steps is None or self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.lr > 0 and self.backbone_lr_mult >= 0, "lr must be > 0 and backbone_lr_mult >= 0")
        need(self.l2sp >= 0, f"l2sp must be >= 0, got {self.l2sp}")
        need(self.frozen_stages >= 0, f"frozen_stages must be >= 0, got {self.frozen_stages}")
        need(0 <= self.wise_alpha <= 1, f"wise_alpha must be in [0, 1], got {self.wise_alpha}")
        need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(self.val_drawings >= 0, f"val_drawings must be >= 0, got {self.val_drawings}")
        from hmpcl_lib.train.validation import EXPORTS

        need(self.export_weights in EXPORTS, f"export_weights must be one of {EXPORTS}, got {self.export_weights!r}")
        need(self.export_weights == "last" or self.val_drawings > 0, "export_weights 'best-val' needs val_drawings > 0")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}")
        need(self.num_workers is None or self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What a field added after the first release meant before it existed: the value a checkpoint or saved sweep run
# written without it trained with. Not today's default, which may have changed since the field was added (target).
BEFORE_IT_EXISTED: dict[str, Any] = {"target": "item", "pixel_store": "", "l2sp": 0.0, "frozen_stages": 0,
                                     "wise_alpha": 1.0, "ema_decay": 0.0,
                                     "coarse_temperature": None, "val_drawings": 0, "export_weights": "last"}


def saved_config_values(saved: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict saved by this or an older hmpcl, every field present: one it lacks takes the value it had
    before it existed (`BEFORE_IT_EXISTED`), else its default. Fields no longer known are kept (they differ)."""
    defaults = {f.name: BEFORE_IT_EXISTED.get(f.name, f.default) for f in dataclasses.fields(TrainConfig)}
    return {**defaults, **saved}


def _flag_type(hint: Any) -> Callable[[str], Any]:
    """argparse converter for a dataclass field type (optional types accept 'none'/'auto')."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if args else hint

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "auto", "null"):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def config_from_strings(assignments: list[str], base: TrainConfig | None = None) -> TrainConfig:
    """`["epochs=4", "learn_temperature=true"]` applied to `base` (default TrainConfig()), typed like the CLI flags."""
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise ValueError(f"expected FIELD=VALUE with a TrainConfig field, got {item!r}")
        try:
            values[key] = _flag_type(hints[key])(text.strip())
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"bad value for {key}: {text!r} ({e})") from None
    return dataclasses.replace(base or TrainConfig(), **values)


def field_types() -> dict[str, tuple[Any, Any]]:
    """{field: (type, default)} of TrainConfig, for building other config schemas (Dagster's) from it."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(TrainConfig)}
