"""The hierarchical loss against a plain float64 reference, its gradients, invariances and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss, baseline_loss, validate_scores


def reference_loss(z, patent, subclass, klass, s=(1.0, 0.5, 0.25), tau=0.07):
    """The SPEC definition written out with python loops in float64: (loss, anchors, skipped)."""
    z = [[float(v) for v in row] for row in z.double()]
    patent, subclass, klass = patent.tolist(), subclass.tolist(), klass.tolist()
    n = len(z)
    total, anchors = 0.0, 0
    for i in range(n):
        weights, logits = {}, {}
        for j in range(n):
            if j == i:
                continue
            if patent[i] == patent[j]:
                w = s[0]
            elif subclass[i] != -1 and subclass[i] == subclass[j]:
                w = s[1]
            elif klass[i] == klass[j]:
                w = s[2]
            else:
                w = 0.0
            weights[j] = w
            logits[j] = sum(a * b for a, b in zip(z[i], z[j])) / tau
        row_sum = sum(weights.values())
        if row_sum == 0:
            continue
        anchors += 1
        top = max(logits.values())
        log_norm = top + math.log(sum(math.exp(v - top) for v in logits.values()))
        total += -sum(weights[j] / row_sum * (logits[j] - log_norm) for j in weights)
    return (total / anchors if anchors else 0.0), anchors, n - anchors


def random_batch(n: int, dim: int = 8, seed: int = 0, classes: int = 3, subclasses: int = 3, patents: int = 6):
    """Random normalised embeddings with hierarchy-consistent labels, some subclasses unknown (-1)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    patent = torch.randint(0, patents, (n,), generator=gen)
    subclass_of_patent = torch.randint(0, subclasses, (patents,), generator=gen)
    subclass_of_patent[torch.rand(patents, generator=gen) < 0.3] = -1
    class_of_subclass = torch.randint(0, classes, (subclasses,), generator=gen)
    class_of_patent = torch.where(
        subclass_of_patent >= 0, class_of_subclass[subclass_of_patent.clamp_min(0)],
        torch.randint(0, classes, (patents,), generator=gen),
    )
    return z, patent, subclass_of_patent[patent], class_of_patent[patent]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scores", [(1.0, 0.5, 0.25), (2.0, 1.0, 0.0), (1.0, 0.0, 0.0)])
def test_matches_float64_reference(seed, scores):
    z, patent, subclass, klass = random_batch(n=3 + 4 * seed, seed=seed)
    loss_fn = HierarchicalContrastiveLoss(*scores, temperature=0.1)
    expected, anchors, skipped = reference_loss(z, patent, subclass, klass, s=scores, tau=0.1)
    got = loss_fn(z.float(), patent, subclass, klass)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert (loss_fn.last_num_anchors, loss_fn.last_num_skipped) == (anchors, skipped)


def test_relation_weights_follow_the_deepest_shared_level():
    loss_fn = HierarchicalContrastiveLoss(1.0, 0.5, 0.25)
    patent = torch.tensor([0, 0, 1, 2, 3, 4])
    subclass = torch.tensor([7, 7, 7, -1, -1, 8])
    klass = torch.tensor([1, 1, 1, 1, 1, 2])
    w = loss_fn.relation_weights(patent, subclass, klass)
    assert torch.equal(w.diagonal(), torch.zeros(6))
    assert w[0, 1] == 1.0 and w[0, 2] == 0.5 and w[0, 3] == 0.25
    assert w[3, 4] == 0.25, "two unknown subclasses (-1) must not count as the same subclass"
    assert w[0, 5] == 0.0 and torch.equal(w, w.T)


def test_gradcheck_float64():
    z, patent, subclass, klass = random_batch(n=7, dim=4, seed=3)
    loss_fn = HierarchicalContrastiveLoss(temperature=0.5)
    z = z.clone().requires_grad_(True)
    assert loss_fn(z, patent, subclass, klass).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, patent, subclass, klass), (z,), eps=1e-6, atol=1e-6)


