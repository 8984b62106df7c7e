"""Two gloo processes on CPU, each holding part of one global batch, must reproduce the single-process loss.

Semantics checked (see hmpcl_lib/modeling/losses.py): the mean of the per-rank losses equals the loss on the global
batch, and each rank's gradient w.r.t. its own rows, divided by the world size (what DDP's gradient
averaging does), equals the single-process gradient for those rows.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hmpcl_lib.modeling import distributed
from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss, baseline_loss

WORLD = 2
ROWS_PER_RANK = (5, 7)  # deliberately uneven: the gather must handle different local batch sizes


def global_batch():
    gen = torch.Generator().manual_seed(1234)
    n = sum(ROWS_PER_RANK)
    z = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen, dtype=torch.float64), dim=1)
    patent = torch.tensor([0, 0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 7])
    subclass = torch.tensor([0, 0, 0, 1, 1, -1, -1, 1, 2, 2, -1, 3])
    klass = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 2])
    return z, patent, subclass, klass


def make_losses():
    return {
        "hierarchical": HierarchicalContrastiveLoss(),
        "baseline": baseline_loss(temperature=0.1),
        "local_only": HierarchicalContrastiveLoss(gather_distributed=False),
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        assert distributed.is_dist() and distributed.rank() == rank and distributed.world_size() == WORLD
        z, patent, subclass, klass = global_batch()
        start = sum(ROWS_PER_RANK[:rank])
        rows = slice(start, start + ROWS_PER_RANK[rank])
        results = {}
        for name, loss_fn in make_losses().items():
            z_local = z[rows].clone().requires_grad_(True)
            loss = loss_fn(z_local, patent[rows], subclass[rows], klass[rows])
            loss.backward()
            results[name] = {
                "loss": loss.detach(), "grad": z_local.grad,
                "anchors": loss_fn.last_num_anchors, "skipped": loss_fn.last_num_skipped,
            }
        gathered = distributed.all_gather_no_grad(torch.arange(ROWS_PER_RANK[rank]) + 100 * rank)
        results["gathered_labels"] = gathered
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["hierarchical", "baseline"])
def test_two_ranks_match_single_process_on_the_global_batch(rank_results, name):
    z, patent, subclass, klass = global_batch()
    loss_fn = make_losses()[name]
    z_all = z.clone().requires_grad_(True)
    expected = loss_fn(z_all, patent, subclass, klass)
    expected.backward()

    mean_of_ranks = sum(r[name]["loss"] for r in rank_results) / WORLD
    assert mean_of_ranks.item() == pytest.approx(expected.item(), abs=1e-5)
    ddp_gradient = torch.cat([r[name]["grad"] for r in rank_results]) / WORLD
    torch.testing.assert_close(ddp_gradient, z_all.grad, atol=1e-5, rtol=1e-5)
    for r in rank_results:
        assert (r[name]["anchors"], r[name]["skipped"]) == (loss_fn.last_num_anchors, loss_fn.last_num_skipped)


def test_gather_distributed_false_keeps_each_rank_local(rank_results):
    z, patent, subclass, klass = global_batch()
    for rank, result in enumerate(rank_results):
        start = sum(ROWS_PER_RANK[:rank])
        rows = slice(start, start + ROWS_PER_RANK[rank])
        expected = HierarchicalContrastiveLoss()(z[rows], patent[rows], subclass[rows], klass[rows])
        assert result["local_only"]["loss"].item() == pytest.approx(expected.item(), abs=1e-10)


def test_all_gather_concatenates_uneven_rows_in_rank_order(rank_results):
    expected = torch.cat([torch.arange(n) + 100 * r for r, n in enumerate(ROWS_PER_RANK)])
    for result in rank_results:
        assert torch.equal(result["gathered_labels"], expected)


def test_helpers_outside_a_process_group():
    assert not distributed.is_dist()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(t) is t
    assert distributed.gather_sizes(3) == [3]
