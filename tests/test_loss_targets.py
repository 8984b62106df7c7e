"""The "level" and "cumulative" target forms against float64 loop references written from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss
from test_losses import random_batch, reference_loss


def _level(i, j, patent, subclass, klass) -> int | None:
    """Deepest shared level of i and j: 0 patent, 1 known subclass, 2 class, None nothing."""
    if patent[i] == patent[j]:
        return 0
    if subclass[i] != -1 and subclass[i] == subclass[j]:
        return 1
    if klass[i] == klass[j]:
        return 2
    return None


def _logits(z, tau):
    z = [[float(v) for v in row] for row in z.double()]
    return [[sum(a * b for a, b in zip(zi, zj)) / tau for zj in z] for zi in z]


def _log_norm(row: dict) -> float:
    top = max(row.values())
    return top + math.log(sum(math.exp(v - top) for v in row.values()))


def reference_level(z, patent, subclass, klass, s, tau):
    """Target mass per level: s_l / (sum of s over the levels present for i), spread evenly over that level."""
    patent, subclass, klass = patent.tolist(), subclass.tolist(), klass.tolist()
    n, logit = len(patent), _logits(z, tau)
    total, anchors = 0.0, 0
    for i in range(n):
        members = {0: [], 1: [], 2: []}
        for j in range(n):
            if j != i and (lvl := _level(i, j, patent, subclass, klass)) is not None and s[lvl] > 0:
                members[lvl].append(j)
        present = [lvl for lvl in members if members[lvl]]
        if not present:
            continue
        anchors += 1
        mass = sum(s[lvl] for lvl in present)
        log_norm = _log_norm({j: logit[i][j] for j in range(n) if j != i})
        for lvl in present:
            for j in members[lvl]:
                total -= s[lvl] / mass / len(members[lvl]) * (logit[i][j] - log_norm)
    return (total / anchors if anchors else 0.0), anchors, n - anchors


def reference_cumulative(z, patent, subclass, klass, s, tau, coarse_tau=None, set_form=False):
    """sum_l s_l * mean over anchors with a positive at level l of CE(uniform over items sharing >= level l); with
    `set_form` the coarse levels' term is -log of the softmax mass on those items; `coarse_tau` their temperature."""
    patent, subclass, klass = patent.tolist(), subclass.tolist(), klass.tolist()
    n = len(patent)
    loss, any_anchor = 0.0, set()
    for depth in range(3):
        if s[depth] == 0:
            continue
        logit = _logits(z, tau if depth == 0 or coarse_tau is None else coarse_tau)
        total, anchors = 0.0, 0
        for i in range(n):
            positives = [j for j in range(n) if j != i and (lvl := _level(i, j, patent, subclass, klass)) is not None
                         and lvl <= depth]
            if not positives:
                continue
            anchors += 1
            any_anchor.add(i)
            log_norm = _log_norm({j: logit[i][j] for j in range(n) if j != i})
            if set_form and depth > 0:
                total -= _log_norm({j: logit[i][j] for j in positives}) - log_norm
            else:
                total -= sum(logit[i][j] - log_norm for j in positives) / len(positives)
        loss += s[depth] * (total / anchors if anchors else 0.0)
    return loss, len(any_anchor), n - len(any_anchor)


REFERENCES = {"level": reference_level, "cumulative": reference_cumulative}