def test_float64_input_matches_reference_tightly():
    z, patent, subclass, klass = random_batch(n=15, seed=11)
    got = HierarchicalContrastiveLoss()(z, patent, subclass, klass).item()
    # tau is stored as a float32 log, so 0.07 carries a ~1e-8 relative error; the rest is float64 exact
    assert got == pytest.approx(reference_loss(z, patent, subclass, klass)[0], rel=1e-7)


def test_float32_gradient_matches_float64_gradient():
    z, patent, subclass, klass = random_batch(n=12, dim=6, seed=5)
    loss_fn = HierarchicalContrastiveLoss(temperature=0.2)
    z64 = z.clone().requires_grad_(True)
    loss_fn(z64, patent, subclass, klass).backward()
    z32 = z.float().requires_grad_(True)
    loss_fn(z32, patent, subclass, klass).backward()
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-4, atol=1e-5)


def test_permuting_the_batch_leaves_loss_unchanged():
    z, patent, subclass, klass = random_batch(n=20, seed=1)
    loss_fn = HierarchicalContrastiveLoss()
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(9))
    a = loss_fn(z.float(), patent, subclass, klass)
    b = loss_fn(z.float()[perm], patent[perm], subclass[perm], klass[perm])
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_scaling_all_scores_leaves_loss_unchanged():
    z, patent, subclass, klass = random_batch(n=20, seed=2)
    a = HierarchicalContrastiveLoss(1.0, 0.5, 0.25)(z.float(), patent, subclass, klass)
    b = HierarchicalContrastiveLoss(8.0, 4.0, 2.0)(z.float(), patent, subclass, klass)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_no_positives_gives_zero_loss_all_skipped_and_finite_gradient():
    z = torch.nn.functional.normalize(torch.randn(5, 4), dim=1).requires_grad_(True)
    labels = torch.arange(5)
    loss_fn = HierarchicalContrastiveLoss()
    loss = loss_fn(z, labels, torch.full((5,), -1), labels)
    loss.backward()
    assert loss.item() == 0.0
    assert (loss_fn.last_num_anchors, loss_fn.last_num_skipped) == (0, 5)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() == 0


def test_single_row_batch_is_skipped_without_nan():
    z = torch.nn.functional.normalize(torch.randn(1, 4), dim=1).requires_grad_(True)
    loss = HierarchicalContrastiveLoss()(z, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_one_class_only_and_all_same_patent_match_reference():
    z, _, _, _ = random_batch(n=10, seed=4)
    one = torch.zeros(10, dtype=torch.long)
    for patent, subclass in [(torch.arange(10) // 2, torch.arange(10) // 4), (one, one)]:
        loss_fn = HierarchicalContrastiveLoss()
        got = loss_fn(z.float(), patent, subclass, one).item()
        assert got == pytest.approx(reference_loss(z, patent, subclass, one)[0], rel=1e-5)
        assert loss_fn.last_num_skipped == 0
    # all the same patent: the target is uniform over the other rows, so the loss is the baseline's
    same = HierarchicalContrastiveLoss()(z.float(), one, one, one).item()
    assert same == pytest.approx(baseline_loss()(z.float(), one, one, one).item(), rel=1e-6)


def test_two_rows():
    z = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    loss_fn = HierarchicalContrastiveLoss()
    # each anchor has exactly one candidate, so q = 1 and the cross-entropy is 0
    assert loss_fn(z, torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 2])).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(z, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 3])).item() == 0.0
    assert loss_fn.last_num_skipped == 2


def test_bf16_autocast_is_finite_and_close_to_fp32():
    z, patent, subclass, klass = random_batch(n=64, dim=32, seed=6)
    loss_fn = HierarchicalContrastiveLoss()
    full = loss_fn(z.float(), patent, subclass, klass)
    z_bf16 = z.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(z_bf16, patent, subclass, klass)
    low.backward()
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert torch.isfinite(z_bf16.grad.float()).all()
    # bf16 keeps ~3 significant digits of z; the float32 loss math adds no further error
    assert low.item() == pytest.approx(full.item(), rel=2e-2)


