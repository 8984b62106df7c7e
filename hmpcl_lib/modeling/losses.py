"""Hierarchical multi-positive contrastive loss (Kavimandan et al., PatentSemTech 2025) and its baseline.

For anchor i and candidate j != i the relation weight w_ij is the score of the deepest hierarchy node they
share: same patent -> s_patent, else same known subclass -> s_subclass, else same main class -> s_class,
else 0. The target p_ij = w_ij / sum_k w_ik is a soft multi-positive distribution; the prediction is
q_ij = softmax_{j != i}(z_i . z_j / tau). The loss is the mean over anchors of -sum_j p_ij log q_ij, where
anchors whose row of w is all zero (no positive in the batch) are skipped and counted.

Because sum_j p_ij = 1, the per-anchor cross-entropy is computed as logsumexp_{j != i}(l_ij) - sum_j p_ij l_ij
(l = logits), so no [N, N] log-probability matrix is materialised. All of it runs in float32 (float64 for
float64 input), even under bf16/fp16 autocast: the similarity matmul is cheap next to the backbone, while
low-precision logits / tau and logsumexp are where contrastive losses lose accuracy.

Distributed semantics (torch.distributed initialised, world size > 1, gather_distributed=True):
embeddings (with gradients) and labels are gathered from every rank; this rank's rows are the anchors and
the global batch is the candidate set. Each rank returns
    loss_rank = world_size * (sum of its anchors' cross-entropies) / (non-skipped anchors on ALL ranks),
so the mean of the per-rank losses (what DDP's gradient averaging optimises) equals the single-process loss
on the global batch, whatever the split of anchors between ranks. `last_num_anchors` and `last_num_skipped`
are global counts then.

Target forms (`target=`), all sharing the prediction q and the numerics above:
- "item" (the paper's): p_ij = w_ij / sum_k w_ik, one weight per candidate. The mass a level gets grows with how many
  of its items the batch holds: with 1 same-patent, 2 same-subclass and 4 same-class candidates and s = 1/0.5/0.25,
  each level gets a third of the target, so the same-patent positive (what patent search looks for) gets only 1/3.
- "level": target mass per level, whatever the batch's counts. With E_l(i) the candidates whose deepest shared
  level with i is exactly l (patent, subclass, class) and L(i) the levels with E_l(i) non-empty,
  p_ij = (s_l / sum_{m in L(i)} s_m) / |E_l(i)| for j in E_l(i). With s = 1/0.5/0.25 the same-patent level keeps
  4/7 of the target whenever the batch has all three levels.
- "cumulative": a sum of per-level multi-positive terms, as in Zhang et al., "Use All The Labels: A Hierarchical
  Multi-Label Contrastive Learning Framework" (CVPR 2022): loss = sum_l lambda_l * mean_i CE(u_l(i), q_i), with
  u_l(i) uniform over the candidates that share *at least* level l with i (same patent ⊂ same subclass ⊂ same
  class) and lambda_l = (s_patent, s_subclass, s_class). The patent term is exactly the baseline's loss, so the
  hierarchy is added on top of it rather than taking mass from it. Each term skips the anchors with no positive
  at its level and averages over its own anchors (so the DDP formula above holds per term).
- "cumulative-set": "cumulative" whose coarse terms (subclass, class) score the positive *set* instead of each
  positive: term_l(i) = -log sum_{j in P_l(i)} q_ij = logsumexp_{j != i}(l_ij) - logsumexp_{j in P_l(i)}(l_ij), the
  "summation inside the log" of Khosla et al., "Supervised Contrastive Learning" (NeurIPS 2020, their L_in) and
  Miech et al.'s MIL-NCE (CVPR 2020). The patent term stays the baseline's (uniform target, L_out). Why: a uniform
  target over P_l(i) is only met when every same-subclass drawing is as close to the anchor as its own patent's,
  so the coarse terms of "cumulative" pull other designs up to rank 1; the set form is met as soon as P_l(i)
  holds the mass, whatever the order inside it, so it separates subclasses and classes from the rest without
  fighting the patent term over the top of the ranking.
`coarse_temperature` (cumulative forms only) gives the subclass and class terms a temperature of their own
(their own logits l / tau_c and normaliser); None keeps `temperature` (a learnable temperature is the patent term's).
`last_num_anchors` / `last_num_skipped` count anchors with a positive at any scored level.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hmpcl_lib.modeling import distributed

# Bounds for a learnable temperature: below 0.01 logits explode (CLIP caps its scale at 100), above 1 the
# softmax is nearly flat and the loss stops separating anything.
LEARNABLE_TEMPERATURE_BOUNDS = (0.01, 1.0)
TARGETS = ("item", "level", "cumulative", "cumulative-set")
CUMULATIVE_TARGETS = ("cumulative", "cumulative-set")


def validate_scores(s_patent: float, s_subclass: float, s_class: float) -> None:
    """Require s_patent > s_subclass >= s_class >= 0, strictly decreasing where the lower level is non-zero.

    Zeros are allowed at the coarse levels so that (1, 0, 0) is the conventional baseline and (1, 0.5, 0)
    ignores the main class; (1, 0.5, 0.5) or (1, 0, 0.25) are rejected because a coarser relation would
    weigh as much as (or more than) a finer one, which contradicts the hierarchy.
    """
    scores = {"s_patent": s_patent, "s_subclass": s_subclass, "s_class": s_class}
    for name, value in scores.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not s_patent > 0:
        raise ValueError(f"s_patent must be > 0, got {s_patent!r}")
    if not s_patent > s_subclass:
        raise ValueError(f"need s_patent > s_subclass, got s_patent={s_patent!r}, s_subclass={s_subclass!r}")
    if s_class > 0 and not s_subclass > s_class:
        raise ValueError(
            f"need s_subclass > s_class when s_class > 0, got s_subclass={s_subclass!r}, s_class={s_class!r}"
        )


def _check_labels(name: str, labels: torch.Tensor, rows: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},) to match z, got {tuple(labels.shape)}")
    return labels.long()


def _stack_labels(patent: torch.Tensor, subclass: torch.Tensor, klass: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, 3] int64 (patent, subclass, class), after checking each label vector."""
    return torch.stack(
        [_check_labels("patent", patent, rows), _check_labels("subclass", subclass, rows),
         _check_labels("klass", klass, rows)], dim=1,
    )


