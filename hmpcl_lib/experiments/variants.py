"""The one registry of model variants: the comparison's partitions and the sweep's hypotheses, by name.

A variant is the TrainConfig overrides that define it, or None for the untouched ImageNet backbone (not trained).
`COMPARISON` names the variants of the model comparison (the `variant_encoder` / `variant_benchmark` partitions);
`hmpcl sweep` trains any trained variant over seeds, by default `SWEEP`. "hierarchical" keeps TrainConfig's own
target ("cumulative", the winner of the issue-11 sweep), so it trains what TrainConfig's default trains.
Overrides are relative to TrainConfig's defaults: since issue 22 that is backbone_lr_mult 1.0, and since its round 7
16 epochs (so "cumulative" now trains what "cumulative-lr1-16-epochs" trained). The README's sweep and study tables
before those changes pin the old values with `--set backbone_lr_mult=0.1 --set epochs=8` (or `--set epochs=8` alone),
as their commands show; round 7's variants and its reference write every changed value out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

VARIANTS: dict[str, dict[str, Any] | None] = {
    "pretrained": None,
    "default": {},  # TrainConfig() exactly as shipped, whatever its defaults are (issue 28)
    "baseline": {"loss": "baseline"},
    "hierarchical": {"loss": "hierarchical"},
    # the hypotheses of issue 11 (scores default to s = 1 / 0.5 / 0.25)
    "paper": {"loss": "hierarchical", "target": "item"},
    "item-s.25-.05": {"loss": "hierarchical", "target": "item", "s_subclass": 0.25, "s_class": 0.05},
    "item-s.1-.02": {"loss": "hierarchical", "target": "item", "s_subclass": 0.1, "s_class": 0.02},
    "level": {"loss": "hierarchical", "target": "level"},
    "cumulative": {"loss": "hierarchical", "target": "cumulative"},
    "cumulative-s.25-.1": {"loss": "hierarchical", "target": "cumulative", "s_subclass": 0.25, "s_class": 0.1},
    "cumulative-4-subclasses": {"loss": "hierarchical", "target": "cumulative", "subclasses_per_class": 4},
    "cumulative-1-subclass": {"loss": "hierarchical", "target": "cumulative", "subclasses_per_class": 1},
    "cumulative-16-epochs": {"loss": "hierarchical", "target": "cumulative", "epochs": 16},
    "cumulative-learnable-tau": {"loss": "hierarchical", "target": "cumulative", "learn_temperature": True},
    "cumulative-backbone-lr-1": {"loss": "hierarchical", "target": "cumulative", "backbone_lr_mult": 1.0,
                                 "frozen_stages": 0, "epochs": 8},  # round 7's reference (study.NEW_DEFAULT): every stage trains
    # the hypotheses of issue 22 (README "Quality study"): more class pull, more pixels
    "cumulative-class-.4": {"loss": "hierarchical", "target": "cumulative", "s_class": 0.4},
    "cumulative-160px": {"loss": "hierarchical", "target": "cumulative", "image_size": 160},
    # the second round of issue 22 (README "Quality study"): keep what the backbone knows, more pixels
    "cumulative-backbone-lr-.03": {"loss": "hierarchical", "target": "cumulative", "backbone_lr_mult": 0.03},
    "cumulative-192px": {"loss": "hierarchical", "target": "cumulative", "image_size": 192},
    "cumulative-l2sp": {"loss": "hierarchical", "target": "cumulative", "l2sp": 0.1},
    "cumulative-frozen-4": {"loss": "hierarchical", "target": "cumulative", "frozen_stages": 4},
    # the same training as "cumulative", its backbone averaged with the pretrained one afterwards (a sweep derives it
    # from the saved cumulative encoder of the seed instead of training again)
    "cumulative-wise-.5": {"loss": "hierarchical", "target": "cumulative", "wise_alpha": 0.5},
    "baseline-backbone-lr-1": {"loss": "baseline", "backbone_lr_mult": 1.0},  # the baseline at round 3's lr
    "cumulative-freeze-bn": {"loss": "hierarchical", "target": "cumulative", "freeze_bn": True},
    "cumulative-frozen-6": {"loss": "hierarchical", "target": "cumulative", "frozen_stages": 6},
    # round 7 of issue 22 (study.RULE_7): one change each to the new default, its backbone lr and stages written out
    "cumulative-lr1-frozen-4": {"loss": "hierarchical", "target": "cumulative", "backbone_lr_mult": 1.0,
                                "frozen_stages": 4, "epochs": 8},
    "cumulative-lr1-ema": {"loss": "hierarchical", "target": "cumulative", "backbone_lr_mult": 1.0, "frozen_stages": 0,
                           "ema_decay": 0.999, "epochs": 8},
    "cumulative-lr1-16-epochs": {"loss": "hierarchical", "target": "cumulative", "backbone_lr_mult": 1.0,
                                 "frozen_stages": 0, "epochs": 16},
    "cumulative-lr1-192px": {"loss": "hierarchical", "target": "cumulative", "backbone_lr_mult": 1.0,
                             "frozen_stages": 0, "image_size": 192, "epochs": 8},
    # round 8 (issue 28, study.RULE_8): a hierarchy that keeps rank 1, each one change to the 16-epoch default
    "cumulative-set": {"loss": "hierarchical", "target": "cumulative-set"},
    "cumulative-coarse-tau-.2": {"loss": "hierarchical", "target": "cumulative", "coarse_temperature": 0.2},
}
COMPARISON = ("pretrained", "baseline", "hierarchical")
TRAINED = tuple(name for name, overrides in VARIANTS.items() if overrides is not None)
# "hierarchical" trains what "cumulative" does, "default" what TrainConfig() does: neither is a hypothesis of its own
SWEEP = tuple(name for name in TRAINED if name not in ("hierarchical", "default"))
# The untouched ImageNet backbone at other input sizes: what a variant trained at that size must beat. The sweep
# scores them without training ({name: TrainConfig overrides}); "pretrained" is the backbone at the base config.
UNTOUCHED: dict[str, dict[str, Any]] = {"pretrained": {}, "pretrained-160px": {"image_size": 160},
                                        "pretrained-192px": {"image_size": 192}}


def overrides(variant: str) -> dict[str, Any] | None:
    """The variant's TrainConfig overrides (None: the untouched backbone); ValueError names the known ones."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def variant_config(config, variant: str):
    """`config` with the variant's overrides (unchanged for "pretrained", which is not trained)."""
    return dataclasses.replace(config, **(overrides(variant) or {}))