@pytest.mark.parametrize("target", ["level", "cumulative"])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scores", [(1.0, 0.5, 0.25), (1.0, 0.25, 0.05), (2.0, 1.0, 0.0)])
def test_matches_float64_reference(target, seed, scores):
    z, patent, subclass, klass = random_batch(n=4 + 5 * seed, seed=seed)
    loss_fn = HierarchicalContrastiveLoss(*scores, temperature=0.1, target=target)
    expected, anchors, skipped = REFERENCES[target](z, patent, subclass, klass, scores, 0.1)
    got = loss_fn(z.float(), patent, subclass, klass)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert (loss_fn.last_num_anchors, loss_fn.last_num_skipped) == (anchors, skipped)
    # float64 in, float64 maths (tau is stored in float32, hence not 1e-12)
    assert loss_fn(z, patent, subclass, klass).item() == pytest.approx(expected, rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("target", ["item", "level", "cumulative"])
def test_every_form_reduces_to_the_baseline_without_hierarchy_scores(target):
    z, patent, subclass, klass = random_batch(n=20, seed=3)
    got = HierarchicalContrastiveLoss(1.0, 0.0, 0.0, temperature=0.2, target=target)(z, patent, subclass, klass)
    expected, _, _ = reference_loss(z, patent, subclass, klass, s=(1.0, 0.0, 0.0), tau=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-7)


def test_level_target_keeps_the_patent_share_whatever_the_batch_counts():
    """One anchor, one same-patent item, k same-subclass and 2k same-class items: the patent level's mass stays
    s_p / (s_p + s_s + s_c) under "level", while under "item" it shrinks as k grows."""
    scores = (1.0, 0.5, 0.25)
    for k in (1, 4):
        patent = torch.tensor([0, 0] + [1 + i for i in range(k)] + [100 + i for i in range(2 * k)])
        subclass = torch.tensor([0, 0] + [0] * k + [1] * (2 * k))
        klass = torch.zeros_like(patent)
        for target, patent_share in (("level", 1.0 / 1.75), ("item", 1.0 / (1.0 + 0.5 * k + 0.25 * 2 * k))):
            loss_fn = HierarchicalContrastiveLoss(*scores, target=target)
            eye = torch.eye(len(patent), dtype=torch.bool)
            weights = loss_fn._target_terms(torch.stack([patent, subclass, klass], 1),
                                            torch.stack([patent, subclass, klass], 1), eye, torch.float64)[0][1]
            row = weights[0] / weights[0].sum()
            assert row[1].item() == pytest.approx(patent_share)


def test_cumulative_gradient_matches_finite_differences():
    z, patent, subclass, klass = random_batch(n=10, seed=1)
    z.requires_grad_(True)
    loss_fn = HierarchicalContrastiveLoss(target="cumulative", temperature=0.5)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, patent, subclass, klass), (z,))


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="target must be one of"):
        HierarchicalContrastiveLoss(target="per-level")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scores", [(1.0, 0.5, 0.25), (2.0, 1.0, 0.0)])
@pytest.mark.parametrize("coarse_tau", [None, 0.3])
def test_cumulative_set_matches_float64_reference(seed, scores, coarse_tau):
    z, patent, subclass, klass = random_batch(n=4 + 5 * seed, seed=seed)
    loss_fn = HierarchicalContrastiveLoss(*scores, temperature=0.1, target="cumulative-set",
                                          coarse_temperature=coarse_tau)
    expected, anchors, skipped = reference_cumulative(z, patent, subclass, klass, scores, 0.1, coarse_tau, set_form=True)
    assert loss_fn(z.float(), patent, subclass, klass).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert (loss_fn.last_num_anchors, loss_fn.last_num_skipped) == (anchors, skipped)
    assert loss_fn(z, patent, subclass, klass).item() == pytest.approx(expected, rel=1e-7, abs=1e-7)


def test_cumulative_coarse_temperature_matches_the_reference_per_term():
    """"cumulative" with coarse_temperature: each coarse term is the plain cumulative term at that temperature."""
    z, patent, subclass, klass = random_batch(n=16, seed=2)
    got = HierarchicalContrastiveLoss(1.0, 0.5, 0.25, temperature=0.1, target="cumulative",
                                      coarse_temperature=0.3)(z, patent, subclass, klass)
    patent_term, _, _ = reference_cumulative(z, patent, subclass, klass, (1.0, 0.0, 0.0), 0.1)
    coarse_terms, _, _ = reference_cumulative(z, patent, subclass, klass, (0.0, 0.5, 0.25), 0.3)
    assert got.item() == pytest.approx(patent_term + coarse_terms, rel=1e-7)


def test_cumulative_set_gradient_matches_finite_differences():
    z, patent, subclass, klass = random_batch(n=10, seed=1)
    z.requires_grad_(True)
    loss_fn = HierarchicalContrastiveLoss(target="cumulative-set", temperature=0.5, coarse_temperature=0.7)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, patent, subclass, klass), (z,))


def test_coarse_temperature_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="coarse_temperature needs a target"):
        HierarchicalContrastiveLoss(target="level", coarse_temperature=0.2)
    with pytest.raises(ValueError, match="coarse_temperature must be"):
        HierarchicalContrastiveLoss(target="cumulative", coarse_temperature=0.0)