class HierarchicalContrastiveLoss(nn.Module):
    """Soft multi-positive InfoNCE whose targets weigh positives by how deep they share the LIC hierarchy.

    forward(z, patent, subclass, klass): z is [N, D] L2-normalised embeddings (any float dtype), labels are
    integer [N] tensors; subclass < 0 (-1) means unknown and never counts as "same subclass". Returns a
    float32 scalar (float64 for float64 z). With learn_temperature=True, log(tau) is a parameter (add the loss module's parameters
    to the optimiser), clamped to LEARNABLE_TEMPERATURE_BOUNDS.
    """

    def __init__(
        self,
        s_patent: float = 1.0,
        s_subclass: float = 0.5,
        s_class: float = 0.25,
        temperature: float = 0.07,
        learn_temperature: bool = False,
        gather_distributed: bool = True,
        target: str = "item",
        coarse_temperature: float | None = None,
    ) -> None:
        super().__init__()
        validate_scores(s_patent, s_subclass, s_class)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.target = target
        if coarse_temperature is not None:
            if target not in CUMULATIVE_TARGETS:
                raise ValueError(f"coarse_temperature needs a target of {CUMULATIVE_TARGETS}, got {target!r}")
            if not (math.isfinite(coarse_temperature) and coarse_temperature > 0):
                raise ValueError(f"coarse_temperature must be a finite number > 0, got {coarse_temperature!r}")
        self.coarse_temperature = None if coarse_temperature is None else float(coarse_temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        low, high = LEARNABLE_TEMPERATURE_BOUNDS
        if learn_temperature and not low <= temperature <= high:
            raise ValueError(f"a learnable temperature must start within [{low}, {high}], got {temperature!r}")
        self.s_patent, self.s_subclass, self.s_class = float(s_patent), float(s_subclass), float(s_class)
        self.learn_temperature = learn_temperature
        self.gather_distributed = gather_distributed
        log_temperature = torch.tensor(math.log(temperature), dtype=torch.float32)
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)
        # [anchors, skipped] of the last call, kept as a tensor so reading them is the only device sync.
        self.register_buffer("_last_counts", torch.zeros(2, dtype=torch.int64), persistent=False)

    @property
    def last_num_anchors(self) -> int:
        """Anchors that had at least one positive in the last forward (global under DDP)."""
        return int(self._last_counts[0].item())

    @property
    def last_num_skipped(self) -> int:
        """Anchors skipped in the last forward because no candidate shared any scored level (global under DDP)."""
        return int(self._last_counts[1].item())

    def temperature_tensor(self) -> torch.Tensor:
        """Current tau as a float32 scalar tensor (differentiable when learnable)."""
        log_t = self.log_temperature.float()
        if self.learn_temperature:
            low, high = LEARNABLE_TEMPERATURE_BOUNDS
            log_t = log_t.clamp(math.log(low), math.log(high))
        return log_t.exp()

    @property
    def temperature(self) -> float:
        return float(self.temperature_tensor().item())

    def _level_masks(self, anchors: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[n, N] bool masks: same patent, same known subclass, same main class (not exclusive)."""
        same_patent = anchors[:, None, 0] == candidates[None, :, 0]
        same_subclass = (anchors[:, None, 1] == candidates[None, :, 1]) & (anchors[:, None, 1] >= 0)
        same_class = anchors[:, None, 2] == candidates[None, :, 2]
        return same_patent, same_subclass, same_class

    def _weights_between(self, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[n, N] relation weights from [n, 3] and [N, 3] (patent, subclass, class) label rows."""
        same_patent, same_subclass, same_class = self._level_masks(anchors, candidates)
        zero = torch.zeros((), dtype=torch.float32, device=anchors.device)
        weights = torch.where(same_class, torch.full_like(zero, self.s_class), zero)
        weights = torch.where(same_subclass, torch.full_like(zero, self.s_subclass), weights)
        return torch.where(same_patent, torch.full_like(zero, self.s_patent), weights)

    def _target_terms(self, anchors: torch.Tensor, candidates: torch.Tensor, is_self: torch.Tensor,
                      dtype: torch.dtype) -> list[tuple[float, torch.Tensor]]:
        """(lambda, [n, N] non-negative target weights with a zero self column) per term of the loss."""
        return [(weight, weights) for weight, weights, _, _ in self._terms(anchors, candidates, is_self, dtype)]

    def _terms(self, anchors: torch.Tensor, candidates: torch.Tensor, is_self: torch.Tensor,
               dtype: torch.dtype) -> list[tuple[float, torch.Tensor, bool, bool]]:
        """(lambda, target weights, set form, coarse) per term: a set-form term scores -log of the mass on its
        positives (`weights` > 0), a coarse one uses `coarse_temperature`."""
        if self.target == "item":
            return [(1.0, self._weights_between(anchors, candidates).to(dtype).masked_fill_(is_self, 0.0), False,
                     False)]
        same_patent, same_subclass, same_class = (m & ~is_self for m in self._level_masks(anchors, candidates))
        scores = (self.s_patent, self.s_subclass, self.s_class)
        if self.target in CUMULATIVE_TARGETS:
            nested = (same_patent, same_patent | same_subclass, same_patent | same_subclass | same_class)
            set_form = self.target == "cumulative-set"
            return [(s, mask.to(dtype), set_form and level > 0, level > 0)
                    for level, (s, mask) in enumerate(zip(scores, nested)) if s > 0]
        exact = (same_patent, same_subclass & ~same_patent, same_class & ~same_subclass & ~same_patent)
        weights = torch.zeros(is_self.shape, dtype=dtype, device=is_self.device)
        for s, mask in zip(scores, exact):
            if s > 0:
                m = mask.to(dtype)
                weights = weights + s * m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        return [(1.0, weights, False, False)]

    def relation_weights(self, patent: torch.Tensor, subclass: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
        """The [N, N] float32 matrix W of relation weights, with a zero diagonal (no self-pairs)."""
        if not isinstance(patent, torch.Tensor) or patent.dim() != 1:
            raise ValueError(f"patent must be a 1-D integer tensor, got {getattr(patent, 'shape', type(patent))}")
        labels = _stack_labels(patent, subclass, klass, patent.shape[0])
        weights = self._weights_between(labels, labels)
        return weights.fill_diagonal_(0.0)

    def forward(
        self, z: torch.Tensor, patent: torch.Tensor, subclass: torch.Tensor, klass: torch.Tensor
    ) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.dtype.is_floating_point:
            raise ValueError(f"z must be a float tensor of shape [N, D], got {getattr(z, 'shape', type(z))}")
        rows = z.shape[0]
        labels = _stack_labels(patent, subclass, klass, rows).to(z.device)

        world = distributed.world_size() if self.gather_distributed else 1
        if world > 1:
            sizes = distributed.gather_sizes(rows, z.device)
            offset = sum(sizes[: distributed.rank()])
            candidates = distributed.all_gather_with_grad(z, sizes)
            candidate_labels = distributed.all_gather_no_grad(labels, sizes)
        else:
            offset, candidates, candidate_labels = 0, z, labels

        # float32 for bf16/fp16/fp32 inputs, float64 kept (gradcheck, references)
        compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=z.device.type, enabled=False):
            similarity = z.to(compute_dtype) @ candidates.to(compute_dtype).T
            columns = torch.arange(candidates.shape[0], device=z.device)
            is_self = columns[None, :] == (torch.arange(rows, device=z.device) + offset)[:, None]
            lowest = torch.finfo(compute_dtype).min
            temperature = self.temperature_tensor().to(compute_dtype)
            scaled = {False: similarity / temperature}  # logits per temperature: the patent one, the coarse one
            if self.coarse_temperature is not None:
                scaled[True] = similarity / self.coarse_temperature
            normaliser = {k: torch.logsumexp(v.masked_fill(is_self, lowest), dim=1) for k, v in scaled.items()}
            terms = self._terms(labels, candidate_labels, is_self, compute_dtype)
            totals, counts = [], []
            has_any = torch.zeros(rows, dtype=torch.bool, device=z.device)
            for _, weights, set_form, coarse in terms:
                key = coarse and self.coarse_temperature is not None
                logits, log_normaliser = scaled[key], normaliser[key]
                row_sum = weights.sum(dim=1)
                has_positive = row_sum > 0
                if set_form:  # log of the softmax mass on the positive set
                    target_logit = torch.logsumexp(logits.masked_fill(weights <= 0, lowest), dim=1)
                else:
                    target_logit = (weights * logits).sum(dim=1) / row_sum.clamp_min(torch.finfo(logits.dtype).tiny)
                totals.append(torch.where(has_positive, log_normaliser - target_logit, torch.zeros_like(row_sum)).sum())
                counts.append(has_positive.sum())
                has_any |= has_positive

        # [anchors of each term..., anchors with a positive at any level, rows], summed over ranks under DDP
        counts = torch.stack([*counts, has_any.sum(), torch.tensor(rows, device=z.device)]).to(torch.int64)
        if world > 1:
            torch.distributed.all_reduce(counts)
        self._last_counts = torch.stack([counts[-2], counts[-1] - counts[-2]]).detach()
        loss = totals[0].new_zeros(())
        for (weight, *_), total, count in zip(terms, totals, counts):
            loss = loss + weight * total * world / count.clamp_min(1).to(total.dtype)
        return loss

    def extra_repr(self) -> str:
        return (
            f"s_patent={self.s_patent}, s_subclass={self.s_subclass}, s_class={self.s_class}, "
            f"temperature={self.temperature:.4g}, learn_temperature={self.learn_temperature}, "
            f"gather_distributed={self.gather_distributed}, target={self.target!r}, "
            f"coarse_temperature={self.coarse_temperature}"
        )


def baseline_loss(**kwargs) -> HierarchicalContrastiveLoss:
    """The conventional multi-positive SupCon/InfoNCE: only drawings of the same patent are positives.

    Same loss with s_subclass = s_class = 0: the target is uniform over the anchor's same-patent drawings.
    Accepts the other constructor arguments (temperature, learn_temperature, gather_distributed, s_patent).
    """
    for name in ("s_subclass", "s_class"):
        if kwargs.get(name, 0.0) != 0.0:
            raise ValueError(f"baseline_loss fixes {name}=0, got {kwargs[name]!r}")
        kwargs.pop(name, None)
    return HierarchicalContrastiveLoss(s_subclass=0.0, s_class=0.0, **kwargs)