def test_baseline_equals_supcon_by_hand():
    z, patent, subclass, klass = random_batch(n=16, seed=7, patents=5)
    tau = 0.1
    sims = (z @ z.T) / tau
    eye = torch.eye(16, dtype=torch.bool)
    log_prob = sims - torch.logsumexp(sims.masked_fill(eye, -math.inf), dim=1, keepdim=True)
    positives = (patent[:, None] == patent[None, :]) & ~eye
    has = positives.any(1)
    supcon = -((log_prob * positives).sum(1)[has] / positives.sum(1)[has]).mean()
    loss_fn = baseline_loss(temperature=tau)
    assert loss_fn(z.float(), patent, subclass, klass).item() == pytest.approx(supcon.item(), rel=1e-5)
    assert loss_fn.last_num_anchors == int(has.sum())
    assert (loss_fn.s_subclass, loss_fn.s_class) == (0.0, 0.0)


def test_hierarchical_targets_change_the_loss():
    z, patent, subclass, klass = random_batch(n=24, seed=8)
    a = HierarchicalContrastiveLoss()(z.float(), patent, subclass, klass).item()
    b = baseline_loss()(z.float(), patent, subclass, klass).item()
    assert a != pytest.approx(b, rel=1e-3)


def test_learnable_temperature_gets_a_gradient_and_is_clamped():
    z, patent, subclass, klass = random_batch(n=16, seed=9)
    loss_fn = HierarchicalContrastiveLoss(learn_temperature=True)
    assert [name for name, _ in loss_fn.named_parameters()] == ["log_temperature"]
    loss_fn(z.float(), patent, subclass, klass).backward()
    assert loss_fn.log_temperature.grad is not None and loss_fn.log_temperature.grad.abs() > 0
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(1e-5))
    assert loss_fn.temperature == pytest.approx(0.01)
    assert list(HierarchicalContrastiveLoss().parameters()) == []


@pytest.mark.parametrize(
    "scores",
    [(1.0, 0.5, 0.5), (1.0, 1.0, 0.25), (0.5, 1.0, 0.25), (1.0, 0.0, 0.25), (0.0, 0.0, 0.0), (1.0, 0.5, -0.1),
     (1.0, float("nan"), 0.0)],
)
def test_invalid_scores_rejected(scores):
    with pytest.raises(ValueError, match="s_"):
        HierarchicalContrastiveLoss(*scores)


def test_valid_score_corner_cases_accepted():
    for scores in [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (3.0, 2.0, 1.0)]:
        validate_scores(*scores)
    with pytest.raises(ValueError, match="s_subclass=0"):
        baseline_loss(s_subclass=0.5)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf")])
def test_invalid_temperature_rejected(temperature):
    with pytest.raises(ValueError, match="temperature"):
        HierarchicalContrastiveLoss(temperature=temperature)


def test_bad_inputs_name_the_argument():
    loss_fn = HierarchicalContrastiveLoss()
    z = torch.randn(4, 3)
    ok = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"subclass must have shape \(4,\)"):
        loss_fn(z, ok, torch.zeros(5, dtype=torch.long), ok)
    with pytest.raises(ValueError, match="klass must be an integer tensor"):
        loss_fn(z, ok, ok, torch.zeros(4))
    with pytest.raises(ValueError, match=r"z must be a float tensor of shape \[N, D\]"):
        loss_fn(torch.randn(4), ok, ok, ok)


def test_baseline_matches_pytorch_metric_learning_supcon():
    """An independent implementation of the same baseline (optional dev dependency)."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    z, patent, subclass, klass = random_batch(n=32, seed=12, patents=10)
    ours = baseline_loss(temperature=0.1)(z.float(), patent, subclass, klass)
    theirs = pml_losses.SupConLoss(temperature=0.1)(z.float(), patent)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
