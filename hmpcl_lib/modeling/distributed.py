"""Small torch.distributed helpers, so the rest of the library never special-cases "not under torchrun".

Every helper works (and is a cheap no-op) when torch.distributed is unavailable or not initialised.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def local_rank() -> int:
    """This process's GPU slot on its node (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The one device rule: "auto" (or None) is this rank's GPU when CUDA is there, else the CPU; "cuda" without an
    index is this rank's GPU; asking for CUDA where there is none is an error, not a silent CPU run."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return resolved


def is_dist() -> bool:
    """True when a process group is up (torchrun / init_process_group was called)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def gather_sizes(local_rows: int, device: torch.device | str = "cpu") -> list[int]:
    """Row counts of every rank, so ranks may hold batches of different length (last batch, uneven split)."""
    if world_size() == 1:
        return [local_rows]
    size = torch.tensor([local_rows], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; pads to the longest so all_gather sees equal shapes."""
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad], dim=0)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for our rows (all_reduce, then our slice).

    Works on gloo (no reduce_scatter needed) and with uneven row counts.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        start = sum(sizes[: rank()])
        ctx.rows = (start, start + tensor.shape[0])
        return _all_gather_rows(tensor, sizes)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return grad[start:stop], None


def all_gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Rows of `tensor` from every rank, concatenated in rank order, differentiable w.r.t. our rows.

    The gradient our rows receive is the SUM over ranks of d(loss_rank)/d(rows): with DDP's gradient
    averaging this yields the gradient of the mean of the per-rank losses. Identity when not distributed.
    `sizes` (from `gather_sizes`) saves a collective when the caller already knows every rank's row count.
    """
    if world_size() == 1:
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    return _AllGatherWithGrad.apply(tensor, sizes)


def all_gather_no_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Rows of `tensor` (labels, ids) from every rank, concatenated in rank order; no autograd."""
    if world_size() == 1:
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    with torch.no_grad():
        return _all_gather_rows(tensor, sizes)
